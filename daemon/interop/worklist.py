"""Modality worklist: C-FIND to a worklist SCP (Modality Worklist Information Model - FIND), so the
operator picks the scheduled procedure step instead of typing patient data.

:func:`query_worklist` asks a worklist SCP (``AE@host:port``: a RIS, Orthanc's worklist plugin, dcmtk's
``wlmscpfs``) for the scheduled procedure steps that match a modality, a date (or range) and a scheduled
station AE title, and returns them as :class:`WorklistItem` (the patient, the order, the step);
:meth:`WorklistItem.study_context` is the :class:`~medacq.daemon.interop.study.StudyContext` the ``study``
control request sets (``medacq study worklist ... --pick N``).

Mapping (PS3.4 K.6, Table K.6-1 attributes → study context): Patient's Name/ID/Birth Date/Sex →
patient_*, Accession Number → accession_number, Referring Physician's Name → referring_physician,
Requested Procedure Description → study_description, Requested Procedure ID → study_id, Scheduled
Procedure Step Description → series_description, Study Instance UID → study_uid (the RIS's, so the
images join the ordered study; a new random one when the worklist has none).

The answers carry patient data: a worklist SCP off loopback is asked only over TLS (the same rule and
helpers as the PACS, :func:`~medacq.daemon.interop.pacs.tls_context` /
:func:`~medacq.daemon.interop.pacs.check_pacs_exposure`). An SCP that is down, refuses the association,
answers a failure status or something that is not DICOM raises :class:`WorklistError` (one line); a
matching answer that cannot become a study context (a value too long, a bad UID) is skipped and counted
(``rejected``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import ssl
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from medacq.daemon.interop.pacs import PacsAddress, PacsError, associate, check_pacs_exposure
from medacq.daemon.interop.study import StudyContext

__all__ = ["WorklistError", "WorklistItem", "WorklistResult", "query_worklist", "worklist_query"]

log = logging.getLogger("medacq.interop.worklist")

_PENDING = (0xFF00, 0xFF01)


class WorklistError(RuntimeError):
    """The worklist SCP is down, refused us, failed the query or answered something that is not DICOM."""


@dataclass(frozen=True)
class WorklistItem:
    """One scheduled procedure step as the worklist SCP answered it (the first step of its sequence).

    Dates are ``datetime.date`` (None when absent); ``start`` is the step's scheduled start date and time
    (naive, the SCP's local time), or None.
    """

    patient_id: str = ""
    patient_name: str = ""
    birth_date: _dt.date | None = None
    sex: str = ""
    accession_number: str = ""
    referring_physician: str = ""
    study_uid: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    modality: str = ""
    station_ae: list[str] = field(default_factory=list)
    start: _dt.datetime | None = None
    step_id: str = ""
    step_description: str = ""
    performing_physician: str = ""

    def study_context(self) -> StudyContext:
        """The study context this step sets (``ValueError`` naming the fields a value does not fit)."""
        from pydantic import ValidationError

        fields: dict[str, Any] = {
            "patient_id": self.patient_id, "patient_name": self.patient_name, "birth_date": self.birth_date,
            "sex": self.sex if self.sex in ("M", "F", "O") else "", "accession_number": self.accession_number,
            "referring_physician": self.referring_physician,
            "study_description": self.requested_procedure_description[:64],
            "series_description": self.step_description[:48], "study_id": self.requested_procedure_id[:16]}
        if self.study_uid:
            fields["study_uid"] = self.study_uid
        try:
            return StudyContext.model_validate(fields)
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                       for e in exc.errors(include_url=False, include_input=False))) from None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["birth_date"] = self.birth_date.isoformat() if self.birth_date else None
        d["start"] = self.start.isoformat() if self.start else None
        return d


@dataclass
class WorklistResult:
    """The matching steps, and how many answers could not be used (``rejected``, with the last reason)."""

    items: list[WorklistItem]
    rejected: int = 0
    last_rejected: str = ""


def _date(value: str) -> _dt.date | None:
    value = (value or "").strip()
    try:
        return _dt.datetime.strptime(value[:8], "%Y%m%d").date() if len(value) >= 8 else None
    except ValueError:
        return None


def _start(d: str, t: str) -> _dt.datetime | None:
    day = _date(d)
    if day is None:
        return None
    t = (t or "").strip().split(".")[0]
    try:
        tm = _dt.datetime.strptime((t + "000000")[:6], "%H%M%S").time() if t else _dt.time()
    except ValueError:
        tm = _dt.time()
    return _dt.datetime.combine(day, tm)


def _pn(v: Any) -> str:
    """A PN value's alphabetic component group (what StudyContext keeps)."""
    return str(v or "").split("=")[0].strip()


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def worklist_query(modality: str | None = None, date: str | None = None, station_ae: str | None = None,
                   accession_number: str | None = None, patient_id: str | None = None) -> Dataset:
    """The C-FIND identifier: the matching keys given, every return key of the mapping empty (universal).

    ``date``: ``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD`` (either end may be empty), matched against
    the Scheduled Procedure Step Start Date.
    """
    if date:
        for part in date.split("-"):
            if part and _date(part) is None:
                raise ValueError(f"worklist date {date!r}: expected YYYYMMDD or YYYYMMDD-YYYYMMDD")
    if modality is not None and not (1 <= len(modality) <= 16 and modality.replace("_", "").isalnum()):
        raise ValueError(f"modality {modality!r}: a DICOM modality code (US, CT, DX, MR, ECG, EEG ...)")
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = patient_id or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = accession_number or ""
    ds.ReferringPhysicianName = ""
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    sps = Dataset()
    sps.Modality = modality or ""
    sps.ScheduledStationAETitle = station_ae or ""
    sps.ScheduledProcedureStepStartDate = date or ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = ""
    sps.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


def _item(ds: Dataset) -> WorklistItem:
    seq = ds.get("ScheduledProcedureStepSequence") or []
    sps = seq[0] if len(seq) else Dataset()
    ae = sps.get("ScheduledStationAETitle")
    return WorklistItem(
        patient_id=_text(ds.get("PatientID")), patient_name=_pn(ds.get("PatientName")),
        birth_date=_date(_text(ds.get("PatientBirthDate"))), sex=_text(ds.get("PatientSex")).upper(),
        accession_number=_text(ds.get("AccessionNumber")), referring_physician=_pn(ds.get("ReferringPhysicianName")),
        study_uid=_text(ds.get("StudyInstanceUID")), requested_procedure_id=_text(ds.get("RequestedProcedureID")),
        requested_procedure_description=_text(ds.get("RequestedProcedureDescription")),
        modality=_text(sps.get("Modality")),
        station_ae=[str(x).strip() for x in (ae if isinstance(ae, (list, tuple)) or type(ae).__name__ == "MultiValue"
                                             else [ae] if ae else [])],
        start=_start(_text(sps.get("ScheduledProcedureStepStartDate")), _text(sps.get("ScheduledProcedureStepStartTime"))),
        step_id=_text(sps.get("ScheduledProcedureStepID")),
        step_description=_text(sps.get("ScheduledProcedureStepDescription")),
        performing_physician=_pn(sps.get("ScheduledPerformingPhysicianName")))


def query_worklist(scp: PacsAddress, *, modality: str | None = None, date: str | None = None,
                   station_ae: str | None = None, accession_number: str | None = None, patient_id: str | None = None,
                   calling_ae: str = "MEDACQ", tls: ssl.SSLContext | None = None,
                   timeout_s: float = 10.0) -> WorklistResult:
    """C-FIND the scheduled procedure steps matching the keys given (None: any) at ``scp``.

    Args:
        scp: the worklist SCP (``PacsAddress.parse("WL@host:port")``).
        modality, date, station_ae, accession_number, patient_id: matching keys (:func:`worklist_query`).
        calling_ae: our AE title (the SCP may answer only known ones).
        tls: TLS client context (:func:`~medacq.daemon.interop.pacs.tls_context`); required off loopback.
        timeout_s: connection, ACSE and DIMSE timeout, seconds.

    Returns the matches in the order the SCP sent them. Raises :class:`WorklistError` (down, refused,
    failure status, not DICOM), ``ValueError`` for bad matching keys.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    query = worklist_query(modality, date, station_ae, accession_number, patient_id)
    try:
        check_pacs_exposure(scp, tls)
    except PacsError:
        raise WorklistError(f"worklist {scp} is off loopback: ask it over TLS (--tls-ca CA.pem [--tls-cert "
                            "CERT.pem --tls-key KEY.pem]); its answers carry patient data") from None
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc, rejected = associate(ae, scp, tls)
    if not assoc.is_established:
        why = (f"rejected the association (is {scp.ae_title!r} its AE title, and does it know ours, "
               f"{calling_ae!r}?)" if rejected else
               "accepted no association: down, unreachable, or not a DICOM SCP")
        raise WorklistError(f"worklist {scp} {why}")
    out = WorklistResult([])
    final: int | None = None
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in _PENDING:
                if identifier is None:
                    out.rejected += 1
                    out.last_rejected = "an answer that could not be decoded"
                    continue
                try:
                    item = _item(identifier)
                    item.study_context()  # usable as a study context, or rejected now
                except (ValueError, TypeError, AttributeError, KeyError) as exc:
                    out.rejected += 1
                    out.last_rejected = str(exc)
                    continue
                out.items.append(item)
            else:
                final = code
    finally:
        if assoc.is_established:
            assoc.release()
    if final is None or final == -1:
        raise WorklistError(f"worklist {scp}: no final C-FIND response (timeout, abort or not DICOM)")
    if final not in (0x0000,):
        raise WorklistError(f"worklist {scp} failed the query: status 0x{final:04X}")
    if out.rejected:
        log.warning("worklist %s: %d answer(s) not usable (%s)", scp, out.rejected, out.last_rejected)
    return out
