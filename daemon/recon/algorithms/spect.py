"""SPECT processing: projections from list mode, triple-energy-window scatter, and a system matrix
with attenuation and the distance-dependent collimator response, for OSEM
(:func:`~medacq.daemon.recon.algorithms.nuclear.osem` runs on it unchanged).

Geometry: the head at gantry angle θ looks along ``u = (cos θ, sin θ)`` (from the rotation axis to
the head); its tangential axis is ``t = (-sin θ, cos θ)``; a point p projects to ``x = p . t`` and is
``d = R - p . u`` from the collimator face. Image layout ``(ny, nx)``, row 0 at +y, as for PET.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.ndimage import gaussian_filter1d, map_coordinates
from scipy.special import erf

__all__ = ["SpectSystemMatrix", "tew_scatter", "histogram_projections"]


def histogram_projections(x_mm: np.ndarray, stop: np.ndarray, weight: np.ndarray, n_stops: int, n_bins: int,
                          fov_mm: float, out: np.ndarray | None = None) -> np.ndarray:
    """Add events (tangential position, stop index, weight) to ``(n_stops, n_bins)`` projections
    over ``±fov_mm / 2``; events outside are dropped. Returns ``out``."""
    b = np.floor((x_mm + fov_mm / 2) / fov_mm * n_bins).astype(np.int64)
    ok = (b >= 0) & (b < n_bins) & (stop >= 0) & (stop < n_stops)
    h = np.bincount(stop[ok] * n_bins + b[ok], weights=weight[ok], minlength=n_stops * n_bins)
    if out is None:
        return h.reshape(n_stops, n_bins)
    out += h.reshape(n_stops, n_bins)
    return out


def tew_scatter(lower: np.ndarray, upper: np.ndarray, w_lower: float, w_upper: float, w_peak: float,
                smooth_bins: float = 2.0) -> np.ndarray:
    """Triple-energy-window scatter estimate in the photopeak window (Ogawa et al. 1991):
    ``(C_lower / W_lower + C_upper / W_upper) x W_peak / 2`` per projection bin, smoothed along the
    bins (Gaussian, ``smooth_bins``) against the side windows' noise."""
    s = (lower / w_lower + upper / w_upper) * w_peak / 2.0
    return gaussian_filter1d(s, smooth_bins, axis=-1) if smooth_bins > 0 else s


class SpectSystemMatrix:
    """``A[(stop, bin), pixel]``: the fraction of a pixel's photons (per collimator acceptance) that
    reach projection bin ``bin`` at gantry stop ``stop``: attenuation from the pixel to the head
    (``exp(-∫μ)`` through the μ-map along ``u``) times the detector response, a Gaussian in ``x``
    with ``FWHM² = (fwhm0 + slope d)² + intrinsic²`` integrated over the bin. Rows grouped by OSEM
    subsets of interleaved stops (:attr:`subsets`, as :class:`~medacq.daemon.recon.algorithms.nuclear.PetSystemMatrix`).

    Args:
        angles_deg: gantry angle of each stop.
        n, fov_mm: image grid (the projections use the same ``n`` bins over ``fov_mm``).
        radius_mm: rotation radius (axis to collimator face).
        mu_per_mm: μ-map at the photon energy on the image grid (``None``: no attenuation).
        fwhm0_mm, slope, intrinsic_fwhm_mm: resolution model.
        n_subsets: OSEM subsets.
    """

    def __init__(self, angles_deg: np.ndarray, n: int = 128, fov_mm: float = 320.0, radius_mm: float = 250.0,
                 mu_per_mm: np.ndarray | None = None, fwhm0_mm: float = 1.5, slope: float = 0.059,
                 intrinsic_fwhm_mm: float = 4.5, n_subsets: int = 6) -> None:
        self.angles = np.asarray(angles_deg, float)
        self.n, self.fov_mm, self.n_subsets = n, fov_mm, n_subsets
        na, nb = len(self.angles), n
        px = fov_mm / n
        c = (np.arange(n) + 0.5) * px - fov_mm / 2
        X, Y = np.meshgrid(c, -c)
        self.mask = X ** 2 + Y ** 2 <= (fov_mm / 2) ** 2
        pix = np.flatnonzero(self.mask.ravel())
        xs, ys = X.ravel()[pix], Y.ravel()[pix]
        edges = np.linspace(-fov_mm / 2, fov_mm / 2, nb + 1)
        rows, cols, vals = [], [], []
        for k, th in enumerate(np.deg2rad(self.angles)):
            ux, uy = np.cos(th), np.sin(th)
            b = -xs * uy + ys * ux
            a = xs * ux + ys * uy
            att = np.ones(len(xs))
            if mu_per_mm is not None:
                att = np.exp(-self._path_integral(mu_per_mm, a, b, ux, uy, c, px))
            d = np.maximum(radius_mm - a, 0.0)
            sig = np.sqrt((fwhm0_mm + slope * d) ** 2 + intrinsic_fwhm_mm ** 2) / 2.3548
            half = np.ceil(3.5 * sig / px).astype(int) + 1
            j0 = np.floor((b + fov_mm / 2) / px).astype(int)
            for off in range(-int(half.max()), int(half.max()) + 1):
                j = j0 + off
                ok = (np.abs(off) <= half) & (j >= 0) & (j < nb)
                lo = (edges[np.clip(j, 0, nb)] - b) / (np.sqrt(2) * sig)
                hi = (edges[np.clip(j + 1, 0, nb)] - b) / (np.sqrt(2) * sig)
                w = 0.5 * (erf(hi) - erf(lo)) * att
                ok &= w > 1e-6
                rows.append(k * nb + j[ok])
                cols.append(pix[ok])
                vals.append(w[ok].astype(np.float32))
        full = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(na * nb, n * n), dtype=np.float32)
        stops = np.arange(na)
        self.subset_rows: list[np.ndarray] = []
        self.subsets: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        for s in range(n_subsets):
            r = (stops[stops % n_subsets == s][:, None] * nb + np.arange(nb)[None, :]).ravel()
            a_s = full[r]
            self.subset_rows.append(r)
            self.subsets.append((a_s.tocsr(), a_s.T.tocsr()))
        self.full = full
        self.nnz = int(full.nnz)

    @staticmethod
    def _path_integral(mu: np.ndarray, a: np.ndarray, b: np.ndarray, ux: float, uy: float, c: np.ndarray,
                       px: float) -> np.ndarray:
        """∫μ from each point (coordinates a along u, b along t) to the edge of the field toward the
        head: μ resampled on a grid aligned with u, summed from the far end, sampled back."""
        n = len(c)
        A, B = np.meshgrid(c, c, indexing="ij")  # rotated grid: A along u, B along t
        gx = A * ux - B * uy  # image x of the rotated grid points
        gy = A * uy + B * ux
        rows = (c[-1] - gy) / px  # image row of y (row 0 at +y)
        cols = (gx - c[0]) / px
        mu_r = map_coordinates(mu, [rows, cols], order=1, mode="constant", cval=0.0)
        # from each cell to the head (+A), half of the own cell included
        tail = np.cumsum(mu_r[::-1], axis=0)[::-1] * px - 0.5 * mu_r * px
        ia = (a - c[0]) / px
        ib = (b - c[0]) / px
        return np.asarray(map_coordinates(tail, [ia, ib], order=1, mode="nearest"), float).reshape(-1)[: len(a)] \
            if n else np.zeros(len(a))

    def forward(self, img: np.ndarray) -> np.ndarray:
        return self.full @ img.ravel().astype(np.float32)
