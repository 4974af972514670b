"""X-ray physics model: determinism, levels, noise, defects, projection geometry."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from medacq.simulators.xray_model import (
    SHEPP_LOGAN,
    DetectorConfig,
    XrayModel,
    _scaled,
    ellipse_fan_projection,
    ellipse_parallel_projection,
    parallel_sinogram,
    rasterize_ellipses,
)


def test_deterministic_and_seed_dependent() -> None:
    a, b, c = XrayModel(1), XrayModel(1), XrayModel(2)
    for m in (a, b, c):
        m.configure(binning=2, mode="FLUORO")
    assert np.array_equal(a.frame(7), b.frame(7))
    assert not np.array_equal(a.frame(7), c.frame(7))
    assert not np.array_equal(a.frame(7), a.frame(8))


@pytest.mark.parametrize("binning,shape", [(1, (1536, 1944)), (2, (768, 972)), (4, (384, 486))])
def test_shapes_levels_binning(binning: int, shape: tuple[int, int]) -> None:
    m = XrayModel(0, DetectorConfig(binning=binning))
    f = m.frame(0, "flat")
    assert f.shape == shape and f.dtype == np.uint16
    good = ~m.defect_mask()
    expected = m.expected_frame(0, "flat")
    # open-beam level: 1e4 photons/mAs * 10 mA * 30 ms * 2 ADU ~ 6000 ADU + dark
    assert np.median(expected[good]) == pytest.approx(6000 + 300 + 6, rel=0.1)
    assert abs(float(np.mean(f[good] - expected[good]))) < 2.0


def test_fast_noise_statistics_match_poisson_model() -> None:
    for noise in ("fast", "poisson"):
        m = XrayModel(4, DetectorConfig(binning=4), noise=noise)  # type: ignore[arg-type]
        gain, _, defect = m._maps()
        good = defect == 1
        sig = m.mean_signal(0, "flat")
        g = gain * 2.0 / 16
        exp_sd = np.sqrt(sig * g * g + (4.0 / 4) ** 2)[good]
        resid = (m.frame(3, "flat").astype(np.float64) - m.expected_frame(0, "flat"))[good]
        assert resid.std() == pytest.approx(float(np.sqrt((exp_sd**2).mean())), rel=0.05), noise
        assert abs(resid.mean()) < 1.0


def test_dark_and_defects() -> None:
    m = XrayModel(6, DetectorConfig(binning=1))
    dark = m.frame(0, "dark").astype(np.float64)
    flat = m.frame(0, "flat").astype(np.float64)
    t = m.truth()
    r, c = np.array(t["dead_pixels"]).T
    assert np.all(dark[r, c] == 0) and np.all(flat[r, c] == 0)
    col = t["dead_cols"][0]
    assert abs(flat[:, col].mean() - dark[:, col].mean()) < 2.0  # no photo response
    assert flat[:, col + 3].mean() > dark[:, col + 3].mean() + 4000
    assert 250 < np.median(dark) < 350


def test_analytic_projection_matches_radon_of_raster() -> None:
    from skimage.transform import radon

    n = 256
    e = _scaled(SHEPP_LOGAN, 0.45 * n)
    img = rasterize_ellipses(e, n)
    theta = np.deg2rad([0.0, 30.0, 90.0, 135.0])
    ana = parallel_sinogram(e, n, theta)
    num = radon(img, np.rad2deg(theta), circle=True)
    assert np.abs(ana - num).mean() < 0.01 * ana.max()
    # the disk at (x, y) projects where t = x cos θ + y sin θ
    disk = np.array([[1.0, 10.0, 10.0, 60.0, 30.0, 0.0]])
    p = ellipse_parallel_projection(disk, math.radians(90), np.arange(-128, 128) * 1.0)
    assert int(np.argmax(p)) - 128 == 30


def test_fan_projection_of_centred_disk() -> None:
    disk = np.array([[1.0, 50.0, 50.0, 0.0, 0.0, 0.0]])
    u = np.linspace(-100, 100, 41)
    sid, sdd = 400.0, 600.0
    p = ellipse_fan_projection(disk, 0.7, u, sid, sdd)
    t = sid * np.sin(np.arctan(u / sdd))
    np.testing.assert_allclose(p, 2 * np.sqrt(np.maximum(50**2 - t**2, 0)), atol=1e-9)


def test_ct_frame_central_row_is_the_projection() -> None:
    m = XrayModel(0, DetectorConfig(binning=4, mode="CT", n_proj=16))
    dark = m.expected_frame(0, "dark")
    flat = m.expected_frame(0, "flat")
    img = m.expected_frame(5, "image")
    good = ~m.defect_mask()[192]
    line = -np.log((img[192] - dark[192])[good] / (flat[192] - dark[192])[good])
    np.testing.assert_allclose(line, m.ct_slice_projection(5)[good], rtol=1e-4, atol=1e-5)
    assert m.config.angle(4) == pytest.approx(math.pi / 2)
    assert 0.3 < m.ct_slice_projection(5).max() < 2.0  # Shepp–Logan at 0.02 /mm × ~90 mm


def test_fluoro_contrast_bolus() -> None:
    m = XrayModel(0, DetectorConfig(binning=4, mode="FLUORO"))
    early, late = m.mean_signal(0), m.mean_signal(60)
    dlog = np.log(early / late)
    assert m.contrast_at(0) == 0 and m.contrast_at(60) == 1
    assert dlog.max() > 0.2  # vessels attenuate
    assert (dlog > 0.05).mean() < 0.05  # ... and only the vessels


def test_full_frame_fast_enough_for_26_fps() -> None:
    m = XrayModel(0)
    m.frame(0)
    t = time.perf_counter()
    for k in range(1, 6):
        m.frame(k)
    per_frame = (time.perf_counter() - t) / 5
    assert per_frame < 1 / 26, per_frame
