"""EDF+/BDF+ recording end to end over real ZeroMQ sockets.

``medacq record --format edf`` (a subprocess) and the daemon's built-in recorder
(``record start`` with ``format: bdf``) record ``raw/eeg0``, ``recon/eeg0`` (same stream
name, different topic) and ``raw/ekg0`` from simulated Cyton and HackEEG boards while a
packet loss is injected; pyedflib and MNE read the file back and every recorded sample
is compared with what a test subscriber received. Hand-driven publishers cover the cases
a rig does not produce on cue: a stream whose descriptor comes too late, a stream that is
not a signal, a subscriber-detected hole, and a writer failure mid-recording.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

pyedflib = pytest.importorskip("pyedflib")
mne = pytest.importorskip("mne", reason="mne is not installed (test-only dependency)")

from medacq.client import ControlClient, Subscriber  # noqa: E402
from medacq.daemon.recording import edf as record_edf  # noqa: E402
from medacq.daemon.recon.stage import ReconStage  # noqa: E402
from medacq.daemon.recording.recorder import Recorder  # noqa: E402
from medacq.daemon.acquisition.service import AcquisitionDaemon  # noqa: E402
from medacq.protocols.stream import MessageKind, StreamDescriptor, StreamHeader, encode_header  # noqa: E402
from medacq.simulators.adapters import SimulatorServer  # noqa: E402
from medacq.simulators.cyton import CytonInterface  # noqa: E402
from medacq.simulators.hackeeg import HackEEGInterface  # noqa: E402

from conftest import free_port, medacq_cmd, wait_for  # noqa: E402
from test_bio_e2e import _cfg  # noqa: E402

TOPICS = ["raw/eeg0", "recon/eeg0", "raw/ekg0"]
FS = {"raw/eeg0": 250, "recon/eeg0": 250, "raw/ekg0": 500}
LOST = 4  # Cyton packets dropped on the radio link (one sample each without Daisy)
# quantisation step of µV signals: physical range / digital range (see record_edf.physical_range);
# the writer rounds to the nearest step, so a value comes back within half a step
RES = {"edf": 6553.5 / 32767, "bdf": 400_000.0 / 8388607}


# -- helpers ------------------------------------------------------------------------------------
class _Capture(threading.Thread):
    """The truth: a :class:`Subscriber` of its own that keeps every message until stopped."""

    def __init__(self, endpoints: list[str], topics: list[str]) -> None:
        super().__init__(name="capture", daemon=True)
        self.sub = Subscriber(endpoints, topics)
        self.msgs: list[Any] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            m = self.sub.recv(timeout=0.05)
            if m is not None:
                self.msgs.append(m)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sub.close()

    def frames(self, topic: str) -> list[Any]:
        return [m for m in list(self.msgs) if m.topic == topic and m.array is not None]


def _first_index(h: dict[str, Any]) -> int:
    return int((h.get("meta") or {}).get("first_sample", h.get("t_device")))


def _by_index(frames: list[Any]) -> dict[int, np.ndarray]:
    """Device sample index -> the column ``(channel,)`` the subscriber received."""
    out: dict[int, np.ndarray] = {}
    for m in frames:
        first = _first_index(m.header)
        for k in range(m.array.shape[1]):
            out[first + k] = m.array[:, k]
    return out


@contextlib.contextmanager
def _bio_rig(endpoints: dict) -> Iterator[tuple[Any, SimulatorServer, _Capture]]:
    """Cyton (8 ch, 250 Hz) + HackEEG (8 leads, 500 Hz) on ptys, paced; the reconstruction
    stage; the daemon; and a capturing subscriber on :data:`TOPICS` connected before it."""
    with SimulatorServer(CytonInterface(seed=5, daisy=False), "pty", paced=True) as eeg, \
            SimulatorServer(HackEEGInterface(seed=6), "pty", paced=True) as ekg:
        cfg = _cfg(endpoints, [{"name": "eeg0", "kind": "cyton", "address": eeg.address, "settings": {"daisy": False}},
                               {"name": "ekg0", "kind": "hackeeg", "address": ekg.address, "settings": {"rate": 500}}])
        stage = ReconStage(cfg).start()
        cap = _Capture([cfg.daemon.data_endpoint, cfg.recon.data_endpoint], TOPICS)
        cap.sub.wait_connected(0.5)
        cap.start()
        d = AcquisitionDaemon(cfg).start()
        try:
            wait_for(lambda: all(cap.frames(t) for t in TOPICS), timeout=15)
            yield cfg, eeg, cap
        finally:
            d.shutdown()
            stage.shutdown()
            cap.stop()


class _Lines(threading.Thread):
    """Collect a pipe's lines without blocking the test."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append(line.rstrip("\n"))


