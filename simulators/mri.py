"""A MaRCoS-compatible MRI console (device role): the server protocol of vnegnev/marcos_server
on TCP (default port 11111), bound to :class:`~medacq.simulators.mri_model.SpinPhantomModel`.

Commands, replies and messages follow marcos_server ``hardware.cpp`` (server version 1.0.5):
``halt_and_reset`` (True), ``read_mem`` (0), ``fpga_clk`` (3 words, else -1 and the error),
``ctrl``, ``direct`` (0), ``regrd`` (a register), ``regstatus`` (7 registers: exec, status,
status latch, buffer errors, buffer full, buffer empty = 0xffffff, RX locations), ``mar_mem``
(at most 256 KiB, the info ``mar mem data bytes copied: N``), ``acq_rlim`` (1000..10 000 000),
``read_rx``, ``run_seq``, ``test_net``, ``test_bus``, ``are_you_real`` (``"simulation"``), in that
order in the reply map; unknown commands as ``UNKNOWN<n>: -1``.

``run_seq`` (machine code as msgpack bin) is decoded (:mod:`medacq.protocols.marga`) and played
on the phantom; the reply (``rx0_i``/``rx0_q``/``rx1_i``/``rx1_q``: uint32 two's-complement
words, as the server's ``mpack_write_int`` of ``uint32``; or ``0`` and the warning ``no RX data
received``) is sent when the sequence's duration has passed on the adapter clock, as the real
server answers when its FSM halts. Requests that arrive meanwhile wait, as on the
single-threaded server -- except the **emergency stop** (command 1), which halts the sequence at
once: the ``run_seq`` reply goes out with the samples acquired so far and the error
``sequence halted by emergency stop``, then the e-stop reply ``[129, idx+1, 0, version, {},
{warnings: ["Tried to carry out emergency stop!"], infos: [...]}]``. (The stock server only
prints "Emergency stop not yet implemented!" and adds that as an error; this console
implements it.) ``close_server`` (2) is answered ``Shutting down server.``; the simulator keeps
serving, as the real server does until its client disconnects.

**Clock and triggers.** The console's FSM clock is its own crystal: ``F_CLK_HZ`` × (1 +
``clock_ppm`` 1e-6), a free-running cycle counter that read ``clock_offset_s`` × F_CLK_HZ when the
adapter started. Program cycle ``c`` of a run started at adapter time ``t_s`` plays at true time
``t_s + c / f_true``. ``ITRIG``/``ITRIGFOREVER`` wait as marga does
(:mod:`medacq.protocols.marga`: any change of the input, four-flop synchroniser, next word
six cycles after the sampling edge; ``ITRIG``'s timeout) on the trigger input that
:func:`~medacq.simulators.trigger_bus.attach` cables to the console (``trigger``; without one no
change ever comes). A wait whose outcome lies in the future (no change on the line yet, the
timeout not yet passed) keeps the run pending: the console looks again every millisecond (a
change already *scheduled* on the line is taken at once). ``GATES_LEDS`` bit 2 (``trig_o``)
drives the output that :func:`~medacq.simulators.trigger_bus.drive` cables to a bus
(``trigger_out``): each high period becomes one pulse at its true time, put on the line as soon
as the console knows it (at ``run_seq`` for the words before any pending wait).

The FSM starts once the server has copied the program into its memory (as marcos_server does:
up to 256 KiB, 158.5 ns per word here). With a trigger output cabled it starts no earlier than
``trig_lead_s`` (100 ms) after the request: the simulator needs that long to decode the program
and put its pulses on the line before their time (the sinks sample the line as real time passes;
a pulse put there late is missed by a device that already sampled that moment).

**Extension** (not MaRCoS: the real server has no clock to report and answers it
``UNKNOWN<n>: -1``): the command ``medacq_timing`` answers ``{"now": counter, "f_clk_hz": ...}``
alone, and beside ``run_seq`` ``{"start": counter at program cycle 0, "end": counter at FINISH
(or at the emergency stop), "waits": [[issue, resume, edge or -1], ...] (program cycles),
"f_clk_hz": ...}``. Counters are FSM cycles of the console's clock. marcos_client never sends it.

Fault side door: ``drop n`` loses the next n ADC windows (an RX FIFO overrun: the reply carries
fewer samples and the server's error ``RX FIFO/s full during sequence ...``); ``device_error``
answers the next n requests with every result -1 and the error message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medacq.protocols._sansio import Garbage
from medacq.protocols.marcos import (
    CLOSE_SERVER, EMERGENCY_STOP, MSG_NO_COMMANDS, RESULT_ERROR, RESULT_OK, BadPacket, MarcosConnection,
    ReplyBuilder, Request,
)
from medacq.protocols.marga import (
    F_CLK_HZ, GATES_LEDS, N_BUFFERS, TRIG_OUT_BIT, MachineCodeError, Output, Timelines, TriggerPending, TriggerSource,
    TriggerWait, check_words, execute, timelines, trig_out_edges,
)
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.mri_model import ConsoleConfig, SpinPhantomModel
from medacq.simulators.trigger_bus import TriggerInput, TriggerOutput

__all__ = ["MarcosConsoleInterface", "make", "MARGA_MEM_SIZE"]

MARGA_MEM_SIZE = 64 * 4096
_ALL_EMPTY = (1 << 24) - 1
_COMMANDS = ("halt_and_reset", "read_mem", "fpga_clk", "ctrl", "direct", "regrd", "regstatus", "mar_mem",
             "acq_rlim", "read_rx", "run_seq", "test_net", "test_bus", "are_you_real", "medacq_timing")
#: how often a run waiting on its trigger input looks at the line again (s of adapter time)
_TRIG_POLL_S = 0.001
#: one 32-bit write of the server into the FSM's memory (the ``test_bus`` model below)
_WRITE_S = 158.5e-9


def _u32(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError("expected an unsigned integer")
    return x & 0xFFFFFFFF


class MarcosConsoleInterface(DeviceInterface):
    """The console: codec in server role, registers and buffers, the spin model."""

    def __init__(self, model: SpinPhantomModel | None = None, clock_ppm: float = 0.0, clock_offset_s: float = 0.0,
                 trig_lead_s: float = 0.1) -> None:
        self.model = model or SpinPhantomModel()
        self.trig_lead_s = float(trig_lead_s)
        self.clock_ppm = float(clock_ppm)
        self.clock_offset_s = float(clock_offset_s)
        self.f_true = F_CLK_HZ * (1.0 + self.clock_ppm * 1e-6)
        self.trigger: TriggerInput | None = None
        self.trigger_out: TriggerOutput | None = None
        self._pending: dict[str, Any] | None = None  # a run waiting on its trigger input
        self._timing: dict[str, Any] | None = None  # the extension's answer for the run in flight
        self.trig_waits = 0
        self.trig_edges = 0
        self.codec = MarcosConnection("server")
        self.buffers = [0] * N_BUFFERS
        self.regs = [0] * 16
        self.read_tries_limit = 1000
        self.bad_packets = 0
        self.garbage_bytes = 0
        self.requests = 0
        self.estops = 0
        self.runs = 0
        self._busy_until: float | None = None
        self._run_started = 0.0
        self._run: Any = None
        self._run_tl: Timelines | None = None
        self._run_builder: ReplyBuilder | None = None
        self._queue: list[Request] = []
        self._drop_windows = 0
        self.running = False

    # ---- DeviceInterface -------------------------------------------------------------
    @property
    def transmitting(self) -> bool:
        """RF/gradient output: a sequence is playing."""
        return self.running

    def on_connect(self, t: float) -> bytes:
        self.codec = MarcosConnection("server")
        self._queue.clear()
        return b""

    @property
    def _busy(self) -> bool:
        return self._busy_until is not None or self._pending is not None

    def console_cycles(self, t: float) -> int:
        """The console's cycle counter at adapter time ``t`` (s)."""
        return int(round((self.clock_offset_s + t * (1.0 + self.clock_ppm * 1e-6)) * F_CLK_HZ))

    def on_disconnect(self, t: float) -> None:
        if self._pending is not None:  # a run waiting for its trigger: halted with the link
            self._pending = None
            self._run_builder = None
            self._timing = None
            self.running = False
        if self._busy_until is not None:  # the sequence plays to its end; nobody gets the reply
            self._finish_run(min(t, self._busy_until))
        self._queue.clear()

    def on_bytes(self, data: bytes, t: float) -> bytes:
        out = bytearray()
        self.codec.receive_data(data)
        while True:
            ev = self.codec.next_event()
            if not ev:
                break
            if isinstance(ev, Garbage):
                self.garbage_bytes += ev.nbytes
                continue
            if isinstance(ev, BadPacket):
                self.bad_packets += 1
                continue
            assert isinstance(ev, Request)
            if self._busy:
                if ev.kind == EMERGENCY_STOP:
                    out += self._finish_run(t, estop=True)
                    out += self._handle(ev, t)
                else:
                    self._queue.append(ev)
                continue
            out += self._handle(ev, t)
        return bytes(out)

    def poll(self, t: float) -> bytes:
        out = bytearray()
        if self._pending is not None and t >= self._pending["check"]:
            self._try_run(t)
        if self._busy_until is not None and t >= self._busy_until:
            out += self._finish_run(self._busy_until)
        while not self._busy and self._queue:
            out += self._handle(self._queue.pop(0), t)
        return bytes(out)

    def next_deadline(self) -> float | None:
        if self._pending is not None:
            return float(self._pending["check"])
        return self._busy_until

    def truth(self) -> dict:
        ph = self.model.phantom
        return {"larmor_hz": self.model.config.larmor_hz, "b0_t": self.model.config.b0_t,
                "compartments": ph.n, "tissues": list(ph.tissue), "runs": self.runs, "estops": self.estops,
                "clock_ppm": self.clock_ppm, "clock_offset_s": self.clock_offset_s, "f_clk_hz": F_CLK_HZ,
                "trig_waits": self.trig_waits, "trig_edges": self.trig_edges,
                "trig_out_pulses": self.trigger_out.pulses if self.trigger_out else 0,
                "trig_out_collisions": self.trigger_out.collisions if self.trigger_out else 0,
                "trig_out_late": self.trigger_out.late if self.trigger_out else 0,
                "trig_out_worst_late_s": self.trigger_out.worst_late_s if self.trigger_out else 0.0}

    # ---- fault side door -------------------------------------------------------------
    def drop(self, n: int) -> None:
        """Lose the next ``n`` ADC windows (an RX FIFO overrun)."""
        self._drop_windows += int(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        self.queue_error(message, n, code)

    # ---- requests ----------------------------------------------------------------------
    def _handle(self, req: Request, t: float) -> bytes:
        self.requests += 1
        b = ReplyBuilder(req)
        if req.kind == EMERGENCY_STOP:
            self.estops += 1
            self.running = False
            b.warning("Tried to carry out emergency stop!")
            b.info("emergency stop: sequence halted, RF and gradient outputs off")
            return self.codec.send(b.build())
        if req.kind == CLOSE_SERVER:
            b.info("Shutting down server.")
            return self.codec.send(b.build())
        cmds = req.commands if isinstance(req.commands, dict) else {}
        present = len(cmds)
        if present == 0:
            b.error(MSG_NO_COMMANDS)
        injected = self.take_injected_error()
        if injected is not None:
            for k in cmds:
                b.result(str(k), RESULT_ERROR)
            b.error(injected[0])
            return self.codec.send(b.build())
        understood = 0
        deferred = False
        for name in _COMMANDS:
            if name not in cmds or cmds[name] is None:
                continue
            understood += 1
            try:
                if name == "run_seq":
                    deferred = self._start_run(b, cmds[name], t)
                elif name == "medacq_timing":
                    if deferred:
                        b.result(name, None)  # filled when the run ends
                        self._timing = {}
                    else:
                        b.result(name, {"now": self.console_cycles(t), "f_clk_hz": F_CLK_HZ})
                else:
                    b.result(name, self._command(name, cmds[name], b))
            except (TypeError, ValueError) as exc:
                b.result(name, RESULT_ERROR)
                b.error(f"{name}: {exc}")
        b.not_understood(present, understood)
        if deferred:
            self._run_builder = b
            return b""
        return self.codec.send(b.build())

    def _command(self, name: str, arg: Any, b: ReplyBuilder) -> Any:
        if name == "halt_and_reset":
            self.running = False
            self.buffers[16] = 0
            return True
        if name == "read_mem":
            return RESULT_OK
        if name == "fpga_clk":
            if not isinstance(arg, list) or len(arg) != 3:
                b.error("you only provided some FPGA clock control words; check you're providing all 3")
                return RESULT_ERROR
            for v in arg:
                _u32(v)
            return RESULT_OK
        if name == "ctrl":
            self.regs[0] = _u32(arg)
            return RESULT_OK
        if name == "direct":
            w = _u32(arg)
            self.regs[2] = w
            buf = w >> 24
            if buf < N_BUFFERS:
                self.buffers[buf] = w & 0xFFFF
            return RESULT_OK
        if name == "regrd":
            i = _u32(arg)
            return self._register(i)
        if name == "regstatus":
            return [self._register(i) for i in (4, 5, 6, 7, 8, 9, 10)]
        if name == "mar_mem":
            if not isinstance(arg, (bytes, bytearray)):
                raise TypeError("mar_mem takes binary data")
            if len(arg) <= MARGA_MEM_SIZE:
                b.info(f"mar mem data bytes copied: {len(arg)}")
                return RESULT_OK
            b.error(f"too much mar mem data: {len(arg)} bytes > {MARGA_MEM_SIZE} -- streaming not yet implemented")
            return RESULT_ERROR
        if name == "acq_rlim":
            rl = _u32(arg)
            if rl < 1000 or rl > 10000000:
                b.error("acquisition retry limit outside the range [1000, 10,000,000]; check your settings")
                return RESULT_ERROR
            self.read_tries_limit = rl
            return RESULT_OK
        if name == "read_rx":
            b.warning("no RX data received")
            return RESULT_OK
        if name == "test_net":
            n = _u32(arg)
            if n > 1 << 20:
                raise ValueError("test_net size over 1048576 in this simulator")
            k = np.arange(n, dtype=float)
            return {"array1": (1.01 * k).tolist(), "array2": (1.01 * (k + 10)).tolist()}
        if name == "test_bus":
            n = _u32(arg)
            # modelled bus timing (µs): ~1.5 ns per loop step, ~131 ns per read, ~158.5 ns per write
            return [int(n * 0.0015), int(n * 0.131), int(n * 0.1585)]
        if name == "are_you_real":
            return "simulation"
        raise ValueError(f"unhandled command {name}")

    def _register(self, i: int) -> int:
        if i == 4:
            return (2 << 24) if self.running else 0  # exec: FSM state << 24 | PC
        if i == 9:
            return _ALL_EMPTY
        return self.regs[i] if i < len(self.regs) and i not in (5, 6, 7, 8, 10) else 0

    # ---- sequences ---------------------------------------------------------------------
    def _start_run(self, b: ReplyBuilder, arg: Any, t: float) -> bool:
        if not isinstance(arg, (bytes, bytearray)):
            raise TypeError("run_seq takes the machine code as binary data")
        try:  # every word checked before anything plays (the waits do not change which words run)
            n_words = len(check_words(bytes(arg)))
        except MachineCodeError as exc:
            b.result("run_seq", RESULT_ERROR)
            b.error(f"run_seq: {exc}")
            return False
        # the FSM starts once the server has copied the program (up to the memory's size) into it
        t_s = t + min(n_words, MARGA_MEM_SIZE // 4) * _WRITE_S
        if self.trigger_out is not None:
            t_s = max(t_s, t + self.trig_lead_s)
        self._pending = {"code": bytes(arg), "t_s": t_s, "check": t, "emitted": set(),
                         "drop": self._drop_windows, "gates0": self.buffers[GATES_LEDS]}
        self._drop_windows = 0
        self._timing = None
        b.result("run_seq", None)  # placeholder keeps the server's key order
        self.running = True
        self._try_run(t)
        return True

    def _trigger_source(self, t_s: float, now: float) -> TriggerSource:
        """The trigger input as the program of a run started at ``t_s`` sees it, known up to ``now``."""
        f = self.f_true

        def source(lo: int, hi: int | None) -> int | None:
            hi_s = t_s + hi / f if hi is not None else None
            if self.trigger is not None:
                end = hi_s if hi_s is not None else max(now, t_s + lo / f) + 3600.0
                for te, _ in self.trigger.transitions(t_s + (lo - 1) / f, end):
                    k = int(np.ceil((te - t_s) * f - 1e-6))  # the first FSM clock edge at or after it
                    if k >= lo and (hi is None or k <= hi):
                        return k
            if hi_s is None or hi_s > now:
                raise TriggerPending("the trigger input may still change before the wait ends")
            return None

        return source

    def _try_run(self, t: float) -> bool:
        """Resolve the pending run's trigger waits with what the line holds at adapter time ``t``;
        once all are known, play it. True when it plays."""
        p = self._pending
        assert p is not None
        t_s = p["t_s"]
        waits: list[TriggerWait] = []
        try:
            outs, end = execute(p["code"], trigger=self._trigger_source(t_s, t), waits=waits)
        except TriggerPending as exc:
            self._emit_trig_out(exc.outputs, None, p)
            p["check"] = t + _TRIG_POLL_S
            return False
        self._pending = None
        self._emit_trig_out(outs, end, p)  # before the (slower) timelines: the pulses go out first
        tl = timelines(outs, end, waits, initial=self.buffers)
        self.trig_waits += len(tl.waits)
        self.trig_edges += sum(1 for w in tl.waits if w.edge is not None)
        res = self.model.run(tl, t_s, drop_windows=p["drop"])
        res.duration_s = tl.duration / self.f_true
        self.runs += 1
        self.running = True
        self._run = res
        self._run_tl = tl
        self._run_started = t_s
        self._busy_until = t_s + res.duration_s
        return True

    def _emit_trig_out(self, outputs: list[Output], end: int | None, p: dict[str, Any]) -> None:
        """Put the run's trigger-output pulses known so far on the line (each once): ``outputs``
        in time order, ``end`` the FINISH cycle once known (a pulse still high there ends with it)."""
        if self.trigger_out is None:
            return
        edges: list[tuple[int | None, int]] = list(trig_out_edges(outputs, p["gates0"]))
        rise: int | None = 0 if (p["gates0"] >> TRIG_OUT_BIT) & 1 else None
        for c, lvl in edges + ([(end, 0)] if end is not None else []):
            if lvl and rise is None:
                rise = c
            elif not lvl and rise is not None:
                if rise not in p["emitted"] and c is not None and c > rise:
                    p["emitted"].add(rise)
                    self.trigger_out.pulse(p["t_s"] + rise / self.f_true, (c - rise) / self.f_true)
                rise = None

    def _finish_run(self, t: float, estop: bool = False) -> bytes:
        res, b = self._run, self._run_builder
        timing, self._timing = self._timing, None
        if self._pending is not None:  # halted while it waited for its trigger
            t_s = self._pending["t_s"]
            self._pending = None
            self._run_builder = None
            self.running = False
            if b is None:
                return b""
            if timing is not None:
                b.result("medacq_timing", {"start": self.console_cycles(t_s), "end": self.console_cycles(t),
                                           "waits": [], "f_clk_hz": F_CLK_HZ})
            b.result("run_seq", RESULT_OK)
            b.error("sequence halted by emergency stop")
            b.warning("no RX data received")
            return self.codec.send(b.build())
        self._busy_until = None
        self._run = None
        self._run_builder = None
        self.running = False
        if res is None or b is None:
            return b""
        if timing is not None:
            tl = self._run_tl
            assert tl is not None
            c0 = self.console_cycles(self._run_started)
            end = c0 + tl.duration if not estop else self.console_cycles(t)
            b.result("medacq_timing", {"start": c0, "end": int(end), "f_clk_hz": F_CLK_HZ,
                                       "waits": [[w.issue, w.resume, -1 if w.edge is None else w.edge]
                                                 for w in tl.waits]})
        elapsed = (t - self._run_started) * self.f_true / F_CLK_HZ
        rx: dict[str, list[int]] = {}
        for ch in (0, 1):
            counts, times = res.counts[ch], res.times_s[ch]
            if estop:
                keep = int(np.searchsorted(times, elapsed, side="right"))
                counts = counts[: 2 * keep]
            if len(counts):
                u = counts.astype(np.int64) & 0xFFFFFFFF
                rx[f"rx{ch}_i"] = u[0::2].tolist()
                rx[f"rx{ch}_q"] = u[1::2].tolist()
        if "rx_overrun" in res.notes:
            b.error("RX FIFO/s full during sequence around byte address 0x0")
        if estop:
            b.error("sequence halted by emergency stop")
        if rx:
            b.result("run_seq", rx)
        else:
            b.result("run_seq", RESULT_OK)
            b.warning("no RX data received")
        return self.codec.send(b.build())


def make(**options: Any) -> MarcosConsoleInterface:
    """Factory for ``medacq sim mri`` (serve it with ``--tcp 127.0.0.1:11111``).

    Options: ``b0_t`` (0.2 T), ``larmor_offset_hz`` (0), ``b1_hz`` (2500: γB1/2π at TX full
    scale), ``grad_mt_per_m`` (20: every channel's full scale), ``noise_fraction`` (2e-5),
    ``t2_prime_ms`` (0 = off), ``half_fov_mm`` (100), ``slice_z`` (-0.25), ``seed`` (0).
    """
    known = {"b0_t", "larmor_offset_hz", "b1_hz", "grad_mt_per_m", "noise_fraction", "t2_prime_ms",
             "half_fov_mm", "slice_z", "seed", "clock_ppm", "clock_offset_s"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown mri simulator options: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    g = float(options.get("grad_mt_per_m", 20.0)) * 1e-3
    cfg = ConsoleConfig(b0_t=float(options.get("b0_t", 0.2)), larmor_offset_hz=float(options.get("larmor_offset_hz", 0.0)),
                        b1_hz=float(options.get("b1_hz", 2500.0)), grad_t_per_m=(g, g, g),
                        noise_fraction=float(options.get("noise_fraction", 2e-5)),
                        t2_prime_s=float(options.get("t2_prime_ms", 0.0)) * 1e-3,
                        half_fov_m=float(options.get("half_fov_mm", 100.0)) * 1e-3,
                        slice_z=float(options.get("slice_z", -0.25)), seed=int(options.get("seed", 0)))
    return MarcosConsoleInterface(SpinPhantomModel(cfg), clock_ppm=float(options.get("clock_ppm", 0.0)),
                                  clock_offset_s=float(options.get("clock_offset_s", 0.0)))
