"""Socket binding rules shared by every service that binds (daemon, recon stage, view, bridges).

One rule for every listening socket, :func:`check_exposure`: a service listens on loopback
(or on an ``ipc://``/``inproc://`` ZeroMQ endpoint) unless the one safeguard that makes the
wider exposure safe is on — CurveZMQ for ZeroMQ, an explicit opt-in for protocols that have no
encryption or authentication (OpenIGTLink, LSL) — and never at all for the live view's HTTP
(no TLS: reach it through an SSH tunnel or a TLS reverse proxy). A refusal, and a failed bind, is
one :class:`BindError` line that names the address and says what is missing, never a bare
``ZMQError``/``OSError``.

An ``ipc://`` endpoint's directory is created closed to other users (and the runtime directory
checked: :func:`medacq.daemon.common.security.prepare_ipc_dir`), and a socket another process
still listens on is refused: ZeroMQ would otherwise unlink it and take it over silently.
"""

from __future__ import annotations

import ipaddress
import os

import zmq

from medacq.daemon.client.runtime import ipc_live, ipc_path
from medacq.daemon.common.config import endpoint_is_local
from medacq.daemon.common.security import RuntimeDirError, prepare_ipc_dir

__all__ = ["BindError", "bind", "check_exposure", "host_is_loopback", "address_is_local"]


class BindError(RuntimeError):
    """A socket could not be bound (port in use, bad ipc path, off-loopback without its safeguard)."""


def host_is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback literals (``127.0.0.0/8``, ``::1``, with or without
    brackets); False for wildcards (``0.0.0.0``, ``::``, ``*``, ``""``), other names and addresses.

    Names other than ``localhost`` are not resolved: a name is only as local as its resolver says
    today, so it counts as remote.
    """
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def address_is_local(address: str) -> bool:
    """Whether a listening address stays on this machine.

    ``address``: a ZeroMQ endpoint (``tcp://HOST:PORT``, ``ipc://...``, ``inproc://...``), a
    ``HOST:PORT`` pair (``[::1]:8555`` for IPv6) or a bare host.
    """
    if "://" in address:
        return endpoint_is_local(address)
    host = address
    if address.startswith("["):
        host = address[1:].partition("]")[0]
    elif address.count(":") == 1:
        host = address.partition(":")[0]
    return host_is_loopback(host)


def check_exposure(action: str, address: str, *, allowed: bool, needs: str) -> None:
    """The rule every bound socket passes: refuse a non-loopback ``address`` unless ``allowed``.

    Args:
        action: what would happen, as a verb phrase (``"bind data endpoint"``, ``"serve http on"``).
        address: where (see :func:`address_is_local`).
        allowed: the safeguard that makes an off-loopback address acceptable is on (CurveZMQ, an
            explicit opt-in); ``False`` for a service that may never leave loopback.
        needs: what is missing and how to get it, for the message.

    Raises:
        BindError: ``refusing to {action} {address} without {needs}``, before anything is bound.
    """
    if not allowed and not address_is_local(address):
        raise BindError(f"refusing to {action} {address} without {needs}")


def bind(sock: zmq.Socket, endpoint: str, what: str, curve: bool = True) -> None:
    """Bind ``sock`` to ``endpoint`` (``what`` names its role in the error message).

    With ``curve=False`` a non-loopback endpoint is refused before anything is bound
    (:func:`check_exposure`).
    """
    check_exposure(f"bind {what} endpoint", endpoint, allowed=curve,
                   needs="CurveZMQ ([security] server_secret_key)")
    if endpoint.startswith("ipc://"):
        try:
            prepare_ipc_dir(endpoint)
        except RuntimeDirError as exc:
            raise BindError(str(exc)) from None
        except OSError as exc:
            raise BindError(f"cannot bind {what} endpoint {endpoint}: {exc}") from None
        if ipc_live(endpoint):
            raise BindError(f"{what} endpoint {endpoint} is already in use (another medacq running?)")
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise BindError(f"{what} endpoint {endpoint} is already in use (another medacq running?)") from None
        raise BindError(f"cannot bind {what} endpoint {endpoint}: {exc}") from None
    path = ipc_path(endpoint)
    if path is not None:
        # connecting to a Unix socket needs write permission on it: the owner and the directory's
        # group (medacq) may, whatever the umask and primary group (systemd's UMask=0027 would lock
        # the group out); the directory's mode keeps everyone else out
        try:
            os.chown(path, -1, path.parent.stat().st_gid)
        except OSError:
            pass
        try:
            os.chmod(path, 0o660)
        except OSError:
            pass
