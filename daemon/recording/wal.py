"""Crash-safe file I/O for recordings: a file object whose changes reach disk only at checkpoints, through a write-ahead log.

The HDF5 writer (:mod:`~medacq.daemon.recording.hdf5`) buffers the frames of one flush
interval, appends them to its h5py file at each *checkpoint*, and commits: h5py writes into a
:class:`CheckpointedFile`, and :meth:`CheckpointedFile.commit` publishes the result atomically
with respect to ``kill -9`` and, with ``durable``, power loss (the log and the directory entries
are fsynced in the order ``docs/operations.md`` describes). A file has one writer: an exclusive
``flock``, taken before anything is truncated.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import struct
import zlib
from typing import Any



__all__ = ["CheckpointFailedError", "CheckpointedFile", "FileLockedError", "recover", "wal_path"]

_PAGE = 4096
_WAL_MAGIC = b"MEDACQWL"
_WAL_HDR = struct.Struct("<8sIQQ")  # magic, version, old_size, new_size
_WAL_EXT = struct.Struct("<cQQ")  # b"E", offset, length
_WAL_END = struct.Struct("<cI")  # b"C", crc32 of everything before


class FileLockedError(RuntimeError):
    """The file is held (``flock``) by another writer, in this process or another."""


class CheckpointFailedError(OSError):
    """A commit of this :class:`CheckpointedFile` failed earlier: the file on disk may be half-applied
    (with its committed log next to it), so the object refuses further commits. Close it; reopening the
    file (or :func:`recover`) finishes or undoes the interrupted checkpoint."""


def wal_path(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + ".wal"


# Every call that changes a file or a directory goes through one of these (the crash tests replace
# them to interrupt a commit at any of them, and to drop what was not fsynced).
def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while len(mv):
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def _ftruncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _create_log(path: str) -> int:
    """Create (or empty) the write-ahead log; returns its descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _unlink(path: str) -> None:
    os.unlink(path)


def _fsync_dir(path: str) -> None:
    """fsync the directory holding ``path``: a file's creation or removal reaches the disk only so."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # a file system without directory fsync (some network ones)
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# -- crash-consistent file object ---------------------------------------------------------
class CheckpointedFile(io.RawIOBase):
    """A read/write file object whose on-disk content only changes at :meth:`commit`.

    Between commits every write lands in memory: pages of the committed file that were
    overwritten (copy-on-write, 4 KiB) and the bytes past its end. Reads see the new
    content. :meth:`commit` publishes all of it atomically with respect to ``kill -9``
    (and to power loss when ``durable``) through a write-ahead log; see the module doc.
    Memory use is the size of one checkpoint's changes.

    Args:
        path: the file.
        create: start from an empty file (an existing one is emptied, together with any
            leftover log) instead of recovering and continuing it.
        durable: with ``create``, fsync the emptied file and its directory.

    Raises :class:`FileLockedError` when another :class:`CheckpointedFile` (in any process)
    has the file open: its content is left untouched (the lock is taken before anything is
    truncated).
    """

    def __init__(self, path: str | os.PathLike[str], create: bool = False, durable: bool = True) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no O_TRUNC: lock first
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise FileLockedError(f"{self.path} is being written by another recorder; it was left untouched") from None
        try:
            if create:
                try:  # first: a leftover log must never be replayed onto the new file
                    _unlink(wal_path(self.path))
                    if durable:
                        _fsync_dir(self.path)
                except FileNotFoundError:
                    pass
                if os.fstat(self._fd).st_size:
                    _ftruncate(self._fd, 0)
                if durable:
                    _fsync(self._fd)
                    _fsync_dir(self.path)
            else:
                _recover_locked(self.path, self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._disk = os.fstat(self._fd).st_size  # committed size
        self._lbase = self._disk  # logical offset where the in-memory tail starts
        self._patches: dict[int, bytearray] = {}
        self._tail = bytearray()
        self._pos = 0
        self.commits = 0
        self.bytes_committed = 0
        self.failed: str | None = None  # why a commit failed: then no further commit (see CheckpointFailedError)

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
        """Publish every change since the last commit. Returns the bytes written to the file.

        Any failure (``ENOSPC``, ``EIO``...) leaves the object refusing every later commit with
        :class:`CheckpointFailedError`: the log of a checkpoint that failed while being applied must be
        replayed by a recovery, never overwritten by the next commit's log (and an ``fsync`` retried
        after ``EIO`` may falsely succeed).
        """
        if self.failed is not None:
            raise CheckpointFailedError(errno.EIO, f"{self.path}: an earlier checkpoint failed ({self.failed}); "
                                        "close it and reopen the file to recover it")
        if not self.dirty:
            return 0
        try:
            return self._commit(durable)
        except BaseException as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            raise

    def _commit(self, durable: bool) -> int:
        new_size = self.size
        extents: list[tuple[int, bytes | memoryview]] = []
        run: list[bytearray] = []  # adjacent pages become one extent: one log record, one write
        start = end = 0
        for pg, p in sorted(self._patches.items()):
            if run and pg * _PAGE != end:
                extents.append((start, b"".join(run)))
                run = []
            if not run:
                start = pg * _PAGE
            run.append(p)
            end = pg * _PAGE + len(p)
        if run:
            extents.append((start, b"".join(run)))
        pre: tuple[int, memoryview] | None = None
        if self._tail:
            split = max(0, min(len(self._tail), self._disk - self._lbase))
            if split:
                extents.append((self._lbase, memoryview(self._tail)[:split]))
            if split < len(self._tail):
                pre = (self._lbase + split, memoryview(self._tail)[split:])
        wpath = wal_path(self.path)
        wfd = _create_log(wpath)
        log_on_disk = False  # durable: the log and its directory entry are fsynced
        try:
            hdr = _WAL_HDR.pack(_WAL_MAGIC, 1, self._disk, new_size)
            _pwrite_all(wfd, hdr, 0)  # 1. the log names the committed size first
            if pre is not None:  # 2. new bytes past the committed end: invisible to HDF5 until 4.
                if durable:  # the log must survive power loss before the file grows: it says where to cut
                    _fsync(wfd)
                    _fsync_dir(wpath)
                    log_on_disk = True
                _pwrite_all(self._fd, pre[1], pre[0])
                if durable:
                    _fsync(self._fd)
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
                _fsync(wfd)
                if not log_on_disk:
                    _fsync_dir(wpath)
            for o, data in extents:  # 4. apply
                _pwrite_all(self._fd, data, o)
            if os.fstat(self._fd).st_size != new_size:
                _ftruncate(self._fd, new_size)
            if durable:
                _fsync(self._fd)
        finally:
            os.close(wfd)
        _unlink(wpath)  # 5. done (a replay of a leftover log is idempotent)
        if durable:  # a log that came back after power loss would be replayed: harmless, but not left to chance
            _fsync_dir(wpath)
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
                _ftruncate(fd, new_size)
                result = "replayed"
            elif os.fstat(fd).st_size > old_size:
                _ftruncate(fd, old_size)  # drop bytes appended by the unfinished checkpoint
            _fsync(fd)  # the file is whole before its log goes
    _unlink(wpath)
    _fsync_dir(wpath)
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
