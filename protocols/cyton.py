"""OpenBCI Cyton (+ Daisy) serial protocol, sans-I/O, both roles.

Wire facts (OpenBCI "Cyton Data Format" / "Cyton SDK" docs, OpenBCI_Cyton_Library firmware
v3.1.2 ``processChar``, BrainFlow ``src/board_controller/openbci/cyton*.cpp``):

* 115200 8N1. Device → host is a mix of ``$$$``-terminated ASCII replies (when idle) and
  33-byte binary packets (when streaming): ``0xA0``, counter (0–255), 8 × int24 big-endian
  channel counts, 6 aux bytes, stop byte ``0xC0``–``0xC6``.
* Stop byte ``0xC0``: aux = accelerometer X, Y, Z as int16 big-endian (all zero on the
  packets without a new LIS3DH reading: the firmware zeroes them after every ``0xC0``).
  ``0xC1`` raw aux, ``0xC2`` user defined. ``0xC3``–``0xC6`` time-stamped variants (after
  ``<``): bytes 26–27 (0-based in the packet) carry 2 bytes of aux, bytes 28–31 a uint32
  big-endian board time in ms. The first packet after ``<`` has ``0xC3`` ("time set",
  accelerometer on) / ``0xC5`` (raw aux); every later one ``0xC4`` / ``0xC6`` ("synced").
* In ``0xC3``/``0xC4`` packets bytes 26–27 carry ONE accelerometer axis chosen by the
  packet counter: ``counter % 10`` = 7 → X, 8 → Y, 9 → Z, else ``0x0000``
  (:func:`timestamp_accel_axis`, :attr:`CytonSample.accel_axis`).
* Host → device: single ASCII characters, plus the multi-character commands
  ``x CH PWR GAIN INPUT BIAS SRB2 SRB1 X``, ``z CH P N Z``, ``~n``, ``/n`` and a ``\\``` marker.

Roles:

* :class:`CytonHostCodec` parses device bytes into :class:`CytonSample` / :class:`CytonText`
  / :class:`~medacq.protocols._sansio.Garbage` and encodes command events into bytes.
* :class:`CytonDeviceCodec` parses host bytes into command events and encodes samples and
  text replies into bytes.

Counts → physical units: :func:`counts_to_uv` (4.5 V / gain / (2^23 − 1) per count) and
:func:`accel_to_g` (0.002 / 16 g per LSB). :class:`DaisyPairer` merges odd (main board)
and even (Daisy) counters into 16-channel samples at half the packet rate (pairs: even Daisy first, then odd main).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Union

import numpy as np

from ._sansio import NEED_DATA, READ_ROOM, Garbage, LocalProtocolError, NeedData, ReceiveBuffer

__all__ = [
    "START_BYTE",
    "PACKET_SIZE",
    "STOP_BYTES",
    "EOT",
    "GAIN_CODES",
    "SAMPLE_RATE_CODES",
    "DONGLE_SAMPLE_RATE_HZ",
    "DONGLE_SAMPLE_RATE_CODE",
    "parse_sample_rate_reply",
    "BOARD_MODES",
    "DAISY_CHANNEL_CHARS",
    "TIMESTAMP_STOP_BYTES",
    "TIMESTAMP_ACCEL_STOP_BYTES",
    "AccelAxis",
    "AccelAxisReading",
    "timestamp_accel_axis",
    "CytonSample",
    "CytonText",
    "SoftReset",
    "StartStreaming",
    "StopStreaming",
    "ChannelOff",
    "ChannelOn",
    "TestSignal",
    "ChannelSettings",
    "ChannelSettingsError",
    "LeadOffSettings",
    "LeadOffError",
    "SetDefaultChannels",
    "ReportDefaultChannels",
    "SetSampleRate",
    "QuerySampleRate",
    "SampleRateError",
    "SetBoardMode",
    "QueryBoardMode",
    "BoardModeError",
    "DaisyMode",
    "QueryRegisters",
    "QueryVersion",
    "TimeStamping",
    "InsertMarker",
    "UnknownCommand",
    "CytonCommand",
    "CytonHostCodec",
    "CytonDeviceCodec",
    "DaisySample",
    "LostSample",
    "DaisyPairer",
    "counts_to_uv",
    "accel_to_g",
    "uv_scale",
    "ACCEL_SCALE_G",
    "encode_packet",
    "decode_packets",
]

START_BYTE: Final = 0xA0
PACKET_SIZE: Final = 33
STOP_BYTES: Final = frozenset(range(0xC0, 0xC7))
EOT: Final = b"$$$"
#: GAIN digit of the ``x`` command → PGA gain.
GAIN_CODES: Final = {0: 1, 1: 2, 2: 4, 3: 6, 4: 8, 5: 12, 6: 24}
#: ``~n`` digit → ADS1299 sample rate in Hz.
SAMPLE_RATE_CODES: Final = {0: 16000, 1: 8000, 2: 4000, 3: 2000, 4: 1000, 5: 500, 6: 250}
#: The only rate that streams over the USB dongle. Firmware v3 (OpenBCI/OpenBCI_Cyton_Library,
#: OpenBCI_32bit_Library.cpp, ``processChar`` case ``OPENBCI_STREAM_START``): a ``b`` that
#: does not come from the WiFi shield sets the ADS1299 back to 250 SPS (``~6``, which also
#: re-initialises the ADS: channel settings return to defaults) before streaming, "to not
#: break the RFduino system that can't handle above 250SPS". With a Daisy, pairs of packets
#: make one 16-channel sample: 125 Hz.
DONGLE_SAMPLE_RATE_HZ: Final = 250
DONGLE_SAMPLE_RATE_CODE: Final = 6
#: ``/n`` digit → board mode name.
BOARD_MODES: Final = {0: "default", 1: "debug", 2: "analog", 3: "digital", 4: "marker"}
#: Channel characters of the ``x``/``z`` commands for channels 9–16 (Daisy).
DAISY_CHANNEL_CHARS: Final = "QWERTYUI"
_OFF_CHARS: Final = "12345678qwertyui"
_ON_CHARS: Final = "!@#$%^&*QWERTYUI"
_TEST_CHARS: Final = "0-=p[]"
ACCEL_SCALE_G: Final = 0.002 / 16.0
_TEXT_MAX: Final = 8192
#: Stop bytes of time-stamped packets (uint32 board ms in bytes 28–31).
TIMESTAMP_STOP_BYTES: Final = frozenset(range(0xC3, 0xC7))
#: Time-stamped packets whose bytes 26–27 carry one accelerometer axis: ``0xC3`` = first
#: packet after ``<`` ("time set"), ``0xC4`` = every later one ("time synced").
TIMESTAMP_ACCEL_STOP_BYTES: Final = frozenset({0xC3, 0xC4})


class AccelAxis(IntEnum):
    """LIS3DH axis; the value is the index into an ``(x, y, z)`` triple."""

    X = 0
    Y = 1
    Z = 2


# Firmware v3 (OpenBCI/OpenBCI_Cyton_Library, OpenBCI_32bit_Library.cpp,
# ``sendTimeWithAccelSerial``; axis constants ``ACCEL_AXIS_X/Y/Z`` = 7/8/9 in
# OpenBCI_32bit_Library_Definitions.h): in a 0xC3/0xC4 packet the 2 aux bytes are axis
# ``sampleCounter % 10`` (7 → X, 8 → Y, 9 → Z) of the last LIS3DH reading, 0x0000 for every
# other counter. ``sampleCounter`` is the 8-bit packet counter, so the rule applies to the
# wrapped 0–255 value.
_TS_AXIS_BY_COUNTER_MOD10: Final = {7: AccelAxis.X, 8: AccelAxis.Y, 9: AccelAxis.Z}


def timestamp_accel_axis(counter: int) -> AccelAxis | None:
    """The accelerometer axis a ``0xC3``/``0xC4`` packet with this counter carries, or ``None``."""
    return _TS_AXIS_BY_COUNTER_MOD10.get(counter % 10)


@dataclass(frozen=True, slots=True)
class AccelAxisReading:
    """One accelerometer axis: raw int16 counts (× :data:`ACCEL_SCALE_G` → g)."""

    axis: AccelAxis
    counts: int


# --------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class CytonSample:
    """One 33-byte packet.

    Attributes:
        counter: packet counter 0–255 (wraps).
        channels: 8 raw signed int24 ADC counts (channel 1..8 of the board that sent it).
        stop_byte: ``0xC0``–``0xC6``.
        aux: the 6 raw aux bytes.
        accel: accelerometer X, Y, Z raw int16 counts (stop byte ``0xC0``), else ``None``.
        timestamp_ms: board time in ms (stop bytes ``0xC3``–``0xC6``), else ``None``.
        accel_axis: the one accelerometer axis a time-stamped packet carries (stop byte
            ``0xC3``/``0xC4`` and ``counter % 10`` in 7, 8, 9), else ``None``.
    """

    counter: int
    channels: tuple[int, ...]
    stop_byte: int = 0xC0
    aux: bytes = b"\x00" * 6
    accel: tuple[int, int, int] | None = None
    timestamp_ms: int | None = None
    accel_axis: AccelAxisReading | None = None

    @property
    def accel_readings(self) -> tuple[AccelAxisReading, ...]:
        """The new accelerometer information in this packet, whatever its type: X, Y, Z of a
        ``0xC0`` packet that carries a reading (an all-zero triple means "no new reading":
        the firmware zeroes the axes after every ``0xC0`` packet), the one axis of a
        ``0xC3``/``0xC4`` packet, else ``()``."""
        if self.accel_axis is not None:
            return (self.accel_axis,)
        a = self.accel
        if a is not None and (a[0] or a[1] or a[2]):
            return (AccelAxisReading(AccelAxis.X, a[0]), AccelAxisReading(AccelAxis.Y, a[1]),
                    AccelAxisReading(AccelAxis.Z, a[2]))
        return ()


@dataclass(frozen=True, slots=True)
class CytonText:
    """A text reply; ``text`` excludes the ``$$$`` terminator."""

    text: str


@dataclass(frozen=True, slots=True)
class SoftReset:
    """``v``: soft reset; the board prints its banner."""


@dataclass(frozen=True, slots=True)
class StartStreaming:
    """``b``."""


@dataclass(frozen=True, slots=True)
class StopStreaming:
    """``s``."""


@dataclass(frozen=True, slots=True)
class ChannelOff:
    """``1``–``8`` (channels 1–8), ``q w e r t y u i`` (channels 9–16)."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelOn:
    """``! @ # $ % ^ & *`` (channels 1–8), ``Q W E R T Y U I`` (channels 9–16)."""

    channel: int


