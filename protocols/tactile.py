"""Tactile probe serial codec (sans-I/O, both roles): medacq's own framed binary format.

No open pressure-mat / tactile-sensor firmware publishes a format with what a streaming
imaging driver needs (a frame counter to see losses, a checksum, commands with replies):
the eTextile ``Matrix`` firmware (16×16, row-major little-endian u16 cells inside
PacketSerial/COBS packets) has neither counter, checksum nor commands. This module
therefore defines **this project's own** format, "MTP/1" (medacq tactile probe, version
1), in the style of such firmware (row-major little-endian u16 cells). The full
specification is ``docs/tactile.md``; in short (USB CDC serial, baud ignored):

Device → host, a **frame** (all integers little-endian)::

    offset size  field
    0      2     sync 0xA5 0x5A
    2      1     type 0x01 (pressure frame)
    3      1     rows R (1..64)
    4      1     cols C (1..64)
    5      4     u32 frame counter (wraps at 2**32; +1 per scanned frame, lost ones too)
    9      4     u32 device time, µs since START (wraps)
    13     4     i32 indentation depth from the probe's displacement sensor, µm
    17     2RC   u16 cell values, ADC counts, row-major: (r0 c0), (r0 c1), ...
    17+2RC 2     u16 CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of bytes 2 .. 17+2RC-1

Device → host, a **reply line**: ASCII starting with ``#``, ending ``\\n`` (at most 127
bytes): ``#OK <CMD> [value]``, ``#ERR <code> <text>``, ``#ID <model>,<rows>,<cols>,<fw>``,
``#RATE <hz>``, ``#GAIN <g>``.

Host → device, **commands**: ASCII lines ending ``\\n``: ``ID?``, ``RATE <hz>`` (1..500),
``RATE?``, ``GAIN <g>`` (1, 2, 4, 8), ``GAIN?``, ``ZERO`` (firmware tare), ``START``,
``STOP``. Error codes: 1 unknown command, 2 bad argument, 3 busy (not while streaming).

Host role (:class:`TactileHostCodec`) turns bytes into :class:`PressureFrame`,
:class:`CounterJump` (emitted *before* the frame after a hole), :class:`Reply` and
:class:`~medacq.protocols._sansio.Garbage` (bytes skipped while resynchronising, or a
frame whose CRC fails). Device role (:class:`TactileDeviceCodec`) turns command lines into
command events and frames/replies into bytes. Both are safe to feed one byte at a time.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from ._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "SYNC", "FRAME_TYPE", "HEADER_SIZE", "MAX_CELLS_SIDE", "RATE_RANGE_HZ", "GAINS", "ERR_UNKNOWN",
    "ERR_ARGUMENT", "ERR_BUSY", "crc16_ccitt", "frame_size",
    "PressureFrame", "CounterJump", "Reply",
    "Identify", "SetRate", "QueryRate", "SetGain", "QueryGain", "Zero", "Start", "Stop",
    "BadCommand", "TactileCommand", "encode_command", "encode_frame", "encode_reply", "TactileHostCodec", "TactileDeviceCodec",
]

SYNC = b"\xa5\x5a"
FRAME_TYPE = 0x01
_HDR = struct.Struct("<2sBBBIIi")
HEADER_SIZE = _HDR.size  # 17
MAX_CELLS_SIDE = 64
RATE_RANGE_HZ = (1.0, 500.0)
GAINS = (1, 2, 4, 8)
ERR_UNKNOWN, ERR_ARGUMENT, ERR_BUSY = 1, 2, 3
_MAX_LINE = 127



def crc16_ccitt(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    return binascii.crc_hqx(data, crc)


def frame_size(rows: int, cols: int) -> int:
    """Bytes of one frame on the wire: header + 2·rows·cols + CRC."""
    return HEADER_SIZE + 2 * rows * cols + 2


# ----------------------------------------------------------------------------- events

@dataclass(frozen=True, slots=True, eq=False)
class PressureFrame:
    """One scanned frame.

    Attributes:
        counter: the device's u32 frame counter.
        t_device_us: device time of the scan, µs since START (u32, wraps).
        depth_um: indentation depth reported by the probe's displacement sensor, µm.
        cells: ``uint16 (row, col)`` ADC counts, row 0 / col 0 first on the wire.
    """

    counter: int
    t_device_us: int
    depth_um: int
    cells: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.cells.shape[0])

    @property
    def cols(self) -> int:
        return int(self.cells.shape[1])


@dataclass(frozen=True, slots=True)
class CounterJump:
    """The frame counter skipped: ``lost`` frames (``expected`` .. ``received - 1``, mod 2**32)
    were scanned by the device and never arrived. Emitted just before the frame ``received``."""

    expected: int
    received: int
    lost: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A ``#`` reply line: ``kind`` is ``OK``, ``ERR``, ``ID``, ``RATE`` or ``GAIN``; ``args``
    the rest split on spaces (``#ERR 2 bad argument`` → ``("2", "bad", "argument")``)."""

    kind: str
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join((self.kind,) + self.args)

    @property
    def error_code(self) -> int | None:
        if self.kind != "ERR" or not self.args:
            return None
        try:
            return int(self.args[0])
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Identify:
    """``ID?``"""


