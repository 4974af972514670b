"""Where a local rig's sockets are when nobody says: ``ipc://`` sockets in a runtime directory.

Local access is decided by the operating system: the daemon and the reconstruction stage bind
their default endpoints as Unix sockets in a directory that only their user (mode 0700) or their
user and group ``medacq`` (mode 0770) may enter, so whoever can connect is the daemon's user or a
member of its group. The services and the clients resolve the same directory
(:func:`runtime_dir`) from the same rules, so ``medacq ctl status`` and ``Subscriber()`` find a
daemon started with a config that names no endpoints.

Kept in the client package (it imports only the standard library): a user's own tool resolves
the same defaults.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

__all__ = ["RUNTIME_DIR_ENV", "SYSTEM_RUNTIME_DIR", "UP_BASE_PORT", "default_endpoints", "ipc_live", "ipc_path",
           "local_rig_endpoints", "runtime_dir", "tcp_endpoints"]

RUNTIME_DIR_ENV = "MEDACQ_RUNTIME_DIR"
"""Environment variable naming the runtime directory (the systemd units set it to ``/run/medacq``)."""

SYSTEM_RUNTIME_DIR = Path("/run/medacq")
"""The system-wide runtime directory (systemd: ``RuntimeDirectory=medacq``, mode 0770, group medacq)."""

UP_BASE_PORT = 5555
"""``medacq up``'s default first port: its rig listens on TCP loopback ports 5555..5558."""

#: socket file names in the runtime directory, by (section, field) of the rig config
_NAMES = {("daemon", "data_endpoint"): "data", ("daemon", "control_endpoint"): "control",
          ("recon", "data_endpoint"): "recon-data", ("recon", "control_endpoint"): "recon-control"}


def _usable(d: Path) -> bool:
    """This process may create sockets in ``d`` (it exists and is writable), or create ``d``."""
    if d.is_dir():
        return os.access(d, os.W_OK | os.X_OK)
    return not d.exists() and d.parent.is_dir() and os.access(d.parent, os.W_OK | os.X_OK)


def runtime_dir() -> Path:
    """The directory of the default ``ipc://`` endpoints, first that applies:

    1. ``$MEDACQ_RUNTIME_DIR``;
    2. ``/run/medacq`` where this process may use it (it exists and this user may write in it,
       i.e. the daemon's user or a member of group ``medacq``; or it can be created: root);
    3. ``$XDG_RUNTIME_DIR/medacq`` (a login session's private ``/run/user/UID``);
    4. ``/tmp/medacq-UID``.

    Nothing is created or checked here (:func:`medacq.daemon.common.security.prepare_ipc_dir`
    does that for the services that bind).
    """
    env = os.environ.get(RUNTIME_DIR_ENV)
    if env:
        return Path(os.path.abspath(os.path.expanduser(env)))
    if _usable(SYSTEM_RUNTIME_DIR):
        return SYSTEM_RUNTIME_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and Path(xdg).is_dir():
        return Path(xdg) / "medacq"
    return Path(f"/tmp/medacq-{os.getuid()}")


def default_endpoints(directory: str | os.PathLike[str] | None = None) -> dict[str, dict[str, str]]:
    """The four default endpoints, shaped like a rig config's ``[daemon]``/``[recon]`` tables:
    ``ipc://DIR/data``, ``ipc://DIR/control``, ``ipc://DIR/recon-data``, ``ipc://DIR/recon-control``
    with ``DIR`` = ``directory`` or :func:`runtime_dir`."""
    d = Path(directory) if directory is not None else runtime_dir()
    out: dict[str, dict[str, str]] = {"daemon": {}, "recon": {}}
    for (section, field), name in _NAMES.items():
        out[section][field] = f"ipc://{d / name}"
    return out


def tcp_endpoints(base_port: int = UP_BASE_PORT) -> dict[str, dict[str, str]]:
    """The four TCP loopback endpoints of a simulated rig (``medacq up --base-port``)."""
    out: dict[str, dict[str, str]] = {"daemon": {}, "recon": {}}
    for i, (section, field) in enumerate(_NAMES):
        out[section][field] = f"tcp://127.0.0.1:{base_port + i}"
    return out


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint (``None``: another transport, or Linux's
    abstract namespace ``ipc://@name``, which has no file)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return Path(os.path.abspath(endpoint[len("ipc://"):]))


def ipc_live(endpoint: str) -> bool:
    """Whether a process listens on the ``ipc://`` endpoint now (a Unix-socket connect succeeds).

    A socket file left by a process that died is not live. ZeroMQ itself would silently take
    over a live one on bind (it unlinks the file first), so the services check this before they
    bind (:func:`medacq.daemon.common.binding.bind`).
    """
    path = ipc_path(endpoint)
    if path is None or not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _trusted(d: Path) -> bool:
    """A client may talk to sockets in ``d``: closed to "other" users, and, unless it is the
    system's or the configured directory, this user's own (or root's): nobody else can then
    stand in for the daemon in ``/tmp/medacq-UID``."""
    try:
        st = d.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o007:
        return False
    return st.st_uid in (os.geteuid(), 0) or d == SYSTEM_RUNTIME_DIR or bool(os.environ.get(RUNTIME_DIR_ENV))


def local_rig_endpoints() -> dict[str, dict[str, str]]:
    """The endpoints of the local rig for a client told nothing: the default ``ipc://``
    endpoints when a daemon listens on the default control socket in a runtime directory closed
    to other users, else ``medacq up``'s TCP loopback ports (5555..5558)."""
    d = runtime_dir()
    ipc = default_endpoints(d)
    live = _trusted(d) and ipc_live(ipc["daemon"]["control_endpoint"])
    return ipc if live else tcp_endpoints()
