"""MaRCoS server protocol (open MRI console, github vnegnev/marcos_server), sans-I/O, both roles.

Wire format (checked against marcos_server ``src/iface.cpp``, ``src/hardware.cpp``,
``src/version.hpp`` and marcos_client ``server_comms.py``, ``test_server.py``):

* TCP, port 11111 (:data:`MARCOS_PORT`), one client at a time. No length prefix: every message
  is one msgpack object on the stream; the server parses with mpack's streaming tree reader
  (``max_size`` 32 MiB, ``max_nodes`` 8192) -- here a :class:`msgpack.Unpacker` bounded to
  :data:`MAX_MESSAGE_BYTES`.
* Request: ``[command, packet_idx, 0, version, {cmd: arg, ...}]`` -- command
  :data:`REQUEST` (0), :data:`EMERGENCY_STOP` (1) or :data:`CLOSE_SERVER` (2); ``version`` is
  ``major << 16 | minor << 8 | debug`` (the server is 1.0.5).
* Reply: ``[128 (129 for an emergency stop), packet_idx + 1, 0, server_version, {cmd: result},
  {"errors": [...], "warnings": [...], "infos": [...]}]`` -- only the non-empty message lists
  appear (``{}`` when there are none). Results are ``0`` ok / ``-1`` error for most commands.
* Version check on every request (``server_action::check_version``): a different major
  version is an *error* ``"Client version a.b.c significantly different from server version
  1.0.5"``, minor a *warning* ``"... different from ..."``, debug an *info* ``"... differs
  slightly from ..."``.
* Commands the server does not know come back as ``"UNKNOWN<n>": -1`` entries with the error
  ``"not all client commands were understood"``; an empty (or non-map) command set is the
  error ``"no commands present or incorrectly formatted request"``.

The command semantics (which commands exist, their replies) belong to the device model
(:mod:`medacq.simulators.mri`); this module gives both roles the framing, the typed events,
the version messages and the reply layout (:class:`ReplyBuilder`).

The console's machine code (``run_seq``: little-endian uint32 words, marga/flocra FSM; see
marcos_client ``marmachine.py`` / ``marcompile.py``) is decoded and encoded in
:mod:`medacq.protocols.marga`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from ._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData

__all__ = [
    "MARCOS_PORT", "MAX_MESSAGE_BYTES", "REQUEST", "EMERGENCY_STOP", "CLOSE_SERVER", "REPLY", "REPLY_ERROR",
    "SERVER_VERSION", "RESULT_OK", "RESULT_ERROR", "MSG_NOT_UNDERSTOOD", "MSG_NO_COMMANDS",
    "pack_version", "unpack_version", "version_messages",
    "Request", "Reply", "BadPacket", "MarcosConnection", "ReplyBuilder",
]

MARCOS_PORT: Final = 11111
#: mpack tree limit of the server (``iface::run_stream``: ``max_size = 1024*1024*32``)
MAX_MESSAGE_BYTES: Final = 32 * 1024 * 1024

REQUEST: Final = 0
EMERGENCY_STOP: Final = 1
CLOSE_SERVER: Final = 2
REPLY: Final = 128
REPLY_ERROR: Final = 129

#: ``src/version.hpp``: VERSION_MAJOR 1, VERSION_MINOR 0, VERSION_DEBUG 5
SERVER_VERSION: Final = (1, 0, 5)
RESULT_OK: Final = 0
RESULT_ERROR: Final = -1
MSG_NOT_UNDERSTOOD: Final = "not all client commands were understood"
MSG_NO_COMMANDS: Final = "no commands present or incorrectly formatted request"


def pack_version(major: int, minor: int, debug: int) -> int:
    """``major << 16 | minor << 8 | debug`` (each 0..255)."""
    for v in (major, minor, debug):
        if not 0 <= int(v) <= 255:
            raise LocalProtocolError(f"version fields must be 0..255, not {v}")
    return (int(major) << 16) | (int(minor) << 8) | int(debug)


def unpack_version(v: int) -> tuple[int, int, int]:
    """``(major, minor, debug)`` of a packed version word."""
    return (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF


def version_messages(client: int, server: tuple[int, int, int] = SERVER_VERSION) -> dict[str, list[str]]:
    """The server's version check of one request: ``{"errors"|"warnings"|"infos": [text]}`` or ``{}``."""
    c = unpack_version(client)
    cs, ss = "{}.{}.{}".format(*c), "{}.{}.{}".format(*server)
    if c[0] != server[0]:
        return {"errors": [f"Client version {cs} significantly different from server version {ss}"]}
    if c[1] != server[1]:
        return {"warnings": [f"Client version {cs} different from server version {ss}"]}
    if c[2] != server[2]:
        return {"infos": [f"Client version {cs} differs slightly from server version {ss}"]}
    return {}


