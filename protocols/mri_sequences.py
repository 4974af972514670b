"""Built-in Cartesian 2D spin-echo, gradient-echo and turbo-spin-echo sequences, compiled to MaRCoS machine code.

Multi-slice (spin and gradient echo): Hamming-windowed sinc pulses (time-bandwidth
:data:`RF_TBW`) under a slice-select trapezoid on z (GPA-FHDO channel 2), the TX LO (DDS0) set to
``larmor + γ̄ G_z z`` of the slice before each pulse, both receivers on DDS1 at the Larmor
frequency; the slices of a TR are played ``TR / slices`` apart in interleaved order.

Pure functions: parameters and system limits in, :mod:`medacq.protocols.marga` programs out.
Every check happens before anything is compiled, and a refusal names the limit
(:class:`SequenceError`): TE below the minimum for the FOV/matrix/bandwidth, TR too short,
readout or phase-encode gradient above ``max_grad_mt_per_m``, RF duty above ``max_rf_duty``,
dwell outside the CIC's 4..4095 cycles.

Hardware model (marcos_client's conventions): TX0 complex amplitude (full scale = ``b1_hz``
γB1/2π), hard pulses; gradients on a GPA-FHDO (channels x = 0 readout, y = 1 phase), written
``GRAD_LATENCY`` cycles early so that the DAC steps land on time; trapezoids with staircase
ramps of ``grad_step_us`` limited by ``max_slew_t_per_m_s``; channel y's updates are offset by
3 µs from x's (the GPA-FHDO serialises its DAC writes). Both receivers sample the same window,
LO 0 = the Larmor frequency for TX and RX. Sign conventions: the spin echo's pre-180° moments are
the negatives of the wanted echo moments; line ``j`` is ``ky = (j - N/2) / FOV``, sample ``i`` of
a line ``kx = (i - N/2) / FOV``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .marga import (
    DDS0_PHASE_MSB, F_CLK_HZ, GATES_LEDS, GRAD_BOARD_FHDO, GRAD_CTRL, GRAD_LSB, GRAD_LATENCY, RX0_RATE, RX1_RATE, RX_CTRL, TX0_I, TX0_Q,
    DDS0_PHASE_LSB, Program, add_trig_out, compile_changes, fhdo_word, lo_phase_step,
)

__all__ = ["GAMMA_BAR_HZ_PER_T", "SystemLimits", "SequenceParams", "SequenceError", "CartesianSequence",
           "program_header", "grid_cycle"]

GAMMA_BAR_HZ_PER_T = 42.577478e6
_T0_US = 30.0  # first event (µs) after the run starts: room for the latency-shifted gradients
_WAIT_LEAD_US = 16.0  # a shot's trigger wait (ITRIG) this long before its start: its words follow the wait
RF_TBW = 4.0  # time-bandwidth product of the slice-selective sinc pulses
RF_STEP_US = 10.0  # TX amplitude update interval of a shaped pulse (µs)
_RX_LO_DDS1 = 1 | (1 << 2)  # RX_CTRL: both receivers demodulate with DDS1 (DDS0 follows the slice for TX)


def grid_cycle(t_us: float) -> int:
    """Cycle of ``t_us``, on a grid of 8 cycles: RF/RX events land on multiples of 8 and the
    latency-shifted gradient writes 4 cycles off them, so no two events crowd each other's
    instruction slots."""
    return 8 * int(round(t_us * F_CLK_HZ / 1e6 / 8))


class SequenceError(ValueError):
    """Parameters refused before anything is sent; the message names the limit."""


class SystemLimits(BaseModel):
    """The console's calibration and the safety limits (from the config file only)."""

    model_config = ConfigDict(extra="forbid")

    b0_t: float = Field(0.2, gt=0, le=3.0)
    larmor_offset_hz: float = 0.0
    b1_hz: float = Field(2500.0, gt=0, description="γB1/2π at TX full scale (Hz)")
    grad_full_scale_mt_per_m: float = Field(20.0, gt=0, description="gradient at DAC full scale (mT/m)")
    max_grad_mt_per_m: float = Field(15.0, gt=0)
    max_slew_t_per_m_s: float = Field(50.0, gt=0)
    max_rf_duty: float = Field(0.05, gt=0, le=1)
    grad_step_us: float = Field(10.0, ge=3.0)

    @property
    def larmor_hz(self) -> float:
        return GAMMA_BAR_HZ_PER_T * self.b0_t + self.larmor_offset_hz


