"""Driver for the OpenBCI Cyton (8 channels, 250 Hz) and Cyton + Daisy (16 channels,
125 Hz) EEG boards over the USB dongle's serial port (115200 8N1), a pty or ``socket://``.

Open: ``s`` (stop a stream left running), ``v`` (soft reset; the banner tells whether a
Daisy is fitted), on firmware v3 ``~~`` and, if an earlier session left the ADS at another
rate, ``~6`` (250 SPS: the firmware would force it at ``b`` anyway and wipe the channel
settings doing so), ``c``/``C`` to match ``settings.daisy``, ``d`` (defaults), then one
``x CH PWR GAIN INPUT BIAS SRB2 SRB1 X`` per channel; a ``Failure`` reply is a
:class:`~medacq.drivers._base.DeviceError`. ``b``/``s`` start and stop the stream.

Rate: over the dongle the firmware streams at 250 Hz only (125 Hz per 16-channel sample
with a Daisy); ``settings.sample_rate_hz`` accepts that rate and refuses any other.

Frames: ``(channel, sample)`` float32 µV (counts × 4.5 V / gain / (2^23 − 1)),
``frame_samples`` samples each. The accelerometer (g, X/Y/Z) is *frame metadata*
(``meta.accel_g``: the latest value of each axis when the frame was cut) so the data array
stays pure EEG. Standard packets (``0xC0``) bring all three axes every 10th packet;
time-stamped packets (``0xC3``/``0xC4``, after ``<``) one axis each, on counters ending in
7, 8, 9 (X, Y, Z). Packet-counter jumps are reported as gaps with ``lost_samples``; with a
Daisy, a sample whose main or Daisy half is missing is lost.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medacq.protocols import cyton as cy
from medacq.protocols.markers import FRAME_TRIGGERS_KEY
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from ._clockfit import CounterUnwrapper
from .analog_trigger import AnalogTrigger
from .bio_common import SampleFramer, default_frame_samples
from .transports import SerialTransport
from .triggers import sample_trigger

__all__ = ["CytonDriver", "CytonSettings", "CYTON_LABELS_16", "dongle_rate_hz"]

#: Default 10–20 labels of the 16 channels (OpenBCI's suggested montage).
CYTON_LABELS_16 = ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2",
                   "F7", "F8", "F3", "F4", "T7", "T8", "P3", "P4"]
_GAIN_TO_CODE = {g: c for c, g in cy.GAIN_CODES.items()}


class CytonSettings(BaseModel):
    """Cyton settings.

    Attributes:
        daisy: expect a Daisy module (16 channels, 125 Hz); ``False`` uses 8 channels
            at 250 Hz (and detaches a fitted Daisy).
        gain: PGA gain of every channel (1, 2, 4, 6, 8, 12, 24).
        gains: per-channel gains (overrides ``gain``), one per channel.
        channels_off: 1-based channels to power down (their data read 0 µV).
        input_type: ADS1299 input mux code for all channels (0 normal, 1 shorted, ... 7).
        bias, srb2, srb1: include in bias / connect SRB2 / SRB1 (0 or 1).
        sample_rate_hz: the rate to stream at, in samples per second per channel. Over the
            USB dongle the firmware delivers exactly one: 250 Hz (8 channels) or 125 Hz (with
            a Daisy); ``None`` (default) means that rate, any other value is refused.
        frame_samples: samples per frame (default ≈ 25 frames/s: 10 at 250 Hz, 5 at 125 Hz).
        labels: channel names (default 10–20 montage).
        mains_hz: local mains frequency (descriptor hint for the notch filter).
        timeout_s: reply timeout of configuration commands.
        trigger_line: a digital input with a TTL trigger cabled to it (``D11``, ``D12``, ``D13``,
            ``D17``, ``D18``): the board is put in digital-read mode (``/3``: the accelerometer is
            off, the aux bytes carry the pins every sample) and each rising edge becomes a trigger
            event in frame ``meta["triggers"]`` (published on ``markers/<device>``). 8 channels
            only: a Daisy pair's aux bytes are not decoded.
        trigger_channel: the EEG channel (1-8) a TTL trigger is wired to through a divider: each
            rising edge becomes a trigger event (line ``ch<N>``) placed to a fraction of a sample by a
            fit of the ADS1299's sinc^3 step response (:mod:`medacq.drivers.analog_trigger`); the
            channel's data stays in the frames; that channel is set differential (SRB2 off) and out
            of the bias drive. 8 channels only; not with ``trigger_line``.
        trigger_step_uv: the smallest step on ``trigger_channel`` that counts as an edge (µV, at the
            input): above the channel's own signal, below the divided TTL level.
    """

    model_config = ConfigDict(extra="forbid")

    daisy: bool = True
    gain: int = 24
    gains: list[int] | None = None
    channels_off: list[int] = Field(default_factory=list)
    input_type: int = Field(default=0, ge=0, le=7)
    bias: int = Field(default=1, ge=0, le=1)
    srb2: int = Field(default=1, ge=0, le=1)
    srb1: int = Field(default=0, ge=0, le=1)
    sample_rate_hz: float | None = Field(default=None, gt=0)
    frame_samples: int | None = Field(default=None, ge=1, le=1000)
    labels: list[str] | None = None
    mains_hz: float = Field(default=50.0, ge=0)
    timeout_s: float = Field(default=3.0, gt=0)
    trigger_line: Literal["D11", "D12", "D13", "D17", "D18"] | None = None
    trigger_channel: int | None = Field(default=None, ge=1, le=8)
    trigger_step_uv: float = Field(default=10_000.0, gt=0)

    @field_validator("gain")
    @classmethod
    def _gain(cls, v: int) -> int:
        if v not in _GAIN_TO_CODE:
            raise ValueError(f"gain {v} not one of {sorted(_GAIN_TO_CODE)}")
        return v

    @field_validator("gains")
    @classmethod
    def _gains(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            bad = [g for g in v if g not in _GAIN_TO_CODE]
            if bad:
                raise ValueError(f"gains {bad} not in {sorted(_GAIN_TO_CODE)}")
            if len(v) not in (8, 16):
                raise ValueError("gains needs 8 or 16 entries")
        return v

    @field_validator("channels_off")
    @classmethod
    def _off(cls, v: list[int]) -> list[int]:
        if any(not 1 <= c <= 16 for c in v):
            raise ValueError("channels_off entries must be 1..16")
        return v

    @model_validator(mode="after")
    def _trigger(self) -> "CytonSettings":
        if self.trigger_line is not None and self.daisy:
            raise ValueError("trigger_line needs daisy = false: the digital inputs ride in each packet's aux bytes, "
                             "which this driver does not decode for a Daisy pair")
        if self.trigger_channel is not None and (self.daisy or self.trigger_line is not None):
            raise ValueError("trigger_channel needs daisy = false and no trigger_line (one trigger source per "
                             "device: its markers/<device> stream carries one line of the bus)")
        return self

    @model_validator(mode="after")
    def _rate(self) -> "CytonSettings":
        v = self.sample_rate_hz
        rate = dongle_rate_hz(self.daisy)
        if v is not None and v != rate:
            daisy = (" with a Daisy each 16-channel sample takes two 250 Hz packets, so the rate is "
                     "125 Hz;" if self.daisy else "")
            raise ValueError(
                f"sample_rate_hz={v:g} cannot be delivered over the Cyton's USB dongle: the firmware "
                f"(v3 processChar 'b') sets the ADS1299 back to 250 SPS whenever streaming starts "
                f"without the WiFi shield, because the RFduino radio cannot carry more;{daisy} "
                f"use sample_rate_hz={rate} (or leave it unset). Rates up to 16 kHz (~0..~5) need "
                f"the WiFi shield, which this driver does not support.")
        return self


def dongle_rate_hz(daisy: bool) -> int:
    """Samples per second per channel that stream over the dongle (250, or 125 with a Daisy)."""
    return cy.DONGLE_SAMPLE_RATE_HZ // (2 if daisy else 1)


#: digital-read aux words (firmware updateChannelData, board mode digital): input -> (word, bit)
_DIGITAL_AUX_BITS: dict[str, tuple[int, int]] = {"D11": (0, 8), "D12": (0, 0), "D13": (1, 8), "D17": (1, 0),
                                                 "D18": (2, 0)}


class CytonDriver(CodecDriver):
    """OpenBCI Cyton / Cyton + Daisy."""

    kind = "cyton"
    modality = "eeg"
    Settings = CytonSettings

    def __init__(self, name: str, address: str, settings: CytonSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: CytonSettings = settings
        self._codec = cy.CytonHostCodec()
        self._banner = ""
        self._firmware = ""
        self._daisy = settings.daisy
        self._gains = np.full(16, 24.0)
        self._framer: SampleFramer | None = None
        self._unwrap = CounterUnwrapper(8, 1)
        self._pairer = cy.DaisyPairer()
        self._accel: list[float] | None = None
        self._accel_counts: list[int | None] = [None, None, None]
        self._board_rate_hz: int | None = None
        self._last_board_ms: int | None = None
        self._streaming = False
        self._trig_level = False
        self._trig_pending: list[int] = []  # sample indices of rising edges not yet in a frame
        self._analog: AnalogTrigger | None = None  # trigger_channel's step locator

    # -- properties ------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return 16 if self._daisy else 8

    @property
    def sample_rate_hz(self) -> float:
        return float(dongle_rate_hz(self._daisy))

    @property
    def frame_samples(self) -> int:
        return self.settings.frame_samples or default_frame_samples(self.sample_rate_hz)

    def labels(self) -> list[str]:
        lab = self.settings.labels or CYTON_LABELS_16
        if len(lab) < self.n_channels:
            raise DeviceError(f"{self.name}: {len(lab)} labels for {self.n_channels} channels")
        return list(lab[: self.n_channels])

    # -- commands --------------------------------------------------------------------
    def _hold(self, ev: Any) -> None:
        """Commands are sent only while not streaming: samples left over from before are dropped."""

    def _command(self, cmd: Any, timeout: float | None = None) -> str:
        """Send ``cmd``; the next ``$$$``-terminated text reply."""
        t = timeout or self.settings.timeout_s
        r = self._request(self._codec.send(cmd), lambda ev: isinstance(ev, cy.CytonText), t,
                          f"no reply from the Cyton at {self.address} within {t} s "
                          f"(board off or dongle unpaired?)")
        return r.text

    def open(self) -> None:
        s = self.settings
        self._link = link = SerialTransport(self.address, 115200)
        self._write(b"s")
        time.sleep(0.05)
        link.reset_input()
        self._codec = cy.CytonHostCodec()
        self._banner = self._command(cy.SoftReset())
        if "OpenBCI" not in self._banner:
            raise DeviceError(f"{self.name}: {self.address} did not identify as an OpenBCI board "
                              f"(banner {self._banner[:60]!r})")
        for line in self._banner.splitlines():
            if line.startswith("Firmware:"):
                self._firmware = line.split(":", 1)[1].strip()
        self._ensure_dongle_rate()
        has_daisy = "Daisy" in self._banner
        if s.daisy and not has_daisy:
            r = self._command(cy.DaisyMode(True))
            if "16" not in r or "no daisy" in r:
                raise DeviceError(f"{self.name}: settings ask for a Daisy but the board has none ({r!r})")
        elif not s.daisy and has_daisy:
            self._command(cy.DaisyMode(False))
        self._daisy = s.daisy
        r = self._command(cy.SetDefaultChannels())
        if "default" not in r:
            raise DeviceError(f"{self.name}: unexpected reply to 'd': {r!r}")
        gains = s.gains or [s.gain] * 16
        if len(gains) < self.n_channels:
            raise DeviceError(f"{self.name}: {len(gains)} gains for {self.n_channels} channels")
        for ch in range(1, self.n_channels + 1):
            trig = ch == s.trigger_channel  # the TTL's channel: differential (no SRB2), out of the bias drive
            cmd = cy.ChannelSettings(ch, int(ch in s.channels_off), _GAIN_TO_CODE[gains[ch - 1]],
                                     s.input_type, 0 if trig else s.bias, 0 if trig else s.srb2, s.srb1)
            r = self._command(cmd)
            if not r.startswith("Success"):
                raise DeviceError(f"{self.name}: channel {ch} settings refused: {r!r}")
            self._gains[ch - 1] = gains[ch - 1]
        self.labels()  # validate
        if s.trigger_line is not None:
            r = self._command(cy.SetBoardMode(3))
            if "digital" not in r:
                raise DeviceError(f"{self.name}: the board refused digital-read mode ('/3'): {r!r}")

    def _ensure_dongle_rate(self) -> None:
        """Firmware v3 keeps a ``~n`` rate across ``v``; ``b`` would then reset the ADS to
        250 SPS and wipe the channel settings made below. Put it back to 250 SPS first."""
        if not self._firmware.startswith("v") or not self._firmware[1:2].isdigit() or int(self._firmware[1]) < 3:
            self._board_rate_hz = cy.DONGLE_SAMPLE_RATE_HZ  # v1/v2 firmware: fixed 250 SPS, no '~'
            return
        r = self._command(cy.QuerySampleRate())
        rate = cy.parse_sample_rate_reply(r)
        if rate is None:
            raise DeviceError(f"{self.name}: unexpected reply to '~~': {r!r}")
        if rate != cy.DONGLE_SAMPLE_RATE_HZ:
            r = self._command(cy.SetSampleRate(cy.DONGLE_SAMPLE_RATE_CODE))
            rate = cy.parse_sample_rate_reply(r)
            if rate != cy.DONGLE_SAMPLE_RATE_HZ:
                raise DeviceError(f"{self.name}: could not set the Cyton to 250 SPS: {r!r}")
            self.count("rate_reset")
        self._board_rate_hz = rate

    def close(self) -> None:
        if self._link is not None and self._streaming:
            try:
                self._link.write(b"s")
            except ConnectionLost:
                pass
        super().close()

    def start(self) -> None:
        self._framer = SampleFramer(self.n_channels, self.sample_rate_hz, self.frame_samples, self._frame_meta)
        self._unwrap = CounterUnwrapper(8, 2 if self._daisy else 1)
        self._pairer = cy.DaisyPairer()
        self._accel = None
        self._accel_counts = [None, None, None]
        self._last_board_ms = None
        self._trig_level = False
        self._trig_pending = []
        s = self.settings
        self._analog = None if s.trigger_channel is None else AnalogTrigger(s.trigger_channel, s.trigger_step_uv)
        self._send(cy.StartStreaming())
        self._streaming = True

    #: how long before the next frame's last sample is due a hold (:meth:`_hold_s`) ends, s
    hold_margin_s = 0.004

    def _hold_s(self) -> float:
        """While streaming: :meth:`SampleFramer.hold_s` with :attr:`hold_margin_s`."""
        fr = self._framer
        return fr.hold_s(self.hold_margin_s) if fr is not None and self._streaming else 0.0

    def stop(self) -> None:
        if self._link is not None:
            try:
                self._send(cy.StopStreaming())
            except ConnectionLost:
                pass
        self._streaming = False

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        n = self.n_channels
        return StreamDescriptor(
            stream=self.name, modality=self.modality,
            device=f"cyton{'+daisy' if self._daisy else ''} {self._firmware}".strip(),
            dtype="<f4", shape=[n, -1], axes=["channel", "sample"], units="µV",
            channel_names=self.labels(), sample_rate_hz=self.sample_rate_hz,
            frame_rate_hz=self.sample_rate_hz / self.frame_samples,
            meta={"gains": [int(g) for g in self._gains[:n]], "channels_off": list(s.channels_off),
                  "frame_samples": self.frame_samples, "mains_hz": s.mains_hz, "firmware": self._firmware,
                  "board_sample_rate_hz": self._board_rate_hz,
                  "accel": "frame meta accel_g = [x, y, z] in g (latest reading of each axis)",
                  "t_device": "device sample index (unwrapped packet counter) of the first sample"},
        )

    def _unwrap_counter(self, counter: int, timestamp_ms: int | None) -> int | None:
        """Device sample index of a packet (``None``: a repeated packet, dropped and counted).
        Time-stamped packets carry the board's clock, which tells a dropout of whole counter
        wraps (> 1.02 s at 250 packets/s) from a short one and a repeat from a wrap; arrival
        times cannot (a host stall delivers buffered packets late with consecutive counters)."""
        elapsed = None
        if timestamp_ms is not None:
            if self._last_board_ms is not None:
                elapsed = ((timestamp_ms - self._last_board_ms) % (1 << 32)) * cy.DONGLE_SAMPLE_RATE_HZ / 1000.0
            self._last_board_ms = timestamp_ms
        i = self._unwrap(counter, elapsed)
        if self._unwrap.duplicate:
            self.count("duplicate_packets")
            return None
        return i

    def _take_accel(self, readings: tuple[cy.AccelAxisReading, ...]) -> None:
        """One path for every packet type: 0xC0 brings X, Y, Z at once, 0xC3/0xC4 one axis."""
        ac = self._accel_counts
        for r in readings:
            ac[r.axis] = r.counts
        if ac[0] is not None and ac[1] is not None and ac[2] is not None:
            self._accel = [float(a) * cy.ACCEL_SCALE_G for a in ac]  # type: ignore[arg-type]

    def _frame_meta(self, first: int, n: int) -> dict[str, Any] | None:
        meta: dict[str, Any] | None = {"accel_g": self._accel} if self._accel is not None else None
        if self._trig_pending and self._framer is not None:
            mine = [i for i in self._trig_pending if first <= i < first + n]
            if mine:
                self._trig_pending = [i for i in self._trig_pending if i >= first + n]
                meta = {**(meta or {}), FRAME_TRIGGERS_KEY: [
                    sample_trigger(self._framer, i, self.settings.trigger_line or "", self.sample_rate_hz).to_meta()
                    for i in mine]}
        if self._analog is not None and self._framer is not None:
            steps = self._analog.take(self._framer, first, n)
            if steps:
                meta = {**(meta or {}), FRAME_TRIGGERS_KEY: steps}
        return meta

    def _analog_edges(self, first: int, block: np.ndarray) -> None:
        """``trigger_channel``: look for its TTL steps in samples ``first...`` (counted)."""
        assert self._analog is not None
        rejected = self._analog.tracker.rejected
        n = self._analog.push(first, block)
        if n:
            self.count("trigger_edges", n)
        if self._analog.tracker.rejected != rejected:
            self.count("trigger_steps_rejected", self._analog.tracker.rejected - rejected)

    def _digital(self, i: int, aux: bytes) -> None:
        """The digital-read aux words of sample ``i``: a rising edge on the trigger line is noted."""
        word, bit = _DIGITAL_AUX_BITS[self.settings.trigger_line or "D11"]
        level = bool(int.from_bytes(aux[2 * word:2 * word + 2], "big") >> bit & 1)
        if level and not self._trig_level:
            self._trig_pending.append(i)
            self.count("trigger_edges")
        self._trig_level = level

    # -- streaming -------------------------------------------------------------------
    def read(self, timeout: float) -> list[Frame | Gap]:
        assert self._framer is not None
        events = self._receive(timeout)
        t_read = self._t_in_ns
        out: list[Frame | Gap] = []
        if not events:
            return out
        idx: list[int] = []
        cols: list[tuple[int, ...]] = []
        daisy = self._daisy
        pairer = self._pairer
        for ev in events:
            if type(ev) is cy.CytonSample:
                if daisy:
                    for p in pairer.push(ev):
                        if type(p) is cy.DaisySample:
                            i = self._unwrap_counter(p.counter, p.timestamp_ms)
                            if i is None:
                                continue
                            idx.append(i)
                            cols.append(p.channels)
                            if p.accel_readings:
                                self._take_accel(p.accel_readings)
                        else:
                            self.count("daisy_half_lost")
                else:
                    i = self._unwrap_counter(ev.counter, ev.timestamp_ms)
                    if i is None:
                        continue
                    idx.append(i)
                    cols.append(ev.channels)
                    if self.settings.trigger_line is not None:
                        self._digital(i, ev.aux)
                    readings = ev.accel_readings
                    if readings:
                        self._take_accel(readings)
            elif isinstance(ev, cy.CytonText):
                self.count("text_replies")
        if not idx:
            return out
        fr = self._framer
        fr.observe(idx[-1], t_read)
        counts = np.array(cols, dtype=np.float64).T  # (channels, n)
        uv = counts * cy.uv_scale(self._gains[: self.n_channels])[:, None]
        # split into runs of consecutive indices
        ia = np.asarray(idx)
        breaks = np.flatnonzero(np.diff(ia) != 1) + 1
        start = 0
        for b in [*breaks.tolist(), len(idx)]:
            if self._analog is not None:
                self._analog_edges(int(ia[start]), uv[:, start:b])
            fr.push(int(ia[start]), uv[:, start:b], out,
                    reason=f"Cyton packet counter jumped (lost {int(ia[start]) - (fr.next_index or 0)} samples)")
            start = b
        return out
