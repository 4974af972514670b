"""MRI reconstruction: orientation and FOV, RSS vs adaptive combination, homodyne partial
Fourier -- on k-space sampled from the phantom's closed form, and on a partial-Fourier scan."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.daemon.recon.algorithms.mri import CartesianKspace, adaptive_combine, centred_ifft2, homodyne, rss
from medacq.daemon.recon.modalities.mri import MriReconstructor
from medacq.drivers._base import Frame
from medacq.drivers.mri import MriDriver, MriSettings
from medacq.protocols.models.mri_phantom import MRSheppLogan, spoiled_gre_signal
from medacq.protocols.stream import StreamDescriptor
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.mri import make
from medacq.simulators.mri_model import SpinPhantomModel

N, FOV = 96, 0.2


def _nrmse(img, truth):
    a = (img * truth).sum() / (truth ** 2).sum()
    return float(np.linalg.norm(img / a - truth) / np.linalg.norm(truth))


@pytest.fixture(scope="module")
def kspace():
    m = SpinPhantomModel()
    ph = m.phantom
    k = (np.arange(N) - N / 2) / FOV
    kx, ky = (a.ravel() for a in np.meshgrid(k, k))
    w = ph.deltas(ph.m0)
    f0 = (ph.ellipse_ft(kx, ky) * w).sum(1)
    f1 = (ph.ellipse_ft(kx - m.coil_q[0], ky) * w).sum(1)
    K = np.stack([(m.coil_coef[c, 0] * f0 + m.coil_coef[c, 1] * f1).reshape(N, N) for c in range(2)])
    return K, ph.image(ph.m0, N, FOV)


def test_orientation_fov_and_combinations(kspace):
    K, truth = kspace
    img = rss(centred_ifft2(K)) * N * N / FOV ** 2  # pixel values in M0 units
    assert _nrmse(img, truth) < 0.08
    d = FOV / N
    # the larger ventricle (x = -22 mm) is on the left: column < N/2; white matter above centre
    ph = MRSheppLogan()
    row, col = int(round(ph.yc[4] / d + N / 2)), int(round(ph.xc[4] / d + N / 2))
    assert col < N // 2 and img[row, col] == pytest.approx(ph.m0[4], abs=0.08)
    assert img[int(round(0.035 / d + N / 2)), N // 2] == pytest.approx(ph.m0[6], abs=0.08)
    ad = adaptive_combine(centred_ifft2(K))
    assert _nrmse(ad, truth) < 0.08
    assert np.corrcoef(ad.ravel(), img.ravel())[0, 1] > 0.999  # |c0|²+|c1|² = 1: both give the object


@pytest.mark.parametrize("fraction", [0.75, 0.625])
def test_homodyne_beats_zero_filling(kspace, fraction):
    K, truth = kspace
    na = int(np.ceil(N * fraction))
    Kp = K.copy()
    Kp[:, na:] = 0
    hd = np.sqrt((homodyne(Kp, na).clip(min=0) ** 2).sum(0))
    zf = rss(centred_ifft2(Kp))
    assert _nrmse(hd, truth) < 0.06 and _nrmse(hd, truth) < _nrmse(zf, truth)
    if fraction < 0.7:  # zero filling blurs along y: twice the error of the full image
        assert _nrmse(zf, truth) > 1.5 * _nrmse(hd, truth)
    with pytest.raises(ValueError, match="more than half"):
        homodyne(Kp, N // 2)


def test_partial_fourier_scan_through_driver_and_reconstructor():
    n = 48
    with SimulatorServer(make(), "tcp", paced=False) as srv:
        d = MriDriver("mri0", srv.tcp_address, MriSettings.model_validate(
            {"sequence": {"sequence": "gre", "matrix": n, "te_ms": 5, "tr_ms": 40, "flip_deg": 30,
                          "partial_fourier": 0.625},
             "repetitions": 1, "dummy_scans": 4, "lines_per_run": 6}))
        d.open()
        d.start()
        frames: list = []
        deadline = time.monotonic() + 20
        while len(frames) < 30 and time.monotonic() < deadline:
            frames += [f for f in d.read(0.5) if isinstance(f, Frame)]
        desc = d.descriptor()
        d.close()
    assert desc.geometry["phase_lines"] == 30 and len(frames) == 30 and frames[-1].meta["last"]
    rec = MriReconstructor(desc, {"combine": "adaptive", "kspace_view": False})
    out = None
    for f in frames:
        out = rec.process({"meta": f.meta}, f.data)
    assert out is not None
    (o,) = out
    assert o.meta["complete"] and o.meta["lines_filled"] == 30 and o.data.shape == (n, n)
    assert o.descriptor_meta["geometry"]["pixel_spacing_m"] == [0.2 / n, 0.2 / n]
    ks = CartesianKspace(2, n, n)
    for f in frames:
        ks.add(f.meta["line"], f.data)
    zero_filled = ks.image()
    ph = MRSheppLogan()
    truth = ph.image(spoiled_gre_signal(ph.m0, ph.t1, ph.t2, 5e-3, 40e-3, 30), n, 0.2)
    # homodyne's image is sharper along y than zero filling: closer to the (any-contrast) edges
    gy = lambda im: np.abs(np.diff(im / im.max(), axis=0)).sum()  # noqa: E731
    assert gy(o.data) > 1.1 * gy(zero_filled)
    assert np.corrcoef(o.data.ravel(), truth.ravel())[0, 1] > 0.85
