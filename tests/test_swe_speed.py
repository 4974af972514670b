"""The SWE chain's cost cuts keep its values: the cumulative displacement's per-frame adds, the
batched beamformer's IQ columns kept between calls, and the beside-B-mode bench's us0 stream."""

from __future__ import annotations

import numpy as np

from medacq.daemon.recon.algorithms import elastography as el
from medacq.daemon.recon.algorithms.beamform import PlaneWaveBeamformer
from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition


def test_cumulative_displacement_is_numpys_cumsum_exactly():
    rng = np.random.default_rng(5)
    vel = rng.standard_normal((37, 11, 9)).astype(np.float32)
    disp = el.cumulative_displacement(vel)
    ref = np.concatenate([np.zeros_like(vel[:1]), np.cumsum(vel, axis=0)], axis=0)
    assert disp.shape == (38, 11, 9) and disp.dtype == np.float32
    np.testing.assert_array_equal(disp, ref)
    assert np.all(disp[0] == 0)
    np.testing.assert_array_equal(el.cumulative_displacement(vel[:1]), ref[:2])


def test_batched_columns_kept_between_calls_do_not_leak_into_results():
    acq = PlaneWaveAcquisition(angles_deg=(0.0,), n_samples=256)
    grid = PixelGrid(nx=12, nz=10, x_min=-4e-3, x_max=4e-3, z_min=3e-3, z_max=6e-3)
    bf = PlaneWaveBeamformer(acq, grid, backend="sparse", taps=1, threads=1)
    fresh = PlaneWaveBeamformer(acq, grid, backend="sparse", taps=1, threads=1)
    rng = np.random.default_rng(9)
    a = rng.integers(-3000, 3000, (20, *acq.rf_shape), dtype=np.int16)
    b = rng.integers(-3000, 3000, (20, *acq.rf_shape), dtype=np.int16)
    c = rng.integers(-3000, 3000, (24, *acq.rf_shape), dtype=np.int16)  # another batch size
    ia = bf.beamform_iq(a).copy()
    ib = bf.beamform_iq(b)
    ic = bf.beamform_iq(c)
    assert ia.shape == (20, 10, 12) and ic.shape == (24, 10, 12)
    np.testing.assert_array_equal(ia, fresh.beamform_iq(a))
    np.testing.assert_array_equal(ib, fresh.beamform_iq(b))
    np.testing.assert_array_equal(ic, fresh.beamform_iq(c))
    assert not np.allclose(ia, ib)
    np.testing.assert_array_equal(bf.beamform_iq(a), ia)  # the same batch again: the same image
    # frame by frame (the unbatched kernel) agrees with the batch
    np.testing.assert_allclose(np.stack([bf.beamform_iq(f) for f in a[:3]]), ia[:3], rtol=1e-4, atol=1e-3)


def test_bench_bmode_stream_is_the_default_rigs_us0():
    from medacq.daemon.bench.elastography import _bmode_frames
    from medacq.protocols.stream import StreamDescriptor

    desc, frames = _bmode_frames()
    d = StreamDescriptor.model_validate(desc)
    assert d.stream == "us0" and d.modality == "us" and d.shape == [3, 128, 2048]
    acq = PlaneWaveAcquisition.from_descriptor(d.geometry["acquisition"])
    assert acq.rf_shape == (3, 128, 2048) and acq.prf_hz == 60.0
    assert len(frames) == 4 and all(f.shape == (3, 128, 2048) and f.dtype == np.int16 for _, f in frames)
    assert np.abs(frames[0][1]).max() > 100  # echoes, not an empty frame
