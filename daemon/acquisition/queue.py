"""The typed frame queue between a driver's worker thread and the publisher.

Items are small typed classes, one per kind (no tagged tuples): the worker puts
:class:`FrameItem` with :meth:`FrameQueue.put_frame` (bounded, dropped and counted when full)
and the control items with :meth:`FrameQueue.put_control` (never dropped); the publisher pops
them in order and turns each into a stream message (:mod:`medacq.protocols.stream`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from medacq.drivers._base import Frame
from medacq.protocols.stream import StreamDescriptor

__all__ = ["DescriptorUpdate", "Frame", "FrameItem", "FrameQueue", "GapItem", "Notice", "QueueItem", "SeriesEnd",
           "SeriesStart"]


@dataclass(frozen=True, slots=True)
class FrameItem:
    """Frame number ``seq`` of the current series (0-based, per series)."""

    seq: int
    frame: Frame


@dataclass(frozen=True, slots=True)
class GapItem:
    """``frames`` frames (``samples`` samples, if the device counts them) lost from ``seq`` on, and why."""

    seq: int
    frames: int
    samples: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class SeriesStart:
    """A new series (uuid ``series``) starts with this descriptor; ``seq`` restarts at 0."""

    series: str
    descriptor: StreamDescriptor


@dataclass(frozen=True, slots=True)
class SeriesEnd:
    """The current series ended (device stopped, connection lost, reconfigured)."""

    reason: str


@dataclass(frozen=True, slots=True)
class DescriptorUpdate:
    """Publish a descriptor now: a new one (same series) or, with ``None``, the current one again."""

    descriptor: StreamDescriptor | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A two-part message published as it is, in order with the stream's other items (the
    ``safety/<device>`` messages): ``topic`` and an encoded header."""

    topic: bytes
    header: bytes


QueueItem = FrameItem | GapItem | SeriesStart | SeriesEnd | DescriptorUpdate | Notice




class FrameQueue:
    """Bounded single-producer queue between a driver thread and the publisher.

    Bounded twice: at most ``depth`` frames and at most ``max_bytes`` of frame payload (so a
    stream of 6 MB detector frames cannot hold gigabytes). A frame beyond either bound is
    dropped and counted; control items (series start/end, gaps, descriptors) are never dropped
    (they are rare and tiny).
    """

    __slots__ = ("_q", "depth", "max_bytes", "bytes", "dropped", "_wake", "high_water", "_lock")

    def __init__(self, depth: int, wake: threading.Event, max_bytes: int = 1 << 62) -> None:
        self._q: deque[QueueItem] = deque()
        self.depth = depth
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0
        self.high_water = 0
        self._wake = wake
        self._lock = threading.Lock()

    def put_frame(self, item: FrameItem) -> bool:
        """Queue a frame; ``False`` (and counted in ``dropped``) when a bound is reached."""
        n = len(self._q)
        size = item.frame.data.nbytes
        if n >= self.depth or (n and self.bytes + size > self.max_bytes):
            self.dropped += 1
            return False
        with self._lock:
            self.bytes += size
        self._q.append(item)
        if n + 1 > self.high_water:
            self.high_water = n + 1
        self._wake.set()
        return True

    def put_control(self, item: QueueItem) -> None:
        """Queue a series start/end, gap or descriptor update; never dropped."""
        self._q.append(item)
        self._wake.set()

    def pop(self) -> QueueItem | None:
        try:
            item = self._q.popleft()
        except IndexError:
            return None
        if type(item) is FrameItem:
            with self._lock:
                self.bytes -= item.frame.data.nbytes
        return item

    def __len__(self) -> int:
        return len(self._q)
