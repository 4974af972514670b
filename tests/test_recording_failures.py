"""Recording files when things fail: a commit that fails half-way, a recorder that fails, a file being
recorded, frames HDF5 cannot chunk as such (review 15: R1, R2, R3, L4)."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import time

import numpy as np
import pytest
import zmq

import medacq.daemon.recording.wal as wal_mod
from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter, RecordingBusyError, check_recording, open_recording
from medacq.daemon.recording.recorder import Recorder
from medacq.daemon.recording.wal import CheckpointedFile, CheckpointFailedError, recover, wal_path
from medacq.protocols.stream import MessageKind, StreamHeader, encode_header

from conftest import free_port, wait_for

SERIES = "66666666-6666-4666-8666-666666666666"


class _Crash(Exception):
    """The process "dies" here."""


def _frame_header(seq: int, arr: np.ndarray, stream: str = "v0") -> dict:
    return json.loads(encode_header(StreamHeader(
        stream=stream, kind=MessageKind.FRAME, series=SERIES, seq=seq, t_host_ns=1_000 + seq, t_mono_ns=2_000 + seq,
        dtype=arr.dtype.str, shape=list(arr.shape), axes=[f"a{i}" for i in range(arr.ndim)])))


# -- R1: a commit that fails while it applies its log ------------------------------------------------
def test_a_commit_that_failed_while_applying_refuses_later_commits_and_recovery_gives_the_new_content(
        tmp_path, monkeypatch):
    """ENOSPC on the first in-place write of step 4 (apply), after the log was committed: the object
    must refuse the next commit (which used to re-create the log with O_TRUNC, destroying the only
    record of a half-applied checkpoint: a crash right after it left a file neither old nor new)."""
    rng = random.Random(7)
    p = tmp_path / "r1.bin"
    f = CheckpointedFile(p, create=True)
    f.write(rng.randbytes(20_000))
    f.commit(durable=False)
    old = p.read_bytes()
    f.seek(100)
    f.write(rng.randbytes(9_000))  # in-place changes: extents of the log
    f.seek(0, 2)
    f.write(rng.randbytes(5_000))  # and a tail
    f.seek(0)
    new = f.read(f.size)
    assert len(new) == 25_000

    real_pwrite, real_create = wal_mod._pwrite_all, wal_mod._create_log
    state = {"log_committed": False}

    def failing_pwrite(fd, data, offset):
        if fd != f._fd and bytes(data[:1]) == b"C" and len(data) == wal_mod._WAL_END.size:
            state["log_committed"] = True
        elif fd == f._fd and state["log_committed"]:  # step 4: a torn write, then the disk is full
            real_pwrite(fd, memoryview(data)[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_pwrite(fd, data, offset)

    monkeypatch.setattr(wal_mod, "_pwrite_all", failing_pwrite)
    with pytest.raises(OSError, match="No space left"):
        f.commit(durable=False)
    monkeypatch.setattr(wal_mod, "_pwrite_all", real_pwrite)
    assert state["log_committed"] and os.path.exists(wal_path(p))
    assert p.read_bytes() not in (old, new)  # half-applied: only the log can finish it

    def create_then_die(path):  # the retry is killed right after it opened (and truncated) the log
        os.close(real_create(path))
        raise _Crash

    monkeypatch.setattr(wal_mod, "_create_log", create_then_die)
    with pytest.raises(CheckpointFailedError, match="an earlier checkpoint failed .*No space left"):
        f.commit(durable=False)
    with pytest.raises(CheckpointFailedError):  # and stays so
        f.commit(durable=False)
    monkeypatch.setattr(wal_mod, "_create_log", real_create)
    assert f.failed is not None and "OSError" in f.failed
    os.close(f._fd)  # the process is gone: its lock goes with it
    io.RawIOBase.close(f)
    assert recover(p) == "replayed"
    assert p.read_bytes() == new
    assert not os.path.exists(wal_path(p))


def test_a_commit_that_failed_before_its_log_was_complete_is_discarded_on_reopen(tmp_path, monkeypatch):
    p = tmp_path / "r1b.bin"
    f = CheckpointedFile(p, create=True)
    f.write(b"a" * 5000)
    f.commit(durable=False)
    old = p.read_bytes()
    f.write(b"b" * 7000)

    def eio(fd, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal_mod, "_pwrite_all", eio)
    with pytest.raises(OSError, match="Input/output"):
        f.commit(durable=False)
    monkeypatch.undo()
    with pytest.raises(CheckpointFailedError):  # no retry on the same object, even once the disk is fine
        f.commit(durable=False)
    f.close()
    g = CheckpointedFile(p)  # reopening recovers: the previous checkpoint
    assert p.read_bytes() == old and g.size == len(old)
    g.seek(0, 2)
    g.write(b"c")
    g.commit(durable=False)
    assert p.read_bytes() == old + b"c"
    g.close()


# -- R2: a recorder that fails lets its HDF5 file go ------------------------------------------------
def test_abort_releases_the_file_without_committing(tmp_path):
    p = tmp_path / "abort.h5"
    w = Hdf5RecordingWriter(p, durable=False)
    arr = np.arange(4, dtype="<f4")
    w.message("raw/v0", _frame_header(0, arr), arr)
    w.checkpoint()
    w.message("raw/v0", _frame_header(1, arr), arr + 1)  # buffered, never committed
    w.abort("disk on fire")
    w.abort("twice")  # idempotent
    s = check_recording(p)  # not locked any more
    assert s["problems"] == [] and not s["complete"] and s["recovery"] == "clean"
    assert s["streams"]["raw/v0"]["frames"] == 1
    with open_recording(p) as f:
        assert list(f["raw/v0/data_000/seq"][:]) == [0]
        assert not f.attrs["complete"]
    CheckpointedFile(p).close()  # a new writer gets the lock


def test_a_recorder_that_fails_releases_its_hdf5_file(tmp_path, monkeypatch):
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(ep)
    path = tmp_path / "failed.h5"
    rec = Recorder(ep, ["raw/"], path, flush_s=0.1, durable=False)
    rec.start()
    assert rec.ready.wait(5) and rec.state == "recording"

    def enospc(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_mod, "_pwrite_all", enospc)  # the next checkpoint fails
    wait_for(lambda: rec.state == "failed", timeout=10)
    monkeypatch.undo()
    assert "No space left" in (rec.error or "")
    s = check_recording(path)  # the recorder object is still referenced: its file must not be locked
    assert s["problems"] == [] and not s["complete"] and s["recovery"] == "discarded"
    rec.stop()
    pub.close(0)


# -- R3: a file being recorded ------------------------------------------------------------------------
def test_opening_a_file_being_recorded_says_so(tmp_path):
    p = tmp_path / "live.h5"
    w = Hdf5RecordingWriter(p, durable=False)
    try:
        for fn in (open_recording, check_recording):
            with pytest.raises(RecordingBusyError, match="is being recorded \\(locked by the recorder\\)"):
                fn(p)
        assert issubclass(RecordingBusyError, ValueError)  # `record --check` prints it as it is
    finally:
        w.close()
    assert check_recording(p)["complete"]


# -- L4: frame shapes and dtypes ------------------------------------------------------------------------
def test_frames_with_a_zero_length_axis_are_recorded(tmp_path):
    p = tmp_path / "empty_axis.h5"
    w = Hdf5RecordingWriter(p, durable=False)
    arr = np.zeros((3, 0), dtype="<i2")
    for seq in range(5):
        w.message("raw/v0", _frame_header(seq, arr), arr)
    w.close()
    assert check_recording(p)["streams"]["raw/v0"]["frames"] == 5
    with open_recording(p) as f:
        d = f["raw/v0/data_000"]
        assert d["frames"].shape == (5, 3, 0) and list(d["seq"][:]) == [0, 1, 2, 3, 4]
        assert json.loads(d.attrs["frame_shape"]) == [3, 0]


@pytest.mark.parametrize("dtype", ["longdouble", "clongdouble"])
def test_long_double_frames_are_refused_as_the_stream_protocol_does(tmp_path, dtype):
    dt = np.dtype(dtype)
    if dt.itemsize <= (8 if dt.kind == "f" else 16):
        pytest.skip(f"{dtype} is {dt.itemsize} bytes on this platform (not a long double)")
    w = Hdf5RecordingWriter(tmp_path / "ld.h5", durable=False)
    arr = np.zeros(4, dtype=dt)
    with pytest.raises(ValueError, match="not recorded"):
        w.message("raw/v0", _frame_header(0, arr), arr)
    ok = np.zeros(4, dtype="<c16")  # the largest the protocol carries still is
    w.message("raw/v0", _frame_header(1, ok), ok)
    w.close()
    assert check_recording(tmp_path / "ld.h5")["streams"]["raw/v0"]["frames"] == 1


def test_a_write_past_the_end_that_fails_is_kept_for_the_commit_not_raised_into_hdf5(tmp_path, monkeypatch):
    """h5py calls CheckpointedFile.write from inside HDF5, which must not see an exception: a failing
    write past the committed end keeps its error for commit(), and reads still see what was written."""
    p = tmp_path / "spill.bin"
    f = CheckpointedFile(p, create=True)
    f.write(b"a" * 5000)
    f.commit(durable=False)
    f.seek(0, 2)
    f.write(b"b" * 3000)  # reaches the file (past the committed end)

    def enospc(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_mod, "_pwrite_all", enospc)
    f.seek(6000)
    assert f.write(b"c" * 4000) == 4000  # no exception
    f.seek(4990)
    assert f.read(20000) == b"a" * 10 + b"b" * 1000 + b"c" * 4000
    f.truncate(9000)
    f.seek(8990)
    assert f.read(100) == b"c" * 10
    monkeypatch.undo()
    with pytest.raises(CheckpointFailedError, match="No space left"):
        f.commit(durable=False)
    f.close()
    g = CheckpointedFile(p)  # reopened: the last checkpoint
    assert p.read_bytes() == b"a" * 5000 and g.size == 5000
    g.close()
