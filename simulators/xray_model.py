"""X-ray flat-panel physics model (Dexela 1512 class), deterministic from a seed.

Knows nothing of bytes or SCPI (see :mod:`medacq.simulators.flatpanel` for that).

Geometry and axes
-----------------
* Detector: ``(rows, cols) = (1536, 1944)`` unbinned, pixel pitch 74.8 µm, uint16 ADU;
  binning 1/2/4 gives ``(1536 // b, 1944 // b)``. Frames are ``(rows, cols)``, row 0 at the
  top; detector ``u`` (mm) runs along columns (left → right), ``v`` along rows (top →
  bottom), origin at the panel centre.
* Phantom coordinates (x, y) in mm at the isocentre, x along ``u``, y *up* (= −v); CT
  rotation about the y axis is modelled as a 2D slice problem: the slice phantom is
  extruded along the rotation axis over the central ``ct_height_fraction`` of the rows.
* CT projection angle β (rad) of frame ``k``: ``β_k = k · 2π / n_proj`` (full rotation;
  ``ct_range="short"`` gives π + fan angle). Parallel beam by default; fan beam with a
  point source at ``SID`` mm from the isocentre and the panel at ``SDD`` mm.
* Sinogram conventions match scikit-image: a parallel projection at angle θ samples
  ``t = x cos θ + y sin θ``; detector bin ``k`` is at ``t = (k − n_det // 2) · pitch``; an
  image pixel ``(row, col)`` of an ``n × n`` slice is at ``x = (col − n // 2) · pitch``,
  ``y = (n // 2 − row) · pitch``.

Signal model (per pixel, per frame)
-----------------------------------
``photons ~ Poisson(N0 · b² · exp(−∫μ dl))`` with ``N0 = k_tube · (kVp/70)² · mA · s``
(photons per unbinned pixel; ``k_tube`` = 1e4 photons/mAs at 70 kVp; attenuation scales as
``(70/kVp)^0.7``); ``ADU = gain_map · g · photons / b² + dark_map + read noise / b`` (binned
pixels report the average of their b² sub-pixels, so levels do not change with binning) with
``g`` = 2 ADU/photon (gain mode HIGH) or 0.5 (LOW), read noise 4 / 2 ADU rms; dark current
adds 200 ADU/s. Defects: dead pixels read 0, dead lines (rows and columns) read the dark
offset only (no photo response). Optional lag: a fraction of the previous frame's signal.

Noise: ``noise="fast"`` (default) draws a Gaussian approximation of Poisson + read noise
(σ² = g²·N·gain + σ_r²) from one pre-computed standard-normal field of shape
``(rows + 64, cols + 64)``, read through a per-frame window offset and sign drawn from
``(seed, frame index)``: 2·64² distinct noise fields, no per-frame RNG over 3 M pixels.
``noise="poisson"`` draws exact Poisson photons (slower: see :func:`benchmark_frame`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

__all__ = [
    "DETECTOR_SHAPE",
    "PIXEL_PITCH_MM",
    "SHEPP_LOGAN",
    "XraySource",
    "DetectorConfig",
    "XrayModel",
    "ellipse_parallel_projection",
    "ellipse_fan_projection",
    "rasterize_ellipses",
    "parallel_sinogram",
    "fan_sinogram",
    "benchmark_frame",
]

DETECTOR_SHAPE: tuple[int, int] = (1536, 1944)
"""Unbinned detector shape ``(rows, cols)``."""
PIXEL_PITCH_MM: float = 0.0748

# Modified Shepp–Logan (Toft): columns mu, a, b, x0, y0, phi_deg in units of the radius.
SHEPP_LOGAN = np.array(
    [
        [1.0, 0.69, 0.92, 0.0, 0.0, 0.0],
        [-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0],
        [-0.2, 0.11, 0.31, 0.22, 0.0, -18.0],
        [-0.2, 0.16, 0.41, -0.22, 0.0, 18.0],
        [0.1, 0.21, 0.25, 0.0, 0.35, 0.0],
        [0.1, 0.046, 0.046, 0.0, 0.1, 0.0],
        [0.1, 0.046, 0.046, 0.0, -0.1, 0.0],
        [0.1, 0.046, 0.023, -0.08, -0.605, 0.0],
        [0.1, 0.023, 0.023, 0.0, -0.606, 0.0],
        [0.1, 0.023, 0.046, 0.06, -0.605, 0.0],
    ]
)
"""Modified Shepp–Logan ellipses ``(k, 6)``: ``mu, a, b, x0, y0, phi`` (deg), radius 1."""


def _scaled(ellipses: np.ndarray, radius: float, mu_scale: float = 1.0) -> np.ndarray:
    e = np.array(ellipses, dtype=np.float64, copy=True)
    e[:, 1:5] *= radius
    e[:, 0] *= mu_scale
    return e


def ellipse_parallel_projection(
    ellipses: np.ndarray, theta: np.ndarray | float, t: np.ndarray
) -> np.ndarray:
    """Exact line integrals of an ellipse phantom (Kak & Slaney, ch. 3.1).

    Args:
        ellipses: ``(k, 6)`` rows ``mu, a, b, x0, y0, phi_deg`` (lengths in the unit of t,
            ``mu`` per that unit).
        theta: projection angle(s), rad; shape ``(m,)`` or scalar.
        t: detector coordinates ``(n,)`` (same unit), or ``(m, n)`` per angle.
    Returns:
        ``(m, n)`` line integrals (``(n,)`` for a scalar theta and 1-D t).
    """
    scalar = np.ndim(theta) == 0
    th = np.atleast_1d(np.asarray(theta, dtype=np.float64))[:, None]
    tt = np.asarray(t, dtype=np.float64)
    if tt.ndim == 1:
        tt = tt[None, :]
    out = np.zeros(np.broadcast_shapes(th.shape, tt.shape))
    for mu, a, b, x0, y0, phi in np.asarray(ellipses, dtype=np.float64):
        ang = th - math.radians(phi)
        a2 = (a * np.cos(ang)) ** 2 + (b * np.sin(ang)) ** 2
        s = tt - (x0 * np.cos(th) + y0 * np.sin(th))
        r = a2 - s * s
        np.maximum(r, 0.0, out=r)
        out += 2.0 * mu * a * b * np.sqrt(r) / a2
    return out[0] if scalar and np.ndim(t) == 1 else out


def ellipse_fan_projection(
    ellipses: np.ndarray, beta: np.ndarray | float, u: np.ndarray, sid: float, sdd: float
) -> np.ndarray:
    """Fan-beam (flat detector) line integrals.

    Args:
        beta: source angle(s), rad (the parallel direction of the central ray is β).
        u: detector coordinates on the panel (mm), ``(n,)``.
        sid, sdd: source–isocentre and source–detector distances (mm).
    Returns ``(m, n)``. A ray through panel position u has fan angle γ = atan(u / sdd); it
    is the parallel ray at ``θ = β + γ``, ``t = sid · sin γ``.
    """
    scalar = np.ndim(beta) == 0
    b = np.atleast_1d(np.asarray(beta, dtype=np.float64))[:, None]
    gamma = np.arctan(np.asarray(u, dtype=np.float64) / sdd)[None, :]
    th = b + gamma
    t = np.broadcast_to(sid * np.sin(gamma), th.shape)
    res = np.zeros(th.shape)
    for row in range(th.shape[0]):
        res[row] = _proj_varying_theta(ellipses, th[row], t[row])
    return res[0] if scalar else res


def _proj_varying_theta(ellipses: np.ndarray, th: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    for mu, a, b, x0, y0, phi in np.asarray(ellipses, dtype=np.float64):
        ang = th - math.radians(phi)
        a2 = (a * np.cos(ang)) ** 2 + (b * np.sin(ang)) ** 2
        s = t - (x0 * np.cos(th) + y0 * np.sin(th))
        r = np.maximum(a2 - s * s, 0.0)
        out += 2.0 * mu * a * b * np.sqrt(r) / a2
    return out


def rasterize_ellipses(ellipses: np.ndarray, n: int, pitch: float = 1.0, oversample: int = 4) -> np.ndarray:
    """The phantom on an ``n × n`` grid (float64, ``(row, col)``, scikit-image centre
    convention, see module doc), each pixel the mean over ``oversample²`` sub-samples."""
    o = oversample
    sub = (np.arange(o) + 0.5) / o - 0.5
    idx = np.arange(n) - n // 2
    xs = ((idx[:, None] + sub[None, :]) * pitch).ravel()  # (n*o,)
    ys = ((-(idx[:, None] + sub[None, :])) * pitch).ravel()
    x = xs[None, :]
    y = ys[:, None]
    img = np.zeros((n * o, n * o))
    for mu, a, b, x0, y0, phi in np.asarray(ellipses, dtype=np.float64):
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        dx, dy = x - x0, y - y0
        q = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2
        img += mu * (q <= 1.0)
    return img.reshape(n, o, n, o).mean(axis=(1, 3))


def parallel_sinogram(
    ellipses: np.ndarray, n_det: int, theta: np.ndarray, pitch: float = 1.0
) -> np.ndarray:
    """Analytic parallel sinogram ``(n_det, n_angles)`` (scikit-image layout; theta in rad)."""
    t = (np.arange(n_det) - n_det // 2) * pitch
    return ellipse_parallel_projection(ellipses, np.asarray(theta), t).T.copy()


def fan_sinogram(
    ellipses: np.ndarray, n_det: int, beta: np.ndarray, du: float, sid: float, sdd: float
) -> np.ndarray:
    """Analytic flat-panel fan-beam sinogram ``(n_det, n_angles)``; bin k at
    ``u = (k − n_det // 2) · du`` on the panel (mm)."""
    u = (np.arange(n_det) - n_det // 2) * du
    return ellipse_fan_projection(ellipses, np.asarray(beta), u, sid, sdd).T.copy()


# --------------------------------------------------------------------------- source/config


@dataclass(frozen=True, slots=True)
class XraySource:
    """Tube settings: ``kvp`` (kV), ``ma`` (mA). Exposure time lives in :class:`DetectorConfig`."""

    kvp: float = 70.0
    ma: float = 10.0
    k_tube: float = 1.0e4  # photons per unbinned pixel per mAs at 70 kVp

    def photons(self, exposure_s: float) -> float:
        """Mean unattenuated photons per unbinned pixel for one exposure."""
        return self.k_tube * (self.kvp / 70.0) ** 2 * self.ma * exposure_s

    def mu_scale(self) -> float:
        """Crude beam-hardening-free energy dependence of attenuation."""
        return (70.0 / self.kvp) ** 0.7


Mode = Literal["RAD", "FLUORO", "CT"]


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Acquisition settings. ``exposure_s`` (s), ``binning`` 1/2/4, ``gain_mode`` HIGH/LOW,
    ``mode`` RAD/FLUORO/CT, ``geometry`` PARALLEL/FAN, ``n_proj`` CT projections per rotation,
    ``ct_range`` FULL (360°) / SHORT (180° + fan angle), ``sid``/``sdd`` fan distances (mm)."""

    exposure_s: float = 0.03
    binning: int = 1
    gain_mode: str = "HIGH"
    mode: str = "RAD"
    geometry: str = "PARALLEL"
    n_proj: int = 720
    ct_range: str = "FULL"
    sid: float = 600.0
    sdd: float = 900.0
    source: XraySource = field(default_factory=XraySource)

    @property
    def shape(self) -> tuple[int, int]:
        return DETECTOR_SHAPE[0] // self.binning, DETECTOR_SHAPE[1] // self.binning

    @property
    def pitch_mm(self) -> float:
        return PIXEL_PITCH_MM * self.binning

    @property
    def adu_per_photon(self) -> float:
        return 2.0 if self.gain_mode == "HIGH" else 0.5

    @property
    def read_noise_adu(self) -> float:
        return 4.0 if self.gain_mode == "HIGH" else 2.0

    def fan_angle(self) -> float:
        """Full fan angle (rad) covered by the panel width."""
        half = self.shape[1] * self.pitch_mm / 2
        return 2 * math.atan(half / self.sdd)

    def angle(self, k: int) -> float:
        """Source / rotation angle β (rad) of CT projection ``k`` (wraps each rotation)."""
        k = k % self.n_proj
        if self.ct_range == "SHORT":
            span = math.pi + (self.fan_angle() if self.geometry == "FAN" else 0.0)
        else:
            span = 2 * math.pi
        return k * span / self.n_proj


# --------------------------------------------------------------------------- model


class XrayModel:
    """Flat-panel detector + tube + phantom. ``frame(k)`` is a pure function of
    (seed, config, k, kind), so two models with the same seed give the same bytes.

    Attributes:
        seed: RNG seed of defects, gain/offset maps and noise.
        lag: fraction (0..0.2) of the previous frame's signal carried into this one.
        noise: ``"fast"`` (pre-computed Gaussian field) or ``"poisson"`` (exact, slower).
        ct_radius_mm: radius of the CT Shepp–Logan phantom (default: 80 % of the
            half-width of the panel at the isocentre).
    """

    N_DEAD_PIXELS = 40
    DARK_MEAN_ADU = 300.0
    DARK_CURRENT_ADU_S = 200.0

    def __init__(
        self,
        seed: int = 0,
        config: DetectorConfig | None = None,
        *,
        noise: Literal["fast", "poisson"] = "fast",
        lag: float = 0.0,
        ct_radius_mm: float | None = None,
    ) -> None:
        self.seed = int(seed)
        self.noise = noise
        self.lag = float(lag)
        self.config = config or DetectorConfig()
        rng = np.random.default_rng([self.seed, 1])
        rows, cols = DETECTOR_SHAPE
        # Unbinned detector maps.
        self._gain1 = (1.0 + 0.05 * rng.standard_normal((rows, cols))).astype(np.float32)
        # smooth vignetting-like gain gradient
        yy, xx = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
        self._gain1 *= (1.0 - 0.08 * (xx**2 + yy**2)).astype(np.float32)
        self._dark1 = (
            self.DARK_MEAN_ADU + 15.0 * rng.standard_normal((rows, cols)) + 20.0 * xx
        ).astype(np.float32)
        self.dead_pixels = np.stack(
            [rng.integers(4, rows - 4, self.N_DEAD_PIXELS), rng.integers(4, cols - 4, self.N_DEAD_PIXELS)],
            axis=1,
        )
        self.dead_cols = np.array(sorted(rng.choice(np.arange(100, cols - 100), 2, replace=False)))
        self.dead_rows = np.array([int(rng.integers(100, rows - 100))])
        self._noise_field = rng.standard_normal((rows + 64, cols + 64), dtype=np.float32)
        half_w = cols * PIXEL_PITCH_MM / 2
        self.ct_radius_mm = ct_radius_mm if ct_radius_mm is not None else 0.8 * half_w
        self.ct_height_fraction = 0.8
        self._cache: dict = {}
        self._prev_signal: np.ndarray | None = None
        self._prev_key: tuple | None = None

    # -- configuration ------------------------------------------------------------
    def configure(self, **changes: object) -> DetectorConfig:
        """Replace config fields (``exposure_s=0.05, binning=2, ...``); clears caches."""
        if "source" not in changes and ("kvp" in changes or "ma" in changes):
            src = self.config.source
            changes["source"] = replace(
                src, kvp=float(changes.pop("kvp", src.kvp)), ma=float(changes.pop("ma", src.ma))
            )
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]
        if self.config.binning not in (1, 2, 4):
            raise ValueError("binning must be 1, 2 or 4")
        self._cache.clear()
        self._prev_signal = None
        return self.config

    # -- detector maps (binned) -----------------------------------------------------
    def _maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gain, dark, defect-mask) at the current binning, cached. Mask: 0 dead pixel,
        1 normal, 2 dead line (dark only)."""
        b = self.config.binning
        key = ("maps", b)
        if key not in self._cache:
            rows, cols = DETECTOR_SHAPE
            gain = self._gain1.reshape(rows // b, b, cols // b, b).mean(axis=(1, 3))
            dark = self._dark1.reshape(rows // b, b, cols // b, b).mean(axis=(1, 3))
            defect = np.ones((rows // b, cols // b), dtype=np.uint8)
            defect[:, self.dead_cols // b] = 2
            defect[self.dead_rows // b, :] = 2
            defect[self.dead_pixels[:, 0] // b, self.dead_pixels[:, 1] // b] = 0
            gain = np.where(defect == 1, gain, 0.0).astype(np.float32)
            self._cache[key] = (gain, dark.astype(np.float32), defect)
        return self._cache[key]

    def defect_mask(self) -> np.ndarray:
        """Bool ``(rows, cols)``: True where the pixel is dead (no photo response)."""
        return self._maps()[2] != 1

    # -- line integrals -----------------------------------------------------------
    def _u_v(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self.config.shape
        p = self.config.pitch_mm
        u = (np.arange(cols) - cols // 2) * p
        v = (np.arange(rows) - rows // 2) * p
        return u, v

    def radiograph_line_integral(self, contrast: float = 0.0) -> np.ndarray:
        """∫μ dl (unitless) of the radiographic phantom, ``(rows, cols)`` float32.

        A torso-like object: soft-tissue ellipsoid, two lungs, a spine, a few bones and a
        vessel tree filled with iodine of relative concentration ``contrast`` (0..1, for DSA).
        """
        u, v = self._u_v()
        x = u[None, :].astype(np.float32)
        y = -v[:, None].astype(np.float32)
        mu_s = self.config.source.mu_scale()
        key = ("rad_base", self.config.binning, mu_s)
        if key in self._cache:  # the anatomy is static: only the iodine term changes per frame
            L = self._cache[key].copy()
            if contrast > 0:
                L += contrast * mu_s * self._vessels(x, y)
            return L
        L = np.zeros((len(v), len(u)), dtype=np.float32)
        # (mu 1/mm, a, b, c (depth semi-axis), x0, y0) in mm
        bodies = [
            (0.020, 62.0, 52.0, 45.0, 0.0, 0.0),  # soft tissue
            (-0.015, 22.0, 32.0, 25.0, -28.0, 6.0),  # lungs (air instead of tissue)
            (-0.015, 22.0, 32.0, 25.0, 28.0, 6.0),
            (0.045, 7.0, 50.0, 7.0, 0.0, 0.0),  # spine
            (0.040, 4.0, 9.0, 4.0, -40.0, -30.0),  # bone islands
            (0.040, 5.0, 5.0, 5.0, 35.0, -32.0),
        ]
        for mu, a, b, c, x0, y0 in bodies:
            q = ((x - x0) / a) ** 2 + ((y - y0) / b) ** 2
            L += mu * mu_s * 2 * c * np.sqrt(np.maximum(1 - q, 0))
        self._cache[key] = L.copy()
        if contrast > 0:
            L += contrast * mu_s * self._vessels(x, y)
        return L

    def _vessels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        key = ("vessels", self.config.binning)
        if key not in self._cache:
            out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
            # a sinuous main vessel and two branches: (x(s), y(s)) curves, radius mm
            s = np.linspace(0, 1, 400)
            curves = [
                (-45 + 90 * s, 20 * np.sin(2 * np.pi * s) - 5, 2.0),
                (10 + 30 * s, 20 * np.sin(2 * np.pi * 0.61) - 5 + 25 * s, 1.2),
                (-20 + 15 * s, 20 * np.sin(2 * np.pi * 0.28) - 5 - 30 * s, 1.0),
            ]
            mu_iodine = 0.25  # 1/mm at full concentration
            for cx, cy, r in curves:
                x0, x1 = cx.min() - 3 * r, cx.max() + 3 * r
                y0, y1 = cy.min() - 3 * r, cy.max() + 3 * r
                xs = x[0] if x.ndim == 2 else x
                ys = y[:, 0] if y.ndim == 2 else y
                ci = np.nonzero((xs >= x0) & (xs <= x1))[0]
                ri = np.nonzero((ys >= y0) & (ys <= y1))[0]
                if not len(ci) or not len(ri):
                    continue
                X = xs[ci][None, :]
                Y = ys[ri][:, None]
                pts = np.stack([cx, cy])[:, ::4]
                d2 = np.full((len(ri), len(ci)), np.inf, dtype=np.float32)
                for px_, py_ in pts.T:  # running minimum: no (rows, cols, points) temporary
                    np.minimum(d2, (X - np.float32(px_)) ** 2 + (Y - np.float32(py_)) ** 2, out=d2)
                seg = 2 * np.sqrt(np.maximum(r * r - d2, 0)) * mu_iodine
                out[np.ix_(ri, ci)] = np.maximum(out[np.ix_(ri, ci)], seg.astype(np.float32))
            self._cache[key] = out
        return self._cache[key]

    def ct_slice_projection(self, k: int) -> np.ndarray:
        """Line integrals ``(cols,)`` of the CT slice phantom for projection ``k``."""
        cfg = self.config
        e = _scaled(SHEPP_LOGAN, self.ct_radius_mm, 0.02 * cfg.source.mu_scale())
        u, _ = self._u_v()
        beta = cfg.angle(k)
        if cfg.geometry == "FAN":
            return ellipse_fan_projection(e, beta, u, cfg.sid, cfg.sdd)
        return ellipse_parallel_projection(e, beta, u)

    # -- frames ---------------------------------------------------------------------
    def contrast_at(self, k: int) -> float:
        """FLUORO bolus: iodine concentration 0 for frames < 10, rising to 1 by frame 40,
        quantised to 1/16 (so noiseless images can be cached)."""
        c = min(max((k - 10) / 30.0, 0.0), 1.0)
        return round(c * 16) / 16

    def mean_signal(self, k: int = 0, kind: str = "image") -> np.ndarray:
        """Noiseless expected photons per (binned) pixel before gain, ``(rows, cols)``."""
        cfg = self.config
        n0 = cfg.source.photons(cfg.exposure_s) * cfg.binning**2
        rows, cols = cfg.shape
        if kind == "dark":
            return np.zeros((rows, cols), dtype=np.float32)
        if kind == "flat":
            return np.full((rows, cols), n0, dtype=np.float32)
        if cfg.mode == "CT":
            p = self.ct_slice_projection(k)
            line = (n0 * np.exp(-p)).astype(np.float32)
            img = np.full((rows, cols), n0, dtype=np.float32)
            h = int(rows * self.ct_height_fraction) // 2
            img[rows // 2 - h : rows // 2 + h, :] = line
            return img
        contrast = self.contrast_at(k) if cfg.mode == "FLUORO" else 0.0
        key = ("rad", cfg.binning, cfg.source, cfg.exposure_s, contrast)
        if key not in self._cache:
            self._cache[key] = (n0 * np.exp(-self.radiograph_line_integral(contrast))).astype(np.float32)
        return self._cache[key]

    def expected_frame(self, k: int = 0, kind: str = "image") -> np.ndarray:
        """Noiseless expected ADU (float32), defects applied, no clipping."""
        cfg = self.config
        gain, dark, _ = self._maps()
        dark_total = dark + self.DARK_CURRENT_ADU_S * cfg.exposure_s
        out = self.mean_signal(k, kind) * (gain * cfg.adu_per_photon / cfg.binning**2) + dark_total
        out[self._maps()[2] == 0] = 0.0
        return out

    def frame(self, k: int = 0, kind: Literal["image", "dark", "flat"] = "image") -> np.ndarray:
        """Frame ``k`` as uint16 ``(rows, cols)`` ADU. ``kind`` dark: tube off; flat: no
        object in the beam. Deterministic in ``(seed, config, k, kind)`` (and the previous
        frame when ``lag`` > 0)."""
        cfg = self.config
        gain, dark, defect = self._maps()
        sig = self.mean_signal(k, kind)
        if self.lag > 0:
            key = (kind, k)
            if self._prev_signal is not None and self._prev_key != key:
                sig = (1 - self.lag) * sig + self.lag * self._prev_signal
            self._prev_signal, self._prev_key = sig, key
        g = gain * np.float32(cfg.adu_per_photon / cfg.binning**2)  # binned pixels average
        dark_total = dark + np.float32(self.DARK_CURRENT_ADU_S * cfg.exposure_s)
        kind_code = {"image": 0, "dark": 1, "flat": 2}[kind]
        rng = np.random.default_rng([self.seed, 2, k, kind_code])
        rows, cols = cfg.shape
        if self.noise == "poisson":
            photons = rng.poisson(sig).astype(np.float32)
            out = photons * g + dark_total
            out += (cfg.read_noise_adu / cfg.binning) * rng.standard_normal(out.shape, dtype=np.float32)
        else:
            dy, dx = (int(v) for v in rng.integers(0, 64, 2))
            sign = np.float32(1.0 if rng.integers(0, 2) else -1.0)
            z = self._noise_field[dy : dy + rows, dx : dx + cols]
            var = sig * (g * g)  # Poisson variance in ADU²
            var += np.float32((cfg.read_noise_adu / cfg.binning) ** 2)
            out = sig * g
            out += dark_total
            np.sqrt(var, out=var)
            var *= z
            if sign < 0:
                out -= var
            else:
                out += var
        np.clip(out, 0, 65535, out=out)
        frame = np.rint(out).astype(np.uint16) if self.noise == "poisson" else out.astype(np.uint16)
        frame[defect == 0] = 0
        return frame

    def truth(self) -> dict:
        """Ground truth for tests: defect positions, CT geometry."""
        cfg = self.config
        return {
            "dead_pixels": self.dead_pixels.tolist(),
            "dead_cols": self.dead_cols.tolist(),
            "dead_rows": self.dead_rows.tolist(),
            "ct_radius_mm": self.ct_radius_mm,
            "shape": cfg.shape,
            "pitch_mm": cfg.pitch_mm,
        }


def benchmark_frame(n: int = 10, binning: int = 1, noise: str = "fast", mode: str = "RAD") -> float:
    """Mean seconds per generated frame (after warm-up), for sizing the frame rate."""
    m = XrayModel(0, DetectorConfig(binning=binning, mode=mode), noise=noise)  # type: ignore[arg-type]
    m.frame(0)
    t = time.perf_counter()
    for k in range(1, n + 1):
        m.frame(k)
    return (time.perf_counter() - t) / n
