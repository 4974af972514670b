"""Declared QoS: the sans-I/O queue (protocols/qos.py) under each policy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medacq.protocols.qos import Dropped, QosPolicy, QosQueue

MS = 1_000_000


def drain(q: QosQueue, now_ns: int | None = None) -> list:
    out = []
    while True:
        got = q.take(now_ns)
        if not got:
            return out
        out += got


def test_latest_keeps_only_the_newest_frame_and_counts_superseded():
    q: QosQueue[str] = QosQueue(QosPolicy(policy="latest"))
    q.push_control("series_start")
    for i in range(5):
        q.push_frame(f"f{i}", 100, seq=i)
    q.push_control("descriptor")
    q.push_frame("f5", 100, seq=5)
    assert drain(q) == ["series_start", "descriptor", "f5"]
    assert q.superseded == 5 and q.lost == 0 and q.frames == 0 and q.bytes == 0


def test_fifo_drops_oldest_at_the_frame_bound_and_announces_one_run():
    q: QosQueue[int] = QosQueue(QosPolicy(policy="fifo", max_frames=3))
    for i in range(10):
        q.push_frame(i, 8, seq=i)
    got = drain(q)
    assert got[0] == Dropped(0, 7, got[0].reason) and "queue full" in got[0].reason
    assert got[1:] == [7, 8, 9]
    assert q.lost == 7 and q.superseded == 0


def test_fifo_byte_bound():
    q: QosQueue[int] = QosQueue(QosPolicy(policy="lossless", max_frames=100, max_bytes=1000))
    for i in range(5):
        q.push_frame(i, 400, seq=i)
    assert q.frames == 2 and q.bytes == 800 and q.lost == 3
    big: QosQueue[int] = QosQueue(QosPolicy(max_bytes=10))
    big.push_frame(0, 50, seq=0)  # larger than the bound alone: kept, not dropped forever
    assert drain(big) == [0]


def test_fifo_max_age_drops_stale_frames_in_order_and_keeps_fresh_ones():
    q: QosQueue[int] = QosQueue(QosPolicy(policy="fifo", max_age_ms=50))
    for i in range(4):
        q.push_frame(i, 1, t_ns=i * 10 * MS, seq=i)  # acquired at 0, 10, 20, 30 ms
    q.push_control("gap-from-source")
    q.push_frame(4, 1, t_ns=100 * MS, seq=4)
    got = drain(q, now_ns=65 * MS)  # at 65 ms the frames of 0 and 10 ms are older than 50 ms
    assert isinstance(got[0], Dropped) and (got[0].first_seq, got[0].count) == (0, 2)
    assert "max_age_ms=50" in got[0].reason
    assert got[1:] == [2, 3, "gap-from-source", 4]
    assert q.lost == 2


def test_fifo_max_age_drops_stale_frames_at_the_push_when_nobody_takes():
    """A consumer stuck in a long call takes nothing: the pushes drop what passed the age bound,
    so the queue holds ``max_age_ms`` of frames (6 at 10-ms spacing under 50 ms), not
    ``max_frames`` (512 here) of them; one announcement for the run, in place. Without a
    clock at the push (frames held at start-up) nothing goes."""
    q: QosQueue[int] = QosQueue(QosPolicy(policy="fifo", max_age_ms=50, max_frames=512))
    for i in range(100):
        q.push_frame(i, 1000, t_ns=i * 10 * MS, seq=i, now_ns=i * 10 * MS)
        assert q.frames <= 6 and q.bytes <= 6000
    assert q.lost == 94
    got = drain(q, now_ns=990 * MS)
    assert got[0] == Dropped(0, 94, got[0].reason) and "max_age_ms=50" in got[0].reason
    assert got[1:] == list(range(94, 100))
    held: QosQueue[int] = QosQueue(QosPolicy(policy="fifo", max_age_ms=50))
    for i in range(100):
        held.push_frame(i, 1, t_ns=i * 10 * MS, seq=i, now_ns=None)
    assert held.frames == 64 and held.lost == 36  # only the frame bound (64 here) dropped
    lossless: QosQueue[int] = QosQueue(QosPolicy(policy="lossless"))
    lossless.push_frame(0, 1, t_ns=0, seq=0, now_ns=10_000 * MS)  # no age bound: kept
    assert drain(lossless, now_ns=10_000 * MS) == [0]


def test_batches_stop_at_control_entries_and_at_max_batch():
    q: QosQueue[int | str] = QosQueue(QosPolicy(max_batch=3))
    for i in range(5):
        q.push_frame(i, 1, seq=i)
    q.push_control("end")
    q.push_frame(5, 1, seq=5)
    assert q.take() == [0, 1, 2]
    assert q.take() == [3, 4]
    assert q.take() == ["end"]
    assert q.take() == [5]
    assert q.take() == []


def test_policy_is_validated():
    with pytest.raises(ValidationError):
        QosPolicy(policy="newest")
    with pytest.raises(ValidationError):
        QosPolicy(max_age_ms=0)
    with pytest.raises(ValidationError):
        QosPolicy(policy="fifo", max_frames=4, typo=1)