class SequenceParams(BaseModel):
    """A Cartesian 2D acquisition: ``matrix × matrix`` over ``fov_mm``, readout along x."""

    model_config = ConfigDict(extra="forbid")

    sequence: Literal["se", "gre", "tse"] = "se"
    te_ms: float = Field(15.0, gt=0)
    tr_ms: float = Field(500.0, gt=0)
    fov_mm: float = Field(200.0, gt=0)
    matrix: int = Field(64, ge=8, le=512)
    bandwidth_hz: float = Field(50000.0, gt=0, description="receiver bandwidth = 1 / dwell")
    flip_deg: float = Field(90.0, gt=0, le=180, description="excitation flip (the spin echo uses 90°)")
    slice_mm: float = Field(5.0, gt=0)
    etl: int = Field(8, ge=2, le=64, description="turbo spin echo: echoes per excitation")
    echo_spacing_ms: float = Field(12.0, gt=0, description="turbo spin echo: time between echoes")
    partial_fourier: float = Field(1.0, ge=0.55, le=1.0, description="fraction of the phase lines acquired "
                                   "(lines 0 .. ceil(N * fraction) - 1; homodyne or POCS reconstruction)")
    slices: int = Field(1, ge=1, le=32, description="slices per TR, excited in interleaved order (even, then odd)")
    slice_spacing_mm: float = Field(10.0, gt=0, description="centre-to-centre distance of adjacent slices")
    slice_centre_mm: float | None = Field(None, description="z of the slice stack's centre (mm); None with one "
                                          "slice: non-selective hard pulses (the console's own slice)")

    def slice_selective(self) -> bool:
        """Slice-selective sinc pulses under a z gradient (several slices, or a slice position given)."""
        return self.slices > 1 or self.slice_centre_mm is not None

    def slice_positions_mm(self) -> list[float]:
        """z (mm) of slice ``0 .. slices - 1``, increasing."""
        c = self.slice_centre_mm or 0.0
        return [c + (i - (self.slices - 1) / 2) * self.slice_spacing_mm for i in range(self.slices)]

    def slice_order(self) -> list[int]:
        """Acquisition order of the slices within a TR: interleaved, even indices then odd."""
        return list(range(0, self.slices, 2)) + list(range(1, self.slices, 2))

    def phase_lines(self) -> int:
        """Phase-encode lines acquired per image."""
        return min(self.matrix, math.ceil(self.matrix * self.partial_fourier))

    def dwell_cycles(self) -> int:
        return int(round(F_CLK_HZ / self.bandwidth_hz))


