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

Every tool has a key pair of its own (:func:`generate_rig_keys`, ``medacq keys generate-rig``):
the reconstruction stage, the recorder and the live view are readers, the CLI an operator, and a
person's or a script's own pair goes in the folder of the rights it needs. :func:`tool_keys`
loads a tool's pair; the server's own pair is never a tool's client key. The audit log names a
client by its key's file name in the allow-list folders (``operators/cli.key`` -> ``cli``) and
gives the Z85 key beside it.

The default endpoints are ``ipc://`` sockets in the runtime directory
(:func:`medacq.daemon.client.runtime.runtime_dir`); :func:`prepare_ipc_dir` creates it closed to
other users (0770 with group ``medacq`` where that group exists, else 0700) and refuses one that
belongs to someone else or is open to others.

Every control request that can change state is written to the audit log: who, what, when, result.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from medacq.protocols.control import READ_ONLY_COMMANDS

from medacq.daemon.client.keys import KEY_ENV, SERVER_KEY_ENV, ClientKeys
from medacq.daemon.client.runtime import ipc_path, runtime_dir
from medacq.daemon.common.config import SecuritySection

__all__ = ["ClientKeys", "CurveServer", "AuditLog", "ToolKeyError", "RuntimeDirError", "TOOL_RIGHTS",
           "check_runtime_dir", "generate_keypair", "generate_rig_keys", "load_client_keys", "local_peer",
           "local_rights", "prepare_ipc_dir", "server_public_key_file", "tool_keys", "LOCAL_USER", "SERVER_NAME"]

log = logging.getLogger("medacq.security")
audit_log = logging.getLogger("medacq.audit")

LOCAL_USER = "local"

SERVER_NAME = "server"
"""The audit name of the server's own key (the daemon subscribing to its reconstruction stage)."""

TOOL_RIGHTS: dict[str, str] = {"stage": "readers", "recorder": "readers", "view": "readers", "cli": "operators"}
"""Each in-house tool and the allow-list folder :func:`generate_rig_keys` puts its public key in:
the stage only subscribes and asks the daemon for ``descriptor`` (read-only), the recorder only
subscribes, the view is read-only unless ``--operator`` (``generate-rig --operator-view``)."""


class ToolKeyError(ValueError):
    """A tool's client key is missing or unreadable (the message says which file and what to run)."""


class RuntimeDirError(OSError):
    """The runtime directory of the ``ipc://`` endpoints belongs to someone else or is open to others."""


def generate_keypair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _public_keys(folder: str | None) -> dict[str, str]:
    """Z85 public key -> name (the file's stem) of every ``*.key`` in ``folder``."""
    if not folder:
        return {}
    keys: dict[str, str] = {}
    for p in sorted(Path(folder).glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(p))
        keys[public.decode()] = p.stem
    return keys


def generate_rig_keys(folder: str | Path, operator_view: bool = False) -> dict[str, Path]:
    """A rig's keys in ``folder``: the server's pair, one pair per tool, the allow-lists.

    Layout::

        folder/server.key, server.key_secret      [security] server_secret_key
        folder/tools/<tool>.key_secret (+ .key)    [security] tool_keys (cli, view, stage, recorder)
        folder/readers/stage.key, recorder.key, view.key
        folder/operators/cli.key                   (and view.key instead of readers/ with operator_view)

    Refuses (``FileExistsError``) a folder that already holds a ``server.key_secret``: new keys
    would lock every existing client out. Returns the paths by role (``server``, ``tools``,
    ``readers``, ``operators``).
    """
    folder = Path(folder)
    if (folder / "server.key_secret").exists():
        raise FileExistsError(f"{folder} already holds a rig's keys (server.key_secret); choose a new folder")
    tools, readers, operators = folder / "tools", folder / "readers", folder / "operators"
    generate_keypair(folder, SERVER_NAME)
    for d in (tools, readers, operators):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(tools, 0o750)
    for tool, rights in TOOL_RIGHTS.items():
        public, _ = generate_keypair(tools, tool)
        dest = operators if rights == "operators" or (tool == "view" and operator_view) else readers
        (dest / public.name).write_bytes(public.read_bytes())
    return {"server": folder / "server.key_secret", "tools": tools, "readers": readers, "operators": operators}


