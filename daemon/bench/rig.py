"""``medacq bench rig [--seconds N] [--warmup-s W] [--json]``: the whole default rig, measured per stream.

What runs (what ``medacq up`` runs, plus a recorder and a page's worth of live view):

* every simulator of :data:`~medacq.simulators.rig.DEFAULT_RIG`, paced, in a child process at
  :data:`~medacq.simulators.rig.SIMULATOR_NICE` (the devices are separate hardware on a real rig;
  the niceness must not reach this, the measuring, process);
* ``medacq run`` (the daemon) and ``medacq recon`` (the reconstruction stage) with the rig's
  config, ``medacq record --topics raw/`` to an HDF5 file in a temporary folder, ``medacq view``
  and a client process that pulls the view's WebSocket the way the page does (every binary
  update acknowledged with ``{"op": "drawn"}``), each its own process;
* here: one :class:`~medacq.client.Subscriber` on ``raw/`` and ``recon/`` of both data endpoints.

Devices start over the control plane once every subscriber is connected. ``--warmup-s`` seconds
(default 10) later, and once every ``recon/<stream>`` has published its first frame (at most
:data:`READY_WAIT_S` more: a first run on a fresh machine builds operators and compiles kernels),
the measurement window of ``--seconds`` (default 60) starts (``warmup_s`` in the result: the
warm-up it took). Per topic:

* ``in_fps``: frames/s of the raw stream (for a ``recon/...`` topic: of its source), ``out_fps``:
  frames/s of the ``recon/...`` topic, both over the window;
* ``capacity_fps``: the source's reconstructor measured *alone*, after the rig has stopped, in
  this process: the stage's reconstructor class, built from the stream's descriptor with the
  rig's settings (ultrasound: OpenIGTLink off), warmed up on 3 frames, then ``process()`` timed
  over frames captured from the stream during the window (cycled, ``seq`` renumbered, CT
  ``projection`` kept consecutive) for ``--capacity-s`` seconds. 1 / ``capacity_fps`` is the
  single-frame processing time;
* ``age_p50_ms``, ``age_p99_ms``, ``age_max_ms``: glass to glass over the window: this process's
  CLOCK_MONOTONIC at receipt minus the earliest host clock of the acquisition (header
  ``t_mono_ns``; for ``recon/...`` also ``source.t_mono_ns``, the same instant: the acquisition of
  the frame's first sample, so a biosignal frame's age includes the samples it waited for);
  for ``raw/...`` topics the same, acquisition → this subscriber;
* ``superseded``, ``lost``: the stage's counters of the source stream (its ``status`` over the
  recon control endpoint at the end of the window), ``null`` where the stage does not report
  them; for ``raw/...`` topics ``lost`` = frames numbered by the daemon that this subscriber did
  not receive (announced in ``gap`` messages or holes), over the whole run, every series from seq 0
  (it subscribes before the devices start: a series first seen mid-way lost its head);
* ``gaps``: gap messages and ``seq`` holes this subscriber saw on the topic, whole run;
* ``first_frame_s``: from the start of the rig (before the simulators start) to the topic's
  first frame here.

``recorded_equals_delivered``: the frames in the HDF5 recording vs the frames this subscriber
received, per raw topic, over the whole run (the daemon ends every series before the recorder
stops), compared as sets of (series, seq) (``missing``: received here, not in the file; ``extra``:
in the file, not received here), and ``check_recording`` without problems.

Bars (``bars``, and pass/fail marks in the table): every ``recon/...`` topic p99 age ≤ 100 ms
(biosignals, EIT, X-ray, CT, synthetic), for ultrasound B-mode ≤ 2 × its single-frame
processing time + 20 ms; each main ``recon/<stream>`` output (one output per source frame)
``out_fps`` ≥ 0.9 × min(in_fps, capacity_fps) and first frame within 10 s; every raw topic 0 lost
frames and recorded = delivered. Outputs made per beat or per rotation (``recon/ekg0/hr``,
``recon/ct0/slice``) have only the age bar, judged when they produced frames in the window.

Also reported (not barred): ``recon_startup``, the stage's ``preload`` (seconds, per modality), per
stream ``ready_after_s`` (its first frame at the stage → its reconstructor ready) and
``lost_in_warmup`` (the stage's ``lost`` when the window starts: start-up gaps, when the warm-up
covers the start-up); ``stage``, per stream the stage's own ``frames_done``, ``batches`` (calls of
``process``/``process_batch``), ``proc_us_p50``/``p99`` (wall time of one call, µs) and
``age_ms_p50``/``p99`` (age when handed to the reconstructor), from its last 256/512 frames, and
``cpu_run_pct``/``cpu_wait_pct``: the stream's worker thread on a CPU, and runnable but waiting for
one, in % of the window (Linux ``schedstat``; waiting for the GIL is neither: it sleeps; a stream
in a worker process: that process's threads), ``isolation``, and ``realtime`` (SCHED_RR in force,
for ``--isolation STREAM=realtime``; ``realtime_error`` when refused);
``gil``, the
slowest reconstructor beside the others as threads of one process and as two processes
(:mod:`medacq.daemon.bench.gil`; ``--capacity-s`` seconds per run); ``simulator_late_ms``, per
simulator over the window, how late its due output left (ms ``p50``/``p99``/``max``, ``n``: from
the time the device would have sent it to the simulator's poll that produced it,
:attr:`~medacq.simulators.adapters.SimulatorServer.late_s`): a real device is never late, so this
is the part of a stream's age that the simulators, at lower priority on the same cores, add.

:class:`RigUnderTest` (the rig, its processes and cleanup) and :func:`idle_and_under_load` (used by
``bench detector --under-load`` and ``bench ultrasound --under-load``) are shared.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medacq.daemon.bench.runner import (StreamLedger, end_series_and_drain, free_ports, recorded_seqs,
                                        recorder_checkpoint, recorder_summary, spawn_cli, stop_processes,
                                        stop_recorder, terminate_as_interrupt)

__all__ = ["RigUnderTest", "bench_rig", "print_result", "idle_and_under_load", "compare_seqs", "STREAM_KEYS", "AGE_BAR_MS",
           "US_AGE_SLACK_MS", "FPS_BAR", "FIRST_FRAME_BAR_S"]

STREAM_KEYS = ("topic", "in_fps", "out_fps", "capacity_fps", "age_p50_ms", "age_p99_ms", "age_max_ms",
               "superseded", "lost", "gaps", "first_frame_s")
"""The keys of each ``streams`` entry of ``--json``, in order."""

AGE_BAR_MS = 100.0
"""p99 glass-to-glass age bar of every ``recon/...`` topic but ultrasound B-mode, ms."""
US_AGE_SLACK_MS = 20.0
"""Ultrasound B-mode: p99 age ≤ 2 × single-frame processing time + this, ms."""
FPS_BAR = 0.9
"""Main recon outputs: out_fps ≥ FPS_BAR × min(in_fps, capacity_fps)."""
FIRST_FRAME_BAR_S = 10.0
"""Main recon outputs: first frame within this many seconds of the rig's start."""

