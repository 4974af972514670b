"""MaRCoS console machine code (the marga FSM behind ``run_seq``): decoder and encoder.

Facts from marcos_client ``marmachine.py`` / ``marcompile.py`` / ``experiment.py`` /
``grad_board.py`` and marcos_server ``hardware.cpp``:

* The clock is 122.88 MHz (:data:`F_CLK_HZ`). A program is little-endian uint32 words.
* **Type A** (FSM control): ``instr << 24 | data24``: ``INOP`` 0 (one cycle), ``IFINISH`` 1,
  ``IWAIT`` 2 (``data + 3`` cycles in all: marcompile soaks ``wait_time`` cycles with
  ``insta(IWAIT, wait_time - 3)``), ``ITRIG`` 3, ``ITRIGFOREVER`` 4.
* **External trigger** (marga ``mardecode.sv``, all on the 122.88 MHz FSM clock): the input
  ``trig_i`` passes a four-flop synchroniser and *any change* of its level (rising or falling)
  raises a one-cycle ``trig_state_change`` four cycles after the edge that first samples it. An
  ``ITRIG`` word (``data`` = timeout in cycles) moves the FSM to its TRIG state, where it leaves
  on that pulse or when the timeout counter reaches 0; ``ITRIGFOREVER`` waits without a timeout
  (until a change, or the FSM is stopped). Either way the next word issues two cycles later
  (PREPARE, RUN): an edge first sampled at cycle ``k`` lets the next word issue at ``k + 6``
  (:data:`TRIG_RESUME_CYCLES`), a timeout at ``issue + data + 3`` (as ``IWAIT``). A change is
  seen only while the FSM waits (it is not latched): one sampled up to 3 cycles before the
  ``ITRIG`` word still counts (it is in the synchroniser), an earlier one is lost.
  (``GATES_LEDS`` bit 2 drives ``trig_o``, the trigger output; marcos_client's sequence dict
  key ``trig_out``.) The real server has no way to report when a wait ended.
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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

__all__ = [
    "F_CLK_HZ", "INOP", "IFINISH", "IWAIT", "ITRIG", "ITRIGFOREVER", "IDATA", "COUNTER_MAX",
    "GRAD_CTRL", "GRAD_LSB", "GRAD_MSB", "RX0_RATE", "RX1_RATE", "TX0_I", "TX0_Q", "TX1_I", "TX1_Q",
    "DDS0_PHASE_LSB", "DDS0_PHASE_MSB", "GATES_LEDS", "RX_CTRL", "N_BUFFERS",
    "GRAD_BOARD_OCRA1", "GRAD_BOARD_FHDO", "GRAD_LATENCY", "CIC_FASTEST_RATE", "CIC_SLOWEST_RATE",
    "MachineCodeError", "TriggerPending", "TriggerWait", "TriggerSource", "TRIG_RESUME_CYCLES", "TRIG_OUT_BIT",
    "NOMINAL_TRIGGER", "Output", "RxWindow", "Timelines", "insta", "instb", "execute", "check_words", "decode",
    "timelines", "trig_out_edges",
    "fhdo_word", "ocra1_word", "lo_phase_step", "Program", "compile_changes", "add_trig_out",
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


#: cycles from the clock edge that first samples a trigger-input change to the issue of the word
#: after the waiting ``ITRIG``/``ITRIGFOREVER`` (synchroniser 4, PREPARE 1, RUN 1)
TRIG_RESUME_CYCLES: Final = 6
#: ``GATES_LEDS`` bit of the trigger output ``trig_o``
TRIG_OUT_BIT: Final = 2


class MachineCodeError(ValueError):
    """A word the marga FSM does not know, or an out-of-range field."""


class TriggerPending(Exception):
    """The trigger source cannot answer yet (the wait's outcome lies in the future). Raised out
    of :func:`execute` with ``cycle`` (the waiting word's) and ``outputs`` (those of the words
    before it, in time order: final whatever the wait does)."""

    cycle: int = 0
    outputs: list["Output"] = []


#: ``source(lo, hi)``: the program cycle (``>= lo``) at which the FSM clock first samples a change
#: of the trigger input, if that is ``<= hi`` (``hi`` None: no bound), else ``None``; raises
#: :class:`TriggerPending` when that is not known yet.
TriggerSource = Callable[[int, "int | None"], "int | None"]


def NOMINAL_TRIGGER(lo: int, hi: int | None) -> int | None:
    """A trigger source whose change is already in the synchroniser: every wait takes its
    minimum (3 cycles). The *nominal* timing of a program, to which a console's actual waits add."""
    return lo


@dataclass(frozen=True, slots=True)
class TriggerWait:
    """One ``ITRIG``/``ITRIGFOREVER`` as played: ``issue`` the cycle of the word, ``resume`` the
    cycle at which the next word issued, ``edge`` the cycle at which the trigger change that ended
    it was first sampled (``None``: the timeout ended it)."""

    issue: int
    resume: int
    edge: int | None
    forever: bool


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


def execute(words: np.ndarray | Sequence[int] | bytes, trigger: TriggerSource | None = None,
            waits: list[TriggerWait] | None = None) -> tuple[list[Output], int]:
    """Run the FSM over a program: the buffer outputs in time order and the FINISH cycle.

    A program without ``IFINISH`` ends after its last word. ``ITRIG``/``ITRIGFOREVER`` wait for
    a change of the trigger input as marga does (module docstring) as ``trigger`` reports it;
    without a source no change ever comes: ``ITRIG`` runs to its timeout and ``ITRIGFOREVER``
    raises :class:`TriggerPending`. Each wait is appended to ``waits`` when given."""
    w = check_words(words)
    op = w >> 24
    fin = np.flatnonzero(op == IFINISH)
    if len(fin):
        w, op = w[:fin[0] + 1], op[:fin[0] + 1]
    n = len(w)
    dur = np.ones(n, np.int64)
    iw = op == IWAIT
    dur[iw] = (w[iw] & COUNTER_MAX).astype(np.int64) + 3
    issue = np.empty(n, np.int64)
    base = 0
    prev = 0
    for i in np.flatnonzero((op == ITRIG) | (op == ITRIGFOREVER)).tolist():
        seg = dur[prev:i]
        issue[prev:i + 1] = base + np.concatenate([[0], np.cumsum(seg)])
        cycle = int(issue[i])
        forever = int(op[i]) == ITRIGFOREVER
        d = int(w[i]) & COUNTER_MAX
        timeout_end = None if forever else cycle + 1 + d  # the TRIG state's evaluation that sees tmr == 0
        k: int | None = None
        try:
            if trigger is not None:
                k = trigger(cycle - 3, None if timeout_end is None else timeout_end - 4)
            elif forever:
                raise TriggerPending(f"ITRIGFOREVER at cycle {cycle} with no trigger input")
        except TriggerPending as exc:
            exc.cycle = cycle
            exc.outputs = _outputs(w[:i], op[:i], issue[:i])[0]
            raise
        if k is not None:
            k = max(int(k), cycle - 3)
            resume = k + TRIG_RESUME_CYCLES
        else:
            assert timeout_end is not None
            resume = timeout_end + 2
        if waits is not None:
            waits.append(TriggerWait(cycle, resume, k, forever))
        base = resume
        prev = i + 1
    if prev < n:
        issue[prev:] = base + np.concatenate([[0], np.cumsum(dur[prev:n - 1])])
        cycle = int(issue[-1] + dur[-1])
    else:
        cycle = base
    out, last = _outputs(w, op, issue)
    return out, max(cycle, last)


def _outputs(w: np.ndarray, op: np.ndarray, issue: np.ndarray) -> tuple[list[Output], int]:
    """The buffer outputs of the data words among ``w`` (issued at ``issue``), in time order (ties in
    issue order), and the last output's cycle. A buffer's word lands ``delay + 1`` after it issues or
    after the buffer's previous word landed, whichever is later (the buffer is a FIFO)."""
    m = (op & IDATA) != 0
    if not m.any():
        return [], 0
    iss = issue[m]
    buf = (op[m] & 0x7F).astype(np.int64)
    delay = ((w[m] >> 16) & 0xFF).astype(np.int64)
    val = (w[m] & 0xFFFF).astype(np.int64)
    t = iss + delay + 1
    for b in np.unique(buf).tolist():
        idx = np.flatnonzero(buf == b)
        if len(idx) > 1 and np.any(iss[idx[1:]] < t[idx[:-1]]):  # a word waits for the one before it
            free = 0
            for j in idx.tolist():
                free = max(int(iss[j]), free) + int(delay[j]) + 1
                t[j] = free
    order = np.argsort(t, kind="stable")
    tl, bl, vl = t[order].tolist(), buf[order].tolist(), val[order].tolist()
    return [Output(c, b, v) for c, b, v in zip(tl, bl, vl)], int(tl[-1])


def check_words(words: np.ndarray | Sequence[int] | bytes) -> np.ndarray:
    """The program as uint32 words, every word checked as :func:`execute` checks it (whatever
    the trigger waits do, the same words run): :class:`MachineCodeError` for the first bad one."""
    if isinstance(words, (bytes, bytearray, memoryview)):
        if len(words) % 4:
            raise MachineCodeError(f"machine code is whole uint32 words; got {len(words)} bytes")
        w = np.frombuffer(words, "<u4")
    else:
        w = np.asarray(words, dtype=np.uint32)
    op = w >> 24
    data_word = (op & IDATA) != 0
    bad = np.where(data_word, (op & 0x7F) >= N_BUFFERS + 7, op > ITRIGFOREVER)
    fin = np.flatnonzero(op == IFINISH)
    if len(fin):
        bad[fin[0] + 1:] = False  # nothing runs after IFINISH
    if bad.any():
        word = int(w[int(np.argmax(bad))])
        o = word >> 24
        if o & IDATA:
            raise MachineCodeError(f"word 0x{word:08x}: unknown buffer {o & 0x7F}")
        raise MachineCodeError(f"word 0x{word:08x}: unknown instruction 0x{o:02x}")
    return w


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
    #: ``(cycle, level 0/1)`` of every change of the trigger output (``GATES_LEDS`` bit 2)
    trig_out: list[tuple[int, int]] = field(default_factory=list)
    #: the program's trigger waits, as played
    waits: list[TriggerWait] = field(default_factory=list)


def _s16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def lo_phase_step(freq_hz: float, f_clk: float = F_CLK_HZ) -> int:
    """31-bit DDS phase step for ``freq_hz`` (experiment.py: ``round(2**31 / f_clk * f)``)."""
    return int(round(2 ** 31 * freq_hz / f_clk)) & 0x7FFFFFFF


def fhdo_word(channel: int, value: float) -> int:
    """GPA-FHDO 32-bit gradient word for ``value`` in [-1, 1] (grad_board.GPAFHDO.float2bin)."""
    code = min(max(int(round(32767.51 * (value + 1))), 0), 0xFFFF)  # scalar clip: np.clip costs 9 µs a call
    return code | 0x80000 | (channel << 16) | (channel << 25)


def ocra1_word(channel: int, value: float) -> int:
    """OCRA1 32-bit gradient word (broadcast) for ``value`` in [-1, 1]."""
    code = int(round(131071.49 * min(max(float(value), -1.0), 1.0))) & 0x3FFFF
    return (code << 2) | 0x00100000 | (channel << 25) | 0x01000000


def decode(words: np.ndarray | Sequence[int] | bytes, initial: Sequence[int] | None = None,
           trigger: TriggerSource | None = None) -> Timelines:
    """Decode a program into RF, gradient, LO and ADC timelines.

    ``initial``: buffer values before the program (the console keeps them between runs);
    ``trigger``: the trigger input the waits see (:func:`execute`)."""
    waits: list[TriggerWait] = []
    outs, end = execute(words, trigger, waits)
    return timelines(outs, end, waits, initial)


def timelines(outs: list[Output], end: int, waits: list[TriggerWait] | None = None,
              initial: Sequence[int] | None = None) -> Timelines:
    """:func:`decode`'s second half: the timelines of :func:`execute`'s outputs."""
    waits = list(waits or [])
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
    trig: list[tuple[int, int]] = []
    trig_level = (bufs[GATES_LEDS] >> TRIG_OUT_BIT) & 1
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
            lvl = (bufs[GATES_LEDS] >> TRIG_OUT_BIT) & 1
            if lvl != trig_level:
                trig.append((c, lvl))
                trig_level = lvl
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
                     grad_board=bufs[GRAD_CTRL] & 3 or GRAD_BOARD_FHDO, leds=leds, trig_out=trig, waits=waits)


