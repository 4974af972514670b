"""Shared EIT geometry and physics: thorax mesh, electrodes, FEM, Jacobian (patterns: :mod:`medacq.protocols.eit_pattern`).

Pure numpy/scipy (no pyEIT at run time); used by both the simulator and the
reconstruction. Conventions:

* Lengths are in units of the thorax half-width (the domain spans x in [-1, 1]);
  +y is anterior (sternum), -y posterior (spine). ``domain_radius`` is the radius of the
  circle with the same area.
* Electrodes are numbered 0..n_el-1 in the model (the Sciospec wire uses 1-based numbers),
  equally spaced in arc length, counter-clockwise, electrode 0 on the anterior midline.
* Patterns follow pyEIT: ``ex_mat[k] = (a, b)`` drives current into ``a`` and out of
  ``b``; ``meas_mat[k, i] = (n, m)`` measures ``U[n] - U[m]``. Frames are flattened
  excitation-major: index ``k * n_meas + i``.
* Conductivity ``sigma`` is per element, shape ``(n_elements,)``, S/m (or relative).
* Two forward models: the point electrode model (``forward_point``; pyEIT's convention,
  used for the reconstruction Jacobian) and the complete electrode model
  (``forward_cem``; finite electrodes with contact impedance, used by the simulator).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import Delaunay, cKDTree

from medacq.protocols.eit_pattern import (
    Pattern,
    adjacent_pattern,
    make_pattern,
    opposition_pattern,
    potentials_to_measurements,
)

__all__ = [
    "ThoraxShape",
    "EitMesh",
    "Pattern",
    "thorax_mesh",
    "make_pattern",
    "adjacent_pattern",
    "opposition_pattern",
    "potentials_to_measurements",
    "element_stiffness",
    "Forward",
    "locate_points",
]


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True, slots=True)
class ThoraxShape:
    """Star-shaped 2D thorax outline: an ellipse with a posterior spine notch.

    ``r(theta)`` is the boundary radius at polar angle ``theta`` (rad).
    """

    half_width: float = 1.0
    half_depth: float = 0.72
    notch_depth: float = 0.08
    notch_width: float = 0.22  # rad

    def radius(self, theta: np.ndarray) -> np.ndarray:
        a, b = self.half_width, self.half_depth
        r = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
        d = np.angle(np.exp(1j * (theta + np.pi / 2)))  # angular distance from -y axis
        out: np.ndarray = r - self.notch_depth * np.exp(-((d / self.notch_width) ** 2))
        return out

    def contains(self, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """True for points (shape ``(n, 2)``) at least ``margin`` inside the outline (radially)."""
        th = np.arctan2(pts[:, 1], pts[:, 0])
        out: np.ndarray = np.hypot(pts[:, 0], pts[:, 1]) < self.radius(th) - margin
        return out

    def outline(self, n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """Dense outline ``(pts (n, 2), cumulative arc length (n+1,))`` starting at +y, CCW."""
        th = np.pi / 2 + np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        r = self.radius(th)
        pts = np.column_stack([r * np.cos(th), r * np.sin(th)])
        seg = np.hypot(*(np.roll(pts, -1, axis=0) - pts).T)
        return pts, np.concatenate([[0.0], np.cumsum(seg)])

    def key(self) -> str:
        return f"thorax:{self.half_width:.6g}:{self.half_depth:.6g}:{self.notch_depth:.6g}:{self.notch_width:.6g}"


@dataclass(eq=False)
class EitMesh:
    """Triangular mesh with electrodes on its boundary.

    Attributes:
        nodes: ``(n_nodes, 2)`` float64 coordinates.
        elements: ``(n_elements, 3)`` int64 node indices, counter-clockwise.
        el_pos: ``(n_el,)`` node at each electrode centre (point electrode model).
        el_edges: per electrode, ``(k, 2)`` boundary edges (node pairs) under it (CEM).
        ref_node: grounded node (not an electrode node).
        shape: the outline the mesh fills.
    """

    nodes: np.ndarray
    elements: np.ndarray
    el_pos: np.ndarray
    el_edges: list[np.ndarray]
    ref_node: int
    shape: ThoraxShape = field(default_factory=ThoraxShape)

    @property
    def n_el(self) -> int:
        return len(self.el_pos)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def centres(self) -> np.ndarray:
        """Element centroids, ``(n_elements, 2)``."""
        out: np.ndarray = self.nodes[self.elements].mean(axis=1)
        return out

    @property
    def areas(self) -> np.ndarray:
        p = self.nodes[self.elements]
        d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        out: np.ndarray = 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
        return out

    @property
    def domain_radius(self) -> float:
        """Radius of the circle with the mesh's area (same length units as ``nodes``)."""
        return float(np.sqrt(self.areas.sum() / np.pi))

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.nodes, self.elements, self.el_pos, np.array([self.ref_node])):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def thorax_mesh(
    n_el: int = 16,
    n_elements: int = 3000,
    shape: ThoraxShape | None = None,
    electrode_fraction: float = 0.3,
    smooth_iters: int = 4,
) -> EitMesh:
    """Mesh the thorax outline with about ``n_elements`` near-equilateral triangles.

    Boundary nodes are spaced ~h along the outline with extra nodes at every electrode's
    centre and edges; the interior is a hexagonal lattice, Delaunay-triangulated and
    Laplace-smoothed. ``electrode_fraction`` is electrode width / electrode spacing.
    Deterministic: the same arguments give the same mesh.
    """
    shape = shape or ThoraxShape()
    dense, s = shape.outline(4096)
    perim = s[-1]
    area = np.pi * shape.half_width * shape.half_depth
    h = float(np.sqrt(4.0 * area / (np.sqrt(3.0) * n_elements)))

    # boundary arc-length stations: electrode centres/edges + uniform fill
    spacing = perim / n_el
    half_w = 0.5 * electrode_fraction * spacing
    centres = np.arange(n_el) * spacing
    edges_lo, edges_hi = centres - half_w, centres + half_w
    special = np.concatenate([centres, edges_lo, edges_hi]) % perim
    # nodes inside each electrode (so the CEM integrates over several edges)
    n_inner = max(int(np.ceil(2 * half_w / h)), 2)
    inner = (edges_lo[:, None] + np.linspace(0, 2 * half_w, n_inner + 1)[None, 1:-1]) % perim
    fixed = np.unique(np.concatenate([special, inner.ravel()]))
    uni = np.linspace(0.0, perim, int(np.ceil(perim / h)), endpoint=False)
    dist = np.abs(uni[:, None] - fixed[None, :])
    dist = np.minimum(dist, perim - dist).min(axis=1)
    # keep uniform stations away from electrodes and from fixed stations
    on_el = np.abs(((uni[:, None] - centres[None, :] + perim / 2) % perim) - perim / 2).min(axis=1) <= half_w
    stations = np.sort(np.concatenate([fixed, uni[(dist > 0.5 * h) & ~on_el]]))
    bx = np.interp(stations, s, np.append(dense[:, 0], dense[0, 0]))
    by = np.interp(stations, s, np.append(dense[:, 1], dense[0, 1]))
    bnd = np.column_stack([bx, by])
    n_b = len(bnd)

    # interior hexagonal lattice
    xs = np.arange(-shape.half_width, shape.half_width + h, h)
    ys = np.arange(-shape.half_depth, shape.half_depth + h, h * np.sqrt(3) / 2)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * h / 2
    lat = np.column_stack([gx.ravel(), gy.ravel()])
    lat = lat[shape.contains(lat, margin=0.6 * h)]
    pts = np.vstack([bnd, lat])

    tri = _triangulate(pts, shape)
    for _ in range(smooth_iters):
        pts = _laplace_smooth(pts, tri, n_b)
    tri = _triangulate(pts, shape)

    # electrode bookkeeping (boundary nodes are 0..n_b-1 in station order)
    el_pos = np.searchsorted(stations, centres % perim).astype(np.int64) % n_b
    el_edges: list[np.ndarray] = []
    for lo, hi in zip(edges_lo, edges_hi):
        rel = (stations - lo) % perim
        idx = np.nonzero(rel <= (hi - lo) + 1e-9)[0]
        idx = idx[np.argsort(rel[idx])]
        el_edges.append(np.column_stack([idx[:-1], idx[1:]]).astype(np.int64))
    el_set = set(np.concatenate([e.ravel() for e in el_edges]).tolist())
    ref = next(i for i in range(n_b) if i not in el_set)
    return EitMesh(pts, tri, el_pos, el_edges, int(ref), shape)


