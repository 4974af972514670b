"""DICOM objects from reconstructed frames: the IOD per kind, judged by dciodvfy (dicom3tools) and dcmdump (dcmtk)."""

from __future__ import annotations

import datetime
import io
import shutil
import subprocess

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM export needs pydicom (pip install pydicom)")

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.dicom import (  # noqa: E402
    SOP_CLASSES, DicomExportError, DicomWriter, ReconFrame, derived_uid, iod_of)
from medacq.daemon.interop.study import StudyContext, StudyRef  # noqa: E402

STUDY = StudyContext(patient_id="PID4711", patient_name="Doe^Jane", birth_date=datetime.date(1970, 1, 2), sex="F",
                     accession_number="ACC123", referring_physician="House^Gregory", study_description="bench",
                     series_description="medacq")
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy not installed (Debian package dicom3tools)")
needs_dcmdump = pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmdump not installed (Debian package dcmtk)")


def export_all(frames: list[ReconFrame], **kw) -> list:
    w = DicomWriter(STUDY, us_cine_frames=8, **kw)
    out = []
    for f in frames:
        out += w.add(f)
    return out + w.flush()


def encode(ds) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def dciodvfy_errors(path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def objects():
    return export_all(samples.every_kind())


def test_one_object_of_the_right_iod_per_kind(objects):
    by_class = {}
    for ds in objects:
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    assert {k: len(v) for k, v in by_class.items()} == {
        SOP_CLASSES["DX"]: 4, SOP_CLASSES["XA"]: 4, SOP_CLASSES["CT"]: 3, SOP_CLASSES["US"]: 1,
        SOP_CLASSES["ECG12"]: 1, SOP_CLASSES["EEG"]: 1, SOP_CLASSES["SC"]: 1}
    assert {ds.Modality for ds in objects} == {"DX", "XA", "CT", "US", "ECG", "EEG", "OT"}


@needs_dciodvfy
def test_every_object_passes_dciodvfy_and_dcmdump_reads_it(objects, tmp_path):
    for i, ds in enumerate(objects):
        p = tmp_path / f"{i:02d}_{ds.Modality}.dcm"
        p.write_bytes(encode(ds))
        errors = dciodvfy_errors(p)
        if str(ds.SOPClassUID) == SOP_CLASSES["EEG"]:
            # Debian's dicom3tools (2022-06-18) has no table for the Routine Scalp EEG IOD: it says so and
            # checks nothing else. Its modules (Patient, Study, Series, Equipment, Waveform ...) are the
            # General ECG IOD's, so the same dataset is checked as General ECG too.
            assert errors in ([], ["Error - Information Object Not found"]), errors
            ds2 = pydicom.dcmread(p)
            ds2.SOPClassUID = ds2.file_meta.MediaStorageSOPClassUID = SOP_CLASSES["ECG"]
            ds2.Modality = "ECG"
            p2 = tmp_path / f"{i:02d}_EEG_as_ECG.dcm"
            p2.write_bytes(encode(ds2))
            errors = dciodvfy_errors(p2)
        assert errors == [], (ds.Modality, errors)
        if shutil.which("dcmdump"):
            r = subprocess.run(["dcmdump", "-q", str(p)], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and str(ds.SOPInstanceUID) in r.stdout, r.stderr


def test_ct_slices_in_hounsfield_with_geometry():
    frames = samples.ct_slices(n=2, size=64, pixel_mm=0.5)
    objs = export_all(frames)
    ds = pydicom.dcmread(io.BytesIO(encode(objs[0])))
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    mu = frames[0].data
    expect = 1000 * (mu - 0.0195) / 0.0195
    assert np.max(np.abs(hu - expect)) <= 0.5 + 1e-6
    assert abs(np.median(hu[mu > 0.015])) < 20 and np.median(hu[mu == mu.min()]) < -990  # water ~0, air ~-1000
    assert ds.RescaleType == "HU" and [float(v) for v in ds.PixelSpacing] == [0.5, 0.5]
    assert [float(v) for v in ds.ImagePositionPatient] == [-15.75, -15.75, 0.0]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(ds.SliceThickness) == 0.5
    assert ds.AcquisitionDateTime == "20260528202640.000000+0000"
    assert objs[1].AcquisitionDateTime == "20260528202642.000000+0000"  # the second rotation 2 s later
    assert objs[0].FrameOfReferenceUID == objs[1].FrameOfReferenceUID


def test_dx_xa_values_recoverable():
    fr = samples.xray_frames(n=1)[0]
    ds = pydicom.dcmread(io.BytesIO(encode(export_all([fr])[0])))
    slope, intercept = (float(x) for x in ds.ImageComments.split("stored * ")[1].split(" + "))
    assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.max(np.abs(ds.pixel_array * slope + intercept - fr.data)) <= slope
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([0.1496, 0.1496])
    d = samples.dsa_frames(n=1)[0]
    xa = pydicom.dcmread(io.BytesIO(encode(export_all([d])[0])))
    real = xa.pixel_array * float(xa.RescaleSlope) + float(xa.RescaleIntercept)
    assert np.max(np.abs(real - d.data)) <= float(xa.RescaleSlope)
    assert xa.MaskSubtractionSequence[0].MaskOperation == "AVG_SUB"


def test_us_cine_and_regions():
    frames = samples.bmode_frames(n=8)
    (ds,) = export_all(frames)
    ds = pydicom.dcmread(io.BytesIO(encode(ds)))
    assert ds.NumberOfFrames == 8 and float(ds.FrameTime) == pytest.approx(50.0)
    grey = ds.pixel_array
    assert grey.shape == (8, 96, 64)
    np.testing.assert_allclose(grey.astype(float), np.clip(np.rint((np.stack([f.data for f in frames]) + 60) / 60 * 255),
                                                           0, 255))
    r = ds.SequenceOfUltrasoundRegions[0]
    assert (r.PhysicalDeltaX, r.PhysicalDeltaY) == pytest.approx((0.03, 0.02))  # cm per pixel


@pytest.mark.parametrize("kind", ["ekg", "eeg"])
def test_waveform_samples_and_leads(kind):
    frames = samples.ekg_chunks() if kind == "ekg" else samples.eeg_chunks()
    (ds,) = export_all(frames)
    ds = pydicom.dcmread(io.BytesIO(encode(ds)))
    x = np.concatenate([f.data for f in frames], axis=1)
    w = ds.WaveformSequence[0]
    assert (w.NumberOfWaveformChannels, w.NumberOfWaveformSamples) == x.shape
    sens = float(w.ChannelDefinitionSequence[0].ChannelSensitivity)
    got = ds.waveform_array(0)  # pydicom applies Channel Sensitivity: (sample, channel) in µV
    assert np.max(np.abs(got.T - x)) <= sens / 2 + 1e-6
    labels = [c.ChannelLabel for c in w.ChannelDefinitionSequence]
    assert labels == frames[0].descriptor["meta"]["channel_names"]
    if kind == "ekg":
        assert ds.SOPClassUID == SOP_CLASSES["ECG12"]
        assert w.ChannelDefinitionSequence[1].ChannelSourceSequence[0].CodeValue == "2:2"  # MDC lead II


def test_waveforms_split_at_the_iod_limit():
    frames = samples.ekg_chunks(seconds=40.0, fs=500.0, chunk=500)
    objs = export_all(frames, waveform_seconds=60.0)  # 20000 samples > 16384: the 12-lead IOD's limit
    n = [o.WaveformSequence[0].NumberOfWaveformSamples for o in objs]
    assert n == [16384, 20000 - 16384]  # whole objects first, the rest at the end
    assert objs[1].AcquisitionDateTime == "20260528202712.768000+0000"  # 16384 samples / 500 Hz after the first
    got = np.concatenate([o.waveform_array(0).T for o in objs], axis=1)
    sens = float(objs[0].WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivity)
    assert np.max(np.abs(got - np.concatenate([f.data for f in frames], axis=1))) <= sens / 2 + 1e-6
    assert len({o.SOPInstanceUID for o in objs}) == len(objs)


def test_uids_stable_across_exports_and_distinct_per_series():
    a = export_all(samples.every_kind())
    b = export_all(samples.every_kind())
    assert [o.SOPInstanceUID for o in a] == [o.SOPInstanceUID for o in b]
    assert len({o.SOPInstanceUID for o in a}) == len(a)
    assert all(o.StudyInstanceUID == STUDY.study_uid for o in a)
    assert len({o.SeriesInstanceUID for o in a}) == 7
    assert all(len(o.SOPInstanceUID) <= 64 for o in a)
    assert derived_uid(STUDY.study_uid, "recon/xr0") != derived_uid(STUDY.study_uid, "recon/xr1")


def test_bad_frames_are_refused_and_counted():
    w = DicomWriter(STUDY)
    fr = samples.xray_frames(n=1)[0]
    with pytest.raises(DicomExportError, match="2 axes"):
        w.add(ReconFrame(fr.topic, fr.header, fr.data[0], fr.descriptor))
    with pytest.raises(DicomExportError, match="pixel_pitch_mm"):
        w.add(ReconFrame(fr.topic, fr.header, fr.data, {**fr.descriptor, "geometry": {}}))
    with pytest.raises(DicomExportError, match="no DICOM IOD"):
        iod_of("ekg", "hr")
    assert w.rejected == 2


def test_subscribers_see_only_the_study_uid():
    ref = STUDY.ref()
    assert ref.model_dump() == {"study_uid": STUDY.study_uid} and STUDY.study_uid.startswith("2.25.")
    assert "Doe" not in ref.model_dump_json()
    with pytest.raises(ValueError):
        StudyRef(study_uid="1.2.abc")
    with pytest.raises(ValueError):
        StudyContext(patient_name="Doe\\Jane")
    assert StudyContext().study_uid != StudyContext().study_uid


def test_study_state_keeps_the_patient_to_operators():
    from medacq.daemon.interop.study import StudyState

    st = StudyState()
    assert st.status() == {"study_uid": None} and st.recording_attrs() == {}
    ref = st.handle("set", {"patient_id": "PID4711", "patient_name": "Doe^Jane", "sex": "F"})
    assert set(ref) == {"study_uid"} and st.status() == ref
    assert st.handle("get")["study"]["patient_name"] == "Doe^Jane"
    assert StudyContext.model_validate_json(st.recording_attrs()["study"]).patient_id == "PID4711"
    with pytest.raises(ValueError):
        st.handle("set", {"sex": "X"})
    assert st.get().patient_id == "PID4711"  # a refused set changes nothing
    st.handle("clear")
    assert st.status() == {"study_uid": None}
