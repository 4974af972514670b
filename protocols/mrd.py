"""MRD streaming protocol (ISMRM raw data over TCP, as Gadgetron and python-ismrmrd-server speak
it), sans-I/O, both roles.

Facts from the ISMRMRD documentation (ismrmrd/ismrmrd ``doc/mrd_messages.md``) and ``ismrmrd.h``:

* A stream of messages, each a little-endian ``uint16`` id then its payload; no framing beyond
  that: the payload length follows from the id (and, for data, from fields of its header).
* 1 ``CONFIG_FILE``: 1024 bytes, a null-terminated UTF-8 name. 2 ``CONFIG_TEXT``, 3 ``HEADER``
  (the XML header), 5 ``TEXT``: ``uint32`` length + UTF-8 text. 4 ``CLOSE``: no payload (each side
  sends it after its last data message).
* 1008 ``ACQUISITION``: the 340-byte ``AcquisitionHeader`` (:data:`ACQUISITION_HEADER_DTYPE`),
  then ``number_of_samples · trajectory_dimensions`` float32 of trajectory, then
  ``active_channels · number_of_samples`` complex64 (channel-major).
* 1022 ``IMAGE``: the 198-byte ``ImageHeader`` (:data:`IMAGE_HEADER_DTYPE`), a ``uint64``
  attribute length, the attribute text (XML meta, not null-terminated), then
  ``matrix_size[0]·[1]·[2]·channels`` values of ``data_type`` (1 u16, 2 i16, 3 u32, 4 i32,
  5 f32, 6 f64, 7 complex64, 8 complex128); stored x fastest, then y, z, channel.
* 1026 ``WAVEFORM``: a 40-byte header and ``channels · number_of_samples`` uint32 (parsed and
  passed on; this module does not interpret waveforms).

An unknown id is fatal for the stream (there is no resynchronisation point): :class:`MrdError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

__all__ = [
    "CONFIG_FILE", "CONFIG_TEXT", "HEADER", "CLOSE", "TEXT", "ACQUISITION", "IMAGE", "WAVEFORM",
    "ENCODING_COUNTERS_DTYPE", "ACQUISITION_HEADER_DTYPE", "IMAGE_HEADER_DTYPE", "WAVEFORM_HEADER_DTYPE",
    "IMAGE_DATA_TYPES", "MrdError", "MrdConfigFile", "MrdConfigText", "MrdHeader", "MrdText", "MrdClose",
    "MrdAcquisition", "MrdImage", "MrdWaveform", "MrdConnection",
]

CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
ACQUISITION, IMAGE, WAVEFORM = 1008, 1022, 1026
MAX_TEXT_BYTES: Final = 64 << 20

#: ISMRMRD_EncodingCounters (ismrmrd.h)
ENCODING_COUNTERS_DTYPE = np.dtype([
    ("kspace_encode_step_1", "<u2"), ("kspace_encode_step_2", "<u2"), ("average", "<u2"), ("slice", "<u2"),
    ("contrast", "<u2"), ("phase", "<u2"), ("repetition", "<u2"), ("set", "<u2"), ("segment", "<u2"),
    ("user", "<u2", (8,))])
#: ISMRMRD_AcquisitionHeader (ismrmrd.h, version 1): 340 bytes
ACQUISITION_HEADER_DTYPE = np.dtype([
    ("version", "<u2"), ("flags", "<u8"), ("measurement_uid", "<u4"), ("scan_counter", "<u4"),
    ("acquisition_time_stamp", "<u4"), ("physiology_time_stamp", "<u4", (3,)), ("number_of_samples", "<u2"),
    ("available_channels", "<u2"), ("active_channels", "<u2"), ("channel_mask", "<u8", (16,)),
    ("discard_pre", "<u2"), ("discard_post", "<u2"), ("center_sample", "<u2"), ("encoding_space_ref", "<u2"),
    ("trajectory_dimensions", "<u2"), ("sample_time_us", "<f4"), ("position", "<f4", (3,)),
    ("read_dir", "<f4", (3,)), ("phase_dir", "<f4", (3,)), ("slice_dir", "<f4", (3,)),
    ("patient_table_position", "<f4", (3,)), ("idx", ENCODING_COUNTERS_DTYPE), ("user_int", "<i4", (8,)),
    ("user_float", "<f4", (8,))])
#: ISMRMRD_ImageHeader (ismrmrd.h, version 1): 198 bytes
IMAGE_HEADER_DTYPE = np.dtype([
    ("version", "<u2"), ("data_type", "<u2"), ("flags", "<u8"), ("measurement_uid", "<u4"),
    ("matrix_size", "<u2", (3,)), ("field_of_view", "<f4", (3,)), ("channels", "<u2"), ("position", "<f4", (3,)),
    ("read_dir", "<f4", (3,)), ("phase_dir", "<f4", (3,)), ("slice_dir", "<f4", (3,)),
    ("patient_table_position", "<f4", (3,)), ("average", "<u2"), ("slice", "<u2"), ("contrast", "<u2"),
    ("phase", "<u2"), ("repetition", "<u2"), ("set", "<u2"), ("acquisition_time_stamp", "<u4"),
    ("physiology_time_stamp", "<u4", (3,)), ("image_type", "<u2"), ("image_index", "<u2"),
    ("image_series_index", "<u2"), ("user_int", "<i4", (8,)), ("user_float", "<f4", (8,)),
    ("attribute_string_len", "<u4")])
#: ISMRMRD_WaveformHeader: 40 bytes
WAVEFORM_HEADER_DTYPE = np.dtype([  # natural alignment: padding after version and at the end
    ("version", "<u2"), ("_pad0", "V6"), ("flags", "<u8"), ("measurement_uid", "<u4"), ("scan_counter", "<u4"),
    ("time_stamp", "<u4"), ("number_of_samples", "<u2"), ("channels", "<u2"), ("sample_time_us", "<f4"),
    ("waveform_id", "<u2"), ("_pad1", "V2")])
#: MRD image data types
IMAGE_DATA_TYPES: Final[dict[int, np.dtype[Any]]] = {1: np.dtype("<u2"), 2: np.dtype("<i2"), 3: np.dtype("<u4"), 4: np.dtype("<i4"),
                           5: np.dtype("<f4"), 6: np.dtype("<f8"), 7: np.dtype("<c8"), 8: np.dtype("<c16")}
assert ACQUISITION_HEADER_DTYPE.itemsize == 340 and IMAGE_HEADER_DTYPE.itemsize == 198
assert WAVEFORM_HEADER_DTYPE.itemsize == 40


class MrdError(ValueError):
    """The stream cannot be parsed on (unknown message id, impossible sizes)."""


@dataclass(frozen=True)
class MrdConfigFile:
    name: str


@dataclass(frozen=True)
class MrdConfigText:
    text: str


@dataclass(frozen=True)
class MrdHeader:
    xml: str


@dataclass(frozen=True)
class MrdText:
    text: str


@dataclass(frozen=True)
class MrdClose:
    pass


@dataclass
class MrdAcquisition:
    """``head``: one :data:`ACQUISITION_HEADER_DTYPE` record; ``traj`` ``(samples, dims)``
    float32; ``data`` ``(channels, samples)`` complex64."""

    head: np.void
    traj: np.ndarray
    data: np.ndarray


@dataclass
class MrdImage:
    """``head``: one :data:`IMAGE_HEADER_DTYPE` record; ``attributes`` the meta XML; ``data``
    ``(channels, z, y, x)`` of the header's data type."""

    head: np.void
    attributes: str
    data: np.ndarray


