"""Simulated OpenBCI Cyton (+ Daisy) board: firmware v3.1.2 state machine over the
:mod:`medacq.protocols.cyton` device codec and :class:`EEGModel`.

Faithful to what hosts rely on (BrainFlow ``OpenBCISerialBoard``, OpenBCI GUI): opening
the port sends nothing; ``v`` prints the banner ending ``$$$``; ``d`` answers
``updating channel settings to default$$$``; ``b``/``s`` start/stop 33-byte packets at
250 Hz (the dongle rate; the firmware forces 250 Hz when streaming over the dongle);
replies to ``x``/``~``/``/``/``z`` are only sent while idle, as the firmware does.
With ``daisy=True`` each 16-channel sample (125 Hz) is sent as two packets: first the
even counter = Daisy channels 9–16, then the odd counter = main board channels 1–8 (the
order BrainFlow 5.x's ``CYTON_DAISY_BOARD`` and the OpenBCI GUI pair them in).
"""

from __future__ import annotations

import numpy as np

from medacq.protocols import cyton as cy

from ._interface import DeviceInterface
from .biosignal_models import EEG_LABELS_16, EEGModel

__all__ = ["CytonInterface", "BANNER_HEAD", "FIRMWARE_VERSION", "make"]

FIRMWARE_VERSION = "v3.1.2"
BANNER_HEAD = "OpenBCI V3 8-16 channel"
_PACKET_RATE = 250.0
_DEFAULT = cy.ChannelSettings(1, 0, 6, 0, 1, 1, 0)


