"""The daemon's ``markers/<source>`` streams: software markers and devices' trigger events.

:class:`MarkerHub` owns one publisher channel per marker source, made on its first marker (a
``series_start`` and a descriptor go out first, then the marker: a ``frame`` of the stream
protocol, :mod:`medacq.protocols.markers`). Sequence numbers are given and, for a software
marker, the host clocks read under one lock, so within a source ``seq`` and the clocks increase
together. Any thread may call it (the control thread for ``mark``, device threads for the trigger
events their drivers put in frame ``meta["triggers"]``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from medacq.drivers._base import Frame
from medacq.protocols.markers import (FRAME_TRIGGERS_KEY, MarkerError, TriggerEvent, check_source,
                                      encode_marker_text, marker_descriptor, marker_topic)
from medacq.protocols.stream import new_series_id

from medacq.daemon.acquisition.publisher import Publisher
from medacq.daemon.acquisition.queue import FrameItem, FrameQueue, SeriesEnd, SeriesStart
from medacq.daemon.acquisition.worker import StreamStats

__all__ = ["MarkerHub", "FRAME_TRIGGERS_KEY"]

log = logging.getLogger("medacq.daemon.markers")


@dataclass
class _Source:
    queue: FrameQueue
    stats: StreamStats
    series: str
    seq: int = 0
    last_mono_ns: int = 0


class MarkerHub:
    """Publishes markers on ``markers/<source>``.

    Args:
        publisher: the daemon's publisher (channels are added to it).
        wake: the publisher's wake event.
        depth: markers a source may queue before the publisher takes them (then dropped and
            announced as a gap).

    Attributes:
        published: markers handed to the publisher (count); ``refused``: bad ones (count).
    """

    max_sources = 64
    """Most marker sources (each is a publisher channel); further names are refused."""

    def __init__(self, publisher: Publisher, wake: threading.Event, depth: int = 4096) -> None:
        self.publisher = publisher
        self.wake = wake
        self.depth = depth
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self.published = 0
        self.refused = 0
        self.out_of_order = 0

    def _source(self, name: str) -> _Source:
        src = self._sources.get(name)
        if src is None:
            check_source(name)
            if len(self._sources) >= self.max_sources:
                raise MarkerError(f"more than {self.max_sources} marker sources; {name!r} refused "
                                  f"(sources: {', '.join(sorted(self._sources)[:8])}...)")
            q = FrameQueue(self.depth, self.wake)
            stats = StreamStats(state="acquiring")
            series = new_series_id()
            self.publisher.add_stream(name, q, stats, topic=marker_topic(name))
            q.put_control(SeriesStart(series, marker_descriptor(name)))
            src = self._sources[name] = _Source(q, stats, series)
            stats.series = series
        return src

    def mark(self, source: str, text: str, *, t_mono_ns: int | None = None, t_host_ns: int | None = None,
             t_device: float | int | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish one marker; the host clocks are read now unless given. Returns its topic, seq and
        clocks. Raises :class:`~medacq.protocols.markers.MarkerError` for a bad label or source."""
        try:
            payload = encode_marker_text(text)
            check_source(source)
        except MarkerError:
            self.refused += 1
            raise
        with self._lock:
            try:
                src = self._source(source)
            except MarkerError:
                self.refused += 1
                raise
            if t_mono_ns is None:
                t_mono_ns, t_host_ns = time.monotonic_ns(), time.time_ns()
            elif t_host_ns is None:
                t_host_ns = t_mono_ns + (time.time_ns() - time.monotonic_ns())
            if t_mono_ns < src.last_mono_ns:
                self.out_of_order += 1  # a device's fit moved back a little: still published, counted
            src.last_mono_ns = max(src.last_mono_ns, t_mono_ns)
            seq = src.seq
            src.seq += 1
            m = {"text": text, "origin": "software", **(meta or {})}
            ok = src.queue.put_frame(FrameItem(seq, Frame(payload, int(t_host_ns), int(t_mono_ns), t_device, m)))
            src.stats.frames_acquired += 1
            self.published += ok
        return {"topic": marker_topic(source), "seq": seq, "series": src.series, "t_host_ns": int(t_host_ns),
                "t_mono_ns": int(t_mono_ns), "queued": ok}

    def triggers(self, device: str, events: Any) -> int:
        """A device thread's frame carried ``meta["triggers"]``: publish each on ``markers/<device>``.
        Bad entries are counted in :attr:`refused`, never raised. Returns how many were published."""
        n = 0
        for d in events if isinstance(events, list) else [events]:
            try:
                ev = TriggerEvent.from_meta(d)
                self.mark(device, ev.text, t_mono_ns=ev.t_mono_ns, t_host_ns=ev.t_host_ns, t_device=ev.t_device,
                          meta={"origin": "trigger", "line": ev.line, "edge": ev.edge, "sample": ev.sample,
                                "period_s": ev.period_s})
                n += 1
            except MarkerError as exc:
                self.refused += 1
                log.warning("%s: trigger event refused: %s", device, exc)
        return n

    def close(self, reason: str = "daemon shutdown") -> None:
        """End every marker series (before the publisher stops)."""
        with self._lock:
            for src in self._sources.values():
                src.queue.put_control(SeriesEnd(reason))
                src.stats.state = "stopped"

    def status(self) -> dict[str, Any]:
        """The ``markers`` entry of the daemon's ``status``."""
        with self._lock:
            return {"published": self.published, "refused": self.refused, "out_of_order": self.out_of_order,
                    "sources": {n: {"topic": marker_topic(n), "seq": s.seq, "dropped": s.queue.dropped}
                                for n, s in self._sources.items()}}
