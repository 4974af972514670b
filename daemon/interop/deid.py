"""De-identification: the DICOM PS3.15 Basic Application Level Confidentiality Profile.

The attribute table is not ours: :func:`deidentify` applies the action of every attribute of
PS3.15 Table E.1-1 (edition 2026c) as shipped by ``dicom-anonymizer`` (KitwareMedical, PyPI
``dicom-anonymizer`` >= 2.1: ``D`` replace with a dummy, ``Z`` empty, ``X`` remove, ``K``
keep, ``U`` replace a UID consistently; the combined codes pick the action that keeps the
object valid), and removes private attributes. Then it records what was done, as the profile
asks: Patient Identity Removed (0012,0062) ``YES``, De-identification Method (0012,0063) and
its Code Sequence (0012,0064) with ``113100`` (Basic Application Confidentiality Profile) and,
with ``retain_dates``, ``113106`` (Retain Longitudinal Temporal Information Full Dates Option).

``retain_dates`` keeps every DA/DT/TM attribute the profile would replace or remove (the
option's "full dates") except the patient's own (group 0010: birth date and time, which the
option does not cover): longitudinal studies keep their time line; without it dates become
the dummy ``19000101``. UIDs are replaced by new random ones, the same new UID for the same old
one within a process (``dicom-anonymizer`` keeps that map), so series stay series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = ["PROFILE_VERSION", "deidentify", "profile_actions", "DeidError"]

PROFILE_VERSION = "dicomfields_2026c"  # PS3.15 Table E.1-1 as of DICOM 2026c


class DeidError(RuntimeError):
    """dicom-anonymizer is missing, or a patient string survived de-identification."""


def profile_actions(retain_dates: bool = False) -> dict[tuple[int, ...], Callable[..., Any]]:
    """Tag → action of the Basic profile (``dicom-anonymizer`` functions), with the dates option applied."""
    try:
        from dicomanonymizer import simpledicomanonymizer as sda
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise DeidError("de-identification needs dicom-anonymizer (pip install 'dicom-anonymizer>=2.1')") from exc
    actions: dict[tuple[int, ...], Callable[..., Any]] = sda.initialize_actions(PROFILE_VERSION)
    if retain_dates:
        from pydicom.datadict import dictionary_VR
        for tag in list(actions):
            if len(tag) != 2:
                continue
            try:
                vr = dictionary_VR((tag[0] << 16) | tag[1])
            except KeyError:
                continue
            if vr in ("DA", "DT", "TM") and tag[0] != 0x0010:  # not the patient's birth date/time
                actions[tag] = sda.keep
    _ = dicom_anonymization_database_selector  # imported to fail early on an incomplete install
    return actions


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def deidentify(ds: Dataset, retain_dates: bool = False, patient_strings: Iterable[str] = ()) -> Dataset:
    """De-identify ``ds`` in place (and return it) with the Basic profile.

    Args:
        ds: a dataset (with ``file_meta``: its Media Storage SOP Instance UID follows the new UID).
        retain_dates: the Retain Longitudinal Temporal Information with Full Dates option.
        patient_strings: identifying strings that must not survive anywhere in the encoded
            object (the study context's); raises :class:`DeidError` if one does.
    """
    from dicomanonymizer import simpledicomanonymizer as sda

    actions = profile_actions(retain_dates)
    sda.anonymize_dataset(ds, extra_anonymization_rules=None, delete_private_tags=True,
                          base_rules_gen=lambda: dict(actions))
    # the profile replaces (D) Patient's Name/ID with dummies: give them readable ones
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "ANON"
    # dicom-anonymizer's dummy date 00010101 is outside what validators accept for DA/DT (year 0001);
    # the profile only asks for a dummy: 19000101 is the customary one
    def _dates(d: Dataset, elem: Any) -> None:
        if elem.VR in ("DA", "DT") and isinstance(elem.value, str) and elem.value.startswith("00010101"):
            elem.value = "19000101" + elem.value[8:].replace("010101.000000", "000000.000000")
    ds.walk(_dates)
    if getattr(ds, "file_meta", None) is not None and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    codes = [_code("113100", "DCM", "Basic Application Confidentiality Profile")]
    methods = ["PS3.15 Basic Application Level Confidentiality Profile"]
    if retain_dates:
        codes.append(_code("113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"))
        methods.append("Retain Longitudinal Full Dates")
    ds.DeidentificationMethod = methods
    ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
    strings = [s for s in patient_strings if s]
    if strings:
        import io

        from pydicom.filewriter import dcmwrite
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=getattr(ds, "file_meta", None) is not None)
        raw = buf.getvalue()
        left = [s for s in strings if s.encode() in raw or s.upper().encode() in raw]
        if left:
            raise DeidError(f"{len(left)} identifying string(s) survived de-identification")
    return ds
