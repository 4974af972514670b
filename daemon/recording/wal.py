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
    """A read/write file object whose committed content only changes at :meth:`commit`.

    Between commits, changes to the committed bytes land in memory (copy-on-write 4 KiB pages;
    the part of a shrunk file's tail that lies inside the committed size, too), and bytes past
    the committed end are written straight to the file, where no reader looks: the committed
    size, named by a write-ahead log created before the first of them, is where a recovery cuts
    the file. Reads see the new content. :meth:`commit` publishes everything atomically with
    respect to ``kill -9`` (and to power loss when ``durable``) through that log; see the
    module doc. Memory use is the size of one checkpoint's in-place changes (an appending
    recording: a few pages of HDF5 metadata).

    Args:
        path: the file.
        create: start from an empty file (an existing one is emptied, together with any
            leftover log) instead of recovering and continuing it.
        durable: with ``create``, fsync the emptied file and its directory; and fsync the log
            and its directory before the first byte past the committed end is written (so that
            after power loss a file that grew always comes with the log that says where to cut).

    Raises :class:`FileLockedError` when another :class:`CheckpointedFile` (in any process)
    has the file open: its content is left untouched (the lock is taken before anything is
    truncated).
    """

    def __init__(self, path: str | os.PathLike[str], create: bool = False, durable: bool = True) -> None:
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
        self.durable = durable
        self._disk = os.fstat(self._fd).st_size  # committed size (the file's size at the last commit)
        self._lbase = self._disk  # logical offset where the in-memory tail starts (<= _disk)
        self._patches: dict[int, bytearray] = {}  # page number -> new content, below _lbase
        self._tail = bytearray()  # logical [_lbase, min(_size, _disk)): always exactly that long
        self._size = self._disk  # logical size
        self._phys = self._disk  # the file's size: [_disk, _phys) holds direct bytes, [_phys, _size) reads 0
        self._wfd: int | None = None  # the log of this interval, once a direct byte was written
        self._spill: bytearray | None = None  # after a failed direct write: [_disk, _size) in memory
        self._log_durable = False
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
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        pos = self._pos
        n = max(0, min(len(out), self._size - pos))
        end = pos + n
        if pos < self._lbase:  # committed bytes, with the pages changed since
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
        if end > self._lbase and pos < self._disk:  # the in-memory tail (inside the committed size)
            s, t = max(pos, self._lbase), min(end, self._disk)
            out[s - pos : t - pos] = self._tail[s - self._lbase : t - self._lbase]
        if end > self._disk and self._spill is not None:  # (a direct write failed: see _direct)
            s = max(pos, self._disk)
            out[s - pos : n] = self._spill[s - self._disk : end - self._disk]
        elif end > self._disk:  # past the committed end: in the file, zeros past what was written
            s = max(pos, self._disk)
            t = min(end, self._phys)
            if t > s:
                data = os.pread(self._fd, t - s, s)
                out[s - pos : s - pos + len(data)] = data
                s += len(data)
            if end > s:
                out[s - pos : n] = bytes(end - s)
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
        if end > self._size:
            self._grow(end)
        if end > self._lbase and pos < self._disk:
            s, t = max(pos, self._lbase), min(end, self._disk)
            self._tail[s - self._lbase : t - self._lbase] = mv[s - pos : t - pos]
        if end > self._disk:
            s = max(pos, self._disk)
            self._direct(mv[s - pos :], s)
        self._pos = end
        return n

    def _grow(self, size: int) -> None:
        """The logical size becomes ``size`` (> the current one): new bytes read 0."""
        if self._lbase < self._disk:  # the in-memory tail covers up to the committed size
            k = min(size, self._disk) - self._lbase
            if k > len(self._tail):
                self._tail.extend(bytes(k - len(self._tail)))
        if self._spill is not None and size - self._disk > len(self._spill):
            self._spill.extend(bytes(size - self._disk - len(self._spill)))
        self._size = size

    def _direct(self, data: memoryview, offset: int) -> None:
        """Write bytes past the committed end to the file (``offset`` >= the committed size).

        Never raises: h5py calls this from inside HDF5, which is not made to survive a failing
        write (its state may be left broken, up to a crash of the process). A failure (``ENOSPC``,
        ``EIO``...) is kept in :attr:`failed`, the rest of the interval is held in memory so that
        reads stay true, and the next :meth:`commit` raises it, outside HDF5.
        """
        if self._spill is None:
            try:
                if self._wfd is None:
                    self._begin_log()
                _pwrite_all(self._fd, data, offset)
                self._phys = max(self._phys, offset + len(data))
                return
            except Exception as exc:  # noqa: BLE001 - see above: raised by commit()
                self.failed = self.failed or f"{type(exc).__name__}: {exc}"
                self._start_spill()
        assert self._spill is not None
        k = offset - self._disk
        self._spill[k : k + len(data)] = data

    def _start_spill(self) -> None:
        """After a failed direct write: the bytes past the committed end, as far as they were written,
        into memory (zeros where they cannot be read back)."""
        spill = bytearray(max(0, self._size - self._disk))
        try:
            got = os.pread(self._fd, max(0, min(self._phys, self._size) - self._disk), self._disk)
            spill[: len(got)] = got[: len(spill)]
        except OSError:
            pass
        self._spill = spill

    def _begin_log(self) -> None:
        """Create this interval's log, naming the committed size, before the file grows past it."""
        wpath = wal_path(self.path)
        wfd = _create_log(wpath)
        try:
            _pwrite_all(wfd, _WAL_HDR.pack(_WAL_MAGIC, 1, self._disk, self._disk), 0)
            if self.durable:  # after power loss, a file that grew must come with the log that says where to cut
                _fsync(wfd)
                _fsync_dir(wpath)
        except BaseException:
            os.close(wfd)
            raise
        self._wfd, self._log_durable = wfd, self.durable

    def truncate(self, size: int | None = None) -> int:
        n = self._pos if size is None else size
        if n > self._size:
            self._grow(n)
            return n
        if n >= self._lbase:
            if n < self._disk:
                del self._tail[n - self._lbase :]
        else:  # shrink into committed bytes: they become part of the (empty) tail
            self._tail = bytearray()
            for pg in [pg for pg in self._patches if pg * _PAGE >= n]:
                del self._patches[pg]
            last = n // _PAGE
            if last in self._patches:
                del self._patches[last][n - last * _PAGE :]
            self._lbase = n
        self._size = n
        if self._spill is not None:
            del self._spill[max(0, n - self._disk) :]
            return n
        cut = max(n, self._disk)  # never below the committed size: that is the commit's job
        if self._phys > cut:
            try:
                _ftruncate(self._fd, cut)
                self._phys = cut
            except Exception as exc:  # noqa: BLE001 - as in _direct: raised by commit(), outside HDF5
                self.failed = self.failed or f"{type(exc).__name__}: {exc}"
                self._start_spill()
        return n

    def flush(self) -> None:  # h5py calls this; publishing is commit()'s job
        pass

    def fileno(self) -> int:
        return self._fd

    # checkpoints
    @property
    def dirty(self) -> bool:
        return bool(self._patches or self._tail or self._size != self._disk or self._phys != self._disk)

    def commit(self, durable: bool = True) -> int:
        """Publish every change since the last commit. Returns the bytes written to the file
        (at the commit and, for bytes past the committed end, before it).

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
        new_size = self._size
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
        if self._tail:  # (all of it inside the committed size)
            extents.append((self._lbase, memoryview(self._tail)))
        direct = self._phys - self._disk
        wpath = wal_path(self.path)
        if self._wfd is None:
            self._wfd, self._log_durable = _create_log(wpath), False
        wfd = self._wfd
        hdr = _WAL_HDR.pack(_WAL_MAGIC, 1, self._disk, new_size)
        _pwrite_all(wfd, hdr, 0)  # 1. the log names the committed size (and now the new one)
        if durable:
            if direct:  # 2. the bytes past the committed end, written since the log began, reach the disk
                _fsync(self._fd)
            if not self._log_durable:
                _fsync(wfd)
                _fsync_dir(wpath)
                self._log_durable = True
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
        for o, data in extents:  # 4. apply
            _pwrite_all(self._fd, data, o)
        if os.fstat(self._fd).st_size != new_size:
            _ftruncate(self._fd, new_size)
        if durable:
            _fsync(self._fd)
        self._wfd = None
        os.close(wfd)
        _unlink(wpath)  # 5. done (a replay of a leftover log is idempotent)
        if durable:  # a log that came back after power loss would be replayed: harmless, but not left to chance
            _fsync_dir(wpath)
        written = sum(len(d) for _, d in extents) + direct
        self._disk = self._lbase = self._size = self._phys = new_size
        self._patches = {}
        self._tail = bytearray()
        self.commits += 1
        self.bytes_committed += written
        return written

    def close(self) -> None:
        """Close the file. Changes since the last commit are dropped: bytes written past the committed
        end are cut off and the interval's log removed (left to the next recovery if that fails, or
        if a failed commit left a log that must be replayed)."""
        if not self.closed:
            try:
                if self._wfd is not None:
                    wfd, self._wfd = self._wfd, None
                    os.close(wfd)
                    if self.failed is None:  # a log without its commit record: undo what it covers
                        try:
                            if self._phys != self._disk:
                                _ftruncate(self._fd, self._disk)
                            _unlink(wal_path(self.path))
                        except OSError:
                            pass  # the log stays: the next open cuts the file to the committed size
            finally:
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
