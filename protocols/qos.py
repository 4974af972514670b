"""Declared quality of service: what a consumer of a stream needs, and the queue that honours it.

Sans-I/O (no threads, no clocks: the caller passes the time), so the reconstruction stage and
:class:`medacq.client.Subscriber` use the same rules. Three policies:

* ``latest`` — only the newest frame matters (B-mode, fluoroscopy, EIT images, live view): one
  frame slot; a frame replaced before it was taken is counted as ``superseded``, reported
  apart from ``lost`` (a choice, not a fault), and leaves no gap (nothing the consumer
  asked for is missing).
* ``fifo`` — every frame in order while it is fresh enough (biosignal filters, CT projections):
  with ``max_age_ms`` a frame older than the bound when it would be taken is dropped; when a
  bound on frames or bytes is reached the *oldest* frame is dropped. Both are counted as
  ``lost`` and announced: a :class:`Dropped` entry takes the dropped frames' place in order.
* ``lossless`` — the recorder: like ``fifo`` without an age bound; a loss only happens when a
  bound is reached (the consumer cannot keep up), and it is counted and announced. Nothing
  ever waits: acquisition is never stalled by a consumer.

Control entries (descriptors, series start/end, gaps) are never dropped or reordered; they
are rare and small, and they do not count against the frame bounds.

Ages are nanoseconds of whatever clock the caller uses for ``t_ns`` and ``now_ns`` (the stage
uses the frames' ``t_host_ns``, CLOCK_REALTIME of the acquiring host, and ``time.time_ns()``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Dropped", "QosPolicy", "QosQueue", "QosName"]

QosName = Literal["latest", "fifo", "lossless"]
T = TypeVar("T")


class QosPolicy(BaseModel):
    """A consumer's declared needs for one stream.

    Attributes:
        policy: ``latest``, ``fifo`` or ``lossless`` (module docstring).
        max_age_ms: ``fifo`` only: frames older than this when taken are dropped (ms).
        max_frames: most frames held (``latest`` always holds one).
        max_bytes: most frame payload bytes held (a frame larger than the bound alone is kept).
        max_batch: most frames handed to the consumer per take (1: frame by frame).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: QosName = "fifo"
    max_age_ms: float | None = Field(default=None, gt=0)
    max_frames: int = Field(default=64, ge=1)
    max_bytes: int = Field(default=256 << 20, ge=1)
    max_batch: int = Field(default=1, ge=1, le=1024)


@dataclass(slots=True)
class Dropped:
    """``count`` frames from ``first_seq`` on were dropped here, in this place of the order."""

    first_seq: int | None
    count: int
    reason: str


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    frame: bool
    nbytes: int
    t_ns: int | None
    seq: int | None


class QosQueue(Generic[T]):
    """A bounded queue of frames and control entries under one :class:`QosPolicy`.

    Not thread-safe: the caller holds a lock around :meth:`push` and :meth:`take`.

    Attributes:
        superseded: frames replaced under ``latest`` before they were taken (count).
        lost: frames dropped under ``fifo``/``lossless`` (age or bound), each announced (count).
        frames, bytes: frames and payload bytes held now.
        high_water: most frames ever held.
    """

    def __init__(self, policy: QosPolicy | None = None) -> None:
        self.policy = policy or QosPolicy()
        self._q: deque[_Entry[T] | Dropped] = deque()
        self.frames = 0
        self.bytes = 0
        self.superseded = 0
        self.lost = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._q)

    def set_policy(self, policy: QosPolicy) -> None:
        """Change the policy; frames held beyond the new bounds are dropped at the next push."""
        self.policy = policy

    # -- producer ------------------------------------------------------------------------
    def push_control(self, item: T) -> None:
        """A control entry: kept, in order."""
        self._q.append(_Entry(item, False, 0, None, None))

    def push_frame(self, item: T, nbytes: int, t_ns: int | None = None, seq: int | None = None,
                   now_ns: int | None = None) -> None:
        """A frame of ``nbytes`` payload, acquired at ``t_ns``, numbered ``seq`` by its source.

        ``now_ns``: under ``fifo`` with ``max_age_ms``, frames older than the bound at
        ``now_ns`` are dropped (and announced) first, as :meth:`take` does: a consumer that
        does not take (stuck in a long call) then holds at most ``max_age_ms`` of frames, not
        ``max_frames`` of them. ``None``: no age drops now (frames held at start-up)."""
        p = self.policy
        if now_ns is not None:
            self._drop_stale(now_ns)
        if p.policy == "latest":
            if self.frames:
                self.superseded += self.frames
                self._q = deque(e for e in self._q if not (isinstance(e, _Entry) and e.frame))
                self.frames = self.bytes = 0
        else:
            while self.frames and (self.frames >= p.max_frames or self.bytes + nbytes > p.max_bytes):
                self._drop_oldest(f"{p.policy} queue full ({self.frames} frames, {self.bytes} bytes held)")
        self._q.append(_Entry(item, True, nbytes, t_ns, seq))
        self.frames += 1
        self.bytes += nbytes
        if self.frames > self.high_water:
            self.high_water = self.frames

    def _drop_oldest(self, reason: str) -> None:
        for i, e in enumerate(self._q):
            if isinstance(e, _Entry) and e.frame:
                self._replace_with_drop(i, e, reason)
                return

    def _replace_with_drop(self, i: int, e: _Entry[T], reason: str) -> None:
        self.frames -= 1
        self.bytes -= e.nbytes
        self.lost += 1
        prev = self._q[i - 1] if i > 0 else None
        if (isinstance(prev, Dropped) and prev.reason == reason and prev.first_seq is not None
                and e.seq is not None and prev.first_seq + prev.count == e.seq):
            prev.count += 1  # one announcement for a run of consecutive frames
            del self._q[i]
        else:
            self._q[i] = Dropped(e.seq, 1, reason)

    def _drop_stale(self, now_ns: int) -> None:
        """Under ``fifo`` with ``max_age_ms``: drop (and announce, in place) the frames at the
        head older than the bound at ``now_ns``."""
        p = self.policy
        if p.policy != "fifo" or p.max_age_ms is None:
            return
        limit = int(p.max_age_ms * 1e6)
        i = 0
        while i < len(self._q):
            e = self._q[i]
            if isinstance(e, _Entry) and e.frame:
                if e.t_ns is None or now_ns - e.t_ns <= limit:
                    break  # frames arrive in order: the rest are younger
                before = len(self._q)
                self._replace_with_drop(i, e, f"older than max_age_ms={p.max_age_ms:g}")
                if len(self._q) < before:
                    continue  # merged into the previous announcement
            i += 1

    # -- consumer ------------------------------------------------------------------------
    def take(self, now_ns: int | None = None) -> list[T | Dropped]:
        """The next entries: one control entry or :class:`Dropped`, or a run of up to
        ``max_batch`` consecutive frames (oldest first). Empty when nothing is held.

        Under ``fifo`` with ``max_age_ms``, frames at the head older than the bound at
        ``now_ns`` are dropped first (and announced).
        """
        p = self.policy
        if now_ns is not None:
            self._drop_stale(now_ns)
        if not self._q:
            return []
        head = self._q[0]
        if isinstance(head, Dropped) or not head.frame:
            self._q.popleft()
            return [head if isinstance(head, Dropped) else head.item]
        out: list[T | Dropped] = []
        while self._q and len(out) < p.max_batch:
            e = self._q[0]
            if isinstance(e, Dropped) or not e.frame:
                break
            self._q.popleft()
            self.frames -= 1
            self.bytes -= e.nbytes
            out.append(e.item)
        return out