def load_client_keys(client_secret_file: str, server_key_file: str) -> ClientKeys:
    """Client keys from a ``.key_secret`` file and the server's ``.key`` (or ``.key_secret``) file."""
    return ClientKeys.load(client_secret_file, server_key_file)


def server_public_key_file(security: SecuritySection) -> Path:
    """The server's public key file for clients: ``NAME.key`` beside ``[security] server_secret_key``
    (readable by every user, unlike the secret), else the secret file itself."""
    assert security.server_secret_key
    secret = Path(security.server_secret_key)
    public = secret.with_name(secret.name.removesuffix("_secret")) if secret.name.endswith(".key_secret") else secret
    return public if public.is_file() else secret


def tool_keys(security: SecuritySection, tool: str, key_file: str | None = None,
              server_key_file: str | None = None, env: bool = True) -> ClientKeys | None:
    """The client keys ``tool`` connects with; ``None`` when the rig does not use CurveZMQ
    (and no key was given).

    First that applies: ``key_file`` (``--key``); ``$MEDACQ_KEY`` (when ``env``: a user's own
    tool); ``[security] tool_keys``/``<tool>.key_secret``. The server's public key:
    ``server_key_file`` (``--server-key``), ``$MEDACQ_SERVER_KEY`` (when ``env``), else
    :func:`server_public_key_file`. The server's own secret key is never used: it would give
    every tool the same name in the audit log.

    Raises:
        ToolKeyError: the rig uses CurveZMQ and no key pair is found for ``tool``, or a file is
            unreadable; the message says what to run.
    """
    key = key_file or (os.environ.get(KEY_ENV) if env else None)
    server = server_key_file or (os.environ.get(SERVER_KEY_ENV) if env else None)
    if not key and not security.curve:
        return None
    if not key:
        if not security.tool_keys:
            raise ToolKeyError(f"the {tool} has no client key: [security] tool_keys is not set (the server's own "
                               "key is no longer used by the tools); run `medacq keys generate-rig DIR` and set "
                               f"tool_keys = \"DIR/tools\", or give this tool its own key (--key or ${KEY_ENV})")
        key = str(Path(security.tool_keys) / f"{tool}.key_secret")
        if not Path(key).is_file():
            raise ToolKeyError(f"the {tool} has no client key: {key} does not exist; run `medacq keys generate-rig "
                               f"DIR` (one key pair per tool), or give this tool its own key (--key or ${KEY_ENV})")
    if not server:
        if not security.curve:
            raise ToolKeyError(f"a client key needs the daemon's public key too (--server-key or ${SERVER_KEY_ENV})")
        server = str(server_public_key_file(security))
    if security.server_secret_key and Path(key).resolve() == Path(security.server_secret_key).resolve():
        raise ToolKeyError(f"{key} is the server's own key pair; the {tool} needs a key of its own: run "
                           "`medacq keys generate-rig DIR` and set [security] tool_keys")
    try:
        return ClientKeys.load(key, server)
    except (OSError, ValueError) as exc:
        raise ToolKeyError(f"cannot load the {tool}'s keys: {exc}") from None


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
        readers, operators = _public_keys(security.readers), _public_keys(security.operators)
        self.readers = set(readers)
        # the server's own key only lets the daemon subscribe to its reconstruction stage
        self.readers.add(self.public.decode())
        self.operators = set(operators)
        #: Z85 public key -> the name the audit log gives it (an operators/ name wins)
        self.names: dict[str, str] = {self.public.decode(): SERVER_NAME, **readers, **operators}
        self.security = security
        self.auth = ThreadAuthenticator(context, log=logging.getLogger("medacq.zap"))
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=_AllowList(self))

    def name(self, user_id: str) -> str:
        """The name of a client's key (its file's stem in the allow-list folder, ``server`` for
        the server's own), or the Z85 key itself when it has none."""
        return self.names.get(user_id, user_id)

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
        """The server's own identity as a client, for the daemon's subscription to its own
        reconstruction stage (``[device.safety] on_recon_silence_s``): reader rights, named
        ``server``. Tools never use it (:func:`tool_keys`)."""
        return ClientKeys(self.public, self.secret, self.public)

    def stop(self) -> None:
        self.auth.stop()


