"""The rig trigger bus: TTL edges in each simulated device's own data, decoded by the real drivers,
published on markers/<device> by the daemon, placed on the host timeline by each stream's clock fit
and corrected by the bus."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.daemon.bench.timeline import bus_corrected, run_timeline
from medacq.protocols import cyton as cy
from medacq.protocols import hackeeg as he
from medacq.protocols._sansio import NEED_DATA
from medacq.simulators.cyton import CytonInterface
from medacq.simulators.hackeeg import HackEEGInterface
from medacq.simulators.trigger_bus import DelayedInterface, TriggerBus, TriggerInput, apply_trigger_fault


def test_bus_pulses_levels_and_side_door():
    bus = TriggerBus(width_s=0.01)
    bus.pulse(1.0)
    assert not bus.level(0.999) and bus.level(1.0) and bus.level(1.0099) and not bus.level(1.01)
    with pytest.raises(ValueError):
        bus.pulse(1.005)  # overlaps
    r = apply_trigger_fault(bus, "trigger_train", {"n": 5, "period_s": 0.1, "start_in_s": 10.0})
    assert len(r["edges"]) == 5 and np.allclose(np.diff(r["edges"]), 0.1)
    with pytest.raises(ValueError):
        apply_trigger_fault(bus, "trigger_train", {"n": 2, "period_s": 0.005})  # width >= period
    with pytest.raises(ValueError):
        apply_trigger_fault(bus, "explode", {})


def _cyton_packets(data: bytes) -> list[cy.CytonSample]:
    c = cy.CytonHostCodec()
    c.receive_data(data)
    out = []
    while (ev := c.next_event()) is not NEED_DATA:
        if isinstance(ev, cy.CytonSample):
            out.append(ev)
    return out


@pytest.mark.parametrize("line, word, bit", [("D11", 0, 8), ("D12", 0, 0), ("D17", 1, 0), ("D18", 2, 0)])
def test_cyton_digital_read_aux_carries_the_line_at_its_own_sample_clock(line, word, bit):
    """Board mode digital: auxData[0] = D11<<8 | D12, [1] = D13<<8 | D17, [2] = D18 (firmware
    updateChannelData), the level read at each packet's own time on a +1000 ppm crystal."""
    bus = TriggerBus(width_s=0.02)
    sim = CytonInterface(seed=1, daisy=False, clock_ppm=1000.0)
    sim.trigger = TriggerInput(bus, line, epoch=100.0)
    t_edge = 100.0 + 0.5  # true time; the stream starts at adapter time 0
    bus.pulse(t_edge)
    sim.on_bytes(b"/3", 0.0)
    sim.on_bytes(b"b", 0.0)
    pk = _cyton_packets(sim.poll(1.0))
    period = 1 / (250 * (1 + 1000e-6))
    high = [k for k, p in enumerate(pk) if int.from_bytes(p.aux[2 * word:2 * word + 2], "big") >> bit & 1]
    first = int(np.ceil(0.5 / period - 1e-9))  # the first packet sampled at or after the edge
    assert high[0] == first and len(high) in (5, 6)  # 20 ms at ~4 ms per packet
    assert high == list(range(first, first + len(high)))
    other = [w for w in range(3) if w != word]
    assert all(p.aux[2 * w:2 * w + 2] == b"\0\0" for p in pk for w in other)


def test_hackeeg_status_word_gpio_bit():
    bus = TriggerBus(width_s=0.005)
    sim = HackEEGInterface(seed=1, rate=1000)
    sim.trigger = TriggerInput(bus, "GPIO3", epoch=0.0)
    bus.pulse(0.2503)
    sim.on_bytes(b"jsonlines\n", 0.0)
    sim.on_bytes(b'{"COMMAND":"rdatac"}\n', 0.0)
    codec = he.HackEEGHostCodec()
    codec.receive_data(sim.poll(0.5))
    st = []
    while (ev := codec.next_event()) is not NEED_DATA:
        if isinstance(ev, he.HackEEGSample):
            st.append(ev.status)
    high = [k for k, s in enumerate(st) if s & 0b100]
    assert high == list(range(251, 256))  # samples at 251..255 ms see the 250.3..255.3 ms pulse
    assert all(s >> 20 == 0b1100 and s & 0b1011 == 0 for s in st)


