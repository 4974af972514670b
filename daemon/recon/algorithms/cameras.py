"""Pure algorithms for the camera modalities (thermal, endoscope, photography).

Arrays: raw frames ``(y, x)``; colour images ``(y, x, c)`` with c = R, G, B; colours of a
chart ``(patch, c)``. Temperatures in °C unless a name says K.

* :func:`demosaic_rggb` -- bilinear demosaicing of an RGGB Bayer mosaic (float32 out);
  :func:`superpixel_rggb` -- the half-resolution 2×2-cell version (live views).
* :func:`counts_to_celsius` -- radiometric counts to object temperature: Planck inversion with
  emissivity and reflected-temperature compensation, or the temperature-linear mode.
* :class:`BlackbodyDriftCorrector` -- the reference black body in the field of view measures
  the camera's drift; a running estimate (exponential, ``tau_frames``) is subtracted.
* :func:`roi_stats` -- max/mean in a region given as fractions of the frame.
* :func:`fit_color_matrix`, :func:`delta_e2000` -- chart calibration and CIEDE2000.
* :func:`gray_world_gains`, :func:`undistort_maps`, :func:`iron_colormap`.
* :func:`gather_rggb_luts` -- the endoscope's fast path: each output pixel's RGGB cell gathered
  by flat index and mapped through per-channel look-up tables, in one pass (a
  numba kernel that releases the GIL when numba is importable, numpy ``take`` otherwise; the
  same bytes either way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medacq.protocols.models.cameras import KELVIN, LINEAR_COUNTS_PER_K, planck_counts, planck_temperature

__all__ = ["demosaic_rggb", "superpixel_rggb", "counts_to_celsius", "BlackbodyDriftCorrector", "roi_slices", "roi_stats",
           "fit_color_matrix", "delta_e2000", "gray_world_gains", "undistort_maps", "iron_colormap",
           "chart_patch_means", "gather_rggb_luts", "warm_gather_kernel", "HAVE_NUMBA"]

try:  # optional: the compiled gather of the endoscope's fast path
    import numba as _nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is optional
    _nb = None
    HAVE_NUMBA = False

_gather_kernel: Callable[..., Any] | None = None
if HAVE_NUMBA:
    @_nb.njit(cache=True, nogil=True)
    def _gather_kernel(flat, base, w, top, lr, lg, lb, out):  # pragma: no cover - compiled
        for i in range(base.shape[0]):
            k = base[i]
            r = min(flat[k], top)
            g = np.int32(min(flat[k + 1], top)) + np.int32(min(flat[k + w], top))
            b = min(flat[k + w + 1], top)
            out[i, 0] = lr[r]
            out[i, 1] = lg[g]
            out[i, 2] = lb[b]


def gather_rggb_luts(raw: np.ndarray, base: np.ndarray, top: int, luts: tuple[np.ndarray, np.ndarray, np.ndarray],
                     out: np.ndarray | None = None, use_numba: bool = True) -> np.ndarray:
    """Each output pixel from one 2×2 RGGB cell of ``raw`` through per-channel look-up tables:
    ``out[i] = (lr[R], lg[G1 + G2], lb[B])``, R = ``raw.flat[base[i]]``, G1 the pixel to its right,
    G2 the one below it, B below-right; each raw value clamped to ``top`` first.

    Args:
        raw: the Bayer mosaic ``(y, x)``, uint8 or uint16 (copied if not C-contiguous).
        base: flat indices into ``raw`` of each output pixel's R (top-left) pixel, any shape ``S``
            (integers; every ``base + x + 1`` within row ``y + 1`` of the mosaic).
        top: the largest raw value the tables cover (``lr``, ``lb``: ``top + 1`` entries; ``lg``:
            ``2 * top + 1``, indexed by the sum of the two greens).
        luts: ``(lr, lg, lb)``, uint8.
        out: uint8 ``S + (3,)``, C-contiguous, to fill (allocated when ``None``).
        use_numba: the compiled kernel (one pass, GIL released) when numba is importable; numpy
            ``take`` otherwise. Same bytes either way.

    Returns ``out``: uint8 ``S + (3,)``, last axis c = R, G, B.
    """
    lr, lg, lb = luts
    if out is None:
        out = np.empty((*base.shape, 3), np.uint8)
    raw = np.ascontiguousarray(raw)
    w = int(raw.shape[1])
    flat = raw.reshape(-1)
    if use_numba and _gather_kernel is not None:
        n = base.size
        _gather_kernel(flat, base.reshape(n), w, flat.dtype.type(min(top, int(np.iinfo(flat.dtype).max))),
                       lr, lg, lb, out.reshape(n, 3))
        return out

    def take(shift: int) -> np.ndarray:
        x = np.take(flat[shift:], base)
        return x if top >= int(np.iinfo(x.dtype).max) else np.minimum(x, top, out=x)

    out[..., 0] = np.take(lr, take(0))
    g = take(1).astype(np.int32)
    g += take(w)
    out[..., 1] = np.take(lg, g)
    out[..., 2] = np.take(lb, take(w + 1))
    return out


def warm_gather_kernel() -> None:
    """Compile (or load from numba's cache) :func:`gather_rggb_luts`'s kernel for 8- and 16-bit raw
    frames (a reconstructor's ``preload``); nothing without numba."""
    if _gather_kernel is None:
        return
    for dt, top in ((np.uint8, 255), (np.uint16, 4095)):
        luts = (np.zeros(top + 1, np.uint8), np.zeros(2 * top + 1, np.uint8), np.zeros(top + 1, np.uint8))
        gather_rggb_luts(np.zeros((2, 2), dt), np.zeros(1, np.int32), top, luts)


def demosaic_rggb(raw: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Bilinear demosaic of an RGGB mosaic ``(y, x)`` (even sizes) → float32 ``(y, x, 3)`` × ``scale``."""
    m = raw.astype(np.float32) * np.float32(scale)
    h, w = m.shape
    p = np.pad(m, 1, mode="reflect")
    out = np.empty((h, w, 3), np.float32)
    c = p[1:-1, 1:-1]
    up, dn, lf, rt = p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]
    ul, ur, dl, dr = p[:-2, :-2], p[:-2, 2:], p[2:, :-2], p[2:, 2:]
    cross = (up + dn + lf + rt) * 0.25
    diag = (ul + ur + dl + dr) * 0.25
    horiz = (lf + rt) * 0.5
    vert = (up + dn) * 0.5
    # R sites (even, even)
    out[0::2, 0::2, 0] = c[0::2, 0::2]
    out[0::2, 0::2, 1] = cross[0::2, 0::2]
    out[0::2, 0::2, 2] = diag[0::2, 0::2]
    # G on R rows (even, odd)
    out[0::2, 1::2, 0] = horiz[0::2, 1::2]
    out[0::2, 1::2, 1] = c[0::2, 1::2]
    out[0::2, 1::2, 2] = vert[0::2, 1::2]
    # G on B rows (odd, even)
    out[1::2, 0::2, 0] = vert[1::2, 0::2]
    out[1::2, 0::2, 1] = c[1::2, 0::2]
    out[1::2, 0::2, 2] = horiz[1::2, 0::2]
    # B sites (odd, odd)
    out[1::2, 1::2, 0] = diag[1::2, 1::2]
    out[1::2, 1::2, 1] = cross[1::2, 1::2]
    out[1::2, 1::2, 2] = c[1::2, 1::2]
    return out


def superpixel_rggb(raw: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Half-resolution demosaic: each RGGB 2×2 cell → one RGB pixel (G = mean of the two greens),
    float32 ``(y/2, x/2, 3)`` × ``scale``. No interpolation: fast, and free of demosaic artefacts."""
    m = raw.astype(np.float32)
    out = np.empty((m.shape[0] // 2, m.shape[1] // 2, 3), np.float32)
    out[..., 0] = m[0::2, 0::2]
    np.add(m[0::2, 1::2], m[1::2, 0::2], out=out[..., 1])
    out[..., 1] *= 0.5
    out[..., 2] = m[1::2, 1::2]
    out *= np.float32(scale)
    return out


def counts_to_celsius(counts: np.ndarray, radiometry: dict, *, emissivity: float | None = None,
                      reflected_c: float | None = None) -> np.ndarray:
    """Object temperature (°C, float32) of each pixel.

    ``radiometry``: the descriptor's ``geometry.radiometry`` (R, B, F, O, emissivity,
    reflected_c, linear). Raw mode: the object's signal is ``(S - (1 - ε) S(T_refl)) / ε``, then
    ``T = B / ln(R / (S_obj - O) + F)``. Linear mode: ``T(K) = counts / 100`` (the camera
    compensated). ``emissivity``/``reflected_c`` override the descriptor's values.
    """
    if radiometry.get("linear"):
        return (counts.astype(np.float32) / np.float32(LINEAR_COUNTS_PER_K) - np.float32(KELVIN))
    r, b, f, o = (float(radiometry[k]) for k in ("R", "B", "F", "O"))
    eps = float(emissivity if emissivity is not None else radiometry.get("emissivity", 1.0))
    t_refl = float(reflected_c if reflected_c is not None else radiometry.get("reflected_c", 20.0))
    s = counts.astype(np.float64)
    if eps < 1.0:
        s = (s - (1 - eps) * float(planck_counts(t_refl + KELVIN, r, b, f, o))) / eps
    return (planck_temperature(s, r, b, f, o) - KELVIN).astype(np.float32)


def roi_slices(shape: Sequence[int], frac: Sequence[float]) -> tuple[slice, slice]:
    """``[y0, x0, y1, x1]`` as fractions of the frame → index slices."""
    h, w = shape[0], shape[1]
    y0, x0, y1, x1 = frac
    return slice(int(round(y0 * h)), max(int(round(y1 * h)), int(round(y0 * h)) + 1)), \
        slice(int(round(x0 * w)), max(int(round(x1 * w)), int(round(x0 * w)) + 1))


def roi_stats(img: np.ndarray, frac: Sequence[float]) -> dict[str, float]:
    """``max``, ``mean``, ``min`` of a region (fractions of the frame)."""
    sy, sx = roi_slices(img.shape, frac)
    r = img[sy, sx]
    return {"max": float(r.max()), "mean": float(r.mean()), "min": float(r.min())}


class BlackbodyDriftCorrector:
    """Drift correction from a reference black body of known temperature in the scene.

    Each frame: ``error = median(T in the black-body region) - T_known``; the correction is an
    exponential running mean of the error over ``tau_frames`` (noise averages out, drift is
    slow), subtracted from the whole frame.
    """

    def __init__(self, known_c: float, roi: Sequence[float], tau_frames: float = 30.0) -> None:
        self.known_c = known_c
        self.roi = list(roi)
        self.alpha = 1.0 / max(1.0, tau_frames)
        self.offset_k: float | None = None

    def measure(self, temp_c: np.ndarray) -> float:
        sy, sx = roi_slices(temp_c.shape, self.roi)
        return float(np.median(temp_c[sy, sx]))

    def update(self, temp_c: np.ndarray) -> float:
        """Fold this frame's black-body error in; return the current offset (K)."""
        err = self.measure(temp_c) - self.known_c
        self.offset_k = err if self.offset_k is None else self.offset_k + self.alpha * (err - self.offset_k)
        return self.offset_k

    def reset(self) -> None:
        self.offset_k = None


def chart_patch_means(rgb: np.ndarray, chart_frac: Sequence[float], rows: int = 4, cols: int = 6,
                      gap_ratio: float = 0.125, sample: float = 0.5) -> np.ndarray:
    """Mean colour of each patch of a chart ``rows × cols`` inside ``chart_frac`` (fractions of
    the image), patches separated by ``gap_ratio`` × patch size, sampling the central
    ``sample`` fraction of each patch. Returns ``(rows*cols, 3)``, row by row."""
    h, w = rgb.shape[:2]
    y0, x0, y1, x1 = chart_frac[0] * h, chart_frac[1] * w, chart_frac[2] * h, chart_frac[3] * w
    pw = (x1 - x0) / (cols + (cols - 1) * gap_ratio)
    ph = (y1 - y0) / (rows + (rows - 1) * gap_ratio)
    out = np.empty((rows * cols, 3))
    for r in range(rows):
        for c in range(cols):
            cy = y0 + r * ph * (1 + gap_ratio) + ph / 2
            cx = x0 + c * pw * (1 + gap_ratio) + pw / 2
            hy, hx = ph * sample / 2, pw * sample / 2
            out[r * cols + c] = rgb[int(cy - hy):int(cy + hy), int(cx - hx):int(cx + hx)].reshape(-1, 3).mean(0)
    return out


def fit_color_matrix(measured: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The 3×3 matrix ``M`` minimising ``|measured @ M.T - reference|²`` (linear RGB, ``(n, 3)``)."""
    m, *_ = np.linalg.lstsq(np.asarray(measured, float), np.asarray(reference, float), rcond=None)
    return m.T


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu, Dalal 2005), ``kL = kC = kH = 1``; ``(..., 3)`` Lab."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, float), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, float), -1, 0)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    cm = (c1 + c2) / 2
    g = 0.5 * (1 - np.sqrt(cm ** 7 / (cm ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dLp = L2 - L1
    dCp = c2p - c1p
    dh = h2p - h1p
    dh = np.where(c1p * c2p == 0, 0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    Lpm = (L1 + L2) / 2
    Cpm = (c1p + c2p) / 2
    hsum = h1p + h2p
    hpm = np.where(c1p * c2p == 0, hsum,
                   np.where(np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(hpm - 30)) + 0.24 * np.cos(np.radians(2 * hpm))
         + 0.32 * np.cos(np.radians(3 * hpm + 6)) - 0.20 * np.cos(np.radians(4 * hpm - 63)))
    dtheta = 30 * np.exp(-(((hpm - 275) / 25) ** 2))
    rc = 2 * np.sqrt(Cpm ** 7 / (Cpm ** 7 + 25.0 ** 7))
    sl = 1 + 0.015 * (Lpm - 50) ** 2 / np.sqrt(20 + (Lpm - 50) ** 2)
    sc = 1 + 0.045 * Cpm
    sh = 1 + 0.015 * Cpm * t
    rt = -np.sin(np.radians(2 * dtheta)) * rc
    return np.sqrt((dLp / sl) ** 2 + (dCp / sc) ** 2 + (dHp / sh) ** 2 + rt * (dCp / sc) * (dHp / sh))


def gray_world_gains(rgb: np.ndarray, step: int = 8) -> np.ndarray:
    """White-balance gains ``(3,)`` that make the image's mean grey (G gain 1), on a subsample."""
    m = rgb[::step, ::step].reshape(-1, 3).mean(0)
    return (m[1] / np.maximum(m, 1e-6)).astype(np.float32)


def undistort_maps(h: int, w: int, k1: float) -> tuple[np.ndarray, np.ndarray]:
    """Index maps ``(iy, ix)`` that undo radial distortion ``r_d = r (1 + k1 r²)`` (r normalised to
    the half-diagonal), nearest-neighbour; apply as ``img[iy, ix]``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rn2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (cx ** 2 + cy ** 2)
    # the sensor sampled the scene at (1 + k1 rn2) × the ideal radius: invert to first order
    s = 1.0 / (1 + k1 * rn2)
    iy = np.clip(np.rint(cy + (yy - cy) * s), 0, h - 1).astype(np.intp)
    ix = np.clip(np.rint(cx + (xx - cx) * s), 0, w - 1).astype(np.intp)
    return iy, ix


def iron_colormap(temp_c: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """An 'iron' palette (black → purple → orange → white) of ``temp_c`` in ``lo..hi`` °C, uint8 ``(y, x, 3)``."""
    x = np.clip((temp_c - lo) / max(hi - lo, 1e-6), 0, 1)
    r = np.clip(1.6 * x, 0, 1)
    g = np.clip(2.0 * x - 0.8, 0, 1)
    b = np.clip(np.where(x < 0.4, 1.8 * x, 1.2 - 2.5 * (x - 0.4)), 0, 1) + np.clip(3 * (x - 0.85), 0, 1)
    return (np.stack([r, g, np.clip(b, 0, 1)], -1) * 255).astype(np.uint8)
