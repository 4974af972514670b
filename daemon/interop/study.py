"""Patient and study context, kept out of the data plane.

An operator sets a :class:`StudyContext` (patient id and name, birth date, sex, accession
number, referring physician, study and series descriptions) over the control plane; the daemon
keeps it in its state and writes it into recordings' metadata and DICOM exports. It is
**never** put into stream headers or descriptors: the ZeroMQ data plane is unauthenticated by
default, is fanned out to any number of subscribers (live views, other labs' scripts, LSL
bridges) and is recorded verbatim, so anything in it spreads to places no one audits. What a
subscriber sees is :class:`StudyRef`: a random study uid (``2.25.<uuid4>``), enough to join a
frame to its study in a PACS without revealing who the patient is.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["StudyContext", "StudyRef", "StudyState", "new_study_uid"]

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def new_study_uid() -> str:
    """A random DICOM UID under the ``2.25`` root (ISO/IEC 9834-8: a UUID as one integer)."""
    return f"2.25.{uuid.uuid4().int}"


def _no_backslash(v: str) -> str:
    if "\\" in v or any(ord(c) < 32 for c in v):
        raise ValueError("must not contain backslashes or control characters")
    return v


class StudyRef(BaseModel):
    """What subscribers may see of a study: its uid, nothing about the patient."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: str

    @field_validator("study_uid")
    @classmethod
    def _uid(cls, v: str) -> str:
        if len(v) > 64 or not _UID_RE.match(v):
            raise ValueError(f"not a DICOM UID (digits and dots, <= 64 characters): {v!r}")
        return v


class StudyContext(BaseModel):
    """The patient and study a recording belongs to (the control plane's ``study`` request).

    Lengths follow the DICOM value representations the fields land in: patient id, accession
    number (SH, 16), names (PN, 64 per component group), descriptions (LO, 64).

    Attributes:
        patient_id: Patient ID (0010,0020).
        patient_name: Patient's Name (0010,0010), DICOM PN form ``Family^Given^Middle``.
        birth_date: Patient's Birth Date (0010,0030), or None when unknown.
        sex: Patient's Sex (0010,0040): ``M``, ``F``, ``O`` or ``""`` (unknown).
        accession_number: Accession Number (0008,0050), from the RIS order.
        referring_physician: Referring Physician's Name (0008,0090), PN.
        study_description: Study Description (0008,1030).
        series_description: Series Description (0008,103E) prefix; the exporter appends the stream.
        study_id: Study ID (0020,0010), SH.
        study_uid: Study Instance UID (0020,000D): random unless given (e.g. from a worklist).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: str = Field("", max_length=64)
    patient_name: str = Field("", max_length=64)
    birth_date: _dt.date | None = None
    sex: Literal["M", "F", "O", ""] = ""
    accession_number: str = Field("", max_length=16)
    referring_physician: str = Field("", max_length=64)
    study_description: str = Field("", max_length=64)
    series_description: str = Field("", max_length=48)
    study_id: str = Field("", max_length=16)
    study_uid: str = Field(default_factory=new_study_uid)

    _check_text = field_validator("patient_id", "patient_name", "accession_number", "referring_physician",
                                  "study_description", "series_description", "study_id")(_no_backslash)

    @field_validator("study_uid")
    @classmethod
    def _uid(cls, v: str) -> str:
        return StudyRef(study_uid=v).study_uid

    def ref(self) -> StudyRef:
        """The part a subscriber may see."""
        return StudyRef(study_uid=self.study_uid)

    def patient_strings(self) -> list[str]:
        """Every identifying string of this context (what de-identification must remove)."""
        out = [self.patient_id, self.patient_name, self.accession_number, self.referring_physician,
               *[p for p in self.patient_name.split("^") if len(p) > 2]]
        if self.birth_date is not None:
            out.append(self.birth_date.strftime("%Y%m%d"))
        return [s for s in out if s]


class StudyState:
    """The daemon's current study, for a ``study`` control request (set / get / clear).

    Thread-safe. What goes where: :meth:`status` (read-only clients, stream metadata) holds the
    uid only; :meth:`get` (operators) the whole context; :meth:`recording_attrs` the root
    attributes a recorder writes (``study``: the context as JSON), which ``medacq export`` reads.
    The daemon's ``study`` control request (``protocols/control.py`` ``StudyRequest``: ``action``
    ``set``/``get``/``clear``, ``study`` a dict left out of the audit record) is routed to
    :meth:`handle` by ``daemon/acquisition/service.py``; its ``status`` shows :meth:`status`.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._study: StudyContext | None = None

    def set(self, fields: dict[str, object]) -> StudyRef:
        """Validate and set the context. ``ValueError`` names the bad fields, never their values
        (the message reaches the audit log)."""
        from pydantic import ValidationError

        try:
            study = StudyContext.model_validate(fields)
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'study'}: {e['msg']}"
                                       for e in exc.errors(include_url=False, include_input=False))) from None
        with self._lock:
            self._study = study
        return study.ref()

    def get(self) -> StudyContext | None:
        with self._lock:
            return self._study

    def clear(self) -> None:
        with self._lock:
            self._study = None

    def status(self) -> dict[str, str | None]:
        s = self.get()
        return {"study_uid": s.study_uid if s else None}

    def recording_attrs(self) -> dict[str, str]:
        s = self.get()
        return {"study": s.model_dump_json()} if s else {}

    def handle(self, action: str, fields: dict[str, object] | None = None) -> dict[str, object]:
        """One request: ``set`` (returns the uid), ``get`` (the context, operators only), ``clear``."""
        if action == "set":
            return self.set(fields or {}).model_dump()
        if action == "get":
            s = self.get()
            return {"study": s.model_dump(mode="json") if s else None}
        if action == "clear":
            self.clear()
            return {"study_uid": None}
        raise ValueError(f"study action {action!r}: expected set, get or clear")
