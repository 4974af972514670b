"""Tactile end to end: simulated probe (paced, full rate) on a pty → driver → daemon → recon stage
→ subscribers over real ZeroMQ: every frame delivered, the inclusion found where it was put."""

from __future__ import annotations

import time

import numpy as np

from medacq.client import ControlClient, Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.tactile import make

RATE = 200.0


def test_full_rate_stream_and_inclusion_through_the_daemon(endpoints):
    sim = make(rows=16, cols=16, seed=7, air_s=0.3, ramp_s=0.6, hold_s=0.3)
    with SimulatorServer(sim, "pty", paced=True) as srv:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "tac0", "kind": "tactile", "address": srv.address,
                                        "settings": {"rate_hz": RATE, "zero_frames": 8}}],
                            "recon": {**endpoints["recon"]}})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.daemon.data_endpoint, "raw/tac0") as raw, \
                    Subscriber(cfg.recon.data_endpoint, "recon/tac0/inclusion") as rec:
                raw_frames = list(raw.frames(timeout=10, max_frames=int(RATE * 2)))
                incs: list[dict] = []
                end = time.monotonic() + 20
                while time.monotonic() < end and not any(
                        (h["meta"].get("depth_mm") or 0) >= 5.9 and h["meta"]["found"] for h in incs):
                    incs += [h for h, _ in rec.frames(timeout=2, max_frames=50)]
                with ControlClient(cfg.recon.control_endpoint) as ctl:
                    info = ctl.request("action", target="tac0", action="info", args={})
                raw_gaps, rec_gaps = list(raw.gaps), list(rec.gaps)
                desc = raw.descriptors["raw/tac0"]
        finally:
            d.shutdown()
            stage.shutdown()
    # every frame at the probe's full rate: consecutive sequence numbers and device counters, no gap
    assert len(raw_frames) == int(RATE * 2), len(raw_frames)
    assert raw_gaps == [] and rec_gaps == [], (raw_gaps, rec_gaps)
    seqs = [h["seq"] for h, _ in raw_frames]
    dev = [h["meta"]["device_frame"] for h, _ in raw_frames]
    assert np.all(np.diff(seqs) == 1) and np.all(np.diff(dev) == 1)
    h, a = raw_frames[-1]
    assert a.shape == (16, 16) and a.dtype == np.float32 and h["units"] == "kPa" and desc["axes"] == ["row", "col"]
    # the hard inclusion, where the simulator put it (within one cell)
    t = sim.truth()
    deep = [h["meta"] for h in incs if (h["meta"].get("depth_mm") or 0) >= 5.9 and h["meta"]["found"]]
    assert deep, f"no detection at full press in {len(incs)} inclusion messages"
    m = deep[-1]
    assert abs(m["row"] - t["inclusion_row"]) <= 1.0 and abs(m["col"] - t["inclusion_col"]) <= 1.0
    assert m["relative_stiffness"] is not None and m["relative_stiffness"] > 1.1
    assert info["ready"] and info["slope_frames"] > 50
    assert stage.status()["streams"]["tac0"]["errors"] == 0
