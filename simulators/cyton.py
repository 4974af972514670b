"""Simulated OpenBCI Cyton (+ Daisy) board: firmware v3.1.2 state machine over the
:mod:`medacq.protocols.cyton` device codec and :class:`EEGModel`.

Behaviour follows the firmware source (OpenBCI/OpenBCI_Cyton_Library,
``OpenBCI_32bit_Library.cpp``: ``processChar`` and the functions it calls), as seen
through the USB dongle, which is what hosts rely on (BrainFlow ``OpenBCISerialBoard``,
the OpenBCI GUI):

* Opening the port sends nothing; ``v`` re-initialises the ADS1299(s), re-detects the
  Daisy and prints the banner ending ``$$$``. It keeps the sample-rate code, the board mode
  and the time-stamp mode, as the firmware does.
* ``b``/``s`` start/stop 33-byte packets at 250 Hz. If ``~n`` left the ADS at another
  rate, ``b`` first puts it back to 250 SPS, which re-initialises the ADS (channel and
  lead-off settings return to defaults). With ``daisy=True`` each 16-channel sample
  (125 Hz) is two packets: the even counter carries Daisy channels 9–16, the next (odd)
  counter main board channels 1–8 (the order BrainFlow 5.x's ``CYTON_DAISY_BOARD`` and the
  OpenBCI GUI pair them in).
* A settings command while streaming (channel on/off, ``x``, ``z``, ``d``, ``~n``, test
  signals) stops and restarts the ADS, which restarts the packet counter at 0.
* Packet types follow ``setCurPacketType``: ``0xC0`` (accelerometer), ``0xC1`` (raw aux,
  board modes analog/digital/marker), ``0xC3``/``0xC4`` (after ``<``: time stamp + one
  accelerometer axis per packet), ``0xC5``/``0xC6`` (time stamp + raw aux).
* Replies are sent as the firmware sends them: most only while idle; ``/n``, ``//``,
  ``~~``, ``V``, ``D`` and ``C`` also while streaming.

The rig's trigger line (:mod:`~medacq.simulators.trigger_bus`, one cable, see
:func:`~medacq.simulators.trigger_bus.attach`) reaches the board at a digital input (read in board
mode digital, the aux bytes) and, with ``trigger_channel``, also at an EEG channel through a
divider, as labs wire it: the ADS1299 converts it like any input, through its sinc^3 decimation
filter (fMOD = 1.024 MHz, N = 4096 at 250 SPS, computed here on that discrete grid), so a TTL step
spreads over 3 samples with a shape that depends on where in the period it fell. The channel's
own modelled signal (EEG, mains, noise) stays underneath.

Not modelled: the waveforms of the internal test signals and of the lead-off (impedance)
current, analog/digital pin readings other than the trigger line (they read 0), WiFi and BLE,
SD-card commands.
"""

from __future__ import annotations

import numpy as np

from medacq.protocols import cyton as cy

from ._interface import DeviceInterface
from .biosignal_models import EEG_LABELS_16, EEGModel
from .trigger_bus import TriggerInput

__all__ = ["CytonInterface", "BANNER_HEAD", "FIRMWARE_VERSION", "make"]

FIRMWARE_VERSION = "v3.1.2"
BANNER_HEAD = "OpenBCI V3 8-16 channel"
_PACKET_RATE = 250.0
_DEFAULT = cy.ChannelSettings(1, 0, 6, 0, 1, 1, 0)
# Firmware PACKET_TYPE enum (stop byte = 0xC0 | type).
_ACCEL, _RAW_AUX, _ACCEL_TIME_SET, _ACCEL_TIME_SYNC, _RAW_AUX_TIME_SET, _RAW_AUX_TIME_SYNC = 0, 1, 3, 4, 5, 6
# ADS1299 register values the firmware leaves as they are after a reset.
_CONFIG2_RESET = 0xC0
_CONFIG3 = 0xEC  # written by initialize_ads
_LOFF_AFTER_BOOT = 0x02  # configureLeadOffDetection(LOFF_MAG_6NA, LOFF_FREQ_31p2HZ) in boardReset
_GPIO_RESET = 0x0F
_SINC3_N = 4096  # ADS1299 decimation ratio at 250 SPS (fMOD = fCLK / 2 = 1.024 MHz, DR = 110)
# Test-signal commands: input mux code for all channels, CONFIG2 value (None = unchanged).
_TEST_SIGNALS = {"0": (1, None), "-": (5, 0xD0), "=": (5, 0xD1), "p": (5, 0xD7),
                 "[": (5, 0xD4), "]": (5, 0xD5)}
