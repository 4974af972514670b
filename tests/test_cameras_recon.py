"""Camera reconstruction against the simulator's truth: temperatures, colours, geometry.

Frames come from the simulator through the ``gige`` driver over UDP, so the calibration the
reconstructors use is the one the driver read from the camera's registers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.daemon.recon.algorithms.cameras import (
    HAVE_NUMBA, counts_to_celsius, delta_e2000, demosaic_rggb, fit_color_matrix, gather_rggb_luts, undistort_maps,
)
from medacq.daemon.recon.modalities.cameras import EndoscopeReconstructor, PhotoReconstructor, ThermalReconstructor
from medacq.protocols.stream import StreamDescriptor
from medacq.drivers._base import Frame
from medacq.drivers.gige import GigEDriver, GigESettings
from medacq.protocols.models.cameras import colorchecker_srgb, srgb_to_lab
from medacq.simulators.gige_camera import GigEVisionServer, make


def _grab(opts: dict, n: int, settings: GigESettings | None = None, trigger: bool = False):
    dev = make(**opts)
    with GigEVisionServer(dev, "127.0.0.1", 0, link_MBps=0) as srv:
        d = GigEDriver("cam", srv.address, settings or GigESettings())
        d.open()
        try:
            desc = d.descriptor()
            d.start()
            frames: list[Frame] = []
            for _ in range(n if trigger else 0):
                d.trigger()
            t0 = time.monotonic()
            while len(frames) < n and time.monotonic() - t0 < 20:
                frames += [f for f in d.read(0.5) if isinstance(f, Frame)]
            d.stop()
        finally:
            d.close()
    return dev, desc, frames


def test_thermal_counts_to_celsius_with_blackbody_drift_correction():
    # a camera whose radiometry drifted by 1.5 K since calibration, with NETD 50 mK
    dev, desc, frames = _grab({"model": "thermal", "drift0_k": 1.5, "drift_k_per_min": 0.0}, 20,
                              GigESettings(frame_rate_hz=30))
    truth = dev.model.truth()
    rec = ThermalReconstructor(desc, {"drift_tau_frames": 5})
    uncorrected = counts_to_celsius(frames[-1].data, desc.geometry["radiometry"])
    y0, x0, y1, x1 = truth["rois"]["blackbody"]
    assert float(np.median(uncorrected[y0:y1, x0:x1])) - truth["blackbody_c"] == pytest.approx(1.5, abs=0.1)
    for f in frames:
        outs = rec.process({}, f.data)
    temp, screening = outs[0].data, outs[1]
    assert temp.dtype == np.float32 and temp.shape == (480, 640) and outs[0].units == "degC"
    assert abs(screening.meta["blackbody_c"] - truth["blackbody_c"]) < 0.1
    assert abs(screening.meta["canthus_max_c"] - truth["canthus_max_c"]) < 0.3
    assert screening.meta["drift_offset_k"] == pytest.approx(1.5, abs=0.1)
    assert screening.meta["fever"] is False
    # a background pixel region (ambient 22 C) far from the person
    assert float(np.median(temp[400:470, 10:60])) == pytest.approx(22.0, abs=0.3)
    assert outs[2].data.shape == (480, 640, 3) and outs[2].data.dtype == np.uint8


def test_thermal_fever_case_and_temperature_linear_mode():
    dev, desc, frames = _grab({"model": "thermal", "fever": True, "linear": True}, 6, GigESettings(frame_rate_hz=30))
    assert desc.geometry["radiometry"]["linear"] is True and desc.scale == 0.01
    rec = ThermalReconstructor(desc, {"drift_tau_frames": 2})
    for f in frames:
        outs = rec.process({}, f.data)
    meta = outs[1].meta
    assert meta["fever"] is True
    assert abs(meta["canthus_max_c"] - dev.model.truth()["canthus_max_c"]) < 0.3
    assert dev.model.truth()["canthus_max_c"] == pytest.approx(38.6)


def test_photo_chart_calibration_delta_e_against_the_known_chart():
    dev, desc, frames = _grab({"model": "photo", "width": 2000, "height": 1500}, 1,
                              GigESettings(trigger="software"), trigger=True)
    assert len(frames) == 1
    rec = PhotoReconstructor(desc)
    outs = rec.process({}, frames[0].data)
    chart = next(o for o in outs if o.name == "chart")
    assert chart.data.shape == (24,)
    assert chart.meta["deltaE_mean"] <= 2.0, chart.meta
    # the fitted matrix undoes the sensor's cross-talk and illuminant (up to exposure)
    m = np.array(chart.meta["matrix"])
    sensor = np.diag(dev.model.ILLUMINANT) @ dev.model.CROSSTALK * dev.model.exposure_scale
    assert np.allclose(m @ sensor, np.eye(3), atol=0.05)
    # without calibration the colours are far off: the fit is what brings ΔE down
    _, de_id, rgb = rec.calibrate(frames[0].data)
    from medacq.daemon.recon.algorithms.cameras import chart_patch_means
    raw_cam = chart_patch_means(rgb, rec.chart)
    from medacq.protocols.models.cameras import linear_srgb_to_xyz, xyz_to_lab
    de_raw = delta_e2000(xyz_to_lab(linear_srgb_to_xyz(raw_cam)), srgb_to_lab(colorchecker_srgb()))
    assert de_raw.mean() > 5 * chart.meta["deltaE_mean"]
    img = outs[0].data
    assert img.shape == (750, 1000, 3) and img.dtype == np.uint8


def test_endoscope_demosaic_white_balance_and_distortion():
    dev, desc, frames = _grab({"model": "endoscope", "width": 640, "height": 480, "loop_frames": 12}, 3,
                              GigESettings(frame_rate_hz=30))
    rec = EndoscopeReconstructor(desc)
    for f in frames:
        (out,) = rec.process({}, f.data)
    assert out.data.shape == (240, 320, 3) and out.data.dtype == np.uint8  # superpixel: half resolution
    assert type(rec).qos.policy == "latest"
    cast = np.array(dev.model.truth()["cast_rgb"])

    def highlight_tint(img: np.ndarray) -> np.ndarray:
        """Mean R-G and B-G (8-bit sRGB) over the specular highlights (white in the scene)."""
        px = img.reshape(-1, 3).astype(float)
        sel = px[px[:, 1] >= px[:, 1].max() - 4]
        assert len(sel) > 20
        return (sel[:, [0, 2]] - sel[:, [1]]).mean(0)

    # white balance with the gains that undo the optics' colour cast: highlights come out white
    fixed = EndoscopeReconstructor(desc, {"white_balance": "fixed", "wb_gains": list(1 / cast)})
    (out_fixed,) = fixed.process({}, frames[-1].data)
    assert np.all(np.abs(highlight_tint(out_fixed.data)) < 6)
    # without white balance they do not
    raw = EndoscopeReconstructor(desc, {"white_balance": "fixed"})
    (out_raw,) = raw.process({}, frames[-1].data)
    assert np.all(highlight_tint(out_raw.data) < -10)
    # full-resolution bilinear demosaic: same colours
    full = EndoscopeReconstructor(desc, {"white_balance": "fixed", "wb_gains": list(1 / cast), "demosaic": "bilinear"})
    (out_full,) = full.process({}, frames[-1].data)
    assert out_full.data.shape == (480, 640, 3) and np.all(np.abs(highlight_tint(out_full.data)) < 6)


@pytest.mark.parametrize("settings", [{}, {"white_balance": "fixed", "wb_gains": [1.3, 1.0, 0.7]}, {"downsample": 2},
                                      {"distortion_k1": 0.0}])
def test_endoscope_fast_path_is_the_float_pipeline_to_the_bit(settings):
    """The look-up-table path (superpixel, identity colour matrix: the default) gives exactly the
    float pipeline's pixels, white-balance gains included, frame after frame, 8 and 12 bit."""
    rng = np.random.default_rng(3)
    for dtype, bits in ((np.uint8, 8), (np.uint16, 12)):
        desc = StreamDescriptor(stream="endo0", modality="endoscope", dtype=np.dtype(dtype).str, shape=[96, 128],
                                axes=["y", "x"], geometry={"bits": bits})
        fast, ref = EndoscopeReconstructor(desc, settings), EndoscopeReconstructor(desc, settings)
        assert fast._fast is not None
        for _ in range(4):
            raw = rng.integers(0, 1 << bits, (96, 128)).astype(dtype)
            (a,) = fast.process({}, raw)
            (b,) = ref._process_float(ref.settings, raw)
            np.testing.assert_array_equal(a.data, b.data)
            assert a.meta == b.meta
    # a colour matrix other than identity takes the float pipeline
    assert EndoscopeReconstructor(desc, {"color_matrix": [[1.1, 0, 0], [0, 1, 0], [0, 0, 0.9]]})._fast is None


