"""The daemon's ``markers/<source>`` streams: software markers and devices' trigger events.

:class:`MarkerHub` owns one publisher channel per marker source, made on its first marker (a
``series_start`` and a descriptor go out first, then the marker: a ``frame`` of the stream
protocol, :mod:`medacq.protocols.markers`). Sequence numbers are given and, for a software
marker, the host clocks read under one lock, so within a source ``seq`` and the clocks increase
together. Any thread may call it (the control thread for ``mark``, device threads for the trigger
events their drivers put in frame ``meta["triggers"]``).

Trigger-bus alignment (:class:`BusAligner`, on when ``[daemon] trigger_reference`` names a
device): every device cabled to the rig's trigger line sees the same edges. Each device's edge
times (its fitted device→host clock) are matched to the reference device's (nearest within
:attr:`BusAligner.window_ns`); the running median of the last :attr:`BusAligner.keep`
differences is that device's offset from the reference, and is removed from its trigger markers
and -- where its frames are stamped by the same fitted clock (``frame_clock``: Cyton, HackEEG) --
from every frame's ``t_host_ns``/``t_mono_ns`` (:meth:`MarkerHub.frame_offset_ns`, applied by
the device's worker). So the streams share the reference's clock: what the fits cannot see
(transport latency, a USB latency timer, a biased envelope) is gone, the reference's own
latency is common to all. Offsets use earlier edges only (a marker is published as its frame
arrives), and none is applied before :attr:`BusAligner.min_matches` matches. Edges on line
``frame_start`` (a device's own frame start) are not bus edges and are not matched.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from medacq.drivers._base import Frame
from medacq.protocols.markers import (FRAME_TRIGGERS_KEY, MarkerError, TriggerEvent, check_source,
                                      encode_marker_text, marker_descriptor, marker_topic)
from medacq.protocols.stream import new_series_id

from medacq.daemon.acquisition.publisher import Publisher
from medacq.daemon.acquisition.queue import FrameItem, FrameQueue, SeriesEnd, SeriesStart
from medacq.daemon.acquisition.worker import StreamStats

__all__ = ["BusAligner", "MarkerHub", "FRAME_TRIGGERS_KEY"]

log = logging.getLogger("medacq.daemon.markers")


@dataclass
class _Source:
    queue: FrameQueue
    stats: StreamStats
    series: str
    seq: int = 0
    last_mono_ns: int = 0


class BusAligner:
    """Per-device offsets from the reference device, from the edges of one shared trigger line.

    Args:
        reference: the device whose edge times define the timeline.
        window_ns: an edge of another device matches the reference's nearest edge within this
            (ns); edges of the line must be further apart than twice this (default 40 ms).
        keep: differences in each device's running median (default 50).
        min_matches: matches before an offset is given (default 5).

    Thread-safe: device threads call :meth:`observe` and :meth:`offset_ns`.
    """

    pending_s = 2.0
    """How long (s) an edge waits for its partner on the other side."""

    def __init__(self, reference: str, window_ns: int = 40_000_000, keep: int = 50, min_matches: int = 5) -> None:
        self.reference = reference
        self.window_ns = int(window_ns)
        self.keep = int(keep)
        self.min_matches = int(min_matches)
        self._lock = threading.Lock()
        self._ref: deque[int] = deque(maxlen=256)
        self._pending: dict[str, deque[int]] = {}
        self._diffs: dict[str, deque[int]] = {}
        self._offset: dict[str, int] = {}
        self._frame_clock: dict[str, bool] = {}
        self.matched = 0
        self.unmatched = 0

    def _match(self, device: str, t_dev: int, t_ref: int) -> None:
        d = self._diffs.setdefault(device, deque(maxlen=self.keep))
        d.append(t_dev - t_ref)
        self.matched += 1
        if len(d) >= self.min_matches:
            self._offset[device] = int(statistics.median(d))

    def observe(self, device: str, t_mono_ns: int, frame_clock: bool = False) -> None:
        """An edge of the shared line seen by ``device`` at fitted time ``t_mono_ns``."""
        with self._lock:
            self._frame_clock[device] = frame_clock
            horizon = t_mono_ns - int(self.pending_s * 1e9)
            if device == self.reference:
                self._ref.append(t_mono_ns)
                for dev, q in self._pending.items():
                    left = deque(maxlen=q.maxlen)
                    for t in q:
                        if abs(t - t_mono_ns) <= self.window_ns:
                            self._match(dev, t, t_mono_ns)
                        elif t >= horizon:
                            left.append(t)
                        else:
                            self.unmatched += 1
                    self._pending[dev] = left
                return
            best = min(self._ref, key=lambda r: abs(r - t_mono_ns), default=None)
            if best is not None and abs(best - t_mono_ns) <= self.window_ns:
                self._match(device, t_mono_ns, best)
            else:
                self._pending.setdefault(device, deque(maxlen=64)).append(t_mono_ns)

    def offset_ns(self, device: str) -> int | None:
        """``device``'s clock minus the reference's (ns), or ``None`` while unknown (0 for the reference)."""
        if device == self.reference:
            return 0
        with self._lock:
            return self._offset.get(device)

    def frame_offset_ns(self, device: str) -> int:
        """The offset to remove from ``device``'s frames: its offset where its frames share the
        clock of its trigger events, else 0."""
        with self._lock:
            return self._offset.get(device, 0) if self._frame_clock.get(device) and device != self.reference else 0

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"reference": self.reference, "matched": self.matched, "unmatched": self.unmatched,
                    "offsets_ms": {d: round(o / 1e6, 4) for d, o in self._offset.items()},
                    "frames_corrected": sorted(d for d, f in self._frame_clock.items()
                                               if f and d in self._offset and d != self.reference)}


class MarkerHub:
    """Publishes markers on ``markers/<source>``.

    Args:
        publisher: the daemon's publisher (channels are added to it).
        wake: the publisher's wake event.
        depth: markers a source may queue before the publisher takes them (then dropped and
            announced as a gap).
        trigger_reference: the device the others' trigger-bus edges are aligned to
            (:class:`BusAligner`); ``None``: no alignment.

    Attributes:
        published: markers handed to the publisher (count); ``refused``: bad ones (count).
    """

    max_sources = 64
    """Most marker sources (each is a publisher channel); further names are refused."""

    def __init__(self, publisher: Publisher, wake: threading.Event, depth: int = 4096,
                 trigger_reference: str | None = None) -> None:
        self.aligner = BusAligner(trigger_reference) if trigger_reference else None
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
                meta = {"origin": "trigger", "line": ev.line, "edge": ev.edge, "sample": ev.sample,
                        "period_s": ev.period_s}
                off = 0
                al = self.aligner
                if al is not None and ev.line != "frame_start":
                    o = al.offset_ns(device)  # from earlier edges only
                    al.observe(device, ev.t_mono_ns, ev.frame_clock)
                    off = o or 0
                    meta.update(t_mono_ns_fit=ev.t_mono_ns, bus_offset_ns=o)
                self.mark(device, ev.text, t_mono_ns=ev.t_mono_ns - off, t_host_ns=ev.t_host_ns - off,
                          t_device=ev.t_device, meta=meta)
                n += 1
            except MarkerError as exc:
                self.refused += 1
                log.warning("%s: trigger event refused: %s", device, exc)
        return n

    def frame_offset_ns(self, device: str) -> int:
        """What ``device``'s worker removes from each frame's clocks (ns; 0 without alignment)."""
        return self.aligner.frame_offset_ns(device) if self.aligner is not None else 0

    def close(self, reason: str = "daemon shutdown") -> None:
        """End every marker series (before the publisher stops)."""
        with self._lock:
            for src in self._sources.values():
                src.queue.put_control(SeriesEnd(reason))
                src.stats.state = "stopped"

    def status(self) -> dict[str, Any]:
        """The ``markers`` entry of the daemon's ``status``."""
        with self._lock:
            out = {"published": self.published, "refused": self.refused, "out_of_order": self.out_of_order,
                   "sources": {n: {"topic": marker_topic(n), "seq": s.seq, "dropped": s.queue.dropped}
                               for n, s in self._sources.items()}}
        if self.aligner is not None:
            out["trigger_alignment"] = self.aligner.status()
        return out
