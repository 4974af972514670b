"""EIT reconstruction: Woodbury H, pyEIT agreement, inclusion localisation, breathing rate, cache."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.daemon.recon.algorithms import eit as rc
from medacq.protocols.models import eit_fem as em
from medacq.simulators.eit_phantom import ThoraxPhantom


@pytest.fixture(scope="module")
def recon() -> rc.EitReconstructor:
    return rc.EitReconstructor.for_thorax(16, 3000)


@pytest.fixture(scope="module")
def still_phantom() -> ThoraxPhantom:
    return ThoraxPhantom(n_el=16, seed=3, breathing_amplitude=0.0, cardiac_amplitude=0.0, snr_db=60.0)


@pytest.mark.parametrize("prior", ["kotre", "lm", "identity"])
def test_woodbury_equals_direct(prior: str) -> None:
    rng = np.random.default_rng(0)
    J = rng.normal(size=(40, 120))
    lamb, p = 1e-2, 0.3
    jtj = J.T @ J
    d = np.diag(jtj)
    R = np.diag({"kotre": d**p, "lm": d, "identity": np.ones_like(d)}[prior])
    direct = np.linalg.solve(jtj + lamb * R, J.T)
    H = rc.compute_h(J, lamb, prior, p)
    assert np.abs(H - direct).max() <= 1e-8 * np.abs(direct).max()


def test_correlates_with_pyeit_jac() -> None:
    from pyeit.eit.jac import JAC
    import pyeit.eit.protocol as protocol
    from pyeit.mesh import PyEITMesh

    mesh = em.thorax_mesh(16, 3000)
    pat = em.adjacent_pattern(16)
    r = rc.EitReconstructor.from_mesh(mesh, pat)
    ph = ThoraxPhantom(n_el=16, seed=5, breathing_amplitude=0.0, cardiac_amplitude=0.0)
    v_ref = ph.frame(0.0, pat)
    ph.add_inclusion(-0.35, 0.25, 0.15, 2.5)
    v = ph.frame(0.0, pat)
    pm = PyEITMesh(element=mesh.elements, node=mesh.nodes, el_pos=mesh.el_pos, ref_node=mesh.ref_node)
    solver = JAC(pm, protocol.create(16, 1, 1, "std"))
    solver.setup(p=0.2, lamb=1e-3, method="kotre")
    ds_pyeit = solver.solve(v, v_ref, normalize=False)
    ds = r.elements(r.difference(v, v_ref))
    assert np.corrcoef(ds, ds_pyeit)[0, 1] >= 0.99
    # the pixel image is the same solution, interpolated
    P, mask = rc.pixel_interpolation(mesh, 32, 3)
    img = r.image(r.difference(v, v_ref)).ravel()[mask.ravel()]
    assert np.corrcoef(img, (P @ ds_pyeit)[mask.ravel()])[0, 1] >= 0.99


@pytest.mark.parametrize(
    "x,y,radius,contrast",
    [(0.45, 0.2, 0.12, 2.0), (-0.5, -0.25, 0.12, 0.4), (0.0, 0.0, 0.15, 3.0), (0.7, -0.1, 0.1, 3.0)],
)
def test_inclusion_centre_within_10pct(recon, still_phantom, x, y, radius, contrast) -> None:
    ph = still_phantom
    pat = recon.pattern
    ph.clear_inclusions()
    imager = rc.TimeDifferenceImager(recon, n_ref=5)
    for _ in range(5):
        assert imager.push(ph.frame(0.0, pat)) is None
    ph.add_inclusion(x, y, radius, contrast)
    fr = imager.push(ph.frame(0.0, pat))
    ph.clear_inclusions()
    cx, cy = rc.image_centroid(fr.image, sign=1 if contrast > 1 else -1)
    err = np.hypot(cx - x, cy - y) / ph.mesh.domain_radius
    assert err <= 0.10, (cx, cy, err)
    # sign: conductive inclusions lower the global impedance, resistive ones raise it
    assert (fr.global_impedance < 0) == (contrast > 1)


def test_respiratory_rate_recovered(recon) -> None:
    fs, rate = 20.0, 18.0
    ph = ThoraxPhantom(n_el=16, seed=11, respiratory_rate_bpm=rate, heart_rate_bpm=75.0, snr_db=55.0)
    imager = rc.TimeDifferenceImager(recon, n_ref=10)
    est = rc.RespiratoryRateEstimator(fs, window_s=30.0)
    gi, bpm = [], None
    for i in range(int(32 * fs)):
        fr = imager.push(ph.frame(i / fs, recon.pattern))
        if fr is not None:
            gi.append(fr.global_impedance)
            bpm = est.push(fr.global_impedance)
    assert bpm is not None and abs(bpm - rate) < 1.0
    # the curve tracks lung filling: impedance highest at full inspiration
    fill = np.array([ph.lung_fill((i + 10) / fs) for i in range(len(gi))])
    assert np.corrcoef(gi, fill)[0, 1] > 0.9
    assert truth_rate(ph) == rate


def truth_rate(ph: ThoraxPhantom) -> float:
    return ph.truth()["respiratory_rate_bpm"]


def test_rereference(recon, still_phantom) -> None:
    ph = still_phantom
    ph.clear_inclusions()
    pat = recon.pattern
    im = rc.TimeDifferenceImager(recon, n_ref=2)
    im.push(ph.frame(0.0, pat))
    im.push(ph.frame(0.0, pat))
    ph.add_inclusion(0.3, 0.3, 0.15, 2.0)
    with_inc = ph.frame(0.0, pat)
    big = np.abs(im.push(with_inc).image).max()
    im.rereference()
    assert im.push(with_inc) is None and im.push(with_inc) is None
    small = np.abs(im.push(with_inc).image).max()
    ph.clear_inclusions()
    assert small < 0.1 * big


def test_estimate_rate_synthetic() -> None:
    fs = 25.0
    t = np.arange(int(40 * fs)) / fs
    x = np.sin(2 * np.pi * 0.3 * t) + 0.2 * np.sin(2 * np.pi * 1.2 * t) + 0.01 * t
    assert abs(rc.estimate_rate_bpm(x, fs) - 18.0) < 0.3
    assert rc.estimate_rate_bpm(x[:10], fs) is None


def test_cache_hit_skips_setup(tmp_path, monkeypatch) -> None:
    params = rc.ReconParams(lamb=2e-3)
    r1 = rc.EitReconstructor.for_thorax(16, 3000, params=params, cache_dir=tmp_path)
    assert not r1.cache_hit and len(list(tmp_path.glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("setup recomputed on a cache hit")

    monkeypatch.setattr(rc, "thorax_mesh", boom)
    monkeypatch.setattr(rc.EitReconstructor, "build_matrices", staticmethod(boom))
    r2 = rc.EitReconstructor.for_thorax(16, 3000, params=params, cache_dir=tmp_path)
    assert r2.cache_hit and r2.setup_s < r1.setup_s
    np.testing.assert_array_equal(r1.matrix, r2.matrix)
    np.testing.assert_array_equal(r1.mask, r2.mask)
    np.testing.assert_array_equal(r1.pattern.meas_mat, r2.pattern.meas_mat)
    # other parameters are another key: that one must be built (and here, fails)
    with pytest.raises(AssertionError):
        rc.EitReconstructor.for_thorax(16, 3000, params=rc.ReconParams(lamb=5e-3), cache_dir=tmp_path)


def test_openeit_magnitudes_on_same_path() -> None:
    """Opposition pattern, magnitude-only frames (OpenEIT) through the same reconstructor."""
    r = rc.EitReconstructor.for_thorax(16, 3000, pattern="opposition", params=rc.ReconParams(magnitude=True))
    assert r.matrix.shape == (1024, 192)
    ph = ThoraxPhantom(n_el=16, seed=4, breathing_amplitude=0.0, cardiac_amplitude=0.0)
    pat = em.opposition_pattern(16)
    v_ref = np.abs(ph.frame(0.0, pat))
    ph.add_inclusion(-0.4, 0.3, 0.14, 2.5)
    v = np.abs(ph.frame(0.0, pat))
    cx, cy = rc.image_centroid(r.image(r.difference(v, v_ref)), sign=1)
    assert np.hypot(cx + 0.4, cy - 0.3) / ph.mesh.domain_radius <= 0.10


def test_image_layout(recon) -> None:
    assert recon.matrix.dtype == np.float32 and recon.matrix.shape == (1024, 208)
    assert recon.mask.shape == (32, 32) and recon.mask[16, 16] and not recon.mask[0, 0]
    assert np.all(recon.matrix[~recon.mask.ravel()] == 0)
