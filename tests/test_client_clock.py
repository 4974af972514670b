"""Issue #20, "Clock alignment": a subscriber maps a daemon's clocks to its own with ping round trips
(:class:`medacq.client.ClockEstimator`), against a real daemon on real ZeroMQ sockets."""

from __future__ import annotations

import json
import threading
import time
import types

import pytest
import zmq

from medacq.client import ClockError, ClockEstimator, ControlClient, Subscriber
from medacq.daemon.acquisition import markers as markers_mod
from medacq.daemon.acquisition import service as service_mod
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.client.clock import ClockSample, estimate_offset
from medacq.daemon.common.config import parse_config
from medacq.protocols.control import encode_reply
from medacq.protocols.markers import decode_marker_text

from conftest import free_port, run_medacq, wait_for


def _shifted_time(host_shift_ns: int, mono_shift_ns: int) -> types.SimpleNamespace:
    """The ``time`` module as a host whose clocks are shifted would have it (test only)."""
    ns = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    ns.time_ns = lambda: time.time_ns() + host_shift_ns
    ns.monotonic_ns = lambda: time.monotonic_ns() + mono_shift_ns
    return ns


# -- the estimate itself -------------------------------------------------------------------------
def test_the_estimate_takes_the_lowest_round_trips():
    # true offsets: host +5 ms, mono -2 s; the daemon read its clocks 1/4 into each round trip
    samples = []
    for i, rtt in enumerate([8_000_000, 400_000, 3_000_000, 600_000, 500_000, 9_000_000, 700_000, 5_000_000]):
        t0 = 1_000_000_000 * (i + 1)
        at = t0 + rtt // 4
        samples.append(ClockSample(t0, t0 + rtt, t0 + 10**18, at + 10**18 + 5_000_000, at - 2_000_000_000))
    est = estimate_offset(samples, best=3)  # RTTs 0.4, 0.5, 0.6 ms
    assert est.used == 3 and est.probes == 8 and est.rtt_min_ns == 400_000
    assert est.uncertainty_ns == 300_000  # the largest RTT/2 of the three
    # each chosen sample's error is -RTT/4; the median is the 0.5 ms one's: -125 us
    assert est.offset_host_ns == pytest.approx(5_000_000 - 125_000)
    assert est.offset_mono_ns == pytest.approx(-2_000_000_000 - 125_000)
    assert abs(est.offset_host_ns - 5_000_000) <= est.uncertainty_ns
    assert estimate_offset(samples).used == 2  # default: a quarter
    with pytest.raises(ClockError, match="no ping round trips"):
        estimate_offset([])
    with pytest.raises(ClockError, match="negative"):
        estimate_offset([ClockSample(10, 5, 0, 0, 0)])


# -- a real daemon -------------------------------------------------------------------------------
@pytest.fixture
def daemon(endpoints):
    d = AcquisitionDaemon(parse_config(endpoints)).start()
    try:
        yield endpoints
    finally:
        d.shutdown()


def test_one_host_offset_is_zero_within_the_uncertainty(daemon):
    ep = daemon["daemon"]["control_endpoint"]
    with ClockEstimator(ep, probes=32) as clk:
        est = clk.estimate
        assert est is not None and est.probes == 32 and est.used == 8
        assert est.uncertainty_ms < 5.0
        assert abs(est.offset_host_ns) <= est.uncertainty_ns + 50_000  # + realtime vs monotonic slew
        assert abs(est.offset_mono_ns) <= est.uncertainty_ns
        assert est.rtt_min_ns <= est.rtt_median_ns
        # mapping a time and back
        assert clk.to_remote(clk.to_local(123_456_789_000, "mono"), "mono") == 123_456_789_000
        # refreshed in the background
        clk.start(refresh_s=0.1)
        wait_for(lambda: len(clk.history) >= 3, timeout=10)
        assert clk.failures == 0 and clk.estimate is clk.history[-1]


