"""MRI trigger words on the rig's timeline: the simulated MaRCoS console as a source of the rig's
trigger bus (``GATES_LEDS`` bit 2, ``trig_out``: the scanner's volume trigger an EEG amplifier
records during fMRI) and as a sink (``ITRIG``/``ITRIGFOREVER``: a sequence gated by an external
trigger), through the real console simulator on its TCP link and the real driver in a real
daemon. Judged against the bus's true pulse times."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.client import Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.protocols.marga import (
    F_CLK_HZ, GATES_LEDS, ITRIG, NOMINAL_TRIGGER, TRIG_RESUME_CYCLES, Program, TriggerPending, add_trig_out,
    compile_changes, decode, insta,
)
from medacq.protocols.mri_sequences import CartesianSequence, SequenceParams, SystemLimits
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.hackeeg import HackEEGInterface
from medacq.simulators.mri import make
from medacq.simulators.trigger_bus import TriggerBus, attach, drive

PPM = 40.0  # the console crystal's error
OFFSET_S = 1234.5  # its cycle counter's reading when the simulator starts
BOUND_MS = 5.0  # a marker's host time vs the bus's true pulse time (clock fit + reply latency)


def test_itrig_timing_is_margas():
    """ITRIG: timeout ``d`` -> next word at issue + d + 3; a change sampled at k -> k + 6; a change
    sampled up to 3 cycles before the word still counts; ITRIGFOREVER with no input is pending."""
    words = [insta(0, 0)] * 10 + [insta(ITRIG, 1000), insta(1, 0)]
    assert decode(words).duration == 10 + 1000 + 3 + 1
    seen = []

    def src(lo, hi):
        seen.append((lo, hi))
        return 500 if 500 <= hi else None

    tl = decode(words, trigger=src)
    assert seen == [(7, 10 + 1 + 1000 - 4)]
    assert tl.waits[0].edge == 500 and tl.waits[0].resume == 500 + TRIG_RESUME_CYCLES and tl.duration == 507
    assert decode(words, trigger=lambda lo, hi: 2000 if hi is None or 2000 <= hi else None).waits[0].edge is None
    forever = [insta(4, 0), insta(1, 0)]
    with pytest.raises(TriggerPending):
        decode(forever)
    assert decode(forever, trigger=NOMINAL_TRIGGER).duration == 4
    # the trigger output keeps the TX gate's bit where both are written
    p = Program()
    p.add(100, GATES_LEDS, 1)
    p.add(300, GATES_LEDS, 0)
    add_trig_out(p, [(200, 400)])
    tl = decode(compile_changes(p, end_cycle=500))
    assert tl.trig_out == [(200, 1), (400, 0)]
    assert list(zip(tl.tx_gate[0].tolist(), tl.tx_gate[1].tolist())) == [(0, 0), (100, 1), (200, 1), (300, 0), (400, 0)]


def _collect(sub, until, deadline_s):
    msgs = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not until(msgs):
        m = sub.recv(timeout=0.2)
        if m is not None and m.array is not None:
            msgs.append(m)
    return msgs


def test_trig_out_markers_match_the_bus_and_an_eeg_on_the_same_bus(endpoints):
    """EEG during fMRI: every acquired TR raises trig_out; each is a marker on markers/mri0 at the
    bus's true pulse time, and a HackEEG cabled to the same bus sees the same pulses."""
    bus = TriggerBus()
    console = make(clock_ppm=PPM, clock_offset_s=OFFSET_S)
    eeg = HackEEGInterface(seed=3, rate=1000, clock_ppm=-30.0)
    with SimulatorServer(console, "tcp", paced=True, name="mri0") as msim, \
            SimulatorServer(eeg, "pty", paced=True, name="ekg0") as esim:
        drive(msim, bus)
        attach(esim, bus, "GPIO1")
        cfg = parse_config({"daemon": endpoints["daemon"], "device": [
            {"name": "ekg0", "kind": "hackeeg", "address": esim.address,
             "settings": {"rate": 1000, "frame_samples": 20, "trigger_gpio": 1}},
            {"name": "mri0", "kind": "mri", "address": msim.tcp_address,
             "settings": {"sequence": {"sequence": "gre", "matrix": 16, "te_ms": 5, "tr_ms": 40, "flip_deg": 30},
                          "lines_per_run": 4, "dummy_scans": 2, "repetitions": 0, "trig_out_ms": 3.0}}]})
        with Subscriber(cfg.daemon.data_endpoint, "markers/") as sub:
            sub.wait_connected(1.0)
            d = AcquisitionDaemon(cfg).start()
            try:
                msgs = _collect(sub, lambda ms: sum(m.topic == "markers/mri0" for m in ms) >= 60, 15.0)
            finally:
                d.shutdown()
        edges = np.array(sorted(bus.edges()))
        truth = msim.call(console.truth)
        t0 = msim._t0
    mri = [m for m in msgs if m.topic == "markers/mri0"]
    ekg = [m for m in msgs if m.topic == "markers/ekg0"]
    assert len(mri) >= 40 and len(ekg) >= 20
    assert truth["trig_out_pulses"] == len(edges) and truth["trig_out_collisions"] == 0
    assert {m.header["meta"]["line"] for m in mri} == {"trig_out"}
    assert {m.header["meta"]["origin"] for m in mri} == {"trigger"}
    seqs = [m.header["seq"] for m in mri]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    mono = np.array([m.header["t_mono_ns"] for m in mri], dtype=np.int64) / 1e9
    assert np.all(np.diff(mono) > 0)
    # the console is the bus's only source: the i-th marker is its i-th pulse (none lost, none extra)
    near = np.array([int(np.argmin(np.abs(edges - t))) for t in mono])
    tdev = np.array([m.header["t_device"] for m in mri])
    assert near.tolist() == list(range(len(mono))), (
        f"markers for pulses {near.tolist()}; device {np.round((tdev - tdev[0]) * 1e3, 3).tolist()} "
        f"host {np.round((mono - mono[0]) * 1e3, 3).tolist()} true {np.round((edges - edges[0]) * 1e3, 3).tolist()}")
    err_ms = (mono - edges[:len(mono)]) * 1e3
    print(f"trig_out marker - true pulse, ms: p50 {np.median(err_ms):.3f} max |.| {np.max(np.abs(err_ms)):.3f}")
    assert np.all(np.abs(err_ms) < BOUND_MS)
    # t_device is the console clock: true time scaled by its crystal, offset by its counter at start
    want = OFFSET_S + (edges[:len(mono)] - t0) * (1 + PPM * 1e-6)
    assert np.max(np.abs(tdev - want)) < 2 / F_CLK_HZ
    # within a run (4 TRs) the pulses are one TR apart on the console's clock; runs follow each other
    dt = np.diff(tdev)
    within = np.array([j % 4 != 3 for j in range(len(dt))])
    assert np.allclose(dt[within], 0.040, atol=1e-6) and np.all(dt[~within] > 0.040)
    # the EEG sees the same pulses: every bus pulse inside its span, and their markers agree
    emono = np.array([m.header["t_mono_ns"] for m in ekg], dtype=np.int64) / 1e9
    inside = edges[(edges > emono[0] - 0.002) & (edges < emono[-1] + 0.002)]
    print(f"pulses put on the line late: {truth['trig_out_late']} (worst {truth['trig_out_worst_late_s'] * 1e3:.1f} ms)")
    assert len(inside) == len(emono)
    eerr_ms = (emono - inside) * 1e3
    assert np.all(np.abs(eerr_ms) < 20.0), f"ekg0 markers - true pulses, ms: {np.round(eerr_ms, 2).tolist()}"
    common = [(a, b) for a, e in zip(mono, edges) for b in emono if abs(b - e) < 0.02]
    assert len(common) >= 20
    diff_ms = np.array([a - b for a, b in common]) * 1e3
    print(f"mri0 - ekg0 for the same pulse, ms: p50 {np.median(diff_ms):.3f} max |.| {np.max(np.abs(diff_ms)):.3f}")
    # the HackEEG's own fit glitches now and then on a loaded machine (one marker ~10 ms off seen):
    # nearly all pairs within the bound, the median well inside it
    assert np.mean(np.abs(diff_ms) < BOUND_MS) >= 0.95 and abs(np.median(diff_ms)) < 1.5