@dataclass(frozen=True, slots=True)
class TestSignal:
    """``0 - = p [ ]``: connect all channels to ground / a test signal."""

    code: str


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """``x CH PWR GAIN INPUT BIAS SRB2 SRB1 X`` (channel 1–16; gain_code 0–6 → 1…24)."""

    channel: int
    power_down: int = 0
    gain_code: int = 6
    input_type: int = 0
    bias: int = 1
    srb2: int = 1
    srb1: int = 0

    @property
    def gain(self) -> int:
        return GAIN_CODES[self.gain_code]


@dataclass(frozen=True, slots=True)
class ChannelSettingsError:
    """A malformed ``x...X``; ``reason`` is the firmware's failure text (after ``Failure: ``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LeadOffSettings:
    """``z CH P N Z``: lead-off (impedance) current on the P / N input of a channel."""

    channel: int
    pchan: int
    nchan: int


@dataclass(frozen=True, slots=True)
class LeadOffError:
    reason: str


@dataclass(frozen=True, slots=True)
class SetDefaultChannels:
    """``d``."""


@dataclass(frozen=True, slots=True)
class ReportDefaultChannels:
    """``D``."""


@dataclass(frozen=True, slots=True)
class SetSampleRate:
    """``~n`` with n in 0–6 (see :data:`SAMPLE_RATE_CODES`)."""

    code: int

    @property
    def rate_hz(self) -> int:
        return SAMPLE_RATE_CODES[self.code]


@dataclass(frozen=True, slots=True)
class QuerySampleRate:
    """``~~``."""


@dataclass(frozen=True, slots=True)
class SampleRateError:
    reason: str


@dataclass(frozen=True, slots=True)
class SetBoardMode:
    """``/n`` with n in 0–4 (see :data:`BOARD_MODES`)."""

    code: int


@dataclass(frozen=True, slots=True)
class QueryBoardMode:
    """``//``."""


