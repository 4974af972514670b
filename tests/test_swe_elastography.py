"""Shear-wave elastography: Loupas displacement on simulated frames, the modulus map against the
simulator's truth, push limits, and the scanner/driver pair over a real TCP socket."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from medacq.daemon.acquisition.devices import check_settings_change, parse_rig_config
from medacq.daemon.common.config import ConfigError
from medacq.daemon.recon.algorithms import elastography as el
from medacq.protocols.control import ControlError
from medacq.daemon.recon.modalities.elastography import INCLUSION_FIELDS, ShearWaveReconstructor
from medacq.drivers._base import DeviceError, Frame
from medacq.drivers.us_elastography import ElastographyDriver, ElastographySettings, mi_estimate
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.swe_model import ShearWave, StiffnessPhantom, TrackingSetup, render_ensemble
from medacq.simulators.us_swe import make


@pytest.fixture(scope="module")
def ensemble():
    setup = TrackingSetup(x_mm=(-10.0, 10.0), z_mm=(15.0, 36.0), n_frames=120, prf_hz=8000.0)
    return render_ensemble(StiffnessPhantom(), ShearWave(), setup, seed=2)


def test_loupas_measures_the_known_displacement(ensemble):
    e, s = ensemble, ensemble.setup
    v = el.loupas_numpy(e.iq, s.f0_hz, s.fs_iq_hz)
    truth = np.diff(e.displacement_um, axis=0)
    assert v.shape == truth.shape
    err = v - truth
    assert abs(float(err.mean())) < 0.02  # µm: unbiased
    assert float(np.sqrt((err ** 2).mean())) < 0.6
    # where the wave moves the tissue most, the estimate follows it closely
    big = np.abs(truth) > 1.0
    assert big.sum() > 1000 and np.corrcoef(v[big], truth[big])[0, 1] > 0.9
    if el.HAVE_NUMBA:
        np.testing.assert_allclose(el.loupas_numba(e.iq, s.f0_hz, s.fs_iq_hz), v, rtol=2e-3, atol=0.01)


def test_rigid_shift_of_half_a_micron():
    """Two frames of the same speckle, the second moved 0.5 µm deeper everywhere."""
    rng = np.random.default_rng(1)
    nz, nx, f0, fs, c = 200, 8, 5e6, 10e6, 1540.0
    dz = c / (2 * fs) * 1e3
    zs = rng.uniform(0, nz * dz, (nx, 400))
    amp = rng.standard_normal((nx, 400)) + 1j * rng.standard_normal((nx, 400))
    zgrid = np.arange(nz) * dz
    k = 4 * np.pi * f0 / (c * 1e3)

    def frame(shift_mm: float) -> np.ndarray:
        z = zs + shift_mm
        env = np.exp(-0.5 * ((zgrid[None, :, None] - z[:, None, :]) / (1.2 * dz)) ** 2)
        return np.einsum("xzs,xs->zx", env, amp * np.exp(-1j * k * z))

    iq = np.stack([frame(0.0), frame(0.5e-3)]).astype(np.complex64)
    u = el.loupas_numpy(iq, f0, fs)[0, 10:-10]
    assert float(np.median(u)) == pytest.approx(0.5, abs=0.02)


def test_modulus_map_matches_the_phantom(ensemble):
    e, s = ensemble, ensemble.setup
    r = el.process_ensemble(e.iq, e.t_s, e.x_mm, e.z_mm, s.f0_hz, s.fs_iq_hz, kernel="numpy")
    stiff, soft = StiffnessPhantom().regions
    inc = r.inclusion
    assert inc.found
    assert abs(inc.x_mm - stiff.x_mm) < 1.0 and abs(inc.z_mm - stiff.z_mm) < 1.0
    assert abs(inc.diameter_mm - 2 * stiff.radius_mm) <= 1.0
    X, Z = np.meshgrid(e.x_mm, r.z_mm)
    core = (X - stiff.x_mm) ** 2 + (Z - stiff.z_mm) ** 2 <= (0.6 * stiff.radius_mm) ** 2
    assert float(np.nanmedian(r.modulus_kpa[core])) == pytest.approx(stiff.e_kpa, rel=0.10)
    bg = (X > -8) & np.ones_like(core)
    for reg in (stiff, soft):
        bg &= (X - reg.x_mm) ** 2 + (Z - reg.z_mm) ** 2 > (reg.radius_mm + 2) ** 2
    assert float(np.nanmedian(r.modulus_kpa[bg])) == pytest.approx(15.0, rel=0.10)
    assert float(np.mean(r.confidence[bg])) > 0.5
    sc = (X - soft.x_mm) ** 2 + (Z - soft.z_mm) ** 2 <= (0.6 * soft.radius_mm) ** 2
    assert float(np.nanmedian(r.modulus_kpa[sc])) < 10.0  # the soft one reads soft


def test_push_limits_come_from_the_config_bounds():
    ok = ElastographySettings()
    assert ok.duty() == pytest.approx(200e-6 / 0.5) and ok.mi() < 1.9
    assert mi_estimate(50, 25) == pytest.approx(0.05 * 50 * 10 ** (-0.3 * 2.5 * 5 / 20) / np.sqrt(5))
    with pytest.raises(ValidationError, match="max_push_duration_us"):
        ElastographySettings(push_duration_us=500)
    with pytest.raises(ValidationError, match="duty"):
        ElastographySettings(push_interval_s=0.05)
    with pytest.raises(ValidationError, match="mechanical index"):
        ElastographySettings(push_voltage_v=60, max_mi=0.5)
    with pytest.raises(ValidationError, match="tracking lasts"):
        ElastographySettings(tracking_frames=200, tracking_prf_hz=5000)
    f = ElastographySettings.model_fields
    assert f["max_mi"].json_schema_extra == {"config_only": True}
    assert f["push_voltage_v"].json_schema_extra == {"limited": True}
    # the config file: refused at load; a control-plane configure cannot raise a limit or leave [device.limits]
    dev = {"name": "swe0", "kind": "us_swe", "address": "tcp://127.0.0.1:1"}
    with pytest.raises(ConfigError, match="max_push_duration_us 400"):
        parse_rig_config({"device": [{**dev, "settings": {"push_duration_us": 600}}]})
    cfg = parse_rig_config({"device": [{**dev, "settings": {"push_voltage_v": 40}, "limits": {"push_voltage_v": [10, 45]}}]})
    cur = ElastographySettings(push_voltage_v=40)
    with pytest.raises(ControlError) as exc:
        check_settings_change(ElastographyDriver, cur, {"max_mi": 1.9 - 0.1}, cfg.device[0].limits)
    assert exc.value.code == "forbidden"
    with pytest.raises(ControlError, match="push_voltage_v"):
        check_settings_change(ElastographyDriver, cur, {"push_voltage_v": 50}, cfg.device[0].limits)
    assert check_settings_change(ElastographyDriver, cur, {"push_voltage_v": 44}, cfg.device[0].limits).push_voltage_v == 44


def test_scanner_and_driver_over_tcp_and_safe_state_stops_pushes():
    sim = make(half_width_mm=10.0, seed=3)
    with SimulatorServer(sim, "tcp", paced=True) as srv:
        d = ElastographyDriver("swe0", srv.tcp_address, ElastographySettings(push_interval_s=0.2, tracking_data="iq"))
        d.open()
        try:
            assert srv.call(sim.handle_command, "PUSH", 0.0).startswith("ERR not armed")
            desc = d.descriptor()
            assert desc.shape == [120, int(d.swe["nz"]), int(d.swe["nx"]), 2] and desc.axes == ["frame", "z", "x", "iq"]
            assert desc.meta["mi_estimate"] == pytest.approx(ElastographySettings().mi(), rel=1e-3)
            d.start()
            items: list = []
            end = time.monotonic() + 30
            while sum(isinstance(i, Frame) for i in items) < 2 and time.monotonic() < end:
                items += d.read(0.2)
            frames = [i for i in items if isinstance(i, Frame)]
            assert [f.meta["push"] for f in frames] == [0, 1]
            assert frames[0].data.dtype == np.dtype("<i2") and list(frames[0].data.shape) == desc.shape
            # the limits are checked before every push, too
            d.settings = ElastographySettings.model_construct(**{**d.settings.model_dump(), "push_interval_s": 0.01})
            with pytest.raises(DeviceError, match="duty"):
                d.push()
            d.settings = ElastographySettings(push_interval_s=0.2, tracking_data="iq")
            said = d.enter_safe_state()
            assert "pushes disarmed" in said and "state=stopped" in said
            pushes = srv.call(lambda: sim.pushes)
            t = srv.call(sim.truth)
            assert t["state"] == "stopped" and not t["push_in_flight"]
            for _ in range(5):
                d.read(0.1)
            assert srv.call(lambda: sim.pushes) == pushes  # no push after the safe state
        finally:
            d.close()
    rec = ShearWaveReconstructor(desc)
    outs = {o.name: o for o in rec.process({"meta": frames[-1].meta}, frames[-1].data)}
    m = dict(zip(INCLUSION_FIELDS, outs["inclusion"].data.tolist()))
    stiff = StiffnessPhantom().regions[0]
    assert m["found"] == 1.0 and abs(m["x_mm"] - stiff.x_mm) < 1.0 and abs(m["z_mm"] - stiff.z_mm) < 1.0
    assert m["e_inclusion_kpa"] == pytest.approx(stiff.e_kpa, rel=0.10)
    assert outs[""].data.shape == ((int(d.swe["nz"]) + 1) // 2, int(d.swe["nx"])) and outs[""].units == "kPa"


def test_modulus_map_published_through_the_daemon(endpoints):
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recon.stage import ReconStage

    sim = make(half_width_mm=8.0, seed=5)
    with SimulatorServer(sim, "tcp", paced=True) as srv:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "swe0", "kind": "us_swe", "address": srv.tcp_address,
                                        "settings": {"push_interval_s": 0.3, "tracking_data": "iq"}}],
                            "recon": {**endpoints["recon"]}})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/swe0") as sub:
                got: dict[str, tuple[dict, np.ndarray]] = {}
                end = time.monotonic() + 40
                while len(got) < 4 and time.monotonic() < end:
                    for h, a in sub.frames(timeout=2, max_frames=8):
                        got[h["stream"]] = (h, a.copy())
        finally:
            d.shutdown()
            stage.shutdown()
    assert set(got) == {"swe0", "swe0/confidence", "swe0/speed", "swe0/inclusion"}
    h, e_map = got["swe0"]
    assert h["units"] == "kPa" and h["axes"] == ["z", "x"] and e_map.dtype == np.float32
    m = got["swe0/inclusion"][0]["meta"]
    stiff = StiffnessPhantom().regions[0]
    assert m["found"] == 1.0 and abs(m["x_mm"] - stiff.x_mm) < 1.0 and abs(m["z_mm"] - stiff.z_mm) < 1.0
    assert m["e_inclusion_kpa"] == pytest.approx(stiff.e_kpa, rel=0.10)
    assert m["e_background_kpa"] == pytest.approx(15.0, rel=0.10)
