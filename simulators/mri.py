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
from medacq.protocols.marga import N_BUFFERS, MachineCodeError, decode
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.mri_model import ConsoleConfig, SpinPhantomModel

__all__ = ["MarcosConsoleInterface", "make", "MARGA_MEM_SIZE"]

MARGA_MEM_SIZE = 64 * 4096
_ALL_EMPTY = (1 << 24) - 1
_COMMANDS = ("halt_and_reset", "read_mem", "fpga_clk", "ctrl", "direct", "regrd", "regstatus", "mar_mem",
             "acq_rlim", "read_rx", "run_seq", "test_net", "test_bus", "are_you_real")


def _u32(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError("expected an unsigned integer")
    return x & 0xFFFFFFFF


class MarcosConsoleInterface(DeviceInterface):
    """The console: codec in server role, registers and buffers, the spin model."""

    def __init__(self, model: SpinPhantomModel | None = None) -> None:
        self.model = model or SpinPhantomModel()
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

    def on_disconnect(self, t: float) -> None:
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
            if self._busy_until is not None:
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
        if self._busy_until is not None and t >= self._busy_until:
            out += self._finish_run(self._busy_until)
        while self._busy_until is None and self._queue:
            out += self._handle(self._queue.pop(0), t)
        return bytes(out)

    def next_deadline(self) -> float | None:
        return self._busy_until

    def truth(self) -> dict:
        ph = self.model.phantom
        return {"larmor_hz": self.model.config.larmor_hz, "b0_t": self.model.config.b0_t,
                "compartments": ph.n, "tissues": list(ph.tissue), "runs": self.runs, "estops": self.estops}

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
        try:
            tl = decode(bytes(arg), initial=self.buffers)
        except MachineCodeError as exc:
            b.result("run_seq", RESULT_ERROR)
            b.error(f"run_seq: {exc}")
            return False
        drop = self._drop_windows
        self._drop_windows = 0
        res = self.model.run(tl, t, drop_windows=drop)
        self.runs += 1
        self.running = True
        self._run = res
        self._run_started = t
        self._busy_until = t + res.duration_s
        b.result("run_seq", None)  # placeholder keeps the server's key order
        return True

    def _finish_run(self, t: float, estop: bool = False) -> bytes:
        res, b = self._run, self._run_builder
        self._busy_until = None
        self._run = None
        self._run_builder = None
        self.running = False
        if res is None or b is None:
            return b""
        elapsed = t - self._run_started
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
             "half_fov_mm", "slice_z", "seed"}
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
    return MarcosConsoleInterface(SpinPhantomModel(cfg))
