"""C-STORE to a PACS through a durable outbox on disk: a PACS that is down loses nothing.

Every object goes to disk first (:meth:`DicomOutbox.put`: written to a temporary name, fsync'd,
renamed to ``<nnnnnnnnnnnn>-<SOP Instance UID>.dcm``, the directory fsync'd), and is deleted only
after the PACS answered its C-STORE with a success or warning status. Sending (pynetdicom, one
association for a whole batch) runs on a background thread (:meth:`start`) or in the caller
(:meth:`send_pending`, :meth:`drain`); a refused association, a timeout or a failure status leaves
the files where they are and retries after a backoff that doubles from ``retry_initial_s`` to
``retry_max_s``. A process killed at any point leaves at most a temporary file (removed at the
next start) and objects that are sent again: instance UIDs are stable
(:func:`~medacq.daemon.interop.dicom.derived_uid`), so a PACS replaces a duplicate rather than
keeping two.
"""

from __future__ import annotations

import io
import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["DicomOutbox", "PacsAddress", "PacsError", "SendReport", "check_pacs_exposure", "store_files",
           "tls_context"]

log = logging.getLogger("medacq.interop.pacs")

# C-STORE statuses that mean "stored": success, and the warnings (coercion, elements discarded)
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


def _permanent(code: int) -> bool:
    """A C-STORE failure that sending again cannot cure (PS3.4 B.2.3): 0xA9xx "data set does not
    match SOP class", 0xCxxx "cannot understand"; 0xA7xx "out of resources" and the rest are retried."""
    return (code & 0xFF00) == 0xA900 or (code & 0xF000) == 0xC000
_ADDR_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class PacsError(RuntimeError):
    """The PACS could not be reached, refused the association, or refused an object."""


