"""HDF5 recordings: the writer, and opening / checking a recording (recovering it first).

The writer buffers the frames of one flush interval and appends them at each checkpoint through
:class:`~medacq.daemon.recording.wal.CheckpointedFile`, so the file on disk is always one an HDF5 reader opens
once its recorder has stopped (or died). While it records, the recorder holds an exclusive ``flock``
on it, which HDF5's own file locking meets: :func:`open_recording` and :func:`check_recording` then
raise :class:`RecordingBusyError` (live reading is not supported).

Crash consistency (see ``docs/operations.md``): HDF5 updates its metadata in place and
is not crash-safe by itself. The h5py file here does not write to the recording directly:
it writes through :class:`CheckpointedFile`, a file object that keeps every change made
since the last checkpoint in memory. A checkpoint (``h5py.File.flush()`` then
:meth:`CheckpointedFile.commit`) writes the new tail of the file past its old end (which
HDF5 ignores until the superblock points there), then a write-ahead log ``<file>.wal``
with every in-place change and a CRC'd commit record, then applies those changes and
deletes the log. So at any instant the recording on disk is the byte-exact image of the
file after some ``H5Fflush`` (what a reader finds after a crash), except during the few
milliseconds of step "apply", when a committed log exists and :func:`recover` (run by
:func:`open_recording`, ``medacq record --check`` and every recorder at start) replays it.
Every count (``frame_count`` of a data block, ``frames`` of a stream) is written in the
same checkpoint as the frames it counts, so counts always match contents.

Layout (NeXus-style; ``/raw/<stream>`` for topic ``raw/<stream>``; a recon output
``recon/ekg0/hr`` is group ``/recon/ekg0.hr``)::

    /                               NXroot  @creator @medacq_recording_format=1 @topics @complete ...
    /raw/eeg0                       NXentry @topic @stream @frames @gap_frames @series_count
    /raw/eeg0/data_000              NXdata  @signal="frames" @dtype @frame_shape @axes @units @frame_count
        frames      (frame, *frame_shape)   chunked along frame, resizable
        seq, series_index           (frame,) uint64 / int32
        t_host_ns, t_mono_ns        (frame,) int64 (CLOCK_REALTIME / CLOCK_MONOTONIC of the acquiring host)
        t_device                    (frame,) float64 (NaN where the device has no clock)
        meta                        (frame,) UTF-8 JSON of the header's ``meta`` ("" where it had none);
                                    only in blocks where some frame had one (created then, earlier rows "")
    /raw/eeg0/series/0000           NXcollection @series @descriptor (JSON) @start_seq @start_t_host_ns
                                    @end_t_host_ns @end_reason @frames @blocks @joined_mid_series
    /raw/eeg0/gaps                  (gap,) compound: series_index, first_seq (-1: samples only), count,
                                    announced, lost_samples (-1: unknown), t_host_ns, reason

A new ``data_NNN`` block starts whenever a frame's (dtype, shape, axes, units) differs
from every block of the stream so far: a descriptor change mid-stream, or a stream whose
descriptor shape has ``-1`` (one block per distinct shape).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


from medacq.daemon.recording.wal import CheckpointedFile, FileLockedError, recover

__all__ = ["RECORDING_FORMAT", "Hdf5RecordingWriter", "RecordingBusyError", "check_recording", "open_recording"]

RECORDING_FORMAT = 1

class RecordingBusyError(FileLockedError, ValueError):
    """The recording is being written: a live recorder holds its lock (a ``ValueError`` too, so callers
    that report an unusable recording report this one)."""


def _refuse_if_recording(path: str | os.PathLike[str], recovery: str) -> None:
    """Raise :class:`RecordingBusyError` when a recorder holds the file (HDF5's own file locking would
    refuse it anyway, with ``errno 11``: say why instead)."""
    busy = recovery == "busy"
    if not busy:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
        except BlockingIOError:
            busy = True
        finally:
            os.close(fd)
    if busy:
        raise RecordingBusyError(f"{os.fspath(path)} is being recorded (locked by the recorder): open it after "
                                 "`medacq record stop`")


def open_recording(path: str | os.PathLike[str]) -> Any:
    """Recover if needed, then open a recording read-only (an ``h5py.File``).

    Raises ``ValueError`` for an empty file (a recorder killed before its header commit),
    :class:`RecordingBusyError` (a ``ValueError``) while a recorder is writing it.
    """
    _refuse_if_recording(path, recover(path))
    return _open_h5(path)


def _open_h5(path: str | os.PathLike[str]) -> Any:
    import h5py

    if os.path.getsize(path) == 0:  # created, then stopped before the header commit reached the disk
        raise ValueError(f"{os.fspath(path)} is empty: its recorder stopped before writing the file header "
                         "(nothing was recorded)")
    return h5py.File(os.fspath(path), "r")


def check_recording(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Recover, open and verify a recording: every count matches its datasets.

    Returns a summary: ``{"recovery", "complete", "checkpoints", "streams": {topic:
    {"frames", "gap_frames", "gaps", "series", "blocks"}}, "problems": [...]}``. Raises
    ``ValueError`` for an empty file, :class:`RecordingBusyError` (a ``ValueError``) for one a
    recorder is writing, ``OSError`` for one that is not HDF5.
    """
    rec = recover(path)
    _refuse_if_recording(path, rec)
    problems: list[str] = []
    streams: dict[str, Any] = {}
    with _open_h5(path) as f:
        root = dict(f.attrs)
        for prefix in f:
            for name, g in f[prefix].items():
                blocks = [k for k in g if k.startswith("data_")]
                total = 0
                for b in blocks:
                    blk = g[b]
                    n = int(blk.attrs["frame_count"])
                    total += n
                    for ds in ("frames", "seq", "series_index", "t_host_ns", "t_mono_ns", "t_device", "meta"):
                        if ds == "meta" and ds not in blk:
                            continue
                        if blk[ds].shape[0] != n:
                            problems.append(f"{g.name}/{b}/{ds}: {blk[ds].shape[0]} rows, frame_count {n}")
                if int(g.attrs["frames"]) != total:
                    problems.append(f"{g.name}: @frames {int(g.attrs['frames'])} != {total} in blocks")
                gaps = g["gaps"]
                streams[str(g.attrs["topic"])] = {
                    "frames": total, "gaps": int(gaps.shape[0]),
                    "gap_frames": int(gaps["count"].sum()) if gaps.shape[0] else 0,
                    "series": len(g["series"]), "blocks": len(blocks),
                }
    return {"path": os.fspath(path), "recovery": rec, "complete": bool(root.get("complete", False)),
            "checkpoints": int(root.get("checkpoints", 0)), "streams": streams, "problems": problems}