@dataclass(frozen=True, slots=True)
class Request:
    """A client request. ``commands`` is the command map (any msgpack object as received:
    a server treats a non-map as "no commands")."""

    commands: Any
    index: int = 0
    kind: int = REQUEST
    version: int = pack_version(*SERVER_VERSION)

    def to_list(self) -> list[Any]:
        """The wire list ``[command, packet_idx, 0, version, commands]``."""
        return [self.kind, self.index, 0, self.version, self.commands]


@dataclass(frozen=True, slots=True)
class Reply:
    """A server reply. ``results``: command → result (server order); ``messages``: the
    ``errors``/``warnings``/``infos`` lists that are present."""

    index: int
    results: dict[str, Any]
    messages: dict[str, list[str]] = field(default_factory=dict)
    kind: int = REPLY
    version: int = pack_version(*SERVER_VERSION)

    @property
    def errors(self) -> list[str]:
        return list(self.messages.get("errors", []))

    @property
    def warnings(self) -> list[str]:
        return list(self.messages.get("warnings", []))

    @property
    def infos(self) -> list[str]:
        return list(self.messages.get("infos", []))

    def to_list(self) -> list[Any]:
        """The wire list ``[kind, index, 0, version, results, messages]`` (index already +1)."""
        return [self.kind, self.index, 0, self.version, self.results, self.messages]


@dataclass(frozen=True, slots=True)
class BadPacket:
    """A complete msgpack object that is not a MaRCoS message of the expected role."""

    obj: Any
    reason: str


_ORDER = ("errors", "warnings", "infos")


class ReplyBuilder:
    """Builds a reply the way ``server_action`` does: version messages first, results in the
    order they are added, unknown commands as ``UNKNOWN<n>: -1`` plus the error, messages in
    the order errors, warnings, infos."""

    def __init__(self, request: Request, server: tuple[int, int, int] = SERVER_VERSION) -> None:
        self.request = request
        self.server = server
        self.results: dict[str, Any] = {}
        self.msgs: dict[str, list[str]] = {k: [] for k in _ORDER}
        for k, v in version_messages(request.version, server).items():
            self.msgs[k] += v

    def result(self, cmd: str, value: Any) -> None:
        self.results[cmd] = value

    def error(self, text: str) -> None:
        self.msgs["errors"].append(text)

    def warning(self, text: str) -> None:
        self.msgs["warnings"].append(text)

    def info(self, text: str) -> None:
        self.msgs["infos"].append(text)

    def not_understood(self, present: int, understood: int) -> None:
        """``present - understood`` entries ``UNKNOWN<present>``, ``UNKNOWN<present-1>``, ...
        and the error. (marcos_server counts down from ``commands_present``; it writes one
        entry per *present* command, which overfills mpack's map when some were understood --
        here only the missing ones are written, so the map stays well formed.)"""
        if understood >= present:
            return
        self.error(MSG_NOT_UNDERSTOOD)
        for n in range(present, understood, -1):
            self.results[f"UNKNOWN{n}"] = RESULT_ERROR

    def build(self, kind: int | None = None) -> Reply:
        if kind is None:
            kind = REPLY_ERROR if self.request.kind == EMERGENCY_STOP else REPLY
        msgs = {k: v for k, v in self.msgs.items() if v}
        return Reply(index=self.request.index + 1, results=self.results, messages=msgs, kind=kind,
                     version=pack_version(*self.server))


