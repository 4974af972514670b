"""Simulated flat-panel X-ray detector on the wire: SCPI over a raw socket.

Binds :class:`~medacq.simulators.xray_model.XrayModel` to the device role of
:class:`~medacq.protocols.scpi.ScpiDevice`. No clock, no sleep: the adapter passes ``t``.

Command set (short/long forms, case-insensitive, ``;`` compound messages)
-------------------------------------------------------------------------
=============================================  ==============================================
``*IDN?``                                      ``MEDACQ,XP1512-SIM,<serial>,1.0``
``*RST``                                       defaults, aborts acquisition (queue kept)
``*CLS``                                       clears the error queue
``*OPC?`` / ``*OPC`` / ``*WAI``                ``1`` (commands execute in order)
``*TRG`` / ``TRIGger[:IMMediate]``             software trigger (source SOFT)
``SYSTem:ERRor[:NEXT]?``                       oldest error, ``0,"No error"`` when empty
``SYSTem:ERRor:COUNt?``                        errors queued
``CONFigure:EXPosure[:TIME] <s>|MIN|MAX``      1 ms .. 10 s (``30 MS`` ok); ``?`` → NR3 s
``CONFigure:BINNing 1|2|4``                    ``?`` → 1/2/4
``CONFigure:GAIN HIGH|LOW``                    full-well mode
``CONFigure:FCOunt <n>``                       frames per INIT, 0 = until ABOR
``CONFigure:MODE RAD|FLUOro|CT``
``CONFigure:FTYPe IMAGe|DARK|FLAT``            dark: tube off; flat: no object (calibration)
``CONFigure:CT:PROJections <n>``               projections per rotation (2 .. 100000)
``CONFigure:CT:GEOMetry PARallel|FAN``
``CONFigure:CT:RANGe FULL|SHORt``              360° or 180° + fan angle
``SOURce:VOLTage <V>``                         tube voltage, 40 kV .. 150 kV (``70 KV``)
``SOURce:CURRent <A>``                         tube current, 0.1 mA .. 500 mA (``10 MA``)
``SOURce:OUTPut[:STATe] ON|OFF|1|0``           tube high-voltage enable (accepted while running);
                                               ``?`` → ``1``/``0``. ON at power-on; ``*RST``
                                               leaves it (not a measurement setting)
``TRIGger:SOURce INTernal|EXTernal|SOFTware``
``TRIGger:PERiod <s>``                         EXT: period of the simulated external pulses
``INITiate[:IMMediate]``                       start (``-213`` if running)
``ABORt``                                      stop, drop undelivered frames (executed on arrival,
                                               even behind a waiting ``FETC?``: see below)
``FETCh[:IMAGe]?``                             oldest frame, IEEE 488.2 block, see below
``FETCh:ANGLe?``                               gantry angle (deg, NR3) of the last fetched frame
``FETCh:META?``                                ``<index>,<angle deg>,<t s>,<kind>,<sync s>`` of it
                                               (sync: the panel-clock time of the first rising
                                               edge on its trigger input during the frame's
                                               integration, µs resolution; ``NAN``: none)
``FETCh:ROWS?`` / ``FETCh:COLumns?``           frame shape at the current binning
``ACQuire:STATe?`` / ``:COUNt?`` / ``:READy?``  RUN|IDLE, frames taken, frames waiting
``ACQuire:OVERruns?``                          frames lost to the on-board buffer (16)
=============================================  ==============================================

Frame payload: uint16 little-endian, C order ``(rows, cols)`` = ``(1536, 1944) // binning``,
sent as a definite block (``#75971968...`` unbinned) plus ``\\n``.

Timing: the frame period is ``max(exposure, readout)`` with readout 1/26 s (×1), 1/70 s (×2),
1/120 s (×4). Source INT: frame ``i`` (0-based) of an acquisition started at ``t0`` is ready
at ``t0 + (i + 1) · period``. SOFT: each trigger makes one frame, ready one period later
(triggers while busy queue up). EXT: like INT but paced by ``TRIGger:PERiod``.

``FETC?`` with no frame ready *waits* (the reply is deferred, and so is everything after it in
that message and later messages) while an acquisition will still produce one; otherwise it
answers at once with an empty block ``#10`` and queues ``-230,"Data corrupt or stale; no
frame"``. The on-board buffer holds 16 frames; older frames are dropped and counted
(``ACQ:OVER?``; error ``+201``). An ``ABORt`` that arrives while a ``FETC?`` waits is executed
at once (a detector aborts an exposure when told, it does not finish it first): the waiting
``FETC?`` then answers the empty block, and the rest of the messages run in order.

Source: the tube emits only while an acquisition runs *and* ``SOUR:OUTP`` is ON
(:attr:`FlatPanelInterface.exposing`). A frame taken with the output OFF is a dark frame
(its ``FETC:META?`` kind says ``DARK``), whatever ``CONF:FTYP`` asked for.

CT angle: frame ``i`` of a CT acquisition is projection ``i mod n_proj`` at gantry angle
``β_i`` (see :meth:`DetectorConfig.angle`); ``FETC:ANGL?`` (or ``FETC:META?``) after
``FETC?``, or the compound ``FETC?;FETC:ANGL?`` (block, then the text reply), tells the host.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..protocols.scpi import (
    NEED_DATA,
    Block,
    Command,
    CommandTree,
    ErrorQueue,
    Garbage,
    MessageEnd,
    ParseError,
    Response,
    ScpiDevice,
    ScpiError,
    match_choice,
    parse_bool,
    parse_numeric,
)
from ._interface import DeviceInterface
from .trigger_bus import TriggerInput
from .xray_model import DetectorConfig, XrayModel

__all__ = ["FlatPanelInterface", "READOUT_S", "FRAME_BUFFER", "make"]

READOUT_S = {1: 1 / 26, 2: 1 / 70, 4: 1 / 120}
"""Minimum frame period (s) per binning."""
FRAME_BUFFER = 16

_MODES = ("RAD", "FLUOro", "CT")
_KINDS = ("IMAGe", "DARK", "FLAT")
_KIND_NAME = {"IMAG": "image", "DARK": "dark", "FLAT": "flat"}


@dataclass(slots=True)
class _Frame:
    index: int
    t_ready: float
    kind: str
    angle_deg: float
    sync: float | None = None


class _Deferred(Exception):
    """Raised by a handler that cannot answer yet (FETC? waiting for a frame)."""


class FlatPanelInterface(DeviceInterface):
    """The detector's SCPI behaviour (see the module doc for commands and timing).

    Args:
        seed: model seed (defects, noise): same seed + same commands → same bytes.
        model: an existing :class:`XrayModel` (``seed`` ignored then).
        error_queue_size: entries before ``-350``.
    """

    def __init__(self, seed: int = 0, model: XrayModel | None = None, *, error_queue_size: int = 30) -> None:
        self.model = model or XrayModel(seed)
        self.codec = ScpiDevice()
        self.errors = ErrorQueue(error_queue_size)
        self._drop = 0  # frames still to lose (fault side door)
        self.frames_dropped: list[int] = []  # their indices
        self.tree = CommandTree()
        self._build_tree()
        self._pending: deque = deque()
        self._units: list = []
        self._now = 0.0
        #: tube high-voltage enable (``SOUR:OUTP``): ON at power-on, not reset by ``*RST``
        self.source_on = True
        #: the rig trigger bus's cable on the panel's trigger/sync input (``FETC:META?`` sync field)
        self.trigger: TriggerInput | None = None
        self._reset_state()

    # ----------------------------------------------------------------- state
    def _reset_state(self) -> None:
        self.model.configure(**{f: getattr(DetectorConfig(), f) for f in (
            "exposure_s", "binning", "gain_mode", "mode", "geometry", "n_proj", "ct_range", "source")})
        self.trigger_source = "INT"
        self.ext_period = READOUT_S[1]
        self.frame_count = 0
        self.frame_kind = "IMAG"
        self.running = False
        self._t0 = 0.0
        self._produced = 0  # frames scheduled so far in this acquisition
        self._ready: deque[_Frame] = deque()
        self._soft_queue: deque[float] = deque()  # ready times of triggered frames
        self._next_soft_free = 0.0
        self.overruns = 0
        self.acquired = 0
        self._last: _Frame | None = None

    @property
    def exposing(self) -> bool:
        """The tube is emitting X-rays now: an acquisition runs with the source output ON."""
        return self.running and self.source_on

    @property
    def period(self) -> float:
        """Frame period (s) at the current exposure and binning."""
        cfg = self.model.config
        p = max(cfg.exposure_s, READOUT_S[cfg.binning])
        return max(p, self.ext_period) if self.trigger_source == "EXT" else p

    # ----------------------------------------------------------------- DeviceInterface
    def on_connect(self, t: float) -> bytes:
        self._now = t
        self.codec = ScpiDevice()
        self._pending.clear()
        self._units = []
        return b""

    def on_disconnect(self, t: float) -> None:
        self._now = t
        self._pending.clear()
        self._units = []

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` commands (not queries) fail with
        SCPI error ``code`` (default -240, "Hardware error") and ``message``, queued for ``SYST:ERR?``."""
        self.queue_error(message, n, code)

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` frames are lost in the detector
        (an on-board buffer overrun): their frame indices are consumed, never fetched."""
        self._drop += int(n)

    def on_bytes(self, data: bytes, t: float) -> bytes:
        self._now = t
        self._advance(t)
        self.codec.receive_data(data)
        waiting = bool(self._pending)  # a FETC? at the head waits for its frame
        while (ev := self.codec.next_event()) is not NEED_DATA:
            if waiting and isinstance(ev, Command) and self._is_abort(ev):
                self._cmd_abort()  # at once, not behind the waiting FETC? (it stays queued: a no-op then)
            self._pending.append(ev)
        return self._run_pending()

    def _is_abort(self, cmd: Command) -> bool:
        try:
            return self.tree.resolve(cmd)[0] is self._abort
        except ScpiError:
            return False

    def poll(self, t: float) -> bytes:
        self._now = t
        self._advance(t)
        return self._run_pending() if self._pending else b""

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None  # frames are only sent when asked for: nothing to push
        nxt = self._next_ready_time()
        return nxt

    def truth(self) -> dict:
        d = self.model.truth()
        d.update(
            running=self.running,
            source_on=self.source_on,
            exposing=self.exposing,
            acquired=self.acquired,
            ready=len(self._ready),
            overruns=self.overruns,
            frames_dropped=list(self.frames_dropped),
            period_s=self.period,
        )
        return d

    # ----------------------------------------------------------------- frame bookkeeping
    def _schedule_time(self, i: int) -> float:
        return self._t0 + (i + 1) * self.period

    def _next_ready_time(self) -> float | None:
        if not self.running:
            return None
        if self.trigger_source == "SOFT":
            return self._soft_queue[0] if self._soft_queue else None
        if self.frame_count and self._produced >= self.frame_count:
            return None
        return self._schedule_time(self._produced)

    def _advance(self, t: float) -> None:
        while self.running:
            tr = self._next_ready_time()
            if tr is None or tr > t + 1e-12:
                break
            if self.trigger_source == "SOFT":
                self._soft_queue.popleft()
            self._emit_frame(tr)
        if (
            self.running
            and self.trigger_source != "SOFT"
            and self.frame_count
            and self._produced >= self.frame_count
        ):
            self.running = False

    def _sync(self, t_ready: float) -> float | None:
        """The panel-clock time (µs resolution) of the first rising edge on the trigger input during
        the integration of the frame ready at ``t_ready``; ``None`` without one."""
        trig = self.trigger
        if trig is None:
            return None
        e = trig.bus.first_edge(trig.epoch + t_ready - self.period, trig.epoch + t_ready)
        return None if e is None else round((e - trig.epoch) * 1e6) / 1e6

    def _emit_frame(self, t_ready: float) -> None:
        i = self._produced
        self._produced += 1
        self.acquired += 1
        cfg = self.model.config
        angle = math.degrees(cfg.angle(i)) if cfg.mode == "CT" else 0.0
        if self._drop:  # fault side door: lost in the detector, its index consumed
            self._drop -= 1
            self.frames_dropped.append(i)
        else:
            kind = _KIND_NAME[self.frame_kind] if self.source_on else "dark"  # no beam: a dark frame
            self._ready.append(_Frame(i, t_ready, kind, angle, self._sync(t_ready)))
            if len(self._ready) > FRAME_BUFFER:
                self._ready.popleft()
                self.overruns += 1
                self.errors.push(ScpiError(201, "frame buffer overrun"))
        if self.trigger_source == "SOFT" and self.frame_count and self._produced >= self.frame_count:
            self.running = False

    # ----------------------------------------------------------------- execution
    def _run_pending(self) -> bytes:
        out: list[bytes] = []
        while self._pending:
            ev = self._pending[0]
            if isinstance(ev, Command):
                try:
                    injected = None if ev.query else self.take_injected_error()
                    if injected is not None:  # fault side door: the device refuses a setting
                        raise ScpiError(-240 if injected[1] is None else injected[1], injected[0])
                    handler, sfx = self.tree.resolve(ev)
                    result = handler(ev, *sfx)  # type: ignore[operator]
                except _Deferred:
                    break  # wait for poll(); the command stays at the head
                except ScpiError as e:
                    self.errors.push(e)
                    result = None
                if ev.query and result is not None:
                    self._units.append(result)
            elif isinstance(ev, ParseError):
                self.errors.push(ScpiError(ev.code, ev.text[:40]))
            elif isinstance(ev, Garbage):
                self.errors.push(ScpiError(-102, f"{ev.nbytes} bytes dropped: {ev.reason}"))
            elif isinstance(ev, MessageEnd):
                if self._units:
                    out.append(self.codec.send(Response(tuple(self._units))))
                    self._units = []
            self._pending.popleft()
        return out[0] if len(out) == 1 else b"".join(out)

    # ----------------------------------------------------------------- command table
    def _build_tree(self) -> None:
        t = self.tree
        m = self.model

        def setter(fn: Callable[[Command], None]) -> Callable[..., None]:
            def h(cmd: Command, *_: int) -> None:
                if self.running:
                    raise ScpiError(-221, "acquisition running")
                if not cmd.args:
                    raise ScpiError(-109)
                if len(cmd.args) > 1:
                    raise ScpiError(-108)
                fn(cmd)

            return h

        def nr3(v: float) -> str:
            return f"{v:.6E}"

        def noargs(fn: Callable[[], object]) -> Callable[..., object]:
            def h(cmd: Command, *_: int) -> object:
                if cmd.args:
                    raise ScpiError(-108)
                return fn()

            return h

        t.add("*IDN?", noargs(lambda: f"MEDACQ,XP1512-SIM,{m.seed:06d},1.0"))
        t.add("*RST", noargs(self._cmd_rst))
        t.add("*CLS", noargs(self.errors.clear))
        t.add("*OPC?", noargs(lambda: "1"))
        t.add("*OPC", noargs(lambda: None))
        t.add("*WAI", noargs(lambda: None))
        t.add("*TRG", noargs(self._cmd_trigger))
        t.add("TRIGger[:IMMediate]", noargs(self._cmd_trigger))
        t.add("SYSTem:ERRor[:NEXT]?", noargs(lambda: self.errors.pop().text))
        t.add("SYSTem:ERRor:COUNt?", noargs(lambda: str(len(self.errors))))

        def set_exp(c: Command) -> None:
            m.configure(exposure_s=parse_numeric(c.args[0], "S", minimum=1e-3, maximum=10.0, default=0.03))

        t.add("CONFigure:EXPosure[:TIME]", setter(set_exp))
        t.add("CONFigure:EXPosure[:TIME]?", noargs(lambda: nr3(m.config.exposure_s)))

        def set_bin(c: Command) -> None:
            b = int(parse_numeric(c.args[0], minimum=1, maximum=4, default=1, integer=True))
            if b not in (1, 2, 4):
                raise ScpiError(-222, f"binning {b} not 1, 2 or 4")
            m.configure(binning=b)

        t.add("CONFigure:BINNing", setter(set_bin))
        t.add("CONFigure:BINNing?", noargs(lambda: str(m.config.binning)))
        t.add("CONFigure:GAIN", setter(lambda c: m.configure(gain_mode=match_choice(c.args[0], ("HIGH", "LOW")))))
        t.add("CONFigure:GAIN?", noargs(lambda: m.config.gain_mode))

        def set_fco(c: Command) -> None:
            self.frame_count = int(parse_numeric(c.args[0], minimum=0, maximum=10**7, default=0, integer=True))

        t.add("CONFigure:FCOunt", setter(set_fco))
        t.add("CONFigure:FCOunt?", noargs(lambda: str(self.frame_count)))
        t.add("CONFigure:MODE", setter(lambda c: m.configure(mode={"FLUO": "FLUORO"}.get(
            s := match_choice(c.args[0], _MODES), s))))
        t.add("CONFigure:MODE?", noargs(lambda: {"FLUORO": "FLUO"}.get(m.config.mode, m.config.mode)))

        def set_kind(c: Command) -> None:
            self.frame_kind = match_choice(c.args[0], _KINDS)

        t.add("CONFigure:FTYPe", setter(set_kind))
        t.add("CONFigure:FTYPe?", noargs(lambda: self.frame_kind))
        t.add("CONFigure:CT:PROJections", setter(lambda c: m.configure(n_proj=int(parse_numeric(
            c.args[0], minimum=2, maximum=100000, default=720, integer=True)))))
        t.add("CONFigure:CT:PROJections?", noargs(lambda: str(m.config.n_proj)))
        t.add("CONFigure:CT:GEOMetry", setter(lambda c: m.configure(geometry={"PAR": "PARALLEL"}.get(
            s := match_choice(c.args[0], ("PARallel", "FAN")), s))))
        t.add("CONFigure:CT:GEOMetry?", noargs(lambda: m.config.geometry[:3]))
        t.add("CONFigure:CT:RANGe", setter(lambda c: m.configure(ct_range={"SHOR": "SHORT"}.get(
            s := match_choice(c.args[0], ("FULL", "SHORt")), s))))
        t.add("CONFigure:CT:RANGe?", noargs(lambda: m.config.ct_range[:4]))
        t.add("CONFigure:CT:SID?", noargs(lambda: nr3(m.config.sid * 1e-3)))
        t.add("CONFigure:CT:SDD?", noargs(lambda: nr3(m.config.sdd * 1e-3)))
        t.add("SOURce:VOLTage", setter(lambda c: m.configure(kvp=parse_numeric(
            c.args[0], "V", minimum=40e3, maximum=150e3, default=70e3) / 1e3)))
        t.add("SOURce:VOLTage?", noargs(lambda: nr3(m.config.source.kvp * 1e3)))
        t.add("SOURce:CURRent", setter(lambda c: m.configure(ma=parse_numeric(
            c.args[0], "A", minimum=1e-4, maximum=0.5, default=0.01) * 1e3)))
        t.add("SOURce:CURRent?", noargs(lambda: nr3(m.config.source.ma * 1e-3)))

        def set_src(c: Command) -> None:
            self.trigger_source = match_choice(c.args[0], ("INTernal", "EXTernal", "SOFTware"))

        t.add("TRIGger:SOURce", setter(set_src))
        t.add("TRIGger:SOURce?", noargs(lambda: self.trigger_source))

        def set_per(c: Command) -> None:
            self.ext_period = parse_numeric(c.args[0], "S", minimum=1e-3, maximum=100.0, default=READOUT_S[1])

        t.add("TRIGger:PERiod", setter(set_per))
        t.add("TRIGger:PERiod?", noargs(lambda: nr3(self.ext_period)))
        def set_output(c: Command, *_: int) -> None:  # not a setter: accepted while running
            if len(c.args) != 1:
                raise ScpiError(-109 if not c.args else -108)
            self.source_on = parse_bool(c.args[0])

        t.add("SOURce:OUTPut[:STATe]", set_output)
        t.add("SOURce:OUTPut[:STATe]?", noargs(lambda: "1" if self.source_on else "0"))
        t.add("INITiate[:IMMediate]", noargs(self._cmd_init))
        self._abort = noargs(self._cmd_abort)
        t.add("ABORt", self._abort)
        t.add("FETCh[:IMAGe]?", noargs(self._cmd_fetch))
        t.add("FETCh:ANGLe?", noargs(lambda: nr3(self._last.angle_deg if self._last else 0.0)))
        t.add("FETCh:META?", noargs(self._cmd_meta))
        t.add("FETCh:ROWS?", noargs(lambda: str(m.config.shape[0])))
        t.add("FETCh:COLumns?", noargs(lambda: str(m.config.shape[1])))
        t.add("ACQuire:STATe?", noargs(lambda: "RUN" if self.running else "IDLE"))
        t.add("ACQuire:COUNt?", noargs(lambda: str(self.acquired)))
        t.add("ACQuire:READy?", noargs(lambda: str(len(self._ready))))
        t.add("ACQuire:OVERruns?", noargs(lambda: str(self.overruns)))

    def _cmd_rst(self) -> None:
        self._reset_state()

    def _cmd_init(self) -> None:
        if self.running:
            raise ScpiError(-213, "already running")
        self.running = True
        self._t0 = self._now
        self._produced = 0
        self.acquired = 0
        self._ready.clear()
        self._soft_queue.clear()
        self._next_soft_free = self._now
        if self.model.config.mode == "FLUORO":
            self.model.radiograph_line_integral(1.0)  # build anatomy + vessel caches now, not mid-run

    def _cmd_abort(self) -> None:
        self.running = False
        self._ready.clear()
        self._soft_queue.clear()

    def _cmd_trigger(self) -> None:
        if self.trigger_source != "SOFT" or not self.running:
            raise ScpiError(-211, "trigger ignored")
        start = max(self._now, self._next_soft_free)
        self._next_soft_free = start + self.period
        self._soft_queue.append(start + self.period)

    def _cmd_fetch(self) -> Block:
        self._advance(self._now)
        if not self._ready:
            if self._next_ready_time() is not None:
                raise _Deferred
            self.errors.push(ScpiError(-230, "no frame"))
            return Block(b"")
        f = self._ready.popleft()
        self._last = f
        data = self.model.frame(f.index, f.kind)  # type: ignore[arg-type]
        # little-endian uint16, C order: hand the array's own buffer to the codec (no copy)
        return Block(memoryview(np.ascontiguousarray(data.astype("<u2", copy=False))).cast("B"))

    def _cmd_meta(self) -> str:
        f = self._last
        if f is None:
            return "-1,0.000000E+00,0.000000E+00,NONE"
        sync = "NAN" if f.sync is None else f"{f.sync:.6f}"
        return f"{f.index},{f.angle_deg:.6E},{f.t_ready:.6E},{f.kind.upper()},{sync}"



def make(**options: Any) -> FlatPanelInterface:
    """Factory for ``medacq sim flatpanel`` and the rig.

    Options: ``seed`` (int, default 0), ``noise`` (``fast`` | ``poisson``), ``lag`` (0..0.2),
    ``ct_radius_mm`` (CT phantom radius, mm), ``error_queue_size`` (int). Acquisition settings
    (mode, binning, exposure...) are the host's to send over SCPI.
    """
    known = {"seed", "noise", "lag", "ct_radius_mm", "error_queue_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown flatpanel option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    noise = str(options.get("noise", "fast"))
    if noise not in ("fast", "poisson"):
        raise ValueError("flatpanel option noise must be 'fast' or 'poisson'")
    lag = float(options.get("lag", 0.0))
    if not 0.0 <= lag <= 0.2:
        raise ValueError("flatpanel option lag must be in [0, 0.2]")
    radius = options.get("ct_radius_mm")
    model = XrayModel(int(options.get("seed", 0)), noise=noise, lag=lag,  # type: ignore[arg-type]
                      ct_radius_mm=None if radius is None else float(radius))
    return FlatPanelInterface(model=model, error_queue_size=int(options.get("error_queue_size", 30)))
