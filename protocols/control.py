"""medacq control protocol v1: requests and replies on the daemon's control socket.

Transport: ZeroMQ. The daemon binds a ROUTER socket; clients use DEALER or REQ. One
request is one single-part message (REQ adds its own empty delimiter) holding UTF-8 JSON:

.. code-block:: json

    {"id": "42", "cmd": "configure", "device": "synth0", "settings": {"rate_hz": 50}}

The reply is one JSON object:

.. code-block:: json

    {"id": "42", "ok": true, "result": {...}}
    {"id": "42", "ok": false, "error": {"code": "unknown_device", "message": "..."}}

Every malformed request gets an error reply (``bad_json``, ``bad_request``,
``unknown_command``, ``too_large``); nothing a client sends can crash the daemon.
Sans-I/O: this module parses and builds message bodies only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "ControlRequest",
    "ListRequest",
    "DescribeRequest",
    "ConfigureRequest",
    "StartRequest",
    "StopRequest",
    "StatusRequest",
    "PingRequest",
    "DescriptorRequest",
    "ActionRequest",
    "RecordRequest",
    "SafeStateRequest",
    "MarkRequest",
    "ControlReply",
    "ControlError",
    "ErrorCode",
    "parse_request",
    "encode_request",
    "encode_reply",
    "decode_reply",
    "MAX_REQUEST_BYTES",
    "READ_ONLY_COMMANDS",
]

#: Requests larger than this are refused (ZMQ_MAXMSGSIZE is set to it on the socket).
MAX_REQUEST_BYTES = 256 * 1024

ErrorCode = Literal[
    "bad_json",
    "bad_request",
    "unknown_command",
    "unknown_device",
    "unknown_stream",
    "invalid_settings",
    "device_error",
    "forbidden",
    "busy",
    "timeout",
    "too_large",
    "internal",
]


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = None


class ListRequest(_Req):
    """List devices and streams."""

    cmd: Literal["list"]


class DescribeRequest(_Req):
    """A device's settings, state and stream descriptor."""

    cmd: Literal["describe"]
    device: str


class ConfigureRequest(_Req):
    """Change a device's settings (validated by the device's settings model).

    A running device is stopped, reconfigured and restarted: a new series begins.
    """

    cmd: Literal["configure"]
    device: str
    settings: dict[str, Any]


class StartRequest(_Req):
    """Start acquisition on one device, or on all when ``device`` is omitted."""

    cmd: Literal["start"]
    device: str | None = None


class StopRequest(_Req):
    """Stop acquisition on one device, or on all when ``device`` is omitted."""

    cmd: Literal["stop"]
    device: str | None = None


class StatusRequest(_Req):
    """Per-stream counters and daemon uptime."""

    cmd: Literal["status"]


class PingRequest(_Req):
    """The daemon's clocks, for offset estimation (send time / reply time / daemon time)."""

    cmd: Literal["ping"]


class DescriptorRequest(_Req):
    """The current descriptor of a stream; it is also republished on the data socket."""

    cmd: Literal["descriptor"]
    stream: str


class ActionRequest(_Req):
    """A modality-specific action on a stream (``rereference`` an EIT image, ``capture_dark``...).

    The daemon routes it to the device's driver; the reconstruction stage to the stream's
    reconstructor. ``args`` is action-specific.
    """

    cmd: Literal["action"]
    target: str
    action: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class RecordRequest(_Req):
    """Start, stop or query the daemon's built-in recorder (HDF5; ``edf``/``bdf`` for biosignals).

    ``path`` is relative to the daemon's recordings directory (default: a timestamped name);
    ``flush_s`` is the checkpoint interval in seconds (the most a crash can lose).
    """

    cmd: Literal["record"]
    action: Literal["start", "stop", "status"]
    topics: list[str] = Field(default_factory=lambda: ["raw/"], max_length=64)
    path: str | None = Field(default=None, max_length=4096)
    flush_s: float = Field(default=1.0, gt=0, le=60)
    format: Literal["hdf5", "edf", "bdf", "petsird", "ismrmrd"] = "hdf5"


class SafeStateRequest(_Req):
    """Put one device, or every device when ``device`` is omitted, in its safe state now:
    X-ray source off and exposure aborted, ultrasound transmit stopped, EIT current injection
    stopped; biosignal amplifiers have nothing to make safe and keep acquiring.

    Served ahead of any ``configure`` waiting for the device. The reply gives, per device,
    ``state`` (``safe``, ``not_applicable``, ``pending``: not reachable now, entered at
    reconnect; ``requested``: its thread is busy, entered at its next opportunity; ``failed``),
    ``detail`` (what was done) and ``verified`` (the device confirmed it). The device stays
    stopped until a ``start``. ``reason`` (free text) goes into the audit log and the
    ``safety/<device>`` message.
    """

    cmd: Literal["safe_state"]
    device: str | None = None
    reason: str | None = Field(default=None, max_length=200)


