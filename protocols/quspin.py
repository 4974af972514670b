"""QuSpin-style optically pumped magnetometer (QZFM) serial protocol, sans-I/O, both roles.

Wire facts (ucn-triumf/QZFM ``QZFM.py``, following QuSpin's published QZFM command list):

* 115200 8N1. Host → device: single characters (:data:`COMMANDS`).
* Device → host, lines ending ``\\r\\n``:
  ``!<int>`` a field sample at 200 Hz, field pT = (n − 8388608) × 0.01;
  ``~NN<value>`` a status read-back (``04`` cell-temperature error, ``05`` cell-temperature
  voltage, ``07``/``08``/``09`` Bz/By/B0 compensation field, offset 32768);
  ``|<led><0|1>`` LED states (1 laser on, 2 cell-T lock, 3 laser lock, 4 field zeroed,
  5 master); ``#<text>`` messages.

The host codec resynchronises on the next ``\\r\\n`` after anything it cannot parse and
reports the loss as ``Garbage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Union

from ._sansio import NEED_DATA, READ_ROOM, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "FIELD_OFFSET",
    "FIELD_LSB_PT",
    "COMMANDS",
    "AUTO_START",
    "FIELD_ZERO_ON",
    "FIELD_ZERO_OFF",
    "CALIBRATE",
    "STREAM_ON",
    "STREAM_OFF",
    "FIELD_RESET",
    "REBOOT",
    "QuSpinCommand",
    "QuSpinSample",
    "QuSpinStatus",
    "QuSpinLed",
    "QuSpinMessage",
    "counts_to_pt",
    "pt_to_counts",
    "QuSpinHostCodec",
    "QuSpinDeviceCodec",
]

FIELD_OFFSET: Final = 8388608
FIELD_LSB_PT: Final = 0.01
AUTO_START: Final = ">"
FIELD_ZERO_ON: Final = "D"
FIELD_ZERO_OFF: Final = "E"
CALIBRATE: Final = "9"
STREAM_ON: Final = "7"
STREAM_OFF: Final = "8"
FIELD_RESET: Final = "V"
REBOOT: Final = "e"
#: Known single-character commands → meaning.
COMMANDS: Final = {
    ">": "auto start",
    "D": "field zero on",
    "E": "field zero off",
    "i": "field zero xyz",
    "h": "field zero yz",
    "9": "calibrate",
    "7": "data stream on",
    "8": "data stream off",
    "V": "field reset",
    "G": "read axis x",
    "@": "read axis y",
    "?": "read axis z",
    "C": "sensitive axis z",
    "F": "sensitive axis y",
    "B": "sensitive axis dual",
    "a": "analog gain 0.33x",
    "`": "analog gain 1x",
    "b": "analog gain 3x",
    "e": "reboot",
}
_MAX_LINE: Final = 256


def counts_to_pt(n: int) -> float:
    """Sample integer → field in pT."""
    return (n - FIELD_OFFSET) * FIELD_LSB_PT


def pt_to_counts(pt: float) -> int:
    """Field in pT → sample integer (rounded, clipped to 0..2^24 − 1)."""
    n = int(round(pt / FIELD_LSB_PT)) + FIELD_OFFSET
    return min(max(n, 0), (1 << 24) - 1)


@dataclass(frozen=True, slots=True)
class QuSpinCommand:
    """One command character; ``known`` tells whether it is in :data:`COMMANDS`."""

    char: str

    @property
    def known(self) -> bool:
        return self.char in COMMANDS


@dataclass(frozen=True, slots=True)
class QuSpinSample:
    """``!<int>``; ``raw`` is the integer, :attr:`field_pt` the field in pT."""

    raw: int

    @property
    def field_pt(self) -> float:
        return counts_to_pt(self.raw)


@dataclass(frozen=True, slots=True)
class QuSpinStatus:
    """``~NN<value>``: status code (two digits) and its value text."""

    code: int
    value: str


@dataclass(frozen=True, slots=True)
class QuSpinLed:
    """``|<led><0|1>``."""

    led: int
    on: bool


@dataclass(frozen=True, slots=True)
class QuSpinMessage:
    """``#<text>``."""

    text: str


DeviceLine = Union[QuSpinSample, QuSpinStatus, QuSpinLed, QuSpinMessage]


def _parse_line(line: bytes) -> DeviceLine | None:
    if not line:
        return None
    try:
        s = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    head, rest = s[0], s[1:]
    if head == "!":
        return QuSpinSample(int(rest)) if rest.isascii() and rest.isdigit() and len(rest) <= 8 else None
    if head == "~":
        if len(rest) >= 2 and rest[:2].isascii() and rest[:2].isdigit():
            return QuSpinStatus(int(rest[:2]), rest[2:])
        return None
    if head == "|":
        if len(rest) == 2 and rest[0] in "0123456789" and rest[1] in "01":
            return QuSpinLed(int(rest[0]), rest[1] == "1")
        return None
    if head == "#":
        return QuSpinMessage(rest) if rest.isprintable() else None
    return None


class QuSpinHostCodec:
    """Host role: device lines → events; :class:`QuSpinCommand` → one byte."""

    def __init__(self, max_buffer: int = (1 << 16) + READ_ROOM) -> None:
        self._buf = ReceiveBuffer(max_buffer)
        self.garbage_bytes = 0

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def next_event(self) -> DeviceLine | Garbage | NeedData:
        lost = self._buf.take_overflow()
        if lost:
            self.garbage_bytes += lost
            return Garbage(lost, "receive buffer overflow")
        buf = self._buf
        while True:
            nl = buf.find(b"\r\n")
            if nl < 0:
                if len(buf) > _MAX_LINE:
                    n = len(buf) - 1  # keep a possible trailing '\r'
                    buf.skip(n)
                    self.garbage_bytes += n
                    return Garbage(n, "line too long")
                return NEED_DATA
            if nl == 0:
                buf.skip(2)
                continue
            line = buf.peek(nl)
            buf.skip(nl + 2)
            ev = _parse_line(line)
            if ev is None:
                self.garbage_bytes += nl + 2
                return Garbage(nl + 2, "unparseable line")
            return ev

    def send(self, event: QuSpinCommand) -> bytes:
        if not isinstance(event, QuSpinCommand) or len(event.char) != 1:
            raise LocalProtocolError(f"host cannot send {event!r}")
        if not event.known:
            raise LocalProtocolError(f"unknown QZFM command {event.char!r}")
        return event.char.encode("ascii")


class QuSpinDeviceCodec:
    """Device role: host bytes → one :class:`QuSpinCommand` per byte (unknown ones too,
    the sensor ignores them); lines → bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 4096:
            del self._buf[: len(self._buf) - 4096]

    def next_event(self) -> QuSpinCommand | NeedData:
        while self._buf:
            c = self._buf[0]
            del self._buf[0]
            if c in (0x0D, 0x0A):
                continue
            return QuSpinCommand(chr(c))
        return NEED_DATA

    def send(self, event: DeviceLine) -> bytes:
        if isinstance(event, QuSpinSample):
            if not 0 <= event.raw < 1 << 24:
                raise LocalProtocolError(f"sample {event.raw} out of range")
            return b"!%d\r\n" % event.raw
        if isinstance(event, QuSpinStatus):
            return f"~{event.code:02d}{event.value}\r\n".encode("ascii")
        if isinstance(event, QuSpinLed):
            return f"|{event.led}{1 if event.on else 0}\r\n".encode("ascii")
        if isinstance(event, QuSpinMessage):
            return f"#{event.text}\r\n".encode("ascii")
        raise LocalProtocolError(f"device cannot send {event!r}")
