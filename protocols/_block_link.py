"""The framing shared by the nuclear list-mode links (PETsys-style singles, Anger camera events).

Both links carry blocks of records *and* a text command channel in one frame layout, little-endian::

    magic (4 bytes) | version u8 (=1) | kind u8 | reserved u16 (=0) | length u32 | counter u32
    payload (length bytes)
    crc32 u32   (zlib/IEEE CRC-32 of header + payload)

``kind`` is a :class:`FrameKind`: a data block (device → host, ``counter`` = block counter), a
command (host → device, ``counter`` = request id, UTF-8 text) or a reply (device → host, ``code
i32`` then UTF-8 text, codes :class:`ReplyCode`). What differs between links is the magic and the
data block's payload: a :class:`BlockLink` subclass names them (the hooks below); this module owns
the receive path (resync, CRC, length checks, :class:`BadFrame` / :class:`Garbage` events, never
an exception) and the send path of commands and replies.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final, Literal

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = ["FrameKind", "ReplyCode", "Command", "Reply", "BadFrame", "BlockLink", "FRAME_HEADER", "MAX_TEXT"]

#: magic | version | kind | reserved | length | counter
FRAME_HEADER: Final = struct.Struct("<4sBBHII")
VERSION: Final = 1
#: the longest command or reply text, bytes (UTF-8)
MAX_TEXT: Final = 1 << 20
_CRC = struct.Struct("<I")
_REPLY = struct.Struct("<i")


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


class FrameKind(IntEnum):
    """The ``kind`` byte of a frame."""

    SINGLES = 1  # the data block (singles on the PETsys link, raw events on the Anger link)
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


class BlockLink:
    """Both ends of a block link: ``role="host"`` (sends :class:`Command`, receives blocks and
    replies) or ``role="device"`` (sends blocks and :class:`Reply`, receives commands).

    ``receive_data(bytes)`` then ``next_event()`` until :data:`NEED_DATA`; ``send(event) -> bytes``.
    ``max_payload`` bounds a frame (a larger length field is garbage, not a reason to buffer).

    A subclass sets :attr:`MAGIC`, :attr:`BLOCK_TYPE` and the block hooks
    (:meth:`_block_length`, :meth:`_decode_block`, :meth:`_encode_block`).
    """

    #: the frame magic (4 bytes)
    MAGIC: ClassVar[bytes]
    #: the event class of a data block (what a device sends with ``kind`` 1)
    BLOCK_TYPE: ClassVar[type]
    #: how role errors name data blocks ("singles blocks")
    BLOCK_NAME: ClassVar[str] = "blocks"
    #: the data block's fixed header, bytes (the shortest block payload)
    BLOCK_HEADER_SIZE: ClassVar[int]
    #: bytes of payload that tell a block's length before the payload arrives (<= BLOCK_HEADER_SIZE)
    BLOCK_PEEK: ClassVar[int]
    #: the :class:`Garbage` reason of a block header whose length does not match its contents
    LENGTH_MISMATCH: ClassVar[str] = "frame length does not match its block header"
    #: the receive buffer holds a frame of ``max_payload`` plus this much
    BUFFER_SLACK: ClassVar[int] = FRAME_HEADER.size + 4 + (1 << 20)
    #: :class:`BadFrame` reasons (``format`` fields: role, name, kind)
    NOT_RECEIVED: ClassVar[str] = "a {role} does not receive {name} frames"
    BAD_COMMAND_TEXT: ClassVar[str] = "command text is not UTF-8"
    BAD_REPLY_TEXT: ClassVar[str] = "reply text is not UTF-8"

    def __init__(self, role: Literal["host", "device"] = "host", *, max_payload: int = 64 << 20) -> None:
        if role not in ("host", "device"):
            raise ValueError(f"role must be 'host' or 'device', not {role!r}")
        self.role = role
        self.max_payload = int(max_payload)
        self._buf = ReceiveBuffer(max_size=self.max_payload + self.BUFFER_SLACK)
        self._events: deque[Any] = deque()
        self._receives = (FrameKind.SINGLES, FrameKind.REPLY) if role == "host" else (FrameKind.COMMAND,)
        self._block_counter = 0
        self._request_id = 0

    # ---- block hooks (subclasses) -----------------------------------------------------------------
    def _block_length(self, head: bytes) -> int:
        """The payload length a data block whose first :attr:`BLOCK_PEEK` payload bytes are ``head`` has."""
        raise NotImplementedError

    def _decode_block(self, counter: int, payload: memoryview) -> Any:
        """A data block's event (or a :class:`BadFrame`) from its payload."""
        raise NotImplementedError

    def _encode_block(self, event: Any) -> tuple[int, tuple[bytes, ...]]:
        """``(counter, payload parts)`` of a data block event; :class:`LocalProtocolError` if it is malformed."""
        raise NotImplementedError

    # ---- receive ----------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer."""
        self._buf.append(data)
        lost = self._buf.take_overflow()
        if lost:
            self._events.append(Garbage(lost, "receive buffer overflow"))

    def next_event(self) -> Any | NeedData:
        """The next event, or :data:`NEED_DATA`."""
        if self._events:
            return self._events.popleft()
        ev = self._parse()
        return NEED_DATA if ev is None else ev

    def _parse(self) -> Any | None:
        buf, magic, hsize = self._buf, self.MAGIC, FRAME_HEADER.size
        n = len(buf)
        if n < 4:
            return None
        i = buf.find(magic)
        if i < 0:  # keep a possible partial magic at the end
            keep = next((k for k in (3, 2, 1) if magic.startswith(buf.peek(n)[-k:])), 0)
            buf.skip(n - keep)
            return Garbage(n - keep, "no frame magic") if n - keep else None
        if i > 0:
            buf.skip(i)
            return Garbage(i, "bytes before frame magic")
        if n < hsize:
            return None
        _, version, kind, reserved, length, counter = FRAME_HEADER.unpack(buf.peek(hsize))
        if version != VERSION or reserved != 0 or kind not in (1, 2, 3) or length > self.max_payload:
            buf.skip(1)  # not a real frame start: re-scan from the next byte
            return Garbage(1, "implausible frame header")
        if kind == FrameKind.SINGLES and length >= self.BLOCK_HEADER_SIZE and n >= hsize + self.BLOCK_PEEK:
            # the block's size is known before its payload is: a length that does not match it is a
            # corrupt header (do not wait for bytes that will never belong to this frame)
            if length != self._block_length(buf.peek(hsize + self.BLOCK_PEEK)[hsize:]):
                buf.skip(1)
                return Garbage(1, self.LENGTH_MISMATCH)
        elif kind != FrameKind.SINGLES and length > MAX_TEXT + 4:
            buf.skip(1)
            return Garbage(1, "implausible command/reply length")
        total = hsize + length + 4
        if n < total:
            return None
        view = buf.view()
        (crc,) = _CRC.unpack_from(view, total - 4)
        if zlib.crc32(view[: total - 4]) != crc:
            buf.skip(1)  # the frame may be truncated: look for the next magic inside it
            return BadFrame(kind, counter, "crc mismatch")
        frame = buf.consume(total)
        payload = memoryview(frame)[hsize : total - 4]
        if kind not in self._receives:
            name = FrameKind(kind).name.lower()
            return BadFrame(kind, counter, self.NOT_RECEIVED.format(role=self.role, name=name, kind=kind))
        if kind == FrameKind.SINGLES:
            return self._decode_block(counter, payload)
        if kind == FrameKind.COMMAND:
            try:
                return Command(counter, bytes(payload).decode("utf-8"))
            except UnicodeDecodeError:
                return BadFrame(FrameKind.COMMAND, counter, self.BAD_COMMAND_TEXT)
        if len(payload) < 4:
            return BadFrame(FrameKind.REPLY, counter, "reply shorter than its code")
        (code,) = _REPLY.unpack_from(payload)
        try:
            return Reply(counter, code, bytes(payload[4:]).decode("utf-8"))
        except UnicodeDecodeError:
            return BadFrame(FrameKind.REPLY, counter, self.BAD_REPLY_TEXT)

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

    def send(self, event: Any) -> bytes:
        """Encode ``event`` (a data block, :class:`Command` or :class:`Reply`) as one frame.
        :class:`LocalProtocolError` if this role does not send it or a field is out of range."""
        if isinstance(event, self.BLOCK_TYPE):
            self._check_role("device", self.BLOCK_NAME)
            counter, parts = self._encode_block(event)
            return self._frame(FrameKind.SINGLES, counter, *parts)
        if isinstance(event, Command):
            self._check_role("host", "commands")
            return self._frame(FrameKind.COMMAND, event.request_id, self._text(event.text))
        if isinstance(event, Reply):
            self._check_role("device", "replies")
            if not (-(1 << 31) <= event.code < (1 << 31)):
                raise LocalProtocolError("reply code must fit an i32")
            return self._frame(FrameKind.REPLY, event.request_id, _REPLY.pack(event.code), self._text(event.text))
        raise LocalProtocolError(f"cannot send {type(event).__name__}")

    def _check_role(self, role: str, what: str) -> None:
        if self.role != role:
            raise LocalProtocolError(f"a {self.role} does not send {what}")

    @staticmethod
    def _text(text: str) -> bytes:
        b = text.encode("utf-8")
        if len(b) > MAX_TEXT:
            raise LocalProtocolError("text longer than 1 MiB")
        return b

    def _frame(self, kind: FrameKind, counter: int, *parts: bytes) -> bytes:
        if not (0 <= counter <= 0xFFFFFFFF):
            raise LocalProtocolError("counter must fit a u32")
        length = sum(len(p) for p in parts)
        if length > self.max_payload:
            raise LocalProtocolError(f"payload of {length} bytes exceeds max_payload {self.max_payload}")
        head = FRAME_HEADER.pack(self.MAGIC, VERSION, int(kind), 0, length, counter)
        crc = zlib.crc32(head)
        for p in parts:
            crc = zlib.crc32(p, crc)
        return b"".join((head, *parts, _CRC.pack(crc)))