def _recorded_all(streams: dict[str, Any] | None) -> bool:
    return bool(streams) and all((streams.get(t) or {}).get("frames", 0) > 0 for t in TOPICS)


def _after_gap(cap: _Capture) -> bool:
    """The loss was seen, and a second of every stream has arrived since."""
    gaps = [g for g in cap.sub.gaps if g.topic == "raw/eeg0" and g.lost_samples]
    if not gaps:
        return False
    hole = _holes(_by_index(cap.frames("raw/eeg0")))
    if not hole:
        return False
    return all(sum(1 for m in cap.frames(t) if _first_index(m.header) > hole[-1]) >= 30 for t in TOPICS[:2]) and \
        len(cap.frames("raw/ekg0")) > 50


def _holes(truth: dict[int, np.ndarray]) -> list[int]:
    idx = np.array(sorted(truth))
    return sorted(set(range(int(idx[0]), int(idx[-1]) + 1)) - set(idx.tolist()))


def _check_stream(x: np.ndarray, info: dict[str, Any], truth: dict[int, np.ndarray], lost: int, res: float) -> None:
    """File samples of one stream ``x`` ``(channel, samples)`` against the subscriber's truth:
    zeros before the stream's start, then device index ``first_index`` onwards, every
    received sample within half a quantisation step, lost samples zero-filled, zeros after."""
    first, off, n = info["first_index"], info["start_offset"], info["samples"]
    assert info["samples_clipped"] == 0 and info["samples_trimmed"] == 0
    assert info["samples_filled"] - off == lost  # the START fill, plus the gap
    span = n + lost
    assert np.all(x[:, :off] == 0)
    assert np.all(x[:, off + span:] == 0)  # padding of the last record
    got = x[:, off:off + span]
    idx = np.arange(first, first + span)
    have = np.array([i in truth for i in idx])
    assert have.sum() == n  # the recorder got exactly the samples the subscriber got, in its window
    assert (~have).sum() == lost and np.all(got[:, ~have] == 0)
    want = np.stack([truth[int(i)] for i in idx[have]], axis=1)
    np.testing.assert_allclose(got[:, have], want, rtol=0, atol=res / 2 * 1.001)
    assert np.abs(want).max() > 10 * res  # real signal, not a flat line


