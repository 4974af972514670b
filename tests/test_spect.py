"""SPECT Anger camera: codec in memory, Anger logic against the simulated truth, driver against the
simulator over real TCP, and a reconstructed slice with the hot sphere where the phantom put it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, Frame, Gap
from medacq.drivers.spect import AngerCorrector, SpectDriver, SpectSettings
from medacq.protocols._sansio import NEED_DATA, LocalProtocolError
from medacq.protocols.anger import AngerConnection, BadFrame, Command, EventBlock, Reply, event_dtype
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.gamma_camera import make
from medacq.simulators.spect_model import SpectCameraModel


def _drain(c: AngerConnection) -> list:
    out = []
    while (ev := c.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_codec_pairs_byte_at_a_time_and_loss() -> None:
    host, dev = AngerConnection("host"), AngerConnection("device")
    ev = np.zeros(5, event_dtype(37))
    ev["dt_ns"] = [1, 2, 3, 4, 5]
    ev["pmt"] = np.arange(5 * 37).reshape(5, 37)
    wire = dev.send(Reply(3, 0, "ok")) + dev.send(EventBlock(0, 100, 200, 6000, ev))
    bad = bytearray(dev.send(EventBlock(1, 200, 300, 6000, ev)))
    bad[50] ^= 1
    wire += bytes(bad) + dev.send(EventBlock(2, 300, 400, 12000, ev[:0]))
    got = []
    for i in range(len(wire)):
        host.receive_data(wire[i:i + 1])
        got += _drain(host)
    assert got[0] == Reply(3, 0, "ok")
    blocks = [g for g in got if isinstance(g, EventBlock)]
    assert [b.counter for b in blocks] == [0, 2] and blocks[0].angle_mdeg == 6000
    np.testing.assert_array_equal(blocks[0].events, ev)
    assert any(isinstance(g, BadFrame) for g in got)
    dev.receive_data(host.send(Command(7, "SET STOPS 60")))
    assert _drain(dev) == [Command(7, "SET STOPS 60")]
    with pytest.raises(LocalProtocolError):
        host.send(EventBlock(0, 0, 1, 0, ev))


def test_anger_logic_recovers_positions_within_intrinsic_resolution() -> None:
    m = SpectCameraModel(rate_cps=1000.0, seed=3)
    corr = AngerCorrector(m.config())
    rng = np.random.default_rng(9)
    # a grid of point sources on the useful field (within 130 mm of the centre; the 37-PMT array's
    # inscribed circle is 156 mm), 500 events each
    gx, gy = np.meshgrid(np.arange(-120, 121, 40.0), np.arange(-120, 121, 40.0))
    inside = np.hypot(gx, gy) <= 130
    gx, gy = gx[inside], gy[inside]
    x = np.repeat(gx.ravel(), 500)
    y = np.repeat(gy.ravel(), 500)
    cx, cy, e, w = corr(m.light(rng, x, y, np.full(len(x), 140.5)))
    err = np.hypot(cx - x, cy - y)
    assert np.median(err) < 2.0  # mm: the simulated camera's intrinsic resolution is about 3 mm FWHM
    for px, py in zip(gx.ravel(), gy.ravel()):  # each source's centroid where it was put
        k = (x == px) & (y == py)
        assert np.hypot(np.median(cx[k]) - px, np.median(cy[k]) - py) < 1.6
    assert abs(np.median(e) - 140.5) < 2.0
    assert 0.06 < 2.355 * np.std(e) / np.mean(e) < 0.13  # energy resolution (FWHM)
    from medacq.protocols.anger import anger_centroid

    # the uncorrected centroid is worse: the maps do something
    rx, ry, _ = anger_centroid(m.light(rng, x, y, np.full(len(x), 140.5)), m.pmt_xy, 0.1)
    assert np.median(np.hypot(rx - x, ry - y)) > np.median(err)


def test_driver_against_the_camera_over_tcp() -> None:
    iface = make(stops=4, dwell_s=0.1, rate_cps=20000.0, seed=2)
    with SimulatorServer(iface, "tcp", paced=False) as srv:
        d = SpectDriver("spect0", srv.tcp_address, SpectSettings(stops=8, dwell_s=0.05))
        d.open()
        try:
            desc = d.descriptor()
            assert desc.shape == [-1, 6] and desc.geometry["stops"] == 8
            d.start()
            items: list = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                items += d.read(0.05)
            with pytest.raises(DeviceError, match="BUSY"):
                d.command("SET STOPS 10")
            srv.call(iface.drop, 2)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.5:
                items += d.read(0.05)
            d.stop()
        finally:
            d.close()
    frames = [i for i in items if isinstance(i, Frame)]
    gaps = [i for i in items if isinstance(i, Gap)]
    assert [g.lost_frames for g in gaps] == [2]
    angles = sorted({f.meta["angle_deg"] for f in frames})
    assert angles == [k * 45.0 for k in range(8)]
    data = np.concatenate([f.data for f in frames])
    assert np.all(np.isin(data[:, 4], angles))
    e = data[:, 2]
    peak = e[(e > 120) & (e < 160)]
    assert abs(np.median(peak) - 140.5) < 3.0
    assert np.all(np.abs(data[:, 0]) < 260)


def test_reconstructed_slice_has_the_hot_sphere_where_the_phantom_put_it() -> None:
    from medacq.daemon.recon.modalities.spect import SpectReconstructor
    from medacq.protocols.stream import StreamDescriptor

    iface = make(stops=30, dwell_s=0.2, rate_cps=100_000.0, ratio=8.0, seed=4)
    cfg = iface.model.config()
    cfg.update(stops=30, dwell_s=0.2)
    corr = AngerCorrector(cfg)
    geometry = {k: cfg[k] for k in ("radius_mm", "collimator", "photon_kev", "photon_yield", "half_life_s",
                                    "stops", "dwell_s", "phantom")}
    desc = StreamDescriptor(stream="s", modality="spect", dtype="<f8", shape=[-1, 6], axes=["event", "field"],
                            geometry=geometry)
    rec = SpectReconstructor(desc, {"image_size": 64, "iterations": 4})
    assert rec.wait_ready()
    blk = 100_000  # µs
    outs = []
    for k in range(60):
        t0 = k * blk
        ang = (k // 2 % 30) * 12.0
        ev = iface.model.generate(t0, t0 + blk, ang)
        x, y, e, w = corr(ev.amp)
        f = np.stack([x, y, e, ev.t_us * 1e-6, np.full(len(x), ang), w], axis=1)
        outs += rec.process({"meta": {"t_start_us": t0, "t_end_us": t0 + blk, "angle_deg": ang}}, f)
    assert len(outs) == 1  # one rotation = one image
    img = outs[0].data
    assert outs[0].units == "Bq/mL" and outs[0].meta["stops_seen"] == 30
    ph = iface.model.phantom
    c = (np.arange(64) + 0.5) * 5.0 - 160
    X, Y = np.meshgrid(c, -c)
    from scipy.ndimage import gaussian_filter

    iy, ix = np.unravel_index(np.argmax(gaussian_filter(img, 1.5)), img.shape)
    big = max(ph.spheres, key=lambda s: s.diameter_mm)
    assert np.hypot(X[iy, ix] - big.x_mm, Y[iy, ix] - big.y_mm) < big.diameter_mm / 2
    truth = ph.activity_image(64, 320.0)
    bg_true = ph.concentration(0.0)["background"]
    inner = np.isclose(truth, bg_true) & (X ** 2 / 120 ** 2 + Y ** 2 / 85 ** 2 < 1) & (np.hypot(X, Y) > 40)
    assert abs(img[inner].mean() - bg_true) / bg_true < 0.2


def test_events_to_slices_through_the_daemon(endpoints) -> None:
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recon.stage import ReconStage

    iface = make(stops=12, dwell_s=0.1, rate_cps=100_000.0, ratio=8.0, seed=5)
    with SimulatorServer(iface, "tcp", paced=False) as sim:
        cfg = parse_config({**endpoints,
                            "device": [{"name": "spect0", "kind": "spect", "address": sim.tcp_address}],
                            "recon": {**endpoints["recon"],
                                      "settings": {"spect": {"image_size": 64, "subsets": 4, "iterations": 3}}}})
        stage = ReconStage(cfg).start()
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/spect0") as sub:
                got = list(sub.frames(timeout=60, max_frames=2))
        finally:
            d.shutdown()
            stage.shutdown()
    assert len(got) == 2
    h, img = got[-1]
    assert img.shape == (64, 64) and h["units"] == "Bq/mL" and h["meta"]["stops_seen"] == 12
    assert h["source"]["stream"] == "spect0" and np.isfinite(img).all() and img.max() > 0
