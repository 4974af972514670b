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


class ReceiveBuffer:
    """A bounded byte buffer for codecs.

    ``append`` never lets the buffer grow past ``max_size``: when it would, the
    oldest bytes are discarded and counted in :attr:`overflowed` (the codec turns
    that into a :class:`Garbage` event). Consumers read with ``peek``/``consume``.
    """

    __slots__ = ("_buf", "_pos", "max_size", "overflowed")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_size = max_size
        self.overflowed = 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        excess = len(self._buf) - self._pos - self.max_size
        if excess > 0:
            self._pos += excess
            self.overflowed += excess

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def view(self) -> memoryview:
        """A read-only view of the unconsumed bytes (valid until the next append)."""
        return memoryview(self._buf)[self._pos :].toreadonly()

    def peek(self, n: int) -> bytes:
        return bytes(self._buf[self._pos : self._pos + n])

    def find(self, sub: bytes | int, start: int = 0) -> int:
        """Index of ``sub`` relative to the unconsumed start, or -1."""
        i = self._buf.find(sub, self._pos + start)
        return -1 if i < 0 else i - self._pos

    def consume(self, n: int) -> bytes:
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def skip(self, n: int) -> None:
        self._pos += min(n, len(self))

    def take_overflow(self) -> int:
        """Return and reset the count of bytes dropped for overflow."""
        n, self.overflowed = self.overflowed, 0
        return n
