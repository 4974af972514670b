"""A live DICOM sink: subscribe to ``recon/...``, write DICOM as results arrive, send to a PACS.

:class:`DicomSink` is an ordinary subscriber (:class:`medacq.client.Subscriber`, QoS
``lossless``): every reconstructed frame of the chosen topics goes through
:class:`~medacq.daemon.interop.dicom.DicomWriter` with the stream's latest descriptor; complete
objects go to files and/or the durable :class:`~medacq.daemon.interop.pacs.DicomOutbox`, whose
background sender stores them while acquisition goes on. A ``series_end`` completes that series'
batched objects (cines, waveforms) at once. The study context lives only here, never on the wire.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from medacq.daemon.client.api import Subscriber
from medacq.daemon.interop.deid import deidentify
from medacq.daemon.interop.dicom import DicomExportError, DicomWriter, ReconFrame
from medacq.daemon.interop.export import write_dicom
from medacq.daemon.interop.pacs import DicomOutbox, PacsAddress
from medacq.daemon.interop.study import StudyContext

__all__ = ["DicomSink"]


class DicomSink:
    """Reconstructed frames from ZeroMQ → DICOM files / a PACS, on a thread of its own.

    Args:
        endpoints: the reconstruction stage's PUB endpoint(s).
        study: patient and study context.
        topics: topic prefixes (default every ``recon/`` stream).
        out_dir: write Part 10 files here (``<Modality>/<uid>.dcm``), or None.
        pacs, outbox_dir: C-STORE through a durable outbox in ``outbox_dir``.
        deidentify_profile, retain_dates: as :func:`~medacq.daemon.interop.export.export_recording`.
        writer: a configured :class:`DicomWriter` (default settings otherwise).
        tls: TLS client context for the PACS (required off loopback).
    """

    def __init__(self, endpoints: str | list[str], study: StudyContext, topics: str | list[str] = "recon/", *,
                 out_dir: str | os.PathLike[str] | None = None, pacs: PacsAddress | None = None,
                 outbox_dir: str | os.PathLike[str] | None = None, deidentify_profile: bool = False,
                 retain_dates: bool = False, writer: DicomWriter | None = None, curve: Any = None,
                 tls: Any = None) -> None:
        if out_dir is None and pacs is None:
            raise ValueError("a DICOM sink needs out_dir, pacs, or both")
        if pacs is not None and outbox_dir is None:
            raise ValueError("a PACS needs an outbox directory")
        self.study = study
        self.writer = writer or DicomWriter(study)
        self.out = Path(out_dir) if out_dir is not None else None
        self.outbox = DicomOutbox(outbox_dir, pacs, tls=tls) if pacs is not None and outbox_dir is not None else None
        self.deid, self.retain_dates = deidentify_profile, retain_dates
        self.sub = Subscriber(endpoints, topics, qos="lossless", curve=curve)
        self.objects = 0
        self.frames = 0
        self.rejected = 0
        self.before_descriptor = 0  # frames that came before their stream's first descriptor (not used)
        self.skipped_topics: dict[str, str] = {}
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _emit(self, objs: list[Any]) -> None:
        for ds in objs:
            if self.deid:
                deidentify(ds, retain_dates=self.retain_dates, patient_strings=self.study.patient_strings())
            if self.out is not None:
                write_dicom(ds, self.out)
            if self.outbox is not None:
                self.outbox.put(ds)
            self.objects += 1

    def poll(self, timeout_s: float = 0.2) -> None:
        """Take one message (or none within ``timeout_s``) and write what it completes."""
        msg = self.sub.recv(timeout_s)
        if msg is None:
            return
        if msg.kind == "series_end":
            self._emit(self.writer.flush_series(msg.topic, str(msg.header.get("series", ""))))
            return
        if msg.array is None or msg.topic in self.skipped_topics:
            return
        desc = self.sub.descriptors.get(msg.topic)
        if desc is None:  # joined mid-series: descriptors come every few seconds
            self.before_descriptor += 1
            return
        self.frames += 1
        try:
            self._emit(self.writer.add(ReconFrame(msg.topic, msg.header, msg.array, desc)))
        except DicomExportError as exc:
            if "no DICOM IOD" in str(exc):
                self.skipped_topics[msg.topic] = str(exc)
            else:
                self.rejected += 1
                self.last_error = str(exc)

    def start(self) -> None:
        """Run :meth:`poll` on a thread, and the outbox's sender."""
        if self.outbox is not None:
            self.outbox.start()
        self.sub.wait_connected()
        self._thread = threading.Thread(target=self._run, name="dicom-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll(0.2)
            except Exception as exc:  # noqa: BLE001 - the sink thread never dies on one bad object
                self.rejected += 1
                self.last_error = f"{type(exc).__name__}: {exc}"

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop reading, write what is still collecting, try to empty the outbox for ``drain_s``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._emit(self.writer.flush())
        if self.outbox is not None:
            self.outbox.stop(drain_s=0)
            deadline = time.monotonic() + drain_s
            self.outbox.drain(max(0.0, deadline - time.monotonic()))
        self.sub.close()

    def status(self) -> dict[str, Any]:
        """Frames used, objects made, rejected frames, frames before their descriptor, skipped topics, outbox."""
        return {"frames": self.frames, "objects": self.objects, "rejected": self.rejected,
                "before_descriptor": self.before_descriptor,
                "skipped_topics": sorted(self.skipped_topics), "last_error": self.last_error,
                "outbox": self.outbox.status() if self.outbox is not None else None}
