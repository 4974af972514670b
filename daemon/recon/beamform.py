"""Plane-wave delay-and-sum beamforming with coherent compounding (B-mode).

Pipeline per frame, RF int16 ``(angles, elements, samples)`` → B-mode float32 ``(nz, nx)`` dB:

1. IQ demodulation at the probe centre frequency f_d: mix by ``exp(−j2π f_d t)``, 5-tap
   binomial low-pass (zero at fs/2, which is where the 2·f_d image sits when fs = 4 f_d),
   decimate by 2 → complex64 ``(angles, elements, samples/2)``.
2. Delay-and-sum: for pixel (x, z), element e, angle θ the two-way delay is
   ``τ = (x sin θ + z cos θ)/c + sqrt((x − x_e)² + z²)/c`` (time zero: the wavefront passes
   the origin). IQ is linearly interpolated at τ and re-modulated by ``exp(+j2π f_d τ)``;
   receive apodisation is a Hann window over the f-number aperture
   ``|x − x_e| ≤ z / (2 F#)``; sums run over elements and angles (coherent compounding).
3. Envelope ``|IQ|`` and log compression to ``[−dynamic_range_db, 0]`` dB (0 dB = frame max
   unless a fixed reference is given).

Backends:

* ``"sparse"`` (default CPU path): step 2 is a precomputed complex64 CSR matrix per angle
  (rows = pixels, columns = element × IQ sample, 2 entries per pixel·element), applied as
  ``Σ_a A_a @ iq_a``; batches of frames go through as one sparse × dense product. Build
  cost and memory are reported in :attr:`PlaneWaveBeamformer.build_seconds` and
  :attr:`PlaneWaveBeamformer.operator_bytes`.
* ``"cupy"``: the same matrices as ``cupyx.scipy.sparse`` (used by ``"auto"`` when CuPy
  and a GPU are present).
* ``"numpy"``: :func:`das_numpy`, recomputing delays every frame (the benchmark baseline,
  and the fallback when the operator would exceed ``max_operator_bytes``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition

__all__ = [
    "PlaneWaveBeamformer",
    "iq_demodulate",
    "das_numpy",
    "envelope_db",
    "plane_wave_delays",
    "hann_fnumber_apodization",
]


def plane_wave_delays(acq: PlaneWaveAcquisition, grid: PixelGrid,
                      angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Transmit delays ``(P,)`` and receive delays ``(P, elements)`` in s, P = nz·nx pixels
    in row-major ``(z, x)`` order."""
    zz, xx = np.meshgrid(grid.z, grid.x, indexing="ij")
    x, z = xx.ravel(), zz.ravel()
    th = np.radians(angle_deg)
    c = acq.speed_of_sound_m_s
    tx = (x * np.sin(th) + z * np.cos(th)) / c
    rx = np.hypot(x[:, None] - acq.probe.element_x[None, :], z[:, None]) / c
    return tx, rx


def hann_fnumber_apodization(acq: PlaneWaveAcquisition, grid: PixelGrid,
                             f_number: float) -> np.ndarray:
    """Receive apodisation ``(P, elements)``: Hann window of width z/F# centred on the pixel."""
    zz, xx = np.meshgrid(grid.z, grid.x, indexing="ij")
    x, z = xx.ravel(), zz.ravel()
    width = np.maximum(z / f_number, 2 * acq.probe.pitch_m)
    d = (acq.probe.element_x[None, :] - x[:, None]) / width[:, None]
    return np.where(np.abs(d) <= 0.5, 0.5 * (1 + np.cos(2 * np.pi * d)), 0.0)


def iq_demodulate(rf: np.ndarray, acq: PlaneWaveAcquisition,
                  f_demod: float | None = None) -> np.ndarray:
    """RF ``(..., samples)`` → complex64 IQ ``(..., samples // 2)`` at fs/2; IQ sample m is at
    time ``start + 2m/fs`` and equals the analytic signal times ``exp(−j2π f_d t)``."""
    fs = acq.sampling_frequency_hz
    fd = acq.probe.center_frequency_hz if f_demod is None else f_demod
    n = rf.shape[-1] - rf.shape[-1] % 2
    t = acq.start_time_s + np.arange(n) / fs
    mix = np.exp(-2j * np.pi * fd * t).astype(np.complex64)
    b = rf[..., :n].astype(np.float32) * mix  # 2× analytic gain compensated below
    # 5-tap binomial [1 4 6 4 1]/16 at even n, zero-padded edges; ×2 for the lost half
    even, odd = b[..., 0::2], b[..., 1::2]  # b[2m], b[2m+1]
    out = 6 * even + 4 * odd
    out[..., 1:] += 4 * odd[..., :-1] + even[..., :-1]  # b[2m-1], b[2m-2]
    out[..., :-1] += even[..., 1:]  # b[2m+2]
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
    """Straightforward numpy DAS (the baseline): recomputes delays for every frame.

    Returns the complex64 beamformed IQ image ``(nz, nx)``."""
    grid = grid or PixelGrid()
    iq = iq_demodulate(rf, acq)
    fs2 = acq.sampling_frequency_hz / 2
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
            u = (tau - acq.start_time_s) * fs2
            i0 = np.floor(u).astype(np.int64)
            fr = (u - i0).astype(np.float32)
            ok = (i0 >= 0) & (i0 < m - 1)
            i0c = np.clip(i0, 0, m - 2)
            sig = iq[a, e, i0c] * (1 - fr) + iq[a, e, i0c + 1] * fr
            sig *= np.exp(2j * np.pi * fd * tau).astype(np.complex64)
            out[act] += np.where(ok, sig * w[act], 0)
    return out.reshape(grid.shape)


