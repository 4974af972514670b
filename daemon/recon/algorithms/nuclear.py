"""PET list-mode processing: coincidence sorting, sinogram binning, projector, OSEM, corrections.

Everything is vectorised numpy on one core (scipy.sparse for the system matrix).

* :func:`sort_coincidences` -- prompt window and delayed window on time-sorted singles;
* :func:`bin_pairs` -- crystal pairs → sinogram counts through the ring's pair look-up table;
* :class:`PetSystemMatrix` -- pixel-driven projector as a ``scipy.sparse`` matrix, rows grouped by
  OSEM subset; :func:`osem`; :func:`mlem_numpy` (the same projector the obvious way, view by view,
  as the benchmark's baseline);
* :func:`randoms_from_singles`, :func:`scatter_tail_fit` -- additive corrections;
* :func:`decay_factor_integral` -- decay correction to the reference time.

Image layout everywhere: ``(ny, nx)``, row 0 at ``y = +fov/2`` (top), column 0 at ``x = -fov/2``,
the same as :meth:`~medacq.protocols.models.nuclear_phantom.IecBodyPhantom.activity_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from medacq.protocols.pet_geometry import PetRing

__all__ = ["Coincidences", "sort_coincidences", "bin_pairs", "PetSystemMatrix", "osem", "mlem_numpy",
           "randoms_from_singles", "scatter_tail_fit", "decay_factor_integral", "chunked_searchsorted"]


@dataclass
class Coincidences:
    """Sorted pairs: indices into the singles arrays that were sorted.

    Attributes:
        prompt_a, prompt_b: prompt pairs (first and second single of each), int64.
        delayed_a, delayed_b: delayed-window pairs.
        openers: singles that opened a window (for rate bookkeeping).
    """

    prompt_a: np.ndarray
    prompt_b: np.ndarray
    delayed_a: np.ndarray
    delayed_b: np.ndarray
    openers: int


def chunked_searchsorted(a: np.ndarray, q: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """``np.searchsorted(a, q, 'left')`` for sorted ``q``, chunk by chunk so each search runs on
    a cache-sized slice of ``a`` (several times faster than one call on long arrays)."""
    out = np.empty(len(q), np.int64)
    for s in range(0, len(q), chunk):
        qq = q[s:s + chunk]
        lo = int(np.searchsorted(a, qq[0]))
        hi = int(np.searchsorted(a, qq[-1], "right"))
        out[s:s + chunk] = np.searchsorted(a[lo:hi], qq) + lo
    return out


def sort_coincidences(t_ps: np.ndarray, window_ps: float, delay_ps: float | None = 100_000.0,
                      start: int = 0, stop: int | None = None, first_is_opener: bool = True) -> Coincidences:
    """Coincidences among time-sorted singles (``t_ps`` int64, non-decreasing).

    A single *opens* a window when it is more than ``window_ps`` after the single before it. An
    opener ``i`` makes a **prompt** with ``i + 1`` when exactly one other single lies in
    ``(t_i, t_i + window]`` (two or more: a multiple, rejected). It makes a **delayed**
    coincidence (randoms estimate) with the single ``k`` when exactly one single lies in
    ``[t_i + delay, t_i + delay + window]``. Only openers ``start <= i < stop`` are considered;
    the caller keeps enough singles after ``stop`` (``delay + window`` of time) for their windows,
    and one before ``start`` (or ``first_is_opener`` for ``start == 0``).
    """
    n = len(t_ps)
    stop = n if stop is None else stop
    w = int(window_ps)
    if stop <= start or n == 0:
        e = np.empty(0, np.int64)
        return Coincidences(e, e, e, e, 0)
    # padded copy: every neighbour below is a view (no gathers, no bounds cases)
    big = np.iinfo(np.int64).max // 4
    tp = np.empty(n + 3, np.int64)
    tp[0] = -big
    tp[1:n + 1] = t_ps
    tp[n + 1:] = big
    this = tp[start + 1:stop + 1]
    d_next = tp[start + 2:stop + 2] - this
    opener = (this - tp[start:stop]) > w
    if start == 0 and not first_is_opener:
        opener[0] = False
    prompt = opener & (d_next <= w) & ((tp[start + 3:stop + 3] - this) > w)
    pa = np.flatnonzero(prompt) + start
    out_d_a = out_d_b = np.empty(0, np.int64)
    if delay_ps is not None:
        q = this + int(delay_ps)
        lo = chunked_searchsorted(t_ps, q)  # first single at or after t_i + delay
        hi_edge = q + w
        lone = opener & (d_next > w)  # an empty prompt window (see the docstring)
        dl = lone & (tp[lo + 1] <= hi_edge) & (tp[lo + 2] > hi_edge)
        idx = np.flatnonzero(dl)
        out_d_a, out_d_b = idx + start, lo[idx]
    return Coincidences(pa, pa + 1, out_d_a, out_d_b, int(np.count_nonzero(opener)))


def bin_pairs(ring: PetRing, c1: np.ndarray, c2: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Add crystal pairs ``(c1, c2)`` to a flat sinogram (``views * radial``, float64); pairs outside
    the field of view (or of the same crystal) are dropped. Returns ``out``."""
    lut = ring.pair_lut.ravel()
    n = ring.n_crystals
    b = lut[c1.astype(np.int64) * n + c2]
    b = b[b >= 0]
    counts = np.bincount(b, minlength=ring.n_views * ring.n_radial)
    if out is None:
        return counts.astype(np.float64)
    out += counts
    return out


