"""EDF+/BDF+ writer for biosignal streams (pyedflib), readable by MNE, EDFbrowser, EEGLAB.

:class:`EdfRecorder` takes the ``(channel, sample)`` frames of one or more biosignal
streams (EEG µV, EKG µV, MEG pT) and writes them as one continuous EDF+/BDF+ file: one
signal per channel, 1-second data records, each stream at its own sample rate.

Streams are keyed by any string; :class:`~medacq.daemon.recording.recorder.Recorder` uses the topic
(``raw/eeg0`` and ``recon/eeg0`` carry the same stream name ``eeg0``). The key's display
name (:func:`stream_label`) is ``eeg0`` for ``raw/eeg0`` (and for a bare ``eeg0``) and
``recon:eeg0`` for ``recon/eeg0``; signal labels are ``<name>:<channel>`` when several
streams share the file, the bare channel name otherwise, cut to EDF's 16 characters and
kept unique.

What a stream needs (:func:`signal_spec`): ``(channel, sample)`` frames, an integer
``sample_rate_hz`` and optionally ``channel_names`` -- read from the descriptor's top level
(raw biosignal descriptors) or else from its ``meta`` (reconstruction outputs).

Time axis: a stream's first sample lands at its ``t_host_ns`` relative to the file start
(earlier samples are zero-filled, annotated ``START``). Lost samples are zero-filled so the
time axis stays true, and every loss is an EDF+ annotation ``GAP <name>: <n> samples lost
(<reason>)`` whose duration is the filled span. Losses are known from ``gap`` messages
(``lost_samples``) and, for streams whose frames carry their first sample's device index
(``meta.first_sample``, else an integer ``t_device``) from a jump of that index: a jump
up to :data:`MAX_FILL_S` seconds is filled, a longer jump or a step backwards is annotated
``DISCONTINUITY`` and not filled.

The recorder writes a record once every stream has a full second buffered; a stream that
falls 10 s behind the others is zero-filled (one merged ``NODATA`` annotation per outage)
so memory stays bounded.

EDF+ limits, handled here: an annotation text is at most 40 bytes in the file (longer ones
end in ``..``; the full text is kept in :attr:`EdfRecorder.annotations` and logged at INFO
on ``medacq.daemon.recording.edf``). Annotations are written at :meth:`EdfRecorder.close`, at
most :data:`ANNOTATION_SIGNALS` per data record; any beyond that are counted
(:attr:`EdfRecorder.annotations_dropped`) and replaced by one summary annotation. An EDF
file is complete only after ``close()`` (its header's record count and its annotations are
written then).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

__all__ = ["EdfRecorder", "EdfAnnotation", "SignalSpec", "signal_spec", "stream_label", "physical_range",
           "MAX_FILL_S", "ANNOTATION_SIGNALS"]

log = logging.getLogger("medacq.daemon.recording.edf")

_UNIT_ASCII = {"µV": "uV", "μV": "uV", "pT": "pT", "fT": "fT", "mV": "mV", "V": "V", "nT": "nT"}
_MAX_LAG_RECORDS = 10
MAX_FILL_S = 5
"""Longest device-index jump (seconds of samples) that is zero-filled; longer ones are
annotated as discontinuities (filling them would push the other streams past the lag limit)."""
ANNOTATION_SIGNALS = 4
"""EDF+ annotation signals per data record: at most this many annotations per second of recording."""
_ANNOTATION_BYTES = 40  # edflib's limit on one annotation's text
_MAX_ANNOTATIONS_KEPT = 100_000  # memory bound; beyond it annotations are only counted
LABEL_LEN = 16


def physical_range(units: str, bdf: bool) -> float:
    """Symmetric physical range (±value, in ``units``) used for a signal.

    BDF (24 bit): µV ±400 000 (0.05 µV resolution), pT ±100 000 (0.012 pT).
    EDF (16 bit): µV ±6 553.5 (0.2 µV), pT ±3 276.7 (0.1 pT)."""
    if units in ("µV", "μV", "uV"):
        return 400_000.0 if bdf else 6553.5
    if units == "pT":
        return 100_000.0 if bdf else 3276.7
    return 1e6 if bdf else 32767.0


@dataclass(frozen=True)
class SignalSpec:
    """What EDF needs of one stream: ``fs`` (integer Hz), channel ``labels``, ``units``."""

    fs: int
    labels: tuple[str, ...]
    units: str


def signal_spec(descriptor: dict[str, Any]) -> SignalSpec:
    """Resolve a stream descriptor (dict) to a :class:`SignalSpec`.

    ``sample_rate_hz`` and ``channel_names`` are read from the descriptor's top level
    (raw biosignal descriptors, :class:`~medacq.protocols.stream.StreamDescriptor` fields)
    and, where absent there, from ``meta`` (the reconstruction stage's outputs).

    Raises:
        ValueError: the stream cannot be an EDF signal (not ``(channel, sample)``, no or a
            non-integer sample rate, channel names that do not match the channel count).
    """
    meta = descriptor.get("meta") or {}

    def pick(key: str) -> Any:
        v = descriptor.get(key)
        return v if v is not None else meta.get(key)

    shape = list(descriptor.get("shape") or [])
    axes = descriptor.get("axes")
    if len(shape) != 2 or (axes is not None and list(axes) != ["channel", "sample"]):
        raise ValueError(f"frames are {list(axes) if axes else shape}, not (channel, sample)")
    nch = int(shape[0])
    if nch < 1:
        raise ValueError(f"channel count {nch}")
    fs = pick("sample_rate_hz")
    if fs is None:
        raise ValueError("descriptor has no sample_rate_hz (top level or meta)")
    fs = float(fs)
    if fs <= 0 or abs(fs - round(fs)) > 1e-9:
        raise ValueError(f"EDF needs an integer sample rate, got {fs!r}")
    names = pick("channel_names")
    labels = tuple(str(x) for x in names) if names else tuple(f"ch{i}" for i in range(nch))
    if len(labels) != nch:
        raise ValueError(f"{len(labels)} channel_names for {nch} channels")
    return SignalSpec(int(round(fs)), labels, str(descriptor.get("units") or ""))


def stream_label(key: str) -> str:
    """Display name of a stream key: ``raw/eeg0`` → ``eeg0``, ``recon/eeg0`` → ``recon:eeg0``,
    ``recon/ekg0/x`` → ``recon:ekg0.x``, a bare name stays as it is."""
    prefix, sep, rest = key.partition("/")
    if not sep:
        return key
    rest = rest.replace("/", ".")
    return rest if prefix == "raw" else f"{prefix}:{rest}"


def _ascii(text: str) -> str:
    for k, v in _UNIT_ASCII.items():
        text = text.replace(k, v)
    return text.encode("ascii", "replace").decode()


def _unique_labels(labels: list[str], size: int = LABEL_LEN) -> list[str]:
    """Cut labels to ``size`` ASCII characters; a cut that collides ends in ``~<n>``."""
    out: list[str] = []
    used: set[str] = set()
    for lab in labels:
        cand = _ascii(lab)[:size]
        k = 1
        while cand in used:
            tag = f"~{k}"
            cand = _ascii(lab)[: size - len(tag)] + tag
            k += 1
        used.add(cand)
        out.append(cand)
    return out


def _first_index(header: dict[str, Any]) -> int | None:
    """Device index of a frame's first sample: ``meta.first_sample``, else an integer
    ``t_device`` (the biosignal drivers' sample counter); ``None`` when neither."""
    v = (header.get("meta") or {}).get("first_sample")
    if v is None:
        v = header.get("t_device")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass
class EdfAnnotation:
    """One EDF+ annotation: ``onset_s`` from the file start, ``duration_s`` (-1: none), full ``text``."""

    onset_s: float
    duration_s: float
    text: str


@dataclass
class _Stream:
    key: str
    name: str
    fs: int
    labels: list[str]
    units: str
    first_signal: int
    buf: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    samples_written: int = 0
    started: bool = False
    frames: int = 0
    samples_in: int = 0
    samples_filled: int = 0
    samples_trimmed: int = 0  # samples earlier than the file start
    samples_clipped: int = 0  # values beyond the physical range
    first_index: int | None = None  # device index of the first recorded sample
    start_offset: int = 0  # file sample index of the first recorded sample
    next_index: int | None = None
    indexed: bool | None = None  # None: not yet known whether the index advances by the sample count
    pending_gap: str | None = None  # lost frames of unknown sample count: the next index tells
    nodata: EdfAnnotation | None = None

    @property
    def pos(self) -> int:
        """File sample index where the next sample of this stream goes."""
        return self.samples_written + self.n


class EdfRecorder:
    """Write biosignal streams to ``path`` as BDF+ (``bdf=True``, 24 bit) or EDF+ (16 bit).

    Args:
        path: output file.
        descriptors: ``{key: descriptor dict}``; key a stream name or a topic (see the
            module doc); each descriptor as :func:`signal_spec` reads it.
        bdf: BDF+ (default) or EDF+.
        patient: the EDF+ patient name subfield ("X": anonymous).
        recording: EDF+ "recording additional" text (at most 80 chars).
        start_ns: file start, CLOCK_REALTIME ns (default: the first frame's ``t_host_ns``).
    """

    def __init__(self, path: str | os.PathLike[str], descriptors: dict[str, dict[str, Any]], bdf: bool = True,
                 patient: str = "X", recording: str = "medacq", start_ns: int | None = None) -> None:
        import pyedflib

        self.path = os.fspath(path)
        self.bdf = bdf
        self._streams: dict[str, _Stream] = {}
        if not descriptors:
            raise ValueError("EDF needs at least one stream")
        headers = []
        k = 0
        several = len(descriptors) > 1
        raw_labels: list[str] = []
        for key, d in descriptors.items():
            try:
                spec = signal_spec(d)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
            name = stream_label(key)
            raw_labels += [f"{name}:{lab}" if several else lab for lab in spec.labels]
            rng = physical_range(spec.units, bdf)
            rng_h: float | int = int(rng) if rng == int(rng) else rng  # EDF's 8-char field: "-400000", not "-400000.0"
            for _ in spec.labels:
                headers.append({
                    "dimension": _ascii(spec.units)[:8],
                    "sample_frequency": spec.fs,
                    "physical_max": rng_h, "physical_min": -rng_h,
                    # symmetric digital range: physical 0 is digital 0 (a zero fill reads back as exactly 0)
                    "digital_max": 8388607 if bdf else 32767, "digital_min": -8388607 if bdf else -32767,
                    "transducer": "", "prefilter": "",
                })
            self._streams[key] = _Stream(key, name, spec.fs, list(spec.labels), spec.units, k)
            k += len(spec.labels)
        for h, lab in zip(headers, _unique_labels(raw_labels)):
            h["label"] = lab
        self.labels: list[str] = [h["label"] for h in headers]
        ftype = pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS
        self._w = pyedflib.EdfWriter(self.path, k, file_type=ftype)
        try:
            self._w.setSignalHeaders(headers)
            self._w.set_number_of_annotation_signals(ANNOTATION_SIGNALS)
            self._w.setPatientName(patient)
            self._w.setRecordingAdditional(_ascii(recording).replace(" ", "_")[:80])  # EDF+: no spaces in a subfield
        except Exception:
            self._w.close()
            raise
        self._start_ns: int | None = None
        self._records = 0
        self.closed = False
        self.annotations: list[EdfAnnotation] = []
        self.annotations_dropped = 0
        if start_ns is not None:
            self._set_start(int(start_ns))

    # -- info ----------------------------------------------------------------------------
    @property
    def records(self) -> int:
        """Data records (seconds) written so far."""
        return self._records

    @property
    def start_ns(self) -> int | None:
        """File start, CLOCK_REALTIME ns (``None`` until the first frame when not given)."""
        return self._start_ns

    def stream_info(self) -> dict[str, dict[str, Any]]:
        """Per key: ``name``, ``fs``, ``labels``, ``frames``, ``samples`` (received), ``samples_filled``
        (zero-filled), ``samples_trimmed`` (before the file start), ``samples_clipped`` (values
        beyond the physical range), ``first_index`` (device index
        of the first recorded sample, when frames carry one) and ``start_offset`` (its file sample index)."""
        return {k: {"name": s.name, "fs": s.fs, "labels": self.labels[s.first_signal:s.first_signal + len(s.labels)],
                    "frames": s.frames, "samples": s.samples_in, "samples_filled": s.samples_filled,
                    "samples_trimmed": s.samples_trimmed, "samples_clipped": s.samples_clipped,
                    "first_index": s.first_index,
                    "start_offset": s.start_offset}
                for k, s in list(self._streams.items())}

    # -- input ---------------------------------------------------------------------------
    def _set_start(self, ns: int) -> None:
        self._start_ns = ns
        self._w.setStartdatetime(datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).replace(tzinfo=None))

    def write_frame(self, header: dict[str, Any], array: np.ndarray, key: str | None = None) -> None:
        """Append one frame ``(channel, sample)`` of stream ``key`` (default ``header["stream"]``).

        Unknown keys are ignored. Raises ``ValueError`` when the channel count does not
        match the stream's descriptor."""
        st = self._streams.get(header["stream"] if key is None else key)
        if st is None:
            return
        a = np.asarray(array, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != len(st.labels):
            raise ValueError(f"{st.name}: expected ({len(st.labels)}, samples), got {a.shape}")
        idx = _first_index(header)
        t_host = int(header.get("t_host_ns") or 0) or None
        if self._start_ns is None:
            self._set_start(t_host or time.time_ns())
        assert self._start_ns is not None
        if not st.started:
            at = int(round(((t_host or self._start_ns) - self._start_ns) / 1e9 * st.fs))
            if at < st.pos:  # began before the file: keep what is inside it
                cut = min(st.pos - at, a.shape[1])
                a = a[:, cut:]
                st.samples_trimmed += cut
                if idx is not None:
                    idx += cut
                if not a.shape[1]:
                    return
            elif at > st.pos:
                pad = at - st.pos
                self._fill(st, pad, f"START {st.name}: {pad} samples zero-filled")
            st.started = True
            st.first_index, st.start_offset = idx, st.pos
        elif idx is not None and st.next_index is not None:
            if st.indexed is None:  # a sample index advances by the sample count (a clock would not)
                st.indexed = idx == st.next_index
            elif st.indexed and idx != st.next_index:
                self._index_jump(st, idx)
        if st.pending_gap is not None:  # lost frames, yet no index jump (or no index) to count samples
            what = "0 samples" if st.indexed else "unknown samples"
            self._annotate(st.pos / st.fs, -1, f"GAP {st.name}: {what} lost ({st.pending_gap})")
            st.pending_gap = None
        st.next_index = None if idx is None else idx + a.shape[1]
        st.buf.append(np.nan_to_num(a))
        st.n += a.shape[1]
        st.frames += 1
        st.samples_in += a.shape[1]
        self._drain()

    def _index_jump(self, st: _Stream, idx: int) -> None:
        assert st.next_index is not None
        jump = idx - st.next_index
        why = st.pending_gap or f"sample index jumped {st.next_index - 1}->{idx}"
        st.pending_gap = None
        if 0 < jump <= MAX_FILL_S * st.fs:
            self._fill(st, jump, f"GAP {st.name}: {jump} samples lost ({why})")
        else:
            self._annotate(st.pos / st.fs, -1, f"DISCONTINUITY {st.name}: sample index {st.next_index}->{idx}, "
                                               f"not filled ({why})")

    def write_gap(self, stream: str, first_seq: int | None = None, count: int = 0, lost_samples: int | None = None,
                  reason: str = "") -> None:
        """Announce lost data of stream ``stream`` (a key): zero-fill ``lost_samples`` and annotate.

        ``first_seq``/``count``: the lost frames, if any. With ``lost_samples`` unknown and a
        stream whose frames carry a sample index, the next frame's index says how many
        samples to fill; otherwise the gap is annotated without filling."""
        st = self._streams.get(stream)
        if st is None:
            return
        what = f"frames {first_seq}..{first_seq + count - 1}" if first_seq is not None and count else ""
        why = "; ".join(x for x in (reason, what) if x)
        if not st.started:  # the stream's START fill (from its first frame's clock) covers it
            self._annotate(st.pos / st.fs, -1, f"GAP {st.name}: {lost_samples if lost_samples is not None else '?'}"
                                               f" samples lost before its first sample ({why})")
            return
        if lost_samples is None:
            why = why or f"{count} frames lost"
            if st.indexed is not False and st.next_index is not None:
                st.pending_gap = why if st.pending_gap is None else f"{st.pending_gap}; {why}"
            else:
                self._annotate(st.pos / st.fs, -1, f"GAP {st.name}: unknown samples lost ({why})")
            return
        n = int(lost_samples)
        if st.next_index is not None:
            st.next_index += n  # the next frame's index is expected past the loss
        if 0 < n <= MAX_FILL_S * st.fs:
            self._fill(st, n, f"GAP {st.name}: {n} samples lost" + (f" ({why})" if why else ""))
        else:
            self._annotate(st.pos / st.fs, -1, f"GAP {st.name}: {n} samples lost"
                                               + (", not filled" if n else "") + (f" ({why})" if why else ""))
        self._drain()

    def add_annotation(self, text: str, onset_s: float | None = None, duration_s: float = -1) -> None:
        """Add a free-text annotation (default onset: the end of the data so far)."""
        if onset_s is None:
            onset_s = max((s.pos / s.fs for s in self._streams.values()), default=0.0)
        self._annotate(onset_s, duration_s, text)

    def _annotate(self, onset_s: float, duration_s: float, text: str) -> EdfAnnotation | None:
        log.info("%s @ %.3f s: %s", os.path.basename(self.path), onset_s, text)
        if len(self.annotations) >= _MAX_ANNOTATIONS_KEPT:
            self.annotations_dropped += 1
            return None
        a = EdfAnnotation(onset_s, duration_s, text)
        self.annotations.append(a)
        return a

    def _fill(self, st: _Stream, n: int, text: str) -> None:
        self._annotate(st.pos / st.fs, n / st.fs, text)
        if n > 0:
            st.buf.append(np.zeros((len(st.labels), n)))
            st.n += n
            st.samples_filled += n

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
                    self._nodata(s, s.fs - s.n)
                continue
            return

    def _nodata(self, st: _Stream, n: int) -> None:
        """Zero-fill a stream that fell behind; consecutive fills share one annotation."""
        onset = st.pos / st.fs
        a = st.nodata
        if a is not None and abs(a.onset_s + a.duration_s - onset) < 1e-9:  # the same outage goes on
            a.duration_s += n / st.fs
            a.text = f"NODATA {st.name}: {round(a.duration_s * st.fs)} samples zero-filled"
        else:
            st.nodata = self._annotate(onset, n / st.fs, f"NODATA {st.name}: {n} samples zero-filled")
        st.buf.append(np.zeros((len(st.labels), n)))
        st.n += n
        st.samples_filled += n

    def _take(self, st: _Stream, n: int) -> np.ndarray:
        a = np.concatenate(st.buf, axis=1) if len(st.buf) > 1 else st.buf[0]
        out, rest = a[:, :n], a[:, n:]
        st.buf = [rest] if rest.shape[1] else []
        st.n -= n
        st.samples_written += n
        return out

    def _write_record(self) -> None:
        """One data record; physical values are rounded to the nearest digital step (pyedflib's
        own conversion truncates), values beyond the physical range are clipped and counted."""
        data: list[np.ndarray] = []
        dmax = 8388607 if self.bdf else 32767
        for st in self._streams.values():
            rec = self._take(st, st.fs)
            rng = physical_range(st.units, self.bdf)
            st.samples_clipped += int(np.count_nonzero(np.abs(rec) > rng))
            dig = np.round(np.clip(rec, -rng, rng) * (dmax / rng)).astype(np.int32)
            data += list(dig)
        self._w.writeSamples(data, digital=True)
        self._records += 1

    def flush(self) -> None:
        """Write every complete record (the file on disk is updated by pyedflib per record)."""
        self._drain()

    def _write_annotations(self) -> None:
        capacity = self._records * ANNOTATION_SIGNALS
        anns = sorted(self.annotations, key=lambda a: a.onset_s)
        if len(anns) > capacity:
            keep = max(0, capacity - 1)
            self.annotations_dropped += len(anns) - keep
            anns = anns[:keep]
            if capacity:
                anns.append(EdfAnnotation(anns[-1].onset_s if anns else 0.0, -1,
                                          f"{self.annotations_dropped} more annotations not stored"))
            log.warning("%s: %d annotations do not fit in %d records (%d per record); not stored",
                        self.path, self.annotations_dropped, self._records, ANNOTATION_SIGNALS)
        for a in anns:
            text = _ascii(a.text)
            if len(text) > _ANNOTATION_BYTES:  # edflib keeps 40 bytes; ".." says it was cut
                text = text[:_ANNOTATION_BYTES - 2] + ".."
            self._w.writeAnnotation(max(0.0, a.onset_s), a.duration_s if a.duration_s > 0 else -1, text)

    def close(self) -> None:
        """Write what is buffered (the last partial record zero-padded; a stream that ended
        earlier than the others zero-filled with a ``NODATA`` annotation), the annotations,
        and close the file.

        The file is closed even when writing the last record or the annotations fails (the
        error is raised after closing)."""
        if self.closed:
            return
        self.closed = True
        try:
            streams = list(self._streams.values())
            if any(s.n for s in streams):  # every buffered second is written, up to the longest stream
                end = max(-(-s.pos // s.fs) for s in streams)  # records
                for s in streams:
                    if s.pos <= (end - 1) * s.fs:  # this stream ended a record or more earlier
                        self._nodata(s, (end - 1) * s.fs - s.pos)
                    pad = end * s.fs - s.pos  # the last record's padding
                    if pad:
                        s.buf.append(np.zeros((len(s.labels), pad)))
                        s.n += pad
                self._drain()
            self._write_annotations()
        finally:
            self._w.close()

    def __enter__(self) -> "EdfRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