def test_a_daemon_with_shifted_clocks_is_measured_at_the_shift(endpoints, monkeypatch):
    host_shift, mono_shift = 3_517_000_123, -42_123_456_789  # +3.5 s realtime, -42.1 s monotonic
    fake = _shifted_time(host_shift, mono_shift)
    monkeypatch.setattr(service_mod, "time", fake)  # the ping reply's clocks
    monkeypatch.setattr(markers_mod, "time", fake)  # a software marker's clocks
    d = AcquisitionDaemon(parse_config(endpoints)).start()
    try:
        with ClockEstimator(endpoints["daemon"]["control_endpoint"], probes=24) as clk:
            est = clk.estimate
            assert est is not None
            assert abs(est.offset_host_ns - host_shift) <= est.uncertainty_ns + 50_000
            assert abs(est.offset_mono_ns - mono_shift) <= est.uncertainty_ns
            assert est.uncertainty_ms < 5.0
            # a header's daemon clocks on this host's: a marker stamped while its request was in flight
            with Subscriber(endpoints["daemon"]["data_endpoint"], "markers/operator") as sub, \
                    ControlClient(endpoints["daemon"]["control_endpoint"]) as c:
                sub.wait_connected()
                w0, m0 = time.time_ns(), time.monotonic_ns()
                reply = c.request("mark", text="shifted")
                w1, m1 = time.time_ns(), time.monotonic_ns()
                h, a = next(sub.frames(timeout=5))
            assert decode_marker_text(a) == "shifted" and h["t_mono_ns"] == reply["t_mono_ns"]
            assert abs(h["t_mono_ns"] - mono_shift - m0) < 1e9  # stamped on the daemon's (shifted) clock
            local = clk.header_to_local(h)
            u = est.uncertainty_ns
            assert m0 - u <= local["t_mono_ns"] <= m1 + u
            assert w0 - u - 50_000 <= local["t_host_ns"] <= w1 + u + 50_000
    finally:
        d.shutdown()


def test_ctl_clock_prints_offset_and_uncertainty(daemon):
    ep = daemon["daemon"]["control_endpoint"]
    r = run_medacq("ctl", "clock", "probes=12", "--endpoint", ep)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["endpoint"] == ep and out["probes"] == 12 and out["used"] == 3
    assert 0 < out["uncertainty_ms"] < 5.0
    assert abs(out["offset_mono_ms"]) <= out["uncertainty_ms"]
    r = run_medacq("ctl", "clock", "probes=0", "--endpoint", ep)
    assert r.returncode == 2 and "usage: medacq ctl clock" in r.stderr


def test_no_daemon_or_a_reply_without_clocks_is_a_clock_error(tmp_path):
    dead = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ClockError, match="no reply"):
        ClockEstimator(dead, probes=2, timeout=0.3)
    r = run_medacq("ctl", "clock", "--endpoint", dead, "--timeout", "0.3")
    assert r.returncode == 3 and "no clock estimate" in r.stderr
    # a control endpoint whose ping reply has no clocks (an old daemon, another service)
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                ident, _empty, body = router.recv_multipart()
                rid = json.loads(body)["id"]
                router.send_multipart([ident, b"", encode_reply(rid, {"pong": 1})])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        clk = ClockEstimator(f"tcp://127.0.0.1:{port}", probes=3, measure=False)
        with pytest.raises(ClockError, match="no t_host_ns/t_mono_ns"):
            clk.measure()
        assert clk.failures == 1 and clk.estimate is None
        with pytest.raises(ClockError, match="no clock estimate"):
            clk.to_local(0)
        clk.close()
    finally:
        stop.set()
        t.join(2)
        router.close(0)


def test_the_reconstruction_stage_is_measured_too(daemon):
    from medacq.daemon.recon.stage import ReconStage

    stage = ReconStage(parse_config(daemon), preload=False).start()
    try:
        with ClockEstimator(daemon["recon"]["control_endpoint"], probes=8) as clk:
            est = clk.estimate
            assert est is not None and est.probes == 8
            assert abs(est.offset_mono_ns) <= est.uncertainty_ns < 5e6
    finally:
        stage.shutdown()
