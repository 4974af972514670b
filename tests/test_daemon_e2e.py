"""The daemon end to end over real ZeroMQ sockets and real simulators (pty, TCP, another process)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import zmq

from medacq.client import ControlClient, RequestFailed, Subscriber
from medacq.daemon.acquisition.queue import FrameItem, FrameQueue, SeriesStart
from medacq.daemon.acquisition.worker import StreamStats
from medacq.daemon.common.config import dump_config, parse_config
from medacq.daemon.acquisition.publisher import Publisher, sndhwm_for
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.drivers._base import Frame
from medacq.protocols.stream import StreamDescriptor, new_series_id
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame

from conftest import free_port, medacq_cmd, wait_for


def _rig(endpoints, address, **settings):
    s = {"shape": [4, 16], "rate_hz": 200.0, "seed": 7, **settings}
    return parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": address,
                                                  "settings": s}]})


def _expect(cfg, seq):
    s = cfg.device[0].settings
    return synth_frame(SynthConfig(shape=s["shape"], dtype=s.get("dtype", "<f4"), rate_hz=s["rate_hz"],
                                   seed=s["seed"]), seq)


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_values_equal_what_the_simulator_sent(endpoints, transport):
    with SimulatorServer(SynthInterface(), transport, paced=True) as sim:
        cfg = _rig(endpoints, sim.address, dtype="<i2" if transport == "pty" else "<f4")
        with Subscriber(cfg.daemon.data_endpoint, "raw/syn0") as sub:
            d = AcquisitionDaemon(cfg).start()
            try:
                got = list(sub.frames(timeout=5, max_frames=150))
            finally:
                d.shutdown()
        assert len(got) == 150
        seqs = [h["seq"] for h, _ in got]
        assert seqs == list(range(seqs[0], seqs[0] + 150))  # contiguous
        for h, a in got:
            np.testing.assert_array_equal(a, _expect(cfg, h["seq"]))
            assert h["axes"] == ["channel", "sample"] and h["t_device"] is not None
        assert sub.gaps == []
        assert "raw/syn0" in sub.descriptors


def test_device_gap_is_announced_with_exact_range(endpoints):
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = _rig(endpoints, sim.address)
        with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub:
            d = AcquisitionDaemon(cfg).start()
            try:
                list(sub.frames(timeout=5, max_frames=20))
                sim.call(sim.interface.drop_frames, 5)
                frames = list(sub.frames(timeout=5, max_frames=40))
            finally:
                d.shutdown()
        dropped = sim.interface.dropped
        assert len(dropped) == 5
        assert len(sub.gaps) == 1
        g = sub.gaps[0]
        assert g.announced and (g.first_seq, g.count) == (dropped[0], 5)
        seqs = [h["seq"] for h, _ in frames]
        assert not set(range(dropped[0], dropped[0] + 5)) & set(seqs)
        for h, a in frames:  # seq numbers still name the device's frames
            np.testing.assert_array_equal(a, _expect(cfg, h["seq"]))


def test_pulled_cable_reconnects_with_new_series(endpoints):
    with SimulatorServer(SynthInterface(), "pty", paced=True) as sim:
        cfg = _rig(endpoints, sim.address)
        with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub, ControlClient(cfg.daemon.control_endpoint) as c:
            d = AcquisitionDaemon(cfg).start()
            try:
                list(sub.frames(timeout=5, max_frames=10))
                first_series = sub.tracks["raw/syn0"].series
                sim.faults.pull_cable(refuse_s=0.5)
                kinds = []
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    m = sub.recv(timeout=1)
                    if m is not None:
                        kinds.append((m.kind, m.header.get("reason")))
                        if m.kind == "frame" and m.header["series"] != first_series:
                            break
                status = c.request("status")["streams"]["syn0"]
            finally:
                d.shutdown()
        ends = [r for k, r in kinds if k == "series_end"]
        assert ends and ends[0].startswith("connection lost")
        assert ("series_start", None) in kinds
        assert status["reconnects"] >= 1 and status["state"] == "acquiring"
        assert status["last_error"]
        assert sub.tracks["raw/syn0"].series != first_series


def test_control_plane_survives_malformed_requests_and_configures(endpoints):
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = _rig(endpoints, sim.address)
        with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub, ControlClient(cfg.daemon.control_endpoint) as c:
            d = AcquisitionDaemon(cfg).start()
            try:
                list(sub.frames(timeout=5, max_frames=5))
                for body, code in [(b"{", "bad_json"), (b'{"cmd":"fly"}', "unknown_command"),
                                   (b'{"cmd":"describe","device":3}', "bad_request")]:
                    reply = c.send_raw(body)
                    assert f'"code": "{code}"' in reply.decode()
                # a multi-part request and an oversized one
                raw = zmq.Context.instance().socket(zmq.DEALER)
                raw.connect(cfg.daemon.control_endpoint)
                raw.send_multipart([b"", b"{}", b"{}"])
                assert raw.poll(3000) and b"exactly one message part" in raw.recv_multipart()[-1]
                raw.send_multipart([b"", b"x" * 400_000])  # over ZMQ_MAXMSGSIZE: the peer is dropped
                raw.close(0)
                with pytest.raises(RequestFailed) as exc:
                    c.request("describe", device="nope")
                assert exc.value.code == "unknown_device"
                with pytest.raises(RequestFailed) as exc:
                    c.request("configure", device="syn0", settings={"rate_hz": "fast"})
                assert exc.value.code == "invalid_settings"
                before = c.request("status")["streams"]["syn0"]["frames"]
                r = c.request("configure", device="syn0", settings={"shape": [2, 8]})
                assert r["settings"]["shape"] == [2, 8]
                frames = list(sub.frames(timeout=5, max_frames=60))
                assert frames[-1][1].shape == (2, 8)
                assert c.request("status")["streams"]["syn0"]["frames"] > before
                assert c.request("describe", device="syn0")["descriptor"]["shape"] == [2, 8]
                assert c.request("ping")["t_mono_ns"] > 0
                c.request("stop", device="syn0")
                wait_for(lambda: c.request("status")["streams"]["syn0"]["state"] == "idle", 5)
                c.request("start")
                wait_for(lambda: c.request("status")["streams"]["syn0"]["state"] == "acquiring", 5)
            finally:
                d.shutdown()


def test_queue_overflow_is_announced_as_gap():
    ctx = zmq.Context.instance()
    port = free_port()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    with Subscriber(f"tcp://127.0.0.1:{port}", "raw/") as sub:
        time.sleep(0.3)
        wake = threading.Event()
        q = FrameQueue(3, wake)
        p = Publisher(pub, wake)
        p.add_stream("s", q, StreamStats())
        desc = StreamDescriptor(stream="s", modality="synthetic", dtype="<f4", shape=[2], axes=["x"])
        q.put_control(SeriesStart(new_series_id(), desc))
        accepted = [q.put_frame(FrameItem(i, Frame(np.full(2, i, "<f4"), 0, time.monotonic_ns()))) for i in range(10)]
        assert accepted == [True] * 2 + [False] * 8  # one slot held the series_start
        p.start()
        wait_for(lambda: len(q) == 0, 5)
        assert q.put_frame(FrameItem(10, Frame(np.full(2, 10, "<f4"), 0, time.monotonic_ns())))
        got = list(sub.frames(timeout=2, max_frames=3))
        p.stop()
        p.join(2)
    pub.close(0)
    assert [h["seq"] for h, _ in got] == [0, 1, 10]
    assert [a[0] for _, a in got] == [0, 1, 10]
    assert len(sub.gaps) == 1 and sub.gaps[0].announced
    assert (sub.gaps[0].first_seq, sub.gaps[0].count) == (2, 8)
    assert q.dropped == 8


def test_the_next_series_names_the_previous_one_and_its_end():
    """Publisher: after a series ends (or a new one starts without an end), the new series'
    ``series_start`` (and its heartbeats and descriptors) carry ``meta.prev_series`` and
    ``meta.prev_end_seq``, and the last 8 ended series in ``meta.prev_series_ends``, so a subscriber
    that lost the old tail and its ``series_end`` (or whole series) can report it."""
    from medacq.daemon.acquisition.queue import SeriesEnd
    from medacq.protocols.stream import decode_header

    ctx = zmq.Context.instance()
    port = free_port()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, b"raw/")
    raw.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.3)
    wake = threading.Event()
    q = FrameQueue(64, wake)
    p = Publisher(pub, wake, heartbeat_s=0.05)
    p.add_stream("s", q, StreamStats())
    desc = StreamDescriptor(stream="s", modality="synthetic", dtype="<f4", shape=[2], axes=["x"])
    first, second, third = new_series_id(), new_series_id(), new_series_id()
    q.put_control(SeriesStart(first, desc))
    for i in range(4):
        q.put_frame(FrameItem(i, Frame(np.full(2, i, "<f4"), 0, time.monotonic_ns())))
    q.put_control(SeriesEnd("test"))
    q.put_control(SeriesStart(second, desc))
    for i in range(2):
        q.put_frame(FrameItem(i, Frame(np.full(2, i, "<f4"), 0, time.monotonic_ns())))
    q.put_control(SeriesStart(third, desc))  # no end: the second series ends here
    p.start()
    starts, beats = {}, []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (len(starts) == 3 and beats):
        if raw.poll(100):
            parts = raw.recv_multipart()
            h = decode_header(parts[1])
            if h["kind"] == "series_start":
                starts[h["series"]] = h.get("meta") or {}
            elif h["kind"] == "heartbeat" and h["series"] == third:
                beats.append(h.get("meta") or {})
    p.stop()
    p.join(2)
    raw.close(0)
    pub.close(0)
    assert starts[first] == {}
    assert starts[second] == {"prev_series": first, "prev_end_seq": 4,
                              "prev_series_ends": [{"series": first, "end_seq": 4}]}
    listed = [{"series": first, "end_seq": 4}, {"series": second, "end_seq": 2}]  # every ended series, oldest first
    assert starts[third] == {"prev_series": second, "prev_end_seq": 2, "prev_series_ends": listed}
    assert beats and beats[0] == {"prev_series": second, "prev_end_seq": 2, "prev_series_ends": listed}


def test_subscriber_reports_unannounced_holes_and_bad_headers():
    from medacq.protocols.stream import HeaderError, HeaderTemplate, StreamDecodeError

    ctx = zmq.Context.instance()
    port = free_port()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    series = new_series_id()
    tpl = HeaderTemplate("eeg0", series, "<f4", [2], ["sample"], "uV")
    bad = b'{"v":1,"stream":"eeg0","kind":"frame"}'
    with Subscriber(f"tcp://127.0.0.1:{port}", "raw/", errors="raise") as strict, \
            Subscriber(f"tcp://127.0.0.1:{port}", "raw/") as lenient:
        time.sleep(0.3)
        for seq in (0, 1, 5, 6):
            pub.send_multipart([b"raw/eeg0", tpl.frame(seq, 1, 2), np.zeros(2, "<f4").tobytes()])
        pub.send_multipart([b"raw/eeg0", bad, b""])
        pub.send_multipart([b"raw/eeg0", tpl.frame(7, 1, 2), np.zeros(2, "<f4").tobytes()])
        got = []
        with pytest.raises(StreamDecodeError, match="eeg0") as exc:
            for h, _ in strict.frames(timeout=2):
                got.append(h["seq"])
        assert isinstance(exc.value, HeaderError)  # the old name still catches it
        assert [h["seq"] for h, _ in strict.frames(timeout=2)] == [7]  # the consumer goes on after the raise
        lenient_got = [h["seq"] for h, _ in lenient.frames(timeout=1)]
    pub.close(0)
    assert got == [0, 1, 5, 6]
    assert [(g.first_seq, g.count, g.announced) for g in strict.gaps] == [(2, 3, False)]
    assert strict.bad_messages == 1 and "lacks required field" in (strict.last_error or "")
    # the default skips, counts and keeps the error text
    assert lenient_got == [0, 1, 5, 6, 7]
    assert lenient.bad_messages == 1 and lenient.last_error == strict.last_error


def _rss_bytes() -> int:
    """Resident set size of this process (bytes), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stuck_subscriber(endpoint: str) -> zmq.Socket:
    """A SUB that connects and never reads, with tiny queues of its own (2 messages, 4 KiB of
    kernel buffer), so what it is sent waits in the publisher."""
    stuck = zmq.Context.instance().socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 2)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.connect(endpoint)
    return stuck