def trig_out_edges(outs: Iterable[Output], initial_gates: int = 0) -> list[tuple[int, int]]:
    """``(cycle, level)`` of every change of the trigger output (``GATES_LEDS`` bit 2) among
    time-ordered outputs, starting from ``initial_gates``."""
    lvl = (initial_gates >> TRIG_OUT_BIT) & 1
    edges = []
    for o in outs:
        if o.buffer == GATES_LEDS and ((o.value >> TRIG_OUT_BIT) & 1) != lvl:
            lvl ^= 1
            edges.append((o.cycle, lvl))
    return edges


@dataclass
class Program:
    """Buffer changes to compile: ``add(cycle, buffer, value)`` (value 16 bit). Several values
    for one buffer at one cycle are an error; events of one cycle are output together."""

    changes: dict[int, dict[int, int]] = field(default_factory=dict)
    #: trigger waits: issue cycle -> timeout cycles (``None``: ``ITRIGFOREVER``)
    waits: dict[int, int | None] = field(default_factory=dict)

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

    def wait_trigger(self, cycle: int, timeout_cycles: int | None = None) -> None:
        """An ``ITRIG`` (timeout ``timeout_cycles``, at most 0xffffff) or ``ITRIGFOREVER`` (None)
        issued at ``cycle``. Cycles of the program are *nominal*: the wait counts as its minimum
        3 cycles, and every later event is that much after the resume (events need their words
        issued after ``cycle + 3``)."""
        if cycle < 0:
            raise MachineCodeError(f"trigger wait at negative cycle {cycle}")
        if timeout_cycles is not None and not 0 <= timeout_cycles <= COUNTER_MAX:
            raise MachineCodeError(f"ITRIG timeout {timeout_cycles} out of 0..0xffffff cycles")
        self.waits[int(cycle)] = None if timeout_cycles is None else int(timeout_cycles)