_CAPTURE_FRAMES = 16  # per raw stream, for the capacity measurement
_CAPTURE_BYTES = 32 << 20


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# -- child processes ----------------------------------------------------------------------------
def _serve_simulators(conn: Any, parent: int, fault_endpoint: str | None = None) -> None:
    """Child process: serve every simulator of the default rig (and, with ``fault_endpoint``, their
    fault side door, :class:`~medacq.simulators.faults.FaultServer`), send the rig config document,
    drop to :data:`SIMULATOR_NICE`, and serve until told to stop (or the parent is gone)."""
    import signal

    from medacq.simulators.faults import FaultServer
    from medacq.daemon.common.interpreter import freeze_heap
    from medacq.simulators.rig import SIMULATOR_NICE, SimulatedRig, lower_priority

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # terminate() → KeyboardInterrupt → rig.stop()
    rig = SimulatedRig(paced=True)
    faults = None
    try:
        try:
            rig.start()
            if fault_endpoint:
                faults = FaultServer(rig.servers, fault_endpoint).start()
            conn.send({"config": rig.config(0), "simulators": sorted(rig.servers)})
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
            return
        lower_priority(SIMULATOR_NICE)  # every thread: os.nice would change only this one
        freeze_heap("simulators started")  # as medacq up does
        while os.getppid() == parent:
            if conn.poll(0.5):
                msg = conn.recv()
                if msg == "lateness":  # the simulators' lateness since the last ask, then anew
                    conn.send(rig.lateness_ms(reset=True))
                    continue
                break
    except (KeyboardInterrupt, EOFError, OSError):
        pass
    finally:
        if faults is not None:
            faults.stop()
        rig.stop()


def _view_client(url: str, stop: Any, out: Any, token: str = "") -> None:
    """Child process: one client of ``medacq view`` pulling updates like the page: connect the
    WebSocket (with the view's ``token``), decode every binary update and acknowledge it
    (``drawn``) at once."""
    import asyncio
    import signal

    import aiohttp

    from medacq.daemon.bridges.view import unpack_message

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    n = {"updates": 0, "bytes": 0, "status_messages": 0}
    panels: set[str] = set()
    parent = os.getppid()

    async def session() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url + "ws", headers={"Authorization": f"Bearer {token}"}) as ws:
                while not stop.is_set() and os.getppid() == parent:
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        h, payload = unpack_message(msg.data)
                        n["updates"] += 1
                        n["bytes"] += len(payload)
                        panels.add(str(h.get("panel")))
                        await ws.send_str(json.dumps({"op": "drawn", "panel": h["panel"], "v": h["v"]}))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        n["status_messages"] += 1
                    else:
                        break

    t0 = time.monotonic()
    err = None
    try:
        asyncio.run(session())
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - reported
        err = f"{type(exc).__name__}: {exc}"
    out.put({**n, "panels": len(panels), "seconds": round(time.monotonic() - t0, 2), "error": err})


