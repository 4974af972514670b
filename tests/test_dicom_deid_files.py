"""``medacq export --deidentify`` for HDF5, EDF+ and ISMRMRD: a recording with a study context full of
distinctive patient strings, exported de-identified; no string left anywhere in the bytes or in any value
read back (compressed chunks included), the signal / image data unchanged."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="HDF5 recordings need h5py")
pytest.importorskip("dicomanonymizer", reason="de-identification needs dicom-anonymizer")

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.deid import SHIFTED_START_NS, Deidentifier, DeidError  # noqa: E402
from medacq.daemon.interop.export import deidentified_copy, export_recording  # noqa: E402
from medacq.daemon.interop.study import StudyContext  # noqa: E402

STUDY = StudyContext(patient_id="PID4711X", patient_name="Doemeier^Janine", birth_date=datetime.date(1970, 1, 2),
                     sex="F", accession_number="ACC98765", referring_physician="Housemann^Gregor",
                     study_description="Janine follow-up", study_id="S-77")
# every form a patient string could take in the files
SECRETS = ["PID4711X", "Doemeier", "Janine", "ACC98765", "Housemann", "Gregor", "19700102", "1970-01-02",
           "02-JAN-1970", STUDY.study_uid]


def _assert_clean(raw: bytes) -> None:
    low = raw.lower()
    for s in SECRETS:
        assert s.lower().encode() not in low, s


def _all_strings(path) -> list[str]:
    """Every decoded string of an HDF5 file (attributes, string datasets: through the filters)."""
    out: list[str] = []

    def conv(v):
        if isinstance(v, bytes):
            out.append(v.decode("utf-8", "replace"))
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, np.ndarray) and v.dtype.kind in "OSU":
            for x in v.ravel():
                conv(x)

    with h5py.File(path, "r") as f:
        def visit(name, obj):
            out.append(name)
            for v in obj.attrs.values():
                conv(v)
            if isinstance(obj, h5py.Dataset) and (obj.dtype.kind in "SU" or h5py.check_string_dtype(obj.dtype)):
                conv(np.asarray(obj[()]))
        for v in f.attrs.values():
            conv(v)
        f.visititems(visit)
    return out


def _hdf5_recording(path):
    from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter

    w = Hdf5RecordingWriter(path, attrs={"study": STUDY.model_dump_json()}, durable=False)
    frames = samples.ct_slices(n=2) + samples.ekg_chunks(seconds=2.0)
    seen = set()
    for f in frames:
        if f.topic not in seen:
            seen.add(f.topic)
            # a descriptor with free text naming the patient (what an operator might type)
            d = {**dict(f.descriptor), "note": "positioned Doemeier^Janine, ACC98765"}
            w.message(f.topic, {**f.header, "kind": "descriptor", "descriptor": d}, None)
        w.message(f.topic, dict(f.header), f.data)
    w.checkpoint(complete=True)
    w.close()
    with h5py.File(path, "a") as f:  # a gzip-compressed string dataset naming the patient
        f.create_dataset("notes", data=np.array(["Doemeier^Janine PID4711X born 1970-01-02"] * 50, dtype=object),
                         dtype=h5py.string_dtype(), compression="gzip", chunks=(10,))
    return frames


@pytest.mark.parametrize("retain_dates", [False, True])
def test_hdf5_recording_copy(tmp_path, retain_dates):
    src = tmp_path / "rec.h5"
    _hdf5_recording(src)
    assert b"Doemeier" in src.read_bytes()  # (the input does hold them)
    deid = Deidentifier(retain_dates=retain_dates)
    rep = deidentified_copy(src, tmp_path / "out", deid, fmt="hdf5")
    dst = tmp_path / "out" / "rec.h5"
    assert rep["format"] == "hdf5" and rep["path"] == str(dst)
    _assert_clean(dst.read_bytes())
    strings = _all_strings(dst)
    assert strings and not [s for s in strings for x in SECRETS if x.lower() in s.lower()]
    with h5py.File(src, "r") as a, h5py.File(dst, "r") as b:
        study = StudyContext.model_validate_json(b.attrs["study"])
        assert (study.patient_id, study.patient_name, study.birth_date, study.sex, study.accession_number,
                study.referring_physician, study.study_description) == ("ANON", "ANONYMOUS", None, "", "", "", "")
        assert study.study_uid == rep["study_uid"] != STUDY.study_uid
        assert b.attrs["patient_identity_removed"] == "YES"
        assert b["notes"].compression == "gzip" and b["notes"][0].decode().startswith("X X born X")
        n = 0
        for topic in ("recon/ct0.slice", "recon/ekg0"):
            ga, gb = a["recon"][topic.split("/")[1]], b["recon"][topic.split("/")[1]]
            for blk in (k for k in ga if k.startswith("data_")):
                np.testing.assert_array_equal(ga[blk]["frames"][()], gb[blk]["frames"][()])  # data unchanged
                np.testing.assert_array_equal(ga[blk]["seq"][()], gb[blk]["seq"][()])
                np.testing.assert_array_equal(ga[blk]["t_mono_ns"][()], gb[blk]["t_mono_ns"][()])
                off = gb[blk]["t_host_ns"][()] - ga[blk]["t_host_ns"][()]
                assert len(set(off.tolist())) == 1  # one offset: intervals stay true
                expect = 0 if retain_dates else SHIFTED_START_NS - int(a.attrs["started_t_host_ns"])
                assert int(off[0]) == expect
                n += ga[blk]["frames"].shape[0]
            sa, sb = ga["series"]["0000"], gb["series"]["0000"]
            assert sb.attrs["series"] != sa.attrs["series"]  # the stream's series uuid replaced
            assert json.loads(sb.attrs["descriptor"])["note"] == "positioned X, X"
        assert n > 0
        if not retain_dates:
            assert int(b.attrs["started_t_host_ns"]) == SHIFTED_START_NS
            assert b.attrs["file_time"].startswith("1985-01-01T00:00:00")
        else:
            assert int(b.attrs["started_t_host_ns"]) == int(a.attrs["started_t_host_ns"])


def test_hdf5_copy_and_dicom_of_one_export_share_the_new_study_uid(tmp_path):
    """One export, one UID map: the de-identified DICOM objects' Study Instance UID is the copy's study uid."""
    pytest.importorskip("pydicom")
    import pydicom

    src = tmp_path / "rec.h5"
    _hdf5_recording(src)
    deid = Deidentifier()
    rep = deidentified_copy(src, tmp_path / "copy", deid, fmt="hdf5")
    with h5py.File(src, "r") as h5:
        dicom = export_recording(h5, tmp_path / "dicom", STUDY, deidentify_profile=True)
    uids = {pydicom.dcmread(p).StudyInstanceUID for p in dicom.files}
    assert len(dicom.files) == 3 and uids == {rep["study_uid"]}
    # and the DICOM export reads the de-identified copy too: the same frames, anonymous
    with h5py.File(tmp_path / "copy" / "rec.h5", "r") as h5:
        again = export_recording(h5, tmp_path / "dicom2", StudyContext.model_validate_json(h5.attrs["study"]))
    assert {str(pydicom.dcmread(p).PatientName) for p in again.files} == {"ANONYMOUS"}


def _edf(path, bdf: bool):
    pytest.importorskip("pyedflib", reason="EDF+ needs pyedflib")
    from medacq.daemon.recording.edf import EdfRecorder

    desc = {"stream": "eeg0", "shape": [4, -1], "channel_names": ["Fp1", "Fp2", "C3", "C4"],
            "sample_rate_hz": 100.0, "units": "µV"}
    rec = EdfRecorder(path, {"eeg0": desc}, bdf=bdf, patient="Doemeier_Janine",
                      recording="Janine follow-up ACC98765")
    # the rest of the EDF+ patient and recording subfields (the recorder's pyedflib writer)
    rec._w.setPatientCode("PID4711X")
    rec._w.setBirthdate(datetime.date(1970, 1, 2))
    rec._w.setSex(0)
    rec._w.setAdmincode("ACC98765")
    rec._w.setTechnician("Housemann")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 500)) * 50).astype(np.float64)
    t0 = 1_780_000_000_000_000_000
    for k in range(0, 500, 25):
        rec.write_frame({"stream": "eeg0", "kind": "frame", "t_host_ns": t0 + k * 10_000_000}, x[:, k:k + 25])
    rec.add_annotation("Doemeier^Janine eyes closed", 1.0)
    rec.add_annotation("Dr Housemann entered", 2.5, 0.5)
    rec.add_annotation("blink", 3.0)
    rec.close()
    return t0


@pytest.mark.parametrize("bdf,retain_dates", [(False, False), (True, True)])
def test_edf_copy(tmp_path, bdf, retain_dates):
    import pyedflib

    src = tmp_path / ("rec.bdf" if bdf else "rec.edf")
    t0 = _edf(src, bdf)
    raw = src.read_bytes()
    assert b"PID4711X" in raw and b"Doemeier" in raw and b"Housemann" in raw
    rep = deidentified_copy(src, tmp_path / "out", Deidentifier(retain_dates=retain_dates,
                                                                patient_strings=STUDY.patient_strings()), fmt="edf")
    dst = tmp_path / "out" / src.name
    out = dst.read_bytes()
    _assert_clean(out)
    assert len(out) == len(raw)
    assert out[8:88].decode().strip() == "X X X X"
    a, b = pyedflib.EdfReader(str(src)), pyedflib.EdfReader(str(dst))
    try:
        assert b.getSignalLabels() == a.getSignalLabels() == ["Fp1", "Fp2", "C3", "C4"]
        for i in range(4):
            np.testing.assert_array_equal(a.readSignal(i, digital=True), b.readSignal(i, digital=True))
        on_a, du_a, tx_a = a.readAnnotations()
        on_b, du_b, tx_b = b.readAnnotations()
        np.testing.assert_array_equal(on_a, on_b)
        np.testing.assert_array_equal(du_a, du_b)
        assert list(tx_b) == ["X eyes closed", "Dr X entered", "blink"]
        assert b.getPatientName() in ("X", "") and b.getPatientCode() in ("X", "") and b.getAdmincode() in ("X", "")
        start = datetime.datetime.fromtimestamp(t0 / 1e9, datetime.timezone.utc).replace(tzinfo=None)
        if retain_dates:
            assert b.getStartdatetime() == a.getStartdatetime() == start
        else:
            assert b.getStartdatetime() == datetime.datetime(1985, 1, 1)
            assert rep["start"] == "1985-01-01T00:00:00" and str(start.year).encode() not in out[:256]
    finally:
        a.close()
        b.close()


def _ismrmrd(path):
    from medacq.daemon.recording.ismrmrd import header_xml, write_ismrmrd

    n = 8
    desc = {"stream": "mri0", "device": "marcos", "modality": "mri", "shape": [2, n], "sample_rate_hz": 50_000.0,
            "geometry": {"matrix": [n, n], "fov_m": [0.2, 0.2]}, "meta": {"larmor_hz": 8.5e6,
                                                                         "field_strength_t": 0.2}}
    rng = np.random.default_rng(2)
    lines = [(rng.standard_normal((2, n)) + 1j * rng.standard_normal((2, n))).astype(np.complex64) for _ in range(n)]
    write_ismrmrd(str(path), desc, [({"line": k}, lines[k]) for k in range(n)])
    xml = header_xml(desc).replace(
        '<acquisitionSystemInformation>',
        "<subjectInformation><patientName>Doemeier^Janine</patientName><patientWeight_kg>61.5</patientWeight_kg>"
        "<patientID>PID4711X</patientID><patientBirthdate>1970-01-02</patientBirthdate>"
        "<patientGender>F</patientGender></subjectInformation>"
        "<studyInformation><studyDate>2026-05-28</studyDate><studyTime>14:03:07</studyTime><studyID>S-77</studyID>"
        "<accessionNumber>98765</accessionNumber><referringPhysicianName>Housemann^Gregor</referringPhysicianName>"
        f"<studyDescription>Janine follow-up</studyDescription><studyInstanceUID>{STUDY.study_uid}</studyInstanceUID>"
        "</studyInformation>"
        "<measurementInformation><measurementID>M1</measurementID><seriesDate>2026-05-28</seriesDate>"
        "<seriesTime>14:05:00</seriesTime><patientPosition>HFS</patientPosition>"
        "<seriesDescription>Janine axial</seriesDescription></measurementInformation>"
        "<acquisitionSystemInformation><institutionName>St Elsewhere</institutionName>", 1)
    with h5py.File(path, "a") as f:
        del f["dataset/xml"]
        x = f["dataset"].create_dataset("xml", shape=(1,), dtype=h5py.vlen_dtype(bytes))
        x[0] = xml.encode()
    return lines


@pytest.mark.parametrize("retain_dates", [False, True])
def test_ismrmrd_copy(tmp_path, retain_dates):
    ismrmrd = pytest.importorskip("ismrmrd", reason="the ismrmrd package (PyPI) reads the files back")
    src = tmp_path / "mri.h5"
    lines = _ismrmrd(src)
    hdr_a = ismrmrd.xsd.CreateFromDocument(ismrmrd.Dataset(str(src), "dataset", False).read_xml_header())
    assert hdr_a.subjectInformation.patientName == "Doemeier^Janine"  # (the input holds them, schema-valid)
    rep = deidentified_copy(src, tmp_path / "out", Deidentifier(retain_dates=retain_dates), fmt="ismrmrd")
    dst = tmp_path / "out" / "mri.h5"
    _assert_clean(dst.read_bytes())
    for s in _all_strings(dst):
        for x in SECRETS + ["St Elsewhere"]:
            assert x.lower() not in s.lower(), (x, s[:80])
    ds = ismrmrd.Dataset(str(dst), "dataset", False)
    hdr = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())  # still valid against ismrmrd.xsd
    si, st, mi = hdr.subjectInformation, hdr.studyInformation, hdr.measurementInformation
    assert (si.patientName, si.patientID, si.patientBirthdate, si.patientGender, si.patientWeight_kg) == \
        ("ANONYMOUS", "ANON", None, None, None)
    assert (st.studyID, st.accessionNumber, st.referringPhysicianName, st.studyDescription) == (None,) * 4
    assert st.studyInstanceUID.startswith("2.") and st.studyInstanceUID != STUDY.study_uid
    assert mi.seriesDescription is None and mi.patientPosition.value == "HFS"
    assert hdr.acquisitionSystemInformation.institutionName is None
    assert hdr.experimentalConditions.H1resonanceFrequency_Hz == 8_500_000  # not identifying: kept
    if retain_dates:
        assert (str(st.studyDate), str(st.studyTime), str(mi.seriesTime)) == ("2026-05-28", "14:03:07", "14:05:00")
    else:
        assert (str(st.studyDate), str(st.studyTime)) == ("1985-01-01", "00:00:00")
        assert (str(mi.seriesDate), str(mi.seriesTime)) == ("1985-01-01", "00:01:53")  # 1 min 53 s after the study
    assert rep["xml"]["dataset"]["patientBirthdate"] == "Z" and rep["xml"]["dataset"]["studyInstanceUID"] == "U"
    assert ds.number_of_acquisitions() == len(lines)
    for i, line in enumerate(lines):
        acq = ds.read_acquisition(i)
        np.testing.assert_array_equal(acq.data, line)  # k-space unchanged
        assert acq.idx.kspace_encode_step_1 == i
    if not retain_dates:
        assert ds.read_acquisition(0).acquisition_time_stamp == 0
    ds.close()


def test_a_string_that_cannot_be_scrubbed_is_an_error_and_leaves_no_file(tmp_path):
    """A patient string inside numbers' bytes (here: an int8 dataset spelling it) cannot be replaced: refused."""
    src = tmp_path / "rec.h5"
    _hdf5_recording(src)
    with h5py.File(src, "a") as f:
        f.create_dataset("raw_bytes", data=np.frombuffer(b"..Doemeier^Janine..", dtype=np.int8))
    with pytest.raises(DeidError, match="survived"):
        deidentified_copy(src, tmp_path / "out", Deidentifier(), fmt="hdf5")
    assert not (tmp_path / "out" / "rec.h5").exists()