def add_trig_out(program: Program, windows: Iterable[tuple[int, int]]) -> None:
    """Raise the trigger output (``GATES_LEDS`` bit 2) during each ``(on, off)`` cycle window,
    keeping the other bits (TX/RX gates, LEDs) as the program writes them: every
    ``GATES_LEDS`` value is re-derived from the program's own writes and the windows."""
    wins = sorted((int(a), int(b)) for a, b in windows)
    for a, b in wins:
        if not 0 <= a < b:
            raise MachineCodeError(f"trigger output window ({a}, {b}) is empty or negative")
    own = sorted((c, slot[GATES_LEDS]) for c, slot in program.changes.items() if GATES_LEDS in slot)
    cycles = sorted({c for c, _ in own} | {a for a, _ in wins} | {b for _, b in wins})
    j = 0
    base = 0
    for c in cycles:
        while j < len(own) and own[j][0] <= c:
            base = own[j][1]
            j += 1
        high = any(a <= c < b for a, b in wins)
        v = (base & ~(1 << TRIG_OUT_BIT)) | ((1 << TRIG_OUT_BIT) if high else 0)
        program.changes.setdefault(c, {})[GATES_LEDS] = v & 0xFFFF


def _fill(words: list[int], gap: int) -> None:
    """``gap`` cycles of ``IWAIT``/``INOP``."""
    while gap > 2:
        w = min(gap, COUNTER_MAX + 3)
        words.append(insta(IWAIT, w - 3))
        gap -= w
    words.extend([insta(INOP, 0)] * gap)