def test_delayed_interface_delays_bytes_not_the_device_timeline():
    sim = HackEEGInterface(seed=1, rate=1000, usb_frame_s=0.0)
    d = DelayedInterface(sim, latency_s=0.01, jitter_s=0.0)
    d.on_bytes(b"jsonlines\n", 0.0)
    d.on_bytes(b'{"COMMAND":"rdatac"}\n', 0.01)  # the device's clock reads 0 then (its bytes leave 10 ms later)
    assert d.next_deadline() == pytest.approx(0.01)  # sample 0, taken at device t = 0, leaves at 10 ms
    codec = he.HackEEGHostCodec()
    codec.receive_data(d.poll(0.0105))
    got = []
    while (ev := codec.next_event()) is not NEED_DATA:
        if isinstance(ev, he.HackEEGSample):
            got.append(ev.sample_number)
    assert got == [0]
    assert d.next_deadline() == pytest.approx(sim.next_deadline() + 0.01) == pytest.approx(0.011)
    assert d.truth()["link_latency_s"] == 0.01


def test_bus_correction_removes_a_constant_offset_from_previous_events_only():
    e = [5.0 + (0.1 if i % 2 else -0.1) for i in range(20)]
    e[3] = None
    c = bus_corrected(e, window=50, min_events=5)
    assert c[:6] == [None] * 6  # events 0-5: fewer than 5 earlier ones (event 3 missed)
    assert all(abs(v) <= 0.2 + 1e-9 for v in c[6:] if v is not None) and c[3] is None


@pytest.fixture(scope="module")
def timeline():
    # +-1000 ppm crystals (so drift shows within seconds) and a 5 ms latency on the Cyton's link that no
    # clock fit can see; 2 ms jitter on every link
    return run_timeline(40, drift_ppm=1000.0, jitter_s=0.002, seed=3, latency_s={"eeg0": 0.005}, warmup_s=3.0)


def test_a_trigger_is_recovered_in_every_stream_that_carries_it(timeline):
    r = timeline
    assert r["bad_messages"] == 0
    for s in r["per_stream"]:
        assert s["events_seen"] == 40, s  # every pulse, in every stream, matched to its true time
    for name, errs in r["errors_ms"].items():
        bar = next(s["bar_ms"] for s in r["per_stream"] if s["stream"] == name)
        corrected = [v for v in bus_corrected(errs) if v is not None]
        assert len(corrected) >= 34
        # half a sample period (1 ms at >= 1 kHz) plus 1 ms for the clock fit's noise on a loaded host
        assert max(abs(v) for v in corrected) <= bar + 1.0, (name, corrected)


def test_the_bus_corrects_what_the_clock_fit_cannot_see(timeline):
    err = timeline["errors_ms"]
    raw = np.array([v for v in err["eeg0"] if v is not None])
    assert 3.0 < np.median(raw) < 8.0  # the 5 ms link latency stays in the fitted host times
    cor = np.array([v for v in bus_corrected(err["eeg0"]) if v is not None])
    assert abs(np.median(cor)) < 1.0


def test_drifting_device_clocks_are_corrected(timeline):
    """The device's own clock (sample index / nominal rate) runs 1000 ppm off; the stream's host
    times (fitted mapping) do not: their error does not grow across the train."""
    edges = np.array(timeline["edges_s"])
    for name, rate, sign in (("eeg0", 250.0, 1), ("ekg0", 1000.0, -1)):
        k = np.array([np.nan if v is None else v for v in timeline["samples"][name]], dtype=float)
        e = np.array([np.nan if v is None else v for v in timeline["errors_ms"][name]], dtype=float)
        ok = ~np.isnan(k)
        nominal = (k[ok] - k[ok][0]) / rate  # device time since the first event
        drift_ms = (nominal - (edges[ok] - edges[ok][0])) * 1e3  # grows ~1 ms per s (+- a sample)
        span = edges[ok][-10:].mean() - edges[ok][:10].mean()
        expected = sign * 1000e-6 * span * 1e3
        assert abs((drift_ms[-10:].mean() - drift_ms[:10].mean()) - expected) < 0.5 * abs(expected)
        assert abs(e[ok][-10:].mean() - e[ok][:10].mean()) < 1.5  # the fitted host times do not drift