@pytest.mark.parametrize("use_numba", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAVE_NUMBA, reason="numba not installed (the optional [accel] kernels)"))])
def test_gather_rggb_luts_matches_the_cells_through_the_tables(use_numba):
    """The endoscope fast path's one-pass gather (compiled and numpy): each output pixel is its
    RGGB cell's R, G1 + G2 and B, clamped to ``top``, through the three tables."""
    rng = np.random.default_rng(5)
    for dtype, top in ((np.uint8, 255), (np.uint16, 4095)):
        raw = rng.integers(0, 65536 if dtype is np.uint16 else 256, (12, 16)).astype(dtype)  # 16-bit: > top too
        cy, cx = rng.integers(0, 6, (5, 7)), rng.integers(0, 8, (5, 7))
        base = (2 * cy * 16 + 2 * cx).astype(np.int32)
        luts = tuple(rng.integers(0, 256, n).astype(np.uint8) for n in (top + 1, 2 * top + 1, top + 1))
        out = gather_rggb_luts(raw, base, top, luts, use_numba=use_numba)
        c = np.minimum(raw, top).astype(np.int64)
        r, g1, g2, b = c[2 * cy, 2 * cx], c[2 * cy, 2 * cx + 1], c[2 * cy + 1, 2 * cx], c[2 * cy + 1, 2 * cx + 1]
        assert out.shape == (5, 7, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[..., 0], luts[0][r])
        np.testing.assert_array_equal(out[..., 1], luts[1][g1 + g2])
        np.testing.assert_array_equal(out[..., 2], luts[2][b])


