"""``medacq export``: DICOM files (and a PACS) from an HDF5 recording's reconstructed streams.

Reads the recording layout of ``daemon/recording/hdf5.py`` (``/recon/<stream>[.<output>]``:
``data_NNN`` blocks of ``frames``, ``seq``, ``series_index``, ``t_host_ns``; ``series/NNNN``
with the stream ``series`` uuid and its ``descriptor`` JSON), rebuilds each frame as a
:class:`~medacq.daemon.interop.dicom.ReconFrame` and runs it through
:class:`~medacq.daemon.interop.dicom.DicomWriter`. Per-frame header ``meta`` is not recorded,
so what the writer needs comes from the descriptor (geometry, channel names, rates).
Topics with no IOD (band power, heart rate, CT projections) are skipped and counted.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.filewriter import dcmwrite

from medacq.daemon.interop.deid import deidentify
from medacq.daemon.interop.dicom import DicomExportError, DicomWriter, ReconFrame
from medacq.daemon.interop.pacs import DicomOutbox, PacsAddress
from medacq.daemon.interop.study import StudyContext

__all__ = ["COPY_FORMATS", "ExportReport", "deidentified_copy", "export_recording", "recon_frames",
           "study_from_recording", "write_dicom"]

#: ``medacq export --format`` values that write a de-identified copy of the input in its own format
COPY_FORMATS = ("hdf5", "edf", "ismrmrd")


@dataclass
class ExportReport:
    """What an export did: ``files`` written (paths), ``skipped`` topics → reason, ``sent``/``pending`` PACS."""

    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    rejected_frames: int = 0
    sent: int = 0
    pending: int = 0
    pacs_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"files": len(self.files), "skipped": self.skipped, "rejected_frames": self.rejected_frames,
                "sent": self.sent, "pending": self.pending, "pacs_error": self.pacs_error}


def attr_json(group: Any, key: str) -> Any:
    """The JSON attribute ``key`` of an HDF5 recording's group, decoded (the recorder moves a long one
    into a dataset of the same name and leaves ``"(see dataset ...)"`` in the attribute)."""
    v = group.attrs.get(key)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v.startswith("(see dataset"):
        raw = group[key][()]
        v = raw.decode() if isinstance(raw, bytes) else str(raw)
    return json.loads(v) if isinstance(v, str) else v


def recon_frames(h5: Any) -> Iterator[ReconFrame]:
    """Every recorded ``recon/...`` frame of an open recording (``h5py.File``), per stream in seq order."""
    if "recon" not in h5:
        return
    for name in sorted(h5["recon"]):
        g = h5["recon"][name]
        topic = str(g.attrs.get("topic", f"recon/{name.replace('.', '/')}"))
        stream = str(g.attrs.get("stream", topic.removeprefix("recon/")))
        series = {}
        for sname in sorted(g["series"]):
            sg = g["series"][sname]
            series[int(sname)] = (str(sg.attrs.get("series", "")), attr_json(sg, "descriptor") or {})
        for bname in sorted(k for k in g if k.startswith("data_")):
            b = g[bname]
            n = int(b.attrs.get("frame_count", b["frames"].shape[0]))
            axes = json.loads(b.attrs.get("axes", "[]"))[1:]
            units = str(b.attrs.get("units", ""))
            frames, seqs, sidx = b["frames"], b["seq"][:n], b["series_index"][:n]
            t_host, t_mono = b["t_host_ns"][:n], b["t_mono_ns"][:n]
            t_dev = b["t_device"][:n] if "t_device" in b else None
            metas = b["meta"][:n] if "meta" in b else None  # per-frame header meta (recordings since session 5)
            for i in range(n):
                uuid, desc = series.get(int(sidx[i]), ("", {}))
                arr = np.asarray(frames[i])
                header = {"v": 1, "stream": stream, "kind": "frame", "series": uuid, "seq": int(seqs[i]),
                          "dtype": arr.dtype.str, "shape": list(arr.shape), "axes": axes, "units": units,
                          "t_host_ns": int(t_host[i]), "t_mono_ns": int(t_mono[i]), "meta": _meta(metas, i)}
                if t_dev is not None and np.isfinite(t_dev[i]):
                    header["t_device"] = float(t_dev[i])
                yield ReconFrame(topic, header, arr, desc or {"stream": stream, "modality": ""})


def _meta(metas: Any, i: int) -> dict[str, Any]:
    """Frame ``i``'s header meta from a block's ``meta`` dataset (``{}`` without one, or when unreadable)."""
    if metas is None:
        return {}
    raw = metas[i]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if not text:
        return {}
    try:
        m = json.loads(text)
    except ValueError:
        return {}
    return m if isinstance(m, dict) else {}


def study_from_recording(h5: Any) -> StudyContext | None:
    """The study context a recording's root attribute ``study`` holds (JSON), if any."""
    v = h5.attrs.get("study")
    if v is None:
        return None
    return StudyContext.model_validate_json(v if isinstance(v, (str, bytes)) else str(v))


