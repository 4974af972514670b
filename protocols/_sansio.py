"""Shared pieces of every sans-I/O codec in :mod:`medacq.protocols`.

The pattern follows h11/wsproto: a codec is fed bytes with ``receive_data(data)``
and drained with ``next_event()``, which returns an event (a frozen dataclass) or
the :data:`NEED_DATA` sentinel. Outgoing messages are turned into bytes with
``send(event) -> bytes``. No sockets, threads, clocks or sleeps.

Two error directions, as in h11:

* :class:`LocalProtocolError` -- *our* side misused the protocol (e.g. asked to
  encode a command with an out-of-range argument). Raised from ``send``.
* :class:`RemoteProtocolError` -- the *peer* sent bytes that cannot be parsed.
  Codecs for streaming devices do **not** raise this for garbage in a data
  stream: they resynchronise and emit a :class:`Garbage` event that says how
  many bytes were discarded and why, so the driver can count what was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "NEED_DATA",
    "NeedData",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Garbage",
    "ReceiveBuffer",
    "READ_ROOM",
]


class NeedData:
    """Sentinel type: the codec needs more bytes before it can emit an event."""

    _instance: "NeedData | None" = None

    def __new__(cls) -> "NeedData":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False


NEED_DATA: Final = NeedData()


class ProtocolError(Exception):
    """Base class of codec errors."""


class LocalProtocolError(ProtocolError):
    """Our side asked the codec to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the protocol and cannot be skipped."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes the codec discarded while resynchronising.

    Attributes:
        nbytes: number of bytes thrown away.
        reason: short human-readable cause (``"bad start byte"``, ``"crc mismatch"``).
    """

    nbytes: int
    reason: str


READ_ROOM: Final = 256 << 10
"""Room (bytes) a host codec's :class:`ReceiveBuffer` keeps beyond its largest message: one
transport read. A driver drains the codec's events before it reads again, so the buffer then holds
at most one partial message, and a read of up to ``READ_ROOM`` bytes
(:attr:`medacq.drivers._base.CodecDriver.read_max`; a serial port gives at most 64 KiB) fits
behind it: a fast source or a starved driver loses nothing to the bound, whatever the driver has
not read yet waits in the kernel (a pty or socket then holds the writer back). A bound below
this (the Sciospec codec's was 64 KiB, the size of one pty read) discards good bytes as
"receive buffer overflow"."""


class ReceiveBuffer:
    """A bounded byte buffer for codecs.

    ``append`` never lets the buffer grow past ``max_size``: when it would, the
    oldest bytes are discarded and counted in :attr:`overflowed` (the codec turns
    that into a :class:`Garbage` event). Consumers read with ``peek``/``consume``.

    Storage is one bytearray reused in place: the unconsumed bytes ``[_pos, _end)`` move to
    its front only when an append would not fit behind them, and it is replaced by a larger
    one (at most ``max_size``) only when they would not fit at all. It is never resized, so a
    stream of large messages does not reallocate (and page-fault) a fresh buffer per message.
    """

    __slots__ = ("_buf", "_pos", "_end", "max_size", "overflowed")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        self.max_size = max_size
        self.overflowed = 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray)):
            data = memoryview(data).cast("B")
        n = len(data)
        if not n:
            return
        pos, end = self._pos, self._end
        live = end - pos
        excess = live + n - self.max_size
        if excess > 0:  # the oldest bytes go (those of data itself too, beyond max_size)
            self.overflowed += excess
            if excess >= live:
                data = memoryview(data)[excess - live:]
                n = len(data)
                pos = end = live = 0
            else:
                pos += excess
                live -= excess
        buf = self._buf
        if end + n > len(buf):
            if live + n <= len(buf) and live <= pos:  # move the live bytes to the front (no overlap)
                with memoryview(buf) as mv:
                    mv[:live] = mv[pos:end]
            else:
                new = bytearray(min(self.max_size, max(2 * len(buf), live + n, 4096)))
                with memoryview(buf) as old, memoryview(new) as mv:
                    mv[:live] = old[pos:end]
                self._buf = buf = new
            pos, end = 0, live
        with memoryview(buf) as mv:  # (bytearray slice assignment would copy a memoryview first)
            mv[end:end + n] = data
        self._pos, self._end = pos, end + n

    def __len__(self) -> int:
        return self._end - self._pos

    def view(self) -> memoryview:
        """A read-only view of the unconsumed bytes (valid until the next append)."""
        return memoryview(self._buf)[self._pos : self._end].toreadonly()

    def peek(self, n: int) -> bytes:
        return bytes(self._buf[self._pos : min(self._pos + n, self._end)]) if n > 0 else b""

    def find(self, sub: bytes | int, start: int = 0) -> int:
        """Index of ``sub`` relative to the unconsumed start, or -1."""
        at = self._pos + start
        if at < 0:  # as bytearray.find on the unconsumed bytes' end
            at = max(0, at + self._end)
        i = self._buf.find(sub, at, self._end)
        return -1 if i < 0 else i - self._pos

    def consume(self, n: int) -> bytes:
        out = self.peek(n)
        self.skip(len(out))
        return out

    #: storage above this (bytes) is given back once the unconsumed bytes fill less than an eighth
    #: of it (a burst, or a corrupt length field that made a codec wait for a huge message, must not
    #: keep its memory for the life of the connection); below it the storage is kept and reused
    shrink_above = 16 << 20

    def skip(self, n: int) -> None:
        self._pos += min(n, len(self))
        if self._pos == self._end:
            self._pos = self._end = 0
            if len(self._buf) > self.shrink_above:
                self._buf = bytearray()
        elif len(self._buf) > self.shrink_above and (self._end - self._pos) * 8 < len(self._buf):
            live = self._end - self._pos
            new = bytearray(max(4096, 2 * live))
            with memoryview(self._buf) as old, memoryview(new) as mv:
                mv[:live] = old[self._pos:self._end]
            self._buf, self._pos, self._end = new, 0, live

    def take_overflow(self) -> int:
        """Return and reset the count of bytes dropped for overflow."""
        n, self.overflowed = self.overflowed, 0
        return n