def test_itrig_gates_every_tr_on_the_trigger_input(endpoints):
    """ECG gating: every TR waits (ITRIGFOREVER) for a change of the console's trigger input; the
    wait's end is published as a trig_in marker at the console time of the FSM edge that sampled the
    change, and the TR's first ADC sample follows it by marga's delay plus the sequence's own offset."""
    bus = TriggerBus(width_s=0.005)
    console = make(clock_ppm=PPM, clock_offset_s=OFFSET_S)
    seq_params = {"sequence": "gre", "matrix": 8, "te_ms": 4, "tr_ms": 10, "flip_deg": 30}
    with SimulatorServer(console, "tcp", paced=True, name="mri0") as msim:
        attach(msim, bus, "trig_in")
        cfg = parse_config({"daemon": endpoints["daemon"], "device": [
            {"name": "mri0", "kind": "mri", "address": msim.tcp_address,
             "settings": {"sequence": seq_params, "lines_per_run": 1, "dummy_scans": 0, "repetitions": 1,
                          "trig_in": "wait_forever"}}]})
        with Subscriber(cfg.daemon.data_endpoint, ["markers/", "raw/mri0"]) as sub:
            sub.wait_connected(1.0)
            d = AcquisitionDaemon(cfg).start()
            try:
                time.sleep(0.5)  # the console waits: nothing may come before the first pulse
                early = _collect(sub, lambda ms: False, 0.3)
                bus.train(12, 0.08, start_in_s=0.1, jitter_s=0.02, seed=5)
                msgs = _collect(sub, lambda ms: sum(m.topic == "raw/mri0" for m in ms) >= 8
                                and sum(m.topic == "markers/mri0" for m in ms) >= 8, 8.0)
            finally:
                d.shutdown()
        changes = bus.transitions(0.0, time.monotonic() + 10)
        t0 = msim._t0
    assert not [m for m in early if m.topic == "raw/mri0"], "a gated TR ran before any trigger"
    frames = [m for m in msgs if m.topic == "raw/mri0"]
    trig = [m for m in msgs if m.topic == "markers/mri0"]
    assert len(frames) == 8 and len(trig) == 8
    assert {m.header["meta"]["line"] for m in trig} == {"trig_in"}
    true_change = np.array([t for t, _ in changes])
    seq = CartesianSequence(SequenceParams(**seq_params), SystemLimits())
    nom = decode(seq.lines(0, 1, wait_trigger=True), trigger=NOMINAL_TRIGGER)
    offset_cycles = nom.rx[0].start - nom.waits[0].resume + TRIG_RESUME_CYCLES  # sampling edge -> ADC start
    for f, m in zip(frames, trig):
        t_trig = m.header["t_device"]
        # the change that ended the wait: the console time of the first FSM edge at or after it
        t_true = (t_trig - OFFSET_S) / (1 + PPM * 1e-6) + t0
        k = int(np.argmin(np.abs(true_change - t_true)))
        assert -1 / F_CLK_HZ <= t_true - true_change[k] < 2 / F_CLK_HZ  # the counter is whole cycles
        assert f.header["t_device"] == pytest.approx(t_trig + offset_cycles / F_CLK_HZ, abs=1e-9)
        assert abs(m.header["t_mono_ns"] / 1e9 - true_change[k]) * 1e3 < BOUND_MS
    # each TR waited for a new change: their trigger times increase, one change per TR at most
    kk = [int(np.argmin(np.abs(true_change - ((m.header["t_device"] - OFFSET_S) / (1 + PPM * 1e-6) + t0))))
          for m in trig]
    assert kk == sorted(set(kk))


