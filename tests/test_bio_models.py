"""Physiology models: alpha where it belongs, Einthoven, heart rate, MEG field-zero."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from medacq.simulators.biosignal_models import (
    EEG_LABELS_16, EKG_LEADS, EEGModel, EKGModel, MEGModel,
)


def _band(f: np.ndarray, p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return p[..., (f >= lo) & (f <= hi)].mean(axis=-1)


def test_eeg_deterministic_and_chunking_independent() -> None:
    a = EEGModel(seed=4).generate(1000)
    m = EEGModel(seed=4)
    b = np.hstack([m.generate(n) for n in (1, 99, 400, 500)])
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert not np.allclose(a, EEGModel(seed=5).generate(1000))


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_eeg_alpha_posterior_and_mains(mains: float) -> None:
    m = EEGModel(seed=1, mains_hz=mains)
    x = m.generate(250 * 60)
    f, p = welch(x, fs=250, nperseg=500)
    lab = list(EEG_LABELS_16)
    alpha = _band(f, p, 8, 12)
    beta = _band(f, p, 15, 25)
    for ch in ("O1", "O2"):
        i = lab.index(ch)
        assert alpha[i] > 20 * beta[i]
        peak = f[(f >= 4) & (f <= 30)][np.argmax(p[i, (f >= 4) & (f <= 30)])]
        assert 8 <= peak <= 12
    # posterior alpha dominates frontal/central alpha
    assert alpha[lab.index("O1")] > 20 * alpha[lab.index("C3")]
    # mains line
    k = np.argmin(abs(f - mains))
    assert p[0, k] > 50 * p[0, np.argmin(abs(f - (mains - 7)))]


def test_eeg_alpha_waxes_and_wanes_and_blinks_frontal() -> None:
    m = EEGModel(seed=2, blink_rate_hz=0.5)
    x = m.generate(250 * 60)
    o1 = x[EEG_LABELS_16.index("O1")]
    # 1-s windowed alpha amplitude varies strongly over the minute
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [8, 12], "bandpass", fs=250, output="sos")
    a = np.abs(sosfiltfilt(sos, o1)).reshape(60, 250).mean(axis=1)
    assert a.max() > 4 * a.min()
    blinks = m.truth()["blink_times_s"]
    assert len(blinks) >= 10
    fp1 = x[EEG_LABELS_16.index("Fp1")]
    for tb in blinks[blinks < 59]:
        i = int((tb + 0.2) * 250)
        assert fp1[i - 5 : i + 5].max() > 60  # blink peak ~120 µV at 200 ms
    assert np.abs(o1).max() < 80


def test_ekg_einthoven_and_augmented_leads() -> None:
    m = EKGModel(seed=3)
    y = m.generate(5000, EKG_LEADS)
    i, ii, iii, avr, avl, avf = y[:6]
    np.testing.assert_allclose(ii, i + iii, atol=1e-9)
    np.testing.assert_allclose(avr + avl + avf, 0, atol=1e-9)
    # R wave ~1–2 mV in II, V1 mostly negative QRS, V6 positive
    idx = (m.beat_times() * m.fs).astype(int)
    assert 800 < np.median(ii[idx]) < 2500
    assert np.median(y[EKG_LEADS.index("V1")][idx]) < 0 < np.median(y[EKG_LEADS.index("V6")][idx])


@pytest.mark.parametrize("hr", [50.0, 72.0, 120.0])
def test_ekg_heart_rate_matches_and_r_peaks_at_beats(hr: float) -> None:
    m = EKGModel(seed=7, heart_rate_bpm=hr, fs=500)
    ii = m.generate(500 * 60, ("II",))[0]
    bt = m.beat_times()
    assert 60.0 / np.mean(np.diff(bt)) == pytest.approx(hr, rel=0.03)
    rr = np.diff(bt)
    assert rr.std() > 0.005  # beat-to-beat variability present
    for tb in bt[1:-1]:
        k = int(round(tb * 500))
        w = ii[k - 25 : k + 25]
        assert abs(np.argmax(w) - 25) <= 3  # max within 6 ms of the true beat


def test_ekg_chunking_independent() -> None:
    a = EKGModel(seed=1).generate(3000)
    m = EKGModel(seed=1)
    b = np.hstack([m.generate(n) for n in (7, 993, 2000)])
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_meg_field_zero_and_calibration() -> None:
    m = MEGModel(seed=2, sensor=1, background_pt=250.0)
    x = m.generate(400)
    assert abs(x.mean() - 250) < 30
    m.field_zero(True)
    m.generate(200 * 10)
    x = m.generate(400)
    assert abs(x.mean()) < 5  # compensation nulls background + drift
    assert not m.calibrated and m.gain != 1.0
    m.field_zero(False)
    m.calibrate()
    assert m.gain == 1.0
    m.field_reset()
    x = m.generate(400)
    assert abs(x.mean() - 250) < 40 and not m.calibrated


def test_meg_cardiac_artefact_visible_in_average() -> None:
    m = MEGModel(seed=5, background_pt=0.0, drift_pt_per_s=0.0, cardiac_pt=3.0)
    x = m.generate(200 * 60)
    bt = np.asarray(m.truth()["beat_times_s"])
    bt = bt[(bt > 1) & (bt < 59)]
    idx = (bt * 200).round().astype(int)
    avg = np.mean([x[k - 20 : k + 20] for k in idx], axis=0)
    assert avg[20] - np.median(avg) > 1.0  # R-locked bump of order pT


def _loglog_slope(f: np.ndarray, p: np.ndarray, keep: np.ndarray) -> float:
    return float(np.polyfit(np.log10(f[keep]), np.log10(p[keep]), 1)[0])


def test_eeg_background_is_one_over_f() -> None:
    m = EEGModel(seed=6, blink_rate_hz=0.0)
    x = m.generate(250 * 120)
    f, p = welch(x[EEG_LABELS_16.index("C3")], fs=250, nperseg=1000)
    keep = (f >= 1) & (f <= 40) & ((f < 6) | (f > 15))  # away from alpha (and far from mains)
    assert -1.4 < _loglog_slope(f, p, keep) < -0.6


def test_ekg_baseline_wander_at_the_breathing_rate() -> None:
    """Same seed with and without wander: the difference is a breathing-rate sinusoid in
    every lead (tens of µV in most: each electrode wanders with its own gain and phase), and
    nothing else."""
    kw = dict(seed=3, heart_rate_bpm=70.0, resp_hz=0.25, noise_uv=0.0)
    with_w = EKGModel(wander_uv=80.0, **kw).generate(500 * 60)  # I, II, V1-V6
    without = EKGModel(wander_uv=0.0, **kw).generate(500 * 60)
    t = np.arange(with_w.shape[1]) / 500.0
    basis = np.stack([np.sin(2 * np.pi * 0.25 * t), np.cos(2 * np.pi * 0.25 * t)], axis=1)
    amp = []
    for d in with_w - without:
        coef, *_ = np.linalg.lstsq(basis, d, rcond=None)
        np.testing.assert_allclose(basis @ coef, d, atol=1e-6)
        amp.append(np.hypot(*coef))
    assert np.median(amp) > 20.0 and min(amp) > 1.0  # µV


def test_meg_noise_is_one_over_f_and_drift_wanders() -> None:
    quiet = dict(background_pt=0.0, cardiac_pt=0.0, alpha_pt=0.0)
    x = MEGModel(seed=7, drift_pt_per_s=0.0, noise_pt=1.0, **quiet).generate(200 * 300)
    f, p = welch(x, fs=200, nperseg=2000)
    assert -1.4 < _loglog_slope(f, p, (f >= 0.5) & (f <= 50)) < -0.6
    fs, minutes = 200, 10
    drifting = MEGModel(seed=7, drift_pt_per_s=0.5, **quiet).generate(fs * 60 * minutes)
    still = MEGModel(seed=7, drift_pt_per_s=0.0, **quiet).generate(fs * 60 * minutes)
    block = lambda v: v.reshape(-1, fs * 10).mean(axis=1)  # noqa: E731 - 10 s means
    assert block(drifting).std() > 10 * block(still).std()
    assert 1.0 < np.abs(block(drifting) - block(drifting)[0]).max() < 100.0  # pT over 10 min


def test_meg_calibration_scales_the_measured_field() -> None:
    kw = dict(seed=9, background_pt=0.0, drift_pt_per_s=0.0)
    raw = MEGModel(**kw)
    cal = MEGModel(**kw)
    cal.calibrate()
    a, b = raw.generate(2000), cal.generate(2000)
    assert abs(raw.gain_error - 1.0) > 0.005
    np.testing.assert_allclose(a, raw.gain_error * b, rtol=1e-9, atol=1e-9)
