"""EIT time-difference reconstruction: one-step Gauss–Newton (JAC) onto a 32×32 grid.

Setup (mesh → Jacobian ``J`` (M, N) → reconstruction matrix) uses the Woodbury form

    H = R⁻¹Jᵀ (J R⁻¹ Jᵀ + λI)⁻¹        (equal to pyEIT's (JᵀJ + λR)⁻¹Jᵀ)

with prior ``R = diag(JᵀJ)^p`` ("kotre"), ``diag(JᵀJ)`` ("lm") or ``I`` ("identity"),
so only an M×M system is solved (M = 208 for 16 electrodes). A GREIT-style element→pixel
interpolation ``P`` (n², N) is folded in: ``R_img = -P H`` (float32), and a frame is one
mat-vec ``image = R_img @ (v - v_ref)``. Positive image values are conductivity increases.

Image axes: ``image[row, col]``, row 0 = anterior (+y), col 0 = -x; the grid spans the
square ``[-1, 1]²`` in mesh units (thorax half-width = 1); pixels outside the thorax are 0
and ``mask`` is False there.

The setup is cached on disk (``cache_dir``), keyed by a hash of the geometry, the pattern
and the parameters, so a restart loads it instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from medacq.protocols.models.eit_fem import (
    EitMesh,
    Forward,
    Pattern,
    ThoraxShape,
    adjacent_pattern,
    locate_points,
    opposition_pattern,
    thorax_mesh,
)

__all__ = [
    "ReconParams",
    "compute_h",
    "pixel_interpolation",
    "pixel_centres",
    "EitReconstructor",
    "TimeDifferenceImager",
    "ImageFrame",
    "RespiratoryRateEstimator",
    "estimate_rate_bpm",
    "image_centroid",
]

_CACHE_VERSION = 1


@dataclass(frozen=True)
class ReconParams:
    """Reconstruction parameters.

    Attributes:
        prior: "kotre" (diag(JᵀJ)^p), "lm" (diag(JᵀJ)) or "identity".
        lamb: regularisation λ (pyEIT default 1e-3).
        p: kotre exponent.
        grid: image side in pixels (32 → 32×32).
        subsamples: per-pixel sub-samples per axis for the element→pixel interpolation.
        normalize: use (v - v_ref) / |v_ref| instead of v - v_ref (J scaled to match).
        magnitude: frames are magnitudes |v| (OpenEIT): J rows multiplied by sign(v0).
    """

    prior: str = "kotre"
    lamb: float = 1e-3
    p: float = 0.2
    grid: int = 32
    subsamples: int = 3
    normalize: bool = False
    magnitude: bool = False


def compute_h(J: np.ndarray, lamb: float = 1e-3, prior: str = "kotre", p: float = 0.2) -> np.ndarray:
    """Reconstruction matrix ``H`` (N, M) by the Woodbury identity (M×M solve only)."""
    d = np.einsum("ij,ij->j", J, J)
    if prior == "kotre":
        r = d**p
    elif prior == "lm":
        r = d
    elif prior in ("identity", "dgn"):
        r = np.ones_like(d)
    else:
        raise ValueError(f"unknown prior {prior!r}")
    rinv = 1.0 / r
    JR = J * rinv[None, :]  # J R⁻¹, (M, N)
    A = JR @ J.T
    A[np.diag_indices_from(A)] += lamb
    # H = R⁻¹Jᵀ A⁻¹ = (A⁻¹ J R⁻¹)ᵀ
    return sla.solve(A, JR, assume_a="pos").T


def pixel_centres(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centre coordinates ``(x (n,), y (n,))``: x ascending with column, y descending with row."""
    c = -1.0 + (np.arange(n) + 0.5) * 2.0 / n
    return c, c[::-1].copy()


