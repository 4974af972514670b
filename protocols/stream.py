"""medacq stream protocol v1: the ZeroMQ message format every subscriber decodes.

One message = one ZeroMQ multipart message on a PUB socket:

* part 0 -- topic, UTF-8 (``raw/eeg0``, ``recon/us0``, ``recon/ekg0/hr``);
* part 1 -- header, UTF-8 JSON (:class:`StreamHeader`);
* part 2 -- ``kind == "frame"`` only: the frame's array, C order, described by the
  header's ``dtype``/``shape``/``axes``. Other kinds carry no payload: a frame has exactly
  three parts, every other message exactly two.

Decoding never fails in more than one way: every problem with a message -- its part count,
its size, its JSON, a header field, a non-numeric ``dtype``, a payload whose size does not
match ``dtype`` x ``shape`` -- raises :class:`StreamDecodeError` (a :class:`HeaderError`), so
a consumer catches one exception, counts the message and goes on.

Nothing here needs more than a ZeroMQ library and a JSON parser to decode; see
``docs/stream-protocol.md`` for the language-neutral reference, and
``schema/header.schema.json`` (shipped in this package) for the JSON Schema.

This module is sans-I/O: it builds and parses message parts, it never touches a socket.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
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
    "StreamDecodeError",
    "MAX_HEADER_BYTES",
    "new_series_id",
    "HeaderTemplate",
    "encode_header",
    "decode_header",
    "frame_payload",
    "decode_message",
    "frame_nbytes",
    "message_hwm",
    "header_json_schema",
]

PROTOCOL_VERSION: Final = 1

MAX_HEADER_BYTES: Final = 1 << 20
"""Largest header (part 1) a decoder accepts, bytes; real headers, descriptors included, are a few KiB."""

_U64_MAX: Final = (1 << 64) - 1


class MessageKind(StrEnum):
    """What a message is. Only ``frame`` carries a payload."""

    FRAME = "frame"
    DESCRIPTOR = "descriptor"
    HEARTBEAT = "heartbeat"
    SERIES_START = "series_start"
    SERIES_END = "series_end"
    GAP = "gap"
    SAFETY = "safety"


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
        self.reason = message
        where = f"stream {stream!r:.80}" if stream else (f"topic {topic!r:.80}" if topic else "unknown stream")
        super().__init__(f"{where}: {message}")


class StreamDecodeError(HeaderError):
    """A message of the stream protocol could not be decoded: the one error every decoding
    problem raises (:func:`decode_header`, :func:`frame_payload`, :func:`decode_message`).

    Attributes:
        stream: the header's ``stream`` when it could be read, else ``None``.
        topic: the message's topic when the caller passed it, else ``None``.
        reason: what was wrong, without the stream/topic prefix.
    """


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
_EMPTY: Final[dict[str, Any]] = {}
_EMPTY_LIST: Final[list[Any]] = []
_LIST_OR_NONE: Final = frozenset((list, type(None)))
_NUMBER_OR_NONE: Final = frozenset((int, float, type(None)))


def decode_header(raw: bytes | memoryview, topic: str | None = None, *, strict: bool = False) -> dict[str, Any]:
    """Parse part 1 into a plain dict, checking the fields every consumer relies on.

    The fast path (frames) checks presence and JSON types of the required fields and of
    ``dtype``, ``shape``, ``axes``, ``t_device`` and ``meta``; ``strict=True`` (and every
    non-frame message) also validates the full :class:`StreamHeader` model. Raises
    :class:`StreamDecodeError` naming the stream (or the topic when the stream is unreadable).
    """
    try:
        h = _loads(raw if _LOADS_BUFFERS or isinstance(raw, bytes) else bytes(raw))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise StreamDecodeError(f"header is not UTF-8 JSON: {exc}", topic=topic) from None
    if type(h) is not dict:
        raise StreamDecodeError("header is not a JSON object", topic=topic)
    try:  # one lookup per required field (_REQUIRED), in the order the errors name them
        stream, v, kind, series = h["stream"], h["v"], h["kind"], h["series"]
        seq, t_host, t_mono = h["seq"], h["t_host_ns"], h["t_mono_ns"]
    except KeyError as exc:
        raise StreamDecodeError(f"header lacks required field {exc.args[0]!r}", _stream_of(h), topic) from None
    if type(stream) is not str:
        stream = None
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise StreamDecodeError(f"unsupported protocol version {v!r:.40} (this client speaks v1)", stream, topic)
    if type(kind) is not str or kind not in _KINDS:
        raise StreamDecodeError(f"unknown message kind {kind!r:.60}", stream, topic)
    if type(seq) is not int or seq < 0 or seq > _U64_MAX:
        raise StreamDecodeError(f"seq must be an unsigned 64-bit integer, got {seq!r:.40}", stream, topic)
    if stream is None or type(series) is not str:
        raise StreamDecodeError("'stream' and 'series' must be strings", stream, topic)
    if type(t_host) is not int or type(t_mono) is not int:
        raise StreamDecodeError("'t_host_ns' and 't_mono_ns' must be integers (ns)", stream, topic)
    if strict or kind != "frame":
        try:
            StreamHeader.model_validate(h)
        except ValidationError as exc:
            raise StreamDecodeError(_summarise(exc), stream, topic) from None
        if kind == "gap" and h.get("gap_frames") is not None and type(h["gap_frames"]) is not int:
            raise StreamDecodeError("'gap_frames' must be an integer", stream, topic)
        return h
    get = h.get
    if type(get("dtype")) is not str or type(get("shape")) is not list:
        raise StreamDecodeError("frame header needs 'dtype' (string) and 'shape' (list)", stream, topic)
    if type(get("meta", _EMPTY)) is not dict:
        raise StreamDecodeError("'meta' must be a JSON object", stream, topic)
    if type(get("axes", _EMPTY_LIST)) not in _LIST_OR_NONE:
        raise StreamDecodeError("'axes' must be a list", stream, topic)
    if type(get("t_device")) not in _NUMBER_OR_NONE:
        raise StreamDecodeError(f"'t_device' must be a number, got {get('t_device')!r:.40}", stream, topic)
    return h


def _summarise(exc: ValidationError) -> str:
    errs = exc.errors()
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs[:5])


_DTYPES: dict[str, np.dtype] = {}
_MAX_NDIM: Final = 32
_MAX_DTYPE_CHARS: Final = 32


def _numeric_dtype(name: Any, stream: str | None) -> np.dtype:
    """The numpy dtype a header names, if it is numeric and portable; else :class:`StreamDecodeError`.

    Accepted: bool (``|b1``), signed and unsigned integers (``<i2``, ``|u1``, ``>u4``...),
    floats up to 64 bits (``<f2``, ``<f4``, ``<f8``) and complex up to 128 bits
    (``<c8``, ``<c16``), in any spelling numpy parses (``float32`` too). Refused: objects,
    strings, bytes, void/structured and sub-array dtypes (``(2,)f4``), datetimes, and the
    platform-dependent long double.
    """
    if type(name) is not str or not 0 < len(name) <= _MAX_DTYPE_CHARS:
        raise StreamDecodeError(f"dtype must be a short string, got {name!r:.60}", stream)
    try:
        dtype = np.dtype(name)
    except Exception:  # noqa: BLE001 - numpy raises TypeError, ValueError, SyntaxError, warnings-as-errors
        raise StreamDecodeError(f"unknown dtype {name!r:.40}", stream) from None
    kind, size = dtype.kind, dtype.itemsize
    if (kind not in "biufc" or dtype.subdtype is not None or dtype.fields is not None or size == 0
            or (kind == "f" and size > 8) or (kind == "c" and size > 16)):
        raise StreamDecodeError(
            f"dtype {name!r} is not a numeric dtype (bool, int, uint, float <= 64 bit, complex <= 128 bit)", stream)
    if len(_DTYPES) < 256:
        _DTYPES[name] = dtype
    return dtype


def frame_payload(header: dict[str, Any], buffer: Any) -> np.ndarray:
    """Wrap a frame's payload buffer (part 2) as an ndarray, without copying.

    Raises :class:`StreamDecodeError` when ``dtype`` is not numeric (bool, int, uint, float up
    to 64 bit, complex up to 128 bit), ``shape`` is not a list of at most 32 non-negative
    integers, or the buffer size does not match dtype × shape.
    """
    name = header.get("dtype")
    dtype = _DTYPES.get(name) if type(name) is str else None
    if dtype is None:
        dtype = _numeric_dtype(name, _stream_of(header))
    shape = header.get("shape")
    if type(shape) is not list or len(shape) > _MAX_NDIM:
        raise StreamDecodeError(f"shape must be a list of at most {_MAX_NDIM} sizes, got {shape!r:.80}",
                                _stream_of(header))
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise StreamDecodeError(f"bad shape {shape!r:.80}", _stream_of(header))
        n *= d
    try:
        mv = memoryview(buffer)
    except TypeError:
        raise StreamDecodeError(f"payload is not a buffer ({type(buffer).__name__})", _stream_of(header)) from None
    if mv.nbytes != n * dtype.itemsize:
        raise StreamDecodeError(
            f"payload is {mv.nbytes} bytes but dtype {dtype.str} x shape {shape!r:.80} needs {n * dtype.itemsize}",
            _stream_of(header),
        )
    return np.frombuffer(mv, dtype=dtype).reshape(shape)


def _stream_of(header: dict[str, Any]) -> str | None:
    stream = header.get("stream")
    return stream if type(stream) is str else None


def decode_message(parts: Sequence[Any], topic: str | None = None, *,
                   max_payload_bytes: int | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Decode one whole multipart message: ``(header, array)``, ``array`` ``None`` unless a frame.

    Args:
        parts: the message's parts as buffers (``bytes``, ``memoryview``, ``zmq.Frame.buffer``),
            part 0 the topic. A frame has exactly 3 parts, every other kind exactly 2.
        topic: part 0 already decoded by the caller (used in error messages).
        max_payload_bytes: refuse a frame whose payload is larger (``None``: no limit).

    Raises :class:`StreamDecodeError` for anything wrong with the message, and nothing else:
    an unexpected failure inside the decoders is reported as one too, with its type.
    """
    try:
        n = len(parts)
        if n < 2:
            raise StreamDecodeError(f"message has {n} part(s); a header (part 1) is required", topic=topic)
        raw = parts[1]
        if len(raw) > MAX_HEADER_BYTES:
            raise StreamDecodeError(f"header is {len(raw)} bytes, over the {MAX_HEADER_BYTES}-byte limit",
                                    topic=topic)
        header = decode_header(raw, topic)
        if header["kind"] != "frame":
            if n != 2:
                raise StreamDecodeError(f"a {header['kind']} message has no payload, got {n} parts",
                                        header["stream"], topic)
            return header, None
        if n != 3:
            raise StreamDecodeError(f"a frame message has 3 parts (topic, header, payload), got {n}",
                                    header["stream"], topic)
        payload = parts[2]
        if max_payload_bytes is not None and len(payload) > max_payload_bytes:
            raise StreamDecodeError(f"payload is {len(payload)} bytes, over this consumer's limit of "
                                    f"{max_payload_bytes}", header["stream"], topic)
        return header, frame_payload(header, payload)
    except StreamDecodeError as exc:
        if exc.topic is None and topic is not None:
            raise StreamDecodeError(exc.reason, exc.stream, topic) from None
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: one error type, whatever the bytes were
        raise StreamDecodeError(f"undecodable message ({type(exc).__name__}: {exc})", topic=topic) from exc


