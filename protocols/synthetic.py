"""Wire protocol of medacq's synthetic device (both roles).

The synthetic device stands in for any array-producing instrument so the daemon can be
run and tested end to end before (and beside) the real device families. Its protocol is
deliberately shaped like a real instrument's: text commands in, framed binary out.

Host → device: ASCII lines ending ``\\n``::

    *IDN?                     -> reply "MEDACQ,SYNTH,<serial>,1.0"
    CONF <json object>        -> reply "OK" or "ERR <reason>"   (keys: see SynthConfig)
    CONF?                     -> reply "<json object>"
    START | STOP              -> reply "OK"

Device → host: packets ``A5 5A <type u8> 00 <len u32 LE> <body> <crc32(body) u32 LE>``
with type ``D`` (a data frame) or ``R`` (a reply, UTF-8 text). A data body is::

    seq u64 LE | t_device_ns u64 LE | dtype code u8 | ndim u8 | shape u32 LE × ndim | data

``seq`` is the device's frame counter (it restarts at 0 on START); ``t_device_ns`` the
device clock (ns since power-on). Bytes that do not form a valid packet are skipped and
reported as :class:`~medacq.protocols._sansio.Garbage`.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ._sansio import NEED_DATA, READ_ROOM, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "SYNC",
    "MAX_BODY",
    "DTYPE_CODES",
    "SynthFrame",
    "SynthReply",
    "SynthCommand",
    "SynthHostCodec",
    "SynthDeviceCodec",
]

SYNC: Final = b"\xa5\x5a"
_PKT_HDR = struct.Struct("<2sBxI")  # sync, type, pad, body length
_DATA_HDR = struct.Struct("<QQBB")  # seq, t_device_ns, dtype code, ndim
_CRC = struct.Struct("<I")
#: Largest body a host accepts; anything larger is treated as corruption.
MAX_BODY: Final = 64 * 1024 * 1024
#: Longest command line a device accepts.
MAX_LINE: Final = 4096

DTYPE_CODES: Final[dict[int, str]] = {1: "<u1", 2: "<i2", 3: "<u2", 4: "<i4", 5: "<f4", 6: "<f8"}
_CODE_OF: Final = {np.dtype(v).str: k for k, v in DTYPE_CODES.items()}


@dataclass(frozen=True, slots=True)
class SynthFrame:
    """One data frame. ``data`` has the device's shape and dtype (little-endian)."""

    seq: int
    t_device_ns: int
    data: np.ndarray


@dataclass(frozen=True, slots=True)
class SynthReply:
    """A text reply to a command."""

    text: str


@dataclass(frozen=True, slots=True)
class SynthCommand:
    """A host command: ``verb`` upper-cased (``*IDN?``, ``CONF``, ``CONF?``, ``START``, ``STOP``)."""

    verb: str
    argument: str = ""


def _packet(kind: bytes, body: bytes | memoryview) -> bytes:
    return b"".join((_PKT_HDR.pack(SYNC, kind[0], len(body)), body, _CRC.pack(zlib.crc32(body))))