@dataclass(frozen=True, slots=True)
class PacsAddress:
    """A DICOM peer: called AE title, host, port (``AE@host:port``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "PacsAddress":
        """``ORTHANC@127.0.0.1:4242`` → PacsAddress. Raises ValueError with the expected form."""
        m = _ADDR_RE.match(text.strip())
        if not m or not (0 < int(m["port"]) < 65536):
            raise ValueError(f"PACS address {text!r}: expected AE@host:port (AE title <= 16 characters)")
        return cls(m["ae"], m["host"].strip("[]"), int(m["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def tls_context(ca_file: str, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A TLS client context for DICOM associations (PS3.15 B.1, the Basic TLS Secure Transport
    Connection Profile): the PACS's certificate verified against ``ca_file`` (and its host name),
    and our own certificate for a PACS that asks for one. ``ValueError`` naming the file that
    could not be read."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS for the PACS: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check_pacs_exposure(pacs: PacsAddress, tls: ssl.SSLContext | None) -> None:
    """The rule every socket of the rig follows (:func:`~medacq.daemon.common.binding.check_exposure`),
    for the associations we open: patient data leaves the machine encrypted or not at all. A PACS
    off loopback without TLS is refused (``PacsError``, one line), before anything is sent."""
    from medacq.daemon.common.binding import BindError, check_exposure

    try:
        check_exposure("send DICOM objects to", f"{pacs.host}:{pacs.port}" if ":" not in pacs.host
                       else f"[{pacs.host}]:{pacs.port}", allowed=tls is not None,
                       needs="TLS (--tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem]): DICOM objects "
                       "carry patient data")
    except BindError as exc:
        raise PacsError(str(exc)) from None


@dataclass(slots=True)
class SendReport:
    """What one send attempt did: files stored and deleted, files refused, files still waiting."""

    sent: int = 0
    refused: int = 0
    remaining: int = 0
    error: str = ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def associate(ae: Any, scp: PacsAddress, tls: ssl.SSLContext | None) -> tuple[Any, bool]:
    """``ae.associate`` with ``scp`` (TLS where ``tls`` is given); returns the association and
    whether the SCP rejected it.

    A dcmtk SCP sends its A-ASSOCIATE-RJ and closes at once; pynetdicom's reader thread can handle
    both before the requesting thread looks, which then sees a closed socket and reports an abort
    (a rejection read as "down": a CI failure, about 1 run in 3 here). The RJ PDU is therefore
    also watched for on its way in.
    """
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    seen: list[Any] = []

    def on_pdu(event: Any) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            seen.append(event.pdu)

    assoc = ae.associate(scp.host, scp.port, ae_title=scp.ae_title,
                         tls_args=(tls, scp.host) if tls is not None else None,
                         evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    return assoc, bool(assoc.is_rejected or seen)


def store_files(paths: list[Path], pacs: PacsAddress, calling_ae: str = "MEDACQ", timeout_s: float = 10.0,
                on_stored: Any = None, on_refused: Any = None, tls: ssl.SSLContext | None = None) -> SendReport:
    """C-STORE ``paths`` over one association (over TLS with ``tls``: :func:`tls_context`; a PACS off
    loopback needs it, :func:`check_pacs_exposure`); ``on_stored(path)`` after each stored object,
    ``on_refused(path, status)`` after each object the PACS refused for good (:func:`_permanent`).

    Returns a report; an unreachable PACS or a refused association is ``error`` (nothing stored),
    an object the PACS refused counts as ``refused`` and stays (its status is logged).
    """
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    rep = SendReport()
    if not paths:
        return rep
    check_pacs_exposure(pacs, tls)
    classes: dict[str, None] = {}
    for p in paths:
        try:
            classes[str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)] = None
        except Exception as exc:  # noqa: BLE001 - a corrupt file is refused, never sent
            log.warning("outbox file %s unreadable: %s", p, exc)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.requested_contexts = [build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                             for uid in list(classes)[:128]]
    assoc, rejected = associate(ae, pacs, tls)
    if not assoc.is_established:
        rep.error = f"no association with {pacs} ({'rejected' if rejected else 'unreachable or aborted'})"
        rep.remaining = len(paths)
        return rep
    try:
        for p in paths:
            if not assoc.is_established:
                rep.error = f"association with {pacs} lost"
                break
            try:
                status = assoc.send_c_store(p)
            except (ValueError, OSError, AttributeError) as exc:
                log.warning("C-STORE %s: %s", p.name, exc)
                rep.refused += 1
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in _STORED:
                rep.sent += 1
                if on_stored is not None:
                    on_stored(p)
            elif code == -1:
                rep.error = f"no C-STORE response from {pacs} (timeout or abort)"
                break
            else:
                rep.refused += 1
                log.warning("C-STORE %s refused by %s: status 0x%04X", p.name, pacs, code)
                if on_refused is not None and _permanent(code):
                    on_refused(p, code)
    finally:
        if assoc.is_established:
            assoc.release()
    rep.remaining = len(paths) - rep.sent
    return rep


class DicomOutbox:
    """A directory of DICOM objects waiting for a PACS, sent in order and deleted once stored.

    Args:
        directory: where waiting objects live (created). One outbox per directory and process.
        pacs: where to send.
        calling_ae: our AE title.
        retry_initial_s, retry_max_s: backoff after a failed attempt (doubles, capped).
        batch: objects per association.
        timeout_s: connection, ACSE and DIMSE timeouts.
        tls: TLS client context (:func:`tls_context`); required for a PACS off loopback.
    """

    def __init__(self, directory: str | os.PathLike[str], pacs: PacsAddress, calling_ae: str = "MEDACQ",
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0, batch: int = 256,
                 timeout_s: float = 10.0, durable: bool = True, tls: ssl.SSLContext | None = None) -> None:
        check_pacs_exposure(pacs, tls)  # refused at once, not at the first send
        self.tls = tls
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pacs, self.calling_ae, self.timeout_s = pacs, calling_ae, timeout_s
        self.retry_initial_s, self.retry_max_s, self.batch = retry_initial_s, retry_max_s, batch
        self.durable = durable
        for tmp in self.dir.glob(".tmp-*"):  # a put() killed before its rename: never complete
            tmp.unlink(missing_ok=True)
        existing = [int(p.name.split("-", 1)[0]) for p in self.dir.glob("*.dcm") if p.name.split("-", 1)[0].isdigit()]
        self._counter = max(existing, default=-1) + 1
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.queued = 0
        self.sent = 0
        self.refused = 0
        self.dead_letters = 0  # refused for good: moved to refused/ (see _refused_for_good)
        self.attempts = 0
        self.failed_attempts = 0
        self.last_error = ""
        self._backoff = retry_initial_s
        self.next_try_s = 0.0  # monotonic time of the next attempt after a failure

    # ---- enqueue --------------------------------------------------------------------------
    def put(self, ds: Dataset) -> Path:
        """Write one object durably into the outbox; returns its path. The sender wakes up."""
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return self.put_bytes(buf.getvalue(), str(ds.SOPInstanceUID))

    def put_bytes(self, data: bytes, sop_instance_uid: str) -> Path:
        """Write one encoded DICOM file durably (temporary name, fsync, rename, fsync of the directory)."""
        if not re.fullmatch(r"[0-9.]{1,64}", sop_instance_uid):
            raise ValueError(f"not a UID: {sop_instance_uid!r}")
        with self._lock:
            n = self._counter
            self._counter += 1
        final = self.dir / f"{n:012d}-{sop_instance_uid}.dcm"
        tmp = self.dir / f".tmp-{final.name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self.durable:
            _fsync_dir(self.dir)
        self.queued += 1
        self._wake.set()
        return final

    def pending(self) -> list[Path]:
        """Objects waiting, oldest first."""
        return sorted(self.dir.glob("*.dcm"))

    # ---- send -----------------------------------------------------------------------------
    def _stored(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.sent += 1

    def _refused_for_good(self, path: Path, code: int) -> None:
        """The PACS refused ``path`` with a status that no retry cures: moved to ``refused/``
        (kept, counted in ``dead_letters``, never sent again), so it cannot hold back the rest."""
        dead = self.dir / "refused"
        dead.mkdir(exist_ok=True)
        os.replace(path, dead / f"{path.stem}-status{code:04X}.dcm")
        if self.durable:
            _fsync_dir(self.dir)
        self.dead_letters += 1

    def send_pending(self) -> SendReport:
        """One attempt: send up to ``batch`` waiting objects over one association."""
        files = self.pending()[: self.batch]
        if not files:
            return SendReport()
        self.attempts += 1
        dead_before = self.dead_letters
        rep = store_files(files, self.pacs, self.calling_ae, self.timeout_s, on_stored=self._stored,
                          on_refused=self._refused_for_good, tls=self.tls)
        self.refused += rep.refused
        retried = rep.refused - (self.dead_letters - dead_before)  # refusals that stay in the outbox
        if rep.error or retried:
            self.failed_attempts += 1
            self.last_error = rep.error or f"{retried} object(s) refused (will retry)"
            self.next_try_s = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max_s)
        else:
            self._backoff = self.retry_initial_s
            self.next_try_s = 0.0
        rep.remaining = len(self.pending())
        return rep

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Send until the outbox is empty (True) or ``timeout_s`` passed (False), honouring the backoff."""
        deadline = time.monotonic() + timeout_s
        while self.pending():
            wait = self.next_try_s - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait > deadline:
                    return False
                time.sleep(wait)
            self.send_pending()
            if time.monotonic() > deadline:
                return not self.pending()
        return True

    # ---- background sender ----------------------------------------------------------------
    def start(self) -> None:
        """Send in a background thread: whenever objects arrive, and after each backoff."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dicom-outbox", daemon=True)
            self._thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop the sender (after trying to empty the outbox for up to ``drain_s``). Files stay on disk."""
        if drain_s > 0:
            self.drain(drain_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s * 3 + 5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.next_try_s - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                if self._stop.is_set():
                    break
                if self.next_try_s - time.monotonic() > 0:
                    self._wake.clear()
                    continue
            self._wake.clear()
            try:
                rep = self.send_pending()
            except Exception as exc:  # noqa: BLE001 - the sender thread never dies
                self.failed_attempts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.next_try_s = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, self.retry_max_s)
                continue
            if rep.remaining and not rep.error and not rep.refused:
                continue  # more than one batch waiting
            if not rep.remaining:
                self._wake.wait(1.0)

    def status(self) -> dict[str, Any]:
        """Counters: ``pending``, ``queued``, ``sent``, ``refused``, ``dead_letters`` (in ``refused/``),
        ``attempts``, ``failed_attempts``, ``last_error``."""
        return {"pacs": str(self.pacs), "pending": len(self.pending()), "queued": self.queued, "sent": self.sent,
                "refused": self.refused, "dead_letters": self.dead_letters, "attempts": self.attempts,
                "failed_attempts": self.failed_attempts,
                "last_error": self.last_error, "retry_in_s": max(0.0, round(self.next_try_s - time.monotonic(), 3))}
