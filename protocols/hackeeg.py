"""HackEEG protocol (Starcat hackeeg-driver-arduino), sans-I/O, both roles.

Wire facts, from the upstream sources (starcat-io/hackeeg-driver-arduino
``hackeeg_driver/hackeeg_driver.ino``, ``hackeeg_driver/JsonCommand.cpp``, ``README.md``;
starcat-io/hackeeg-client-python ``hackeeg/driver.py``):

* The board boots in **text mode** and prints ``Ready``. Text commands are lines
  ``name [hexarg ...]`` ended by LF; the text parser lower-cases every character, keeps
  only printable ones and splits on spaces. Replies are lines like ``200 Ok``; an unknown
  command is answered ``406 Error: Unrecognized command.`` and a blank line.
* ``jsonlines`` switches to **JSON Lines**: commands ``{"COMMAND": "rreg",
  "PARAMETERS": [1]}``, replies ``{"STATUS_CODE": 200, "STATUS_TEXT": "Ok", "DATA": ...}``.
* ``messagepack`` switches to **MessagePack** for *samples only*: commands are still JSON
  Lines and so are all replies. A sample is the fixmap ``{"C": 200, "D": <bin8 record>}``
  (header bytes ``82 a1 43 cc c8 a1 44 c4 LEN``); in JSON Lines it is
  ``{"C":200,"D":"<base64>"}``.
* **Mode rules.** The firmware's ``loop()`` runs only the text parser in text mode and only
  the JSON parser in JSON Lines *and* MessagePack modes. So a text line sent in JSON or
  MessagePack mode is not understood: ArduinoJson fails on it and the board answers
  ``{"STATUS_CODE":400,"STATUS_TEXT":"Bad Request"}``; valid JSON without a ``COMMAND`` (or
  with an unknown one; names are matched case-sensitively) gets
  ``{"STATUS_CODE":406,"STATUS_TEXT":"Unrecognized command"}``. A JSON line sent in text
  mode is a text command named ``{"command":`` and gets the text ``406`` reply.
* A sample record is ``timestamp`` uint32 LE (µs), ``sample_number`` uint32 LE, 3 ADS
  status bytes, then 3 bytes int24 big-endian per channel (35 bytes for 8 channels).
* Mode switching takes effect before the reply: ``jsonlines`` sent in text mode is
  answered in JSON, ``text`` sent in JSON mode is answered ``200 Ok``.

ADS1298 facts (TI datasheet): CONFIG1 (0x01) bit 7 = HR, bits 2:0 = DR; CHnSET (0x05–0x0C)
bit 7 = power-down, bits 6:4 = gain code, bits 2:0 = input mux. Counts → µV with
Vref 2.4 V: 2.4 / gain / (2^23 − 1) V per count.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Union

import numpy as np

from ._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "Mode",
    "TEXT",
    "JSONLINES",
    "MESSAGEPACK",
    "STATUS_OK",
    "REG_ID",
    "REG_CONFIG1",
    "REG_CHNSET",
    "ADS1298_ID",
    "GAIN_FROM_CODE",
    "CODE_FROM_GAIN",
    "MUX_SHORTED",
    "rate_from_config1",
    "config1_for_rate",
    "gain_from_chnset",
    "chnset",
    "counts_to_uv",
    "HackEEGCommand",
    "HackEEGResponse",
    "HackEEGSample",
    "TextLine",
    "MalformedCommand",
    "MalformedReason",
    "BAD_JSON",
    "NO_COMMAND",
    "NOT_A_COMMAND",
    "BAD_ARGUMENT",
    "encode_command",
    "encode_record",
    "decode_record",
    "HackEEGHostCodec",
    "HackEEGDeviceCodec",
]

Mode = Literal["text", "jsonlines", "messagepack"]
TEXT: Final = "text"
JSONLINES: Final = "jsonlines"
MESSAGEPACK: Final = "messagepack"
STATUS_OK: Final = 200
_MP_HEADER: Final = bytes([0x82, 0xA1, 0x43, 0xCC, 0xC8, 0xA1, 0x44, 0xC4])
_MAX_LINE: Final = 4096

# ---------------------------------------------------------------- ADS1298 registers
REG_ID: Final = 0x00
REG_CONFIG1: Final = 0x01
REG_CHNSET: Final = 0x05  # CH1SET; CHnSET = 0x04 + n
ADS1298_ID: Final = 0x92
MUX_SHORTED: Final = 0x01
#: CHnSET gain code (bits 6:4) → PGA gain.
GAIN_FROM_CODE: Final = {0: 6, 1: 1, 2: 2, 3: 3, 4: 4, 5: 8, 6: 12}
CODE_FROM_GAIN: Final = {g: c for c, g in GAIN_FROM_CODE.items()}
_HR_RATES: Final = (32000, 16000, 8000, 4000, 2000, 1000, 500)
_LP_RATES: Final = (16000, 8000, 4000, 2000, 1000, 500, 250)


def rate_from_config1(config1: int) -> int:
    """Sample rate (SPS) from CONFIG1: HR (bit 7) 32k…500, LP 16k…250; DR = bits 2:0."""
    dr = config1 & 0x07
    if dr == 7:
        raise ValueError("CONFIG1 DR=111 is reserved")
    return (_HR_RATES if config1 & 0x80 else _LP_RATES)[dr]


def config1_for_rate(rate: int) -> int:
    """CONFIG1 value for ``rate`` SPS, preferring high-resolution mode (250 needs LP)."""
    if rate in _HR_RATES:
        return 0x80 | _HR_RATES.index(rate)
    if rate in _LP_RATES:
        return _LP_RATES.index(rate)
    raise ValueError(f"ADS1298 has no {rate} SPS rate")


def gain_from_chnset(value: int) -> int:
    code = (value >> 4) & 0x07
    if code == 7:
        raise ValueError("CHnSET gain code 111 is reserved")
    return GAIN_FROM_CODE[code]


def chnset(gain: int = 6, mux: int = 0, power_down: bool = False) -> int:
    """CHnSET register value for a PGA gain and input mux."""
    return (0x80 if power_down else 0) | (CODE_FROM_GAIN[gain] << 4) | (mux & 0x07)


def counts_to_uv(counts: np.ndarray | int, gain: int | np.ndarray = 6,
                 vref: float = 2.4) -> np.ndarray:
    """int24 counts → µV: vref / gain / (2^23 − 1). Per-channel gains broadcast on axis 0
    of a ``(channels, samples)`` array."""
    c = np.asarray(counts, dtype=float)
    g = np.asarray(gain, dtype=float)
    if g.ndim == 1 and c.ndim == 2:
        g = g[:, None]
    return c * (vref / g / (2**23 - 1) * 1e6)


# -------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class HackEEGCommand:
    """A host command, e.g. ``HackEEGCommand("wreg", (0x01, 0x86))``."""

    command: str
    parameters: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HackEEGResponse:
    """A reply: JSON ``{"STATUS_CODE":…, "STATUS_TEXT":…, "DATA":…}`` or text ``200 Ok``."""

    status_code: int
    status_text: str = "Ok"
    data: Any = None


@dataclass(frozen=True, slots=True)
class HackEEGSample:
    """One streamed record.

    Attributes:
        timestamp_us: board ``micros()`` (uint32, wraps).
        sample_number: uint32 counter (reset by ``start``).
        status: the 24 ADS status bits (``1100`` + LOFF_STATP + LOFF_STATN + GPIO).
        channels: raw signed int24 counts, channel 1..n.
    """

    timestamp_us: int
    sample_number: int
    status: int
    channels: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TextLine:
    """A text-mode line that is not a sample (``Ready``, ``200 Ok`` …), without CR LF."""

    text: str


MalformedReason = Literal["bad json", "no command", "not a command", "bad argument"]
#: JSON/MessagePack mode: the line does not deserialize (firmware: 400 "Bad Request").
BAD_JSON: Final = "bad json"
#: JSON/MessagePack mode: valid JSON but no string ``COMMAND`` (firmware: 406).
NO_COMMAND: Final = "no command"
#: Text mode: the first word cannot be a command name, e.g. a JSON object (firmware: 406).
NOT_A_COMMAND: Final = "not a command"
#: Text mode: an argument is not hexadecimal (firmware: 402 from ``rreg``/``wreg``; other
#: commands ignore their arguments).
BAD_ARGUMENT: Final = "bad argument"


@dataclass(frozen=True, slots=True)
class MalformedCommand:
    """Device role: a host line that is not a command in the current mode.

    Attributes:
        line: the line, stripped of white space at both ends.
        reason: why (``BAD_JSON``, ``NO_COMMAND``, ``NOT_A_COMMAND``, ``BAD_ARGUMENT``), so
            a simulator can give the firmware's own reply. Not part of equality.
        command: the (lower-cased) command word in text mode, ``""`` otherwise. Not part
            of equality.
    """

    line: bytes
    reason: MalformedReason = field(default="bad json", compare=False)
    command: str = field(default="", compare=False)


HostEvent = Union[HackEEGResponse, HackEEGSample, TextLine, Garbage]


# ------------------------------------------------------------------------- records
def encode_record(s: HackEEGSample) -> bytes:
    """The binary record (35 bytes for 8 channels)."""
    out = bytearray()
    out += (s.timestamp_us & 0xFFFFFFFF).to_bytes(4, "little")
    out += (s.sample_number & 0xFFFFFFFF).to_bytes(4, "little")
    out += (s.status & 0xFFFFFF).to_bytes(3, "big")
    for v in s.channels:
        if not -0x800000 <= v <= 0x7FFFFF:
            raise LocalProtocolError(f"value {v} exceeds int24")
        out += (v & 0xFFFFFF).to_bytes(3, "big")
    return bytes(out)


def decode_record(data: bytes) -> HackEEGSample:
    """Parse a record; raises ``ValueError`` if its length is not 11 + 3·n."""
    if len(data) < 14 or (len(data) - 11) % 3:
        raise ValueError(f"bad record length {len(data)}")
    ts = int.from_bytes(data[0:4], "little")
    sn = int.from_bytes(data[4:8], "little")
    st = int.from_bytes(data[8:11], "big")
    chans = tuple(
        int.from_bytes(data[i : i + 3], "big", signed=True) for i in range(11, len(data), 3)
    )
    return HackEEGSample(ts, sn, st, chans)


def _response_from_obj(obj: dict[str, Any]) -> HostEvent:
    if "STATUS_CODE" in obj:
        return HackEEGResponse(int(obj["STATUS_CODE"]), str(obj.get("STATUS_TEXT", "")),
                               obj.get("DATA"))
    return HackEEGResponse(int(obj.get("C", 0)), str(obj.get("T", "")), obj.get("D"))


def encode_command(event: HackEEGCommand, mode: Mode) -> bytes:
    """``event`` as the line the board's parser for ``mode`` reads: ``name HH HH\\n`` in
    text mode, ``{"COMMAND": name, "PARAMETERS": [...]}\\n`` in JSON Lines *and*
    MessagePack modes (commands are JSON in both)."""
    if not isinstance(event, HackEEGCommand):
        raise LocalProtocolError(f"host cannot send {event!r}")
    if not event.command or any(c.isspace() for c in event.command):
        raise LocalProtocolError(f"bad command name {event.command!r}")
    for p in event.parameters:
        if not 0 <= int(p) <= 255:
            raise LocalProtocolError(f"parameter {p} not a byte")
    if mode == TEXT:
        out = " ".join([event.command] + [f"{int(p):02X}" for p in event.parameters])
        return (out + "\n").encode()
    return (json.dumps({"COMMAND": event.command,
                        "PARAMETERS": [int(p) for p in event.parameters]}) + "\n").encode()


# ------------------------------------------------------------------------ host role
class HackEEGHostCodec:
    """Host role. Device bytes → :class:`HackEEGResponse` / :class:`HackEEGSample` /
    :class:`TextLine` / ``Garbage``; :class:`HackEEGCommand` → bytes in the current mode.

    ``mode`` follows the mode commands this codec encodes (``jsonlines``, ``messagepack``,
    ``text``). Lines starting ``{`` are always parsed as JSON and a ``0x82`` byte starts a
    MessagePack sample in any mode, because replies to a mode switch already come in the
    new mode. In JSON/MessagePack modes any other byte is garbage (resync on the next
    ``{`` or MessagePack header).
    """

    def __init__(self, mode: Mode = TEXT, max_buffer: int = 1 << 20) -> None:
        self.mode: Mode = mode
        self._buf = ReceiveBuffer(max_buffer)
        self.garbage_bytes = 0

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def _garbage(self, n: int, reason: str) -> Garbage:
        self._buf.skip(n)
        self.garbage_bytes += n
        return Garbage(n, reason)

    def _resync_len(self, start: int = 1) -> int:
        """Bytes up to the next plausible message start (``{`` or the MP header)."""
        buf = self._buf
        i = buf.find(b"{", start)
        j = buf.find(_MP_HEADER[:2], start)
        cands = [k for k in (i, j) if k >= 0]
        if self.mode == TEXT:
            k = buf.find(b"\n", start - 1)
            if k >= 0:
                cands.append(k + 1)
        return min(cands) if cands else len(buf)

    def next_event(self) -> HostEvent | NeedData:
        lost = self._buf.take_overflow()
        if lost:
            self.garbage_bytes += lost
            return Garbage(lost, "receive buffer overflow")
        buf = self._buf
        n = len(buf)
        if n == 0:
            return NEED_DATA
        b0 = buf.view()[0]
        if b0 == 0x82:
            return self._messagepack(n)
        if b0 in (0x0D, 0x0A):  # blank line / stray CR LF
            k = 0
            v = buf.view()
            while k < n and v[k] in (0x0D, 0x0A):
                k += 1
            buf.skip(k)
            return self.next_event()
        if b0 == 0x7B or self.mode == TEXT:
            nl = buf.find(b"\n")
            if nl < 0:
                if n > _MAX_LINE:
                    return self._garbage(self._resync_len(), "line too long")
                return NEED_DATA
            line = buf.peek(nl).rstrip(b"\r")
            if b0 == 0x7B:
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError
                except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting too
                    return self._garbage(min(self._resync_len(), nl + 1), "bad json line")
                buf.skip(nl + 1)
                if "D" in obj and "C" in obj and isinstance(obj["D"], str):
                    try:
                        return decode_record(base64.b64decode(obj["D"], validate=True))
                    except (ValueError, binascii.Error):
                        self.garbage_bytes += nl + 1
                        return Garbage(nl + 1, "bad sample payload")
                try:
                    return _response_from_obj(obj)
                except (ValueError, TypeError):  # e.g. a corrupted "C"/"STATUS_CODE" that is no number
                    self.garbage_bytes += nl + 1
                    return Garbage(nl + 1, "malformed reply object")
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                # resync at a JSON line or MessagePack record inside it, if there is one
                return self._garbage(self._resync_len(), "non-ascii text line")
            buf.skip(nl + 1)
            if len(text) in (48,) and not text.startswith(("Ready", "200")):
                try:
                    return decode_record(base64.b64decode(text, validate=True))
                except (ValueError, binascii.Error):
                    pass
            return TextLine(text)
        return self._garbage(self._resync_len(), "bad start byte")

    def _messagepack(self, n: int) -> HostEvent | NeedData:
        buf = self._buf
        hl = len(_MP_HEADER)
        if n < hl + 1:
            head = buf.peek(min(n, hl))
            if _MP_HEADER.startswith(head):
                return NEED_DATA
            # not the sample header: the generic path, as when more bytes had come at once
            # (the outcome must not depend on how the bytes were chunked)
            return self._generic_messagepack(n)
        head = buf.peek(hl + 1)
        if head[:hl] != _MP_HEADER:
            return self._generic_messagepack(n)
        length = head[hl]
        if length < 14 or (length - 11) % 3:
            return self._garbage(self._resync_len(), "bad messagepack record length")
        if n < hl + 1 + length:
            return NEED_DATA
        buf.skip(hl + 1)
        return decode_record(buf.consume(length))

    def _generic_messagepack(self, n: int) -> HostEvent | NeedData:
        import msgpack  # lazy: only the MessagePack path needs it

        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        data = self._buf.peek(min(n, 4096))
        up.feed(data)
        try:
            obj = up.unpack()
        except msgpack.OutOfData:
            return NEED_DATA if n < 4096 else self._garbage(self._resync_len(), "bad messagepack")
        except Exception:
            return self._garbage(self._resync_len(), "bad messagepack")
        used = up.tell()
        if not isinstance(obj, dict):
            return self._garbage(used, "messagepack object is not a map")
        self._buf.skip(used)
        d = obj.get("D")
        if isinstance(d, (bytes, bytearray)):
            try:
                return decode_record(bytes(d))
            except ValueError:
                self.garbage_bytes += used
                return Garbage(used, "bad sample payload")
        try:
            return _response_from_obj(obj)
        except (ValueError, TypeError):
            self.garbage_bytes += used
            return Garbage(used, "malformed reply object")

    def send(self, event: HackEEGCommand) -> bytes:
        """Encode a command in the current mode; mode commands switch :attr:`mode`."""
        raw = encode_command(event, self.mode)
        if event.command in (TEXT, JSONLINES, MESSAGEPACK):
            self.mode = event.command  # type: ignore[assignment]
        return raw


# ---------------------------------------------------------------------- device role
_COMMAND_WORD: Final = re.compile(r"[a-z0-9_]+")
_HEX_ARG: Final = re.compile(r"(0x)?[0-9a-f]+")
_JSON: Final = json.JSONDecoder()


@dataclass
class HackEEGDeviceCodec:
    """Device role. Host lines → :class:`HackEEGCommand` / :class:`MalformedCommand`;
    responses, samples and text lines → bytes in the current :attr:`mode`.

    Parsing follows the firmware's mode rules (``hackeeg_driver.ino`` ``loop()``): in text
    mode only the text parser runs (a JSON line is just an unknown text command), in JSON
    Lines and MessagePack modes only the JSON parser (a text line is bad JSON). Text mode:
    lower-cased, non-printable bytes dropped, blank lines ignored, hexadecimal arguments.
    JSON modes: the first JSON value of the line (ArduinoJson ignores what follows), the
    ``COMMAND`` name kept as sent (the firmware matches it case-sensitively), integer
    ``PARAMETERS``; an empty line is bad JSON too (the firmware answers it with 400).

    Like the firmware, a mode command switches :attr:`mode` as soon as it is parsed, so
    the reply the device then sends is already in the new mode.
    """

    mode: Mode = TEXT
    _buf: bytearray = field(default_factory=bytearray)

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 1 << 16:
            del self._buf[: len(self._buf) - (1 << 16)]

    def next_event(self) -> HackEEGCommand | MalformedCommand | NeedData:
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return NEED_DATA
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            ev = self._parse_text(raw) if self.mode == TEXT else self._parse_json(raw)
            if ev is None:
                continue
            if isinstance(ev, HackEEGCommand) and ev.command in (TEXT, JSONLINES, MESSAGEPACK):
                self.mode = ev.command  # type: ignore[assignment]
            return ev

    @staticmethod
    def _parse_text(raw: bytes) -> HackEEGCommand | MalformedCommand | None:
        # SerialCommand (hackeeg_driver): tolower() on every byte, printable ones kept,
        # strtok on " ", command word looked up first, then hex arguments (hex_to_long).
        text = bytes(b for b in raw.lower() if 0x20 <= b < 0x7F).decode("ascii")
        words = text.split(" ")
        words = [w for w in words if w]
        line = raw.strip()
        if not words:
            return None  # the firmware ignores a blank line in text mode
        name = words[0]
        if not _COMMAND_WORD.fullmatch(name):
            return MalformedCommand(line, NOT_A_COMMAND, name)
        params = []
        for w in words[1:]:
            if not _HEX_ARG.fullmatch(w):
                return MalformedCommand(line, BAD_ARGUMENT, name)
            params.append(int(w, 16))
        return HackEEGCommand(name, tuple(params))

    @staticmethod
    def _parse_json(raw: bytes) -> HackEEGCommand | MalformedCommand:
        # JsonCommand::readSerial: deserializeJson error → 400; no COMMAND → 406 (default
        # handler); PARAMETERS read only when it is an array.
        line = raw.strip()
        try:
            obj, _ = _JSON.raw_decode(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):  # ArduinoJson limits nesting too
            return MalformedCommand(line, BAD_JSON)
        cmd = obj.get("COMMAND") if isinstance(obj, dict) else None
        if not isinstance(cmd, str):
            return MalformedCommand(line, NO_COMMAND)
        params = obj.get("PARAMETERS")
        if not isinstance(params, list):
            params = []
        try:
            return HackEEGCommand(cmd, tuple(int(p) for p in params))
        except (ValueError, TypeError):
            # e.g. a string parameter; the firmware converts it with ArduinoJson (not modelled)
            return MalformedCommand(line, BAD_JSON)

    def send(self, event: HackEEGResponse | HackEEGSample | TextLine) -> bytes:
        if isinstance(event, HackEEGSample):
            rec = encode_record(event)
            if self.mode == MESSAGEPACK:
                return _MP_HEADER + bytes([len(rec)]) + rec
            b64 = base64.b64encode(rec)
            if self.mode == JSONLINES:
                return b'{"C":200,"D":"' + b64 + b'"}\n'
            return b64 + b"\r\n"
        if isinstance(event, HackEEGResponse):
            if self.mode == TEXT:
                return f"{event.status_code} {event.status_text}\r\n".encode()
            obj: dict[str, Any] = {"STATUS_CODE": event.status_code,
                                   "STATUS_TEXT": event.status_text}
            if event.data is not None:
                obj["DATA"] = event.data
            return (json.dumps(obj, separators=(",", ":")) + "\r\n").encode()
        if isinstance(event, TextLine):
            return event.text.encode("ascii") + b"\r\n"
        raise LocalProtocolError(f"device cannot send {event!r}")
