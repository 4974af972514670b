"""Simulated Sciospec-style EIT16/32: device state machine over the codec's device role.

Behaviour (see :mod:`medacq.protocols.sciospec`):

* Every well-formed command is answered ``18 01 83 18`` (executed), ``18 01 81 18``
  (not executed: bad value, or a setup change while measuring) or ``18 01 82 18``
  (not recognised). Garbage bytes are dropped silently (and counted in ``truth()``).
* ``B0 01 01 B0`` clears the setup (burst count 0 = continuous, 10 fps, 10 kHz, 1 mA,
  no injection pairs). Frame rate is accepted in 1..50 fps. Injection pairs are 1-based.
* Start needs at least one injection pair. While running, one EIT frame is emitted per
  ``1/fps`` s: for every injection pair, every frequency row and every 16-channel group, a
  140-byte data frame holding the 16 electrode potentials (V, complex). The timestamp is
  device time in ms since start. A non-zero burst count stops after that many frames.
* ``B1 01 <opt> B1`` returns the option's value (burst count, frame rate, frequencies,
  amplitude, excitation sequence) then an ack. ``D1 00 D1`` returns an ID string.

Current injection: the device drives current into the electrodes only while measuring
(:attr:`SciospecSimulator.injecting`); ``B4 01 00 B4`` (stop) ends it in any state.

Timing follows :class:`~medacq.simulators._interface.DeviceInterface`: frames are due at
``t_start + i/fps``; ``poll(t)`` emits all frames due by ``t``.
"""

from __future__ import annotations

import struct

from typing import Any

import numpy as np

from medacq.protocols import sciospec as sc
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.eit_phantom import PhantomOptions, ThoraxPhantom, make_phantom

__all__ = ["SciospecSimulator", "make"]