def _assert_file(path: str, fmt: str, status: dict[str, Any], cap: _Capture) -> None:
    res = RES[fmt]
    streams = status["streams"]
    assert status["state"] == "stopped" and status["error"] is None
    assert status["dropped_frames"] == 0 and status["warnings"] == []
    desc = cap.sub.descriptors
    eeg_names = desc["raw/eeg0"]["channel_names"]
    assert len(eeg_names) == 8
    labels = ([f"eeg0:{c}" for c in eeg_names] + [f"ekg0:{c}" for c in desc["raw/ekg0"]["channel_names"]]
              + [f"recon:eeg0:{c}" for c in eeg_names])
    rows = {"raw/eeg0": slice(0, 8), "raw/ekg0": slice(8, 16), "recon/eeg0": slice(16, 24)}
    truth = {t: _by_index(cap.frames(t)) for t in TOPICS}
    hole = _holes(truth["raw/eeg0"])
    assert len(hole) == LOST and _holes(truth["recon/eeg0"]) == hole
    f = pyedflib.EdfReader(path)
    try:
        assert f.getSignalLabels() == labels and len(set(labels)) == len(labels)
        rates = [f.getSampleFrequency(i) for i in range(len(labels))]
        assert rates == [250] * 8 + [500] * 8 + [250] * 8
        assert f.getPhysicalDimension(0) == "uV"
        sig = {t: np.stack([f.readSignal(i) for i in range(24)[r]]) for t, r in rows.items()}
        onsets, durations, texts = f.readAnnotations()
    finally:
        f.close()
    for t in TOPICS:
        assert streams[t]["labels"] == labels[rows[t]]
        _check_stream(sig[t], streams[t], truth[t], LOST if "eeg0" in t else 0, res)
    # raw and recon of the same device share the file's time axis (t_host of the same source frames)
    raw, rec = streams["raw/eeg0"], streams["recon/eeg0"]
    assert abs((raw["first_index"] - raw["start_offset"]) - (rec["first_index"] - rec["start_offset"])) <= 1
    # one GAP annotation per eeg stream: onset at the lost samples, duration = the fill
    gaps = {str(t): (o, d) for o, d, t in zip(onsets, durations, texts) if str(t).startswith("GAP")}
    assert len(gaps) == 2, texts
    for name, info in (("eeg0", raw), ("recon:eeg0", rec)):
        (_, (onset, dur)), = [(t, v) for t, v in gaps.items() if t.startswith(f"GAP {name}: {LOST} samples lost (")]
        assert onset == pytest.approx((info["start_offset"] + hole[0] - info["first_index"]) / 250, abs=1e-3)
        assert dur == pytest.approx(LOST / 250, abs=1e-3)
    assert not [t for t in texts if str(t).startswith(("DISCONTINUITY", "NODATA", "RECORDING FAILED"))]
    # MNE reads the same values (volts; lower rates come upsampled to the highest, 500 Hz)
    reader = mne.io.read_raw_bdf if fmt == "bdf" else mne.io.read_raw_edf
    raw_mne = reader(path, preload=True, verbose="error")
    assert raw_mne.ch_names == labels and raw_mne.info["sfreq"] == 500.0
    data = raw_mne.get_data() * 1e6
    np.testing.assert_allclose(data[8:16], sig["raw/ekg0"], atol=1e-6)
    np.testing.assert_allclose(data[0:8, ::2], sig["raw/eeg0"], atol=1e-6)
    np.testing.assert_allclose(data[16:24, ::2], sig["recon/eeg0"], atol=1e-6)
    mne_gaps = [(a["onset"], a["description"]) for a in raw_mne.annotations if a["description"].startswith("GAP")]
    assert sorted(d.split(" (")[0] for _, d in mne_gaps) == [f"GAP eeg0: {LOST} samples lost",
                                                             f"GAP recon:eeg0: {LOST} samples lost"]
    assert mne_gaps[0][0] == pytest.approx(mne_gaps[1][0], abs=1e-3)


