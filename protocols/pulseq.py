"""Pulseq ``.seq`` files (open MR sequence format, pulseq.github.io), sans-I/O: parse, check
against the console's limits, compile to MaRCoS machine code.

Format facts (Pulseq specification v1.4; v1.5 as pypulseq 1.5 writes it), written from the
specification, not from any interpreter:

* Sections ``[VERSION]`` (``major``/``minor``/``revision``), ``[DEFINITIONS]`` (``key value...``:
  ``GradientRasterTime`` 10 µs, ``RadiofrequencyRasterTime`` 1 µs, ``AdcRasterTime`` 0.1 µs,
  ``BlockDurationRaster`` 10 µs when absent; ``FOV`` in m), ``[BLOCKS]``
  (``id dur rf gx gy gz adc ext``: ``dur`` in block-duration rasters, event ids or 0),
  ``[RF]``, ``[GRADIENTS]``, ``[TRAP]``, ``[ADC]``, ``[SHAPES]``; ``[EXTENSIONS]`` and
  ``[SIGNATURE]`` are read past. ``#`` starts a comment.
* ``[RF]`` v1.4: ``id amplitude(Hz) mag_id phase_id time_id delay(µs) freq(Hz) phase(rad)``;
  v1.5: ``id amplitude mag_id phase_id time_id center(µs) delay(µs) freqPPM phasePPM freq phase use``.
  The waveform is ``amplitude · mag(t) · exp(i 2π phase_shape(t))`` (the phase shape is in
  cycles), plus the phase offset; γB1/2π in Hz.
* ``[GRADIENTS]`` v1.4: ``id amplitude(Hz/m) amp_id time_id delay(µs)``; v1.5: ``id amplitude
  first last amp_id time_id delay``. ``[TRAP]``: ``id amplitude(Hz/m) rise flat fall delay`` (µs).
* ``[ADC]`` v1.4: ``id num dwell(ns) delay(µs) freq(Hz) phase(rad)``; v1.5: ``id num dwell delay
  freqPPM phasePPM freq phase phase_id``. Sample ``i`` at ``delay + (i + 0.5) · dwell``.
* Time shapes: ``time_id`` 0 means the raster: sample ``i`` holds over ``[i, i + 1)`` rasters
  (its value at the raster's centre); otherwise the waveform is linear between the points
  ``(time_i · raster, value_i)`` (block pulses, extended trapezoids).
* ``[SHAPES]``: ``shape_id n``, ``num_samples m``, then the values; with fewer than ``m``
  values the shape is compressed: run-length encoding of the derivative (two equal values
  are followed by the number of further repeats), integrated back by a cumulative sum.

Compilation (:class:`PulseqSequence`): the blocks are laid end to end; the sequence is cut into
shots at every excitation (an RF pulse of flip < 120°), and ``lines(first, count)`` compiles
those shots as one ``run_seq`` program with :mod:`medacq.protocols.marga` (TX0 with DDS0 at
the Larmor frequency plus the pulse's offset, both receivers on DDS1, GPA-FHDO channels x/y/z,
gradient waveforms area-exact on a ``grad_step_us`` staircase, RF area-exact per
:data:`RF_UPDATE_US`). Every ADC window's phase line comes from the k-space position at its
centre (``k_y`` integrated from the excitation, negated at each refocusing pulse), the slice
from the excitation's frequency offset over its z gradient. The console's limits (gradient
amplitude and slew, RF amplitude against ``b1_hz``, RF duty, the receiver's dwell) are
checked on the file before anything is compiled (:class:`~medacq.protocols.mri_sequences.SequenceError`
naming the limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .marga import (
    DDS0_PHASE_LSB, DDS0_PHASE_MSB, F_CLK_HZ, GATES_LEDS, GRAD_BOARD_FHDO, GRAD_LATENCY, GRAD_LSB, RX_CTRL,
    TX0_I, TX0_Q, Program, compile_changes, fhdo_word, lo_phase_step,
)
from .mri_sequences import GAMMA_BAR_HZ_PER_T, SequenceError, SystemLimits, grid_cycle, program_header

__all__ = ["PulseqError", "PulseqFile", "Block", "Wave", "parse_seq", "decompress_shape", "PulseqSequence",
           "RF_UPDATE_US"]

RF_UPDATE_US = 4.0  # TX amplitude update interval of compiled shaped pulses (µs)
_T0_US = 30.0  # the first shot's start in a program (room for the latency-shifted gradients)
_RX_LO_DDS1 = 1 | (1 << 2)
_REFOCUS_RAD = np.deg2rad(120.0)
_DEFAULT_DEFS = {"GradientRasterTime": 10e-6, "RadiofrequencyRasterTime": 1e-6, "AdcRasterTime": 1e-7,
                 "BlockDurationRaster": 10e-6}


class PulseqError(SequenceError):
    """A ``.seq`` file that is malformed or uses what this compiler does not support."""


MAX_SHAPE_SAMPLES = 10_000_000
"""Most samples one ``[SHAPES]`` entry may expand to (a 10-s waveform at 1 µs raster)."""


def decompress_shape(values: np.ndarray, num_samples: int) -> np.ndarray:
    """Samples of a ``[SHAPES]`` entry: as given when ``len(values) == num_samples``, else the
    run-length encoded derivative expanded and summed."""
    v = np.asarray(values, dtype=float)
    if not 0 < num_samples <= MAX_SHAPE_SAMPLES:
        raise PulseqError(f"shape of {num_samples} samples: this reader takes 1..{MAX_SHAPE_SAMPLES}")
    if len(v) == num_samples:
        return v
    out: list[float] = []
    i = 0
    while i < len(v):
        out.append(v[i])
        if i + 2 < len(v) and v[i + 1] == v[i]:
            reps = v[i + 2]
            if reps < 0 or reps != int(reps) or len(out) + reps + 1 > num_samples:
                # (checked before expanding: a hostile count must not allocate billions of samples)
                raise PulseqError(f"compressed shape: bad repeat count {reps} (num_samples {num_samples})")
            out.extend([v[i]] * (int(reps) + 1))
            i += 3
        else:
            i += 1
    if len(out) != num_samples:
        raise PulseqError(f"compressed shape expands to {len(out)} samples, num_samples says {num_samples}")
    return np.cumsum(out)


@dataclass
class Wave:
    """A waveform in a block: knots ``t`` (s from the block's start) and values ``v``;
    ``constant``: ``v[i]`` holds over ``[t[i], t[i+1])`` (``len(t) == len(v) + 1``), else linear
    between the knots (``len(t) == len(v)``). Values complex (RF, Hz) or real (gradients, Hz/m)."""

    t: np.ndarray
    v: np.ndarray
    constant: bool

    @property
    def start(self) -> float:
        return float(self.t[0])

    @property
    def end(self) -> float:
        return float(self.t[-1])

    def integral(self, tq: np.ndarray | float) -> np.ndarray:
        """∫ from the start to ``tq`` (clipped to the wave's span)."""
        tq = np.clip(np.asarray(tq, dtype=float), self.t[0], self.t[-1])
        t, v = self.t, self.v
        if self.constant:
            cum = np.concatenate([[0], np.cumsum(v * np.diff(t))])
            k = np.clip(np.searchsorted(t, tq, side="right") - 1, 0, len(v) - 1)
            out: np.ndarray = cum[k] + v[k] * (tq - t[k])
            return out
        dt = np.diff(t)
        cum = np.concatenate([[0], np.cumsum((v[:-1] + v[1:]) / 2 * dt)])
        k = np.clip(np.searchsorted(t, tq, side="right") - 1, 0, max(len(t) - 2, 0))
        if len(t) < 2:
            return np.zeros_like(tq, dtype=v.dtype)
        slope = np.where(dt[k] > 0, (v[k + 1] - v[k]) / np.where(dt[k] > 0, dt[k], 1), 0)
        d = tq - t[k]
        out = cum[k] + v[k] * d + slope * d * d / 2
        return out

    def value_at(self, tq: float) -> complex | float:
        if tq < self.t[0] or tq >= self.t[-1]:
            return 0.0
        k = int(np.searchsorted(self.t, tq, side="right") - 1)
        if self.constant:
            return self.v[k]  # type: ignore[no-any-return]
        k = min(k, len(self.t) - 2)
        f = (tq - self.t[k]) / (self.t[k + 1] - self.t[k]) if self.t[k + 1] > self.t[k] else 0.0
        return self.v[k] + f * (self.v[k + 1] - self.v[k])  # type: ignore[no-any-return]

    def averages(self, edges: np.ndarray) -> np.ndarray:
        """Mean value over each interval ``[edges[i], edges[i+1])`` (area-exact)."""
        a = self.integral(edges)
        out: np.ndarray = np.diff(a) / np.diff(edges)
        return out

    def peak(self) -> float:
        return float(np.max(np.abs(self.v))) if len(self.v) else 0.0

    def max_slew(self) -> float:
        """Largest |dv/dt| (per s) between knots (constant waves: between adjacent samples)."""
        if len(self.v) < 2:
            return 0.0
        if self.constant:
            mid = (self.t[:-1] + self.t[1:]) / 2
            return float(np.max(np.abs(np.diff(self.v)) / np.diff(mid)))
        dt = np.diff(self.t)
        ok = dt > 0
        return float(np.max(np.abs(np.diff(self.v))[ok] / dt[ok])) if ok.any() else 0.0


@dataclass
class Block:
    """One ``[BLOCKS]`` row resolved: duration (s), RF (``Wave`` of γB1/2π in Hz, complex;
    ``rf_freq`` Hz, ``rf_use`` letter of v1.5 or ``""``), gradients x/y/z (Hz/m) and ADC
    (``adc``: ``(num, dwell s, delay s, freq Hz, phase rad)``)."""

    index: int
    duration: float
    rf: Wave | None = None
    rf_freq: float = 0.0
    rf_use: str = ""
    grad: list[Wave | None] = field(default_factory=lambda: [None, None, None])
    adc: tuple[int, float, float, float, float] | None = None

    def rf_area(self) -> complex:
        """∫ RF dt (Hz·s = cycles): the flip is ``2π |area|``."""
        if self.rf is None:
            return 0j
        return complex(self.rf.integral(self.rf.end))

    def rf_centre(self) -> float:
        """The RF's centre (s from the block start): the |B1|-weighted mean time."""
        assert self.rf is not None
        w = self.rf
        edges = np.linspace(w.start, w.end, 201)
        m = np.abs(w.averages(edges))
        mid = (edges[:-1] + edges[1:]) / 2
        return float(np.sum(mid * m) / np.sum(m)) if np.sum(m) > 0 else (w.start + w.end) / 2


@dataclass
class PulseqFile:
    """A parsed ``.seq``: ``version`` (major, minor, revision), ``definitions`` (floats, or
    lists of floats / strings) and the resolved ``blocks``."""

    version: tuple[int, int, int]
    definitions: dict[str, Any]
    blocks: list[Block]

    @property
    def duration(self) -> float:
        return float(sum(b.duration for b in self.blocks))


def _sections(text: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    cur: list[list[str]] | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = out.setdefault(line[1:-1].strip().upper(), [])
            continue
        if cur is None:  # (the content is not echoed: the path may come from a control client)
            raise PulseqError(f"line {no}: content before the first section: not a Pulseq file")
        cur.append(line.split())
    return out


def _num(s: str, what: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise PulseqError(f"{what}: {s!r} is not a number") from None


def _shapes(rows: list[list[str]]) -> dict[int, np.ndarray]:
    shapes: dict[int, np.ndarray] = {}
    i = 0
    while i < len(rows):
        r = rows[i]
        if len(r) != 2 or r[0] != "shape_id":
            raise PulseqError(f"[SHAPES]: expected 'shape_id n', got {' '.join(r)[:40]!r}")
        sid = int(_num(r[1], "shape_id"))
        if i + 1 >= len(rows) or rows[i + 1][0] != "num_samples":
            raise PulseqError(f"[SHAPES]: shape {sid} without num_samples")
        m = int(_num(rows[i + 1][1], "num_samples"))
        vals = []
        i += 2
        while i < len(rows) and rows[i][0] != "shape_id":
            vals += [_num(x, f"shape {sid}") for x in rows[i]]
            i += 1
        shapes[sid] = decompress_shape(np.asarray(vals), m)
    return shapes


def _rows(sec: dict[str, list[list[str]]], name: str, widths: tuple[int, ...]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in sec.get(name, []):
        if len(r) not in widths:
            raise PulseqError(f"[{name}]: {len(r)} fields, expected {' or '.join(map(str, widths))}: {' '.join(r)[:60]!r}")
        out[int(_num(r[0], name))] = r
    return out


def parse_seq(text: str) -> PulseqFile:
    """Parse a Pulseq v1.4/v1.5 file's text (:class:`PulseqError` on anything malformed)."""
    sec = _sections(text)
    ver = {r[0]: int(_num(r[1], "[VERSION]")) for r in sec.get("VERSION", []) if len(r) >= 2}
    version = (ver.get("major", 0), ver.get("minor", 0), ver.get("revision", 0))
    if version[0] != 1 or version[1] not in (4, 5):
        raise PulseqError(f"Pulseq file format {'.'.join(map(str, version))}: this reader takes 1.4 and 1.5")
    v15 = version[1] >= 5
    defs: dict[str, Any] = dict(_DEFAULT_DEFS)
    for r in sec.get("DEFINITIONS", []):
        vals: list[Any] = []
        for x in r[1:]:
            try:
                vals.append(float(x))
            except ValueError:
                vals.append(x)
        defs[r[0]] = vals[0] if len(vals) == 1 else vals
    shapes = _shapes(sec.get("SHAPES", []))
    rf_raster, g_raster = float(defs["RadiofrequencyRasterTime"]), float(defs["GradientRasterTime"])
    bd_raster = float(defs["BlockDurationRaster"])

    def shape(sid: int, what: str) -> np.ndarray:
        if sid not in shapes:
            raise PulseqError(f"{what}: shape {sid} is not in [SHAPES]")
        return shapes[sid]

    def wave(amp: complex | float, vals: np.ndarray, time_id: int, raster: float, delay: float, what: str) -> Wave:
        if time_id == 0:
            t = delay + np.arange(len(vals) + 1) * raster
            return Wave(t, amp * vals, True)
        if time_id < 0:
            raise PulseqError(f"{what}: time shape {time_id} (oversampled waveforms) is not supported")
        ts = shape(time_id, what)
        if len(ts) != len(vals) or np.any(np.diff(ts) < 0):
            raise PulseqError(f"{what}: time shape {time_id} does not match its amplitude shape")
        return Wave(delay + ts * raster, amp * vals, False)

    rf_rows = _rows(sec, "RF", (11, 12) if v15 else (8,))
    rfs: dict[int, tuple[Wave, float, str]] = {}
    for i, r in rf_rows.items():
        f = [_num(x, "[RF]") for x in (r[:11] if v15 else r)]
        if v15:
            amp, mag_id, ph_id, t_id, _centre, delay, _fppm, _pppm, freq, phase = f[1:11]
            use = str(r[11]) if len(r) > 11 else ""
        else:
            amp, mag_id, ph_id, t_id, delay, freq, phase = f[1:8]
            use = ""
        mag = shape(int(mag_id), f"RF {i}")
        ph = shape(int(ph_id), f"RF {i}") if ph_id else np.zeros_like(mag)
        if len(ph) != len(mag):
            raise PulseqError(f"RF {i}: magnitude and phase shapes differ in length")
        w = wave(amp * np.exp(1j * phase), mag * np.exp(2j * np.pi * ph), int(t_id), rf_raster, delay * 1e-6, f"RF {i}")
        rfs[i] = (w, freq, use)
    grads: dict[int, Wave] = {}
    for i, r in _rows(sec, "GRADIENTS", (7,) if v15 else (5,)).items():
        f = [_num(x, "[GRADIENTS]") for x in r]
        amp, a_id, t_id, delay = (f[1], f[4], f[5], f[6]) if v15 else (f[1], f[2], f[3], f[4])
        grads[i] = wave(amp, shape(int(a_id), f"gradient {i}"), int(t_id), g_raster, delay * 1e-6, f"gradient {i}")
    for i, r in _rows(sec, "TRAP", (6,)).items():
        amp, rise, flat, fall, delay = (_num(x, "[TRAP]") for x in r[1:6])
        if i in grads:
            raise PulseqError(f"gradient id {i} is both in [GRADIENTS] and [TRAP]")
        t = (delay + np.array([0, rise, rise + flat, rise + flat + fall])) * 1e-6
        grads[i] = Wave(t, np.array([0.0, amp, amp, 0.0]), False)
    adcs: dict[int, tuple[int, float, float, float, float]] = {}
    for i, r in _rows(sec, "ADC", (9,) if v15 else (6,)).items():
        f = [_num(x, "[ADC]") for x in r]
        num, dwell, delay = int(f[1]), f[2] * 1e-9, f[3] * 1e-6
        freq, phase = (f[6], f[7]) if v15 else (f[4], f[5])
        adcs[i] = (num, dwell, delay, freq, phase)
    blocks: list[Block] = []
    for r in sec.get("BLOCKS", []):
        if len(r) != 8:
            raise PulseqError(f"[BLOCKS]: {len(r)} fields, expected 8 (id dur rf gx gy gz adc ext)")
        bid, dur, rf_id, gx, gy, gz, adc_id, _ext = (int(_num(x, "[BLOCKS]")) for x in r)
        b = Block(bid, dur * bd_raster)
        if rf_id:
            if rf_id not in rfs:
                raise PulseqError(f"block {bid}: RF {rf_id} is not in [RF]")
            b.rf, b.rf_freq, b.rf_use = rfs[rf_id]
        for ch, gid in enumerate((gx, gy, gz)):
            if gid:
                if gid not in grads:
                    raise PulseqError(f"block {bid}: gradient {gid} is in neither [GRADIENTS] nor [TRAP]")
                b.grad[ch] = grads[gid]
        if adc_id:
            if adc_id not in adcs:
                raise PulseqError(f"block {bid}: ADC {adc_id} is not in [ADC]")
            b.adc = adcs[adc_id]
        ends = [w.end for w in [b.rf, *b.grad] if w is not None]
        if b.adc is not None:
            ends.append(b.adc[2] + b.adc[0] * b.adc[1])
        if ends and max(ends) > b.duration + 1e-9:
            raise PulseqError(f"block {bid}: its events last {max(ends) * 1e6:.1f} µs, the block {b.duration * 1e6:.1f} µs")
        blocks.append(b)
    if not blocks:
        raise PulseqError("the file has no [BLOCKS]")
    return PulseqFile(version, defs, blocks)


@dataclass
class _Acq:
    block: int  # index into blocks
    slice: int
    line: int
    phase: float  # ADC phase offset (rad): the driver turns the samples back by it


class PulseqSequence:
    """A ``.seq`` compiled for the console, with the interface of
    :class:`~medacq.protocols.mri_sequences.CartesianSequence` the driver uses: ``shots``,
    ``shot_acqs(shot)``, ``lines(first, count)``, ``describe()``, ``dwell_cycles``, ``dk``,
    ``matrix``, ``fov_m``, ``tr_s``, ``bandwidth_hz``, ``phase_lines``, ``slice_positions_mm``."""

    def __init__(self, seq: PulseqFile, limits: SystemLimits, source: str = "") -> None:
        self.file, self.lim, self.source = seq, limits, source
        self._check_limits()
        blocks = seq.blocks
        self.t_block = np.concatenate([[0.0], np.cumsum([b.duration for b in blocks])])
        # shots: cut at every excitation
        starts: list[int] = []
        for i, b in enumerate(blocks):
            if b.rf is not None and not self._refocusing(b):
                starts.append(i)
        if not starts or starts[0] != 0:
            starts = [0] + starts
        self.shot_blocks = [list(range(a, b)) for a, b in zip(starts, starts[1:] + [len(blocks)])]
        adc_blocks = [i for i, b in enumerate(blocks) if b.adc is not None]
        if not adc_blocks:
            raise PulseqError("the sequence has no ADC events")
        nums = {blocks[i].adc[0] for i in adc_blocks}  # type: ignore[index]
        dwells = {round(blocks[i].adc[1] * 1e9, 3) for i in adc_blocks}  # type: ignore[index]
        if len(nums) != 1 or len(dwells) != 1:
            raise PulseqError(f"ADC events of different lengths or dwell times ({sorted(nums)} samples, "
                              f"{sorted(dwells)} ns): one readout per sequence here")
        self.matrix = nums.pop()
        self.dwell_s = dwells.pop() * 1e-9
        d = self.dwell_s * F_CLK_HZ
        self.dwell_cycles = int(round(d))
        if not 16 <= self.dwell_cycles <= 4095:
            raise SequenceError(f"ADC dwell {self.dwell_s * 1e9:g} ns is {d:.1f} cycles; the receiver's CIC takes "
                                f"16..4095 here")
        if abs(d - self.dwell_cycles) > 0.01 * d:
            raise SequenceError(f"ADC dwell {self.dwell_s * 1e9:g} ns is not within 1 % of a whole number of "
                                f"122.88 MHz cycles ({d:.2f})")
        self.bandwidth_hz = F_CLK_HZ / self.dwell_cycles
        fov = seq.definitions.get("FOV")
        if isinstance(fov, list) and len(fov) >= 2 and all(isinstance(v, float) for v in fov[:2]):
            self.fov_m = [float(fov[1]), float(fov[0])]  # (y, x)
        elif isinstance(fov, float):
            self.fov_m = [fov, fov]
        else:
            raise PulseqError("the .seq file has no FOV definition ([DEFINITIONS] FOV x y z, in m): the phase "
                              "lines cannot be placed")
        self.dk = 1.0 / self.fov_m[0]
        self._acqs = self._place_acquisitions()
        lines = sorted({a.line for a in self._acqs})
        self.phase_lines = max(lines) + 1
        self.shots = len(self.shot_blocks)
        shot_with_adc = [s for s, bl in enumerate(self.shot_blocks) if any(blocks[i].adc for i in bl)]
        self.tr_s = seq.duration / max(1, len(shot_with_adc)) if shot_with_adc else seq.duration
        self.rx_lo = _RX_LO_DDS1
        self.selective = self.slice_positions_mm is not None

    # ---- checks --------------------------------------------------------------------------
    def _refocusing(self, b: Block) -> bool:
        if b.rf_use in ("e", "r"):  # v1.5 'use': excitation / refocusing; otherwise by the flip angle
            return b.rf_use == "r"
        return bool(2 * np.pi * abs(b.rf_area()) >= _REFOCUS_RAD)

    def _check_limits(self) -> None:
        lim = self.lim
        gmax, smax = lim.max_grad_mt_per_m, lim.max_slew_t_per_m_s
        energy = 0.0
        for b in self.file.blocks:
            for ch, w in enumerate(b.grad):
                if w is None:
                    continue
                g = w.peak() / GAMMA_BAR_HZ_PER_T * 1e3
                if g > gmax * (1 + 1e-6):
                    raise SequenceError(f"block {b.index}: gradient {'xyz'[ch]} {g:.2f} mT/m exceeds max_grad_mt_per_m "
                                        f"{gmax:g}")
                s = w.max_slew() / GAMMA_BAR_HZ_PER_T
                if s > smax * (1 + 1e-3):
                    raise SequenceError(f"block {b.index}: gradient {'xyz'[ch]} slews {s:.1f} T/m/s, above "
                                        f"max_slew_t_per_m_s {smax:g}")
            if b.rf is not None:
                peak = b.rf.peak()
                if peak > lim.b1_hz * (1 + 1e-3):
                    raise SequenceError(f"block {b.index}: RF amplitude {peak:.1f} Hz exceeds the TX full scale "
                                        f"(b1_hz {lim.b1_hz:g})")
                edges = np.linspace(b.rf.start, b.rf.end, 401)
                energy += float(np.sum(np.abs(b.rf.averages(edges) / lim.b1_hz) ** 2 * np.diff(edges)))
        duty = energy / max(self.file.duration, 1e-9)
        if duty > lim.max_rf_duty:
            raise SequenceError(f"RF duty {duty:.4f} exceeds max_rf_duty {lim.max_rf_duty:g}")
        self.rf_duty = duty

    # ---- k-space placement -----------------------------------------------------------------
    def _place_acquisitions(self) -> list[_Acq]:
        blocks = self.file.blocks
        acqs: list[_Acq] = []
        ky = 0.0
        n = self.matrix
        slice_z: list[float | None] = []
        cur_z: float | None = None
        for bi, b in enumerate(blocks):
            marks: list[tuple[float, int]] = []
            if b.rf is not None:
                marks.append((b.rf_centre(), 1 if self._refocusing(b) else 0))
            if b.adc is not None:
                num, dwell, delay = b.adc[:3]
                marks.append((delay + num / 2 * dwell, 2))
            marks.sort()
            gy = b.grad[1]
            prev = 0.0
            for t, kind in marks:
                if gy is not None:
                    ky += float(gy.integral(t) - gy.integral(prev))
                prev = t
                if kind == 0:
                    ky = 0.0
                    gz = b.grad[2]
                    g = float(np.real(gz.value_at(t))) if gz is not None else 0.0
                    cur_z = b.rf_freq / g if abs(g) > 1.0 else None  # Hz / (Hz/m) = m
                elif kind == 1:
                    ky = -ky
                else:
                    line = int(round(ky / self.dk + n / 2))
                    if not 0 <= line < n or abs(ky / self.dk + n / 2 - line) > 0.05:
                        raise PulseqError(f"block {b.index}: the ADC's k_y {ky:.2f} /m is not a phase line of a "
                                          f"{n}-line matrix over FOV {self.fov_m[0] * 1e3:g} mm")
                    slice_z.append(cur_z)
                    acqs.append(_Acq(bi, 0, line, b.adc[4]))  # type: ignore[index]
            if gy is not None:
                ky += float(gy.integral(b.duration) - gy.integral(prev))
        zs = sorted({round(z * 1e3, 2) for z in slice_z if z is not None})
        if zs and any(z is None for z in slice_z):
            raise PulseqError("some ADC windows follow slice-selective excitations, others non-selective ones")
        self.slice_positions_mm: list[float] | None = zs or None
        for a, z in zip(acqs, slice_z):
            a.slice = zs.index(round(z * 1e3, 2)) if z is not None else 0
        return acqs

    # ---- the driver's interface ----------------------------------------------------------
    @property
    def n_slices(self) -> int:
        return len(self.slice_positions_mm) if self.slice_positions_mm else 1

    def shot_acqs(self, shot: int) -> list[tuple[int, int]]:
        """``(slice, line)`` of every ADC window of a shot, in acquisition order (none for a dummy)."""
        if shot < 0:
            return []
        bl = set(self.shot_blocks[shot])
        return [(a.slice, a.line) for a in self._acqs if a.block in bl]

    def acq_phases(self, shot: int) -> list[float]:
        """The ADC phase offsets (rad) of a shot's windows, in acquisition order."""
        if shot < 0:
            return []
        bl = set(self.shot_blocks[shot])
        return [a.phase for a in self._acqs if a.block in bl]

    def lines(self, first: int, count: int) -> np.ndarray:
        """Machine code for shots ``first .. first + count - 1`` (negative: shot 0 played
        without its ADC windows, a dummy)."""
        lim = self.lim
        prog = program_header(lim.larmor_hz, self.dwell_cycles, self.rx_lo)
        t = _T0_US * 1e-6
        for j in range(count):
            s = first + j
            for bi in self.shot_blocks[max(s, 0)]:
                self._block(prog, self.file.blocks[bi], t, with_adc=s >= 0)
                t += self.file.blocks[bi].duration
        return compile_changes(prog, end_cycle=grid_cycle(t * 1e6))

    def _block(self, prog: Program, b: Block, t0: float, with_adc: bool) -> None:
        lim = self.lim
        lat = GRAD_LATENCY[GRAD_BOARD_FHDO]
        fs = lim.grad_full_scale_mt_per_m * 1e-3 * GAMMA_BAR_HZ_PER_T  # Hz/m at DAC full scale
        step = lim.grad_step_us * 1e-6
        for ch, w in enumerate(b.grad):
            if w is None:
                continue
            n = max(1, math.ceil((w.end - w.start) / step - 1e-9))
            edges = np.minimum(w.start + np.arange(n + 1) * step, w.end)
            vals = np.real(w.averages(edges)) / fs
            prev = None
            for k in range(n):
                if prev is not None and vals[k] == prev:
                    continue
                self._grad(prog, ch, (t0 + edges[k]) * 1e6, float(vals[k]), lat)
                prev = vals[k]
            if prev != 0.0:
                self._grad(prog, ch, (t0 + w.end) * 1e6, 0.0, lat)
        if b.rf is not None:
            w = b.rf
            u = max(RF_UPDATE_US * 1e-6, float(self.file.definitions["RadiofrequencyRasterTime"]))
            n = max(1, math.ceil((w.end - w.start) / u - 1e-9))
            edges = np.minimum(w.start + np.arange(n + 1) * u, w.end)
            a = w.averages(edges) / lim.b1_hz
            c_on = grid_cycle((t0 + w.start) * 1e6)
            f = lo_phase_step(lim.larmor_hz + b.rf_freq)
            prog.add(c_on - 24, DDS0_PHASE_LSB, f & 0xFFFF)
            prog.add(c_on - 24, DDS0_PHASE_MSB, f >> 16)
            prog.add(c_on - 8, GATES_LEDS, 1)
            prev_code = None
            for k in range(n):
                re, im = int(round(32767 * a[k].real)), int(round(32767 * a[k].imag))
                if re == 0 and im == 0:  # a zero inside the pulse would split it
                    re = 1
                if (re, im) == prev_code:
                    continue
                c = grid_cycle((t0 + edges[k]) * 1e6)
                prog.add(c, TX0_I, re & 0xFFFF)
                prog.add(c, TX0_Q, im & 0xFFFF)
                prev_code = (re, im)
            c_off = grid_cycle((t0 + w.end) * 1e6)
            prog.add(c_off, TX0_I, 0)
            prog.add(c_off, TX0_Q, 0)
            prog.add(c_off + 8, GATES_LEDS, 0)
        if b.adc is not None and with_adc:
            num, dwell, delay, freq, _phase = b.adc
            rate = self.dwell_cycles
            first = (t0 + delay + dwell / 2) * F_CLK_HZ  # the first sample's cycle
            c_open = 8 * int(round((first - rate) / 8))
            f = lo_phase_step(lim.larmor_hz + freq)
            prog.add(c_open - 24, DDS0_PHASE_LSB + 2, f & 0xFFFF)
            prog.add(c_open - 24, DDS0_PHASE_MSB + 2, f >> 16)
            prog.add(c_open, RX_CTRL, (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | self.rx_lo)
            prog.add(8 * -(-(c_open + num * rate + 1) // 8), RX_CTRL, (1 << 6) | (1 << 7) | self.rx_lo)

    @staticmethod
    def _grad(prog: Program, ch: int, t_us: float, v: float, lat: int) -> None:
        c = grid_cycle(t_us) - lat
        while GRAD_LSB in prog.changes.get(c, {}):  # another channel's write at this cycle: 8 cycles later
            c += 8
        prog.add_grad(c, fhdo_word(ch, v))

    def describe(self) -> dict[str, Any]:
        """Parameters for the stream descriptor."""
        return {"sequence": "pulseq", "source": self.source, "pulseq_version": ".".join(map(str, self.file.version)),
                "blocks": len(self.file.blocks), "shots": self.shots, "matrix": self.matrix,
                "phase_lines": self.phase_lines, "fov_mm": self.fov_m[0] * 1e3, "dwell_us": self.dwell_s * 1e6,
                "bandwidth_hz": self.bandwidth_hz, "tr_ms": self.tr_s * 1e3, "duration_s": self.file.duration,
                "rf_duty": round(self.rf_duty, 5), "slice_positions_mm": self.slice_positions_mm,
                "larmor_hz": self.lim.larmor_hz, "b0_t": self.lim.b0_t,
                "name": self.file.definitions.get("Name")}