class PetSystemMatrix:
    """``A[bin, pixel]``: probability that an annihilation in the pixel gives a LOR in the bin
    (2D ring, no attenuation: every photon reaches the ring), pixel-driven.

    For half-view ``h`` (angle ``phi = pi h / n``) a pixel centre at ``x cos phi + y sin phi``
    falls between two radial bins of the half-view's parity; it is shared between them linearly
    in ``u`` and weighted ``1 / n`` (the chance of that half-view), so every column sums to the
    fraction of LOR directions kept in the sinogram. Rows are ordered by subset
    (:attr:`subset_rows`); :attr:`subsets` holds ``(A_k, A_k^T)`` CSR pairs in float32.

    Args:
        ring: the scanner.
        n: image size (``n x n``).
        fov_mm: image side, mm (pixels ``fov_mm / n``).
        n_subsets: OSEM subsets (views interleaved: view ``v`` in subset ``v mod n_subsets``).
    """

    def __init__(self, ring: PetRing, n: int = 128, fov_mm: float = 320.0, n_subsets: int = 10) -> None:
        self.ring, self.n, self.fov_mm, self.n_subsets = ring, n, fov_mm, n_subsets
        nc = ring.n_crystals
        u_min, u_max = ring.u_range
        nr = ring.n_radial
        px = fov_mm / n
        c = (np.arange(n) + 0.5) * px - fov_mm / 2
        X, Y = np.meshgrid(c, -c)
        self.mask = (X ** 2 + Y ** 2) <= (min(fov_mm / 2, ring.fov_mm / 2)) ** 2
        pix = np.flatnonzero(self.mask.ravel())
        xs, ys = X.ravel()[pix], Y.ravel()[pix]
        rows, cols, vals = [], [], []
        R = ring.radius_mm
        for h in range(nc):
            phi = np.pi * h / nc
            s = xs * np.cos(phi) + ys * np.sin(phi)
            u = np.arccos(np.clip(s / R, -1, 1)) * nc / np.pi
            par = h % 2
            u0 = u_min + ((par - u_min) % 2)  # first u of this parity
            k = (u - u0) / 2.0
            k0 = np.floor(k).astype(np.int64)
            f = k - k0
            for kk, ww in ((k0, 1.0 - f), (k0 + 1, f)):
                uu = u0 + 2 * kk
                ok = (uu >= u_min) & (uu <= u_max) & (ww > 0)
                rows.append((h // 2) * nr + (uu[ok] - u_min))
                cols.append(pix[ok])
                vals.append((ww[ok] / nc).astype(np.float32))
        r, cidx, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        full = sp.csr_matrix((v, (r, cidx)), shape=(ring.n_views * nr, n * n), dtype=np.float32)
        views = np.arange(ring.n_views)
        self.subset_rows: list[np.ndarray] = []
        self.subsets: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        for k in range(n_subsets):
            rws = (views[views % n_subsets == k][:, None] * nr + np.arange(nr)[None, :]).ravel()
            a = full[rws]
            self.subset_rows.append(rws)
            self.subsets.append((a.tocsr(), a.T.tocsr()))
        self.full = full
        self.full_t = full.T.tocsr()
        self.nnz = int(full.nnz)

    def forward(self, img: np.ndarray) -> np.ndarray:
        """Flat sinogram ``A @ img.ravel()`` (float32)."""
        return self.full @ img.ravel().astype(np.float32)

    def back(self, sino: np.ndarray) -> np.ndarray:
        """``A^T @ sino`` as an ``(n, n)`` image."""
        return (self.full_t @ sino.ravel().astype(np.float32)).reshape(self.n, self.n)

    def attenuation_factors(self, mu_per_mm: np.ndarray) -> np.ndarray:
        """``exp(-∫μ)`` per bin from a μ-map on this image grid (1/mm): line integrals of the map
        through the same projector (a pixel's weight x n x pixel area / local bin spacing)."""
        nc = self.ring.n_crystals
        _, s = self.ring.bin_geometry()
        u = np.arange(self.ring.u_range[0], self.ring.u_range[1] + 1)
        ds = 2 * self.ring.radius_mm * np.pi / nc * np.sin(np.pi * u / nc)  # same-parity spacing
        px2 = (self.fov_mm / self.n) ** 2
        line = self.forward(mu_per_mm) * nc * px2 / np.tile(ds, self.ring.n_views)
        return np.exp(-line.astype(np.float64))


def osem(system: PetSystemMatrix, prompts: np.ndarray, mult: np.ndarray, additive: np.ndarray,
         n_iter: int = 3, x0: np.ndarray | None = None) -> np.ndarray:
    """OSEM: ``E[prompts] = mult * (A x) + additive`` (flat sinograms); ``x`` in annihilations per
    pixel. Returns the ``(n, n)`` image after ``n_iter`` full iterations over all subsets."""
    n = system.n
    x = (np.ones(n * n, np.float32) if x0 is None else x0.ravel().astype(np.float32).copy())
    x *= system.mask.ravel()
    if x0 is None:  # scale the start image to the data
        tot = float(prompts.sum() - additive.sum())
        x *= max(tot, 1.0) / max(float((mult * system.forward(x.reshape(n, n))).sum()), 1e-12)
    y = prompts.astype(np.float32)
    m = mult.astype(np.float32)
    add = additive.astype(np.float32)
    sens = [at @ m[rows] for (a, at), rows in zip(system.subsets, system.subset_rows)]
    for _ in range(n_iter):
        for (a, at), rows, s in zip(system.subsets, system.subset_rows, sens):
            mk = m[rows]
            ybar = mk * (a @ x) + add[rows]
            ratio = np.divide(y[rows], ybar, out=np.zeros_like(ybar), where=ybar > 0)
            x *= np.divide(at @ (mk * ratio), s, out=np.zeros_like(x), where=s > 0)
    return x.reshape(n, n)


def mlem_numpy(ring: PetRing, prompts: np.ndarray, mult: np.ndarray, additive: np.ndarray, n: int = 128,
               fov_mm: float = 320.0, n_iter: int = 1, x0: np.ndarray | None = None) -> np.ndarray:
    """The same model, written the obvious way: MLEM with the pixel-driven projector recomputed
    view by view in numpy (``np.bincount`` forward, gather back), no precomputed matrix. The
    benchmark's baseline for :func:`osem`."""
    nc = ring.n_crystals
    u_min, u_max = ring.u_range
    nr = ring.n_radial
    px = fov_mm / n
    c = (np.arange(n) + 0.5) * px - fov_mm / 2
    X, Y = np.meshgrid(c, -c)
    R = ring.radius_mm
    inside = (X ** 2 + Y ** 2 <= min(fov_mm / 2, ring.fov_mm / 2) ** 2).ravel()
    xs, ys = X.ravel(), Y.ravel()
    x = np.ones(n * n) * inside if x0 is None else x0.ravel().astype(float).copy()
    y = prompts.reshape(ring.n_views, nr)
    m = mult.reshape(ring.n_views, nr)
    add = additive.reshape(ring.n_views, nr)

    def weights(h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        phi = np.pi * h / nc
        u = np.arccos(np.clip((xs * np.cos(phi) + ys * np.sin(phi)) / R, -1, 1)) * nc / np.pi
        u0 = u_min + (((h % 2) - u_min) % 2)
        k = (u - u0) / 2.0
        k0 = np.floor(k).astype(np.int64)
        f = k - k0
        r0, r1 = u0 + 2 * k0 - u_min, u0 + 2 * k0 + 2 - u_min
        w0 = np.where(inside & (r0 >= 0) & (r0 < nr), (1 - f) / nc, 0.0)
        w1 = np.where(inside & (r1 >= 0) & (r1 < nr), f / nc, 0.0)
        return np.clip(r0, 0, nr - 1), np.clip(r1, 0, nr - 1), w0, w1

    for _ in range(n_iter):
        num = np.zeros(n * n)
        den = np.zeros(n * n)
        for h in range(nc):
            v = h // 2
            r0, r1, w0, w1 = weights(h)
            fp = np.bincount(r0, w0 * x, nr) + np.bincount(r1, w1 * x, nr)
            ybar = m[v] * fp + add[v]
            ratio = np.divide(y[v], ybar, out=np.zeros(nr), where=ybar > 0) * m[v]
            num += w0 * ratio[r0] + w1 * ratio[r1]
            den += w0 * m[v][r0] + w1 * m[v][r1]
        x *= np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return x.reshape(n, n)


def randoms_from_singles(ring: PetRing, singles_per_crystal: np.ndarray, total: float) -> np.ndarray:
    """Smooth randoms sinogram: ``r_ij ∝ S_i S_j`` (singles per crystal), scaled so its sum over the
    sinogram is ``total`` (the delayed-window count). Flat, float64."""
    s = singles_per_crystal.astype(np.float64)
    lut = ring.pair_lut
    ok = lut >= 0
    prod = np.outer(s, s)
    out = np.zeros(ring.n_views * ring.n_radial)
    np.add.at(out, lut[ok], prod[ok])  # each bin holds one pair, seen as (i, j) and (j, i)
    tot = out.sum()
    return out * (total / tot) if tot > 0 else out


def scatter_tail_fit(ring: PetRing, net: np.ndarray, att: np.ndarray, sigma_mm: float = 60.0,
                     tail_att: float = 0.995, smooth_views: int = 15) -> np.ndarray:
    """Scatter estimate: each view's net (prompts - randoms) profile blurred along ``s`` with a
    Gaussian of ``sigma_mm``, scaled per view so that it matches the net counts in the tails (bins
    whose LOR misses the attenuating body, ``att >= tail_att``: there only scatter remains); the
    per-view tail sums are smoothed over ``smooth_views`` neighbouring views first (noise). On the
    simulated IEC phantom this gives a scatter fraction within about 1-2 points of the truth and an
    interior bias of the background under 2 % (a global scale left 4-5 %). Flat, float64, >= 0."""
    from scipy.ndimage import uniform_filter1d

    nv, nr = ring.sinogram_shape
    y = net.reshape(nv, nr)
    _, s = ring.bin_geometry()
    s0 = s[0]
    # blur each view with a Gaussian kernel in s (non-uniform radial spacing: dense matrix, nr x nr)
    k = np.exp(-0.5 * ((s0[:, None] - s0[None, :]) / sigma_mm) ** 2)
    k /= k.sum(axis=1, keepdims=True)
    shape = y @ k.T
    tails = (att.reshape(nv, nr) >= tail_att)
    num = uniform_filter1d(np.where(tails, y, 0.0).sum(axis=1), smooth_views, mode="wrap")
    den = uniform_filter1d(np.where(tails, shape, 0.0).sum(axis=1), smooth_views, mode="wrap")
    alpha = np.clip(np.divide(num, den, out=np.zeros_like(num), where=den > 0), 0.0, None)
    return np.clip(alpha[:, None] * shape, 0, None).ravel()


def decay_factor_integral(decay_constant: float, t1_s: float, t2_s: float) -> float:
    """``∫_{t1}^{t2} exp(-λ t) dt``: decays in ``[t1, t2]`` per unit activity at ``t = 0`` (s)."""
    if decay_constant <= 0:
        return t2_s - t1_s
    return float((np.exp(-decay_constant * t1_s) - np.exp(-decay_constant * t2_s)) / decay_constant)
