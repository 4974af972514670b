"""Simulated OpenEIT board: the firmware's mode state machine over the ASCII codec.

Behaviour follows OpenEIT/EIT_Firmware ``OpenEIT.c`` (latest version) and
:mod:`medacq.protocols.openeit`:

* On connect (power-up) the board prints ``OpenEIT`` and starts *at once* in mode 4,
  16-electrode imaging: one ``magnitudes: ...`` line per frame at ``fps``
  (transfer-impedance magnitudes |ΔV|/I × ``gain``, 28.4 fixed point, ohms).
* ``c``/``d``/``e`` + ``\\n``: tetrapolar imaging with 8/16/32 electrodes (firmware modes
  3/4/5), opposition drive; announced ``mode 3: 8 electrode imaging``, ``mode 4: 16
  electrode imaging``, ``mode 3: 32 electrode imaging`` (sic, the firmware's text). As in
  the firmware these letters are ignored while in mode 3 (8-electrode imaging).
* ``a``: time series (``mode 1: time series``): one value line per frame (the first
  opposition measurement of the 16-electrode phantom), ignored when already in mode 1.
  ``b``: spectroscopy is announced (``mode 2: bioimpedance spectroscopy``, ``end
  initialize``) but not modelled (no output).
* Unknown bytes are dropped and counted. There is no stop command: the board injects
  current for as long as it is powered (:attr:`OpenEITSimulator.injecting`; here: while a
  host is connected, which is when the simulated board is powered up).

One phantom per electrode count is made lazily by ``phantom_factory(n_el)``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from medacq.protocols import openeit as oe
from medacq.protocols.eit_pattern import Pattern, opposition_pattern
from medacq.simulators._interface import DeviceInterface, FaultNotSupported
from medacq.simulators.eit_phantom import PhantomOptions, ThoraxPhantom, make_phantom

__all__ = ["OpenEITSimulator", "make"]

_IMAGING = {3: 8, 4: 16, 5: 32}
_LETTER = {1: "a", 2: "b", 3: "c", 4: "d", 5: "e"}
_ANNOUNCE = {3: "mode 3: 8 electrode imaging", 4: "mode 4: 16 electrode imaging", 5: "mode 3: 32 electrode imaging"}


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
        self.mode: int | None = None  # firmware mode number (1..5)
        self.garbage_bytes = 0
        self.frames_sent = 0
        self._t_start = 0.0
        self._index = 0
        self._next_t: float | None = None
        self._pattern: Pattern | None = None
        self._truncate: int | None = None

    def truncate_next(self, n_values: int) -> None:
        """Fault side door: the next imaging line carries only its first ``n_values`` values."""
        self._truncate = int(n_values)

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): not supported, see :class:`FaultNotSupported`."""
        raise FaultNotSupported("OpenEIT lines carry no frame counter: a frame lost at the board is "
                                "invisible to the host (use the corrupt fault, or truncate_next)")

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): not supported, the firmware has no error reply."""
        raise FaultNotSupported("the OpenEIT firmware has no error reply to inject (it ignores what "
                                "it does not know)")

    @property
    def injecting(self) -> bool:
        """Current is being injected now: in every firmware mode (time series, spectroscopy and
        imaging all drive current), i.e. whenever the board is powered."""
        return self.mode is not None

    def phantom(self, n_el: int) -> ThoraxPhantom:
        if n_el not in self.phantoms:
            self.phantoms[n_el] = self._factory(n_el)
        return self.phantoms[n_el]

    # ------------------------------------------------------------------ DeviceInterface

    def on_connect(self, t: float) -> bytes:
        self.codec = oe.OpenEITDeviceCodec()
        self.mode = None
        banner = self.codec.send(oe.TextLine("OpenEIT"))
        self._enter(4, t)  # the firmware boots into 16-electrode imaging
        return banner

    def on_disconnect(self, t: float) -> None:
        self.mode = None
        self._next_t = None

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.dispatch(self.codec, data, lambda ev: self._set_mode(ev.letter, t))

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
        n_el = self._pattern.n_el if self._pattern is not None else 16
        d = self.phantom(n_el).truth() if self._pattern is not None else {}
        d.update(mode=self.mode, mode_letter=_LETTER.get(self.mode or 0), fps=self.fps, gain=self.gain,
                 frames_sent=self.frames_sent, garbage_bytes=self.garbage_bytes, injecting=self.injecting)
        return d

    # ------------------------------------------------------------------ state machine

    def _enter(self, mode: int, t: float) -> None:
        self.mode = mode
        self._t_start, self._index = t, 0
        n_el = _IMAGING.get(mode)
        if n_el is not None:
            self._pattern = opposition_pattern(n_el)
            self._next_t = t
        elif mode == 1:
            self._pattern = opposition_pattern(16)
            self._next_t = t
        else:
            self._pattern = None
            self._next_t = None

    def _set_mode(self, letter: str, t: float) -> bytes:
        if letter == "a" and self.mode != 1:
            self._enter(1, t)
            return self.codec.send(oe.TextLine("mode 1: time series"))
        if letter == "b" and self.mode != 2:
            self._enter(2, t)
            return self.codec.send(oe.TextLine("mode 2: bioimpedance spectroscopy")) + self.codec.send(
                oe.TextLine("end initialize"))
        if letter in "cde" and self.mode != 3:  # sic: the firmware tests mode != 3 for all three
            mode = {"c": 3, "d": 4, "e": 5}[letter]
            self._enter(mode, t)
            return self.codec.send(oe.TextLine(_ANNOUNCE[mode]))
        return b""

    def _emit(self, t_dev: float) -> bytes:
        pat = self._pattern
        assert pat is not None
        ph = self.phantom(pat.n_el)
        mags = np.abs(ph.frame(t_dev, pat)) / ph.current_a * self.gain
        self.frames_sent += 1
        if self.mode == 1:
            return oe.format_fixed(float(mags[0])) + b" \r\n"
        if self._truncate is not None:
            mags, self._truncate = mags[: self._truncate], None
        return self.codec.send(oe.Magnitudes(mags))


def make(**options: Any) -> OpenEITSimulator:
    """Factory for ``medacq sim openeit`` / ``medacq up``.

    Options: ``fps`` (1..50), ``gain`` (ohm per V/A) plus every :class:`PhantomOptions` field.
    The 16-electrode phantom is built (and warmed) at once, others when first selected.
    """
    fps = float(options.pop("fps", 10.0))
    gain = float(options.pop("gain", 1000.0))
    opts = PhantomOptions.model_validate(options)
    sim = OpenEITSimulator(fps=fps, seed=opts.seed, gain=gain, phantom_factory=lambda n: make_phantom(n, opts))
    sim.phantom(16)
    return sim