def _ipc_dir(endpoint: str) -> Path | None:
    path = ipc_path(endpoint)
    return None if path is None else path.parent


def _medacq_gid() -> int | None:
    try:
        import grp

        return grp.getgrnam("medacq").gr_gid
    except (ImportError, KeyError):
        return None


def _make_private_dir(d: Path) -> None:
    """Create ``d`` closed to other users: 0770 with group ``medacq`` where that group exists and
    this process may give the directory to it (root or a member), else 0700 (a user's primary
    group may hold other users)."""
    d.mkdir(parents=True, mode=0o700, exist_ok=True)
    mode = 0o700
    gid = _medacq_gid()
    if gid is not None:
        try:
            os.chown(d, -1, gid)
            mode = 0o770
        except OSError:
            pass
    os.chmod(d, mode)  # mkdir's mode is cut by the umask


def check_runtime_dir(d: Path) -> None:
    """Refuse a runtime directory that belongs to another user (root excepted) or that other
    users may enter: the OS would no longer decide who connects (or whom the clients talk to).

    Raises:
        RuntimeDirError: one line naming the directory, its owner or mode, and the fix.
    """
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {d} is not a directory (a link or a file?); remove it")
    if st.st_uid not in (os.geteuid(), 0):
        raise RuntimeDirError(f"refusing runtime directory {d}: it belongs to uid {st.st_uid}, not to this user "
                              f"(uid {os.geteuid()}); remove it or set $MEDACQ_RUNTIME_DIR")
    if st.st_mode & 0o007:
        raise RuntimeDirError(f"refusing runtime directory {d}: mode {stat.S_IMODE(st.st_mode):04o} lets other "
                              f"users in; chmod o-rwx {d} (0770 with group medacq, or 0700)")


def prepare_ipc_dir(endpoint: str) -> None:
    """Create the directory of an ``ipc://`` endpoint if missing, closed to other users (0770
    and group ``medacq`` where that group exists, else 0700), and check the runtime directory.

    The runtime directory of the default endpoints (:func:`~medacq.daemon.client.runtime.runtime_dir`:
    ``$MEDACQ_RUNTIME_DIR``, ``/run/medacq`` under systemd, ``$XDG_RUNTIME_DIR/medacq``,
    ``/tmp/medacq-UID``) must pass :func:`check_runtime_dir`; the directory of an endpoint the
    config names elsewhere may be open (its clients then get reader rights: :func:`local_rights`).

    Raises:
        RuntimeDirError: the runtime directory belongs to someone else or is open to others.
        OSError: the directory cannot be created.
    """
    d = _ipc_dir(endpoint)
    if d is None:
        return
    if not d.exists():
        _make_private_dir(d)
    if d == runtime_dir():
        check_runtime_dir(d)


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


def local_peer(peer_address: str | None) -> str:
    """The audit name of a client without CurveZMQ: ``uid N (user)`` over ``ipc://``, where ZeroMQ
    reports the kernel's peer credentials in the ``Peer-Address`` property (``host:UID:GID:PID``),
    else :data:`LOCAL_USER` (TCP loopback: the peer cannot be told)."""
    parts = (peer_address or "").split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return LOCAL_USER
    uid = int(parts[1])
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


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
               outcome: str | None = None, key: str | None = None) -> None:
        """Append one record. ``outcome`` says what actually happened: ``applied``; ``refused``
        (nothing was tried: rights, bad settings, a config-file limit); ``failed`` (tried, the
        device or service said no); ``timeout, cancelled`` (not started in time, and never will
        be); ``cancelled`` (dropped at shutdown before it started). ``who`` is the client's name
        (its key's file name in the allow-list, ``local`` or ``uid N (user)`` without CurveZMQ),
        ``key`` its Z85 public key under CurveZMQ."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "t_host_ns": time.time_ns(), "who": who,
                 **({"key": key} if key else {}), "command": command, "request": request, "ok": ok}
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