def test_the_fault_side_door_fires_the_bus_a_device_is_cabled_to():
    """``medacq fault eeg0 trigger`` / ``trigger_train``: pulses on the bus of the simulator's cable;
    a simulator with no cable says so."""
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.faults import apply_fault

    bus = TriggerBus(width_s=0.005)
    cabled = CytonInterface(seed=1, daisy=False)
    cabled.trigger = TriggerInput(bus, "D11", epoch=0.0)
    srv, bare = SimulatorServer(cabled, "tcp"), SimulatorServer(HackEEGInterface(seed=2), "tcp")
    try:
        r = apply_fault(srv, "trigger_train", {"n": 3, "period_s": 0.05, "start_in_s": 1.0})
        assert r["applied"] == "trigger_train" and len(r["edges"]) == 3 and np.allclose(np.diff(r["edges"]), 0.05)
        assert bus.level(r["edges"][1]) and not bus.level(r["edges"][1] - 0.001)
        with pytest.raises(ValueError, match="no trigger input is cabled"):
            apply_fault(bare, "trigger", {})
    finally:
        srv.stop()
        bare.stop()


def test_the_daemon_aligns_every_cabled_stream_to_the_reference(timeline):
    """[daemon] trigger_reference = "ekg0": the daemon itself removes each device's offset from the
    reference (learnt from earlier common edges) -- the Cyton's 5 ms link latency included -- from its
    trigger markers and, sharing the same sample clock, from its frames."""
    r = timeline
    al = r["daemon_alignment"]
    assert al["reference"] == "ekg0" and al["matched"] >= 2 * 35  # eeg0 and xr0, 40 edges each
    assert 3.0 < al["offsets_ms"]["eeg0"] < 8.0  # the latency no fit can see, measured by the daemon
    assert al["frames_corrected"] == ["eeg0"]  # the panel's frames are not on its trigger clock
    d = r["errors_ms_daemon"]
    eeg = np.array([v for v in d["eeg0"] if v is not None])
    ref = np.array([v for v in d["ekg0"] if v is not None])
    assert len(eeg) >= 30 and abs(np.median(eeg) - np.median(ref)) < 1.0  # on the reference's clock
    assert r["align_by"] == "daemon" and r["align_p99_ms"] < r["align_p99_ms_no_trigger"] - 2.0
    # eeg0's frames moved with its markers: a marker's edge (fractional sample) placed by its frame's
    # clocks lands on the marker's published (aligned) time, 5 ms from the fit's own -- but for the
    # one marker published (up to 2 frames late: the analog edge's fit waits for 9 samples) just
    # after the daemon first applied its offset to a frame already out without it
    fm = r["eeg0_frames_vs_markers_ms"]
    assert fm["n"] >= 30 and fm["over_0_5"] <= 1 and 3.0 < -fm["fit_median"] < 8.0


def test_bus_aligner_matches_edges_in_any_arrival_order():
    from medacq.daemon.acquisition.markers import BusAligner

    al = BusAligner("ref", window_ns=40_000_000, keep=50, min_matches=5)
    edges = [int(1e9) + k * 150_000_000 for k in range(12)]
    for k, t in enumerate(edges):
        if k % 2:  # the device's edge first, then the reference's: it waits, then matches
            al.observe("dev", t + 7_000_000 + (k % 3) * 100_000, frame_clock=True)
            al.observe("ref", t)
        else:
            al.observe("ref", t)
            al.observe("dev", t + 7_000_000 + (k % 3) * 100_000, frame_clock=True)
        al.observe("panel", t - 2_000_000)
        if k < 4:
            assert al.offset_ns("dev") is None and al.frame_offset_ns("dev") == 0
    assert al.offset_ns("ref") == 0 and al.frame_offset_ns("ref") == 0
    assert al.offset_ns("dev") == 7_100_000  # median of 7.0, 7.1, 7.2 ms
    assert al.frame_offset_ns("dev") == 7_100_000
    assert al.offset_ns("panel") == -2_000_000 and al.frame_offset_ns("panel") == 0  # frames on another clock
    al.observe("dev", edges[-1] + 500_000_000, frame_clock=True)  # no reference edge within 40 ms: waits, then expires
    al.observe("ref", edges[-1] + 3_000_000_000)
    st = al.status()
    assert st["matched"] == 24 and st["unmatched"] == 1 and st["frames_corrected"] == ["dev"]


def test_trigger_reference_must_name_a_device_of_the_rig():
    from medacq.daemon.common.config import ConfigError, parse_config

    dev = [{"name": "ekg0", "kind": "hackeeg", "address": "/dev/null"}]
    assert parse_config({"daemon": {"trigger_reference": "ekg0"}, "device": dev}).daemon.trigger_reference == "ekg0"
    assert parse_config({"device": dev}).daemon.trigger_reference is None
    with pytest.raises(ConfigError, match="trigger_reference"):
        parse_config({"daemon": {"trigger_reference": "eeg9"}, "device": dev})
