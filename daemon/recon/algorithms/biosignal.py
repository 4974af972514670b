"""Real-time biosignal processing: streaming filters, R-peak detection, EEG band power.

Algorithms only (numpy/scipy): the reconstruction stage feeds chunks ``(channels,
samples)`` and publishes the results. Everything is causal and carries state between
chunks, so chunked output equals whole-record output.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Sequence

import numpy as np
from scipy import signal

__all__ = [
    "design_sos",
    "StreamingSOSFilter",
    "Beat",
    "RPeakDetector",
    "EEG_BANDS",
    "band_power",
    "BandPowerTracker",
]


def design_sos(fs: float, band: tuple[float, float] | None = (0.5, 40.0), order: int = 4,
               notch_hz: float | Sequence[float] | None = 50.0, notch_q: float = 30.0) -> np.ndarray:
    """One SOS cascade: Butterworth band-pass (``order`` per edge) + mains notch(es).

    ``notch_hz`` may be a frequency, several (e.g. ``(50, 100)``), or ``None``; notches at or
    above Nyquist are skipped. Returns ``(n_sections, 6)``.
    """
    parts = []
    if band is not None:
        parts.append(signal.butter(order, band, btype="bandpass", fs=fs, output="sos"))
    if notch_hz is not None:
        for f0 in np.atleast_1d(notch_hz):
            if 0 < f0 < fs / 2:
                b, a = signal.iirnotch(float(f0), notch_q, fs=fs)
                parts.append(signal.tf2sos(b, a))
    if not parts:
        return np.array([[1.0, 0, 0, 1.0, 0, 0]])
    return np.vstack(parts)


class StreamingSOSFilter:
    """Causal SOS filtering chunk by chunk with carried state.

    ``process(chunk)`` on consecutive ``(channels, samples)`` chunks returns exactly what
    ``scipy.signal.sosfilt(sos, whole_record, axis=-1)`` returns for the concatenation (zero
    initial state), so chunk boundaries leave no trace.
    """

    def __init__(self, sos: np.ndarray, n_channels: int) -> None:
        self.sos = np.asarray(sos, dtype=float)
        self.n_channels = n_channels
        self.reset()

    @classmethod
    def bandpass_notch(cls, fs: float, n_channels: int, band: tuple[float, float] = (0.5, 40.0),
                       notch_hz: float | Sequence[float] | None = 50.0, order: int = 4,
                       notch_q: float = 30.0) -> "StreamingSOSFilter":
        return cls(design_sos(fs, band, order, notch_hz, notch_q), n_channels)

    def reset(self) -> None:
        self.zi = np.zeros((self.sos.shape[0], self.n_channels, 2))

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Filter ``chunk`` ``(channels, samples)``; returns float64 of the same shape."""
        x = np.asarray(chunk, dtype=float)
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise ValueError(f"expected ({self.n_channels}, samples), got {x.shape}")
        y, self.zi = signal.sosfilt(self.sos, x, axis=-1, zi=self.zi)
        return y


# ----------------------------------------------------------------------- R peaks
@dataclass(frozen=True, slots=True)
class Beat:
    """A detected beat: ``index`` (sample of the R peak, counted from the first sample
    fed), ``time_s`` = index / fs, and the heart rate (bpm, median of the last RR
    intervals; ``nan`` for the first beat)."""

    index: int
    time_s: float
    heart_rate_bpm: float


