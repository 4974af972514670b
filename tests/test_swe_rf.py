"""Shear-wave elastography from channel RF: the B-mode echo synthesis moving with the tissue, the
DAS operator batched over the ensemble, and the modulus map against the simulator's truth, in
memory, over a real TCP socket and through the daemon."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.daemon.recon.algorithms import elastography as el
from medacq.daemon.recon.modalities.elastography import INCLUSION_FIELDS, ShearWaveReconstructor
from medacq.drivers._base import Frame
from medacq.drivers.us_elastography import ElastographyDriver, ElastographySettings
from medacq.protocols.us_geometry import LinearArrayProbe, PlaneWaveAcquisition
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.swe_model import StiffnessPhantom, tracking_acquisition
from medacq.simulators.us_model import Phantom, PlaneWaveRFModel
from medacq.simulators.us_swe import make

FRAMES, PRF = 100, 8000.0  # 12.5 ms of tracking
STIFF, SOFT = StiffnessPhantom().regions


@pytest.fixture(scope="module")
def sim():
    """One scanner for the module: its RF ensemble is rendered once (the render is the slow part)."""
    s = make(half_width_mm=8.0, z_min_mm=18.0, z_max_mm=32.0, seed=5)
    assert s.handle_command(f"SET TRACKING {PRF:g} {FRAMES} RF", 0.0) == "OK"
    assert s.handle_command("GET SWE", 0.0).endswith("data=rf")
    return s


def _maps_ok(e_kpa: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray, m: dict) -> None:
    assert m["found"] == 1.0
    assert abs(m["x_mm"] - STIFF.x_mm) < 1.0 and abs(m["z_mm"] - STIFF.z_mm) < 1.0
    assert abs(m["diameter_mm"] - 2 * STIFF.radius_mm) <= 1.0
    assert m["e_inclusion_kpa"] == pytest.approx(STIFF.e_kpa, rel=0.10)
    X, Z = np.meshgrid(x_mm, z_mm)
    core = (X - STIFF.x_mm) ** 2 + (Z - STIFF.z_mm) ** 2 <= (0.6 * STIFF.radius_mm) ** 2
    assert float(np.nanmedian(e_kpa[core])) == pytest.approx(STIFF.e_kpa, rel=0.10)
    bg = X > -6.0
    for reg in (STIFF, SOFT):
        bg &= (X - reg.x_mm) ** 2 + (Z - reg.z_mm) ** 2 > (reg.radius_mm + 2) ** 2
    assert float(np.nanmedian(e_kpa[bg])) == pytest.approx(15.0, rel=0.10)


def test_moving_render_is_the_static_render_when_still_and_shifts_the_phase():
    """A rigid 0.5 µm move of every scatterer, through the moving render and the batched DAS:
    Loupas reads 0.5 µm; with no move the batched render is the B-mode render."""
    probe = LinearArrayProbe(n_elements=32)
    acq = PlaneWaveAcquisition(probe=probe, n_samples=384, start_time_s=2 * 9e-3 / 1540, prf_hz=5000.0)
    model = PlaneWaveRFModel(acq, Phantom(region=(-3e-3, 3e-3, 10e-3, 18e-3)), seed=1, noise_counts=0.0)
    n = len(model.scatterers[0])
    rf = model.render_angle_moving(0.0, np.array([np.zeros(n), np.full(n, 0.5e-6)]))
    static = model.render_angle(0.0)
    np.testing.assert_allclose(rf[0], static, atol=1e-3 * float(np.abs(static).max()))
    assert not np.allclose(rf[1], rf[0], atol=1e-3 * float(np.abs(static).max()))
    x = np.arange(-2.0, 2.01, 0.3)
    z = 12.0 + 0.077 * np.arange(60)
    bf = el.EnsembleBeamformer(acq, x, z, backend="sparse")
    iq = bf(np.rint(rf).astype(np.int16)[:, None])
    assert iq.shape == (2, len(z), len(x)) and iq.dtype == np.complex64
    u = el.loupas_numpy(iq, bf.f_demod_hz, bf.fs_hz)[0, 8:-8]
    assert float(np.median(u)) == pytest.approx(0.5, abs=0.03)
    # baseband: the phase no longer turns with depth at 4π f0 / c (the mean frequency is near 0)
    lag = np.angle(np.sum(np.conj(iq[0, :-1]) * iq[0, 1:]))
    assert abs(lag) < 0.5


def test_rf_ensemble_beamformed_gives_the_modulus_map(sim):
    ens = sim.rf_ensemble()
    acq = ens.acquisition
    assert ens.rf.shape == (FRAMES, 1, acq.probe.n_elements, acq.n_samples) and ens.rf.dtype == np.int16
    assert acq == tracking_acquisition(ens.setup)
    bf = el.EnsembleBeamformer(acq, ens.x_mm, ens.z_mm, backend="sparse")
    iq = bf(ens.rf)
    assert bf.fs_hz == pytest.approx(ens.setup.fs_iq_hz, rel=1e-6)
    r = el.process_ensemble(iq, ens.t_s, ens.x_mm, ens.z_mm, bf.f_demod_hz, bf.fs_hz)
    inc = r.inclusion
    _maps_ok(r.modulus_kpa, ens.x_mm, r.z_mm, {"found": float(inc.found), "x_mm": inc.x_mm, "z_mm": inc.z_mm,
                                               "diameter_mm": inc.diameter_mm, "e_inclusion_kpa": inc.e_kpa})
    # displacement from beamformed RF against the simulator's truth where the wave is strong
    truth = np.diff(ens.displacement_um, axis=0)[:, ::2]
    big = np.abs(truth) > 0.4
    assert big.sum() > 1000 and np.corrcoef(r.velocity_um[big], truth[big])[0, 1] > 0.8
    assert abs(float((r.velocity_um - truth).mean())) < 0.2


def test_rf_scanner_and_driver_over_tcp(sim):
    with SimulatorServer(sim, "tcp", paced=True) as srv:
        d = ElastographyDriver("swe0", srv.tcp_address,
                               ElastographySettings(tracking_frames=FRAMES, tracking_prf_hz=PRF, push_interval_s=0.3))
        d.open()
        try:
            desc = d.descriptor()
            acq = d.tracking
            assert acq is not None and desc.shape == [FRAMES, 1, acq.probe.n_elements, acq.n_samples]
            assert desc.axes == ["frame", "angle", "element", "sample"]
            assert desc.geometry["tracking_data"] == "rf"
            assert PlaneWaveAcquisition.from_descriptor(desc.geometry["acquisition"]) == acq
            d.start()
            items: list = []
            end = time.monotonic() + 30
            while not any(isinstance(i, Frame) for i in items) and time.monotonic() < end:
                items += d.read(0.2)
            frame = next(i for i in items if isinstance(i, Frame))
            assert list(frame.data.shape) == desc.shape and frame.data.dtype == np.dtype("<i2")
            np.testing.assert_array_equal(frame.data, srv.call(sim.rf_ensemble).rf)
            # an ensemble of the other kind is refused and counted, not turned into a frame
            d.settings = ElastographySettings(tracking_frames=FRAMES, tracking_prf_hz=PRF, push_interval_s=0.3,
                                              tracking_data="iq")
            end = time.monotonic() + 10
            while d.counters.get("bad_ensembles", 0) == 0 and time.monotonic() < end:
                assert not [i for i in d.read(0.2) if isinstance(i, Frame)]
            assert d.counters.get("bad_ensembles", 0) >= 1
            d.enter_safe_state()
        finally:
            d.close()
    rec = ShearWaveReconstructor(desc)
    assert rec.wait_ready(60)
    outs = {o.name: o for o in rec.process({"meta": frame.meta}, frame.data)}
    m = dict(zip(INCLUSION_FIELDS, outs["inclusion"].data.tolist()))
    z_map = np.asarray(outs[""].descriptor_meta["geometry"]["z_mm"])
    _maps_ok(outs[""].data, rec.x_mm, z_map, m)
    # a frame of the wrong shape is a typed error
    from medacq.daemon.recon.base import ReconstructorError

    with pytest.raises(ReconstructorError, match="RF ensemble shape"):
        rec.process({}, frame.data[:, :, :10])


def test_rf_modulus_map_published_through_the_daemon(sim, endpoints):
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recon.stage import ReconStage

    with SimulatorServer(sim, "tcp", paced=True) as srv:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "swe0", "kind": "us_swe", "address": srv.tcp_address,
                                        "settings": {"push_interval_s": 0.4, "tracking_frames": FRAMES,
                                                     "tracking_prf_hz": PRF}}],
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
    assert m["found"] == 1.0 and abs(m["x_mm"] - STIFF.x_mm) < 1.0 and abs(m["z_mm"] - STIFF.z_mm) < 1.0
    assert m["e_inclusion_kpa"] == pytest.approx(STIFF.e_kpa, rel=0.10)
    assert m["e_background_kpa"] == pytest.approx(15.0, rel=0.10)


def test_eikonal_first_arrivals_bend_around_the_inclusions():
    from medacq.simulators.swe_model import ShearWave, TrackingSetup, arrival_time_s, first_arrival_s

    s = TrackingSetup(x_mm=(-12.0, 12.0), z_mm=(15.0, 36.0))
    x, z = s.lateral_mm(), s.depth_mm()
    plain = StiffnessPhantom(regions=())
    c = float(StiffnessPhantom.speed_m_s(15.0))
    # no inclusion: the straight-ray time from the push line, |x - x_push| / c
    T = first_arrival_s(plain, -14.0, x, z)
    np.testing.assert_allclose(T, np.broadcast_to(np.abs(x + 14.0) * 1e-3 / c, T.shape), rtol=0.01)
    ph = StiffnessPhantom()
    Te = first_arrival_s(ph, -14.0, x, z)
    Tr = arrival_time_s(ph.modulus_kpa(x, z), x, -14.0)
    assert float((Te - Tr).max()) < 0.1e-3  # a first arrival is never later than the straight ray (grid error)
    at = lambda T, xm, zm: float(T[np.argmin(np.abs(z - zm)), np.argmin(np.abs(x - xm))])  # noqa: E731
    # just beside the stiff inclusion, behind it: the wave through it (a head wave) arrives first
    assert at(Tr, 10.0, 29.5) - at(Te, 10.0, 29.5) > 0.3e-3
    # the soft inclusion's far side is reached around it, not through it
    assert at(Tr, 11.0, 34.0) - at(Te, 11.0, 34.0) > 0.3e-3
    with pytest.raises(ValueError, match="propagation"):
        ShearWave(propagation="bent")


def test_rf_descriptor_errors_are_typed_and_status_reports_the_beamformer(sim):
    from medacq.daemon.recon.base import ReconstructorError
    from medacq.protocols.stream import StreamDescriptor

    acq = sim.rf_ensemble().acquisition
    geo = {"tracking_data": "rf", "acquisition": acq.to_descriptor(), "nz": 10, "nx": 5, "z0_mm": 20.0,
           "dz_mm": 0.077, "x0_mm": -1.0, "dx_mm": 0.3, "prf_hz": PRF, "f0_hz": 5.2e6, "fs_iq_hz": 1e7}
    ok = StreamDescriptor(stream="swe9", modality="swe", device="t", dtype="<i2", shape=[20, *acq.rf_shape],
                          axes=["frame", "angle", "element", "sample"], units="counts", geometry=geo)
    with pytest.raises(ReconstructorError, match="acquisition"):
        ShearWaveReconstructor(ok.model_copy(update={"shape": [20, 1, 64, acq.n_samples]}))
    with pytest.raises(ReconstructorError, match="geometry"):
        ShearWaveReconstructor(ok.model_copy(update={"geometry": {k: v for k, v in geo.items() if k != "nz"}}))
    rec = ShearWaveReconstructor(ok)
    assert rec.wait_ready(60)
    st = rec.control("status", {})
    assert st["ready"] and st["tracking_data"] == "rf" and st["last_error"] is None
    assert st["backend"] in ("sparse", "cupy")
    rec.close()
