"""Physics of a 2D PET ring looking at the NEMA IEC body phantom: singles as a front end sees them.

Per time slice (vectorised numpy, deterministic for a seed):

1. decays: Poisson(A(t) x dt) with A(t) = A0 exp(-lambda t) (the phantom's isotope), times uniform
   in the slice; each is an annihilation with the isotope's positron fraction; positions drawn
   from the phantom's activity (:meth:`IecBodyPhantom.sample_emission`); no positron range,
   no non-collinearity;
2. two back-to-back 511 keV photons in the slice plane at a uniform angle;
3. attenuation in water (and lung) along each photon's path: an exponential optical depth is
   drawn; a photon that interacts inside the body Compton-scatters **once** (Klein-Nishina angle,
   in-plane, energy ``511 / (2 - cos theta)``) and then leaves, surviving the rest of its path with
   the attenuation at its new energy (a second interaction loses it);
4. the photon hits the crystal nearest its intersection with the ring; it is detected with
   probability ``p_det`` (intrinsic efficiency x axial acceptance of a real 3D scanner: the
   undetected partners are what makes randoms), energy blurred with a Gaussian of
   ``energy_fwhm`` (relative FWHM at 511 keV, scaling as 1/sqrt(E)), kept above the front end's
   ``threshold_kev``;
5. time = decay time + flight time (TOF) + Gaussian jitter, ``ctr_fwhm_ps / sqrt(2)`` FWHM per
   single (so the coincidence timing resolution is ``ctr_fwhm_ps``);
6. dead time: paralyzable, per block: a single arriving within ``dead_time_ns`` of the previous
   arrival in its block is lost (and so is nothing else); the losses are counted per slice.

Randoms are not added: they arise from singles whose partners were lost, as on a scanner. The
model keeps the annihilation id of every single (:attr:`SinglesSlice.event_id`, never sent) so
tests can count true and random coincidences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medacq.protocols.models.nuclear_phantom import IecBodyPhantom, mu_water_per_mm
from medacq.protocols.pet_geometry import SPEED_OF_LIGHT_MM_PER_PS, PetRing
from medacq.protocols.petsys import SINGLE_DTYPE

__all__ = ["PetRingModel", "SinglesSlice", "PetPhysics"]

_ME_KEV = 511.0


def _kn_inverse_cdf() -> tuple[np.ndarray, np.ndarray]:
    """Klein-Nishina at 511 keV: CDF of the polar angle theta (p ∝ dσ/dΩ sin θ)."""
    th = np.linspace(0.0, np.pi, 4001)
    c = np.cos(th)
    ratio = 1.0 / (2.0 - c)  # E'/E at 511 keV
    dsig = ratio ** 2 * (ratio + 1.0 / ratio - np.sin(th) ** 2) * np.sin(th)
    cdf = np.concatenate([[0.0], np.cumsum((dsig[1:] + dsig[:-1]) / 2)])
    return cdf / cdf[-1], th


_KN_CDF, _KN_THETA = _kn_inverse_cdf()


@dataclass(frozen=True)
class PetPhysics:
    """Detector physics of the ring (see the module doc for each)."""

    p_det: float = 0.5
    energy_fwhm: float = 0.11
    ctr_fwhm_ps: float = 300.0
    dead_time_ns: float = 200.0
    threshold_kev: float = 100.0


@dataclass
class SinglesSlice:
    """Singles of one slice of device time.

    Attributes:
        singles: ``(n,)`` :data:`~medacq.protocols.petsys.SINGLE_DTYPE`, time-ordered.
        event_id: ``(n,)`` int64 annihilation id of each single (truth; not on the wire).
        scattered: ``(n,)`` bool, the photon Compton-scattered in the phantom (truth).
        dead: singles lost to dead time in the slice.
        decays: annihilations in the slice.
    """

    singles: np.ndarray
    event_id: np.ndarray
    scattered: np.ndarray
    dead: int
    decays: int


@dataclass
class PetRingModel:
    """Singles generator. ``singles_rate`` (1/s) sets the phantom's activity at ``t = 0`` so that the
    ring sees about that many singles per second before dead time (estimated at construction with a
    short pilot run); ``phantom`` gives the shape, the sphere ratio and the isotope."""

    ring: PetRing = field(default_factory=PetRing)
    phantom: IecBodyPhantom = field(default_factory=IecBodyPhantom)
    physics: PetPhysics = field(default_factory=PetPhysics)
    singles_rate: float = 1e6
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._next_id = 0
        self._last_arrival = np.full(self.ring.blocks, -(1 << 60), np.int64)
        self._carry: tuple[np.ndarray, ...] | None = None
        # activity scale: singles per annihilation measured on a pilot sample
        yield_ = self._singles_per_annihilation()
        iso = self.phantom.iso
        self.activity_bq = self.singles_rate / max(yield_, 1e-9) / iso.positron_fraction
        per_bg = self.phantom.total_activity_bq(self.ring.slice_mm) / self.phantom.background_bq_ml
        from dataclasses import replace

        self.phantom = replace(self.phantom, background_bq_ml=self.activity_bq / per_bg)

    # ---- truth -----------------------------------------------------------------------------------
    def truth(self) -> dict:
        return {"phantom": self.phantom.to_dict(), "activity_bq_t0": self.activity_bq,
                "concentration_bq_ml_t0": self.phantom.concentration(0.0), "ring": self.ring.model_dump(),
                "physics": self.physics.__dict__.copy(), "singles_rate": self.singles_rate}

    def _singles_per_annihilation(self) -> float:
        rng = np.random.default_rng(12345)
        n = 20000
        x, y = self.phantom.sample_emission(rng, n)
        det = self._photons(rng, x, y, np.zeros(n), np.arange(n))[0]
        return len(det) / n

    # ---- generation ------------------------------------------------------------------------------
    def _photons(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, t_ps: np.ndarray,
                 ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Detected photons of annihilations at (x, y) and times t_ps: (time_ps, energy, crystal, id, scattered)."""
        n = len(x)
        ph = self.phantom
        R = self.ring.radius_mm
        psi = rng.random(n) * 2 * np.pi
        px = np.concatenate([x, x])
        py = np.concatenate([y, y])
        dx = np.concatenate([np.cos(psi), -np.cos(psi)])
        dy = np.concatenate([np.sin(psi), -np.sin(psi)])
        tt = np.concatenate([t_ps, t_ps])
        eid = np.concatenate([ids, ids])
        L, a, b = ph.ray_segments(px, py, dx, dy)
        tau_tot = ph.optical_depth(L, a, b)
        tau = rng.exponential(1.0, 2 * n)
        inter = tau < tau_tot
        energy = np.full(2 * n, _ME_KEV)
        path0 = np.zeros(2 * n)
        alive = np.ones(2 * n, bool)
        if inter.any():
            k = np.flatnonzero(inter)
            ell = ph.depth_to_distance(tau[k], a[k], b[k])
            qx, qy = px[k] + ell * dx[k], py[k] + ell * dy[k]
            th = np.interp(rng.random(len(k)), _KN_CDF, _KN_THETA) * np.where(rng.random(len(k)) < 0.5, -1, 1)
            c, s = np.cos(th), np.sin(th)
            ndx, ndy = c * dx[k] - s * dy[k], s * dx[k] + c * dy[k]
            e2 = _ME_KEV / (2.0 - np.cos(th))
            L2, a2, b2 = ph.ray_segments(qx, qy, ndx, ndy)
            tau2 = ph.optical_depth(L2, a2, b2, mu_water_per_mm(e2) / mu_water_per_mm(_ME_KEV))
            alive[k] = rng.random(len(k)) < np.exp(-tau2)
            px[k], py[k], dx[k], dy[k] = qx, qy, ndx, ndy
            energy[k] = e2
            path0[k] = ell
        # intersection with the ring (from inside)
        B = px * dx + py * dy
        t_ring = -B + np.sqrt(np.maximum(B * B - (px * px + py * py - R * R), 0.0))
        hx, hy = px + t_ring * dx, py + t_ring * dy
        nc = self.ring.n_crystals
        crystal = np.rint(np.arctan2(hy, hx) * (nc / (2 * np.pi))).astype(np.int64) % nc
        phys = self.physics
        keep = alive & (rng.random(2 * n) < phys.p_det)
        sig = phys.energy_fwhm / 2.3548 * np.sqrt(_ME_KEV / energy)
        e_meas = energy * (1.0 + sig * rng.standard_normal(2 * n))
        keep &= e_meas >= phys.threshold_kev
        sig_t = phys.ctr_fwhm_ps / 2.3548 / np.sqrt(2.0)
        t_det = tt + (path0 + t_ring) / SPEED_OF_LIGHT_MM_PER_PS + sig_t * rng.standard_normal(2 * n)
        return (np.rint(t_det[keep]).astype(np.int64), e_meas[keep].astype(np.float32), crystal[keep],
                eid[keep], inter[keep])

    def generate(self, t0_ps: int, t1_ps: int) -> SinglesSlice:
        """Singles detected in ``[t0_ps, t1_ps)`` (device time, ps; slices must follow each other)."""
        rng = self.rng
        dt_s = (t1_ps - t0_ps) * 1e-12
        tmid = (t0_ps + t1_ps) * 0.5e-12
        rate = self.activity_bq * float(self.phantom.iso.decay_factor(tmid)) * self.phantom.iso.positron_fraction
        n = int(rng.poisson(rate * dt_s))
        x, y = self.phantom.sample_emission(rng, n)
        t_dec = t0_ps + rng.random(n) * (t1_ps - t0_ps)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        t, e, c, i, sc = self._photons(rng, x, y, t_dec, ids)
        if self._carry is not None:
            ct, ce, cc, ci, cs = self._carry
            t, e, c, i, sc = (np.concatenate(p) for p in ((ct, t), (ce, e), (cc, c), (ci, i), (cs, sc)))
        order = np.argsort(t, kind="stable")
        t, e, c, i, sc = t[order], e[order], c[order], i[order], sc[order]
        cut = int(np.searchsorted(t, t1_ps, side="left"))
        self._carry = (t[cut:], e[cut:], c[cut:], i[cut:], sc[cut:])
        t, e, c, i, sc = t[:cut], e[:cut], c[:cut], i[:cut], sc[:cut]
        # paralyzable dead time per block
        blk = c // self.ring.crystals_per_block
        by_blk = np.lexsort((t, blk))
        tb, bb = t[by_blk], blk[by_blk]
        prev = np.empty_like(tb)
        if len(tb):
            prev[1:] = tb[:-1]
            first = np.ones(len(tb), bool)
            first[1:] = bb[1:] != bb[:-1]
            prev[first] = self._last_arrival[bb[first]]
            last = np.ones(len(tb), bool)
            last[:-1] = bb[1:] != bb[:-1]
            self._last_arrival[bb[last]] = tb[last]
        lost_sorted = (tb - prev) < int(self.physics.dead_time_ns * 1000)
        lost = np.zeros(len(t), bool)
        lost[by_blk] = lost_sorted
        keep = ~lost
        out = np.empty(int(keep.sum()), SINGLE_DTYPE)
        out["time_ps"] = t[keep]
        out["energy"] = e[keep]
        out["id"] = c[keep]
        return SinglesSlice(out, i[keep], sc[keep], int(lost.sum()), n)
