"""Plane-wave delay-and-sum beamforming with coherent compounding (B-mode).

Pipeline per frame, RF int16 ``(angles, elements, samples)`` → B-mode float32 ``(nz, nx)`` dB:

1. IQ demodulation at the probe centre frequency f_d, at the full sampling rate: mix by
   ``exp(−j2π f_d t)`` and a 5-tap binomial low-pass (zero at fs/2, which is where the 2·f_d
   image sits when fs = 4 f_d) → complex64 baseband ``(angles, elements, samples)``. The
   int16 → float conversion, mixing and filtering are one fused pass (numba when present).
2. Delay-and-sum: for pixel (x, z), element e, angle θ the two-way delay is
   ``τ = (x sin θ + z cos θ)/c + sqrt((x − x_e)² + z²)/c`` (time zero: the wavefront passes
   the origin). The baseband sample nearest τ (``taps=1``; error ≤ half a sample, i.e.
   1/8 period at 4 samples per period) or the linear interpolation of the two around it
   (``taps=2``) is re-modulated by ``exp(+j2π f_d τ)``; receive apodisation is a Hann
   window over the f-number aperture ``|x − x_e| ≤ z / (2 F#)``; sums run over elements
   and angles (coherent compounding). Because the sum is taken on the analytic (IQ)
   signal, the envelope is valid on any pixel grid (no axial Nyquist condition on z).
3. Envelope ``|IQ|`` and log compression to ``[−dynamic_range_db, 0]`` dB (0 dB = frame max
   unless a fixed reference is given).

Backends:

* ``"sparse"`` (default CPU path): step 2 is one precomputed complex64 CSR operator for all
  angles (rows = pixels, columns = angle × sample × element), applied by ``scipy.sparse``;
  a batch of frames goes through as one sparse × dense product (the operator is read once
  per batch). Step 1 runs as a parallel numba kernel when numba imports (else numpy).
  Measured on 2 cores: a parallel numba CSR kernel was 1.5–2.5× slower than scipy's
  single-threaded product for B-mode frames, so numba does their demodulation only; a batch
  of ≥ 16 frames (a shear-wave tracking ensemble) is demodulated in one pass and multiplied by
  a parallel numba CSR kernel with the frames side by side (there ~1.6× scipy).
* ``"cupy"``: the same operator as ``cupyx.scipy.sparse`` (used by ``"auto"`` when CuPy and
  a GPU are present).
* ``"numpy"``: :func:`das_numpy`, recomputing delays every frame (the benchmark baseline,
  and the fallback when the operator would exceed ``max_operator_bytes``).

Build cost and memory are in :attr:`PlaneWaveBeamformer.build_seconds` and
:attr:`PlaneWaveBeamformer.operator_bytes`; :func:`build_operator` can cache the operator
on disk (``cache_dir``), keyed by a hash of the geometry.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition

__all__ = [
    "PlaneWaveBeamformer",
    "build_operator",
    "iq_demodulate",
    "das_numpy",
    "envelope_db",
    "plane_wave_delays",
    "hann_fnumber_apodization",
    "numba_available",
    "warm_kernels",
]

_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32) * np.float32(2 / 16)  # ×2: analytic gain
#: batches of at least this many frames (a shear-wave tracking ensemble) go through a parallel
#: numba CSR product when numba imports: 150 frames of 1 M nonzeros took 45-56 ms against scipy's
#: 81 ms on the shared 2-core machine (scipy's product is single-threaded); B-mode batches (≤ 4)
#: keep scipy, which was faster there
_NUMBA_MATMUL_MIN_BATCH = 16


def plane_wave_delays(acq: PlaneWaveAcquisition, grid: PixelGrid,
                      angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Transmit delays ``(P,)`` and receive delays ``(P, elements)`` in s, P = nz·nx pixels
    in row-major ``(z, x)`` order."""
    zz, xx = np.meshgrid(grid.z, grid.x, indexing="ij")
    return _delays_xz(acq, xx.ravel(), zz.ravel(), angle_deg)