def test_export_cli_deidentify_each_format(tmp_path):
    pytest.importorskip("pyedflib", reason="EDF+ needs pyedflib")
    src_h5, src_edf = tmp_path / "rec.h5", tmp_path / "rec.edf"
    _hdf5_recording(src_h5)
    _edf(src_edf, bdf=False)
    study = tmp_path / "study.json"
    study.write_text(STUDY.model_dump_json())
    cli = [sys.executable, "-m", "medacq.daemon.cli", "export"]
    r = subprocess.run(cli + [str(src_h5), "--deidentify", "--format", "hdf5", "--out", str(tmp_path / "o1")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["format"] == "hdf5" and rep["study_uid"].startswith("2.25.")
    _assert_clean((tmp_path / "o1" / "rec.h5").read_bytes())
    r = subprocess.run(cli + [str(src_edf), "--deidentify", "--study", str(study), "--out", str(tmp_path / "o2")],
                       capture_output=True, text=True, timeout=120)  # the format follows the input
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["format"] == "edf"
    _assert_clean((tmp_path / "o2" / "rec.edf").read_bytes())
    for bad, msg in (([str(src_edf), "--deidentify", "--format", "hdf5"], "not hdf5"),
                     ([str(src_h5), "--format", "hdf5"], "--deidentify")):
        r = subprocess.run(cli + bad + ["--out", str(tmp_path / "o3")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_malformed_inputs_are_value_errors(tmp_path):
    pytest.importorskip("pyedflib", reason="EDF+ needs pyedflib")
    src = tmp_path / "rec.edf"
    _edf(src, bdf=False)
    cut = tmp_path / "cut.edf"
    cut.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        deidentified_copy(cut, tmp_path / "out", Deidentifier())
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        x = f.create_group("dataset").create_dataset("xml", shape=(1,), dtype=h5py.vlen_dtype(bytes))
        x[0] = b"<ismrmrdHeader><subjectInformation>"
    with pytest.raises(ValueError, match="does not parse"):
        deidentified_copy(bad, tmp_path / "out", Deidentifier(), fmt="ismrmrd")
    assert not (tmp_path / "out" / "bad.h5").exists() and not (tmp_path / "out" / "cut.edf").exists()
