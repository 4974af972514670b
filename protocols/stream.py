"""medacq stream protocol v1: the ZeroMQ message format every subscriber decodes.

One message = one ZeroMQ multipart message on a PUB socket:

* part 0 -- topic, UTF-8 (``raw/eeg0``, ``recon/us0``, ``recon/ekg0/hr``);
* part 1 -- header, UTF-8 JSON (:class:`StreamHeader`);
* parts 2.. -- payload buffers. For ``kind == "frame"`` part 2 is the frame's array,
  C order, described by the header's ``dtype``/``shape``/``axes``. Other kinds carry
  no payload.

Nothing here needs more than a ZeroMQ library and a JSON parser to decode; see
``docs/stream-protocol.md`` for the language-neutral reference, and
``schema/header.schema.json`` (shipped in this package) for the JSON Schema.

This module is sans-I/O: it builds and parses message parts, it never touches a socket.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "PROTOCOL_VERSION",
    "MessageKind",
    "SourceRef",
    "StreamDescriptor",
    "StreamHeader",
    "HeaderError",
    "new_series_id",
    "HeaderTemplate",
    "encode_header",
    "decode_header",
    "frame_payload",
    "header_json_schema",
]

PROTOCOL_VERSION: Final = 1

_U64_MAX: Final = (1 << 64) - 1


class MessageKind(StrEnum):
    """What a message is. Only ``frame`` carries a payload."""

    FRAME = "frame"
    DESCRIPTOR = "descriptor"
    HEARTBEAT = "heartbeat"
    SERIES_START = "series_start"
    SERIES_END = "series_end"
    GAP = "gap"


class SourceRef(BaseModel):
    """The acquired frame a reconstructed frame was made from (``recon/...`` streams).

    Lets any subscriber measure latency from acquisition to reconstruction.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    stream: str
    series: str
    seq: int = Field(ge=0, le=_U64_MAX)
    t_host_ns: int
    t_mono_ns: int
    t_device: float | int | None = None


class StreamDescriptor(BaseModel):
    """Everything a late joiner needs to interpret a stream's frames.

    Published with ``kind == "descriptor"`` (in the header's ``descriptor`` field) at
    series start, whenever it changes, and every few seconds; also returned by the
    control plane's ``describe`` command.

    Attributes:
        stream: stream name (``eeg0``); the topic is ``raw/<stream>`` or ``recon/<stream>``.
        modality: ``eeg``, ``ekg``, ``meg``, ``eit``, ``us``, ``xray``, ``ct``, ``synthetic`` ...
            The reconstruction stage picks its reconstructor by this name.
        device: device kind and identity (``cyton``, ``synthetic``, model string).
        dtype, shape, axes, units: the frame array's layout, as in frame headers; ``shape``
            may use ``-1`` on an axis whose length varies from frame to frame.
        channel_names: labels along the ``channel`` axis, when there is one.
        sample_rate_hz: samples per second along the ``sample`` axis (biosignals).
        frame_rate_hz: nominal frames per second.
        scale: physical value = raw * scale + offset when frames carry raw counts.
        geometry: modality-specific geometry (electrode positions, array pitch, pixel size).
        meta: anything else (firmware, settings).
    """

    model_config = ConfigDict(extra="allow")

    stream: str
    modality: str
    device: str = ""
    dtype: str
    shape: list[int]
    axes: list[str]
    units: str = ""
    channel_names: list[str] | None = None
    sample_rate_hz: float | None = None
    frame_rate_hz: float | None = None
    scale: float | None = None
    offset: float | None = None
    geometry: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class StreamHeader(BaseModel):
    """Part 1 of every message (JSON).

    Sequence numbers: ``seq`` is per stream and contiguous within a ``series``. For a
    ``frame`` it is the frame's number. For every other kind it is the number the *next*
    frame will carry, so a heartbeat also reveals frames lost at the tail. A ``gap``
    message announces that frames ``seq .. seq + gap_frames - 1`` will never be sent
    (``gap_frames`` may be 0 when frames were sent but device samples between them were
    lost: see ``meta.lost_samples``).

    Clocks: ``t_host_ns`` is CLOCK_REALTIME and ``t_mono_ns`` CLOCK_MONOTONIC on the
    acquiring host, both at acquisition of the frame's first sample (after clock fitting
    when the device has a sample counter); ``t_device`` is the device's own clock or
    counter where it has one.
    """

    model_config = ConfigDict(extra="allow")

    v: Literal[1] = 1
    stream: str
    kind: MessageKind
    series: str
    seq: int = Field(ge=0, le=_U64_MAX)
    dtype: str | None = None
    shape: list[int] | None = None
    axes: list[str] | None = None
    units: str | None = None
    t_device: float | int | None = None
    t_host_ns: int
    t_mono_ns: int
    gap_frames: int | None = Field(default=None, ge=0)
    reason: str | None = None
    descriptor: StreamDescriptor | None = None
    source: SourceRef | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class HeaderError(ValueError):
    """A header could not be decoded. The message names the stream when it is known."""

    def __init__(self, message: str, stream: str | None = None, topic: str | None = None):
        self.stream = stream
        self.topic = topic
        where = f"stream {stream!r}" if stream else (f"topic {topic!r}" if topic else "unknown stream")
        super().__init__(f"{where}: {message}")


