"""Driver for a MaRCoS MRI console (kind ``mri``, modality ``mri``) at ``tcp://host:11111``.

``open``: connect, ``are_you_real`` (the reply's version word is checked: a different major
version is refused, :class:`~medacq.drivers._base.DeviceError`), validate the sequence
(:class:`~medacq.protocols.mri_sequences.CartesianSequence`; a refusal names the limit, before
anything is sent). ``start``: the acquisition runs as ``run_seq`` requests of
``lines_per_run`` TRs each (after ``dummy_scans`` TRs); every reply's RX data becomes one
frame per phase-encode line: complex64 ``(coil, readout)`` (``rx0``, ``rx1``), in the
console's normalised units (counts × CIC correction / 2**24, as marcos_client's Experiment),
``meta`` = ``line`` (phase index 0..N-1), ``ky`` (cycles/m), ``image`` (repetition),
``last`` (the image's last line); slice-selective scans add ``slice`` (index) and
``slice_position_mm`` (every shot acquires its line in each slice, interleaved order). Images
repeat until ``stop`` (``repetitions`` = 0) or after ``repetitions``. ``sequence`` is a built-in
sequence (a table) or the path of a Pulseq ``.seq`` file (:mod:`medacq.protocols.pulseq`: read,
checked against ``limits`` and compiled when the settings are validated).

Triggers (built-in sequences): ``trig_out_ms`` > 0 raises the console's trigger output
(``GATES_LEDS`` bit 2, marga's ``trig_o``) for that long at the start of every acquired TR -- the
scanner's volume/slice trigger an EEG amplifier records; ``trig_in = "wait"`` (``ITRIG``, timeout
``trig_in_timeout_ms``) or ``"wait_forever"`` (``ITRIGFOREVER``) makes every TR wait for a change
of the console's trigger input first (cardiac gating). Where the console answers the timing
extension ``medacq_timing`` (the simulated console; a real marcos_server answers it ``UNKNOWN``
and nothing below is published, counted as ``no_console_clock``) every run's reply carries its
start and end on the console's FSM cycle counter and how each trigger wait ended. The driver
fits that clock to the replies' arrival (:class:`ConsoleClock`: the lower
convex envelope below every reply) and lists each trigger-output rising edge (line ``trig_out``) and each wait
ended by an input change (line ``trig_in``, the FSM edge that sampled it) in ``meta["triggers"]``
of the first frame of its TR (published on ``markers/<device>``): ``t_device`` the console-clock
time in s (the run's start + program cycle / F_CLK_HZ, waits included), host times through the
fit. A TR without frames (dummy scans) publishes none. A ``trig_in`` event's ``edge`` reads
``rising``: marga reacts to any change of the line and nothing says which. The frames keep their
arrival stamps (with triggers on, ``t_device`` is the console time of the line's ADC window start).
``stop`` during an ``ITRIGFOREVER`` wait that no trigger ends within 0.5 s sends the emergency stop
(the console takes no other request while a run plays).

Safety: ``limits`` (``SystemLimits``: gradient amplitude/slew, RF duty, calibration) is marked
``config_only``: only the config file sets it, a control-plane ``configure`` that changes it is
refused; every sequence a ``configure`` asks for is validated against it. ``enter_safe_state`` sends
the emergency stop (command 1) and waits for its 129 reply.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medacq.protocols.marcos import (
    EMERGENCY_STOP, REPLY_ERROR, SERVER_VERSION, MarcosConnection, Reply, Request, unpack_version,
)
from medacq.protocols.marga import COUNTER_MAX, F_CLK_HZ, NOMINAL_TRIGGER, MachineCodeError, decode
from medacq.protocols.markers import FRAME_TRIGGERS_KEY, TriggerEvent
from medacq.protocols.mri_sequences import CartesianSequence, SequenceError, SequenceParams, SystemLimits
from medacq.protocols.pulseq import PulseqSequence, parse_seq
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from .transports import TcpTransport

#: the timing extension of the simulated console (not MaRCoS)
TIMING_CMD = "medacq_timing"

__all__ = ["MriDriver", "MriSettings"]


def _cic_excess(rate: int) -> float:
    g = 6 * np.log2(4096 / rate)
    return float(2 ** (g - np.floor(g)))


class ConsoleClock:
    """The console's cycle counter (s) mapped onto CLOCK_MONOTONIC by the replies' arrival.

    A run's reply leaves when its program ends (``end`` on the console clock) and arrives some
    non-negative, variable time later. With one point per run (a few per second) a bucketed
    envelope has too few points per bucket, so this keeps the points of the last ``window_s`` and
    takes the line ``arrival = a + (1 + b) t`` lying *below every point* that minimises the summed
    gap to them (the lower convex hull's best edge, ``|b| <= max_ppm``): late replies lie above
    it and cannot pull it; a constant minimum latency stays in ``a`` (as in every clock fit).
    Before ``min_span_s`` of console time the slope is nominal (b = 0).
    """

    def __init__(self, window_s: float = 60.0, max_ppm: float = 200.0, min_span_s: float = 2.0) -> None:
        self.window_s, self.max_b, self.min_span_s = float(window_s), max_ppm * 1e-6, float(min_span_s)
        self._x0: float | None = None
        self._y0 = 0
        self._pts: list[tuple[float, float]] = []  # (console s - x0, arrival s - y0 - x)
        self._ab: tuple[float, float] | None = None
        self.updates = 0

    def update(self, t_console_s: float, t_arrival_ns: int) -> None:
        if self._x0 is None:
            self._x0, self._y0 = float(t_console_s), int(t_arrival_ns)
        x = float(t_console_s) - self._x0
        self._pts.append((x, (int(t_arrival_ns) - self._y0) * 1e-9 - x))
        while self._pts and self._pts[0][0] < x - self.window_s:
            self._pts.pop(0)
        self._ab = None
        self.updates += 1

    def _fit(self) -> tuple[float, float]:
        if self._ab is not None:
            return self._ab
        pts = sorted(self._pts)
        xs = np.array([p[0] for p in pts])
        ys = np.array([p[1] for p in pts])
        cands = [0.0]
        if xs[-1] - xs[0] >= self.min_span_s:
            hull: list[tuple[float, float]] = []  # lower convex hull (monotone chain)
            for q in pts:
                while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (q[1] - hull[-2][1])
                                          - (hull[-1][1] - hull[-2][1]) * (q[0] - hull[-2][0])) <= 0:
                    hull.pop()
                hull.append(q)
            cands = [self.max_b, -self.max_b]
            cands += [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(hull, hull[1:]) if b[0] > a[0]]
            cands = [c for c in cands if abs(c) <= self.max_b]
        best = None
        for b in cands:  # the supporting line of slope b, and its summed gap to the points
            a = float(np.min(ys - b * xs))
            cost = float(np.sum(ys - a - b * xs))
            if best is None or cost < best[0]:
                best = (cost, a, b)
        assert best is not None
        self._ab = (best[1], best[2])
        return self._ab

    def time_of(self, t_console_s: float) -> int:
        """CLOCK_MONOTONIC ns at which console time ``t_console_s`` would have arrived with the least delay."""
        if self._x0 is None:
            raise RuntimeError("ConsoleClock.time_of before any update")
        a, b = self._fit()
        x = float(t_console_s) - self._x0
        return self._y0 + int(round((a + x * (1 + b)) * 1e9))

    @property
    def ppm(self) -> float:
        """The fitted rate of the console clock against the host's, ppm (0 before ``min_span_s``)."""
        return -self._fit()[1] * 1e6 if self._x0 is not None else 0.0


class MriSettings(BaseModel):
    """``[device.settings]`` of an ``mri`` device: the sequence, and the console's limits."""

    model_config = ConfigDict(extra="forbid")

    sequence: SequenceParams | str = Field(
        default_factory=SequenceParams,
        description="a built-in sequence (table), or the path of a Pulseq v1.4/v1.5 .seq file (a path: "
                    "the config file only)",
        json_schema_extra={"config_only_path": True})
    # safety limits and calibration: the config file only (a control-plane configure may not touch them)
    limits: SystemLimits = Field(default_factory=SystemLimits, json_schema_extra={"config_only": True})
    lines_per_run: int = Field(4, ge=1, le=64)
    dummy_scans: int = Field(2, ge=0, le=64)
    repetitions: int = Field(0, ge=0, description="images to acquire; 0 = until stop")
    command_timeout_s: float = Field(3.0, gt=0)
    trig_out_ms: float = Field(0.0, ge=0, description="trigger output pulse (ms) at every acquired TR's start; 0 = off")
    trig_in: Literal["off", "wait", "wait_forever"] = Field(
        "off", description="every TR waits for a change of the trigger input: ITRIG (with trig_in_timeout_ms) or "
                           "ITRIGFOREVER")
    trig_in_timeout_ms: float = Field(100.0, ge=0, le=COUNTER_MAX / F_CLK_HZ * 1e3,
                                      description="ITRIG timeout (ms; at most 0xffffff cycles = 136.5 ms)")

    @model_validator(mode="after")
    def _valid_sequence(self) -> "MriSettings":
        if (self.trig_out_ms > 0 or self.trig_in != "off") and isinstance(self.sequence, str):
            raise ValueError("trig_out_ms and trig_in work with the built-in sequences, not a Pulseq file")
        try:
            seq = build_sequence(self)
            if isinstance(seq, CartesianSequence) and (self.trig_out_ms > 0 or self.trig_in != "off"):
                _compile(seq, self, 0, 1)
        except (SequenceError, MachineCodeError) as exc:
            raise ValueError(str(exc)) from None
        return self


def _compile(seq: CartesianSequence | PulseqSequence, settings: MriSettings, first: int, count: int) -> np.ndarray:
    """The machine code of shots ``first .. first + count - 1`` with the settings' triggers."""
    if isinstance(seq, CartesianSequence) and (settings.trig_out_ms > 0 or settings.trig_in != "off"):
        timeout = None if settings.trig_in == "wait_forever" else int(round(settings.trig_in_timeout_ms * 1e-3 * F_CLK_HZ))
        return seq.lines(first, count, trig_out_us=settings.trig_out_ms * 1e3, wait_trigger=settings.trig_in != "off",
                         wait_timeout_cycles=timeout)
    return seq.lines(first, count)


def build_sequence(settings: MriSettings) -> CartesianSequence | PulseqSequence:
    """The sequence the settings name, validated against the limits (:class:`SequenceError`
    naming the limit): a built-in one, or a ``.seq`` file read and compiled."""
    if isinstance(settings.sequence, str):
        try:
            with open(settings.sequence, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise SequenceError(f"Pulseq file {settings.sequence}: {exc.strerror or exc}") from None
        return PulseqSequence(parse_seq(text), settings.limits, source=settings.sequence)
    return CartesianSequence(settings.sequence, settings.limits)


class MriDriver(CodecDriver):
    """MaRCoS console driver."""

    kind = "mri"
    modality = "mri"
    Settings = MriSettings
    #: the console answers one request at a time, so what waits is at most one reply (its codec
    #: holds 32 MiB); and msgpack re-parses a partial message on every feed, so small slices of
    #: a large readout would cost quadratic time: read up to 4 MiB at once
    read_max = 4 << 20

    def __init__(self, name: str, address: str, settings: MriSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: MriSettings = settings
        self._codec = MarcosConnection("client")
        self._idx = 0
        self.seq = build_sequence(settings)
        self.server_version: tuple[int, int, int] | None = None
        self._running = False
        self._inflight: tuple[int, int, int] | None = None  # (packet idx, first line, count)
        self._next_line = 0
        self._image = 0
        self._prepared: tuple[int, int, bytes] | None = None  # the next run's machine code, compiled ahead
        self._nominal: dict[bytes, dict[str, Any]] = {}  # per program: nominal trigger/RX cycles
        self._inflight_code: bytes = b""
        self.console_timing = False  # the console answers the timing extension
        self._clock = ConsoleClock()  # console s -> host arrival

    # ---- protocol ---------------------------------------------------------------------------
    def _events(self):  # type: ignore[override]
        for ev in super()._events():
            if isinstance(ev, Reply):
                yield ev
            else:
                self.count("bad_packets")

    def _hold(self, ev: Any) -> None:
        if isinstance(ev, Reply) and self._inflight is not None and ev.index == self._inflight[0] + 1:
            self._pending.append(ev)
        else:
            self.count("stray_replies")

    def _send_request(self, commands: dict[str, Any], kind: int = 0) -> int:
        self._idx = (self._idx + 1) & 0xFFFF
        self._write(self._codec.send(Request(commands=commands, index=self._idx, kind=kind)))
        return self._idx

    def command(self, commands: dict[str, Any], timeout: float | None = None, kind: int = 0) -> Reply:
        """One request, its reply (DeviceError when the console reports errors)."""
        idx = self._send_request(commands, kind)
        t = timeout or self.settings.command_timeout_s
        ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1, t)
        if ev is None:
            raise ConnectionLost(f"{self.name}: no reply to {sorted(commands)} within {t} s")
        if ev.errors and kind == 0:
            raise DeviceError(f"{self.name}: console errors {ev.errors} for {sorted(commands)}")
        return ev

    # ---- Driver -----------------------------------------------------------------------------
    def open(self) -> None:
        self._link = TcpTransport(self.address)
        self._codec = MarcosConnection("client")
        self._pending.clear()
        r = self.command({"are_you_real": 0, "halt_and_reset": 0})
        self.server_version = unpack_version(r.version)
        if self.server_version[0] != SERVER_VERSION[0]:
            raise DeviceError(f"{self.name}: console speaks MaRCoS {'.'.join(map(str, self.server_version))}, "
                              f"this driver {'.'.join(map(str, SERVER_VERSION))} (major version differs)")
        self.console = str(r.results.get("are_you_real", "?"))
        self._clock = ConsoleClock()
        idx = self._send_request({TIMING_CMD: 0})  # the simulated console's extension; a real one: UNKNOWN
        ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1, self.settings.command_timeout_s)
        if ev is None:
            raise ConnectionLost(f"{self.name}: no reply to {TIMING_CMD}")
        triggers = self.settings.trig_out_ms > 0 or self.settings.trig_in != "off"
        # asked for (and the runs decoded here) only where the triggers are on: the default path costs nothing
        self.console_timing = triggers and isinstance(ev.results.get(TIMING_CMD), dict)
        if triggers and not self.console_timing:
            self.count("no_console_clock")

    def close(self) -> None:
        self._running = False
        super().close()

    def start(self) -> None:
        self._running = True
        self._image = 0
        self._next_line = -self.settings.dummy_scans
        self._inflight = None

    def stop(self) -> None:
        self._running = False
        if self._inflight is not None and self._link is not None:  # let the run finish
            wait = self.settings.lines_per_run * (self.seq.tr_s + (self.settings.trig_in_timeout_ms * 1e-3
                                                                  if self.settings.trig_in == "wait" else 0.0)) + 2
            try:
                ev = self._await(lambda e: isinstance(e, Reply) and e.index == self._inflight[0] + 1,  # type: ignore[index]
                                 0.5 if self.settings.trig_in == "wait_forever" else wait)
                if ev is None and self.settings.trig_in == "wait_forever":
                    # still waiting for a trigger that may never come: the console takes no other request
                    # while a run plays, so only the emergency stop ends it
                    self.count("gated_runs_stopped")
                    self.enter_safe_state()
            except (ConnectionLost, DeviceError):
                pass
        self._inflight = None
        self._pending.clear()

    def enter_safe_state(self) -> str:
        """Emergency stop (command 1); the console must answer 129."""
        idx = self._send_request({}, kind=EMERGENCY_STOP)
        ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1, self.settings.command_timeout_s)
        self._running = False
        self._inflight = None
        self._pending.clear()
        if ev is None:
            raise ConnectionLost(f"{self.name}: no reply to the emergency stop")
        if ev.kind != REPLY_ERROR:
            raise DeviceError(f"{self.name}: emergency stop answered {ev.kind}, not 129")
        return "emergency stop sent; console answered 129 (sequence halted, RF and gradients off)"

    def descriptor(self) -> StreamDescriptor:
        seq = self.seq
        n = seq.matrix
        p = self.settings.sequence
        slice_mm = p.slice_mm if isinstance(p, SequenceParams) else None
        order = p.slice_order() if isinstance(p, SequenceParams) else list(range(seq.n_slices))
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"marcos:{getattr(self, 'console', '?')}",
            dtype="<c8", shape=[2, n], axes=["coil", "readout"], units="a.u.", channel_names=["rx0", "rx1"],
            sample_rate_hz=seq.bandwidth_hz, frame_rate_hz=1 / seq.tr_s,
            geometry={"fov_m": list(seq.fov_m), "matrix": [n, n], "readout_axis": "x",
                      "phase_axis": "y", "slice_mm": slice_mm, "phase_lines": seq.phase_lines, "orientation": "axial",
                      "slices": seq.n_slices, "slice_positions_mm": seq.slice_positions_mm, "slice_order": order,
                      "dk_per_m": self.seq.dk, "image_axes": ["y", "x"]},
            meta={"field_strength_t": self.settings.limits.b0_t, "larmor_hz": self.settings.limits.larmor_hz,
                  "sequence": self.seq.describe(), "address": self.address,
                  "server_version": list(self.server_version or ())},
        )

    def _chunk(self, first: int) -> tuple[int, int]:
        n = self.seq.shots
        return first, (min(self.settings.lines_per_run, n - first) if first >= 0 else -first)

    def _prepare(self, first: int) -> tuple[int, int, bytes]:
        if self._prepared is None or self._prepared[0] != first:
            f, count = self._chunk(first)
            self._prepared = (f, count, _compile(self.seq, self.settings, f, count).tobytes())
        return self._prepared

    def _launch(self) -> None:
        first, count, code = self._prepare(self._next_line)
        self._prepared = None
        cmds: dict[str, Any] = {"run_seq": code}
        if self.console_timing:
            cmds[TIMING_CMD] = 0
        idx = self._send_request(cmds)
        self._inflight = (idx, first, count)
        self._inflight_code = code

    def _nominal_of(self, code: bytes) -> dict[str, Any]:
        """Nominal cycles (every wait its minimum) of a program: trigger-output rising edges,
        wait resumes, channel-0 ADC window starts, duration."""
        nom = self._nominal.get(code)
        if nom is None:
            tl = decode(code, trigger=NOMINAL_TRIGGER)
            nom = {"rises": [c for c, lvl in tl.trig_out if lvl], "resumes": [w.resume for w in tl.waits],
                   "rx": [w.start for w in tl.rx if w.channel == 0], "duration": tl.duration}
            if len(self._nominal) > 8:
                self._nominal.clear()
            self._nominal[code] = nom
        return nom

    def _run_timing(self, ev: Reply, code: bytes, first: int, count: int, t_mono: int,
                    real_minus_mono: int) -> tuple[list[float], dict[int, list[dict[str, Any]]]] | None:
        """The run on the console clock: the ADC windows' start times (console s) and per shot
        of the run its trigger events; feeds the clock fit. None without the extension's answer."""
        tim = ev.results.get(TIMING_CMD)
        if not isinstance(tim, dict):
            if self.console_timing:
                self.count("bad_timing")
            return None
        try:
            c0, end = int(tim["start"]), int(tim["end"])
            waits = [(int(w[0]), int(w[1]), int(w[2])) for w in tim["waits"]]
        except (KeyError, TypeError, ValueError, IndexError):
            self.count("bad_timing")
            return None
        nom = self._nominal_of(code)
        if len(waits) != len(nom["resumes"]) or ev.errors:
            self.count("bad_timing")
            return None
        self._clock.update(end / F_CLK_HZ, t_mono)
        extra = [(r_nom, w[1] - r_nom) for r_nom, w in zip(nom["resumes"], waits)]

        def actual(c: int) -> int:
            return c + sum(d for r, d in extra if r <= c)

        def event(cycle: int, line: str, sample: int) -> dict[str, Any]:
            t_dev = (c0 + cycle) / F_CLK_HZ
            t = self._clock.time_of(t_dev)
            return TriggerEvent(line, "rising", sample, t_dev, t, t + real_minus_mono, 1 / F_CLK_HZ).to_meta()

        per_shot: dict[int, list[dict[str, Any]]] = {}
        acquired = [j for j in range(count) if first + j >= 0]
        for j, c in zip(acquired, nom["rises"]):
            per_shot.setdefault(j, []).append(event(actual(c), "trig_out", first + j))
        for j, (_, _, edge) in enumerate(waits):
            if edge >= 0:
                per_shot.setdefault(j, []).append(event(edge, "trig_in", first + j))
                self.count("trig_in_edges")
        starts = [(c0 + actual(c)) / F_CLK_HZ for c in nom["rx"]]
        return starts, per_shot

    def _following(self, first: int, count: int) -> int:
        """The first line of the run after ``first..first+count-1``."""
        nxt = first + count
        return 0 if nxt >= self.seq.shots else nxt

    def read(self, timeout: float) -> list[Frame | Gap]:
        if not self._running and self._inflight is None:
            time.sleep(min(timeout, 0.05))
            return []
        if self._inflight is None:
            self._launch()
        idx, first, count = self._inflight  # type: ignore[misc]
        ev = None
        for e in self._pending:
            if isinstance(e, Reply) and e.index == idx + 1:
                ev = e
        if ev is None:
            # compile the next run while this one plays, so that it goes out the moment this
            # one's reply is in (and the frames are not held back by the compiler)
            t0 = time.monotonic()
            self._prepare(self._following(first, count))
            ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1,
                             max(0.0, timeout - (time.monotonic() - t0)))
        else:
            self._pending.remove(ev)
        if ev is None:
            return []
        self._inflight = None
        t_mono, t_host = time.monotonic_ns(), time.time_ns()
        timing = self._run_timing(ev, self._inflight_code, first, count, t_mono, t_host - t_mono) \
            if self.console_timing else None
        out: list[Frame | Gap] = self._frames(ev, first, count, t_mono, t_host, timing)
        self._next_line = first + count
        if first >= 0 and self._next_line >= self.seq.shots:
            self._next_line = 0
            self._image += 1
            if self.settings.repetitions and self._image >= self.settings.repetitions:
                self._running = False
        if self._running:
            self._launch()  # the next run plays while this one's frames are published
        return out

    def _frames(self, ev: Reply, first: int, count: int, t_mono: int, t_host: int,
                timing: tuple[list[float], dict[int, list[dict[str, Any]]]] | None = None) -> list[Frame | Gap]:
        if first < 0:
            return []
        n = self.seq.matrix
        acqs = [a for s in range(first, first + count) for a in self.seq.shot_acqs(s)]
        phases = np.asarray([ph for s in range(first, first + count) for ph in self.seq.acq_phases(s)])
        lines = [ln for _, ln in acqs]
        rx = ev.results.get("run_seq")
        need = n * len(lines)
        if not isinstance(rx, dict) or any(len(rx.get(k, ())) != need for k in ("rx0_i", "rx0_q", "rx1_i", "rx1_q")):
            self.count("short_runs")
            return [Gap(lost_frames=len(lines), reason=f"run of shots {first}..{first + count - 1}: "
                        f"{'; '.join(ev.errors) or 'RX data missing or short'}")]
        scale = _cic_excess(self.seq.dwell_cycles) / (1 << 24)
        data = np.empty((len(lines), 2, n), np.complex64)
        for ch in (0, 1):
            i = np.asarray(rx[f"rx{ch}_i"], dtype=np.int64).astype(np.uint32).view(np.int32)
            q = np.asarray(rx[f"rx{ch}_q"], dtype=np.int64).astype(np.uint32).view(np.int32)
            data[:, ch, :] = ((i + 1j * q.astype(np.float64)) * scale).reshape(len(lines), n)
        if phases.any():  # the ADC phase offsets of a Pulseq file (RF spoiling): turned back
            data *= np.exp(-1j * phases)[:, None, None].astype(np.complex64)
        out: list[Frame | Gap] = []
        image_done = first + count >= self.seq.shots
        pos = self.seq.slice_positions_mm
        per_shot = [len(self.seq.shot_acqs(s)) for s in range(first, first + count)]
        shot_of = [k for k, m in enumerate(per_shot) for _ in range(m)]
        starts = timing[0] if timing is not None and len(timing[0]) == len(acqs) else None
        for j, (sl, line) in enumerate(acqs):
            meta: dict[str, Any] = {"line": line, "ky": (line - n / 2) * self.seq.dk, "image": self._image,
                                    "last": image_done and j == len(lines) - 1}
            if pos is not None:
                meta["slice"], meta["slice_position_mm"] = sl, pos[sl]
            k = shot_of[j]
            if timing is not None and (j == 0 or shot_of[j - 1] != k) and timing[1].get(k):
                meta[FRAME_TRIGGERS_KEY] = timing[1][k]
            out.append(Frame(data[j], t_host, t_mono, t_device=None if starts is None else starts[j], meta=meta))
        return out