@dataclass(frozen=True, slots=True)
class BoardModeError:
    reason: str


@dataclass(frozen=True, slots=True)
class DaisyMode:
    """``C`` (enabled, 16 channels) / ``c`` (disabled, 8 channels)."""

    enabled: bool


@dataclass(frozen=True, slots=True)
class QueryRegisters:
    """``?``."""


@dataclass(frozen=True, slots=True)
class QueryVersion:
    """``V``."""


@dataclass(frozen=True, slots=True)
class TimeStamping:
    """``<`` (on) / ``>`` (off): switch to time-stamped packets."""

    enabled: bool


@dataclass(frozen=True, slots=True)
class InsertMarker:
    """```` `c ````: insert marker character ``c`` into the aux stream."""

    marker: str


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A byte the firmware ignores."""

    byte: int


CytonCommand = Union[
    SoftReset, StartStreaming, StopStreaming, ChannelOff, ChannelOn, TestSignal,
    ChannelSettings, ChannelSettingsError, LeadOffSettings, LeadOffError,
    SetDefaultChannels, ReportDefaultChannels, SetSampleRate, QuerySampleRate,
    SampleRateError, SetBoardMode, QueryBoardMode, BoardModeError, DaisyMode,
    QueryRegisters, QueryVersion, TimeStamping, InsertMarker, UnknownCommand,
]

_SIMPLE: Final[dict[type, bytes]] = {
    SoftReset: b"v",
    StartStreaming: b"b",
    StopStreaming: b"s",
    SetDefaultChannels: b"d",
    ReportDefaultChannels: b"D",
    QuerySampleRate: b"~~",
    QueryBoardMode: b"//",
    QueryRegisters: b"?",
    QueryVersion: b"V",
}


def parse_sample_rate_reply(text: str) -> int | None:
    """The rate in Hz of a ``~n`` / ``~~`` reply (``Success: Sample rate is 250Hz``), else ``None``."""
    head = "Success: Sample rate is "
    t = text.strip()
    if not (t.startswith(head) and t.endswith("Hz")):
        return None
    num = t[len(head):-2]
    return int(num) if num.isascii() and num.isdigit() else None


# ------------------------------------------------------------------------- scaling
def uv_scale(gain: int | np.ndarray = 24) -> float | np.ndarray:
    """µV per count at PGA ``gain``: 4.5 V / gain / (2^23 − 1) × 1e6."""
    if isinstance(gain, np.ndarray):
        return 4.5 / gain.astype(float) / (2**23 - 1) * 1e6
    return 4.5 / gain / (2**23 - 1) * 1e6


def counts_to_uv(counts: np.ndarray | int, gain: int | np.ndarray = 24) -> np.ndarray:
    """Convert raw int24 counts to µV. ``gain`` may be per channel (broadcast on axis 0
    of a ``(channels, samples)`` array when given as a 1-D array)."""
    c = np.asarray(counts, dtype=float)
    g = np.asarray(gain, dtype=float)
    if g.ndim == 1 and c.ndim == 2:
        g = g[:, None]
    return c * (4.5 / g / (2**23 - 1) * 1e6)


def accel_to_g(counts: np.ndarray | int) -> np.ndarray:
    """Accelerometer raw int16 counts → g (0.002 / 16 g per LSB)."""
    return np.asarray(counts, dtype=float) * ACCEL_SCALE_G


# ------------------------------------------------------------------------ packets
def _int24(b: bytes | bytearray | memoryview, i: int) -> int:
    v = (b[i] << 16) | (b[i + 1] << 8) | b[i + 2]
    return v - 0x1000000 if v & 0x800000 else v


def _parse_packet(p: bytes) -> CytonSample:
    chans = tuple(_int24(p, 2 + 3 * k) for k in range(8))
    stop = p[32]
    aux = bytes(p[26:32])
    accel = None
    ts = None
    axis_reading = None
    if stop == 0xC0:
        accel = (
            int.from_bytes(aux[0:2], "big", signed=True),
            int.from_bytes(aux[2:4], "big", signed=True),
            int.from_bytes(aux[4:6], "big", signed=True),
        )
    elif stop >= 0xC3:
        ts = int.from_bytes(aux[2:6], "big", signed=False)
        if stop <= 0xC4:
            axis = _TS_AXIS_BY_COUNTER_MOD10.get(p[1] % 10)
            if axis is not None:
                axis_reading = AccelAxisReading(axis, int.from_bytes(aux[0:2], "big", signed=True))
    return CytonSample(p[1], chans, stop, aux, accel, ts, axis_reading)


def encode_packet(sample: CytonSample) -> bytes:
    """33 bytes for one sample. ``accel`` / ``timestamp_ms`` / ``accel_axis``, when given,
    overwrite the aux bytes they live in (accel → all 6 for ``0xC0``; timestamp → bytes
    28–31 for ``0xC3``+; accel_axis → bytes 26–27 for ``0xC3``/``0xC4``, and only on the
    counter that carries that axis: :func:`timestamp_accel_axis`)."""
    if not 0 <= sample.counter <= 255:
        raise LocalProtocolError(f"counter {sample.counter} not in 0..255")
    if sample.stop_byte not in STOP_BYTES:
        raise LocalProtocolError(f"stop byte {sample.stop_byte:#x} not in 0xC0..0xC6")
    if len(sample.channels) != 8:
        raise LocalProtocolError("a Cyton packet carries exactly 8 channels")
    out = bytearray(PACKET_SIZE)
    out[0] = START_BYTE
    out[1] = sample.counter
    for k, v in enumerate(sample.channels):
        if not -0x800000 <= v <= 0x7FFFFF:
            raise LocalProtocolError(f"channel {k + 1} value {v} exceeds int24")
        out[2 + 3 * k : 5 + 3 * k] = (v & 0xFFFFFF).to_bytes(3, "big")
    aux = bytearray(sample.aux.ljust(6, b"\x00")[:6])
    ar = sample.accel_axis
    if ar is not None:
        if sample.stop_byte not in TIMESTAMP_ACCEL_STOP_BYTES:
            raise LocalProtocolError(f"a single accelerometer axis rides only in 0xC3/0xC4 packets, "
                                     f"not {sample.stop_byte:#x}")
        want = _TS_AXIS_BY_COUNTER_MOD10.get(sample.counter % 10)
        if ar.axis != want:
            raise LocalProtocolError(
                f"counter {sample.counter} carries accelerometer axis "
                f"{want.name if want is not None else 'none'}, not {AccelAxis(ar.axis).name}")
        if not -0x8000 <= ar.counts <= 0x7FFF:
            raise LocalProtocolError(f"accelerometer value {ar.counts} exceeds int16")
        aux[0:2] = int(ar.counts).to_bytes(2, "big", signed=True)
    if sample.stop_byte == 0xC0 and sample.accel is not None:
        for k, a in enumerate(sample.accel):
            aux[2 * k : 2 * k + 2] = int(a).to_bytes(2, "big", signed=True)
    if sample.stop_byte >= 0xC3 and sample.timestamp_ms is not None:
        aux[2:6] = (int(sample.timestamp_ms) & 0xFFFFFFFF).to_bytes(4, "big")
    out[26:32] = aux
    out[32] = sample.stop_byte
    return bytes(out)


def decode_packets(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised decode of a run of back-to-back, aligned packets (no garbage).

    Returns ``(counters (n,), counts (8, n) int32, stop_bytes (n,))``. Raises
    ``ValueError`` if the run is misaligned. For the fast path of a driver that has
    already checked alignment; the event codec is the general parser.
    """
    a = np.frombuffer(data, dtype=np.uint8)
    n = a.size // PACKET_SIZE
    a = a[: n * PACKET_SIZE].reshape(n, PACKET_SIZE)
    if n and (np.any(a[:, 0] != START_BYTE) or np.any((a[:, 32] & 0xF8) != 0xC0) or np.any(a[:, 32] > 0xC6)):
        raise ValueError("misaligned Cyton packet run")
    raw = a[:, 2:26].reshape(n, 8, 3).astype(np.int32)
    v = (raw[:, :, 0] << 16) | (raw[:, :, 1] << 8) | raw[:, :, 2]
    v = np.where(v & 0x800000, v - 0x1000000, v)
    return a[:, 1].copy(), v.T.copy(), a[:, 32].copy()