# -- HDF5 layout ---------------------------------------------------------------------------
def _gap_dtype() -> np.dtype:
    import h5py

    return np.dtype([("series_index", "<i4"), ("first_seq", "<i8"), ("count", "<i8"), ("announced", "u1"),
                     ("lost_samples", "<i8"), ("t_host_ns", "<i8"), ("reason", h5py.string_dtype())])


_ATTR_MAX = 32_000  # larger JSON goes to a dataset (HDF5's compact attribute limit is 64 KiB)


def _set_json(group: Any, key: str, obj: Any) -> None:
    text = json.dumps(obj, separators=(",", ":"), default=str)
    if len(text) <= _ATTR_MAX:
        group.attrs[key] = text
    else:
        if key in group:
            del group[key]
        group.create_dataset(key, data=text)
        group.attrs[key] = f"(see dataset {key})"


@dataclass
class _Block:
    group: Any
    name: str
    count: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    series_index: list[int] = field(default_factory=list)
    t_host: list[int] = field(default_factory=list)
    t_mono: list[int] = field(default_factory=list)
    t_dev: list[float] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return len(self.seq)


@dataclass
class _Series:
    index: int
    uuid: str
    group: Any
    frames: int = 0
    pending: int = 0
    blocks: list[str] = field(default_factory=list)
    open: bool = True


@dataclass
class _Stream:
    topic: str
    group: Any
    blocks: dict[tuple, _Block] = field(default_factory=dict)
    series: dict[str, _Series] = field(default_factory=dict)
    current: _Series | None = None
    descriptor: dict[str, Any] | None = None
    frames: int = 0
    gap_frames: int = 0
    gaps: list[tuple] = field(default_factory=list)