def _read_for(sock: zmq.Socket, seconds: float) -> list[int]:
    """Frame sequence numbers a stuck subscriber reads when it finally reads, for ``seconds``."""
    from medacq.protocols.stream import decode_message

    seqs = []
    end = time.monotonic() + seconds
    while sock.poll(max(1, int((end - time.monotonic()) * 1000))):
        h, a = decode_message(sock.recv_multipart())
        if a is not None:
            seqs.append(h["seq"])
    return seqs


def _holes(seqs: list[int]) -> int:
    return sum(b - a - 1 for a, b in zip(seqs, seqs[1:]) if b > a + 1)


def test_slow_subscriber_does_not_slow_others(endpoints):
    # 1000 frames of 16 KiB (16 MiB) against a daemon queue of 0.5 MB per subscriber (30 frames):
    # the stuck subscriber's share overflows many times over; the reading one loses nothing
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = _rig(endpoints, sim.address, rate_hz=500.0, shape=[64, 64])
        cfg.daemon.sndhwm_mb = 0.5
        cfg.daemon.max_frame_mb = 64 * 64 * 4 / 1e6
        stuck = _stuck_subscriber(cfg.daemon.data_endpoint)
        with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub:
            d = AcquisitionDaemon(cfg).start()
            try:
                got = list(sub.frames(timeout=5, max_frames=1000))
                st = d.status()
                stuck_seqs = _read_for(stuck, 1.0)  # what it was sent while stuck, then the live stream
            finally:
                d.shutdown()
                stuck.close(0)
    seqs = [h["seq"] for h, _ in got]
    assert len(got) == 1000 and seqs == list(range(seqs[0], seqs[0] + 1000)) and sub.gaps == []
    assert st["streams"]["syn0"]["drops"] == 0
    assert st["publisher"]["sndhwm"] == 500_000 // (64 * 64 * 4) == 30
    assert st["publisher"]["bound_mb"] <= 0.5 and st["publisher"]["oversized_streams"] == []
    # the stuck one got what the bounded queues held, then a hole it can see in seq
    assert stuck_seqs and stuck_seqs[-1] > seqs[-1]
    assert len([s for s in stuck_seqs if s <= seqs[-1]]) < 500 and _holes(stuck_seqs) > 500