def program_header(larmor_hz: float, dwell_cycles: int, rx_lo: int = 0) -> Program:
    """A program's opening (cycles 40..88): GPA-FHDO selected, the three DDS at the Larmor
    frequency (phase reset), both receivers' CIC rate ``dwell_cycles``, RX_CTRL LO sources
    ``rx_lo`` (bits 0-3)."""
    prog = Program()
    c0 = 40
    prog.add(c0, GRAD_CTRL, (1 << 9) | (1 << 8) | (10 << 2) | GRAD_BOARD_FHDO)
    step = lo_phase_step(larmor_hz)
    for dds in range(3):
        prog.add(c0 + 16, DDS0_PHASE_LSB + 2 * dds, step & 0xFFFF)
        prog.add(c0 + 16, DDS0_PHASE_LSB + 2 * dds + 1, (step >> 16) | 0x8000)  # with phase reset
        prog.add(c0 + 24, DDS0_PHASE_LSB + 2 * dds + 1, step >> 16)
    prog.add(c0 + 32, RX0_RATE, dwell_cycles)
    prog.add(c0 + 32, RX1_RATE, dwell_cycles)
    prog.add(c0 + 40, RX_CTRL, (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | rx_lo)
    prog.add(c0 + 48, RX_CTRL, (1 << 6) | (1 << 7) | rx_lo)
    return prog


class _Grad:
    """Gradient steps of one channel: (µs, value in full-scale units)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []

    def trapezoid(self, t_us: float, amp: float, flat_us: float, n_ramp: int, step_us: float) -> float:
        """Add a staircase trapezoid starting at ``t_us``; returns its end (µs)."""
        for i in range(n_ramp):
            self.steps.append((t_us + i * step_us, amp * (i + 1) / n_ramp))
        t_flat_end = t_us + n_ramp * step_us + flat_us
        for i in range(n_ramp):
            self.steps.append((t_flat_end + i * step_us, amp * (n_ramp - 1 - i) / n_ramp))
        return t_flat_end + n_ramp * step_us

    @staticmethod
    def q(v: float) -> float:
        """The GPA-FHDO DAC's value for ``v``."""
        code = min(max(round(32767.51 * (v + 1)), 0), 0xFFFF)
        return code / 32768 - 1


def _area(steps: list[tuple[float, float]], t_end: float) -> float:
    """∫ value dt (full-scale·µs) of quantised steps up to ``t_end``."""
    a = 0.0
    st = sorted(steps)
    for (t0, v), nxt in zip(st, st[1:] + [(math.inf, 0.0)]):
        if t0 >= t_end:
            break
        a += _Grad.q(v) * (min(nxt[0], t_end) - t0)
    return a


class CartesianSequence:
    """Validated sequence: ``lines(first, count)`` compiles ``count`` TRs as one program."""

    def __init__(self, params: SequenceParams, limits: SystemLimits) -> None:
        self.p, self.lim = params, limits
        p, lim = params, limits
        n = p.matrix
        self.dwell_cycles = d = p.dwell_cycles()
        if not 16 <= d <= 4095:
            raise SequenceError(f"bandwidth {p.bandwidth_hz:g} Hz needs a dwell of {d} cycles; the receiver's CIC "
                                f"takes 16..4095 here (bandwidth {F_CLK_HZ / 4095:.0f}..{F_CLK_HZ / 16:.0f} Hz)")
        self.dwell_s = d / F_CLK_HZ
        fov = p.fov_mm * 1e-3
        self.dk = 1 / fov
        g_ro = self.dk / (GAMMA_BAR_HZ_PER_T * self.dwell_s)  # T/m
        if g_ro * 1e3 > lim.max_grad_mt_per_m:
            raise SequenceError(f"readout gradient {g_ro * 1e3:.2f} mT/m exceeds max_grad_mt_per_m "
                                f"{lim.max_grad_mt_per_m:g} (larger FOV or lower bandwidth)")
        fs = lim.grad_full_scale_mt_per_m * 1e-3
        self.ro_amp = g_ro / fs
        step = lim.grad_step_us
        gmax = lim.max_grad_mt_per_m * 1e-3
        ramp_us = gmax / lim.max_slew_t_per_m_s * 1e6
        self.n_ramp = max(1, math.ceil(ramp_us / step))
        self.ramp_us = self.n_ramp * step
        # phase encode: largest moment (N/2) dk at max_grad -> its flat time
        pe_area = (n / 2) * self.dk / GAMMA_BAR_HZ_PER_T  # T s / m
        self.pe_flat_us = max(step, math.ceil(pe_area / gmax * 1e6 / step) * step)
        self.pe_amp_max = pe_area / ((self.pe_flat_us + self.ramp_us) * 1e-6) / fs  # staircase area = amp*(flat+ramp)
        self.pe_dur_us = self.pe_flat_us + 2 * self.ramp_us + 3.0
        self.acq_us = n * self.dwell_s * 1e6
        self.p90_us = 1e6 / (4 * lim.b1_hz)
        self.exc_us = self.p90_us * (p.flip_deg / 90.0) if p.sequence == "gre" else self.p90_us
        self.p180_us = 2 * self.p90_us
        self.selective = p.slice_selective()
        self.rx_lo = 0
        self.pad_us = 0.0
        self.rf_energy_180_us = self.p180_us
        self.rf_energy_exc_us = self.exc_us
        if self.selective:
            self._design_slice_pulses(gmax, fs, step)
        te, tr = p.te_ms * 1e3, p.tr_ms * 1e3
        half_ro = self.ramp_us + (n / 2 + 1) * self.dwell_s * 1e6 + step
        self.shots = p.phase_lines()
        self.echo_index = 0
        if p.sequence == "tse":
            if p.partial_fourier < 1:
                raise SequenceError("turbo spin echo here acquires full k-space (partial_fourier = 1)")
            if n % p.etl:
                raise SequenceError(f"matrix {n} is not a multiple of the echo train length {p.etl}")
            esp = p.echo_spacing_ms * 1e3
            esp_min = 2 * (self.p180_us / 2 + self.pe_dur_us + half_ro + 2 * step)
            esp_min = max(esp_min, 2 * (self.exc_us / 2 + self.pe_dur_us + self.p180_us / 2 + 2 * step))
            if esp < esp_min:
                raise SequenceError(f"echo spacing {p.echo_spacing_ms:g} ms is below the minimum {esp_min / 1e3:.2f} ms "
                                    f"for this FOV/matrix/bandwidth and max_grad_mt_per_m/max_slew_t_per_m_s")
            k = round(te / esp)
            if not 1 <= k <= p.etl or abs(te - k * esp) > 1e-3:
                raise SequenceError(f"turbo spin echo: TE {p.te_ms:g} ms must be a multiple of the echo spacing "
                                    f"{p.echo_spacing_ms:g} ms, at most {p.etl} of them")
            self.echo_index = k - 1
            self.shots = n // p.etl
            te_min = esp_min
        elif p.sequence == "se":
            need1 = self.exc_us / 2 + self.pe_dur_us + self.p180_us / 2 + 2 * step
            need2 = self.p180_us / 2 + half_ro + step
            te_min = 2 * max(need1, need2)
        else:
            te_min = self.exc_us / 2 + self.pe_dur_us + half_ro + step
        self.te_min_ms = te_min / 1e3
        if te < te_min:
            raise SequenceError(f"TE {p.te_ms:g} ms is below the minimum {te_min / 1e3:.2f} ms for this "
                                f"FOV/matrix/bandwidth and max_grad_mt_per_m/max_slew_t_per_m_s")
        last_echo = p.etl * p.echo_spacing_ms * 1e3 if p.sequence == "tse" else te
        end_us = _T0_US + self.exc_us / 2 + last_echo + half_ro + self.ramp_us + \
            (self.pe_dur_us if p.sequence != "se" else 0) + 50
        self.tr_min_ms = end_us / 1e3
        if tr < end_us * p.slices:
            raise SequenceError(f"TR {p.tr_ms:g} ms is below the minimum {end_us * p.slices / 1e3:.2f} ms for TE "
                                f"{p.te_ms:g} ms" + (f" and {p.slices} slices" if p.slices > 1 else ""))
        self.tr_min_ms *= p.slices
        rf_energy_us = self.rf_energy_exc_us + {"se": 1, "gre": 0, "tse": p.etl}[p.sequence] * self.rf_energy_180_us
        duty = rf_energy_us * p.slices / tr
        if duty > lim.max_rf_duty:
            raise SequenceError(f"RF duty {duty:.3f} exceeds max_rf_duty {lim.max_rf_duty:g} (longer TR)")
        self.rf_duty = duty
        # the interface the driver shares with medacq.protocols.pulseq.PulseqSequence
        self.matrix = n
        self.fov_m = [fov, fov]
        self.tr_s = tr * 1e-6
        self.bandwidth_hz = F_CLK_HZ / d
        self.phase_lines = p.phase_lines()
        self.slice_positions_mm: list[float] | None = p.slice_positions_mm() if self.selective else None
        self.n_slices = p.slices

    def acq_phases(self, shot: int) -> list[float]:
        """ADC phase offsets (rad) of a shot's windows: none here."""
        return [0.0] * len(self.shot_acqs(shot))

    def _design_slice_pulses(self, gmax: float, fs: float, step: float) -> None:
        """Hamming-windowed sinc pulses (time-bandwidth :data:`RF_TBW`) under a slice-select
        gradient: as short as B1 (the 180° at full scale at most) and ``max_grad_mt_per_m``
        allow for ``slice_mm``; the slot of a pulse is the gradient's ramps plus the pulse."""
        p, lim = self.p, self.lim
        if p.sequence == "tse":
            raise SequenceError("slice-selective (multi-slice) acquisition is built for se and gre, not tse")
        u = (np.arange(400) + 0.5) / 400 - 0.5
        frac = float(np.mean(np.sinc(RF_TBW * u) * (0.54 + 0.46 * np.cos(2 * np.pi * u))))
        dz = p.slice_mm * 1e-3
        t_b1 = 1.02 / (2 * lim.b1_hz) / frac  # s: the 180° within full scale
        t_g = RF_TBW / (GAMMA_BAR_HZ_PER_T * gmax * dz)  # s: the slice within max_grad
        n_rf = 4 * math.ceil(max(t_b1, t_g) * 1e6 / (4 * RF_STEP_US))
        self.rf_us = n_rf * RF_STEP_US
        u = (np.arange(n_rf) + 0.5) / n_rf - 0.5
        self.rf_shape = np.sinc(RF_TBW * u) * (0.54 + 0.46 * np.cos(2 * np.pi * u))
        self.rf_frac = float(np.mean(self.rf_shape))
        self.gz = RF_TBW / (self.rf_us * 1e-6 * GAMMA_BAR_HZ_PER_T * dz)  # T/m
        self.gz_amp = self.gz / fs
        self.pad_us = self.ramp_us + step
        self.exc_us = self.p180_us = self.rf_us + 2 * self.pad_us  # pulse slots
        # the excitation's z moment after its centre, rewound by a trapezoid right after the slot
        gz = _Grad()
        gz.trapezoid(step, self.gz_amp, self.rf_us, self.n_ramp, step)
        centre = self.pad_us + self.rf_us / 2
        moment = _area(gz.steps, self.rf_us + 4 * self.pad_us) - _area(gz.steps, centre)
        flat = max(step, math.ceil((moment / self.gz_amp - self.ramp_us) / step) * step)
        self.reph_flat_us = flat
        self.reph_amp = moment / (flat + self.ramp_us)
        self.pe_dur_us = max(self.pe_dur_us, flat + 2 * self.ramp_us + step)
        self.rx_lo = _RX_LO_DDS1
        mean_sq = float(np.mean(self.rf_shape ** 2))
        self.rf_energy_180_us = self._rf_peak(180.0) ** 2 * mean_sq * self.rf_us
        self.rf_energy_exc_us = self._rf_peak(p.flip_deg if p.sequence == "gre" else 90.0) ** 2 * mean_sq * self.rf_us

    def _rf_peak(self, flip_deg: float) -> float:
        """Peak TX amplitude (full scale 1) of the shaped pulse for ``flip_deg``."""
        return float(np.deg2rad(flip_deg) / (2 * np.pi * self.lim.b1_hz * self.rf_us * 1e-6 * self.rf_frac))

    def slice_offset_hz(self, sl: int) -> float:
        """TX frequency offset (Hz) from the Larmor frequency that excites slice ``sl``."""
        return GAMMA_BAR_HZ_PER_T * self.gz * self.p.slice_positions_mm()[sl] * 1e-3

    # ---- compile ---------------------------------------------------------------------------
    def _cyc(self, t_us: float) -> int:
        return grid_cycle(t_us)

    def shot_lines(self, shot: int) -> list[int]:
        """Phase lines a shot (one TR) acquires, in acquisition order (none for a dummy, ``shot < 0``).
        Turbo spin echo: echo ``e`` of shot ``s`` takes line ``seg(e) · shots + s``, segments in
        order of echo, rotated so that the centre line is at echo ``TE / echo spacing``."""
        if shot < 0:
            return []
        if self.p.sequence != "tse":
            return [shot]
        etl, n_seg = self.p.etl, self.shots
        c_seg = (self.p.matrix // 2) // n_seg
        return [((e - self.echo_index + c_seg) % etl) * n_seg + shot for e in range(etl)]

    def shot_acqs(self, shot: int) -> list[tuple[int, int]]:
        """``(slice, line)`` of every ADC window of a shot, in acquisition order (slices interleaved)."""
        return [(sl, line) for sl in self.p.slice_order() for line in self.shot_lines(shot)]

    def lines(self, first: int, count: int, trig_out_us: float = 0.0, wait_trigger: bool = False,
              wait_timeout_cycles: int | None = None) -> np.ndarray:
        """Machine code for shots (TRs) ``first .. first + count - 1`` (negative: a dummy TR with
        ky = 0); a shot is one line, or ``etl`` lines of a turbo spin echo (:meth:`shot_lines`).

        ``trig_out_us`` > 0: every acquired shot (not a dummy) raises the trigger output
        (``GATES_LEDS`` bit 2) for that long at its start (:meth:`shot_start_us`).
        ``wait_trigger``: every shot (dummies too) waits for the trigger input first: an ``ITRIG``
        with ``wait_timeout_cycles`` (``None``: ``ITRIGFOREVER``) ``_WAIT_LEAD_US`` before its start;
        the shot's events then follow the trigger (cardiac gating). Times are nominal (each wait
        its minimum 3 cycles)."""
        p, lim = self.p, self.lim
        if trig_out_us < 0 or (trig_out_us > 0 and trig_out_us >= p.tr_ms * 1e3 / 2):
            raise SequenceError(f"trigger output pulse {trig_out_us:g} µs: must be shorter than half the TR "
                                f"({p.tr_ms * 1e3 / 2:g} µs)")
        prog = program_header(lim.larmor_hz, self.dwell_cycles, self.rx_lo)
        lat = GRAD_LATENCY[GRAD_BOARD_FHDO]
        tr_us = p.tr_ms * 1e3
        order = p.slice_order()
        for j in range(count):
            if p.sequence == "tse":
                self._tse(prog, _T0_US + j * tr_us, first + j, lat)
            else:
                for k, sl in enumerate(order):
                    self._one(prog, _T0_US + j * tr_us + k * tr_us / len(order), first + j, lat, sl)
        if trig_out_us > 0:
            add_trig_out(prog, [(self._cyc(self.shot_start_us(j)), self._cyc(self.shot_start_us(j) + trig_out_us))
                                for j in range(count) if first + j >= 0])
        if wait_trigger:
            for j in range(count):
                prog.wait_trigger(self._cyc(self.shot_start_us(j) - _WAIT_LEAD_US), wait_timeout_cycles)
        return compile_changes(prog, end_cycle=self._cyc(count * tr_us))

    def shot_start_us(self, j: int) -> float:
        """Nominal start (µs from the program's start) of the ``j``-th shot of a program."""
        return _T0_US + j * self.p.tr_ms * 1e3

    def _rf(self, prog: Program, t_us: float, dur_us: float, amp: float, phase: float = 0.0) -> None:
        a = amp * np.exp(1j * phase)
        i, q = int(round(32767 * a.real)) & 0xFFFF, int(round(32767 * a.imag)) & 0xFFFF
        c_on, c_off = self._cyc(t_us), self._cyc(t_us + dur_us)
        prog.add(c_on - 8, GATES_LEDS, 1)
        prog.add(c_on, TX0_I, i)
        prog.add(c_on, TX0_Q, q)
        prog.add(c_off, TX0_I, 0)
        prog.add(c_off, TX0_Q, 0)
        prog.add(c_off + 8, GATES_LEDS, 0)

    def _grads(self, prog: Program, ch: int, steps: list[tuple[float, float]], lat: int, nudge: bool = False) -> None:
        for t, v in steps:
            c = self._cyc(t) - lat
            while nudge and GRAD_LSB in prog.changes.get(c, {}):  # another channel's write: 8 cycles later
                c += 8
            prog.add_grad(c, fhdo_word(ch, v))

    def _pulse(self, prog: Program, t_us: float, flip_deg: float, phase: float, sl: int, gz: _Grad) -> None:
        """A slice-selective pulse in the slot starting at ``t_us``: DDS0 (the TX LO) set to the
        slice's frequency, the shaped TX amplitude, the slice-select trapezoid on z."""
        step = self.lim.grad_step_us
        t_on = t_us + self.pad_us
        c_on, c_off = self._cyc(t_on), self._cyc(t_on + self.rf_us)
        f = lo_phase_step(self.lim.larmor_hz + self.slice_offset_hz(sl))
        prog.add(c_on - 24, DDS0_PHASE_LSB, f & 0xFFFF)
        prog.add(c_on - 24, DDS0_PHASE_MSB, f >> 16)
        prog.add(c_on - 8, GATES_LEDS, 1)
        a = self._rf_peak(flip_deg) * self.rf_shape * np.exp(1j * phase)
        for i, v in enumerate(a):
            re, im = int(round(32767 * v.real)), int(round(32767 * v.imag))
            if re == 0 and im == 0:  # never a zero inside the pulse: it would split it
                re, im = (int(np.sign(v.real) or 1), 0) if abs(v.real) >= abs(v.imag) else (0, int(np.sign(v.imag) or 1))
            c = self._cyc(t_on + i * RF_STEP_US)
            prog.add(c, TX0_I, re & 0xFFFF)
            prog.add(c, TX0_Q, im & 0xFFFF)
        prog.add(c_off, TX0_I, 0)
        prog.add(c_off, TX0_Q, 0)
        prog.add(c_off + 8, GATES_LEDS, 0)
        gz.trapezoid(t_us + step, self.gz_amp, self.rf_us, self.n_ramp, step)

    def _one(self, prog: Program, t0: float, line: int, lat: int, sl: int = 0) -> None:
        p = self.p
        n = p.matrix
        step = self.lim.grad_step_us
        te = p.te_ms * 1e3
        t_exc = t0
        t_c = t_exc + self.exc_us / 2  # excitation centre
        echo = t_c + te
        d_us = self.dwell_s * 1e6
        adc_start = echo - (n / 2 + 1) * d_us
        gx, gy, gz = _Grad(), _Grad(), _Grad()
        ro_start = adc_start - self.ramp_us - step
        ro_flat = (n + 2) * d_us + 2 * step
        gx.trapezoid(ro_start, self.ro_amp, ro_flat, self.n_ramp, step)
        ro_area_to_echo = _area(gx.steps, echo)
        ky = (line - n / 2) if line >= 0 else 0.0
        pe_frac = ky / (n / 2)
        t_pe = t_c + self.exc_us / 2 + step
        unit = self.pe_flat_us + self.ramp_us  # staircase trapezoid area per unit amplitude (µs)
        if self.selective:
            self._pulse(prog, t_exc, p.flip_deg if p.sequence == "gre" else 90.0, 0.0, sl, gz)
            gz.trapezoid(t_pe, -self.reph_amp, self.reph_flat_us, self.n_ramp, step)
        if p.sequence == "se":
            t180 = t_c + te / 2 - self.p180_us / 2
            if self.selective:
                self._pulse(prog, t180, 180.0, np.pi / 2, sl, gz)
            else:
                self._rf(prog, t_exc, self.exc_us, 1.0, 0.0)
                self._rf(prog, t180, self.p180_us, 1.0, np.pi / 2)
            # pre-180 moments are negated by the refocusing pulse
            gx.trapezoid(t_pe, ro_area_to_echo / unit, self.pe_flat_us, self.n_ramp, step)
            gy.trapezoid(t_pe + 3.0, -pe_frac * self.pe_amp_max, self.pe_flat_us, self.n_ramp, step)
        else:
            if not self.selective:
                self._rf(prog, t_exc, self.exc_us, 1.0, 0.0)
            gx.trapezoid(t_pe, -ro_area_to_echo / unit, self.pe_flat_us, self.n_ramp, step)
            gy.trapezoid(t_pe + 3.0, pe_frac * self.pe_amp_max, self.pe_flat_us, self.n_ramp, step)
            ro_end = ro_start + 2 * self.ramp_us + ro_flat
            gx.trapezoid(ro_end + step, min(1.0, 2 * self.ro_amp), self.pe_flat_us, self.n_ramp, step)  # spoiler
        self._grads(prog, 0, gx.steps, lat)
        self._grads(prog, 1, gy.steps, lat)
        self._grads(prog, 2, gz.steps, lat, nudge=True)
        c_adc = self._cyc(adc_start)
        prog.add(c_adc, RX_CTRL, (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | self.rx_lo)
        prog.add(8 * -(-(c_adc + n * self.dwell_cycles + 1) // 8), RX_CTRL, (1 << 6) | (1 << 7) | self.rx_lo)

    def _readout(self, prog: Program, gx: _Grad, echo: float) -> tuple[float, float]:
        """A readout trapezoid and ADC window centred on ``echo``; (gradient start, end) in µs."""
        n, step = self.p.matrix, self.lim.grad_step_us
        d_us = self.dwell_s * 1e6
        adc_start = echo - (n / 2 + 1) * d_us
        ro_start = adc_start - self.ramp_us - step
        ro_flat = (n + 2) * d_us + 2 * step
        end = gx.trapezoid(ro_start, self.ro_amp, ro_flat, self.n_ramp, step)
        c_adc = self._cyc(adc_start)
        prog.add(c_adc, RX_CTRL, (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9))
        prog.add(8 * -(-(c_adc + n * self.dwell_cycles + 1) // 8), RX_CTRL, (1 << 6) | (1 << 7))
        return ro_start, end

    def _tse(self, prog: Program, t0: float, shot: int, lat: int) -> None:
        """One CPMG echo train: 90°x, then ``etl`` × 180°y; phase blip before and rewinder after
        each readout (k_y back to 0 before every refocusing pulse); the readout prephaser before
        the first 180° (negated by it, like the spin echo's)."""
        p = self.p
        n, step = p.matrix, self.lim.grad_step_us
        esp = p.echo_spacing_ms * 1e3
        t_c = t0 + self.exc_us / 2
        gx, gy = _Grad(), _Grad()
        self._rf(prog, t0, self.exc_us, 1.0, 0.0)
        lines = self.shot_lines(shot) if shot >= 0 else [n // 2] * p.etl
        unit = self.pe_flat_us + self.ramp_us
        for e, line in enumerate(lines):
            t180 = t_c + esp / 2 + e * esp
            self._rf(prog, t180 - self.p180_us / 2, self.p180_us, 1.0, np.pi / 2)
            echo = t_c + (e + 1) * esp
            ro_start, ro_end = self._readout(prog, gx, echo)
            if e == 0:
                area = _area(gx.steps, echo)
                gx.trapezoid(t_c + self.exc_us / 2 + step, area / unit, self.pe_flat_us, self.n_ramp, step)
            frac = (line - n / 2) / (n / 2)
            gy.trapezoid(ro_start - self.pe_dur_us + 3.0 - step, frac * self.pe_amp_max, self.pe_flat_us,
                         self.n_ramp, step)
            gy.trapezoid(ro_end + 3.0, -frac * self.pe_amp_max, self.pe_flat_us, self.n_ramp, step)
        self._grads(prog, 0, gx.steps, lat)
        self._grads(prog, 1, gy.steps, lat)

    def describe(self) -> dict[str, Any]:
        """Parameters and derived timing for the stream descriptor."""
        p = self.p
        return {**p.model_dump(), "phase_lines": p.phase_lines(), "shots": self.shots, "dwell_us": self.dwell_s * 1e6, "te_min_ms": round(self.te_min_ms, 3),
                "tr_min_ms": round(self.tr_min_ms, 3), "rf_duty": round(self.rf_duty, 5),
                "readout_mt_per_m": self.ro_amp * self.lim.grad_full_scale_mt_per_m,
                "larmor_hz": self.lim.larmor_hz, "b0_t": self.lim.b0_t,
                "slice_positions_mm": p.slice_positions_mm() if self.selective else None,
                "slice_order": p.slice_order(), "slice_selective": self.selective,
                **({"rf_us": self.rf_us, "slice_select_mt_per_m": self.gz * 1e3,
                    "slice_offsets_hz": [round(self.slice_offset_hz(i), 3) for i in range(p.slices)]}
                   if self.selective else {})}
