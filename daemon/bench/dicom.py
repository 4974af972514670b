"""``medacq bench dicom``: DICOM export and C-STORE throughput against dcmtk's ``storescu``, a PACS outage.

One run, one throw-away Orthanc (``/usr/sbin/Orthanc`` on free loopback ports, temporary storage):

* ``files_per_s``: 80 512 × 512 CT slices (float32 µ, 1/mm, as ``recon/<ct>/slice`` publishes them)
  → :class:`~medacq.daemon.interop.dicom.DicomWriter` → Part 10 files on disk.
* ``cstore_per_s``: those files C-STOREd to Orthanc by medacq (pynetdicom, one association,
  :func:`~medacq.daemon.interop.pacs.store_files`); ``storescu_per_s``: the same files by dcmtk
  ``storescu`` (one association) to the same Orthanc. Interleaved, ``--repeat`` times, the PACS
  emptied before each, median; ``cstore_vs_storescu`` = ratio (bar >= 0.5). Orthanc's storage
  and index live in ``/dev/shm``, so its disk syncs do not set both figures.
* ``outbox_per_s``: the durable path (fsync'd put into the outbox, then drained).
* ``lost_in_outage``: Orthanc stopped, objects put into the outbox while the background sender
  retries, Orthanc restarted: instances that never arrive (bar 0).
* ``dciodvfy_errors``: dciodvfy errors over one object of every kind (DX, XA, CT, US, ECG, EEG,
  EIT and thermal SC, MR, PET, NM, VL Endoscopic, VL Photographic) and the first CT files (bar 0);
  ``dciodvfy_errors_by_iod`` per IOD key. Debian's dicom3tools has no Routine Scalp EEG table; that object is checked as
  General ECG (same modules) and listed in ``dciodvfy_no_iod_table``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_dicom", "print_result"]


def _dciodvfy(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [x for x in (r.stdout + r.stderr).splitlines() if x.startswith("Error")]


def bench_dicom(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import pydicom

    from medacq.daemon.bench.runner import free_ports
    from medacq.daemon.interop import samples
    from medacq.daemon.interop.dicom import SOP_CLASSES, DicomWriter
    from medacq.daemon.interop.export import write_dicom
    from medacq.daemon.interop.orthanc import OrthancProcess, orthanc_available
    from medacq.daemon.interop.pacs import DicomOutbox, PacsAddress, store_files
    from medacq.daemon.interop.study import StudyContext

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one INFO line per C-STORE otherwise
    n = int(getattr(args, "dicom_files", 0) or 80)
    repeat = max(1, min(int(getattr(args, "repeat", 3) or 3), 5))
    study = StudyContext(patient_id="BENCH", patient_name="Bench^Phantom", accession_number="B1")
    res: dict[str, Any] = {"files": n, "slice": "512x512 CT, int16 HU", "repeat": repeat}
    with tempfile.TemporaryDirectory(prefix="medacq-bench-dicom-") as tmp:
        root = Path(tmp)
        frames = samples.ct_slices(n=n, size=512, pixel_mm=0.5)
        w = DicomWriter(study)
        t0 = time.perf_counter()
        files = [write_dicom(ds, root / "files") for f in frames for ds in w.add(f)]
        res["files_per_s"] = round(n / (time.perf_counter() - t0), 1)
        res["mb_per_file"] = round(files[0].stat().st_size / 1e6, 3)
        del frames

        # validity
        errors, no_table = 0, []
        check = [files[0], files[-1]]
        w2 = DicomWriter(study, us_cine_frames=8, radiopharmaceutical="Fluorodeoxyglucose F^18^",
                         injected_dose_bq=3.7e8, injection_time_ns=samples.T0_NS - 3_600_000_000_000)
        kinds = [ds for f in samples.every_kind() + samples.family_kinds() for ds in w2.add(f)] + w2.flush()
        iod_names = {str(uid): key for key, uid in SOP_CLASSES.items()}
        by_iod: dict[str, int] = {}
        checked_iod: list[tuple[Path, str]] = []
        for k, ds in enumerate(kinds):
            checked_iod.append((root / "kinds" / f"{k:02d}.dcm", iod_names.get(str(ds.SOPClassUID), "?")))
            if str(ds.SOPClassUID) == SOP_CLASSES["EEG"]:
                no_table.append("EEG (Routine Scalp EEG): checked as General ECG")
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES["ECG"]
                ds.Modality = "ECG"
            p = root / "kinds" / f"{k:02d}.dcm"
            p.parent.mkdir(exist_ok=True)
            pydicom.dcmwrite(p, ds, enforce_file_format=True)
            check.append(p)
        if shutil.which("dciodvfy"):
            iod_of_path = {p: key for p, key in checked_iod}
            for p in check:
                e = len(_dciodvfy(p))
                errors += e
                key = iod_of_path.get(p, "CT")
                by_iod[key] = by_iod.get(key, 0) + e
            res["dciodvfy_errors"] = errors
            res["dciodvfy_errors_by_iod"] = dict(sorted(by_iod.items()))
            res["dciodvfy_checked"] = len(check)
            res["dciodvfy_no_iod_table"] = no_table
        else:
            res["dciodvfy_errors"] = None
            res["dciodvfy_skipped"] = "dciodvfy not installed (dicom3tools)"

        if not orthanc_available():
            res["skipped"] = "Orthanc not installed (Debian package orthanc): no C-STORE figures"
            return res
        dport, hport = free_ports(2)
        # the PACS's storage and SQLite index in memory (/dev/shm where there is one): the figure is
        # about the sending side, not about this machine's disk syncs under Orthanc's index
        shm = Path("/dev/shm")
        pacs_dir = Path(tempfile.mkdtemp(prefix="medacq-orthanc-", dir=shm if shm.is_dir() else root))
        orthanc = OrthancProcess(pacs_dir, dport, hport)
        orthanc.start()
        try:
            addr = PacsAddress.parse(orthanc.address)
            ours, theirs = [], []
            storescu = shutil.which("storescu")
            for _ in range(repeat):
                orthanc.clear()
                t0 = time.perf_counter()
                rep = store_files(files, addr, timeout_s=30)
                dt = time.perf_counter() - t0
                if rep.sent != n:
                    raise RuntimeError(f"pynetdicom stored {rep.sent}/{n}: {rep.error}")
                ours.append(n / dt)
                if storescu:
                    orthanc.clear()
                    t0 = time.perf_counter()
                    r = subprocess.run([storescu, "-aec", addr.ae_title, "-aet", "STORESCU", addr.host, str(addr.port),
                                        *map(str, files)], capture_output=True, text=True, timeout=300)
                    dt = time.perf_counter() - t0
                    if r.returncode != 0:
                        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
                    theirs.append(n / dt)
            res["cstore_per_s"] = round(statistics.median(ours), 1)
            res["cstore_runs"] = [round(x, 1) for x in ours]
            if theirs:
                res["storescu_per_s"] = round(statistics.median(theirs), 1)
                res["storescu_runs"] = [round(x, 1) for x in theirs]
                res["cstore_vs_storescu"] = round(res["cstore_per_s"] / res["storescu_per_s"], 3)
                res["bar_cstore_vs_storescu"] = 0.5
            else:
                res["storescu_per_s"] = None
                res["storescu_skipped"] = "storescu not installed (Debian package dcmtk)"

            # durable path: fsync'd puts, then drained over one association per batch
            orthanc.clear()
            box = DicomOutbox(root / "outbox", addr, batch=256)
            payloads = [(p.read_bytes(), p.stem) for p in files]
            t0 = time.perf_counter()
            for data, uid in payloads:
                box.put_bytes(data, uid)
            put_s = time.perf_counter() - t0
            ok = box.drain(120)
            dt = time.perf_counter() - t0
            res["outbox_put_per_s"] = round(n / put_s, 1)
            res["outbox_per_s"] = round(n / dt, 1) if ok else None

            # outage: stop the PACS, keep exporting, start it again
            orthanc.clear()
            m = min(n, 100)
            orthanc.stop()
            box = DicomOutbox(root / "outbox-outage", addr, retry_initial_s=0.2, retry_max_s=1.0, timeout_s=3)
            box.start()
            for data, uid in payloads[:m // 2]:
                box.put_bytes(data, uid)
            time.sleep(1.0)
            failed = box.status()["failed_attempts"]
            orthanc.start()
            for data, uid in payloads[m // 2:m]:
                box.put_bytes(data, uid)
            deadline = time.monotonic() + 60
            while box.pending() and time.monotonic() < deadline:
                time.sleep(0.05)
            box.stop()
            arrived = {orthanc.tags(i)["SOPInstanceUID"] for i in orthanc.instances()}
            sent = {uid.split("-", 1)[-1] for _, uid in payloads[:m]}
            res["outage"] = {"objects": m, "failed_attempts_while_down": failed, "arrived": len(arrived & sent)}
            res["lost_in_outage"] = len(sent - arrived)
        finally:
            orthanc.stop()
            shutil.rmtree(pacs_dir, ignore_errors=True)
    res["passed"] = bool(res.get("dciodvfy_errors") in (0, None) and res.get("lost_in_outage", 0) == 0
                         and (res.get("cstore_vs_storescu") or 1.0) >= 0.5)
    return res


def print_result(res: dict[str, Any]) -> None:
    for k, v in res.items():
        print(f"{k}: {v}")

