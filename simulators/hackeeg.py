"""Simulated HackEEG (Arduino Due + ADS1298 shield) running hackeeg-driver-arduino v0.4.0,
as an 8-lead ECG front end (I, II, V1–V6) fed by :class:`EKGModel`.

State machine as in the firmware: text mode at power-up; ``jsonlines``/``messagepack``/
``text`` switch modes (the reply already in the new mode); ``rdatac`` streams one record
per conversion, ``sdatac`` stops; ``start`` resets the sample number; ``rreg``/``wreg``
access an ADS1298 register file (CONFIG1 sets the rate, CHnSET gain / mux / power-down).
The ADC converts continuously from power-up (the firmware sets START high), so samples
flow as soon as ``rdatac`` is on; ``stop`` is answered but not modelled.

Mode rules and command tables as in starcat-io/hackeeg-driver-arduino
``hackeeg_driver/hackeeg_driver.ino`` (``setup()`` registrations, ``loop()``) and
``hackeeg_driver/JsonCommand.cpp`` (``readSerial``): text commands are understood only in
text mode, JSON commands only in JSON Lines and MessagePack modes. A line the JSON parser
cannot read is answered ``{"STATUS_CODE":400,"STATUS_TEXT":"Bad Request"}``; JSON without a
known ``COMMAND`` gets ``406 Unrecognized command`` (JSON), and so does ``version``, which
the firmware registers for the text parser only (use ``status`` in JSON modes). Every such
line is counted in :attr:`HackEEGInterface.malformed_commands`.
"""

from __future__ import annotations

import numpy as np

from medacq.protocols import hackeeg as he

from ._interface import DeviceInterface
from .biosignal_models import DEVICE_LEADS, EKGModel
from .trigger_bus import TriggerInput

__all__ = ["HackEEGInterface", "DRIVER_VERSION", "make"]

DRIVER_VERSION = "v0.4.0"
_N_REGS = 0x1A
UV_BLOCK_S = 0.05
"""How far ahead (s of samples) the simulated board asks its physiology model at once."""
#: Commands the firmware's text parser knows (``serialCommand.addCommand`` in ``setup()``).
TEXT_COMMANDS = frozenset({
    "nop", "micros", "version", "status", "serialnumber", "text", "jsonlines", "messagepack",
    "ledon", "ledoff", "boardledoff", "boardledon", "wakeup", "standby", "reset", "start", "stop",
    "rdatac", "sdatac", "rdata", "rreg", "wreg", "base64", "hex", "help"})
#: Commands the firmware's JSON parser knows (``jsonCommand.addCommand``): no ``version``,
#: ``wakeup``, ``standby``, ``base64``, ``hex`` or ``help``.
JSON_COMMANDS = frozenset({
    "nop", "micros", "ledon", "ledoff", "boardledoff", "boardledon", "status", "reset", "start",
    "stop", "rdatac", "sdatac", "serialnumber", "text", "jsonlines", "messagepack", "rreg", "wreg",
    "rdata"})
_TEXT_UNRECOGNIZED = b"406 Error: Unrecognized command.\r\n\r\n"


