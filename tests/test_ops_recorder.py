"""Recording: the crash-consistent file, the HDF5 layout, gaps, and real ``kill -9`` of recorder and daemon."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

import medacq.daemon.recording.wal as wal_mod
from medacq.client import ControlClient, RequestFailed
from medacq.daemon.common.config import dump_config, parse_config
from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter, check_recording, open_recording
from medacq.daemon.recording.recorder import Recorder
from medacq.daemon.recording.wal import CheckpointedFile, recover, wal_path
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
    rng = random.Random(3)
    p = tmp_path / "x.bin"
    f = CheckpointedFile(p, create=True)
    ref = bytearray()
    for _ in range(6):
        before = p.read_bytes()
        _mutate(f, ref, rng)
        assert p.read_bytes() == before  # nothing reaches the file between checkpoints
        f.commit(durable=False)
        assert p.read_bytes() == bytes(ref)
        assert not os.path.exists(wal_path(p))
    f.close()


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