def pixel_interpolation(mesh: EitMesh, n: int = 32, subsamples: int = 3) -> tuple[sp.csr_matrix, np.ndarray]:
    """Element→pixel averaging matrix ``P`` (n*n, n_elements) and pixel ``mask`` (n, n).

    Each pixel averages the elements under ``subsamples²`` points spread over it; a pixel
    counts as inside when at least half of its sub-samples hit the mesh.
    """
    s = subsamples
    step = 2.0 / n
    off = (np.arange(s) + 0.5) / s * step
    x0 = -1.0 + np.arange(n) * step
    y0 = 1.0 - np.arange(n) * step
    xs = (x0[:, None] + off[None, :]).ravel()  # per column, sub-sample
    ys = (y0[:, None] - off[None, :]).ravel()  # per row, sub-sample
    gy, gx = np.meshgrid(ys, xs, indexing="ij")  # (n*s, n*s)
    elem = locate_points(mesh, np.column_stack([gx.ravel(), gy.ravel()])).reshape(n, s, n, s)
    pix = (np.arange(n)[:, None, None, None] * n + np.arange(n)[None, None, :, None]) * np.ones((1, s, 1, s), dtype=np.int64)
    hit = elem >= 0
    counts = hit.sum(axis=(1, 3)).reshape(-1)
    mask = counts >= (s * s) / 2
    rows, cols = pix[hit], elem[hit]
    keep = mask[rows]
    rows, cols = rows[keep], cols[keep]
    w = 1.0 / counts[rows]
    P = sp.csr_matrix((w, (rows, cols)), shape=(n * n, mesh.n_elements))
    return P, mask.reshape(n, n)