class HackEEGInterface(DeviceInterface):
    """Args:
        seed: model seed.
        rate: initial sample rate (SPS), sets CONFIG1 (ADS1298: 250…32000).
        gain: initial PGA gain of every channel (1, 2, 3, 4, 6, 8, 12).
        heart_rate_bpm, mains_hz: EKG model parameters (mains is unused by the EKG model
            and kept for symmetry).
        clock_ppm: board oscillator error; conversions every 1/(rate·(1+ppm·1e-6)) s.
        banner_on_connect: print ``Ready`` when a host connects (the firmware prints it at
            boot only; the native USB port does not reset the board on open).
        usb_frame_s: samples leave in batches at this period (USB transfers data in 1 ms
            frames; also keeps a paced 16 kSPS simulator from waking 16000 times a second).
    """

    def __init__(self, seed: int = 0, rate: int = 500, gain: int = 6,
                 heart_rate_bpm: float = 72.0, clock_ppm: float = 0.0,
                 banner_on_connect: bool = False, usb_frame_s: float = 0.001,
                 **model_kwargs: object) -> None:
        self.seed = seed
        self.usb_frame_s = usb_frame_s
        self.heart_rate_bpm = heart_rate_bpm
        self.clock_ppm = clock_ppm
        self.banner_on_connect = banner_on_connect
        self._model_kwargs = model_kwargs
        self._init_rate = rate
        self._init_gain = gain
        self.codec = he.HackEEGDeviceCodec()
        self.samples_sent = 0
        self.malformed_commands = 0  # host lines the firmware's parser rejected (400/402/406)
        self.samples_dropped: list[int] = []  # sample numbers never sent
        self._to_drop = 0
        self._reset_registers()
        self.rdatac = False
        self.sample_number = 0
        self._model: EKGModel | None = None
        self._uv = np.zeros((len(DEVICE_LEADS), 0))  # the model's samples generated, not yet sent (µV)
        self._t0 = 0.0
        self._k = 0
        #: the rig trigger bus's cable on a GPIO input (``GPIO1``..``GPIO4``): its level is the
        #: status word's GPIO data bit (low nibble = GPIOD4..GPIOD1, GPIO1 in bit 0)
        self.trigger: TriggerInput | None = None

    def _reset_registers(self) -> None:
        self.regs = bytearray(_N_REGS)
        self.regs[he.REG_ID] = he.ADS1298_ID
        self.regs[he.REG_CONFIG1] = he.config1_for_rate(self._init_rate)
        for ch in range(8):
            self.regs[he.REG_CHNSET + ch] = he.chnset(self._init_gain)

    @property
    def rate(self) -> int:
        return he.rate_from_config1(self.regs[he.REG_CONFIG1])

    @property
    def period(self) -> float:
        return 1.0 / (self.rate * (1.0 + self.clock_ppm * 1e-6))

    def gains(self) -> np.ndarray:
        return np.array([he.gain_from_chnset(self.regs[he.REG_CHNSET + c]) for c in range(8)])

    def _new_model(self) -> EKGModel:
        """The physiology at the current rate, with the constructor's model arguments."""
        return EKGModel(self.seed, fs=float(self.rate), heart_rate_bpm=self.heart_rate_bpm,
                        **self._model_kwargs)  # type: ignore[arg-type]

    def _set_model(self) -> None:
        """Start the physiology anew (:meth:`_new_model`), nothing generated ahead."""
        self._model = self._new_model()
        self._uv = np.zeros((len(DEVICE_LEADS), 0))

    def _take_uv(self, n: int) -> np.ndarray:
        """The model's next ``n`` samples, ``(leads, n)`` µV, generated :data:`UV_BLOCK_S` at a time:
        the model costs ~0.1 ms a call whatever ``n``, and a paced simulator sends one sample per
        USB frame (500 calls/s at 500 SPS). The values are those of one call per sample, to float
        rounding (≤ 1e-12 µV, far below a count): the model's noise is drawn sample by sample in the
        same order, its waves are functions of time."""
        assert self._model is not None
        buf = self._uv
        if buf.shape[1] < n:
            more = max(n - buf.shape[1], int(np.ceil(self.rate * UV_BLOCK_S)))
            buf = np.concatenate([buf, self._model.generate(more, DEVICE_LEADS)], axis=1)
        self._uv = buf[:, n:]
        return buf[:, :n]

    def _active(self) -> np.ndarray:
        return np.array([(self.regs[he.REG_CHNSET + c] & 0x07) != he.MUX_SHORTED
                         and not self.regs[he.REG_CHNSET + c] & 0x80 for c in range(8)])

    # ------------------------------------------------------------- interface
    def on_connect(self, t: float) -> bytes:
        return self.codec.send(he.TextLine("Ready")) if self.banner_on_connect else b""

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.dispatch(self.codec, data, lambda ev: self._handle(ev, t), count_garbage=False)

    def _ok(self, text: str = "Ok", data: object = None) -> bytes:
        return self.codec.send(he.HackEEGResponse(200, text, data))

    def _error(self, code: int, text: str) -> bytes:
        return self.codec.send(he.HackEEGResponse(code, text))

    def _malformed(self, ev: he.MalformedCommand, t: float) -> bytes:
        """The firmware's answer to a line its current parser cannot use (counted in
        :attr:`malformed_commands` unless the firmware runs it after all)."""
        if self.codec.mode != he.TEXT:
            self.malformed_commands += 1
            if ev.reason == he.NO_COMMAND:  # JsonCommand: defaultHandler("")
                return self._error(406, "Unrecognized command")
            return self._error(400, "Bad Request")  # JsonCommand: deserializeJson failed
        if ev.command not in TEXT_COMMANDS:
            self.malformed_commands += 1
            return _TEXT_UNRECOGNIZED
        if ev.command in ("rreg", "wreg"):  # hex_to_long failed
            self.malformed_commands += 1
            return b"402 Error: expected hexidecimal digits.\r\n\r\n"
        if ev.command in (he.TEXT, he.JSONLINES, he.MESSAGEPACK):
            self.codec.mode = ev.command  # type: ignore[assignment]
        return self._handle(he.HackEEGCommand(ev.command), t)  # other commands ignore arguments

    def _handle(self, ev: object, t: float) -> bytes:
        injected = self.take_injected_error() if isinstance(ev, he.HackEEGCommand) else None
        if injected is not None:  # fault side door: the firmware answers with an error status
            return self.codec.send(he.HackEEGResponse(injected[1] or 500, injected[0]))
        if isinstance(ev, he.MalformedCommand):
            return self._malformed(ev, t)
        assert isinstance(ev, he.HackEEGCommand)
        text = self.codec.mode == he.TEXT
        if ev.command not in (TEXT_COMMANDS if text else JSON_COMMANDS):
            if text:
                return _TEXT_UNRECOGNIZED
            return self._error(406, "Unrecognized command")  # unrecognizedJsonLines()
        c, p = ev.command, ev.parameters
        if c in ("nop", "text", "jsonlines", "messagepack", "ledon", "ledoff", "boardledon",
                 "boardledoff", "wakeup", "standby", "stop"):
            return self._ok()
        if c == "version":
            return self._ok(DRIVER_VERSION)
        if c == "micros":
            us = int(t * 1e6) & 0xFFFFFFFF
            return self._ok() + f"{us}\r\n".encode() if text else self._ok(data=us)
        if c == "status":
            if text:
                lines = ["200 Ok", f"Driver version: {DRIVER_VERSION}", "Board name: HackEEG",
                         "Board maker: Starcat LLC", "Hardware type: ADS1298", "Max channels: 8",
                         f"Number of active channels: {int(self._active().sum())}", ""]
                return "\r\n".join(lines).encode() + b"\r\n"
            return self._ok(data={"driver_version": DRIVER_VERSION, "board_name": "HackEEG",
                                  "maker_name": "Starcat LLC", "hardware_type": "ADS1298",
                                  "max_channels": 8, "active_channels": int(self._active().sum())})
        if c == "serialnumber":
            return self.codec.send(he.HackEEGResponse(501, "Not Implemented"))
        if c == "reset":
            self._reset_registers()
            self.rdatac = False
            return self._ok()
        if c == "start":
            self.sample_number = 0
            return self._ok()
        if c == "rdatac":
            if not self._active().any():
                return self.codec.send(he.HackEEGResponse(502, "No Active Channels"))
            if not self.rdatac:
                self.rdatac = True
                self._t0 = t
                self._k = 0
                self._set_model()
            return self._ok()
        if c == "sdatac":
            self.rdatac = False
            return self._ok()
        if c == "rdata":
            if self._model is None:
                self._set_model()
            return (self._ok() if text else b"") + self._samples(1, t, advance_clock=False)
        if c == "rreg":
            if len(p) != 1 or not 0 <= p[0] < _N_REGS:
                return self.codec.send(he.HackEEGResponse(500, "Error"))
            v = self.regs[p[0]]
            if text:
                return f"200 Ok (Read Register {p[0]:02X}) \r\n{v:02X}\r\n\r\n".encode()
            return self._ok(data=v)
        if c == "wreg":
            if len(p) != 2 or not 0 < p[0] < _N_REGS:
                return self.codec.send(he.HackEEGResponse(500, "Error"))
            reg, val = p
            if reg == he.REG_CONFIG1 and (val & 0x07) == 7:
                return self.codec.send(he.HackEEGResponse(500, "Error"))
            self.regs[reg] = val
            if reg == he.REG_CONFIG1 and self._model is not None:
                # rate change: restart the physiology at the new rate from now
                self._set_model()
                self._t0, self._k = t, 0
            if text:
                return f"200 Ok (Write Register {reg:02X} {val:02X}) \r\n\r\n".encode()
            return self._ok()
        # known to the firmware but not modelled here (base64, hex, help)
        if text:
            return _TEXT_UNRECOGNIZED
        return self._error(406, "Unrecognized command")

    # --------------------------------------------------------------- streaming
    def next_deadline(self) -> float | None:
        if not self.rdatac:
            return None
        t = self._t0 + self._k * self.period
        if self.usb_frame_s > 0:  # the end of the USB frame this sample falls in
            t = (np.floor(t / self.usb_frame_s + 1e-9) + 1) * self.usb_frame_s
        return float(t)

    def poll(self, t: float) -> bytes:
        if not self.rdatac:
            return b""
        due = int(np.floor((t - self._t0) / self.period + 1e-9)) + 1
        n = due - self._k
        return self._samples(n, t) if n > 0 else b""

    def _samples(self, n: int, t: float, advance_clock: bool = True) -> bytes:
        uv = self._take_uv(n)
        scale = 2.4e6 / self.gains().astype(float) / (2**23 - 1)
        counts = np.clip(np.round(uv / scale[:, None]), -(2**23), 2**23 - 1).astype(np.int64)
        counts[~self._active()] = 0
        out = bytearray()
        for j in range(n):
            k = self._k + j
            ts_us = int(round((self._t0 + k * self.period) * 1e6)) & 0xFFFFFFFF
            status = 0xC00000
            trig = self.trigger
            if trig is not None and trig.level(self._t0 + k * self.period):
                pin = trig.line.removeprefix("GPIO")
                status |= 1 << (int(pin) - 1 if pin in ("1", "2", "3", "4") else 0)
            s = he.HackEEGSample(ts_us, self.sample_number & 0xFFFFFFFF, status,
                                 tuple(int(v) for v in counts[:, j]))
            self.sample_number += 1
            if self._to_drop:  # fault side door: the sample never left the board
                self._to_drop -= 1
                self.samples_dropped.append(s.sample_number)
                continue
            out += self.codec.send(s)
        if advance_clock:
            self._k += n
        self.samples_sent += n
        return bytes(out)

    def drop_samples(self, n: int) -> None:
        """Fault side door: the next ``n`` samples are lost (their sample numbers are consumed)."""
        self._to_drop += int(n)

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): ``n`` samples lost (:meth:`drop_samples`)."""
        self.drop_samples(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` commands get a response with
        status ``code`` (default 500) and status text ``message``."""
        self.queue_error(message, n, code)

    def truth(self) -> dict:
        d: dict = {"rdatac": self.rdatac, "mode": self.codec.mode, "rate": self.rate,
                   "gains": self.gains().tolist(), "samples_sent": self.samples_sent,
                   "malformed_commands": self.malformed_commands,
                   "leads": DEVICE_LEADS}
        if self._model is not None:
            d.update(self._model.truth())
            sent = self._model.samples_generated - self._uv.shape[1]  # not what is generated ahead
            d["beat_times_s"] = self._model.beat_times(until_s=sent / self._model.fs)
        return d


def make(**options: object) -> HackEEGInterface:
    """Factory for ``medacq sim hackeeg`` / the rig (options: :class:`HackEEGInterface` args:
    ``seed``, ``rate``, ``gain``, ``heart_rate_bpm``, ``clock_ppm``, ``usb_frame_s`` ...)."""
    return HackEEGInterface(**options)  # type: ignore[arg-type]
