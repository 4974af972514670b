"""PET end to end: ring simulator on TCP → pet driver → daemon → recon stage → ``recon/pet0``
images in Bq/mL over real ZeroMQ."""

from __future__ import annotations

import numpy as np

from medacq.client import Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator


def test_singles_to_images_through_the_daemon(endpoints):
    sim_iface = make_simulator("pet", blocks=20, crystals_per_block=18, singles_rate=1e6, ratio=8.0, p_det=0.8,
                               seed=2, block_ms=20.0, replay_s=0.0)
    with SimulatorServer(sim_iface, "tcp", paced=False) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "pet0", "kind": "pet", "address": sim.tcp_address,
                                        "settings": {"cwindow_ps": 4000, "ewindow_kev": [425, 650]}}],
                            "recon": {**endpoints["recon"],
                                      "settings": {"pet": {"frame_s": 0.4, "image_size": 64, "iterations": 2}}}})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/pet0") as sub:
                got = list(sub.frames(timeout=60, max_frames=2))
        finally:
            d.shutdown()
            stage.shutdown()
    assert len(got) == 2
    h, img = got[-1]
    assert img.shape == (64, 64) and img.dtype == np.float32
    assert h["units"] == "Bq/mL" and h["axes"] == ["y", "x"] and h["source"]["stream"] == "pet0"
    assert h["meta"]["prompts"] > 20_000 and not h["meta"]["dynamic"]
    assert h["meta"]["t_end_s"] > got[0][0]["meta"]["t_end_s"]  # counts accumulate
    # quantitation: the background near its true concentration (at t = 0), the hot spheres hotter
    truth = sim_iface.model.phantom
    bg_true = truth.concentration(0.0)["background"]
    ref = truth.activity_image(64, 320.0)
    bg = img[np.isclose(ref, bg_true)]
    assert abs(bg.mean() - bg_true) / bg_true < 0.2
    big = max(truth.spheres, key=lambda s: s.diameter_mm)
    c = (np.arange(64) + 0.5) * 5.0 - 160
    X, Y = np.meshgrid(c, -c)
    sph = (X - big.x_mm) ** 2 + (Y - big.y_mm) ** 2 <= (big.diameter_mm / 2 - 3) ** 2
    assert img[sph].mean() > 3.0 * bg.mean()


def test_medacq_record_format_petsird_through_the_daemon(endpoints, tmp_path):
    """``medacq record --format petsird``: the recorder subscribed to a running rig writes the PET
    stream's coincidences as PETSIRD, which the ``petsird`` package reads back with the counts
    the writer reported."""
    import pytest

    petsird = pytest.importorskip("petsird", reason="PETSIRD output needs the petsird package")
    from medacq.daemon.recording.recorder import Recorder

    sim_iface = make_simulator("pet", blocks=20, crystals_per_block=18, singles_rate=5e5, ratio=8.0, p_det=0.8,
                               seed=3, block_ms=20.0, replay_s=0.0)
    out = tmp_path / "run.petsird"
    with SimulatorServer(sim_iface, "tcp", paced=True) as sim:
        cfg = parse_config({**endpoints, "recon": {**endpoints["recon"], "enabled": False},
                            "device": [{"name": "pet0", "kind": "pet", "address": sim.tcp_address}]})
        rec = Recorder(cfg.daemon.data_endpoint, ["raw/pet0"], out, fmt="petsird", flush_s=0.2)
        rec.start()
        assert rec.ready.wait(10) and rec.state == "recording", rec.error
        d = AcquisitionDaemon(cfg).start()
        try:
            import time

            deadline = time.monotonic() + 30
            while rec.status()["petsird"]["prompts"] < 5000 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            d.shutdown()
            rec.stop()
    st = rec.status()
    assert st["state"] == "stopped" and st["error"] is None, st
    prompts, delayed = st["petsird"]["prompts"], st["petsird"]["delayed"]
    assert prompts >= 5000 and st["petsird"]["gaps"] == 0
    with petsird.BinaryPETSIRDReader(str(out)) as r:
        r.read_header()
        blocks = list(r.read_time_blocks())
    got_p = sum(len(b.value.prompt_events[0][0]) for b in blocks)
    got_d = sum(len(b.value.delayed_events[0][0]) for b in blocks)
    assert (got_p, got_d) == (prompts, delayed) and got_p > 0
