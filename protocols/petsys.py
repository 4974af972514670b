"""Sans-I/O codec for a PETsys-TOFPET2-style singles stream over TCP (both roles).

What follows PETsys (github ``PETsys/sw_daq_tofpet2``, ``src/base/DataFileWriter.hpp``,
``struct Event``, written by ``DataFileWriter::writeSingleEvents`` for
``convert_raw_to_singles --writeBinary``): one processed single is a packed 16-byte record::

    long long time   (i64, ps)      float e   (f32)      int id   (i32)

in the host's byte order (little-endian on every PETsys DAQ host; this codec fixes it to
little-endian). PETsys writes ``time`` in picoseconds from its time reference, ``e`` in the
energy unit of the channel's calibration (QDC counts, ToT ns, or keV once calibrated) and
``id`` as the absolute channel id ``portID << 17 | slaveID << 12 | chipID << 6 | channel``
(``MAKE_GID`` in ``src/base/SystemConfig.cpp``). Here ``e`` is keV (the device is
energy-calibrated) and ``id`` is the crystal index of the ring (the channel map is applied in
the device); :data:`SINGLE_DTYPE` is that record.

What is this project's own (PETsys streams to files and shared memory, not over TCP): the
framing of a TCP link that carries blocks of those records *and* a command channel. Every
message is a frame, little-endian::

    magic "PSYS" | version u8 (=1) | kind u8 | reserved u16 (=0) | length u32 | counter u32
    payload (length bytes)
    crc32 u32   (zlib/IEEE CRC-32 of header + payload)

``kind``: 1 = singles block (device → host), 2 = command (host → device), 3 = reply (device →
host). For a singles block ``counter`` is the **block counter** (u32, +1 per block, wraps), so a
host sees every lost block; its payload is a 24-byte block header then the records::

    t_start_ps i64 | t_end_ps i64 | n_records u32 | dead_singles u32 | n_records x SINGLE_DTYPE

``[t_start_ps, t_end_ps)`` is the device time the block covers (blocks tile time with no hole
unless some are lost), ``dead_singles`` the singles the front end lost to dead time in it (for
dead-time correction). For a command ``counter`` is the request id and the payload is UTF-8
text (``START``, ``SET CWINDOW 4000``, see :class:`ReplyCode` and ``docs/nuclear.md``); the
reply echoes the request id, payload ``code i32`` then UTF-8 text.

Errors on the receive path never raise. A header whose length does not match the block's record
count (read before the payload arrives) is not waited for; a frame whose CRC or layout is wrong gives a
:class:`BadFrame` (the block counter of the next good block shows the hole) and the codec
re-scans from the byte after the bad frame's magic, so a truncated frame never swallows the next;
bytes that are not a frame are skipped as :class:`~medacq.protocols._sansio.Garbage`.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

import numpy as np

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "SINGLE_DTYPE",
    "SINGLE_SIZE",
    "MAGIC",
    "FRAME_HEADER_SIZE",
    "BLOCK_HEADER_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "FrameKind",
    "ReplyCode",
    "SinglesBlock",
    "Command",
    "Reply",
    "BadFrame",
    "PetsysEvent",
    "PetsysConnection",
    "petsys_channel_id",
]

#: one processed single, PETsys ``struct Event`` (packed): time ps, energy, channel/crystal id
SINGLE_DTYPE: Final = np.dtype([("time_ps", "<i8"), ("energy", "<f4"), ("id", "<i4")])
SINGLE_SIZE: Final = 16
assert SINGLE_DTYPE.itemsize == SINGLE_SIZE

MAGIC: Final = b"PSYS"
VERSION: Final = 1
_HEADER = struct.Struct("<4sBBHII")
_BLOCK = struct.Struct("<qqII")
_CRC = struct.Struct("<I")
_REPLY = struct.Struct("<i")
FRAME_HEADER_SIZE: Final = _HEADER.size  # 16
BLOCK_HEADER_SIZE: Final = _BLOCK.size  # 24
DEFAULT_MAX_PAYLOAD: Final = 64 << 20
_MAX_TEXT: Final = 1 << 20


class FrameKind(IntEnum):
    """The ``kind`` byte of a frame."""

    SINGLES = 1
    COMMAND = 2
    REPLY = 3


class ReplyCode(IntEnum):
    """Reply codes of the command channel (0 = success)."""

    OK = 0
    UNKNOWN_COMMAND = 1
    BAD_ARGUMENT = 2
    OUT_OF_RANGE = 3
    BUSY = 4  # a setting was sent while acquiring: stop first
    NOT_RUNNING = 5
    DEVICE_FAULT = 6


def petsys_channel_id(port: int, slave: int, chip: int, channel: int) -> int:
    """PETsys absolute channel id (``MAKE_GID``): ``port << 17 | slave << 12 | chip << 6 | channel``."""
    return (int(port) << 17) | (int(slave) << 12) | (int(chip) << 6) | int(channel)


@dataclass(frozen=True, slots=True, eq=False)
class SinglesBlock:
    """One block of singles (device → host).

    Attributes:
        counter: block counter (u32, wraps); consecutive blocks differ by 1.
        t_start_ps, t_end_ps: device time the block covers, ps.
        dead_singles: singles lost to front-end dead time within the block.
        singles: ``(n,)`` array of :data:`SINGLE_DTYPE` (time ps, energy keV, crystal id),
            time-ordered. Read-only when decoded.
    """

    counter: int
    t_start_ps: int
    t_end_ps: int
    dead_singles: int
    singles: np.ndarray


@dataclass(frozen=True, slots=True)
class Command:
    """A command (host → device): ``request_id`` (u32) and its text (``SET CWINDOW 4000``)."""

    request_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply (device → host) to the command with ``request_id``: a :class:`ReplyCode` value and text."""

    request_id: int
    code: int
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.code == ReplyCode.OK


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that was lost: CRC mismatch, bad layout or a kind this role does not receive.

    Attributes:
        kind: the frame's kind byte (as read; may itself be corrupt).
        counter: its counter field (as read; may be corrupt).
        reason: why it was rejected.
    """

    kind: int
    counter: int
    reason: str


PetsysEvent = SinglesBlock | Command | Reply | BadFrame | Garbage


class PetsysConnection:
    """Both ends of the link: ``role="host"`` (sends :class:`Command`, receives blocks and replies)
    or ``role="device"`` (sends :class:`SinglesBlock` and :class:`Reply`, receives commands).

    ``receive_data(bytes)`` then ``next_event()`` until :data:`NEED_DATA`; ``send(event) -> bytes``.
    ``max_payload`` bounds a frame (a larger length field is garbage, not a reason to buffer).
    """

    def __init__(self, role: Literal["host", "device"] = "host", *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if role not in ("host", "device"):
            raise ValueError(f"role must be 'host' or 'device', not {role!r}")
        self.role = role
        self.max_payload = int(max_payload)
        self._buf = ReceiveBuffer(max_size=self.max_payload + FRAME_HEADER_SIZE + 4 + (1 << 20))
        self._events: deque[PetsysEvent] = deque()
        self._receives = (FrameKind.SINGLES, FrameKind.REPLY) if role == "host" else (FrameKind.COMMAND,)
        self._block_counter = 0
        self._request_id = 0

    # ---- receive ----------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer."""
        self._buf.append(data)
        lost = self._buf.take_overflow()
        if lost:
            self._events.append(Garbage(lost, "receive buffer overflow"))

    def next_event(self) -> PetsysEvent | NeedData:
        """The next event, or :data:`NEED_DATA`."""
        if self._events:
            return self._events.popleft()
        ev = self._parse()
        return NEED_DATA if ev is None else ev

    def _parse(self) -> PetsysEvent | None:
        buf = self._buf
        while True:
            n = len(buf)
            if n < 4:
                return None
            i = buf.find(MAGIC)
            if i < 0:  # keep a possible partial magic at the end
                keep = next((k for k in (3, 2, 1) if MAGIC.startswith(buf.peek(n)[-k:])), 0)
                buf.skip(n - keep)
                if n - keep:
                    return Garbage(n - keep, "no frame magic")
                return None
            if i > 0:
                buf.skip(i)
                return Garbage(i, "bytes before frame magic")
            if n < FRAME_HEADER_SIZE:
                return None
            _, version, kind, reserved, length, counter = _HEADER.unpack(buf.peek(FRAME_HEADER_SIZE))
            if version != VERSION or reserved != 0 or kind not in (1, 2, 3) or length > self.max_payload:
                buf.skip(1)  # not a real frame start: re-scan from the next byte
                return Garbage(1, "implausible frame header")
            if kind == FrameKind.SINGLES and length >= BLOCK_HEADER_SIZE and n >= FRAME_HEADER_SIZE + 20:
                # the record count is known before the payload is: a length that does not match it
                # is a corrupt header (do not wait for bytes that will never belong to this frame)
                (n_rec,) = struct.unpack_from("<I", buf.peek(FRAME_HEADER_SIZE + 20), FRAME_HEADER_SIZE + 16)
                if length != BLOCK_HEADER_SIZE + n_rec * SINGLE_SIZE:
                    buf.skip(1)
                    return Garbage(1, "frame length does not match its record count")
            elif kind != FrameKind.SINGLES and length > _MAX_TEXT + 4:
                buf.skip(1)
                return Garbage(1, "implausible command/reply length")
            total = FRAME_HEADER_SIZE + length + 4
            if n < total:
                return None
            view = buf.view()
            (crc,) = _CRC.unpack_from(view, total - 4)
            if zlib.crc32(view[: total - 4]) != crc:
                buf.skip(1)  # the frame may be truncated: look for the next magic inside it
                return BadFrame(kind, counter, "crc mismatch")
            frame = buf.consume(total)
            payload = memoryview(frame)[FRAME_HEADER_SIZE : total - 4]
            if kind not in self._receives:
                return BadFrame(kind, counter, f"a {self.role} does not receive {FrameKind(kind).name.lower()} frames")
            return self._decode(FrameKind(kind), counter, payload)

    @staticmethod
    def _decode(kind: FrameKind, counter: int, payload: memoryview) -> PetsysEvent:
        if kind == FrameKind.SINGLES:
            if len(payload) < BLOCK_HEADER_SIZE:
                return BadFrame(kind, counter, "singles block shorter than its header")
            t0, t1, n, dead = _BLOCK.unpack_from(payload)
            if len(payload) != BLOCK_HEADER_SIZE + n * SINGLE_SIZE:
                return BadFrame(kind, counter, f"singles block of {len(payload)} bytes does not hold {n} records")
            singles = np.frombuffer(payload, SINGLE_DTYPE, count=n, offset=BLOCK_HEADER_SIZE)
            return SinglesBlock(counter, t0, t1, dead, singles)
        if kind == FrameKind.COMMAND:
            try:
                return Command(counter, bytes(payload).decode("utf-8"))
            except UnicodeDecodeError:
                return BadFrame(kind, counter, "command text is not UTF-8")
        if len(payload) < 4:
            return BadFrame(kind, counter, "reply shorter than its code")
        (code,) = _REPLY.unpack_from(payload)
        try:
            return Reply(counter, code, bytes(payload[4:]).decode("utf-8"))
        except UnicodeDecodeError:
            return BadFrame(kind, counter, "reply text is not UTF-8")

    # ---- send -------------------------------------------------------------------------------
    def next_request_id(self) -> int:
        """A fresh request id for a host's :class:`Command` (u32, wraps)."""
        self._request_id = (self._request_id + 1) & 0xFFFFFFFF
        return self._request_id

    def next_block_counter(self) -> int:
        """The counter a device's next block carries (then advances; u32, wraps)."""
        c = self._block_counter
        self._block_counter = (c + 1) & 0xFFFFFFFF
        return c

    def send(self, event: SinglesBlock | Command | Reply) -> bytes:
        """Encode ``event`` as one frame. :class:`LocalProtocolError` if this role does not send it
        or a field is out of range."""
        if isinstance(event, SinglesBlock):
            self._check_role("device", "singles blocks")
            s = event.singles
            if s.dtype != SINGLE_DTYPE:
                try:
                    s = s.astype(SINGLE_DTYPE)
                except (TypeError, ValueError) as exc:
                    raise LocalProtocolError(f"singles must be {SINGLE_DTYPE}, not {s.dtype}") from exc
            if not (0 <= event.dead_singles <= 0xFFFFFFFF):
                raise LocalProtocolError("dead_singles must fit a u32")
            body = _BLOCK.pack(event.t_start_ps, event.t_end_ps, len(s), event.dead_singles)
            return self._frame(FrameKind.SINGLES, event.counter, body, np.ascontiguousarray(s).tobytes())
        if isinstance(event, Command):
            self._check_role("host", "commands")
            return self._frame(FrameKind.COMMAND, event.request_id, self._text(event.text))
        if isinstance(event, Reply):
            self._check_role("device", "replies")
            if not (-(1 << 31) <= event.code < (1 << 31)):
                raise LocalProtocolError("reply code must fit an i32")
            return self._frame(FrameKind.REPLY, event.request_id, _REPLY.pack(event.code) + self._text(event.text))
        raise LocalProtocolError(f"cannot send {type(event).__name__}")

    def _check_role(self, role: str, what: str) -> None:
        if self.role != role:
            raise LocalProtocolError(f"a {self.role} does not send {what}")

    @staticmethod
    def _text(text: str) -> bytes:
        b = text.encode("utf-8")
        if len(b) > _MAX_TEXT:
            raise LocalProtocolError("text longer than 1 MiB")
        return b

    def _frame(self, kind: FrameKind, counter: int, *parts: bytes) -> bytes:
        if not (0 <= counter <= 0xFFFFFFFF):
            raise LocalProtocolError("counter must fit a u32")
        length = sum(len(p) for p in parts)
        if length > self.max_payload:
            raise LocalProtocolError(f"payload of {length} bytes exceeds max_payload {self.max_payload}")
        head = _HEADER.pack(MAGIC, VERSION, int(kind), 0, length, counter)
        crc = zlib.crc32(head)
        for p in parts:
            crc = zlib.crc32(p, crc)
        return b"".join((head, *parts, _CRC.pack(crc)))
