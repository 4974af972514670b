"""Biosignals end to end: simulator on a pty → driver → daemon → ZeroMQ → reconstruction
stage → ``recon/...`` subscriber. Physiology checks on the reconstructed values: heart rate
and beat times equal the simulator's, Einthoven/Goldberger leads match the model's own
leads, the alpha peak sits on posterior channels, filtered output equals filtering the
whole record."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import signal

from medacq.client import ControlClient, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.algorithms.biosignal import design_sos
from medacq.daemon.recon.stage import ReconStage
from medacq.simulators.rig import DEFAULT_RIG, SimulatedRig
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.biosignal_models import EEG_LABELS_16, EKG_LEADS, EEGModel, EKGModel
from medacq.simulators.cyton import CytonInterface
from medacq.simulators.hackeeg import HackEEGInterface

from conftest import wait_for

TWELVE = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _cfg(endpoints, devices, recon_settings=None):
    return parse_config({
        "daemon": {**endpoints["daemon"], "queue_depth": 100_000, "sndhwm": 100_000},
        "recon": {**endpoints["recon"], "queue_depth": 100_000, "settings": recon_settings or {}},
        "device": devices,
    })


def _run(cfg, topics, until, timeout=40.0, need=()):
    """Start stage + daemon, collect messages on ``topics`` until ``until(msgs)`` and the
    descriptors of the streams in ``need`` have been seen."""
    need = set(need)
    stage = ReconStage(cfg).start()
    msgs = []
    with Subscriber([cfg.recon.data_endpoint, cfg.daemon.data_endpoint], topics) as sub:
        sub.wait_connected(1.0)
        d = AcquisitionDaemon(cfg).start()
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end and not (until(msgs) and need <= set(sub.descriptors)):
                m = sub.recv(timeout=1.0)
                if m is not None:
                    msgs.append(m)
            with ControlClient(cfg.recon.control_endpoint) as c:
                status = c.request("status")
        finally:
            d.shutdown()
            stage.shutdown()
    return msgs, status, sub


def _frames(msgs, topic):
    return [m for m in msgs if m.topic == topic and m.array is not None]


def _concat(frames):
    first = frames[0].header["meta"]["first_sample"]
    idx = [f.header["meta"]["first_sample"] for f in frames]
    lens = [f.array.shape[1] for f in frames]
    assert idx == list(np.cumsum([first] + lens[:-1])), "recon frames are contiguous"
    return first, np.concatenate([f.array for f in frames], axis=1)


def test_ekg_heart_rate_beats_and_derived_leads(endpoints):
    hr_true = 75.0
    with SimulatorServer(HackEEGInterface(seed=21, heart_rate_bpm=hr_true), "pty", paced=False) as sim:
        cfg = _cfg(endpoints, [{"name": "ekg0", "kind": "hackeeg", "address": sim.address,
                                "settings": {"rate": 500, "frame_samples": 50}}])
        n_want = 500 * 40
        msgs, status, sub = _run(cfg, ["recon/ekg0"], lambda ms: sum(
            m.array.shape[1] for m in ms if m.topic == "recon/ekg0" and m.array is not None) >= n_want,
            need={"recon/ekg0", "recon/ekg0/hr"})
        truth_beats = sim.interface.truth()["beat_times_s"]
    st = status["streams"]["ekg0"]
    assert st["reconstructor"] == "EKGReconstructor" and st["errors"] == 0 and st["dropped"] == 0
    first, y = _concat(_frames(msgs, "recon/ekg0"))
    desc = sub.descriptors["recon/ekg0"]
    assert desc["meta"]["channel_names"] == TWELVE and desc["units"] == "µV"
    # derived leads equal the model's own III, aVR, aVL, aVF (Einthoven + Goldberger), filtered
    n = first + y.shape[1]
    scale = 2.4e6 / 6 / (2**23 - 1)
    model = EKGModel(21, fs=500.0, heart_rate_bpm=hr_true).generate(n, EKG_LEADS)
    model = np.round(model / scale) * scale
    sos = design_sos(500.0, (0.5, 40.0), 4, 50.0, 30.0)
    exp = signal.sosfilt(sos, model[:, first:], axis=-1)
    order = [EKG_LEADS.index(lead) for lead in TWELVE]
    np.testing.assert_allclose(y, exp[order], atol=1.0)  # µV; quantisation of III = II − I
    assert np.ptp(y[2]) > 100  # lead III carries a real QRS
    # heart rate stream
    hr = _frames(msgs, "recon/ekg0/hr")
    beats = np.array([m.header["meta"]["beat_sample"] for m in hr]) / 500.0
    bpm = np.array([m.array[0] for m in hr])
    assert abs(np.median(bpm) - hr_true) < 2.0
    assert sub.descriptors["recon/ekg0/hr"]["units"] == "bpm"
    t_lo, t_hi = first / 500.0 + 3.0, n / 500.0 - 1.0  # after learning, before the tail
    tb = truth_beats[(truth_beats > t_lo) & (truth_beats < t_hi)]
    db = beats[(beats > t_lo - 0.05) & (beats < t_hi + 0.05)]
    err = np.abs(db[:, None] - tb[None, :]).min(axis=0)  # nearest detection per true beat
    assert len(tb) > 30
    assert np.all(err <= 0.020), f"beats off by up to {err.max() * 1e3:.1f} ms"
    assert len(db) == len(tb)  # no false positives


def test_eeg_band_power_alpha_is_posterior_and_filter_matches_whole_record(endpoints):
    with SimulatorServer(CytonInterface(seed=31, daisy=True), "pty", paced=False) as sim:
        cfg = _cfg(endpoints, [{"name": "eeg0", "kind": "cyton", "address": sim.address,
                                "settings": {"daisy": True}}])
        msgs, status, sub = _run(cfg, ["recon/eeg0"], lambda ms: len(
            [m for m in ms if m.topic == "recon/eeg0/bandpower" and m.array is not None]) >= 20,
            need={"recon/eeg0/bandpower"})
    assert status["streams"]["eeg0"]["errors"] == 0
    bp = _frames(msgs, "recon/eeg0/bandpower")
    d = sub.descriptors["recon/eeg0/bandpower"]
    assert d["axes"] == ["channel", "band"] and d["meta"]["bands"] == ["delta", "theta", "alpha", "beta"]
    ends = [m.header["meta"]["end_sample"] for m in bp]
    assert np.all(np.diff(ends) == 125)  # once per second at 125 Hz
    p = np.mean([m.array for m in bp], axis=0)  # (16, 4) µV²
    lab = list(EEG_LABELS_16)
    o1, o2, c3, c4 = (lab.index(k) for k in ("O1", "O2", "C3", "C4"))
    alpha = 2
    for ch in (o1, o2):
        assert p[ch, alpha] > p[ch, 1] and p[ch, alpha] > p[ch, 3]  # alpha is the peak band
        assert p[ch, alpha] > 5 * max(p[c3, alpha], p[c4, alpha])  # and it is posterior
    # filtered output == filtering the whole record from the first sample the stage saw
    first, y = _concat(_frames(msgs, "recon/eeg0"))
    scale = 4.5e6 / 24 / (2**23 - 1)
    model = EEGModel(31, fs=125.0, labels=EEG_LABELS_16, mains_hz=50.0).generate(first + y.shape[1])
    model = np.round(model / scale) * scale
    exp = signal.sosfilt(design_sos(125.0, (1.0, 40.0), 4, 50.0, 30.0), model[:, first:], axis=-1)
    np.testing.assert_allclose(y, exp, atol=0.05)
    f, pxx = signal.welch(y[:, 250:], fs=125.0, nperseg=250, axis=-1)
    assert pxx[:, np.argmin(np.abs(f - 50))].max() < 1e-3 * pxx[:, np.argmin(np.abs(f - 10))].max()


def test_eeg_packet_loss_is_announced_to_subscribers(endpoints):
    with SimulatorServer(CytonInterface(seed=3, daisy=False), "pty", paced=True) as sim:
        cfg = _cfg(endpoints, [{"name": "eeg1", "kind": "cyton", "address": sim.address,
                                "settings": {"daisy": False}}])
        with Subscriber(cfg.daemon.data_endpoint, "raw/eeg1") as sub:
            d = AcquisitionDaemon(cfg).start()
            try:
                frames = list(sub.frames(timeout=5, max_frames=5))
                sim.call(sim.interface.drop_packets, 4)
                frames += list(sub.frames(timeout=5, max_frames=20))
            finally:
                d.shutdown()
    assert [(g.announced, g.count, g.lost_samples) for g in sub.gaps] == [(True, 0, 4)]
    idx = np.concatenate([h["t_device"] + np.arange(a.shape[1]) for h, a in frames])
    assert len(set(range(idx.min(), idx.max() + 1)) - set(idx.tolist())) == 4


def test_eeg_packet_loss_reaches_recon_subscribers_as_a_gap(endpoints):
    """The filtered stream is computed across the loss; its subscribers are told so (a
    samples-only gap with the device's lost-sample count), and first_sample skips it."""
    with SimulatorServer(CytonInterface(seed=3, daisy=False), "pty", paced=True) as sim:
        cfg = _cfg(endpoints, [{"name": "eeg1", "kind": "cyton", "address": sim.address,
                                "settings": {"daisy": False}}])
        stage = ReconStage(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, ["recon/eeg1"]) as sub:
                sub.wait_connected(1.0)
                d = AcquisitionDaemon(cfg).start()
                try:
                    frames = list(sub.frames(timeout=10, max_frames=5))
                    sim.call(sim.interface.drop_packets, 4)
                    frames += list(sub.frames(timeout=10, max_frames=20))
                finally:
                    d.shutdown()
            with ControlClient(cfg.recon.control_endpoint) as c:
                status = c.request("status")
        finally:
            stage.shutdown()
    filtered = [g for g in sub.gaps if g.topic == "recon/eeg1"]
    assert [(g.announced, g.count, g.lost_samples) for g in filtered] == [(True, 0, 4)]
    assert "source eeg1 lost device samples (4 samples)" in filtered[0].reason
    assert status["streams"]["eeg1"]["gaps_forwarded"] == 1
    firsts = [h["meta"]["first_sample"] for h, a in frames if h["stream"] == "eeg1"]
    lens = [a.shape[1] for h, a in frames if h["stream"] == "eeg1"]
    steps = np.diff(firsts) - np.array(lens[:-1])
    assert sorted(steps.tolist())[-1] == 4 and np.count_nonzero(steps) == 1


def test_default_rig_biosignal_entries_stream_and_reconstruct(endpoints):
    entries = [e for e in DEFAULT_RIG if e.driver_kind in ("cyton", "hackeeg", "quspin")]
    assert {e.name for e in entries} == {"eeg0", "ekg0", "meg0"}
    rig = SimulatedRig(entries, paced=True).start()
    try:
        doc = rig.config()
        meg = [d for d in doc["device"] if d["name"] == "meg0"][0]
        assert len(meg["address"].split(",")) == 3
        cfg = parse_config({**doc, "daemon": endpoints["daemon"], "recon": endpoints["recon"]})
        want = {"recon/eeg0", "recon/ekg0", "recon/meg0", "raw/meg0"}
        msgs, status, sub = _run(cfg, ["raw/meg0", "recon/"], lambda ms: want <= {
            m.topic for m in ms if m.array is not None}, timeout=20)
    finally:
        rig.stop()
    got = {m.topic for m in msgs if m.array is not None}
    assert want <= got
    meg = [m for m in msgs if m.topic == "recon/meg0" and m.array is not None][-1]
    assert meg.array.shape[0] == 3 and meg.header["units"] == "pT"
    raw_desc = [m.header["descriptor"] for m in msgs if m.topic == "raw/meg0" and m.kind == "descriptor"][-1]
    assert len(raw_desc["meta"]["sensors"]) == 3 and raw_desc["channel_names"] == ["OPM1", "OPM2", "OPM3"]
    assert all(s["errors"] == 0 for s in status["streams"].values())


@pytest.mark.parametrize("action", ["info", "reset"])
def test_recon_actions(endpoints, action):
    with SimulatorServer(HackEEGInterface(seed=1), "pty", paced=True) as sim:
        cfg = _cfg(endpoints, [{"name": "ekg0", "kind": "hackeeg", "address": sim.address, "settings": {}}])
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with ControlClient(cfg.recon.control_endpoint) as c:
                wait_for(lambda: (c.request("status")["streams"].get("ekg0") or {}).get("reconstructor"), 10)
                r = c.request("action", target="ekg0", action=action)
        finally:
            d.shutdown()
            stage.shutdown()
    if action == "info":
        assert r["fs"] == 500.0 and r["hr_lead"] == "II" and r["notch_hz"] == 50.0
    else:
        assert r == {"reset": True}