# LIS3DH registers printed by ``?`` (LIS3DH_readAllRegs), with the values an idle board shows.
_LIS3DH_GROUPS = (range(0x07, 0x10), range(0x1F, 0x34), range(0x38, 0x3E))
_LIS3DH_VALUES = {0x0F: 0x33, 0x20: 0x08, 0x23: 0x18}  # WHO_AM_I, CTRL_REG1 (off), CTRL_REG4 (±4 g)
_ADS_REGISTER_NAMES = ("ADS_ID", "CONFIG1", "CONFIG2", "CONFIG3", "LOFF", *(f"CH{k}SET" for k in range(1, 9)),
                       "BIAS_SENSP", "BIAS_SENSN", "LOFF_SENSP", "LOFF_SENSN", "LOFF_FLIP", "LOFF_STATP",
                       "LOFF_STATN", "GPIO", "MISC1", "MISC2", "CONFIG4")


class CytonInterface(DeviceInterface):
    """The board behind the dongle.

    Args:
        seed: model seed (same seed + same host bytes → same device bytes).
        daisy: a Daisy module is fitted (16 channels).
        mains_hz: mains frequency in the EEG model (50 or 60).
        clock_ppm: board crystal error; packets come every 1/(250·(1+ppm·1e-6)) s.
        accel_g: the board's orientation: gravity seen by the LIS3DH as (x, y, z) in g
            (default lying flat: +1 g on Z). Read at 25 Hz, i.e. on every 10th packet.
        trigger_channel: 1-based EEG channel the trigger line is also wired to (through a divider:
            ``trigger_uv`` at the input while the line is high), rendered through the ADS1299's
            sinc^3 filter (8-channel streaming only; ``None``: not wired).
        trigger_uv: the divided TTL level at that channel's input, µV (the default 50 mV sits well
            inside the ±187.5 mV range of gain 24).
        model_kwargs: passed to :class:`EEGModel`.
    """

    def __init__(self, seed: int = 0, daisy: bool = False, mains_hz: float = 50.0,
                 clock_ppm: float = 0.0, accel_g: tuple[float, float, float] = (0.0, 0.0, 1.0),
                 trigger_channel: int | None = None, trigger_uv: float = 50_000.0,
                 **model_kwargs: object) -> None:
        if trigger_channel is not None and not 1 <= int(trigger_channel) <= 16:
            raise ValueError(f"trigger_channel must be 1..16, got {trigger_channel!r}")
        self.trigger_channel = None if trigger_channel is None else int(trigger_channel)
        self.trigger_uv = float(trigger_uv)
        self.seed = seed
        self.daisy_fitted = daisy
        self.mains_hz = mains_hz
        self.clock_ppm = clock_ppm
        self.accel_counts = tuple(int(np.clip(round(float(g) / cy.ACCEL_SCALE_G), -32768, 32767))
                                  for g in accel_g)
        self._model_kwargs = model_kwargs
        self.codec = cy.CytonDeviceCodec()
        self.packets_sent = 0
        self.packets_dropped: list[int] = []  # stream packet numbers k never sent
        self._to_drop = 0
        # firmware state that survives a soft reset ('v')
        self.sample_rate_code = cy.DONGLE_SAMPLE_RATE_CODE
        self.board_mode = 0
        self.accel_on = True
        self.time_stamping = False
        self.packet_type = _ACCEL
        self.streaming = False
        self._model: EEGModel | None = None
        #: the rig trigger bus's cable on a digital input (``D11``...), read in board mode digital
        self.trigger: TriggerInput | None = None
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        """``v`` (boardReset): ADS(s) and accelerometer re-initialised, Daisy re-detected."""
        self.streaming = False
        self._init_ads()
        self._loff_reg = _LOFF_AFTER_BOOT
        self._counter = 0
        self._stream_t0 = 0.0
        self._stream_k = 0
        self._model = None
        self._pending: np.ndarray | None = None  # (16,) counts of the Daisy pair in flight
        self._axis_data = [0, 0, 0]
        self._aux_data = [0, 0, 0]
        self._marker: int | None = None

    def _init_ads(self) -> None:
        """Firmware ``initialize_ads``: reset the ADS(s), detect the Daisy, default channel
        settings, lead-off off. Called by ``v`` and by every sample-rate change."""
        self.daisy = self.daisy_fitted
        self._set_defaults()
        self._config2 = _CONFIG2_RESET
        self._loff_reg = 0x00

    def _set_defaults(self) -> None:
        self.settings = [cy.ChannelSettings(ch, *_fields(_DEFAULT)[1:]) for ch in range(1, 17)]
        self._use_bias = [True] * 16  # firmware useInBias / useSRB2: restored by channel on
        self._use_srb2 = [True] * 16
        self.leadoff = [(0, 0)] * 16  # (P, N) lead-off current per channel

    def _set_packet_type(self) -> None:
        """Firmware ``setCurPacketType``."""
        if self.time_stamping:
            self.packet_type = _ACCEL_TIME_SET if self.accel_on else _RAW_AUX_TIME_SET
        else:
            self.packet_type = _ACCEL if self.accel_on else _RAW_AUX

    @property
    def n_channels(self) -> int:
        return 16 if self.daisy else 8

    @property
    def packet_period(self) -> float:
        return 1.0 / (_PACKET_RATE * (1.0 + self.clock_ppm * 1e-6))

    @property
    def sample_rate_hz(self) -> int:
        """The ADS1299 rate (``~~``); streaming over the dongle is always at 250 Hz."""
        return cy.SAMPLE_RATE_CODES[self.sample_rate_code]

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

    def _restart_stream(self) -> None:
        """A ``streamSafe...`` command while streaming: the ADS stops and starts again,
        and ``startADS`` sets the packet counter back to 0."""
        if self.streaming:
            self._counter = 0
            self._pending = None

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
            return self._say("\n".join(lines) + "\n")
        if isinstance(ev, cy.StartStreaming):
            return self._start(t)
        if isinstance(ev, cy.StopStreaming):
            self.streaming = False
            return b""
        if isinstance(ev, cy.ChannelOff):  # deactivateChannel: PD set, SRB2 and bias cleared
            if ev.channel <= self.n_channels:
                i = ev.channel - 1
                self.settings[i] = _replace(self.settings[i], power_down=1, srb2=0, bias=0)
                self.leadoff[i] = (0, 0)
            self._restart_stream()
            return b""
        if isinstance(ev, cy.ChannelOn):  # activateChannel: SRB2 and bias as remembered
            if ev.channel <= self.n_channels:
                i = ev.channel - 1
                self.settings[i] = _replace(self.settings[i], power_down=0, srb2=int(self._use_srb2[i]),
                                            bias=int(self._use_bias[i]))
            self._restart_stream()
            return b""
        if isinstance(ev, cy.ChannelSettings):
            # the firmware answers Success before it looks for the Daisy, and then does not
            # touch a Daisy channel that is not there
            if ev.channel <= self.n_channels:
                self._apply_settings(ev)
            self._restart_stream()
            return self._idle_say(f"Success: Channel set for {ev.channel}")
        if isinstance(ev, (cy.ChannelSettingsError, cy.LeadOffError)):
            return self._idle_say(f"Failure: {ev.reason}")
        if isinstance(ev, (cy.SampleRateError, cy.BoardModeError)):
            # board-mode errors are printed even while streaming; sample-rate ones only idle
            say = self._say if isinstance(ev, cy.BoardModeError) else self._idle_say
            return say(f"Failure: {ev.reason}")
        if isinstance(ev, cy.LeadOffSettings):
            if ev.channel <= self.n_channels:
                self.leadoff[ev.channel - 1] = (ev.pchan, ev.nchan)
            self._restart_stream()
            return self._idle_say(f"Success: Lead off set for {ev.channel}")
        if isinstance(ev, cy.SetDefaultChannels):
            reply = self._idle_say("updating channel settings to default")
            self._set_defaults()
            self._restart_stream()
            return reply
        if isinstance(ev, cy.ReportDefaultChannels):
            return self._say("060110")
        if isinstance(ev, cy.SetSampleRate):
            self._set_sample_rate(ev.code)
            return self._idle_say(f"Success: Sample rate is {ev.rate_hz}Hz")
        if isinstance(ev, cy.QuerySampleRate):
            return self._say(f"Success: Sample rate is {self.sample_rate_hz}Hz")
        if isinstance(ev, cy.SetBoardMode):
            if ev.code != self.board_mode:  # setBoardMode returns early for the same mode
                self.board_mode = ev.code
                if ev.code in (2, 3, 4):  # analog, digital, marker: accelerometer off
                    self.accel_on = False
                elif ev.code == 0:
                    self.accel_on = True
                self._set_packet_type()
            return self._say(f"Success: {cy.BOARD_MODES[self.board_mode]}")
        if isinstance(ev, cy.QueryBoardMode):
            return self._say(f"Success: {cy.BOARD_MODES[self.board_mode]}")
        if isinstance(ev, cy.DaisyMode):
            if not ev.enabled:
                if self.daisy:
                    self.daisy = False
                    return self._idle_say("daisy removed")
                return b""
            prefix = ""
            if not self.daisy:
                self.daisy = self.daisy_fitted
                if not self.streaming:
                    prefix = "daisy attached" if self.daisy else "no daisy to attach!"
            return self._say(prefix + ("16" if self.daisy else "8"))
        if isinstance(ev, cy.QueryRegisters):
            return self._idle_say(self._register_dump())
        if isinstance(ev, cy.QueryVersion):
            return self._say(FIRMWARE_VERSION)
        if isinstance(ev, cy.TimeStamping):
            self.time_stamping = ev.enabled
            self._set_packet_type()
            return self._idle_say("Time stamp ON" if ev.enabled else "Time stamp OFF")
        if isinstance(ev, cy.TestSignal):
            mux, config2 = _TEST_SIGNALS[ev.code]
            if config2 is not None:
                self._config2 = config2
            for i in range(self.n_channels):
                self.settings[i] = _replace(self.settings[i], input_type=mux)
            self._restart_stream()
            return self._idle_say("Success: Configured internal test signal.")
        if isinstance(ev, cy.InsertMarker):
            self._marker = ord(ev.marker) & 0xFF
            return b""
        return b""  # unknown bytes: no serial reply

    def _apply_settings(self, ev: cy.ChannelSettings) -> None:
        """Firmware ``writeChannelSettings(N)``: SRB1 is one switch per ADS, so it follows
        the last ``x`` command for every channel of that ADS."""
        i = ev.channel - 1
        self.settings[i] = cy.ChannelSettings(*_fields(ev))
        self._use_bias[i] = bool(ev.bias)
        self._use_srb2[i] = bool(ev.srb2)
        first = 0 if i < 8 else 8
        for j in range(first, first + 8):
            if self.settings[j].srb1 != ev.srb1:
                self.settings[j] = _replace(self.settings[j], srb1=ev.srb1)

    def _set_sample_rate(self, code: int) -> None:
        """Firmware ``setSampleRate``: the new rate, then ``initialize_ads`` (defaults)."""
        self.sample_rate_code = code
        self._init_ads()
        self._restart_stream()

    def _start(self, t: float) -> bytes:
        if self.streaming:  # firmware restarts the ADS; the stream just goes on here
            self._counter = 0
            self._pending = None
            return b""
        if self.sample_rate_code != cy.DONGLE_SAMPLE_RATE_CODE:
            # not from the WiFi shield: the radio cannot carry more than 250 SPS
            self._set_sample_rate(cy.DONGLE_SAMPLE_RATE_CODE)
        self.streaming = True
        self._stream_t0 = t
        self._stream_k = 0
        self._counter = 0
        self._model = EEGModel(self.seed, fs=_PACKET_RATE / (2 if self.daisy else 1),
                               labels=EEG_LABELS_16[: self.n_channels],
                               mains_hz=self.mains_hz, **self._model_kwargs)  # type: ignore[arg-type]
        self._model_daisy = self.daisy
        self._pending = None
        if self.accel_on:
            self._axis_data = [0, 0, 0]  # enable_accel clears the axis data
        return b""

    # --------------------------------------------------------------- registers
    def _ads_registers(self, board: int) -> list[int]:
        chans = self.settings[8 * board: 8 * board + 8]
        clk_out = board == 0 and self.daisy  # the main ADS drives the Daisy's clock
        regs = [0x3E, (0xB0 if clk_out else 0x90) | self.sample_rate_code, self._config2, _CONFIG3,
                self._loff_reg]
        regs += [(s.power_down << 7) | (s.gain_code << 4) | (s.srb2 << 3) | s.input_type for s in chans]
        bias = sum(s.bias << k for k, s in enumerate(chans))
        loffp = sum(self.leadoff[8 * board + k][0] << k for k in range(8))
        loffn = sum(self.leadoff[8 * board + k][1] << k for k in range(8))
        regs += [bias, bias, loffp, loffn, 0x00, 0x00, 0x00, _GPIO_RESET,
                 0x20 if any(s.srb1 for s in chans) else 0x00, 0x00, 0x00]
        return regs

    def _register_dump(self) -> str:
        """``?`` (printAllRegisters): every ADS1299 register as ``NAME, addr, value, bits``,
        then the LIS3DH registers as ``0xAA VV``."""
        def ads(title: str, board: int) -> list[str]:
            rows = [title]
            for addr, (name, v) in enumerate(zip(_ADS_REGISTER_NAMES, self._ads_registers(board))):
                rows.append(f"{name}, {addr:02X}, {v:02X}, " + ", ".join(str((v >> b) & 1) for b in range(7, -1, -1)))
            return rows
        lines = [""] + ads("Board ADS Registers", 0)
        if self.daisy:
            lines += [""] + ads("Daisy ADS Registers", 1)
        lines += ["", "LIS3DH Registers"]
        for g, group in enumerate(_LIS3DH_GROUPS):
            lines += [f"0x{r:02X} {_LIS3DH_VALUES.get(r, 0):02X}" for r in group]
            if g < len(_LIS3DH_GROUPS) - 1:
                lines.append("")
        return "\n".join(lines) + "\n"

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
        daisy = self._model_daisy
        nch = 16 if daisy else 8
        # which packets open a new sample (with a Daisy: the even counters); the counter
        # only jumps between calls (settings commands), so it can be walked ahead here
        opens = []
        c, pending = self._counter, self._pending is not None
        for _ in range(n):
            new = not (daisy and c % 2 == 1 and pending)
            opens.append(new)
            pending = daisy and new
            c = (c + 1) % 256
        n_new = sum(opens)
        counts = np.zeros((nch, 0), dtype=np.int64)
        if n_new:
            chans = self.settings[:nch]
            scale = cy.uv_scale(np.array([s.gain for s in chans], dtype=float))
            uv = self._model.generate(n_new)
            if self.trigger is not None and self.trigger_channel is not None and not daisy:
                uv[self.trigger_channel - 1] += self._analog_trigger(n_new)
            counts = np.clip(np.round(uv / scale[:, None]), -(2**23), 2**23 - 1).astype(np.int64)
            # a powered-down or shorted input reads 0 (ADS1299 output code of a shorted input)
            counts[np.array([s.power_down == 1 or s.input_type == 1 for s in chans])] = 0
        out = bytearray()
        col = 0
        for k, new in zip(range(self._stream_k, self._stream_k + n), opens):
            if not daisy:
                half = counts[:, col]
                col += 1
            elif new:  # Daisy half (even counter) opens a new 16-channel sample
                self._pending = counts[:, col]
                col += 1
                half = self._pending[8:16]
            else:  # main board half (odd counter) completes it
                assert self._pending is not None
                half = self._pending[:8]
                self._pending = None
            out += self._encode(tuple(int(v) for v in half), k)
        self._stream_k += n
        return bytes(out)

    def _analog_trigger(self, n: int) -> np.ndarray:
        """The trigger line as the next ``n`` samples of ``trigger_channel`` read it (µV): each
        sample the ADS1299's sinc^3 average of the line over the 3 periods before it (the window of
        sample ``k`` ends at its time; a change ``j`` modulator ticks before it counts
        ``C[j]`` of its step, :func:`_sinc3_cumulative`)."""
        assert self.trigger is not None
        T = self.packet_period
        t = self._stream_t0 + (self._stream_k + np.arange(n)) * T
        lo = float(t[0]) - 3 * T
        level = np.full(n, 1.0 if self.trigger.level(lo) else 0.0)
        tr = self.trigger.transitions(lo, float(t[-1]))
        if tr:
            c = _sinc3_cumulative()
            for t_tr, d in tr:
                m = np.floor((t - t_tr) / T * _SINC3_N + 1e-9).astype(np.int64) + 1
                level += d * np.where(t >= t_tr, c[np.clip(m, 0, len(c) - 1)], 0.0)
        return self.trigger_uv * level

    def _encode(self, chans: tuple[int, ...], k: int) -> bytes:
        c = self._counter
        if self.accel_on and k % 10 == 0:  # LIS3DH at 25 Hz: a new reading every 10th packet
            self._axis_data = list(self.accel_counts)
        if self._marker is not None and self.board_mode == 4:  # marker mode: into auxData[0]
            self._aux_data[0] = self._marker
            self._marker = None
        if self.trigger is not None and self.board_mode == 3:  # digital read (updateChannelData)
            self._aux_data = _digital_aux(self.trigger, self._stream_t0 + k * self.packet_period)
        pt = self.packet_type
        ts = None
        if pt in (_ACCEL_TIME_SET, _ACCEL_TIME_SYNC, _RAW_AUX_TIME_SET, _RAW_AUX_TIME_SYNC):
            # millis() when the sample was read (lastSampleTime); 1e-6 keeps float error out of the floor
            ts = int(np.floor((self._stream_t0 + k * self.packet_period) * 1000 + 1e-6)) & 0xFFFFFFFF
        if pt == _ACCEL:
            s = cy.CytonSample(c, chans, 0xC0, b"\x00" * 6, tuple(self._axis_data), None)  # type: ignore[arg-type]
            self._axis_data = [0, 0, 0]  # LIS3DH_zeroAxisData after every 0xC0 packet
        elif pt in (_ACCEL_TIME_SET, _ACCEL_TIME_SYNC):
            axis = cy.timestamp_accel_axis(c)
            reading = None if axis is None else cy.AccelAxisReading(axis, self._axis_data[axis])
            s = cy.CytonSample(c, chans, 0xC0 | pt, b"\x00" * 6, None, ts, reading)
            self.packet_type = _ACCEL_TIME_SYNC
        else:
            if pt == _RAW_AUX:
                aux = b"".join(int(v).to_bytes(2, "big", signed=True) for v in self._aux_data)
            else:
                aux = int(self._aux_data[0]).to_bytes(2, "big", signed=True) + b"\x00" * 4
            s = cy.CytonSample(c, chans, 0xC0 | pt, aux, None, ts)
            self._aux_data = [0, 0, 0]  # zeroAuxData after every raw-aux packet
            if pt == _RAW_AUX_TIME_SET:
                self.packet_type = _RAW_AUX_TIME_SYNC
        self._counter = (c + 1) % 256
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

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): ``n`` packets lost on the radio (:meth:`drop_packets`)."""
        self.drop_packets(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` commands (not ``b``/``s``) answer
        ``Failure: <message>$$$`` (the firmware has no numeric codes; ``code`` is ignored)."""
        self.queue_error(message, n, code)

    def truth(self) -> dict:
        d: dict = {"streaming": self.streaming, "daisy": self.daisy, "gains": self.gains().tolist(),
                   "packets_sent": self.packets_sent, "packet_rate_hz": 1 / self.packet_period,
                   "ads_sample_rate_hz": self.sample_rate_hz, "board_mode": cy.BOARD_MODES[self.board_mode],
                   "time_stamping": self.time_stamping,
                   "accel_g": [a * cy.ACCEL_SCALE_G for a in self.accel_counts],
                   "lead_off": [list(p) for p in self.leadoff[: self.n_channels]],
                   "trigger_channel": self.trigger_channel, "trigger_uv": self.trigger_uv}
        if self._model is not None:
            d.update(self._model.truth())
        return d


