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
:class:`~medacq.protocols._sansio.Garbage` events, as in the PETsys codec (both links share one
framing, :class:`~medacq.protocols._block_link.BlockLink`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal, cast

import numpy as np

from medacq.protocols._block_link import BadFrame, BlockLink, Command, FrameKind, Reply, ReplyCode
from medacq.protocols._sansio import Garbage, LocalProtocolError, NeedData

__all__ = ["ANGER_MAGIC", "EventBlock", "AngerConnection", "AngerEvent", "event_dtype", "Command", "Reply",
           "ReplyCode", "BadFrame", "anger_centroid", "interp_grid"]

ANGER_MAGIC: Final = b"ANGR"
_BLOCK = struct.Struct("<QQiIHH")
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


class AngerConnection(BlockLink):
    """Both ends of the camera link (``role="host"`` or ``"device"``); see the module doc. The framing
    is :class:`~medacq.protocols._block_link.BlockLink`'s."""

    MAGIC = ANGER_MAGIC
    BLOCK_TYPE = EventBlock
    BLOCK_NAME = "event blocks"
    BLOCK_HEADER_SIZE = _BLOCK.size
    BLOCK_PEEK = _BLOCK.size
    LENGTH_MISMATCH = "frame length does not match its event count"
    BUFFER_SLACK = 64 + (1 << 20)
    NOT_RECEIVED = "a {role} does not receive kind {kind} frames"
    BAD_COMMAND_TEXT = BAD_REPLY_TEXT = "text is not UTF-8"

    def __init__(self, role: Literal["host", "device"] = "host", *, max_payload: int = _MAX_PAYLOAD) -> None:
        super().__init__(role, max_payload=max_payload)

    def next_event(self) -> AngerEvent | NeedData:
        return cast("AngerEvent | NeedData", super().next_event())

    def _block_length(self, head: bytes) -> int:
        # the event count and PMT count are known before the payload is
        _, _, _, ne, npmt, _ = _BLOCK.unpack(head)
        return int(_BLOCK.size + ne * (4 + 2 * npmt))

    def _decode_block(self, counter: int, payload: memoryview) -> EventBlock | BadFrame:
        kind = FrameKind.SINGLES
        if len(payload) < _BLOCK.size:
            return BadFrame(kind, counter, "event block shorter than its header")
        t0, t1, ang, ne, npmt, _ = _BLOCK.unpack_from(payload)
        dt = event_dtype(npmt)
        if len(payload) != _BLOCK.size + ne * dt.itemsize:
            return BadFrame(kind, counter, f"event block of {len(payload)} bytes does not hold {ne} events")
        return EventBlock(counter, t0, t1, ang, np.frombuffer(payload, dt, count=ne, offset=_BLOCK.size))

    def _encode_block(self, event: EventBlock) -> tuple[int, tuple[bytes, ...]]:
        ev = np.ascontiguousarray(event.events)
        names = ev.dtype.names or ()
        if names != ("dt_ns", "pmt"):
            raise LocalProtocolError("events must be of event_dtype(n_pmt)")
        npmt = int(ev.dtype["pmt"].shape[0]) if ev.dtype["pmt"].shape else 1
        if ev.dtype != event_dtype(npmt):
            ev = ev.astype(event_dtype(npmt))
        body = _BLOCK.pack(event.t_start_us, event.t_end_us, event.angle_mdeg, len(ev), npmt, 0)
        return event.counter, (body, ev.tobytes())

    def send(self, event: EventBlock | Command | Reply) -> bytes:
        return super().send(event)


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
