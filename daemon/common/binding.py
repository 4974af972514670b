"""Socket binding rules shared by every service that binds (daemon, recon stage).

A service binds a non-loopback TCP endpoint only with CurveZMQ on (``endpoint_is_local``
in :mod:`medacq.daemon.common.config` says what counts as loopback), and a failed bind is
one :class:`BindError` line naming the endpoint and its role, never a bare ``ZMQError``.
"""

from __future__ import annotations

import zmq

from medacq.daemon.common.config import endpoint_is_local

__all__ = ["BindError", "bind"]


class BindError(RuntimeError):
    """A socket could not be bound (port in use, bad ipc path, remote without CurveZMQ)."""


def bind(sock: zmq.Socket, endpoint: str, what: str, curve: bool = True) -> None:
    """Bind ``sock`` to ``endpoint`` (``what`` names its role in the error message).

    With ``curve=False`` a non-loopback endpoint is refused before anything is bound.
    """
    if not curve and not endpoint_is_local(endpoint):
        raise BindError(f"refusing to bind {what} endpoint {endpoint} without CurveZMQ "
                        "([security] server_secret_key)")
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise BindError(f"{what} endpoint {endpoint} is already in use (another medacq running?)") from None
        raise BindError(f"cannot bind {what} endpoint {endpoint}: {exc}") from None
