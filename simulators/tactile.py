"""Simulated tactile imaging probe speaking MTP/1 (:mod:`medacq.protocols.tactile`).

Firmware behaviour (this project's own format, ``docs/tactile.md``):

* On connect the probe is idle (not streaming), rate 100 Hz, front-end gain 4, no tare.
* ``ID?`` → ``#ID medacq-tactile,<rows>,<cols>,1.0``; ``RATE <hz>`` / ``GAIN <g>`` →
  ``#OK RATE <hz>`` / ``#OK GAIN <g>`` (refused with ``#ERR 3 busy`` while streaming);
  ``RATE?`` / ``GAIN?`` → ``#RATE <hz>`` / ``#GAIN <g>``; ``ZERO`` → ``#OK ZERO`` and the next
  scan is taken as the tare (later counts are ``raw - tare + 64``); ``START`` → ``#OK START``,
  counter and device time restart at 0, the press profile restarts (the probe is in air for
  ``air_s`` first); ``STOP`` → ``#OK STOP``. Bad lines get ``#ERR 1|2 <text>``.
* While streaming, one frame per ``1/rate`` s: counts of the cell array under the current
  load (:mod:`medacq.simulators.tactile_model`), the press depth (µm) from the probe's
  displacement sensor.

Fault side door: :meth:`TactileSimulator.drop` skips frames at the device (their counter
values are consumed, so the host sees a counter jump); :meth:`inject_error` answers the
next commands with ``#ERR <code> <message>`` (default code 4, "device fault").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medacq.protocols import tactile as tp
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.tactile_model import CellArray, PressProfile, TactileOptions, TissueContact

__all__ = ["TactileSimulator", "make", "MODEL", "FIRMWARE"]

MODEL = "medacq-tactile"
FIRMWARE = "1.0"
_TARE_PEDESTAL = 64


class TactileSimulator(DeviceInterface):
    """A tactile probe (model + MTP/1 device codec). ``options``: :class:`TactileOptions`."""

    def __init__(self, options: TactileOptions | None = None) -> None:
        self.options = o = options or TactileOptions()
        self.contact = TissueContact(o)
        self.cells = CellArray(o)
        self.profile = PressProfile(o)
        self.codec = tp.TactileDeviceCodec()
        self.rate_hz = 100.0
        self.afe_gain = 4
        self.streaming = False
        self.frames_sent = 0
        self.frames_dropped = 0
        self.garbage_bytes = 0
        self._tare: np.ndarray | None = None
        self._tare_next = False
        self._drop = 0
        self._t_start = 0.0
        self._index = 0
        self._next_t: float | None = None

    # -- fault side door --------------------------------------------------------------
    def drop(self, n: int) -> None:
        """Lose the next ``n`` frames at the device (counter values consumed)."""
        self._drop += int(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """The next ``n`` commands are answered ``#ERR <code> <message>`` (default code 4)."""
        self.queue_error(message, n, 4 if code is None else code)

    # -- DeviceInterface ----------------------------------------------------------------
    def on_connect(self, t: float) -> bytes:
        self.codec = tp.TactileDeviceCodec()
        self.streaming = False
        self._next_t = None
        return b""

    def on_disconnect(self, t: float) -> None:
        self.streaming = False
        self._next_t = None

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.dispatch(self.codec, data, lambda ev: self._command(ev, t))

    def poll(self, t: float) -> bytes:
        out = bytearray()
        while self._next_t is not None and self._next_t <= t + 1e-12:
            out += self._scan(self._next_t)
            self._index += 1
            self._next_t = self._t_start + self._index / self.rate_hz
        return bytes(out)

    def next_deadline(self) -> float | None:
        return self._next_t

    def truth(self) -> dict:
        d = self.contact.truth()
        d.update(rate_hz=self.rate_hz, afe_gain=self.afe_gain, streaming=self.streaming,
                 frames_sent=self.frames_sent, frames_dropped=self.frames_dropped,
                 garbage_bytes=self.garbage_bytes, dead_cells=np.argwhere(self.cells.dead).tolist(),
                 kpa_per_count=self.options.kpa_per_count, load=self.options.load)
        return d

    # -- firmware -------------------------------------------------------------------------
    def _reply(self, kind: str, *args: object) -> bytes:
        return self.codec.send(tp.Reply(kind, tuple(str(a) for a in args)))

    def _command(self, ev: Any, t: float) -> bytes:
        if isinstance(ev, tp.BadCommand):
            return self._reply("ERR", ev.code, ev.reason)
        injected = self.take_injected_error()
        if injected is not None:
            message, code = injected
            return self._reply("ERR", code, message)
        if isinstance(ev, tp.Identify):
            return self._reply("ID", f"{MODEL},{self.options.rows},{self.options.cols},{FIRMWARE}")
        if isinstance(ev, tp.QueryRate):
            return self._reply("RATE", f"{self.rate_hz:g}")
        if isinstance(ev, tp.QueryGain):
            return self._reply("GAIN", self.afe_gain)
        if isinstance(ev, (tp.SetRate, tp.SetGain)):
            if self.streaming:
                return self._reply("ERR", tp.ERR_BUSY, "busy (streaming)")
            if isinstance(ev, tp.SetRate):
                self.rate_hz = float(ev.hz)
                return self._reply("OK", "RATE", f"{self.rate_hz:g}")
            self.afe_gain = int(ev.gain)
            return self._reply("OK", "GAIN", self.afe_gain)
        if isinstance(ev, tp.Zero):
            self._tare_next = True
            return self._reply("OK", "ZERO")
        if isinstance(ev, tp.Start):
            self.streaming = True
            self._t_start, self._index, self._next_t = t, 0, t
            self.cells.reset()
            return self._reply("OK", "START")
        if isinstance(ev, tp.Stop):
            self.streaming = False
            self._next_t = None
            return self._reply("OK", "STOP")
        return self._reply("ERR", tp.ERR_UNKNOWN, "unknown command")

    def load_kpa(self, t_rel: float) -> tuple[np.ndarray, float]:
        """The true surface pressure (kPa, ``(row, col)``) and indentation (mm) ``t_rel`` s after START."""
        o = self.options
        if o.load == "bladder":
            on = t_rel >= o.air_s
            return np.full((o.rows, o.cols), o.bladder_kpa if on else 0.0), 0.0
        d = self.profile.depth_mm(t_rel)
        return self.contact.pressure_kpa(d), d

    def _scan(self, t: float) -> bytes:
        t_rel = t - self._t_start
        p, depth = self.load_kpa(t_rel)
        counts = self.cells.counts(self.cells.sense_kpa(p, t_rel), self.afe_gain)
        if self._tare_next:
            self._tare, self._tare_next = counts.astype(np.int32), False
        if self._tare is not None:
            counts = np.clip(counts.astype(np.int32) - self._tare + _TARE_PEDESTAL, 0, 65535).astype(np.uint16)
        counter = self._index
        if self._drop > 0:
            self._drop -= 1
            self.frames_dropped += 1
            return b""
        self.frames_sent += 1
        return self.codec.send(tp.PressureFrame(counter, int(round(t_rel * 1e6)), int(round(depth * 1000)), counts))


def make(**options: Any) -> TactileSimulator:
    """Factory for ``medacq sim tactile`` / the rig: options are :class:`TactileOptions` fields."""
    return TactileSimulator(TactileOptions.model_validate(options))
