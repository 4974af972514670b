"""The Cyton with the rig's TTL wired into an EEG channel: the simulator renders it through the
ADS1299's sinc^3 filter, the driver (``trigger_channel``) places each edge to a fraction of a sample
and publishes it as a trigger event on the frames' own clock."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from medacq.drivers._base import Frame
from medacq.drivers.cyton import CytonDriver, CytonSettings
from medacq.protocols import cyton as cy
from medacq.protocols._sansio import NEED_DATA
from medacq.protocols.step_edge import locate_steps, sinc3_step
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.cyton import CytonInterface
from medacq.simulators.trigger_bus import TriggerBus, TriggerInput

from test_bio_drivers import collect


def _channels(data: bytes) -> np.ndarray:
    c = cy.CytonHostCodec()
    c.receive_data(data)
    out = []
    while (ev := c.next_event()) is not NEED_DATA:
        if isinstance(ev, cy.CytonSample):
            out.append(ev.channels)
    return np.array(out, dtype=np.float64).T * cy.uv_scale(24)  # (channel, sample) µV


def test_simulator_renders_the_line_through_the_sinc3_filter_on_its_own_clock():
    bus = TriggerBus(width_s=0.005)
    edges = [100.3 + 0.1237 * i for i in range(15)]
    for t in edges:
        bus.pulse(t)
    runs = {}
    for wired in (8, None):
        sim = CytonInterface(seed=4, daisy=False, clock_ppm=300.0, trigger_channel=wired, trigger_uv=50_000.0)
        sim.trigger = TriggerInput(bus, "D11", epoch=100.0)
        sim.on_bytes(b"b", 0.0)
        runs[wired] = _channels(sim.poll(2.2))
        period = sim.packet_period
    with_t, without = runs[8], runs[None]
    np.testing.assert_array_equal(with_t[:7], without[:7])  # other channels untouched
    step = with_t[7] - without[7]  # channel 8: its own signal + the rendered line
    truth = np.ravel([((t - 100.0) / period, (t + 0.005 - 100.0) / period) for t in edges])
    k = np.arange(len(step), dtype=np.float64)
    model = 50_000.0 * sum(sinc3_step(k - r) - sinc3_step(k - f) for r, f in truth.reshape(-1, 2))
    assert np.max(np.abs(step - model)) < 50_000.0 * 2 / 4096 + 0.1  # the discrete filter (N = 4096) to 1/N
    assert 0.5 * 50_000.0 < step.max() < 0.9 * 50_000.0  # a 1.25-sample pulse never settles
    found = locate_steps(with_t[7], 10_000.0)
    assert [e.edge for e in found] == ["rising", "falling"] * 15
    assert np.max(np.abs(np.array([e.position for e in found]) - truth)) < 0.01  # samples, with +300 ppm


def test_settings_refuse_a_daisy_or_both_trigger_sources():
    assert CytonSettings(daisy=False, trigger_channel=8).trigger_step_uv == 10_000.0
    for bad in ({"daisy": True, "trigger_channel": 8}, {"daisy": False, "trigger_channel": 8, "trigger_line": "D11"},
                {"daisy": False, "trigger_channel": 9}, {"daisy": False, "trigger_channel": 8, "trigger_step_uv": 0}):
        with pytest.raises(ValidationError):
            CytonSettings(**bad)


def test_driver_publishes_sub_sample_edges_on_the_frames_clock():
    bus = TriggerBus(width_s=0.005)
    starts = [0.2 + 0.1237 * i for i in range(400)]  # adapter time; the unpaced stream starts somewhere in it
    for t in starts:
        bus.pulse(t)
    iface = CytonInterface(seed=5, daisy=False, trigger_channel=8, trigger_uv=50_000.0)
    iface.trigger = TriggerInput(bus, "D11", epoch=0.0)
    with SimulatorServer(iface, "pty", paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=False, trigger_channel=8))
        d.open()
        try:
            d.start()
            items = collect(d, 1500)
        finally:
            d.stop()
            d.close()
        t0, period = iface._stream_t0, iface.packet_period
    # the TTL's channel is differential (SRB2 off) and out of the bias drive; the EEG channels are not
    assert (iface.settings[7].srb2, iface.settings[7].bias) == (0, 0)
    assert all((c.srb2, c.bias) == (1, 1) for c in iface.settings[:7])
    frames = [f for f in items if isinstance(f, Frame)]
    last = frames[-1].t_device + frames[-1].data.shape[1]
    published = [e for f in frames for e in (f.meta or {}).get("triggers", [])]
    # compared away from both ends of the stream, the same window on both sides: an edge in the
    # last few samples may or may not be out yet when the collection stops (a CI run saw one)
    events = [e for e in published if 3 < e["t_device"] < last - 12]
    truth = [(t - t0) / period for t in starts if 3 < (t - t0) / period < last - 12]
    assert len(truth) >= 40 and len(events) == len(truth)
    assert all(e["line"] == "ch8" and e["edge"] == "rising" and e["frame_clock"] for e in events)
    pos = np.array([e["t_device"] for e in events])
    assert np.max(np.abs(pos - truth)) < 0.01  # samples
    assert [e["sample"] for e in events] == [int(np.floor(p)) + 1 for p in pos]
    # the host time is the fractional index on the stamp of the frame holding it
    by_first = {f.t_device: f for f in frames}
    for e in events:
        f = next(f for first, f in by_first.items() if first <= e["sample"] < first + f.data.shape[1])
        want = f.t_mono_ns + (e["t_device"] - f.t_device) * e["period_s"] * 1e9
        assert abs(e["t_mono_ns"] - want) <= 2 and e["t_host_ns"] - e["t_mono_ns"] == f.t_host_ns - f.t_mono_ns
    assert d.counters["trigger_edges"] == len(published)
