"""Simulated OpenEIT board: mode state machine over the ASCII codec's device role.

Behaviour (see :mod:`medacq.protocols.openeit`):

* On connect the board prints ``OpenEIT`` and waits, idle, for a mode command.
* ``c``/``d``/``e`` + ``\\n``: imaging with 8/16/32 electrodes, opposition drive. The
  board prints ``mode 3: imaging`` and then one ``magnitudes: ...`` line per frame at
  ``fps`` (transfer-impedance magnitudes |ΔV|/I × ``gain``, 28.4 fixed point).
* ``a``: time series: one value line per frame (the first opposition measurement of the
  16-electrode phantom). ``b``: spectroscopy is announced but not modelled (no output).
* Repeating the current mode letter is ignored (as in the firmware); unknown bytes are
  dropped and counted.

One phantom per electrode count is made lazily by ``phantom_factory(n_el)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from medacq.protocols import openeit as oe
from medacq.protocols._sansio import NEED_DATA, Garbage
from medacq.protocols.eit_model import Pattern, opposition_pattern
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.eit_phantom import ThoraxPhantom

__all__ = ["OpenEITSimulator"]


class OpenEITSimulator(DeviceInterface):
    """OpenEIT device model paced at ``fps`` (1..50) frames per second."""

    def __init__(
        self,
        fps: float = 10.0,
        seed: int = 0,
        gain: float = 1000.0,
        phantom_factory: Callable[[int], ThoraxPhantom] | None = None,
    ) -> None:
        if not 1.0 <= fps <= 50.0:
            raise ValueError("fps must be within 1..50")
        self.fps = float(fps)
        self.gain = gain
        self.seed = seed
        self._factory = phantom_factory or (lambda n: ThoraxPhantom(n_el=n, seed=seed))
        self.phantoms: dict[int, ThoraxPhantom] = {}
        self.codec = oe.OpenEITDeviceCodec()
        self.mode: str | None = None
        self.garbage_bytes = 0
        self.frames_sent = 0
        self._t_start = 0.0
        self._index = 0
        self._next_t: float | None = None
        self._pattern: Pattern | None = None

    def phantom(self, n_el: int) -> ThoraxPhantom:
        if n_el not in self.phantoms:
            self.phantoms[n_el] = self._factory(n_el)
        return self.phantoms[n_el]

    # ------------------------------------------------------------------ DeviceInterface

    def on_connect(self, t: float) -> bytes:
        self.codec = oe.OpenEITDeviceCodec()
        return self.codec.send(oe.TextLine("OpenEIT"))

    def on_disconnect(self, t: float) -> None:
        self.mode = None
        self._next_t = None

    def on_bytes(self, data: bytes, t: float) -> bytes:
        self.codec.receive_data(data)
        out = bytearray()
        while True:
            ev = self.codec.next_event()
            if ev is NEED_DATA:
                return bytes(out)
            if isinstance(ev, Garbage):
                self.garbage_bytes += ev.nbytes
                continue
            out += self._set_mode(ev.letter, t)

    def poll(self, t: float) -> bytes:
        out = bytearray()
        while self._next_t is not None and self._next_t <= t + 1e-12:
            out += self._emit(self._next_t)
            self._index += 1
            self._next_t = self._t_start + self._index / self.fps
        return bytes(out)

    def next_deadline(self) -> float | None:
        return self._next_t

    def truth(self) -> dict:
        n_el = oe.IMAGING_ELECTRODES.get(self.mode or "", 16)
        d = self.phantom(n_el).truth() if self.mode else {}
        d.update(mode=self.mode, fps=self.fps, gain=self.gain, frames_sent=self.frames_sent, garbage_bytes=self.garbage_bytes)
        return d

    # ------------------------------------------------------------------ state machine

    def _set_mode(self, letter: str, t: float) -> bytes:
        if letter == self.mode:
            return b""
        self.mode = letter
        self._t_start, self._index = t, 0
        if letter in oe.IMAGING_ELECTRODES:
            self._pattern = opposition_pattern(oe.IMAGING_ELECTRODES[letter])
            self._next_t = t
            return self.codec.send(oe.TextLine("mode 3: imaging"))
        if letter == "a":
            self._pattern = opposition_pattern(16)
            self._next_t = t
            return self.codec.send(oe.TextLine("mode 1: time series"))
        self._pattern = None
        self._next_t = None
        return self.codec.send(oe.TextLine("mode 2: bioimpedance spectroscopy"))

    def _emit(self, t_dev: float) -> bytes:
        pat = self._pattern
        assert pat is not None
        ph = self.phantom(pat.n_el)
        mags = np.abs(ph.frame(t_dev, pat)) / ph.current_a * self.gain
        self.frames_sent += 1
        if self.mode == "a":
            return oe.format_fixed(float(mags[0])) + b" \r\n"
        return self.codec.send(oe.Magnitudes(mags))
