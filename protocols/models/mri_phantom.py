"""MR Shepp-Logan phantom (Gach, Tanase & Boada 2008) with closed-form k-space.

The ellipsoids, spin densities and relaxation models are the values of the paper as tabulated
by phantominator's ``mr_shepp_logan`` (github mckib2/phantominator): ``T1 = A * B0**C`` (s, B0
in T) except CSF (4.2 s); ``T2`` per tissue. A 2D slice at normalised height ``z`` cuts each
ellipsoid into an ellipse (semi-axes scaled by ``sqrt(1 - (z - zc)**2 / c**2)``).

Compartments: every ellipse is a compartment with its own M0, T1, T2 and its own magnetisation.
The phantom is nested -- scalp > marrow > CSF > grey matter > the inner structures -- and an
inner ellipse *replaces* what it lies in: the image is ``sum_i (m_i - m_parent(i)) * 1_i(r)``,
linear in each compartment's magnetisation ``m_i``, so its Fourier transform is the same sum of
ellipse transforms (closed form, Bessel J1): nothing is an FFT of a raster. Where two inner
ellipses overlap (a sliver of a ventricle and the white-matter ellipse) their differences add,
as phantominator adds its parameter maps.

Geometry: normalised coordinates ``[-1, 1]`` times ``half_fov_m`` (m); ``x`` right, ``y`` up
(anterior). k in cycles/m; ``F(k) = ∫ 1_ellipse(r) exp(-i 2π k·r) dr`` (m²).
"""

from __future__ import annotations

import numpy as np
from scipy.special import j1

__all__ = ["TISSUES", "MRSheppLogan", "spin_echo_signal", "spoiled_gre_signal"]

#: tissue → (A, C, explicit T1 s or nan, T2 s): Gach 2008 as in phantominator
TISSUES: dict[str, tuple[float, float, float, float]] = {
    "scalp": (0.324, 0.137, np.nan, 0.07),
    "marrow": (0.533, 0.088, np.nan, 0.05),
    "csf": (np.nan, np.nan, 4.2, 1.99),
    "gray-matter": (0.857, 0.376, np.nan, 0.1),
    "white-matter": (0.583, 0.382, np.nan, 0.08),
    "tumor": (0.926, 0.217, np.nan, 0.1),
}

# x, y, z, a, b, c, theta(deg), M0, tissue, parent index
_ELLIPSOIDS: tuple[tuple[float, float, float, float, float, float, float, float, str, int], ...] = (
    (0.0, 0.0, 0.0, 0.72, 0.95, 0.93, 0.0, 0.8, "scalp", -1),
    (0.0, 0.0, 0.0, 0.69, 0.92, 0.9, 0.0, 0.12, "marrow", 0),
    (0.0, -0.0184, 0.0, 0.6624, 0.874, 0.88, 0.0, 0.98, "csf", 1),
    (0.0, -0.0184, 0.0, 0.6524, 0.864, 0.87, 0.0, 0.745, "gray-matter", 2),
    (-0.22, 0.0, -0.25, 0.41, 0.16, 0.21, -72.0, 0.98, "csf", 3),
    (0.22, 0.0, -0.25, 0.31, 0.11, 0.22, 72.0, 0.98, "csf", 3),
    (0.0, 0.35, -0.25, 0.21, 0.25, 0.35, 0.0, 0.617, "white-matter", 3),
    (0.0, 0.1, -0.25, 0.046, 0.046, 0.046, 0.0, 0.95, "tumor", 3),
    (-0.08, -0.605, -0.25, 0.046, 0.023, 0.02, 0.0, 0.95, "tumor", 3),
    (0.06, -0.605, -0.25, 0.046, 0.023, 0.02, -90.0, 0.95, "tumor", 3),
    (0.0, -0.1, -0.25, 0.046, 0.046, 0.046, 0.0, 0.95, "tumor", 3),
    (0.0, -0.605, -0.25, 0.023, 0.023, 0.023, 0.0, 0.95, "tumor", 3),
    (0.06, -0.105, 0.0625, 0.056, 0.04, 0.1, -90.0, 0.93, "tumor", 3),
    (0.0, 0.1, 0.625, 0.056, 0.056, 0.1, 0.0, 0.98, "csf", 3),
)