# -- the rig, both ways of recording ---------------------------------------------------------------
def test_medacq_record_edf_cli_raw_and_recon_with_a_gap(endpoints, tmp_path):
    out = tmp_path / "run.edf"
    with _bio_rig(endpoints) as (cfg, eeg, cap):
        p = subprocess.Popen(medacq_cmd("record", "--endpoint", cfg.daemon.data_endpoint, "--endpoint",
                                        cfg.recon.data_endpoint, "--topics", *TOPICS, "--format", "edf",
                                        "--out", str(out), "--flush", "0.3", "--progress"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        so, se = _Lines(p.stdout), _Lines(p.stderr)
        so.start()
        se.start()
        try:
            # the file exists once every stream's descriptor was seen: progress then lists them with frames
            wait_for(lambda: so.lines and _recorded_all(json.loads(so.lines[-1])["streams"]), timeout=20)
            eeg.call(eeg.interface.drop_packets, LOST)
            wait_for(lambda: _after_gap(cap), timeout=15)
            p.send_signal(signal.SIGINT)
            assert p.wait(15) == 0, "\n".join(se.lines)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        so.join(5)
        se.join(5)
    summary = [json.loads(line) for line in se.lines if line.startswith("{")][-1]
    assert summary["gaps_recorded"] >= 2  # raw/eeg0's and recon/eeg0's (recon/eeg0/bandpower's is not a signal)
    _assert_file(str(out), "edf", summary, cap)


def test_daemon_record_start_bdf_raw_and_recon_with_a_gap(endpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDACQ_RECORDINGS_DIR", str(tmp_path))
    with _bio_rig(endpoints) as (cfg, eeg, cap):
        with ControlClient(cfg.daemon.control_endpoint, timeout=5) as c:
            st = c.request("record", action="start", topics=TOPICS, format="bdf", path="run.bdf", flush_s=0.3)
            assert st["state"] == "recording" and st["format"] == "bdf"
            wait_for(lambda: _recorded_all(c.request("record", action="status").get("streams")), timeout=20)
            eeg.call(eeg.interface.drop_packets, LOST)
            wait_for(lambda: _after_gap(cap), timeout=15)
            st = c.request("record", action="stop")["last"]
    assert st["edf"]["state"] == "closed" and st["edf"]["late_streams"] == {}
    # recon/eeg0 is a prefix: recon/eeg0/bandpower arrives too, and is no EDF signal
    assert "recon/eeg0/bandpower" in st["edf"]["skipped_streams"]
    _assert_file(str(tmp_path / "run.bdf"), "bdf", st, cap)


# -- hand-driven publisher: late, skipped, holes, failures ------------------------------------------
SERIES = "44444444-4444-4444-8444-444444444444"
T0 = 1_700_000_000_000_000_000


class _Feed:
    """A PUB socket speaking the stream protocol, for streams shaped like raw and recon biosignals."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.bind(self.endpoint)
        self.seq: dict[str, int] = {}

    def close(self) -> None:
        self.sock.close(0)

    def _send(self, topic: str, kind: MessageKind, arr: np.ndarray | None = None, seq: int | None = None,
              t_host_ns: int = T0, **kw: Any) -> None:
        stream = topic.split("/", 1)[1]
        s = self.seq.get(topic, 0) if seq is None else seq
        h = StreamHeader(stream=stream, kind=kind, series=SERIES, seq=s, t_host_ns=t_host_ns, t_mono_ns=t_host_ns, **kw)
        parts = [topic.encode(), encode_header(h)] + ([np.ascontiguousarray(arr)] if arr is not None else [])
        self.sock.send_multipart(parts)
        if kind == MessageKind.FRAME:
            self.seq[topic] = s + 1

    def descriptor(self, topic: str, d: StreamDescriptor) -> None:
        self._send(topic, MessageKind.DESCRIPTOR, seq=self.seq.get(topic, 0), descriptor=d)

    def frame(self, topic: str, arr: np.ndarray, first: int, fs: int, seq: int | None = None) -> None:
        """One ``(channel, sample)`` frame whose first sample has device index ``first``;
        raw topics carry it in ``t_device``, recon topics in ``meta.first_sample``."""
        where = {"meta": {"first_sample": first}} if topic.startswith("recon/") else {"t_device": first}
        self._send(topic, MessageKind.FRAME, arr.astype("<f4"), seq=seq, t_host_ns=T0 + first * 1_000_000_000 // fs,
                   dtype="<f4", shape=list(arr.shape), axes=["channel", "sample"], units="µV", **where)

    def gap(self, topic: str, lost_samples: int, reason: str) -> None:
        self._send(topic, MessageKind.GAP, seq=self.seq.get(topic, 0), gap_frames=0, reason=reason,
                   meta={"lost_samples": lost_samples})


def _raw_desc(stream: str, n: int, fs: int) -> StreamDescriptor:
    return StreamDescriptor(stream=stream, modality="eeg", device="test", dtype="<f4", shape=[n, -1],
                            axes=["channel", "sample"], units="µV", channel_names=[f"c{i}" for i in range(n)],
                            sample_rate_hz=fs)


def _recon_desc(stream: str, n: int, fs: int) -> StreamDescriptor:
    """Shaped like the reconstruction stage's: rate and labels only in ``meta``."""
    return StreamDescriptor(stream=stream, modality="eeg", device="recon:EEGReconstructor", dtype="<f4",
                            shape=[n, 10], axes=["channel", "sample"], units="µV",
                            meta={"source": stream, "channel_names": [f"c{i}" for i in range(n)],
                                  "sample_rate_hz": float(fs)})


def _start_recorder(feed: _Feed, path: Any, fmt: str, settle_s: float, join_topic: str,
                    join_desc: StreamDescriptor) -> Recorder:
    rec = Recorder(feed.endpoint, ["raw/", "recon/"], path, flush_s=0.1, fmt=fmt, settle_s=settle_s)
    rec.start()
    assert rec.ready.wait(5)
    deadline = time.monotonic() + 10
    while join_topic not in rec.writer.descriptors and time.monotonic() < deadline:  # ZeroMQ's slow joiner
        feed.descriptor(join_topic, join_desc)
        time.sleep(0.05)
    return rec


def test_late_stream_skipped_stream_and_holes_are_reported_never_silent(tmp_path):
    """raw/x0 (top-level descriptor) and recon/x0 (meta-only, same stream name) are recorded
    side by side; raw/y0's descriptor comes after the settle time: dropped, counted, warned;
    recon/x0/bp is no signal: skipped. A hole in raw/x0's seq (lost samples unknown) is
    zero-filled from the sample index; recon/x0's samples-only gap from its lost_samples."""
    fs, n = 100, 10
    rng = np.random.default_rng(7)
    x = rng.normal(0, 50, (2, 400))
    y = rng.normal(0, 50, (3, 400))
    feed = _Feed()
    try:
        rec = _start_recorder(feed, tmp_path / "h.edf", "edf", 0.5, "raw/x0", _raw_desc("x0", 2, fs))
        feed.descriptor("recon/x0", _recon_desc("x0", 2, fs))
        feed.descriptor("recon/x0/bp", StreamDescriptor(stream="x0/bp", modality="eeg", dtype="<f4", shape=[2, 4],
                                                        axes=["channel", "band"], units="µV²"))
        for k in range(0, 200, n):
            if not 100 <= k < 120:  # raw/x0 frames 10 and 11 never sent: the recorder sees a hole in seq
                feed.frame("raw/x0", x[:, k:k + n], k, fs, seq=k // n)
            if k == 100:
                feed.gap("recon/x0", 20, "source x0 lost device samples")
            if not 100 <= k < 120:
                feed.frame("recon/x0", 2 * x[:, k:k + n], k, fs)
            feed.frame("raw/y0", y[:, k:k + n], k, fs)
        feed.frame("recon/x0/bp", np.ones((2, 4)), 0, fs)
        wait_for(lambda: rec.status()["edf"]["state"] == "recording", timeout=10)
        feed.descriptor("raw/y0", _raw_desc("y0", 3, fs))  # too late: the header is written
        for k in range(200, 400, n):
            feed.frame("raw/x0", x[:, k:k + n], k, fs, seq=k // n)
            feed.frame("recon/x0", 2 * x[:, k:k + n], k, fs)
            feed.frame("raw/y0", y[:, k:k + n], k, fs)
        wait_for(lambda: rec.status()["frames_received"] >= 38 + 38 + 40 + 1, timeout=10)
        rec.stop()
    finally:
        feed.close()
    st = rec.status()
    assert st["state"] == "stopped", st["error"]
    edf = st["edf"]
    assert edf["late_streams"] == {"raw/y0": 40} and st["dropped_frames"] == 40
    assert [w for w in st["warnings"] if w.startswith("raw/y0: no descriptor before the file was created")]
    assert list(edf["skipped_streams"]) == ["recon/x0/bp"] and edf["skipped_frames"] == {"recon/x0/bp": 1}
    assert edf["created_after_s"] >= 0.5
    assert st["streams"]["raw/x0"]["samples_filled"] == 20 and st["streams"]["recon/x0"]["samples_filled"] == 20
    f = pyedflib.EdfReader(str(tmp_path / "h.edf"))
    try:
        assert f.getSignalLabels() == ["x0:c0", "x0:c1", "recon:x0:c0", "recon:x0:c1"]
        assert f.getSampleFrequency(0) == fs and f.getSampleFrequency(2) == fs
        got = np.stack([f.readSignal(i)[:400] for i in range(4)])
        onsets, durations, texts = f.readAnnotations()
    finally:
        f.close()
    want = np.concatenate([x, 2 * x])
    want[:, 100:120] = 0  # zero-filled
    np.testing.assert_allclose(got, want, rtol=0, atol=RES["edf"] / 2 * 1.001)
    gaps = sorted((str(t), o, d) for o, d, t in zip(onsets, durations, texts) if str(t).startswith("GAP"))
    assert [g[0].split(" (")[0] for g in gaps] == ["GAP recon:x0: 20 samples lost", "GAP x0: 20 samples lost"]
    assert "missing seq" in gaps[1][0]  # the reason travels into the annotation
    assert all(o == pytest.approx(1.0) and d == pytest.approx(0.2) for _, o, d in gaps)


def test_a_writer_failure_closes_the_file_and_says_so(tmp_path, monkeypatch):
    """An exception inside the EDF writer fails the recorder loudly (state, error) and the
    file is still closed: readable, with what was written and a RECORDING FAILED annotation."""
    def disk_full(self, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_edf.EdfRecorder, "write_gap", disk_full)
    fs, n = 100, 10
    x = np.random.default_rng(8).normal(0, 50, (2, 300))
    feed = _Feed()
    try:
        rec = _start_recorder(feed, tmp_path / "f.bdf", "bdf", 0.2, "raw/x0", _raw_desc("x0", 2, fs))
        for k in range(0, 300, n):
            feed.frame("raw/x0", x[:, k:k + n], k, fs)
        wait_for(lambda: rec.status()["edf"]["records"] >= 3, timeout=10)
        feed.gap("raw/x0", 5, "device sample index jumped")
        wait_for(lambda: rec.state == "failed", timeout=10)
        rec.stop()
    finally:
        feed.close()
    assert "OSError" in rec.error and "No space left on device" in rec.error
    assert rec.status()["edf"]["state"] == "closed"
    f = pyedflib.EdfReader(str(tmp_path / "f.bdf"))
    try:
        assert f.datarecords_in_file == 3
        np.testing.assert_allclose(f.readSignal(1), x[1], rtol=0, atol=RES["bdf"] / 2 * 1.001)
        _, _, texts = f.readAnnotations()
    finally:
        f.close()
    assert any(str(t).startswith("RECORDING FAILED: OSError") for t in texts)


def test_nothing_recordable_fails_with_the_reason(tmp_path):
    feed = _Feed()
    bp = StreamDescriptor(stream="x0/bp", modality="eeg", dtype="<f4", shape=[2, 4], axes=["channel", "band"])
    try:
        rec = _start_recorder(feed, tmp_path / "n.bdf", "bdf", 0.2, "recon/x0/bp", bp)
        feed._send("recon/x0/bp", MessageKind.FRAME, np.ones((2, 4), "<f4"), dtype="<f4", shape=[2, 4],
                   axes=["channel", "band"])
        wait_for(lambda: rec.status()["frames_received"] >= 1, timeout=10)
        rec.stop()
    finally:
        feed.close()
    assert rec.state == "failed" and "nothing to record" in rec.error and "recon/x0/bp" in rec.error
    assert not (tmp_path / "n.bdf").exists()
