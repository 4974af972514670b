"""Do the reconstructors serialise on the GIL? Part of ``medacq bench rig`` (its ``gil`` figures).

Every reconstructor of the stage runs in one process, one thread per stream. Whether that costs
throughput depends on the kernels: code that holds the GIL (Python, most small numpy calls)
runs one thread at a time; a kernel that releases it (scipy's sparse products, numba
``nogil`` kernels, BLAS) runs beside the others. Measured, not assumed, on frames captured
from the rig:

* ``heavy``: the reconstructor with the longest single-frame time (the lowest capacity; on the
  default rig the ultrasound B-mode beamformer), ``process()`` on its frames, frames/s;
* ``rest``: every other reconstructor, one ``process()`` on each per round, rounds/s;
* ``python``: a pure-Python loop (holds the GIL throughout), loops/s.

Per pairing (``heavy`` beside ``rest``, ``heavy`` beside ``python``), each side alone, then both
as two *threads* of this process (one GIL) and as two *processes* (one GIL each: what the CPUs
allow), ``repeat`` times interleaved (a shared machine's load drifts; figures are medians). The
figure is the sum of each side's share of its alone rate (alone measured in the same round):
1 = fully serialised, 2 = both at full speed (only with two free cores).
``threads_vs_processes`` = threads / processes: near 1, the GIL costs nothing beyond what the
cores cost; well below 1, threads serialise and a worker process would pay.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import time
from typing import Any

import numpy as np

__all__ = ["ReconFeeder", "gil_check"]

Spec = tuple[dict[str, Any], list[tuple[dict[str, Any], np.ndarray]], dict[str, Any]]
"""A reconstructor to drive: (source descriptor, captured (header, frame) pairs, ``[recon.settings]``)."""


class ReconFeeder:
    """The stage's reconstructor class for a stream, built from its descriptor with the rig's
    settings (ultrasound: OpenIGTLink off), ready (operator built, 3 warm-up frames), fed the
    captured frames cyclically (``seq`` renumbered, CT ``projection`` kept consecutive)."""

    def __init__(self, desc: dict[str, Any], frames: list[tuple[dict[str, Any], np.ndarray]],
                 settings: dict[str, Any], warmup: int = 3) -> None:
        from medacq.daemon.recon.registry import reconstructor_class
        from medacq.protocols.stream import StreamDescriptor

        if not frames:
            raise ValueError(f"{desc.get('stream')}: no frames captured")
        d = StreamDescriptor.model_validate(desc)
        cls = reconstructor_class(d.modality)
        if cls is None:
            raise ValueError(f"{d.stream}: no reconstructor for modality {d.modality!r}")
        table = dict(settings.get(d.modality) or {})
        if d.modality == "us":
            table["igtl_port"] = 0  # no server for a measurement (the port may be the stage's, or in use)
        self.stream = d.stream
        self.frames = frames
        self.n_proj = int((d.geometry or {}).get("n_proj") or 0)
        self.recon = cls(d, table)
        self.i = 0
        try:
            wait_ready = getattr(self.recon, "wait_ready", None)
            if callable(wait_ready):
                wait_ready(300.0)
            deadline = time.monotonic() + 300.0  # an operator or forward solve built in the background
            while getattr(self.recon, "warming", False):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{d.stream}: the reconstructor is still warming up after 300 s")
                time.sleep(0.05)
            for _ in range(warmup):  # JIT compilation, caches, first allocations
                self.feed()
        except BaseException:
            self.close()
            raise

    def feed(self) -> None:
        """``process()`` the next captured frame."""
        h, a = self.frames[self.i % len(self.frames)]
        hh = {**h, "seq": self.i}
        meta = h.get("meta") or {}
        if self.n_proj and "projection" in meta:
            hh["meta"] = {**meta, "projection": self.i % self.n_proj}
        self.recon.process(hh, a)
        self.i += 1

    def close(self) -> None:
        self.recon.close()


def _python_loop() -> None:
    n = 0
    for i in range(20_000):
        n += i


def _rate(step: Any, seconds: float) -> float:
    """Calls of ``step`` per second over ``seconds`` (at least 2 calls)."""
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def _steps(specs: dict[str, list[Spec]]) -> tuple[dict[str, Any], list[ReconFeeder]]:
    feeders: list[ReconFeeder] = []
    steps: dict[str, Any] = {"python": _python_loop}
    for name, group in specs.items():
        built = [ReconFeeder(*spec) for spec in group]
        feeders += built
        if len(built) == 1:
            steps[name] = built[0].feed
        else:
            def round_(built: list[ReconFeeder] = built) -> None:
                for f in built:
                    f.feed()
            steps[name] = round_
    return steps, feeders


def _child(conn: Any, specs: dict[str, list[Spec]]) -> None:
    """Worker process: build ``specs``, then run what the parent asks, from the time it names."""
    steps, feeders = _steps(specs)
    conn.send("ready")
    try:
        while True:
            cmd = conn.recv()
            if cmd is None:
                break
            name, start_at, seconds = cmd
            time.sleep(max(0.0, start_at - time.monotonic()))  # CLOCK_MONOTONIC is one clock for all processes
            conn.send(_rate(steps[name], seconds))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for f in feeders:
            f.close()


def _pair_in_threads(a: Any, b: Any, seconds: float) -> tuple[float, float]:
    out: dict[int, float] = {}
    barrier = threading.Barrier(2)

    def run(k: int, step: Any) -> None:
        barrier.wait()
        out[k] = _rate(step, seconds)

    ts = [threading.Thread(target=run, args=(0, a)), threading.Thread(target=run, args=(1, b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out[0], out[1]


def gil_check(heavy: Spec, rest: list[Spec], seconds: float = 1.0, repeat: int = 3,
              timeout_s: float = 300.0) -> dict[str, Any]:
    """The module's measurement; ``heavy`` and ``rest`` as :data:`Spec`, ``seconds`` per run.
    Returns per pairing (``beside_rest``, ``beside_python``) the median rates ``alone``,
    ``threads``, ``processes`` (``heavy_fps``, ``rest_rounds_per_s``, ``python_loops_per_s``), the
    median sums and their ratio (module doc)."""
    specs = {"heavy": [heavy], "rest": rest}
    steps, feeders = _steps(specs)
    ctx = mp.get_context("spawn")
    conns, procs = [], []
    try:
        for part in ({"heavy": [heavy]}, {"rest": rest}):  # each side builds its own reconstructors
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_child, args=(theirs, part), name="gil-check", daemon=True)
            p.start()
            theirs.close()
            conns.append(mine)
            procs.append(p)
        for c in conns:
            if not c.poll(timeout_s) or c.recv() != "ready":
                raise RuntimeError("a gil-check worker process did not start")
        rounds: dict[str, list[dict[str, float]]] = {"rest": [], "python": []}
        for _ in range(max(1, repeat)):
            for other in ("rest", "python"):
                a_h, a_o = _rate(steps["heavy"], seconds), _rate(steps[other], seconds)
                t_h, t_o = _pair_in_threads(steps["heavy"], steps[other], seconds)
                start = time.monotonic() + 0.2
                conns[0].send(("heavy", start, seconds))
                conns[1].send((other, start, seconds))
                p_h, p_o = conns[0].recv(), conns[1].recv()
                th, pr = t_h / a_h + t_o / a_o, p_h / a_h + p_o / a_o
                rounds[other].append({"a_h": a_h, "a_o": a_o, "t_h": t_h, "t_o": t_o, "p_h": p_h, "p_o": p_o,
                                      "th": th, "pr": pr, "ratio": th / pr if pr > 0 else math.nan})
        res: dict[str, Any] = {}
        for other, rs in rounds.items():
            med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
            res[f"beside_{other}"] = {
                "alone": _named({"heavy": med["a_h"], other: med["a_o"]}),
                "threads": _named({"heavy": med["t_h"], other: med["t_o"]}),
                "processes": _named({"heavy": med["p_h"], other: med["p_o"]}),
                "threads_sum": round(med["th"], 2), "processes_sum": round(med["pr"], 2),
                "threads_vs_processes": round(med["ratio"], 2) if math.isfinite(med["ratio"]) else None}
        res["repeat"] = max(1, repeat)
        res["heavy"] = feeders[0].stream
        res["rest"] = [f.stream for f in feeders[1:]]
        res["seconds"] = seconds
        res["loadavg_1min"] = round(os.getloadavg()[0], 2)
        return res
    finally:
        for c in conns:
            try:
                c.send(None)
            except (OSError, ValueError):
                pass
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for f in feeders:
            f.close()


def _named(rates: dict[str, float]) -> dict[str, float]:
    keys = {"heavy": "heavy_fps", "rest": "rest_rounds_per_s", "python": "python_loops_per_s"}
    return {keys[k]: round(v, 1) for k, v in rates.items()}
