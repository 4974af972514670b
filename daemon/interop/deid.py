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

__all__ = ["PROFILE_VERSION", "SHIFTED_START_NS", "Deidentifier", "DeidError", "deidentify", "identifying_variants",
           "profile_actions"]

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


# -- one export's de-identification state, shared by the DICOM objects and the file copies --------------------

#: the start a de-identified export's first file is moved to without ``retain_dates``: 1985-01-01T00:00:00
#: UTC, the earliest date an EDF header can hold (EDF+ counts ``yy`` 85-99 as 1985-1999), used for HDF5 and
#: ISMRMRD too so the files of one export share one time line
SHIFTED_START_NS = 473_385_600 * 1_000_000_000


def identifying_variants(strings: Iterable[str]) -> list[str]:
    """The forms a patient string takes in our files: as given, DICOM PN ``^`` → space or ``_`` (EDF+
    subfields have no spaces), ISO ``YYYY-MM-DD`` and EDF+ ``DD-MMM-YYYY`` for ``YYYYMMDD`` dates.
    Longest first (so a replacement removes a whole name before its parts); compare case-insensitively."""
    import datetime as _dt

    out: set[str] = set()
    for s in strings:
        s = s.strip()
        if not s:
            continue
        out |= {s, s.replace("^", " ").strip(), s.replace("^", "_").strip("_"), s.replace(" ", "_")}
        if len(s) == 8 and s.isdigit():
            try:
                d = _dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
            except ValueError:
                continue
            out |= {d.isoformat(), d.strftime("%d-%b-%Y").upper()}
    return sorted((v for v in out if v), key=lambda v: (-len(v), v))


