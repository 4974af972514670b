"""Recording: the crash-consistent file, the HDF5 layout, gaps, and real ``kill -9`` of recorder and daemon."""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

import medacq.daemon.recording.wal as wal_mod
from medacq.client import ControlClient, RequestFailed
from medacq.daemon.common.config import dump_config, parse_config
from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter, check_recording, open_recording
from medacq.daemon.recording.recorder import Recorder
from medacq.daemon.recording.wal import CheckpointFailedError, CheckpointedFile, FileLockedError, recover, wal_path
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.protocols.stream import MessageKind, StreamHeader, encode_header
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame

from conftest import free_port, medacq_cmd, wait_for

SETTINGS = {"shape": [4, 16], "rate_hz": 400.0, "seed": 11, "dtype": "<f4"}
EXPECT_CFG = SynthConfig(shape=SETTINGS["shape"], dtype=SETTINGS["dtype"], rate_hz=SETTINGS["rate_hz"],
                         seed=SETTINGS["seed"])


# -- CheckpointedFile ------------------------------------------------------------------------
def _mutate(f: CheckpointedFile, ref: bytearray, rng: random.Random, n_ops: int = 40) -> None:
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.1 and len(ref) > 10:
            n = rng.randrange(len(ref) // 2, len(ref) + 9000)
            f.truncate(n)
            if n < len(ref):
                del ref[n:]
            else:
                ref.extend(bytes(n - len(ref)))
            continue
        pos = rng.randrange(0, len(ref) + 6000)
        data = rng.randbytes(rng.choice([1, 7, 96, 4096, 5000, 20000]))
        f.seek(pos)
        f.write(data)
        if pos > len(ref):
            ref.extend(bytes(pos - len(ref)))
        ref[pos:pos + len(data)] = data
        if rng.random() < 0.3:  # reads see the uncommitted content
            p = rng.randrange(0, len(ref) + 1)
            f.seek(p)
            buf = bytearray(min(9000, len(ref) - p))
            assert f.readinto(buf) == len(buf)
            assert buf == ref[p:p + len(buf)]


def test_checkpointed_file_changes_disk_only_at_commit(tmp_path):
    """Between checkpoints the committed bytes never change; bytes past the committed end may be in
    the file already, but a process killed there leaves the committed content (recovery cuts them)."""
    rng = random.Random(3)
    p = tmp_path / "x.bin"
    f = CheckpointedFile(p, create=True)
    ref = bytearray()
    grew = 0
    for i in range(6):
        before = p.read_bytes()
        _mutate(f, ref, rng)
        now = p.read_bytes()
        assert now[: len(before)] == before  # the committed bytes are untouched
        if len(now) > len(before):
            grew += 1
            assert os.path.exists(wal_path(p))  # the log naming the committed size came first
        killed = tmp_path / f"killed{i}"  # what a kill -9 here would leave: the file and its log, as they are
        killed.mkdir()
        shutil.copy(p, killed / p.name)
        if os.path.exists(wal_path(p)):
            shutil.copy(wal_path(p), wal_path(killed / p.name))
        recover(killed / p.name)
        assert (killed / p.name).read_bytes() == before
        f.commit(durable=False)
        assert p.read_bytes() == bytes(ref)
        assert not os.path.exists(wal_path(p))
    assert grew  # the case above was exercised
    f.close()


def test_closing_without_a_commit_drops_what_was_written_past_the_committed_end(tmp_path):
    p = tmp_path / "y.bin"
    f = CheckpointedFile(p, create=True, durable=False)
    f.write(b"a" * 5000)
    f.commit(durable=False)
    f.seek(0, 2)
    f.write(b"b" * 9000)
    f.seek(10)
    f.write(b"c" * 10)
    assert len(p.read_bytes()) == 14000 and os.path.exists(wal_path(p))
    f.close()
    assert p.read_bytes() == b"a" * 5000 and not os.path.exists(wal_path(p))


class _Crash(Exception):
    pass


def test_a_crash_at_every_write_of_a_commit_leaves_old_or_new_content(tmp_path, monkeypatch):
    """Interrupt commit() at each of its writes in turn: recovery yields exactly the old or the new file."""
    real = wal_mod._pwrite_all
    outcomes = set()
    for crash_at in range(0, 400):
        rng = random.Random(5)  # the same mutations each time; the crash moves through the commit
        p = tmp_path / f"c{crash_at}.bin"
        f = CheckpointedFile(p, create=True)
        ref = bytearray()
        _mutate(f, ref, rng)
        f.commit(durable=False)
        old = bytes(ref)
        _mutate(f, ref, rng)
        new = bytes(ref)
        calls = [0]

        def crashing(fd, data, offset, _n=crash_at):
            if calls[0] == _n:
                # a torn write: half of it lands, then the process "dies"
                real(fd, memoryview(data)[: len(data) // 2], offset)
                raise _Crash
            calls[0] += 1
            real(fd, data, offset)

        monkeypatch.setattr(wal_mod, "_pwrite_all", crashing)
        try:
            f.commit(durable=False)
            crashed = False
        except _Crash:
            crashed = True
        monkeypatch.setattr(wal_mod, "_pwrite_all", real)
        os.close(f._fd)  # the process is gone: its lock goes with it
        io.RawIOBase.close(f)  # (and the object must not close the fd number again)
        result = recover(p)
        content = p.read_bytes()
        assert content in (old, new), f"crash at write {crash_at}: neither old nor new content"
        if not crashed:
            assert content == new and result == "clean" and crash_at > 3
            break
        outcomes.add(result)
        assert (content == new) == (result == "replayed")
    assert outcomes == {"discarded", "replayed"}  # both branches of recovery were exercised


# -- HDF5 layout -----------------------------------------------------------------------------------
def _h(stream, kind, series, seq, **kw):
    return json.loads(encode_header(StreamHeader(stream=stream, kind=kind, series=series, seq=seq,
                                                 t_host_ns=1_000 + seq, t_mono_ns=2_000 + seq, **kw)))


def test_layout_series_blocks_gaps_and_counts(tmp_path):
    p = tmp_path / "r.h5"
    w = Hdf5RecordingWriter(p, durable=False)
    a, b = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    desc = {"stream": "s0", "modality": "synthetic", "dtype": "<i2", "shape": [2, 3], "axes": ["channel", "sample"],
            "units": "uV"}
    w.message("raw/s0", _h("s0", MessageKind.SERIES_START, a, 0), None)
    w.message("raw/s0", _h("s0", MessageKind.DESCRIPTOR, a, 0, descriptor=desc), None)
    frames = {}
    for seq in (0, 1, 2, 5):
        arr = np.full((2, 3), seq, "<i2")
        frames[seq] = arr
        w.message("raw/s0", _h("s0", MessageKind.FRAME, a, seq, dtype="<i2", shape=[2, 3], axes=["channel", "sample"],
                                units="uV", t_device=seq * 0.5), arr)
    w.gap("raw/s0", "s0", a, 3, 2, True, "device counter jump", 24)
    w.checkpoint()
    w.message("raw/s0", _h("s0", MessageKind.SERIES_END, a, 6, reason="reconfigured"), None)
    w.message("raw/s0", _h("s0", MessageKind.SERIES_START, b, 0), None)
    for seq in range(3):  # the new series has another shape: a new block
        w.message("raw/s0", _h("s0", MessageKind.FRAME, b, seq, dtype="<f4", shape=[5], axes=["sample"], units="uV"),
                  np.arange(5, dtype="<f4") + seq)
    w.gap("raw/s0", "s0", b, None, 0, False, "missing seq", None)
    w.close()
    s = check_recording(p)
    assert s["problems"] == [] and s["complete"] and s["recovery"] == "clean"
    assert s["streams"]["raw/s0"] == {"frames": 7, "gaps": 2, "gap_frames": 2, "series": 2, "blocks": 2}
    with open_recording(p) as f:
        g = f["raw/s0"]
        assert g.attrs["NX_class"] == "NXentry" and g.attrs["topic"] == "raw/s0"
        d0 = g["data_000"]
        assert d0.attrs["NX_class"] == "NXdata" and d0.attrs["signal"] == "frames"
        assert d0["frames"].shape == (4, 2, 3) and d0.attrs["frame_count"] == 4
        np.testing.assert_array_equal(d0["frames"][3], frames[5])
        assert list(d0["seq"][:]) == [0, 1, 2, 5]
        assert list(d0["t_host_ns"][:]) == [1000, 1001, 1002, 1005]
        assert list(d0["t_device"][:]) == [0, 0.5, 1.0, 2.5]
        d1 = g["data_001"]
        assert d1["frames"].shape == (3, 5) and list(d1["series_index"][:]) == [1, 1, 1]
        assert np.isnan(d1["t_device"][:]).all()
        s0, s1 = g["series/0000"], g["series/0001"]
        assert s0.attrs["series"] == a and s0.attrs["end_reason"] == "reconfigured" and s0.attrs["frames"] == 4
        assert json.loads(s0.attrs["descriptor"])["units"] == "uV"
        assert s1.attrs["end_reason"].startswith("(open)") and json.loads(s1.attrs["blocks"]) == ["data_001"]
        gaps = g["gaps"][:]
        assert (gaps[0]["first_seq"], gaps[0]["count"], gaps[0]["announced"], gaps[0]["lost_samples"]) == (3, 2, 1, 24)
        assert gaps[0]["reason"].decode() == "device counter jump" and gaps[0]["series_index"] == 0
        assert (gaps[1]["first_seq"], gaps[1]["count"], gaps[1]["announced"]) == (-1, 0, 0)


def _pub(endpoint):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.PUB)
    s.bind(endpoint)
    return s


def test_recorder_records_subscriber_detected_holes_and_shape_changes(tmp_path):
    """Frames a recorder never received are recorded as (unannounced) gaps, never hidden."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = _pub(ep)
    rec = Recorder(ep, ["raw/"], tmp_path / "h.h5", flush_s=0.1, durable=False)
    rec.start()
    rec.ready.wait(5)
    series = "33333333-3333-4333-8333-333333333333"

    def send(kind, seq, arr=None, **kw):
        parts = [b"raw/v0", encode_header(StreamHeader(stream="v0", kind=kind, series=series, seq=seq,
                                                       t_host_ns=time.time_ns(), t_mono_ns=time.monotonic_ns(), **kw))]
        if arr is not None:
            parts.append(arr)
        pub.send_multipart(parts)

    deadline = time.monotonic() + 10
    while "raw/v0" not in rec.writer.streams and time.monotonic() < deadline:  # ZeroMQ's slow joiner
        send(MessageKind.HEARTBEAT, 0)
        time.sleep(0.05)
    send(MessageKind.SERIES_START, 0)
    send(MessageKind.FRAME, 0, np.zeros(3, "<f4"), dtype="<f4", shape=[3], axes=["sample"])
    for seq in (1, 2, 6, 7):  # 3..5 never sent: a hole the recorder must detect
        n = 3 if seq < 6 else 4  # variable shape: one block per shape
        send(MessageKind.FRAME, seq, np.full(n, seq, "<f4"), dtype="<f4", shape=[n], axes=["sample"])
    wait_for(lambda: rec.status()["frames_recorded"] >= 5, timeout=10)
    st = rec.status()
    assert st["missed_frames"] == 3 and st["behind"]  # it says so in its status
    rec.stop()
    pub.close(0)
    s = check_recording(tmp_path / "h.h5")
    assert s["problems"] == []
    with open_recording(tmp_path / "h.h5") as f:
        g = f["raw/v0"]
        holes = [r for r in g["gaps"][:] if r["count"] == 3]
        assert len(holes) == 1 and (holes[0]["first_seq"], holes[0]["announced"]) == (3, 0)
        assert holes[0]["reason"].decode() == "missing seq"
        seqs = {int(x) for k in g if k.startswith("data_") for x in g[k]["seq"][:]}
        assert {1, 2, 6, 7} <= seqs and not seqs & {3, 4, 5}
        shapes = {tuple(json.loads(g[k].attrs["frame_shape"])) for k in g if k.startswith("data_")}
        assert shapes == {(3,), (4,)}
        np.testing.assert_array_equal(g["data_001"]["frames"][:], [[6] * 4, [7] * 4])


# -- end to end with real kill -9 ------------------------------------------------------------------
def _verify_synth_recording(path: Path, min_frames: int) -> dict:
    """Recover, check counts, and compare every recorded frame with the simulator's truth."""
    s = check_recording(path)
    assert s["problems"] == [], s
    with open_recording(path) as f:
        g = f["raw/syn0"]
        total = 0
        for k in [k for k in g if k.startswith("data_")]:
            blk = g[k]
            n = int(blk.attrs["frame_count"])
            frames = blk["frames"][:]
            seqs = blk["seq"][:]
            sidx = blk["series_index"][:]
            assert frames.shape[0] == n == seqs.shape[0]
            for i in range(n):
                np.testing.assert_array_equal(frames[i], synth_frame(EXPECT_CFG, int(seqs[i])))
            # within a series, every missing seq is accounted for by a recorded gap
            gaps = g["gaps"][:]
            for si in np.unique(sidx):
                q = np.sort(seqs[sidx == si].astype(np.int64))
                holes = np.flatnonzero(np.diff(q) != 1)
                for h in holes:
                    first, count = q[h] + 1, q[h + 1] - q[h] - 1
                    assert any(r["series_index"] == si and r["first_seq"] == first and r["count"] == count
                               for r in gaps), f"hole {first}+{count} not recorded"
            total += n
    assert total >= min_frames
    return s


@pytest.fixture
def synth_daemon(endpoints):
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": SETTINGS}]})
        d = AcquisitionDaemon(cfg).start()
        try:
            wait_for(lambda: d.workers["syn0"].stats.frames_published > 0, timeout=15)
            yield cfg, d, sim
        finally:
            d.shutdown()


def test_kill_9_recorder_at_random_moments(synth_daemon, tmp_path):
    cfg, d, sim = synth_daemon
    rng = random.Random(1234)
    for i in range(6):
        out = tmp_path / f"k{i}.h5"
        p = subprocess.Popen(medacq_cmd("record", "--endpoint", cfg.daemon.data_endpoint, "--topics", "raw/",
                                        "--out", str(out), "--flush", "0.1", "--progress"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        try:
            first = p.stdout.readline()  # the first checkpoint is on disk
            assert first, p.stderr.read()
            lines.append(first)
            time.sleep(rng.uniform(0.0, 0.5))
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
        lines += p.stdout.read().splitlines()
        last = json.loads(lines[-1])
        s = _verify_synth_recording(out, last["frames"])
        assert s["complete"] is False and s["checkpoints"] >= last["checkpoint"]
    assert d.workers["syn0"].stats.frames_published > 0


def test_record_control_command_and_kill_9_of_the_daemon(endpoints, tmp_path):
    """``record start/stop/status`` inside the daemon; then a daemon ``kill -9`` mid-recording."""
    rec_dir = tmp_path / "recordings"
    env = {**os.environ, "MEDACQ_RECORDINGS_DIR": str(rec_dir)}
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        doc = {**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                        "settings": SETTINGS}]}
        cfg_path = tmp_path / "rig.toml"
        cfg_path.write_text(dump_config(doc))
        cfg = parse_config(doc)
        daemon = subprocess.Popen(medacq_cmd("run", "--config", str(cfg_path)), env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with ControlClient(cfg.daemon.control_endpoint, timeout=5) as c:
                wait_for(lambda: _try(c, "status"), timeout=20)
                assert c.request("status")["recording"]["state"] == "off"
                with pytest.raises(RequestFailed) as e:
                    c.request("record", action="start", path="/etc/evil.h5")
                assert e.value.code == "forbidden"
                # a clean start/stop first
                st = c.request("record", action="start", topics=["raw/"], path="a/clean.h5", flush_s=0.2)
                assert st["state"] == "recording" and st["path"] == str(rec_dir / "a" / "clean.h5")
                with pytest.raises(RequestFailed) as e:
                    c.request("record", action="start", path="b.h5")
                assert e.value.code == "busy"
                wait_for(lambda: c.request("status")["recording"]["frames_recorded"] >= 100, timeout=20)
                st = c.request("record", action="stop")
                assert st["state"] == "off" and st["last"]["state"] == "stopped"
                s = _verify_synth_recording(rec_dir / "a" / "clean.h5", 100)
                assert s["complete"] and s["streams"]["raw/syn0"]["frames"] == st["last"]["frames_recorded"]
                # now record again and kill the whole daemon
                c.request("record", action="start", path="crash.h5", flush_s=0.2)
                wait_for(lambda: c.request("status")["recording"]["frames_recorded"] >= 50, timeout=20)
                committed = c.request("record", action="status")["frames_recorded"]
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(5)
        s = _verify_synth_recording(rec_dir / "crash.h5", committed)
        assert s["complete"] is False


def _try(c, cmd):
    try:
        return c.request(cmd, timeout=0.5)
    except Exception:  # noqa: BLE001
        return None


def test_announced_device_gap_lands_in_the_file(synth_daemon, tmp_path):
    cfg, d, sim = synth_daemon
    rec = Recorder(cfg.daemon.data_endpoint, ["raw/syn0"], tmp_path / "g.h5", flush_s=0.2, durable=False)
    rec.start()
    wait_for(lambda: rec.status()["frames_recorded"] > 20, timeout=15)
    sim.call(sim.interface.drop_frames, 5)
    wait_for(lambda: rec.status()["gaps_recorded"] >= 1 and rec.status()["frames_recorded"] > 80, timeout=15)
    rec.stop()
    dropped = sim.interface.dropped
    _verify_synth_recording(tmp_path / "g.h5", 80)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        gaps = f["raw/syn0/gaps"][:]
    announced = [g for g in gaps if g["announced"]]
    assert len(announced) == 1 and (announced[0]["first_seq"], announced[0]["count"]) == (dropped[0], 5)


# -- power loss: what survives is what was fsynced ---------------------------------------------------
_HOOKS = ("_pwrite_all", "_ftruncate", "_fsync", "_create_log", "_unlink", "_fsync_dir")


class _PowerLossDisk:
    """A model of the page cache between wal.py and the real files of one folder.

    Every hooked call (:data:`_HOOKS`) reaches the real file and is logged (fsyncs only the model:
    it alone decides what is durable). ``fsync`` makes the file's current content durable; ``_fsync_dir`` makes the folder's current names durable.
    :meth:`cut` (the power goes) rewrites the real folder to its durable state plus a random
    subset of what happened since: each 4 KiB piece of each write, each truncate, each creation
    and each removal is kept or lost independently. ``crash_at=n`` raises :class:`_Crash` at
    the n-th call (a write then lands half, torn).
    """

    def __init__(self, folder: Path, crash_at: int | None = None) -> None:
        self.folder, self.crash_at, self.calls = folder, crash_at, 0
        self.log: list[tuple] = []
        self._ids = iter(range(1 << 30))
        self.inodes: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> file id
        self.names: dict[str, int] = {}  # what the folder holds now
        self.durable_names: dict[str, int] = {}  # what it holds after a power cut, for sure
        self.durable: dict[int, bytes] = {}  # file id -> content after a power cut, for sure
        self.pending: dict[int, list[tuple]] = {}  # file id -> writes and truncates since its last fsync
        self.dir_pending: list[tuple] = []
        for name in sorted(os.listdir(folder)):  # the starting point is on disk
            fid = self._register(folder / name)
            self.durable_names[name] = fid
            self.durable[fid] = (folder / name).read_bytes()

    def _register(self, path: Path) -> int:
        st = os.stat(path)
        fid = next(self._ids)
        self.inodes[(st.st_dev, st.st_ino)] = fid
        self.names[path.name] = fid
        self.pending[fid] = []
        self.durable.setdefault(fid, b"")
        return fid

    def _fid(self, fd: int) -> int:
        st = os.fstat(fd)
        return self.inodes[(st.st_dev, st.st_ino)]

    def _tick(self, what: str) -> bool:
        """Count a call; True when the process dies at this one."""
        self.log.append((what,))
        self.calls += 1
        return self.crash_at is not None and self.calls - 1 == self.crash_at

    # the hooks
    def pwrite_all(self, fd: int, data: Any, offset: int) -> None:
        data = bytes(data)
        torn = self._tick("write")
        if torn:
            data = data[: len(data) // 2]
        os.pwrite(fd, data, offset)
        self.pending[self._fid(fd)].append(("w", offset, data))
        self.log[-1] = ("write", self._fid(fd))
        if torn:
            raise _Crash

    def ftruncate(self, fd: int, size: int) -> None:
        if self._tick("ftruncate"):
            raise _Crash
        os.ftruncate(fd, size)
        self.pending[self._fid(fd)].append(("t", size))

    def fsync(self, fd: int) -> None:
        if self._tick("fsync"):
            raise _Crash
        fid = self._fid(fd)
        self.log[-1] = ("fsync", fid)
        with open(f"/proc/self/fd/{fd}", "rb") as f:  # (the log's descriptor is write-only)
            self.durable[fid] = f.read()
        self.pending[fid] = []

    def create_log(self, path: str) -> int:
        if self._tick("create"):
            raise _Crash
        existed = os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        if existed:
            self.pending[self._fid(fd)].append(("t", 0))
        else:
            fid = self._register(Path(path))
            self.dir_pending.append(("link", Path(path).name, fid))
        return fd

    def unlink(self, path: str) -> None:
        if self._tick("unlink"):
            raise _Crash
        os.unlink(path)  # FileNotFoundError passes through, as from the real call
        name = Path(path).name
        self.dir_pending.append(("unlink", name, self.names.pop(name)))

    def fsync_dir(self, path: str) -> None:
        if self._tick("fsync_dir"):
            raise _Crash
        self.durable_names = dict(self.names)
        self.dir_pending = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in _HOOKS:
            monkeypatch.setattr(wal_mod, name, getattr(self, name.lstrip("_")))

    def cut(self, rng: random.Random) -> None:
        """The power goes: rewrite the folder as the disk would hold it afterwards."""
        names = dict(self.durable_names)
        for op, name, fid in self.dir_pending:
            if rng.random() < 0.5:
                if op == "link":
                    names[name] = fid
                elif names.get(name) == fid:
                    del names[name]
        for p in self.folder.iterdir():
            p.unlink()
        for name, fid in names.items():
            content = bytearray(self.durable[fid])
            for op in self.pending[fid]:
                if op[0] == "t":
                    if rng.random() < 0.5:
                        del content[op[1]:]
                        content.extend(bytes(op[1] - len(content)))
                    continue
                _, off, data = op
                for s in range(off - off % 4096, off + len(data), 4096):  # page by page
                    a, b = max(s, off), min(s + 4096, off + len(data))
                    if a < b and rng.random() < 0.5:
                        if len(content) < b:
                            content.extend(bytes(b - len(content)))
                        content[a:b] = data[a - off : b - off]
            (self.folder / name).write_bytes(bytes(content))


def _patch(f: CheckpointedFile, ref: bytearray, rng: random.Random, shrink: bool) -> None:
    """Changes for the next commit: pages patched in place, and then the file either cut short (the
    commit's ftruncate) or grown (bytes past the committed end)."""
    n = len(ref) // 2 if shrink else len(ref)
    if shrink:
        f.truncate(n)
        del ref[n:]
    else:
        data = rng.randbytes(20000)
        f.seek(n + 100)
        f.write(data)
        ref.extend(bytes(100) + data)
    for _ in range(5):
        pos = rng.randrange(0, n - 100)
        data = rng.randbytes(rng.choice([7, 300, 5000]))[: n - pos]
        f.seek(pos)
        f.write(data)
        ref[pos:pos + len(data)] = data


def _power_loss_contents(folder: Path, scenario: str) -> tuple[bytes, bytes]:
    """(old, new) content of :func:`test_power_loss_at_any_step_of_a_durable_commit_leaves_old_or_new_content`'s
    file: the same changes made once, with no power cut, on a scratch file."""
    f = CheckpointedFile(folder / "scratch.bin", create=True)
    ref = bytearray()
    mut = random.Random(5)
    if scenario != "header":
        _mutate(f, ref, mut)
        f.commit(durable=True)
    old = bytes(ref)
    if scenario == "header":
        _mutate(f, ref, mut)
    else:
        _patch(f, ref, mut, shrink=scenario == "shrink")
    f.commit(durable=True)
    f.close()
    assert (folder / "scratch.bin").read_bytes() == bytes(ref)
    return old, bytes(ref)


@pytest.mark.parametrize("scenario", ["header", "grow", "shrink"])
def test_power_loss_at_any_step_of_a_durable_commit_leaves_old_or_new_content(tmp_path, monkeypatch, scenario):
    """Cut the power at each call of a checkpoint interval (the writes past the committed end and
    the log they begin, then the durable commit; writes torn, unsynced pages and directory
    entries randomly lost), then again during the recovery: the file is exactly the old or the new
    content, and the new one as soon as commit() returned.

    ``header``: the first commit of a new file (old content: empty); ``grow``: bytes appended and
    pages patched; ``shrink``: the file cut short (the commit's ftruncate) and pages patched.
    """
    old, new = _power_loss_contents(tmp_path, scenario)
    outcomes: set[str] = set()
    for crash_at in range(400):
        for trial in range(3):
            rng = random.Random(crash_at * 7 + trial)
            folder = tmp_path / f"{crash_at}-{trial}"
            folder.mkdir()
            p = folder / "c.bin"
            f = CheckpointedFile(p, create=True)
            ref = bytearray()
            mut = random.Random(5)  # the same changes every time; the cut moves through the interval
            if scenario != "header":
                _mutate(f, ref, mut)
                f.commit(durable=True)
            assert bytes(ref) == old
            disk = _PowerLossDisk(folder, crash_at)
            commit_from = None
            with monkeypatch.context() as m:
                disk.install(m)
                try:
                    if scenario == "header":
                        _mutate(f, ref, mut)
                    else:
                        _patch(f, ref, mut, shrink=scenario == "shrink")
                    commit_from = len(disk.log)
                    f.commit(durable=True)
                    crashed = False
                except (_Crash, CheckpointFailedError):  # (a write past the end keeps its failure for the commit)
                    assert disk.calls > crash_at
                    crashed = True
            os.close(f._fd)  # the process is gone: its lock goes with it
            io.RawIOBase.close(f)
            disk.cut(rng)
            again = _PowerLossDisk(folder, rng.randrange(8))  # and the power goes again during recovery
            with monkeypatch.context() as m:
                again.install(m)
                try:
                    recover(p)
                except _Crash:
                    pass
            again.cut(rng)
            result = recover(p)
            content = p.read_bytes()
            assert content in (old, new), f"{scenario}: cut at call {crash_at} ({disk.log[-1]}): neither old nor new"
            assert not os.path.exists(wal_path(p))
            if not crashed:
                assert content == new, f"{scenario}: a commit that returned was lost"
                break
            outcomes.add("new" if content == new else "old")
        if not crashed:
            break
    assert crash_at > 5 and not crashed
    assert outcomes == {"old", "new"}  # cuts before and after the commit point were both exercised
    ops = [c[0] for c in disk.log]
    commit_ops = ops[commit_from:]
    assert ("ftruncate" in commit_ops) == (scenario == "shrink")
    assert ops.count("write") >= 3 and ops.count("fsync_dir") == 2  # the log's entry at its creation, its removal


def test_a_durable_commit_syncs_the_log_and_its_directory_before_it_relies_on_them(tmp_path, monkeypatch):
    p = tmp_path / "o.bin"
    f = CheckpointedFile(p, create=True)
    f.write(b"x" * 10000)
    f.commit(durable=True)
    disk = _PowerLossDisk(tmp_path)
    with monkeypatch.context() as m:
        disk.install(m)
        f.seek(100)
        f.write(b"y" * 50)  # an in-place change (logged)
        f.seek(0, 2)
        f.write(b"z" * 5000)  # and bytes past the end (written at once, after the log)
        f.commit(durable=True)
    f.close()
    data_id, log_id = disk.names["o.bin"], 1
    ops = disk.log
    create = ops.index(("create",))
    first_data_write = ops.index(("write", data_id))
    # the log exists on disk (content and name) before the file grows past its committed end
    assert ("fsync", log_id) in ops[create:first_data_write] and ("fsync_dir",) in ops[create:first_data_write]
    unlink = ops.index(("unlink",))
    assert ops[unlink + 1:] == [("fsync_dir",)]  # and its removal is synced too
    assert ops[unlink - 1] == ("fsync", data_id)  # after the file is whole


def _frame_header(seq: int, n: int = 4, stream: str = "v0", series: str = "44444444-4444-4444-8444-444444444444",
                  **kw: Any) -> dict:
    return _h(stream, MessageKind.FRAME, series, seq, dtype="<f4", shape=[n], axes=["sample"], **kw)


def test_power_loss_at_any_step_of_a_recording_keeps_every_committed_frame(tmp_path, monkeypatch):
    """An HDF5 recording (header commit, three checkpoints, close) with the power cut at each call in
    turn: the file then holds exactly the frames of the checkpoints that returned (plus, at most, the
    one being committed), with their values; or it is empty when the header never reached the disk."""
    seen = set()
    for crash_at in range(1000):
        folder = tmp_path / str(crash_at)
        folder.mkdir()
        p = folder / "r.h5"
        p.touch()
        disk = _PowerLossDisk(folder, crash_at)
        committed = pending = 0
        w = None
        crashed = True
        with monkeypatch.context() as m:
            disk.install(m)
            try:
                w = Hdf5RecordingWriter(p, durable=True)
                for cp in range(3):
                    for i in range(5):
                        seq = cp * 5 + i
                        w.message("raw/v0", _frame_header(seq), np.full(4, seq, "<f4"))
                    pending = 5
                    w.checkpoint()
                    committed, pending = committed + 5, 0
                w.close()
                crashed = False
            except Exception:  # noqa: BLE001 - _Crash, or what h5py made of it inside a write callback
                if disk.calls <= crash_at:
                    raise  # not the cut: a real failure
        if w is not None and crashed:  # the process died: drop its lock, let h5py go (into memory only)
            fcntl.flock(w._file._fd, fcntl.LOCK_UN)
            try:
                w.h5.close()
            except Exception:  # noqa: BLE001
                pass
            w._file.close()
        disk.cut(random.Random(crash_at))
        recover(p)
        if crashed and p.stat().st_size == 0:
            assert committed == 0, f"cut at call {crash_at}: committed frames lost with the whole file"
            with pytest.raises(ValueError, match="empty"):
                open_recording(p)
            seen.add("empty")
            continue
        s = check_recording(p)
        assert s["problems"] == [], s
        n = s["streams"].get("raw/v0", {}).get("frames", 0)
        assert committed <= n <= committed + pending, f"cut at call {crash_at}: {n} frames, {committed} committed"
        if n:
            with open_recording(p) as f:
                d = f["raw/v0/data_000"]
                assert list(d["seq"][:]) == list(range(n))
                np.testing.assert_array_equal(d["frames"][:], np.repeat(np.arange(n, dtype="<f4")[:, None], 4, 1))
        seen.add("header only" if n == 0 else "frames")
        if not crashed:
            assert n == 15 and s["complete"]
            break
    assert not crashed and seen == {"empty", "header only", "frames"}


# -- two writers, one path -------------------------------------------------------------------------
def test_a_second_writer_on_a_live_file_fails_and_leaves_it_intact(tmp_path):
    p = tmp_path / "live.bin"
    f = CheckpointedFile(p, create=True)
    f.write(b"committed" * 1000)
    f.commit(durable=False)
    before = p.read_bytes()
    with pytest.raises(FileLockedError, match="being written by another recorder"):
        CheckpointedFile(p, create=True)
    assert p.read_bytes() == before  # not truncated
    f.write(b"more")
    f.commit(durable=False)
    assert p.read_bytes() == before + b"more"
    f.close()


def _send_frames(pub: Any, seqs: Any, n: int = 16, stream: str = "v0", series: str = "55555555-5555-4555-8555-555555555555",
                 per_burst: int = 5, pause_s: float = 0.01) -> None:
    """Frames of ``n`` float32 samples, each filled with its seq, paced in bursts."""
    for i, seq in enumerate(seqs):
        pub.send_multipart([f"raw/{stream}".encode(),
                            encode_header(StreamHeader(stream=stream, kind=MessageKind.FRAME, series=series, seq=seq,
                                                       t_host_ns=time.time_ns(), t_mono_ns=time.monotonic_ns(),
                                                       dtype="<f4", shape=[n], axes=["sample"])),
                            np.full(n, seq, "<f4")])
        if i % per_burst == per_burst - 1:
            time.sleep(pause_s)


def _joined(rec: Recorder, pub: Any, stream: str = "v0") -> None:
    """Heartbeats until the recorder has seen the stream (ZeroMQ's slow joiner)."""
    deadline = time.monotonic() + 10
    while f"raw/{stream}" not in rec.writer.streams:
        assert time.monotonic() < deadline, rec.status()
        pub.send_multipart([f"raw/{stream}".encode(), encode_header(StreamHeader(
            stream=stream, kind=MessageKind.HEARTBEAT, series="55555555-5555-4555-8555-555555555555", seq=0,
            t_host_ns=time.time_ns(), t_mono_ns=time.monotonic_ns()))])
        time.sleep(0.05)


def _pub_hwm(endpoint: str, hwm: int) -> Any:
    s = zmq.Context.instance().socket(zmq.PUB)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.bind(endpoint)
    return s


def test_a_second_recorder_on_the_same_path_fails_and_the_first_recording_is_intact(tmp_path):
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = _pub_hwm(ep, 10_000)
    path = tmp_path / "one.h5"
    first = Recorder(ep, ["raw/"], path, flush_s=0.1, durable=False)
    first.start()
    assert first.ready.wait(5) and first.state == "recording"
    _joined(first, pub)
    _send_frames(pub, range(100))
    wait_for(lambda: first.status()["frames_recorded"] >= 100, timeout=10)
    second = Recorder(ep, ["raw/"], path, flush_s=0.1, durable=False)
    second.start()
    second.ready.wait(5)
    second.join(5)
    assert second.state == "failed" and "being written by another recorder" in second.error
    _send_frames(pub, range(100, 150))  # the first one records on
    wait_for(lambda: first.status()["frames_recorded"] >= 150, timeout=10)
    first.stop()
    pub.close(0)
    assert first.state == "stopped"
    s = check_recording(path)
    assert s["problems"] == [] and s["complete"] and s["streams"]["raw/v0"]["frames"] == 150
    with open_recording(path) as f:
        d = f["raw/v0/data_000"]
        assert list(d["seq"][:]) == list(range(150))
        np.testing.assert_array_equal(d["frames"][:, 0], np.arange(150, dtype="<f4"))


# -- the receive thread and the writer thread -------------------------------------------------------
@pytest.fixture
def stall_checkpoints(monkeypatch):
    """``stall(seconds)``: the next checkpoint sleeps that long; returns an Event set once it sleeps."""
    real = Hdf5RecordingWriter.checkpoint
    plan: list[tuple[float, threading.Event]] = []

    def checkpoint(self, complete=False):
        if plan:
            seconds, started = plan.pop()
            started.set()
            time.sleep(seconds)
        return real(self, complete)

    monkeypatch.setattr(Hdf5RecordingWriter, "checkpoint", checkpoint)

    def stall(seconds: float) -> threading.Event:
        ev = threading.Event()
        plan.append((seconds, ev))
        return ev

    return stall


def test_a_slow_checkpoint_does_not_overflow_the_receive_hwm(tmp_path, stall_checkpoints):
    """The writer sleeps 2.5 s in a checkpoint while 300 frames of 64 KiB (19 MiB) arrive, with ZeroMQ's
    high-water marks at 50 messages each side: the receive thread takes them all into its queue,
    nothing is lost. (With one thread that receives and commits, about half of them were lost: more
    than ZeroMQ's queues and the socket buffers hold.)"""
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = _pub_hwm(ep, 50)
    rec = Recorder(ep, ["raw/"], tmp_path / "slow.h5", flush_s=0.1, durable=False, rcvhwm=50)
    rec.start()
    rec.ready.wait(5)
    _joined(rec, pub)
    assert stall_checkpoints(2.5).wait(5)
    t0 = time.monotonic()
    _send_frames(pub, range(300), n=16384)
    assert time.monotonic() - t0 < 2.4  # all sent while the writer was still in its checkpoint
    wait_for(lambda: rec.status()["frames_recorded"] >= 300, timeout=15)
    st = rec.status()
    rec.stop()
    pub.close(0)
    assert st["missed_frames"] == 0 and st["queue_dropped_frames"] == 0 and st["frames_received"] == 300
    assert st["queue"]["peak_frames"] > 100  # what the old single thread would have left in ZeroMQ's 2 x 50
    s = check_recording(tmp_path / "slow.h5")
    assert s["problems"] == [] and s["streams"]["raw/v0"] == {"frames": 300, "gaps": 0, "gap_frames": 0,
                                                               "series": 1, "blocks": 1}
    with open_recording(tmp_path / "slow.h5") as f:
        d = f["raw/v0/data_000"]
        assert list(d["seq"][:]) == list(range(300))
        np.testing.assert_array_equal(d["frames"][:, -1], np.arange(300, dtype="<f4"))


def test_a_full_writer_queue_drops_counts_and_records_the_loss_without_blocking_the_socket(tmp_path,
                                                                                            stall_checkpoints):
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = _pub_hwm(ep, 50)
    path = tmp_path / "full.h5"
    rec = Recorder(ep, ["raw/"], path, flush_s=0.1, durable=False, rcvhwm=50, queue_frames=40)
    rec.start()
    rec.ready.wait(5)
    _joined(rec, pub)
    assert stall_checkpoints(2.5).wait(5)
    t0 = time.monotonic()
    _send_frames(pub, range(300))
    wait_for(lambda: rec.status()["frames_received"] == 300, timeout=2)  # the receive thread kept reading
    assert time.monotonic() - t0 < 2.4  # ... while the writer was still in its checkpoint
    st = rec.status()
    assert st["queue_dropped_frames"] == 260 and st["behind"] and st["missed_frames"] == 0
    assert st["queue"]["frames"] == 40 and st["frames_recorded"] == 0
    wait_for(lambda: rec.status()["frames_recorded"] >= 40, timeout=15)  # the stall is over
    _send_frames(pub, range(300, 310))  # recorded again
    wait_for(lambda: rec.status()["frames_recorded"] >= 50, timeout=15)
    rec.stop()
    pub.close(0)
    s = check_recording(path)
    assert s["problems"] == []
    with open_recording(path) as f:
        g = f["raw/v0"]
        seqs = list(g["data_000/seq"][:])
        gaps = [(int(r["first_seq"]), int(r["count"]), r["reason"].decode(), int(r["announced"])) for r in g["gaps"][:]]
    assert seqs == list(range(40)) + list(range(300, 310))
    assert gaps == [(40, 260, "recorder queue full", 0)]


def test_hostile_messages_are_skipped_counted_and_recording_goes_on(tmp_path):
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = _pub_hwm(ep, 10_000)
    path = tmp_path / "hostile.h5"
    rec = Recorder(ep, ["raw/"], path, flush_s=0.1, durable=False)
    rec.start()
    rec.ready.wait(5)
    _joined(rec, pub)
    series = "55555555-5555-4555-8555-555555555555"

    def frame(seq, dtype="<f4", shape=(16,), payload=None, **kw):
        h = {"v": 1, "stream": "v0", "kind": "frame", "series": series, "seq": seq, "t_host_ns": time.time_ns(),
             "t_mono_ns": time.monotonic_ns(), "dtype": dtype, "shape": list(shape), **kw}
        body = payload if payload is not None else np.full(shape, seq, dtype).tobytes()
        pub.send_multipart([b"raw/v0", json.dumps(h).encode(), body])

    _send_frames(pub, range(2))
    pub.send_multipart([b"raw/v0", b"not json"])  # 1. undecodable header
    pub.send_multipart([b"raw/v0"])  # 2. no header at all
    pub.send_multipart([b"raw/v0", b"[]"])  # 3. not an object
    frame(2, dtype="O", payload=bytes(16))  # 4. numpy refuses to wrap it (escapes the decoder's checks today)
    frame(3, t_host_ns="soon")  # 5. decodes (fast path), cannot be recorded
    frame(4, dtype="<U2", shape=(2,), payload=bytes(16))  # 6. not a numeric frame
    frame(5, units="m\x00s")  # 7. HDF5 refuses its attributes (after creating the block's group)
    frame(6, t_device=10 ** 400)  # 8. no float64 holds its clock
    pub.send_multipart([b"raw/v1", encode_header(StreamHeader(  # 9. a gap no int64 holds
        stream="v1", kind=MessageKind.GAP, series=series, seq=0, gap_frames=10 ** 30, t_host_ns=1, t_mono_ns=1))])
    _send_frames(pub, range(7, 12))
    frame(12, shape=(5,))  # a new shape: a new block, where the refused one (7.) left nothing behind
    wait_for(lambda: rec.status()["frames_recorded"] >= 8, timeout=10)
    st = rec.status()
    rec.stop()
    pub.close(0)
    assert rec.state == "stopped" and rec.error is None
    assert st["bad_messages"] == 9 and st["last_bad_message"], st
    s = check_recording(path)
    assert s["problems"] == []
    with open_recording(path) as f:
        g = f["raw/v0"]
        assert sorted(k for k in g if k.startswith("data_")) == ["data_000", "data_001"]
        assert list(g["data_000/seq"][:]) == [0, 1, 7, 8, 9, 10, 11]
        np.testing.assert_array_equal(g["data_000/frames"][:, 0], [0, 1, 7, 8, 9, 10, 11])
        assert list(g["data_001/seq"][:]) == [12] and json.loads(g["data_001"].attrs["frame_shape"]) == [5]
        covered = {int(r["first_seq"]) + i for r in g["gaps"][:] for i in range(int(r["count"]))}
    assert covered == {2, 3, 4, 5, 6}  # every frame that is not in the file has a gap row