class MarkRequest(_Req):
    """Publish a software marker on ``markers/<source>`` (``medacq mark "text"``), stamped with the
    daemon's clocks when it takes the request. ``text`` is at most 128 UTF-8 bytes (the daemon
    checks the bytes); ``source`` names the stream (default ``operator``; a device's name is
    refused: ``markers/<device>`` carries that device's hardware triggers). The reply gives the
    marker's ``topic``, ``seq``, ``t_host_ns`` and ``t_mono_ns``.
    """

    cmd: Literal["mark"]
    text: str = Field(max_length=128)
    source: str = Field(default="operator", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class StudyRequest(_Req):
    """Set, read or clear the patient and study context (fields of ``StudyContext``,
    ``daemon/interop/study.py``). It never reaches stream headers or descriptors: ``set`` and
    ``status`` answer the random study uid only; ``get`` (not read-only) returns the context.
    ``study`` is left out of the request's dump, so the audit log records no patient data.
    """

    cmd: Literal["study"]
    action: Literal["set", "get", "clear"]
    study: dict[str, Any] | None = Field(default=None, exclude=True)


ControlRequest = Annotated[
    Union[
        StudyRequest,
        RecordRequest,
        ListRequest,
        DescribeRequest,
        ConfigureRequest,
        StartRequest,
        StopRequest,
        StatusRequest,
        PingRequest,
        DescriptorRequest,
        ActionRequest,
        SafeStateRequest,
        MarkRequest,
    ],
    Field(discriminator="cmd"),
]

#: Commands that do not change state: read-only clients may send them.
READ_ONLY_COMMANDS = frozenset({"list", "describe", "status", "ping", "descriptor"})

_REQUEST = TypeAdapter(ControlRequest)
_COMMANDS = ("list", "describe", "configure", "start", "stop", "status", "ping", "descriptor", "action",
             "record", "safe_state", "study", "mark")


class ControlError(Exception):
    """A request that gets an error reply. ``code`` is one of :data:`ErrorCode`."""

    def __init__(self, code: str, message: str, request_id: str | int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class ControlReply(BaseModel):
    """A reply: ``ok`` with a ``result``, or not ``ok`` with an ``error`` {code, message}."""

    id: str | int | None = None
    ok: bool
    result: Any = None
    error: dict[str, str] | None = None


def parse_request(raw: bytes) -> ControlRequest:
    """Decode and validate a request body. Raises :class:`ControlError` with a precise code."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ControlError("too_large", f"request is {len(raw)} bytes; the limit is {MAX_REQUEST_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError("bad_json", f"request is not UTF-8 JSON: {exc}") from None
    except RecursionError:  # [[[[... nested deeper than the parser's recursion limit
        raise ControlError("bad_json", "request is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ControlError("bad_request", "request must be a JSON object")
    rid = obj.get("id") if isinstance(obj.get("id"), (str, int)) else None
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError("bad_request", "request needs a string field 'cmd'", rid)
    if cmd not in _COMMANDS:
        raise ControlError("unknown_command", f"unknown command {cmd!r}; known: {', '.join(_COMMANDS)}", rid)
    try:
        return _REQUEST.validate_python(obj)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ControlError("bad_request", f"{cmd}: {detail}", rid) from None


def encode_request(cmd: str, **fields: Any) -> bytes:
    """Build a request body (no validation: the daemon is the judge)."""
    return json.dumps({"cmd": cmd, **fields}).encode()


def encode_reply(
    request_id: str | int | None,
    result: Any = None,
    error: ControlError | None = None,
) -> bytes:
    """Build a reply body; ``error`` makes it a failure reply."""
    if error is not None:
        body: dict[str, Any] = {"id": request_id, "ok": False, "error": {"code": error.code, "message": error.message}}
    else:
        body = {"id": request_id, "ok": True, "result": result}
    return json.dumps(body, default=_json_default).encode()


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json", exclude_none=True)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot encode {type(o).__name__} in a control reply")


def decode_reply(raw: bytes) -> ControlReply:
    """Parse a reply body."""
    return ControlReply.model_validate_json(raw)