def spin_echo_signal(m0: np.ndarray, t1: np.ndarray, t2: np.ndarray, te: float, tr: float) -> np.ndarray:
    """Steady-state spin-echo magnitude (90°-180°, ideal pulses, spoiled between TRs)."""
    out: np.ndarray = m0 * (1 - 2 * np.exp(-(tr - te / 2) / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)
    return out


def spoiled_gre_signal(m0: np.ndarray, t1: np.ndarray, t2: np.ndarray, te: float, tr: float,
                       flip_deg: float) -> np.ndarray:
    """Steady-state spoiled gradient echo (Ernst), ``T2`` for the echo decay."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / t1)
    out: np.ndarray = m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / t2)
    return out


class MRSheppLogan:
    """The slice ``z`` (normalised, default -0.25: the plane of the paper's 2D phantom) of the
    MR Shepp-Logan phantom at field ``b0_t`` (T), ``half_fov_m`` metres per normalised unit.

    Per-ellipse arrays (compartments in this slice): centres ``xc``, ``yc`` and semi-axes ``a``,
    ``b`` (m), rotation ``theta`` (rad), ``m0``, ``t1``/``t2`` (s), ``tissue`` names and the
    ``parent`` index (-1: none)."""

    def __init__(self, b0_t: float = 0.2, half_fov_m: float = 0.1, z: float = -0.25) -> None:
        self.b0_t, self.half_fov_m, self.z = b0_t, half_fov_m, z
        rows = []
        kept = []
        for idx, (x, y, zc, a, b, c, th, m0, tissue, parent) in enumerate(_ELLIPSOIDS):
            if abs(z - zc) >= c:
                continue
            kept.append(idx)
            s = np.sqrt(1 - (z - zc) ** 2 / c ** 2)
            A, C, t1, t2 = TISSUES[tissue]
            if np.isnan(t1):
                t1 = A * b0_t ** C
            rows.append((x, y, a * s, b * s, np.deg2rad(th), m0, t1, t2, tissue, parent))
        remap = {old: new for new, old in enumerate(kept)}
        h = half_fov_m
        col = lambda i: np.array([r[i] for r in rows], dtype=float)  # noqa: E731
        self.xc: np.ndarray = col(0) * h
        self.yc: np.ndarray = col(1) * h
        self.a: np.ndarray = col(2) * h
        self.b: np.ndarray = col(3) * h
        self.theta: np.ndarray = col(4)
        self.m0: np.ndarray = col(5)
        self.t1: np.ndarray = col(6)
        self.t2: np.ndarray = col(7)
        self.tissue: list[str] = [str(r[8]) for r in rows]
        self.parent: np.ndarray = np.array([remap.get(int(r[9]), -1) for r in rows], dtype=int)

    @property
    def n(self) -> int:
        """Number of compartments (ellipses in this slice)."""
        return len(self.m0)

    def deltas(self, m: np.ndarray) -> np.ndarray:
        """Per-ellipse weights ``m_i - m_parent(i)`` from compartment values ``m`` (last axis)."""
        m = np.asarray(m)
        par = np.where(self.parent >= 0, self.parent, 0)
        out: np.ndarray = m - np.where(self.parent >= 0, m[..., par], 0)
        return out

    def ellipse_ft(self, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
        """``(samples, ellipses)`` complex: each ellipse's transform at ``(kx, ky)`` (cycles/m), m²."""
        kx = np.asarray(kx, dtype=float)[:, None]
        ky = np.asarray(ky, dtype=float)[:, None]
        c, s = np.cos(self.theta), np.sin(self.theta)
        kap = np.sqrt((self.a * (kx * c + ky * s)) ** 2 + (self.b * (kx * s - ky * c)) ** 2)
        small = kap < 1e-9
        safe = np.where(small, 1.0, kap)
        mag = np.where(small, np.pi * self.a * self.b, self.a * self.b * j1(2 * np.pi * safe) / safe)
        out: np.ndarray = mag * np.exp(-2j * np.pi * (kx * self.xc + ky * self.yc))
        return out

    def kspace(self, kx: np.ndarray, ky: np.ndarray, m: np.ndarray) -> np.ndarray:
        """The object's transform at ``(kx, ky)`` for compartment values ``m`` (``(n,)`` or
        ``(samples, n)``)."""
        out: np.ndarray = np.sum(self.ellipse_ft(kx, ky) * self.deltas(m), axis=-1)
        return out

    def masks(self, n: int, fov_m: float, supersample: int = 1) -> np.ndarray:
        """``(ellipses, y, x)`` coverage fraction of each pixel of an ``n × n`` grid over
        ``fov_m`` (pixel centres at ``(i - n/2) * fov_m / n``)."""
        ss = supersample
        d = fov_m / n
        off = (np.arange(ss) + 0.5) / ss - 0.5
        g = (np.arange(n) - n / 2)[:, None] * d + off[None, :] * d
        xs = g.reshape(-1)
        X, Y = np.meshgrid(xs, xs)
        out = np.empty((self.n, n, n))
        for i in range(self.n):
            c, s = np.cos(self.theta[i]), np.sin(self.theta[i])
            dx, dy = X - self.xc[i], Y - self.yc[i]
            inside = ((dx * c + dy * s) / self.a[i]) ** 2 + ((dx * s - dy * c) / self.b[i]) ** 2 <= 1
            out[i] = inside.reshape(n, ss, n, ss).mean(axis=(1, 3))
        return out

    def image(self, m: np.ndarray, n: int, fov_m: float, supersample: int = 4) -> np.ndarray:
        """Ground-truth image ``(y, x)`` of compartment values ``m`` (row 0 = most negative y)."""
        out: np.ndarray = np.tensordot(self.deltas(np.asarray(m)), self.masks(n, fov_m, supersample), axes=(0, 0))
        return out
