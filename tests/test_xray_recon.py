"""X-ray reconstruction: flat-field calibration/correction, DSA, streaming FBP vs iradon."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from medacq.daemon.recon.algorithms.xray import DSA, CalibrationCapture, FlatFieldCorrector, StreamingFBP, fbp
from medacq.simulators.xray_model import (
    SHEPP_LOGAN,
    DetectorConfig,
    XrayModel,
    _scaled,
    fan_sinogram,
    parallel_sinogram,
    rasterize_ellipses,
)


@pytest.fixture(scope="module")
def calibrated() -> tuple[XrayModel, FlatFieldCorrector]:
    m = XrayModel(11, DetectorConfig(binning=2))
    cap = CalibrationCapture(meta={"binning": 2})
    for k in range(4):
        cap.add_dark(m.frame(k, "dark"))
        cap.add_flat(m.frame(k, "flat"))
    return m, cap.build()


def test_calibration_finds_every_defect(calibrated) -> None:
    m, ffc = calibrated
    truth = m.defect_mask()
    assert np.all(ffc.defects[truth])  # all dead pixels / lines found
    assert (ffc.defects & ~truth).sum() < 1e-4 * truth.size  # few false positives
    assert ffc.meta == {"binning": 2, "n_dark": 4, "n_flat": 4}


def test_correction_values(calibrated) -> None:
    m, ffc = calibrated
    raw = m.frame(0)
    trans = ffc.correct(raw)
    expected = np.exp(-m.radiograph_line_integral())
    good = ~m.defect_mask()
    err = trans[good] - expected[good]
    # noise: ~sqrt(N)/N with N ~ 3000 photons * 4 (binned) through the object
    assert abs(float(err.mean())) < 2e-3
    assert float(np.abs(err).mean()) < 0.02
    # gain non-uniformity removed: an open-beam frame corrects to ~1 everywhere
    fl = ffc.correct(m.frame(99, "flat"))
    assert abs(float(fl.mean()) - 1) < 1e-3 and float(fl.std()) < 0.02
    # defects are interpolated from neighbours, not left at 0 or inf
    bad = m.defect_mask()
    assert np.all(np.isfinite(trans)) and np.abs(trans[bad] - expected[bad]).mean() < 0.03
    line = ffc.correct(raw, log=True)
    np.testing.assert_allclose(line, -np.log(np.maximum(trans, 1e-6)), rtol=1e-5, atol=1e-6)


def test_calibration_persists(calibrated, tmp_path) -> None:
    _, ffc = calibrated
    p = ffc.save(tmp_path / "cal.npz")
    again = FlatFieldCorrector.load(p)
    assert again.meta == ffc.meta
    np.testing.assert_array_equal(again.defects, ffc.defects)
    raw = np.full(ffc.shape, 3000, dtype=np.uint16)
    np.testing.assert_array_equal(again.correct(raw), ffc.correct(raw))


def test_dsa_shows_only_the_contrast(calibrated) -> None:
    m, ffc = calibrated
    m.configure(mode="FLUORO")
    try:
        dsa = DSA(ffc, auto_mask_frames=3)
        assert all(dsa.process(m.frame(k)) is None for k in range(3))
        sub = dsa.process(m.frame(60))
        truth = m.config.source.mu_scale() * m._vessels(None, None)  # type: ignore[arg-type]
        vessel = truth > 0.2
        assert float(np.median(sub[vessel])) == pytest.approx(float(np.median(truth[vessel])), rel=0.15)
        assert abs(float(np.median(sub[truth == 0]))) < 0.005
        assert np.corrcoef(sub.ravel(), truth.ravel())[0, 1] > 0.8
    finally:
        m.configure(mode="RAD")


def _phantom(n: int):
    e = _scaled(SHEPP_LOGAN, 0.45 * n)
    return e, rasterize_ellipses(e, n)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_fbp_accuracy_and_speed_vs_iradon() -> None:
    from skimage.transform import iradon

    n = 512
    e, truth = _phantom(n)
    theta = np.arange(720) * math.pi / 720
    sino = parallel_sinogram(e, n, theta)
    fbp(sino[:, :64], theta[:64])  # compile / warm up
    t = time.perf_counter()
    rec = fbp(sino, theta, output_size=n)
    t_fbp = time.perf_counter() - t
    t = time.perf_counter()
    ref = iradon(sino, np.rad2deg(theta), output_size=n, circle=True)
    t_iradon = time.perf_counter() - t
    assert rmse(rec, truth) <= rmse(ref, truth) * 1.001
    assert rmse(rec, truth) < 0.02
    # the ≥ 4× bar is for the benchmark; on a shared CI machine only require a clear win
    assert t_fbp * 2 < t_iradon, (t_fbp, t_iradon)


def test_streaming_preview_and_rotations() -> None:
    n = 128
    e, truth = _phantom(n)
    theta = np.arange(180) * math.pi / 180
    sino = parallel_sinogram(e, n, theta)
    rec = StreamingFBP(n, 180, output_size=n, batch=16)
    outs = [rec.push(sino[:, k]) for k in range(180)]
    assert all(o is None for o in outs[:-1]) and outs[-1] is not None
    full = outs[-1]
    assert rmse(full, truth) < 0.03
    # second rotation: preview at half way resembles the object, complete slice matches
    for k in range(90):
        rec.push(sino[:, k])
    prev = rec.preview()
    assert rec.n_seen == 90 and rec.rotations == 1
    assert np.corrcoef(prev.ravel(), truth.ravel())[0, 1] > 0.6
    for k in range(90, 179):
        assert rec.push(sino[:, k]) is None
    np.testing.assert_allclose(rec.push(sino[:, 179]), full, atol=1e-9)


def test_numpy_fallback_matches_numba() -> None:
    n = 96
    e, _ = _phantom(n)
    theta = np.arange(60) * math.pi / 60
    sino = parallel_sinogram(e, n, theta)
    a = fbp(sino, theta, backend="numba")
    b = fbp(sino, theta, backend="numpy")
    np.testing.assert_allclose(a, b, atol=1e-6 * np.abs(a).max())
    sid = 300.0
    beta = np.arange(90) * 2 * math.pi / 90
    fs = fan_sinogram(e, 2 * n, beta, 1.2, sid, 1.5 * sid)
    kw = dict(output_size=n, geometry="fan", sid=sid, det_spacing=0.8)
    np.testing.assert_allclose(
        fbp(fs, beta, backend="numba", **kw), fbp(fs, beta, backend="numpy", **kw), atol=1e-6
    )


def test_fan_beam_weighted_fbp() -> None:
    n = 256
    e, truth = _phantom(n)
    sid, sdd, du = 500.0, 750.0, 1.5  # 1.0 px at the isocentre
    beta = np.arange(720) * 2 * math.pi / 720
    fs = fan_sinogram(e, 450, beta, du, sid, sdd)
    rec = fbp(fs, beta, output_size=n, geometry="fan", sid=sid, det_spacing=du * sid / sdd)
    theta = np.arange(360) * math.pi / 360
    par = fbp(parallel_sinogram(e, n, theta), theta, output_size=n)
    assert rmse(rec, truth) < 1.15 * rmse(par, truth)
    assert rec[n // 2, n // 2] == pytest.approx(truth[n // 2, n // 2], abs=0.02)
