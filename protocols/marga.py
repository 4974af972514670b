"""MaRCoS console machine code (the marga FSM behind ``run_seq``): decoder and encoder.

Facts from marcos_client ``marmachine.py`` / ``marcompile.py`` / ``experiment.py`` /
``grad_board.py`` and marcos_server ``hardware.cpp``:

* The clock is 122.88 MHz (:data:`F_CLK_HZ`). A program is little-endian uint32 words.
* **Type A** (FSM control): ``instr << 24 | data24``: ``INOP`` 0 (one cycle), ``IFINISH`` 1,
  ``IWAIT`` 2 (``data + 3`` cycles in all: marcompile soaks ``wait_time`` cycles with
  ``insta(IWAIT, wait_time - 3)``), ``ITRIG`` 3, ``ITRIGFOREVER`` 4.
* **Type B** (timed buffered data): ``(0x80 | buffer) << 24 | delay8 << 16 | data16``. One
  cycle to issue; the buffer outputs ``data`` ``delay`` cycles later (a buffer is a FIFO: a
  word waits until the previous word of that buffer has been output, then its delay counts).
  Here an output lands at ``max(issue, buffer free) + delay + 1``: marcompile gives the ``b``
  words of one event delays ``b - m - 1`` so that all of them land together.
* Buffers (``marmachine.py``): 0 GRAD_CTRL, 1 GRAD_LSB, 2 GRAD_MSB, 3/4 RX0/RX1_RATE (CIC words:
  bits 12-13 address, 0 = rate 4..4095), 5-8 TX0_I, TX0_Q, TX1_I, TX1_Q (int16, full scale
  32767), 9-14 DDS0..2 PHASE_LSB/MSB (31-bit phase step ``round(2**31 * f / f_clk)``; MSB bit 15
  resets the phase), 15 GATES_LEDS (bit 0 tx_gate, 1 rx_gate, 2 trig_out, 8-15 LEDs), 16 RX_CTRL
  (bits 0-1 / 2-3 RX0/RX1 LO source, 4/5 rate valid, 6/7 reset_n, 8/9 RX0/RX1 enable).
* Gradients: a 32-bit word as MSB/LSB halves. GPA-FHDO (GRAD_CTRL bits 0-1 = 2): channel in
  bits 16-17, DAC code offset-binary 16 bit (``code / 32768 - 1``, full scale ±1), latency
  276 cycles (``grad_board.GPAFHDO`` latencies). OCRA1 (= 1): channel bits 25-26, 18-bit two's
  complement in bits 2-19 (``/ 131072``), latency 268.
* ``direct`` writes ``buffer << 24 | data16`` to a buffer at once (hardware.cpp ``halt``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

__all__ = [
    "F_CLK_HZ", "INOP", "IFINISH", "IWAIT", "ITRIG", "ITRIGFOREVER", "IDATA", "COUNTER_MAX",
    "GRAD_CTRL", "GRAD_LSB", "GRAD_MSB", "RX0_RATE", "RX1_RATE", "TX0_I", "TX0_Q", "TX1_I", "TX1_Q",
    "DDS0_PHASE_LSB", "DDS0_PHASE_MSB", "GATES_LEDS", "RX_CTRL", "N_BUFFERS",
    "GRAD_BOARD_OCRA1", "GRAD_BOARD_FHDO", "GRAD_LATENCY", "CIC_FASTEST_RATE", "CIC_SLOWEST_RATE",
    "MachineCodeError", "Output", "RxWindow", "Timelines", "insta", "instb", "execute", "decode",
    "fhdo_word", "ocra1_word", "lo_phase_step", "Program", "compile_changes",
]

F_CLK_HZ: Final = 122.88e6
INOP, IFINISH, IWAIT, ITRIG, ITRIGFOREVER = 0x0, 0x1, 0x2, 0x3, 0x4
IDATA: Final = 0x80
COUNTER_MAX: Final = 0xFFFFFF

GRAD_CTRL, GRAD_LSB, GRAD_MSB, RX0_RATE, RX1_RATE = 0, 1, 2, 3, 4
TX0_I, TX0_Q, TX1_I, TX1_Q = 5, 6, 7, 8
DDS0_PHASE_LSB, DDS0_PHASE_MSB = 9, 10
GATES_LEDS, RX_CTRL = 15, 16
N_BUFFERS: Final = 17
GRAD_BOARD_OCRA1, GRAD_BOARD_FHDO = 1, 2
#: DAC latency (cycles) of each gradient board, as marcos_client's grad_board.py compensates it
GRAD_LATENCY: Final = {GRAD_BOARD_OCRA1: 268, GRAD_BOARD_FHDO: 276}
CIC_FASTEST_RATE, CIC_SLOWEST_RATE = 4, 4095


class MachineCodeError(ValueError):
    """A word the marga FSM does not know, or an out-of-range field."""


def insta(instr: int, data: int) -> int:
    """Type-A word (FSM control)."""
    if instr not in (INOP, IFINISH, IWAIT, ITRIG, ITRIGFOREVER):
        raise MachineCodeError(f"unknown instruction {instr}")
    if not 0 <= data <= COUNTER_MAX:
        raise MachineCodeError(f"type-A data {data} out of 0..0xffffff")
    return (instr << 24) | data


def instb(buffer: int, delay: int, data: int) -> int:
    """Type-B word: ``data`` (16 bit) to ``buffer`` after ``delay`` (0..255) cycles."""
    if not 0 <= buffer < 0x7F or not 0 <= delay <= 255 or not 0 <= data <= 0xFFFF:
        raise MachineCodeError(f"type-B fields out of range: buffer {buffer}, delay {delay}, data {data}")
    return ((IDATA | buffer) << 24) | (delay << 16) | data


@dataclass(frozen=True, slots=True)
class Output:
    """One buffer output: at ``cycle`` buffer ``buffer`` takes ``value``."""

    cycle: int
    buffer: int
    value: int


def execute(words: np.ndarray | Sequence[int] | bytes) -> tuple[list[Output], int]:
    """Run the FSM over a program: the buffer outputs in time order and the FINISH cycle.

    A program without ``IFINISH`` ends after its last word. ``ITRIG``/``ITRIGFOREVER`` take
    one cycle (no external trigger here)."""
    if isinstance(words, (bytes, bytearray, memoryview)):
        if len(words) % 4:
            raise MachineCodeError(f"machine code is whole uint32 words; got {len(words)} bytes")
        w = np.frombuffer(words, "<u4")
    else:
        w = np.asarray(words, dtype=np.uint32)
    free = [0] * 128
    out: list[Output] = []
    cycle = 0
    for word in w.tolist():
        op = word >> 24
        if op & IDATA:
            buf = op & 0x7F
            if buf >= N_BUFFERS + 7:  # marmachine: tgt <= 24
                raise MachineCodeError(f"word 0x{word:08x}: unknown buffer {buf}")
            delay = (word >> 16) & 0xFF
            t = max(cycle, free[buf]) + delay + 1
            free[buf] = t
            out.append(Output(t, buf, word & 0xFFFF))
            cycle += 1
        elif op == IWAIT:
            cycle += (word & COUNTER_MAX) + 3
        elif op in (INOP, ITRIG, ITRIGFOREVER):
            cycle += 1
        elif op == IFINISH:
            cycle += 1
            break
        else:
            raise MachineCodeError(f"word 0x{word:08x}: unknown instruction 0x{op:02x}")
    out.sort(key=lambda o: o.cycle)
    return out, max([cycle] + [o.cycle for o in out])


@dataclass(frozen=True, slots=True)
class RxWindow:
    """One ADC window of one receiver: samples at ``start + rate * (j + 1)`` cycles,
    ``j = 0 .. n - 1``, demodulated by LO ``lo``."""

    channel: int
    start: int
    rate: int
    n: int
    lo: int

    def sample_cycles(self) -> np.ndarray:
        return self.start + self.rate * (np.arange(self.n, dtype=np.int64) + 1)


@dataclass
class Timelines:
    """What a program does, in cycles (divide by :data:`F_CLK_HZ` for seconds).

    ``tx``: per TX channel ``(cycles, complex amplitude in [-1, 1])`` steps; ``tx_gate``:
    ``(cycles, 0/1)`` steps; ``grad``: per gradient channel 0..3 ``(cycles, value in [-1, 1])``
    steps at the DAC (latency applied); ``lo_hz``: per DDS ``(cycles, frequency Hz)``;
    ``rx``: ADC windows; ``duration``: the FINISH cycle; ``grad_board``: 1 ocra1, 2 fhdo."""

    tx: list[tuple[np.ndarray, np.ndarray]]
    tx_gate: tuple[np.ndarray, np.ndarray]
    grad: list[tuple[np.ndarray, np.ndarray]]
    lo_hz: list[tuple[np.ndarray, np.ndarray]]
    rx: list[RxWindow]
    duration: int
    grad_board: int = GRAD_BOARD_FHDO
    leds: list[tuple[int, int]] = field(default_factory=list)


def _s16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def lo_phase_step(freq_hz: float, f_clk: float = F_CLK_HZ) -> int:
    """31-bit DDS phase step for ``freq_hz`` (experiment.py: ``round(2**31 / f_clk * f)``)."""
    return int(round(2 ** 31 * freq_hz / f_clk)) & 0x7FFFFFFF


def fhdo_word(channel: int, value: float) -> int:
    """GPA-FHDO 32-bit gradient word for ``value`` in [-1, 1] (grad_board.GPAFHDO.float2bin)."""
    code = int(np.clip(round(32767.51 * (value + 1)), 0, 0xFFFF))
    return code | 0x80000 | (channel << 16) | (channel << 25)


def ocra1_word(channel: int, value: float) -> int:
    """OCRA1 32-bit gradient word (broadcast) for ``value`` in [-1, 1]."""
    code = int(round(131071.49 * float(np.clip(value, -1, 1)))) & 0x3FFFF
    return (code << 2) | 0x00100000 | (channel << 25) | 0x01000000


def decode(words: np.ndarray | Sequence[int] | bytes, initial: Sequence[int] | None = None) -> Timelines:
    """Decode a program into RF, gradient, LO and ADC timelines.

    ``initial``: buffer values before the program (the console keeps them between runs)."""
    outs, end = execute(words)
    bufs = [0] * (N_BUFFERS + 8)
    if initial is not None:
        bufs[:len(initial)] = list(initial)
    tx_t: list[list[int]] = [[0], [0]]
    tx_v: list[list[complex]] = [[complex(_s16(bufs[TX0_I]), _s16(bufs[TX0_Q])) / 32767],
                                 [complex(_s16(bufs[TX1_I]), _s16(bufs[TX1_Q])) / 32767]]
    gate_t, gate_v = [0], [bufs[GATES_LEDS] & 1]
    g_t: list[list[int]] = [[0] for _ in range(4)]
    g_v: list[list[float]] = [[0.0] for _ in range(4)]
    lo_t: list[list[int]] = [[0] for _ in range(3)]
    lo_v: list[list[float]] = [[0.0] for _ in range(3)]
    for d in range(3):
        step = ((bufs[DDS0_PHASE_MSB + 2 * d] & 0x7FFF) << 16) | bufs[DDS0_PHASE_LSB + 2 * d]
        lo_v[d][0] = step * F_CLK_HZ / 2 ** 31
    rx: list[RxWindow] = []
    rx_open: list[int | None] = [None, None]
    rate = [bufs[RX0_RATE] & 0xFFF or CIC_SLOWEST_RATE, bufs[RX1_RATE] & 0xFFF or CIC_SLOWEST_RATE]
    leds: list[tuple[int, int]] = []
    i = 0
    n = len(outs)
    while i < n:
        c = outs[i].cycle
        changed: set[int] = set()
        while i < n and outs[i].cycle == c:
            o = outs[i]
            bufs[o.buffer] = o.value
            changed.add(o.buffer)
            i += 1
        board = bufs[GRAD_CTRL] & 3
        for ch in (0, 1):
            if changed & {TX0_I + 2 * ch, TX0_Q + 2 * ch}:
                tx_t[ch].append(c)
                tx_v[ch].append(complex(_s16(bufs[TX0_I + 2 * ch]), _s16(bufs[TX0_Q + 2 * ch])) / 32767)
        if GATES_LEDS in changed:
            gate_t.append(c)
            gate_v.append(bufs[GATES_LEDS] & 1)
            leds.append((c, (bufs[GATES_LEDS] >> 8) & 0xFF))
        if GRAD_LSB in changed and board in (GRAD_BOARD_OCRA1, GRAD_BOARD_FHDO):
            # the pair is complete when the LSB half is output; no board selected: no transfer
            word = (bufs[GRAD_MSB] << 16) | bufs[GRAD_LSB]
            if board == GRAD_BOARD_OCRA1 and word & 0x00100000:
                chan = (word >> 25) & 3
                code = (word >> 2) & 0x3FFFF
                g_t[chan].append(c + GRAD_LATENCY[board])
                g_v[chan].append((code - (1 << 18) if code & (1 << 17) else code) / 131072)
            elif board == GRAD_BOARD_FHDO and word & 0x80000:  # a DAC write command
                chan = (word >> 16) & 3
                g_t[chan].append(c + GRAD_LATENCY[board])
                g_v[chan].append((word & 0xFFFF) / 32768 - 1)
        for d in range(3):
            if changed & {DDS0_PHASE_LSB + 2 * d, DDS0_PHASE_MSB + 2 * d}:
                step = ((bufs[DDS0_PHASE_MSB + 2 * d] & 0x7FFF) << 16) | bufs[DDS0_PHASE_LSB + 2 * d]
                lo_t[d].append(c)
                lo_v[d].append(step * F_CLK_HZ / 2 ** 31)
        for ch in (0, 1):
            if RX0_RATE + ch in changed and (bufs[RX0_RATE + ch] >> 12) & 3 == 0:
                r = bufs[RX0_RATE + ch] & 0xFFF
                if r:
                    rate[ch] = r
        if RX_CTRL in changed:
            for ch in (0, 1):
                en = (bufs[RX_CTRL] >> (8 + ch)) & 1
                if en and rx_open[ch] is None:
                    rx_open[ch] = c
                elif not en and rx_open[ch] is not None:
                    start = rx_open[ch]
                    assert start is not None
                    r = max(CIC_FASTEST_RATE, rate[ch])
                    lo = (bufs[RX_CTRL] >> (2 * ch)) & 3
                    rx.append(RxWindow(ch, start, r, (c - start) // r, min(lo, 2)))
                    rx_open[ch] = None
    for ch in (0, 1):  # a window still open at the end closes there
        start = rx_open[ch]
        if start is not None:
            r = max(CIC_FASTEST_RATE, rate[ch])
            rx.append(RxWindow(ch, start, r, (end - start) // r, min((bufs[RX_CTRL] >> (2 * ch)) & 3, 2)))

    def arr(t: list[int], v: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        ta = np.asarray(t, dtype=np.int64)
        order = np.argsort(ta, kind="stable")
        return ta[order], np.asarray(v)[order]

    return Timelines(tx=[arr(tx_t[k], tx_v[k]) for k in range(2)], tx_gate=arr(gate_t, gate_v),
                     grad=[arr(g_t[k], g_v[k]) for k in range(4)], lo_hz=[arr(lo_t[k], lo_v[k]) for k in range(3)],
                     rx=sorted(rx, key=lambda w: (w.start, w.channel)), duration=int(end),
                     grad_board=bufs[GRAD_CTRL] & 3 or GRAD_BOARD_FHDO, leds=leds)


@dataclass
class Program:
    """Buffer changes to compile: ``add(cycle, buffer, value)`` (value 16 bit). Several values
    for one buffer at one cycle are an error; events of one cycle are output together."""

    changes: dict[int, dict[int, int]] = field(default_factory=dict)

    def add(self, cycle: int, buffer: int, value: int) -> None:
        if cycle < 0:
            raise MachineCodeError(f"event at negative cycle {cycle}")
        slot = self.changes.setdefault(int(cycle), {})
        if buffer in slot and slot[buffer] != value:
            raise MachineCodeError(f"buffer {buffer} set to two values at cycle {cycle}")
        slot[buffer] = int(value) & 0xFFFF

    def add_grad(self, cycle: int, word: int) -> None:
        """A 32-bit gradient word (MSB and LSB halves together)."""
        self.add(cycle, GRAD_MSB, word >> 16)
        self.add(cycle, GRAD_LSB, word & 0xFFFF)

    def extend(self, items: Iterable[tuple[int, int, int]]) -> None:
        for c, b, v in items:
            self.add(c, b, v)


def compile_changes(program: Program, end_cycle: int | None = None) -> np.ndarray:
    """Machine code for ``program``: each event's ``b`` words are issued in the ``b`` cycles
    before it with delays ``b - m - 1`` (all land at the event's cycle), gaps filled with
    ``IWAIT``/``INOP``, then ``IFINISH`` (at ``end_cycle`` if given). Events closer together
    than their word count are a :class:`MachineCodeError` (never silently moved)."""
    words: list[int] = []
    cycle = 0
    for t in sorted(program.changes):
        slot = program.changes[t]
        b = len(slot)
        start = t - b
        if start < cycle:
            raise MachineCodeError(f"event at cycle {t} needs {b} cycles after cycle {cycle}; move it later")
        gap = start - cycle
        while gap > 2:
            w = min(gap, COUNTER_MAX + 3)
            words.append(insta(IWAIT, w - 3))
            gap -= w
        words.extend([insta(INOP, 0)] * gap)
        for m, (buf, val) in enumerate(sorted(slot.items())):
            words.append(instb(buf, b - m - 1, val))
        cycle = t
    if end_cycle is not None and end_cycle > cycle:
        gap = end_cycle - cycle
        while gap > 2:
            w = min(gap, COUNTER_MAX + 3)
            words.append(insta(IWAIT, w - 3))
            gap -= w
        words.extend([insta(INOP, 0)] * gap)
    words.append(insta(IFINISH, 0))
    return np.asarray(words, dtype=np.uint32)
