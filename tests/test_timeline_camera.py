"""GigE Vision cameras' frame starts on the timeline: a simulated camera whose timestamp clock runs
off the host's (an offset and a drift in ppm) streams over real UDP (GVCP/GVSP) to the real ``gige``
driver inside a real AcquisitionDaemon; with ``frame_triggers`` every frame's start (the GVSP
leader's timestamp, mapped by the driver's fit of the camera clock) is published on
``markers/<device>`` and judged against the simulator's true exposure starts (CLOCK_MONOTONIC).

The bound, 1 ms for every marker: the camera stamps its exposure start itself, so no sample-period
quantisation applies. What is left is the fit's error: the least delay of camera -> loopback UDP ->
driver thread that the lower envelope of the leaders' arrivals (less ExposureTime) keeps, ~0.1-0.3 ms
here, plus, until the fit has two 1-s buckets, the drift extrapolated at the nominal rate: at 300 ppm
over at most ~1.3 s (a new bucket is fed once 3 leaders are in) 0.4 ms. 1 ms is also the issue's
bar for a stream. The drift is large enough that a fit that did not follow it would leave the bound
within the run (300 ppm x 4.5 s = 1.35 ms)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from medacq.client import Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.drivers._base import Frame
from medacq.drivers.gige import GigEDriver, GigESettings
from medacq.protocols.markers import FRAME_TRIGGERS_KEY, TriggerEvent, decode_marker_text
from medacq.simulators.gige_camera import GigEVisionServer, make
from medacq.simulators.trigger_bus import TriggerBus, attach

PPM = 300.0
OFFSET_S = 86_400.0  # the camera has been up a day: its clock reads 1 day at the adapter's start


def test_frame_start_markers_through_the_daemon_match_the_true_exposure_starts(endpoints):
    cam = make(model="thermal", lepton=True, clock_ppm=PPM, clock_offset_s=OFFSET_S)
    quiet = make(model="thermal", lepton=True, clock_ppm=-PPM, seed=1)
    with GigEVisionServer(cam, "127.0.0.1", 0) as sim, GigEVisionServer(quiet, "127.0.0.1", 0) as sim2:
        cfg = parse_config({**endpoints, "device": [
            {"name": "th0", "kind": "gige", "address": sim.address,
             "settings": {"frame_rate_hz": 30, "frame_triggers": True}},
            {"name": "th1", "kind": "gige", "address": sim2.address, "settings": {"frame_rate_hz": 30}}]})
        markers, raw1 = [], 0
        with Subscriber(cfg.daemon.data_endpoint, ["markers/", "raw/th1"]) as sub:
            sub.wait_connected(1.0)
            d = AcquisitionDaemon(cfg).start()
            try:
                end = time.monotonic() + 4.5
                while time.monotonic() < end:
                    m = sub.recv(timeout=0.5)
                    if m is None or m.array is None:
                        continue
                    if m.topic.startswith("markers/"):
                        markers.append(m)
                    elif m.topic == "raw/th1":
                        raw1 += 1
            finally:
                d.shutdown()
            desc = sub.descriptors.get("markers/th0")
        truth = {round(td, 9): (bid, tm) for bid, td, tm in sim.true_frame_starts()}
    assert desc is not None and desc["modality"] == "marker"
    # the setting off: th1 streams, but no marker of it
    assert raw1 >= 60 and {m.topic for m in markers} == {"markers/th0"}
    assert len(markers) >= 100  # 30 frames/s for ~4 s
    seqs = [m.header["seq"] for m in markers]
    mono = np.array([m.header["t_mono_ns"] for m in markers], dtype=np.int64)
    host = np.array([m.header["t_host_ns"] for m in markers], dtype=np.int64)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert np.all(np.diff(mono) > 0) and np.ptp(host - mono) < 2e6
    for m in markers:
        meta = m.header["meta"]
        assert meta["origin"] == "trigger" and meta["line"] == "frame_start" and meta["edge"] == "rising"
        assert decode_marker_text(m.array).startswith("frame_start")
        assert abs(meta["period_s"] - 1e-9) < 1e-12  # 1 GHz ticks, fitted
        # t_device is the leader's own timestamp: one of the camera's frames, and its block id
        bid, _ = truth[round(m.header["t_device"], 9)]
        assert meta["sample"] == bid
    t_dev = np.array([m.header["t_device"] for m in markers])
    assert t_dev[0] > OFFSET_S and np.all(np.diff(t_dev) > 0)
    # the camera paces its frames by its own clock: 1/30 s of camera time apart
    true_s = np.array([truth[round(t, 9)][1] for t in t_dev])
    gaps = np.diff(true_s)
    one = np.abs(gaps - np.median(gaps)) < 1e-3  # consecutive frames (none skipped)
    assert np.allclose(np.diff(t_dev)[one], 1 / 30, atol=2e-9)
    err_ms = (mono / 1e9 - true_s) * 1e3
    print(f"frame-start marker error, ms: p50 {np.median(err_ms):.3f} max |err| {np.abs(err_ms).max():.3f}")
    # the fit's first points are its first leaders' own arrival delays (on a loaded machine up to a
    # few ms: 1.9 ms seen in a full test run); from the second second on the lower envelope has
    # taken the least delayed leaders and every marker is within the bound
    settled = true_s >= true_s[0] + 1.0
    assert settled.sum() >= 60 and np.all(np.abs(err_ms[settled]) < 1.0), err_ms
    assert np.all(np.abs(err_ms) < 10.0), err_ms


def _read_for(d: GigEDriver, seconds: float) -> list[Frame]:
    out: list[Frame] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out += [f for f in d.read(0.1) if isinstance(f, Frame)]
    return out


def test_a_pulse_on_the_trigger_input_starts_an_exposure_and_its_frame_start_marker():
    """TriggerMode On, TriggerSource Line0: each bus pulse starts one exposure 20 µs after its edge;
    the frame's frame_start event (and its Line0 edge event, the same time) lands on the edge (+ the
    latency) within the bound, and a pulse during an exposure starts nothing."""
    cam = make(model="thermal", lepton=True, clock_ppm=-PPM, clock_offset_s=50.0, trigger_latency_us=20.0)
    bus = TriggerBus(width_s=0.002)
    with GigEVisionServer(cam, "127.0.0.1", 0) as sim:
        attach(sim, bus, "Line0")
        d = GigEDriver("cam0", sim.address, GigESettings(trigger="line0", frame_triggers=True))
        d.open()
        try:
            d.start()
            assert d.get_feature("TriggerSource") == "Line0" and d.get_feature("TriggerMode") == "On"
            assert _read_for(d, 0.3) == []  # no pulse, no frame
            edges = bus.train(30, 0.1, start_in_s=0.05, jitter_s=0.03, seed=5)
            busy = bus.pulse(edges[-1] + 0.005)  # inside the last exposure (10 ms): ignored
            frames = _read_for(d, edges[-1] - time.monotonic() + 0.3)
        finally:
            d.stop()
            d.close()
        truth = sim.true_frame_starts()
        counters = sim.call(lambda: dict(cam.counters))
    assert busy > edges[-1] and counters["triggers_ignored_busy"] == 1 and counters["line_triggers"] == 30
    assert len(frames) == len(truth) == 30
    assert np.allclose([t for _, _, t in truth], np.array(edges) + 20e-6, atol=1e-9)
    both = [[TriggerEvent.from_meta(e) for e in f.meta[FRAME_TRIGGERS_KEY]] for f in frames]
    assert all([e.line for e in b] == ["frame_start", "Line0"] and b[0].t_mono_ns == b[1].t_mono_ns for b in both)
    ev = [b[0] for b in both]
    assert [e.t_device for e in ev] == [td for _, td, _ in truth] == [f.t_device for f in frames]
    assert [e.sample for e in ev] == [bid for bid, _, _ in truth] == [f.meta["block_id"] for f in frames]
    err_ms = np.array([e.t_mono_ns / 1e9 - (edge + 20e-6) for e, edge in zip(ev, edges)]) * 1e3
    assert np.all(np.abs(err_ms) < 1.0), err_ms


def test_frame_triggers_and_line_trigger_settings_are_validated():
    assert GigESettings().frame_triggers is False
    assert GigESettings(frame_triggers=True, trigger="line0").trigger == "line0"
    with pytest.raises(ValidationError):
        GigESettings(frame_triggers="sometimes")
    with pytest.raises(ValidationError):
        GigESettings(trigger="line1")
    with pytest.raises(ValueError):
        make(model="thermal", clock_ppm=1e6)


def _block(bid: int, ticks: int, leader_t: float, resent: bool = False):
    from medacq.protocols.gigev import BlockComplete, GvspLeader, PixelFormat
    return BlockComplete(bid, GvspLeader(bid, ticks, int(PixelFormat.Mono16), 160, 120), bytearray(), 0, leader_t,
                         resent)


def test_frame_start_fit_skips_resent_leaders_restarts_on_a_timestamp_reset_and_counts_bad_ones():
    """The driver's fit on synthetic leaders (1 GHz ticks, 10 ms exposure): a leader that came in a
    resend round (late) does not move the fit, a timestamp of 0 or beyond any clock is counted and
    yields nothing, a timestamp stepping back restarts the fit (its first frame lands on its arrival
    less the exposure)."""
    from medacq.drivers._clockfit import DeviceClock

    d = GigEDriver("cam0", "gige://127.0.0.1", GigESettings(frame_triggers=True))
    d.tick_hz, d._exposure_ns = 1e9, 10_000_000
    d._cam_clock = DeviceClock(1e9, bucket_s=1.0, window_s=60.0)
    t0, dev0 = 1000.0, 5_000_000_000  # host s of the first exposure; its camera ticks
    for i in range(90):  # 30 frames/s for 3 s, each leader 10.2 ms after its exposure start; in the
        # third second every leader comes in a resend round, 5 ms later
        resent = i >= 60
        evs = d._frame_start(_block(i + 1, dev0 + i * 33_333_333, t0 + i / 30 + 0.0102 + 0.005 * resent, resent), 0)
        assert [e["line"] for e in evs] == ["frame_start"]
        assert abs(evs[0]["t_mono_ns"] / 1e9 - (t0 + i / 30 + 0.0002)) < 2e-6, i  # the resent ones fed nothing
    # a stalled thread: the first leader of the fourth second (a new 1-s bucket of the fit) is read
    # 300 ms late; it feeds nothing (fed, it would bend the 4-bucket fit by ~0.1 s)
    stall = d._frame_start(_block(92, dev0 + 91 * 33_333_333, t0 + 91 / 30 + 0.0102 + 0.3), 0)[0]
    assert d.counters["late_leaders"] == 1 and abs(stall["t_mono_ns"] / 1e9 - (t0 + 91 / 30 + 0.0002)) < 2e-6
    assert d._frame_start(_block(93, 0, t0 + 3.1), 0) == [] and d.counters["frame_starts_no_timestamp"] == 1
    assert d._frame_start(_block(94, 1 << 63, t0 + 3.1), 0) == [] and d.counters["frame_starts_bad_timestamp"] == 1
    reset = d._frame_start(_block(95, 1000, t0 + 3.2), 0)[0]  # GevTimestampControlReset: ticks from 0 again
    assert d.counters["timestamp_resets"] == 1 and reset["t_device"] == 1e-6
    assert abs(reset["t_mono_ns"] / 1e9 - (t0 + 3.2 - 0.010)) < 2e-6


def test_gvsp_receiver_reports_when_the_leader_arrived_and_whether_it_was_resent():
    from medacq.protocols._sansio import NEED_DATA
    from medacq.protocols.gigev import GvspReceiver, GvspStatus, PixelFormat, block_packets

    payload = bytes(160 * 120 * 2)
    rx = GvspReceiver(len(payload), 1500)
    pk = block_packets(7, 123, int(PixelFormat.Mono16), 160, 120, payload, 1500)
    for k, p in enumerate(pk):
        rx.receive_data(p, 10.0 + k * 1e-4)
    ev = rx.next_event()
    assert ev.block_id == 7 and ev.leader_t == 10.0 and ev.leader_resent is False and rx.next_event() is NEED_DATA
    pk = block_packets(8, 456, int(PixelFormat.Mono16), 160, 120, payload, 1500)
    for p in pk[1:]:  # the leader is lost: the trailer ends the block, a resend is asked for
        rx.receive_data(p, 20.0)
    req = rx.next_event()
    assert (req.block_id, req.first_packet, req.last_packet) == (8, 0, 0) and rx.next_event() is NEED_DATA
    rx.receive_data(bytes([GvspStatus.PACKET_RESEND >> 8, GvspStatus.PACKET_RESEND & 0xFF]) + pk[0][2:], 20.01)
    ev = rx.next_event()
    assert ev.block_id == 8 and ev.leader_t == 20.01 and ev.leader_resent is True
