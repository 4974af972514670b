"""Sciospec-style EIT16/32 serial codec (sans-I/O, both roles).

Wire format (as documented by the open sciopy client, EITLabworks/sciopy):

* Every command and reply is framed ``[CT][LEN][payload (LEN bytes)][CT]``; the command
  tag ``CT`` opens and closes the frame.
* The device answers each command with an acknowledge frame ``18 01 <code> 18``
  (:class:`AckCode`: 0x83 executed, 0x81/0x82 not acknowledged, 0x84 system ready,
  0x92 data hold-up, ...).
* Measurement setup commands use ``CT = 0xB0``: ``B0 01 01 B0`` reset setup,
  ``B0 03 02 <u16 BE> B0`` burst count, ``B0 05 03 <f32 BE> B0`` frame rate (fps),
  ``B0 0C 04 <fmin f32> <fmax f32> <count u16> <type u8> B0`` excitation frequencies (Hz),
  ``B0 09 05 <f64 BE> B0`` excitation amplitude (A), ``B0 03 06 <inj> <gnd> B0`` add an
  injection pair (1-based electrodes). ``B1 01 <option> B1`` reads an option back; the
  device replies ``B1 <len> <option> <data> B1`` then an ack.
* ``B4 01 01 B4`` starts, ``B4 01 00 B4`` stops a measurement.
* Data frames, 140 bytes, one per excitation, frequency row and 16-channel group::

      [0] 0xB4  [1] 0x89 (=137)  [2] channel group (1-based)
      [3:5] injection electrodes (1-based)  [5:7] frequency row (u16 BE, 1-based)
      [7:11] timestamp (u32 BE, ms)  [11:139] 16 x (f32 BE real, f32 BE imag) volts
      [139] 0xB4

The host role (:class:`SciospecHostCodec`) parses acks, option replies and data frames and
encodes commands; the device role (:class:`SciospecDeviceCodec`) parses commands and
encodes acks, replies and data frames. Garbage in the byte stream never raises: the codec
skips to the next plausible frame start and emits :class:`~medacq.protocols._sansio.Garbage`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from ._sansio import NEED_DATA, READ_ROOM, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "CT_SETUP",
    "CT_GET_SETUP",
    "CT_OUTPUT_CONFIG",
    "CT_GET_OUTPUT_CONFIG",
    "CT_START_STOP",
    "CT_DEVICE_INFO",
    "CT_FIRMWARE_ID",
    "CT_ACK",
    "DATA_FRAME_SIZE",
    "CHANNELS_PER_GROUP",
    "AckCode",
    "SetupOption",
    "ResetSetup",
    "SetBurstCount",
    "SetFrameRate",
    "SetFrequencies",
    "SetAmplitude",
    "AddInjectionPair",
    "GetSetup",
    "SetOutputConfig",
    "StartMeasurement",
    "StopMeasurement",
    "GetDeviceInfo",
    "RawCommand",
    "Ack",
    "SetupReply",
    "DeviceInfo",
    "DataFrame",
    "SciospecCommand",
    "SciospecReply",
    "SciospecHostCodec",
    "SciospecDeviceCodec",
]

CT_SETUP = 0xB0
CT_GET_SETUP = 0xB1
CT_OUTPUT_CONFIG = 0xB2
CT_GET_OUTPUT_CONFIG = 0xB3
CT_START_STOP = 0xB4
CT_DEVICE_INFO = 0xD1
CT_FIRMWARE_ID = 0xD2
CT_ACK = 0x18
DATA_FRAME_SIZE = 140
CHANNELS_PER_GROUP = 16
_DATA_LEN = DATA_FRAME_SIZE - 3  # 137 = 0x89
_MAX_BUFFER = (1 << 16) + READ_ROOM  # frames are at most 258 bytes; READ_ROOM: one read behind a partial one


class AckCode(enum.IntEnum):
    """Status codes carried by ``18 01 <code> 18`` frames."""

    NO_MESSAGE = 0x01
    TIMEOUT = 0x02
    WAKE_UP = 0x04
    TCP_CONNECTED = 0x11
    NOT_EXECUTED = 0x81
    NOT_RECOGNISED = 0x82
    ACK = 0x83
    SYSTEM_READY = 0x84
    DATA_HOLDUP = 0x92


class SetupOption(enum.IntEnum):
    """First payload byte of a ``0xB0``/``0xB1`` measurement-setup frame."""

    RESET = 0x01
    BURST_COUNT = 0x02
    FRAME_RATE = 0x03
    FREQUENCIES = 0x04
    AMPLITUDE = 0x05
    EXCITATION_SEQUENCE = 0x06


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class ResetSetup:
    """Clear the measurement setup (``B0 01 01 B0``)."""


@dataclass(frozen=True, slots=True)
class SetBurstCount:
    """Number of EIT frames to acquire after start; 0 = until stopped."""

    count: int


@dataclass(frozen=True, slots=True)
class SetFrameRate:
    """Frame rate in frames per second (float32 on the wire)."""

    fps: float


@dataclass(frozen=True, slots=True)
class SetFrequencies:
    """Excitation frequency list: ``count`` frequencies from ``fmin`` to ``fmax`` Hz.

    ``log_scale`` selects logarithmic (True) or linear (False) spacing.
    """

    fmin: float
    fmax: float
    count: int = 1
    log_scale: bool = False


@dataclass(frozen=True, slots=True)
class SetAmplitude:
    """Excitation current amplitude in A (float64 on the wire, 100 nA .. 10 mA)."""

    amperes: float


@dataclass(frozen=True, slots=True)
class AddInjectionPair:
    """Append one excitation (current source ``inj``, sink ``gnd``), 1-based electrodes."""

    inj: int
    gnd: int


@dataclass(frozen=True, slots=True)
class GetSetup:
    """Read back one measurement-setup option (``B1 01 <option> B1``)."""

    option: int


@dataclass(frozen=True, slots=True)
class SetOutputConfig:
    """Enable/disable an output field (1 excitation, 2 frequency row, 3 timestamp)."""

    field: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class StartMeasurement:
    """``B4 01 01 B4``."""


@dataclass(frozen=True, slots=True)
class StopMeasurement:
    """``B4 01 00 B4``."""


@dataclass(frozen=True, slots=True)
class GetDeviceInfo:
    """``D1 00 D1``: query the device identification."""


@dataclass(frozen=True, slots=True)
class RawCommand:
    """Any other well-framed command: command tag and payload bytes."""

    ct: int
    payload: bytes


SciospecCommand = Union[
    ResetSetup,
    SetBurstCount,
    SetFrameRate,
    SetFrequencies,
    SetAmplitude,
    AddInjectionPair,
    GetSetup,
    SetOutputConfig,
    StartMeasurement,
    StopMeasurement,
    GetDeviceInfo,
    RawCommand,
]

# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledge/status frame ``18 01 <code> 18``; ``code`` is an :class:`AckCode` value."""

    code: int

    @property
    def ok(self) -> bool:
        return self.code == AckCode.ACK