def frame_nbytes(dtype: str, shape: Sequence[int]) -> int | None:
    """Payload bytes of one frame of this layout; ``None`` when an axis varies (``-1``)."""
    n = np.dtype(dtype).itemsize
    for d in shape:
        if d < 0:
            return None
        n *= d
    return n


def message_hwm(budget_bytes: int | None, frame_bytes: int | None, cap: int, floor: int = 2) -> int:
    """A ZeroMQ high-water mark (messages) that holds at most ``budget_bytes`` of frames.

    ZeroMQ bounds its queues in messages; a stream of ``frame_bytes``-byte frames fits the
    byte budget with ``budget_bytes // frame_bytes`` of them. The result is clamped to
    ``[floor, cap]`` (``cap`` 0: no message cap, as ZeroMQ's own 0 = unlimited; a budget or
    frame size of ``None`` leaves the cap alone). Frames larger than ``budget_bytes / floor``
    make the real bound ``floor * frame_bytes``.
    """
    if budget_bytes is None or not frame_bytes or frame_bytes <= 0:
        return cap
    hwm = max(floor, budget_bytes // frame_bytes)
    return min(hwm, cap) if cap > 0 else hwm


def header_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`StreamHeader` (what ships as ``schema/header.schema.json``)."""
    schema = StreamHeader.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://medacq.invalid/schema/stream-header-v1.json"
    schema["title"] = "medacq stream protocol v1 header"
    return schema
