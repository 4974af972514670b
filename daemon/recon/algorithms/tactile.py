"""Tactile imaging algorithms: dead-cell fill, hard-inclusion detection, relative stiffness.

Arrays are ``(row, col)``; pressures in kPa; positions in cells (sub-cell, row/col index
space) and in mm from the probe centre (``x`` along columns, ``y`` along rows).

* :func:`fill_dead_cells` replaces NaN cells by the mean of their finite 8-neighbours.
* :func:`detect_inclusion`: a hard inclusion raises the surface pressure above it. The map
  is normalised by its mean (so the result does not depend on how hard the probe is
  pressed), smoothed 3×3, and its peak compared with the median: found when the excess
  ``peak - median`` passes ``threshold``. The inclusion's region is the set of cells
  connected to the peak with an excess of at least half the peak's; its position is the
  excess-weighted centroid of that region, its size the diameter of a disc of the same
  area (a surface footprint: it widens with depth, so it is an estimate, not the true
  diameter).
* :class:`SlopeAccumulator`: per-cell least-squares slope of pressure against indentation
  depth (kPa/mm) over the frames seen (with exponential forgetting); the slope map divided
  by its median is the relative stiffness map (background ≈ 1, a hard inclusion > 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["fill_dead_cells", "smooth3", "InclusionEstimate", "detect_inclusion", "SlopeAccumulator"]


def fill_dead_cells(p: np.ndarray, max_iter: int = 8) -> np.ndarray:
    """``p`` with NaN cells replaced by the mean of their finite 8-neighbours (iterated for
    clusters); float32 ``(row, col)``. A map with no finite cell is returned as zeros."""
    out = np.array(p, dtype=np.float32, copy=True)
    bad = ~np.isfinite(out)
    nbad = int(bad.sum())
    if nbad == 0:
        return out
    if bad.all():
        return np.zeros_like(out)
    if nbad <= 16:  # the usual case: a few isolated dead cells, filled one by one
        R, C = out.shape
        left = []
        for r, c in zip(*np.nonzero(bad)):
            block = out[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
            ok = np.isfinite(block)
            if ok.any():
                left.append((r, c, float(block[ok].mean())))
        if len(left) == nbad:
            for r, c, v in left:
                out[r, c] = v
            return out
        out = np.array(p, dtype=np.float32, copy=True)
    for _ in range(max_iter):
        if not bad.any():
            break
        v = np.where(bad, 0.0, out)
        w = (~bad).astype(np.float32)
        vs, ws = _box3(v), _box3(w)
        fill = bad & (ws > 0)
        out[fill] = vs[fill] / ws[fill]
        bad = bad & ~fill
    out[bad] = float(np.nanmean(out)) if np.isfinite(out).any() else 0.0
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    """3×3 box sum with zero padding."""
    return ndimage.uniform_filter(np.asarray(a, dtype=np.float64), size=3, mode="constant") * 9.0


_COUNTS: dict[tuple[int, ...], np.ndarray] = {}


def smooth3(a: np.ndarray) -> np.ndarray:
    """3×3 mean (edges averaged over the cells that exist)."""
    n = _COUNTS.get(a.shape)
    if n is None:
        n = _COUNTS[a.shape] = _box3(np.ones(a.shape))
    return _box3(a) / n


@dataclass(frozen=True, slots=True)
class InclusionEstimate:
    """Where a hard inclusion shows on the pressure map.

    Attributes:
        found: the normalised peak excess passed the threshold.
        row, col: centroid, cells (sub-cell; NaN when not found).
        x_mm, y_mm: the same from the probe centre, mm.
        diameter_mm: equivalent-disc diameter of the half-excess region, mm.
        peak_ratio: peak of the smoothed normalised map over its median (dimensionless).
        n_cells: cells in the region.
    """

    found: bool
    row: float
    col: float
    x_mm: float
    y_mm: float
    diameter_mm: float
    peak_ratio: float
    n_cells: int
    mask: np.ndarray

    def as_vector(self, relative_stiffness: float = float("nan")) -> np.ndarray:
        """``float32 [found, row, col, x_mm, y_mm, diameter_mm, peak_ratio, relative_stiffness]``."""
        return np.array([float(self.found), self.row, self.col, self.x_mm, self.y_mm, self.diameter_mm,
                         self.peak_ratio, relative_stiffness], dtype=np.float32)


def detect_inclusion(p: np.ndarray, pitch_mm: float, threshold: float = 0.12,
                     min_mean_kpa: float = 0.2) -> InclusionEstimate:
    """Find the hardest spot under the probe in a pressure map ``p`` (kPa, ``(row, col)``, no NaN)."""
    rows, cols = p.shape
    nan = float("nan")
    empty = np.zeros(p.shape, bool)
    mean = float(np.mean(p))
    if not np.isfinite(mean) or mean < min_mean_kpa:
        return InclusionEstimate(False, nan, nan, nan, nan, nan, nan, 0, empty)
    n = smooth3(p / mean)
    med = float(np.median(n))
    excess = n - med
    peak = np.unravel_index(int(np.argmax(excess)), excess.shape)
    top = float(excess[peak])
    ratio = float(n[peak] / med) if med > 0 else nan
    if top < threshold:
        return InclusionEstimate(False, nan, nan, nan, nan, nan, ratio, 0, empty)
    mask = _flood(excess >= 0.5 * top, peak)
    w = np.where(mask, excess, 0.0)
    rr, cc = np.indices(p.shape)
    r = float((w * rr).sum() / w.sum())
    c = float((w * cc).sum() / w.sum())
    area = float(mask.sum()) * pitch_mm ** 2
    return InclusionEstimate(True, r, c, (c - (cols - 1) / 2) * pitch_mm, (r - (rows - 1) / 2) * pitch_mm,
                             float(2 * np.sqrt(area / np.pi)), ratio, int(mask.sum()), mask)


_EIGHT = np.ones((3, 3), bool)


def _flood(allowed: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """Cells of ``allowed`` 8-connected to ``seed``."""
    labels, _ = ndimage.label(allowed, structure=_EIGHT)
    lab = labels[tuple(int(i) for i in seed)]
    return labels == lab if lab else np.zeros(allowed.shape, bool)


class SlopeAccumulator:
    """Per-cell least-squares slope of pressure (kPa) against depth (mm), with forgetting.

    Args:
        shape: ``(rows, cols)``.
        min_depth_mm: frames shallower than this are ignored (probe barely in contact).
        forget: weight kept per added frame (1.0: plain sums; 0.999 ≈ a 1000-frame memory).
    """

    def __init__(self, shape: tuple[int, int], min_depth_mm: float = 0.5, forget: float = 0.999) -> None:
        self.shape = shape
        self.min_depth_mm = min_depth_mm
        self.forget = forget
        self.reset()

    def reset(self) -> None:
        self.n = 0.0
        self.sd = 0.0
        self.sdd = 0.0
        self.sp = np.zeros(self.shape)
        self.spd = np.zeros(self.shape)
        self.frames = 0
        self.d_min = np.inf
        self.d_max = -np.inf

    def add(self, p: np.ndarray, depth_mm: float) -> bool:
        """Add one frame; False when it is too shallow (or not finite) to count."""
        if not np.isfinite(depth_mm) or depth_mm < self.min_depth_mm:
            return False
        f = self.forget
        self.n = self.n * f + 1.0
        self.sd = self.sd * f + depth_mm
        self.sdd = self.sdd * f + depth_mm * depth_mm
        self.sp = self.sp * f + p
        self.spd = self.spd * f + p * depth_mm
        self.frames += 1
        self.d_min, self.d_max = min(self.d_min, depth_mm), max(self.d_max, depth_mm)
        return True

    @property
    def ready(self) -> bool:
        """Enough spread in depth for a slope (at least 1 mm between the shallowest and deepest frame)."""
        return self.frames >= 10 and self.d_max - self.d_min >= 1.0

    def slope(self) -> np.ndarray:
        """kPa/mm per cell (NaN until :attr:`ready`)."""
        if not self.ready:
            return np.full(self.shape, np.nan)
        var = self.sdd - self.sd * self.sd / self.n
        return (self.spd - self.sd * self.sp / self.n) / var

    def relative_stiffness(self) -> np.ndarray:
        """Slope map over its median (dimensionless; NaN until ready)."""
        s = self.slope()
        if not np.isfinite(s).any():
            return s
        med = float(np.nanmedian(s))
        return s / med if med > 0 else np.full(self.shape, np.nan)
