"""EIT geometry, patterns and FEM: counts, mesh sanity, Jacobian vs pyEIT and finite differences."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.protocols.models import eit_fem as em
from medacq.protocols.openeit import MEASUREMENTS_PER_FRAME


@pytest.fixture(scope="module")
def mesh() -> em.EitMesh:
    return em.thorax_mesh(16, 3000)


def test_pattern_sizes() -> None:
    assert em.adjacent_pattern(16).n_total == 208
    assert em.adjacent_pattern(16).meas_mat.shape == (16, 13, 2)
    assert em.adjacent_pattern(32).n_total == 32 * 29
    for n_el, n in MEASUREMENTS_PER_FRAME.items():
        assert em.opposition_pattern(n_el).n_total == n
    pat = em.adjacent_pattern(16)
    for (a, b), rows in zip(pat.ex_mat, pat.meas_mat):
        assert b == (a + 1) % 16
        assert not set(rows.ravel()) & {a, b}
        assert np.all((rows[:, 0] - rows[:, 1]) % 16 == 1)


def test_pattern_matches_pyeit() -> None:
    import pyeit.eit.protocol as protocol

    for n_el, dist in ((16, 1), (16, 8), (8, 4)):
        ref = protocol.create(n_el, dist, 1, "std")
        mine = em.make_pattern(n_el, dist, 1)
        np.testing.assert_array_equal(mine.ex_mat, ref.ex_mat)
        np.testing.assert_array_equal(mine.meas_mat, ref.meas_mat)


def test_mesh_sanity(mesh: em.EitMesh) -> None:
    assert 2700 <= mesh.n_elements <= 3300
    assert np.all(mesh.areas > 0)
    assert abs(mesh.areas.sum() - np.pi * 0.72 * 1.0) < 0.1  # ellipse minus the spine notch
    # every node is used, electrode nodes lie on the outline, electrode 0 on the anterior midline
    assert len(np.unique(mesh.elements)) == mesh.n_nodes
    p = mesh.nodes[mesh.el_pos]
    r_out = mesh.shape.radius(np.arctan2(p[:, 1], p[:, 0]))
    np.testing.assert_allclose(np.hypot(p[:, 0], p[:, 1]), r_out, atol=5e-3)
    assert abs(p[0, 0]) < 1e-6 and p[0, 1] > 0.7
    assert np.all(np.diff(np.unwrap(np.arctan2(p[:, 1], p[:, 0]))) > 0)  # counter-clockwise
    assert mesh.ref_node not in set(mesh.el_pos.tolist())
    assert all(len(e) >= 2 for e in mesh.el_edges)
    # deterministic
    assert em.thorax_mesh(16, 3000).digest() == mesh.digest()


def test_jacobian_equals_pyeit(mesh: em.EitMesh) -> None:
    from pyeit.eit.fem import EITForward
    import pyeit.eit.protocol as protocol
    from pyeit.mesh import PyEITMesh

    pat = em.adjacent_pattern(16)
    J, v0 = em.Forward(mesh).jacobian(pat)
    pm = PyEITMesh(element=mesh.elements, node=mesh.nodes, el_pos=mesh.el_pos, ref_node=mesh.ref_node)
    Jp, v0p = EITForward(pm, protocol.create(16, 1, 1, "std")).compute_jac()
    assert np.abs(J - Jp).max() <= 1e-9 * np.abs(Jp).max()
    np.testing.assert_allclose(v0, v0p, rtol=1e-9, atol=1e-12)


def test_jacobian_finite_difference(mesh: em.EitMesh) -> None:
    fwd = em.Forward(mesh)
    pat = em.adjacent_pattern(16)
    J, v0 = fwd.jacobian(pat)
    sigma = np.ones(mesh.n_elements)
    for e in (10, mesh.n_elements // 2, mesh.n_elements - 7):
        s = sigma.copy()
        s[e] += 1e-4
        dv = fwd.measurements(fwd.forward_point(s), pat) - v0
        # pyEIT sign convention: dv ≈ -J dσ
        np.testing.assert_allclose(dv, -J[:, e] * 1e-4, rtol=2e-3, atol=1e-10)


def test_cem_reciprocity_and_agreement(mesh: em.EitMesh) -> None:
    fwd = em.Forward(mesh)
    sigma = np.ones(mesh.n_elements)
    sigma[np.hypot(*(mesh.centres - [0.3, 0.1]).T) < 0.2] = 3.0
    T = fwd.forward_cem(sigma, 0.02)
    np.testing.assert_allclose(T, T.T, atol=1e-9 * np.abs(T).max())  # reciprocity
    pat = em.adjacent_pattern(16)
    v_cem = fwd.measurements(T, pat)
    v_pem = fwd.measurements(fwd.forward_point(sigma), pat)
    assert np.corrcoef(v_cem, v_pem)[0, 1] > 0.99
    # conductivity doubled everywhere halves every voltage
    np.testing.assert_allclose(fwd.measurements(fwd.forward_cem(2 * sigma, 0.01), pat), v_cem / 2, rtol=1e-8, atol=1e-12)


def test_locate_points(mesh: em.EitMesh) -> None:
    c = mesh.centres[::97]
    np.testing.assert_array_equal(em.locate_points(mesh, c), np.arange(mesh.n_elements)[::97])
    assert em.locate_points(mesh, np.array([[0.0, 0.99], [1.2, 0.0]])).tolist() == [-1, -1]


def test_setup_time_budget() -> None:
    t0 = time.perf_counter()
    m = em.thorax_mesh(16, 3000)
    em.Forward(m).jacobian(em.adjacent_pattern(16))
    assert time.perf_counter() - t0 < 1.0
