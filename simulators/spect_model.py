"""Physics of a SPECT Anger camera head on a rotating gantry looking at the IEC body phantom.

* Source: the phantom's 2D slice extruded axially over ``axial_mm`` (Tc-99m, 140.5 keV, 88.5 %
  per decay), activity decaying with the isotope.
* Primaries: only photons the parallel-hole collimator accepts are simulated (rate = activity x
  yield x ``collimator_efficiency``); each is attenuated in water/lung (μ at 140 keV) on its way to
  the head and lands at its projection, blurred by the collimator with a Gaussian whose FWHM grows
  with the distance to the face (``coll_fwhm0_mm + coll_slope x d``).
* Scatter (single Compton, in plane): photons emitted in other directions that scatter once in the
  phantom into the collimator's acceptance (importance-sampled with the Klein-Nishina
  distribution; energy ``E / (1 + (E/511)(1 - cos θ))``, attenuated at the new energy afterwards).
* Detector: a NaI crystal under ``pmt_rings`` rings of hexagonally packed PMTs (3 rings: 37 PMTs,
  pitch ``pmt_pitch_mm``); the scintillation light reaching PMT i follows a light response
  ``1 / (1 + (r/h)²)^1.5``; photoelectrons are Poisson (``pe_per_kev``), each PMT has its own gain
  (±``gain_spread``), an intrinsic energy spread is added; ADC counts are u16.

The camera's factory calibration (:meth:`SpectCameraModel.calibrate`) runs a flood and derives the
maps a host needs for Anger logic: linearity (displacement), energy (gain) and uniformity
(relative sensitivity), on a grid over the face.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medacq.protocols.anger import anger_centroid, interp_grid as _interp_grid
from medacq.protocols.models.nuclear_phantom import IecBodyPhantom, mu_water_per_mm, MU_WATER_511_PER_MM

__all__ = ["SpectCameraModel", "CameraEvents", "TC99M_KEV", "TC99M_YIELD"]

TC99M_KEV = 140.5
TC99M_YIELD = 0.885
TC99M_HALF_LIFE_S = 6.0067 * 3600.0


def _hex_pmts(rings: int, pitch: float) -> np.ndarray:
    pts = []
    for q in range(-rings, rings + 1):
        for r in range(max(-rings, -q - rings), min(rings, -q + rings) + 1):
            pts.append((pitch * (q + r / 2.0), pitch * (r * np.sqrt(3) / 2)))
    return np.array(pts)


@dataclass
class CameraEvents:
    """Detected events of one slice of time: raw ADC amplitudes and the truth behind them."""

    t_us: np.ndarray  # (n,) float device time, µs
    amp: np.ndarray  # (n, n_pmt) uint16
    x: np.ndarray  # true position on the face, mm
    y: np.ndarray
    energy: np.ndarray  # true deposited energy, keV
    scattered: np.ndarray  # bool


@dataclass
class SpectCameraModel:
    """The head, collimator and gantry. ``rate_cps``: detected primaries + scatter per second at
    t = 0 sets the activity (estimated on a pilot sample)."""

    phantom: IecBodyPhantom = field(default_factory=lambda: IecBodyPhantom(isotope="Tc-99m"))
    rate_cps: float = 50_000.0
    radius_mm: float = 250.0  # rotation radius (axis to collimator face)
    axial_mm: float = 100.0
    face_half_mm: float = 200.0
    collimator_efficiency: float = 1.8e-4
    coll_fwhm0_mm: float = 1.5
    coll_slope: float = 0.059
    pmt_rings: int = 3
    pmt_pitch_mm: float = 60.0
    light_h_mm: float = 50.0
    pe_per_kev: float = 8.0
    adc_per_pe: float = 4.0
    gain_spread: float = 0.08
    intrinsic_energy_sigma: float = 0.035
    threshold_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.pmt_xy = _hex_pmts(self.pmt_rings, self.pmt_pitch_mm)
        self.pmt_gain = 1.0 + self.gain_spread * np.random.default_rng(self.seed + 1000).uniform(-1, 1, len(self.pmt_xy))
        self.angle_deg = 0.0
        rate_per_bq = self._pilot_rate_per_bq()
        self.activity_bq = self.rate_cps / max(rate_per_bq, 1e-30)
        per_bg = self.phantom.total_activity_bq(self.axial_mm) / self.phantom.background_bq_ml
        self.phantom = replace(self.phantom, background_bq_ml=self.activity_bq / per_bg)
        self.maps = self.calibrate()

    @property
    def n_pmt(self) -> int:
        return len(self.pmt_xy)

    @property
    def decay_constant(self) -> float:
        return float(np.log(2) / TC99M_HALF_LIFE_S)

    # ---- emission ----------------------------------------------------------------------------
    def _source(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y = self.phantom.sample_emission(rng, n)
        z = (rng.random(n) - 0.5) * self.axial_mm
        return x, y, z

    def _mu_scale(self, e_kev: np.ndarray | float) -> np.ndarray:
        return np.asarray(mu_water_per_mm(e_kev) / MU_WATER_511_PER_MM)

    def _to_head(self, px: np.ndarray, py: np.ndarray, e_kev: np.ndarray | float, ang: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tangential coordinate on the face, distance to the face, survival to the head."""
        ux, uy = np.cos(ang), np.sin(ang)
        L, a, b = self.phantom.ray_segments(px, py, np.full_like(px, ux), np.full_like(px, uy))
        inside = self._inside_body(px, py)
        tau = np.where(inside, self.phantom.optical_depth(L, a, b, self._mu_scale(e_kev)), 0.0)
        xc = -px * uy + py * ux
        d = self.radius_mm - (px * ux + py * uy)
        return xc, d, np.exp(-tau)

    def _inside_body(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        a, b = self.phantom.body_axes_mm
        return (x / a) ** 2 + (y / b) ** 2 < 1.0

    def _photons(self, rng: np.random.Generator, n_cand: int, ang: float) -> tuple[np.ndarray, ...]:
        """Accepted photons: (xcam, ycam, energy, scattered) from ``n_cand`` primary candidates and
        as many scatter candidates (see the module doc)."""
        px, py, pz = self._source(rng, n_cand)
        xc, d, surv = self._to_head(px, py, TC99M_KEV, ang)
        keep = rng.random(n_cand) < surv
        xs, ys, es, sc = [xc[keep]], [pz[keep]], [np.full(int(keep.sum()), TC99M_KEV)], [np.zeros(int(keep.sum()), bool)]
        ds = [d[keep]]
        # scatter candidates (3 per primary candidate): emission in a random in-plane direction at
        # angle θ to the head's direction, one Compton interaction that turns it toward the head.
        # A candidate stands for the decays whose photon goes that way; it is accepted with
        # P(interact) x [4π dσ/dΩ(θ) / σ] x [(π/2) sin θ] / 3: the second factor is the Klein-Nishina
        # chance per collimator solid angle (the primaries' ε_coll is already in the candidate rate),
        # the third turns in-plane angles (uniform in θ) into isotropic 3D ones (uniform in cos θ).
        n_cand = 3 * n_cand
        qx, qy, qz = self._source(rng, n_cand)
        psi = rng.random(n_cand) * 2 * np.pi
        dx, dy = np.cos(psi), np.sin(psi)
        L, a, b = self.phantom.ray_segments(qx, qy, dx, dy)
        mu140 = float(self._mu_scale(TC99M_KEV))
        tau_tot = self.phantom.optical_depth(L, a, b, mu140)
        tau = rng.exponential(1.0, n_cand)
        inter = tau < tau_tot
        ell = self.phantom.depth_to_distance(tau / mu140, a, b)
        sx, sy = qx + ell * dx, qy + ell * dy
        ux, uy = np.cos(ang), np.sin(ang)
        cos_t = dx * ux + dy * uy
        e2 = TC99M_KEV / (1.0 + (TC99M_KEV / 511.0) * (1.0 - cos_t))
        ratio = e2 / TC99M_KEV
        kn = ratio ** 2 * (ratio + 1.0 / ratio - (1.0 - cos_t ** 2))  # ∝ dσ/dΩ
        w = kn / self._kn_total() * (np.pi / 2) * np.sqrt(np.clip(1 - cos_t ** 2, 0, 1)) / 3.0
        acc = inter & (rng.random(n_cand) < np.clip(w, 0, 1))
        acc &= self._inside_body(sx, sy)
        if acc.any():
            xc2, d2, surv2 = self._to_head(sx[acc], sy[acc], e2[acc], ang)
            k2 = rng.random(len(xc2)) < surv2
            xs.append(xc2[k2])
            ys.append(qz[acc][k2])
            es.append(e2[acc][k2])
            sc.append(np.ones(int(k2.sum()), bool))
            ds.append(d2[k2])
        x, y, e, s, dd = (np.concatenate(v) for v in (xs, ys, es, sc, ds))
        sig = (self.coll_fwhm0_mm + self.coll_slope * np.maximum(dd, 0)) / 2.3548
        x = x + sig * rng.standard_normal(len(x))
        y = y + sig * rng.standard_normal(len(y))
        on = (np.abs(x) < self.face_half_mm) & (np.abs(y) < self.face_half_mm)
        return x[on], y[on], e[on], s[on]

    @staticmethod
    def _kn_total() -> float:
        """σ_KN / (4π) in the units of ``kn`` above, at 140.5 keV (numerical)."""
        c = np.linspace(-1, 1, 4001)
        r = 1.0 / (1.0 + (TC99M_KEV / 511.0) * (1 - c))
        f = r ** 2 * (r + 1 / r - (1 - c ** 2))
        return float(np.trapezoid(f, c) / 2.0)

    def light(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, e_kev: np.ndarray) -> np.ndarray:
        """ADC amplitudes ``(n, n_pmt)`` u16 for events at (x, y) depositing ``e_kev``."""
        e = e_kev * (1.0 + self.intrinsic_energy_sigma * rng.standard_normal(len(e_kev)))
        r2 = (x[:, None] - self.pmt_xy[None, :, 0]) ** 2 + (y[:, None] - self.pmt_xy[None, :, 1]) ** 2
        lrf = (1.0 + r2 / self.light_h_mm ** 2) ** -1.5
        pe = rng.poisson(np.clip(e, 0, None)[:, None] * self.pe_per_kev * lrf * self.pmt_gain[None, :])
        return np.clip(np.rint(pe * self.adc_per_pe), 0, 65535).astype(np.uint16)

    def _pilot_rate_per_bq(self) -> float:
        rng = np.random.default_rng(4321)
        n = 20000
        x, _, _, _ = self._photons(rng, n, 0.0)
        # accepted photons per candidate; candidates = decays x yield x collimator efficiency
        return len(x) / n * TC99M_YIELD * self.collimator_efficiency

    def generate(self, t0_us: int, t1_us: int, angle_deg: float) -> CameraEvents:
        """Events in ``[t0_us, t1_us)`` with the head at ``angle_deg``."""
        rng = self.rng
        dt = (t1_us - t0_us) * 1e-6
        tm = (t0_us + t1_us) * 0.5e-6
        lam = self.activity_bq * np.exp(-self.decay_constant * tm) * TC99M_YIELD * self.collimator_efficiency * dt
        n = int(rng.poisson(lam))
        x, y, e, s = self._photons(rng, n, np.deg2rad(angle_deg))
        amp = self.light(rng, x, y, e)
        t = np.sort(t0_us + rng.random(len(x)) * (t1_us - t0_us))
        return CameraEvents(t, amp, x, y, e, s)

    # ---- factory calibration -------------------------------------------------------------------
    def calibrate(self, n: int = 200_000, grid: int = 32) -> dict[str, Any]:
        """Flood the face with 140.5 keV events and derive the correction maps (``grid`` x ``grid``
        over ``±face_half_mm``, row = y bin, column = x bin)."""
        rng = np.random.default_rng(self.seed + 77)
        h = self.face_half_mm
        x = rng.uniform(-h, h, n)
        y = rng.uniform(-h, h, n)
        amp = self.light(rng, x, y, np.full(n, TC99M_KEV))
        rx, ry, s = anger_centroid(amp, self.pmt_xy, self.threshold_fraction)
        edges = np.linspace(-h, h, grid + 1)

        def binned(px: np.ndarray, py: np.ndarray, v: np.ndarray, stat: str = "mean") -> np.ndarray:
            ix = np.clip(np.digitize(px, edges) - 1, 0, grid - 1)
            iy = np.clip(np.digitize(py, edges) - 1, 0, grid - 1)
            k = iy * grid + ix
            cnt = np.bincount(k, minlength=grid * grid).astype(float)
            out = np.bincount(k, v, minlength=grid * grid) / np.maximum(cnt, 1)
            out[cnt == 0] = np.nan
            return out.reshape(grid, grid)

        dx, dy = binned(rx, ry, x - rx), binned(rx, ry, y - ry)
        dx, dy = _fill_nan(dx), _fill_nan(dy)
        cx = rx + _interp_grid(dx, rx, ry, h)
        cy = ry + _interp_grid(dy, rx, ry, h)
        gain = _fill_nan(TC99M_KEV / binned(cx, cy, s))
        e = s * _interp_grid(gain, cx, cy, h)
        win = (e > TC99M_KEV * 0.9) & (e < TC99M_KEV * 1.1)
        ix = np.clip(np.digitize(cx[win], edges) - 1, 0, grid - 1)
        iy = np.clip(np.digitize(cy[win], edges) - 1, 0, grid - 1)
        cnt = np.bincount(iy * grid + ix, minlength=grid * grid).reshape(grid, grid).astype(float)
        c = (np.arange(grid) + 0.5) * (2 * h / grid) - h
        inner = (np.abs(c)[:, None] <= 0.6 * h) & (np.abs(c)[None, :] <= 0.6 * h)  # the useful field
        unif = cnt / cnt[inner].mean()
        unif = np.where(unif > 0.2, unif, 1.0)
        return {"grid": grid, "half_mm": h, "linearity_dx_mm": np.round(dx, 3).tolist(),
                "linearity_dy_mm": np.round(dy, 3).tolist(), "energy_gain_kev_per_adc": gain.tolist(),
                "uniformity": np.round(unif, 4).tolist(), "threshold_fraction": self.threshold_fraction}

    def config(self) -> dict[str, Any]:
        return {"pmt_xy_mm": np.round(self.pmt_xy, 4).tolist(), "radius_mm": self.radius_mm,
                "face_half_mm": self.face_half_mm, "collimator": {
                    "efficiency": self.collimator_efficiency, "fwhm0_mm": self.coll_fwhm0_mm,
                    "slope": self.coll_slope}, "isotope": "Tc-99m", "photon_kev": TC99M_KEV,
                "photon_yield": TC99M_YIELD, "half_life_s": TC99M_HALF_LIFE_S, "axial_mm": self.axial_mm,
                "phantom": self.phantom.to_dict(), "maps": self.maps}


def _fill_nan(a: np.ndarray) -> np.ndarray:
    """Fill NaN cells with the nearest valid cell (maps at the face's corners)."""
    from scipy.ndimage import distance_transform_edt

    bad = ~np.isfinite(a)
    if not bad.any():
        return a
    idx = distance_transform_edt(bad, return_distances=False, return_indices=True)
    return np.asarray(a[tuple(idx)], float)
