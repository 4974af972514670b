"""``medacq bench ultrasound``: B-mode frame rates and raw RF ingest, in one run.

* ``fps_1_angle``, ``fps_11_angles``: 128 elements × 2048 samples → 256×256 B-mode with
  the default backend (sparse operator, batches of 8 frames through one product);
  ``*_single`` keys give the one-frame-at-a-time rate (latency-bound path).
* ``fps_75_angles``: on CPU the 75-angle operator (≈2.9 GB) is not built; the figure is
  the numpy DAS path (slow, one frame) unless a GPU backend is active.
* ``baseline_fps_1_angle``: the straightforward numpy DAS (:func:`das_numpy`), same inputs.
* ``rf_ingest_MBps``, ``rf_gaps``: the array simulator (11 angles × 128 × 2048 int16,
  5.8 MB frames, unpaced, in another process) → OpenIGTLink/TCP → driver → daemon →
  ZeroMQ subscriber; MB/s of RF received by the subscriber and the frames it saw lost.
* ``pymust_fps_1_angle``: PyMUST's ``dasmtx`` on the same 1-angle geometry, for the record, where
  PyMUST installs (``pip install pymust``); otherwise ``pymust`` says why it was not run.

``--under-load``: all of it twice in one invocation, idle and then beside the whole default rig
(what ``bench rig`` runs, not measured); one row per figure with both values and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from typing import Any

import numpy as np

from medacq.daemon.bench.runner import free_port

__all__ = ["bench_ultrasound"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fps(fn: Any, frames_per_call: int, duration: float, min_calls: int = 2) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < duration:
        fn()
        n += 1
    return n * frames_per_call / (time.perf_counter() - t0)


def _serve(port: int, ready: Any, stop: Any) -> None:
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.registry import make_simulator

    iface = make_simulator("us", angles=11, samples=2048, prf_hz=5000.0, speckle_density_per_mm2=2.0)
    iface.model.base_frame()
    with SimulatorServer(iface, "tcp", port=port, paced=False):
        ready.set()
        stop.wait(120)


def _ingest(duration: float) -> dict[str, Any]:
    from medacq.daemon.client.api import Subscriber
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.acquisition.service import AcquisitionDaemon

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    port = free_port()
    proc = ctx.Process(target=_serve, args=(port, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("simulator did not start")
        p0 = free_port()
        eps = {"daemon": {"data_endpoint": f"tcp://127.0.0.1:{p0}", "control_endpoint": f"tcp://127.0.0.1:{free_port()}"},
               "recon": {"data_endpoint": f"tcp://127.0.0.1:{free_port()}", "control_endpoint": f"tcp://127.0.0.1:{free_port()}"}}
        cfg = parse_config({**eps, "device": [{"name": "us0", "kind": "ultrasound", "address": f"tcp://127.0.0.1:{port}",
                                               "settings": {"angles": 11, "samples": 2048, "prf_hz": 5000.0}}]})
        with Subscriber(cfg.daemon.data_endpoint, "raw/us0") as sub:
            d = AcquisitionDaemon(cfg).start()
            try:
                nbytes = frames = 0
                t_first = t_last = None
                end = time.monotonic() + duration + 30
                while time.monotonic() < end:
                    m = sub.recv(timeout=0.5)
                    if m is None or m.kind != "frame" or m.array is None:
                        continue
                    now = time.monotonic()
                    if t_first is None:
                        t_first, end = now, now + duration
                        continue
                    nbytes += m.array.nbytes
                    frames += 1
                    t_last = now
                status = d.status() if hasattr(d, "status") else {}
            finally:
                d.shutdown()
        gaps = sum(g.count for g in sub.gaps)
        dt = (t_last - t_first) if (t_first and t_last) else float("nan")
        return {"rf_ingest_MBps": nbytes / dt / 1e6 if frames else 0.0, "rf_frames": frames,
                "rf_gaps": gaps, "rf_frame_bytes": 11 * 128 * 2048 * 2}
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


def bench_ultrasound(args: argparse.Namespace) -> dict[str, Any]:
    """B-mode rates and RF ingest (module doc); ``--under-load``: idle, then beside the whole default
    rig (:func:`~medacq.daemon.bench.rig.idle_and_under_load`)."""
    from medacq.daemon.bench.rig import idle_and_under_load

    return idle_and_under_load("ultrasound", _ultrasound, args)


def _ultrasound(args: argparse.Namespace) -> dict[str, Any]:
    from medacq.daemon.recon.algorithms.beamform import PlaneWaveBeamformer, das_numpy
    from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition

    dur = float(getattr(args, "duration", 2.0))
    rng = np.random.default_rng(0)
    grid = PixelGrid()
    res: dict[str, Any] = {"grid": [grid.nz, grid.nx], "elements": 128, "samples": 2048, "batch": 8}
    for n, key in ((1, "1_angle"), (11, "11_angles")):
        acq = PlaneWaveAcquisition.with_angles(n)
        rf = rng.integers(-2000, 2000, acq.rf_shape, dtype=np.int16)
        _log(f"building the {n}-angle operator ...")
        bf = PlaneWaveBeamformer(acq, grid)
        res["backend"] = f"{bf.backend}+{bf.demod_backend}-demod" if bf.backend == "sparse" else bf.backend
        res[f"build_s_{key}"] = round(bf.build_seconds, 2)
        res[f"operator_MB_{key}"] = round(bf.operator_bytes / 1e6, 1)
        res[f"fps_{key}_single"] = round(_fps(lambda: bf(rf), 1, dur), 1)
        batch = np.stack([rf] * 8)
        res[f"fps_{key}"] = round(_fps(lambda: bf(batch), 8, dur), 1)
        _log(f"{n} angles: {res[f'fps_{key}']} fps batched, {res[f'fps_{key}_single']} single")
        if n == 1:
            res["baseline_fps_1_angle"] = round(_fps(lambda: das_numpy(rf, acq, grid), 1, dur, 1), 2)
            res["speedup_1_angle"] = round(res["fps_1_angle"] / res["baseline_fps_1_angle"], 1)
        bf.close()
        del bf
    acq75 = PlaneWaveAcquisition.with_angles(75)
    rf75 = rng.integers(-2000, 2000, acq75.rf_shape, dtype=np.int16)
    bf75 = PlaneWaveBeamformer(acq75, grid, max_operator_bytes=1 << 30)
    _log(f"75 angles on backend {bf75.backend} ...")
    res["fps_75_angles"] = round(_fps(lambda: bf75(rf75), 1, 0.0, 1), 3)
    res["backend_75_angles"] = bf75.backend
    _log("RF ingest ...")
    res.update(_ingest(max(dur, 3.0)))
    res.update(_pymust(grid, rf_shape=(2048, 128), dur=dur))
    return res


def _pymust(grid: Any, rf_shape: tuple[int, int], dur: float) -> dict[str, Any]:
    """For the record: PyMUST's ``dasmtx`` (a sparse DAS matrix, like ours) on the same 1-angle
    geometry and grid, where PyMUST installs. Its matrix acts on RF laid out (samples, elements)."""
    try:
        import pymust
    except Exception as exc:  # noqa: BLE001 - optional
        return {"pymust": f"not run: {type(exc).__name__}: {exc}"}
    try:
        param = pymust.getparam("L11-5v")
        param.fc, param.fs, param.pitch, param.c, param.Nelements = 5.208e6, 20.832e6, 0.3e-3, 1540.0, 128
        param.fnumber = 1.5
        delays = pymust.txdelay(param, 0.0)
        x, z = np.meshgrid(grid.x, grid.z)
        t0 = time.perf_counter()
        m = pymust.dasmtx(np.array(rf_shape), x, z, delays, param).tocsr()
        build = time.perf_counter() - t0
        rf = np.random.default_rng(1).standard_normal(rf_shape).astype(np.float32)
        col = rf.flatten(order="F")
        fps = _fps(lambda: m @ col, 1, dur)
        return {"pymust_dasmtx_build_s": round(build, 2), "pymust_fps_1_angle": round(fps, 1),
                "pymust_operator_MB": round((m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) / 1e6, 1)}
    except Exception as exc:  # noqa: BLE001 - record why, never fail the benchmark
        return {"pymust": f"failed: {type(exc).__name__}: {exc}"}
