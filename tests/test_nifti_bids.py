"""Research exports: NIfTI-1 of CT/MRI/PET/SPECT images (read back with nibabel: affine and values),
and a BIDS folder of EEG streams (read back with mne-bids, else MNE's EDF reader + the json/tsv)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel", reason="NIfTI export needs nibabel (pip install nibabel)")
pytest.importorskip("pydicom", reason="the DICOM geometry it is checked against needs pydicom")
pytest.importorskip("pyedflib", reason="EDF writing needs pyedflib")

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.dicom import DicomWriter, ReconFrame  # noqa: E402
from medacq.daemon.interop.nifti import LPS_TO_RAS, export_nifti, nifti_image  # noqa: E402
from medacq.daemon.interop.study import StudyContext  # noqa: E402

EEG_NAMES = "Fp1 Fp2 C3 C4 P7 P8 O1 O2".split()


def dicom_affine_ras(ds) -> np.ndarray:
    """The RAS+ voxel (column, row) -> mm map that a DICOM slice's own attributes define (an NM
    RECON TOMO image keeps its plane in the Detector Information Sequence)."""
    plane = ds.DetectorInformationSequence[0] if "DetectorInformationSequence" in ds else ds
    o = np.array(plane.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    a = np.eye(4)
    a[:3, 0], a[:3, 1] = o[:3] * dc, o[3:] * dr
    a[:3, 3] = np.array(plane.ImagePositionPatient, float)
    return LPS_TO_RAS @ a


def raw_eeg(seconds: float = 3.0, fs: float = 250.0, chunk: int = 25) -> list[ReconFrame]:
    """``raw/eeg0`` as the cyton driver publishes it: (channel, sample) µV, names and rate at the top level."""
    rng = np.random.default_rng(3)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    x = np.stack([30 * np.sin(2 * np.pi * (3 + k) * t) + rng.standard_normal(n) for k in range(len(EEG_NAMES))])
    x = x.astype(np.float32)
    out = []
    for i, s in enumerate(range(0, n, chunk)):
        c = np.ascontiguousarray(x[:, s:s + chunk])
        h = {"v": 1, "stream": "eeg0", "kind": "frame", "series": "8c1e0ed4-7d4e-4a38-9d5c-1f0b4e1a2b3c", "seq": i,
             "dtype": c.dtype.str, "shape": list(c.shape), "axes": ["channel", "sample"], "units": "µV",
             "t_host_ns": samples.T0_NS + int(s / fs * 1e9), "t_mono_ns": 0, "t_device": None, "meta": {}}
        d = {"stream": "eeg0", "modality": "eeg", "device": "cyton 8ch", "dtype": "<f4", "shape": [8, chunk],
             "axes": ["channel", "sample"], "units": "µV", "channel_names": EEG_NAMES, "sample_rate_hz": fs,
             "geometry": {}, "meta": {}}
        out.append(ReconFrame("raw/eeg0", h, c, d))
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter

    path = tmp_path_factory.mktemp("rec") / "rec.h5"
    w = Hdf5RecordingWriter(path, durable=False)
    frames = (samples.ct_slices(n=3, size=32) + samples.mri_images(n=1, matrix=32) + samples.pet_images(n=2, size=32)
              + samples.spect_images(n=1, size=32) + samples.endoscope_frames(n=1) + raw_eeg())
    seen = set()
    for f in frames:
        if f.topic not in seen:
            seen.add(f.topic)
            w.message(f.topic, {**f.header, "kind": "descriptor", "descriptor": dict(f.descriptor)}, None)
        w.message(f.topic, dict(f.header), f.data)
    w.checkpoint(complete=True)
    w.close()
    return path, frames


@pytest.fixture(scope="module")
def exported(recording, tmp_path_factory):
    path, frames = recording
    out = tmp_path_factory.mktemp("out")
    r = subprocess.run([sys.executable, "-m", "medacq.daemon.cli", "export", str(path), "--nifti", str(out / "nii"),
                        "--bids", str(out / "bids"), "--bids-subject", "07", "--bids-session", "a1",
                        "--bids-task", "rest", "--line-freq", "60"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout.strip().splitlines()[-1]), frames


def test_nifti_files_per_series_and_skips(exported):
    out, rep, _ = exported
    assert rep["nifti"]["nifti_files"] == 4  # CT, MR, PET, SPECT
    assert "recon/endo0" in rep["nifti"]["skipped"]
    names = sorted(p.name.split("_")[0] for p in (out / "nii").glob("*.nii.gz"))
    assert names == ["ct0", "mr0", "pet0", "spect0"]


@pytest.mark.parametrize("stream", ["ct0", "mr0", "pet0", "spect0"])
def test_nifti_affine_and_values_match_the_dicom(exported, stream):
    out, _, frames = exported
    (path,) = (out / "nii").glob(f"{stream}_*.nii.gz")
    img = nib.load(path)
    mine = [f for f in frames if f.topic.startswith(f"recon/{stream}")]
    ds = DicomWriter(StudyContext()).add(mine[0])[0]
    a = dicom_affine_ras(ds)
    assert np.allclose(img.affine[:, :2], a[:, :2]) and np.allclose(img.affine[:3, 3], a[:3, 3])
    assert np.isclose(abs(img.affine[2, 2]), float(ds.SliceThickness))
    assert img.header.get_xyzt_units() == ("mm", "sec")
    data = np.asarray(img.dataobj)
    assert data.shape[:3] == (mine[0].data.shape[1], mine[0].data.shape[0], 1)
    assert data.ndim == (4 if len(mine) > 1 else 3)  # repeats of one plane: a time series
    want = np.stack([f.data for f in mine])
    if stream == "ct0":
        want = 1000 * (want - 0.0195) / 0.0195
        assert b"units=HU" in img.header["descrip"].tobytes()
    got = data.reshape(data.shape[0], data.shape[1], -1).transpose(2, 1, 0)  # back to (t, y, x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)
    assert img.header["cal_min"] == pytest.approx(float(want.min()), rel=1e-5, abs=1e-3)
    assert img.header["cal_max"] == pytest.approx(float(want.max()), rel=1e-5)
    if len(mine) > 1:
        assert img.header.get_zooms()[3] == pytest.approx(2.0)  # CT rotations 2 s apart; PET frames 2 s
    # the voxel at (i, j) = (column, row) lies where the DICOM says: RAS = diag(-1,-1,1) LPS
    i, j = 3, 5
    plane = ds.DetectorInformationSequence[0] if "DetectorInformationSequence" in ds else ds
    o = np.array(plane.ImageOrientationPatient, float)
    lps = (np.array(plane.ImagePositionPatient, float) + i * float(ds.PixelSpacing[1]) * o[:3]
           + j * float(ds.PixelSpacing[0]) * o[3:])
    ras = img.affine @ np.array([i, j, 0, 1.0])
    assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]])


def test_multislice_mri_becomes_a_volume_sorted_along_the_normal():
    fr = samples.mri_images(n=3, matrix=16)
    zs = [10.0, -10.0, 0.0]  # acquired interleaved
    frames = [ReconFrame(f.topic, {**f.header, "meta": {**f.header["meta"], "origin_m": [-0.1, -0.1, z / 1e3]}},
                         f.data, f.descriptor) for f, z in zip(fr, zs)]
    img = nifti_image(frames)
    assert img.shape == (16, 16, 3)
    assert img.affine[2, 2] == pytest.approx(10.0) and img.affine[2, 3] == pytest.approx(-10.0)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], frames[1].data.T)  # z = -10 first
    rep_frames = [ReconFrame(frames[0].topic, frames[0].header, frames[0].data, frames[0].descriptor)]
    assert nifti_image(rep_frames).shape == (16, 16, 1)


def test_nifti_refuses_unevenly_spaced_slices(tmp_path):
    fr = samples.mri_images(n=3, matrix=16)
    frames = [ReconFrame(f.topic, {**f.header, "meta": {"origin_m": [-0.1, -0.1, z]}}, f.data, f.descriptor)
              for f, z in zip(fr, [0.0, 0.01, 0.03])]
    rep = export_nifti(frames, tmp_path)
    assert rep.files == [] and "evenly" in rep.skipped["recon/mr0"]


def test_bids_layout_sidecars_and_values(exported):
    out, rep, frames = exported
    root = out / "bids"
    eeg_dir = root / "sub-07" / "ses-a1" / "eeg"
    base = "sub-07_ses-a1_task-rest"
    assert (eeg_dir / f"{base}_eeg.edf").is_file()
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["DatasetType"] == "raw" and desc["GeneratedBy"][0]["Name"] == "medacq"
    side = json.loads((eeg_dir / f"{base}_eeg.json").read_text())
    assert side["SamplingFrequency"] == 250 and side["PowerLineFrequency"] == 60 and side["TaskName"] == "rest"
    assert side["EEGChannelCount"] == 8 and side["RecordingDuration"] == 3.0
    with open(eeg_dir / f"{base}_channels.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["name"] for r in rows] == EEG_NAMES and {r["units"] for r in rows} == {"µV"}
    assert {r["type"] for r in rows} == {"EEG"}
    want = np.concatenate([f.data for f in frames if f.topic == "raw/eeg0"], axis=1)
    try:
        from mne_bids import BIDSPath, read_raw_bids
    except ImportError:  # no mne-bids: MNE's EDF reader and the files themselves
        import mne

        raw = mne.io.read_raw_edf(eeg_dir / f"{base}_eeg.edf", preload=True, verbose="error")
    else:
        bp = BIDSPath(subject="07", session="a1", task="rest", datatype="eeg", root=root)
        raw = read_raw_bids(bp, verbose="error")
        raw.load_data()
        assert raw.info["line_freq"] == 60
    assert raw.ch_names == EEG_NAMES and raw.info["sfreq"] == 250
    got = raw.get_data(units="uV")
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 0.2  # EDF: 16 bit over ±6553.5 µV
    assert rep["bids"]["bids_files"] >= 6


def test_bids_refuses_bad_labels(recording, tmp_path):
    from medacq.daemon.interop.bids import export_bids
    from medacq.daemon.recording.edf import EdfRecorder
    from medacq.daemon.recording.hdf5 import open_recording

    with open_recording(recording[0]) as h5, pytest.raises(ValueError, match="letters and digits"):
        export_bids(h5, tmp_path, EdfRecorder, subject="P-4711")
