"""Client side of medacq: :class:`Subscriber` for frames, :class:`ControlClient` for requests.

Public as :mod:`medacq.client`::

    from medacq.client import Subscriber
    with Subscriber(topics="raw/eeg0") as sub:  # no endpoints: the local rig's (ipc:// by default)
        for header, frame in sub:          # frame: ndarray, e.g. (channel, sample)
            ...
        print(sub.gaps)                    # every missing seq range, announced or not
        print(sub.bad_messages, sub.last_error)  # undecodable messages, skipped

    # a live display: only the newest frame of each stream, never a stale one
    with Subscriber("tcp://127.0.0.1:5555", "raw/us0", qos="latest") as sub:
        ...
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from medacq.protocols.control import ControlReply, decode_reply, encode_request
from medacq.protocols.qos import Dropped, QosName, QosPolicy, QosQueue
from medacq.protocols.stream import StreamDecodeError, decode_message, message_hwm

from medacq.daemon.client.keys import ClientKeys
from medacq.daemon.client.runtime import local_rig_endpoints

_NOBLOCK = int(zmq.NOBLOCK)

DEFAULT_RCVHWM_MB: float = 512.0
"""Receive queue bound (MB) of a :class:`Subscriber` given neither ``rcvhwm`` nor ``rcvhwm_mb``: 64
messages of ``DEFAULT_FRAME_MB`` (the daemon's send side holds up to 256 more per subscriber)."""
DEFAULT_RCVHWM_CAP: int = 1000
"""Most messages a byte-derived receive high-water mark allows."""
DEFAULT_FRAME_MB: float = 8.0
"""Frame size (MB) a byte-derived receive high-water mark assumes without ``max_frame_mb``
(as the daemon's ``max_frame_mb``: a 1536 x 1944 16-bit flat panel fits)."""
_DRAIN_MAX = 4096
"""Most messages one :meth:`Subscriber.recv` moves from the socket into the QoS queues."""
_MAX_CONTROL = 256
"""Control messages a stream's QoS queue holds before periodic ones (heartbeats, descriptors) are not queued."""
_PERIODIC = frozenset(("heartbeat", "descriptor"))

__all__ = [
    "Subscriber",
    "Message",
    "GapInfo",
    "ControlClient",
    "DaemonUnreachable",
    "RequestFailed",
]

log = logging.getLogger("medacq.client")


@dataclass(frozen=True, slots=True)
class GapInfo:
    """Frames of a stream that a subscriber will never see.

    Attributes:
        stream, series: where (``series`` of the lost frames: for the tail of a series, or a whole
            series, this subscriber never saw the end of, reported when a later series' control message
            lists it, that series, not the current one).
        first_seq: first missing sequence number (``None`` for a samples-only device gap, or for whole
            series lost beyond the 8 the daemon lists).
        count: how many frames (``last = first_seq + count - 1``); 0 for a samples-only gap, or a loss
            whose size is unknown (the end of a series older than every series the daemon lists).
        announced: the daemon announced the loss (``gap`` message: queue overflow, device
            counter jump) -- versus detected here from a hole in ``seq`` (this
            subscriber fell behind its high-water mark, or the network dropped it).
        reason: the daemon's reason, ``"missing seq"``, or for ``local`` gaps why they were dropped.
        lost_samples: device samples lost, when the daemon knows.
        topic: the stream's topic.
        local: this subscriber dropped them itself, from its QoS queue (``qos="fifo"`` frames
            older than ``max_age_ms``, or a queue at its frame/byte bound); they reached it intact.
    """

    stream: str
    series: str
    first_seq: int | None
    count: int
    announced: bool
    reason: str
    lost_samples: int | None = None
    topic: str = ""
    local: bool = False

    @property
    def last_seq(self) -> int | None:
        return None if self.first_seq is None or self.count == 0 else self.first_seq + self.count - 1


@dataclass(slots=True)
class Message:
    """One decoded message: topic, header (dict), and for frames the payload array."""

    topic: str
    header: dict[str, Any]
    array: np.ndarray | None = None

    @property
    def kind(self) -> str:
        kind: str = self.header["kind"]  # decode_header checked it is one of MessageKind's values
        return kind


_PREV_LISTED = 8
"""How many ended series the daemon's control messages list (``PREV_SERIES_LISTED`` of its publisher)."""
_PREV_PARSED = 64
"""Most entries of ``meta.prev_series_ends`` read (a longer list is cut, never an error)."""
_SEQ_MAX = (1 << 63) - 1
"""Largest ``end_seq`` read (as the recorder's int64 gap columns)."""
_LEFT_MAX = 16
"""Series of one stream a :class:`Subscriber` remembers having left without their ``series_end``."""
_DONE_MAX = 64
"""Series of one stream a :class:`Subscriber` remembers as accounted for (ended, or their loss reported)."""


@dataclass
class _StreamTrack:
    topic: str = ""
    stream: str = ""
    series: str | None = None
    expected: int | None = None
    frames: int = 0
    descriptor: dict[str, Any] | None = None
    #: series left without their ``series_end`` (a message of a newer series came first) -> the seq
    #: expected next; their tail is reported when a control message names where they ended
    left: dict[str, int] = field(default_factory=dict)
    #: series accounted for (ended by ``series_end``, or their loss reported), oldest first
    done: dict[str, None] = field(default_factory=dict)

    def leave(self) -> None:
        """The followed series is over here: ended (``expected`` None) or left with its tail unseen."""
        if self.series is None:
            return
        if self.expected is None:
            self.account(self.series)
        else:
            self.left[self.series] = self.expected
            while len(self.left) > _LEFT_MAX:
                self.account(next(iter(self.left)))

    def account(self, series: str) -> None:
        self.left.pop(series, None)
        self.done[series] = None
        while len(self.done) > _DONE_MAX:
            del self.done[next(iter(self.done))]


@dataclass
class _Counters:
    """What a :class:`Subscriber` has seen.

    Attributes:
        messages: messages received (good and bad).
        frames, bytes: frames decoded and their payload bytes.
        bad_messages: messages that could not be decoded (skipped, or raised with ``errors="raise"``).
        gap_frames: frames reported missing in :attr:`Subscriber.gaps` (wire and local).
        superseded: ``qos="latest"``: frames replaced by a newer one before they were taken
            (received intact, not missing, not gaps).
        qos_dropped: frames this subscriber's QoS queue dropped (too old, or at its bound);
            also in ``gap_frames``, as ``local`` gaps.
        control_coalesced: heartbeats and descriptors not queued because their stream's QoS
            queue already held 256 control messages (a consumer far behind); what they say is
            already in :attr:`Subscriber.tracks`, :attr:`~Subscriber.descriptors` and the gaps.
        gap_events: gaps reported (``on_gap`` calls), all of them.
        gaps_forgotten: the oldest entries dropped from :attr:`Subscriber.gaps` to keep it
            within ``max_gaps`` (still counted in ``gap_events`` and ``gap_frames``).
    """

    messages: int = 0
    frames: int = 0
    bytes: int = 0
    bad_messages: int = 0
    gap_frames: int = 0
    superseded: int = 0
    qos_dropped: int = 0
    control_coalesced: int = 0
    gap_events: int = 0
    gaps_forgotten: int = 0

    @property
    def bad_headers(self) -> int:
        """Former name of :attr:`bad_messages`."""
        return self.bad_messages


class Subscriber:
    """Subscribe to medacq streams and iterate ``(header, ndarray)`` frames.

    Args:
        endpoints: one or more PUB endpoints (the daemon's and the reconstruction stage's).
            ``None``: the local rig's (:func:`medacq.daemon.client.runtime.local_rig_endpoints`:
            the default ``ipc://`` sockets in the runtime directory when a daemon listens there,
            else ``medacq up``'s TCP ports), the daemon's and the stage's both.
        topics: topic prefixes (``"raw/"``, ``"recon/us0"``); ``""`` for everything.
        on_gap: called with each :class:`GapInfo` as it is detected.
        errors: ``"skip"`` (default: an undecodable message -- bad JSON, header, dtype, size,
            part count -- is counted in :attr:`bad_messages`, its text kept in
            :attr:`last_error`, and skipped; good frames keep coming) or ``"raise"`` (raise
            :class:`~medacq.protocols.stream.StreamDecodeError` naming the stream).
        qos: what this consumer needs (:mod:`medacq.protocols.qos`). ``None`` (default):
            messages in arrival order straight from the socket. ``"latest"``: each
            :meth:`recv` first moves everything the socket holds into a one-frame slot per
            stream and returns the newest frame; replaced frames are counted in
            :attr:`superseded`, not reported as gaps. ``"fifo"``: every frame in order, but
            with ``max_age_ms`` a frame older than that when taken (by its ``t_host_ns``
            against this host's clock) is dropped and reported as a ``local`` gap.
            ``"lossless"``: every frame in order; a local drop happens only at the queue's
            bound, and is reported. A :class:`~medacq.protocols.qos.QosPolicy` sets the bounds
            too. Frames of one stream stay in order; streams take turns.
        max_age_ms: ``qos="fifo"`` only: the age bound (ms).
        rcvhwm, rcvhwm_mb: the receive queue's bounds. ZeroMQ counts messages, so a byte
            bound becomes the message high-water mark ``rcvhwm_mb / max_frame_mb`` (at least
            2, at most ``rcvhwm``), fixed when the socket connects. Neither given: 512 MB of
            frames up to 8 MB, at most 1000 messages: a mark of 64 (the daemon's send side holds
            256 more by default, the kernel's socket buffers and the publisher's per-subscriber queue hold more). ``rcvhwm`` alone: exactly that many messages, no byte bound (``0``:
            unlimited). With ``qos`` each stream's QoS queue is bounded by the same frames
            and bytes. :attr:`rcvhwm_bound_mb` is the bound in force for the frames seen.
        max_frame_mb: the largest frame this consumer accepts (MB): a larger payload is a bad
            message, and ZeroMQ disconnects a peer that sends a larger part
            (``ZMQ_MAXMSGSIZE``). ``None``: no limit (the byte bound assumes 8 MB frames).
        curve: client keys when the daemon uses CurveZMQ (see :mod:`medacq.daemon.common.security`).
        max_gaps: :attr:`gaps` keeps at least the newest ``max_gaps`` entries (at most twice
            that: the oldest half is dropped at once), so a subscription that runs for weeks on
            a lossy link does not grow without bound; every gap is still counted
            (``counters.gap_events``, ``gap_frames``) and passed to ``on_gap``.
    """

    def __init__(
        self,
        endpoints: str | list[str] | None = None,
        topics: str | list[str] = "",
        *,
        on_gap: Callable[[GapInfo], None] | None = None,
        errors: str = "skip",
        qos: QosName | QosPolicy | None = None,
        max_age_ms: float | None = None,
        rcvhwm: int | None = None,
        rcvhwm_mb: float | None = None,
        max_frame_mb: float | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: ClientKeys | None = None,
        max_gaps: int = 10_000,
    ) -> None:
        if max_gaps < 1:
            raise ValueError("max_gaps must be >= 1")
        self.max_gaps = max_gaps
        if errors not in ("raise", "skip"):
            raise ValueError("errors must be 'raise' or 'skip'")
        if (rcvhwm is not None and rcvhwm < 0) or (rcvhwm_mb is not None and rcvhwm_mb <= 0) or (
                max_frame_mb is not None and max_frame_mb <= 0):
            raise ValueError("rcvhwm must be >= 0, rcvhwm_mb and max_frame_mb > 0 (or None)")
        if rcvhwm is None and rcvhwm_mb is None:
            rcvhwm_mb = DEFAULT_RCVHWM_MB
        self._hwm_cap = DEFAULT_RCVHWM_CAP if rcvhwm is None else rcvhwm
        self._hwm_budget = None if rcvhwm_mb is None else int(rcvhwm_mb * 1e6)
        self._max_payload = None if max_frame_mb is None else int(max_frame_mb * 1e6)
        self._hwm_frame = self._max_payload or int(DEFAULT_FRAME_MB * 1e6)  # the frame size the mark is for
        self.largest_frame_bytes = 0
        """The largest frame received (bytes)."""
        self.qos: QosPolicy | None = _policy(qos, max_age_ms, self._hwm_cap, self._hwm_budget)
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.rcvhwm = message_hwm(self._hwm_budget, self._hwm_frame, self._hwm_cap)
        """The receive high-water mark (messages), fixed at connect (libzmq 4.3 cannot change it
        safely on a live socket)."""
        self.sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self._max_payload is not None:
            self.sock.setsockopt(zmq.MAXMSGSIZE, max(self._max_payload, 1 << 20))
        if curve is not None:
            curve.apply(self.sock)
        for t in [topics] if isinstance(topics, str) else topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        if endpoints is None:
            local = local_rig_endpoints()
            endpoints = [local["daemon"]["data_endpoint"], local["recon"]["data_endpoint"]]
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        for ep in self.endpoints:
            self.sock.connect(ep)
        self.on_gap = on_gap
        self.errors = errors
        self.gaps: list[GapInfo] = []
        """Every gap seen, oldest first (the newest ``max_gaps`` at least; see ``counters.gaps_forgotten``)."""
        self.tracks: dict[str, _StreamTrack] = {}
        self.counters = _Counters()
        self.last_error: str | None = None
        """Text of the last undecodable message's error (``None`` while there was none)."""
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._topic_names: dict[bytes, str] = {}
        self._queues: dict[str, QosQueue[Message]] = {}
        self._ready: deque[str] = deque()  # topics whose queue holds entries, in turn order
        self._waiting: set[str] = set()  # the same topics, for membership
        self._controls: dict[str, int] = {}  # control messages held per topic

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)
        self._queues.clear()
        self._ready.clear()
        self._waiting.clear()
        self._controls.clear()

    @property
    def descriptors(self) -> dict[str, dict[str, Any]]:
        """The latest descriptor of every stream seen, by topic (``raw/eeg0``, ``recon/eeg0/hr``).

        Streams are keyed by topic, not by the header's ``stream`` name: ``raw/eeg0`` and
        ``recon/eeg0`` are different streams that share a name.
        """
        return {k: t.descriptor for k, t in self.tracks.items() if t.descriptor is not None}

    @property
    def bad_messages(self) -> int:
        """Messages that could not be decoded (see :attr:`last_error`)."""
        return self.counters.bad_messages

    @property
    def rcvhwm_bound_mb(self) -> float | None:
        """The most megabytes of frames the socket's queue can hold, for the frames seen so far
        (``None``: no message cap)."""
        if not self.rcvhwm:
            return None
        return self.rcvhwm * max(self._hwm_frame if self._hwm_budget else 0, self.largest_frame_bytes) / 1e6

    @property
    def superseded(self) -> int:
        """``qos="latest"``: frames replaced by a newer one of their stream before :meth:`recv` took them."""
        return self.counters.superseded

    def wait_connected(self, timeout: float = 0.3) -> None:
        """Give the SUB handshake time (ZeroMQ's slow-joiner); drains nothing."""
        time.sleep(timeout)

    # -- receiving ----------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Message | None:
        """Next message of any kind, or ``None`` after ``timeout`` seconds (None: wait forever).

        Undecodable messages are skipped (and counted) within the same wait, unless
        ``errors="raise"``. With ``qos`` the message comes from the QoS queues (class doc).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.qos is not None:
            return self._recv_qos(deadline)
        recv = self.sock.recv
        while True:
            # a queued message is taken without a poll; parts are zmq.Frames (zero-copy), and
            # Frame.more is read without pyzmq's per-part getsockopt(RCVMORE) of recv_multipart
            try:
                f = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                if not self._wait(deadline):
                    return None
                f = recv(copy=False)
            parts = [f]
            while f.more:
                f = recv(copy=False)
                parts.append(f)
            msg = self._decode(parts)
            if msg is not None:
                return msg

    def _wait(self, deadline: float | None) -> bool:
        """Wait for the socket to be readable until ``deadline`` (monotonic s; None: forever)."""
        if deadline is None:
            return bool(self._poller.poll())
        left = deadline - time.monotonic()
        return left > 0 and bool(self._poller.poll(max(0, int(left * 1000))))

    def _recv_qos(self, deadline: float | None) -> Message | None:
        while True:
            self._fill()
            msg = self._take()
            if msg is not None:
                return msg
            if not self._wait(deadline):
                return None

    def _fill(self) -> None:
        """Move what the socket holds (at most ``_DRAIN_MAX`` messages) into the QoS queues."""
        recv = self.sock.recv
        policy = self.qos
        assert policy is not None
        batch = 0
        for _ in range(_DRAIN_MAX):
            try:
                f = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                # a backlog waits upstream (kernel buffers, the publisher's queue) when the
                # socket's own queue was full: libzmq refills it as it is read, so keep going
                # while whole queues' worth keep coming
                if batch < max(1, self.rcvhwm // 2) or not self._poller.poll(1):
                    return
                batch = 0
                continue
            batch += 1
            parts = [f]
            while f.more:
                f = recv(copy=False)
                parts.append(f)
            msg = self._decode(parts)
            if msg is None:
                continue
            q = self._queues.get(msg.topic)
            if q is None:
                q = self._queues[msg.topic] = QosQueue(policy)
            if msg.array is not None:
                before = q.superseded
                q.push_frame(msg, msg.array.nbytes, msg.header["t_host_ns"], msg.header["seq"])
                self.counters.superseded += q.superseded - before
            else:
                held = self._controls.get(msg.topic, 0)
                if held >= _MAX_CONTROL and msg.header["kind"] in _PERIODIC:
                    self.counters.control_coalesced += 1
                    continue
                q.push_control(msg)
                self._controls[msg.topic] = held + 1
            if msg.topic not in self._waiting:
                self._waiting.add(msg.topic)
                self._ready.append(msg.topic)

    def _take(self) -> Message | None:
        """The next message from the QoS queues (streams take turns); local drops become gaps."""
        now = time.time_ns() if self.qos is not None and self.qos.max_age_ms is not None else None
        while self._ready:
            topic = self._ready.popleft()
            q = self._queues[topic]
            got = q.take(now)
            if len(q):
                self._ready.append(topic)
            else:
                self._waiting.discard(topic)
            if not got:
                continue
            entry = got[0]
            if isinstance(entry, Dropped):
                t = self.tracks.get(topic) or _StreamTrack(topic=topic)
                self.counters.qos_dropped += entry.count
                self._gap(t, t.stream, entry.first_seq, entry.count, False, f"dropped here: {entry.reason}",
                          local=True)
                continue
            if entry.array is None:
                self._controls[topic] -= 1
            return entry
        return None

    def _decode(self, parts: list[zmq.Frame]) -> Message | None:
        self.counters.messages += 1
        raw_topic = parts[0].bytes
        topic = self._topic_names.get(raw_topic)
        if topic is None:
            topic = raw_topic.decode("utf-8", "replace")
            if len(self._topic_names) < 4096:
                self._topic_names[raw_topic] = topic
        bufs = ([raw_topic, parts[1].buffer, parts[2].buffer] if len(parts) == 3
                else [raw_topic, *(p.buffer for p in parts[1:])])
        try:
            header, array = decode_message(bufs, topic, max_payload_bytes=self._max_payload)
        except StreamDecodeError as exc:
            c = self.counters
            c.bad_messages += 1
            self.last_error = str(exc)
            if self.errors == "raise":
                raise
            if c.bad_messages <= 10 or c.bad_messages % 1000 == 0:  # a flood must not flood the log
                log.warning("skipping undecodable message #%d on %.80s: %s", c.bad_messages, topic, exc)
            return None
        self._track(header, topic)
        if array is not None:
            self.counters.frames += 1
            nbytes = array.nbytes
            self.counters.bytes += nbytes
            if nbytes > self.largest_frame_bytes:
                self.largest_frame_bytes = nbytes
        return Message(topic, header, array)

    def _gap(self, t: _StreamTrack, stream: str, first: int | None, count: int, announced: bool, reason: str,
             lost_samples: int | None = None, local: bool = False, series: str | None = None) -> None:
        g = GapInfo(stream, (t.series or "") if series is None else series, first, count, announced, reason,
                    lost_samples, t.topic, local)
        self.gaps.append(g)
        if len(self.gaps) > 2 * self.max_gaps:  # amortised O(1): the oldest half at once
            drop = len(self.gaps) - self.max_gaps
            del self.gaps[:drop]
            self.counters.gaps_forgotten += drop
        self.counters.gap_events += 1
        self.counters.gap_frames += count
        if self.on_gap is not None:
            self.on_gap(g)

    def _prev_series(self, t: _StreamTrack, stream: str, h: dict[str, Any]) -> None:
        """Series of this stream that ended before the one ``h`` belongs to, as its control messages
        list them (``meta.prev_series_ends``: the last 8, oldest first, ``{series, end_seq}``; an older
        daemon sends only the last, ``meta.prev_series``/``prev_end_seq``). Frames this subscriber never
        received are gaps: the tail of a series it left without seeing its ``series_end``, and every
        frame of a listed series it got no message of, after the last series it knows. A subscriber
        that knows none of the listed series but followed the stream before lost more series than are
        listed: the listed ones are reported, and a gap of unknown size (count 0) says so."""
        m = h.get("meta")
        if not isinstance(m, dict) or not (t.left or t.done):  # nothing listed, or a late joiner
            return
        newest = m.get("prev_series")
        if not t.left and isinstance(newest, str) and newest in t.done:  # the usual case: nothing to report
            return
        ends = _series_ends(m)
        if not ends:
            return
        known = -1
        for i, (s, _) in enumerate(ends):
            if s in t.left or s in t.done:
                known = i
        unseen = "missing seq (a whole series not seen)"
        for i, (s, end) in enumerate(ends):
            if s in t.left:
                expected = t.left[s]
                if end > expected:
                    self._gap(t, stream, expected, end - expected, False,
                              "missing seq (end of the previous series not seen)", series=s)
                t.account(s)
            elif i > known and s not in t.done and s != h["series"]:
                if end > 0:
                    self._gap(t, stream, 0, end, False, unseen, series=s)
                t.account(s)
        if known < 0:
            for s, expected in list(t.left.items()):
                self._gap(t, stream, expected, 0, False, "missing seq (end of the series not seen, frames unknown: "
                          "more series were lost after it than the daemon lists)", series=s)
                t.account(s)
            if len(ends) >= _PREV_LISTED:
                self._gap(t, stream, None, 0, False, f"whole series lost beyond the {len(ends)} the daemon lists "
                          "(frames unknown)", series="")

    def _track(self, h: dict[str, Any], topic: str) -> None:
        stream, kind, seq, series = h["stream"], h["kind"], h["seq"], h["series"]
        t = self.tracks.get(topic)
        joining = t is None  # this subscriber's first message of the stream: it joined late or at the start
        if t is None:
            t = self.tracks[topic] = _StreamTrack(topic=topic, stream=stream)
        if t.series is not None and series != t.series:
            t.leave()  # a newer series before the series_end of the one followed: its tail is unknown yet
            t.series, t.expected = None, None
        if kind != "frame":
            self._prev_series(t, stream, h)
        if kind == "series_start":
            t.series, t.expected = series, seq
            return
        if series != t.series:
            t.series, t.expected = series, seq
            # a stream followed already (its previous series open, or ended by series_end): a new series
            # first seen at seq > 0 (a frame, or a control message carrying the next frame's seq) lost its
            # head here; a late joiner (first message of the stream) never saw the frames before it joined
            if not joining and seq > 0:  # missed the start of a new series
                self._gap(t, stream, 0, seq, False, "missing seq (series start not seen)")
        if kind == "descriptor":
            t.descriptor = h.get("descriptor")
        expected = t.expected if t.expected is not None else seq
        if seq > expected:
            self._gap(t, stream, expected, seq - expected, False, "missing seq")
        if kind == "frame":
            t.expected = seq + 1
            t.frames += 1
        elif kind == "gap":
            n = int(h.get("gap_frames") or 0)
            meta = h.get("meta")
            samples = meta.get("lost_samples") if isinstance(meta, dict) else None
            self._gap(t, stream, seq if n else None, n, True, str(h.get("reason") or ""),
                      samples if type(samples) is int else None)
            t.expected = seq + n
        elif kind == "series_end":
            t.account(series)
            t.expected = None
            t.series = None
        else:
            t.expected = max(seq, expected)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        return self.frames()

    def frames(self, timeout: float | None = None, max_frames: int | None = None,
               deadline: float | None = None) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Yield ``(header, array)`` for frames; stop after ``timeout`` s without any message, after
        ``max_frames`` frames, or ``deadline`` s after the call whatever arrives (descriptors and
        series messages reset ``timeout``'s silence, not ``deadline``)."""
        n = 0
        end = None if deadline is None else time.monotonic() + deadline
        while max_frames is None or n < max_frames:
            wait = timeout
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                wait = left if wait is None else min(wait, left)
            msg = self.recv(wait)
            if msg is None:
                if end is not None and time.monotonic() < end and (timeout is None or (wait is not None and wait < timeout)):
                    continue  # not silent for `timeout` yet: only the deadline's slice ended
                return
            if msg.array is not None:
                n += 1
                yield msg.header, msg.array