def _triangulate(pts: np.ndarray, shape: ThoraxShape) -> np.ndarray:
    tri: np.ndarray = Delaunay(pts).simplices.astype(np.int64)  # scipy is untyped
    c = pts[tri].mean(axis=1)
    p = pts[tri]
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area = 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    keep = shape.contains(c) & (np.abs(area) > 1e-12)
    tri, area = tri[keep], area[keep]
    neg = area < 0
    tri[neg] = tri[neg][:, [0, 2, 1]]
    return tri


def _laplace_smooth(pts: np.ndarray, tri: np.ndarray, n_fixed: int) -> np.ndarray:
    n = len(pts)
    i = tri[:, [0, 1, 2, 1, 2, 0]].ravel()
    j = tri[:, [1, 2, 0, 0, 1, 2]].ravel()
    adj = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    new: np.ndarray = (adj @ pts) / np.maximum(deg, 1)[:, None]  # scipy is untyped
    new[:n_fixed] = pts[:n_fixed]
    return new


# ----------------------------------------------------------------------------- FEM


def element_stiffness(nodes: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Local P1 stiffness matrices for unit conductivity, ``(n_elements, 3, 3)``."""
    p = nodes[elements]
    s = p[:, [2, 0, 1]] - p[:, [1, 2, 0]]  # edge vectors opposite each vertex
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area = 0.5 * np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    out: np.ndarray = np.einsum("eik,ejk->eij", s, s) / (4.0 * area)[:, None, None]
    return out


def locate_points(mesh: EitMesh, pts: np.ndarray, k: int = 10) -> np.ndarray:
    """Element containing each point (``-1`` outside the mesh), ``pts`` shape ``(n, 2)``."""
    tree = cKDTree(mesh.centres)
    k = min(k, mesh.n_elements)
    _, cand = tree.query(pts, k=k)
    p = mesh.nodes[mesh.elements[cand]]  # (n, k, 3, 2)
    v0, v1, v2 = p[..., 0, :], p[..., 1, :], p[..., 2, :]
    q = pts[:, None, :]

    def cross(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        out: np.ndarray = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        return out

    eps = -1e-12
    inside = (cross(v0, v1, q) >= eps) & (cross(v1, v2, q) >= eps) & (cross(v2, v0, q) >= eps)
    first = np.argmax(inside, axis=1)
    found = inside[np.arange(len(pts)), first]
    return np.where(found, cand[np.arange(len(pts)), first], -1)


class Forward:
    """FEM forward solver on a fixed mesh (vectorised assembly, sparse LU).

    ``forward_point(sigma)`` and ``forward_cem(sigma, z)`` return the electrode transfer
    matrix ``T`` (n_el, n_el): ``T[l, j]`` = potential (V) of electrode ``l`` for a unit
    current (1 A per unit thickness) into electrode ``j`` and out of ground. Any drive
    (a, b) is then ``T[:, a] - T[:, b]``.
    """

    def __init__(self, mesh: EitMesh) -> None:
        self.mesh = mesh
        self.ke = element_stiffness(mesh.nodes, mesh.elements)
        el = mesh.elements
        self._rows = np.repeat(el, 3, axis=1).ravel()
        self._cols = np.tile(el, (1, 3)).ravel()

    def stiffness(self, sigma: np.ndarray | float, extra: int = 0) -> sp.coo_matrix:
        n = self.mesh.n_nodes
        sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (self.mesh.n_elements,))
        data = (self.ke * sig[:, None, None]).ravel()
        return sp.coo_matrix((data, (self._rows, self._cols)), shape=(n + extra, n + extra))

    def _ground(self, K: sp.spmatrix) -> sp.csc_matrix:
        K = K.tocsr()
        ref = self.mesh.ref_node
        mask = np.ones(K.shape[0])
        mask[ref] = 0.0
        D = sp.diags(mask)
        K = D @ K @ D + sp.coo_matrix(([1.0], ([ref], [ref])), shape=K.shape)
        return K.tocsc()

    def solve_point(self, sigma: np.ndarray | float) -> np.ndarray:
        """Nodal potentials for unit injection at each electrode node, ``(n_nodes, n_el)``."""
        K = self._ground(self.stiffness(sigma))
        n, L = self.mesh.n_nodes, self.mesh.n_el
        rhs = np.zeros((n, L))
        rhs[self.mesh.el_pos, np.arange(L)] = 1.0
        out: np.ndarray = spla.splu(K).solve(rhs)
        return out

    def forward_point(self, sigma: np.ndarray | float) -> np.ndarray:
        """Point-electrode transfer matrix ``(n_el, n_el)``."""
        out: np.ndarray = self.solve_point(sigma)[self.mesh.el_pos]
        return out

    def forward_cem(self, sigma: np.ndarray | float, z_contact: float | np.ndarray = 0.02) -> np.ndarray:
        """Complete-electrode-model transfer matrix ``(n_el, n_el)``.

        ``z_contact``: contact impedance per electrode (resistivity × length units).
        """
        m = self.mesh
        n, L = m.n_nodes, m.n_el
        z = np.broadcast_to(np.asarray(z_contact, dtype=np.float64), (L,))
        K = self.stiffness(sigma, extra=L)
        rows, cols, data = [K.row], [K.col], [K.data]
        for l, edges in enumerate(m.el_edges):
            a, b = edges[:, 0], edges[:, 1]
            ln = np.hypot(*(m.nodes[a] - m.nodes[b]).T)
            w = ln / z[l]
            # (1/z) ∫ phi_i phi_j ds
            rows += [a, b, a, b]
            cols += [a, b, b, a]
            data += [w / 3, w / 3, w / 6, w / 6]
            # -(1/z) ∫ phi_i ds, symmetric
            e = np.full(len(a), n + l)
            rows += [a, b, e, e]
            cols += [e, e, a, b]
            data += [-w / 2, -w / 2, -w / 2, -w / 2]
            rows.append(np.array([n + l]))
            cols.append(np.array([n + l]))
            data.append(np.array([w.sum()]))
        A = sp.coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(n + L, n + L))
        A = self._ground(A)
        rhs = np.zeros((n + L, L))
        rhs[n + np.arange(L), np.arange(L)] = 1.0
        out: np.ndarray = spla.splu(A).solve(rhs)[n:]
        return out

    def measurements(self, T: np.ndarray, pattern: Pattern) -> np.ndarray:
        """Flattened differential frame for a transfer matrix and pattern, ``(n_total,)``."""
        U = (T[:, pattern.ex_mat[:, 0]] - T[:, pattern.ex_mat[:, 1]]).T  # (n_exc, n_el)
        return potentials_to_measurements(U, pattern)

    def jacobian(self, pattern: Pattern, sigma: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Point-electrode Jacobian ``J`` (n_total, n_elements) and frame ``v0`` (n_total,).

        Same sign convention as pyEIT (``J = +u_meas^T K_e u_drive``), so a conductivity
        increase is ``-H @ dv``.
        """
        X = self.solve_point(sigma)  # (n_nodes, n_el)
        Xt = X[self.mesh.elements]  # (n_e, 3, n_el)
        Q = np.einsum("eip,eiq->epq", np.einsum("eij,eip->ejp", self.ke, Xt), Xt)  # (n_e, L, L)
        ex, mm = pattern.ex_mat, pattern.meas_mat
        a = np.repeat(ex[:, 0], pattern.n_meas)
        b = np.repeat(ex[:, 1], pattern.n_meas)
        nn = mm[:, :, 0].ravel()
        m_ = mm[:, :, 1].ravel()
        J = (Q[:, nn, a] - Q[:, nn, b] - Q[:, m_, a] + Q[:, m_, b]).T
        v0 = self.measurements(X[self.mesh.el_pos], pattern)
        return np.ascontiguousarray(J), v0
