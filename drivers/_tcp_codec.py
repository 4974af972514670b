"""A :class:`~medacq.drivers._base.CodecDriver` on one TCP connection read with ``recv_into`` into
one preallocated buffer, handed to the codec as a memoryview (no per-read allocation): the ingest
path of the ultrasound driver (:mod:`~medacq.drivers.ultrasound`) and of the nuclear front ends
(:mod:`~medacq.drivers._framed_tcp`)."""

from __future__ import annotations

import contextlib
import time
from abc import abstractmethod
from typing import Any

from ._base import CodecDriver, ConnectionLost, DeviceError
from .transports import TcpTransport

__all__ = ["TcpCodecDriver"]


class TcpCodecDriver(CodecDriver):
    """Reads ``self._tcp`` (a :class:`TcpTransport` a subclass opens in ``open``, ``None`` when
    closed) into a ``buffer_bytes`` buffer and feeds ``self._codec``; :meth:`stop` sends the
    device's ``STOP`` command."""

    def __init__(self, name: str, address: str, settings: Any, buffer_bytes: int) -> None:
        super().__init__(name, address, settings)
        self._tcp: TcpTransport | None = None
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)

    def _pump(self, timeout: float) -> bool:
        """``recv_into`` the preallocated buffer, handed to the codec as a memoryview."""
        tcp = self._tcp
        if tcp is None:
            raise ConnectionLost(f"{self.name}: not connected")
        n = tcp.recv_into(self._view, timeout)
        if not n:
            return False
        self._t_in_ns = time.monotonic_ns()
        self._codec.receive_data(self._view[:n])
        return True

    @abstractmethod
    def command(self, text: str, timeout: float | None = None) -> str:
        """Send one command; return the reply text (:class:`DeviceError` on an error reply)."""

    def stop(self) -> None:
        """``STOP`` while connected; a lost link or an error reply is ignored (acquisition ends anyway)."""
        if self._link is None:
            return
        with contextlib.suppress(DeviceError, ConnectionLost):
            self.command("STOP", timeout=1.0)

    def close(self) -> None:
        self._tcp = None
        super().close()
