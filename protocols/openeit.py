"""OpenEIT serial ASCII codec (sans-I/O, both roles).

Wire format (OpenEIT/EIT_Firmware ``OpenEIT.c``; OpenEIT/OpenEIT serial handler),
115200 8N1:

* Host → device: a mode letter followed by ``\\n``: ``a`` time series, ``b`` bioimpedance
  spectroscopy, ``c``/``d``/``e`` tetrapolar imaging with 8/16/32 electrodes (firmware
  modes 3/4/5; checked against the latest ``OpenEIT.c`` and the OpenEIT dashboard's
  ``serial_write``, which maps c/d/e to 8/16/32). The firmware also has ``f``/``g``
  (bipolar imaging / time series), not modelled here. Older firmware versions used ``c``
  for 16-electrode imaging and ``d``/``e`` for bipolar modes.
* Device → host, imaging: one line per frame ``magnitudes: v1,v2,...,vN,\\r\\n``; each value
  is the firmware's 28.4 fixed point printed ``%8d.%04d`` (so values step by 1/16 and may
  be space-padded; the firmware leaves a trailing comma). N = 32/192/896 for 8/16/32
  electrodes (opposition drive, adjacent measurement, pairs touching a current electrode
  skipped). Values are transfer-impedance magnitudes in ohms.
* Other lines (banner ``OpenEIT``, ``mode 3: imaging``, time-series values) are text.

Host role (:class:`OpenEITHostCodec`) parses lines → :class:`Magnitudes` /
:class:`TextLine`; device role (:class:`OpenEITDeviceCodec`) parses mode letters →
:class:`SetMode`. Unparseable lines become :class:`~medacq.protocols._sansio.Garbage`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

import numpy as np

from ._sansio import NEED_DATA, READ_ROOM, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "MODES",
    "IMAGING_ELECTRODES",
    "MEASUREMENTS_PER_FRAME",
    "SetMode",
    "Magnitudes",
    "TextLine",
    "OpenEITHostCodec",
    "OpenEITDeviceCodec",
    "format_fixed",
]

MODES = frozenset("abcde")
IMAGING_ELECTRODES: dict[str, int] = {"c": 8, "d": 16, "e": 32}
MEASUREMENTS_PER_FRAME: dict[int, int] = {8: 32, 16: 192, 32: 896}
_MAX_LINE = 32 * 1024
_VALUE_RE = re.compile(rb"^\s*(-?)(\d+)\.(\d{4})\s*$")


@dataclass(frozen=True, slots=True)
class SetMode:
    """Host asks for mode ``letter`` (one of ``a``..``e``)."""

    letter: str

    @property
    def n_electrodes(self) -> int | None:
        return IMAGING_ELECTRODES.get(self.letter)


@dataclass(frozen=True, slots=True, eq=False)
class Magnitudes:
    """One imaging frame: ``values`` shape ``(N,)`` float64, ohms (1/16 Ω resolution)."""

    values: np.ndarray

    @property
    def n_electrodes(self) -> int | None:
        for n_el, m in MEASUREMENTS_PER_FRAME.items():
            if m == len(self.values):
                return n_el
        return None


@dataclass(frozen=True, slots=True)
class TextLine:
    """Any other printable line from the device (``\\r\\n`` stripped)."""

    text: str


OpenEITEvent = Union[Magnitudes, TextLine]


def format_fixed(value: float) -> bytes:
    """Format like the firmware's ``sprintf_fixed32``: 28.4 fixed point, ``%8d.%04d``."""
    full = int(round(value * 16.0))
    if full < 0:
        a = -full
        ip, fp = a >> 4, a & 0xF
        s = f"-{ip}.{fp * 625:04d}"
        return f"{s:>13}".encode("ascii")
    return f"{full >> 4:8d}.{(full & 0xF) * 625:04d}".encode("ascii")


def _parse_values(body: bytes) -> np.ndarray | None:
    parts = body.split(b",")
    if parts and parts[-1].strip() == b"":
        parts = parts[:-1]
    if not parts:
        return None
    out = np.empty(len(parts), dtype=np.float64)
    for i, p in enumerate(parts):
        m = _VALUE_RE.match(p)
        if m is None:
            return None
        v = int(m.group(2)) + int(m.group(3)) / 10000.0
        out[i] = -v if m.group(1) else v
    return out


class OpenEITHostCodec:
    """Host role: device lines → :class:`Magnitudes` / :class:`TextLine` / Garbage."""

    def __init__(self, max_line: int = _MAX_LINE) -> None:
        # the line limit is checked apart from the buffer's bound, which keeps READ_ROOM for one
        # read of many short lines behind a partial one
        self._buf = ReceiveBuffer(max_line + READ_ROOM)
        self._max_line = max_line
        self._skip_line = False  # inside a line already reported too long: drop through its newline

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def next_event(self) -> OpenEITEvent | Garbage | NeedData:
        over = self._buf.take_overflow()
        if over:
            return Garbage(over, "line too long")
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                n = len(self._buf)
                if n > self._max_line:
                    self._buf.skip(n)
                    self._skip_line = True
                    return Garbage(n, "line too long")
                return NEED_DATA
            if self._skip_line or i + 1 > self._max_line:  # (the rest of) a line over the limit
                self._buf.skip(i + 1)
                self._skip_line = False
                return Garbage(i + 1, "line too long")
            raw = self._buf.consume(i + 1)
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if line.startswith(b"magnitudes:"):
                vals = _parse_values(line[len(b"magnitudes:"):])
                if vals is None:
                    return Garbage(len(raw), "bad magnitudes line")
                return Magnitudes(vals)
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                return Garbage(len(raw), "non-ASCII line")
            if not text.isprintable():
                return Garbage(len(raw), "non-printable line")
            return TextLine(text)

    def send(self, event: SetMode) -> bytes:
        if not isinstance(event, SetMode) or event.letter not in MODES:
            raise LocalProtocolError(f"not an OpenEIT mode: {event!r}")
        return event.letter.encode("ascii") + b"\n"


class OpenEITDeviceCodec:
    """Device role: ``<letter>\\n`` → :class:`SetMode`; frames/text → bytes."""

    def __init__(self) -> None:
        self._buf = ReceiveBuffer(256)

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def next_event(self) -> SetMode | Garbage | NeedData:
        over = self._buf.take_overflow()
        if over:
            return Garbage(over, "receive buffer overflow")
        i = self._buf.find(b"\n")
        if i < 0:
            return NEED_DATA
        raw = self._buf.consume(i + 1)
        body = raw[:-1].rstrip(b"\r")
        if len(body) >= 1 and chr(body[-1]) in MODES:
            if len(body) == 1:
                return SetMode(chr(body[0]))
            # garbage before a valid command: report the loss, keep the command
            self._buf = _prepend(self._buf, body[-1:] + b"\n")
            return Garbage(len(body) - 1, "bad command bytes")
        return Garbage(len(raw), "unknown command")

    def send(self, event: OpenEITEvent) -> bytes:
        if isinstance(event, Magnitudes):
            vals = np.asarray(event.values, dtype=np.float64)
            return b"magnitudes: " + b"".join(format_fixed(v) + b"," for v in vals) + b"\r\n"
        if isinstance(event, TextLine):
            return event.text.encode("ascii") + b"\n"
        raise LocalProtocolError(f"not an OpenEIT device message: {event!r}")


def _prepend(buf: ReceiveBuffer, data: bytes) -> ReceiveBuffer:
    new = ReceiveBuffer(buf.max_size)
    new.append(data)
    new.append(buf.view().tobytes())
    return new