class MarcosConnection:
    """One end of a MaRCoS connection: ``role="client"`` (host: sends :class:`Request`,
    receives :class:`Reply`) or ``role="server"`` (device: the reverse).

    ``receive_data(bytes)`` then ``next_event()`` → :class:`Request` / :class:`Reply` /
    :class:`BadPacket` (a msgpack object that is not a message) / :class:`Garbage` (bytes
    that are not msgpack, or a message over the size limit; the parser restarts) /
    ``NEED_DATA``. ``send(event) -> bytes``.
    """

    def __init__(self, role: str = "client", max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        self.role = role
        self.max_message_bytes = max_message_bytes
        self._unpacker = self._new_unpacker()
        self._buf = bytearray()  # bytes fed to the current unpacker
        self._events: list[Request | Reply | BadPacket | Garbage] = []

    def _new_unpacker(self) -> msgpack.Unpacker:
        m = self.max_message_bytes
        return msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=m, max_bin_len=m,
                                max_str_len=1 << 20, max_array_len=m // 4, max_map_len=65536,
                                unicode_errors="surrogateescape")

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (any split)."""
        if not data:
            return
        if len(self._buf) + len(data) > self.max_message_bytes:
            self._events.append(Garbage(len(self._buf) + len(data), "message over the size limit"))
            self._restart(b"")
            return
        self._buf += data
        self._unpacker.feed(data)
        self._drain()

    def _drain(self) -> None:
        skipped = 0
        while True:
            pos = self._unpacker.tell()
            try:
                obj = self._unpacker.unpack()
            except msgpack.OutOfData:
                if pos == len(self._buf):
                    self._restart(b"")  # everything consumed: start the next message afresh
                break
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                # not msgpack here: skip one byte and parse again from the next
                skipped += 1
                self._restart(bytes(self._buf[pos + 1:]))
                continue
            if skipped:
                self._events.append(Garbage(skipped, "not msgpack"))
                skipped = 0
            self._events.append(self._classify(obj))
        if skipped:
            self._events.append(Garbage(skipped, "not msgpack"))

    def _restart(self, rest: bytes) -> None:
        self._unpacker = self._new_unpacker()
        self._buf = bytearray(rest)
        if rest:
            self._unpacker.feed(rest)

    def _classify(self, obj: Any) -> Request | Reply | BadPacket:
        if not isinstance(obj, list):
            return BadPacket(obj, f"a MaRCoS message is a msgpack array, not {type(obj).__name__}")
        if self.role == "server":
            if len(obj) != 5 or not all(isinstance(v, int) for v in obj[:4]):
                return BadPacket(obj, "request is [command, packet_idx, 0, version, {commands}]")
            return Request(commands=obj[4], index=obj[1], kind=obj[0], version=obj[3])
        if len(obj) != 6 or not all(isinstance(v, int) for v in obj[:4]) or not isinstance(obj[4], (dict, int)) \
                or not isinstance(obj[5], dict):
            return BadPacket(obj, "reply is [128|129, packet_idx+1, 0, version, {results}, {messages}]")
        results = obj[4] if isinstance(obj[4], dict) else {}
        msgs = {str(k): list(v) for k, v in obj[5].items() if isinstance(v, list)}
        return Reply(index=obj[1], results=results, messages=msgs, kind=obj[0], version=obj[3])

    def next_event(self) -> Request | Reply | BadPacket | Garbage | NeedData:
        if self._events:
            return self._events.pop(0)
        return NEED_DATA

    def send(self, event: Request | Reply) -> bytes:
        """Encode a :class:`Request` (client role) or :class:`Reply` (server role)."""
        if self.role == "client" and not isinstance(event, Request):
            raise LocalProtocolError("a client sends Request events")
        if self.role == "server" and not isinstance(event, Reply):
            raise LocalProtocolError("a server sends Reply events")
        out: bytes = msgpack.packb(event.to_list(), use_bin_type=True)
        return out
