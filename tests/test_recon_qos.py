"""The reconstruction stage honours declared quality of service, batches, and is thread-safe.

A test reconstructor that sleeps (registered through the registry's table, as a modality
``sleepy``) stands in for a slow one; frames come from a raw PUB socket with real
``t_host_ns`` clocks, so ages are real.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import zmq
from pydantic import BaseModel, ConfigDict, Field

from medacq.client import ControlClient, RequestFailed, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon import registry
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.registry import resolve_qos
from medacq.daemon.recon.stage import ReconStage
from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import HeaderTemplate, MessageKind, StreamDescriptor, StreamHeader, encode_header

from conftest import run_medacq, wait_for

SERIES = "5d1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a21"
MS = 1_000_000


class SleepySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sleep_ms: float = Field(default=20.0, ge=0, description="time each process() call takes, ms")
    build_ms: float = Field(default=0.0, ge=0, description="time the constructor takes, ms")
    warm_ms: float = Field(default=0.0, ge=0, description="background warm-up after construction, ms")


class SleepyRecon(Reconstructor):
    """Sleeps ``sleep_ms`` per frame; records what it saw, on which thread, and overlaps."""

    modality = "sleepy"
    Settings = SleepySettings
    made: list["SleepyRecon"] = []

    def __init__(self, descriptor: StreamDescriptor, settings: Any = None) -> None:
        super().__init__(descriptor, settings)
        time.sleep(self.settings.build_ms / 1000)
        self.seqs: list[int] = []
        self.gaps: list[tuple[int | None, int]] = []
        self.superseded = 0
        self.actions = 0
        self.threads: set[int] = set()
        self.inside = 0
        self.overlaps = 0
        self.batch_sizes: list[int] = []
        self._warm_until = time.monotonic() + self.settings.warm_ms / 1000
        self.made.append(self)

    @property
    def warming(self) -> bool:
        return time.monotonic() < self._warm_until

    def _enter(self) -> None:
        self.threads.add(threading.get_ident())
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        self._enter()
        try:
            t0 = time.time_ns()
            time.sleep(self.settings.sleep_ms / 1000)
            self.seqs.append(header["seq"])
            return [Output("", frame * np.float32(2), list(self.descriptor.axes),
                           meta={"t_start_ns": t0, "t_done_ns": time.time_ns()})]
        finally:
            self.inside -= 1

    def on_gap(self, first_seq: int | None, count: int) -> None:
        self.gaps.append((first_seq, count))

    def on_superseded(self, count: int) -> None:
        self.superseded += count

    def control(self, action: str, args: dict[str, Any]) -> Any:
        self._enter()
        try:
            if action == "count":
                time.sleep(0.001)
                self.actions += 1
                return {"actions": self.actions, "frames": len(self.seqs)}
            return super().control(action, args)
        finally:
            self.inside -= 1


class LatestSleepy(SleepyRecon):
    """The same, declaring ``latest`` as its default policy."""

    modality = "sleepy-latest"
    qos = QosPolicy(policy="latest")


class BatchSleepy(SleepyRecon):
    """Declares batches of up to 4; one call costs ``sleep_ms`` whatever the batch size."""

    modality = "sleepy-batch"
    max_batch = 4

    def process_batch(self, headers: Sequence[dict[str, Any]], frames: Sequence[np.ndarray]) -> list[list[Output]]:
        self._enter()
        try:
            time.sleep(self.settings.sleep_ms / 1000)
            self.batch_sizes.append(len(frames))
            self.seqs += [h["seq"] for h in headers]
            return [[Output("", f * np.float32(2), list(self.descriptor.axes))] for f in frames]
        finally:
            self.inside -= 1


@pytest.fixture
def sleepy(monkeypatch):
    for cls in (SleepyRecon, LatestSleepy, BatchSleepy):
        monkeypatch.setitem(registry.RECONSTRUCTORS, cls.modality, f"{__name__}:{cls.__name__}")
    made: list[SleepyRecon] = []
    for cls in (SleepyRecon, LatestSleepy, BatchSleepy):
        monkeypatch.setattr(cls, "made", made)
    return made


class Source:
    """A raw PUB socket standing in for the daemon: descriptors, frames with real clocks, series."""

    def __init__(self, cfg, stream: str = "s", shape: Sequence[int] = (2, 2)) -> None:
        self.pub = zmq.Context.instance().socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.bind(cfg.daemon.data_endpoint)
        self.stream = stream
        self.shape = list(shape)
        self.series = SERIES
        self.seq = 0
        self.tpl = HeaderTemplate(stream, self.series, "<f4", self.shape, ["a", "b"], "")

    def descriptor(self, modality: str, stream: str | None = None, **meta: Any) -> None:
        stream = stream or self.stream
        d = StreamDescriptor(stream=stream, modality=modality, dtype="<f4", shape=self.shape, axes=["a", "b"],
                             meta=meta)
        self.pub.send_multipart([f"raw/{stream}".encode(), encode_header(StreamHeader(
            stream=stream, kind=MessageKind.DESCRIPTOR, series=self.series, seq=self.seq, t_host_ns=time.time_ns(),
            t_mono_ns=time.monotonic_ns(), descriptor=d))])

    def new_series(self, series: str) -> None:
        self.pub.send_multipart([f"raw/{self.stream}".encode(), encode_header(StreamHeader(
            stream=self.stream, kind=MessageKind.SERIES_END, series=self.series, seq=self.seq,
            t_host_ns=time.time_ns(), t_mono_ns=time.monotonic_ns(), reason="test"))])
        self.series, self.seq = series, 0
        self.tpl = HeaderTemplate(self.stream, series, "<f4", self.shape, ["a", "b"], "")
        self.pub.send_multipart([f"raw/{self.stream}".encode(), encode_header(StreamHeader(
            stream=self.stream, kind=MessageKind.SERIES_START, series=series, seq=0, t_host_ns=time.time_ns(),
            t_mono_ns=time.monotonic_ns()))])

    def frame(self) -> int:
        seq = self.seq
        self.pub.send_multipart([f"raw/{self.stream}".encode(),
                                 self.tpl.frame(seq, time.time_ns(), time.monotonic_ns()),
                                 np.full(self.shape, seq, "<f4").tobytes()])
        self.seq += 1
        return seq

    def stream_frames(self, n: int, interval_s: float, sub: Subscriber | None = None,
                      into: list | None = None) -> None:
        """``n`` frames, one every ``interval_s``; meanwhile what ``sub`` receives goes ``into``
        the list (a subscriber that does not read meanwhile loses what exceeds its high-water mark)."""
        t = time.monotonic()
        for _ in range(n):
            self.frame()
            t += interval_s
            while True:
                left = t - time.monotonic()
                if sub is None or left <= 0.001:
                    break
                m = sub.recv(timeout=left - 0.001)
                if m is not None and into is not None:
                    into.append(m)
            time.sleep(max(0.0, t - time.monotonic()))

    def close(self) -> None:
        self.pub.close(0)


def _cfg(endpoints, settings: dict | None = None, qos: dict | None = None, **recon: Any):
    return parse_config({**endpoints, "recon": {**endpoints["recon"], "settings": settings or {},
                                                "qos": qos or {}, **recon}})


def _collect(sub: Subscriber, until, timeout: float = 20.0) -> list:
    msgs = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until(msgs):
        m = sub.recv(timeout=0.2)
        if m is not None:
            msgs.append(m)
    return msgs


def _stream(cfg, modality: str, n: int, interval_s: float, until, wait_ready: bool = False,
            settle_s: float = 0.0):
    """A stage started now, once preloaded: the descriptor of ``modality`` (with ``wait_ready``,
    then its reconstructor built), then ``n`` frames every ``interval_s``; the recon output is
    collected until ``until(stage, msgs)`` (60 s at most), then ``settle_s`` more.
    Returns (recon messages, the stream's status, the recon subscriber)."""
    stage = ReconStage(cfg).start()
    src = Source(cfg)
    try:
        with Subscriber(cfg.recon.data_endpoint, "recon/", rcvhwm=0) as rsub:
            time.sleep(0.5)
            # the start-up preload (imports, numba caches) holds the GIL for seconds
            wait_for(lambda: stage.status()["preload"]["seconds"] is not None, 60)
            src.descriptor(modality)
            if wait_ready:
                wait_for(lambda: stage.status()["streams"].get("s", {}).get("reconstructor"), 5)
            msgs: list = []
            src.stream_frames(n, interval_s, rsub, msgs)
            before = list(msgs)
            msgs += _collect(rsub, lambda got: until(stage, before + got), timeout=60)
            if settle_s:
                msgs += _collect(rsub, lambda got: False, timeout=settle_s)
            st = stage.status()["streams"]["s"]
    finally:
        stage.shutdown()
        src.close()
    return msgs, st, rsub


def _stream_from_start(cfg, n: int, interval_s: float):
    """``n`` frames of ``sleepy`` from the stage's start, until all ``n`` came out (:func:`_stream`)."""
    return _stream(cfg, "sleepy", n, interval_s, lambda stage, msgs: sum(m.kind == "frame" for m in msgs) >= n)


def _covered(msgs: list) -> list[int]:
    """Source seqs in the order the output accounts for them: a frame's own, a gap's range."""
    out: list[int] = []
    for m in msgs:
        if m.kind == "frame":
            out.append(m.header["source"]["seq"])
        elif m.kind == "gap":
            first, n = m.header["meta"]["source_seq"], m.header["meta"]["source_gap_frames"]
            out += range(first, first + n)
    return out


def _run_policy(endpoints, modality: str, qos: dict | None, n: int, interval_s: float, sleep_ms: float):
    """Stream ``n`` frames every ``interval_s`` into a reconstructor taking ``sleep_ms``, in steady
    state; wait until the stage has accounted for all of them; return (recon messages, status, recon)."""
    cfg = _cfg(endpoints, {modality: {"sleep_ms": sleep_ms}}, {"s": qos} if qos else None)

    def settled(stage: ReconStage, got: list) -> bool:
        st = stage.status()["streams"]["s"]
        return st["frames_in"] == n and st["queue_frames"] == 0 and stage.streams["s"].busy_what is None \
            and st["frames_done"] + st["superseded"] + st["lost"] + st["errors"] == n

    return _stream(cfg, modality, n, interval_s, settled, wait_ready=True, settle_s=0.5)


def test_latest_serves_fresh_frames_and_counts_the_rest_superseded(endpoints, sleepy):
    """40 ms per frame, a frame every 5 ms: under ``latest`` (the class's own default) every
    published frame is younger than two processing times, and in = out + superseded."""
    msgs, st, rsub = _run_policy(endpoints, "sleepy-latest", None, n=150, interval_s=0.005, sleep_ms=40)
    frames = [m for m in msgs if m.kind == "frame"]
    assert st["policy"] == "latest" and st["qos_source"] == "default"
    assert st["frames_in"] == 150 == st["frames_done"] + st["superseded"]  # in = out + superseded
    assert st["lost"] == 0 and st["errors"] == 0 and st["unprocessed"] == 0
    assert len(frames) == st["frames_done"] and st["superseded"] > 100  # it really was overloaded
    assert rsub.gaps == []  # superseded is not a gap: nothing the consumer asked for is missing
    r = sleepy[0]
    assert r.superseded == st["superseded"] and r.gaps == []
    seqs = [m.header["source"]["seq"] for m in frames]
    assert seqs == sorted(seqs) and seqs[-1] == 149  # the newest frame is always served
    for m in frames:
        meta = m.header["meta"]
        proc = meta["t_done_ns"] - meta["t_start_ns"]
        age_at_publish = meta["t_done_ns"] - m.header["source"]["t_host_ns"]
        assert age_at_publish <= 2 * proc + 5 * MS, (m.header["source"]["seq"], age_at_publish / MS, proc / MS)
    assert st["age_ms_p99"] is not None and st["age_ms_p99"] < 40


def test_fifo_without_an_age_bound_serves_stale_frames(endpoints, sleepy):
    """The contrast: the same load under ``fifo`` (no age bound, frame bound 64) serves frames
    seconds old; the old stage behaved like this (and kept the oldest frames, too)."""
    msgs, st, _ = _run_policy(endpoints, "sleepy", None, n=60, interval_s=0.005, sleep_ms=40)
    frames = [m for m in msgs if m.kind == "frame"]
    assert st["policy"] == "fifo" and st["superseded"] == 0 and st["lost"] == 0 and len(frames) == 60
    last = frames[-1].header
    assert last["meta"]["t_done_ns"] - last["source"]["t_host_ns"] > 1500 * MS  # ~ 60 x 40 ms - 60 x 5 ms


def test_fifo_max_age_drops_stale_frames_as_gaps_in_order(endpoints, sleepy):
    """``[recon.qos.s] policy = "fifo", max_age_ms = 100`` over a 30 ms reconstructor fed every
    5 ms: no frame is published older than the bound plus one processing time; every frame
    not processed reaches the output as a gap, in its place in the order."""
    msgs, st, rsub = _run_policy(endpoints, "sleepy", {"policy": "fifo", "max_age_ms": 100}, n=150,
                                 interval_s=0.005, sleep_ms=30)
    assert st["policy"] == "fifo" and st["qos"]["max_age_ms"] == 100 and st["qos_source"] == "config"
    assert st["frames_in"] == 150 == st["frames_done"] + st["lost"] and st["superseded"] == 0
    assert st["lost"] > 50 and st["errors"] == 0
    for m in msgs:
        h = m.header
        if m.kind == "frame":
            proc = h["meta"]["t_done_ns"] - h["meta"]["t_start_ns"]
            age = h["meta"]["t_done_ns"] - h["source"]["t_host_ns"]
            assert age <= 100 * MS + proc + 5 * MS, (h["source"]["seq"], age / MS)
        elif m.kind == "gap":
            assert "dropped by the reconstruction stage (older than max_age_ms=100)" in h["reason"]
    assert _covered(msgs) == list(range(150))  # every frame once: processed or announced, in order
    assert sum(n for _, n in sleepy[0].gaps) == st["lost"]  # the reconstructor heard of each drop too
    assert all(g.announced and g.count == 0 for g in rsub.gaps)  # the output stream itself lost nothing
    assert st["age_ms_p99"] <= 100 + 10


def test_fifo_max_age_bounds_the_queue_of_a_stuck_reconstructor(endpoints, sleepy):
    """A reconstructor stuck 0.7 s in each call under ``fifo``, ``max_age_ms = 100``, fed 50
    frames/s: the frames that pass the age bound meanwhile are dropped as they come, so the
    queue holds about 100 ms of them (5), never ``max_frames`` (512); every frame is still
    processed or announced, in order."""
    msgs, st, rsub = _run_policy(endpoints, "sleepy", {"policy": "fifo", "max_age_ms": 100}, n=100,
                                 interval_s=0.02, sleep_ms=700)
    assert st["qos"]["max_frames"] == 512 and st["frames_in"] == 100 == st["frames_done"] + st["lost"]
    assert st["queue_high_water"] <= 8, st["queue_high_water"]  # 2 s of frames came while it was stuck
    assert st["lost"] >= 80 and st["errors"] == 0
    assert _covered(msgs) == list(range(100))
    assert sum(n for _, n in sleepy[0].gaps) == st["lost"]


def test_batches_go_to_process_batch_in_order(endpoints, sleepy):
    """A reconstructor that declares ``max_batch`` 4 gets runs of up to 4 queued frames per call."""
    msgs, st, _ = _run_policy(endpoints, "sleepy-batch", None, n=80, interval_s=0.002, sleep_ms=20)
    r = sleepy[0]
    assert st["qos"]["max_batch"] == 4 and st["frames_done"] == 80 and st["lost"] == 0
    singles = 80 - sum(r.batch_sizes)  # a run of one frame goes to process()
    assert max(r.batch_sizes) == 4 and st["batches"] == len(r.batch_sizes) + singles < 40
    frames = [m for m in msgs if m.kind == "frame"]
    assert [m.header["source"]["seq"] for m in frames] == list(range(80)) == r.seqs
    np.testing.assert_array_equal(frames[7].array, np.full((2, 2), 14, np.float32))


def test_fifo_frames_waiting_for_a_build_are_held_not_aged_out(endpoints, sleepy):
    """Start-up under ``fifo`` with ``max_age_ms`` 100: the frames that arrive while the
    reconstructor builds (0.3 s constructor, then 0.7 s warming) are ~1 s old when it is ready,
    yet none is dropped: the age bound counts from readiness. Every frame comes out, in order,
    with no gap, and ``ready_after_s`` says how long the first frame waited."""
    cfg = _cfg(endpoints, {"sleepy": {"sleep_ms": 1, "build_ms": 300, "warm_ms": 700}},
               {"s": {"policy": "fifo", "max_age_ms": 100}})
    msgs, st, rsub = _stream_from_start(cfg, 40, 0.02)  # 0.8 s: all of it while the reconstructor is not ready
    frames = [m for m in msgs if m.kind == "frame"]
    assert [m.header["source"]["seq"] for m in frames] == list(range(40)) == sleepy[0].seqs
    assert st["lost"] == 0 and st["frames_done"] == 40 and st["errors"] == 0 and st["unprocessed"] == 0
    assert [m for m in msgs if m.kind == "gap"] == [] and sleepy[0].gaps == [] and rsub.gaps == []
    first = frames[0].header
    assert first["meta"]["t_start_ns"] - first["source"]["t_host_ns"] > 500 * MS  # it did wait (held, not dropped)
    assert 0.5 < st["ready_after_s"] < 5, st["ready_after_s"]


def test_frames_waiting_for_the_reconstructor_class_are_held_by_the_default_bound(endpoints, sleepy, monkeypatch):
    """At a stage's start a stream's worker may wait seconds for its modality's module, which the
    preload thread is importing just then (scipy.signal: 2.1-2.4 s in ``medacq up``'s first
    seconds). Here the class lookup takes 1.5 s while 150 frames come at 100/s: the queue, not
    yet under the reconstructor's policy, holds all of them under the default bound
    (``[recon] queue_depth``, 512; with 64, 86 of them were dropped as gaps), and every frame
    comes out, in order, with no gap."""
    from medacq.daemon.recon import stage as stage_mod

    real = stage_mod.reconstructor_class
    slow = {"sleepy"}

    def slow_lookup(modality: str):
        if modality in slow:
            slow.discard(modality)
            time.sleep(1.5)
        return real(modality)

    monkeypatch.setattr(stage_mod, "reconstructor_class", slow_lookup)
    cfg = _cfg(endpoints, {"sleepy": {"sleep_ms": 0.5}})
    assert cfg.recon.queue_depth == registry.DEFAULT_QUEUE_DEPTH == 512
    msgs, st, rsub = _stream_from_start(cfg, 150, 0.01)  # 1.5 s: all of it while the class is being looked up
    assert not slow  # the slow lookup happened
    frames = [m for m in msgs if m.kind == "frame"]
    assert st["queue_high_water"] > 64, st  # more than the old default bound waited
    assert [m.header["source"]["seq"] for m in frames] == list(range(150)) == sleepy[0].seqs
    assert st["lost"] == 0 and st["frames_done"] == 150 and st["errors"] == 0
    assert [m for m in msgs if m.kind == "gap"] == [] and sleepy[0].gaps == [] and rsub.gaps == []


def test_preload_status_and_the_publisher_byte_bound(endpoints, sleepy):
    """At start the stage imports and preloads every registered reconstructor (``status.preload``:
    seconds per modality); ``preload=False`` skips it. The PUB socket's high-water mark is the
    daemon's byte rule: ``sndhwm_mb / max_frame_mb`` messages, at most ``sndhwm``."""
    cfg = parse_config({**endpoints, "daemon": {**endpoints["daemon"], "sndhwm": 1000, "sndhwm_mb": 64,
                                                "max_frame_mb": 8}})
    stage = ReconStage(cfg).start()
    try:
        assert stage.sndhwm == 8
        pre = wait_for(lambda: (lambda p: p if p["seconds"] is not None else None)(stage.status()["preload"]), 120)
    finally:
        stage.shutdown()
    assert set(pre["modalities"]) == set(registry.RECONSTRUCTORS)
    assert all(isinstance(v, float) for v in pre["result"].values()), pre["result"]
    stage = ReconStage(cfg, preload=False).start()
    try:
        time.sleep(0.2)
        assert stage.status()["preload"] == {"modalities": [], "seconds": None, "result": None}
    finally:
        stage.shutdown()


def test_warming_reconstructor_gets_no_frames_and_latest_keeps_the_newest(endpoints, sleepy):
    """A reconstructor that builds slowly (0.4 s constructor, then 0.6 s background warm-up):
    ``status`` says ``warming``, frames wait in the queue under ``latest``, and the first frame
    it gets is the newest one."""
    cfg = _cfg(endpoints, {"sleepy-latest": {"sleep_ms": 1, "build_ms": 400, "warm_ms": 600}})
    stage = ReconStage(cfg).start()
    src = Source(cfg)
    try:
        time.sleep(0.4)
        src.descriptor("sleepy-latest")
        warm = []
        last_warm_seq = -1
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            seq = src.frame()
            st = stage.status()["streams"].get("s")
            if st is not None:
                warm.append(st["warming"])
                if st["warming"]:
                    last_warm_seq = seq
            time.sleep(0.01)
        st = wait_for(lambda: (lambda s: s if s["frames_done"] else None)(stage.status()["streams"]["s"]), 5)
    finally:
        stage.shutdown()
        src.close()
    assert True in warm and warm[-1] is False and last_warm_seq > 50
    r = sleepy[0]
    # every frame sent while it warmed but the newest was superseded; that newest went first
    assert r.seqs[0] >= last_warm_seq and st["superseded"] >= last_warm_seq
    assert st["frames_in"] == st["frames_done"] + st["superseded"] + st["unprocessed"] + st["queue_frames"]


def test_actions_status_and_series_changes_while_frames_flow(endpoints, sleepy):
    """Actions from one thread, status from two more, series and new streams from the
    source, frames throughout: actions run on the stream's worker (never during process()),
    every status call succeeds, outputs stay in order with no undetected loss."""
    cfg = _cfg(endpoints, {"sleepy": {"sleep_ms": 2}}, {"s": {"policy": "lossless", "max_frames": 1000}})
    stage = ReconStage(cfg).start()
    src = Source(cfg)
    stop = threading.Event()
    replies: list[Any] = []
    failures: list[BaseException] = []
    statuses = [0]

    def actions() -> None:
        try:
            with ControlClient(cfg.recon.control_endpoint, timeout=5) as c:
                while not stop.is_set():
                    replies.append(c.request("action", target="s", action="count"))
                    with pytest.raises(RequestFailed, match="no action"):
                        c.request("action", target="s", action="explode")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def status_direct() -> None:
        try:
            while not stop.is_set():
                s = stage.status()
                assert s["healthy"], s["problems"]
                statuses[0] += 1
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    def status_remote() -> None:
        try:
            with ControlClient(cfg.recon.control_endpoint, timeout=5) as c:
                while not stop.is_set():
                    assert "s" in c.request("status")["streams"]
                    c.request("list")
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    try:
        with Subscriber(cfg.recon.data_endpoint, "recon/s", rcvhwm=0) as rsub:
            time.sleep(0.5)
            src.descriptor("sleepy")
            wait_for(lambda: stage.status()["streams"].get("s", {}).get("reconstructor"), 5)
            threads = [threading.Thread(target=f) for f in (actions, status_direct, status_remote)]
            for t in threads:
                t.start()
            msgs: list = []
            for k in range(6):
                src.stream_frames(60, 0.002, rsub, msgs)
                src.descriptor("no-such-modality", stream=f"extra{k}")  # streams appear while status iterates
                src.new_series(f"5d1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0b{k:02d}")
                src.descriptor("sleepy")
            src.stream_frames(20, 0.002, rsub, msgs)
            msgs += _collect(rsub, lambda m: stage.status()["streams"]["s"]["frames_done"] == 380, 20)
            stop.set()
            for t in threads:
                t.join(10)
            msgs += _collect(rsub, lambda m: False, timeout=0.5)
            st = stage.status()
    finally:
        stop.set()
        stage.shutdown()
        src.close()
    assert failures == []
    assert len(replies) > 5 and statuses[0] > 20
    r = sleepy[0]
    assert len(sleepy) == 1  # the same descriptor re-sent: the reconstructor is kept
    assert r.overlaps == 0 and len(r.threads) == 1  # actions ran on the worker, between frames
    assert r.actions == len(replies) and [x["actions"] for x in replies] == list(range(1, len(replies) + 1))
    s = st["streams"]["s"]
    assert s["errors"] == 0 and s["frames_done"] == 380 and s["lost"] == 0 and st["healthy"]
    assert {f"extra{k}" for k in range(6)} <= set(st["streams"])
    assert rsub.gaps == []  # seq order intact on every output series: no hole, no reordering
    kinds = [m.kind for m in msgs]
    assert kinds.count("series_start") == 7 and kinds.count("series_end") == 6


def test_a_stuck_worker_makes_the_stage_unhealthy_and_a_late_action_is_never_applied(endpoints, sleepy):
    cfg = _cfg(endpoints, {"sleepy": {"sleep_ms": 1500}})
    stage = ReconStage(cfg)
    stage.stuck_after_s = 0.5
    stage.action_timeout_s = 0.3
    stage.start()
    src = Source(cfg)
    try:
        time.sleep(0.4)
        src.descriptor("sleepy")
        wait_for(lambda: stage.status()["streams"].get("s", {}).get("reconstructor"), 5)
        assert stage.status()["healthy"]
        src.frame()
        st = wait_for(lambda: (lambda s: s if not s["healthy"] else None)(stage.status()), 5)
        assert st["streams"]["s"]["stuck"] and st["streams"]["s"]["busy"] == "process"
        assert any("s: worker stuck in process" in p for p in st["problems"])
        with ControlClient(cfg.recon.control_endpoint, timeout=5) as c:
            t0 = time.monotonic()
            with pytest.raises(RequestFailed, match="not started within 0.3 s"):
                c.request("action", target="s", action="count")
            assert time.monotonic() - t0 < 2.0
        wait_for(lambda: stage.status()["healthy"], 5)  # the call ended: healthy again
        time.sleep(0.3)
    finally:
        stage.shutdown()
        src.close()
    assert sleepy[0].actions == 0 and sleepy[0].seqs == [0]  # refused, and never applied later


def test_hostile_messages_are_counted_and_good_frames_keep_flowing(endpoints, sleepy):
    cfg = _cfg(endpoints, {"sleepy": {"sleep_ms": 0}})
    stage = ReconStage(cfg).start()
    src = Source(cfg)

    def hdr(**over: Any) -> bytes:
        h = json.loads(src.tpl.frame(src.seq, time.time_ns(), time.monotonic_ns()))
        h.update(over)
        return json.dumps(h).encode()

    hostile = [
        [b"raw/s", hdr(dtype="O"), b"\0" * 32],                 # numpy refuses object arrays from a buffer
        [b"raw/s", hdr(), b"\0" * 15],                          # payload size != dtype x shape
        [b"raw/s", hdr(dtype="<q8"), b"\0" * 16],               # no such dtype
        [b"raw/s", hdr(shape=[-2, 2]), b""],                    # negative shape
        [b"raw/s", hdr(shape=["a"]), b"\0" * 4],                # shape not integers
        [b"raw/s", hdr()],                                      # frame without payload
        [b"raw/s", b"\xff\xfe not json"],                       # not UTF-8 JSON
        [b"raw/s"],                                             # no header part
        [b"raw/s", json.dumps({"stream": 5}).encode()],         # required fields missing
    ]
    try:
        with Subscriber(cfg.recon.data_endpoint, "recon/s") as rsub:
            time.sleep(0.5)
            src.descriptor("sleepy")
            wait_for(lambda: stage.status()["streams"].get("s", {}).get("reconstructor"), 5)
            before = stage.bad_messages
            src.frame()
            for parts in hostile:
                src.pub.send_multipart(parts)
                src.frame()
            # decodable but unusable for this stream: a frame error, not a bad message
            src.pub.send_multipart([b"raw/s", hdr(dtype="<f8"), np.zeros((2, 2)).tobytes()])
            src.frame()
            got = list(rsub.frames(timeout=5, max_frames=len(hostile) + 2))
            st = stage.status()
            rx_alive = stage._rx.is_alive()
    finally:
        stage.shutdown()
        src.close()
    assert [h["source"]["seq"] for h, _ in got] == list(range(len(hostile) + 2))
    assert st["bad_messages"] - before == len(hostile) and st["healthy"] and rx_alive
    s = st["streams"]["s"]
    assert s["errors"] == 1 and s["bad_frames"] == 1 and "descriptor says" in s["last_error"]
    assert s["frames_done"] == len(hostile) + 2


def test_resolve_qos_layers_and_the_declared_defaults():
    cls = registry.reconstructor_class
    us, xray, ct, eit, eeg = cls("us"), cls("xray"), cls("ct"), cls("eit"), cls("eeg")
    assert resolve_qos(None, None, 64) == QosPolicy(policy="fifo", max_frames=64, max_batch=1)
    assert resolve_qos(None) == QosPolicy(policy="fifo", max_frames=512, max_batch=1)
    assert resolve_qos(us) == QosPolicy(policy="latest", max_frames=512, max_batch=4)
    assert resolve_qos(xray).policy == "latest" and resolve_qos(eit).policy == "latest"
    assert resolve_qos(ct) == QosPolicy(policy="fifo", max_age_ms=2000, max_frames=512)
    for m in ("eeg", "ekg", "meg"):
        assert resolve_qos(cls(m)) == QosPolicy(policy="fifo", max_age_ms=1000, max_frames=512), m
    assert resolve_qos(cls("synthetic"), None, 8) == QosPolicy(policy="fifo", max_frames=8)
    # the override's fields win, the others stay; an age bound does not survive a policy without one
    assert resolve_qos(us, QosPolicy(policy="fifo")) == QosPolicy(policy="fifo", max_frames=512, max_batch=4)
    assert resolve_qos(eeg, QosPolicy(policy="lossless")) == QosPolicy(policy="lossless", max_frames=512)
    assert resolve_qos(eeg, QosPolicy(max_age_ms=250)).max_age_ms == 250
    assert resolve_qos(us, QosPolicy(max_batch=1, max_frames=3)) == QosPolicy(policy="latest", max_frames=3)


def test_check_config_reports_bad_qos_overrides_with_their_location(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[device]]\nname = "us0"\nkind = "synthetic"\naddress = "socket://127.0.0.1:1"\n\n'
                   '[recon.qos.us0]\npolcy = "latest"\n\n'
                   '[recon.qos.eeg0]\npolicy = "fifo"\n\n'
                   '[recon.qos.us1]\npolicy = "latest"\nmax_age_ms = 100\nmax_batch = 0\n\n'
                   '[recon.isolation]\nus0 = "procss"\nus2 = "thread"\n')
    r = run_medacq("check-config", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    problems = {ln.strip().split(":")[0] for ln in r.stderr.strip().splitlines()[1:]}
    assert problems == {"recon.qos.us0.polcy", "recon.qos.us1.max_batch", "recon.qos.us1.max_age_ms",
                        "recon.qos.us1", "recon.qos.eeg0", "recon.isolation.us0", "recon.isolation.us2"}, r.stderr
    good = tmp_path / "good.toml"
    good.write_text('[[device]]\nname = "us0"\nkind = "synthetic"\naddress = "socket://127.0.0.1:1"\n\n'
                    '[recon.qos.us0]\npolicy = "fifo"\nmax_age_ms = 250\nmax_batch = 4\n\n'
                    '[recon.isolation]\nus0 = "thread"\n')
    r = run_medacq("check-config", str(good))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_bmode_batch_equals_frame_by_frame_and_warms_up_in_the_background(tmp_path, monkeypatch):
    from medacq.daemon.recon.modalities.ultrasound import BModeReconstructor
    from medacq.protocols.us_geometry import PlaneWaveAcquisition

    monkeypatch.setenv("MEDACQ_CACHE_DIR", str(tmp_path))
    acq = PlaneWaveAcquisition(angles_deg=(-5.0, 0.0, 5.0), n_samples=512)
    desc = StreamDescriptor(stream="us0", modality="us", dtype="<i2", shape=list(acq.rf_shape),
                            axes=["angle", "element", "sample"], geometry={"acquisition": acq.to_descriptor()})
    r = BModeReconstructor(desc, {"nx": 24, "nz": 20, "z_min_mm": 2, "z_max_mm": 8, "igtl_port": 0,
                                  "backend": "sparse"})
    try:
        assert r.warming or r.beamformer is not None  # the build runs in the background
        assert r.wait_ready(60) and not r.warming
        rng = np.random.default_rng(3)
        frames = [rng.integers(-2000, 2000, acq.rf_shape, dtype=np.int16) for _ in range(3)]
        headers = [{"seq": i, "t_host_ns": 0} for i in range(3)]
        one = [r.process(h, f) for h, f in zip(headers, frames)]
        batch = r.process_batch(headers, frames)
        assert len(batch) == 3 and r.frames_skipped_warmup == 0
        for a, b in zip(one, batch):
            assert a[0].data.shape == (20, 24)
            np.testing.assert_allclose(a[0].data, b[0].data, atol=1e-3)
        assert not np.allclose(batch[0][0].data, batch[1][0].data)  # three different images
    finally:
        r.close()


def test_reconstructor_errors_inside_a_batch_count_per_frame(endpoints, sleepy, monkeypatch):
    def broken(self, headers, frames):
        raise ReconstructorError("batch refused")

    monkeypatch.setattr(BatchSleepy, "process_batch", broken)
    msgs, st, _ = _run_policy(endpoints, "sleepy-batch", {"policy": "lossless"}, n=40, interval_s=0.001,
                              sleep_ms=5)
    assert st["policy"] == "lossless" and st["frames_done"] + st["errors"] == 40
    assert "batch of" in st["last_error"] and "batch refused" in st["last_error"]
    assert st["errors"] > 0 and not [m for m in msgs if m.kind == "frame" and m.header["source"]["seq"] is None]


def test_a_stuck_worker_starves_the_systemd_watchdog(endpoints, sleepy, tmp_path, monkeypatch):
    """``run_forever`` pings WATCHDOG=1 while healthy, says UNHEALTHY and stops pinging while a
    worker is stuck in process() (systemd would restart the stage), and resumes after."""
    from test_ops_notify import NotifyListener

    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    cfg = _cfg(endpoints, {"sleepy": {"sleep_ms": 2000}})
    stage = ReconStage(cfg)
    stage.stuck_after_s = 0.5
    stage.start()
    src = Source(cfg)
    marks: dict[str, float] = {}
    stop = threading.Event()

    def feed() -> None:
        time.sleep(0.4)
        src.descriptor("sleepy")
        wait_for(lambda: stage.status()["streams"].get("s", {}).get("reconstructor"), 5)
        time.sleep(0.6)
        marks["frame"] = time.monotonic()
        src.frame()  # the worker is inside process() for 2 s from here

    def pump() -> None:
        while not stop.is_set():
            listener.pump(0.1)

    threads = [threading.Thread(target=feed), threading.Thread(target=pump)]
    for t in threads:
        t.start()
    try:
        stage.run_forever(duration_s=4.5)  # shuts the stage down at the end
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        src.close()
    t0 = marks["frame"]
    pings = [t for t, _ in listener.lines("WATCHDOG=1")]
    assert [t for t in pings if t < t0], "pinged while healthy"
    assert not [t for t in pings if t0 + 0.5 + 0.6 < t < t0 + 2.0]  # stuck: no ping (after detection + one period)
    assert [t for t in pings if t > t0 + 2.3], "pings resume once the call ended"
    status = [m for _, m in listener.lines("STATUS=")]
    assert any(m.startswith("STATUS=UNHEALTHY: s: worker stuck in process") for m in status), status
    assert status[-1] == "STATUS=reconstructing"


def test_eit_rate_keeps_its_time_base_across_superseded_frames(tmp_path):
    """Under ``latest`` the EIT reconstructor sees one frame in four; the frames it never saw
    are interpolated into the respiratory-rate window, so the rate stays right (without that,
    the window's time base would be off fourfold)."""
    from medacq.daemon.recon.modalities.eit import EitImager
    from medacq.simulators.eit_phantom import ThoraxPhantom

    fs, rate = 20.0, 18.0
    ph = ThoraxPhantom(n_el=16, seed=11, respiratory_rate_bpm=rate, heart_rate_bpm=75.0, snr_db=55.0)

    def run(tell: bool) -> float | None:
        desc = StreamDescriptor(stream="eit0", modality="eit", dtype="<f4", shape=[208], axes=["measurement"],
                                frame_rate_hz=fs, geometry={"n_el": 16, "pattern": "adjacent"})
        r = EitImager(desc, {"cache_dir": str(tmp_path)})
        assert EitImager.qos.policy == "latest"
        rr = None
        for i in range(int(40 * fs)):
            if i >= 10 and i % 4:
                continue  # superseded in the stage's queue
            if tell and i >= 10 and i % 4 == 0:
                r.on_superseded(3)
            outs = r.process({"seq": i}, ph.frame(i / fs, r.recon.pattern).astype(np.float32))
            if outs:
                rr = outs[1].meta["respiratory_rate_bpm"]
        return rr

    told = run(True)
    assert told is not None and abs(told - rate) < 1.0
    assert run(False) is None  # untold, 40 s of frames fill the 30 s window only to 10 s: no rate yet
