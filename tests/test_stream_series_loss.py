"""A stalled subscriber that loses whole series' worth of messages (issue 14, chaos bench: frames
"unreported"). The daemon's own :class:`Publisher` and :class:`Subscriber` over a real ZeroMQ socket
(``inproc``: the pipe holds exactly the two high-water marks, no kernel buffers); the subscriber
stops reading while the publisher ends series and starts new ones, its queue drops what does not
fit (series_end and series_start included), then it reads on. Every frame it never received must
be in a gap of its series, once."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import zmq

from medacq.client import Subscriber
from medacq.daemon.acquisition.publisher import Publisher, StreamChannel
from medacq.daemon.acquisition.queue import DescriptorUpdate, FrameItem, FrameQueue, SeriesEnd, SeriesStart
from medacq.daemon.acquisition.worker import StreamStats
from medacq.drivers._base import Frame
from medacq.protocols.stream import StreamDescriptor, new_series_id

_DESC = StreamDescriptor(stream="s0", modality="synthetic", dtype="<f4", shape=[2], axes=["x"])
_HWM = 4  # send and receive marks: the stalled pipe holds 8 messages
_ids = itertools.count()


class _Rig:
    """One stream ``s0`` published by the daemon's :class:`Publisher` (timers off: control messages only
    when asked), what it published, and a stalled-then-reading subscriber."""

    def __init__(self, hwm: int = _HWM) -> None:
        self.ctx = zmq.Context.instance()
        self.ep = f"inproc://series-loss-{next(_ids)}"
        sock = self.ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.ep)
        self.wake = threading.Event()
        self.q = FrameQueue(100_000, self.wake)
        self.pub = Publisher(sock, self.wake, heartbeat_s=3600.0, descriptor_interval_s=3600.0)
        self.ch: StreamChannel = self.pub.add_stream("s0", self.q, StreamStats())
        self.pub.start()
        self.published: dict[str, int] = {}  # series -> frames published (seq 0 .. n-1)
        self.order: list[str] = []
        self.sub = Subscriber(self.ep, "raw/", rcvhwm=hwm, context=self.ctx)
        self.got: dict[str, set[int]] = {}

    def close(self) -> None:
        self.sub.close()
        self.pub.stop()
        self.pub.join(2)
        self.pub.sock.close(0)

    # publishing -------------------------------------------------------------------------------
    def start(self) -> str:
        s = new_series_id()
        self.q.put_control(SeriesStart(s, _DESC))
        self.published[s] = 0
        self.order.append(s)
        return s

    def frames(self, n: int) -> None:
        s = self.order[-1]
        for _ in range(n):
            seq = self.published[s]
            self.q.put_frame(FrameItem(seq, Frame(np.full(2, seq, "<f4"), time.time_ns(), time.monotonic_ns())))
            self.published[s] = seq + 1

    def end(self) -> None:
        self.q.put_control(SeriesEnd("test"))

    def describe(self) -> None:
        """The current series' descriptor now (as the publisher's timer sends it every few seconds)."""
        self.q.put_control(DescriptorUpdate(None))

    def sent(self) -> None:
        """Wait until the publisher has sent (or its socket dropped) everything queued."""
        deadline = time.monotonic() + 5
        while len(self.q):
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(0.05)  # the item popped last is being sent

    # receiving ---------------------------------------------------------------------------------
    def join(self) -> None:
        """Until the subscriber has received a message (inproc subscriptions take a moment)."""
        deadline = time.monotonic() + 5
        while not self.sub.tracks:
            assert time.monotonic() < deadline
            self.describe()
            self.sent()
            self.read()

    def settle(self) -> None:
        """Control messages of the current series until the subscriber has read everything (as the
        publisher's heartbeats do): libzmq's writer learns of the reader's progress in steps, so a
        message sent right after a read can still find the pipe full."""
        for _ in range(3):
            self.describe()
            self.sent()
            self.read()

    def read(self) -> int:
        n = 0
        while (m := self.sub.recv(timeout=0.05)) is not None:
            n += 1
            if m.array is not None:
                self.got.setdefault(m.header["series"], set()).add(m.header["seq"])
        return n

    # accounting -------------------------------------------------------------------------------
    def unreported(self) -> dict[str, list[int]]:
        """Per series: frames published, never received, in no gap of that series."""
        out = {}
        for s, n in self.published.items():
            lost = set(range(n)) - self.got.get(s, set())
            for g in self.sub.gaps:
                if g.series == s and g.first_seq is not None:
                    lost -= set(range(g.first_seq, g.first_seq + g.count))
            if lost:
                out[s] = sorted(lost)
        return out

    def reported(self) -> int:
        return sum(g.count for g in self.sub.gaps)

    def missed(self) -> int:
        return sum(n - len(self.got.get(s, ())) for s, n in self.published.items())


@pytest.fixture
def rig():
    r = _Rig()
    yield r
    r.close()


def test_tail_lost_and_the_next_series_first_seen_as_a_frame(rig: _Rig) -> None:
    """The bench's case: the old series' tail and its series_end, the new series' start and
    descriptor are dropped; the first message of the new series that gets through is a frame (no
    ``meta``). The old tail is reported when a later control message of the new series names it."""
    a1 = rig.start()
    rig.join()
    rig.frames(5)
    rig.sent()
    rig.read()
    # stalled: the pipe keeps the first 8 messages (frames 5..12 of a1), drops the rest
    rig.frames(35)
    rig.end()
    a2 = rig.start()
    rig.frames(20)
    rig.sent()
    rig.read()
    k = max(rig.got[a1]) + 1  # what the stalled pipe held: at most its two marks
    assert rig.got[a1] == set(range(k)) and 5 < k <= 5 + 2 * _HWM
    rig.frames(5)  # a2's frames 20..24: its first message here
    rig.sent()
    rig.read()
    assert rig.got[a2] and min(rig.got[a2]) >= 20  # a2's first message here is one of these frames
    rig.describe()  # the new series' descriptor names the old one and its end
    rig.describe()  # twice: reported once
    rig.sent()
    rig.read()
    rig.end()
    rig.start()
    rig.frames(3)
    rig.settle()
    assert rig.unreported() == {}
    assert rig.reported() == rig.missed() >= (40 - k) + 20  # (and what the pipe dropped since)
    tail = [g for g in rig.sub.gaps if g.series == a1]
    assert [(g.first_seq, g.count, g.announced) for g in tail] == [(k, 40 - k, False)]


def test_a_whole_series_lost_between_two_seen_ones(rig: _Rig) -> None:
    """The old series' tail, a whole series (start, frames, end) and the next one's start are dropped:
    the next series' control messages list the series before it, so both are reported."""
    a1 = rig.start()
    rig.join()
    rig.frames(5)
    rig.sent()
    rig.read()
    rig.frames(35)
    rig.end()
    a2 = rig.start()
    rig.frames(30)
    rig.end()
    a3 = rig.start()
    rig.frames(10)
    rig.sent()
    rig.read()
    rig.frames(5)
    rig.sent()
    rig.read()
    assert a2 not in rig.got and rig.got[a3] and min(rig.got[a3]) >= 10
    rig.settle()
    assert rig.unreported() == {}
    assert rig.reported() == rig.missed() >= (40 - max(rig.got[a1]) - 1) + 30 + 10
    whole = [(g.first_seq, g.count) for g in rig.sub.gaps if g.series == a2]
    assert whole == [(0, 30)]


def test_more_series_lost_than_the_daemon_lists(rig: _Rig) -> None:
    """Ten whole series lost: the eight the daemon lists are reported with their frames; the old
    tail, whose end is no longer listed, is reported as a loss of unknown size (count 0)."""
    a1 = rig.start()
    rig.join()
    rig.frames(5)
    rig.sent()
    rig.read()
    rig.frames(35)
    rig.end()
    lost = []
    for _ in range(10):
        lost.append(rig.start())
        rig.frames(3)
        rig.end()
    last = rig.start()
    rig.frames(4)
    rig.sent()
    rig.read()
    rig.settle()
    by_series = {g.series: (g.first_seq, g.count) for g in rig.sub.gaps}
    assert all(by_series[s] == (0, 3) for s in lost[2:])  # listed: every frame reported
    assert lost[0] not in by_series and lost[1] not in by_series  # beyond the list
    assert by_series[a1] == (max(rig.got[a1]) + 1, 0)  # the tail's end is not listed any more: size unknown
    assert any(g.count == 0 and g.first_seq is None and "beyond" in g.reason for g in rig.sub.gaps)
    assert set(rig.unreported()) == {a1, lost[0], lost[1]}
    assert rig.published[last] == 4


def test_a_late_joiner_reports_nothing_of_the_series_before_it() -> None:
    """The list names series published before this subscriber joined: none of them is its loss."""
    rig = _Rig(hwm=1000)  # nothing dropped on the way: every gap would be a false report
    try:
        _late_joiner(rig)
    finally:
        rig.close()


def _late_joiner(rig: _Rig) -> None:
    for _ in range(3):
        rig.start()
        rig.frames(4)
        rig.end()
    rig.start()
    rig.join()
    rig.frames(3)
    rig.describe()
    rig.end()
    rig.start()
    rig.frames(2)
    rig.settle()
    assert rig.sub.gaps == []
    assert rig.ch.prev_series == rig.order[-2] and rig.ch.prev_end_seq == 3


def test_series_lists_from_a_broken_publisher_are_skipped_not_fatal() -> None:
    from medacq.daemon.client.api import _series_ends

    assert _series_ends({"prev_series_ends": [{"series": "a", "end_seq": 3}, {"series": 5, "end_seq": 1},
                                              {"series": "b", "end_seq": -1}, "x", {"series": "c", "end_seq": 2.5},
                                              {"series": "d", "end_seq": True}, {"series": "e", "end_seq": 0}]}) == [
        ("a", 3), ("e", 0)]
    assert _series_ends({"prev_series": "a", "prev_end_seq": 7}) == [("a", 7)]  # an older daemon
    assert _series_ends({"prev_series": "a", "prev_end_seq": "7"}) == []
    assert _series_ends({"prev_series_ends": "nonsense", "prev_series": "a", "prev_end_seq": 7}) == [("a", 7)]
    assert len(_series_ends({"prev_series_ends": [{"series": str(i), "end_seq": i} for i in range(10_000)]})) == 64