# ---------------------------------------------------------------------- host role
def _is_text_byte(b: int) -> bool:
    return b in (9, 10, 13) or 0x20 <= b <= 0x7E


class CytonHostCodec:
    """Host role: device bytes → :class:`CytonSample` / :class:`CytonText` / ``Garbage``;
    command events → bytes.

    Resynchronisation: bytes that are neither a valid packet nor part of a ``$$$``-
    terminated ASCII reply are dropped and reported as ``Garbage(nbytes, reason)``.
    After a loss of sync a candidate packet is only accepted when the next byte (if any
    has arrived) is another start byte, so a stray ``0xA0`` rarely fakes a packet.
    """

    def __init__(self, max_buffer: int = (1 << 16) + READ_ROOM) -> None:
        self._buf = ReceiveBuffer(max_buffer)
        self._in_sync = True
        self.samples_decoded = 0
        self.garbage_bytes = 0

    # -- receive
    def receive_data(self, data: bytes) -> None:
        self._buf.append(data)

    def _garbage(self, n: int, reason: str) -> Garbage:
        self._buf.skip(n)
        self._in_sync = False
        self.garbage_bytes += n
        return Garbage(n, reason)

    def next_event(self) -> CytonSample | CytonText | Garbage | NeedData:
        lost = self._buf.take_overflow()
        if lost:
            self.garbage_bytes += lost
            self._in_sync = False
            return Garbage(lost, "receive buffer overflow")
        buf = self._buf
        n = len(buf)
        if n == 0:
            return NEED_DATA
        view = buf.view()
        b0 = view[0]
        if b0 == START_BYTE:
            if n < PACKET_SIZE:
                return NEED_DATA
            if view[32] in STOP_BYTES:
                if not self._in_sync and n > PACKET_SIZE and view[33] != START_BYTE:
                    # candidate not confirmed by the next packet's start byte
                    nxt = buf.find(START_BYTE, 1)
                    return self._garbage(nxt if nxt > 0 else n, "bad stop byte")
                pkt = buf.consume(PACKET_SIZE)
                self._in_sync = True
                self.samples_decoded += 1
                return _parse_packet(pkt)
            nxt = buf.find(START_BYTE, 1)
            return self._garbage(nxt if nxt > 0 else n, "bad stop byte")
        if _is_text_byte(b0):
            return self._text(view, n)
        # a byte that starts neither a packet nor text
        i = 1
        while i < n and view[i] != START_BYTE and not _is_text_byte(view[i]):
            i += 1
        return self._garbage(i, "bad start byte")

    def _text(self, view: memoryview, n: int) -> CytonText | Garbage | NeedData:
        # scan for "$$$"; stop at the first byte that cannot be text
        end = self._buf.find(EOT)
        limit = end if end >= 0 else n
        for i in range(limit):
            if not _is_text_byte(view[i]):
                return self._garbage(i, "unterminated text")
        if end >= 0:
            text = self._buf.consume(end + 3)[:-3].decode("ascii")
            self._in_sync = True
            return CytonText(text)
        if n > _TEXT_MAX:
            return self._garbage(n, "text reply too long")
        return NEED_DATA

    # -- send
    def send(self, event: CytonCommand) -> bytes:
        """Encode a host command (validated; raises ``LocalProtocolError``)."""
        return encode_command(event)