@dataclass(frozen=True, slots=True)
class SetupReply:
    """Reply to :class:`GetSetup`: the option byte and its raw data bytes."""

    option: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Reply to :class:`GetDeviceInfo`: raw identification bytes."""

    payload: bytes


@dataclass(frozen=True, slots=True, eq=False)
class DataFrame:
    """One 140-byte data frame.

    Attributes:
        channel_group: 1-based 16-channel group (group g holds electrodes 16(g-1)+1..16g).
        inj: 1-based current source electrode; ``gnd``: 1-based sink electrode.
        freq_row: 1-based row in the frequency list.
        timestamp_ms: device clock, ms (u32, wraps).
        values: shape ``(16,)`` complex64, electrode potentials in V.
    """

    channel_group: int
    inj: int
    gnd: int
    freq_row: int
    timestamp_ms: int
    values: np.ndarray


SciospecReply = Union[Ack, SetupReply, DeviceInfo, DataFrame]


def _frame(ct: int, payload: bytes) -> bytes:
    if len(payload) > 255:
        raise LocalProtocolError("payload longer than 255 bytes")
    return bytes((ct, len(payload))) + payload + bytes((ct,))


def encode_data_frame(frame: DataFrame) -> bytes:
    """Encode a :class:`DataFrame` into its 140 bytes."""
    vals = np.asarray(frame.values)
    if vals.shape != (CHANNELS_PER_GROUP,):
        raise LocalProtocolError("a data frame carries exactly 16 complex values")
    if not (0 < frame.channel_group < 256 and 0 < frame.inj < 256 and 0 < frame.gnd < 256):
        raise LocalProtocolError("channel group and electrodes must be 1..255")
    iq = np.empty(2 * CHANNELS_PER_GROUP, dtype=">f4")
    iq[0::2] = vals.real
    iq[1::2] = vals.imag
    head = struct.pack(
        ">BBBHI",
        frame.channel_group,
        frame.inj,
        frame.gnd,
        frame.freq_row & 0xFFFF,
        frame.timestamp_ms & 0xFFFFFFFF,
    )
    return _frame(CT_START_STOP, head + iq.tobytes())


def decode_data_frame(raw: bytes) -> DataFrame:
    """Decode 140 bytes (already validated for tags and length) into a :class:`DataFrame`."""
    grp, inj, gnd, row, ts = struct.unpack_from(">BBBHI", raw, 2)
    iq = np.frombuffer(raw, dtype=">f4", count=32, offset=11).astype(np.float32)
    values = (iq[0::2] + 1j * iq[1::2]).astype(np.complex64)
    return DataFrame(grp, inj, gnd, row, ts, values)


def _encode_command(ev: SciospecCommand) -> bytes:
    if isinstance(ev, ResetSetup):
        return _frame(CT_SETUP, b"\x01")
    if isinstance(ev, SetBurstCount):
        if not 0 <= ev.count <= 0xFFFF:
            raise LocalProtocolError("burst count must be 0..65535")
        return _frame(CT_SETUP, struct.pack(">BH", SetupOption.BURST_COUNT, ev.count))
    if isinstance(ev, SetFrameRate):
        if not ev.fps > 0:
            raise LocalProtocolError("frame rate must be positive")
        return _frame(CT_SETUP, struct.pack(">Bf", SetupOption.FRAME_RATE, ev.fps))
    if isinstance(ev, SetFrequencies):
        if not (0 < ev.fmin <= ev.fmax) or not 1 <= ev.count <= 0xFFFF:
            raise LocalProtocolError("bad frequency list")
        return _frame(
            CT_SETUP,
            struct.pack(">BffHB", SetupOption.FREQUENCIES, ev.fmin, ev.fmax, ev.count, int(ev.log_scale)),
        )
    if isinstance(ev, SetAmplitude):
        if not 0 < ev.amperes <= 0.01:
            raise LocalProtocolError("amplitude must be in (0, 10 mA]")
        return _frame(CT_SETUP, struct.pack(">Bd", SetupOption.AMPLITUDE, ev.amperes))
    if isinstance(ev, AddInjectionPair):
        if not (1 <= ev.inj <= 255 and 1 <= ev.gnd <= 255) or ev.inj == ev.gnd:
            raise LocalProtocolError("injection pair must be two distinct 1-based electrodes")
        return _frame(CT_SETUP, bytes((SetupOption.EXCITATION_SEQUENCE, ev.inj, ev.gnd)))
    if isinstance(ev, GetSetup):
        return _frame(CT_GET_SETUP, bytes((ev.option,)))
    if isinstance(ev, SetOutputConfig):
        return _frame(CT_OUTPUT_CONFIG, bytes((ev.field, int(ev.enabled))))
    if isinstance(ev, StartMeasurement):
        return _frame(CT_START_STOP, b"\x01")
    if isinstance(ev, StopMeasurement):
        return _frame(CT_START_STOP, b"\x00")
    if isinstance(ev, GetDeviceInfo):
        return _frame(CT_DEVICE_INFO, b"")
    if isinstance(ev, RawCommand):
        return _frame(ev.ct, bytes(ev.payload))
    raise LocalProtocolError(f"not a Sciospec command: {ev!r}")


def _decode_command(ct: int, payload: bytes) -> SciospecCommand:
    n = len(payload)
    if ct == CT_SETUP and n >= 1:
        opt = payload[0]
        if opt == SetupOption.RESET and n == 1:
            return ResetSetup()
        if opt == SetupOption.BURST_COUNT and n == 3:
            return SetBurstCount(struct.unpack(">H", payload[1:])[0])
        if opt == SetupOption.FRAME_RATE and n == 5:
            return SetFrameRate(struct.unpack(">f", payload[1:])[0])
        if opt == SetupOption.FREQUENCIES and n == 12:
            fmin, fmax, cnt, typ = struct.unpack(">ffHB", payload[1:])
            return SetFrequencies(fmin, fmax, cnt, bool(typ))
        if opt == SetupOption.AMPLITUDE and n == 9:
            return SetAmplitude(struct.unpack(">d", payload[1:])[0])
        if opt == SetupOption.EXCITATION_SEQUENCE and n == 3:
            return AddInjectionPair(payload[1], payload[2])
    elif ct == CT_GET_SETUP and n == 1:
        return GetSetup(payload[0])
    elif ct == CT_OUTPUT_CONFIG and n == 2:
        return SetOutputConfig(payload[0], bool(payload[1]))
    elif ct == CT_START_STOP and n == 1 and payload[0] in (0, 1):
        return StartMeasurement() if payload[0] else StopMeasurement()
    elif ct == CT_DEVICE_INFO and n == 0:
        return GetDeviceInfo()
    return RawCommand(ct, bytes(payload))


class _Framer:
    """Shared ``[CT][LEN][payload][CT]`` deframer with resynchronisation."""

    def __init__(self, valid_ct: frozenset[int], max_size: int = _MAX_BUFFER) -> None:
        self._buf = ReceiveBuffer(max_size)
        self._valid = valid_ct
        self._pending_garbage = 0
        self._reason = ""

    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def _length_ok(self, ct: int, ln: int) -> bool:
        return True

    def _garbage(self, n: int, reason: str) -> None:
        self._buf.skip(n)
        self._pending_garbage += n
        self._reason = reason

    def _flush_garbage(self) -> Garbage | None:
        if self._pending_garbage:
            g = Garbage(self._pending_garbage, self._reason)
            self._pending_garbage = 0
            return g
        return None

    def next_frame(self) -> tuple[int, bytes] | Garbage | NeedData:
        """Return ``(ct, payload)``, a :class:`Garbage` event, or NEED_DATA."""
        over = self._buf.take_overflow()
        if over:
            return Garbage(over, "receive buffer overflow")
        while True:
            n = len(self._buf)
            if n == 0:
                return self._flush_garbage() or NEED_DATA
            view = self._buf.view()
            ct = view[0]
            if ct not in self._valid:
                # skip to the next byte that could open a frame
                skip = 1
                while skip < n and view[skip] not in self._valid:
                    skip += 1
                del view
                self._garbage(skip, "bad start byte")
                continue
            if n < 2:
                del view
                return self._flush_garbage() or NEED_DATA
            ln = view[1]
            if not self._length_ok(ct, ln):
                del view
                self._garbage(1, "bad length")
                continue
            total = ln + 3
            if n < total:
                del view
                return self._flush_garbage() or NEED_DATA
            if view[total - 1] != ct:
                del view
                self._garbage(1, "bad end tag")
                continue
            del view
            g = self._flush_garbage()
            if g is not None:
                return g  # report loss before the frame that follows it
            raw = self._buf.consume(total)
            return ct, raw


class _HostFramer(_Framer):
    def _length_ok(self, ct: int, ln: int) -> bool:
        if ct == CT_ACK:
            return ln == 1
        if ct == CT_START_STOP:
            return ln == _DATA_LEN
        return True


class SciospecHostCodec:
    """Host role: device bytes → :data:`SciospecReply` events; commands → bytes."""

    def __init__(self, max_buffer: int = _MAX_BUFFER) -> None:
        self._framer = _HostFramer(
            frozenset((CT_ACK, CT_START_STOP, CT_GET_SETUP, CT_GET_OUTPUT_CONFIG, CT_DEVICE_INFO, CT_FIRMWARE_ID)),
            max_buffer,
        )

    def receive_data(self, data: bytes) -> None:
        self._framer.receive_data(data)

    def next_event(self) -> SciospecReply | Garbage | NeedData:
        got = self._framer.next_frame()
        if not isinstance(got, tuple):
            return got
        ct, raw = got
        payload = raw[2:-1]
        if ct == CT_ACK:
            return Ack(payload[0])
        if ct == CT_START_STOP:
            return decode_data_frame(raw)
        if ct in (CT_GET_SETUP, CT_GET_OUTPUT_CONFIG) and payload:
            return SetupReply(payload[0], payload[1:])
        return DeviceInfo(payload)

    def send(self, event: SciospecCommand) -> bytes:
        return _encode_command(event)


class SciospecDeviceCodec:
    """Device role: host bytes → :data:`SciospecCommand` events; replies/data → bytes."""

    def __init__(self, max_buffer: int = 4096) -> None:
        self._framer = _Framer(
            frozenset(
                (CT_SETUP, CT_GET_SETUP, CT_OUTPUT_CONFIG, CT_GET_OUTPUT_CONFIG, CT_START_STOP, CT_DEVICE_INFO, CT_FIRMWARE_ID, 0x90, 0xA1)
            ),
            max_buffer,
        )

    def receive_data(self, data: bytes) -> None:
        self._framer.receive_data(data)

    def next_event(self) -> SciospecCommand | Garbage | NeedData:
        got = self._framer.next_frame()
        if not isinstance(got, tuple):
            return got
        ct, raw = got
        return _decode_command(ct, raw[2:-1])

    def send(self, event: SciospecReply) -> bytes:
        if isinstance(event, Ack):
            return bytes((CT_ACK, 1, event.code & 0xFF, CT_ACK))
        if isinstance(event, DataFrame):
            return encode_data_frame(event)
        if isinstance(event, SetupReply):
            return _frame(CT_GET_SETUP, bytes((event.option,)) + event.data)
        if isinstance(event, DeviceInfo):
            return _frame(CT_DEVICE_INFO, event.payload)
        raise LocalProtocolError(f"not a Sciospec reply: {event!r}")
