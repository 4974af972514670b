"""Plane-wave beamformer: delays, operator vs numpy baseline, image quality vs phantom truth.

Diffraction limits used (c = 1540 m/s):
* lateral FWHM_lim = 0.886 · λ_c · z / D, D = min(z / F#, array aperture), λ_c = c / f_c with
  f_c the centre frequency actually received from depth z (attenuation downshift);
* axial FWHM_lim = 0.441 · c / B for a Gaussian pulse-echo spectrum of −6 dB bandwidth B.
"""

from __future__ import annotations

import numpy as np
import pytest

from medacq.daemon.recon.algorithms.beamform import PlaneWaveBeamformer, das_numpy, plane_wave_delays
from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition
from medacq.simulators.us_model import PlaneWaveRFModel

C = 1540.0


@pytest.fixture(scope="module")
def scene() -> tuple[PlaneWaveRFModel, np.ndarray]:
    acq = PlaneWaveAcquisition.with_angles(5)
    model = PlaneWaveRFModel(acq, seed=1)
    return model, model.base_frame()


def test_delays_against_analytic_values() -> None:
    acq = PlaneWaveAcquisition(angles_deg=(10.0,))
    grid = PixelGrid(nx=3, nz=2, x_min=-3e-3, x_max=3e-3, z_min=10e-3, z_max=20e-3)
    tx, rx = plane_wave_delays(acq, grid, 10.0)
    # pixel (row 1, col 2) = (x 3 mm, z 20 mm); element 127 at x = +19.05 mm
    p = 1 * 3 + 2
    th = np.radians(10.0)
    assert tx[p] == pytest.approx((3e-3 * np.sin(th) + 20e-3 * np.cos(th)) / C, rel=1e-12)
    assert rx[p, 127] == pytest.approx(np.hypot(3e-3 - 19.05e-3, 20e-3) / C, rel=1e-12)
    tx0, rx0 = plane_wave_delays(acq, PixelGrid(nx=1, nz=1, x_min=0.15e-3, x_max=0.15e-3,
                                                z_min=30e-3, z_max=30e-3), 0.0)
    assert tx0[0] + rx0[0, 64] == pytest.approx(2 * 30e-3 / C, rel=1e-12)  # element 64 at +0.15 mm


