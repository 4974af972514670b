"""X-ray / CT reconstruction: flat-field correction, DSA, streaming filtered back-projection.

Axes and units
--------------
* Detector frames: ``(rows, cols)`` uint16 ADU (or float). Corrected frames: float32
  transmission ``I / I0`` (1.0 = open beam), or line integral ``-ln(I / I0)`` with ``log=True``.
* Sinograms: ``(n_det, n_angles)`` (scikit-image layout); projection angles in **radians**.
* Slices: ``(n, n)`` float, row 0 at the top; pixel ``(row, col)`` is at
  ``x = col - n // 2``, ``y = n // 2 - row`` in output-pixel units; a parallel projection at
  angle θ samples ``t = x cos θ + y sin θ``; detector bin ``k`` is at
  ``t = (k - center) · det_spacing`` (``center`` defaults to ``n_det // 2``). This is
  scikit-image's ``radon``/``iradon`` convention, so the two are comparable bin for bin.
* Fan beam (flat panel, equispaced detector): ``det_spacing`` is the bin spacing *at the
  isocentre* (panel pitch × SID / SDD) and ``sid`` the source–isocentre distance, both in
  output pixels. The source sits at ``sid · (-sin β, cos β)``; the ray through virtual
  detector position ``s`` is the parallel ray ``θ = β + atan(s / sid)``, ``t = sid · sin γ``
  (as :func:`medacq.simulators.xray_model.ellipse_fan_projection` models it).

Back-projection uses numba (``parallel=True``) when importable, else a numpy fallback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "CalibrationCapture",
    "FlatFieldCorrector",
    "DSA",
    "StreamingFBP",
    "fbp",
    "ramp_filter",
    "numba_available",
]


# ============================================================================ flat field


class FlatFieldCorrector:
    """Dark/flat correction with defect-pixel interpolation.

    ``correct(raw) = (raw - dark) / (flat - dark)`` (float32 transmission), defect pixels
    replaced by the mean of their valid neighbours within a 5 × 5 window (dead lines are
    filled from the rows / columns beside them).

    Args:
        dark: ``(rows, cols)`` mean dark frame, ADU.
        flat: ``(rows, cols)`` mean open-beam frame, ADU.
        defects: bool ``(rows, cols)``, True = defective; ``None`` = detect from dark/flat.
        meta: free-form metadata saved with the calibration (binning, exposure, kVp...).
    """

    def __init__(
        self,
        dark: np.ndarray,
        flat: np.ndarray,
        defects: np.ndarray | None = None,
        *,
        meta: dict | None = None,
        response_limits: tuple[float, float] = (0.5, 1.5),
    ) -> None:
        self.dark = np.ascontiguousarray(dark, dtype=np.float32)
        self.flat = np.ascontiguousarray(flat, dtype=np.float32)
        if self.dark.shape != self.flat.shape or self.dark.ndim != 2:
            raise ValueError("dark and flat must be 2-D and of the same shape")
        self.meta = dict(meta or {})
        resp = self.flat - self.dark
        if defects is None:
            defects = self.detect_defects(self.dark, self.flat, response_limits)
        self.defects = np.asarray(defects, dtype=bool)
        with np.errstate(divide="ignore"):
            inv = np.where(self.defects | (resp <= 0), 0.0, 1.0 / np.maximum(resp, 1e-6))
        self._inv = inv.astype(np.float32)
        self._build_interpolation()

    @property
    def shape(self) -> tuple[int, int]:
        return self.dark.shape  # type: ignore[return-value]

    @staticmethod
    def detect_defects(
        dark: np.ndarray, flat: np.ndarray, response_limits: tuple[float, float] = (0.5, 1.5)
    ) -> np.ndarray:
        """Pixels whose response ``flat - dark`` is outside ``limits × median`` or whose dark
        level is more than 10 robust sigmas from the median."""
        resp = flat.astype(np.float32) - dark
        med = float(np.median(resp[::4, ::4]))
        lo, hi = response_limits
        bad = (resp < lo * med) | (resp > hi * med)
        d = dark[::4, ::4]
        dmed = float(np.median(d))
        mad = float(np.median(np.abs(d - dmed))) * 1.4826 + 1e-6
        bad |= np.abs(dark - dmed) > 10 * mad
        return bad

    def _build_interpolation(self) -> None:
        rows, cols = self.shape
        bad = self.defects
        ri, ci = np.nonzero(bad)
        self._def_idx = (ri * cols + ci).astype(np.intp)
        nb_idx = []
        nb_w = []
        for radius in (1, 2):
            offs = [(dr, dc) for dr in range(-radius, radius + 1) for dc in range(-radius, radius + 1) if (dr, dc) != (0, 0)]
            idx = np.zeros((len(ri), len(offs)), dtype=np.intp)
            w = np.zeros((len(ri), len(offs)), dtype=np.float32)
            for k, (dr, dc) in enumerate(offs):
                r2, c2 = ri + dr, ci + dc
                ok = (r2 >= 0) & (r2 < rows) & (c2 >= 0) & (c2 < cols)
                r2c, c2c = np.clip(r2, 0, rows - 1), np.clip(c2, 0, cols - 1)
                ok &= ~bad[r2c, c2c]
                idx[:, k] = r2c * cols + c2c
                w[:, k] = ok
            nb_idx.append(idx)
            nb_w.append(w)
        # use the 3x3 ring where it has a valid pixel, else the 5x5 window
        use3 = nb_w[0].sum(axis=1) > 0
        k5 = nb_idx[1].shape[1]
        idx = np.zeros((len(ri), k5), dtype=np.intp)
        w = np.zeros((len(ri), k5), dtype=np.float32)
        idx[use3, : nb_idx[0].shape[1]] = nb_idx[0][use3]
        w[use3, : nb_idx[0].shape[1]] = nb_w[0][use3]
        idx[~use3] = nb_idx[1][~use3]
        w[~use3] = nb_w[1][~use3]
        s = w.sum(axis=1, keepdims=True)
        self._nb_idx = idx
        self._nb_w = np.where(s > 0, w / np.maximum(s, 1), 0).astype(np.float32)

    def correct(self, raw: np.ndarray, *, log: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """Corrected float32 ``(rows, cols)``: transmission, or ``-ln`` of it if ``log``
        (transmission clipped at 1e-6 first)."""
        if raw.shape != self.shape:
            raise ValueError(f"frame shape {raw.shape} != calibration {self.shape}")
        if out is None:
            out = np.empty(self.shape, dtype=np.float32)
        np.subtract(raw, self.dark, out=out, dtype=np.float32)
        out *= self._inv
        flat_out = out.reshape(-1)
        if len(self._def_idx):
            flat_out[self._def_idx] = (flat_out[self._nb_idx] * self._nb_w).sum(axis=1)
        if log:
            np.maximum(out, 1e-6, out=out)
            np.log(out, out=out)
            np.negative(out, out=out)
        return out

    # -- persistence
    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (dark, flat, defects, meta as JSON). Returns the path."""
        path = Path(path)
        with open(path, "wb") as f:
            np.savez_compressed(
                f, dark=self.dark, flat=self.flat, defects=self.defects,
                meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FlatFieldCorrector":
        with np.load(Path(path)) as z:
            meta = json.loads(bytes(z["meta"]).decode()) if "meta" in z else {}
            return cls(z["dark"], z["flat"], z["defects"], meta=meta)


class CalibrationCapture:
    """Accumulates dark and flat frames as they stream in, then builds a corrector.

    ``add_dark(frame)`` / ``add_flat(frame)`` keep float64 running sums (no frame stack);
    ``build()`` averages them and detects defects (also pixels stuck at one value across
    all flats, when there are ≥ 2).
    """

    def __init__(self, meta: dict | None = None) -> None:
        self.meta = dict(meta or {})
        self._dark: np.ndarray | None = None
        self._flat: np.ndarray | None = None
        self._flat_min: np.ndarray | None = None
        self._flat_max: np.ndarray | None = None
        self.n_dark = 0
        self.n_flat = 0

    def add_dark(self, frame: np.ndarray) -> None:
        self._dark = frame.astype(np.float64) if self._dark is None else self._dark + frame
        self.n_dark += 1

    def add_flat(self, frame: np.ndarray) -> None:
        if self._flat is None:
            self._flat = frame.astype(np.float64)
            self._flat_min = frame.copy()
            self._flat_max = frame.copy()
        else:
            self._flat += frame
            np.minimum(self._flat_min, frame, out=self._flat_min)
            np.maximum(self._flat_max, frame, out=self._flat_max)
        self.n_flat += 1

    def build(self, response_limits: tuple[float, float] = (0.5, 1.5)) -> FlatFieldCorrector:
        if not self.n_dark or not self.n_flat:
            raise ValueError("need at least one dark and one flat frame")
        dark = self._dark / self.n_dark  # type: ignore[operator]
        flat = self._flat / self.n_flat  # type: ignore[operator]
        defects = FlatFieldCorrector.detect_defects(dark, flat, response_limits)
        if self.n_flat >= 2:
            defects |= self._flat_min == self._flat_max  # type: ignore[operator]
        meta = dict(self.meta, n_dark=self.n_dark, n_flat=self.n_flat)
        return FlatFieldCorrector(dark, flat, defects, meta=meta)


# ============================================================================ DSA


class DSA:
    """Digital subtraction angiography by log subtraction.

    ``process(live) = ln(mask) - ln(live)`` = the line integral added since the mask
    (positive where contrast appeared). Frames are corrected with ``corrector`` when one
    is given (raw ADU in), else taken as transmission / dark-subtracted intensity.
    The mask is set with :meth:`set_mask` or, with ``auto_mask_frames = n > 0``, from the
    mean of the first ``n`` frames processed (which return ``None``).
    """

    def __init__(self, corrector: FlatFieldCorrector | None = None, *, auto_mask_frames: int = 0) -> None:
        self.corrector = corrector
        self.auto_mask_frames = auto_mask_frames
        self._mask_log: np.ndarray | None = None
        self._acc: np.ndarray | None = None
        self._n = 0

    def _log(self, frame: np.ndarray) -> np.ndarray:
        if self.corrector is not None:
            return self.corrector.correct(frame, log=True)
        f = np.maximum(np.asarray(frame, dtype=np.float32), 1e-6)
        return -np.log(f)

    def set_mask(self, *frames: np.ndarray) -> None:
        """Mask = mean of the given frames' line integrals."""
        logs = [self._log(f) for f in frames]
        self._mask_log = np.mean(logs, axis=0).astype(np.float32) if len(logs) > 1 else logs[0]

    @property
    def has_mask(self) -> bool:
        return self._mask_log is not None

    def process(self, frame: np.ndarray) -> np.ndarray | None:
        """Subtracted image ``(rows, cols)`` float32, or ``None`` while the auto-mask fills."""
        lg = self._log(frame)
        if self._mask_log is None:
            if self.auto_mask_frames <= 0:
                raise RuntimeError("no mask: call set_mask() or use auto_mask_frames")
            self._acc = lg.astype(np.float64) if self._acc is None else self._acc + lg
            self._n += 1
            if self._n >= self.auto_mask_frames:
                self._mask_log = (self._acc / self._n).astype(np.float32)
                self._acc = None
            return None
        lg -= self._mask_log
        return lg


# ============================================================================ FBP


def ramp_filter(size: int, filter_name: str | None = "ramp") -> np.ndarray:
    """Frequency response (length ``size``, even) of the ramp filter built from its
    band-limited spatial kernel (Kak & Slaney ch. 3, eq. 61), optionally windowed
    (``shepp-logan``, ``cosine``, ``hamming``, ``hann``). Same as scikit-image's, including
    its factor 2."""
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    filt = 2 * np.real(np.fft.fft(f))
    if filter_name in (None, "ramp"):
        pass
    elif filter_name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(omega) / omega
    elif filter_name == "cosine":
        freq = np.linspace(0, np.pi, size, endpoint=False)
        filt *= np.fft.fftshift(np.sin(freq))
    elif filter_name == "hamming":
        filt *= np.fft.fftshift(np.hamming(size))
    elif filter_name == "hann":
        filt *= np.fft.fftshift(np.hanning(size))
    else:
        raise ValueError(f"unknown filter {filter_name!r}")
    return filt


_NUMBA: dict = {}


def numba_available() -> bool:
    """True if numba imports (kernels are compiled lazily on first use)."""
    if "ok" not in _NUMBA:
        try:
            import numba  # noqa: F401

            _NUMBA["ok"] = True
        except Exception:  # pragma: no cover - numba is installed in the venv
            _NUMBA["ok"] = False
    return _NUMBA["ok"]


def _numba_kernels():  # noqa: ANN202
    if "bp_par" in _NUMBA:
        return _NUMBA["bp_par"], _NUMBA["bp_fan"]
    import numba as nb

    @nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def bp_par(img, q, cos, sin, center, inv_ds, jlo, jhi):  # pragma: no cover - compiled
        # Row-parallel; for each projection the valid pixel span of the row is solved
        # analytically so the inner loop has no bounds test (0 <= t < nd - 1 holds).
        n = img.shape[0]
        r = n // 2
        nb_, nd = q.shape
        tmax = nd - 1.0
        for i in nb.prange(n):
            y = r - i
            a0 = jlo[i]
            a1 = jhi[i]
            if a1 <= a0:
                continue
            row = img[i]
            for b in range(nb_):
                c = cos[b] * inv_ds
                t0 = (-r * cos[b] + y * sin[b]) * inv_ds + center
                lo = a0
                hi = a1
                # valid: 0 <= t <= nd - 1 (endpoints included, as np.interp / iradon)
                if c > 1e-12:
                    jl = int(math.ceil((0.0 - t0) / c))  # first j with t >= 0
                    jh = int(math.floor((tmax - t0) / c)) + 1  # first j with t > tmax
                    lo = max(lo, jl)
                    hi = min(hi, jh)
                elif c < -1e-12:
                    jl = int(math.ceil((tmax - t0) / c))  # first j with t <= tmax
                    jh = int(math.floor((0.0 - t0) / c)) + 1  # first j with t < 0
                    lo = max(lo, jl)
                    hi = min(hi, jh)
                elif not (t0 >= 0.0 and t0 <= tmax):
                    continue
                qb = q[b]
                t = t0 + lo * c
                for j in range(lo, hi):
                    k = int(t)
                    if k > nd - 2:  # rounding guard at the span edges
                        k = nd - 2
                    elif k < 0:
                        k = 0
                    w = t - k
                    row[j] += qb[k] + w * (qb[k + 1] - qb[k])
                    t += c

    @nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def bp_fan(img, q, cos, sin, center, inv_ds, sid):  # pragma: no cover - compiled
        n = img.shape[0]
        r = n // 2
        nb_, nd = q.shape
        for i in nb.prange(n):
            y = r - i
            for b in range(nb_):
                L = -r * sin[b] - y * cos[b] + sid
                w_ = -r * cos[b] + y * sin[b]
                for j in range(n):
                    s = sid * w_ / L
                    t = s * inv_ds + center
                    k = int(math.floor(t))
                    if k >= 0 and k < nd - 1:
                        f = t - k
                        u2 = (sid / L) * (sid / L)
                        img[i, j] += u2 * (q[b, k] + f * (q[b, k + 1] - q[b, k]))
                    L += sin[b]
                    w_ += cos[b]

    _NUMBA["bp_par"], _NUMBA["bp_fan"] = bp_par, bp_fan
    return bp_par, bp_fan


def _bp_numpy(img, q, cos, sin, center, inv_ds, sid=None):  # noqa: ANN001, ANN202
    """Pure-numpy back-projection (fallback), same maths as the numba kernels."""
    n = img.shape[0]
    r = n // 2
    x = (np.arange(n) - r)[None, :].astype(np.float64)
    y = (r - np.arange(n))[:, None].astype(np.float64)
    nd = q.shape[1]
    for b in range(q.shape[0]):
        if sid is None:
            t = (x * cos[b] + y * sin[b]) * inv_ds + center
            wgt = 1.0
        else:
            L = x * sin[b] - y * cos[b] + sid
            t = (sid * (x * cos[b] + y * sin[b]) / L) * inv_ds + center
            wgt = (sid / L) ** 2
        ok = (t >= 0) & (t <= nd - 1)
        kc = np.clip(np.floor(t).astype(np.intp), 0, nd - 2)
        f = t - kc
        v = q[b, kc] + f * (q[b, kc + 1] - q[b, kc])
        img += np.where(ok, v * wgt, 0.0)


class StreamingFBP:
    """Filtered back-projection, one projection at a time.

    Each :meth:`push` filters the projection at once (FFT ramp, optional window; fan beam:
    cosine pre-weighting) and queues it; every ``batch`` projections the queue is
    back-projected into the running slice (numba, parallel; numpy fallback). When
    ``n_proj`` projections (one rotation) have arrived, ``push`` returns the complete slice
    and the next rotation starts from zero. :meth:`preview` returns the partial slice
    scaled as if the rotation were complete.

    Args:
        n_det: detector bins per projection.
        n_proj: projections per rotation (over ``angular_range``).
        output_size: slice side ``n`` (pixels).
        geometry: ``"parallel"`` (range π or 2π) or ``"fan"`` (range 2π; weighted FBP for a
            flat, equispaced detector).
        angular_range: rad covered by ``n_proj`` projections (default π parallel, 2π fan).
        det_spacing: bin spacing in output pixels (at the isocentre for fan beam).
        center: detector index of the rotation axis (default ``n_det // 2``).
        sid: fan beam source–isocentre distance, output pixels.
        filter_name: ``ramp``, ``shepp-logan``, ``cosine``, ``hamming``, ``hann``.
        circle: zero the slice outside the inscribed circle (as ``iradon(circle=True)``).
        batch: projections per back-projection call.
        backend: ``"auto"``, ``"numba"`` or ``"numpy"``.
        threads: CPU threads of the numba kernel, set for the calling thread at each call
            (``None``: numba's default, every core).
    """

    def __init__(
        self,
        n_det: int,
        n_proj: int,
        *,
        output_size: int = 512,
        geometry: Literal["parallel", "fan"] = "parallel",
        angular_range: float | None = None,
        det_spacing: float = 1.0,
        center: float | None = None,
        sid: float | None = None,
        filter_name: str | None = "ramp",
        circle: bool = True,
        batch: int = 32,
        backend: Literal["auto", "numba", "numpy"] = "auto",
        threads: int | None = None,
    ) -> None:
        if geometry == "fan" and not sid:
            raise ValueError("fan beam needs sid (source-isocentre distance, pixels)")
        self.n_det = n_det
        self.n_proj = n_proj
        self.n = output_size
        self.geometry = geometry
        self.angular_range = angular_range if angular_range is not None else (math.pi if geometry == "parallel" else 2 * math.pi)
        self.ds = float(det_spacing)
        self.center = float(n_det // 2 if center is None else center)
        self.sid = float(sid) if sid else None
        self.circle = circle
        self.batch = max(1, batch)
        self.threads = threads
        if backend == "auto":
            backend = "numba" if numba_available() else "numpy"
        self.backend = backend
        self._pad = max(64, int(2 ** math.ceil(math.log2(2 * n_det))))
        self._filter = ramp_filter(self._pad, filter_name)[: self._pad // 2 + 1]
        s = (np.arange(n_det) - self.center) * self.ds
        self._fan_w = (self.sid / np.sqrt(self.sid**2 + s**2)) if self.sid and geometry == "fan" else None
        self._img = np.zeros((self.n, self.n), dtype=np.float64)
        self._q = np.zeros((self.batch, n_det), dtype=np.float64)
        self._cos = np.zeros(self.batch)
        self._sin = np.zeros(self.batch)
        self._nq = 0
        self.n_seen = 0
        self.rotations = 0
        r = self.n // 2
        yy, xx = np.mgrid[: self.n, : self.n] - r
        self._outside = (xx**2 + yy**2) > r**2
        # per-row pixel span [jlo, jhi) to back-project into (the circle when circle=True)
        if self.circle:
            inside = ~self._outside
            any_ = inside.any(axis=1)
            self._jlo = np.where(any_, inside.argmax(axis=1), 0).astype(np.int64)
            self._jhi = np.where(any_, self.n - inside[:, ::-1].argmax(axis=1), 0).astype(np.int64)
        else:
            self._jlo = np.zeros(self.n, dtype=np.int64)
            self._jhi = np.full(self.n, self.n, dtype=np.int64)
        if self.backend == "numba":
            _numba_kernels()

    def angle(self, k: int) -> float:
        """Default angle (rad) of projection ``k`` within the rotation."""
        return k * self.angular_range / self.n_proj

    def _scale(self, n_seen: int) -> float:
        if self.geometry == "fan":
            # f = Δβ Σ U⁻² Q,  Q = (1/(4 ds)) · (skimage-ramp ⊛ weighted projection)
            return (self.angular_range / max(n_seen, 1)) / (4.0 * self.ds)
        # iradon's π / (2 N) (its filter carries a factor 2); over 2π every line is seen
        # twice with half the angular weight, so the same factor holds.
        return math.pi / (2 * max(n_seen, 1)) / self.ds

    def filter_projection(self, p: np.ndarray) -> np.ndarray:
        """The filtered projection (float64, ``(n_det,)``)."""
        p = np.asarray(p, dtype=np.float64)
        if self._fan_w is not None:
            p = p * self._fan_w
        spec = np.fft.rfft(p, n=self._pad)
        spec *= self._filter
        return np.fft.irfft(spec, n=self._pad)[: self.n_det]

    def push(self, projection: np.ndarray, angle: float | None = None) -> np.ndarray | None:
        """Add one projection ``(n_det,)`` at ``angle`` (rad; default from its index).

        Returns the complete slice ``(n, n)`` when this projection ends a rotation."""
        if projection.shape != (self.n_det,):
            raise ValueError(f"projection shape {projection.shape} != ({self.n_det},)")
        th = self.angle(self.n_seen) if angle is None else float(angle)
        self._q[self._nq] = self.filter_projection(projection)
        self._cos[self._nq] = math.cos(th)
        self._sin[self._nq] = math.sin(th)
        self._nq += 1
        self.n_seen += 1
        if self._nq == self.batch:
            self._flush()
        if self.n_seen >= self.n_proj:
            out = self._finish(self.n_seen)
            self.reset()
            self.rotations += 1
            return out
        return None

    def _flush(self) -> None:
        if not self._nq:
            return
        q = self._q[: self._nq]
        cos = self._cos[: self._nq]
        sin = self._sin[: self._nq]
        inv_ds = 1.0 / self.ds
        if self.backend == "numba":
            bp_par, bp_fan = _numba_kernels()
            if self.threads:
                import numba

                numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))  # this thread's
            if self.geometry == "fan":
                bp_fan(self._img, q, cos, sin, self.center, inv_ds, self.sid)
            else:
                bp_par(self._img, q, cos, sin, self.center, inv_ds, self._jlo, self._jhi)
        else:
            _bp_numpy(self._img, q, cos, sin, self.center, inv_ds, self.sid if self.geometry == "fan" else None)
        self._nq = 0

    def _finish(self, n_seen: int) -> np.ndarray:
        self._flush()
        out = self._img * self._scale(n_seen)
        if self.circle:
            out[self._outside] = 0.0
        return out

    def preview(self) -> np.ndarray:
        """The running slice ``(n, n)``, scaled as if the seen projections were a full set."""
        return self._finish(self.n_seen)

    def reset(self) -> None:
        """Drop the running slice (start a new rotation)."""
        self._img[:] = 0.0
        self._nq = 0
        self.n_seen = 0


def fbp(
    sinogram: np.ndarray,
    theta: np.ndarray,
    *,
    output_size: int | None = None,
    **kwargs: object,
) -> np.ndarray:
    """Whole-sinogram FBP through :class:`StreamingFBP` (``sinogram`` ``(n_det, n_angles)``,
    ``theta`` rad). ``angular_range`` is inferred from the angle step unless given."""
    n_det, n_ang = sinogram.shape
    if "angular_range" not in kwargs:
        step = float(np.median(np.diff(theta))) if n_ang > 1 else math.pi
        kwargs["angular_range"] = step * n_ang
    rec = StreamingFBP(n_det, n_ang, output_size=output_size or n_det, **kwargs)  # type: ignore[arg-type]
    out = None
    for k in range(n_ang):
        out = rec.push(sinogram[:, k], float(theta[k]))
    assert out is not None
    return out