def _delays_xz(acq: PlaneWaveAcquisition, x: np.ndarray, z: np.ndarray,
               angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    th = np.radians(angle_deg)
    c = acq.speed_of_sound_m_s
    tx = (x * np.sin(th) + z * np.cos(th)) / c
    rx = np.hypot(x[:, None] - acq.probe.element_x[None, :], z[:, None]) / c
    return tx, rx


def hann_fnumber_apodization(acq: PlaneWaveAcquisition, grid: PixelGrid,
                             f_number: float) -> np.ndarray:
    """Receive apodisation ``(P, elements)``: Hann window of width z/F# centred on the pixel."""
    zz, xx = np.meshgrid(grid.z, grid.x, indexing="ij")
    return _apod_xz(acq, xx.ravel(), zz.ravel(), f_number)


def _apod_xz(acq: PlaneWaveAcquisition, x: np.ndarray, z: np.ndarray,
             f_number: float) -> np.ndarray:
    width = np.maximum(z / f_number, 2 * acq.probe.pitch_m)
    d = (acq.probe.element_x[None, :] - x[:, None]) / width[:, None]
    return np.where(np.abs(d) <= 0.5, 0.5 * (1 + np.cos(2 * np.pi * d)), 0.0)


def _mixer(acq: PlaneWaveAcquisition, n: int, f_demod: float | None) -> tuple[np.ndarray, np.ndarray]:
    fd = acq.probe.center_frequency_hz if f_demod is None else f_demod
    ph = 2 * np.pi * fd * (acq.start_time_s + np.arange(n) / acq.sampling_frequency_hz)
    return np.cos(ph).astype(np.float32), np.sin(ph).astype(np.float32)


def iq_demodulate(rf: np.ndarray, acq: PlaneWaveAcquisition,
                  f_demod: float | None = None) -> np.ndarray:
    """RF ``(..., samples)`` → complex64 baseband IQ ``(..., samples)`` at the full rate fs:
    IQ sample n (time ``start + n/fs``) equals the analytic signal times ``exp(−j2π f_d t)``."""
    n = rf.shape[-1]
    cos, sin = _mixer(acq, n, f_demod)
    x = rf.astype(np.float32)
    out = np.empty(rf.shape, np.complex64)
    out.real = x * cos
    out.imag = x * -sin
    v = out.view(np.float32).reshape(*rf.shape[:-1], n, 2)
    # [1 4 6 4 1] = [1 2 1] * [1 2 1]; zero-padded edges
    for _ in range(2):
        t = 2 * v
        t[..., 1:, :] += v[..., :-1, :]
        t[..., :-1, :] += v[..., 1:, :]
        v[...] = t
    out *= np.float32(2 / 16)
    return out


def envelope_db(iq_image: np.ndarray, dynamic_range_db: float = 60.0,
                reference: float | None = None) -> np.ndarray:
    """``20 log10(|iq| / ref)`` clipped to ``[−dynamic_range_db, 0]``; ref = max by default."""
    env = np.abs(iq_image)
    ref = float(env.max()) if reference is None else reference
    db = 20 * np.log10(np.maximum(env, 1e-30) / max(ref, 1e-30))
    return np.clip(db, -dynamic_range_db, 0).astype(np.float32)


def das_numpy(rf: np.ndarray, acq: PlaneWaveAcquisition, grid: PixelGrid | None = None,
              f_number: float = 1.5) -> np.ndarray:
    """Straightforward numpy DAS (the baseline): recomputes delays for every frame, linear
    interpolation of the full-rate IQ. Returns the complex64 IQ image ``(nz, nx)``."""
    grid = grid or PixelGrid()
    iq = iq_demodulate(rf, acq)
    fs = acq.sampling_frequency_hz
    fd = acq.probe.center_frequency_hz
    apod = hann_fnumber_apodization(acq, grid, f_number)
    out = np.zeros(grid.nz * grid.nx, np.complex64)
    m = iq.shape[-1]
    for a, ang in enumerate(acq.angles_deg):
        tx, rx = plane_wave_delays(acq, grid, ang)
        for e in range(acq.probe.n_elements):
            w = apod[:, e]
            act = w > 0
            if not act.any():
                continue
            tau = tx[act] + rx[act, e]
            u = (tau - acq.start_time_s) * fs
            i0 = np.floor(u).astype(np.int64)
            fr = (u - i0).astype(np.float32)
            ok = (i0 >= 0) & (i0 < m - 1)
            i0c = np.clip(i0, 0, m - 2)
            sig = iq[a, e, i0c] * (1 - fr) + iq[a, e, i0c + 1] * fr
            sig *= np.exp(2j * np.pi * fd * tau).astype(np.complex64)
            out[act] += np.where(ok, sig * w[act], 0)
    return out.reshape(grid.shape)


# ---- the operator -------------------------------------------------------------------------
def _angle_operator(acq: PlaneWaveAcquisition, grid: PixelGrid, f_number: float,
                    angle_deg: float, taps: int) -> sp.csr_matrix:
    n_e, m = acq.probe.n_elements, acq.n_samples
    fs = acq.sampling_frequency_hz
    fd = acq.probe.center_frequency_hz
    npix = grid.nx * grid.nz
    rows_data, rows_idx, counts = [], [], np.zeros(npix, np.int64)
    step = 8192  # pixel blocks keep the temporaries small
    for p0 in range(0, npix, step):
        p = np.arange(p0, min(p0 + step, npix))
        x, z = grid.x[p % grid.nx], grid.z[p // grid.nx]
        apod = _apod_xz(acq, x, z, f_number).astype(np.float32)
        tx, rx = _delays_xz(acq, x, z, angle_deg)
        tau = tx[:, None] + rx
        u = (tau - acq.start_time_s) * fs
        i0 = np.floor(u) if taps == 2 else np.rint(u)
        ok = (apod > 0) & (i0 >= 0) & (i0 < m - (taps - 1))
        counts[p0:p0 + len(apod)] = taps * ok.sum(axis=1)
        pr, pe = np.nonzero(ok)  # row-major: sorted by pixel, then element
        i0s = i0[pr, pe].astype(np.int64)
        rot = (apod[pr, pe] * np.exp(2j * np.pi * fd * tau[pr, pe])).astype(np.complex64)
        if taps == 1:
            rows_data.append(rot)
            rows_idx.append((i0s * n_e + pe).astype(np.int32))
        else:
            fr = (u[pr, pe] - i0s).astype(np.float32)
            d = np.empty(2 * len(pr), np.complex64)
            d[0::2], d[1::2] = rot * (1 - fr), rot * fr
            ix = np.empty(2 * len(pr), np.int32)
            ix[0::2], ix[1::2] = i0s * n_e + pe, (i0s + 1) * n_e + pe
            rows_data.append(d)
            rows_idx.append(ix)
    indptr = np.zeros(npix + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((np.concatenate(rows_data), np.concatenate(rows_idx), indptr),
                         shape=(npix, n_e * m))


def _cache_key(acq: PlaneWaveAcquisition, grid: PixelGrid, f_number: float, taps: int) -> str:
    doc = json.dumps([acq.model_dump(mode="json"), grid.model_dump(mode="json"), f_number, taps, 2],
                     sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def build_operator(acq: PlaneWaveAcquisition, grid: PixelGrid, f_number: float = 1.5,
                   taps: int = 1, cache_dir: str | None = None) -> sp.csr_matrix:
    """The DAS operator for all angles: complex64 CSR ``(nz·nx, angles·samples·elements)``.

    Columns run over IQ laid out ``(angle, sample, element)`` (element fastest): a pixel's
    taps on neighbouring elements then touch neighbouring memory, which doubles the speed
    of the product over the ``(angle, element, sample)`` order.

    With ``cache_dir`` the operator is loaded from / saved to ``<cache_dir>/us-op-<hash>.npz``."""
    if taps not in (1, 2):
        raise ValueError("taps must be 1 or 2")
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"us-op-{_cache_key(acq, grid, f_number, taps)}.npz")
        if os.path.exists(path):
            try:
                with np.load(path) as z:
                    return sp.csr_matrix((z["data"], z["indices"], z["indptr"]),
                                         shape=tuple(z["shape"]))
            except (OSError, ValueError, KeyError):
                pass
    ops = [_angle_operator(acq, grid, f_number, a, taps) for a in acq.angles_deg]
    op = ops[0] if len(ops) == 1 else sp.hstack(ops, format="csr")
    op.indices = op.indices.astype(np.int32, copy=False)
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            np.savez(tmp, data=op.data, indices=op.indices, indptr=op.indptr,
                     shape=np.array(op.shape))
            os.replace(tmp, path)
        except OSError:
            pass
    return op


# ---- numba kernels (optional) -------------------------------------------------------------
_NUMBA: dict[str, Any] | None = None
_NUMBA_LOCK = threading.Lock()


def _numba_kernels() -> dict[str, Any] | None:
    """Compile (once) and return the numba kernels, or ``None`` when numba is missing."""
    global _NUMBA
    with _NUMBA_LOCK:
        if _NUMBA is not None:
            return _NUMBA or None
        try:
            import numba as nb
        except ImportError:
            _NUMBA = {}
            return None

        # cache=True: compiled once per machine (numba's on-disk cache), not at every stream
        # start; nogil=True: the stage's other threads (receive, publish, other streams) run
        # while it does
        @nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
        def demod(rf, cos, sin, h, out, col):  # pragma: no cover - compiled
            # rf int16 (A, E, S); out complex64 (A*S*E, nb) in (angle, sample, element)
            # order, writes column ``col``. One tile (angle, 64 samples) per task: each line
            # mixed once per sample, then filtered (5 taps), into an (element, sample) scratch
            # that is written out row by row (contiguous; per-line writes stride n_e rows).
            # 1.8x faster than mixing inside the filter and writing line by line.
            n_a, n_e, s = rf.shape
            blk = 64
            n_blk = (s + blk - 1) // blk
            for t in nb.prange(n_a * n_blk):
                a = t // n_blk
                n0 = (t % n_blk) * blk
                m = min(n0 + blk, s) - n0
                mr = np.zeros(blk + 4, np.float32)
                mi = np.zeros(blk + 4, np.float32)
                tr = np.empty((n_e, blk), np.float32)
                ti = np.empty((n_e, blk), np.float32)
                h0, h1, h2, h3, h4 = h[0], h[1], h[2], h[3], h[4]
                for e in range(n_e):
                    for j in range(m + 4):
                        mm = n0 + j - 2
                        if 0 <= mm < s:
                            v = np.float32(rf[a, e, mm])
                            mr[j] = v * cos[mm]
                            mi[j] = -v * sin[mm]
                        else:  # zero-padded edges
                            mr[j] = 0.0
                            mi[j] = 0.0
                    for j in range(m):
                        tr[e, j] = h0 * mr[j] + h1 * mr[j + 1] + h2 * mr[j + 2] + h3 * mr[j + 3] + h4 * mr[j + 4]
                        ti[e, j] = h0 * mi[j] + h1 * mi[j + 1] + h2 * mi[j + 2] + h3 * mi[j + 3] + h4 * mi[j + 4]
                for j in range(m):
                    base = (a * s + n0 + j) * n_e
                    for e in range(n_e):
                        out[base + e, col] = complex(tr[e, j], ti[e, j])

        @nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
        def demod_batch(rf, cos, sin, h, outf):  # pragma: no cover - compiled
            # rf int16 (F, A, E, S) → outf = out complex64 (A*S*E, F) viewed as float32
            # (A*S*E, 2F). One line (angle, element) per task: mixed into a (sample, frame)
            # scratch (frame fastest), then filtered along samples with every frame of a
            # sample side by side, so the reads and the writes of out's rows are contiguous
            n_f, n_a, n_e, s = rf.shape
            for ln in nb.prange(n_a * n_e):
                a = ln // n_e
                e = ln % n_e
                tr = np.zeros((s + 4, n_f), np.float32)
                ti = np.zeros((s + 4, n_f), np.float32)
                for f in range(n_f):
                    for n in range(s):
                        v = np.float32(rf[f, a, e, n])
                        tr[n + 2, f] = v * cos[n]
                        ti[n + 2, f] = -v * sin[n]
                for n in range(s):
                    row = (a * s + n) * n_e + e
                    for f in range(n_f):
                        outf[row, 2 * f] = (h[0] * tr[n, f] + h[1] * tr[n + 1, f] + h[2] * tr[n + 2, f]
                                            + h[3] * tr[n + 3, f] + h[4] * tr[n + 4, f])
                        outf[row, 2 * f + 1] = (h[0] * ti[n, f] + h[1] * ti[n + 1, f] + h[2] * ti[n + 2, f]
                                                + h[3] * ti[n + 3, f] + h[4] * ti[n + 4, f])

        @nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
        def csr_matmul(indptr, indices, dataf, xf, yf):  # pragma: no cover - compiled
            # y = op @ x for a batch: op complex64 CSR (data viewed as float32 pairs), x/y
            # complex64 (columns, frames)/(pixels, frames) viewed as float32 (…, 2·frames);
            # one pixel row per task, its frames accumulated side by side (vectorised)
            n_f = xf.shape[1] // 2
            for r in nb.prange(indptr.shape[0] - 1):
                acc = np.zeros(2 * n_f, np.float32)
                for j in range(indptr[r], indptr[r + 1]):
                    c = indices[j]
                    dr = dataf[2 * j]
                    di = dataf[2 * j + 1]
                    for f in range(n_f):
                        xr = xf[c, 2 * f]
                        xi = xf[c, 2 * f + 1]
                        acc[2 * f] += dr * xr - di * xi
                        acc[2 * f + 1] += dr * xi + di * xr
                for k in range(2 * n_f):
                    yf[r, k] = acc[k]

        _NUMBA = {"demod": demod, "demod_batch": demod_batch, "csr_matmul": csr_matmul, "numba": nb}
        return _NUMBA


def warm_kernels() -> bool:
    """Compile (or load from numba's on-disk cache) the demodulation kernel now, on a tiny
    frame of the same types as every real one; ``False`` when numba is missing."""
    k = _numba_kernels()
    if k is None:
        return False
    rf = np.zeros((1, 1, 8), np.int16)
    cos, sin = np.ones(8, np.float32), np.zeros(8, np.float32)
    k["demod"](rf, cos, sin, _BINOMIAL, np.empty((8, 1), np.complex64), 0)
    return True


def numba_available() -> bool:
    """Whether the numba backend can run here."""
    return _numba_kernels() is not None


def _cupy_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means "no GPU path"
        return False


class PlaneWaveBeamformer:
    """Plane-wave DAS + coherent compounding + envelope + log compression.

    Args:
        acquisition: probe, angles, sampling, samples (must match the RF frames).
        grid: pixel grid (default 256×256, x ±19.05 mm, z 5–45 mm).
        f_number: receive f-number (aperture width z/F#, Hann apodised).
        dynamic_range_db: log-compression range.
        backend: ``"auto"`` (CuPy if usable, else sparse), ``"sparse"``, ``"cupy"``,
            ``"numpy"``.
        taps: 1 (nearest full-rate IQ sample, fastest) or 2 (linear interpolation).
        max_operator_bytes: above this the operator is not built; falls back to numpy.
        threads: CPU threads (numba kernels; ``None`` = numba's default).
        cache_dir: where to cache operators on disk (``None``: no cache).
        product_threads: threads the sparse product of the ``"sparse"`` backend is split over, by
            pixel rows (scipy's product releases the GIL; each thread takes a block of rows, copied
            once per operator). 1: the calling thread alone.
    """

    def __init__(self, acquisition: PlaneWaveAcquisition, grid: PixelGrid | None = None, *,
                 f_number: float = 1.5, dynamic_range_db: float = 60.0,
                 backend: str = "auto", taps: int = 1, max_operator_bytes: int = 3 << 30,
                 threads: int | None = None, cache_dir: str | None = None, product_threads: int = 1) -> None:
        self.acquisition = acquisition
        self.product_threads = max(1, int(product_threads))
        self._blocks: tuple[Any, list[Any]] | None = None  # (operator, its row blocks)
        self._pool: Any = None
        self.grid = grid or PixelGrid()
        self.f_number = f_number
        self.dynamic_range_db = dynamic_range_db
        self.taps = taps
        self.max_operator_bytes = max_operator_bytes
        self.threads = threads
        self.cache_dir = cache_dir
        self.build_seconds = 0.0
        self._op: Any = None
        self._lock = threading.Lock()
        #: per calling thread, the batched path's IQ columns ``(A·S·E, frames)`` complex64, kept
        #: between calls: a 150-frame ensemble's are 137 MB, and a fresh array's page faults cost
        #: ~20 ms of CPU per ensemble (of ~95 for demodulation + product, 1 thread)
        self._columns = threading.local()
        self.backend = self._pick_backend(backend)
        if self.backend != "numpy":
            self._op = self._build(self.acquisition, self.grid, self.backend)

    # ---- setup ----------------------------------------------------------------------------
    def estimate_operator_bytes(self, acq: PlaneWaveAcquisition | None = None,
                                grid: PixelGrid | None = None) -> int:
        """Approximate operator size (bytes) before building: taps × active pixel·element
        pairs × (8 B value + 4 B index)."""
        acq, grid = acq or self.acquisition, grid or self.grid
        zz = np.repeat(grid.z, grid.nx)
        xx = np.tile(grid.x, grid.nz)
        width = np.maximum(zz / self.f_number, 2 * acq.probe.pitch_m)
        ex = acq.probe.element_x
        lo = np.searchsorted(ex, xx - width / 2)
        hi = np.searchsorted(ex, xx + width / 2, side="right")
        nnz = self.taps * int((hi - lo).sum()) * acq.n_angles
        return nnz * 12 + grid.nx * grid.nz * 8

    def _pick_backend(self, backend: str) -> str:
        if backend == "auto":
            backend = "cupy" if _cupy_usable() else "sparse"
        if backend not in ("sparse", "cupy", "numpy"):
            raise ValueError(f"unknown backend {backend!r}")
        if backend != "numpy" and self.estimate_operator_bytes() > self.max_operator_bytes:
            backend = "numpy"
        return backend

    def _build(self, acq: PlaneWaveAcquisition, grid: PixelGrid, backend: str) -> Any:
        t0 = time.perf_counter()
        op = build_operator(acq, grid, self.f_number, self.taps, self.cache_dir)
        if backend == "cupy":
            import cupyx.scipy.sparse as csp

            op = csp.csr_matrix(op)
        self.build_seconds = time.perf_counter() - t0
        return op

    @property
    def operator_bytes(self) -> int:
        """Memory of the operator (bytes; 0 for the numpy backend)."""
        op = self._op
        if op is None:
            return 0
        return int(op.data.nbytes + op.indices.nbytes + op.indptr.nbytes)

    def set_geometry(self, acquisition: PlaneWaveAcquisition | None = None,
                     grid: PixelGrid | None = None) -> None:
        """Rebuild for new angles/samples/grid. Frames keep using the old operator until the
        new one is complete (safe to call from a background thread)."""
        acq, grid = acquisition or self.acquisition, grid or self.grid
        backend = self.backend
        if backend == "numpy" and self._op is None:
            backend = "numpy"
        elif self.estimate_operator_bytes(acq, grid) > self.max_operator_bytes:
            backend = "numpy"
        op = None if backend == "numpy" else self._build(acq, grid, backend)
        with self._lock:
            self.acquisition, self.grid, self._op, self.backend = acq, grid, op, backend

    # ---- per frame ------------------------------------------------------------------------
    def beamform_iq(self, rf: np.ndarray) -> np.ndarray:
        """RF ``(angles, elements, samples)`` or a batch ``(frames, angles, elements, samples)``
        → complex64 IQ image ``(nz, nx)`` or ``(frames, nz, nx)``."""
        batched = rf.ndim == 4
        rf4 = rf if batched else rf[None]
        with self._lock:
            acq, grid, op, backend = self.acquisition, self.grid, self._op, self.backend
        if rf4.shape[1:] != acq.rf_shape:
            raise ValueError(f"RF shape {rf4.shape[1:]} does not match {acq.rf_shape}")
        nb = rf4.shape[0]
        if backend == "numpy":
            out = np.stack([das_numpy(f, acq, grid, self.f_number) for f in rf4])
        else:
            x = self._iq_columns(rf4, acq)
            if backend == "cupy":
                import cupy as cp

                res = cp.asnumpy(op @ cp.asarray(x))
            elif self.product_threads > 1:
                res = self._split_product(op, x[:, 0] if nb == 1 else x)
            elif nb >= _NUMBA_MATMUL_MIN_BATCH and (k := _numba_kernels()) is not None:
                res = np.empty((op.shape[0], nb), np.complex64)
                k["csr_matmul"](op.indptr, op.indices, op.data.view(np.float32), x.view(np.float32),
                                res.view(np.float32))
            else:
                res = op @ (x[:, 0] if nb == 1 else x)
            out = (res[None] if nb == 1 else res.T).reshape((nb, *grid.shape))
        return out if batched else out[0]

    def _split_product(self, op: Any, x: np.ndarray) -> np.ndarray:
        """``op @ x`` with the rows split over :attr:`product_threads` threads (this one included)."""
        from concurrent.futures import ThreadPoolExecutor

        blocks = self._blocks
        if blocks is None or blocks[0] is not op:
            n = self.product_threads
            edges = np.linspace(0, op.shape[0], n + 1).astype(int)
            blocks = (op, [op[a:b] for a, b in zip(edges[:-1], edges[1:])])
            self._blocks = blocks
        parts = blocks[1]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(parts) - 1, thread_name_prefix="bf-product")
        futures = [self._pool.submit(b.__matmul__, x) for b in parts[1:]]
        first = parts[0] @ x
        return np.concatenate([first, *(f.result() for f in futures)], axis=0)

    @property
    def demod_backend(self) -> str:
        """``"numba"`` when the fused demodulation kernel runs, else ``"numpy"``."""
        return "numba" if numba_available() else "numpy"

    def _iq_columns(self, rf4: np.ndarray, acq: PlaneWaveAcquisition) -> np.ndarray:
        """int16 ``(frames, angles, elements, samples)`` → complex64 IQ ``(A·S·E, frames)``."""
        nb = rf4.shape[0]
        k = _numba_kernels()
        if k is not None:
            if self.threads:
                k["numba"].set_num_threads(min(self.threads, k["numba"].config.NUMBA_NUM_THREADS))
            cos, sin = _mixer(acq, acq.n_samples, None)
            shape = (int(np.prod(acq.rf_shape)), nb)
            if nb >= _NUMBA_MATMUL_MIN_BATCH:  # one pass, frame-fastest writes (per-frame column
                # writes thrash the cache); into this thread's columns of the last batch when the
                # shape is the same (only the product reads them, before this call returns)
                x = getattr(self._columns, "x", None)
                if x is None or x.shape != shape:
                    self._columns.x = None  # the old one freed first
                    x = self._columns.x = np.empty(shape, np.complex64)
                k["demod_batch"](np.ascontiguousarray(rf4, dtype=np.int16), cos, sin, _BINOMIAL, x.view(np.float32))
                return x
            x = np.empty(shape, np.complex64)
            for f in range(nb):
                k["demod"](np.ascontiguousarray(rf4[f], dtype=np.int16), cos, sin, _BINOMIAL, x, f)
            return x
        iq = iq_demodulate(rf4, acq)  # (F, A, E, S)
        return np.ascontiguousarray(iq.transpose(1, 3, 2, 0).reshape(-1, nb))

    def __call__(self, rf: np.ndarray, reference: float | None = None) -> np.ndarray:
        """RF → B-mode float32 dB in ``[−dynamic_range_db, 0]``, ``(nz, nx)`` (or batched)."""
        iq = self.beamform_iq(rf)
        if iq.ndim == 3:
            return np.stack([envelope_db(i, self.dynamic_range_db, reference) for i in iq])
        return envelope_db(iq, self.dynamic_range_db, reference)

    def close(self) -> None:
        """Release the operator (and the batched path's IQ columns)."""
        with self._lock:
            self._op = None
            self._columns = threading.local()
