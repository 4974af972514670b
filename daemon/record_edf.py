"""EDF+/BDF+ writer for biosignal streams (pyedflib), readable by MNE, EDFbrowser, EEGLAB.

:class:`EdfRecorder` takes the ``(channel, sample)`` frames of one or more biosignal
streams (EEG µV, EKG µV, MEG pT) and writes them as one continuous EDF+/BDF+ file: one
signal per channel (label ``<stream>:<channel>`` when several streams share the file),
1-second data records, each stream at its own sample rate. Lost samples (``gap`` messages
with ``lost_samples``) are zero-filled so the time axis stays true, and every gap is an
EDF+ annotation (``GAP <stream>: <n> samples lost (zero-filled)``).

The recorder writes a record once every stream has a full second buffered; a stream that
falls 10 s behind the others is zero-filled (and annotated) so memory stays bounded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EdfRecorder", "physical_range"]

_UNIT_ASCII = {"µV": "uV", "μV": "uV", "pT": "pT", "fT": "fT", "mV": "mV", "V": "V", "nT": "nT"}
_MAX_LAG_RECORDS = 10


def physical_range(units: str, bdf: bool) -> float:
    """Symmetric physical range (±value, in ``units``) used for a signal.

    BDF (24 bit): µV ±400 000 (0.05 µV resolution), pT ±100 000 (0.012 pT).
    EDF (16 bit): µV ±6 553.5 (0.2 µV), pT ±3 276.7 (0.1 pT)."""
    if units in ("µV", "μV", "uV"):
        return 400_000.0 if bdf else 6553.5
    if units == "pT":
        return 100_000.0 if bdf else 3276.7
    return 1e6 if bdf else 32767.0


@dataclass
class _Stream:
    name: str
    fs: int
    labels: list[str]
    units: str
    first_signal: int
    buf: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    samples_written: int = 0
    started: bool = False


class EdfRecorder:
    """Write biosignal streams to ``path`` as BDF+ (``bdf=True``, 24 bit) or EDF+ (16 bit).

    Args:
        path: output file.
        descriptors: ``{stream: descriptor dict}`` (``channel_names``, ``sample_rate_hz``
            (integer Hz), ``units``, ``shape = [channels, -1]``).
        bdf: BDF+ (default) or EDF+.
        patient, recording: header strings (EDF+ fields).
    """

    def __init__(self, path: str | os.PathLike[str], descriptors: dict[str, dict[str, Any]], bdf: bool = True,
                 patient: str = "X X X X", recording: str = "medacq") -> None:
        import pyedflib

        self.path = os.fspath(path)
        self.bdf = bdf
        self._streams: dict[str, _Stream] = {}
        headers = []
        k = 0
        several = len(descriptors) > 1
        for name, d in descriptors.items():
            fs = d.get("sample_rate_hz")
            if not fs or abs(fs - round(fs)) > 1e-9:
                raise ValueError(f"{name}: EDF needs an integer sample rate, got {fs!r}")
            nch = int(d["shape"][0])
            labels = list(d.get("channel_names") or [f"ch{i}" for i in range(nch)])
            units = str(d.get("units") or "")
            rng = physical_range(units, bdf)
            for lab in labels:
                headers.append({
                    "label": (f"{name}:{lab}" if several else lab)[:16],
                    "dimension": _UNIT_ASCII.get(units, units.encode("ascii", "replace").decode())[:8],
                    "sample_frequency": int(round(fs)),
                    "physical_max": rng, "physical_min": -rng,
                    "digital_max": 8388607 if bdf else 32767, "digital_min": -8388608 if bdf else -32768,
                    "transducer": "", "prefilter": "",
                })
            self._streams[name] = _Stream(name, int(round(fs)), labels, units, k)
            k += len(labels)
        ftype = pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS
        self._w = pyedflib.EdfWriter(self.path, k, file_type=ftype)
        self._w.setSignalHeaders(headers)
        self._w.setPatientName(patient)
        self._w.setRecordingAdditional(recording[:80])
        self._start_ns: int | None = None
        self._records = 0
        self._closed = False
        self.annotations: list[tuple[float, str]] = []

    # -- input ---------------------------------------------------------------------------
    def write_frame(self, header: dict[str, Any], array: np.ndarray) -> None:
        """Append one frame ``(channel, sample)`` of ``header["stream"]``."""
        st = self._streams.get(header["stream"])
        if st is None:
            return
        a = np.asarray(array, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != len(st.labels):
            raise ValueError(f"{st.name}: expected ({len(st.labels)}, samples), got {a.shape}")
        if self._start_ns is None:
            self._start_ns = int(header.get("t_host_ns") or time.time_ns())
            from datetime import datetime, timezone

            self._w.setStartdatetime(datetime.fromtimestamp(self._start_ns / 1e9, tz=timezone.utc).replace(tzinfo=None))
        if not st.started:
            st.started = True
            offset = int(round((int(header.get("t_host_ns") or self._start_ns) - self._start_ns) / 1e9 * st.fs))
            pad = offset - st.samples_written - st.n
            if pad > 0:
                self._fill(st, pad, f"START {st.name}: {pad} samples before the stream began (zero-filled)")
        st.buf.append(np.nan_to_num(a))
        st.n += a.shape[1]
        self._drain()

    def write_gap(self, stream: str, first_seq: int | None, count: int, lost_samples: int | None) -> None:
        """Announce lost data of ``stream``: zero-fill ``lost_samples`` and annotate."""
        st = self._streams.get(stream)
        if st is None:
            return
        what = f"frames {first_seq}..{first_seq + count - 1}" if first_seq is not None and count else ""
        n = int(lost_samples or 0)
        text = f"GAP {stream}: {n} samples lost" + (f" ({what})" if what else "") + (" (zero-filled)" if n else "")
        self._fill(st, n, text)
        self._drain()

    def _fill(self, st: _Stream, n: int, text: str) -> None:
        t = (st.samples_written + st.n) / st.fs
        self.annotations.append((t, text))
        self._w.writeAnnotation(t, -1, text)
        if n > 0:
            st.buf.append(np.zeros((len(st.labels), n)))
            st.n += n

    # -- output --------------------------------------------------------------------------
    def _drain(self) -> None:
        streams = list(self._streams.values())
        while True:
            ready = [s.n >= s.fs for s in streams]
            if all(ready):
                self._write_record()
                continue
            ahead = max(s.n / s.fs for s in streams)
            lagging = [s for s in streams if s.n < s.fs]
            if ahead >= _MAX_LAG_RECORDS and lagging:
                for s in lagging:
                    self._fill(s, s.fs - s.n, f"NODATA {s.name}: {s.fs - s.n} samples (zero-filled)")
                continue
            return

    def _take(self, st: _Stream, n: int) -> np.ndarray:
        a = np.concatenate(st.buf, axis=1) if len(st.buf) > 1 else st.buf[0]
        out, rest = a[:, :n], a[:, n:]
        st.buf = [rest] if rest.shape[1] else []
        st.n -= n
        st.samples_written += n
        return out

    def _write_record(self) -> None:
        data: list[np.ndarray] = []
        for st in self._streams.values():
            rec = self._take(st, st.fs)
            rng = physical_range(st.units, self.bdf)
            data += [np.clip(row, -rng, rng) for row in rec]
        self._w.writeSamples(data)
        self._records += 1

    def flush(self) -> None:
        """Write every complete record (the file on disk is updated by pyedflib per record)."""
        self._drain()

    def close(self) -> None:
        """Zero-pad the last partial record, write it, and close the file."""
        if self._closed:
            return
        self._closed = True
        if any(s.n for s in self._streams.values()):
            for s in self._streams.values():
                if s.n < s.fs:
                    s.buf.append(np.zeros((len(s.labels), s.fs - s.n)))
                    s.n = s.fs
            self._write_record()
        self._w.close()

    def __enter__(self) -> "EdfRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