def _channel_char(ch: int) -> str:
    if 1 <= ch <= 8:
        return str(ch)
    if 9 <= ch <= 16:
        return DAISY_CHANNEL_CHARS[ch - 9]
    raise LocalProtocolError(f"channel {ch} not in 1..16")


def encode_command(event: CytonCommand) -> bytes:
    """Host command event → bytes."""
    simple = _SIMPLE.get(type(event))
    if simple is not None:
        return simple
    if isinstance(event, ChannelOff):
        _channel_char(event.channel)
        return _OFF_CHARS[event.channel - 1].encode()
    if isinstance(event, ChannelOn):
        _channel_char(event.channel)
        return _ON_CHARS[event.channel - 1].encode()
    if isinstance(event, TestSignal):
        if event.code not in _TEST_CHARS or len(event.code) != 1:
            raise LocalProtocolError(f"test signal {event.code!r} not one of {_TEST_CHARS!r}")
        return event.code.encode()
    if isinstance(event, ChannelSettings):
        err = _validate_settings(event)
        if err:
            raise LocalProtocolError(err)
        return (
            f"x{_channel_char(event.channel)}{event.power_down}{event.gain_code}"
            f"{event.input_type}{event.bias}{event.srb2}{event.srb1}X"
        ).encode()
    if isinstance(event, LeadOffSettings):
        if event.pchan not in (0, 1) or event.nchan not in (0, 1):
            raise LocalProtocolError("lead-off P/N must be 0 or 1")
        return f"z{_channel_char(event.channel)}{event.pchan}{event.nchan}Z".encode()
    if isinstance(event, SetSampleRate):
        if event.code not in SAMPLE_RATE_CODES:
            raise LocalProtocolError(f"sample rate code {event.code} not in 0..6")
        return f"~{event.code}".encode()
    if isinstance(event, SetBoardMode):
        if event.code not in BOARD_MODES:
            raise LocalProtocolError(f"board mode {event.code} not in 0..4")
        return f"/{event.code}".encode()
    if isinstance(event, DaisyMode):
        return b"C" if event.enabled else b"c"
    if isinstance(event, TimeStamping):
        return b"<" if event.enabled else b">"
    if isinstance(event, InsertMarker):
        if len(event.marker) != 1 or not event.marker.isascii():
            raise LocalProtocolError("marker must be one ASCII character")
        return b"`" + event.marker.encode()
    raise LocalProtocolError(f"cannot encode {event!r} as a host command")


