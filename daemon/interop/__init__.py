"""Clinical interoperability: study context, DICOM objects, a PACS outbox, de-identification.

Imports only ``protocols``, ``daemon.client`` and ``daemon.common`` of medacq (it is a subscriber
of ``recon/...`` and a reader of recordings, never a part of acquisition).
"""

from medacq.daemon.interop.study import StudyContext, StudyRef, StudyState, new_study_uid

__all__ = ["StudyContext", "StudyRef", "StudyState", "new_study_uid"]
