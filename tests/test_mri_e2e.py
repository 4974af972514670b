"""MRI end to end: MaRCoS console simulator on TCP → ``mri`` driver → daemon → recon stage →
``recon/mri0`` image subscriber (real ZeroMQ)."""

from __future__ import annotations

import time

import numpy as np

from medacq.client import Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.protocols.models.mri_phantom import spoiled_gre_signal
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.mri import make


def test_lines_stream_through_the_daemon_and_the_image_fills_in(endpoints):
    n = 32
    iface = make()
    with SimulatorServer(iface, "tcp", paced=False) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "mri0", "kind": "mri", "address": sim.tcp_address,
                                        "settings": {"sequence": {"sequence": "gre", "matrix": n, "te_ms": 5,
                                                                  "tr_ms": 40, "flip_deg": 30},
                                                     "lines_per_run": 4, "dummy_scans": 4, "repetitions": 3}}]})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/mri0") as sub:
                got = []
                deadline = time.monotonic() + 30
                # image 1: image 0's first lines may pass before the subscriptions reach the publishers
                for h, a in sub.frames(timeout=5):
                    if time.monotonic() > deadline:
                        break
                    if h["stream"] == "mri0" and h["meta"]["image"] == 1:
                        got.append((h, a.copy()))
                        if h["meta"]["complete"]:
                            break
        finally:
            d.shutdown()
            stage.shutdown()
    assert got, "no images on recon/mri0"
    h, img = got[-1]
    assert img.shape == (n, n) and img.dtype == np.float32 and h["axes"] == ["y", "x"]
    assert h["meta"]["lines_filled"] == n and h["meta"]["complete"] is True
    # the image was updated as lines arrived: earlier images had fewer lines
    assert len(got) > 1 and got[0][0]["meta"]["lines_filled"] < n
    ph = iface.model.phantom
    truth = ph.image(spoiled_gre_signal(ph.m0, ph.t1, ph.t2, 5e-3, 40e-3, 30), n, 0.2)
    assert np.corrcoef(img.ravel(), truth.ravel())[0, 1] > 0.93
