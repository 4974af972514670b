"""Driver for a HackEEG board (Arduino Due + ADS1298 shield, hackeeg-driver-arduino) used
as an 8-lead ECG front end: leads I, II, V1–V6 on channels 1–8.

Open, from whatever mode the board was left in and even if it is still streaming (as
hackeeg-client-python ``HackEEGBoard.connect``/``_sense_protocol_mode``/
``stop_and_sdatac_messagepack`` do): JSON ``stop``, ``sdatac`` and ``nop``, which end a JSON
Lines or MessagePack stream (in those modes the firmware runs only its JSON parser, so a
text line would just get ``400 Bad Request``). The first reply tells the mode: a JSON reply
means JSON Lines or MessagePack, so JSON ``jsonlines`` follows; the text reply ``406 Error:
Unrecognized command.`` means text mode, so text ``sdatac`` and ``jsonlines`` follow (then a
JSON ``jsonlines``, harmless once in JSON Lines). Then
JSON ``rreg 0x00`` (ADS129x ID): nothing sent before it is answered with data, so its reply
marks the end of whatever was in flight; everything before it is discarded. Then JSON Lines
commands: ``status`` (firmware version: the firmware has no JSON ``version``), ``wreg
CONFIG1`` (rate), ``wreg CHnSET`` (gain), ``rreg CONFIG1`` (check), and ``messagepack``
when ``settings.mode == "messagepack"``. ``start`` + ``rdatac`` begin the stream,
``sdatac`` ends it. A non-200 status is a :class:`~medacq.drivers._base.DeviceError`.

Frames: ``(channel, sample)`` float32 µV (counts × 2.4 V / gain / (2^23 − 1)),
``frame_samples`` samples each; ``t_device`` = the index of the frame's first sample counted
from the first sample received after :meth:`HackEEGDriver.start` (index 0), advanced by the
board's uint32 sample-number differences (unwrapped), so lost samples keep their place.
Sample-number jumps are reported as gaps with ``lost_samples``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medacq.protocols import hackeeg as he
from medacq.protocols._sansio import Garbage
from medacq.protocols.markers import FRAME_TRIGGERS_KEY
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from ._clockfit import CounterUnwrapper
from .bio_common import SampleFramer, default_frame_samples
from .transports import SerialTransport
from .triggers import sample_trigger

__all__ = ["HackEEGDriver", "HackEEGSettings", "HACKEEG_LEADS", "HACKEEG_RATES"]

#: What the 8 inputs carry in the ECG montage (Einthoven I, II and the precordial leads).
HACKEEG_LEADS = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
#: The text parser's reply to a line it does not know (hackeeg_driver.ino ``unrecognized``).
_TEXT_UNRECOGNIZED = "406 Error: Unrecognized command."
#: Rates the driver accepts (ADS1298 CONFIG1 rates the issue asks for).
HACKEEG_RATES = (250, 500, 1000, 2000, 4000, 8000, 16000)


class HackEEGSettings(BaseModel):
    """HackEEG settings.

    Attributes:
        rate: samples per second (250, 500, 1000, 2000, 4000, 8000, 16000).
        gain: ADS1298 PGA gain of every channel (1, 2, 3, 4, 6, 8, 12).
        mode: sample encoding on the wire: ``messagepack`` (binary, default) or ``jsonlines``.
        channels_off: 1-based channels to power down (they read 0 µV).
        frame_samples: samples per frame (default ≈ 25 frames/s, e.g. 20 at 500 SPS, 640 at 16 kSPS).
        labels: channel names (default I, II, V1–V6).
        mains_hz: local mains frequency (descriptor hint for the notch filter).
        timeout_s: reply timeout of configuration commands.
        trigger_gpio: an ADS1298 GPIO input (1-4, inputs at reset) with a TTL trigger cabled to
            it: each sample's status word carries the GPIO data bits (its low nibble, GPIOD4..1,
            GPIO1 in bit 0); each rising edge becomes a trigger event in frame
            ``meta["triggers"]`` (published on ``markers/<device>``).
    """

    model_config = ConfigDict(extra="forbid")

    rate: int = 500
    gain: int = 6
    mode: Literal["messagepack", "jsonlines"] = "messagepack"
    channels_off: list[int] = Field(default_factory=list)
    frame_samples: int | None = Field(default=None, ge=1, le=100_000)
    labels: list[str] | None = None
    mains_hz: float = Field(default=50.0, ge=0)
    timeout_s: float = Field(default=3.0, gt=0)
    trigger_gpio: int | None = Field(default=None, ge=1, le=4)

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: int) -> int:
        if v not in HACKEEG_RATES:
            raise ValueError(f"rate {v} SPS not one of {list(HACKEEG_RATES)}")
        return v

    @field_validator("gain")
    @classmethod
    def _gain(cls, v: int) -> int:
        if v not in he.CODE_FROM_GAIN:
            raise ValueError(f"gain {v} not one of {sorted(he.CODE_FROM_GAIN)}")
        return v

    @field_validator("channels_off")
    @classmethod
    def _off(cls, v: list[int]) -> list[int]:
        if any(not 1 <= c <= 8 for c in v):
            raise ValueError("channels_off entries must be 1..8")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(v) != 8:
            raise ValueError("labels needs 8 names")
        return v


class HackEEGDriver(CodecDriver):
    """HackEEG / ADS1298 ECG front end."""

    kind = "hackeeg"
    modality = "ekg"
    Settings = HackEEGSettings
    n_channels = 8

    def __init__(self, name: str, address: str, settings: HackEEGSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: HackEEGSettings = settings
        self._codec = he.HackEEGHostCodec()
        self._syncing = False
        self._version = ""
        self._chip_id = 0
        self._framer: SampleFramer | None = None
        self._streaming = False
        self._unwrap = CounterUnwrapper(32, 1)
        self._scale = np.ones(8)
        self._trig_level = False
        self._trig_pending: list[int] = []

    @property
    def frame_samples(self) -> int:
        return self.settings.frame_samples or default_frame_samples(self.settings.rate)

    # -- commands --------------------------------------------------------------------
    def _hold(self, ev: Any) -> None:
        """Commands are sent only while not streaming: samples still on their way from an
        earlier session are counted (``open_discarded_samples``) and dropped, as is the rest."""
        if isinstance(ev, he.HackEEGSample):
            self.count("open_discarded_samples")

    def _garbage(self, ev: Garbage) -> None:
        if self._syncing:  # the cut-off tail of whatever an earlier session left in flight
            self.count("open_discarded_bytes", ev.nbytes)
        else:
            super()._garbage(ev)

    def _command(self, command: str, *params: int, check: bool = True) -> he.HackEEGResponse:
        """Send one command in the current mode; its response (non-200 → DeviceError if ``check``)."""
        t = self.settings.timeout_s
        r = self._request(self._codec.send(he.HackEEGCommand(command, tuple(params))),
                          lambda ev: isinstance(ev, he.HackEEGResponse), t,
                          f"no reply from the HackEEG at {self.address} within {t} s")
        if check and r.status_code != he.STATUS_OK:
            raise DeviceError(f"{self.name}: {command} {list(params)} failed: {r.status_code} {r.status_text}")
        return r

    def _json(self, command: str, *params: int) -> bytes:
        return he.encode_command(he.HackEEGCommand(command, tuple(params)), he.JSONLINES)

    def _sync(self) -> int:
        """Bring the board, whatever its mode and even if streaming, to idle JSON Lines mode
        with nothing of an earlier session left in flight. Returns the ADS129x ID register.

        Model: hackeeg-client-python ``HackEEGBoard.connect`` (``_sense_protocol_mode`` sends
        JSON ``stop``, ``sdatac``, ``nop`` and takes a JSON reply for JSON mode, anything else
        for text mode, where it sends the text ``jsonlines``)."""
        timeout = self.settings.timeout_s
        # text mode: stop and switch with the text parser; the JSON 'jsonlines' after them is
        # understood once they have run (and would still switch a JSON/MessagePack board)
        text_switch = (he.encode_command(he.HackEEGCommand("sdatac"), he.TEXT)
                       + he.encode_command(he.HackEEGCommand("jsonlines"), he.TEXT) + self._json("jsonlines"))
        marker = self._json("rreg", he.REG_ID)  # nothing sent before it is answered with data
        self._connected().reset_input()
        # a TEXT-mode host codec decodes JSON lines, text lines and MessagePack records alike
        self._codec = he.HackEEGHostCodec(he.TEXT)
        mode: str | None = None

        def telling(ev: Any) -> bool:
            """Replies that move the sequence on (samples of a stream left running go to _hold)."""
            if isinstance(ev, he.TextLine):
                # the text parser did not know our JSON line: text mode (also when an earlier
                # JSON reply was a stale one)
                return ev.text == _TEXT_UNRECOGNIZED and mode != he.TEXT
            if isinstance(ev, he.HackEEGResponse):
                # >= 500: the board itself refuses; first reply: JSON Lines or MessagePack mode
                # (replies are JSON in both); an integer: the marker's answer
                return (ev.status_code >= 500 or mode is None
                        or (isinstance(ev.data, int) and not isinstance(ev.data, bool)))
            return False

        self._syncing = True
        try:
            send = self._json("stop") + self._json("sdatac") + self._json("nop")
            silence = f"no reply from the HackEEG at {self.address} within {timeout} s"
            while True:
                ev = self._request(send, telling, timeout, silence)
                if isinstance(ev, he.TextLine):
                    mode, send = he.TEXT, text_switch + marker
                elif ev.status_code >= 500:  # not a parse error of our probes: say what it said
                    raise DeviceError(f"{self.name}: the HackEEG answered {ev.status_code} {ev.status_text}")
                elif mode is None:
                    mode, send = he.JSONLINES, self._json("jsonlines") + marker
                else:
                    return self._sync_done(ev.data)
                silence = f"the HackEEG at {self.address} did not enter JSON Lines mode within {timeout} s"
        finally:
            self._syncing = False

    def _sync_done(self, chip_id: int) -> int:
        link = self._connected()
        # stragglers (a stale reply of an earlier session could have looked like the marker)
        end = time.monotonic() + self.settings.timeout_s
        while time.monotonic() < end and link.read_some(0.05):
            pass
        self._codec = he.HackEEGHostCodec(he.JSONLINES)
        return chip_id

    def open(self) -> None:
        s = self.settings
        self._link = SerialTransport(self.address, 115200)
        self._chip_id = self._sync()
        if self._chip_id & 0xF0 != 0x90:
            raise DeviceError(f"{self.name}: ADS129x ID register reads {self._chip_id:#04x}, not an ADS129x")
        r = self._command("status", check=False)
        info = r.data if r.status_code == he.STATUS_OK and isinstance(r.data, dict) else {}
        self._version = str(info.get("driver_version", ""))
        self._command("wreg", he.REG_CONFIG1, he.config1_for_rate(s.rate))
        for ch in range(8):
            self._command("wreg", he.REG_CHNSET + ch, he.chnset(s.gain, power_down=(ch + 1) in s.channels_off))
        got = he.rate_from_config1(int(self._command("rreg", he.REG_CONFIG1).data))
        if got != s.rate:
            raise DeviceError(f"{self.name}: asked for {s.rate} SPS, board runs {got} SPS")
        if s.mode == "messagepack":
            self._command("messagepack")
        self._scale = he.counts_to_uv(np.ones(8), float(s.gain)) * np.ones(8)

    def close(self) -> None:
        self.stop()
        super().close()

    def start(self) -> None:
        self._framer = SampleFramer(8, float(self.settings.rate), self.frame_samples,
                                    self._frame_meta if self.settings.trigger_gpio else None)
        self._unwrap = CounterUnwrapper(32, 1)
        self._trig_level = False
        self._trig_pending = []
        self._command("start")
        self._send(he.HackEEGCommand("rdatac"))
        self._streaming = True
        # the 200 reply comes back among the samples; read() skips responses

    #: how long before the next frame's last sample is due a hold (:meth:`_hold_s`) ends, s
    hold_margin_s = 0.004

    def _hold_s(self) -> float:
        """While streaming: :meth:`SampleFramer.hold_s` with :attr:`hold_margin_s` (after ``stop``,
        0: command replies are read at once)."""
        fr = self._framer
        return fr.hold_s(self.hold_margin_s) if fr is not None and self._streaming else 0.0

    def stop(self) -> None:
        self._streaming = False
        if self._link is not None:
            try:
                self._send(he.HackEEGCommand("sdatac"))
            except ConnectionLost:
                pass

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"hackeeg ads1298 {self._version}".strip(),
            dtype="<f4", shape=[8, -1], axes=["channel", "sample"], units="µV",
            channel_names=list(s.labels or HACKEEG_LEADS), sample_rate_hz=float(s.rate),
            frame_rate_hz=s.rate / self.frame_samples,
            meta={"gain": s.gain, "mode": s.mode, "channels_off": list(s.channels_off),
                  "frame_samples": self.frame_samples, "mains_hz": s.mains_hz, "firmware": self._version,
                  "chip_id": self._chip_id,
                  "t_device": "index of the first sample since the run started (first received "
                              "sample = 0; advanced by the board's unwrapped uint32 sample number)"},
        )

    def _frame_meta(self, first: int, n: int) -> dict[str, Any] | None:
        mine = [i for i in self._trig_pending if first <= i < first + n]
        if not mine or self._framer is None:
            return None
        self._trig_pending = [i for i in self._trig_pending if i >= first + n]
        line = f"GPIO{self.settings.trigger_gpio}"
        return {FRAME_TRIGGERS_KEY: [sample_trigger(self._framer, i, line, float(self.settings.rate)).to_meta()
                                     for i in mine]}

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
        unwrap = self._unwrap
        gpio_bit = None if self.settings.trigger_gpio is None else self.settings.trigger_gpio - 1
        for ev in events:
            if type(ev) is he.HackEEGSample:
                i = unwrap(ev.sample_number)
                idx.append(i)
                cols.append(ev.channels)
                if gpio_bit is not None:
                    level = bool(ev.status >> gpio_bit & 1)
                    if level and not self._trig_level:
                        self._trig_pending.append(i)
                        self.count("trigger_edges")
                    self._trig_level = level
            elif isinstance(ev, he.HackEEGResponse):
                if ev.status_code != he.STATUS_OK:
                    self.count("error_replies")
        if not idx:
            return out
        fr = self._framer
        fr.observe(idx[-1], t_read)
        uv = np.array(cols, dtype=np.float64).T * self._scale[:, None]
        ia = np.asarray(idx)
        breaks = np.flatnonzero(np.diff(ia) != 1) + 1
        start = 0
        for b in [*breaks.tolist(), len(idx)]:
            fr.push(int(ia[start]), uv[:, start:b], out, reason="HackEEG sample number jumped")
            start = b
        return out