def _series_ends(meta: dict[str, Any]) -> list[tuple[str, int]]:
    """``(series, end seq)`` of the ended series a control message's ``meta`` lists, oldest first:
    ``prev_series_ends`` (``[{"series", "end_seq"}, ...]``), else the older single
    ``prev_series``/``prev_end_seq``. Entries that are not a string and an int >= 0 are skipped
    (a hostile or broken publisher must not stop the subscriber), and so are those beyond 2**63 - 1."""
    listed = meta.get("prev_series_ends")
    if isinstance(listed, list):
        out = []
        for e in listed[-_PREV_PARSED:]:
            if isinstance(e, dict):
                s, end = e.get("series"), e.get("end_seq")
                if isinstance(s, str) and type(end) is int and 0 <= end <= _SEQ_MAX:
                    out.append((s, end))
        return out
    s, end = meta.get("prev_series"), meta.get("prev_end_seq")
    return [(s, end)] if isinstance(s, str) and type(end) is int and 0 <= end <= _SEQ_MAX else []


def _policy(qos: QosName | QosPolicy | None, max_age_ms: float | None, frames: int, budget: int | None
            ) -> QosPolicy | None:
    """The QoS policy a :class:`Subscriber` runs its queues under (one frame handed out per take).

    From a name: bounded like the socket, ``frames`` (``rcvhwm``) frames and ``budget`` bytes per stream.
    """
    if qos is None:
        if max_age_ms is not None:
            raise ValueError("max_age_ms needs qos='fifo'")
        return None
    if isinstance(qos, QosPolicy):
        if max_age_ms is not None:
            raise ValueError("give max_age_ms inside the QosPolicy")
        return qos if qos.max_batch == 1 else qos.model_copy(update={"max_batch": 1})
    if max_age_ms is not None and qos != "fifo":
        raise ValueError(f"max_age_ms applies to qos='fifo', not {qos!r}")
    bounds: dict[str, int] = {}
    if frames > 0:
        bounds["max_frames"] = frames
    if budget is not None:
        bounds["max_bytes"] = budget
    return QosPolicy(policy=qos, max_age_ms=max_age_ms, **bounds)