def _cache_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class EitReconstructor:
    """Precomputed time-difference reconstructor.

    Attributes:
        matrix: ``(grid², M)`` float32, image = matrix @ dv (conductivity change).
        mask: ``(grid, grid)`` bool, pixels inside the thorax.
        H: ``(N, M)`` float32 element-space matrix (Δσ_elements = -H @ dv).
        v0: ``(M,)`` homogeneous model frame (point electrodes, σ = 1).
        cache_hit: whether the setup came from the disk cache.
        setup_s: wall time spent building or loading the setup (s).
    """

    def __init__(
        self,
        matrix: np.ndarray,
        mask: np.ndarray,
        H: np.ndarray,
        v0: np.ndarray,
        pattern: Pattern,
        params: ReconParams,
        mesh: EitMesh | None = None,
        cache_hit: bool = False,
        setup_s: float = 0.0,
    ) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.mask = mask
        self.H = H
        self.v0 = v0
        self.pattern = pattern
        self.params = params
        self.mesh = mesh
        self.cache_hit = cache_hit
        self.setup_s = setup_s
        self._inv_ref_abs: np.ndarray | None = None

    # ------------------------------------------------------------------ construction

    @staticmethod
    def build_matrices(mesh: EitMesh, pattern: Pattern, params: ReconParams) -> dict[str, np.ndarray]:
        """Jacobian → H → folded pixel matrix (the uncached setup path)."""
        J, v0 = Forward(mesh).jacobian(pattern, 1.0)
        if params.magnitude:
            J = J * np.sign(v0)[:, None]
            v0 = np.abs(v0)
        if params.normalize:
            J = J / np.abs(v0)[:, None]
        H = compute_h(J, params.lamb, params.prior, params.p)
        P, mask = pixel_interpolation(mesh, params.grid, params.subsamples)
        R = -(P @ H)
        return {"matrix": R.astype(np.float32), "mask": mask, "H": H.astype(np.float32), "v0": v0}

    @classmethod
    def from_mesh(
        cls, mesh: EitMesh, pattern: Pattern, params: ReconParams = ReconParams(), cache_dir: str | os.PathLike | None = None
    ) -> "EitReconstructor":
        """Set up for a given mesh (cache key: mesh digest + pattern + params)."""
        key = {"v": _CACHE_VERSION, "mesh": mesh.digest(), "pattern": pattern.key(), "params": asdict(params)}
        return cls._cached(key, lambda: (mesh, pattern), params, cache_dir)

    @classmethod
    def for_thorax(
        cls,
        n_el: int = 16,
        n_elements: int = 3000,
        pattern: str = "adjacent",
        params: ReconParams = ReconParams(),
        cache_dir: str | os.PathLike | None = None,
        shape: ThoraxShape | None = None,
    ) -> "EitReconstructor":
        """Set up for the standard thorax geometry; a cache hit skips meshing as well."""
        shape = shape or ThoraxShape()
        key = {"v": _CACHE_VERSION, "geometry": [shape.key(), n_el, n_elements], "pattern": pattern, "params": asdict(params)}

        def make() -> tuple[EitMesh, Pattern]:
            mesh = thorax_mesh(n_el, n_elements, shape)
            pat = adjacent_pattern(n_el) if pattern == "adjacent" else opposition_pattern(n_el)
            return mesh, pat

        if pattern not in ("adjacent", "opposition"):
            raise ValueError(f"unknown pattern {pattern!r}")
        pat = adjacent_pattern(n_el) if pattern == "adjacent" else opposition_pattern(n_el)
        return cls._cached(key, make, params, cache_dir, pattern_hint=pat)

    @classmethod
    def _cached(cls, key: dict, make, params: ReconParams, cache_dir, pattern_hint: Pattern | None = None) -> "EitReconstructor":
        t0 = time.perf_counter()
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"eit-setup-{_cache_key(key)}.npz"
            if path.exists():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        pat = Pattern(int(z["n_el"]), z["ex_mat"], z["meas_mat"], str(z["pattern_name"]))
                        return cls(z["matrix"], z["mask"], z["H"], z["v0"], pat, params, None, True, time.perf_counter() - t0)
                except (OSError, KeyError, ValueError):
                    pass  # corrupt cache entry: rebuild it
        mesh, pat = make()
        m = cls.build_matrices(mesh, pat, params)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(
                tmp, n_el=pat.n_el, ex_mat=pat.ex_mat, meas_mat=pat.meas_mat, pattern_name=pat.name, **m
            )
            os.replace(tmp, path)
        return cls(m["matrix"], m["mask"], m["H"], m["v0"], pat, params, mesh, False, time.perf_counter() - t0)

    # ------------------------------------------------------------------ per frame

    @property
    def grid(self) -> int:
        return self.mask.shape[0]

    def difference(self, v: np.ndarray, v_ref: np.ndarray) -> np.ndarray:
        dv = np.asarray(v, dtype=np.float32) - np.asarray(v_ref, dtype=np.float32)
        if self.params.normalize:
            dv = dv / np.abs(np.asarray(v_ref, dtype=np.float32))
        return dv

    def image(self, dv: np.ndarray) -> np.ndarray:
        """Pixel image (grid, grid) float32 of the conductivity change for ``dv`` (M,)."""
        return (self.matrix @ dv.astype(np.float32, copy=False)).reshape(self.grid, self.grid)

    def elements(self, dv: np.ndarray) -> np.ndarray:
        """Element-space conductivity change (N,) (pyEIT JAC ``solve`` equivalent)."""
        return -(self.H @ dv.astype(np.float32, copy=False))


@dataclass(frozen=True, slots=True, eq=False)
class ImageFrame:
    """One reconstructed frame: image (grid, grid) float32 and global impedance change."""

    index: int
    image: np.ndarray
    global_impedance: float