class _Causal:
    """A causal linear filter with state (b, a) on a 1-D stream."""

    def __init__(self, b: np.ndarray, a: np.ndarray) -> None:
        self.b, self.a = np.asarray(b, float), np.asarray(a, float)
        self.zi = np.zeros(max(len(self.a), len(self.b)) - 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, self.zi = signal.lfilter(self.b, self.a, x, zi=self.zi)
        return y


class RPeakDetector:
    """Streaming, causal Pan–Tompkins-style QRS detector for one ECG lead.

    Pipeline: 5–18 Hz band-pass → 5-point derivative → square → 150 ms moving-window
    integration (MWI). MWI peaks separated by ≥ 200 ms are classified against adaptive
    signal/noise levels (threshold = NPK + 0.25·(SPK − NPK)); a search-back at half the
    threshold recovers a beat missed for 1.66 × the mean RR. The R peak is located on a
    0.5 Hz high-passed copy of the input in the 250 ms before the MWI peak, at the dominant
    deflection (polarity learned from the first beats). Decision latency ≈ 0.25–0.4 s.

    ``process(chunk)`` takes a 1-D chunk of samples and returns the beats confirmed in it.
    """

    def __init__(self, fs: float, refractory_s: float = 0.2, learning_s: float = 2.0) -> None:
        self.fs = float(fs)
        b, a = signal.butter(2, [5.0, 18.0], btype="bandpass", fs=fs)
        self._bp = _Causal(b, a)
        self._deriv = _Causal(np.array([2, 1, 0, -1, -2]) * fs / 8.0, np.array([1.0]))
        w = max(1, int(round(0.15 * fs)))
        self._mwi = _Causal(np.ones(w) / w, np.array([1.0]))
        hb, ha = signal.butter(1, 0.5, btype="highpass", fs=fs)
        self._hp = _Causal(hb, ha)
        self.refractory = int(round(refractory_s * fs))
        self.learning = int(round(learning_s * fs))
        self._n = 0                      # samples consumed
        hist = int(round(5.0 * fs))
        self._hp_hist: deque[float] = deque(maxlen=hist)
        self._mwi_hist: deque[float] = deque(maxlen=hist)
        self._spk = 0.0
        self._npk = 0.0
        self._learn_max = 0.0
        self._last_beat: int | None = None
        self._last_peak_idx = -10**9     # last MWI peak index considered
        self._cand: tuple[int, float] | None = None  # (index, value) of a rising MWI peak
        self._prev = 0.0
        self._rising = False
        self._rr: deque[int] = deque(maxlen=8)
        self._polarity = 0.0             # running sign of the dominant QRS deflection
        self._sb_best: tuple[int, float] | None = None  # best sub-threshold peak since last beat
        self.beats: list[Beat] = []

    @property
    def threshold(self) -> float:
        return self._npk + 0.25 * (self._spk - self._npk)

    def process(self, chunk: np.ndarray) -> list[Beat]:
        x = np.asarray(chunk, dtype=float).ravel()
        if x.size == 0:
            return []
        hp = self._hp(x)
        m = self._mwi(self._deriv(self._bp(x)) ** 2)
        out: list[Beat] = []
        for i in range(x.size):
            idx = self._n + i
            v = float(m[i])
            self._hp_hist.append(float(hp[i]))
            self._mwi_hist.append(v)
            if idx < self.learning:
                self._learn_max = max(self._learn_max, v)
                if idx == self.learning - 1:
                    self._spk = 0.5 * self._learn_max
                    self._npk = 0.125 * self._learn_max
                self._prev = v
                continue
            # local-maximum tracking on the MWI
            if v > self._prev:
                self._rising = True
            elif self._rising and v < self._prev:
                self._rising = False
                self._peak(idx - 1, self._prev, out)
            self._prev = v
            # search-back for a missed beat
            if self._last_beat is not None and len(self._rr) >= 2:
                rr_mean = float(np.mean(self._rr))
                if idx - self._last_beat > 1.66 * rr_mean and self._sb_best is not None:
                    j, pv = self._sb_best
                    self._sb_best = None
                    if pv > 0.5 * self.threshold:
                        self._spk = 0.25 * pv + 0.75 * self._spk
                        self._accept(j, out, idx)
        self._n += x.size
        return out

    def _peak(self, j: int, v: float, out: list[Beat]) -> None:
        if self._last_beat is not None and j - self._last_beat < self.refractory:
            return
        if v > self.threshold:
            self._spk = 0.125 * v + 0.875 * self._spk
            self._accept(j, out, self._n_now(j))
        else:
            self._npk = 0.125 * v + 0.875 * self._npk
            if self._sb_best is None or v > self._sb_best[1]:
                self._sb_best = (j, v)

    def _n_now(self, j: int) -> int:
        return j + 1

    def _accept(self, j: int, out: list[Beat], now: int) -> None:
        """Beat whose MWI peak is at global index ``j``; ``now`` is the newest index."""
        hist = np.fromiter(self._hp_hist, dtype=float)
        end = len(hist) - (now - j)          # position of j+1 in hist
        w = int(round(0.25 * self.fs))
        lo = max(0, end - w)
        seg = hist[lo:end]
        if seg.size == 0:
            return
        base = float(np.median(seg))
        up = int(np.argmax(seg))
        dn = int(np.argmin(seg))
        a_up, a_dn = seg[up] - base, base - seg[dn]
        if self._polarity > 0.5:
            k = up if a_up > 0.4 * a_dn else dn
        elif self._polarity < -0.5:
            k = dn if a_dn > 0.4 * a_up else up
        else:
            k = up if a_up >= a_dn else dn
        self._polarity = 0.8 * self._polarity + 0.2 * (1.0 if k == up else -1.0)
        r_idx = now - (len(hist) - 1 - (lo + k))
        if self._last_beat is not None and r_idx - self._last_beat < self.refractory:
            return
        if self._last_beat is not None:
            self._rr.append(r_idx - self._last_beat)
        self._last_beat = r_idx
        self._sb_best = None
        hr = 60.0 * self.fs / float(np.median(self._rr)) if self._rr else float("nan")
        b = Beat(r_idx, r_idx / self.fs, hr)
        self.beats.append(b)
        out.append(b)


# -------------------------------------------------------------------- band power
#: Classic EEG bands in Hz (lower inclusive, upper exclusive).
EEG_BANDS: Final = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0),
                    "beta": (13.0, 30.0)}