def _validate_settings(s: ChannelSettings) -> str:
    if not 1 <= s.channel <= 16:
        return f"channel {s.channel} not in 1..16"
    if s.power_down not in (0, 1):
        return "power_down must be 0 or 1"
    if s.gain_code not in GAIN_CODES:
        return "gain code must be 0..6"
    if not 0 <= s.input_type <= 7:
        return "input type must be 0..7"
    for name in ("bias", "srb2", "srb1"):
        if getattr(s, name) not in (0, 1):
            return f"{name} must be 0 or 1"
    return ""


# -------------------------------------------------------------------- device role
_X_LEN: Final = 9
_Z_LEN: Final = 5


class CytonDeviceCodec:
    """Device role: host bytes → command events; samples / text → bytes.

    Multi-character commands are parsed as the firmware does (``processChar``): after
    ``x`` the next 8 characters are the settings and the latch ``X``; an early ``X`` gives
    ``ChannelSettingsError("too few chars")``, a wrong 9th character
    ``ChannelSettingsError("Err: 9th char not X")``; out-of-range digits are rejected with
    ``ChannelSettingsError("invalid channel setting")`` (stricter than the firmware, which
    writes whatever it gets to the ADS1299).
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._multi: str | None = None
        self._multi_buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) > 1 << 16:  # a host flooding us: keep the newest bytes
            del self._pending[: len(self._pending) - (1 << 16)]

    def next_event(self) -> CytonCommand | NeedData:
        while self._pending:
            c = self._pending[0]
            del self._pending[0]
            ev = self._feed(chr(c))
            if ev is not None:
                return ev
        return NEED_DATA

    def _feed(self, ch: str) -> CytonCommand | None:
        m = self._multi
        if m is not None:
            self._multi_buf += ch.encode("latin-1")
            mb = self._multi_buf
            if m == "x":
                if ch == "X" and len(mb) < _X_LEN - 1:
                    self._multi = None
                    return ChannelSettingsError("too few chars")
                if len(mb) < _X_LEN - 1:
                    return None
                self._multi = None
                if ch != "X":
                    return ChannelSettingsError("Err: 9th char not X")
                return _parse_settings(mb.decode("latin-1"))
            if m == "z":
                if ch == "Z" and len(mb) < _Z_LEN - 1:
                    self._multi = None
                    return LeadOffError("too few chars")
                if len(mb) < _Z_LEN - 1:
                    return None
                self._multi = None
                if ch != "Z":
                    return LeadOffError("Err: 5th char not Z")
                s = mb.decode("latin-1")
                chn = _parse_channel_char(s[0])
                if chn is None or s[1] not in "01" or s[2] not in "01":
                    return LeadOffError("invalid lead off setting")
                return LeadOffSettings(chn, int(s[1]), int(s[2]))
            self._multi = None
            if m == "~":
                if ch == "~":
                    return QuerySampleRate()
                if "0" <= ch <= "9":
                    d = int(ch)
                    return SetSampleRate(d) if d in SAMPLE_RATE_CODES else SampleRateError(
                        "sample value out of bounds"
                    )
                return SampleRateError("invalid sample value")
            if m == "/":
                if ch == "/":
                    return QueryBoardMode()
                if "0" <= ch <= "9":
                    d = int(ch)
                    return SetBoardMode(d) if d in BOARD_MODES else BoardModeError(
                        "board mode value out of bounds."
                    )
                return BoardModeError("invalid board mode value.")
            if m == "`":
                return InsertMarker(ch)
            return None  # pragma: no cover
        if ch in ("x", "z", "~", "/", "`"):
            self._multi = ch
            self._multi_buf = bytearray()
            return None
        i = _OFF_CHARS.find(ch)
        if i >= 0:
            return ChannelOff(i + 1)
        i = _ON_CHARS.find(ch)
        if i >= 0:
            return ChannelOn(i + 1)
        if ch in _TEST_CHARS:
            return TestSignal(ch)
        simple_commands: dict[str, CytonCommand] = {
            "v": SoftReset(), "b": StartStreaming(), "s": StopStreaming(),
            "d": SetDefaultChannels(), "D": ReportDefaultChannels(), "?": QueryRegisters(),
            "V": QueryVersion(), "c": DaisyMode(False), "C": DaisyMode(True),
            "<": TimeStamping(True), ">": TimeStamping(False),
        }
        simple = simple_commands.get(ch)
        if simple is not None:
            return simple
        return UnknownCommand(ord(ch))

    def send(self, event: CytonSample | CytonText) -> bytes:
        """Encode a packet, or a text reply (``$$$`` appended)."""
        if isinstance(event, CytonSample):
            return encode_packet(event)
        if isinstance(event, CytonText):
            return event.text.encode("ascii") + EOT
        raise LocalProtocolError(f"device cannot send {event!r}")


def _parse_channel_char(c: str) -> int | None:
    if c in "12345678":
        return int(c)
    i = DAISY_CHANNEL_CHARS.find(c)
    return 9 + i if i >= 0 else None


def _parse_settings(s: str) -> ChannelSettings | ChannelSettingsError:
    # s = CH PWR GAIN INPUT BIAS SRB2 SRB1 X
    ch = _parse_channel_char(s[0])
    digits = s[1:7]
    if ch is None or not (digits.isascii() and digits.isdigit()):
        return ChannelSettingsError("invalid channel setting")
    ev = ChannelSettings(ch, *(int(d) for d in digits))
    return ChannelSettingsError("invalid channel setting") if _validate_settings(ev) else ev


# -------------------------------------------------------------------------- daisy
@dataclass(frozen=True, slots=True)
class DaisySample:
    """16 channels at half the packet rate: Daisy (even counter, sent first) + main board
    (the next, odd counter).

    ``counter`` is the Daisy packet's (even) counter; ``channels`` are raw counts 1..16
    (main board 1–8 then Daisy 9–16); ``accel`` is whichever packet carried a non-zero
    reading (else the main packet's); stop byte and timestamp are the main packet's;
    ``accel_readings`` are both halves' :attr:`CytonSample.accel_readings` (Daisy half
    first), so a time-stamped pair can carry two axes (counters 8 and 9: Y then Z)."""

    counter: int
    channels: tuple[int, ...]
    stop_byte: int
    accel: tuple[int, int, int] | None
    timestamp_ms: int | None
    accel_readings: tuple[AccelAxisReading, ...] = ()


@dataclass(frozen=True, slots=True)
class LostSample:
    """A 16-channel sample could not be formed: its partner packet is missing.

    ``counter`` is the (even) Daisy counter the sample would have had."""

    counter: int


class DaisyPairer:
    """Merge Cyton+Daisy packets: even counter = Daisy channels 9–16 (first), the next odd
    counter = main board channels 1–8 (OpenBCI GUI and BrainFlow 5.x ``CYTON_DAISY_BOARD``:
    pairs (0, 1), (2, 3) … (254, 255)).

    ``push(sample)`` returns the completed :class:`DaisySample` objects and a
    :class:`LostSample` for every pair that lost either half (counter gaps included).
    """

    def __init__(self) -> None:
        self._first: CytonSample | None = None  # the Daisy half waiting for its main half
        self._last: int | None = None  # last counter seen

    def push(self, s: CytonSample) -> list[DaisySample | LostSample]:
        out: list[DaisySample | LostSample] = []
        c = s.counter
        lost_first: int | None = None
        if self._last is not None:
            p = (self._last + 1) % 256
            while p != c:  # counters that never arrived
                if p % 2 == 0:
                    out.append(LostSample(p))
                    lost_first = p
                elif self._first is not None and (self._first.counter + 1) % 256 == p:
                    out.append(LostSample(self._first.counter))
                    self._first = None
                p = (p + 1) % 256
        started = self._last is not None
        self._last = c
        if c % 2 == 0:
            if self._first is not None:  # repeated / out-of-order Daisy packet
                out.append(LostSample(self._first.counter))
            self._first = s
            return out
        d, self._first = self._first, None
        if d is not None and (d.counter + 1) % 256 == c:
            accel = s.accel if s.accel is not None and any(s.accel) else (d.accel if d.accel is not None and any(d.accel) else s.accel)
            out.append(DaisySample(d.counter, s.channels + d.channels, s.stop_byte, accel,
                                   s.timestamp_ms if s.timestamp_ms is not None else d.timestamp_ms,
                                   d.accel_readings + s.accel_readings))
            return out
        if d is not None:
            out.append(LostSample(d.counter))
        pc = (c - 1) % 256
        if started and lost_first != pc:
            out.append(LostSample(pc))
        return out