def test_sparse_operator_equals_numpy_baseline(scene) -> None:
    model, rf = scene
    grid = PixelGrid(nx=40, nz=30, z_min=8e-3, z_max=32e-3)
    bf = PlaneWaveBeamformer(model.acquisition, grid, backend="sparse")
    assert bf.backend == "sparse" and bf.operator_bytes > 0
    iq = bf.beamform_iq(rf)
    ref = das_numpy(rf, model.acquisition, grid)
    assert np.linalg.norm(iq - ref) <= 0.15 * np.linalg.norm(ref)  # nearest vs linear taps (≈10 %)
    exact = PlaneWaveBeamformer(model.acquisition, grid, backend="sparse", taps=2).beamform_iq(rf)
    assert np.abs(exact - ref).max() <= 1e-4 * np.abs(ref).max()
    batch = bf.beamform_iq(np.stack([rf, rf]))
    np.testing.assert_allclose(batch[1], iq, rtol=1e-4, atol=1e-3 * np.abs(iq).max())
    # the product split by pixel rows over 2 threads: the same image, single frames and batches
    split = PlaneWaveBeamformer(model.acquisition, grid, backend="sparse", product_threads=2)
    np.testing.assert_array_equal(split.beamform_iq(rf), iq)
    np.testing.assert_array_equal(split.beamform_iq(np.stack([rf, rf])), batch)
    # an ensemble-sized batch (>= 16 frames) takes the parallel numba product where numba imports:
    # every frame equals its single-frame beamforming (frames differ: scaled copies)
    scales = np.arange(1, 17, dtype=np.int16)
    big = bf.beamform_iq(np.stack([(rf // 16) * k for k in scales]))
    for k, img in zip(scales, big):
        one = bf.beamform_iq((rf // 16) * k)
        np.testing.assert_allclose(img, one, rtol=1e-4, atol=1e-4 * np.abs(one).max())
    bmode = bf(rf)
    assert bmode.shape == (30, 40) and bmode.max() == 0 and bmode.min() >= -60


def fwhm(profile: np.ndarray, step: float) -> float:
    half = profile.max() / 2
    above = np.nonzero(profile >= half)[0]
    i0, i1 = above[0], above[-1]
    assert 0 < i0 and i1 < len(profile) - 1, "peak not inside the patch"
    left = i0 - (profile[i0] - half) / (profile[i0] - profile[i0 - 1])
    right = i1 + (profile[i1] - half) / (profile[i1] - profile[i1 + 1])
    return (right - left) * step


def test_wires_where_placed_and_resolution_near_diffraction_limit(scene) -> None:
    model, rf = scene
    acq = model.acquisition
    lam0 = acq.wavelength_m
    bandwidth = acq.probe.fractional_bandwidth * acq.probe.center_frequency_hz
    for x, z in model.truth()["wires"]:
        g = PixelGrid(nx=61, nz=61, x_min=x - 1.5e-3, x_max=x + 1.5e-3,
                      z_min=z - 0.75e-3, z_max=z + 0.75e-3)
        env = np.abs(PlaneWaveBeamformer(acq, g, backend="sparse").beamform_iq(rf))
        iz, ix = np.unravel_index(np.argmax(env), env.shape)
        assert np.hypot(g.x[ix] - x, g.z[iz] - z) < lam0, (x, z)
        lam_c = C / float(model.center_frequency_at(z))
        aperture = min(z / 1.5, acq.probe.aperture_m)
        lat_lim = 0.886 * lam_c * z / aperture
        ax_lim = 0.441 * C / bandwidth
        lat = fwhm(env[iz, :], g.x[1] - g.x[0])
        ax = fwhm(env[:, ix], g.z[1] - g.z[0])
        assert lat < 1.5 * lat_lim, (x, z, lat, lat_lim)
        assert ax < 1.5 * ax_lim, (x, z, ax, ax_lim)
        assert lat > 0.5 * lat_lim and ax > 0.5 * ax_lim  # not an artefact of sampling


def test_anechoic_cyst_contrast(scene) -> None:
    model, rf = scene
    cx, cz, r, db = model.truth()["cysts"][1]  # anechoic, (5 mm, 25 mm), r 2.5 mm
    assert np.isneginf(db)
    g = PixelGrid(nx=64, nz=64, x_min=cx - 2.2 * r, x_max=cx + 2.2 * r,
                  z_min=cz - 2.2 * r, z_max=cz + 2.2 * r)
    env = np.abs(PlaneWaveBeamformer(model.acquisition, g, backend="sparse").beamform_iq(rf))
    zz, xx = np.meshgrid(g.z, g.x, indexing="ij")
    d = np.hypot(xx - cx, zz - cz)
    contrast = 20 * np.log10(env[d < 0.7 * r].mean() / env[(d > 1.3 * r) & (d < 2 * r)].mean())
    assert contrast < -20.0
    hx, hz, hr, hdb = model.truth()["cysts"][2]  # +10 dB hyperechoic
    g2 = PixelGrid(nx=48, nz=48, x_min=hx - 2.2 * hr, x_max=hx + 2.2 * hr,
                   z_min=hz - 2.2 * hr, z_max=hz + 2.2 * hr)
    env2 = np.abs(PlaneWaveBeamformer(model.acquisition, g2, backend="sparse").beamform_iq(rf))
    zz, xx = np.meshgrid(g2.z, g2.x, indexing="ij")
    d = np.hypot(xx - hx, zz - hz)
    hyper = 20 * np.log10(env2[d < 0.7 * hr].mean() / env2[(d > 1.3 * hr) & (d < 2 * hr)].mean())
    assert 5.0 < hyper < 15.0


def test_geometry_change_rebuilds_operator(scene) -> None:
    model, rf = scene
    bf = PlaneWaveBeamformer(model.acquisition, PixelGrid(nx=16, nz=16), backend="sparse")
    small = PixelGrid(nx=8, nz=12)
    bf.set_geometry(grid=small)
    assert bf(rf).shape == (12, 8)
    one = PlaneWaveAcquisition(angles_deg=(0.0,))
    bf.set_geometry(acquisition=one)
    assert bf(rf[2:3]).shape == (12, 8)
    with pytest.raises(ValueError):
        bf(rf)  # 5-angle frame no longer matches


@pytest.mark.parametrize("n_samples", [2048, 1000])  # 1000: a last sample tile shorter than the others
def test_numba_demodulation_equals_the_numpy_reference(n_samples: int) -> None:
    """The fused numba demodulation (one frame, and a batch) gives the numpy reference's IQ columns.
    Not compared: the first and last two samples of each line, where the kernels pad the 5-tap
    filter with zeros once and the reference pads each of its two 3-tap passes."""
    from medacq.daemon.recon.algorithms.beamform import iq_demodulate, numba_available

    if not numba_available():
        pytest.skip("numba is not installed: the numpy path is the only one")
    acq = PlaneWaveAcquisition.with_angles(3).model_copy(update={"n_samples": n_samples})
    rng = np.random.default_rng(7)
    rf = rng.integers(-3000, 3000, (5, *acq.rf_shape), dtype=np.int16)
    ref = iq_demodulate(rf, acq).transpose(1, 3, 2, 0).reshape(-1, 5)  # (A·S·E, frames)
    bf = PlaneWaveBeamformer.__new__(PlaneWaveBeamformer)  # only the demodulation, no operator
    bf.threads = 1
    a, e = acq.rf_shape[0], acq.rf_shape[1]
    inner = np.zeros((a, n_samples, e), bool)
    inner[:, 2:-2, :] = True
    inner = inner.reshape(-1)
    for frames in (rf[:1], rf[:2]):  # one frame; two, frame by frame
        got = bf._iq_columns(frames, acq)
        np.testing.assert_allclose(got[inner], ref[inner, : len(frames)], rtol=1e-5, atol=1e-2)
        assert np.abs(got[~inner]).max() > 0  # the edges are written too