class SciospecSimulator(DeviceInterface):
    """Sciospec EIT16/32 device model (``n_el`` 16 or 32) bound to a :class:`ThoraxPhantom`."""

    def __init__(self, phantom: ThoraxPhantom | None = None, n_el: int = 16, seed: int = 0) -> None:
        if n_el not in (16, 32):
            raise ValueError("Sciospec simulator supports 16 or 32 electrodes")
        self.phantom = phantom or ThoraxPhantom(n_el=n_el, seed=seed)
        if self.phantom.n_el != n_el:
            raise ValueError("phantom electrode count differs from n_el")
        self.n_el = n_el
        self.codec = sc.SciospecDeviceCodec()
        self.garbage_bytes = 0
        self.frames_sent = 0
        self.subframes_dropped = 0
        self._drop = 0
        self._reset_setup()
        self.running = False
        self._t_start = 0.0
        self._frame_index = 0
        self._next_t: float | None = None

    def drop_subframes(self, n: int) -> None:
        """Fault side door: skip the next ``n`` 140-byte data frames (device FIFO overrun)."""
        self._drop += int(n)

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): ``n`` data sub-frames lost
        (:meth:`drop_subframes`); the device timestamps show the hole."""
        self.drop_subframes(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` commands are acknowledged with
        status ``code`` (default 0x81, NOT_EXECUTED) instead of being executed (``message`` is
        not on the wire: the protocol's replies are codes only)."""
        self.queue_error(message, n, code)

    @property
    def injecting(self) -> bool:
        """Current is being injected into the electrodes now (a measurement runs)."""
        return self.running

    def _reset_setup(self) -> None:
        self.burst_count = 0
        self.fps = 10.0
        self.frequencies = (10_000.0, 10_000.0, 1, False)
        self.amplitude_a = 1e-3
        self.pairs: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ DeviceInterface

    def on_connect(self, t: float) -> bytes:
        self.codec = sc.SciospecDeviceCodec()
        return b""

    def on_disconnect(self, t: float) -> None:
        self.running = False
        self._next_t = None

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.dispatch(self.codec, data, lambda ev: self._handle(ev, t))

    def poll(self, t: float) -> bytes:
        out = bytearray()
        while self.running and self._next_t is not None and self._next_t <= t + 1e-12:
            out += self._emit_frame(self._next_t)
            self._frame_index += 1
            if self.burst_count and self._frame_index >= self.burst_count:
                self.running = False
                self._next_t = None
            else:
                self._next_t = self._t_start + self._frame_index / self.fps
        return bytes(out)

    def next_deadline(self) -> float | None:
        return self._next_t if self.running else None

    def truth(self) -> dict:
        d = self.phantom.truth()
        d.update(
            fps=self.fps,
            burst_count=self.burst_count,
            pairs=list(self.pairs),
            frames_sent=self.frames_sent,
            subframes_dropped=self.subframes_dropped,
            garbage_bytes=self.garbage_bytes,
            running=self.running,
            injecting=self.injecting,
        )
        return d

    # ------------------------------------------------------------------ state machine

    def _ack(self, code: int) -> bytes:
        return self.codec.send(sc.Ack(code))

    def _handle(self, ev: sc.SciospecCommand, t: float) -> bytes:
        ACK, NACK = sc.AckCode.ACK, sc.AckCode.NOT_EXECUTED
        injected = self.take_injected_error()
        if injected is not None:  # fault side door: the device refuses the command
            return self._ack(injected[1] if injected[1] is not None else NACK)
        if isinstance(ev, sc.StopMeasurement):
            self.running = False
            self._next_t = None
            return self._ack(ACK)
        if isinstance(ev, sc.GetDeviceInfo):
            return self.codec.send(sc.DeviceInfo(f"medacq-sim EIT{self.n_el}".encode())) + self._ack(ACK)
        if isinstance(ev, sc.GetSetup):
            data = self._setup_value(ev.option)
            if data is None:
                return self._ack(NACK)
            return self.codec.send(sc.SetupReply(ev.option, data)) + self._ack(ACK)
        if self.running:
            # setup changes and a second start are refused while measuring
            return self._ack(NACK if not isinstance(ev, sc.RawCommand) else sc.AckCode.NOT_RECOGNISED)
        if isinstance(ev, sc.ResetSetup):
            self._reset_setup()
        elif isinstance(ev, sc.SetBurstCount):
            self.burst_count = ev.count
        elif isinstance(ev, sc.SetFrameRate):
            if not 1.0 <= ev.fps <= 50.0:
                return self._ack(NACK)
            self.fps = float(ev.fps)
        elif isinstance(ev, sc.SetFrequencies):
            self.frequencies = (ev.fmin, ev.fmax, ev.count, ev.log_scale)
        elif isinstance(ev, sc.SetAmplitude):
            self.amplitude_a = ev.amperes
        elif isinstance(ev, sc.AddInjectionPair):
            if not (1 <= ev.inj <= self.n_el and 1 <= ev.gnd <= self.n_el):
                return self._ack(NACK)
            self.pairs.append((ev.inj, ev.gnd))
        elif isinstance(ev, sc.SetOutputConfig):
            pass
        elif isinstance(ev, sc.StartMeasurement):
            if not self.pairs:
                return self._ack(NACK)
            self.running = True
            self._t_start = t
            self._frame_index = 0
            self._next_t = t
        else:
            return self._ack(sc.AckCode.NOT_RECOGNISED)
        return self._ack(ACK)

    def _setup_value(self, option: int) -> bytes | None:
        if option == sc.SetupOption.BURST_COUNT:
            return struct.pack(">H", self.burst_count)
        if option == sc.SetupOption.FRAME_RATE:
            return struct.pack(">f", self.fps)
        if option == sc.SetupOption.FREQUENCIES:
            fmin, fmax, n, log = self.frequencies
            return struct.pack(">ffHB", fmin, fmax, n, int(log))
        if option == sc.SetupOption.AMPLITUDE:
            return struct.pack(">d", self.amplitude_a)
        if option == sc.SetupOption.EXCITATION_SEQUENCE:
            return bytes(b for p in self.pairs for b in p)
        return None

    def _frequency_list(self) -> np.ndarray:
        fmin, fmax, n, log = self.frequencies
        return np.geomspace(fmin, fmax, n) if log and n > 1 else np.linspace(fmin, fmax, n)

    def _emit_frame(self, t_dev: float) -> bytes:
        ex = np.array(self.pairs, dtype=np.int64) - 1
        ph = self.phantom
        saved = ph.current_a
        ph.current_a = self.amplitude_a
        try:
            U = ph.electrode_potentials(t_dev, ex)  # (n_exc, n_el) V
        finally:
            ph.current_a = saved
        freqs = self._frequency_list()
        n_groups = self.n_el // sc.CHANNELS_PER_GROUP
        n_sub = len(self.pairs) * len(freqs) * n_groups
        t_rel = t_dev - self._t_start
        out = bytearray()
        k = 0
        for e, (inj, gnd) in enumerate(self.pairs):
            for r, f in enumerate(freqs):
                # small capacitive phase lag growing with frequency
                phase = -0.02 * (f / 100e3)
                vals = (U[e] * np.exp(1j * phase)).astype(np.complex64)
                for g in range(n_groups):
                    ts = int(round(1000.0 * (t_rel + k / (n_sub * self.fps))))
                    k += 1
                    if self._drop:
                        self._drop -= 1
                        self.subframes_dropped += 1
                        continue
                    out += sc.encode_data_frame(
                        sc.DataFrame(g + 1, inj, gnd, r + 1, ts, vals[16 * g : 16 * (g + 1)])
                    )
        self.frames_sent += 1
        return bytes(out)


def make(**options: Any) -> SciospecSimulator:
    """Factory for ``medacq sim sciospec`` / ``medacq up``.

    Options: ``n_el`` (16 or 32) plus every :class:`PhantomOptions` field
    (``seed``, ``respiratory_rate_bpm``, ``inclusions``, ``snr_db``, ``warm``...).
    """
    n_el = int(options.pop("n_el", 16))
    opts = PhantomOptions.model_validate(options)
    return SciospecSimulator(make_phantom(n_el, opts), n_el=n_el, seed=opts.seed)