class DaemonUnreachable(ConnectionError):
    """No reply from the daemon's control endpoint within the timeout."""


class RequestFailed(RuntimeError):
    """The daemon answered with an error. ``code`` as in the control protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ControlClient:
    """Send control requests (a DEALER socket speaking to the daemon's ROUTER)."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: str | None = None, timeout: float = 5.0,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None, curve: ClientKeys | None = None) -> None:
        """``endpoint``: the daemon's (or the stage's) control endpoint; ``None``: the local
        rig's daemon (:func:`medacq.daemon.client.runtime.local_rig_endpoints`)."""
        self.endpoint = endpoint or local_rig_endpoints()["daemon"]["control_endpoint"]
        self.timeout = timeout
        self.ctx = context or zmq.Context.instance()
        self.curve = curve
        self._open()

    def _open(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(self.sock)
        self.sock.connect(self.endpoint)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, body: bytes, timeout: float | None = None) -> bytes:
        """Send one raw body, return the raw reply body (for tests of malformed input)."""
        self.sock.send_multipart([b"", body])
        if not self.sock.poll(int((timeout or self.timeout) * 1000)):
            # a DEALER with an unanswered request: start afresh so replies do not cross
            self.sock.close(0)
            self._open()
            raise DaemonUnreachable(f"no reply from the daemon at {self.endpoint} within {timeout or self.timeout} s")
        parts = self.sock.recv_multipart()
        return parts[-1]

    def request(self, cmd: str, timeout: float | None = None, **fields: Any) -> Any:
        """Send a request; return ``result`` or raise :class:`RequestFailed`."""
        rid = str(next(self._ids))
        deadline = time.monotonic() + (timeout or self.timeout)
        raw = self.send_raw(encode_request(cmd, id=rid, **fields), timeout)
        reply: ControlReply = decode_reply(raw)
        while str(reply.id) != rid and time.monotonic() < deadline:  # a stale reply from an earlier timeout
            if not self.sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise DaemonUnreachable(f"no reply from the daemon at {self.endpoint}")
            reply = decode_reply(self.sock.recv_multipart()[-1])
        if not reply.ok:
            err = reply.error or {}
            raise RequestFailed(err.get("code", "internal"), err.get("message", ""))
        return reply.result