def new_series_id() -> str:
    """A fresh series identifier (uuid4, canonical string)."""
    return str(uuid.uuid4())


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_header(header: StreamHeader) -> bytes:
    """Serialise a header model to part 1 (UTF-8 JSON, ``None`` fields left out)."""
    return header.model_dump_json(exclude_none=True).encode()


class HeaderTemplate:
    """Fast header encoder for the hot path of one stream.

    Validating a pydantic model per frame costs more than sending a 1 KiB frame; the
    fields that do not change between frames of a series are checked once, here, and
    each frame only splices in its own sequence number, clocks and metadata. The output
    is byte-for-byte what :func:`encode_header` would produce for the same values (tests
    check this).
    """

    __slots__ = ("stream", "series", "_prefix", "_mid", "_shape", "_post")

    def __init__(
        self,
        stream: str,
        series: str,
        dtype: str,
        shape: list[int] | tuple[int, ...],
        axes: list[str] | tuple[str, ...],
        units: str,
    ) -> None:
        StreamHeader(  # validate the invariant part once
            stream=stream, kind=MessageKind.FRAME, series=series, seq=0, dtype=dtype,
            shape=list(shape), axes=list(axes), units=units, t_host_ns=0, t_mono_ns=0,
        )
        np.dtype(dtype)
        self.stream = stream
        self.series = series
        self._prefix = (
            b'{"v":1,"stream":' + _dumps(stream) + b',"kind":"frame","series":' + _dumps(series)
            + b',"seq":'
        )
        self._mid = b',"dtype":' + _dumps(dtype) + b',"shape":'
        self._shape = _int_list(shape)
        self._post = b',"axes":' + _dumps(list(axes)) + b',"units":' + _dumps(units)

    def frame(
        self,
        seq: int,
        t_host_ns: int,
        t_mono_ns: int,
        t_device: float | int | None = None,
        meta: dict[str, Any] | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> bytes:
        """Header bytes for frame ``seq``; ``shape`` overrides the template's (variable-length axes)."""
        if t_device is None:
            tdev = b""
        elif type(t_device) is int:
            tdev = b',"t_device":%d' % t_device
        else:
            tdev = b',"t_device":' + _dumps(t_device)
        return b"".join((
            self._prefix, b"%d" % seq, self._mid, self._shape if shape is None else _int_list(shape), self._post,
            tdev, b',"t_host_ns":%d,"t_mono_ns":%d' % (t_host_ns, t_mono_ns),
            b',"meta":' + _dumps(meta) + b"}" if meta else b',"meta":{}}',
        ))


def _int_list(values: list[int] | tuple[int, ...]) -> bytes:
    return b"[" + b",".join(b"%d" % v for v in values) + b"]"


_loads: Callable[[bytes | memoryview], Any]  # JSON text -> the parsed (dynamic) value
_JSONError: type[ValueError]
try:  # orjson parses headers ~4x faster than the stdlib; the stdlib is the fallback
    from orjson import JSONDecodeError as _OrjsonDecodeError
    from orjson import loads as _orjson_loads

    _loads, _JSONError = _orjson_loads, _OrjsonDecodeError
    _LOADS_BUFFERS = True  # orjson parses a memoryview in place
except ImportError:  # pragma: no cover

    def _stdlib_loads(s: bytes | memoryview) -> Any:
        return json.loads(bytes(s))

    _loads = _stdlib_loads
    _JSONError = json.JSONDecodeError
    _LOADS_BUFFERS = False


_REQUIRED: Final = ("v", "stream", "kind", "series", "seq", "t_host_ns", "t_mono_ns")
_KINDS: Final = frozenset(k.value for k in MessageKind)


def decode_header(raw: bytes | memoryview, topic: str | None = None, *, strict: bool = False) -> dict[str, Any]:
    """Parse part 1 into a plain dict, checking the fields every consumer relies on.

    The fast path checks presence and types of the required fields; ``strict=True`` (and
    every non-frame message) validates the full :class:`StreamHeader` model. Raises
    :class:`HeaderError` naming the stream (or the topic when the stream is unreadable).
    """
    try:
        h = _loads(raw if _LOADS_BUFFERS or isinstance(raw, bytes) else bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError, _JSONError) as exc:
        raise HeaderError(f"header is not UTF-8 JSON: {exc}", topic=topic) from None
    if not isinstance(h, dict):
        raise HeaderError("header is not a JSON object", topic=topic)
    stream = h.get("stream") if isinstance(h.get("stream"), str) else None
    for key in _REQUIRED:
        if key not in h:
            raise HeaderError(f"header lacks required field {key!r}", stream=stream, topic=topic)
    if h["v"] != PROTOCOL_VERSION:
        raise HeaderError(f"unsupported protocol version {h['v']!r} (this client speaks v1)", stream, topic)
    kind = h["kind"]
    if kind not in _KINDS:
        raise HeaderError(f"unknown message kind {kind!r}", stream, topic)
    seq = h["seq"]
    if type(seq) is not int or seq < 0 or seq > _U64_MAX:
        raise HeaderError(f"seq must be an unsigned 64-bit integer, got {seq!r}", stream, topic)
    if strict or kind != "frame":
        try:
            StreamHeader.model_validate(h)
        except ValidationError as exc:
            raise HeaderError(_summarise(exc), stream, topic) from None
    elif not (isinstance(h.get("dtype"), str) and isinstance(h.get("shape"), list)):
        raise HeaderError("frame header needs 'dtype' (string) and 'shape' (list)", stream, topic)
    return h


def _summarise(exc: ValidationError) -> str:
    errs = exc.errors()
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs[:5])


_DTYPES: dict[str, np.dtype] = {}


def frame_payload(header: dict[str, Any], buffer: Any) -> np.ndarray:
    """Wrap a frame's payload buffer (part 2) as an ndarray, without copying.

    Raises :class:`HeaderError` when the buffer size does not match dtype × shape.
    """
    stream = header.get("stream")
    name = header["dtype"]
    dtype = _DTYPES.get(name)
    if dtype is None:
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise HeaderError(f"unknown dtype {name!r}", stream) from None
        if len(_DTYPES) < 256:
            _DTYPES[name] = dtype
    shape = header["shape"]
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise HeaderError(f"bad shape {shape!r}", stream)
        n *= d
    mv = memoryview(buffer)
    if mv.nbytes != n * dtype.itemsize:
        raise HeaderError(
            f"payload is {mv.nbytes} bytes but dtype {dtype.str} x shape {list(shape)} needs {n * dtype.itemsize}",
            stream,
        )
    return np.frombuffer(mv, dtype=dtype).reshape(shape)


def header_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`StreamHeader` (what ships as ``schema/header.schema.json``)."""
    schema = StreamHeader.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://medacq.invalid/schema/stream-header-v1.json"
    schema["title"] = "medacq stream protocol v1 header"
    return schema