class SynthHostCodec:
    """Host role: device bytes → :class:`SynthFrame` / :class:`SynthReply` / :class:`Garbage`."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = ReceiveBuffer(max_size=max_body + 64 + READ_ROOM)
        self.max_body = max_body

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def send(self, command: SynthCommand) -> bytes:
        """Encode a command line."""
        verb = command.verb.upper()
        if verb not in ("*IDN?", "CONF", "CONF?", "START", "STOP"):
            raise LocalProtocolError(f"unknown synthetic-device command {command.verb!r}")
        if "\n" in command.argument:
            raise LocalProtocolError("command argument must not contain a newline")
        line = f"{verb} {command.argument}" if command.argument else verb
        return line.encode() + b"\n"

    def next_event(self) -> SynthFrame | SynthReply | Garbage | NeedData:
        buf = self._buf
        lost = buf.take_overflow()
        if lost:
            return Garbage(lost, "receive buffer overflow")
        if len(buf) < 2:
            return NEED_DATA
        i = buf.find(SYNC)
        if i != 0:
            # skip to the next sync (keep a trailing 0xA5 that may start one)
            n = i if i > 0 else (len(buf) - 1 if buf.peek(len(buf))[-1:] == SYNC[:1] else len(buf))
            if n == 0:
                return NEED_DATA
            buf.skip(n)
            return Garbage(n, "no sync")
        if len(buf) < _PKT_HDR.size:
            return NEED_DATA
        _, kind, length = _PKT_HDR.unpack(buf.peek(_PKT_HDR.size))
        if kind not in (0x44, 0x52) or length > self.max_body:
            buf.skip(1)
            return Garbage(1, "bad packet header")
        total = _PKT_HDR.size + length + _CRC.size
        if len(buf) < total:
            return NEED_DATA
        view = buf.view()
        body = view[_PKT_HDR.size : _PKT_HDR.size + length]
        (crc,) = _CRC.unpack(view[_PKT_HDR.size + length : total])
        if zlib.crc32(body) != crc:
            del view, body
            buf.skip(1)
            return Garbage(1, "crc mismatch")
        if kind == 0x52:
            text = bytes(body).decode("utf-8", "replace")
            del view, body
            buf.skip(total)
            return SynthReply(text)
        event = self._data(body)
        del view, body
        buf.skip(total)
        if event is None:
            return Garbage(total, "malformed data body")
        return event

    @staticmethod
    def _data(body: memoryview) -> SynthFrame | None:
        if len(body) < _DATA_HDR.size:
            return None
        seq, t_dev, code, ndim = _DATA_HDR.unpack(body[: _DATA_HDR.size])
        dt = DTYPE_CODES.get(code)
        end = _DATA_HDR.size + 4 * ndim
        if dt is None or ndim > 8 or len(body) < end:
            return None
        shape = struct.unpack(f"<{ndim}I", body[_DATA_HDR.size : end])
        dtype = np.dtype(dt)
        n = int(np.prod(shape, dtype=np.int64)) if ndim else 1
        if len(body) - end != n * dtype.itemsize:
            return None
        data = np.frombuffer(bytes(body[end:]), dtype=dtype).reshape(shape)
        return SynthFrame(seq, t_dev, data)


class SynthDeviceCodec:
    """Device role: host bytes → :class:`SynthCommand`; frames and replies → bytes."""

    def __init__(self) -> None:
        self._buf = ReceiveBuffer(max_size=MAX_LINE * 4)

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def next_event(self) -> SynthCommand | Garbage | NeedData:
        buf = self._buf
        lost = buf.take_overflow()
        if lost:
            return Garbage(lost, "receive buffer overflow")
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > MAX_LINE:
                n = len(buf)
                buf.skip(n)
                return Garbage(n, "command line too long")
            return NEED_DATA
        line = buf.consume(i + 1).rstrip(b"\r\n")
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return Garbage(len(line) + 1, "non-ASCII command")
        if not text:
            return self.next_event()
        verb, _, arg = text.partition(" ")
        return SynthCommand(verb.upper(), arg.strip())

    @staticmethod
    def send(event: SynthFrame | SynthReply) -> bytes:
        if isinstance(event, SynthReply):
            return _packet(b"R", event.text.encode())
        data = np.ascontiguousarray(event.data)
        code = _CODE_OF.get(data.dtype.newbyteorder("<").str if data.dtype.byteorder == ">" else data.dtype.str)
        if code is None:
            raise LocalProtocolError(f"dtype {data.dtype} not supported by the synthetic device")
        le = data.astype(DTYPE_CODES[code], copy=False)
        head = _DATA_HDR.pack(event.seq, event.t_device_ns, code, le.ndim) + struct.pack(f"<{le.ndim}I", *le.shape)
        return _packet(b"D", head + le.tobytes())


def config_json(config: dict[str, Any]) -> str:
    """Serialise a CONF argument."""
    return json.dumps(config, separators=(",", ":"))


def check_shape(shape: list[int]) -> list[int]:
    """Validate a synthetic frame shape (every axis > 0, at most 16 Mi elements)."""
    if any(d <= 0 for d in shape) or int(np.prod(shape)) > 16 * 1024 * 1024:
        raise ValueError("every axis must be > 0 and a frame at most 16 Mi elements")
    return shape


def check_dtype(dtype: str) -> str:
    """Validate and normalise a synthetic dtype string (one of :data:`DTYPE_CODES`)."""
    try:
        s = np.dtype(dtype).str
    except TypeError:
        raise ValueError(f"not a numpy dtype: {dtype!r}") from None
    if s not in _CODE_OF:
        raise ValueError(f"dtype must be one of {sorted(_CODE_OF)}")
    return s