_DIGITAL_AUX_BITS = {"D11": (0, 8), "D12": (0, 0), "D13": (1, 8), "D17": (1, 0), "D18": (2, 0)}


def _digital_aux(trigger: TriggerInput, t: float) -> list[int]:
    """The firmware's digital-read aux words (board mode 3): ``auxData[0] = D11 << 8 | D12``,
    ``auxData[1] = D13 << 8 | D17``, ``auxData[2] = D18``; the cabled input read at ``t``, the others 0."""
    aux = [0, 0, 0]
    word, bit = _DIGITAL_AUX_BITS.get(trigger.line, (0, 8))
    if trigger.level(t):
        aux[word] |= 1 << bit
    return aux


_SINC3_C: np.ndarray | None = None


def _sinc3_cumulative() -> np.ndarray:
    """``C[m]``: the ADS1299 sinc^3 filter's (``((1 - z^-N) / (N (1 - z^-1)))^3``, N = 4096) step
    response ``m`` modulator ticks after the step (0 at ``m = 0``, 1 from ``3N - 2`` on)."""
    global _SINC3_C
    if _SINC3_C is None:
        n = _SINC3_N
        i = np.arange(2 * n - 1)
        tri = np.minimum(i + 1, 2 * n - 1 - i).astype(np.float64)  # box * box
        ct = np.concatenate([[0.0], np.cumsum(tri)])
        j = np.arange(3 * n - 2)
        h3 = ct[np.minimum(j + 1, len(ct) - 1)] - ct[np.maximum(j + 1 - n, 0)]  # (box * box) * box
        _SINC3_C = np.concatenate([[0.0], np.cumsum(h3)]) / h3.sum()
    return _SINC3_C


def _fields(s: cy.ChannelSettings) -> tuple[int, ...]:
    return (s.channel, s.power_down, s.gain_code, s.input_type, s.bias, s.srb2, s.srb1)


def _replace(s: cy.ChannelSettings, **kw: int) -> cy.ChannelSettings:
    f = dict(zip(("channel", "power_down", "gain_code", "input_type", "bias", "srb2", "srb1"), _fields(s)))
    f.update(kw)
    return cy.ChannelSettings(**f)


def make(**options: object) -> CytonInterface:
    """Factory for ``medacq sim cyton`` / the rig (options: :class:`CytonInterface` args:
    ``seed``, ``daisy``, ``mains_hz``, ``clock_ppm``, ``accel_g``, ``trigger_channel``, ``trigger_uv`` and
    :class:`EEGModel` keywords)."""
    return CytonInterface(**options)  # type: ignore[arg-type]
