"""Client side of medacq: :class:`Subscriber` for frames, :class:`ControlClient` for requests.

Public as :mod:`medacq.client`::

    from medacq.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5555", "raw/eeg0") as sub:
        for header, frame in sub:          # frame: ndarray, e.g. (channel, sample)
            ...
        print(sub.gaps)                    # every missing seq range, announced or not
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from medacq.protocols.control import ControlReply, decode_reply, encode_request
from medacq.protocols.stream import HeaderError, decode_header, frame_payload

from medacq.daemon.client.keys import ClientKeys

_NOBLOCK = int(zmq.NOBLOCK)

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
        stream, series: where.
        first_seq: first missing sequence number (``None`` for a samples-only device gap).
        count: how many frames (``last = first_seq + count - 1``); 0 for a samples-only gap.
        announced: the daemon announced the loss (``gap`` message: queue overflow, device
            counter jump) -- versus detected here from a hole in ``seq`` (this
            subscriber fell behind its high-water mark, or the network dropped it).
        reason: the daemon's reason, or ``"missing seq"``.
        lost_samples: device samples lost, when the daemon knows.
    """

    stream: str
    series: str
    first_seq: int | None
    count: int
    announced: bool
    reason: str
    lost_samples: int | None = None
    topic: str = ""

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


@dataclass
class _StreamTrack:
    topic: str = ""
    series: str | None = None
    expected: int | None = None
    frames: int = 0
    descriptor: dict[str, Any] | None = None


@dataclass
class _Counters:
    messages: int = 0
    frames: int = 0
    bytes: int = 0
    bad_headers: int = 0
    gap_frames: int = 0


class Subscriber:
    """Subscribe to medacq streams and iterate ``(header, ndarray)`` frames.

    Args:
        endpoints: one or more PUB endpoints (the daemon's and the reconstruction stage's).
        topics: topic prefixes (``"raw/"``, ``"recon/us0"``); ``""`` for everything.
        on_gap: called with each :class:`GapInfo` as it is detected.
        errors: ``"raise"`` (a bad header raises :class:`~medacq.protocols.stream.HeaderError`
            naming the stream) or ``"skip"`` (count it in :attr:`counters`, log, go on).
        rcvhwm: receive high-water mark (messages).
        curve: client keys when the daemon uses CurveZMQ (see :mod:`medacq.daemon.common.security`).
    """

    def __init__(
        self,
        endpoints: str | list[str],
        topics: str | list[str] = "",
        *,
        on_gap: Callable[[GapInfo], None] | None = None,
        errors: str = "raise",
        rcvhwm: int = 100_000,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: ClientKeys | None = None,
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self.sock)
        for t in [topics] if isinstance(topics, str) else topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        for ep in self.endpoints:
            self.sock.connect(ep)
        self.on_gap = on_gap
        if errors not in ("raise", "skip"):
            raise ValueError("errors must be 'raise' or 'skip'")
        self.errors = errors
        self.gaps: list[GapInfo] = []
        self.tracks: dict[str, _StreamTrack] = {}
        self.counters = _Counters()
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._topic_names: dict[bytes, str] = {}

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)

    @property
    def descriptors(self) -> dict[str, dict[str, Any]]:
        """The latest descriptor of every stream seen, by topic (``raw/eeg0``, ``recon/eeg0/hr``).

        Streams are keyed by topic, not by the header's ``stream`` name: ``raw/eeg0`` and
        ``recon/eeg0`` are different streams that share a name.
        """
        return {k: t.descriptor for k, t in self.tracks.items() if t.descriptor is not None}

    def wait_connected(self, timeout: float = 0.3) -> None:
        """Give the SUB handshake time (ZeroMQ's slow-joiner); drains nothing."""
        time.sleep(timeout)

    # -- receiving ----------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Message | None:
        """Next message of any kind, or ``None`` after ``timeout`` seconds (None: wait forever)."""
        recv = self.sock.recv
        while True:
            # a queued message is taken without a poll; parts are zmq.Frames (zero-copy), and
            # Frame.more is read without pyzmq's per-part getsockopt(RCVMORE) of recv_multipart
            try:
                f = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                if timeout is not None and not self._poller.poll(int(timeout * 1000)):
                    return None
                f = recv(copy=False)
            parts = [f]
            while f.more:
                f = recv(copy=False)
                parts.append(f)
            msg = self._decode(parts)
            if msg is not None:
                return msg

    def _decode(self, parts: list[zmq.Frame]) -> Message | None:
        self.counters.messages += 1
        raw_topic = parts[0].bytes
        topic = self._topic_names.get(raw_topic)
        if topic is None:
            topic = raw_topic.decode("utf-8", "replace")
            if len(self._topic_names) < 4096:
                self._topic_names[raw_topic] = topic
        try:
            if len(parts) < 2:
                raise HeaderError("message has no header part", topic=topic)
            header = decode_header(parts[1].buffer, topic)
            array = None
            if header["kind"] == "frame":
                if len(parts) < 3:
                    raise HeaderError("frame message has no payload part", header["stream"])
                array = frame_payload(header, parts[2].buffer)
        except HeaderError:
            self.counters.bad_headers += 1
            if self.errors == "raise":
                raise
            log.warning("skipping undecodable message on %s", topic, exc_info=True)
            return None
        self._track(header, topic)
        if array is not None:
            self.counters.frames += 1
            self.counters.bytes += array.nbytes
        return Message(topic, header, array)

    def _gap(self, t: _StreamTrack, stream: str, first: int | None, count: int, announced: bool, reason: str,
             lost_samples: int | None = None) -> None:
        g = GapInfo(stream, t.series or "", first, count, announced, reason, lost_samples, t.topic)
        self.gaps.append(g)
        self.counters.gap_frames += count
        if self.on_gap is not None:
            self.on_gap(g)

    def _track(self, h: dict[str, Any], topic: str) -> None:
        stream, kind, seq, series = h["stream"], h["kind"], h["seq"], h["series"]
        t = self.tracks.get(topic)
        if t is None:
            t = self.tracks[topic] = _StreamTrack(topic=topic)
        if kind == "series_start":
            t.series, t.expected = series, seq
            return
        if series != t.series:
            had = t.series is not None
            t.series, t.expected = series, seq
            if had and kind == "frame" and seq > 0:  # missed the start of a new series
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
            samples = (h.get("meta") or {}).get("lost_samples")
            self._gap(t, stream, seq if n else None, n, True, h.get("reason") or "", samples)
            t.expected = seq + n
        elif kind == "series_end":
            t.expected = None
            t.series = None
        else:
            t.expected = max(seq, expected)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        return self.frames()

    def frames(self, timeout: float | None = None, max_frames: int | None = None
               ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Yield ``(header, array)`` for frames; stop after ``timeout`` s of silence or ``max_frames``."""
        n = 0
        while max_frames is None or n < max_frames:
            msg = self.recv(timeout)
            if msg is None:
                return
            if msg.array is not None:
                n += 1
                yield msg.header, msg.array


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

    def __init__(self, endpoint: str, timeout: float = 5.0, context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 curve: ClientKeys | None = None) -> None:
        self.endpoint = endpoint
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


