"""The publisher: drains every device queue onto one ZeroMQ PUB socket.

It owns the PUB socket (ZeroMQ sockets are not thread-safe) and each stream's outgoing
state: series, next sequence number, header template, descriptor timers. Frames go out
zero-copy as ``[topic, header, payload]``. A hole in the sequence numbers (a frame the
queue dropped) becomes a ``gap`` message before the next frame, so subscribers learn
exactly what was lost and why. Heartbeats and descriptors go out on timers.

Bounded in bytes, not only messages: ZeroMQ's send high-water mark (SNDHWM) counts messages
per subscriber, so 1000 messages of 6 MB frames could pin 6 GB for one stuck subscriber. The
socket is bound with a mark derived from a byte budget per subscriber (:func:`sndhwm_for`:
``daemon.sndhwm_mb / daemon.max_frame_mb``, at least 2, at most ``daemon.sndhwm``). The mark
is fixed at bind time: libzmq copies it into each subscriber's queue when it connects, and
changing it on a live socket is unsafe in libzmq 4.3 (a queue's mark cannot be raised
without a stall, and changing it while a subscriber disconnects can crash the I/O thread).
So the publisher checks every stream against the declared ``max_frame_mb``, from its
descriptor and from each frame, and says so (log, the stream's ``last_error``, ``status``)
when larger frames make the real bound ``mark x frame size``. Past its mark, PUB drops a
subscriber's messages without telling anyone; the subscriber sees the hole in ``seq``
(``medacq.client.Subscriber.gaps``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from medacq.protocols.stream import (
    HeaderTemplate,
    MessageKind,
    StreamDescriptor,
    StreamHeader,
    encode_header,
    frame_nbytes,
    message_hwm,
)

from medacq.daemon.acquisition.queue import (DescriptorUpdate, FrameItem, FrameQueue, GapItem, Notice, QueueItem,
                                             SeriesEnd, SeriesStart)
from medacq.daemon.acquisition.worker import StreamStats

__all__ = ["PREV_SERIES_LISTED", "Publisher", "StreamChannel", "sndhwm_for", "topic_for"]

_SNDMORE = int(zmq.SNDMORE)

log = logging.getLogger("medacq.daemon.acquisition.publisher")

PREV_SERIES_LISTED = 8
"""How many ended series of a stream its control messages list (``meta.prev_series_ends``)."""


def topic_for(stream: str, prefix: str = "raw") -> bytes:
    return f"{prefix}/{stream}".encode()


def sndhwm_for(sndhwm: int, sndhwm_mb: float, max_frame_mb: float) -> int:
    """The PUB socket's send high-water mark (messages per subscriber) that holds at most
    ``sndhwm_mb`` of frames up to ``max_frame_mb`` each, capped at ``sndhwm`` messages.
    Set it before binding."""
    return message_hwm(int(sndhwm_mb * 1e6), int(max_frame_mb * 1e6), sndhwm)


@dataclass
class StreamChannel:
    """Outgoing state of one stream (touched only by the publisher thread)."""

    name: str
    queue: FrameQueue
    stats: StreamStats
    topic: bytes
    series: str | None = None
    next_seq: int = 0
    #: the stream's previous series and its end (the seq its next frame would have had): carried in the
    #: ``meta`` of the new series' control messages, so a subscriber that lost the old series' tail and its
    #: ``series_end`` (a PUB queue past its mark drops silently) still learns how many frames it missed
    prev_series: str | None = None
    prev_end_seq: int = 0
    #: the last :data:`PREV_SERIES_LISTED` series that ended, oldest first, as ``(series, end seq)``: a
    #: subscriber that lost whole series (start, frames and end) between two it saw learns them all
    ended: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=PREV_SERIES_LISTED))
    #: ``meta`` of the current series' control messages (rebuilt when a series ends)
    prev_meta: dict[str, Any] | None = None
    descriptor: StreamDescriptor | None = None
    template: HeaderTemplate | None = None
    last_descriptor: float = 0.0
    last_heartbeat: float = 0.0
    largest_frame_bytes: int = 0
    _rate_t: float = field(default_factory=time.monotonic)
    _rate_frames: int = 0
    _rate_bytes: int = 0


class Publisher(threading.Thread):
    """Publisher thread.

    Args:
        socket: a bound PUB socket (owned from now on by this thread), its SNDHWM set
            before binding (:func:`sndhwm_for`).
        wake: event set by queues when they have items.
        heartbeat_s, descriptor_interval_s: timers.
        max_frame_bytes: the frame size the socket's mark was derived for; a stream with
            larger frames is reported (module docstring). ``None``: no check.

    Attributes:
        sndhwm: the socket's send high-water mark (messages per subscriber).
        largest_frame_bytes: the largest frame any stream announced or sent (bytes).
        oversized: streams whose frames exceed ``max_frame_bytes``.
    """

    def __init__(self, socket: zmq.Socket, wake: threading.Event, heartbeat_s: float = 1.0,
                 descriptor_interval_s: float = 3.0, prefix: str = "raw", *,
                 max_frame_bytes: int | None = None) -> None:
        super().__init__(name="publisher", daemon=True)
        self.sock = socket
        self.wake = wake
        self.heartbeat_s = heartbeat_s
        self.descriptor_interval_s = descriptor_interval_s
        self.prefix = prefix
        self.channels: dict[str, StreamChannel] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.last_progress = time.monotonic()
        self.errors = 0
        self.sndhwm: int = socket.getsockopt(zmq.SNDHWM)
        self.max_frame_bytes = max_frame_bytes
        self.largest_frame_bytes = 0
        self.oversized: tuple[str, ...] = ()  # replaced whole, so status reads it from another thread safely

    def add_stream(self, name: str, queue: FrameQueue, stats: StreamStats, topic: str | None = None) -> StreamChannel:
        """Publish ``queue`` as stream ``name`` on ``<prefix>/<name>``, or on ``topic`` when given
        (``markers/eeg0``: then the channel is keyed by its topic, beside a ``raw/eeg0`` of that name)."""
        ch = StreamChannel(name, queue, stats, topic.encode() if topic else topic_for(name, self.prefix))
        with self._lock:
            self.channels[topic or name] = ch
        return ch

    def stop(self) -> None:
        self._halt.set()
        self.wake.set()

    def hwm_status(self) -> dict[str, Any]:
        """The PUB queue's bounds for ``status``: per subscriber, in messages and MB."""
        largest, declared = self.largest_frame_bytes, self.max_frame_bytes
        frame = max(largest, declared or 0)
        return {"sndhwm": self.sndhwm,
                "max_frame_mb": None if declared is None else round(declared / 1e6, 3),
                "largest_frame_mb": round(largest / 1e6, 3),
                "bound_mb": round(self.sndhwm * frame / 1e6, 3) if self.sndhwm else None,
                "oversized_streams": list(self.oversized)}

    def _frame_size(self, ch: StreamChannel, nbytes: int) -> None:
        """A frame (or an announced frame layout) of ``nbytes``, larger than any before on ``ch``: check it."""
        ch.largest_frame_bytes = nbytes
        self.largest_frame_bytes = max(self.largest_frame_bytes, nbytes)
        limit = self.max_frame_bytes
        if limit is not None and nbytes > limit:
            if ch.name not in self.oversized:
                self.oversized = tuple(sorted((*self.oversized, ch.name)))
            msg = (f"frames of {nbytes / 1e6:.1f} MB exceed [daemon] max_frame_mb = {limit / 1e6:g}: each "
                   f"subscriber's queue may hold {self.sndhwm} x {nbytes / 1e6:.1f} MB; raise max_frame_mb")
            ch.stats.error(msg)
            log.warning("%s: %s", ch.name, msg)

    # -- thread ----------------------------------------------------------------------
    def run(self) -> None:
        while not self._halt.is_set():
            self.wake.wait(0.1)
            self.wake.clear()
            self._drain_all()
            self._timers()
            self.last_progress = time.monotonic()
        self._drain_all()  # series_end messages queued by shutting-down workers

    def _drain_all(self) -> None:
        with self._lock:
            channels = list(self.channels.values())
        busy = True
        while busy:
            busy = False
            for ch in channels:
                for _ in range(64):
                    item = ch.queue.pop()
                    if item is None:
                        break
                    busy = True
                    try:
                        self._send(ch, item)
                    except zmq.ZMQError as exc:
                        if exc.errno == zmq.ETERM:
                            return
                        self.errors += 1
                        ch.stats.error(f"publish failed: {exc}")
                    except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the stream
                        self.errors += 1
                        ch.stats.error(f"publish failed: {type(exc).__name__}: {exc}")
                        log.exception("%s: cannot publish item %s", ch.name, type(item).__name__)

    def _send(self, ch: StreamChannel, item: QueueItem) -> None:
        cls = type(item)
        if cls is FrameItem:
            assert isinstance(item, FrameItem)
            seq, frame = item.seq, item.frame
            if seq != ch.next_seq:
                lost = seq - ch.next_seq
                self._control(ch, MessageKind.GAP, gap_frames=lost, reason="queue overflow (publisher behind)",
                              seq=ch.next_seq)
                ch.stats.gap_frames += lost
            data: np.ndarray = frame.data
            nbytes = data.nbytes
            if nbytes > ch.largest_frame_bytes:
                self._frame_size(ch, nbytes)
            assert ch.template is not None
            shape = data.shape if ch.descriptor is not None and -1 in ch.descriptor.shape else None
            header = ch.template.frame(seq, frame.t_host_ns, frame.t_mono_ns, frame.t_device, frame.meta, shape)
            # three plain sends: send_multipart's per-part checks and enum flags cost more than
            # the send itself for small frames; the payload goes zero-copy (pyzmq copies below
            # its copy_threshold, where copying is cheaper)
            send = self.sock.send
            send(ch.topic, _SNDMORE)
            send(header, _SNDMORE)
            send(data, 0, copy=False)
            ch.next_seq = seq + 1
            st = ch.stats
            st.frames_published += 1
            st.bytes_published += nbytes
            st.latencies_us.append((time.monotonic_ns() - frame.t_mono_ns) / 1000.0)
        elif cls is GapItem:
            assert isinstance(item, GapItem)
            seq, frames, samples, reason = item.seq, item.frames, item.samples, item.reason
            if seq != ch.next_seq:  # frames before the gap were dropped by the queue
                lost = seq - ch.next_seq
                self._control(ch, MessageKind.GAP, gap_frames=lost, reason="queue overflow (publisher behind)")
                ch.stats.gap_frames += lost
            meta = {"lost_samples": samples} if samples is not None else {}
            self._control(ch, MessageKind.GAP, gap_frames=frames, reason=reason, meta=meta, seq=seq)
            ch.next_seq = seq + frames
            ch.stats.gap_frames += frames
            ch.stats.lost_samples += samples or 0
        elif cls is SeriesStart:
            assert isinstance(item, SeriesStart)
            if ch.series is not None:  # a new series without an end: the old one ends here
                self._ended(ch)
            ch.series = item.series
            desc = item.descriptor
            ch.next_seq = 0
            self._set_descriptor(ch, desc)
            self._control(ch, MessageKind.SERIES_START)
            self._descriptor(ch)
        elif cls is SeriesEnd:
            assert isinstance(item, SeriesEnd)
            if ch.series is not None:
                self._control(ch, MessageKind.SERIES_END, reason=item.reason)
                self._ended(ch)
            ch.series = None
        elif cls is DescriptorUpdate:
            assert isinstance(item, DescriptorUpdate)
            if item.descriptor is not None:
                self._set_descriptor(ch, item.descriptor)
            if ch.series is not None:
                self._descriptor(ch)
        elif cls is Notice:
            assert isinstance(item, Notice)
            self.sock.send_multipart((item.topic, item.header))

    def _set_descriptor(self, ch: StreamChannel, desc: StreamDescriptor) -> None:
        ch.descriptor = desc
        assert ch.series is not None
        ch.template = HeaderTemplate(ch.name, ch.series, desc.dtype, desc.shape, desc.axes, desc.units)
        nbytes = frame_nbytes(desc.dtype, desc.shape)  # said before the first such frame goes out
        if nbytes is not None and nbytes > ch.largest_frame_bytes:
            self._frame_size(ch, nbytes)

    @staticmethod
    def _ended(ch: StreamChannel) -> None:
        """The current series of ``ch`` ended (``series_end`` sent, or a new series starts without one)."""
        assert ch.series is not None
        ch.prev_series, ch.prev_end_seq = ch.series, ch.next_seq
        ch.ended.append((ch.series, ch.next_seq))
        ch.prev_meta = {"prev_series": ch.prev_series, "prev_end_seq": ch.prev_end_seq,
                        "prev_series_ends": [{"series": s, "end_seq": e} for s, e in ch.ended]}

    _PREV_KINDS = (MessageKind.SERIES_START, MessageKind.HEARTBEAT, MessageKind.DESCRIPTOR, MessageKind.SERIES_END)

    def _control(self, ch: StreamChannel, kind: MessageKind, seq: int | None = None, **fields) -> None:
        if ch.prev_meta is not None and kind in self._PREV_KINDS:
            fields["meta"] = {**(fields.get("meta") or {}), **ch.prev_meta}
        now_ns = time.time_ns()
        h = StreamHeader(stream=ch.name, kind=kind, series=ch.series or "", seq=ch.next_seq if seq is None else seq,
                         t_host_ns=now_ns, t_mono_ns=time.monotonic_ns(), **fields)
        self.sock.send_multipart((ch.topic, encode_header(h)))

    def _descriptor(self, ch: StreamChannel) -> None:
        d = ch.descriptor
        if d is None:
            return
        self._control(ch, MessageKind.DESCRIPTOR, descriptor=d, dtype=d.dtype, shape=d.shape, axes=d.axes,
                      units=d.units)
        ch.last_descriptor = ch.last_heartbeat = time.monotonic()

    def _timers(self) -> None:
        now = time.monotonic()
        with self._lock:
            channels = list(self.channels.values())
        for ch in channels:
            if ch.series is not None:
                try:
                    if now - ch.last_descriptor >= self.descriptor_interval_s:
                        self._descriptor(ch)
                    elif now - ch.last_heartbeat >= self.heartbeat_s:
                        self._control(ch, MessageKind.HEARTBEAT)
                        ch.last_heartbeat = now
                except zmq.ZMQError:
                    self.errors += 1
            dt = now - ch._rate_t
            if dt >= 1.0:
                st = ch.stats
                st.fps = (st.frames_published - ch._rate_frames) / dt
                st.mbps = (st.bytes_published - ch._rate_bytes) / dt / 1e6
                ch._rate_t, ch._rate_frames, ch._rate_bytes = now, st.frames_published, st.bytes_published
                lat = np.fromiter(st.latencies_us, float) if st.latencies_us else None
                if lat is not None and lat.size:
                    st.latency_us_p50, st.latency_us_p99 = (float(x) for x in np.percentile(lat, [50, 99]))
