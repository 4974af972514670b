"""PS3.15 Basic Application Level Confidentiality Profile on our DICOM objects."""

from __future__ import annotations

import datetime
import io
import shutil
import subprocess

import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM export needs pydicom")
pytest.importorskip("dicomanonymizer", reason="de-identification needs dicom-anonymizer")

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector  # noqa: E402

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.deid import PROFILE_VERSION, DeidError, deidentify  # noqa: E402
from medacq.daemon.interop.dicom import DicomWriter  # noqa: E402
from medacq.daemon.interop.study import StudyContext  # noqa: E402

STUDY = StudyContext(patient_id="PID4711", patient_name="Doe^Jane", birth_date=datetime.date(1970, 1, 2), sex="F",
                     accession_number="ACC123", referring_physician="House^Gregory", study_description="Jane's study",
                     series_description="medacq", study_id="S-77")
TABLE = dicom_anonymization_database_selector(PROFILE_VERSION)


def objects() -> list:
    w = DicomWriter(STUDY, us_cine_frames=8, institution_name="St Elsewhere")
    out = []
    for f in samples.every_kind():
        out += w.add(f)
    return out + w.flush()


def encode(ds) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _tags(category: str) -> list[tuple[int, int]]:
    return [t for t in TABLE[category] if len(t) == 2]


@pytest.mark.parametrize("retain_dates", [False, True])
def test_every_profile_attribute_removed_or_replaced(retain_dates, tmp_path):
    for orig in objects():
        before = pydicom.dcmread(io.BytesIO(encode(orig)))
        ds = deidentify(pydicom.dcmread(io.BytesIO(encode(orig))), retain_dates=retain_dates,
                        patient_strings=STUDY.patient_strings())
        raw = encode(ds)
        after = pydicom.dcmread(io.BytesIO(raw))
        present = [t for t in TABLE["ALL_TAGS"] if len(t) == 2 and t in before]
        assert len(present) >= 15  # our objects carry the profile's attributes (names, dates, UIDs ...)
        for t in present:
            e0 = before[t]
            e1 = after.get(t)
            is_date = e0.VR in ("DA", "DT", "TM")
            if retain_dates and is_date and t[0] != 0x0010:
                assert e1 is not None and e1.value == e0.value, t  # the option keeps full dates
                continue
            if t in _tags("X_TAGS"):
                assert e1 is None, t
            elif t in _tags("U_TAGS") or e0.VR == "UI":
                assert e1 is None or e1.value != e0.value, t
            elif e0.value not in ("", None) and e0.VR != "SQ":
                # D, Z and their combinations: gone, empty, or a dummy; never the original
                assert e1 is None or e1.value in ("", None) or e1.value != e0.value, (t, e0.value, e1.value)
        assert after.PatientIdentityRemoved == "YES"
        codes = [c.CodeValue for c in after.DeidentificationMethodCodeSequence]
        assert codes == (["113100", "113106"] if retain_dates else ["113100"])
        for s in STUDY.patient_strings() + ["St Elsewhere", "Jane's study"]:
            assert s.encode() not in raw, s
        if not retain_dates:
            assert b"20260528" not in raw and b"19700102" not in raw
        else:
            assert b"19700102" not in raw  # birth date is not a longitudinal date: still removed
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID != before.SOPInstanceUID


def test_series_stay_series_after_deidentification():
    objs = [deidentify(o) for o in objects()]
    dx = [o for o in objs if o.Modality == "DX"]
    assert len({o.SeriesInstanceUID for o in dx}) == 1 and len({o.SOPInstanceUID for o in dx}) == len(dx)
    assert len({o.StudyInstanceUID for o in objs}) == 1 and objs[0].StudyInstanceUID != STUDY.study_uid


def test_a_surviving_patient_string_is_an_error():
    (ds,) = [o for o in objects() if o.Modality == "CT"][:1]
    ds.ConvolutionKernel = "Doe^Jane"  # an attribute the profile does not name
    with pytest.raises(DeidError, match="survived"):
        deidentify(ds, patient_strings=STUDY.patient_strings())


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (dicom3tools)")
def test_deidentified_objects_stay_valid(tmp_path):
    for k, ds in enumerate(objects()):
        if ds.Modality == "EEG":
            continue  # no IOD table in Debian's dciodvfy (see test_dicom_iod)
        p = tmp_path / f"{k}.dcm"
        p.write_bytes(encode(deidentify(ds, patient_strings=STUDY.patient_strings())))
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        assert [x for x in (r.stdout + r.stderr).splitlines() if x.startswith("Error")] == [], ds.Modality