class TimeDifferenceImager:
    """Time-difference imaging against a reference: mean of the first ``n_ref`` frames.

    ``push(v)`` returns ``None`` while collecting the reference, then an
    :class:`ImageFrame` per frame. ``rereference()`` collects a new reference from the
    next ``n_ref`` frames; ``set_reference(v)`` sets it directly. The global impedance is
    ``-sum(image[mask])`` (impedance rises as conductivity falls on inspiration).
    """

    def __init__(self, recon: EitReconstructor, n_ref: int = 10) -> None:
        if n_ref < 1:
            raise ValueError("n_ref must be >= 1")
        self.recon = recon
        self.n_ref = n_ref
        self._acc: np.ndarray | None = None
        self._count = 0
        self.reference: np.ndarray | None = None
        self.frames = 0
        self._flat_mask = recon.mask.ravel()

    def rereference(self) -> None:
        self.reference = None
        self._acc = None
        self._count = 0

    def set_reference(self, v: np.ndarray) -> None:
        self.reference = np.asarray(v, dtype=np.float32).copy()
        self._acc, self._count = None, 0

    def push(self, v: np.ndarray) -> ImageFrame | None:
        v = np.asarray(v, dtype=np.float32)
        if self.reference is None:
            self._acc = v.astype(np.float64) if self._acc is None else self._acc + v
            self._count += 1
            if self._count >= self.n_ref:
                self.reference = (self._acc / self._count).astype(np.float32)
                self._acc = None
            return None
        img = self.recon.image(self.recon.difference(v, self.reference))
        gi = -float(img.ravel()[self._flat_mask].sum())
        self.frames += 1
        return ImageFrame(self.frames - 1, img, gi)


def estimate_rate_bpm(x: np.ndarray, fs: float, fmin: float = 0.08, fmax: float = 1.5) -> float | None:
    """Dominant rate (per minute) of ``x`` sampled at ``fs`` Hz in [fmin, fmax] Hz.

    Detrended, Hann-windowed, zero-padded FFT with parabolic peak interpolation.
    Returns None when fewer than ~2 cycles of the lowest rate fit in ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 8 or n / fs < 2.0 / fmax:
        return None
    t = np.arange(n)
    x = x - np.polyval(np.polyfit(t, x, 1), t)
    nfft = int(2 ** np.ceil(np.log2(max(8 * n, 1024))))
    spec = np.abs(np.fft.rfft(x * np.hanning(n), nfft))
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    band = np.nonzero((f >= fmin) & (f <= min(fmax, fs / 2)))[0]
    if len(band) < 3:
        return None
    k = band[np.argmax(spec[band])]
    if 0 < k < len(spec) - 1:
        a, b, c = spec[k - 1], spec[k], spec[k + 1]
        den = a - 2 * b + c
        delta = 0.5 * (a - c) / den if den != 0 else 0.0
    else:
        delta = 0.0
    return float((f[k] + delta * (f[1] - f[0])) * 60.0)


class RespiratoryRateEstimator:
    """Sliding-window respiratory rate (breaths/min) from the global impedance curve."""

    def __init__(self, fs: float, window_s: float = 30.0, fmin: float = 0.08, fmax: float = 1.5) -> None:
        self.fs = fs
        self.fmin, self.fmax = fmin, fmax
        self._buf: deque[float] = deque(maxlen=max(int(window_s * fs), 8))

    def add(self, gi: float) -> None:
        """Add one sample without estimating (filled-in samples: the estimate comes with the next push)."""
        self._buf.append(gi)

    def push(self, gi: float) -> float | None:
        """Add one sample; returns the current estimate (None until enough data)."""
        self._buf.append(gi)
        if len(self._buf) < self._buf.maxlen // 2:  # type: ignore[operator]
            return None
        return estimate_rate_bpm(np.fromiter(self._buf, float), self.fs, self.fmin, self.fmax)


def image_centroid(image: np.ndarray, threshold: float = 0.5, sign: int = 0) -> tuple[float, float]:
    """Centre ``(x, y)`` (mesh units) of the pixels above ``threshold`` × peak.

    ``sign`` +1/-1 selects conductivity increases/decreases; 0 uses the larger |peak|.
    """
    img = np.asarray(image, dtype=np.float64)
    if sign == 0:
        sign = 1 if img.max() >= -img.min() else -1
    a = sign * img
    w = np.where(a >= threshold * a.max(), a, 0.0)
    xs, ys = pixel_centres(img.shape[0])
    tot = w.sum()
    return float((w.sum(axis=0) * xs).sum() / tot), float((w.sum(axis=1) * ys).sum() / tot)
