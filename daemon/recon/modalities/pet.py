"""PET list-mode reconstruction (modality ``pet``): singles frames → coincidences → sinogram →
OSEM image in Bq/mL on ``recon/<stream>``, one image every ``frame_s`` seconds of device time.

Input frames (driver ``pet``): ``int64 (n, 3)`` = ``time_ps, energy_ev, crystal``, frame meta
``t_start_ps``, ``t_end_ps``, ``dead_singles``. Geometry (ring, windows, isotope, sensitivity)
from the descriptor.

Per frame: energy window → time-sorted singles (blocks arrive in order) → prompt and delayed
windows (:func:`~medacq.daemon.recon.algorithms.nuclear.sort_coincidences`, carrying the last
``delay + window`` of singles to the next frame) → prompt and delayed sinograms; singles per
crystal, dead-time losses and the decay-weighted exposure of each block are summed.

At each image: randoms = singles-product shape scaled to the delayed count; attenuation factors
from the μ-map (``mu_map``: ``phantom`` = the μ-map of the phantom the device reports, ``none``,
or a ``.npy`` file of 1/mm on the image grid); scatter by tail fit; OSEM with the multiplicative
factors ``att x p_det² x live² x exp(-2 S W)`` (pair efficiency, dead time as the square of the
singles live fraction, multiples lost in the window). The image (annihilations per pixel) becomes
Bq/mL at the reference time t = 0 (decay-corrected): divided by the positron fraction, the
voxel volume (pixel² x slice thickness) and the exposure ``∫ exp(-λ t) dt`` over the blocks
received (lost blocks do not count).

Queue policy ``fifo`` without age bound, batches of 32: every singles frame counts; a frame the
queue drops is a hole in the exposure, not an error.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.models.nuclear_phantom import ISOTOPES
from medacq.protocols.pet_geometry import PetRing
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.algorithms.nuclear import (
    PetSystemMatrix,
    bin_pairs,
    osem,
    randoms_from_singles,
    scatter_tail_fit,
    sort_coincidences,
)
from medacq.daemon.recon.base import Output, ReconstructorError
from medacq.daemon.recon.modalities._nuclear import NuclearReconstructor, load_mu_map, slice_geometry

__all__ = ["PetReconstructor", "PetReconSettings", "PetFrameAccumulator"]

log = logging.getLogger("medacq.recon.pet")


class PetReconSettings(BaseModel):
    """``[recon.settings.pet]``.

    Attributes:
        frame_s: device seconds per published image.
        dynamic: each image holds only its frame's counts (dynamic frames); else counts accumulate.
        image_size: pixels per side.
        fov_mm: image side, mm.
        subsets, iterations: OSEM.
        mu_map: ``phantom``, ``none`` or a path to a ``.npy`` μ-map (1/mm, ``(image_size,)*2``).
        delay_ps: delayed-window offset, ps.
        cwindow_ps, ewindow_kev: override the device's windows.
        scatter: estimate and model scatter (tail fit).
    """

    model_config = ConfigDict(extra="forbid")

    frame_s: float = Field(2.0, gt=0, description="device seconds per published image.")
    dynamic: bool = Field(False, description="each image holds only its frame's counts (dynamic frames); "
                          "else counts accumulate.")
    image_size: int = Field(128, ge=16, le=512, description="pixels per side.")
    fov_mm: float = Field(320.0, gt=0, description="image side, mm.")
    subsets: int = Field(10, ge=1, le=90, description="OSEM subsets per iteration.")
    iterations: int = Field(3, ge=1, le=50, description="OSEM iterations per image.")
    mu_map: str = Field("phantom", description="phantom, none or a path to a .npy μ-map (1/mm, (image_size,)*2).")
    delay_ps: float = Field(100_000.0, gt=0, description="delayed-window offset, ps.")
    cwindow_ps: float | None = Field(None, gt=0, description="override the device's windows.")
    ewindow_kev: tuple[float, float] | None = Field(None, description="override the device's windows.")
    scatter: bool = Field(True, description="estimate and model scatter (tail fit).")


class PetFrameAccumulator:
    """Singles in, sinograms out: the streaming half of the reconstruction (no threads).

    Args:
        ring: scanner geometry.
        window_ps, delay_ps: prompt window and delayed-window offset.
        ewindow_kev: energy window.
        decay_constant: isotope λ (1/s) for the exposure.
    """

    def __init__(self, ring: PetRing, window_ps: float, delay_ps: float, ewindow_kev: tuple[float, float],
                 decay_constant: float) -> None:
        self.ring, self.window_ps, self.delay_ps = ring, float(window_ps), float(delay_ps)
        self.e_lo, self.e_hi = ewindow_kev[0] * 1000.0, ewindow_kev[1] * 1000.0
        self.lam = decay_constant
        self._t = np.empty(0, np.int64)
        self._c = np.empty(0, np.int64)
        self._first = True
        self.reset()

    def reset(self) -> None:
        """Start a new image frame (the carried singles stay)."""
        nb = self.ring.n_views * self.ring.n_radial
        self.prompts = np.zeros(nb)
        self.delayed = np.zeros(nb)
        self.singles_per_crystal = np.zeros(self.ring.n_crystals, np.int64)
        self.singles = 0  # all singles (before the energy window), for the live fraction
        self.dead = 0
        self.windowed = 0
        self.exposure_s = 0.0  # ∫ exp(-λ t) dt over the received blocks
        self.live_time_s = 0.0
        self.t_first_ps: int | None = None
        self.t_last_ps: int | None = None

    def add(self, frame: np.ndarray, t_start_ps: int, t_end_ps: int, dead: int) -> None:
        """One block of singles ``(n, 3)``: time ps, energy eV, crystal."""
        if frame.ndim != 2 or frame.shape[1] != 3:
            raise ReconstructorError(f"pet frame must be (n, 3), not {frame.shape}")
        n = len(frame)
        self.singles += n
        self.dead += int(dead)
        dt = (t_end_ps - t_start_ps) * 1e-12
        tm = (t_start_ps + t_end_ps) * 0.5e-12
        self.exposure_s += dt * float(np.exp(-self.lam * tm))
        self.live_time_s += dt
        self.t_first_ps = t_start_ps if self.t_first_ps is None else self.t_first_ps
        self.t_last_ps = t_end_ps
        e = frame[:, 1]
        keep = (e >= self.e_lo) & (e <= self.e_hi)
        t, c = frame[keep, 0], frame[keep, 2]
        if len(c) and (c.min() < 0 or c.max() >= self.ring.n_crystals):
            raise ReconstructorError("crystal index outside the ring")
        self.windowed += len(t)
        self.singles_per_crystal += np.bincount(c, minlength=self.ring.n_crystals)
        if len(self._t) and len(t) and t[0] < self._t[-1]:  # time went back (new series): drop the carry
            self._t, self._c, self._first = self._t[:0], self._c[:0], True
        tt = np.concatenate([self._t, t])
        cc = np.concatenate([self._c, c])
        if not len(tt):
            return
        horizon = tt[-1] - int(self.delay_ps + self.window_ps) - 1
        start = 0 if self._first else 1
        stop = int(np.searchsorted(tt, horizon, "right"))
        if stop > start:
            co = sort_coincidences(tt, self.window_ps, self.delay_ps, start, stop, first_is_opener=True)
            bin_pairs(self.ring, cc[co.prompt_a], cc[co.prompt_b], self.prompts)
            bin_pairs(self.ring, cc[co.delayed_a], cc[co.delayed_b], self.delayed)
            keep_from = stop - 1  # the last finished opener stays as the next call's context
            self._first = False
        else:
            keep_from = 0
        self._t, self._c = tt[keep_from:], cc[keep_from:]

    @property
    def live_fraction(self) -> float:
        return self.singles / (self.singles + self.dead) if self.singles + self.dead else 1.0


class PetReconstructor(NuclearReconstructor):
    """Singles → OSEM images in Bq/mL (module doc)."""

    modality = "pet"
    time_unit_s = 1e-12
    log = log
    Settings = PetReconSettings

    def __init__(self, descriptor: StreamDescriptor, settings: PetReconSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: PetReconSettings = self.settings  # type: ignore[assignment]
        g = descriptor.geometry or {}
        if "ring" not in g:
            raise ReconstructorError("pet stream descriptor has no geometry.ring")
        self.ring = PetRing.from_descriptor(g)
        iso = ISOTOPES.get(str(g.get("isotope", "F-18")))
        if iso is None:
            raise ReconstructorError(f"unknown isotope {g.get('isotope')!r}")
        self.isotope = iso
        sens = g.get("sensitivity") or {}
        self.p_det = float(sens.get("p_det", 1.0))
        self.positron_fraction = float(sens.get("positron_fraction", iso.positron_fraction))
        window = s.cwindow_ps or float(g.get("cwindow_ps", 4000.0))
        ew = s.ewindow_kev or tuple(g.get("ewindow_kev", (425.0, 650.0)))
        self.acc = PetFrameAccumulator(self.ring, window, s.delay_ps, (float(ew[0]), float(ew[1])),
                                       iso.decay_constant)
        self.window_ps = window
        self.mu = self._mu_map(s, g)
        self.system: PetSystemMatrix | None = None
        self.att: np.ndarray | None = None
        self._x: np.ndarray | None = None
        self._start_build()

    def _mu_map(self, s: PetReconSettings, g: dict[str, Any]) -> np.ndarray | None:
        mu = load_mu_map(s.mu_map, g, s.image_size, s.fov_mm)
        if mu is None or s.mu_map == "phantom":
            return mu
        if mu.shape != (s.image_size, s.image_size):
            raise ReconstructorError(f"mu_map {s.mu_map!r} has shape {mu.shape}, not {(s.image_size,) * 2}")
        return mu.astype(float)

    def _make_system(self) -> dict[str, Any]:
        s: PetReconSettings = self.settings  # type: ignore[assignment]
        system = PetSystemMatrix(self.ring, s.image_size, s.fov_mm, s.subsets)
        att = (system.attenuation_factors(self.mu) if self.mu is not None
               else np.ones(self.ring.n_views * self.ring.n_radial))
        return {"att": att, "system": system}

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Lost blocks: nothing to undo (their time is simply not in the exposure)."""

    def _accumulate(self, header: dict[str, Any], frame: np.ndarray) -> tuple[int, int]:
        meta = header.get("meta") or {}
        try:
            t0, t1 = int(meta["t_start_ps"]), int(meta["t_end_ps"])
        except (KeyError, TypeError, ValueError):
            raise ReconstructorError("pet frame meta needs t_start_ps and t_end_ps") from None
        self.acc.add(frame, t0, t1, int(meta.get("dead_singles", 0)))
        return t0, t1

    def _frame_s(self) -> float:
        return float(self.settings.frame_s)  # type: ignore[attr-defined]

    def _imaged(self) -> None:
        if self.settings.dynamic:  # type: ignore[attr-defined]
            self.acc.reset()

    def image(self, header: dict[str, Any] | None = None) -> list[Output]:
        """Reconstruct what has been accumulated (Bq/mL at t = 0); [] while the system matrix builds."""
        system, att = self.system, self.att
        if system is None or att is None:
            return []
        s: PetReconSettings = self.settings  # type: ignore[assignment]
        a = self.acc
        if a.live_time_s <= 0:
            return []
        prompts = a.prompts
        randoms = randoms_from_singles(self.ring, a.singles_per_crystal, float(a.delayed.sum()))
        scatter = (scatter_tail_fit(self.ring, prompts - randoms, att) if s.scatter and self.mu is not None
                   else np.zeros_like(prompts))
        s_rate = a.windowed / a.live_time_s
        live = a.live_fraction
        eff = self.p_det ** 2 * live ** 2 * float(np.exp(-2.0 * s_rate * self.window_ps * 1e-12))
        x = osem(system, prompts, att * eff, randoms + scatter, n_iter=s.iterations)
        vox_ml = (s.fov_mm / s.image_size) ** 2 * self.ring.slice_mm * 1e-3
        img = (x / (self.positron_fraction * vox_ml * a.exposure_s)).astype(np.float32)
        self.images += 1
        meta = {"prompts": int(prompts.sum()), "delayed": int(a.delayed.sum()),
                "scatter_fraction": float(scatter.sum() / max(prompts.sum(), 1.0)),
                "live_fraction": live, "singles": a.singles, "t_start_s": (a.t_first_ps or 0) * 1e-12,
                "t_end_s": (a.t_last_ps or 0) * 1e-12, "exposure_s": a.exposure_s,
                "iterations": s.iterations, "subsets": s.subsets, "decay_corrected_to_s": 0.0,
                "dynamic": s.dynamic}
        geom = slice_geometry(s.fov_mm, s.image_size, self.ring.slice_mm, isotope=self.isotope.name)
        return [Output("", img, ["y", "x"], "Bq/mL", meta, {"geometry": geom})]
