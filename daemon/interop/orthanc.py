"""A throw-away Orthanc PACS on loopback ports, for tests and ``medacq bench dicom``.

:class:`OrthancProcess` writes a JSON configuration (temporary storage and index, given DICOM
and HTTP ports, remote access off, no plugins), starts ``/usr/sbin/Orthanc`` (Debian package
``orthanc``), waits until its REST API answers, and stops it with SIGTERM. :meth:`stop` and
:meth:`start` again on the same storage simulate a PACS outage. The REST helpers read back what
arrived (``/instances``, ``/instances/<id>/simplified-tags``, ``/file``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ORTHANC_BIN", "OrthancProcess", "orthanc_available"]

ORTHANC_BIN = os.environ.get("MEDACQ_ORTHANC", "/usr/sbin/Orthanc")


def orthanc_available() -> bool:
    """Whether the Orthanc binary is installed (Debian: ``apt-get install orthanc``)."""
    return os.access(ORTHANC_BIN, os.X_OK) or shutil.which("Orthanc") is not None


class OrthancProcess:
    """One Orthanc server: ``ORTHANC@127.0.0.1:<dicom_port>``, REST on ``http://127.0.0.1:<http_port>``.

    Args:
        workdir: holds the configuration, the storage and the index (kept across stop/start).
        dicom_port, http_port: free loopback ports (Orthanc 1.10 binds the DICOM port on every
            interface; it accepts only the AE titles it is configured for when ``check_aet``).
        ae_title: Orthanc's own AE title.
    """

    def __init__(self, workdir: str | os.PathLike[str], dicom_port: int, http_port: int,
                 ae_title: str = "ORTHANC") -> None:
        self.workdir = Path(workdir)
        self.dicom_port, self.http_port, self.ae_title = dicom_port, http_port, ae_title
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / "orthanc.json"
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medacq-test", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"), "DicomAet": ae_title, "DicomPort": dicom_port,
            "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True, "Plugins": [], "HttpServerEnabled": True,
            "DicomServerEnabled": True, "StorageCompression": False, "SaveJobs": False,
            "ConcurrentJobs": 1, "HttpThreadsCount": 4, "StableAge": 1,
            "OverwriteInstances": True, "StorageAccessOnFind": "Never",
        }
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        """``AE@host:port`` for :class:`~medacq.daemon.interop.pacs.PacsAddress`."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Orthanc and wait until its REST API answers ``/system``."""
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([ORTHANC_BIN, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer on {self.url} within {timeout_s} s")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM Orthanc (our own child, by pid) and wait; SIGKILL if it does not go."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def __enter__(self) -> "OrthancProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- REST ------------------------------------------------------------------------------
    def get_bytes(self, path: str, timeout_s: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout_s) as r:
            data: bytes = r.read()
            return data

    def get(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def delete(self, path: str) -> None:
        req = urllib.request.Request(self.url + path, method="DELETE")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        ids: list[str] = self.get("/instances")
        return ids

    def tags(self, instance_id: str) -> dict[str, Any]:
        """``/instances/<id>/simplified-tags``: keyword → value."""
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def file(self, instance_id: str) -> bytes:
        """The stored DICOM file."""
        return self.get_bytes(f"/instances/{instance_id}/file")

    def clear(self) -> None:
        """Delete every patient (and so every instance)."""
        for pid in self.get("/patients"):
            self.delete(f"/patients/{pid}")