class PlaneWaveBeamformer:
    """Plane-wave DAS + coherent compounding + envelope + log compression.

    Args:
        acquisition: probe, angles, sampling, samples (must match the RF frames).
        grid: pixel grid (default 256×256, x ±19.05 mm, z 5–45 mm).
        f_number: receive f-number (aperture width z/F#, Hann apodised).
        dynamic_range_db: log-compression range.
        backend: ``"auto"`` (CuPy if usable, else sparse), ``"sparse"``, ``"cupy"``, ``"numpy"``.
        max_operator_bytes: above this the sparse operator is not built; falls back to numpy.
        threads: CPU threads for the sparse products (row blocks in parallel).
    """

    def __init__(self, acquisition: PlaneWaveAcquisition, grid: PixelGrid | None = None, *,
                 f_number: float = 1.5, dynamic_range_db: float = 60.0,
                 backend: str = "auto", max_operator_bytes: int = 3 << 30,
                 threads: int = 2) -> None:
        self.acquisition = acquisition
        self.grid = grid or PixelGrid()
        self.f_number = f_number
        self.dynamic_range_db = dynamic_range_db
        self.max_operator_bytes = max_operator_bytes
        self.threads = max(1, threads)
        self.build_seconds = 0.0
        self._ops: list[list[sp.csr_matrix]] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.backend = self._pick_backend(backend)
        if self.backend in ("sparse", "cupy"):
            self._build()

    # ---- setup ----------------------------------------------------------------------------
    def estimate_operator_bytes(self) -> int:
        """Approximate CSR size (bytes) before building: 2 taps × active pixel·element pairs."""
        apod = hann_fnumber_apodization(self.acquisition, self.grid, self.f_number)
        nnz = 2 * int(np.count_nonzero(apod)) * self.acquisition.n_angles
        return nnz * (8 + 4) + self.grid.nx * self.grid.nz * 4 * self.acquisition.n_angles

    def _pick_backend(self, backend: str) -> str:
        if backend == "auto":
            try:
                import cupy  # noqa: F401

                backend = "cupy" if cupy.cuda.runtime.getDeviceCount() > 0 else "sparse"
            except Exception:
                backend = "sparse"
        if backend not in ("sparse", "cupy", "numpy"):
            raise ValueError(f"unknown backend {backend!r}")
        if backend != "numpy" and self.estimate_operator_bytes() > self.max_operator_bytes:
            backend = "numpy"
        return backend

    def _angle_operator(self, angle_deg: float) -> sp.csr_matrix:
        acq, grid = self.acquisition, self.grid
        n_e = acq.probe.n_elements
        m = acq.n_samples // 2
        fs2 = acq.sampling_frequency_hz / 2
        fd = acq.probe.center_frequency_hz
        apod = hann_fnumber_apodization(acq, grid, self.f_number).astype(np.float32)
        tx, rx = plane_wave_delays(acq, grid, angle_deg)
        tau = tx[:, None] + rx
        u = (tau - acq.start_time_s) * fs2
        i0 = np.floor(u)
        ok = (apod > 0) & (i0 >= 0) & (i0 < m - 1)
        rows_n = ok.sum(axis=1)
        pr, pe = np.nonzero(ok)  # row-major: sorted by pixel, then element
        tau_s, u_s = tau[pr, pe], u[pr, pe]
        i0s = i0[pr, pe].astype(np.int64)
        fr = (u_s - i0s).astype(np.float32)
        rot = (apod[pr, pe] * np.exp(2j * np.pi * fd * tau_s)).astype(np.complex64)
        data = np.empty(2 * len(pr), np.complex64)
        data[0::2] = rot * (1 - fr)
        data[1::2] = rot * fr
        idx = np.empty(2 * len(pr), np.int32)
        idx[0::2] = pe * m + i0s
        idx[1::2] = pe * m + i0s + 1
        indptr = np.zeros(grid.nx * grid.nz + 1, np.int64)
        np.cumsum(2 * rows_n, out=indptr[1:])
        return sp.csr_matrix((data, idx, indptr), shape=(grid.nx * grid.nz, n_e * m))

    def _build(self) -> None:
        t0 = time.perf_counter()
        ops = [self._angle_operator(a) for a in self.acquisition.angles_deg]
        # split rows in blocks so the products can run in parallel threads
        nrow = self.grid.nx * self.grid.nz
        edges = np.linspace(0, nrow, self.threads + 1).astype(int)
        blocks = [[op[edges[i]:edges[i + 1]] for op in ops] for i in range(self.threads)]
        if self.backend == "cupy":
            import cupyx.scipy.sparse as csp

            blocks = [[csp.csr_matrix(op) for op in ops]]
        with self._lock:
            self._ops = blocks
        self.build_seconds = time.perf_counter() - t0

    @property
    def operator_bytes(self) -> int:
        """Memory of the sparse operator (bytes; 0 for the numpy backend)."""
        if self.backend != "sparse":
            return 0
        return sum(op.data.nbytes + op.indices.nbytes + op.indptr.nbytes
                   for blk in self._ops for op in blk)

    def set_geometry(self, acquisition: PlaneWaveAcquisition | None = None,
                     grid: PixelGrid | None = None) -> None:
        """Rebuild for new angles/samples/grid; frames keep using the old operator until the
        new one is complete (safe to call from a background thread)."""
        new = PlaneWaveBeamformer(acquisition or self.acquisition, grid or self.grid,
                                  f_number=self.f_number, dynamic_range_db=self.dynamic_range_db,
                                  backend=self.backend, max_operator_bytes=self.max_operator_bytes,
                                  threads=1)
        with self._lock:
            self.acquisition, self.grid = new.acquisition, new.grid
            nrow = self.grid.nx * self.grid.nz
            if new.backend == "sparse":
                ops = new._ops[0]
                edges = np.linspace(0, nrow, self.threads + 1).astype(int)
                self._ops = [[op[edges[i]:edges[i + 1]] for op in ops] for i in range(self.threads)]
            else:
                self._ops = new._ops
            self.backend = new.backend
            self.build_seconds = new.build_seconds

    # ---- per frame ------------------------------------------------------------------------
    def beamform_iq(self, rf: np.ndarray) -> np.ndarray:
        """RF ``(angles, elements, samples)`` or a batch ``(frames, angles, elements, samples)``
        → complex64 IQ image ``(nz, nx)`` or ``(frames, nz, nx)``."""
        batched = rf.ndim == 4
        rf4 = rf if batched else rf[None]
        with self._lock:
            acq, grid, ops, backend = self.acquisition, self.grid, self._ops, self.backend
        if rf4.shape[1:] != acq.rf_shape:
            raise ValueError(f"RF shape {rf4.shape[1:]} does not match {acq.rf_shape}")
        if backend == "numpy":
            out = np.stack([das_numpy(f, acq, grid, self.f_number) for f in rf4])
            return out if batched else out[0]
        if backend == "cupy":
            import cupy as cp

            iq = cp.asarray(iq_demodulate(rf4, acq))
            nb, na = iq.shape[0], iq.shape[1]
            x = iq.reshape(nb, na, -1)
            acc = sum(ops[0][a] @ x[:, a, :].T for a in range(na))
            out = cp.asnumpy(acc.T).reshape((nb, *grid.shape))
            return out if batched else out[0]
        iq = iq_demodulate(rf4, acq)
        nb, na = iq.shape[0], iq.shape[1]
        x = iq.reshape(nb, na, -1)
        cols = [np.ascontiguousarray(x[:, a, :].T) if nb > 1 else x[0, a] for a in range(na)]

        def block(blk: Sequence[sp.csr_matrix]) -> np.ndarray:
            acc = blk[0] @ cols[0]
            for a in range(1, na):
                acc += blk[a] @ cols[a]
            return acc

        if self._pool is not None and len(ops) > 1:
            parts = list(self._pool.map(block, ops))
        else:
            parts = [block(b) for b in ops]
        res = np.concatenate(parts, axis=0)
        out = (res.T if nb > 1 else res[None]).reshape((nb, *grid.shape))
        return out if batched else out[0]

    def __call__(self, rf: np.ndarray, reference: float | None = None) -> np.ndarray:
        """RF → B-mode float32 dB in ``[−dynamic_range_db, 0]``, ``(nz, nx)`` (or batched)."""
        iq = self.beamform_iq(rf)
        if iq.ndim == 3:
            return np.stack([envelope_db(i, self.dynamic_range_db, reference) for i in iq])
        return envelope_db(iq, self.dynamic_range_db, reference)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