# -- the rig ------------------------------------------------------------------------------------
class RigUnderTest:
    """The default ``medacq up`` rig for a benchmark, every part its own process.

    :meth:`start` brings up the simulators (child process, lower priority), the recorder (if
    ``record``), the reconstruction stage, the live view and its client (if ``view``) and the daemon
    with every device's ``autostart`` off; :meth:`start_devices` starts them once the caller's
    subscribers are connected. :meth:`stop` (also on leaving the ``with`` block) ends every child:
    SIGTERM to each process group, SIGKILL after a grace period. Children also get SIGTERM if this
    process dies (Linux). Logs and the config are in :attr:`workdir`, removed by :meth:`stop` unless
    ``keep`` (or the start failed).

    ``faults``: the simulators' fault side door is served too, at :attr:`fault_endpoint`
    (``medacq fault --endpoint``). ``edit_config``: called with the rig's config document (a dict,
    endpoints and ``autostart`` already set) before it is written.
    """

    def __init__(self, *, record: bool = True, view: bool = True, keep: bool = False, faults: bool = False,
                 edit_config: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.record, self.view, self.keep = record, view, keep
        self.fault_endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}" if faults else None
        self._edit_config = edit_config
        self.workdir = Path(tempfile.mkdtemp(prefix="medacq-bench-rig-"))
        self.cfg_path = self.workdir / "rig.toml"
        self.rec_path = self.workdir / "raw.h5"
        self.procs: dict[str, subprocess.Popen] = {}
        self.t_up = 0.0
        self.cfg: Any = None
        self.view_url: str | None = None
        self.view_token = ""
        self.simulators: list[str] = []
        self._sim: Any = None
        self._sim_conn: Any = None
        self._client: Any = None
        self._client_stop: Any = None
        self._client_out: Any = None
        self._failed = False

    def __enter__(self) -> "RigUnderTest":
        return self.start()

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is not None:
            self._failed = True
        self.stop()

    # start ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "RigUnderTest":
        from medacq.daemon.client.api import ControlClient, DaemonUnreachable
        from medacq.daemon.common.config import dump_config, load_config

        self.t_up = time.monotonic()
        try:
            ctx = mp.get_context("spawn")
            self._sim_conn, child = ctx.Pipe()
            self._sim = ctx.Process(target=_serve_simulators, args=(child, os.getpid(), self.fault_endpoint),
                                    name="rig-simulators", daemon=True)
            self._sim.start()
            child.close()
            if not self._sim_conn.poll(timeout):
                raise RuntimeError(f"the simulators did not start within {timeout:.0f} s")
            reply = self._sim_conn.recv()
            if "error" in reply:
                raise RuntimeError(f"the simulators did not start: {reply['error']}")
            doc, self.simulators = reply["config"], reply["simulators"]
            ports = free_ports(5)
            for (sec, key), port in zip([("daemon", "data_endpoint"), ("daemon", "control_endpoint"),
                                         ("recon", "data_endpoint"), ("recon", "control_endpoint")], ports):
                doc[sec][key] = f"tcp://127.0.0.1:{port}"
            for dev in doc["device"]:  # started over the control plane once every subscriber is connected
                dev["autostart"] = False
            if self._edit_config is not None:
                self._edit_config(doc)
            self.cfg_path.write_text(dump_config(doc))
            self.cfg = load_config(self.cfg_path)
            cfg = str(self.cfg_path)
            if self.record:  # subscribers first, so they see every series from its start
                self._spawn("recorder", ["record", "--topics", "raw/", "--out", str(self.rec_path), "--endpoint",
                                         self.cfg.daemon.data_endpoint, "--no-fsync", "--progress"])
                # its first --progress line: the recorder process is up, subscribed, and checkpointing
                self._wait(lambda: recorder_checkpoint(self.workdir / "recorder.log") is not None, timeout,
                           "the recorder did not write its first checkpoint")
            self._spawn("recon", ["recon", "--config", cfg])
            if self.view:  # read-only (no --operator): its client only watches
                from medacq.daemon.bridges.view import VIEW_NICE, new_token

                self.view_token = new_token()
                self._spawn("view", ["view", "--config", cfg, "--port", str(ports[4])],
                            {**os.environ, "PYTHONUNBUFFERED": "1", "MEDACQ_VIEW_TOKEN": self.view_token},
                            nice=VIEW_NICE)
            self._spawn("daemon", ["run", "--config", cfg])
            with ControlClient(self.cfg.daemon.control_endpoint, timeout=0.5) as c:
                def up() -> bool:
                    try:
                        c.request("ping")
                        return True
                    except DaemonUnreachable:
                        return False
                self._wait(up, timeout, "the daemon did not answer")
            with ControlClient(self.cfg.recon.control_endpoint, timeout=0.5) as c:
                def recon_up() -> bool:
                    try:
                        c.request("ping")
                        return True
                    except DaemonUnreachable:
                        return False
                self._wait(recon_up, timeout, "the reconstruction stage did not answer")
            if self.view:
                def listening() -> bool:
                    try:
                        with socket.create_connection(("127.0.0.1", ports[4]), timeout=0.3):
                            return True
                    except OSError:
                        time.sleep(0.1)
                        return False
                self._wait(listening, timeout, "the live view did not listen")
                self.view_url = f"http://127.0.0.1:{ports[4]}/"
                self._client_stop, self._client_out = ctx.Event(), ctx.Queue()
                self._client = ctx.Process(target=_view_client, args=(self.view_url, self._client_stop,
                                                                      self._client_out, self.view_token),
                                           name="view-client", daemon=True)
                self._client.start()
        except BaseException:
            self._failed = True
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, nice: int = 0) -> None:
        self.procs[name] = spawn_cli(argv, self.workdir / f"{name}.log", env, nice)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s (logs in {self.workdir})")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise naming the first part of the rig that exited, with the tail of its log."""
        if self._sim is not None and not self._sim.is_alive():
            raise RuntimeError(f"the simulators' process exited (code {self._sim.exitcode})")
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited (code {p.returncode}): {self.log(name)[-800:].strip()}")

    def log(self, name: str) -> str:
        f = self.workdir / f"{name}.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def start_devices(self, settle_s: float = 1.0) -> None:
        """Start every device over the control plane, ``settle_s`` after the subscribers connected."""
        from medacq.daemon.client.api import ControlClient

        time.sleep(settle_s)  # ZeroMQ slow joiner: subscriptions reach the PUB sockets
        with ControlClient(self.cfg.daemon.control_endpoint, timeout=5.0) as c:
            c.request("start")

    # queries ----------------------------------------------------------------------------
    def status(self, target: str = "recon") -> dict[str, Any]:
        """``status`` of the daemon or the stage; ``{}`` when it does not answer."""
        from medacq.daemon.client.api import ControlClient

        ep = self.cfg.recon.control_endpoint if target == "recon" else self.cfg.daemon.control_endpoint
        try:
            with ControlClient(ep, timeout=3.0) as c:
                return dict(c.request("status"))
        except Exception as exc:  # noqa: BLE001 - reported as missing figures
            _log(f"{target} status failed: {exc}")
            return {}

    def sim_lateness(self) -> dict[str, dict[str, Any]]:
        """Per simulator, how late its due work ran since the last call (ms, p50/p99/max:
        :meth:`~medacq.simulators.rig.SimulatedRig.lateness_ms`); ``{}`` when it does not answer."""
        conn = self._sim_conn
        if conn is None or self._sim is None or not self._sim.is_alive():
            return {}
        conn.send("lateness")
        if not conn.poll(10):
            _log("the simulators did not report their lateness")
            return {}
        return dict(conn.recv())

    def view_state(self) -> dict[str, Any]:
        """The view's ``/api/state`` (latency figures), ``{}`` when not available."""
        import urllib.request

        if not self.view_url:
            return {}
        try:
            req = urllib.request.Request(self.view_url + "api/state",
                                         headers={"Authorization": f"Bearer {self.view_token}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return dict(json.loads(r.read()))
        except Exception:  # noqa: BLE001
            return {}

    def stop_view_client(self) -> dict[str, Any] | None:
        """Stop the view client; its counts (``updates``, ``panels``, ``seconds``, ``error``)."""
        if self._client is None:
            return None
        self._client_stop.set()
        try:
            res = self._client_out.get(timeout=10)
        except Exception:  # noqa: BLE001 - queue.Empty or a dead client
            res = None
        self._client.join(5)
        if self._client.is_alive():
            self._client.terminate()
            self._client.join(5)
        self._client = None
        return res

    # stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every child (idempotent); remove the work folder unless ``keep`` or a failure."""
        if self._client is not None:
            self._client_stop.set()
            self._client.join(3)
            if self._client.is_alive():
                self._client.terminate()
                self._client.join(3)
            self._client = None
        stop_processes(self.procs.values(), grace_s=10.0)
        if self._sim is not None:
            try:
                self._sim_conn.send("stop")
            except (OSError, ValueError):
                pass
            self._sim.join(10)
            if self._sim.is_alive():
                self._sim.terminate()
                self._sim.join(5)
            if self._sim.is_alive():
                self._sim.kill()
                self._sim.join(2)
            self._sim = None
        if self.rec_path.exists():  # gigabytes after a minute; never kept
            self.rec_path.unlink()
        if not self.keep and not self._failed:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.workdir.exists():
            _log(f"rig logs kept in {self.workdir}")


# -- measuring ----------------------------------------------------------------------------------
class _Tally:
    """What the measuring subscriber saw, per topic."""

    def __init__(self, t_up: float) -> None:
        self.t_up_ns = int(t_up * 1e9)
        self.ledger = StreamLedger(count_from_zero=True)  # subscribed before the devices start
        self.seqs: dict[tuple[str, str], list[int]] = {}  # (raw topic, series) -> seq of each frame received
        self.first_ns: dict[str, int] = {}
        self.frames: dict[str, int] = {}
        self.ages: dict[str, list[float]] = {}
        self.source: dict[str, str] = {}
        self.captured: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {}
        self.captured_bytes: dict[str, int] = {}
        self.measuring = False

    def see(self, msg: Any) -> None:
        now = time.monotonic_ns()
        topic, h, a = msg.topic, msg.header, msg.array
        raw = topic.startswith("raw/")
        if raw:
            self.ledger.see(topic, h)
        if a is None:
            return
        if raw:
            self.seqs.setdefault((topic, h["series"]), []).append(int(h["seq"]))
        self.first_ns.setdefault(topic, now)
        src = h.get("source") or {}
        if not raw and topic not in self.source:
            self.source[topic] = str(src.get("stream") or h["stream"].split("/")[0])
        if not self.measuring:
            return
        t0 = int(h["t_mono_ns"])
        if src.get("t_mono_ns") is not None:
            t0 = min(t0, int(src["t_mono_ns"]))
        self.ages.setdefault(topic, []).append((now - t0) / 1e6)
        self.frames[topic] = self.frames.get(topic, 0) + 1
        if raw:
            got = self.captured.setdefault(topic, [])
            if len(got) < _CAPTURE_FRAMES and self.captured_bytes.get(topic, 0) + a.nbytes <= _CAPTURE_BYTES:
                got.append((h, a))
                self.captured_bytes[topic] = self.captured_bytes.get(topic, 0) + a.nbytes


READY_WAIT_S = 60.0
"""How long (s) past ``--warmup-s`` the window waits for every recon stream's first frame."""


def _pump(sub: Any, tally: _Tally, until: float, rig: RigUnderTest) -> None:
    next_check = time.monotonic() + 1.0
    while (now := time.monotonic()) < until:
        msg = sub.recv(timeout=0.05)
        if msg is not None:
            tally.see(msg)
        if now >= next_check:
            rig.check_alive()
            next_check = now + 1.0


def _capacity(desc: dict[str, Any] | None, frames: list[tuple[dict[str, Any], np.ndarray]],
              settings: dict[str, Any], budget_s: float) -> float | None:
    """Frames/s of the stage's reconstructor for this stream alone (see the module doc)."""
    from medacq.daemon.bench.gil import ReconFeeder
    from medacq.daemon.recon.registry import reconstructor_class

    if desc is None or not frames or reconstructor_class(str(desc.get("modality"))) is None:
        return None
    feeder = ReconFeeder(desc, frames, settings)  # built, ready, 3 frames of warm-up
    try:
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < budget_s:
            feeder.feed()
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        feeder.close()


def _gil(devices: list[str], descriptors: dict[str, Any], tally: "_Tally", settings: dict[str, Any],
         capacity: dict[str, float | None], seconds: float) -> dict[str, Any] | None:
    """:func:`~medacq.daemon.bench.gil.gil_check` with the slowest reconstructor (lowest capacity)
    as ``heavy`` and every other one that has frames as ``rest``; ``None`` without two of them."""
    from medacq.daemon.bench.gil import gil_check

    have = [n for n in devices if capacity.get(n) and tally.captured.get(f"raw/{n}")]
    if len(have) < 2:
        return None
    heavy = min(have, key=lambda n: capacity[n] or math.inf)
    spec = {n: (descriptors[f"raw/{n}"], tally.captured[f"raw/{n}"], settings) for n in have}
    try:
        return gil_check(spec[heavy], [spec[n] for n in have if n != heavy], seconds)
    except Exception as exc:  # noqa: BLE001 - a figure is missing, the benchmark goes on
        _log(f"gil check: {type(exc).__name__}: {exc}")
        return None


def _schedstat(status: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per stream, its stage worker thread's (ns on a CPU, ns runnable waiting for one), from Linux's
    ``/proc/<pid>/task/<tid>/schedstat``; for a stream served in a worker process of its own
    (``isolation = "process"``), the sum over that process's threads instead (the stage's thread
    only waits for it). Empty where that is not readable."""
    pid, out = status.get("pid"), {}
    for name, st in (status.get("streams") or {}).items():
        child = ((st or {}).get("worker_process") or {}).get("pid")
        tasks = ([f"/proc/{child}/task/{t}/schedstat" for t in _tasks(child)] if child
                 else [f"/proc/{pid}/task/{(st or {}).get('thread_native_id')}/schedstat"])
        try:
            run = wait = 0
            for path in tasks:
                with open(path) as f:
                    r, w, _ = f.read().split()
                run, wait = run + int(r), wait + int(w)
            if tasks:
                out[name] = (run, wait)
        except (OSError, ValueError, TypeError):
            continue
    return out


def _isolation_args(items: list[str]) -> dict[str, str]:
    """``--isolation STREAM=MODE`` items as ``[recon.isolation]`` (``ValueError`` naming a bad one;
    the stream and the mode are checked again with the rig's config)."""
    out: dict[str, str] = {}
    for item in items:
        stream, sep, mode = item.partition("=")
        if not sep or not stream or mode not in ("thread", "process", "realtime"):
            raise ValueError(f"--isolation {item!r}: expected STREAM=thread|process|realtime")
        out[stream] = mode
    return out


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def bench_rig(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole-rig benchmark; returns the JSON object described in the module doc."""
    from medacq.daemon.client.api import Subscriber

    seconds = float(getattr(args, "seconds", 60.0) or 60.0)
    warmup = max(0.0, float(getattr(args, "warmup_s", 10.0)))
    capacity_s = max(0.05, float(getattr(args, "capacity_s", 1.0) or 1.0))
    isolation = _isolation_args(getattr(args, "isolation", None) or [])

    def edit(doc: dict[str, Any]) -> None:
        if isolation:
            doc.setdefault("recon", {})["isolation"] = dict(isolation)

    with terminate_as_interrupt(), RigUnderTest(record=True, view=True, keep=bool(getattr(args, "keep", False)),
                                                edit_config=edit) as rig:
        _log(f"rig up in {time.monotonic() - rig.t_up:.1f} s ({len(rig.simulators)} simulators); "
             f"warm-up {warmup:.0f} s, then {seconds:.0f} s measured")
        tally = _Tally(rig.t_up)
        sub = Subscriber([rig.cfg.daemon.data_endpoint, rig.cfg.recon.data_endpoint], ["raw/", "recon/"],
                         rcvhwm=1_000_000, errors="skip")
        try:
            time.sleep(1.0)  # ZeroMQ's slow joiner: subscribed before the first series starts (counted from 0)
            rig.start_devices()
            t_start = time.monotonic()
            _pump(sub, tally, t_start + warmup, rig)
            # a window in which a stream is still warming up measures nothing of it: wait for every
            # main recon output's first frame (bounded; a stream that never comes fails its bars)
            mains = {f"recon/{d.name}" for d in rig.cfg.device}
            ready_by = time.monotonic() + READY_WAIT_S
            while not mains <= set(tally.first_ns) and time.monotonic() < ready_by:
                _pump(sub, tally, time.monotonic() + 0.5, rig)
            warmup = round(time.monotonic() - t_start, 2)
            warm_status = rig.status("recon")  # the stage's drops so far: start-up gaps, if the warm-up covers it
            sched0 = _schedstat(warm_status)
            load0 = os.getloadavg()[0]
            rig.sim_lateness()  # the record starts with the window
            tally.measuring = True
            t_w0 = time.monotonic()
            _pump(sub, tally, t_w0 + seconds, rig)
            window = time.monotonic() - t_w0
            tally.measuring = False
            sim_late = rig.sim_lateness()
            load1 = os.getloadavg()[0]
            recon_status = rig.status("recon")
            sched1 = _schedstat(recon_status)
            view_state = rig.view_state()
            view_client = rig.stop_view_client()
            end_series_and_drain(rig.procs["daemon"], sub, tally.see)
            recorded = stop_recorder(rig.procs["recorder"], rig.rec_path, progress_log=rig.workdir / "recorder.log",
                                     expect_frames=sum(tally.ledger.delivered.values()))
            recorded["recorder"] = recorder_summary(rig.workdir / "recorder.log")
            try:
                recorded["seqs"] = recorded_seqs(rig.rec_path)
            except (OSError, ValueError) as exc:
                recorded["seqs"] = {}
                recorded.setdefault("problems", []).append(f"reading the seq columns: {type(exc).__name__}: {exc}")
            descriptors = sub.descriptors
            gaps: dict[str, int] = {}
            for g in sub.gaps:
                gaps[g.topic] = gaps.get(g.topic, 0) + 1
        finally:
            sub.close()
        settings = dict(rig.cfg.recon.settings or {})
        devices = [d.name for d in rig.cfg.device]
    _log(f"rig stopped; timing each reconstructor alone ({capacity_s:g} s per stream)")
    capacity: dict[str, float | None] = {}
    modality: dict[str, str | None] = {}
    for name in devices:
        desc = descriptors.get(f"raw/{name}")
        modality[name] = (desc or {}).get("modality")
        try:
            capacity[name] = _capacity(desc, tally.captured.get(f"raw/{name}", []), settings, capacity_s)
        except Exception as exc:  # noqa: BLE001 - a figure is missing, the benchmark goes on
            _log(f"capacity of {name}: {type(exc).__name__}: {exc}")
            capacity[name] = None
    _log("gil: the slowest reconstructor beside the others, as threads and as processes")
    gil = _gil(devices, descriptors, tally, settings, capacity, capacity_s)
    res = _result(args, seconds, warmup, window, devices, modality, capacity, tally, gaps, recon_status,
                  recorded, view_state, view_client, (load0, load1))
    streams = recon_status.get("streams") or {}
    warm = warm_status.get("streams") or {}
    res["recon_startup"] = {"preload": recon_status.get("preload"),
                            "ready_after_s": {n: (streams.get(n) or {}).get("ready_after_s") for n in devices},
                            "lost_in_warmup": {n: (warm.get(n) or {}).get("lost") for n in devices}}
    keys = ("frames_done", "batches", "proc_us_p50", "proc_us_p99", "age_ms_p50", "age_ms_p99")
    res["stage"] = {n: {k: v if isinstance(v := (streams.get(n) or {}).get(k), int) else _r(v, 1) for k in keys}
                    for n in devices}
    for n in devices:  # the worker thread's CPU over the window: running, and runnable but waiting for a core
        a, b = sched0.get(n), sched1.get(n)
        ok = a is not None and b is not None
        res["stage"][n]["cpu_run_pct"] = round((b[0] - a[0]) / 1e9 / window * 100, 1) if ok else None
        res["stage"][n]["cpu_wait_pct"] = round((b[1] - a[1]) / 1e9 / window * 100, 1) if ok else None
        st = streams.get(n) or {}
        res["stage"][n]["isolation"] = st.get("isolation")
        wp = st.get("worker_process") or {}
        res["stage"][n]["realtime"] = wp.get("realtime") if wp.get("realtime_priority") is not None else None
        if wp.get("realtime_error"):
            res["stage"][n]["realtime_error"] = wp["realtime_error"]
    res["gil"] = gil
    res["simulator_late_ms"] = sim_late
    return res


def compare_seqs(delivered: dict[tuple[str, str], Any], recorded: dict[tuple[str, str], Any],
                 file_ok: bool = True) -> dict[str, dict[str, Any]]:
    """Recorded = delivered as sets of frames: per topic (of either side), frames ``recorded`` and
    ``delivered``, ``missing`` (delivered, not in the file) and ``extra`` (in the file, not
    delivered; a duplicate in the file counts as extra too), and ``equal``: both 0 and
    ``file_ok``. ``delivered`` / ``recorded``: ``(topic, series) -> seqs``. Counts alone would
    let a duplicate and a loss cancel."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(delivered) | set(recorded)):
        d = np.asarray(delivered.get(key, ()), np.int64)
        r = np.asarray(recorded.get(key, ()), np.int64)
        c = out.setdefault(key[0], {"recorded": 0, "delivered": 0, "missing": 0, "extra": 0})
        c["recorded"] += int(r.size)
        c["delivered"] += int(d.size)
        c["missing"] += int(np.setdiff1d(d, r).size)
        c["extra"] += int(np.setdiff1d(r, d).size) + int(r.size - np.unique(r).size)
    for c in out.values():
        c["equal"] = bool(file_ok and c["missing"] == 0 and c["extra"] == 0)
    return out


def _result(args: argparse.Namespace, seconds: float, warmup: float, window: float, devices: list[str],
            modality: dict[str, str | None], capacity: dict[str, float | None], tally: _Tally,
            gaps: dict[str, int], recon_status: dict[str, Any], recorded: dict[str, Any],
            view_state: dict[str, Any], view_client: dict[str, Any] | None,
            load: tuple[float, float]) -> dict[str, Any]:
    def fps(topic: str) -> float:
        return round(tally.frames.get(topic, 0) / window, 2)

    def first(topic: str) -> float | None:
        t = tally.first_ns.get(topic)
        return None if t is None else round((t - tally.t_up_ns) / 1e9, 2)

    def stage(name: str, key: str) -> int | None:
        st = (recon_status.get("streams") or {}).get(name) or {}
        v = st.get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    recon_topics: set[str] = {t for t in tally.first_ns if t.startswith("recon/")}
    for st in (recon_status.get("streams") or {}).values():
        recon_topics |= set(st.get("outputs_streams") or [])
    rec_cmp = compare_seqs(tally.seqs, recorded.get("seqs") or {}, not recorded.get("problems"))
    streams: list[dict[str, Any]] = []
    bars: list[dict[str, Any]] = []
    for name in devices:
        raw = f"raw/{name}"
        ages = tally.ages.get(raw, [])
        lost = tally.ledger.generated(raw) - tally.ledger.delivered.get(raw, 0)
        streams.append({"topic": raw, "in_fps": fps(raw), "out_fps": None, "capacity_fps": None,
                        "age_p50_ms": _pct(ages, 50), "age_p99_ms": _pct(ages, 99),
                        "age_max_ms": _r(max(ages)) if ages else None, "superseded": None, "lost": lost,
                        "gaps": gaps.get(raw, 0), "first_frame_s": first(raw)})
        bars.append({"topic": raw, "figure": "lost", "bar": "= 0", "ok": lost == 0})
        eq = rec_cmp.get(raw, {"equal": False})["equal"]  # missing = extra = 0, check_recording without problems
        bars.append({"topic": raw, "figure": "recorded_equals_delivered", "bar": "recorded = delivered", "ok": eq})
        outs = sorted(t for t in recon_topics if (tally.source.get(t) or t.split("/")[1]) == name)
        main = f"recon/{name}"
        if main not in outs:
            outs.insert(0, main)
        cap = capacity.get(name)
        for topic in outs:
            ages = tally.ages.get(topic, [])
            e: dict[str, Any] = {"topic": topic, "in_fps": fps(raw), "out_fps": fps(topic), "capacity_fps": _r(cap, 1),
                 "age_p50_ms": _pct(ages, 50), "age_p99_ms": _pct(ages, 99),
                 "age_max_ms": _r(max(ages)) if ages else None, "superseded": stage(name, "superseded"),
                 "lost": stage(name, "lost"), "gaps": gaps.get(topic, 0), "first_frame_s": first(topic)}
            streams.append(e)
            is_main = topic == main
            if modality.get(name) == "us":
                limit = 2 * 1000.0 / cap + US_AGE_SLACK_MS if cap else None
                bar = f"≤ 2×{1000.0 / cap:.1f}+{US_AGE_SLACK_MS:g} ms" if cap else "≤ 2×(1/capacity)+20 ms"
            else:
                limit, bar = AGE_BAR_MS, f"≤ {AGE_BAR_MS:g} ms"
            p99 = e["age_p99_ms"]
            if p99 is not None or is_main:
                bars.append({"topic": topic, "figure": "age_p99_ms", "bar": bar,
                             "ok": p99 is not None and limit is not None and p99 <= limit})
            if is_main:
                want = FPS_BAR * min(e["in_fps"], cap if cap is not None else math.inf)
                bars.append({"topic": topic, "figure": "out_fps", "bar": f"≥ {want:.1f}",
                             "ok": e["out_fps"] >= want and e["out_fps"] > 0})
                ff = e["first_frame_s"]
                bars.append({"topic": topic, "figure": "first_frame_s", "bar": f"≤ {FIRST_FRAME_BAR_S:g} s",
                             "ok": ff is not None and ff <= FIRST_FRAME_BAR_S})
    per = {t: c["equal"] for t, c in rec_cmp.items() if t.startswith("raw/")}
    lat = (view_state.get("latency") or {}).get("acq_to_pixels_ms") or {}
    return {
        "benchmark": "rig",
        "rig": "medacq up default rig: " + ", ".join(devices) + "; recorder (raw/ → HDF5), live view + 1 client",
        "cpus": os.cpu_count(), "seconds": round(window, 2), "warmup_s": warmup,
        "loadavg_1min": [round(load[0], 2), round(load[1], 2)],
        "capacity": "each reconstructor alone, after the rig stopped, in the benchmark process "
                    f"({getattr(args, 'capacity_s', 1.0):g} s of process() on frames captured in the window)",
        "streams": streams,
        "recorded_equals_delivered": {"streams": per, "all": bool(per) and all(per.values())},
        "recording": {t: {k: c[k] for k in ("recorded", "delivered", "missing", "extra")} for t, c in rec_cmp.items()},
        "recording_problems": recorded.get("problems", []),
        "recorder": recorded.get("recorder"),
        "view": {"client": view_client, "acq_to_pixels_ms_p50": lat.get("p50"),
                 "acq_to_pixels_ms_p99": lat.get("p99")},
        "bars": bars,
        "passed": all(b["ok"] for b in bars),
    }


# -- table ------------------------------------------------------------------------------------------
def print_result(result: dict[str, Any]) -> None:
    """The rig benchmark as a table, each barred figure followed by ok / FAIL and its bar."""
    print(f"medacq bench rig: {result['seconds']:g} s measured after {result['warmup_s']:g} s warm-up, "
          f"{result['cpus']} cpus, load {result['loadavg_1min']}")
    print(result["rig"])
    marks = {(b["topic"], b["figure"]): b for b in result["bars"]}

    def cell(e: dict[str, Any], key: str, fig: str | None = None) -> str:
        v = e[key]
        s = "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        b = marks.get((e["topic"], fig or key))
        if b is not None:
            s += " ok" if b["ok"] else f" FAIL({b['bar']})"
        return s

    cols = [("topic", "topic", None), ("in_fps", "in_fps", None), ("out_fps", "out_fps", None),
            ("cap_fps", "capacity_fps", None), ("age_p50", "age_p50_ms", None), ("age_p99", "age_p99_ms", None),
            ("age_max", "age_max_ms", None), ("superseded", "superseded", None), ("lost", "lost", None),
            ("gaps", "gaps", None), ("first_s", "first_frame_s", None)]
    rows = [[cell(e, k, f) if k != "topic" else e["topic"] for _, k, f in cols] for e in result["streams"]]
    width = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _, _) in enumerate(cols)]
    print("  ".join(f"{h:<{w}s}" if i == 0 else f"{h:>{w}s}" for i, ((h, _, _), w) in enumerate(zip(cols, width))))
    for r in rows:
        print("  ".join(f"{c:<{w}s}" if i == 0 else f"{c:>{w}s}" for i, (c, w) in enumerate(zip(r, width))))
    red = result["recorded_equals_delivered"]
    bad = [t for t, ok in red["streams"].items() if not ok]
    print(f"recorded = delivered: {'yes, every raw stream' if red['all'] else 'NO: ' + ', '.join(bad)} "
          f"({sum(c['recorded'] for c in result['recording'].values())} frames recorded)")
    v = result["view"]
    c = v.get("client") or {}
    print(f"live view: client {c.get('updates')} updates from {c.get('panels')} panels in {c.get('seconds')} s; "
          f"frame → view ack p50 {v.get('acq_to_pixels_ms_p50')} ms, p99 {v.get('acq_to_pixels_ms_p99')} ms")
    su = result.get("recon_startup") or {}
    pre = su.get("preload") or {}
    print(f"recon start-up: reconstructors preloaded in {pre.get('seconds')} s; first frame here -> reconstructor "
          "ready: " + ", ".join(f"{n} {v} s" for n, v in (su.get("ready_after_s") or {}).items()))
    print("stage drops during the warm-up (lost): " + ", ".join(f"{n} {v}" for n, v in
                                                                (su.get("lost_in_warmup") or {}).items()))
    for n, st in (result.get("stage") or {}).items():
        print(f"stage {n}: {st['frames_done']} frames in {st['batches']} calls, process p50 {st['proc_us_p50']} us "
              f"p99 {st['proc_us_p99']} us, age when handed over p50 {st['age_ms_p50']} ms p99 {st['age_ms_p99']} ms; "
              f"worker on a CPU {st['cpu_run_pct']} %, waiting for one {st['cpu_wait_pct']} % of the window")
    g = result.get("gil")
    if g:
        r, p = g["beside_rest"], g["beside_python"]
        print(f"gil: {g['heavy']} beside the other reconstructors: threads {r['threads_sum']}, processes "
              f"{r['processes_sum']} (ratio {r['threads_vs_processes']}; {g['heavy']} alone "
              f"{r['alone']['heavy_fps']} fps, in threads {r['threads']['heavy_fps']}, in processes "
              f"{r['processes']['heavy_fps']}); beside pure Python: threads {p['threads_sum']}, processes "
              f"{p['processes_sum']} (ratio {p['threads_vs_processes']}) [sum of each side's share of its alone "
              f"rate: 1 serialised, 2 parallel; median of {g['repeat']}]")
    late = result.get("simulator_late_ms") or {}
    if late:
        print("simulators late (ms p50/p99/max): " + ", ".join(f"{n} {v['p50']}/{v['p99']}/{v['max']}"
                                                            for n, v in sorted(late.items())))
    failed = [b for b in result["bars"] if not b["ok"]]
    print(f"bars: {len(result['bars']) - len(failed)} of {len(result['bars'])} met"
          + ("" if not failed else "; failed: " + ", ".join(f"{b['topic']} {b['figure']}" for b in failed)))


# -- --under-load ---------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def idle_and_under_load(name: str, run: Callable[[argparse.Namespace], dict[str, Any]],
                        args: argparse.Namespace) -> dict[str, Any]:
    """``run(args)`` once idle and once beside the whole default rig (recorder and live view
    included, not measured), started ``--warmup-s`` seconds before. Without ``--under-load``: just
    ``run(args)``. Returns one row per figure: ``idle``, ``under_load`` and their ratio."""
    if not getattr(args, "under_load", False):
        return run(args)
    warmup = max(0.0, float(getattr(args, "warmup_s", 10.0)))
    _log(f"{name}: idle run")
    idle = run(args)
    _log(f"{name}: starting the rig load (warm-up {warmup:.0f} s)")
    with terminate_as_interrupt(), RigUnderTest(record=True, view=True) as rig:
        rig.start_devices()
        time.sleep(warmup)
        rig.check_alive()
        load0 = os.getloadavg()[0]
        _log(f"{name}: run under load")
        loaded = run(args)
        load1 = os.getloadavg()[0]
        rig.check_alive()  # the figures are only "under load" if the rig ran throughout
    rows = []
    for k in [*idle, *(k for k in loaded if k not in idle)]:
        a, b = idle.get(k), loaded.get(k)
        if k == "benchmark":
            continue
        ratio = round(b / a, 3) if _is_number(a) and _is_number(b) and a else None
        rows.append({"figure": k, "idle": a, "under_load": b, "ratio": ratio})
    return {"benchmark": name, "under_load": "the default rig (bench rig's load: every simulator, daemon, "
            "reconstruction, recorder, live view and a client), not measured",
            "loadavg_1min_under_load": [round(load0, 2), round(load1, 2)], "results": rows}