def test_console_itrig_waits_in_memory_with_timeout_and_estop():
    """The console alone (no adapter): ITRIG with nothing on the line runs to its timeout once that
    time has passed; a change already on the line ends the wait at once; ITRIGFOREVER with no
    change stays pending until the emergency stop, which answers the run and then 129."""
    from medacq.protocols.marcos import EMERGENCY_STOP, MarcosConnection, Reply, Request
    from medacq.simulators.trigger_bus import TriggerInput

    def run(console, words, t, extra=None):
        host = MarcosConnection("client")
        out = console.on_bytes(host.send(Request(commands={"run_seq": np.asarray(words, "<u4").tobytes(),
                                                            "medacq_timing": 0}, index=1)), t)
        return host, out

    def replies(host, data):
        host.receive_data(data)
        evs = []
        while isinstance(ev := host.next_event(), Reply):
            evs.append(ev)
        return evs

    bus = TriggerBus()
    console = make(clock_offset_s=10.0)
    console.trigger = TriggerInput(bus, "trig_in", epoch=100.0)
    prog = [insta(0, 0)] * 10 + [insta(ITRIG, 122880), insta(1, 0)]  # 1 ms timeout
    host, out = run(console, prog, 1.0)
    assert out == b"" and console.next_deadline() == pytest.approx(1.0 + 0.001)
    assert console.poll(1.0005) == b""  # the timeout lies ahead: still waiting
    (r,) = replies(host, console.poll(1.0011))  # the timeout has passed: the run has played to its end
    tim = r.results["medacq_timing"]
    assert tim["waits"] == [[10, 10 + 122880 + 3, -1]] and tim["end"] - tim["start"] == 10 + 122880 + 3 + 1
    # a change scheduled on the line 0.5 ms after the run starts ends the wait at its first clock edge
    console2 = make()
    console2.trigger = TriggerInput(bus, "trig_in", epoch=100.0)
    bus.pulse(100.0 + 2.0 + 0.0005, 0.001)
    host, out = run(console2, prog, 2.0)
    (r,) = replies(host, console2.poll(console2.next_deadline()))
    t_fsm = len(prog) * 158.5e-9  # the FSM starts once the server has copied the program (158.5 ns a word)
    k = int(np.ceil((0.0005 - t_fsm) * F_CLK_HZ))
    assert r.results["medacq_timing"]["waits"] == [[10, k + TRIG_RESUME_CYCLES, k]]
    # ITRIGFOREVER and nothing on the line: pending until the emergency stop
    console3 = make()
    host, out = run(console3, [insta(4, 0), insta(1, 0)], 5.0)
    assert console3.poll(6.0) == b"" and console3.running
    out = console3.on_bytes(host.send(Request(commands={}, index=7, kind=EMERGENCY_STOP)), 6.5)
    r1, r2 = replies(host, out)
    assert r1.results["run_seq"] == 0 and "sequence halted by emergency stop" in r1.errors
    assert r2.kind == 129 and not console3.running