def write_dicom(ds: Dataset, out_dir: Path) -> Path:
    """Write ``ds`` as ``<out_dir>/<Modality>/<SOP Instance UID>.dcm`` (Part 10 file); returns the path."""
    d = out_dir / str(ds.Modality)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{ds.SOPInstanceUID}.dcm"
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def export_recording(h5: Any, out_dir: str | os.PathLike[str] | None, study: StudyContext, *,
                     deidentify_profile: bool = False, retain_dates: bool = False, pacs: PacsAddress | None = None,
                     outbox_dir: str | os.PathLike[str] | None = None, pacs_timeout_s: float = 60.0,
                     writer: DicomWriter | None = None, tls: Any = None) -> ExportReport:
    """Export every reconstructed stream of an open recording to DICOM files and/or a PACS.

    Args:
        h5: the open recording (``h5py.File``; ``medacq.daemon.recording.hdf5.open_recording``).
        out_dir: folder for the files (``<Modality>/<SOP Instance UID>.dcm``), or None for PACS only.
        study: patient and study context.
        deidentify_profile: apply PS3.15 Basic profile (:func:`~medacq.daemon.interop.deid.deidentify`).
        retain_dates: with it, the Retain Longitudinal Temporal Information Full Dates option.
        pacs: C-STORE everything through a durable outbox in ``outbox_dir`` (default ``<out_dir>/.outbox``).
        pacs_timeout_s: how long to keep retrying; what is not sent stays in the outbox (``pending``).
        tls: TLS client context for the PACS (:func:`~medacq.daemon.interop.pacs.tls_context`);
            required off loopback.
    """
    rep = ExportReport()
    w = writer or DicomWriter(study)
    out = Path(out_dir) if out_dir is not None else None
    outbox = None
    if pacs is not None:
        box = Path(outbox_dir) if outbox_dir else (out / ".outbox" if out else None)
        if box is None:
            raise ValueError("a PACS export needs out_dir or outbox_dir (the durable outbox lives on disk)")
        outbox = DicomOutbox(box, pacs, tls=tls)
    strings = study.patient_strings()

    def emit(objs: list[Dataset]) -> None:
        for ds in objs:
            if deidentify_profile:
                deidentify(ds, retain_dates=retain_dates, patient_strings=strings)
            if out is not None:
                rep.files.append(str(write_dicom(ds, out)))
            if outbox is not None:
                outbox.put(ds)

    for frame in recon_frames(h5):
        if frame.topic in rep.skipped:
            continue
        try:
            emit(w.add(frame))
        except DicomExportError as exc:
            if frame.data.ndim and "no DICOM IOD" in str(exc):
                rep.skipped[frame.topic] = str(exc)
            else:
                rep.rejected_frames += 1
    emit(w.flush())
    if outbox is not None:
        outbox.drain(pacs_timeout_s)
        st = outbox.status()
        rep.sent, rep.pending, rep.pacs_error = int(st["sent"]), int(st["pending"]), str(st["last_error"])
    return rep


def deidentified_copy(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], deid: Any, *,
                      fmt: str | None = None, h5: Any = None) -> dict[str, Any]:
    """A de-identified copy of one recording in its own format, as ``<out_dir>/<file name>``.

    Args:
        path: an HDF5 recording, an EDF+/BDF+ file or an ISMRMRD file (:func:`~medacq.daemon.interop.
            deid_files.detect_format` tells which from its first bytes).
        out_dir: where the copy goes (created); the copy never replaces ``path``.
        deid: the export's :class:`~medacq.daemon.interop.deid.Deidentifier` (options, UID map, time offset,
            identifying strings: share it between the files of one export).
        fmt: ``hdf5``, ``edf`` (EDF+ and BDF+) or ``ismrmrd``: checked against the file (``ValueError`` when
            they differ: a copy does not convert); None accepts any.
        h5: the recording already open (``h5py.File``, recovered by ``open_recording``); HDF5 only.

    Returns what the format's function returns, with ``format``. Raises ``ValueError`` (not a file we
    know, a format mismatch), :class:`~medacq.daemon.interop.deid.DeidError` (an identifying string survived:
    no file is left).
    """
    from medacq.daemon.interop.deid_files import deidentify_edf, deidentify_hdf5, deidentify_ismrmrd, detect_format

    found = detect_format(path)
    kind = "edf" if found in ("edf", "bdf") else found
    if fmt is not None and fmt != kind:
        raise ValueError(f"{os.fspath(path)} is {found.upper()}, not {fmt}: --format {fmt} writes a de-identified "
                         f"copy in the input's own format (use --format {kind})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / Path(path).name
    if dst.exists() and dst.resolve() == Path(path).resolve():
        raise ValueError(f"the copy would replace {os.fspath(path)}: choose another --out")
    if kind == "edf":
        rep = deidentify_edf(path, dst, deid)
    elif kind == "ismrmrd":
        import h5py

        with h5py.File(os.fspath(path), "r") as f:
            rep = deidentify_ismrmrd(f, dst, deid)
    elif h5 is not None:
        rep = deidentify_hdf5(h5, dst, deid)
    else:
        import h5py

        with h5py.File(os.fspath(path), "r") as f:
            rep = deidentify_hdf5(f, dst, deid)
    return {"format": found, **rep}
