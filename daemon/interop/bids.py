"""A BIDS-style folder of an HDF5 recording's EEG streams (the raw biosignals, as the amplifier sent them).

Layout (BIDS 1.9, EEG)::

    OUT/dataset_description.json
    OUT/participants.tsv
    OUT/sub-<S>/ses-<E>/sub-<S>_ses-<E>_scans.tsv
    OUT/sub-<S>/ses-<E>/eeg/sub-<S>_ses-<E>_task-<T>[_acq-<stream>]_eeg.edf       EDF+ (16 bit)
    OUT/sub-<S>/ses-<E>/eeg/sub-<S>_ses-<E>_task-<T>[_acq-<stream>]_eeg.json      sidecar
    OUT/sub-<S>/ses-<E>/eeg/sub-<S>_ses-<E>_task-<T>[_acq-<stream>]_channels.tsv  one row per EDF signal

One EDF per ``raw/<stream>`` of modality ``eeg`` (``acq-<stream>`` when there are several),
written by :class:`~medacq.daemon.recording.edf.EdfRecorder` (so gaps are zero-filled and
annotated exactly as a live EDF recording does). The subject, session and task labels are
arguments (the patient id never becomes a file name: BIDS folders travel to research groups).
``PowerLineFrequency`` and ``EEGReference`` are rig facts the stream does not carry: arguments.
MEG (``meg`` streams) is not written: BIDS-MEG takes only the vendors' formats (FIF, CTF ...),
not EDF; such streams are listed in ``skipped``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medacq import __version__ as _medacq_version
from medacq.daemon.interop.export import attr_json

__all__ = ["BidsReport", "export_bids", "raw_streams", "BIDS_VERSION"]

BIDS_VERSION = "1.9.0"
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


class EdfWriter(Protocol):
    """What :class:`~medacq.daemon.recording.edf.EdfRecorder` offers (interop may not import the
    recording package: the caller passes the class in)."""

    labels: list[str]

    def write_frame(self, header: dict[str, Any], array: np.ndarray, key: str | None = None) -> None: ...

    def close(self) -> None: ...

    @property
    def records(self) -> int: ...

    @property
    def start_ns(self) -> int | None: ...


@dataclass
class BidsReport:
    """What the BIDS export wrote: ``files`` (paths), ``skipped`` streams → reason."""

    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"bids_files": len(self.files), "skipped": self.skipped}


def raw_streams(h5: Any) -> dict[str, dict[str, Any]]:
    """``{stream: first series' descriptor}`` of every ``/raw/<stream>`` of an open recording."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(h5.get("raw", {})):
        g = h5["raw"][name]
        ser = g.get("series")
        if ser is None or not len(ser):
            continue
        out[str(g.attrs.get("stream", name))] = attr_json(ser[sorted(ser)[0]], "descriptor") or {}
    return out


def _frames(h5: Any, stream: str) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """``(header, (channel, sample) array)`` of one raw stream, in recorded order, block by block."""
    g = h5["raw"][stream]
    for bname in sorted(k for k in g if k.startswith("data_")):
        b = g[bname]
        n = int(b.attrs.get("frame_count", b["frames"].shape[0]))
        seqs, t_host = b["seq"][:n], b["t_host_ns"][:n]
        t_dev = b["t_device"][:n] if "t_device" in b else np.full(n, np.nan)
        for i in range(n):
            h = {"stream": stream, "seq": int(seqs[i]), "t_host_ns": int(t_host[i]), "meta": {},
                 "t_device": None if not np.isfinite(t_dev[i]) else float(t_dev[i])}
            yield h, np.asarray(b["frames"][i])


def _tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def export_bids(h5: Any, out_dir: str | os.PathLike[str], edf_writer: Callable[..., EdfWriter], *,
                subject: str = "01", session: str = "01",
                task: str = "recording", line_freq_hz: float | None = 50.0, eeg_reference: str = "n/a",
                dataset_name: str = "medacq recording") -> BidsReport:
    """Write the recording's EEG streams as a BIDS-style folder (module doc).

    Args:
        h5: the open recording (``h5py.File``).
        edf_writer: :class:`~medacq.daemon.recording.edf.EdfRecorder` (called as
            ``edf_writer(path, {stream: descriptor}, bdf=False, recording=...)``).
        out_dir: the BIDS root (created; an existing ``dataset_description.json`` is kept).
        subject, session, task: BIDS labels (letters and digits only).
        line_freq_hz: ``PowerLineFrequency`` (50 or 60 Hz; None writes ``n/a``).
        eeg_reference: ``EEGReference`` (e.g. ``SRB2`` for a Cyton with the default montage).
    """
    for what, label in (("subject", subject), ("session", session), ("task", task)):
        if not _LABEL.match(label):
            raise ValueError(f"BIDS {what} label {label!r}: letters and digits only")
    rep = BidsReport()
    root = Path(out_dir)
    eeg = {s: d for s, d in raw_streams(h5).items() if d.get("modality") == "eeg"}
    for s, d in raw_streams(h5).items():
        if d.get("modality") == "meg":
            rep.skipped[f"raw/{s}"] = "MEG: BIDS-MEG takes vendor formats (FIF, CTF ...), not EDF"
    if not eeg:
        rep.skipped.setdefault("raw/", "no EEG stream in the recording")
        return rep
    ses_dir = root / f"sub-{subject}" / f"ses-{session}"
    (ses_dir / "eeg").mkdir(parents=True, exist_ok=True)
    desc_path = root / "dataset_description.json"
    if not desc_path.exists():
        desc_path.write_text(json.dumps({
            "Name": dataset_name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
            "GeneratedBy": [{"Name": "medacq", "Version": _medacq_version}]}, indent=2) + "\n")
        rep.files.append(str(desc_path))
    part = root / "participants.tsv"
    if not part.exists():
        _tsv(part, [{"participant_id": f"sub-{subject}"}])
        rep.files.append(str(part))
    scans = []
    for stream, d in eeg.items():
        acq = f"_acq-{re.sub(r'[^A-Za-z0-9]', '', stream)}" if len(eeg) > 1 else ""
        base = f"sub-{subject}_ses-{session}_task-{task}{acq}"
        edf_path = ses_dir / "eeg" / f"{base}_eeg.edf"
        try:
            rec = edf_writer(edf_path, {stream: d}, bdf=False, recording=f"medacq {stream}")
        except ValueError as exc:  # not (channel, sample), no integer rate ...
            rep.skipped[f"raw/{stream}"] = str(exc)
            continue
        try:
            for h, arr in _frames(h5, stream):
                rec.write_frame(h, arr, key=stream)
        finally:
            rec.close()
        labels = list(rec.labels)
        fs = float(d.get("sample_rate_hz") or (d.get("meta") or {}).get("sample_rate_hz") or 0)
        fs_out: float | int = int(fs) if fs == int(fs) else fs
        duration = rec.records  # 1-second data records
        u = str(d.get("units") or "")
        units = "µV" if u in ("µV", "μV", "uV") else u
        sidecar = {
            "TaskName": task, "SamplingFrequency": fs_out,
            "PowerLineFrequency": line_freq_hz if line_freq_hz is not None else "n/a",
            "EEGReference": eeg_reference, "SoftwareFilters": "n/a", "HardwareFilters": "n/a",
            "Manufacturer": str(d.get("device", "")) or "n/a", "EEGChannelCount": len(labels),
            "ECGChannelCount": 0, "EMGChannelCount": 0, "EOGChannelCount": 0, "MiscChannelCount": 0,
            "TriggerChannelCount": 0, "RecordingDuration": float(duration), "RecordingType": "continuous",
            "SoftwareVersions": f"medacq {_medacq_version}",
        }
        (ses_dir / "eeg" / f"{base}_eeg.json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
        _tsv(ses_dir / "eeg" / f"{base}_channels.tsv",
             [{"name": lab, "type": "EEG", "units": units, "low_cutoff": "n/a", "high_cutoff": "n/a",
               "sampling_frequency": fs_out, "status": "good"} for lab in labels])
        rep.files += [str(edf_path), str(ses_dir / "eeg" / f"{base}_eeg.json"),
                      str(ses_dir / "eeg" / f"{base}_channels.tsv")]
        if rec.start_ns is not None:
            import datetime as _dt

            t = _dt.datetime.fromtimestamp(rec.start_ns / 1e9, tz=_dt.timezone.utc)
            scans.append({"filename": f"eeg/{edf_path.name}", "acq_time": t.strftime("%Y-%m-%dT%H:%M:%S")})
        else:
            scans.append({"filename": f"eeg/{edf_path.name}", "acq_time": "n/a"})
    if scans:
        p = ses_dir / f"sub-{subject}_ses-{session}_scans.tsv"
        _tsv(p, scans)
        rep.files.append(str(p))
    return rep