class CytonInterface(DeviceInterface):
    """The board behind the dongle.

    Args:
        seed: model seed (same seed + same host bytes → same device bytes).
        daisy: a Daisy module is fitted (16 channels).
        mains_hz: mains frequency in the EEG model (50 or 60).
        clock_ppm: board crystal error; packets come every 1/(250·(1+ppm·1e-6)) s.
        model_kwargs: passed to :class:`EEGModel`.
    """

    def __init__(self, seed: int = 0, daisy: bool = False, mains_hz: float = 50.0,
                 clock_ppm: float = 0.0, **model_kwargs: object) -> None:
        self.seed = seed
        self.daisy_fitted = daisy
        self.mains_hz = mains_hz
        self.clock_ppm = clock_ppm
        self._model_kwargs = model_kwargs
        self.codec = cy.CytonDeviceCodec()
        self.packets_sent = 0
        self.packets_dropped: list[int] = []  # stream packet numbers k never sent
        self._to_drop = 0
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.daisy = self.daisy_fitted
        self.streaming = False
        self.settings = [cy.ChannelSettings(ch, *_fields(_DEFAULT)[1:]) for ch in range(1, 17)]
        self.sample_rate_code = 6
        self.board_mode = 0
        self.time_stamping = False
        self._ts_first = False
        self._counter = 0
        self._stream_t0 = 0.0
        self._stream_k = 0
        self._model: EEGModel | None = None
        self._pending: np.ndarray | None = None  # (16, m) µV samples for the Daisy pair

    @property
    def n_channels(self) -> int:
        return 16 if self.daisy else 8

    @property
    def packet_period(self) -> float:
        return 1.0 / (_PACKET_RATE * (1.0 + self.clock_ppm * 1e-6))

    def gains(self) -> np.ndarray:
        return np.array([s.gain for s in self.settings[: self.n_channels]])

    # ------------------------------------------------------------- interface
    def on_connect(self, t: float) -> bytes:
        return b""

    def on_disconnect(self, t: float) -> None:
        pass

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.dispatch(self.codec, data, lambda ev: self._handle(ev, t), count_garbage=False)

    def _say(self, text: str) -> bytes:
        return self.codec.send(cy.CytonText(text))

    def _idle_say(self, text: str) -> bytes:
        return b"" if self.streaming else self._say(text)

    def _handle(self, ev: object, t: float) -> bytes:
        if not isinstance(ev, (cy.StartStreaming, cy.StopStreaming)):
            injected = self.take_injected_error()
            if injected is not None:  # fault side door: the board answers with a failure
                return self._say(f"Failure: {injected[0]}")
        if isinstance(ev, cy.SoftReset):
            self._reset()
            lines = [BANNER_HEAD, "On Board ADS1299 Device ID: 0x3E"]
            if self.daisy:
                lines.append("On Daisy ADS1299 Device ID: 0x3E")
            lines += ["LIS3DH Device ID: 0x33", f"Firmware: {FIRMWARE_VERSION}"]
            return self._say("\r\n".join(lines) + "\r\n")
        if isinstance(ev, cy.StartStreaming):
            if not self.streaming:
                self.streaming = True
                self.sample_rate_code = 6  # dongle: firmware drops to 250 Hz
                self._stream_t0 = t
                self._stream_k = 0
                self._counter = 0
                self._model = EEGModel(self.seed, fs=_PACKET_RATE / (2 if self.daisy else 1),
                                       labels=EEG_LABELS_16[: self.n_channels],
                                       mains_hz=self.mains_hz, **self._model_kwargs)  # type: ignore[arg-type]
                self._pending = None
            return b""
        if isinstance(ev, cy.StopStreaming):
            self.streaming = False
            return b""
        if isinstance(ev, (cy.ChannelOff, cy.ChannelOn)):
            s = self.settings[ev.channel - 1]
            self.settings[ev.channel - 1] = _replace(s, power_down=int(isinstance(ev, cy.ChannelOff)))
            return b""
        if isinstance(ev, cy.ChannelSettings):
            if ev.channel > self.n_channels:
                return self._idle_say("Failure: daisy not attached")  # modelled text
            self.settings[ev.channel - 1] = ev
            return self._idle_say(f"Success: Channel set for {ev.channel}")
        if isinstance(ev, (cy.ChannelSettingsError, cy.LeadOffError, cy.SampleRateError,
                           cy.BoardModeError)):
            return self._idle_say(f"Failure: {ev.reason}")
        if isinstance(ev, cy.LeadOffSettings):
            return self._idle_say(f"Success: Lead off set for {ev.channel}")
        if isinstance(ev, cy.SetDefaultChannels):
            self.settings = [cy.ChannelSettings(ch, *_fields(_DEFAULT)[1:]) for ch in range(1, 17)]
            return self._idle_say("updating channel settings to default")
        if isinstance(ev, cy.ReportDefaultChannels):
            return self._say("060110")
        if isinstance(ev, cy.SetSampleRate):
            self.sample_rate_code = ev.code
            return self._idle_say(f"Success: Sample rate is {ev.rate_hz}Hz")
        if isinstance(ev, cy.QuerySampleRate):
            return self._idle_say(f"Success: Sample rate is {cy.SAMPLE_RATE_CODES[self.sample_rate_code]}Hz")
        if isinstance(ev, cy.SetBoardMode):
            self.board_mode = ev.code
            return self._idle_say(f"Success: {cy.BOARD_MODES[ev.code]}")
        if isinstance(ev, cy.QueryBoardMode):
            return self._idle_say(f"Board mode is {cy.BOARD_MODES[self.board_mode]}")
        if isinstance(ev, cy.DaisyMode):
            if not ev.enabled:
                if self.daisy:
                    self.daisy = False
                    return self._say("daisy removed")
                return b""
            if self.daisy:
                return self._say("16")
            if self.daisy_fitted:
                self.daisy = True
                return self._say("daisy attached16")
            return self._say("no daisy to attach!8")
        if isinstance(ev, cy.QueryRegisters):
            return b"" if self.streaming else self._say(self._register_dump())
        if isinstance(ev, cy.QueryVersion):
            return self._say(FIRMWARE_VERSION)
        if isinstance(ev, cy.TimeStamping):
            self.time_stamping = ev.enabled
            self._ts_first = ev.enabled
            return self._idle_say("Time stamp ON" if ev.enabled else "Time stamp OFF")
        return b""  # markers, test signals, unknown bytes: no serial reply

    def _register_dump(self) -> str:
        def ads(name: str, chans: list[cy.ChannelSettings]) -> list[str]:
            rows = [name, "ADS_ID, 00, 3E, 0, 0, 1, 1, 1, 1, 1, 0",
                    "CONFIG1, 01, 96, 1, 0, 0, 1, 0, 1, 1, 0"]
            for k, s in enumerate(chans, start=1):
                v = (s.power_down << 7) | (s.gain_code << 4) | (s.srb2 << 3) | s.input_type
                rows.append(f"CH{k}SET, {4 + k:02X}, {v:02X}, " + ", ".join(f"{(v >> b) & 1}" for b in range(7, -1, -1)))
            return rows
        lines = [""] + ads("Board ADS Registers", self.settings[:8])
        if self.daisy:
            lines += [""] + ads("Daisy ADS Registers", self.settings[8:16])
        lines += ["", "LIS3DH Registers", "WHO_AM_I, 0F, 33"]
        return "\r\n".join(lines) + "\r\n"

    # --------------------------------------------------------------- streaming
    def next_deadline(self) -> float | None:
        if not self.streaming:
            return None
        return self._stream_t0 + self._stream_k * self.packet_period

    def poll(self, t: float) -> bytes:
        if not self.streaming or self._model is None:
            return b""
        due = int(np.floor((t - self._stream_t0) / self.packet_period + 1e-9)) + 1
        n = due - self._stream_k
        if n <= 0:
            return b""
        return self._packets(n)

    def _packets(self, n: int) -> bytes:
        assert self._model is not None
        nch = self.n_channels
        ks = range(self._stream_k, self._stream_k + n)
        n_new = sum(1 for k in ks if k % 2 == 0) if self.daisy else n
        scale = cy.uv_scale(self.gains().astype(float))
        uv = self._model.generate(n_new) if n_new else np.zeros((nch, 0))
        counts = np.clip(np.round(uv / scale[:, None]), -(2**23), 2**23 - 1).astype(np.int64)
        pd = np.array([s.power_down == 1 or s.input_type == 1 for s in self.settings[:nch]])
        counts[pd] = 0
        out = bytearray()
        col = 0
        for k in ks:
            if not self.daisy:
                half = counts[:, col]
                col += 1
            elif k % 2 == 0:  # Daisy half (even counter) opens a new 16-channel sample
                self._pending = counts[:, col]
                col += 1
                half = self._pending[8:16]
            else:  # main board half (odd counter) completes it
                assert self._pending is not None
                half = self._pending[:8]
            out += self._encode(tuple(int(v) for v in half), k)
        self._stream_k += n
        return bytes(out)

    def _encode(self, chans: tuple[int, ...], k: int) -> bytes:
        accel: tuple[int, int, int] | None = None
        if k % 10 == 0:
            accel = (0, 0, int(round(1.0 / cy.ACCEL_SCALE_G)))  # board flat: +1 g on Z
        if self.time_stamping:
            stop = 0xC3 if self._ts_first else 0xC4
            self._ts_first = False
            ts = int((self._stream_t0 + k * self.packet_period) * 1000) & 0xFFFFFFFF
            aux = (accel[k % 3] if accel else 0).to_bytes(2, "big", signed=True) + b"\x00" * 4
            s = cy.CytonSample(self._counter, chans, stop, aux, None, ts)
        else:
            s = cy.CytonSample(self._counter, chans, 0xC0, b"\x00" * 6, accel or (0, 0, 0), None)
        self._counter = (self._counter + 1) % 256
        if self._to_drop:  # fault side door: the radio lost this packet
            self._to_drop -= 1
            self.packets_dropped.append(k)
            return b""
        self.packets_sent += 1
        return self.codec.send(s)

    def drop_packets(self, n: int) -> None:
        """Fault side door: the next ``n`` packets are lost on the radio link (their
        counters are consumed, as when the dongle misses packets)."""
        self._to_drop += int(n)

    def truth(self) -> dict:
        d: dict = {"streaming": self.streaming, "daisy": self.daisy, "gains": self.gains().tolist(),
                   "packets_sent": self.packets_sent, "packet_rate_hz": 1 / self.packet_period}
        if self._model is not None:
            d.update(self._model.truth())
        return d


def _fields(s: cy.ChannelSettings) -> tuple[int, ...]:
    return (s.channel, s.power_down, s.gain_code, s.input_type, s.bias, s.srb2, s.srb1)


def _replace(s: cy.ChannelSettings, **kw: int) -> cy.ChannelSettings:
    f = dict(zip(("channel", "power_down", "gain_code", "input_type", "bias", "srb2", "srb1"), _fields(s)))
    f.update(kw)
    return cy.ChannelSettings(**f)


def make(**options: object) -> CytonInterface:
    """Factory for ``medacq sim cyton`` / the rig (options: :class:`CytonInterface` args:
    ``seed``, ``daisy``, ``mains_hz``, ``clock_ppm`` and :class:`EEGModel` keywords)."""
    return CytonInterface(**options)  # type: ignore[arg-type]
