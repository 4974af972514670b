"""SPECT reconstruction (modality ``spect``): Anger-camera list mode → projections per gantry stop
(photopeak and two side windows) → triple-energy-window scatter → OSEM with attenuation and the
distance-dependent collimator response → one transaxial slice in Bq/mL on ``recon/<stream>``.

Input frames (driver ``spect``): float64 ``(n, 6)`` = ``x_mm, y_mm, energy_kev, t_s, angle_deg,
weight`` and frame meta ``t_start_us``, ``t_end_us``, ``angle_deg``; geometry (rotation radius,
collimator, isotope, stops, dwell, phantom) from the descriptor. The slice is the central axial
slab ``|y| <= slice_mm / 2``.

Quantitation: expected photopeak counts of bin (stop, x) = Σ_pixels A x [Bq/mL] x voxel mL x
photon yield x collimator efficiency x photopeak acceptance (Gaussian energy resolution) x the
decay-weighted exposure of that stop (``∫ exp(-λt) dt`` over its blocks): the image is Bq/mL at
device time 0. Images every ``frame_s`` of device time (default: one full rotation).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import erf

from medacq.protocols.models.nuclear_phantom import mu_water_per_mm, MU_WATER_511_PER_MM
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.algorithms.nuclear import osem
from medacq.daemon.recon.algorithms.spect import SpectSystemMatrix, histogram_projections, tew_scatter
from medacq.daemon.recon.base import Output, ReconstructorError
from medacq.daemon.recon.modalities._nuclear import NuclearReconstructor, load_mu_map, slice_geometry

__all__ = ["SpectReconstructor", "SpectReconSettings"]

log = logging.getLogger("medacq.recon.spect")


class SpectReconSettings(BaseModel):
    """``[recon.settings.spect]``.

    Attributes:
        frame_s: device seconds per image (``None``: one rotation, stops x dwell).
        image_size, fov_mm: image grid (projections use the same bins).
        slice_mm: axial slab reconstructed.
        subsets, iterations: OSEM.
        peak_pct: photopeak window, ± percent of the photon energy.
        side_kev: width of each TEW side window, keV.
        energy_fwhm: relative energy resolution (photopeak acceptance).
        intrinsic_fwhm_mm: intrinsic resolution of the camera.
        mu_map: ``phantom``, ``none`` or a ``.npy`` of μ at 511 keV (1/mm; scaled to the photon energy).
        scatter: TEW scatter estimate on/off.
    """

    model_config = ConfigDict(extra="forbid")

    frame_s: float | None = Field(None, gt=0,
                                  description="device seconds per image (None: one rotation, stops x dwell).")
    image_size: int = Field(128, ge=16, le=512, description="image grid (projections use the same bins).")
    fov_mm: float = Field(320.0, gt=0, description="image grid (projections use the same bins).")
    slice_mm: float = Field(20.0, gt=0, description="axial slab reconstructed.")
    subsets: int = Field(6, ge=1, le=60, description="OSEM subsets per iteration.")
    iterations: int = Field(4, ge=1, le=50, description="OSEM iterations per image.")
    peak_pct: float = Field(10.0, gt=0, le=30, description="photopeak window, ± percent of the photon energy.")
    side_kev: float = Field(6.0, gt=0, le=30, description="width of each TEW side window, keV.")
    energy_fwhm: float = Field(0.10, gt=0, le=0.5, description="relative energy resolution (photopeak acceptance).")
    intrinsic_fwhm_mm: float = Field(3.5, ge=0, description="intrinsic resolution of the camera.")
    mu_map: str = Field("phantom", description="phantom, none or a .npy of μ at 511 keV (1/mm; scaled to the "
                        "photon energy).")
    scatter: bool = Field(True, description="TEW scatter estimate on/off.")


class SpectReconstructor(NuclearReconstructor):
    """Anger-camera events → OSEM slice in Bq/mL (module doc)."""

    modality = "spect"
    time_unit_s = 1e-6
    log = log
    Settings = SpectReconSettings

    def __init__(self, descriptor: StreamDescriptor, settings: SpectReconSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: SpectReconSettings = self.settings  # type: ignore[assignment]
        g = descriptor.geometry or {}
        try:
            self.stops = int(g["stops"])
            self.dwell_s = float(g["dwell_s"])
            self.radius_mm = float(g["radius_mm"])
            coll = g["collimator"]
            self.eff = float(coll["efficiency"])
            self.fwhm0, self.slope = float(coll["fwhm0_mm"]), float(coll["slope"])
            self.e0 = float(g.get("photon_kev", 140.5))
            self.yield_ = float(g.get("photon_yield", 1.0))
            self.lam = float(np.log(2) / float(g["half_life_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReconstructorError(f"spect descriptor geometry incomplete: {exc}") from None
        self.frame_s = s.frame_s or self.stops * self.dwell_s
        w = s.peak_pct / 100.0 * self.e0
        self.peak = (self.e0 - w, self.e0 + w)
        self.lower = (self.peak[0] - s.side_kev, self.peak[0])
        self.upper = (self.peak[1], self.peak[1] + s.side_kev)
        sig = s.energy_fwhm * self.e0 / 2.3548
        self.acceptance = float(erf(w / (np.sqrt(2) * sig)))
        mu = load_mu_map(s.mu_map, g, s.image_size, s.fov_mm)
        if mu is not None:
            mu = mu * float(mu_water_per_mm(self.e0) / MU_WATER_511_PER_MM)
        self.mu = mu
        self.system: SpectSystemMatrix | None = None
        self.reset()
        self._start_build()

    def reset(self) -> None:
        s: SpectReconSettings = self.settings  # type: ignore[assignment]
        shape = (self.stops, s.image_size)
        self.peak_p, self.lower_p, self.upper_p = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.exposure = np.zeros(self.stops)
        self.events = 0

    def _make_system(self) -> dict[str, Any]:
        s: SpectReconSettings = self.settings  # type: ignore[assignment]
        return {"system": SpectSystemMatrix(np.arange(self.stops) * 360.0 / self.stops, s.image_size, s.fov_mm,
                                            self.radius_mm, self.mu, self.fwhm0, self.slope, s.intrinsic_fwhm_mm,
                                            s.subsets)}

    def add(self, frame: np.ndarray, t0_us: int, t1_us: int, angle_deg: float) -> None:
        """One block of events ``(n, 6)``."""
        s: SpectReconSettings = self.settings  # type: ignore[assignment]
        if frame.ndim != 2 or frame.shape[1] != 6:
            raise ReconstructorError(f"spect frame must be (n, 6), not {frame.shape}")
        stop = int(round(angle_deg / (360.0 / self.stops))) % self.stops
        self.exposure[stop] += float((np.exp(-self.lam * t0_us * 1e-6) - np.exp(-self.lam * t1_us * 1e-6)) / self.lam)
        slab = np.abs(frame[:, 1]) <= s.slice_mm / 2
        f = frame[slab]
        e = f[:, 2]
        st = np.full(len(f), stop, np.int64)
        for (lo, hi), acc in ((self.peak, self.peak_p), (self.lower, self.lower_p), (self.upper, self.upper_p)):
            m = (e >= lo) & (e < hi)
            histogram_projections(f[m, 0], st[m], f[m, 5], self.stops, s.image_size, s.fov_mm, acc)
        self.events += len(frame)

    def _accumulate(self, header: dict[str, Any], frame: np.ndarray) -> tuple[int, int]:
        meta = header.get("meta") or {}
        try:
            t0, t1, ang = int(meta["t_start_us"]), int(meta["t_end_us"]), float(meta["angle_deg"])
        except (KeyError, TypeError, ValueError):
            raise ReconstructorError("spect frame meta needs t_start_us, t_end_us and angle_deg") from None
        self.add(frame, t0, t1, ang)
        return t0, t1

    def _frame_s(self) -> float:
        return self.frame_s

    def image(self) -> list[Output]:
        """Reconstruct what has been accumulated; [] while building or before any stop has data."""
        system = self.system
        if system is None or not self.exposure.any():
            return []
        s: SpectReconSettings = self.settings  # type: ignore[assignment]
        wp = self.peak[1] - self.peak[0]
        scatter = (tew_scatter(self.lower_p, self.upper_p, s.side_kev, s.side_kev, wp) if s.scatter
                   else np.zeros_like(self.peak_p))
        vox_ml = (s.fov_mm / s.image_size) ** 2 * s.slice_mm * 1e-3
        k = self.yield_ * self.eff * self.acceptance * vox_ml * self.exposure  # per stop
        mult = np.repeat(k, s.image_size)
        seen = np.repeat(self.exposure > 0, s.image_size)
        y = np.where(seen, self.peak_p.ravel(), 0.0)
        img = osem(system, y, mult, np.where(seen, scatter.ravel(), 0.0) + 1e-6, n_iter=s.iterations)
        self.images += 1
        meta = {"events": self.events, "photopeak_counts": float(self.peak_p.sum()),
                "scatter_fraction": float(scatter.sum() / max(self.peak_p.sum(), 1.0)),
                "stops_seen": int((self.exposure > 0).sum()), "iterations": s.iterations, "subsets": s.subsets,
                "decay_corrected_to_s": 0.0}
        geom = slice_geometry(s.fov_mm, s.image_size, s.slice_mm)
        return [Output("", img.astype(np.float32), ["y", "x"], "Bq/mL", meta, {"geometry": geom})]