def test_publisher_memory_stays_bounded_with_a_stuck_subscriber():
    """400 MiB of 2 MiB frames at 50 Hz while one subscriber never reads: the publisher pins at
    most its byte budget for it (RSS measured), the reading subscriber gets every frame."""
    n_frames, shape = 200, (512, 1024)
    frame_bytes = shape[0] * shape[1] * 4
    budget = 24_000_000  # 11 frames per subscriber; a message count of 1000 would pin all 200
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, sndhwm_for(1000, budget / 1e6, frame_bytes / 1e6))  # as the daemon binds
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    stuck = _stuck_subscriber(endpoint)
    wake = threading.Event()
    q = FrameQueue(4, wake)
    p = Publisher(pub, wake, max_frame_bytes=frame_bytes)
    p.add_stream("big", q, StreamStats())
    desc = StreamDescriptor(stream="big", modality="synthetic", dtype="<f4", shape=list(shape), axes=["y", "x"])

    def feed() -> None:  # a 50 Hz device that never outruns the publisher: no drop in its queue
        for i in range(n_frames):
            while len(q) >= 3:
                time.sleep(0.001)
            time.sleep(0.02)
            assert q.put_frame(FrameItem(i, Frame(np.full(shape, i, "<f4"), time.time_ns(), time.monotonic_ns())))

    with Subscriber(endpoint, "raw/") as sub:
        time.sleep(0.3)
        q.put_control(SeriesStart(new_series_id(), desc))
        p.start()
        feeder = threading.Thread(target=feed, daemon=True)
        base = _rss_bytes()
        feeder.start()
        seqs, peak = [], base
        for h, a in sub.frames(timeout=5, max_frames=n_frames):
            seqs.append(h["seq"])
            assert a[0, 0] == h["seq"] and a[-1, -1] == h["seq"]
            peak = max(peak, _rss_bytes())
        feeder.join(5)
        hwm = p.sndhwm
        assert p.hwm_status()["bound_mb"] <= budget / 1e6 and not p.oversized
        stuck_seqs = _read_for(stuck, 0.5)
        # one more frame: now that it reads again, the stuck subscriber sees what it missed
        q.put_frame(FrameItem(n_frames, Frame(np.full(shape, n_frames, "<f4"), time.time_ns(), time.monotonic_ns())))
        assert [h["seq"] for h, _ in sub.frames(timeout=5, max_frames=1)] == [n_frames]
        stuck_seqs += _read_for(stuck, 0.5)
        p.stop()
        p.join(2)
    stuck.close(0)
    pub.close(0)
    assert seqs == list(range(n_frames)) and sub.gaps == []
    assert hwm == budget // frame_bytes == 11
    growth = peak - base
    # allowed: the budget for the stuck one, the device queue, the reader's own queue (16
    # messages by default) and the stuck one's (2): under 100 MB; unbounded it is ~400 MB
    assert growth < 120e6, f"RSS grew {growth / 1e6:.0f} MB while a subscriber was stuck"
    # it got what its queues held (the publisher's 11, kernel buffers, its own 2) and the last frame
    assert stuck_seqs[-1] == n_frames and len(stuck_seqs) <= 2 * hwm + 4
    assert _holes(stuck_seqs) == n_frames + 1 - len(stuck_seqs)


