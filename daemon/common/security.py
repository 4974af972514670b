"""CurveZMQ authentication, read-only/operator rights, and the audit log.

With ``[security] server_secret_key`` set, every socket the daemon and the reconstruction stage
bind is a CurveZMQ server and a ZAP handler (``zmq.auth``) admits only clients whose public key
is on the allow-list (``readers`` or ``operators`` folders of ``*.key`` files made by
``medacq keys generate``). The control socket then knows who sent each request (the ZAP user id
is the client's Z85 public key): readers may ``list``/``status``/``describe``/``ping``/
``descriptor`` and subscribe; operators may also ``configure``, ``start``/``stop``, ``action``,
``record``. Without CurveZMQ (loopback/ipc only) the transport decides (:func:`local_rights`):
an ``ipc://`` socket in a directory closed to other users gives operator rights (the OS decides
who may connect), TCP loopback only reader rights (any local process can connect), unless the
config says ``[daemon] local_operator``.

Every control request that can change state is written to the audit log: who, what, when, result.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from medacq.protocols.control import READ_ONLY_COMMANDS

from medacq.daemon.client.keys import ClientKeys
from medacq.daemon.common.config import SecuritySection

__all__ = ["ClientKeys", "CurveServer", "AuditLog", "generate_keypair", "load_client_keys", "local_rights",
           "prepare_ipc_dir", "LOCAL_USER"]

log = logging.getLogger("medacq.security")
audit_log = logging.getLogger("medacq.audit")

LOCAL_USER = "local"


def generate_keypair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _public_keys(folder: str | None) -> set[bytes]:
    if not folder:
        return set()
    keys = set()
    for p in sorted(Path(folder).glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(p))
        keys.add(public)
    return keys


def load_client_keys(client_secret_file: str, server_key_file: str) -> ClientKeys:
    """Client keys from a ``.key_secret`` file and the server's ``.key`` (or ``.key_secret``) file."""
    public, secret = zmq.auth.load_certificate(client_secret_file)
    if secret is None:
        raise ValueError(f"{client_secret_file} holds no secret key (use the .key_secret file)")
    server_public, _ = zmq.auth.load_certificate(server_key_file)
    return ClientKeys(public, secret, server_public)


class _AllowList:
    """ZAP credentials provider: a public key is admitted if it is on either list."""

    def __init__(self, server: "CurveServer") -> None:
        self.server = server

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.server.rights(key.decode() if isinstance(key, bytes) else key) is not None
        if not allowed:
            log.warning("refused CurveZMQ client %s", key)
        return allowed


class CurveServer:
    """The daemon's side of CurveZMQ: key pair, allow-lists, ZAP authenticator."""

    def __init__(self, security: SecuritySection, context: zmq.Context) -> None:
        assert security.server_secret_key
        self.public, self.secret = zmq.auth.load_certificate(security.server_secret_key)
        if self.secret is None:
            raise ValueError(f"{security.server_secret_key} holds no secret key")
        self.readers = {k.decode() for k in _public_keys(security.readers)}
        self.operators = {k.decode() for k in _public_keys(security.operators)} | {self.public.decode()}
        self.security = security
        self.auth = ThreadAuthenticator(context, log=logging.getLogger("medacq.zap"))
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=_AllowList(self))

    def rights(self, user_id: str) -> str | None:
        """``"operator"``, ``"reader"`` or ``None`` (not allowed) for a Z85 public key."""
        if user_id in self.operators:
            return "operator"
        if user_id in self.readers:
            return "reader"
        return None

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CurveZMQ server (call before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client_keys(self) -> ClientKeys:
        """Keys for in-house clients (the reconstruction stage): the configured client pair, else the server's."""
        if self.security.client_secret_key:
            pub, sec = zmq.auth.load_certificate(self.security.client_secret_key)
            return ClientKeys(pub, sec, self.public)
        return ClientKeys(self.public, self.secret, self.public)

    def stop(self) -> None:
        self.auth.stop()


def _ipc_dir(endpoint: str) -> Path | None:
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):  # @: Linux abstract namespace
        return None
    return Path(os.path.abspath(endpoint[len("ipc://"):])).parent


def prepare_ipc_dir(endpoint: str) -> None:
    """Create the directory of an ``ipc://`` endpoint (mode 0770: owner and group) if missing.

    The daemon's runtime directory is ``$RUNTIME_DIRECTORY`` under systemd
    (``RuntimeDirectory=medacq``, i.e. ``/run/medacq``), else ``$XDG_RUNTIME_DIR/medacq``.
    """
    d = _ipc_dir(endpoint)
    if d is not None and not d.exists():
        d.mkdir(parents=True, mode=0o770)
        os.chmod(d, 0o770)  # mkdir's mode is cut by the umask


def local_rights(endpoint: str, local_operator: bool | None) -> tuple[str, str]:
    """Rights of a client without CurveZMQ on ``endpoint``, and why (for the refusal message).

    ``local_operator`` is ``[daemon] local_operator``: ``True``/``False`` decide; unset, an
    ``ipc://`` socket in a directory with no permissions for "other" gives operator rights,
    anything else (TCP loopback, an ipc socket others can reach) reader rights.
    """
    if local_operator is not None:
        return ("operator", "local_operator = true") if local_operator else \
            ("reader", "[daemon] local_operator = false")
    d = _ipc_dir(endpoint)
    if d is not None:
        try:
            private = d.stat().st_mode & 0o007 == 0
        except OSError:
            private = False
        if private:
            return "operator", f"ipc socket in {d}, closed to other users"
        return "reader", (f"{endpoint} is in {d}, which other users can enter; for operator rights bind the "
                          "control socket in a private directory (0770), set [daemon] local_operator = true, "
                          "or use CurveZMQ keys")
    return "reader", (f"any local process can connect to {endpoint} (TCP loopback without CurveZMQ); for operator "
                      "rights use an ipc:// control endpoint in a private directory, set [daemon] "
                      "local_operator = true, or use CurveZMQ keys")


def allowed(command: str, rights: str) -> bool:
    """May a client with ``rights`` send ``command``?"""
    return rights == "operator" or (rights == "reader" and command in READ_ONLY_COMMANDS)


class AuditLog:
    """Append-only record of state-changing requests (JSON lines), also sent to ``medacq.audit``."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records = 0
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def record(self, who: str, command: str, request: dict[str, Any], ok: bool, error: str | None = None,
               outcome: str | None = None) -> None:
        """Append one record. ``outcome`` says what actually happened: ``applied``; ``refused``
        (nothing was tried: rights, bad settings, a config-file limit); ``failed`` (tried, the
        device or service said no); ``timeout, cancelled`` (not started in time, and never will
        be); ``cancelled`` (dropped at shutdown before it started)."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "t_host_ns": time.time_ns(), "who": who,
                 "command": command, "request": request, "ok": ok}
        if outcome:
            entry["outcome"] = outcome
        if error:
            entry["error"] = error
        line = json.dumps(entry, default=str)
        audit_log.info(line)
        with self._lock:
            self.records += 1
            if self.path:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
