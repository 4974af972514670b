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

Shared by the benchmarks that run a rig: :func:`free_ports`, :func:`spawn_cli` /
:func:`stop_processes` (``medacq`` child processes that never outlive the benchmark),
:func:`terminate_as_interrupt` (SIGTERM/SIGHUP clean up like Ctrl-C), :class:`StreamLedger`
(per-stream frame accounting: generated, delivered, announced lost), :func:`rss_mb` /
:func:`half_growth` (a process's memory over a run), and the end of a recorded run:
:func:`end_series_and_drain`, :func:`stop_recorder`, :func:`recorder_summary`,
:func:`recorder_checkpoint`, :func:`recorded_vs_delivered`, :func:`recorded_seqs`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medacq.daemon.common.procs import spawn_module, stop_processes

__all__ = ["BENCHES", "UNDER_LOAD", "add_bench_arguments", "run_bench", "bench_transport", "free_ports", "spawn_cli",
           "service_status", "spawn_services", "stop_processes", "terminate_as_interrupt", "StreamLedger", "end_series_and_drain", "stop_recorder",
           "recorded_vs_delivered", "recorder_summary", "recorder_checkpoint", "recorded_seqs", "rss_mb",
           "half_growth"]

#: name -> "module:function(args) -> dict"; the function prints nothing itself.
BENCHES: dict[str, str] = {
    "transport": "medacq.daemon.bench.runner:bench_transport",
    "mri": "medacq.daemon.bench.mri:bench_mri",
    "soak": "medacq.daemon.bench.soak:bench_soak",
    "biosignal": "medacq.daemon.bench.biosignal:bench_biosignal",
    "detector": "medacq.daemon.bench.xray:bench_detector",
    "ultrasound": "medacq.daemon.bench.ultrasound:bench_ultrasound",
    "view": "medacq.daemon.bench.view:bench_view",
    "eit": "medacq.daemon.bench.eit:bench_eit",
    "rig": "medacq.daemon.bench.rig:bench_rig",
    "chaos": "medacq.daemon.bench.chaos:bench_chaos",
    "cameras": "medacq.daemon.bench.cameras:bench_cameras",
    "dicom": "medacq.daemon.bench.dicom:bench_dicom",
    "nuclear": "medacq.daemon.bench.nuclear:bench_nuclear",
    "elastography": "medacq.daemon.bench.elastography:bench_elastography",
    "timeline": "medacq.daemon.bench.timeline:bench_timeline",
    "recorder": "medacq.daemon.bench.recorder:bench_recorder",
}

SIZES = {"1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1 << 20, "8MiB": 8 << 20}


def add_bench_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("what", choices=sorted(BENCHES), help="which benchmark")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--duration", type=float, default=2.0, help="seconds per measured case (default %(default)s)")
    sp.add_argument("--sizes", default=",".join(SIZES), help="transport: comma-separated frame sizes")
    sp.add_argument("--repeat", type=int, default=3, help="transport, biosignal capacity: interleaved repeats (median)")
    sp.add_argument("--minutes", type=float, default=10.0, help="soak, chaos: duration in minutes")
    sp.add_argument("--seed", type=int, default=1, help="chaos: seed of the fault schedule (default %(default)s)")
    sp.add_argument("--e2e-s", type=float, default=20.0, help="detector: end-to-end seconds (default %(default)s)")
    sp.add_argument("--frames", type=int, default=40, help="detector: full frames per read measurement")
    sp.add_argument("--seconds", type=float, default=None, help="rig: measured seconds, after the warm-up "
                    "(default 60); cameras: seconds of GVSP ingest (default 10)")
    sp.add_argument("--warmup-s", type=float, default=10.0, help="rig, --under-load: seconds the rig runs before "
                    "measuring (default %(default)s)")
    sp.add_argument("--capacity-s", type=float, default=1.0, help="rig: seconds of reconstructor timing per stream "
                    "(default %(default)s)")
    sp.add_argument("--isolation", action="append", default=[], metavar="STREAM=MODE",
                    help="rig: run STREAM's reconstructor as MODE (thread, process, realtime: [recon.isolation]); "
                    "repeatable")
    sp.add_argument("--keep", action="store_true", help="rig: keep the rig's config and logs (printed on stderr; "
                    "the recording is always removed)")
    sp.add_argument("--triggers", type=int, default=1000, help="timeline: trigger events (default %(default)s)")
    sp.add_argument("--under-load", action="store_true", help="detector, ultrasound, mri, cameras: run the benchmark idle, then "
                    "again beside the whole default rig (as bench rig runs it); report both")


#: the benchmarks that take ``--under-load`` (the CLI refuses it for the others)
UNDER_LOAD = ("detector", "ultrasound", "mri", "cameras")


def run_bench(args: argparse.Namespace) -> int:
    module, _, fn = BENCHES[args.what].partition(":")
    mod = importlib.import_module(module)
    with terminate_as_interrupt():  # SIGTERM/SIGHUP: every benchmark's children are stopped as on Ctrl-C
        result = getattr(mod, fn)(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:  # a module may format its own table (``print_result``)
        getattr(mod, "print_result", _print_table)(result)
    return 0


def _print_table(result: dict[str, Any]) -> None:
    rows = result.get("results")
    for k, v in result.items():
        if k != "results":
            print(f"{k}: {v}")
    if rows:
        keys = list(rows[0])
        cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
        width = [max(12, len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        print("  ".join(f"{k:>{w}s}" for k, w in zip(keys, width)))
        for c in cells:
            print("  ".join(f"{v:>{w}s}" for v, w in zip(c, width)))


def _fmt(v: Any, limit: int = 48) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= limit else s[:limit - 1] + "…"  # the table only; --json has it all


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
    try:
        if not ready.wait(30):
            raise RuntimeError("benchmark sender did not start")
        return _receive(mode, endpoint, ack_endpoint, size, duration)
    except BaseException:  # not started, failed or interrupted (SIGTERM): the sender goes at once
        p.kill()
        raise
    finally:
        p.join(15)
        if p.is_alive():
            p.kill()


def bench_transport(args: argparse.Namespace) -> dict[str, Any]:
    """Transport benchmark; returns ``{"results": [...]}`` as documented in the README."""
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


# -- shared by the benchmarks that run a rig ---------------------------------------------------
def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for automatically chosen local ports (Linux; a common default elsewhere)."""
    try:
        lo, hi = (int(v) for v in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback TCP ports that were free a moment ago (all held open while choosing).

    Chosen at random BELOW the kernel's ephemeral range where there is room: a port the kernel
    handed out for ``bind(0)`` is also the kind it hands out as the local end of every outgoing
    connection, so between choosing it and binding it for real another process's connect could
    take it (a CI run lost a test that way). Ports outside that range are only ever taken by an
    explicit bind.
    """
    lo, _ = _ephemeral_range()
    first = 10000
    socks: list[socket.socket] = []
    try:
        if lo - first >= 4 * n + 100:
            rng = random.Random(os.getpid() ^ time.monotonic_ns())
            tries = 0
            while len(socks) < n and tries < 200 * n:
                tries += 1
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", rng.randrange(first, lo)))
                except OSError:
                    s.close()
                    continue
                socks.append(s)
        while len(socks) < n:  # no room below the range (or unlucky): let the kernel choose
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One loopback TCP port that was free a moment ago (:func:`free_ports`)."""
    return free_ports(1)[0]


def service_status(endpoint: str, timeout: float = 1.0) -> dict[str, Any]:
    """A daemon's or stage's ``status`` over its control endpoint (``{}`` when it does not answer)."""
    from medacq.daemon.client.api import ControlClient

    try:
        with ControlClient(endpoint, timeout=timeout) as c:
            return dict(c.request("status"))
    except Exception:  # noqa: BLE001 - not up yet, or busy: the caller asks again
        return {}


def spawn_services(doc: dict[str, Any], workdir: Path) -> list[subprocess.Popen]:
    """Write the config ``doc`` to ``workdir/rig.toml`` and start ``medacq recon`` and ``medacq run``
    on it as benchmark children (:func:`spawn_cli`; logs ``recon.log``, ``daemon.log`` beside it)."""
    from medacq.daemon.common.config import dump_config

    cfg = workdir / "rig.toml"
    cfg.write_text(dump_config(doc))
    return [spawn_cli(["recon", "--config", str(cfg)], workdir / "recon.log"),
            spawn_cli(["run", "--config", str(cfg)], workdir / "daemon.log")]


def spawn_cli(argv: list[str], log_path: Path, env: dict[str, str] | None = None, nice: int = 0) -> subprocess.Popen:
    """``python -m medacq.daemon.cli ARGV`` as a benchmark's child
    (:func:`~medacq.daemon.common.procs.spawn_module`): stdout and stderr to ``log_path``, its own
    process group (:func:`stop_processes` signals the group), SIGTERM if the benchmark dies; spawn
    from the main thread."""
    return spawn_module("medacq.daemon.cli", argv, log_path, env, nice)


#: how long (s) a benchmark may take to clean up once SIGTERM/SIGHUP arrived before it is ended
#: anyway, every thread's stack on stderr (:func:`~medacq.daemon.common.procs.exit_within`): a
#: rig's orderly stop takes ~15 s at most (daemon, stage and view bounded at 12 s each, in parallel)
CLEANUP_BOUND_S = 40.0


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`KeyboardInterrupt` in the main thread (once), so
    a benchmark's ``finally`` blocks stop its children as on Ctrl-C. Elsewhere than the main thread:
    nothing.

    Python runs a signal handler between any two bytecodes of the main thread, also inside a
    ``__del__``, a weakref callback or a ``gc`` callback, where an exception is *swallowed*
    (``sys.unraisablehook``): the benchmark would go on as if nothing had happened. Such a swallowed
    interrupt is raised again, from a thread, 5 ms later (:func:`_thread.interrupt_main`). Once a
    signal has fired, the process also ends within :data:`CLEANUP_BOUND_S` whatever its cleanup
    does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import _thread

    from medacq.daemon.common.procs import exit_within

    fired: list[int] = []  # the signal, once one arrived
    redeliver: list[bool] = []  # its interrupt was swallowed: raise it again

    def handler(signum: int, _frame: Any) -> None:
        if not fired or redeliver:  # later signals must not interrupt the cleanup
            if not fired:
                fired.append(signum)
                exit_within(CLEANUP_BOUND_S)
            redeliver.clear()
            raise KeyboardInterrupt

    def unraisable(u: Any) -> None:
        previous_hook(u)
        if (fired and u.exc_type is KeyboardInterrupt and not redeliver
                and threading.current_thread() is threading.main_thread()):
            redeliver.append(True)  # raised again once the finaliser has returned (not in it: swallowed again)
            threading.Thread(target=lambda: (time.sleep(0.005), _thread.interrupt_main(fired[0])),
                             name="reinterrupt", daemon=True).start()

    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook


class StreamLedger:
    """Per-topic frame accounting of one subscriber (``bench soak``, ``bench rig``).

    Feed it every message header of the topics it accounts for (:meth:`see`). ``generated``
    = frames numbered in each series from where this subscriber joined (the last ``seq`` + 1
    seen in a frame, heartbeat, ``gap`` or ``series_end``); ``delivered`` = frames received;
    ``announced`` = frames inside ``gap`` messages. generated − delivered − announced are
    holes no one announced.

    ``count_from_zero``: for a subscriber connected before the devices started (every series
    begins after it joined), every series counts from seq 0: a series first seen mid-way (its
    ``series_start`` and first frames lost, at a high-water mark say) is a loss, not a late join.
    """

    def __init__(self, count_from_zero: bool = False) -> None:
        self.count_from_zero = count_from_zero
        self.series_max: dict[tuple[str, str], int] = {}  # (topic, series) -> frames numbered
        self.series_from: dict[tuple[str, str], int] = {}  # first seq this subscriber could see
        self.delivered: dict[str, int] = {}
        self.announced: dict[str, int] = {}

    def see(self, topic: str, h: dict[str, Any]) -> None:
        key = (topic, h["series"])
        kind = h["kind"]
        if key not in self.series_from:  # joined at series start, or mid-series (not a loss unless count_from_zero)
            self.series_from[key] = 0 if kind == "series_start" or self.count_from_zero else h["seq"]
        n = h["seq"] + 1 if kind == "frame" else h["seq"]
        if kind == "gap":
            n = h["seq"] + int(h.get("gap_frames") or 0)
            self.announced[topic] = self.announced.get(topic, 0) + int(h.get("gap_frames") or 0)
        if kind == "frame":
            self.delivered[topic] = self.delivered.get(topic, 0) + 1
        if h["series"]:
            self.series_max[key] = max(self.series_max.get(key, 0), n)

    def generated(self, topic: str) -> int:
        return sum(n - self.series_from.get((t, s), 0) for (t, s), n in self.series_max.items() if t == topic)

    def topics(self) -> list[str]:
        return sorted(set(self.delivered) | {t for t, _ in self.series_max})


def end_series_and_drain(daemon: subprocess.Popen, sub: Any, on_message: Callable[[Any], None],
                         timeout_s: float = 60.0, quiet_s: float = 0.5) -> None:
    """SIGTERM the daemon (it ends every series with ``series_end``) and hand every message still
    in flight on ``sub`` (a :class:`~medacq.client.Subscriber`) to ``on_message`` until it has
    exited and ``sub`` has been quiet for ``quiet_s`` (a subscriber seconds behind still gets the
    end of the run), or ``timeout_s``."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    end = time.monotonic() + timeout_s
    last = time.monotonic()
    while (now := time.monotonic()) < end:
        msg = sub.recv(timeout=0.1)
        if msg is not None:
            on_message(msg)
            last = time.monotonic()
        elif daemon.poll() is not None and now - last >= quiet_s:
            break


def _last_json(log: Path, prefix: bytes) -> dict[str, Any] | None:
    """The last line of ``log`` that starts with ``prefix`` and parses as a JSON object."""
    try:
        lines = log.read_bytes().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(prefix):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def recorder_checkpoint(log: Path) -> dict[str, Any] | None:
    """The last checkpoint line of ``medacq record --progress`` in its log (``checkpoint``,
    ``frames``, ``streams``, ``missed_frames``, ``bad_messages``); ``None`` before the first."""
    return _last_json(log, b'{"checkpoint"')


def _recorded_so_far(log: Path) -> int | None:
    """Frames the last checkpoint of ``medacq record --progress`` reported in its log, if any."""
    last = recorder_checkpoint(log)
    try:
        return None if last is None else int(last["frames"])
    except (KeyError, TypeError, ValueError):
        return None


def recorder_summary(log: Path) -> dict[str, Any] | None:
    """The final status ``medacq record`` printed when it stopped (``state``, ``frames_recorded``,
    ``missed_frames``, ...), without its per-stream table; ``None`` if it printed none."""
    last = _last_json(log, b'{"state"')
    return None if last is None else {k: v for k, v in last.items() if k != "streams"}


def stop_recorder(recorder: subprocess.Popen, path: Path, settle_s: float = 1.5, progress_log: Path | None = None,
                  expect_frames: int | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop ``medacq record`` once it has caught up, and verify the file
    (:func:`~medacq.daemon.recording.hdf5.check_recording`'s summary).

    Caught up: with ``progress_log`` (the recorder runs with ``--progress``) and ``expect_frames``
    (what the benchmark's own subscriber received), until a checkpoint reports that many frames,
    or the count stops moving for 5 s, or ``timeout_s``; a busy machine can leave a recorder
    seconds behind, and one stopped then would miss frames it was still to receive. Otherwise
    ``settle_s`` (its last checkpoint)."""
    from medacq.daemon.recording.hdf5 import check_recording

    if progress_log is not None and expect_frames is not None:
        deadline = time.monotonic() + timeout_s
        last, moved = None, time.monotonic()
        while recorder.poll() is None and (now := time.monotonic()) < deadline:
            n = _recorded_so_far(progress_log)
            if n is not None and n >= expect_frames:
                break
            if n != last:
                last, moved = n, now
            elif now - moved > 5.0:
                break
            time.sleep(0.2)
    else:
        time.sleep(settle_s)  # the recorder's last checkpoint
    if recorder.poll() is None:
        recorder.send_signal(signal.SIGTERM)
    recorder.wait(30)
    return check_recording(path)


def recorded_vs_delivered(ledger: StreamLedger, recording: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per topic (every topic the ledger or the file has): frames ``recorded`` in the file,
    ``delivered`` to the ledger's subscriber, and whether they are ``equal``."""
    out = {}
    for t in sorted(set(ledger.topics()) | set(recording["streams"])):
        rec, dlv = int(recording["streams"].get(t, {}).get("frames", 0)), ledger.delivered.get(t, 0)
        out[t] = {"recorded": rec, "delivered": dlv, "equal": rec == dlv}
    return out


def recorded_seqs(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every frame of an HDF5 recording, as ``(topic, series id) -> sorted seq`` (uint64), read from
    the ``seq`` and ``series_index`` columns of each data block (the file is recovered first)."""
    from medacq.daemon.recording.hdf5 import open_recording

    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    with open_recording(path) as f:
        for prefix in f:
            for g in f[prefix].values():
                topic = str(g.attrs["topic"])
                ids = {int(k): str(s.attrs["series"]) for k, s in g["series"].items()}
                for b in (k for k in g if k.startswith("data_")):
                    seq, idx = g[b]["seq"][()], g[b]["series_index"][()]
                    for i in np.unique(idx):
                        parts.setdefault((topic, ids[int(i)]), []).append(seq[idx == i])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now (MB, 2^20 bytes; ``/proc/PID/statm``), NaN if unreadable."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return resident * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def half_growth(series: list[float]) -> float | None:
    """Growth (%) from the middle sample of ``series`` to its last: near 0 when the first half
    was warm-up and nothing leaks; ``None`` with fewer than 3 samples."""
    if len(series) < 3:
        return None
    mid = series[len(series) // 2]
    return round(100 * (series[-1] - mid) / mid, 2) if mid else None
