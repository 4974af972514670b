"""Byte transports shared by drivers: pyserial (real ports, ptys, ``socket://``) and TCP.

:class:`SerialTransport` wraps ``serial.serial_for_url`` so a driver works the same on a
USB serial adapter, on a simulator's pty and on a simulator's ``socket://`` port, and
turns every transport failure into :class:`~medacq.drivers._base.ConnectionLost` with a
message a person can act on.
"""

from __future__ import annotations

import math
import os
import select
import socket

import serial

from ._base import ConnectionLost, DeviceNotFound

__all__ = ["SerialTransport", "TcpTransport", "parse_tcp_address"]


class SerialTransport:
    """A serial link opened from a path or pyserial URL.

    Args:
        address: ``/dev/ttyUSB0``, a pty symlink, ``socket://host:port``, ``loop://``...
        baudrate: line rate (ignored by ``socket://``).
    """

    def __init__(self, address: str, baudrate: int = 115200) -> None:
        self.address = address
        self._socket = address.startswith("socket://")
        if "://" not in address and not os.path.exists(address):
            raise DeviceNotFound(f"serial device {address!r} does not exist (unplugged, or wrong path?)")
        try:
            self._ser = serial.serial_for_url(address, baudrate=baudrate, timeout=0.1, write_timeout=2.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            msg = str(exc)
            if "Connection refused" in msg or "could not open port" in msg or "No such file" in msg:
                raise DeviceNotFound(f"cannot open {address!r}: {msg}") from None
            raise ConnectionLost(f"cannot open {address!r}: {msg}") from None
        self._timeout = 0.1
        # POSIX ports and ptys: wait in one poll() and read what is waiting with one read() on the
        # (non-blocking) descriptor, instead of pyserial's read(1) + in_waiting + read(n) (three
        # select/ioctl round trips and a Timeout object per call). socket:// and loop:// keep pyserial.
        self._fd: int | None = None
        self._poll: select.poll | None = None
        fd = getattr(self._ser, "fd", None)
        if type(self._ser).__module__ == "serial.serialposix" and isinstance(fd, int) and hasattr(select, "poll"):
            self._fd = fd
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)

    def write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
            self._ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(f"write to {self.address!r} failed: {exc}") from None

    def fileno(self) -> int | None:
        """The port's descriptor, for a caller that waits on several ports in one poll()
        (``None``: not a POSIX port, e.g. ``socket://`` or ``loop://``; use :meth:`read_some`)."""
        return self._fd

    #: largest single read on a POSIX port (bytes); more waiting is returned by the next call
    read_chunk = 64 << 10

    def read_some(self, timeout: float, max_bytes: int = 1 << 20) -> bytes:
        """Whatever bytes are available, waiting up to ``timeout`` s for the first one."""
        if self._fd is not None:
            return self._read_fd(timeout, max_bytes)
        ser = self._ser
        try:
            if timeout != self._timeout:
                ser.timeout = self._timeout = timeout
            first = ser.read(1)
            if not first:
                return b""
            if self._socket:
                ser.timeout = self._timeout = 0
                return first + ser.read(max_bytes)
            n = ser.in_waiting
            return first + ser.read(min(n, max_bytes)) if n else first
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(f"read from {self.address!r} failed: {exc}") from None

    def _read_fd(self, timeout: float, max_bytes: int) -> bytes:
        """POSIX fast path of :meth:`read_some`: one poll(), then one read() of up to
        :attr:`read_chunk` bytes. Errors and a port that reports data but yields none (a
        disconnected device) are :class:`ConnectionLost`, as on pyserial's path."""
        assert self._poll is not None and self._fd is not None
        try:
            if not self._poll.poll(max(0, math.ceil(timeout * 1000))):
                return b""
            data = os.read(self._fd, min(max_bytes, self.read_chunk))
        except (BlockingIOError, InterruptedError):  # nothing there after all, or a signal: a timeout
            return b""
        except OSError as exc:
            raise ConnectionLost(f"read from {self.address!r} failed: {exc}") from None
        if not data:
            raise ConnectionLost(f"read from {self.address!r} failed: the port reports data but returned none "
                                 "(device disconnected?)")
        return data

    def reset_input(self) -> None:
        try:
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError, NotImplementedError):
            pass

    def close(self) -> None:
        self._fd = self._poll = None
        try:
            self._ser.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass


def parse_tcp_address(address: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``socket://``) → ``(host, port)``; ValueError if malformed."""
    for prefix in ("tcp://", "socket://"):
        if address.startswith(prefix):
            host, _, port = address[len(prefix) :].rpartition(":")
            if host and port.isdigit():
                return host.strip("[]"), int(port)
    raise ValueError(f"not a tcp://host:port address: {address!r}")


class TcpTransport:
    """A plain TCP byte stream (for devices that speak TCP natively, e.g. OpenIGTLink)."""

    def __init__(self, address: str, connect_timeout: float = 3.0) -> None:
        self.address = address
        host, port = parse_tcp_address(address)
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except ConnectionRefusedError:
            raise DeviceNotFound(f"nothing is listening at {address}") from None
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {address}: {exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def write(self, data: bytes) -> None:
        try:
            self._sock.settimeout(5.0)
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"write to {self.address} failed: {exc}") from None

    def read_some(self, timeout: float, max_bytes: int = 4 << 20) -> bytes:
        try:
            self._sock.settimeout(timeout)
            data = self._sock.recv(max_bytes)
        except socket.timeout:
            return b""
        except OSError as exc:
            raise ConnectionLost(f"read from {self.address} failed: {exc}") from None
        if not data:
            raise ConnectionLost(f"{self.address} closed the connection")
        return data

    def reset_input(self) -> None:
        """Discard whatever has been received and not yet read (never waits)."""
        try:
            self._sock.setblocking(False)
            while self._sock.recv(1 << 20):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            raise ConnectionLost(f"read from {self.address} failed: {exc}") from None
        finally:
            try:
                self._sock.setblocking(True)
            except OSError:
                pass

    def recv_into(self, buf: memoryview, timeout: float) -> int:
        """Read into ``buf``; returns bytes read (0 on timeout)."""
        try:
            self._sock.settimeout(timeout)
            n = self._sock.recv_into(buf)
        except socket.timeout:
            return 0
        except OSError as exc:
            raise ConnectionLost(f"read from {self.address} failed: {exc}") from None
        if n == 0:
            raise ConnectionLost(f"{self.address} closed the connection")
        return n

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


