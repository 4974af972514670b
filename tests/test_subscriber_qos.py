"""Declared QoS in the public Subscriber: ``latest`` serves only fresh frames and counts what it
replaced; ``fifo`` with ``max_age_ms`` drops stale frames and reports them as gaps. Against a
fast publisher on a real PUB socket, with a slow consumer; ages from the headers' clocks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from medacq.client import QosPolicy, Subscriber
from medacq.protocols.stream import HeaderTemplate, new_series_id

from conftest import free_port

MS = 1_000_000


class FastPublisher(threading.Thread):
    """Frames of one stream at ~``rate_hz`` for ``seconds``, stamped with ``time.time_ns()`` at send."""

    def __init__(self, endpoint: str, rate_hz: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # this test is about the subscriber's queues, not the publisher's
        self.sock.bind(endpoint)
        self.period, self.seconds = 1.0 / rate_hz, seconds
        self.tpl = HeaderTemplate("us0", new_series_id(), "<f4", [16], ["sample"], "")
        self.sent = 0
        self.go = threading.Event()

    def run(self) -> None:
        self.go.wait()
        end = time.monotonic() + self.seconds
        nxt = time.monotonic()
        while time.monotonic() < end:
            seq = self.sent
            self.sock.send_multipart([b"raw/us0", self.tpl.frame(seq, time.time_ns(), time.monotonic_ns()),
                                      np.full(16, seq, "<f4").tobytes()])
            self.sent += 1
            nxt += self.period
            time.sleep(max(0.0, nxt - time.monotonic()))


def _consume(subs: list[Subscriber], pub: FastPublisher, work_s: float) -> list[list[tuple[int, float]]]:
    """Each round: one recv on each subscriber, then ``work_s`` of "work". Returns (seq, age ms) per subscriber."""
    out: list[list[tuple[int, float]]] = [[] for _ in subs]
    while pub.is_alive():
        for i, sub in enumerate(subs):
            m = sub.recv(timeout=0.5)
            if m is not None and m.array is not None:
                out[i].append((m.header["seq"], (time.time_ns() - m.header["t_host_ns"]) / MS))
                assert m.array[0] == m.header["seq"]
        time.sleep(work_s)
    return out


def _rest(sub: Subscriber) -> list[int]:
    return [h["seq"] for h, _ in sub.frames(timeout=0.5)]


def test_latest_serves_fresh_frames_and_superseded_adds_up():
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = FastPublisher(ep, rate_hz=1000, seconds=2.0)
    with Subscriber(ep, "raw/", qos="latest") as latest, Subscriber(ep, "raw/") as plain:
        time.sleep(0.3)
        pub.start()
        pub.go.set()
        got_latest, got_plain = _consume([latest, plain], pub, work_s=0.03)
        pub.join()
        rest = _rest(latest)
        _rest(plain)
    pub.sock.close(0)
    assert len(got_latest) >= 10 and pub.sent >= 500
    ages = [a for _, a in got_latest]
    # the newest frame available: its age is the time since it was sent, not the consumer's backlog
    assert max(ages) < 100, f"latest served frames {max(ages):.0f} ms old"
    # a plain FIFO subscriber at the same pace falls further and further behind
    assert got_plain[-1][1] > 5 * max(ages) and got_plain[-1][1] > 300
    seqs = [s for s, _ in got_latest] + rest
    assert seqs == sorted(set(seqs))  # in order, never twice
    # every frame sent is accounted for: delivered, superseded, or (never, here) lost on the wire
    wire_lost = sum(g.count for g in latest.gaps)
    assert wire_lost == 0 and latest.counters.qos_dropped == 0
    assert len(seqs) + latest.superseded == pub.sent == latest.counters.frames
    assert latest.superseded > pub.sent / 2
    assert seqs[-1] == pub.sent - 1  # the last frame is never superseded away


def test_fifo_max_age_drops_stale_frames_and_reports_them_as_gaps():
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = FastPublisher(ep, rate_hz=500, seconds=1.5)
    with Subscriber(ep, "raw/", qos="fifo", max_age_ms=50) as sub:
        time.sleep(0.3)
        pub.start()
        pub.go.set()
        (got,) = _consume([sub], pub, work_s=0.01)
        pub.join()
    pub.sock.close(0)
    assert got and pub.sent >= 300
    # each frame was at most 50 ms old when taken (+ the few ms until this line measured it)
    assert max(a for _, a in got) < 50 + 15
    local = [g for g in sub.gaps if g.local]
    assert local and all("max_age_ms=50" in g.reason and not g.announced for g in local)
    assert sum(g.count for g in local) == sub.counters.qos_dropped
    # delivered and dropped ranges tile the sequence: nothing lost silently, nothing twice
    seen = [s for s, _ in got]
    dropped = [s for g in local for s in range(g.first_seq, g.first_seq + g.count)]
    assert seen == sorted(seen) and not set(seen) & set(dropped)
    held = sub.counters.frames - len(seen) - len(dropped)  # still queued when the test stopped reading
    assert 0 <= held and sorted(seen + dropped) == list(range(len(seen) + len(dropped)))
    assert sub.superseded == 0


def test_qos_arguments_are_checked():
    ep = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="fifo"):
        Subscriber(ep, max_age_ms=10)
    with pytest.raises(ValueError, match="fifo"):
        Subscriber(ep, qos="latest", max_age_ms=10)
    with pytest.raises(ValueError):
        Subscriber(ep, qos="newest")  # type: ignore[arg-type]
    with Subscriber(ep, qos=QosPolicy(policy="fifo", max_age_ms=5, max_batch=8)) as sub:
        assert sub.qos is not None and sub.qos.max_batch == 1 and sub.qos.max_age_ms == 5
    with Subscriber(ep, qos="lossless") as sub:  # bounded like the socket: frames and bytes
        assert sub.qos is not None and (sub.qos.max_frames, sub.qos.max_bytes) == (1000, 512_000_000)
        assert sub.rcvhwm == 64 and sub.rcvhwm_bound_mb == 512  # 512 MB of frames up to 8 MB
    with Subscriber(ep, rcvhwm_mb=10, max_frame_mb=0.5) as sub:
        assert sub.rcvhwm == 20 and sub.sock.getsockopt(zmq.RCVHWM) == 20
    with Subscriber(ep, rcvhwm=5000) as sub:  # an explicit message mark stays as given
        assert sub.rcvhwm == 5000


def test_periodic_control_messages_do_not_pile_up_behind_a_slow_consumer():
    from medacq.protocols.stream import MessageKind, StreamHeader, encode_header

    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(ep)
    series = new_series_id()
    tpl = HeaderTemplate("us0", series, "<f4", [16], ["sample"], "")
    with Subscriber(ep, "raw/", qos="latest", rcvhwm=0) as sub:
        time.sleep(0.3)
        for _ in range(1000):
            hb = StreamHeader(stream="us0", kind=MessageKind.HEARTBEAT, series=series, seq=0, t_host_ns=1, t_mono_ns=1)
            pub.send_multipart([b"raw/us0", encode_header(hb)])
        pub.send_multipart([b"raw/us0", tpl.frame(0, time.time_ns(), 1), np.zeros(16, "<f4").tobytes()])
        time.sleep(0.5)
        kinds = []
        while (m := sub.recv(timeout=0.3)) is not None:
            kinds.append(m.kind)
    pub.close(0)
    assert kinds == ["heartbeat"] * 256 + ["frame"]
    assert sub.counters.control_coalesced == 1000 - 256
