"""Simulated QuSpin-style OPM (QZFM) sensor, one per serial port, over
:mod:`medacq.protocols.quspin` and :class:`MEGModel`.

Behaviour (modelled on ucn-triumf/QZFM's expectations; the ``#`` message texts are ours):
idle, the sensor prints status blocks (``~04``/``~05``/``~07``/``~08``/``~09`` and
``|1``…``|5`` LED lines) at 7.5 Hz; ``>`` auto-starts (laser on at once, cell-temperature
lock after 2 s, laser lock after 3 s); ``7`` starts ``!<int>`` samples at 200 Hz and prints a
``#`` message, ``8`` stops them; ``D``/``E`` field zeroing on/off; ``9`` calibrates (only
once field-zeroed); ``V`` field reset; ``e`` reboot. While streaming, an LED that changes
(e.g. laser lock reached after the stream started) is reported at once as a ``|<led><0|1>``
line between samples (our choice: the host codec and driver read them mid-stream).

Stream sample index: samples are numbered from 0 at each ``7`` (:attr:`QuSpinInterface.stream_index`);
the first streamed sample is model sample :attr:`QuSpinInterface.stream_start`, so a test can
regenerate what was sent with :class:`MEGModel`. Fault side door: :meth:`QuSpinInterface.drop_samples`
(samples never leave the sensor, their slot in time passes: a loss with no backlog, unlike an
adapter ``stall``, after which the backlog arrives late).
"""

from __future__ import annotations

import numpy as np

from medacq.protocols import quspin as qs

from ._interface import DeviceInterface, FaultNotSupported
from .biosignal_models import MEGModel

__all__ = ["QuSpinInterface", "make"]

_STATUS_PERIOD = 1 / 7.5