class Deidentifier:
    """What one ``medacq export --deidentify`` shares across its files.

    * the options: ``retain_dates`` (Retain Longitudinal Temporal Information Full Dates) or, without it,
      times moved so the export's first file starts at :data:`SHIFTED_START_NS` (every time of every file
      by the same offset: intervals between files stay true; PS3.15's Modified Dates option);
    * the UID map: :meth:`uid` gives the same new UID for the same old one (dicom-anonymizer's own map, the
      one :func:`deidentify` uses for DICOM objects: an HDF5 copy's study uid and the DICOM objects of the
      same export agree), :meth:`uuid` the same for the streams' series uuids;
    * the identifying strings (the study context's and those a file's own header holds): :meth:`scrub`
      replaces them in free text, :meth:`check_text` / :meth:`check_bytes` refuse a file where one survived.
    """

    def __init__(self, retain_dates: bool = False, patient_strings: Iterable[str] = ()) -> None:
        self.retain_dates = retain_dates
        self.offset_ns: int | None = 0 if retain_dates else None
        self._strings: list[str] = []
        self._uuids: dict[str, str] = {}
        self._pattern: Any = None
        self.add_strings(patient_strings)

    # -- strings -------------------------------------------------------------------------------------------
    def add_strings(self, strings: Iterable[str]) -> None:
        """More identifying strings (names shorter than 3 characters are not matched in free text)."""
        import re

        new = [s for s in identifying_variants(strings) if len(s) >= 3 and s not in self._strings]
        if new:
            self._strings = sorted(set(self._strings) | set(new), key=lambda v: (-len(v), v))
            self._pattern = re.compile("|".join(re.escape(s) for s in self._strings), re.IGNORECASE)

    @property
    def strings(self) -> list[str]:
        return list(self._strings)

    def scrub(self, text: str) -> str:
        """``text`` with every identifying string replaced by ``X`` (never longer than ``text``)."""
        return self._pattern.sub("X", text) if self._pattern is not None and text else text

    def check_text(self, texts: Iterable[str], what: str) -> None:
        """:class:`DeidError` if an identifying string is in one of ``texts`` (decoded values: attributes,
        XML, header fields, annotations, read back from the written file)."""
        if self._pattern is None:
            return
        n = sum(1 for t in texts if t and self._pattern.search(t))
        if n:
            raise DeidError(f"{what}: {n} value(s) still hold an identifying string after de-identification")

    def check_bytes(self, raw: bytes, what: str, min_len: int = 6) -> None:
        """:class:`DeidError` if an identifying string of at least ``min_len`` characters is anywhere in
        ``raw`` (a whole file; shorter ones would match numeric data by chance: :meth:`check_text` covers them)."""
        low = raw.lower()
        left = [s for s in self._strings if len(s) >= min_len and any(
            s.lower().encode(enc, "ignore") in low for enc in ("utf-8", "latin-1"))]
        if left:
            raise DeidError(f"{what}: {len(left)} identifying string(s) survived de-identification in the file bytes")

    def check_file(self, path: str, min_len: int = 6, block: int = 16 << 20) -> None:
        """:meth:`check_bytes` over a whole file, read in blocks (overlapping by the longest string)."""
        longest = max((len(s.encode("utf-8")) for s in self._strings), default=0)
        if not longest:
            return
        tail = b""
        with open(path, "rb") as f:
            while True:
                chunk = f.read(block)
                if not chunk:
                    break
                self.check_bytes(tail + chunk, path, min_len)
                tail = chunk[-(longest - 1):] if longest > 1 else b""

    # -- identifiers -----------------------------------------------------------------------------------------
    def uid(self, old: str) -> str:
        """A new DICOM UID for ``old``, the same one each time (in this process)."""
        from dicomanonymizer import simpledicomanonymizer as sda

        return str(sda.get_UID(str(old).strip("\x00 ")))

    def uuid(self, old: str) -> str:
        """A new random uuid for a stream's series uuid ``old``, the same one each time in this export."""
        import uuid as _uuid

        if old not in self._uuids:
            self._uuids[old] = str(_uuid.uuid4())
        return self._uuids[old]

    # -- time ----------------------------------------------------------------------------------------------
    def offset_for(self, reference_ns: int | None) -> int:
        """The offset (ns) every CLOCK_REALTIME time of this export moves by: 0 with ``retain_dates``; else set
        by the first file that asks (its start ``reference_ns`` lands on :data:`SHIFTED_START_NS`)."""
        if self.offset_ns is None:
            if reference_ns is None:
                return 0  # nothing dated yet: the next file with a date sets it
            self.offset_ns = SHIFTED_START_NS - int(reference_ns)
        return self.offset_ns

    def method(self) -> list[str]:
        """De-identification Method text for a file copy (the profile and the dates option applied)."""
        return ["PS3.15 Basic Application Level Confidentiality Profile",
                "Retain Longitudinal Temporal Information Full Dates" if self.retain_dates
                else "Retain Longitudinal Temporal Information Modified Dates (shifted to start 1985-01-01)"]

    # -- the study context -----------------------------------------------------------------------------------
    def study(self, study: Any) -> Any:
        """A de-identified copy of a :class:`~medacq.daemon.interop.study.StudyContext`: its fields put
        through :func:`deidentify` as the DICOM attributes they become (Patient's Name/ID → ``ANONYMOUS`` /
        ``ANON``; birth date, sex, accession number, referring physician, study id emptied; descriptions
        removed; Study Instance UID replaced through :meth:`uid`)."""
        from medacq.daemon.interop.study import StudyContext

        ds = Dataset()
        ds.PatientName, ds.PatientID, ds.PatientSex = study.patient_name, study.patient_id, study.sex
        ds.PatientBirthDate = study.birth_date.strftime("%Y%m%d") if study.birth_date else ""
        ds.AccessionNumber, ds.ReferringPhysicianName = study.accession_number, study.referring_physician
        ds.StudyDescription, ds.SeriesDescription, ds.StudyID = (study.study_description, study.series_description,
                                                               study.study_id)
        ds.StudyInstanceUID = study.study_uid
        deidentify(ds, retain_dates=self.retain_dates)
        new_uid = str(ds.StudyInstanceUID)
        if new_uid == study.study_uid:  # pragma: no cover - the profile always replaces it
            new_uid = self.uid(study.study_uid)
        return StudyContext(patient_id=str(ds.get("PatientID", "") or ""),
                            patient_name=str(ds.get("PatientName", "") or ""),
                            sex=str(ds.get("PatientSex", "") or "") or "",  # type: ignore[arg-type]
                            accession_number=str(ds.get("AccessionNumber", "") or ""),
                            referring_physician=str(ds.get("ReferringPhysicianName", "") or ""),
                            study_description=str(ds.get("StudyDescription", "") or ""),
                            series_description=str(ds.get("SeriesDescription", "") or ""),
                            study_id=str(ds.get("StudyID", "") or ""), study_uid=new_uid)