def compile_changes(program: Program, end_cycle: int | None = None) -> np.ndarray:
    """Machine code for ``program``: each event's ``b`` words are issued in the ``b`` cycles
    before it with delays ``b - m - 1`` (all land at the event's cycle), gaps filled with
    ``IWAIT``/``INOP``, trigger waits (:meth:`Program.wait_trigger`) at their cycles, then
    ``IFINISH`` (at ``end_cycle`` if given). Events closer together than their word count are a
    :class:`MachineCodeError` (never silently moved)."""
    words: list[int] = []
    cycle = 0
    for t in sorted(set(program.changes) | set(program.waits)):
        if t in program.waits:
            if t < cycle:
                raise MachineCodeError(f"trigger wait at cycle {t} comes before cycle {cycle}; move it later")
            _fill(words, t - cycle)
            d = program.waits[t]
            words.append(insta(ITRIGFOREVER, 0) if d is None else insta(ITRIG, d))
            cycle = t + 3
            if t not in program.changes:
                continue
            raise MachineCodeError(f"buffer changes at the cycle of a trigger wait ({t})")
        slot = program.changes[t]
        b = len(slot)
        start = t - b
        if start < cycle:
            raise MachineCodeError(f"event at cycle {t} needs {b} cycles after cycle {cycle}; move it later")
        _fill(words, start - cycle)
        for m, (buf, val) in enumerate(sorted(slot.items())):
            words.append(instb(buf, b - m - 1, val))
        cycle = t
    if end_cycle is not None and end_cycle > cycle:
        _fill(words, end_cycle - cycle)
    words.append(insta(IFINISH, 0))
    return np.asarray(words, dtype=np.uint32)
