"""Crash-safe file I/O for recordings: a file object whose changes reach disk only at checkpoints, through a write-ahead log.

A :class:`Recorder` is one more subscriber (its own SUB sockets, its own thread): it can
never stall acquisition. It buffers the frames of one flush interval in memory, then at
each *checkpoint* appends them to resizable, chunked HDF5 datasets (h5py) and commits.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import zlib
from typing import Any



__all__ = ["CheckpointedFile", "recover", "wal_path"]

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
