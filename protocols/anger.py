"""Sans-I/O codec for an Anger gamma camera streaming raw PMT events over TCP (both roles).

There is no public wire standard for PMT-level gamma camera list mode (vendors keep theirs
private), so this framing is this project's own; it mirrors :mod:`medacq.protocols.petsys`
(same frame layout, another magic), little-endian::

    magic "ANGR" | version u8 (=1) | kind u8 | reserved u16 (=0) | length u32 | counter u32
    payload (length bytes)
    crc32 u32   (zlib/IEEE CRC-32 of header + payload)

``kind``: 1 = event block (device → host, ``counter`` = block counter), 2 = command (host →
device, ``counter`` = request id, UTF-8 text), 3 = reply (device → host, ``code i32`` + UTF-8
text; codes are :class:`~medacq.protocols.petsys.ReplyCode`). An event block::

    t_start_us u64 | t_end_us u64 | angle_mdeg i32 | n_events u32 | n_pmt u16 | reserved u16
    n_events x { dt_ns u32 (from t_start) | amplitude u16 [n_pmt] (ADC counts) }

``angle_mdeg``: gantry angle of the head during the block (millidegrees). The host applies
Anger logic with the PMT positions and correction maps the device reports (``GET CONFIG``).
Errors on the receive path never raise: :class:`~medacq.protocols.petsys.BadFrame` and
:class:`~medacq.protocols._sansio.Garbage` events, as in the PETsys codec.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData, ReceiveBuffer
from medacq.protocols.petsys import BadFrame, Command, FrameKind, Reply, ReplyCode

__all__ = ["ANGER_MAGIC", "EventBlock", "AngerConnection", "AngerEvent", "event_dtype", "Command", "Reply",
           "ReplyCode", "BadFrame", "anger_centroid", "interp_grid"]

ANGER_MAGIC: Final = b"ANGR"
_HEADER = struct.Struct("<4sBBHII")
_BLOCK = struct.Struct("<QQiIHH")
_CRC = struct.Struct("<I")
_REPLY = struct.Struct("<i")
_MAX_PAYLOAD: Final = 64 << 20


def event_dtype(n_pmt: int) -> np.dtype:
    """One raw event: ``dt_ns`` (u4, from the block start) and ``pmt`` (u2 x n_pmt, ADC counts)."""
    return np.dtype([("dt_ns", "<u4"), ("pmt", "<u2", (int(n_pmt),))])


@dataclass(frozen=True, slots=True, eq=False)
class EventBlock:
    """One block of raw events (device → host).

    Attributes:
        counter: block counter (u32, wraps).
        t_start_us, t_end_us: device time the block covers, µs.
        angle_mdeg: gantry angle, millidegrees.
        events: ``(n,)`` array of :func:`event_dtype` ``(n_pmt)``.
    """

    counter: int
    t_start_us: int
    t_end_us: int
    angle_mdeg: int
    events: np.ndarray


AngerEvent = EventBlock | Command | Reply | BadFrame | Garbage


class AngerConnection:
    """Both ends of the camera link (``role="host"`` or ``"device"``); see the module doc."""

    def __init__(self, role: Literal["host", "device"] = "host", *, max_payload: int = _MAX_PAYLOAD) -> None:
        if role not in ("host", "device"):
            raise ValueError(f"role must be 'host' or 'device', not {role!r}")
        self.role = role
        self.max_payload = int(max_payload)
        self._buf = ReceiveBuffer(max_size=self.max_payload + 64 + (1 << 20))
        self._events: deque[AngerEvent] = deque()
        self._receives = (FrameKind.SINGLES, FrameKind.REPLY) if role == "host" else (FrameKind.COMMAND,)
        self._counter = 0
        self._request_id = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)
        lost = self._buf.take_overflow()
        if lost:
            self._events.append(Garbage(lost, "receive buffer overflow"))

    def next_event(self) -> AngerEvent | NeedData:
        if self._events:
            return self._events.popleft()
        ev = self._parse()
        return NEED_DATA if ev is None else ev

    def _parse(self) -> AngerEvent | None:
        buf = self._buf
        n = len(buf)
        if n < 4:
            return None
        i = buf.find(ANGER_MAGIC)
        if i < 0:
            keep = next((k for k in (3, 2, 1) if ANGER_MAGIC.startswith(buf.peek(n)[-k:])), 0)
            buf.skip(n - keep)
            return Garbage(n - keep, "no frame magic") if n - keep else None
        if i > 0:
            buf.skip(i)
            return Garbage(i, "bytes before frame magic")
        if n < _HEADER.size:
            return None
        _, version, kind, reserved, length, counter = _HEADER.unpack(buf.peek(_HEADER.size))
        if version != 1 or reserved != 0 or kind not in (1, 2, 3) or length > self.max_payload:
            buf.skip(1)
            return Garbage(1, "implausible frame header")
        if kind == FrameKind.SINGLES and length >= _BLOCK.size and n >= _HEADER.size + _BLOCK.size:
            # the event count and PMT count are known before the payload is: check the length now
            _, _, _, ne, npmt, _ = _BLOCK.unpack_from(buf.peek(_HEADER.size + _BLOCK.size), _HEADER.size)
            if length != _BLOCK.size + ne * (4 + 2 * npmt):
                buf.skip(1)
                return Garbage(1, "frame length does not match its event count")
        elif kind != FrameKind.SINGLES and length > (1 << 20) + 4:
            buf.skip(1)
            return Garbage(1, "implausible command/reply length")
        total = _HEADER.size + length + 4
        if n < total:
            return None
        view = buf.view()
        (crc,) = _CRC.unpack_from(view, total - 4)
        if zlib.crc32(view[: total - 4]) != crc:
            buf.skip(1)
            return BadFrame(kind, counter, "crc mismatch")
        frame = buf.consume(total)
        payload = memoryview(frame)[_HEADER.size : total - 4]
        if kind not in self._receives:
            return BadFrame(kind, counter, f"a {self.role} does not receive kind {kind} frames")
        if kind == FrameKind.SINGLES:
            if len(payload) < _BLOCK.size:
                return BadFrame(kind, counter, "event block shorter than its header")
            t0, t1, ang, ne, npmt, _ = _BLOCK.unpack_from(payload)
            dt = event_dtype(npmt)
            if len(payload) != _BLOCK.size + ne * dt.itemsize:
                return BadFrame(kind, counter, f"event block of {len(payload)} bytes does not hold {ne} events")
            return EventBlock(counter, t0, t1, ang, np.frombuffer(payload, dt, count=ne, offset=_BLOCK.size))
        try:
            if kind == FrameKind.COMMAND:
                return Command(counter, bytes(payload).decode("utf-8"))
            if len(payload) < 4:
                return BadFrame(kind, counter, "reply shorter than its code")
            return Reply(counter, _REPLY.unpack_from(payload)[0], bytes(payload[4:]).decode("utf-8"))
        except UnicodeDecodeError:
            return BadFrame(kind, counter, "text is not UTF-8")

    def next_request_id(self) -> int:
        self._request_id = (self._request_id + 1) & 0xFFFFFFFF
        return self._request_id

    def next_block_counter(self) -> int:
        c = self._counter
        self._counter = (c + 1) & 0xFFFFFFFF
        return c

    def send(self, event: EventBlock | Command | Reply) -> bytes:
        if isinstance(event, EventBlock):
            if self.role != "device":
                raise LocalProtocolError("a host does not send event blocks")
            ev = np.ascontiguousarray(event.events)
            names = ev.dtype.names or ()
            if names != ("dt_ns", "pmt"):
                raise LocalProtocolError("events must be of event_dtype(n_pmt)")
            npmt = int(ev.dtype["pmt"].shape[0]) if ev.dtype["pmt"].shape else 1
            if ev.dtype != event_dtype(npmt):
                ev = ev.astype(event_dtype(npmt))
            body = _BLOCK.pack(event.t_start_us, event.t_end_us, event.angle_mdeg, len(ev), npmt, 0)
            return self._frame(FrameKind.SINGLES, event.counter, body, ev.tobytes())
        if isinstance(event, Command):
            if self.role != "host":
                raise LocalProtocolError("a device does not send commands")
            return self._frame(FrameKind.COMMAND, event.request_id, event.text.encode("utf-8"))
        if isinstance(event, Reply):
            if self.role != "device":
                raise LocalProtocolError("a host does not send replies")
            return self._frame(FrameKind.REPLY, event.request_id, _REPLY.pack(event.code), event.text.encode("utf-8"))
        raise LocalProtocolError(f"cannot send {type(event).__name__}")

    def _frame(self, kind: FrameKind, counter: int, *parts: bytes) -> bytes:
        if not (0 <= counter <= 0xFFFFFFFF):
            raise LocalProtocolError("counter must fit a u32")
        length = sum(len(p) for p in parts)
        if length > self.max_payload:
            raise LocalProtocolError(f"payload of {length} bytes exceeds max_payload {self.max_payload}")
        head = _HEADER.pack(ANGER_MAGIC, 1, int(kind), 0, length, counter)
        crc = zlib.crc32(head)
        for p in parts:
            crc = zlib.crc32(p, crc)
        return b"".join((head, *parts, _CRC.pack(crc)))


def anger_centroid(amp: np.ndarray, pmt_xy: np.ndarray, threshold_fraction: float = 0.1
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholded Anger logic: ``(x, y, sum)`` of events ``amp`` ``(n, n_pmt)`` (ADC counts) with
    PMT centres ``pmt_xy`` ``(n_pmt, 2)`` mm. Each PMT's signal minus ``threshold_fraction`` of the
    event's largest signal, clipped at 0, weights the centroid (less edge compression than the plain
    centroid); the energy signal is the plain sum. The camera's calibration maps are made with the
    same arithmetic, so host and device agree."""
    a = amp.astype(np.float64)
    s = a.sum(axis=1)
    w = np.clip(a - threshold_fraction * a.max(axis=1, keepdims=True), 0, None)
    ws = w.sum(axis=1)
    ws[ws == 0] = 1.0
    return (w @ pmt_xy[:, 0]) / ws, (w @ pmt_xy[:, 1]) / ws, s


def interp_grid(m: np.ndarray, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """Bilinear look-up of a correction map ``(grid, grid)`` (row = y, cell centres over ``±half``
    mm) at positions (x, y) mm; clamped at the edges."""
    g = m.shape[0]
    fx = np.clip((x + half) / (2 * half) * g - 0.5, 0, g - 1)
    fy = np.clip((y + half) / (2 * half) * g - 0.5, 0, g - 1)
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    x1, y1 = np.minimum(x0 + 1, g - 1), np.minimum(y0 + 1, g - 1)
    wx, wy = fx - x0, fy - y0
    out = (1 - wy) * ((1 - wx) * m[y0, x0] + wx * m[y0, x1]) + wy * ((1 - wx) * m[y1, x0] + wx * m[y1, x1])
    return np.asarray(out, float)
