"""Physics of the simulated MRI console: the sequence in the machine code acts on a phantom.

:meth:`SpinPhantomModel.run` takes the decoded :class:`~medacq.protocols.marga.Timelines` of
one ``run_seq`` and returns every ADC sample of both receivers as int32 counts:

* **RF**: TX0's piecewise-constant complex amplitude; a pulse is a run of non-zero amplitude
  (gated by ``tx_gate`` when the program uses the gate). Flip angle ``2π · b1_hz · |∫a dt|``
  (``b1_hz``: γB1/2π at full scale), phase ``arg ∫a dt``, times ``|sinc(Δf · T)|`` for an
  excitation ``Δf`` off resonance (TX LO 0 vs the Larmor frequency).
* **Gradients**: DAC steps (latency applied by the decoder) × ``grad_t_per_m`` per channel
  (x, y, z), integrated exactly into k(t) = γ̄ ∫G dt (cycles/m).
* **Spins**: one magnetisation per phantom compartment. Longitudinal ``Mz`` relaxes with T1
  between pulses and persists across ``run_seq`` calls (steady state builds up as on a
  scanner). A pulse of flip ≥ 120° while a transverse pathway exists *refocuses* it (k → -k,
  conjugate phase, × sin²(α/2)); any other pulse *excites* a new pathway (the old one is
  spoiled: perfect spoiling) from ``Mz sin α``; both rotate ``Mz`` by α.
* **Signal** of coil c at sample t: ``Σ_i (m_i - m_parent) [F_i(k') a_c0 + F_i(k' - q) a_c1]``
  with ``m_i = A_i exp(-(t - t_ex)/T2_i)``, ``k'`` the pathway's k-space position, the closed-form
  ellipse transforms ``F_i`` and two coil sensitivities ``c_c(r) = (1 ± 0.6 i e^{i2π q x}) e^{iψ_c}
  / √2.72`` (left and right coils whose squares sum to 1 everywhere). Off-resonance (RX LO vs
  Larmor) and an optional T2' add ``exp(-i2πΔf τ - |τ|/T2')`` with τ the refocusable time.
* **Slices**: a pulse played while the z gradient is on is *slice selective*: it acts on the
  plane ``z = (f_TX - f_Larmor) / (γ̄ G_z)`` (TX LO 0 at the pulse, ``G_z`` at its centre), an
  ideal thin slice of the 3D phantom (its ellipsoids cut at that z); each plane keeps its own
  ``Mz``, so interleaved slices recover while the others are played. A pulse without a z
  gradient acts on every plane; its pathway is the one of ``slice_z``.
* **Receiver**: complex Gaussian thermal noise (σ ∝ √bandwidth), the CIC's rate-dependent gain
  (the ``excess_factor`` marcos_client's ``cic_words`` corrects), rounding to int32.

Deterministic: a seed in, the same counts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medacq.protocols.marga import F_CLK_HZ, CIC_SLOWEST_RATE, Timelines
from medacq.protocols.models.mri_phantom import MRSheppLogan

__all__ = ["GAMMA_BAR_HZ_PER_T", "ConsoleConfig", "RunResult", "SpinPhantomModel", "cic_excess_factor"]

GAMMA_BAR_HZ_PER_T = 42.577478e6


def cic_excess_factor(rate: int) -> float:
    """marcos_client ``cic_words``: ``2**(g - floor(g))``, ``g = 6 log2(4096 / rate)``."""
    p2 = 1 << int(np.ceil(np.log2(CIC_SLOWEST_RATE)))
    g = 6 * np.log2(p2 / rate)
    return float(2 ** (g - np.floor(g)))


@dataclass(frozen=True)
class ConsoleConfig:
    """The simulated scanner.

    Attributes:
        b0_t: field strength (T); Larmor ``γ̄ B0`` plus ``larmor_offset_hz``.
        b1_hz: γB1/2π at TX full scale (Hz): a 90° hard pulse lasts ``1 / (4 b1_hz)``.
        grad_t_per_m: gradient at DAC full scale (T/m), per channel x, y, z.
        noise_fraction: noise σ per sample (per I and Q) as a fraction of the phantom's
            fully-relaxed k=0 signal, at ``noise_ref_bw_hz`` (σ ∝ √bandwidth).
        t2_prime_s: reversible dephasing (T2' in s, 0 = none): T2* = 1/(1/T2 + 1/T2').
        slice_z: normalised slice height in the phantom.
        seed: noise seed.
    """

    b0_t: float = 0.2
    larmor_offset_hz: float = 0.0
    b1_hz: float = 2500.0
    grad_t_per_m: tuple[float, float, float] = (0.02, 0.02, 0.02)
    noise_fraction: float = 2e-5
    noise_ref_bw_hz: float = 50e3
    t2_prime_s: float = 0.0
    half_fov_m: float = 0.1
    slice_z: float = -0.25
    seed: int = 0

    @property
    def larmor_hz(self) -> float:
        return GAMMA_BAR_HZ_PER_T * self.b0_t + self.larmor_offset_hz


@dataclass
class RunResult:
    """One run's ADC data: per receiver int32 counts and their times (s from the run's start),
    in acquisition order; ``windows`` the number of ADC windows; ``duration_s``."""

    counts: list[np.ndarray]
    times_s: list[np.ndarray]
    duration_s: float
    pulses: int = 0
    windows: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Pulse:
    t: float
    dur: float
    flip: float
    phase: float
    z: float | None = None  # normalised plane of a slice-selective pulse


class _Plane:
    """One z plane of the phantom and its longitudinal magnetisation."""

    def __init__(self, phantom: MRSheppLogan) -> None:
        self.ph = phantom
        self.mz = phantom.m0.astype(float).copy()


class SpinPhantomModel:
    """Spins of the phantom, their state between runs, and the receive chain."""

    def __init__(self, config: ConsoleConfig | None = None) -> None:
        self.config = c = config or ConsoleConfig()
        self.phantom = MRSheppLogan(b0_t=c.b0_t, half_fov_m=c.half_fov_m, z=c.slice_z)
        self.rng = np.random.default_rng(c.seed)
        self._home = _Plane(self.phantom)
        self.planes: dict[float, _Plane] = {round(c.slice_z, 6): self._home}
        self.t_state = 0.0
        q = 1.0 / (4 * c.half_fov_m)
        self.coil_q = (q, 0.0)
        nrm = np.sqrt(2 * (1 + 0.36))
        self.coil_coef = np.array([[1.0, 0.6j], [1.0, -0.6j]]) / nrm * np.exp(1j * np.array([[0.3], [-0.8]]))
        self.k0 = float(np.sum(self.phantom.deltas(self.phantom.m0) * np.pi * self.phantom.a * self.phantom.b))
        self.counts_per_unit = 0.5 * 2 ** 24 / self.k0

    def coil_sensitivity(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(coil, ...)`` complex sensitivities at positions (m)."""
        e = np.exp(2j * np.pi * (self.coil_q[0] * np.asarray(x) + self.coil_q[1] * np.asarray(y)))
        return np.stack([self.coil_coef[c, 0] + self.coil_coef[c, 1] * e for c in range(2)])

    @property
    def mz(self) -> np.ndarray:
        """Longitudinal magnetisation of the ``slice_z`` plane's compartments."""
        return self._home.mz

    @mz.setter
    def mz(self, v: np.ndarray) -> None:
        self._home.mz = v

    def plane(self, z: float | None) -> _Plane:
        """The plane at normalised ``z`` (None: ``slice_z``), created fully relaxed on first use."""
        if z is None:
            return self._home
        key = round(z, 6)
        pl = self.planes.get(key)
        if pl is None:
            c = self.config
            pl = self.planes[key] = _Plane(MRSheppLogan(b0_t=c.b0_t, half_fov_m=c.half_fov_m, z=key))
        return pl

    def reset(self) -> None:
        for pl in self.planes.values():
            pl.mz = pl.ph.m0.astype(float).copy()

    def _relax(self, t: float) -> None:
        dt = t - self.t_state
        if dt > 0:
            for pl in self.planes.values():
                e1 = np.exp(-dt / pl.ph.t1)
                pl.mz = pl.ph.m0 + (pl.mz - pl.ph.m0) * e1
        self.t_state = max(self.t_state, t)

    def _pulses(self, tl: Timelines) -> list[_Pulse]:
        t, a = tl.tx[0]
        gt, gv = tl.tx_gate
        gated = bool(np.any(gv[1:] != 0))
        if len(t) == 0:
            return []
        end = max(tl.duration, int(t[-1]) + 1)
        edges = np.unique(np.concatenate([t, gt, [end]]))
        seg_a = a[np.searchsorted(t, edges[:-1], side="right") - 1]
        if gated:
            seg_a = seg_a * gv[np.searchsorted(gt, edges[:-1], side="right") - 1]
        on = np.abs(seg_a) > 0
        pulses: list[_Pulse] = []
        lo_t, lo_v = tl.lo_hz[0]
        i = 0
        n = len(on)
        while i < n:
            if not on[i]:
                i += 1
                continue
            j = i
            while j < n and on[j]:
                j += 1
            dts = (edges[i + 1:j + 1] - edges[i:j]) / F_CLK_HZ
            area = np.sum(seg_a[i:j] * dts)
            t0, t1 = edges[i] / F_CLK_HZ, edges[j] / F_CLK_HZ
            mid = (edges[i:j] + edges[i + 1:j + 1]) / 2 / F_CLK_HZ
            w = np.abs(seg_a[i:j]) * dts
            tc = float(np.sum(mid * w) / np.sum(w))
            lo = lo_v[np.searchsorted(lo_t, edges[i], side="right") - 1]
            dfx = self.config.larmor_hz - lo
            gzt, gzv = tl.grad[2]
            gz = float(gzv[np.searchsorted(gzt, tc * F_CLK_HZ, side="right") - 1]) * self.config.grad_t_per_m[2]
            z: float | None = None
            if abs(gz) > 1e-5:  # slice selective: the plane where the TX frequency is the local Larmor frequency
                z = float(-dfx / (GAMMA_BAR_HZ_PER_T * gz) / self.config.half_fov_m)
                flip = 2 * np.pi * self.config.b1_hz * abs(area)
            else:
                flip = 2 * np.pi * self.config.b1_hz * abs(area) * abs(np.sinc(dfx * (t1 - t0)))
            pulses.append(_Pulse(tc, t1 - t0, float(flip), float(np.angle(area)), z))
            i = j
        return pulses

    def _kspace_at(self, tl: Timelines, t_s: np.ndarray) -> np.ndarray:
        """``(3, len(t))`` k (cycles/m) at times ``t_s`` (s from the run's start)."""
        out = np.zeros((3, len(t_s)))
        cyc = t_s * F_CLK_HZ
        for ch in range(3):
            gt, gv = tl.grad[ch]
            gt = gt.astype(float)
            seg = np.diff(np.append(gt, max(gt[-1], cyc.max() if len(cyc) else 0) + 1))
            cum = np.concatenate([[0.0], np.cumsum(gv * seg)])
            idx = np.clip(np.searchsorted(gt, cyc, side="right") - 1, 0, len(gt) - 1)
            integ = cum[idx] + gv[idx] * (cyc - gt[idx])  # unit·cycles
            out[ch] = integ / F_CLK_HZ * self.config.grad_t_per_m[ch] * GAMMA_BAR_HZ_PER_T
        return out

    def run(self, tl: Timelines, t_start: float, drop_windows: int = 0) -> RunResult:
        """Play the decoded program from ``t_start`` (s, the model's clock); ADC windows beyond
        ``drop_windows`` are acquired (the first ``drop_windows`` are lost, as in a FIFO overrun)."""
        c = self.config
        ph = self.phantom
        cur = self._home  # the plane of the pathway
        self._relax(t_start)
        pulses = self._pulses(tl)
        wins = [w for w in tl.rx if w.n > 0]
        # sample times per window
        counts: list[list[np.ndarray]] = [[], []]
        times: list[list[np.ndarray]] = [[], []]
        # pathway state
        amp: np.ndarray | None = None  # (n,) complex at t_ex (before T2 decay)
        t_ex = 0.0
        kref = np.zeros(3)  # the pathway's k' = k(t) - kref
        tau0 = 0.0  # its refocusable time tau = t - tau0
        events: list[tuple[float, int, object]] = [(p.t, 0, p) for p in pulses]
        events += [(w.start / F_CLK_HZ, 1, w) for w in wins]
        events.sort(key=lambda e: (e[0], e[1]))
        notes: list[str] = []
        lost = drop_windows
        for t_ev, kind, obj in events:
            if kind == 0:
                p = obj
                assert isinstance(p, _Pulse)
                self._relax(t_start + p.t)
                pl = self.plane(p.z)
                if p.flip >= np.deg2rad(120) and amp is not None and (p.z is None or pl is cur):
                    # refocus: m+ = e^{2i phi} conj(m-) sin^2(a/2), so k' -> -k' and tau -> -tau
                    k_r = self._kspace_at(tl, np.array([p.t]))[:, 0]
                    kref = 2 * k_r - kref
                    tau0 = 2 * p.t - tau0
                    amp = np.exp(2j * p.phase) * np.conj(amp) * np.sin(p.flip / 2) ** 2
                else:
                    cur, ph = pl, pl.ph
                    amp = pl.mz * np.sin(p.flip) * np.exp(1j * (p.phase - np.pi / 2))
                    t_ex = p.t
                    kref = self._kspace_at(tl, np.array([p.t]))[:, 0]
                    tau0 = p.t
                for q in (self.planes.values() if p.z is None else (pl,)):
                    q.mz = q.mz * np.cos(p.flip)
                continue
            w = obj
            ts = w.sample_cycles() / F_CLK_HZ  # type: ignore[attr-defined]
            if lost > 0:
                lost -= 1
                notes.append("rx_overrun")
                continue
            if amp is None:
                sig = np.zeros((len(ts),), complex)
            else:
                k = self._kspace_at(tl, ts)
                kp = k - kref[:, None]
                decay = np.exp(-(ts[:, None] - t_ex) / ph.t2[None, :])
                m = amp[None, :] * decay
                wts = ph.deltas(m)
                tau = ts - tau0
                lo_t, lo_v = tl.lo_hz[w.lo]  # type: ignore[attr-defined]
                f_lo = float(lo_v[np.searchsorted(lo_t, w.start, side="right") - 1])  # type: ignore[attr-defined]
                off = np.exp(-2j * np.pi * (c.larmor_hz - f_lo) * tau)
                if c.t2_prime_s > 0:
                    off = off * np.exp(-np.abs(tau) / c.t2_prime_s)
                f0 = np.sum(ph.ellipse_ft(kp[0], kp[1]) * wts, axis=1)
                f1 = np.sum(ph.ellipse_ft(kp[0] - self.coil_q[0], kp[1] - self.coil_q[1]) * wts, axis=1)
                ch = w.channel  # type: ignore[attr-defined]
                sig = (self.coil_coef[ch, 0] * f0 + self.coil_coef[ch, 1] * f1) * off
            bw = F_CLK_HZ / w.rate  # type: ignore[attr-defined]
            sigma = c.noise_fraction * self.k0 * np.sqrt(bw / c.noise_ref_bw_hz)
            noise = self.rng.normal(0.0, sigma, (2, len(ts)))
            x = (sig + noise[0] + 1j * noise[1]) * self.counts_per_unit / cic_excess_factor(w.rate)  # type: ignore[attr-defined]
            q = np.empty(2 * len(ts), np.int64)
            q[0::2] = np.round(x.real)
            q[1::2] = np.round(x.imag)
            q = ((q + 2 ** 31) % 2 ** 32) - 2 ** 31  # int32 wrap, as the CIC output register
            counts[w.channel].append(q.astype(np.int32))  # type: ignore[attr-defined]
            times[w.channel].append(ts)  # type: ignore[attr-defined]
        dur = tl.duration / F_CLK_HZ
        self._relax(t_start + dur)
        return RunResult(counts=[np.concatenate(v) if v else np.zeros(0, np.int32) for v in counts],
                         times_s=[np.concatenate(v) if v else np.zeros(0) for v in times],
                         duration_s=dur, pulses=len(pulses), windows=len(wins), notes=notes)
