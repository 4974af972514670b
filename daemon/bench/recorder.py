"""``medacq bench recorder``: the CPU cost of recording the default rig's raw data to HDF5.

The crash-safe writer (:class:`~medacq.daemon.recording.hdf5.Hdf5RecordingWriter` on
:class:`~medacq.daemon.recording.wal.CheckpointedFile`) is fed, in this process, the frames
of ``--duration`` seconds of the default ``medacq up`` rig's three large raw streams at their
rates — ultrasound ``(angle, element, sample)`` 3 × 128 × 2048 ``<i2`` at 20 fps, X-ray
``(y, x)`` 768 × 972 ``<u2`` at 10 fps, CT projections 384 × 486 ``<u2`` at 20 fps (about
54 MB/s) — with their headers, one checkpoint per simulated second, no fsync (as
``bench rig``'s recorder). Baseline, same run, same data: plain h5py appends of the same
frames (one resizable chunked dataset per stream, one write per frame, a flush per second)
to an ordinary file, which is neither crash-safe nor per-frame indexed. Figures: CPU seconds
per second of data (``cpu_pct_of_core``) for both, their ratio, and write throughput (MB/s).
The data is random (not compressible; nothing is compressed anyway). Interleaved repeats
(``--repeat``), medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STREAMS: list[tuple[str, tuple[int, ...], str, list[str], float]] = [
    ("us0", (3, 128, 2048), "<i2", ["angle", "element", "sample"], 20.0),
    ("xr0", (768, 972), "<u2", ["y", "x"], 10.0),
    ("ct0", (384, 486), "<u2", ["y", "x"], 20.0),
]
"""(stream, frame shape, dtype, axes, frames per second) of the default rig's large raw streams."""


def _frames(seconds: int) -> list[list[tuple[str, dict[str, Any], np.ndarray]]]:
    """Per simulated second, the ``(topic, header, array)`` messages of every stream, in time order."""
    rng = np.random.default_rng(1)
    pool = {s: rng.integers(0, 4096, size=(4, *shape)).astype(dt) for s, shape, dt, _, _ in STREAMS}
    out = []
    seq = {s: 0 for s, *_ in STREAMS}
    for sec in range(seconds):
        msgs = []
        for s, shape, dt, axes, fps in STREAMS:
            for i in range(int(fps)):
                t = sec + i / fps
                n = seq[s]
                seq[s] += 1
                h = {"v": 1, "kind": "frame", "stream": s, "series": "11111111-1111-4111-8111-111111111111",
                     "seq": n, "t_host_ns": int(t * 1e9), "t_mono_ns": int(t * 1e9), "dtype": dt,
                     "shape": list(shape), "axes": axes, "units": "counts", "meta": {"seq": n}}
                msgs.append((t, f"raw/{s}", h, pool[s][n % 4]))
        msgs.sort(key=lambda m: m[0])
        out.append([(topic, h, a) for _, topic, h, a in msgs])
    return out


def _medacq(path: Path, data: list[list[tuple[str, dict[str, Any], np.ndarray]]]) -> tuple[float, float, int]:
    from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter

    c0, t0 = time.process_time(), time.perf_counter()
    w = Hdf5RecordingWriter(path, durable=False)
    nbytes = 0
    for second in data:
        for topic, h, a in second:
            w.message(topic, h, a)
            nbytes += a.nbytes
        w.checkpoint()
    w.close()
    return time.process_time() - c0, time.perf_counter() - t0, nbytes


def _plain_h5py(path: Path, data: list[list[tuple[str, dict[str, Any], np.ndarray]]]) -> tuple[float, float, int]:
    import h5py

    c0, t0 = time.process_time(), time.perf_counter()
    nbytes = 0
    with h5py.File(path, "w") as f:
        ds: dict[str, Any] = {}
        for second in data:
            for topic, _h, a in second:
                d = ds.get(topic)
                if d is None:
                    d = ds[topic] = f.create_dataset(topic, shape=(0, *a.shape), maxshape=(None, *a.shape),
                                                     chunks=(1, *a.shape), dtype=a.dtype)
                n = d.shape[0]
                d.resize(n + 1, axis=0)
                d[n] = a
                nbytes += a.nbytes
            f.flush()
    return time.process_time() - c0, time.perf_counter() - t0, nbytes


def bench_recorder(args: argparse.Namespace) -> dict[str, Any]:
    seconds = max(1, int(round(getattr(args, "duration", 2.0) * 5)))  # --duration 2 (default): 10 s of data
    repeat = max(1, int(getattr(args, "repeat", 3)))
    data = _frames(seconds)
    rows: dict[str, list[tuple[float, float, int]]] = {"medacq": [], "h5py": []}
    with tempfile.TemporaryDirectory(prefix="medacq-bench-recorder-") as tmp:
        for r in range(repeat):
            for name, fn in (("medacq", _medacq), ("h5py", _plain_h5py)) if r % 2 == 0 else (
                    ("h5py", _plain_h5py), ("medacq", _medacq)):
                p = Path(tmp) / f"{name}{r}.h5"
                rows[name].append(fn(p, data))
                os.unlink(p)

    def fig(name: str) -> dict[str, float]:
        cpu = statistics.median(c for c, _, _ in rows[name])
        wall = statistics.median(w for _, w, _ in rows[name])
        nbytes = rows[name][0][2]
        return {"cpu_pct_of_core": round(cpu / seconds * 100, 2), "cpu_s": round(cpu, 3),
                "write_mb_s": round(nbytes / wall / 1e6, 1)}

    m, b = fig("medacq"), fig("h5py")
    return {"benchmark": "recorder", "data_seconds": seconds, "repeat": repeat,
            "data_mb_per_s": round(rows["medacq"][0][2] / seconds / 1e6, 1),
            "streams": [f"{s} {'x'.join(map(str, shape))} {dt} @ {fps:g} fps" for s, shape, dt, _, fps in STREAMS],
            "medacq": m, "plain_h5py": b,
            "cpu_ratio_medacq_vs_h5py": round(m["cpu_s"] / max(b["cpu_s"], 1e-9), 2)}