class QuSpinInterface(DeviceInterface):
    """Args:
        seed: model seed; sensor: index on the rig (also seeds the model);
        serial: sensor serial string reported in messages (e.g. ``"AAL9"``);
        fs: sample rate (200 Hz); clock_ppm: sensor clock error; model_kwargs: MEGModel.
    """

    def __init__(self, seed: int = 0, sensor: int = 0, serial: str = "", fs: float = 200.0,
                 clock_ppm: float = 0.0, **model_kwargs: object) -> None:
        self.seed, self.sensor = seed, sensor
        self.serial = serial or f"S{sensor:03d}"
        self.fs = fs
        self.clock_ppm = clock_ppm
        self._model_kwargs = model_kwargs
        self.codec = qs.QuSpinDeviceCodec()
        self.samples_sent = 0
        self.samples_dropped: list[int] = []  # stream indices never sent (side door)
        self._drops: list[tuple[int, int]] = []  # pending [first, end) stream-index ranges to drop
        self._boot(0.0)

    def _boot(self, t: float) -> None:
        self.model = MEGModel(self.seed, fs=self.fs, sensor=self.sensor, **self._model_kwargs)  # type: ignore[arg-type]
        self.streaming = False
        self.started_at: float | None = None
        self.axis = "z"
        self._t0 = t
        self._k = 0          # samples consumed from the model (sample clock)
        self._status_t = t   # next status block
        self.stream_start = 0  # model sample index of stream sample 0 (set by ``7``)
        self.stream_index = 0  # index of the next stream sample (sent or dropped)
        self._led_sent: dict[int, bool] = {}

    @property
    def period(self) -> float:
        return 1.0 / (self.fs * (1.0 + self.clock_ppm * 1e-6))

    def leds(self, t: float) -> dict[int, bool]:
        s = self.started_at
        return {1: s is not None, 2: s is not None and t - s >= 2.0,
                3: s is not None and t - s >= 3.0,
                4: self.model.zeroing or abs(self.model.compensation_pt) > 0, 5: self.sensor == 0}

    def on_connect(self, t: float) -> bytes:
        return b""

    def on_bytes(self, data: bytes, t: float) -> bytes:
        due = self.poll(t)  # output due before the command takes effect
        return due + self.dispatch(self.codec, data, lambda ev: self._handle(ev, t), count_garbage=False)

    def _msg(self, text: str) -> bytes:
        return self.codec.send(qs.QuSpinMessage(text))

    def _handle(self, ev: qs.QuSpinCommand, t: float) -> bytes:
        c = ev.char
        m = self.model
        if c == qs.AUTO_START:
            self.started_at = t
            return self._msg("Auto start")
        if c == qs.STREAM_ON:
            if not self.streaming:
                self.streaming = True
                self.stream_start, self.stream_index = self._k, 0
                self._led_sent = self.leds(t)
            return self._msg("Data stream on")
        if c == qs.STREAM_OFF:
            self.streaming = False
            self._status_t = t
            return b""
        if c == qs.FIELD_ZERO_ON:
            m.field_zero(True)
            return self._msg("Field zeroing on")
        if c == qs.FIELD_ZERO_OFF:
            m.field_zero(False)
            return self._msg("Field zeroing off")
        if c == qs.CALIBRATE:
            if abs(m.compensation_pt) == 0 and not m.zeroing:
                return self._msg("Calibration failed: zero the field first")
            m.calibrate()
            return self._msg("Calibration done")
        if c == qs.FIELD_RESET:
            m.field_reset()
            return self._msg("Field reset")
        if c in "G@?":
            self.axis = {"G": "x", "@": "y", "?": "z"}[c]
            return self._msg(f"Read axis {self.axis}")
        if c == qs.REBOOT:
            self._boot(t)
            return self._msg(f"Reboot {self.serial}")
        return b""

    def _advance(self, t: float) -> np.ndarray:
        """Run the model's sample clock up to ``t``; returns the new field samples (pT)."""
        due = int(np.floor((t - self._t0) / self.period + 1e-9)) + 1
        n = due - self._k
        if n <= 0:
            return np.zeros(0)
        x = self.model.generate(n)
        self._k += n
        return x

    def next_deadline(self) -> float | None:
        if self.streaming:
            return self._t0 + self._k * self.period
        return self._status_t

    def drop_samples(self, n: int, at: int | None = None) -> None:
        """Fault side door: stream samples ``at .. at + n - 1`` (default: the next ``n``) are
        never sent; the sensor's sample clock runs on (no backlog follows)."""
        first = self.stream_index if at is None else int(at)
        self._drops.append((first, first + int(n)))

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` stream samples are never sent
        (:meth:`drop_samples`); the protocol has no counter, the driver finds them by the clock."""
        self.drop_samples(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): not supported, the sensor has no error reply."""
        raise FaultNotSupported("a QZFM sensor has no error reply to inject (it answers every command "
                                "with a '#' message)")

    def _dropped(self, i: int) -> bool:
        self._drops = drops = [(a, b) for a, b in self._drops if b > i]
        return any(a <= i for a, _ in drops)

    def poll(self, t: float) -> bytes:
        x = self._advance(t)
        if self.streaming:
            send = self.codec.send
            out = bytearray()
            for v in x:
                i = self.stream_index
                self.stream_index = i + 1
                if self._drops and self._dropped(i):
                    self.samples_dropped.append(i)
                    continue
                out += send(qs.QuSpinSample(qs.pt_to_counts(v)))
                self.samples_sent += 1
            leds = self.leds(t)
            if leds != self._led_sent:  # report a changed LED between samples
                out += b"".join(send(qs.QuSpinLed(k, v)) for k, v in leds.items() if self._led_sent.get(k) != v)
                self._led_sent = leds
            return bytes(out)
        out = bytearray()
        while self._status_t <= t:
            out += self._status_block(self._status_t)
            self._status_t += _STATUS_PERIOD
        return bytes(out)

    def _status_block(self, t: float) -> bytes:
        m = self.model
        comp = m.compensation_pt
        temp_err = 8388608 if self.started_at is not None and t - self.started_at >= 2 else 8388608 + 400000
        lines: list[qs.QuSpinStatus | qs.QuSpinLed] = [
            qs.QuSpinStatus(4, str(temp_err)),
            qs.QuSpinStatus(5, "2048"),
            qs.QuSpinStatus(7, f"{comp + 32768:.2f}"),
            qs.QuSpinStatus(8, f"{32768:.2f}"),
            qs.QuSpinStatus(9, f"{32768:.2f}"),
        ]
        lines += [qs.QuSpinLed(k, v) for k, v in self.leds(t).items()]
        return b"".join(self.codec.send(e) for e in lines)

    def truth(self) -> dict:
        d = self.model.truth()
        d.update({"streaming": self.streaming, "serial": self.serial, "samples_sent": self.samples_sent,
                  "stream_start": self.stream_start, "stream_index": self.stream_index,
                  "samples_dropped": list(self.samples_dropped)})
        return d


def make(**options: object) -> QuSpinInterface:
    """Factory for ``medacq sim quspin`` / the rig: ONE sensor (options: ``seed``, ``sensor``,
    ``serial``, ``fs``, ``clock_ppm`` and :class:`MEGModel` keywords). A multi-sensor rig
    serves one simulator per port."""
    return QuSpinInterface(**options)  # type: ignore[arg-type]
