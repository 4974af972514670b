"""Recording: ``medacq record`` and the daemon's ``record`` service, HDF5 that survives ``kill -9``.

A :class:`Recorder` is one more subscriber (its own SUB sockets, its own thread): it can
never stall acquisition. It buffers the frames of one flush interval in memory, then at
each *checkpoint* appends them to resizable, chunked HDF5 datasets (h5py) and commits.

Crash consistency (see ``docs/operations.md``): HDF5 updates its metadata in place and
is not crash-safe by itself. The h5py file here does not write to the recording directly:
it writes through :class:`CheckpointedFile`, a file object that keeps every change made
since the last checkpoint in memory. A checkpoint (``h5py.File.flush()`` then
:meth:`CheckpointedFile.commit`) writes the new tail of the file past its old end (which
HDF5 ignores until the superblock points there), then a write-ahead log ``<file>.wal``
with every in-place change and a CRC'd commit record, then applies those changes and
deletes the log. So at any instant the recording on disk is the byte-exact image of the
file after some ``H5Fflush`` (it opens with any HDF5 reader), except during the few
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
    /raw/eeg0/series/0000           NXcollection @series @descriptor (JSON) @start_seq @start_t_host_ns
                                    @end_t_host_ns @end_reason @frames @blocks @joined_mid_series
    /raw/eeg0/gaps                  (gap,) compound: series_index, first_seq (-1: samples only), count,
                                    announced, lost_samples (-1: unknown), t_host_ns, reason

A new ``data_NNN`` block starts whenever a frame's (dtype, shape, axes, units) differs
from every block of the stream so far: a descriptor change mid-stream, or a stream whose
descriptor shape has ``-1`` (one block per distinct shape).
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import logging
import os
import struct
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CheckpointedFile",
    "recover",
    "open_recording",
    "check_recording",
    "Hdf5RecordingWriter",
    "Recorder",
    "RecordingService",
    "recordings_dir",
    "recording_service",
    "recording_status",
    "add_record_arguments",
    "cmd_record",
    "RECORDING_FORMAT",
    "edf_settle_s",
]

log = logging.getLogger("medacq.daemon.recorder")

RECORDING_FORMAT = 1
_PAGE = 4096
_WAL_MAGIC = b"MEDACQWL"
_WAL_HDR = struct.Struct("<8sIQQ")  # magic, version, old_size, new_size
_WAL_EXT = struct.Struct("<cQQ")  # b"E", offset, length
_WAL_END = struct.Struct("<cI")  # b"C", crc32 of everything before


def wal_path(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + ".wal"


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while len(mv):
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


# -- crash-consistent file object ---------------------------------------------------------
class CheckpointedFile(io.RawIOBase):
    """A read/write file object whose on-disk content only changes at :meth:`commit`.

    Between commits every write lands in memory: pages of the committed file that were
    overwritten (copy-on-write, 4 KiB) and the bytes past its end. Reads see the new
    content. :meth:`commit` publishes all of it atomically with respect to ``kill -9``
    (and to power loss when ``durable``) through a write-ahead log; see the module doc.
    Memory use is the size of one checkpoint's changes.
    """

    def __init__(self, path: str | os.PathLike[str], create: bool = False) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if create else 0), 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RuntimeError(f"{self.path} is being written by another recorder") from None
        if create:
            try:
                os.unlink(wal_path(self.path))
            except FileNotFoundError:
                pass
        else:
            _recover_locked(self.path, self._fd)
        self._disk = os.fstat(self._fd).st_size  # committed size
        self._lbase = self._disk  # logical offset where the in-memory tail starts
        self._patches: dict[int, bytearray] = {}
        self._tail = bytearray()
        self._pos = 0
        self.commits = 0
        self.bytes_committed = 0

    # io.RawIOBase protocol (what h5py's fileobj driver calls)
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self._lbase + len(self._tail)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        pos = self._pos
        n = max(0, min(len(out), self.size - pos))
        end = pos + n
        if pos < self._lbase:
            e = min(end, self._lbase)
            data = os.pread(self._fd, e - pos, pos)
            out[: len(data)] = data
            if len(data) < e - pos:
                out[len(data) : e - pos] = bytes(e - pos - len(data))
            if self._patches:
                for pg in range(pos // _PAGE, (e - 1) // _PAGE + 1):
                    p = self._patches.get(pg)
                    if p is not None:
                        ps = pg * _PAGE
                        s, t = max(pos, ps), min(e, ps + len(p))
                        out[s - pos : t - pos] = p[s - ps : t - ps]
        if end > self._lbase:
            s = max(pos, self._lbase)
            out[s - pos : n] = self._tail[s - self._lbase : end - self._lbase]
        self._pos = end
        return n

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = len(mv)
        pos = self._pos
        end = pos + n
        if pos < self._lbase:
            e = min(end, self._lbase)
            i = pos
            while i < e:
                pg = i // _PAGE
                ps = pg * _PAGE
                pe = min(ps + _PAGE, self._lbase)
                p = self._patches.get(pg)
                if p is None:
                    p = bytearray(os.pread(self._fd, pe - ps, ps))
                    p.extend(bytes(pe - ps - len(p)))
                    self._patches[pg] = p
                t = min(e, pe)
                p[i - ps : t - ps] = mv[i - pos : t - pos]
                i = t
        if end > self._lbase:
            s = max(pos, self._lbase)
            off = s - self._lbase
            if off > len(self._tail):
                self._tail.extend(bytes(off - len(self._tail)))
            self._tail[off : off + (end - s)] = mv[s - pos :]
        self._pos = end
        return n

    def truncate(self, size: int | None = None) -> int:
        n = self._pos if size is None else size
        if n >= self._lbase:
            k = n - self._lbase
            if k < len(self._tail):
                del self._tail[k:]
            else:
                self._tail.extend(bytes(k - len(self._tail)))
        else:  # shrink into committed bytes: they become part of the (empty) tail
            self._tail = bytearray()
            for pg in [pg for pg in self._patches if pg * _PAGE >= n]:
                del self._patches[pg]
            last = n // _PAGE
            if last in self._patches:
                del self._patches[last][n - last * _PAGE :]
            self._lbase = n
        return n

    def flush(self) -> None:  # h5py calls this; publishing is commit()'s job
        pass

    def fileno(self) -> int:
        return self._fd

    # checkpoints
    @property
    def dirty(self) -> bool:
        return bool(self._patches or self._tail or self.size != self._disk)

    def commit(self, durable: bool = True) -> int:
        """Publish every change since the last commit. Returns the bytes written to the file."""
        if not self.dirty:
            return 0
        new_size = self.size
        extents: list[tuple[int, bytes | memoryview]] = [
            (pg * _PAGE, p) for pg, p in sorted(self._patches.items())
        ]
        pre: tuple[int, memoryview] | None = None
        if self._tail:
            split = max(0, min(len(self._tail), self._disk - self._lbase))
            if split:
                extents.append((self._lbase, memoryview(self._tail)[:split]))
            if split < len(self._tail):
                pre = (self._lbase + split, memoryview(self._tail)[split:])
        wpath = wal_path(self.path)
        wfd = os.open(wpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            hdr = _WAL_HDR.pack(_WAL_MAGIC, 1, self._disk, new_size)
            os.write(wfd, hdr)  # 1. the log names the committed size first
            if pre is not None:  # 2. new bytes past the committed end: invisible to HDF5 until 4.
                _pwrite_all(self._fd, pre[1], pre[0])
                if durable:
                    os.fsync(self._fd)
            crc = zlib.crc32(hdr)
            off = len(hdr)
            for o, data in extents:  # 3. in-place changes, then the commit record
                rec = _WAL_EXT.pack(b"E", o, len(data))
                _pwrite_all(wfd, rec, off)
                _pwrite_all(wfd, data, off + len(rec))
                crc = zlib.crc32(data, zlib.crc32(rec, crc))
                off += len(rec) + len(data)
            _pwrite_all(wfd, _WAL_END.pack(b"C", crc), off)
            if durable:
                os.fsync(wfd)
            for o, data in extents:  # 4. apply
                _pwrite_all(self._fd, data, o)
            if os.fstat(self._fd).st_size != new_size:
                os.ftruncate(self._fd, new_size)
            if durable:
                os.fsync(self._fd)
        finally:
            os.close(wfd)
        os.unlink(wpath)  # 5. done (a replay of a leftover log is idempotent)
        written = sum(len(d) for _, d in extents) + (len(pre[1]) if pre else 0)
        self._disk = self._lbase = new_size
        self._patches = {}
        self._tail = bytearray()
        self.commits += 1
        self.bytes_committed += written
        return written

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _recover_locked(path: str, fd: int) -> str:
    wpath = wal_path(path)
    try:
        with open(wpath, "rb") as f:
            wal = f.read()
    except FileNotFoundError:
        return "clean"
    result = "discarded"
    if len(wal) >= _WAL_HDR.size:
        magic, ver, old_size, new_size = _WAL_HDR.unpack_from(wal)
        if magic == _WAL_MAGIC and ver == 1:
            crc = zlib.crc32(wal[: _WAL_HDR.size])
            off = _WAL_HDR.size
            extents: list[tuple[int, memoryview]] = []
            committed = False
            mv = memoryview(wal)
            while off + _WAL_END.size <= len(wal):
                tag = wal[off : off + 1]
                if tag == b"C":
                    committed = _WAL_END.unpack_from(wal, off)[1] == crc
                    break
                if tag != b"E" or off + _WAL_EXT.size > len(wal):
                    break
                _, o, n = _WAL_EXT.unpack_from(wal, off)
                data = mv[off + _WAL_EXT.size : off + _WAL_EXT.size + n]
                if len(data) != n:
                    break
                crc = zlib.crc32(data, zlib.crc32(mv[off : off + _WAL_EXT.size], crc))
                extents.append((o, data))
                off += _WAL_EXT.size + n
            if committed:
                for o, data in extents:
                    _pwrite_all(fd, data, o)
                os.ftruncate(fd, new_size)
                result = "replayed"
            elif os.fstat(fd).st_size > old_size:
                os.ftruncate(fd, old_size)  # drop bytes appended by the unfinished checkpoint
            os.fsync(fd)
    os.unlink(wpath)
    return result


def recover(path: str | os.PathLike[str]) -> str:
    """Finish or undo an interrupted checkpoint of a recording.

    Returns ``"clean"`` (nothing to do), ``"replayed"`` (a committed checkpoint was
    completed) or ``"discarded"`` (an uncommitted one was dropped: the file is the
    previous checkpoint). ``"busy"`` when a live recorder holds the file (it is then
    consistent except during a commit's few milliseconds).
    """
    path = os.fspath(path)
    if not os.path.exists(wal_path(path)):
        return "clean"
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "busy"
        return _recover_locked(path, fd)
    finally:
        os.close(fd)


def open_recording(path: str | os.PathLike[str]) -> Any:
    """Recover if needed, then open a recording read-only (an ``h5py.File``)."""
    import h5py

    recover(path)
    return h5py.File(os.fspath(path), "r")


def check_recording(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Recover, open and verify a recording: every count matches its datasets.

    Returns a summary: ``{"recovery", "complete", "checkpoints", "streams": {topic:
    {"frames", "gap_frames", "gaps", "series", "blocks"}}, "problems": [...]}``.
    """
    rec = recover(path)
    problems: list[str] = []
    streams: dict[str, Any] = {}
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        root = dict(f.attrs)
        for prefix in f:
            for name, g in f[prefix].items():
                blocks = [k for k in g if k.startswith("data_")]
                total = 0
                for b in blocks:
                    blk = g[b]
                    n = int(blk.attrs["frame_count"])
                    total += n
                    for ds in ("frames", "seq", "series_index", "t_host_ns", "t_mono_ns", "t_device"):
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

    Args:
        path: the ``.h5`` file (created; an existing file is replaced).
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
        self._file = CheckpointedFile(self.path, create=True)
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
            g = st.group["series"].create_group(f"{idx:04d}")
            g.attrs.update({"NX_class": "NXcollection", "series": uuid, "start_seq": int(header["seq"]),
                            "start_t_host_ns": int(header["t_host_ns"]), "end_t_host_ns": 0, "end_reason": "",
                            "frames": 0, "blocks": "[]", "joined_mid_series": joined, "descriptor": "null"})
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
            name = f"data_{len(st.blocks):03d}"
            g = st.group.create_group(name)
            axes = list(h.get("axes") or [f"axis{i}" for i in range(arr.ndim)])
            g.attrs.update({"NX_class": "NXdata", "signal": "frames", "dtype": arr.dtype.str,
                            "frame_shape": json.dumps(list(arr.shape)), "axes": json.dumps(["frame", *axes]),
                            "units": key[3], "frame_count": 0})
            per = max(1, arr.nbytes)
            k = int(max(1, min(4096, self.target_chunk_bytes // per)))
            ds = g.create_dataset("frames", shape=(0, *arr.shape), maxshape=(None, *arr.shape),
                                  chunks=(k, *arr.shape), dtype=arr.dtype)
            ds.attrs["units"] = key[3]
            ds.attrs["axes"] = json.dumps(["frame", *axes])
            kk = max(k, 1024)
            for name_, dt in (("seq", "<u8"), ("series_index", "<i4"), ("t_host_ns", "<i8"), ("t_mono_ns", "<i8"),
                              ("t_device", "<f8")):
                g.create_dataset(name_, shape=(0,), maxshape=(None,), chunks=(kk,), dtype=dt)
            g["t_host_ns"].attrs["units"] = "ns (CLOCK_REALTIME)"
            g["t_mono_ns"].attrs["units"] = "ns (CLOCK_MONOTONIC)"
            b = st.blocks[key] = _Block(g, name)
        return b

    # -- messages -------------------------------------------------------------------------
    def message(self, topic: str, h: dict[str, Any], arr: np.ndarray | None) -> None:
        """Record one decoded message (frames are buffered until :meth:`checkpoint`)."""
        kind = h["kind"]
        st = self._stream(topic, h["stream"])
        if kind == "frame" and arr is not None:
            s = st.series.get(h["series"])
            if s is None:
                s = self._series(st, h["series"], h, joined=True)
            b = self._block(st, h, arr)
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
                if n > 1 and nbytes <= 64 << 20:
                    ds[old:old + n] = np.stack(b.frames)
                else:
                    for i, a in enumerate(b.frames):
                        ds[old + i] = a
                for name_, vals in (("seq", b.seq), ("series_index", b.series_index), ("t_host_ns", b.t_host),
                                    ("t_mono_ns", b.t_mono), ("t_device", b.t_dev)):
                    d = g[name_]
                    d.resize(old + n, axis=0)
                    d[old:old + n] = np.asarray(vals, dtype=d.dtype)
                b.count = old + n
                g.attrs["frame_count"] = b.count
                b.frames, b.seq, b.series_index, b.t_host, b.t_mono, b.t_dev = [], [], [], [], [], []
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


DEFAULT_SETTLE_S = 2.0


def edf_settle_s(descriptor_interval_s: float | None = None) -> float:
    """How long an EDF/BDF recorder waits for descriptors after its first frame: 2 s, or one
    descriptor re-publication interval plus 1 s when that is longer (a recorder that joins
    mid-stream sees each stream's descriptor within one interval)."""
    return DEFAULT_SETTLE_S if descriptor_interval_s is None else max(DEFAULT_SETTLE_S, descriptor_interval_s + 1.0)


class _EdfAdapter:
    """``--format edf|bdf``: the :class:`Recorder`'s writer for :mod:`medacq.daemon.record_edf`.

    EDF needs every signal in its header before the first record, so frames (and gaps) are
    held in a bounded backlog until the file can be created: when every requested topic
    that names a stream exactly, and every topic seen so far, has a descriptor, or else
    ``settle_s`` after the first frame. Streams are keyed by topic (``raw/eeg0`` and
    ``recon/eeg0`` share the stream name ``eeg0``). A topic whose descriptor is not an EDF
    signal (``recon/eeg0/bandpower``, ``recon/ekg0/hr``) is *skipped*; one that shows up
    after the file was created is *late*: its frames are dropped and counted, with a
    warning in the log and in :meth:`status` (never silently).

    Args:
        path, bdf: output file, BDF+ (24 bit) or EDF+ (16 bit).
        topics: the recorder's topic prefixes.
        settle_s: seconds to wait after the first frame for the other streams' descriptors.
        max_backlog_bytes, max_backlog_messages: backlog bound while waiting; beyond it the
            oldest entries are dropped (counted in ``backlog_dropped_frames``).
    """

    def __init__(self, path: str, bdf: bool, topics: list[str] | None = None, settle_s: float = DEFAULT_SETTLE_S,
                 max_backlog_bytes: int = 64 << 20, max_backlog_messages: int = 100_000) -> None:
        try:
            from . import record_edf  # type: ignore[attr-defined]
        except ImportError:
            raise RuntimeError("EDF/BDF export needs medacq.daemon.record_edf, which this build lacks") from None
        self._mod = record_edf
        self.path, self.bdf = path, bdf
        self.topics = list(topics or [""])
        self.settle_s = settle_s
        self.max_backlog_bytes = max_backlog_bytes
        self.max_backlog_messages = max_backlog_messages
        self.rec: Any = None
        self.state = "waiting"  # waiting (for descriptors) -> recording -> closed
        self.descriptors: dict[str, dict[str, Any]] = {}  # by topic
        self.seen: dict[str, int] = {}  # frames per topic while waiting
        # ("frame", topic, header, array) or ("gap", topic, write_gap keywords, None), in arrival order
        self.backlog: deque[tuple[str, str, Any, Any]] = deque()
        self.backlog_bytes = 0
        self.backlog_dropped_frames = 0
        self.first_frame_at: float | None = None
        self.created_after_s: float | None = None
        self.frames_in_file: dict[str, int] = {}  # by topic: the streams in the file
        self.skipped: dict[str, str] = {}  # topic -> why it is not an EDF signal
        self.skipped_frames: dict[str, int] = {}
        self.late: dict[str, int] = {}  # topic -> frames dropped (arrived after the file was created)
        self.rejected: dict[str, int] = {}  # topic -> frames that did not fit the header (channel count)
        self.gaps_ignored = 0
        self.warnings: list[str] = []
        self.frames_committed = self.pending_frames = self.pending_bytes = self.checkpoints = 0
        self.gaps_committed = self.commit_bytes = 0
        self.last_checkpoint_s = self.max_checkpoint_s = 0.0

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def dropped_frames(self) -> int:
        """Frames received but not in the file: late streams, rejected frames, backlog overflow."""
        return sum(self.late.values()) + sum(self.rejected.values()) + self.backlog_dropped_frames

    def _warn(self, text: str) -> None:
        log.warning("%s: %s", self.path, text)
        if len(self.warnings) < 50:
            self.warnings.append(text)

    def _spec(self, topic: str) -> tuple[Any, str | None]:
        try:
            return self._mod.signal_spec(self.descriptors[topic]), None
        except ValueError as exc:
            return None, str(exc)

    def _buffer(self, entry: tuple[str, str, Any, Any]) -> None:
        self.backlog.append(entry)
        if entry[0] == "frame":
            self.backlog_bytes += entry[3].nbytes
        while self.backlog and (self.backlog_bytes > self.max_backlog_bytes
                                or len(self.backlog) > self.max_backlog_messages):
            kind, topic, _, arr = self.backlog.popleft()
            if kind == "frame":
                self.backlog_bytes -= arr.nbytes
                self.backlog_dropped_frames += 1
        self.pending_bytes = self.backlog_bytes

    # -- creating the file ----------------------------------------------------------------------
    def _all_known(self) -> bool:
        return all(t in self.descriptors for t in self.topics) and all(t in self.descriptors for t in self.seen)

    def _maybe_create(self, final: bool = False) -> None:
        if self.rec is not None or self.state == "closed":
            return
        settled = self.first_frame_at is not None and time.monotonic() - self.first_frame_at >= self.settle_s
        if final or settled or self._all_known():
            self._create()

    def _create(self) -> bool:
        """Create the file with every stream whose descriptor is known; replay the backlog."""
        usable: dict[str, dict[str, Any]] = {}
        for topic in sorted(self.descriptors):
            spec, why = self._spec(topic)
            if spec is None:
                if topic not in self.skipped:
                    self.skipped[topic] = why or "not an EDF signal"
                    log.info("%s: %s is not recorded: %s", self.path, topic, why)
            else:
                usable[topic] = self.descriptors[topic]
        if not usable:
            return False
        starts = [int(h["t_host_ns"]) for kind, t, h, _ in self.backlog
                  if kind == "frame" and t in usable and h.get("t_host_ns")]
        self.rec = self._mod.EdfRecorder(self.path, usable, bdf=self.bdf, start_ns=min(starts) if starts else None,
                                         recording=f"medacq {' '.join(usable)}")
        self.frames_in_file = {t: 0 for t in usable}
        self.state = "recording"
        if self.first_frame_at is not None:
            self.created_after_s = round(time.monotonic() - self.first_frame_at, 3)
        backlog, self.backlog = self.backlog, deque()
        self.backlog_bytes = self.pending_bytes = 0
        for kind, topic, h, arr in backlog:
            if kind == "frame":
                self._write(topic, h, arr)
            else:
                self._write_gap(topic, h)
        return True

    # -- input (the Recorder's writer interface) ------------------------------------------------
    def message(self, topic: str, h: dict[str, Any], arr: np.ndarray | None) -> None:
        kind = h["kind"]
        if kind == "descriptor" and h.get("descriptor"):
            self.descriptors[topic] = h["descriptor"]
            if topic in self.late:
                spec, why = self._spec(topic)
                if spec is None:  # not an EDF signal after all: skipped, not late
                    self.skipped[topic] = why or "not an EDF signal"
                    self.skipped_frames[topic] = self.skipped_frames.get(topic, 0) + self.late.pop(topic)
                    self.warnings = [w for w in self.warnings if not w.startswith(f"{topic}:")]
        elif kind == "frame" and arr is not None:
            if self.rec is None:
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                self.seen[topic] = self.seen.get(topic, 0) + 1
                self._buffer(("frame", topic, h, np.array(arr, copy=True)))
            else:
                self._write(topic, h, arr)
        self._maybe_create()

    def _write(self, topic: str, h: dict[str, Any], arr: np.ndarray) -> None:
        if topic in self.frames_in_file:
            try:
                self.rec.write_frame(h, arr, key=topic)
            except ValueError as exc:  # a descriptor change EDF cannot follow (channel count)
                if topic not in self.rejected:
                    self._warn(f"{topic}: frames no longer fit the file ({exc}); dropped from here on")
                self.rejected[topic] = self.rejected.get(topic, 0) + 1
                return
            self.frames_in_file[topic] += 1
            self.pending_frames += 1
        elif topic in self.skipped:
            self.skipped_frames[topic] = self.skipped_frames.get(topic, 0) + 1
        else:
            if topic in self.descriptors:
                spec, why = self._spec(topic)
                if spec is None:
                    self.skipped[topic] = why or "not an EDF signal"
                    self.skipped_frames[topic] = self.skipped_frames.get(topic, 0) + 1
                    return
            if topic not in self.late:
                self._warn(f"{topic}: no descriptor before the file was created "
                           f"({self.created_after_s if self.created_after_s is not None else 0} s after the first "
                           f"frame); EDF cannot add a signal later, its frames are dropped and counted")
            self.late[topic] = self.late.get(topic, 0) + 1

    def _write_gap(self, topic: str, kw: dict[str, Any]) -> None:
        if topic in self.frames_in_file:
            self.rec.write_gap(topic, **kw)
            self.gaps_committed += 1
        else:
            self.gaps_ignored += 1

    def gap(self, topic: str, stream: str, series: str, first_seq: int | None, count: int, announced: bool,
            reason: str, lost_samples: int | None) -> None:
        kw = {"first_seq": first_seq, "count": count, "lost_samples": lost_samples, "reason": reason}
        if self.rec is None:
            self._buffer(("gap", topic, kw, None))
        else:
            self._write_gap(topic, kw)

    def checkpoint(self, complete: bool = False) -> int:
        t0 = time.perf_counter()
        self._maybe_create()
        if self.rec is not None:
            self.rec.flush()
        n, self.pending_frames = self.pending_frames, 0
        self.frames_committed += n
        self.checkpoints += 1
        self.last_checkpoint_s = time.perf_counter() - t0
        self.max_checkpoint_s = max(self.max_checkpoint_s, self.last_checkpoint_s)
        return n

    def close(self, reason: str = "") -> None:
        """Create the file if it is still waiting, write the last record, close it.

        Raises ``RuntimeError`` when no stream could be recorded (no file is written)."""
        if self.state == "closed":
            return
        if self.rec is None:
            self._maybe_create(final=True)
        if self.rec is None:
            self.state = "closed"
            seen = ", ".join(f"{t} ({n} frames)" for t, n in self.seen.items()) or "no frames"
            skipped = "; ".join(f"{t}: {w}" for t, w in self.skipped.items())
            raise RuntimeError(f"nothing to record in {self.path}: no EDF-compatible stream descriptor on "
                               f"{' '.join(self.topics)} (seen: {seen}{'; skipped ' + skipped if skipped else ''})")
        try:
            self.checkpoint(True)
        finally:
            self.state = "closed"
            self.rec.close()

    def abort(self, error: str) -> None:
        """The recorder failed: note it in the file and close the file (what was written stays readable)."""
        if self.state == "closed" or self.rec is None or self.rec.closed:
            self.state = "closed"
            return
        self.state = "closed"
        try:
            self.rec.add_annotation(f"RECORDING FAILED: {error}")
        finally:
            self.rec.close()

    def status(self) -> dict[str, Any]:
        """EDF specifics for :meth:`Recorder.status`."""
        rec = self.rec
        waiting = None
        if self.rec is None and self.first_frame_at is not None:
            waiting = round(time.monotonic() - self.first_frame_at, 3)
        out: dict[str, Any] = {
            "state": self.state, "settle_s": self.settle_s, "waiting_s": waiting,
            "created_after_s": self.created_after_s,
            "backlog_frames": sum(1 for e in list(self.backlog) if e[0] == "frame"),
            "backlog_bytes": self.backlog_bytes, "backlog_dropped_frames": self.backlog_dropped_frames,
            "skipped_streams": dict(self.skipped), "skipped_frames": dict(self.skipped_frames),
            "late_streams": dict(self.late), "rejected_frames": dict(self.rejected),
            "dropped_frames": self.dropped_frames, "gaps_ignored": self.gaps_ignored,
            "records": rec.records if rec is not None else 0,
            "annotations": len(rec.annotations) if rec is not None else 0,
            "annotations_dropped": rec.annotations_dropped if rec is not None else 0,
        }
        return out

    def stream_status(self) -> dict[str, Any]:
        """Per recorded topic: EDF labels, rate, frames/samples in the file, fills, device index at the start."""
        if self.rec is None:
            return {t: {"frames": 0, "waiting": True, "has_descriptor": t in self.descriptors}
                    for t in list(self.seen)}
        return dict(self.rec.stream_info())


# -- the recorder (a subscriber thread) ------------------------------------------------------
class Recorder(threading.Thread):
    """Subscribe to topic prefixes on one or more endpoints and record them.

    Args:
        endpoints: PUB endpoints (the daemon's and the reconstruction stage's data sockets).
        topics: topic prefixes (``raw/``, ``recon/``, ``raw/eeg0``).
        path: output file.
        flush_s: checkpoint interval, seconds (the most a ``kill -9`` can lose).
        fmt: ``hdf5``, ``edf`` or ``bdf``.
        durable: fsync at each checkpoint.
        max_pending_bytes: checkpoint early when this much frame data is buffered.
        rcvhwm: receive high-water mark per SUB socket (messages); beyond it ZeroMQ drops,
            and the drop is recorded as a detected gap.
        on_checkpoint: called (in the recorder thread) with :meth:`status` after each checkpoint.
        settle_s: ``edf``/``bdf`` only: seconds after the first frame to wait for the other
            streams' descriptors before the file is created (default :func:`edf_settle_s`).
    """

    def __init__(self, endpoints: str | list[str], topics: list[str], path: str | os.PathLike[str],
                 flush_s: float = 1.0, fmt: str = "hdf5", durable: bool = True,
                 max_pending_bytes: int = 256 << 20, rcvhwm: int = 1000, on_checkpoint: Any = None,
                 settle_s: float | None = None) -> None:
        super().__init__(name="recorder", daemon=True)
        if not 0 < flush_s <= 3600:
            raise ValueError("flush interval must be in (0, 3600] s")
        if fmt not in ("hdf5", "edf", "bdf"):
            raise ValueError("format must be hdf5, edf or bdf")
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.topics = list(topics) or [""]
        self.path = os.fspath(path)
        self.flush_s = flush_s
        self.fmt = fmt
        self.durable = durable
        self.max_pending_bytes = max_pending_bytes
        self.rcvhwm = rcvhwm
        self.on_checkpoint = on_checkpoint
        self.settle_s = edf_settle_s() if settle_s is None else float(settle_s)
        self.curve: Any = None  # ClientKeys when the daemon uses CurveZMQ
        self.writer: Any = None
        self.state = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self.frames_received = 0
        self.holes = 0  # frames this recorder missed (subscriber-detected, not announced)
        self.announced_gap_frames = 0
        self.last_frame_t_host_ns: int | None = None
        self.last_checkpoint_at: float | None = None
        self.ready = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain briefly, write the final checkpoint, close the file."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        import zmq

        from .client import Subscriber

        subs: list[Any] = []
        try:
            if self.fmt == "hdf5":
                self.writer = Hdf5RecordingWriter(
                    self.path, {"topics": json.dumps(self.topics), "endpoints": json.dumps(self.endpoints),
                                "flush_interval_s": self.flush_s}, durable=self.durable)
            else:
                self.writer = _EdfAdapter(self.path, bdf=self.fmt == "bdf", topics=self.topics, settle_s=self.settle_s)
            ctx = zmq.Context.instance()
            poller = zmq.Poller()
            for ep in self.endpoints:
                pending_gaps: list[Any] = []
                sub = Subscriber(ep, self.topics, errors="skip", rcvhwm=self.rcvhwm, context=ctx,
                                 on_gap=pending_gaps.append, curve=self.curve)
                sub._medacq_gaps = pending_gaps  # type: ignore[attr-defined]
                sub._medacq_topics = {}  # type: ignore[attr-defined]
                subs.append(sub)
                poller.register(sub.sock, zmq.POLLIN)
            self.state = "recording"
            self.ready.set()
            next_flush = time.monotonic() + self.flush_s
            quiet_since: float | None = None
            halt_at: float | None = None
            while True:
                now = time.monotonic()
                if self._halt.is_set():  # take what is in flight (series_end...) for up to 0.5 s, then stop
                    halt_at = halt_at or now
                    quiet_since = quiet_since or now
                    if now - quiet_since > 0.15 or now - halt_at > 0.5:
                        break
                events = dict(poller.poll(max(0, min(100, int((next_flush - now) * 1000)))))
                got = 0
                for sub in subs:
                    if sub.sock in events:
                        got += self._drain(sub)
                if got:
                    quiet_since = None
                now = time.monotonic()
                if now >= next_flush or self.writer.pending_bytes >= self.max_pending_bytes:
                    self._checkpoint()
                    next_flush = now + self.flush_s
            with self._lock:
                self.writer.close()
            self.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - reported in status, never takes the daemon down
            log.exception("recorder failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self._abort_writer()
            self.state = "failed"
        finally:
            self.ready.set()
            for sub in subs:
                sub.close()

    def _abort_writer(self) -> None:
        """After a failure: let the writer close its file (EDF/BDF: readable up to the failure,
        with an annotation saying so). A writer without ``abort`` (HDF5) keeps its last checkpoint."""
        abort = getattr(self.writer, "abort", None)
        if abort is None:
            return
        try:
            with self._lock:
                abort(self.error or "")
        except Exception as exc:  # noqa: BLE001 - reported in status
            log.exception("recorder: closing %s after the failure failed too", self.path)
            self.error = f"{self.error}; the file could not be closed: {type(exc).__name__}: {exc}"

    def _drain(self, sub: Any, limit: int = 2000) -> int:
        n = 0
        topics: dict[str, str] = sub._medacq_topics
        while n < limit:
            msg = sub.recv(timeout=0)
            if msg is None:
                break
            n += 1
            h = msg.header
            topics[h["stream"]] = msg.topic
            for g in sub._medacq_gaps:  # gaps found while decoding this message (same stream)
                self._gap(g.topic or topics.get(g.stream, msg.topic), g)
            sub._medacq_gaps.clear()
            if msg.array is not None:
                self.frames_received += 1
                self.last_frame_t_host_ns = h["t_host_ns"]
            with self._lock:
                self.writer.message(msg.topic, h, msg.array)
        return n

    def _gap(self, topic: str, g: Any) -> None:
        if g.announced:
            self.announced_gap_frames += g.count
        else:
            self.holes += g.count
        with self._lock:
            self.writer.gap(topic, g.stream, g.series, g.first_seq, g.count, g.announced, g.reason, g.lost_samples)

    def _checkpoint(self) -> None:
        with self._lock:
            self.writer.checkpoint()
        self.last_checkpoint_at = time.time()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.status())

    def status(self) -> dict[str, Any]:
        """State and counters; ``behind`` is true when the recorder cannot keep up."""
        w = self.writer
        lag = None if self.last_frame_t_host_ns is None else max(0.0, (time.time_ns() - self.last_frame_t_host_ns) / 1e9)
        since = None if self.last_checkpoint_at is None else time.time() - self.last_checkpoint_at
        behind = bool(
            self.holes
            or (w is not None and w.last_checkpoint_s > self.flush_s)
            or (since is not None and self.state == "recording" and since > 2 * self.flush_s + 1)
        )
        out: dict[str, Any] = {
            "state": self.state, "path": self.path, "format": self.fmt, "topics": self.topics,
            "endpoints": self.endpoints, "flush_s": self.flush_s, "error": self.error,
            "frames_received": self.frames_received,
            "frames_recorded": w.frames_committed if w else 0,
            "pending_frames": w.pending_frames if w else 0,
            "pending_bytes": w.pending_bytes if w else 0,
            "checkpoints": w.checkpoints if w else 0,
            "gaps_recorded": w.gaps_committed if w else 0,
            "announced_gap_frames": self.announced_gap_frames,
            "missed_frames": self.holes,
            "last_checkpoint_ms": round(w.last_checkpoint_s * 1000, 2) if w else None,
            "max_checkpoint_ms": round(w.max_checkpoint_s * 1000, 2) if w else None,
            "seconds_since_checkpoint": None if since is None else round(since, 3),
            "lag_s": None if lag is None else round(lag, 3),
            "behind": behind,
        }
        if isinstance(w, Hdf5RecordingWriter):
            out["streams"] = {t: {"frames": s.frames, "gap_frames": s.gap_frames, "series": len(s.series)}
                              for t, s in list(w.streams.items())}
        elif isinstance(w, _EdfAdapter):
            out["streams"] = w.stream_status()
            out["edf"] = w.status()
            out["dropped_frames"] = w.dropped_frames
            out["warnings"] = list(w.warnings)
        return out


# -- the daemon's record service -------------------------------------------------------------
def recordings_dir() -> Path:
    """Where the daemon's ``record start`` writes: ``$MEDACQ_RECORDINGS_DIR``, else
    ``$STATE_DIRECTORY/recordings`` (systemd ``StateDirectory=``), else
    ``~/.local/share/medacq/recordings``."""
    if os.environ.get("MEDACQ_RECORDINGS_DIR"):
        return Path(os.environ["MEDACQ_RECORDINGS_DIR"])
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "recordings"
    return Path(os.path.expanduser("~/.local/share/medacq/recordings"))


class RecordingService:
    """One optional :class:`Recorder` inside the daemon, driven by the ``record`` control request.

    Paths are confined to :func:`recordings_dir` (a control client cannot make the daemon
    write elsewhere).
    """

    def __init__(self, data_endpoints: list[str], curve: Any = None, settle_s: float | None = None) -> None:
        self.data_endpoints = data_endpoints
        self.curve = curve  # ClientKeys when the daemon uses CurveZMQ
        self.settle_s = settle_s  # EDF/BDF: descriptor wait (see Recorder)
        self.recorder: Recorder | None = None
        self.last: dict[str, Any] | None = None

    def _resolve(self, path: str | None, fmt: str) -> Path:
        from medacq.protocols.control import ControlError

        base = recordings_dir().resolve()
        ext = ".h5" if fmt == "hdf5" else f".{fmt}"
        p = Path(path) if path else Path(time.strftime(f"medacq-%Y%m%dT%H%M%S{ext}"))
        full = (p if p.is_absolute() else base / p).resolve()
        if full != base and base not in full.parents:
            raise ControlError("forbidden", f"recordings go under {base}; {path!r} is outside it")
        if full.exists():
            raise ControlError("bad_request", f"{full} exists; choose a new path")
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def handle(self, req: Any) -> dict[str, Any]:
        from medacq.protocols.control import ControlError

        if req.action == "status":
            return self.status()
        if req.action == "stop":
            if self.recorder is None:
                raise ControlError("bad_request", "not recording")
            self.stop()
            return self.status()
        if self.recorder is not None and self.recorder.is_alive():
            raise ControlError("busy", f"already recording to {self.recorder.path}")
        path = self._resolve(req.path, req.format)
        rec = Recorder(self.data_endpoints, req.topics, path, flush_s=req.flush_s, fmt=req.format,
                       settle_s=self.settle_s)
        rec.curve = self.curve
        rec.start()
        rec.ready.wait(5)
        if rec.state == "failed":
            raise ControlError("internal", f"recorder failed to start: {rec.error}")
        self.recorder = rec
        return self.status()

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
            self.last = self.recorder.status()
            self.recorder = None

    def status(self) -> dict[str, Any]:
        if self.recorder is not None:
            return self.recorder.status()
        return {"state": "off", "last": self.last}

    shutdown = stop


def recording_service(daemon: Any) -> RecordingService:
    """The daemon's recording service (created on first use)."""
    svc = getattr(daemon, "_recording", None)
    if svc is None:
        cfg = daemon.config
        curve = getattr(daemon, "curve", None)
        svc = RecordingService([cfg.daemon.data_endpoint, cfg.recon.data_endpoint],
                               curve.client_keys() if curve is not None else None,
                               settle_s=edf_settle_s(cfg.daemon.descriptor_interval_s))
        daemon._recording = svc
    return svc


def recording_status(daemon: Any) -> dict[str, Any]:
    """``recording`` key of the daemon's ``status``."""
    svc = getattr(daemon, "_recording", None)
    return svc.status() if svc is not None else {"state": "off"}


# -- CLI -----------------------------------------------------------------------------------------
def add_record_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", nargs="?", choices=["start", "stop", "status"],
                    help="control the daemon's built-in recorder instead of recording here")
    sp.add_argument("--topics", nargs="+", default=["raw/"], help="topic prefixes (default: raw/)")
    sp.add_argument("--out", help="output file (.h5; or .edf/.bdf with --format)")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.add_argument("--flush", type=float, default=1.0, help="checkpoint interval, s (default 1)")
    sp.add_argument("--format", choices=["hdf5", "edf", "bdf"], default="hdf5")
    sp.add_argument("--settle", type=float, metavar="S",
                    help="edf/bdf: wait up to S seconds after the first frame for every stream's descriptor "
                         "before creating the file (default: the rig's descriptor interval + 1 s, at least 2 s)")
    sp.add_argument("--no-fsync", action="store_true", help="skip fsync at checkpoints (kill -9 safe, not power-loss safe)")
    sp.add_argument("--progress", action="store_true", help="print one JSON line per checkpoint on stdout")
    sp.add_argument("--check", metavar="FILE", help="recover if needed and verify a recording, print a summary")
    sp.add_argument("--config", help="rig config (to find the endpoints)")
    sp.add_argument("--base-port", type=int, default=5555, help="without --config: the rig's first port")
    sp.add_argument("--endpoint", action="append", help="data endpoint(s) to subscribe to (repeatable); "
                                                        "with start/stop/status: the control endpoint")
    sp.add_argument("--timeout", type=float, default=5.0)
    sp.add_argument("--keys", help="CurveZMQ: this client's NAME.key_secret")
    sp.add_argument("--server-key", help="CurveZMQ: the daemon's public key file (NAME.key)")


def cmd_record(args: argparse.Namespace) -> int:
    from .cli import CliError, _client_curve, _endpoints, _load

    if args.check:
        if not os.path.exists(args.check):
            raise CliError(f"no such file: {args.check}", 2)
        summary = check_recording(args.check)
        print(json.dumps(summary, indent=2))
        return 1 if summary["problems"] else 0
    control, _, data = _endpoints(argparse.Namespace(config=args.config, base_port=args.base_port))
    if args.action:
        from .client import ControlClient, DaemonUnreachable, RequestFailed

        endpoint = (args.endpoint or [control])[0]
        fields: dict[str, Any] = {"action": args.action}
        if args.action == "start":
            fields.update(topics=args.topics, flush_s=args.flush, format=args.format)
            if args.out:
                fields["path"] = args.out
        try:
            with ControlClient(endpoint, timeout=args.timeout, curve=_client_curve(args)) as c:
                result = c.request("record", **fields)
        except DaemonUnreachable:
            raise CliError(f"no medacq daemon answers at {endpoint}", 3) from None
        except RequestFailed as exc:
            raise CliError(f"daemon refused record {args.action}: {exc}") from None
        print(json.dumps(result, indent=2, default=str))
        return 0
    if not args.out:
        raise CliError("--out FILE is required (or start/stop/status, or --check FILE)", 2)
    if os.path.exists(args.out):
        raise CliError(f"{args.out} exists; choose a new file", 2)

    def progress(st: dict[str, Any]) -> None:
        if args.progress:
            print(json.dumps({"checkpoint": st["checkpoints"], "frames": st["frames_recorded"],
                              "streams": st.get("streams", {}), "missed_frames": st["missed_frames"]}), flush=True)

    settle = args.settle
    if settle is None and args.format != "hdf5":
        from .config import DaemonSection

        interval = _load(args.config).daemon.descriptor_interval_s if args.config else \
            DaemonSection.model_fields["descriptor_interval_s"].default
        settle = edf_settle_s(interval)
    rec = Recorder(args.endpoint or data, args.topics, args.out, flush_s=args.flush, fmt=args.format,
                   durable=not args.no_fsync, on_checkpoint=progress, settle_s=settle)
    rec.curve = _client_curve(args)
    rec.start()
    rec.ready.wait(10)
    if rec.state == "failed":
        raise CliError(f"cannot record: {rec.error}")
    print(f"recording {' '.join(args.topics)} from {' '.join(rec.endpoints)} to {args.out}", file=sys.stderr,
          flush=True)
    end = None if args.for_s is None else time.monotonic() + args.for_s
    got: list[int] = []
    import signal

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, _f: got.append(signum))
    while not got and rec.is_alive() and (end is None or time.monotonic() < end):
        time.sleep(0.05)
    rec.stop()
    st = rec.status()
    print(json.dumps({k: st[k] for k in ("state", "frames_recorded", "checkpoints", "gaps_recorded",
                                         "missed_frames", "dropped_frames", "warnings", "streams", "error")
                      if k in st}, default=str),
          file=sys.stderr)
    return 0 if st["state"] == "stopped" else 1