def test_stop_ends_a_run_waiting_forever_for_its_trigger():
    """A gated run whose trigger never comes: the driver's stop ends it with the emergency stop."""
    from medacq.drivers.mri import MriDriver, MriSettings

    console = make()
    with SimulatorServer(console, "tcp", paced=True) as sim:
        attach(sim, TriggerBus(), "trig_in")  # cabled, but nothing ever fires
        d = MriDriver("mri0", sim.tcp_address, MriSettings.model_validate(
            {"sequence": {"sequence": "gre", "matrix": 8, "te_ms": 4, "tr_ms": 10}, "dummy_scans": 0,
             "lines_per_run": 1, "trig_in": "wait_forever"}))
        d.open()
        d.start()
        assert d.read(0.3) == []  # waiting
        d.stop()
        assert d.counters.get("gated_runs_stopped") == 1
        truth = sim.call(console.truth)
        d.close()
    assert truth["estops"] == 1 and truth["runs"] == 0


def test_a_rig_definition_cables_the_console_as_the_bus_source():
    """``RigEntry(trigger_out=...)``: the rig's MRI console drives the rig's one trigger line, which
    the entries with a ``trigger_line`` read; a pulse the console puts there reaches the EEG's input."""
    from medacq.simulators.rig import RigEntry, SimulatedRig

    rig = SimulatedRig([RigEntry("mri0", "mri", "mri", "tcp", "tcp", {}, {}, trigger_out="trig_out"),
                        RigEntry("ekg0", "hackeeg", "hackeeg", "pty", "serial", {"seed": 1, "rate": 500},
                                 {"rate": 500}, trigger_line="GPIO1")]).start()
    try:
        out = rig.servers["mri0"].interface.trigger_out
        inp = rig.servers["ekg0"].interface.trigger
        assert out.bus is rig.trigger_bus and inp.bus is rig.trigger_bus and out.line == "trig_out"
        t = out.pulse(10.0, 0.003)  # adapter time 10 s, 3 ms wide
        assert t == pytest.approx(rig.servers["mri0"]._t0 + 10.0)
        assert rig.trigger_bus.edges() == [t] and out.pulses == 1
        # the EEG input sees it at the same true time, on its own adapter's time base
        assert inp.first_edge(0.0, 1e6) == pytest.approx(t - rig.servers["ekg0"]._t0)
    finally:
        rig.stop()
