"""Frame triggers of imaging devices on the timeline: the ultrasound scanner's frame start and its
trigger input (OpenIGTLink metadata, real TCP), the EIT device's frame start (Sciospec, real pty),
each mapped to the host clock by the driver's fit of the device clock and judged against the
simulators' own true times."""

from __future__ import annotations

import time

import numpy as np

from medacq.drivers._base import Frame
from medacq.drivers.sciospec import SciospecDriver, SciospecSettings
from medacq.drivers.ultrasound import UltrasoundDriver, UltrasoundSettings
from medacq.protocols.igtl import IgtlConnection, ImageMessage, StringMessage
from medacq.protocols.markers import FRAME_TRIGGERS_KEY, TriggerEvent
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator
from medacq.simulators.trigger_bus import TriggerBus, TriggerInput, attach

US = {"angles": 1, "samples": 256, "speckle_density_per_mm2": 2.0, "cache": False, "seed": 4}


def _images(dev, t_end: float, step: float = 0.01) -> list[ImageMessage]:
    host = IgtlConnection()
    out = []
    t = 0.0
    while t <= t_end:
        data = dev.poll(t)
        if data:
            host.receive_data(data)
        while True:
            ev = host.next_event()
            if not isinstance(ev, (ImageMessage, StringMessage)):
                break
            if isinstance(ev, ImageMessage):
                out.append(ev)
        t += step
    return out


def test_us_scanner_reports_the_trigger_input_edge_in_the_next_frames_metadata():
    dev = make_simulator("us", **US, prf_hz=20.0)
    bus = TriggerBus(width_s=0.005)
    dev.trigger = TriggerInput(bus, "trigger_in", epoch=50.0)
    edges = [50.0 + 0.512, 50.0 + 0.7301]  # true times; the scanner's clock is the adapter's (epoch + t)
    for e in edges:
        bus.pulse(e)
    dev.on_bytes(IgtlConnection().send(StringMessage(text="START", device_name="CMD", header_version=2)), 0.0)
    msgs = _images(dev, 1.2)
    assert len(msgs) >= 15
    stamps = np.array([m.timestamp for m in msgs])
    assert np.allclose(np.diff(stamps), 0.05)  # 20 frames/s, each stamped with its start
    with_edge = [(m.timestamp, float(m.metadata["trigger_in"])) for m in msgs if "trigger_in" in m.metadata]
    # each edge once, as scanner time, in the first frame that starts after it
    assert [e for _, e in with_edge] == [e - 50.0 for e in edges]
    for ts, e in with_edge:
        assert ts - 0.05 <= e < ts


def _read_for(d, seconds: float) -> list[Frame]:
    out: list[Frame] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out += [f for f in d.read(0.1) if isinstance(f, Frame)]
    return out


def _events(frames: list[Frame], line: str) -> list[TriggerEvent]:
    return [TriggerEvent.from_meta(e) for f in frames for e in f.meta.get(FRAME_TRIGGERS_KEY, [])
            if e["line"] == line]


def test_us_driver_places_frame_starts_and_trigger_edges_on_the_host_clock():
    bus = TriggerBus(width_s=0.005)
    with SimulatorServer(make_simulator("us", **US), "tcp", paced=True) as sim:
        attach(sim, bus, "trigger_in")
        d = UltrasoundDriver("us0", sim.tcp_address, UltrasoundSettings(angles=1, samples=256, prf_hz=20.0,
                                                                        frame_triggers=True))
        d.open()
        try:
            d.start()
            _read_for(d, 1.5)  # the scanner-clock fit's first second
            edges = bus.train(8, 0.13, start_in_s=0.1, jitter_s=0.05, seed=2)
            frames = _read_for(d, 1.6)
        finally:
            d.stop()
            d.close()
    starts = _events(frames, "frame_start")
    assert len(starts) >= 25 and len(starts) == len(frames)
    for f, ev in zip(frames, starts):  # one per frame: its scanner time and seq
        assert ev.t_device == f.t_device and ev.sample == f.meta["seq"] and abs(ev.period_s - 1e-6) < 2e-9  # µs ticks, fitted
        err_ms = (ev.t_mono_ns / 1e9 - (sim._t0 + ev.t_device)) * 1e3
        assert -0.5 < err_ms < 5.0, err_ms  # the scanner's minimum delivery latency, not more
    trig = _events(frames, "trigger_in")
    assert len(trig) == 8
    err = np.array([ev.t_mono_ns / 1e9 - e for ev, e in zip(trig, edges)]) * 1e3
    assert np.all((err > -0.5) & (err < 5.0)), err
    assert np.all(np.diff([e.t_mono_ns for e in trig]) > 0)
    assert d.counters.get("trigger_edges") == 8


def test_eit_driver_places_frame_starts_on_the_host_clock():
    sim_dev = make_simulator("sciospec", n_el=16, seed=2)
    with SimulatorServer(sim_dev, "pty", paced=True) as sim:
        d = SciospecDriver("eit0", sim.address, SciospecSettings(n_el=16, fps=20.0, frame_triggers=True))
        d.open()
        try:
            d.start()
            frames = _read_for(d, 2.5)
        finally:
            d.stop()
            d.close()
        t0 = sim._t0 + sim_dev._t_start
    ev = _events(frames, "frame_start")
    assert len(ev) == len(frames) >= 40
    for f, e in zip(frames, ev):
        assert e.t_device == f.t_device and e.sample == f.meta["device_frame"]
    late = ev[20:]  # after the first second of the fit
    err = np.array([e.t_mono_ns / 1e9 - (t0 + round(e.t_device * 20) / 20) for e in late]) * 1e3
    assert np.all((err > -1.0) & (err < 5.0)), err
    # without the setting: no events
    sim_dev2 = make_simulator("sciospec", n_el=16, seed=2)
    with SimulatorServer(sim_dev2, "pty", paced=True) as sim:
        d = SciospecDriver("eit0", sim.address, SciospecSettings(n_el=16, fps=20.0))
        d.open()
        try:
            d.start()
            frames = _read_for(d, 0.5)
        finally:
            d.stop()
            d.close()
    assert frames and not any(FRAME_TRIGGERS_KEY in f.meta for f in frames)
