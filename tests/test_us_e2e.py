"""Ultrasound end to end: simulator on TCP → driver → daemon → recon stage → ``recon/us0``
subscriber, and the B-mode on OpenIGTLink read by an independent client (pyigtl)."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.client import ControlClient, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator

from conftest import free_port, wait_for

pyigtl = pytest.importorskip("pyigtl")


def test_rf_to_bmode_through_daemon_recon_and_openigtlink(endpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDACQ_CACHE_DIR", str(tmp_path))
    sim_iface = make_simulator("us", angles=1, samples=1024, prf_hz=60.0, speckle_density_per_mm2=2.0,
                               cache=False, seed=5)
    igtl_port = free_port()
    grid = {"nx": 64, "nz": 64, "x_min_mm": -6, "x_max_mm": 6, "z_min_mm": 6, "z_max_mm": 24}
    with SimulatorServer(sim_iface, "tcp", paced=True) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "us0", "kind": "ultrasound", "address": sim.tcp_address,
                                        "settings": {"angles": 1, "samples": 1024, "prf_hz": 60.0}}],
                            "recon": {**endpoints["recon"], "settings": {"us": {**grid, "igtl_port": igtl_port}}}})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        client = None
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/us0") as sub:
                got = list(sub.frames(timeout=30, max_frames=3))
            assert len(got) == 3
            h, img = got[-1]
            assert img.shape == (64, 64) and img.dtype == np.float32
            assert h["axes"] == ["z", "x"] and h["units"] == "dB" and h["source"]["stream"] == "us0"
            assert img.max() == 0 and img.min() >= -60
            # the wires at (0, 10) and (0, 20) mm are where the model put them (±1 wavelength)
            z = np.linspace(6e-3, 24e-3, 64)
            x = np.linspace(-6e-3, 6e-3, 64)
            lam = 1540 / 5.208e6
            for wz in (10e-3, 20e-3):
                rows = np.abs(z - wz) < 2e-3
                sub_img = np.where(rows[:, None], img, -np.inf)
                iz, ix = np.unravel_index(np.argmax(sub_img), img.shape)
                assert np.hypot(x[ix], z[iz] - wz) < lam + 0.2e-3, (wz, x[ix], z[iz])
            desc = sub.descriptors["recon/us0"]
            assert desc["geometry"]["grid"]["nx"] == 64 and desc["meta"]["source"] == "us0"
            # operator rebuild on geometry change, stream keeps going
            with ControlClient(cfg.recon.control_endpoint, timeout=5) as c:
                st = c.request("action", target="us0", action="status", args={})
                assert st["ready"] and st["igtl_port"] == igtl_port
                c.request("action", target="us0", action="set_grid", args={"nx": 32, "nz": 40})
            with Subscriber(cfg.recon.data_endpoint, "recon/us0") as sub2:
                assert wait_for(lambda: any(a.shape == (40, 32) for _, a in sub2.frames(timeout=1, max_frames=2)),
                                timeout=30)
            # an independent OpenIGTLink client sees the live B-mode
            client = pyigtl.OpenIGTLinkClient("127.0.0.1", igtl_port)
            msg = client.wait_for_message("BMODE", timeout=15)
            assert msg is not None
            arr = np.asarray(msg.image)
            assert arr.dtype == np.uint8 and arr.size == 40 * 32 and arr.max() == 255
        finally:
            if client is not None:
                client.stop()
            d.shutdown()
            stage.shutdown()
            for st in stage.streams.values():
                if st.recon is not None and hasattr(st.recon, "close"):
                    st.recon.close()
