"""Thermal camera end to end: simulator on UDP → ``gige`` driver → daemon → ZeroMQ ``raw/th0`` →
reconstruction stage → ``recon/th0`` and ``recon/th0/screening`` subscribers."""

from __future__ import annotations

import numpy as np

from medacq.client import Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.simulators.gige_camera import GigEVisionServer, make


def test_thermal_frames_through_daemon_and_recon(endpoints):
    dev = make(model="thermal", fever=True, drift0_k=1.0, drift_k_per_min=0.0)
    dev.keep_frames = 200
    with GigEVisionServer(dev, "127.0.0.1", 0, link_MBps=0) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "th0", "kind": "gige", "address": sim.address,
                                        "settings": {"frame_rate_hz": 15}}],
                            "recon": {**endpoints["recon"], "settings": {"thermal": {"drift_tau_frames": 3}}}})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.daemon.data_endpoint, "raw/th0") as raw, \
                    Subscriber(cfg.recon.data_endpoint, "recon/th0/screening") as scr:
                raws = list(raw.frames(timeout=20, max_frames=3))
                screens = list(scr.frames(timeout=20, max_frames=12))
                desc = raw.descriptors["raw/th0"]
            assert len(raws) == 3
            h, img = raws[-1]
            assert img.shape == (480, 640) and img.dtype == np.uint16 and h["axes"] == ["y", "x"]
            assert desc["modality"] == "thermal" and desc["geometry"]["radiometry"]["R"] == dev.model.R
            # the published pixels are the camera's (block id → the simulator's frame)
            idx = dev.sent_blocks[h["meta"]["block_id"]]
            assert np.array_equal(img, dev.frames[idx])
            sh, vals = screens[-1]
            truth = dev.model.truth()
            assert sh["meta"]["fever"] is True and abs(float(vals[0]) - truth["canthus_max_c"]) < 0.3
            assert abs(float(vals[2]) - truth["blackbody_c"]) < 0.15 and abs(float(vals[3]) - 1.0) < 0.15
        finally:
            d.shutdown()
            stage.shutdown()
