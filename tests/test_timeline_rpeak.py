"""ECG R peaks on the markers/ timeline: a paced simulated EKG of known heart rate through the real
driver, daemon and reconstruction stage; each R peak arrives on ``markers/ekg0.rpeak`` at its host
time on the stream's fitted clock, judged against the simulator's own beat times."""

from __future__ import annotations

import time

import numpy as np

from medacq.client import ControlClient, Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.protocols.gating import CardiacGate
from medacq.protocols.markers import decode_marker_text
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.hackeeg import HackEEGInterface

FS = 500.0
HR = 100.0


def test_rpeak_markers_on_the_fitted_clock_match_the_simulated_beats(endpoints):
    iface = HackEEGInterface(seed=12, rate=int(FS), heart_rate_bpm=HR)
    with SimulatorServer(iface, "pty", paced=True, name="ekg0") as sim:
        cfg = parse_config({"daemon": endpoints["daemon"], "recon": endpoints["recon"],
                            "device": [{"name": "ekg0", "kind": "hackeeg", "address": sim.address,
                                        "settings": {"rate": int(FS), "frame_samples": 20}}]})
        stage = ReconStage(cfg).start()
        msgs = []
        with Subscriber([cfg.recon.data_endpoint], "markers/") as sub:
            sub.wait_connected(1.0)
            d = AcquisitionDaemon(cfg).start()
            try:
                end = time.monotonic() + 10.0
                while time.monotonic() < end:
                    m = sub.recv(timeout=0.5)
                    if m is not None and m.array is not None:
                        msgs.append(m)
                with ControlClient(cfg.recon.control_endpoint) as c:
                    status = c.request("status")
            finally:
                d.shutdown()
                stage.shutdown()
            desc = sub.descriptors.get("markers/ekg0.rpeak")
        # true CLOCK_MONOTONIC of model sample j: the adapter's start + the board's RDATAC start + j periods
        beats_s = sim.call(lambda: iface.truth()["beat_times_s"])
        t_start, period = sim._t0 + iface._t0, iface.period
    true_ns = (t_start + beats_s * FS * period) * 1e9
    assert status["streams"]["ekg0"]["errors"] == 0
    assert "markers/ekg0.rpeak" in status["streams"]["ekg0"]["outputs_streams"]
    assert desc is not None and desc["modality"] == "marker" and desc["meta"]["source"] == "ekg0"
    assert all(m.topic == "markers/ekg0.rpeak" for m in msgs)
    assert len(msgs) >= 8, f"only {len(msgs)} R-peak markers in 10 s at {HR} bpm"
    # markers in order, one seq each, on both clocks
    seqs = [m.header["seq"] for m in msgs]
    mono = np.array([m.header["t_mono_ns"] for m in msgs], dtype=np.int64)
    host = np.array([m.header["t_host_ns"] for m in msgs], dtype=np.int64)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert np.all(np.diff(mono) > 0)
    assert np.ptp(host - mono) < 2e6  # one realtime-monotonic offset (the clock did not step in 10 s)
    assert {decode_marker_text(m.array) for m in msgs} == {"R peak"}
    assert {m.header["meta"]["origin"] for m in msgs} == {"rpeak"}
    # every marker within a few ms of a true beat (the fit's minimum latency + the detector's sample)
    err_ms = np.array([(t - true_ns[np.argmin(np.abs(true_ns - t))]) / 1e6 for t in mono])
    print(f"R-peak marker error vs true beats, ms: {err_ms.round(2)}")
    assert np.all(np.abs(err_ms) < 5.0), f"R-peak marker times off the simulated beats by {err_ms.round(2)} ms"
    # t_device is the device sample index; RR equals the true beat-to-beat interval, and the rate
    samples = np.array([m.header["t_device"] for m in msgs])
    assert np.all(np.diff(samples) > 0)
    rr = np.array([m.header["meta"]["rr_s"] for m in msgs[1:]], dtype=float)
    assert np.allclose(rr, np.diff(samples) / FS)
    true_rr = np.diff(np.sort(true_ns[[int(np.argmin(np.abs(true_ns - t))) for t in mono]])) / 1e9
    assert np.all(np.abs(rr - true_rr) < 0.006)
    assert abs(60.0 / np.mean(rr) - HR) < 3.0
    # cardiac gating of synthetic imaging frames placed at known phases of the true cycles
    gate = CardiacGate()
    for m in msgs:
        gate.add_marker(m.header)
    tb = np.sort(true_ns[(true_ns >= mono[0] - 5e6) & (true_ns <= mono[-1] + 5e6)])
    got, want = [], []
    for k in range(len(tb) - 1):
        for ph in (0.1, 0.35, 0.6, 0.85):
            t = int(tb[k] + ph * (tb[k + 1] - tb[k])) + int(host[0] - mono[0])  # the frame's t_host_ns
            p = gate.phase(t)
            assert p is not None and p.retrospective
            got.append(p.phase)
            want.append(ph)
    assert len(got) >= 28
    assert np.max(np.abs(np.array(got) - want)) < 0.02  # 2 % of a 0.6 s cycle = 12 ms

