"""Subscriber gap tracking across series (review 15, D4): a subscriber that follows a stream reports
the head of a new series it did not see, also after a ``series_end``; a late joiner reports nothing
for the frames published before it joined. Over a real PUB socket."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from medacq.client import Subscriber
from medacq.protocols.stream import HeaderTemplate, MessageKind, StreamHeader, encode_header, new_series_id

from conftest import free_port

TOPIC = b"raw/s0"


class _Pub:
    def __init__(self) -> None:
        self.ep = f"tcp://127.0.0.1:{free_port()}"
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.bind(self.ep)

    def control(self, kind: MessageKind, series: str, seq: int) -> None:
        h = StreamHeader(stream="s0", kind=kind, series=series, seq=seq, t_host_ns=time.time_ns(),
                         t_mono_ns=time.monotonic_ns())
        self.sock.send_multipart([TOPIC, encode_header(h)])

    def frames(self, series: str, seqs: range) -> None:
        tpl = HeaderTemplate("s0", series, "<f4", [4], ["sample"], "")
        for seq in seqs:
            self.sock.send_multipart([TOPIC, tpl.frame(seq, time.time_ns(), time.monotonic_ns()),
                                      np.full(4, seq, "<f4").tobytes()])


def _joined(sub: Subscriber, pub: _Pub, series: str, seq: int) -> None:
    """Heartbeats (of ``series``, carrying the next frame's ``seq``) until the subscriber has seen one."""
    deadline = time.monotonic() + 10
    while "raw/s0" not in sub.tracks:
        assert time.monotonic() < deadline
        pub.control(MessageKind.HEARTBEAT, series, seq)
        sub.recv(timeout=0.05)


def _drain(sub: Subscriber, last_seq: int) -> list[int]:
    """The seqs of the frames received, up to the one numbered ``last_seq``."""
    seqs: list[int] = []
    deadline = time.monotonic() + 10
    while last_seq not in seqs:
        assert time.monotonic() < deadline, seqs
        m = sub.recv(timeout=0.2)
        if m is not None and m.array is not None:
            seqs.append(m.header["seq"])
    return seqs


def _gaps(sub: Subscriber) -> list[tuple[str, int | None, int, str]]:
    return [(g.series, g.first_seq, g.count, g.reason) for g in sub.gaps]


def test_a_series_whose_start_was_missed_after_a_series_end_is_a_head_gap():
    pub = _Pub()
    a, b, c = new_series_id(), new_series_id(), new_series_id()
    with Subscriber(pub.ep, "raw/") as sub:
        pub.control(MessageKind.SERIES_START, a, 0)
        _joined(sub, pub, a, 0)
        pub.frames(a, range(0, 5))
        pub.control(MessageKind.SERIES_END, a, 5)
        # series b: its series_start and frames 0..6 never reach this subscriber (dropped at a HWM)
        pub.frames(b, range(7, 10))
        pub.control(MessageKind.SERIES_END, b, 10)
        # series c: first seen at a heartbeat carrying the next frame's seq 3
        pub.control(MessageKind.HEARTBEAT, c, 3)
        pub.frames(c, range(3, 6))
        seqs = _drain(sub, 5)
    pub.sock.close(0)
    assert seqs[-6:] == [7, 8, 9, 3, 4, 5]
    assert _gaps(sub) == [(b, 0, 7, "missing seq (series start not seen)"),
                          (c, 0, 3, "missing seq (series start not seen)")]
    assert sub.counters.gap_frames == 10


def test_a_late_joiner_reports_no_gap_for_what_was_published_before_it_joined():
    pub = _Pub()
    a, b = new_series_id(), new_series_id()
    pub.control(MessageKind.SERIES_START, a, 0)
    pub.frames(a, range(0, 40))  # before the subscriber exists
    with Subscriber(pub.ep, "raw/") as sub:
        _joined(sub, pub, a, 40)  # first message: a heartbeat of series a at seq 40
        pub.frames(a, range(40, 45))
        pub.frames(a, range(46, 48))  # 45 lost: a real gap
        pub.control(MessageKind.SERIES_END, a, 48)
        pub.control(MessageKind.SERIES_START, b, 0)
        pub.frames(b, range(0, 3))
        seqs = _drain(sub, 2)
    with Subscriber(pub.ep, "raw/") as late:  # joins mid-series, first message a frame at seq > 0
        deadline = time.monotonic() + 10
        nxt = 3
        while not late.tracks:
            assert time.monotonic() < deadline
            pub.frames(b, range(nxt, nxt + 1))
            nxt += 1
            late.recv(timeout=0.05)
        pub.frames(b, range(nxt, nxt + 3))
        late_seqs = _drain(late, nxt + 2)
    pub.sock.close(0)
    assert seqs == [40, 41, 42, 43, 44, 46, 47, 0, 1, 2]
    assert _gaps(sub) == [(a, 45, 1, "missing seq")]
    assert late_seqs[-3:] == [nxt, nxt + 1, nxt + 2] and late_seqs[0] > 0
    assert late.gaps == []


def test_frames_deadline_ends_the_loop_while_heartbeats_keep_coming():
    """``frames(timeout=)`` counts silence, and heartbeats are not silence: with a publisher that
    only sends heartbeats the loop would never end. ``deadline`` ends it whatever arrives; the frames
    sent before it are still yielded."""
    pub = _Pub()
    series = new_series_id()
    with Subscriber(pub.ep, "raw/") as sub:
        _joined(sub, pub, series, 0)
        pub.frames(series, range(3))
        stop = time.monotonic() + 3.0
        def beat() -> None:
            while time.monotonic() < stop:
                pub.control(MessageKind.HEARTBEAT, series, 3)
                time.sleep(0.02)

        t = threading.Thread(target=beat, daemon=True)
        t.start()
        t0 = time.monotonic()
        got = [h["seq"] for h, _ in sub.frames(timeout=1.0, deadline=0.6)]
        took = time.monotonic() - t0
        t.join()
    assert got == [0, 1, 2]
    assert 0.55 <= took < 2.5, took  # the deadline: heartbeats go on for 3 s, then 1 s of silence


def test_a_lost_series_end_and_tail_is_reported_when_the_next_series_names_it():
    """The daemon's control messages of a new series carry the previous series and where it ended
    (``meta.prev_series``/``prev_end_seq``): a subscriber that lost the old series' last frames AND
    its ``series_end`` (a PUB queue past its mark drops silently) reports those frames, attributed to
    the old series; one that saw the ``series_end`` reports nothing twice."""
    pub = _Pub()
    old, new = new_series_id(), new_series_id()
    with Subscriber(pub.ep, "raw/") as sub:
        _joined(sub, pub, old, 0)
        pub.frames(old, range(0, 5))
        assert _drain(sub, 4) == [0, 1, 2, 3, 4]
        # frames 5..9 and the series_end of `old` never reach this subscriber; the new series starts
        h = StreamHeader(stream="s0", kind=MessageKind.SERIES_START, series=new, seq=0, t_host_ns=time.time_ns(),
                         t_mono_ns=time.monotonic_ns(), meta={"prev_series": old, "prev_end_seq": 10})
        pub.sock.send_multipart([TOPIC, encode_header(h)])
        pub.frames(new, range(0, 3))
        assert _drain(sub, 2) == [0, 1, 2]
        assert _gaps(sub) == [(old, 5, 5, "missing seq (end of the previous series not seen)")]
        # the same with the series_end seen: no second report
        pub.control(MessageKind.SERIES_END, new, 3)
        newer = new_series_id()
        h = StreamHeader(stream="s0", kind=MessageKind.SERIES_START, series=newer, seq=0, t_host_ns=time.time_ns(),
                         t_mono_ns=time.monotonic_ns(), meta={"prev_series": new, "prev_end_seq": 3})
        pub.sock.send_multipart([TOPIC, encode_header(h)])
        pub.frames(newer, range(0, 2))
        assert _drain(sub, 1) == [0, 1]
        assert len(_gaps(sub)) == 1