def test_frames_larger_than_declared_are_reported():
    """The mark is fixed at bind for ``max_frame_mb``; a stream with larger frames says so."""
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, sndhwm_for(1000, 8.0, 1.0))
    pub.bind_to_random_port("tcp://127.0.0.1")
    wake = threading.Event()
    stats = StreamStats()
    q = FrameQueue(4, wake)
    p = Publisher(pub, wake, max_frame_bytes=1_000_000)
    p.add_stream("xr0", q, stats)
    q.put_control(SeriesStart(new_series_id(), StreamDescriptor(stream="xr0", modality="xray", dtype="<u2",
                                                                shape=[1000, 1000], axes=["row", "col"])))
    p._drain_all()  # the publisher's own step, in this thread: the descriptor alone is enough to tell
    pub.close(0)
    st = p.hwm_status()
    assert p.sndhwm == 8 and st["oversized_streams"] == ["xr0"]
    assert st["largest_frame_mb"] == 2.0 and st["bound_mb"] == 16.0
    assert "exceed [daemon] max_frame_mb = 1" in (stats.last_error or "")


def test_real_processes_and_sigterm(tmp_path, endpoints):
    port = free_port()
    sim = subprocess.Popen(medacq_cmd("sim", "synthetic", "--tcp", f"127.0.0.1:{port}"), stdout=subprocess.PIPE,
                           text=True)
    try:
        line = sim.stdout.readline()
        assert f"socket://127.0.0.1:{port}" in line
        cfg = _rig(endpoints, f"socket://127.0.0.1:{port}", rate_hz=300.0)
        path = tmp_path / "rig.toml"
        path.write_text(dump_config({**endpoints, "device": [
            {"name": "syn0", "kind": "synthetic", "address": f"socket://127.0.0.1:{port}",
             "settings": cfg.device[0].settings}]}))
        with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub:
            daemon = subprocess.Popen(medacq_cmd("run", "--config", str(path)), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            try:
                frames = list(sub.frames(timeout=10, max_frames=200))
                assert len(frames) == 200
                for h, a in frames:
                    np.testing.assert_array_equal(a, _expect(cfg, h["seq"]))
                seqs = [h["seq"] for h, _ in frames]
                assert seqs == list(range(seqs[0], seqs[0] + 200))
                t0 = time.monotonic()
                daemon.send_signal(signal.SIGTERM)
                kinds = []
                while (m := sub.recv(timeout=2)) is not None:
                    kinds.append((m.kind, m.header.get("reason")))
                    if m.kind == "series_end":
                        break
                rc = daemon.wait(5)
                elapsed = time.monotonic() - t0
            finally:
                if daemon.poll() is None:
                    daemon.kill()
        assert rc == 0 and elapsed < 2.0, (rc, elapsed, daemon.stdout.read())
        assert ("series_end", "daemon shutdown") in kinds
    finally:
        sim.terminate()
        sim.wait(5)


def test_subscriber_gap_list_is_bounded_and_every_gap_still_counted():
    """A lossy link for weeks must not grow ``Subscriber.gaps`` without bound: with ``max_gaps=3``,
    20 holes leave between 3 and 6 entries (the newest), and every hole is still counted."""
    from medacq.protocols.stream import HeaderTemplate

    ctx = zmq.Context.instance()
    port = free_port()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    tpl = HeaderTemplate("eeg0", new_series_id(), "<f4", [2], ["sample"], "uV")
    seen = []
    with Subscriber(f"tcp://127.0.0.1:{port}", "raw/", max_gaps=3, on_gap=seen.append) as sub:
        time.sleep(0.3)
        seqs = [3 * i for i in range(21)]  # 20 holes of 2 frames each
        for seq in seqs:
            pub.send_multipart([b"raw/eeg0", tpl.frame(seq, 1, 2), np.zeros(2, "<f4").tobytes()])
        got = [h["seq"] for h, _ in sub.frames(timeout=2)]
    pub.close(0)
    assert got == seqs and len(seen) == 20
    assert sub.counters.gap_events == 20 and sub.counters.gap_frames == 40
    assert 3 <= len(sub.gaps) <= 6 and sub.counters.gaps_forgotten == 20 - len(sub.gaps)
    assert [g.first_seq for g in sub.gaps] == [g.first_seq for g in seen[-len(sub.gaps):]]  # the newest, in order
    with pytest.raises(ValueError, match="max_gaps"):
        Subscriber(f"tcp://127.0.0.1:{port}", "raw/", max_gaps=0)