def band_power(x: np.ndarray, fs: float, bands: dict[str, tuple[float, float]] = EEG_BANDS,
               nperseg: int | None = None) -> dict[str, np.ndarray]:
    """Absolute band power per channel (µV² if ``x`` is µV) by Welch over the window.

    ``x`` is ``(channels, samples)``; returns ``{band: (channels,)}``; ``nperseg`` defaults
    to 1 s of samples (capped at the window length).
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    n = x.shape[1]
    seg = min(n, int(fs) if nperseg is None else nperseg)
    f, p = signal.welch(x, fs=fs, nperseg=seg, axis=-1)
    df = f[1] - f[0]
    out = {}
    for name, (lo, hi) in bands.items():
        m = (f >= lo) & (f < hi)
        out[name] = p[:, m].sum(axis=1) * df
    return out


class BandPowerTracker:
    """Sliding-window band power: feed chunks, get one result per ``step_s`` (default 1 s)
    over the last ``window_s`` (default 2 s)."""

    def __init__(self, fs: float, n_channels: int, window_s: float = 2.0, step_s: float = 1.0,
                 bands: dict[str, tuple[float, float]] = EEG_BANDS) -> None:
        self.fs = fs
        self.window = int(round(window_s * fs))
        self.step = int(round(step_s * fs))
        self.bands = bands
        self._buf = np.zeros((n_channels, 0))
        self._since = 0
        self._n = 0

    def process(self, chunk: np.ndarray) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Returns ``[(end_sample_index, {band: (channels,)}), ...]`` for each step completed."""
        out = []
        chunk = np.asarray(chunk, dtype=float)
        pos = 0
        while pos < chunk.shape[1]:
            take = min(self.step - self._since, chunk.shape[1] - pos)
            part = chunk[:, pos : pos + take]
            self._buf = np.hstack([self._buf, part])[:, -self.window :]
            self._since += take
            self._n += take
            pos += take
            if self._since == self.step and self._buf.shape[1] == self.window:
                out.append((self._n, band_power(self._buf, self.fs, self.bands)))
            if self._since == self.step:
                self._since = 0
        return out
