"""X-ray / CT end to end: simulator on TCP → pyvisa driver → daemon → recon stage → subscriber."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.client import ControlClient, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.daemon.recon.algorithms.xray import FlatFieldCorrector
from medacq.daemon.recon.modalities.xray import XrayReconstructor, calibration_path
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.protocols.stream import StreamDescriptor
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.flatpanel import make
from medacq.simulators.xray_model import SHEPP_LOGAN, DetectorConfig, XrayModel, _scaled, rasterize_ellipses

from conftest import wait_for


def _config(endpoints, name, srv, settings, recon_settings):
    return parse_config({**endpoints, "device": [{"name": name, "kind": "flatpanel", "settings": settings,
                                                  "address": f"TCPIP::{srv.host}::{srv.port}::SOCKET"}],
                         "recon": {**endpoints["recon"], "settings": recon_settings}})


def _next(sub: Subscriber, stream: str, pred=lambda h: True, timeout: float = 20.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = sub.recv(timeout=1.0)
        if m is not None and m.array is not None and m.header["stream"] == stream and pred(m.header):
            return m.header, m.array
    raise TimeoutError(f"no frame on {stream}")


def _recon_ready(rc: ControlClient, stream: str) -> bool:
    st = rc.request("status")["streams"].get(stream)
    return bool(st and st["reconstructor"])


def test_calibration_by_actions_correction_and_dsa(endpoints, tmp_path) -> None:
    settings = {"mode": "FLUORO", "binning": 4, "exposure_s": 0.05, "frame_type": "dark"}
    with SimulatorServer(make(seed=5), "tcp", paced=True) as srv:
        cfg = _config(endpoints, "fp0", srv, settings, {"xray": {"cache_dir": str(tmp_path)}})
        d = AcquisitionDaemon(cfg).start()
        stage = ReconStage(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/fp0") as sub, \
                    ControlClient(cfg.daemon.control_endpoint, timeout=15) as dc, \
                    ControlClient(cfg.recon.control_endpoint) as rc:
                wait_for(lambda: _recon_ready(rc, "fp0"), 15)
                assert rc.request("action", target="fp0", action="capture_dark", args={"n": 3})["frames"] == 3
                rc.request("action", target="fp0", action="capture_flat", args={"n": 3})
                wait_for(lambda: "dark" not in rc.request("action", target="fp0", action="calibration")["capturing"], 10)
                dc.request("configure", device="fp0", settings={"frame_type": "flat"})
                wait_for(lambda: rc.request("action", target="fp0", action="calibration")["calibrated"], 10)
                state = rc.request("action", target="fp0", action="calibration")
                dc.request("configure", device="fp0", settings={"frame_type": "image"})
                rc.request("action", target="fp0", action="set_mask", args={"n": 2})
                h, corr = _next(sub, "fp0", lambda h: h["meta"].get("calibrated"))
                hd, dsa = _next(sub, "fp0/dsa", lambda h: h["meta"]["frame_index"] >= 40)
        finally:
            stage.shutdown()
            d.shutdown()
    model = XrayModel(5, DetectorConfig(binning=4, exposure_s=0.05, mode="FLUORO"))
    good = ~model.defect_mask()
    assert state["defects"] >= (~good).sum()  # every dead pixel and line found
    path = calibration_path({"cache_dir": str(tmp_path)}, "fp0", (384, 486))
    assert state["path"] == str(path) and path.exists()
    # corrected transmission equals the phantom's exp(-∫μ) (noise-limited)
    k = h["meta"]["frame_index"]
    n0 = model.config.source.photons(0.05) * 16
    truth = model.mean_signal(k) / n0
    assert corr.dtype == np.float32 and corr.shape == (384, 486) and h["units"] == "I/I0"
    err = corr - truth
    assert abs(float(err[good].mean())) < 3e-3 and float(np.median(np.abs(err[good]))) < 0.01
    assert np.abs(err[~good]).mean() < 0.05  # defects interpolated from neighbours
    # DSA: the line integral of the iodine that arrived since the mask frames
    kd, masks = hd["meta"]["frame_index"], hd["meta"]["mask_frames"]
    assert len(masks) == 2
    expected = model.radiograph_line_integral(model.contrast_at(kd)) - np.mean(
        [model.radiograph_line_integral(model.contrast_at(m)) for m in masks], axis=0)
    vessel = expected > 0.2
    assert vessel.sum() > 100
    assert float(dsa[vessel & good].mean()) == pytest.approx(float(expected[vessel & good].mean()), rel=0.1)
    assert abs(float(np.median(dsa[~vessel & good]))) < 0.01
    # a new reconstructor for the same stream reloads the persisted calibration
    desc = StreamDescriptor(stream="fp0", modality="xray", dtype="<u2", shape=[384, 486], axes=["row", "col"])
    r = XrayReconstructor(desc, {"cache_dir": str(tmp_path)})
    assert r.corrector is not None and r.corrector.defects.sum() == state["defects"]


def test_ct_slice_end_to_end_with_persisted_calibration(endpoints, tmp_path) -> None:
    settings = {"mode": "CT", "binning": 4, "exposure_s": 0.01, "ct_projections": 90}
    rs = {"cache_dir": str(tmp_path), "output_size": 128}
    model = XrayModel(8, DetectorConfig(binning=4, exposure_s=0.01, mode="CT", n_proj=90))
    FlatFieldCorrector(model.expected_frame(0, "dark"), model.expected_frame(0, "flat"), model.defect_mask()).save(
        _mk(calibration_path(rs, "ct0", (384, 486))))
    with SimulatorServer(make(seed=8), "tcp", paced=True) as srv:
        cfg = _config(endpoints, "ct0", srv, settings, {"ct": rs})
        d = AcquisitionDaemon(cfg).start()
        stage = ReconStage(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/ct0") as sub, \
                    ControlClient(cfg.recon.control_endpoint) as rc:
                wait_for(lambda: _recon_ready(rc, "ct0"), 15)
                assert rc.request("action", target="ct0", action="calibration")["calibrated"]
                hp, prj = _next(sub, "ct0")
                rc.request("action", target="ct0", action="preview")
                hv, preview = _next(sub, "ct0/preview")
                hs, sl = _next(sub, "ct0/slice", timeout=30)
        finally:
            stage.shutdown()
            d.shutdown()
    assert prj.shape == (486,) and hp["meta"]["calibrated"]
    np.testing.assert_allclose(prj, model.ct_slice_projection(hp["meta"]["projection"]), atol=0.05)
    assert preview.shape == (128, 128) and 0 < hv["meta"]["projections"] < 90
    assert sl.shape == (128, 128) and hs["units"] == "1/mm" and hs["meta"]["n_projections"] == 90
    px = hs["meta"]["pixel_mm"]
    phantom = rasterize_ellipses(_scaled(SHEPP_LOGAN, model.ct_radius_mm, 0.02), 128, pitch=px)
    inner = rasterize_ellipses(_scaled(SHEPP_LOGAN[1:2] * [[1, 0.9, 0.9, 1, 1, 1]], model.ct_radius_mm, 1.0), 128,
                               pitch=px) != 0
    brain = float(np.median(sl[inner]))
    assert brain == pytest.approx(float(np.median(phantom[inner])), rel=0.15)  # ~0.004 /mm
    assert float(np.sqrt(np.mean((sl - phantom) ** 2))) < 0.2 * float(phantom.max())


def _mk(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
