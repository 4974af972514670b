"""systemd notify protocol (sd_notify), spoken directly over the ``NOTIFY_SOCKET`` datagram socket.

Ten lines of stdlib instead of a dependency: ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``. Does nothing when ``NOTIFY_SOCKET`` is unset (not under systemd).
"""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier", "watchdog_interval_s"]


class Notifier:
    """Sends notify messages to systemd (or to whatever listens on ``NOTIFY_SOCKET``)."""

    def __init__(self, path: str | None = None) -> None:
        path = path if path is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._addr: str | bytes | None = None
        if path:
            self._addr = "\0" + path[1:] if path.startswith("@") else path
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram. Returns False when not under systemd."""
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` (the recommended ping period), if set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