@dataclass(frozen=True, slots=True)
class SetRate:
    """``RATE <hz>``: scan rate, frames per second."""

    hz: float


@dataclass(frozen=True, slots=True)
class QueryRate:
    """``RATE?``"""


@dataclass(frozen=True, slots=True)
class SetGain:
    """``GAIN <g>``: analogue front-end gain (1, 2, 4 or 8)."""

    gain: int


@dataclass(frozen=True, slots=True)
class QueryGain:
    """``GAIN?``"""


@dataclass(frozen=True, slots=True)
class Zero:
    """``ZERO``: the firmware tares every cell on its next scan (counts − tare + 64)."""


@dataclass(frozen=True, slots=True)
class Start:
    """``START``: stream frames at the set rate (counter and device time restart at 0)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """``STOP``: stop streaming."""


@dataclass(frozen=True, slots=True)
class BadCommand:
    """Device role: a command line it cannot parse; ``code`` is the error code to answer."""

    line: str
    code: int
    reason: str


TactileCommand = Union[Identify, SetRate, QueryRate, SetGain, QueryGain, Zero, Start, Stop]
HostEvent = Union[PressureFrame, CounterJump, Reply]


def _fmt_rate(hz: float) -> str:
    return f"{hz:g}"


def encode_command(cmd: TactileCommand) -> bytes:
    """The ASCII line of a command (validates arguments: :class:`LocalProtocolError`)."""
    if isinstance(cmd, Identify):
        return b"ID?\n"
    if isinstance(cmd, SetRate):
        lo, hi = RATE_RANGE_HZ
        if not lo <= float(cmd.hz) <= hi:
            raise LocalProtocolError(f"rate {cmd.hz} Hz outside {lo:g}..{hi:g}")
        return f"RATE {_fmt_rate(float(cmd.hz))}\n".encode("ascii")
    if isinstance(cmd, QueryRate):
        return b"RATE?\n"
    if isinstance(cmd, SetGain):
        if cmd.gain not in GAINS:
            raise LocalProtocolError(f"gain {cmd.gain} not one of {GAINS}")
        return f"GAIN {cmd.gain}\n".encode("ascii")
    if isinstance(cmd, QueryGain):
        return b"GAIN?\n"
    if isinstance(cmd, Zero):
        return b"ZERO\n"
    if isinstance(cmd, Start):
        return b"START\n"
    if isinstance(cmd, Stop):
        return b"STOP\n"
    raise LocalProtocolError(f"not a tactile command: {cmd!r}")


def encode_frame(frame: PressureFrame) -> bytes:
    """The wire bytes of a frame (validates shape and ranges: :class:`LocalProtocolError`)."""
    cells = np.asarray(frame.cells)
    if cells.ndim != 2 or not (1 <= cells.shape[0] <= MAX_CELLS_SIDE and 1 <= cells.shape[1] <= MAX_CELLS_SIDE):
        raise LocalProtocolError(f"cells must be (rows, cols) within 1..{MAX_CELLS_SIDE}, got {cells.shape}")
    if cells.dtype != np.uint16:
        if cells.size and (cells.min() < 0 or cells.max() > 0xFFFF):
            raise LocalProtocolError("cell values outside u16")
        cells = cells.astype(np.uint16)
    if not -(1 << 31) <= int(frame.depth_um) < (1 << 31):
        raise LocalProtocolError("depth_um outside i32")
    body = _HDR.pack(SYNC, FRAME_TYPE, cells.shape[0], cells.shape[1], int(frame.counter) & 0xFFFFFFFF,
                     int(frame.t_device_us) & 0xFFFFFFFF, int(frame.depth_um)) + cells.astype("<u2").tobytes()
    return body + struct.pack("<H", crc16_ccitt(memoryview(body)[2:]))


def encode_reply(reply: Reply) -> bytes:
    text = "#" + reply.text + "\n"
    raw = text.encode("ascii", errors="strict")
    if len(raw) > _MAX_LINE or "\n" in reply.text:
        raise LocalProtocolError(f"reply too long or multi-line: {reply!r}")
    return raw


# ----------------------------------------------------------------------------- host role

class TactileHostCodec:
    """Host role: frames, counter jumps, replies and garbage out of the device's bytes.

    Resynchronisation: anything that is neither ``A5 5A`` nor ``#`` at the start of the
    buffer is skipped up to the next candidate and reported as one :class:`Garbage`; a
    frame whose CRC fails (or a header with a bad type/size) costs only its two sync bytes
    as garbage, so a real frame hidden behind a false sync is still found.
    """

    def __init__(self, max_buffer: int = 1 << 20) -> None:
        self._buf = ReceiveBuffer(max_buffer)
        self._expect: int | None = None
        self._held: PressureFrame | None = None
        #: frames whose CRC failed so far
        self.crc_errors = 0

    def reset_counter(self) -> None:
        """Forget the last counter (after START the device counts from 0 again)."""
        self._expect = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    def next_event(self) -> HostEvent | Garbage | NeedData:
        if self._held is not None:
            fr, self._held = self._held, None
            return fr
        over = self._buf.take_overflow()
        if over:
            return Garbage(over, "receive buffer overflow")
        buf = self._buf
        while True:
            n = len(buf)
            if n == 0:
                return NEED_DATA
            first = buf.peek(1)[0]
            if first == 0xA5:
                if n < 2:
                    return NEED_DATA
                if buf.peek(2) != SYNC:
                    return self._skip_to_candidate(1, "bad start byte")
                return self._frame()
            if first == 0x23:  # '#'
                return self._line()
            return self._skip_to_candidate(0, "bad start byte")

    def _skip_to_candidate(self, start: int, reason: str) -> Garbage | NeedData:
        buf = self._buf
        v = buf.view()
        i = start
        n = len(v)
        while i < n and v[i] != 0xA5 and v[i] != 0x23:
            i += 1
        del v
        if i == 0:
            i = 1
        buf.skip(i)
        return Garbage(i, reason)

    def _frame(self) -> HostEvent | Garbage | NeedData:
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return NEED_DATA
        _, ftype, rows, cols, counter, t_us, depth = _HDR.unpack(buf.peek(HEADER_SIZE))
        if ftype != FRAME_TYPE or not (1 <= rows <= MAX_CELLS_SIDE and 1 <= cols <= MAX_CELLS_SIDE):
            buf.skip(2)
            return Garbage(2, "bad frame header")
        size = frame_size(rows, cols)
        if len(buf) < size:
            return NEED_DATA
        raw = buf.peek(size)
        (crc,) = struct.unpack_from("<H", raw, size - 2)
        if crc16_ccitt(memoryview(raw)[2:size - 2]) != crc:
            self.crc_errors += 1
            buf.skip(2)
            return Garbage(2, "crc mismatch")
        buf.skip(size)
        cells = np.frombuffer(raw, dtype="<u2", count=rows * cols, offset=HEADER_SIZE).reshape(rows, cols).copy()
        frame = PressureFrame(counter, t_us, depth, cells)
        expect, self._expect = self._expect, (counter + 1) & 0xFFFFFFFF
        if expect is not None and counter != expect:
            self._held = frame
            return CounterJump(expect, counter, (counter - expect) & 0xFFFFFFFF)
        return frame

    def _line(self) -> Reply | Garbage | NeedData:
        buf = self._buf
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > _MAX_LINE:
                return self._skip_to_candidate(1, "reply line too long")
            return NEED_DATA
        if i + 1 > _MAX_LINE:
            return self._skip_to_candidate(1, "reply line too long")
        raw = buf.peek(i + 1)
        body = raw[1:-1].rstrip(b"\r")
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            return self._skip_to_candidate(1, "non-ASCII reply line")
        if not text or not text.isprintable():
            return self._skip_to_candidate(1, "bad reply line")
        buf.skip(i + 1)
        parts = text.split()
        return Reply(parts[0], tuple(parts[1:]))

    def send(self, event: TactileCommand) -> bytes:
        """The bytes of a command (:class:`LocalProtocolError` for a bad argument)."""
        return encode_command(event)


# ----------------------------------------------------------------------------- device role

class TactileDeviceCodec:
    """Device role: command lines in (→ command events or :class:`BadCommand`), frames and
    replies out."""

    def __init__(self) -> None:
        self._buf = ReceiveBuffer(4096)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    def next_event(self) -> TactileCommand | BadCommand | Garbage | NeedData:
        over = self._buf.take_overflow()
        if over:
            return Garbage(over, "receive buffer overflow")
        i = self._buf.find(b"\n")
        if i < 0:
            if len(self._buf) > _MAX_LINE:
                n = len(self._buf)
                self._buf.skip(n)
                return Garbage(n, "command line too long")
            return NEED_DATA
        raw = self._buf.consume(i + 1)
        try:
            line = raw[:-1].rstrip(b"\r").decode("ascii").strip()
        except UnicodeDecodeError:
            return Garbage(len(raw), "non-ASCII command line")
        if not line:
            return self.next_event()
        return _parse_command(line)

    def send(self, event: PressureFrame | Reply) -> bytes:
        if isinstance(event, PressureFrame):
            return encode_frame(event)
        if isinstance(event, Reply):
            return encode_reply(event)
        raise LocalProtocolError(f"not a tactile device message: {event!r}")


def _parse_command(line: str) -> TactileCommand | BadCommand:
    parts = line.split()
    word, args = parts[0].upper(), parts[1:]
    simple: dict[str, TactileCommand] = {"ID?": Identify(), "RATE?": QueryRate(), "GAIN?": QueryGain(),
                                         "ZERO": Zero(), "START": Start(), "STOP": Stop()}
    if word in simple:
        if args:
            return BadCommand(line, ERR_ARGUMENT, f"{word} takes no argument")
        return simple[word]
    if word in ("RATE", "GAIN"):
        if len(args) != 1:
            return BadCommand(line, ERR_ARGUMENT, f"{word} takes one argument")
        try:
            if word == "RATE":
                hz = float(args[0])
                lo, hi = RATE_RANGE_HZ
                if not lo <= hz <= hi:
                    return BadCommand(line, ERR_ARGUMENT, f"rate outside {lo:g}..{hi:g}")
                return SetRate(hz)
            g = int(args[0])
        except ValueError:
            return BadCommand(line, ERR_ARGUMENT, f"bad number {args[0]!r}")
        if g not in GAINS:
            return BadCommand(line, ERR_ARGUMENT, "gain not one of 1 2 4 8")
        return SetGain(g)
    return BadCommand(line, ERR_UNKNOWN, "unknown command")