class Hdf5RecordingWriter:
    """Writes one recording (layout in the module doc). Not thread-safe: one thread owns it.

    The file's header is committed at once: from then on it opens with any HDF5 reader.

    Args:
        path: the ``.h5`` file (created; an existing file is replaced, unless another writer holds
            it: then :class:`~medacq.daemon.recording.wal.FileLockedError` and the file is untouched).
        attrs: extra root attributes (topics, endpoints...).
        durable: ``fsync`` at each checkpoint (survives power loss, not just ``kill -9``).
        target_chunk_bytes: chunk size aimed at along the frame axis.
    """

    def __init__(self, path: str | os.PathLike[str], attrs: dict[str, Any] | None = None, durable: bool = True,
                 target_chunk_bytes: int = 256 * 1024) -> None:
        import h5py

        self.path = os.fspath(path)
        self.durable = durable
        self.target_chunk_bytes = target_chunk_bytes
        self._file = CheckpointedFile(self.path, create=True, durable=durable)
        try:
            self.h5 = h5py.File(self._file, "w")
            a = self.h5.attrs
            a["NX_class"] = "NXroot"
            a["creator"] = "medacq"
            a["medacq_recording_format"] = RECORDING_FORMAT
            a["file_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            a["started_t_host_ns"] = time.time_ns()
            a["complete"] = False
            a["checkpoints"] = 0
            a["frames"] = 0
            for k, v in (attrs or {}).items():
                a[k] = v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
            # the header commit: from here on the file opens with any HDF5 reader (no streams yet)
            self.h5.flush()
            self._file.commit(durable)
        except BaseException:  # a failed start leaves no file handle (and no lock) behind
            h5 = getattr(self, "h5", None)
            if h5 is not None:
                try:
                    h5.close()  # (into memory only: nothing reaches the disk without a commit)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            self._file.close()
            raise
        self.streams: dict[str, _Stream] = {}
        self.frames_committed = 0
        self.gaps_committed = 0
        self.pending_frames = 0
        self.pending_bytes = 0
        self.checkpoints = 0
        self.last_checkpoint_s = 0.0
        self.max_checkpoint_s = 0.0
        self.commit_bytes = 0

    # -- structure ----------------------------------------------------------------------
    def _stream(self, topic: str, stream_name: str) -> _Stream:
        st = self.streams.get(topic)
        if st is None:
            prefix, _, rest = topic.partition("/")
            top = self.h5.require_group(prefix or "other")
            top.attrs["NX_class"] = "NXcollection"
            g = top.create_group((rest or stream_name).replace("/", "."))
            g.attrs.update({"NX_class": "NXentry", "topic": topic, "stream": stream_name, "frames": 0,
                            "gap_frames": 0, "series_count": 0})
            g.create_group("series").attrs["NX_class"] = "NXcollection"
            g.create_dataset("gaps", shape=(0,), maxshape=(None,), chunks=(256,), dtype=_gap_dtype())
            st = self.streams[topic] = _Stream(topic, g)
        return st

    def _series(self, st: _Stream, uuid: str, header: dict[str, Any], joined: bool) -> _Series:
        s = st.series.get(uuid)
        if s is None:
            idx = len(st.series)
            name = f"{idx:04d}"
            g = st.group["series"].create_group(name)
            try:
                g.attrs.update({"NX_class": "NXcollection", "series": uuid, "start_seq": int(header["seq"]),
                                "start_t_host_ns": int(header["t_host_ns"]), "end_t_host_ns": 0, "end_reason": "",
                                "frames": 0, "blocks": "[]", "joined_mid_series": joined, "descriptor": "null"})
            except BaseException:
                del st.group["series"][name]  # a refused message leaves no half-made series behind
                raise
            s = st.series[uuid] = _Series(idx, uuid, g)
            st.group.attrs["series_count"] = len(st.series)
            if st.descriptor is not None and st.descriptor.get("stream") == header.get("stream"):
                _set_json(g, "descriptor", st.descriptor)
        st.current = s
        return s

    def _block(self, st: _Stream, h: dict[str, Any], arr: np.ndarray) -> _Block:
        key = (arr.dtype.str, arr.shape, tuple(h.get("axes") or ()), h.get("units") or "")
        b = st.blocks.get(key)
        if b is None:
            dt = arr.dtype
            if (dt.kind not in "biufc" or dt.itemsize == 0 or (dt.kind == "f" and dt.itemsize > 8)
                    or (dt.kind == "c" and dt.itemsize > 16)):  # as the stream protocol: no long double
                raise ValueError(f"frames of dtype {dt.str} are not recorded (numeric dtypes only: bool, int, "
                                 "uint, float <= 64 bit, complex <= 128 bit)")
            name = f"data_{len(st.blocks):03d}"
            g = st.group.create_group(name)
            try:
                self._block_datasets(g, key[3], h, arr)
            except BaseException:
                del st.group[name]  # a refused frame leaves no half-made block behind
                raise
            b = st.blocks[key] = _Block(g, name)
        return b

    def _block_datasets(self, g: Any, units: str, h: dict[str, Any], arr: np.ndarray) -> None:
        """The attributes and datasets of a new ``data_NNN`` block ``g`` for frames like ``arr``."""
        axes = list(h.get("axes") or [f"axis{i}" for i in range(arr.ndim)])
        g.attrs.update({"NX_class": "NXdata", "signal": "frames", "dtype": arr.dtype.str,
                        "frame_shape": json.dumps(list(arr.shape)), "axes": json.dumps(["frame", *axes]),
                        "units": units, "frame_count": 0})
        per = max(1, arr.nbytes)
        k = int(max(1, min(4096, self.target_chunk_bytes // per)))
        # a 0-length frame axis: HDF5 needs chunk dimensions >= 1, and h5py a chunk no larger than a fixed
        # dimension, so that axis is made resizable (it stays 0 long; @frame_shape has the frame's shape)
        ds = g.create_dataset("frames", shape=(0, *arr.shape), maxshape=(None, *(d or None for d in arr.shape)),
                              chunks=(k, *(max(1, d) for d in arr.shape)), dtype=arr.dtype)
        ds.attrs["units"] = units
        ds.attrs["axes"] = json.dumps(["frame", *axes])
        kk = max(k, 1024)
        for name_, dt in (("seq", "<u8"), ("series_index", "<i4"), ("t_host_ns", "<i8"), ("t_mono_ns", "<i8"),
                          ("t_device", "<f8")):
            g.create_dataset(name_, shape=(0,), maxshape=(None,), chunks=(kk,), dtype=dt)
        g["t_host_ns"].attrs["units"] = "ns (CLOCK_REALTIME)"
        g["t_mono_ns"].attrs["units"] = "ns (CLOCK_MONOTONIC)"

    @staticmethod
    def _append_meta(g: Any, old: int, vals: list[str]) -> None:
        """Append the frames' meta JSON at row ``old`` of block ``g``'s ``meta`` dataset, made on
        first use with ``old`` empty rows before (earlier frames of the block had no meta)."""
        import h5py

        if "meta" not in g:
            d = g.create_dataset("meta", shape=(old,), maxshape=(None,), chunks=(256,),
                                 dtype=h5py.string_dtype("utf-8"), fillvalue="")
            d.attrs["content"] = "JSON of each frame header's meta (\"\": none)"
        d = g["meta"]
        d.resize(old + len(vals), axis=0)
        d[old:old + len(vals)] = np.asarray(vals, dtype=object)

    # -- messages -------------------------------------------------------------------------
    def message(self, topic: str, h: dict[str, Any], arr: np.ndarray | None) -> None:
        """Record one decoded message (frames are buffered until :meth:`checkpoint`)."""
        kind = h["kind"]
        st = self._stream(topic, h["stream"])
        if kind == "frame" and arr is not None:
            b = self._block(st, h, arr)  # first: a frame it refuses leaves no series behind
            s = st.series.get(h["series"])
            if s is None:
                s = self._series(st, h["series"], h, joined=True)
            if b.name not in s.blocks:
                s.blocks.append(b.name)
                s.group.attrs["blocks"] = json.dumps(s.blocks)
            b.frames.append(arr)
            b.seq.append(int(h["seq"]))
            b.series_index.append(s.index)
            b.t_host.append(int(h["t_host_ns"]))
            b.t_mono.append(int(h["t_mono_ns"]))
            td = h.get("t_device")
            b.t_dev.append(float(td) if td is not None else float("nan"))
            m = h.get("meta")
            b.meta.append(json.dumps(m, separators=(",", ":")) if isinstance(m, dict) and m else "")
            s.pending += 1
            self.pending_frames += 1
            self.pending_bytes += arr.nbytes
        elif kind == "series_start":
            self._series(st, h["series"], h, joined=False)
        elif kind == "series_end":
            s = st.series.get(h["series"])
            if s is not None:
                s.group.attrs["end_t_host_ns"] = int(h["t_host_ns"])
                s.group.attrs["end_reason"] = h.get("reason") or ""
                s.open = False
        elif kind == "descriptor" and h.get("descriptor") is not None:
            d = h["descriptor"]
            if d != st.descriptor:
                st.descriptor = d
                s = st.series.get(h["series"]) or self._series(st, h["series"], h, joined=True)
                _set_json(s.group, "descriptor", d)

    def gap(self, topic: str, stream: str, series: str, first_seq: int | None, count: int, announced: bool,
            reason: str, lost_samples: int | None) -> None:
        """Record frames (or samples) that will never be in the file, announced or detected."""
        st = self._stream(topic, stream)
        s = st.series.get(series)
        st.gaps.append((s.index if s else -1, -1 if first_seq is None else first_seq, count, int(announced),
                        -1 if lost_samples is None else lost_samples, time.time_ns(), reason))

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, complete: bool = False) -> int:
        """Append every buffered frame and gap, then commit atomically. Returns frames committed now."""
        t0 = time.perf_counter()
        n_total = n_gaps = 0
        for st in self.streams.values():
            for b in st.blocks.values():
                n = b.pending
                if not n:
                    continue
                g = b.group
                old = b.count
                ds = g["frames"]
                ds.resize(old + n, axis=0)
                nbytes = sum(a.nbytes for a in b.frames)
                if ds.chunks[0] == 1 and b.frames[0].size and ds.chunks[1:] == b.frames[0].shape:
                    # one frame per chunk (frames >= target_chunk_bytes): each frame's bytes go
                    # to the file as its chunk, no copy (HDF5's selection, chunk cache and
                    # filter pipeline are bypassed; the block has no filters)
                    dsid, zeros = ds.id, (0,) * b.frames[0].ndim
                    for i, a in enumerate(b.frames):
                        dsid.write_direct_chunk((old + i, *zeros), np.ascontiguousarray(a))
                elif n > 1 and nbytes <= 64 << 20:
                    ds[old:old + n] = np.stack(b.frames)
                else:
                    for i, a in enumerate(b.frames):
                        ds[old + i] = a
                for name_, vals in (("seq", b.seq), ("series_index", b.series_index), ("t_host_ns", b.t_host),
                                    ("t_mono_ns", b.t_mono), ("t_device", b.t_dev)):
                    d = g[name_]
                    d.resize(old + n, axis=0)
                    d[old:old + n] = np.asarray(vals, dtype=d.dtype)
                if "meta" in g or any(b.meta):
                    self._append_meta(g, old, b.meta)
                b.count = old + n
                g.attrs["frame_count"] = b.count
                b.frames, b.seq, b.series_index, b.t_host, b.t_mono, b.t_dev, b.meta = [], [], [], [], [], [], []
                st.frames += n
                n_total += n
            for s in st.series.values():
                if s.pending:
                    s.frames += s.pending
                    s.pending = 0
                    s.group.attrs["frames"] = s.frames
            if st.gaps:
                d = st.group["gaps"]
                old = d.shape[0]
                d.resize(old + len(st.gaps), axis=0)
                d[old:] = np.array(st.gaps, dtype=d.dtype)
                st.gap_frames += sum(g[2] for g in st.gaps)
                n_gaps += len(st.gaps)
                st.gaps = []
            st.group.attrs["frames"] = st.frames
            st.group.attrs["gap_frames"] = st.gap_frames
        a = self.h5.attrs
        a["checkpoints"] = self.checkpoints + 1
        a["frames"] = self.frames_committed + n_total
        a["last_checkpoint_t_host_ns"] = time.time_ns()
        if complete:
            a["complete"] = True
        self.h5.flush()
        self.commit_bytes += self._file.commit(self.durable)
        self.frames_committed += n_total  # counted only once they are on disk
        self.gaps_committed += n_gaps
        self.checkpoints += 1
        self.pending_frames = 0
        self.pending_bytes = 0
        self.last_checkpoint_s = time.perf_counter() - t0
        self.max_checkpoint_s = max(self.max_checkpoint_s, self.last_checkpoint_s)
        return n_total

    def abort(self, error: str = "") -> None:
        """The recorder failed: release the file (its handle and lock) WITHOUT committing anything.

        The file on disk stays its last checkpoint (``complete`` false); a checkpoint that failed
        half-way is finished or undone by the next :func:`recover` / :func:`open_recording`.
        Idempotent; ``error`` is not written (nothing more reaches the disk).
        """
        try:
            if self.h5.id.valid:
                self.h5.close()  # into CheckpointedFile's memory only: it is never committed
        except Exception:  # noqa: BLE001 - a broken h5py state must not keep the file locked
            pass
        finally:
            self._file.close()

    def close(self, reason: str = "recording stopped") -> None:
        """Final checkpoint (series still open get ``end_reason``), mark complete, close the file."""
        for st in self.streams.values():
            for s in st.series.values():
                if s.open:
                    s.group.attrs["end_reason"] = f"(open) {reason}"
        self.checkpoint(complete=True)
        self.h5.close()
        self._file.commit(self.durable)
        self._file.close()
