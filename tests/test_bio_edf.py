"""EDF+/BDF+ export of biosignal streams: values, rates, labels and gap annotations survive,
and MNE reads the file."""

from __future__ import annotations

import numpy as np
import pytest

pyedflib = pytest.importorskip("pyedflib")

from medacq.daemon.recording.edf import EdfRecorder  # noqa: E402
from medacq.simulators.biosignal_models import DEVICE_LEADS, EEG_LABELS_16, EEGModel, EKGModel  # noqa: E402

EEG_DESC = {"stream": "eeg0", "shape": [16, -1], "channel_names": list(EEG_LABELS_16), "sample_rate_hz": 125.0,
            "units": "µV"}
EKG_DESC = {"stream": "ekg0", "shape": [8, -1], "channel_names": list(DEVICE_LEADS), "sample_rate_hz": 500.0,
            "units": "µV"}


def _frames(x: np.ndarray, stream: str, step: int):
    for k in range(0, x.shape[1], step):
        yield {"stream": stream, "kind": "frame", "t_host_ns": 1_700_000_000_000_000_000}, x[:, k:k + step]


@pytest.mark.parametrize("bdf", [True, False])
def test_two_streams_with_a_gap_round_trip(tmp_path, bdf):
    eeg = EEGModel(1, fs=125.0).generate(125 * 6).astype(np.float32)
    ekg = EKGModel(2, fs=500.0).generate(500 * 6).astype(np.float32)
    path = tmp_path / ("rec.bdf" if bdf else "rec.edf")
    rec = EdfRecorder(path, {"eeg0": EEG_DESC, "ekg0": EKG_DESC}, bdf=bdf)
    frames = list(_frames(eeg[:, :250], "eeg0", 5))
    for h, a in frames:
        rec.write_frame(h, a)
    rec.write_gap("eeg0", 50, 0, 25)  # 25 samples lost on the wire
    for h, a in _frames(eeg[:, 275:], "eeg0", 5):
        rec.write_frame(h, a)
    for h, a in _frames(ekg, "ekg0", 20):
        rec.write_frame(h, a)
    rec.close()
    f = pyedflib.EdfReader(str(path))
    try:
        labels = f.getSignalLabels()
        assert labels[0] == "eeg0:Fp1" and labels[16] == "ekg0:I" and len(labels) == 24
        assert f.getSampleFrequency(0) == 125 and f.getSampleFrequency(16) == 500
        assert f.getPhysicalDimension(0) == "uV"
        got = f.readSignal(6)  # O1
        res = 0.05 if bdf else 0.2
        np.testing.assert_allclose(got[:250], eeg[6, :250], atol=res)
        assert np.all(np.abs(got[250:275]) <= res)  # zero-filled gap keeps the time axis
        np.testing.assert_allclose(got[275:750], eeg[6, 275:750], atol=res)
        np.testing.assert_allclose(f.readSignal(17)[:3000], ekg[1], atol=res)
        onsets, _, texts = f.readAnnotations()
        assert any(t.startswith("GAP eeg0: 25 samples lost") for t in texts)
        assert onsets[[t.startswith("GAP") for t in texts]][0] == pytest.approx(2.0)
    finally:
        f.close()


def test_mne_reads_the_bdf(tmp_path):
    mne = pytest.importorskip("mne", reason="mne is not installed (test-only dependency)")
    eeg = EEGModel(3, fs=125.0).generate(125 * 4)
    path = tmp_path / "eeg.bdf"
    with EdfRecorder(path, {"eeg0": EEG_DESC}) as rec:
        for h, a in _frames(eeg[:, :200], "eeg0", 10):
            rec.write_frame(h, a)
        rec.write_gap("eeg0", 20, 1, 10)
        for h, a in _frames(eeg[:, 210:], "eeg0", 10):
            rec.write_frame(h, a)
    raw = mne.io.read_raw_bdf(path, preload=True, verbose="error")
    assert raw.ch_names == list(EEG_LABELS_16) and raw.info["sfreq"] == 125.0
    np.testing.assert_allclose(raw.get_data()[7, :200] * 1e6, eeg[7, :200], atol=0.05)  # MNE: volts
    assert any(d.startswith("GAP eeg0: 10 samples lost") for d in raw.annotations.description)
