"""Physiology models for the biosignal simulators: EEG, EKG, MEG.

Pure numpy/scipy, no protocol knowledge. Every model is deterministic from its seed and
independent of how the caller slices time: ``generate(100)`` twice gives the same samples
as ``generate(200)`` once (random streams are drawn sample-major from dedicated
generators). Values are in physical units: µV for EEG/EKG, pT for MEG. Arrays are
``(channels, samples)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Sequence

import numpy as np
from scipy.signal import lfilter

__all__ = [
    "EEG_LABELS_16",
    "POSTERIOR_LABELS",
    "FRONTAL_BLINK_LABELS",
    "EKG_LEADS",
    "DEVICE_LEADS",
    "EEGModel",
    "EKGModel",
    "MEGModel",
    "BeatTrain",
]

#: OpenBCI Cyton+Daisy default 10–20 montage, channel 1..16.
EEG_LABELS_16: Final = (
    "Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2",
    "F7", "F8", "F3", "F4", "T7", "T8", "P3", "P4",
)
POSTERIOR_LABELS: Final = ("O1", "O2", "P3", "P4", "P7", "P8")
FRONTAL_BLINK_LABELS: Final = ("Fp1", "Fp2")
#: All leads :class:`EKGModel` can produce.
EKG_LEADS: Final = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: The 8 leads an ADS1298 ECG front end measures (III, aV* are derived downstream).
DEVICE_LEADS: Final = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")

# Kellet's economy pink-noise filter (−3 dB/octave within ~1 % over the audio band).
_PINK_B: Final = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A: Final = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])


def _children(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class _Pink:
    """Stateful 1/f noise for ``nch`` channels, unit-ish rms."""

    def __init__(self, rng: np.random.Generator, nch: int) -> None:
        self.rng = rng
        self.zi = np.zeros((nch, 3))
        self.nch = nch
        # warm up the filter so the first block is stationary
        self.block(2048)

    def block(self, n: int) -> np.ndarray:
        w = self.rng.standard_normal(n * self.nch).reshape(n, self.nch).T
        y, self.zi = lfilter(_PINK_B, _PINK_A, w, axis=1, zi=self.zi)
        return y * 4.0


# --------------------------------------------------------------------------- EEG
class EEGModel:
    """Scalp EEG, µV, ``(channels, samples)``.

    * 1/f background (``background_uv`` rms-ish) on every channel;
    * posterior alpha (``alpha_hz`` ± slow jitter) whose amplitude waxes and wanes with
      period ``alpha_period_s``, weight 1 on O1/O2, 0.6 on P3/P4/P7/P8, 0.1 elsewhere;
    * mains (``mains_hz``, 50 or 60) with a per-channel phase;
    * eye blinks (Poisson, ``blink_rate_hz``) of ``blink_uv`` on Fp1/Fp2, 30 % on F7/F8/F3/F4.
    """

    def __init__(self, seed: int = 0, fs: float = 250.0, labels: Sequence[str] = EEG_LABELS_16,
                 mains_hz: float = 50.0, alpha_hz: float = 10.0, alpha_uv: float = 25.0,
                 alpha_period_s: float = 12.0, background_uv: float = 10.0, mains_uv: float = 4.0,
                 blink_rate_hz: float = 0.2, blink_uv: float = 120.0) -> None:
        self.fs = float(fs)
        self.labels = tuple(labels)
        self.mains_hz = mains_hz
        self.alpha_hz = alpha_hz
        self.alpha_uv = alpha_uv
        self.alpha_period_s = alpha_period_s
        self.background_uv = background_uv
        self.mains_uv = mains_uv
        self.blink_rate_hz = blink_rate_hz
        self.blink_uv = blink_uv
        r_noise, r_par, self._r_blink = _children(seed, 3)
        n = len(self.labels)
        self._pink = _Pink(r_noise, n)
        self._mains_phase = r_par.uniform(0, 2 * np.pi, n)
        self._alpha_env_phase = r_par.uniform(0, 2 * np.pi)
        self._alpha_phase0 = r_par.uniform(0, 2 * np.pi)
        w = {lab: 0.1 for lab in self.labels}
        for lab in ("O1", "O2"):
            w[lab] = 1.0
        for lab in ("P3", "P4", "P7", "P8"):
            w[lab] = 0.6
        self.alpha_weight = np.array([w[lab] for lab in self.labels])
        bw = {lab: 0.0 for lab in self.labels}
        for lab in ("Fp1", "Fp2"):
            bw[lab] = 1.0
        for lab in ("F7", "F8", "F3", "F4"):
            bw[lab] = 0.3
        self.blink_weight = np.array([bw[lab] for lab in self.labels])
        self._n = 0
        self._blinks: list[float] = []
        #: Onset times (s) of every blink drawn so far.
        self.blink_times: list[float] = []
        self._next_blink = self._draw_blink_gap()

    def _draw_blink_gap(self) -> float:
        if self.blink_rate_hz <= 0:
            return np.inf
        return 0.5 + self._r_blink.exponential(1.0 / self.blink_rate_hz)

    @property
    def samples_generated(self) -> int:
        return self._n

    def alpha_envelope(self, t: np.ndarray) -> np.ndarray:
        """Alpha amplitude factor 0..1 at times ``t`` (s): it comes and goes."""
        return 0.5 * (1 + np.sin(2 * np.pi * t / self.alpha_period_s + self._alpha_env_phase)) ** 1.5 / 2**0.5

    def generate(self, n: int) -> np.ndarray:
        t = (self._n + np.arange(n)) / self.fs
        x = self._pink.block(n) * self.background_uv
        # alpha with slow frequency wobble (±0.3 Hz), phase integrated analytically
        ph = 2 * np.pi * self.alpha_hz * t + 0.3 / 0.05 * np.sin(2 * np.pi * 0.05 * t) + self._alpha_phase0
        alpha = self.alpha_uv * self.alpha_envelope(t) * np.sin(ph)
        x += self.alpha_weight[:, None] * alpha[None, :]
        x += self.mains_uv * np.sin(2 * np.pi * self.mains_hz * t[None, :] + self._mains_phase[:, None])
        # blinks: onsets drawn lazily up to the block end
        t_end = (self._n + n) / self.fs
        while self._next_blink < t_end:
            self._blinks.append(self._next_blink)
            self.blink_times.append(self._next_blink)
            self._next_blink += self._draw_blink_gap()
        b = np.zeros(n)
        for tb in self._blinks:
            if tb > t_end or tb + 0.5 < t[0]:
                continue
            u = (t - tb) / 0.4  # 400 ms blink
            m = (u >= 0) & (u <= 1)
            b[m] += self.blink_uv * np.sin(np.pi * u[m]) ** 2
        self._blinks = [tb for tb in self._blinks if tb + 0.5 >= t_end]
        x += self.blink_weight[:, None] * b[None, :]
        self._n += n
        return x

    def truth(self) -> dict:
        return {"alpha_hz": self.alpha_hz, "mains_hz": self.mains_hz, "labels": self.labels,
                "fs": self.fs, "blink_times_s": np.asarray(self.blink_times)}


# --------------------------------------------------------------------------- EKG
# Electrode lead-field vectors (x = left, y = inferior, z = anterior), Wilson terminal = 0.
_RA = np.array([-0.5, -1 / (2 * 3**0.5), 0.0])
_LA = np.array([0.5, -1 / (2 * 3**0.5), 0.0])
_LL = np.array([0.0, 1 / 3**0.5, 0.0])
_V_ANGLES = np.deg2rad([115, 94, 76, 60, 30, 0])
_V = np.stack([np.cos(_V_ANGLES), np.full(6, 0.1), np.sin(_V_ANGLES)], axis=1) * 1.5


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class _Wave:
    offset_s: float      # relative to the R peak
    sigma_s: float
    amp_uv: float        # dipole magnitude
    direction: np.ndarray
    qt_scaled: bool = False


_WAVES: Final = (
    _Wave(-0.20, 0.025, 180.0, _unit([0.7, 0.7, 0.1])),                     # P
    _Wave(-0.028, 0.008, 200.0, _unit([-0.6, 0.2, 0.8])),                  # Q (septal)
    _Wave(0.0, 0.010, 1600.0, _unit([0.5, 0.8, -0.35])),                   # R
    _Wave(0.030, 0.010, 450.0, _unit([-0.3, -0.6, -0.75])),                # S
    _Wave(0.30, 0.055, 380.0, _unit([0.6, 0.7, 0.3]), qt_scaled=True),      # T
)


class BeatTrain:
    """R-peak times with beat-to-beat variability: RR = 60/HR · (1 + RSA + jitter)."""

    def __init__(self, rng: np.random.Generator, heart_rate_bpm: float, hrv: float,
                 resp_hz: float = 0.25, t0: float = 0.3) -> None:
        self.rng = rng
        self.hr = heart_rate_bpm
        self.hrv = hrv
        self.resp_hz = resp_hz
        self.times: list[float] = [t0]

    def extend_to(self, t: float) -> None:
        rr0 = 60.0 / self.hr
        while self.times[-1] < t:
            tl = self.times[-1]
            rsa = 0.5 * self.hrv * np.sin(2 * np.pi * self.resp_hz * tl)
            jit = float(np.clip(self.rng.normal(0, self.hrv), -3 * self.hrv, 3 * self.hrv))
            self.times.append(tl + rr0 * (1 + rsa + jit))

    def window(self, t0: float, t1: float, pre: float, post: float) -> list[tuple[float, float]]:
        """(beat time, RR interval) for beats affecting [t0, t1)."""
        self.extend_to(t1 + pre + 2.0)
        ts = self.times
        out = []
        for k in range(len(ts) - 1):
            if ts[k] + post >= t0 and ts[k] - pre < t1:
                out.append((ts[k], ts[k + 1] - ts[k]))
        return out


class EKGModel:
    """12-lead ECG from a rotating heart dipole, µV.

    The dipole is a sum of Gaussian waves (P, Q, R, S, T; McSharry-style) with fixed
    directions; each electrode potential is its lead-field vector · dipole, plus a per-
    electrode baseline wander (respiration) and white noise. Leads are differences of
    electrode potentials, so Einthoven's law II = I + III holds exactly (to float
    rounding), and aVR + aVL + aVF = 0.
    """

    def __init__(self, seed: int = 0, fs: float = 500.0, heart_rate_bpm: float = 72.0,
                 hrv: float = 0.03, wander_uv: float = 80.0, resp_hz: float = 0.25,
                 noise_uv: float = 4.0) -> None:
        self.fs = float(fs)
        self.heart_rate_bpm = heart_rate_bpm
        r_beats, r_noise, r_par = _children(seed, 3)
        self.beats = BeatTrain(r_beats, heart_rate_bpm, hrv, resp_hz)
        self._r_noise = r_noise
        self.wander_uv = wander_uv
        self.resp_hz = resp_hz
        self.noise_uv = noise_uv
        # 9 electrodes: RA, LA, LL, V1..V6
        self._E = np.vstack([_RA, _LA, _LL, _V])
        self._wander_gain = r_par.uniform(0.3, 1.0, 9)
        self._wander_phase = r_par.uniform(0, 2 * np.pi, 9)
        self._n = 0

    @property
    def samples_generated(self) -> int:
        return self._n

    def dipole(self, t: np.ndarray) -> np.ndarray:
        """Heart dipole ``(3, len(t))`` in µV-equivalent units."""
        d = np.zeros((3, t.size))
        if t.size == 0:
            return d
        for tb, rr in self.beats.window(float(t[0]), float(t[-1]) + 1e-9, 0.35, 0.8):
            i0 = max(0, int(np.searchsorted(t, tb - 0.35)))
            i1 = int(np.searchsorted(t, tb + 0.8))
            if i1 <= i0:
                continue
            tt = t[i0:i1] - tb
            qt = np.sqrt(rr / (60.0 / self.heart_rate_bpm))
            for w in _WAVES:
                off = w.offset_s * qt if w.qt_scaled else w.offset_s
                g = w.amp_uv * np.exp(-0.5 * ((tt - off) / w.sigma_s) ** 2)
                d[:, i0:i1] += w.direction[:, None] * g[None, :]
        return d

    def electrodes(self, n: int) -> np.ndarray:
        """Next ``n`` samples of the 9 electrode potentials (RA, LA, LL, V1..V6) in µV."""
        t = (self._n + np.arange(n)) / self.fs
        phi = self._E @ self.dipole(t)
        phi += (self.wander_uv * self._wander_gain[:, None]
                * np.sin(2 * np.pi * self.resp_hz * t[None, :] + self._wander_phase[:, None]))
        phi += self.noise_uv * self._r_noise.standard_normal(9 * n).reshape(n, 9).T
        self._n += n
        return phi

    @staticmethod
    def leads_from_electrodes(phi: np.ndarray, leads: Sequence[str] = DEVICE_LEADS) -> np.ndarray:
        ra, la, ll = phi[0], phi[1], phi[2]
        wct = (ra + la + ll) / 3.0
        table = {
            "I": lambda: la - ra,
            "II": lambda: ll - ra,
            "III": lambda: ll - la,
            "aVR": lambda: ra - (la + ll) / 2,
            "aVL": lambda: la - (ra + ll) / 2,
            "aVF": lambda: ll - (ra + la) / 2,
        }
        out = []
        for name in leads:
            if name in table:
                out.append(table[name]())
            elif name.startswith("V") and name[1:].isdigit() and 1 <= int(name[1:]) <= 6:
                out.append(phi[2 + int(name[1:])] - wct)
            else:
                raise ValueError(f"unknown lead {name!r}")
        return np.vstack(out)

    def generate(self, n: int, leads: Sequence[str] = DEVICE_LEADS) -> np.ndarray:
        """Next ``n`` samples of ``leads`` in µV, ``(len(leads), n)``."""
        return self.leads_from_electrodes(self.electrodes(n), leads)

    def beat_times(self, until_s: float | None = None) -> np.ndarray:
        """True R-peak times (s) up to ``until_s`` (default: what has been generated)."""
        t_end = self._n / self.fs if until_s is None else until_s
        self.beats.extend_to(t_end)
        ts = np.asarray(self.beats.times)
        return ts[ts < t_end]

    def truth(self) -> dict:
        return {"beat_times_s": self.beat_times(), "heart_rate_bpm": self.heart_rate_bpm,
                "fs": self.fs}


# --------------------------------------------------------------------------- MEG
class MEGModel:
    """One OPM sensor's field, pT.

    Signal = gain × (brain + cardiac + 1/f noise) + background offset + drift − compensation.
    ``field_zero(True)`` drives the on-sensor coils to null background + drift (first-order,
    time constant ``zero_tau_s``) and keeps tracking; ``field_zero(False)`` holds the last
    compensation. ``calibrate()`` sets the gain error to 1 (before it the gain is off by a
    seeded ±10 %); ``field_reset()`` clears compensation and calibration.
    """

    def __init__(self, seed: int = 0, fs: float = 200.0, sensor: int = 0,
                 heart_rate_bpm: float = 66.0, background_pt: float | None = None,
                 cardiac_pt: float = 3.0, noise_pt: float = 0.15, alpha_pt: float = 0.6,
                 drift_pt_per_s: float = 0.5, zero_tau_s: float = 1.0) -> None:
        self.fs = float(fs)
        self.sensor = sensor
        r_beats, r_noise, r_par, self._r_drift = _children(seed * 1000 + sensor, 4)
        self.beats = BeatTrain(r_beats, heart_rate_bpm, 0.03)
        self._pink = _Pink(r_noise, 1)
        self.background_pt = float(r_par.uniform(-400, 400)) if background_pt is None else background_pt
        self.gain_error = float(r_par.uniform(0.9, 1.1))
        self.cardiac_pt = cardiac_pt * float(r_par.uniform(0.5, 1.5))
        self.noise_pt = noise_pt
        self.alpha_pt = alpha_pt
        self.drift_pt_per_s = drift_pt_per_s
        self.zero_tau_s = zero_tau_s
        self.calibrated = False
        self.zeroing = False
        self.compensation_pt = 0.0
        self._drift = 0.0
        self._n = 0

    @property
    def gain(self) -> float:
        return 1.0 if self.calibrated else self.gain_error

    def field_zero(self, on: bool) -> None:
        self.zeroing = on
        if on:
            self.calibrated = False

    def calibrate(self) -> None:
        self.calibrated = True

    def field_reset(self) -> None:
        self.compensation_pt = 0.0
        self.zeroing = False
        self.calibrated = False

    def generate(self, n: int) -> np.ndarray:
        """Next ``n`` field samples in pT, shape ``(n,)``."""
        t = (self._n + np.arange(n)) / self.fs
        sig = self._pink.block(n)[0] * self.noise_pt
        sig += self.alpha_pt * np.sin(2 * np.pi * 10.0 * t)
        for tb, _rr in self.beats.window(float(t[0]), float(t[-1]) + 1e-9, 0.1, 0.5):
            sig += self.cardiac_pt * (np.exp(-0.5 * ((t - tb) / 0.012) ** 2)
                                      + 0.25 * np.exp(-0.5 * ((t - tb - 0.3) / 0.05) ** 2))
        steps = self._r_drift.standard_normal(n) * self.drift_pt_per_s / np.sqrt(self.fs)
        drift = self._drift + np.cumsum(steps)
        self._drift = float(drift[-1])
        offset = self.background_pt + drift
        comp = np.empty(n)
        c = self.compensation_pt
        k = 1.0 - np.exp(-1.0 / (self.fs * self.zero_tau_s))
        for i in range(n):  # first-order tracking loop; cheap at 200 Hz
            if self.zeroing:
                c += k * (offset[i] - c)
            comp[i] = c
        self.compensation_pt = c
        self._n += n
        return self.gain * sig + offset - comp

    def truth(self) -> dict:
        return {"sensor": self.sensor, "background_pt": self.background_pt,
                "gain_error": self.gain_error, "calibrated": self.calibrated,
                "zeroing": self.zeroing, "compensation_pt": self.compensation_pt,
                "beat_times_s": np.asarray(self.beats.times)}
