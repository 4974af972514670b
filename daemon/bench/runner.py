"""``medacq bench WHAT``: performance figures, each against a baseline measured in the same run.

Benchmarks are not tests: they print measurements (``--json`` for one JSON object) and
never assert. Each family registers its benchmark in :data:`BENCHES`.

``transport`` (this module): publish → subscribe across two processes over TCP loopback,
through medacq (driver queue → :class:`~medacq.daemon.acquisition.publisher.Publisher` →
:class:`~medacq.client.Subscriber`) and through raw pyzmq multipart sends of the same
bytes, for 1 KiB, 64 KiB, 1 MiB and 8 MiB frames. Both paths run under the same credit
window (the receiver acknowledges what it has, the sender keeps at most a window of
frames in flight), so each moves as fast as it can *without* the PUB socket dropping:
the figure is sustainable throughput with zero gaps, and the latency is measured under
that load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import sys
import threading
import time
from typing import Any

import numpy as np

__all__ = ["BENCHES", "add_bench_arguments", "run_bench", "bench_transport"]

#: name -> "module:function(args) -> dict"; the function prints nothing itself.
BENCHES: dict[str, str] = {
    "transport": "medacq.daemon.bench.runner:bench_transport",
    "soak": "medacq.daemon.bench.soak:bench_soak",
    "biosignal": "medacq.daemon.bench.biosignal:bench_biosignal",
    "detector": "medacq.daemon.bench.xray:bench_detector",
    "ultrasound": "medacq.daemon.bench.ultrasound:bench_ultrasound",
    "view": "medacq.daemon.bench.view:bench_view",
    "eit": "medacq.daemon.bench.eit:bench_eit",
}

SIZES = {"1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1 << 20, "8MiB": 8 << 20}


def add_bench_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("what", choices=sorted(BENCHES), help="which benchmark")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--duration", type=float, default=2.0, help="seconds per measured case (default %(default)s)")
    sp.add_argument("--sizes", default=",".join(SIZES), help="transport: comma-separated frame sizes")
    sp.add_argument("--repeat", type=int, default=3, help="transport, biosignal capacity: interleaved repeats (median)")
    sp.add_argument("--minutes", type=float, default=10.0, help="soak: duration in minutes")
    sp.add_argument("--e2e-s", type=float, default=20.0, help="detector: end-to-end seconds (default %(default)s)")
    sp.add_argument("--frames", type=int, default=40, help="detector: full frames per read measurement")


def run_bench(args: argparse.Namespace) -> int:
    module, _, fn = BENCHES[args.what].partition(":")
    result = getattr(importlib.import_module(module), fn)(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict[str, Any]) -> None:
    rows = result.get("results")
    for k, v in result.items():
        if k != "results":
            print(f"{k}: {v}")
    if rows:
        keys = list(rows[0])
        print("  ".join(f"{k:>12s}" for k in keys))
        for r in rows:
            print("  ".join(f"{_fmt(r[k]):>12s}" for k in keys))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# -- transport -------------------------------------------------------------------------------
def _window(size: int) -> int:
    return int(max(4, min(512, (64 << 20) // size)))


def _sender(mode: str, endpoint: str, ack_endpoint: str, size: int, duration: float, ready: Any) -> None:
    import zmq

    from medacq.daemon.acquisition.queue import Frame

    ctx = zmq.Context()
    window = _window(size)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, window * 4)
    pub.bind(endpoint)
    acks = ctx.socket(zmq.PULL)
    acks.bind(ack_endpoint)
    payload = np.frombuffer(np.random.default_rng(0).bytes(size), dtype=np.uint8)
    ready.set()
    # wait for the subscriber's hello (slow-joiner)
    acks.recv()
    acked = 0

    def credit(sent: int) -> int:
        nonlocal acked
        while sent - acked >= window:
            if acks.poll(1000):
                acked = int(acks.recv())
            else:
                break
        while acks.poll(0):
            acked = int(acks.recv())
        return acked

    end = time.monotonic() + duration
    sent = 0
    if mode == "raw":
        topic = b"raw/bench"
        while time.monotonic() < end:
            credit(sent)
            pub.send_multipart((topic, b"%d" % time.monotonic_ns(), payload), copy=False)
            sent += 1
        pub.send_multipart((b"raw/END", b"%d" % sent))
    else:
        from medacq.daemon.acquisition.queue import FrameItem, FrameQueue, SeriesEnd, SeriesStart
        from medacq.daemon.acquisition.worker import StreamStats
        from medacq.daemon.acquisition.publisher import Publisher
        from medacq.protocols.stream import StreamDescriptor, new_series_id

        wake = threading.Event()
        q = FrameQueue(window + 16, wake)
        stats = StreamStats()
        publisher = Publisher(pub, wake, heartbeat_s=1.0, descriptor_interval_s=3.0)
        publisher.add_stream("bench", q, stats)
        publisher.start()
        desc = StreamDescriptor(stream="bench", modality="bench", dtype="|u1", shape=[size], axes=["byte"])
        q.put_control(SeriesStart(new_series_id(), desc))
        while time.monotonic() < end:
            credit(sent)
            t_mono = time.monotonic_ns()
            q.put_frame(FrameItem(sent, Frame(payload, time.time_ns(), t_mono)))
            sent += 1
        q.put_control(SeriesEnd("bench done"))
        deadline = time.monotonic() + 10
        while len(q) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        publisher.stop()
        publisher.join(2)
    time.sleep(0.2)
    pub.close(linger=1000)
    acks.close(0)
    ctx.term()


def _receive(mode: str, endpoint: str, ack_endpoint: str, size: int, duration: float) -> dict[str, Any]:
    import zmq

    from medacq.client import Subscriber

    ctx = zmq.Context()
    window = _window(size)
    ack = ctx.socket(zmq.PUSH)
    ack.connect(ack_endpoint)
    lat: list[int] = []
    n = 0
    nbytes = 0
    t_first = t_last = 0.0
    gaps = 0
    timeout_ms = int((duration + 15) * 1000)
    if mode == "raw":
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, window * 4)
        sub.setsockopt(zmq.SUBSCRIBE, b"raw/")
        sub.connect(endpoint)
        time.sleep(0.3)
        ack.send(b"hello")
        expected_total = None
        while True:
            if not sub.poll(timeout_ms):
                break
            parts = sub.recv_multipart(copy=False)
            now = time.monotonic_ns()
            if parts[0].bytes == b"raw/END":
                expected_total = int(parts[1].bytes)
                break
            lat.append(now - int(parts[1].bytes))
            nbytes += len(parts[2])
            if n == 0:
                t_first = now / 1e9
            t_last = now / 1e9
            n += 1
            if n % max(1, window // 4) == 0:
                ack.send(b"%d" % n)
        gaps = (expected_total - n) if expected_total is not None else -1
        sub.close(0)
    else:
        sub = Subscriber(endpoint, "raw/", rcvhwm=window * 4, context=ctx)
        time.sleep(0.3)
        ack.send(b"hello")
        while True:
            msg = sub.recv(timeout=timeout_ms / 1000)
            if msg is None or msg.kind == "series_end":
                break
            if msg.array is None:
                continue
            now = time.monotonic_ns()
            lat.append(now - msg.header["t_mono_ns"])
            nbytes += msg.array.nbytes
            if n == 0:
                t_first = now / 1e9
            t_last = now / 1e9
            n += 1
            if n % max(1, window // 4) == 0:
                ack.send(b"%d" % n)
        gaps = sum(g.count for g in sub.gaps)
        sub.close()
    ack.close(0)
    ctx.term()
    span = max(t_last - t_first, 1e-9)
    la = np.array(lat[len(lat) // 10:] or [0], dtype=np.float64) / 1000.0  # skip warm-up
    return {
        "frames": n,
        "fps": (n - 1) / span if n > 1 else 0.0,
        "GBps": nbytes / span / 1e9 if n > 1 else 0.0,
        "p50_us": float(np.percentile(la, 50)),
        "p99_us": float(np.percentile(la, 99)),
        "gaps": int(gaps),
    }


def _run_case(mode: str, size: int, duration: float, port: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    endpoint, ack_endpoint = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
    p = ctx.Process(target=_sender, args=(mode, endpoint, ack_endpoint, size, duration, ready), daemon=True)
    p.start()
    if not ready.wait(30):
        p.kill()
        raise RuntimeError("benchmark sender did not start")
    try:
        return _receive(mode, endpoint, ack_endpoint, size, duration)
    finally:
        p.join(15)
        if p.is_alive():
            p.kill()


def bench_transport(args: argparse.Namespace) -> dict[str, Any]:
    """Transport benchmark; returns ``{"results": [...]}`` as documented in the README."""
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    results = []
    repeat = max(1, int(getattr(args, "repeat", 3) or 1))
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if name not in SIZES:
            raise SystemExit(f"unknown size {name!r}; choose from {', '.join(SIZES)}")
        size = SIZES[name]
        # interleaved repeats (raw, medacq, raw, medacq, ...): the machine's noise hits both alike;
        # each path's figure is the median over its repeats
        runs: dict[str, list[dict[str, Any]]] = {"raw": [], "medacq": []}
        for _ in range(repeat):
            for mode in ("raw", "medacq"):
                runs[mode].append(_run_case(mode, size, args.duration, free_port()))

        def med(mode: str, key: str) -> float:
            return float(np.median([r[key] for r in runs[mode]]))

        raw_fps, med_fps = med("raw", "fps"), med("medacq", "fps")
        results.append({
            "name": name,
            "frame_bytes": size,
            "medacq_fps": round(med_fps, 1),
            "raw_fps": round(raw_fps, 1),
            "ratio": round(med_fps / raw_fps, 3) if raw_fps else None,
            "medacq_GBps": round(med("medacq", "GBps"), 3),
            "raw_GBps": round(med("raw", "GBps"), 3),
            "p50_us": round(med("medacq", "p50_us"), 1),
            "p99_us": round(med("medacq", "p99_us"), 1),
            "raw_p50_us": round(med("raw", "p50_us"), 1),
            "raw_p99_us": round(med("raw", "p99_us"), 1),
            "gaps": int(sum(r["gaps"] for r in runs["medacq"])),
            "raw_gaps": int(sum(r["gaps"] for r in runs["raw"])),
            "repeats": repeat,
        })
        print(f"  {name}: medacq {med_fps:.0f} fps vs raw {raw_fps:.0f} fps", file=sys.stderr, flush=True)
    return {"benchmark": "transport", "transport": "tcp loopback, 2 processes", "duration_s": args.duration,
            "results": results}
