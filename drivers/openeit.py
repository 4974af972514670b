"""Driver for the OpenEIT board (ASCII serial, opposition drive pattern).

Mode letters follow the real firmware (OpenEIT/EIT_Firmware ``OpenEIT.c``, latest
version, and the OpenEIT dashboard's ``serial_write``): ``c``/``d``/``e`` + ``\\n`` select
tetrapolar imaging with 8/16/32 electrodes (firmware modes 3/4/5). The board boots
straight into 16-electrode imaging (mode 4) and has no stop command: it streams for as long
as it is powered. Firmware quirk: the ``c``/``d``/``e`` branches only act when the current
mode is not 3 (8-electrode imaging), so to leave 8-electrode imaging the driver first
sends ``a`` (time series), then the imaging letter.

Each frame is one line ``magnitudes: v1,v2,...,vN,\\r\\n`` (28.4 fixed point, ohms):
N = 32/192/896 for 8/16/32 electrodes. The stream frame is ``float32 (measurement,)`` in
ohms, opposition drive ``(i, i + n/2)`` with adjacent measurement, pairs touching a
current electrode skipped (the pattern is in the descriptor geometry). The protocol has no
frame counter: a corrupted or truncated imaging line (a magnitudes line with the wrong
count, or a garbled line while streaming) is reported as a one-frame :class:`Gap`.
``stop()`` only stops publishing (the board keeps streaming).

Safe state: not possible. The firmware has no command that stops current injection (every
mode -- time series, spectroscopy, imaging -- drives current, and there is no idle mode), so
:meth:`OpenEITDriver.enter_safe_state` sends nothing and raises :class:`DeviceError` saying so:
the daemon reports the safe state as *failed* and keeps publishing what the board measures. A
rig that needs a safe state must cut the board's power (or the electrode leads) in hardware.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols import openeit as oe
from medacq.protocols._sansio import Garbage
from medacq.protocols.eit_pattern import Pattern, opposition_pattern
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, DeviceError, Frame, Gap
from .transports import SerialTransport

__all__ = ["OpenEITDriver", "OpenEITSettings", "MODE_LETTER"]

#: electrodes → firmware mode letter
MODE_LETTER: dict[int, str] = {8: "c", 16: "d", 32: "e"}


class OpenEITSettings(BaseModel):
    """Settings of an OpenEIT board.

    Attributes:
        n_el: electrodes, 8, 16 or 32 (selects mode ``c``/``d``/``e``).
        fps: the board's frame rate as announced in the descriptor (the firmware runs as
            fast as it measures; this is not sent to it).
        mode_timeout_s: how long to wait for imaging lines after selecting the mode.
    """

    model_config = ConfigDict(extra="forbid")

    n_el: Literal[8, 16, 32] = 16
    fps: float = Field(default=5.0, gt=0, le=100)
    mode_timeout_s: float = Field(default=3.0, gt=0, le=60)


class OpenEITDriver(CodecDriver):
    """OpenEIT over a serial link (115200 8N1); one stream frame per ``magnitudes:`` line.

    Garbage is counted and handed on (:attr:`pass_garbage`): a garbled imaging line costs a frame.
    """

    kind = "openeit"
    modality = "eit"
    Settings = OpenEITSettings
    pass_garbage = True

    def __init__(self, name: str, address: str, settings: OpenEITSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: OpenEITSettings = settings
        self._codec = oe.OpenEITHostCodec()
        self.pattern: Pattern = opposition_pattern(settings.n_el)
        self._n = self.pattern.n_total
        self._running = False
        self._banner = ""

    def _hold(self, ev: Any) -> None:
        """The board streams all the time: what comes while selecting a mode is not published."""

    def _select_mode(self, letter: str, timeout: float) -> bool:
        """Send the letter; True once two magnitudes lines of the right length arrive within
        ``timeout`` s."""
        good = 0

        def switched(ev: Any) -> bool:
            nonlocal good
            if isinstance(ev, oe.TextLine):
                if ev.text.startswith("OpenEIT"):
                    self._banner = ev.text
                elif ev.text.startswith("mode"):
                    self._banner = self._banner or "OpenEIT"
                    self.counters["mode_text"] = 1
                    good = 0  # lines before the announcement belong to the old mode
            elif isinstance(ev, oe.Magnitudes) and len(ev.values) == self._n:
                good += 1
                return good >= 2  # the first one may have been measured before the switch
            return False

        self._write(f"{letter}\n".encode("ascii"))
        return self._await(switched, timeout) is not None

    def open(self) -> None:
        self._link = SerialTransport(self.address, baudrate=115200)
        self._codec = oe.OpenEITHostCodec()
        self._running = False
        letter = MODE_LETTER[self.settings.n_el]
        t = self.settings.mode_timeout_s
        if self._select_mode(letter, t):
            return
        # stuck in 8-electrode imaging (firmware ignores c/d/e in mode 3): go via time series
        self._select_mode("a", 0.3)
        if not self._select_mode(letter, t):
            raise DeviceError(f"{self.name}: no {self._n}-value magnitudes lines after mode {letter!r} "
                              f"within {t} s (not an OpenEIT board, or wrong electrode count?)")

    def close(self) -> None:
        self._running = False
        super().close()

    def start(self) -> None:
        self._connected().reset_input()
        self._codec = oe.OpenEITHostCodec()
        self._first = True
        self._running = True

    def stop(self) -> None:
        self._running = False

    def enter_safe_state(self) -> str:
        """Impossible on this board: raises :class:`DeviceError` saying why (nothing is sent)."""
        raise DeviceError(f"{self.name}: the OpenEIT firmware has no command that stops current injection "
                          "(it injects in every mode for as long as it is powered); nothing was sent: cut the "
                          "board's power or disconnect the electrodes to make it safe")

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        pat = self.pattern
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"openeit {s.n_el}-electrode",
            dtype="<f4", shape=[pat.n_total], axes=["measurement"], units="ohm",
            frame_rate_hz=s.fps,
            geometry={"n_el": s.n_el, "pattern": pat.name, "ex_mat": pat.ex_mat.tolist(),
                      "meas_mat": pat.meas_mat.tolist(), "electrodes": "0-based, equally spaced, CCW, "
                      "electrode 0 anterior midline", "order": "excitation-major: index = exc * n_meas + meas",
                      "shape": "thorax"},
            meta={"quantity": "magnitude", "mode": MODE_LETTER[s.n_el], "vendor": "openeit",
                  "resolution_ohm": 1 / 16},
        )

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        for ev in events:
            if not self._running:
                continue
            if isinstance(ev, oe.Magnitudes):
                if len(ev.values) == self._n:
                    self._first = False
                    out.append(Frame(ev.values.astype("<f4"), t_host, t_mono))
                elif not self._first:
                    self.count("bad_lines")
                    out.append(Gap(lost_frames=1, reason=f"magnitudes line with {len(ev.values)} values, "
                                                         f"expected {self._n}"))
            elif isinstance(ev, Garbage):  # counted in garbage_bytes by the drain
                if not self._first and ev.nbytes >= 32:
                    out.append(Gap(lost_frames=1, reason=f"corrupted imaging line ({ev.reason})"))
            elif isinstance(ev, oe.TextLine):
                if len(ev.text) > 64 and not self._first:
                    self.count("bad_lines")
                    out.append(Gap(lost_frames=1, reason="corrupted imaging line (no magnitudes: prefix)"))
        return out
