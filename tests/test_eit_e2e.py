"""EIT end to end: Sciospec simulator on a pty → driver → daemon → recon stage → image subscriber."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.client import ControlClient, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.algorithms.eit import image_centroid
from medacq.daemon.recon.stage import ReconStage
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.eit_phantom import ThoraxPhantom
from medacq.simulators.sciospec import SciospecSimulator

from conftest import wait_for

FPS = 25.0


def _images(sub: Subscriber, n: int, timeout: float = 15.0) -> list[tuple[dict, np.ndarray]]:
    out: list[tuple[dict, np.ndarray]] = []
    for h, a in sub.frames(timeout=timeout):
        if h["stream"] == "eit0":
            out.append((h, a.copy()))
            if len(out) >= n:
                break
    return out


@pytest.fixture
def rig(endpoints, tmp_path):
    ph = ThoraxPhantom(n_el=16, seed=4, n_elements=3000, breathing_amplitude=0.0, cardiac_amplitude=0.0,
                       snr_db=60.0)
    with SimulatorServer(SciospecSimulator(ph, 16), "pty", paced=True) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "eit0", "kind": "sciospec", "address": sim.address,
                                        "settings": {"n_el": 16, "fps": FPS}}],
                            "recon": {**endpoints["recon"],
                                      "settings": {"eit": {"n_ref": 5, "cache_dir": str(tmp_path / "cache")}}}})
        d = AcquisitionDaemon(cfg).start()
        stage = ReconStage(cfg).start()
        try:
            yield sim, ph, cfg, stage
        finally:
            stage.shutdown()
            d.shutdown()


def test_inclusion_is_imaged_where_the_phantom_put_it_and_rereference(rig):
    sim, ph, cfg, stage = rig
    x, y, radius, contrast = 0.4, 0.25, 0.14, 2.5
    with Subscriber(cfg.recon.data_endpoint, "recon/") as sub, ControlClient(cfg.recon.control_endpoint) as ctl:
        before = _images(sub, 3)
        assert len(before) == 3
        h, img = before[-1]
        assert img.shape == (32, 32) and img.dtype == np.float32 and h["axes"] == ["y", "x"]
        assert h["units"] == "dsigma/sigma" and h["source"]["stream"] == "eit0"
        quiet = max(np.abs(a).max() for _, a in before)
        # the simulator's side door places a conductive inclusion
        sim.call(ph.add_inclusion, x, y, radius, contrast)
        truth = sim.call(sim.interface.truth)
        assert truth["inclusions"] == [{"x": x, "y": y, "radius": radius, "contrast": contrast}]
        seen = []
        wait_for(lambda: seen.extend(_images(sub, 1, 5)) or (seen and seen[-1][1].max() > 10 * quiet), 20)
        after = _images(sub, 3)
        for _, a in after:
            cx, cy = image_centroid(a, sign=1)
            err = np.hypot(cx - x, cy - y) / truth["domain_radius"]
            assert err <= 0.10, (cx, cy, err)
        big = np.abs(after[-1][1]).max()
        # descriptors: image geometry and the global-impedance stream
        desc = sub.descriptors["recon/eit0"]
        assert desc["geometry"]["grid"] == 32 and len(desc["geometry"]["mask"]) == 32
        assert desc["meta"]["source"] == "eit0"
        gi = sub.descriptors.get("recon/eit0/gi")
        assert gi is not None and gi["shape"] == [2] and gi["axes"] == ["quantity"]
        # re-reference through the control plane: the inclusion becomes the new baseline
        r = ctl.request("action", target="eit0", action="rereference", args={"n_ref": 3})
        assert r["rereferencing"] is True and r["n_ref"] == 3
        seen = []
        wait_for(lambda: seen.extend(_images(sub, 1, 5)) or (seen and np.abs(seen[-1][1]).max() < 0.2 * big), 20)
        info = ctl.request("action", target="eit0", action="info", args={})
        assert info["has_reference"] and info["measurements"] == 208
    st = stage.status()["streams"]["eit0"]
    assert st["errors"] == 0 and st["reconstructor"] == "EitImager"


def test_incomplete_frame_is_announced_as_gap_downstream(rig):
    sim, ph, cfg, stage = rig
    with Subscriber(cfg.daemon.data_endpoint, "raw/eit0") as raw:
        first = list(raw.frames(timeout=10, max_frames=3))
        assert len(first) == 3 and first[0][1].shape == (208,)
        assert raw.descriptors["raw/eit0"]["geometry"]["pattern"] == "adjacent"
        sim.call(sim.interface.drop_subframes, 5)
        got: list = []
        # frames already in flight arrive first; wait for the gap, then two more frames
        wait_for(lambda: got.extend(raw.frames(timeout=2, max_frames=1)) or (
            raw.gaps and got and got[-1][0]["seq"] > raw.gaps[0].first_seq + 1), 15)
    assert len(raw.gaps) == 1 and raw.gaps[0].announced and raw.gaps[0].count == 1
    assert "incomplete" in raw.gaps[0].reason
    seqs = [h["seq"] for h, _ in first + got]
    assert raw.gaps[0].first_seq not in seqs
    assert sorted(seqs) == seqs and len(set(seqs)) == len(seqs)


def test_global_impedance_and_respiratory_rate_stream(endpoints, tmp_path):
    """Unpaced (virtual time): 40 s of a breathing thorax at 20 fps through the whole chain."""
    rate = 18.0
    ph = ThoraxPhantom(n_el=16, seed=9, n_elements=2500, respiratory_rate_bpm=rate, snr_db=55.0)
    with SimulatorServer(SciospecSimulator(ph, 16), "pty", paced=False) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "eit0", "kind": "sciospec", "address": sim.address,
                                        "settings": {"n_el": 16, "fps": 20.0}}],
                            "recon": {**endpoints["recon"], "queue_depth": 100_000,
                                      "settings": {"eit": {"n_ref": 10, "cache_dir": str(tmp_path)}}}})
        with Subscriber(cfg.recon.data_endpoint, "recon/eit0/gi") as sub:
            stage = ReconStage(cfg).start()
            sub.wait_connected()
            d = AcquisitionDaemon(cfg).start()
            try:
                got = list(sub.frames(timeout=15, max_frames=800))
            finally:
                d.shutdown()
                stage.shutdown()
    assert len(got) == 800 and sub.gaps == []
    gi = np.array([a[0] for _, a in got])
    rr = got[-1][1][1]
    assert abs(rr - rate) < 1.0, rr
    assert got[-1][0]["meta"]["respiratory_rate_bpm"] == pytest.approx(rr, rel=1e-5)
    # the curve follows lung filling (impedance highest at full inspiration)
    seq0 = got[0][0]["source"]["seq"]
    fill = np.array([ph.lung_fill((h["source"]["seq"]) / 20.0) for h, _ in got])
    assert np.corrcoef(gi, fill)[0, 1] > 0.9, seq0