def test_demosaic_recovers_a_uniform_colour_and_known_geometry():
    rgb = np.zeros((8, 10, 3), np.float32)
    rgb[:] = [0.2, 0.5, 0.8]
    mosaic = np.empty((8, 10), np.float32)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = 0.2, 0.5
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = 0.5, 0.8
    assert np.allclose(demosaic_rggb(mosaic), rgb, atol=1e-6)
    iy, ix = undistort_maps(9, 11, 0.0)
    assert np.array_equal(iy[:, 0], np.arange(9)) and np.array_equal(ix[0], np.arange(11))
    iy, ix = undistort_maps(101, 101, -0.12)
    assert (iy[50, 50], ix[50, 50]) == (50, 50) and ix[50, 100] > 100 - 1 and ix[50, 90] > 90  # barrel: pulled out


def test_delta_e2000_reference_pairs():
    # Sharma, Wu & Dalal (2005) test data, pairs 1, 7 and 17
    lab1 = np.array([[50.0, 2.6772, -79.7751], [50.0, 0.0, 0.0], [50.0, 2.5, 0.0]])
    lab2 = np.array([[50.0, 0.0, -82.7485], [50.0, -1.0, 2.0], [73.0, 25.0, -18.0]])
    assert np.allclose(delta_e2000(lab1, lab2), [2.0425, 2.3669, 27.1492], atol=1e-4)
    m = fit_color_matrix(np.eye(3) * 2, np.eye(3))
    assert np.allclose(m, np.eye(3) / 2)


def test_endoscope_frame_of_another_shape_never_reaches_the_compiled_gather(monkeypatch):
    """The gather's indices are made for the descriptor's shape and the kernel checks no bounds: a
    frame with fewer rows than declared takes the float pipeline (an image of its own size or a
    clean numpy error), never the gather."""
    import medacq.daemon.recon.modalities.cameras as cams

    desc = StreamDescriptor(stream="endo0", modality="endoscope", dtype="|u1", shape=[96, 128], axes=["y", "x"],
                            geometry={"bits": 8})
    rec = EndoscopeReconstructor(desc)
    real, calls = cams.gather_rggb_luts, []

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(cams, "gather_rggb_luts", spy)
    try:
        rec.process({}, np.zeros((40, 128), np.uint8))
    except (IndexError, ValueError):
        pass
    assert calls == []
    (ok,) = rec.process({}, np.full((96, 128), 7, np.uint8))
    assert ok.data.shape == (48, 64, 3) and calls == [(96, 128)]