@dataclass
class MrdWaveform:
    head: np.void
    data: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint32))


def _text(kind: int, text: str) -> bytes:
    b = text.encode("utf-8")
    return struct.pack("<HI", kind, len(b)) + b


class MrdConnection:
    """One end of an MRD stream. ``send_*`` return the bytes to write; ``receive_data`` takes
    what arrived and ``next_event`` returns the next complete message (or ``None``)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.messages_in = 0
        self.closed_by_peer = False

    # ---- sending ---------------------------------------------------------------------------
    @staticmethod
    def send_config_file(name: str) -> bytes:
        b = name.encode("utf-8")
        if len(b) > 1023:
            raise ValueError("MRD config file name over 1023 bytes")
        return struct.pack("<H", CONFIG_FILE) + b.ljust(1024, b"\0")

    @staticmethod
    def send_config_text(text: str) -> bytes:
        return _text(CONFIG_TEXT, text)

    @staticmethod
    def send_header(xml: str) -> bytes:
        return _text(HEADER, xml)

    @staticmethod
    def send_text(text: str) -> bytes:
        return _text(TEXT, text)

    @staticmethod
    def send_close() -> bytes:
        return struct.pack("<H", CLOSE)

    @staticmethod
    def send_acquisition(head: np.ndarray | np.void, data: np.ndarray, traj: np.ndarray | None = None) -> bytes:
        """``head`` an acquisition header record (its sample/channel/trajectory counts are set
        from ``data`` ``(channels, samples)`` and ``traj`` ``(samples, dims)``)."""
        h = np.array(head, dtype=ACQUISITION_HEADER_DTYPE).reshape(())
        d = np.ascontiguousarray(data, dtype="<c8")
        if d.ndim != 2:
            raise ValueError(f"acquisition data is (channels, samples), not {d.shape}")
        t = np.zeros((d.shape[1], 0), "<f4") if traj is None else np.ascontiguousarray(traj, dtype="<f4")
        if t.shape[0] != d.shape[1]:
            raise ValueError("trajectory and data differ in samples")
        h["number_of_samples"], h["active_channels"], h["trajectory_dimensions"] = d.shape[1], d.shape[0], t.shape[1]
        h["available_channels"] = max(int(h["available_channels"]), d.shape[0])
        return struct.pack("<H", ACQUISITION) + h.tobytes() + t.tobytes() + d.tobytes()

    @staticmethod
    def send_image(head: np.ndarray | np.void, data: np.ndarray, attributes: str = "") -> bytes:
        """``data`` ``(channels, z, y, x)`` (or ``(y, x)``); type and sizes go into the header."""
        d = np.asarray(data)
        if d.ndim == 2:
            d = d[None, None]
        if d.ndim != 4:
            raise ValueError(f"image data is (channels, z, y, x), not {d.shape}")
        kinds = {v: k for k, v in IMAGE_DATA_TYPES.items()}
        dt = d.dtype.newbyteorder("<") if d.dtype.byteorder == ">" else d.dtype
        if np.dtype(dt).str not in {v.str for v in IMAGE_DATA_TYPES.values()}:
            raise ValueError(f"MRD images do not take {d.dtype}")
        code = kinds[np.dtype(np.dtype(dt).str)]
        h = np.array(head, dtype=IMAGE_HEADER_DTYPE).reshape(())
        a = attributes.encode("utf-8")
        h["data_type"], h["channels"] = code, d.shape[0]
        h["matrix_size"] = (d.shape[3], d.shape[2], d.shape[1])
        h["attribute_string_len"] = len(a)
        body: bytes = np.ascontiguousarray(d, dtype=IMAGE_DATA_TYPES[code]).tobytes()
        head_bytes: bytes = h.tobytes()
        return struct.pack("<H", IMAGE) + head_bytes + struct.pack("<Q", len(a)) + a + body

    # ---- receiving -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> Any:
        """The next complete message, ``None`` until one is complete; :class:`MrdError` when the
        stream cannot be parsed on (the buffer is left as it was)."""
        b = self._buf
        if len(b) < 2:
            return None
        (kind,) = struct.unpack_from("<H", b, 0)
        ev: Any
        if kind == CLOSE:
            ev, n = MrdClose(), 2
            self.closed_by_peer = True
        elif kind == CONFIG_FILE:
            if len(b) < 2 + 1024:
                return None
            ev, n = MrdConfigFile(bytes(b[2:1026]).split(b"\0", 1)[0].decode("utf-8", "replace")), 1026
        elif kind in (CONFIG_TEXT, HEADER, TEXT):
            if len(b) < 6:
                return None
            (ln,) = struct.unpack_from("<I", b, 2)
            if ln > MAX_TEXT_BYTES:
                raise MrdError(f"MRD text message {kind} of {ln} bytes (over {MAX_TEXT_BYTES})")
            if len(b) < 6 + ln:
                return None
            s = bytes(b[6:6 + ln]).rstrip(b"\0").decode("utf-8", "replace")
            ev, n = {CONFIG_TEXT: MrdConfigText, HEADER: MrdHeader, TEXT: MrdText}[kind](s), 6 + ln
        elif kind == ACQUISITION:
            hs = ACQUISITION_HEADER_DTYPE.itemsize
            if len(b) < 2 + hs:
                return None
            head = np.frombuffer(bytes(b[2:2 + hs]), ACQUISITION_HEADER_DTYPE)[0]
            ns, nc, nd = int(head["number_of_samples"]), int(head["active_channels"]), int(head["trajectory_dimensions"])
            nt, ndata = ns * nd * 4, ns * nc * 8
            n = 2 + hs + nt + ndata
            if len(b) < n:
                return None
            traj = np.frombuffer(bytes(b[2 + hs:2 + hs + nt]), "<f4").reshape(ns, nd)
            data = np.frombuffer(bytes(b[2 + hs + nt:n]), "<c8").reshape(nc, ns)
            ev = MrdAcquisition(head, traj, data)
        elif kind == IMAGE:
            hs = IMAGE_HEADER_DTYPE.itemsize
            if len(b) < 2 + hs + 8:
                return None
            head = np.frombuffer(bytes(b[2:2 + hs]), IMAGE_HEADER_DTYPE)[0]
            (la,) = struct.unpack_from("<Q", b, 2 + hs)
            code = int(head["data_type"])
            if code not in IMAGE_DATA_TYPES or la > MAX_TEXT_BYTES:
                raise MrdError(f"MRD image: data type {code}, attribute length {la}")
            nx, ny, nz = (int(v) for v in head["matrix_size"])
            ch = int(head["channels"])
            nd = nx * ny * nz * ch * IMAGE_DATA_TYPES[code].itemsize
            a0 = 2 + hs + 8
            n = a0 + la + nd
            if len(b) < n:
                return None
            attrs = bytes(b[a0:a0 + la]).rstrip(b"\0").decode("utf-8", "replace")
            img: np.ndarray = np.frombuffer(bytes(b[a0 + la:n]), IMAGE_DATA_TYPES[code]).reshape(ch, nz, ny, nx)
            ev = MrdImage(head, attrs, img)
        elif kind == WAVEFORM:
            hs = WAVEFORM_HEADER_DTYPE.itemsize
            if len(b) < 2 + hs:
                return None
            head = np.frombuffer(bytes(b[2:2 + hs]), WAVEFORM_HEADER_DTYPE)[0]
            ns, ch = int(head["number_of_samples"]), int(head["channels"])
            n = 2 + hs + ns * ch * 4
            if len(b) < n:
                return None
            ev = MrdWaveform(head, np.frombuffer(bytes(b[2 + hs:n]), "<u4").reshape(ch, ns))
        else:
            raise MrdError(f"unknown MRD message id {kind}: the stream cannot be parsed on")
        del b[:n]
        self.messages_in += 1
        return ev
