"""EIT drive/measurement patterns: which electrodes a frame's values come from (wire-level meaning).

Kept apart from the FEM (:mod:`medacq.protocols.models.eit_fem`) so a driver that needs a
pattern to describe its frames does not import scipy's sparse solvers. Conventions as in
pyEIT: 0-based electrodes, ``ex_mat[k] = (a, b)`` drives current into ``a`` and out of ``b``;
``meas_mat[k, i] = (n, m)`` measures ``U[n] - U[m]``; frames are flattened excitation-major
(index ``k * n_meas + i``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Pattern", "make_pattern", "adjacent_pattern", "opposition_pattern", "potentials_to_measurements"]


# ----------------------------------------------------------------------------- patterns


@dataclass(frozen=True, eq=False)
class Pattern:
    """Drive/measurement pattern (0-based electrodes, pyEIT conventions).

    Attributes:
        n_el: number of electrodes.
        ex_mat: ``(n_exc, 2)`` (source, sink).
        meas_mat: ``(n_exc, n_meas, 2)`` (n, m): measurement is ``U[n] - U[m]``.
        name: short label (``"adjacent"``, ``"opposition"``).
    """

    n_el: int
    ex_mat: np.ndarray
    meas_mat: np.ndarray
    name: str = "custom"

    @property
    def n_exc(self) -> int:
        return int(self.ex_mat.shape[0])

    @property
    def n_meas(self) -> int:
        return int(self.meas_mat.shape[1])

    @property
    def n_total(self) -> int:
        return self.n_exc * self.n_meas

    def key(self) -> str:
        h = hashlib.sha256(self.ex_mat.astype(np.int64).tobytes() + self.meas_mat.astype(np.int64).tobytes())
        return f"{self.name}:{self.n_el}:{h.hexdigest()[:16]}"

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for stream descriptors)."""
        return {"name": self.name, "n_el": self.n_el, "ex_mat": self.ex_mat.tolist(), "meas_mat": self.meas_mat.tolist()}


def make_pattern(n_el: int, dist_exc: int = 1, step_meas: int = 1, name: str = "custom") -> Pattern:
    """Drive ``(i, i + dist_exc)``; measure ``(m + step, m)`` for m = 0..n_el-1, skipping
    every pair that touches a current electrode (pyEIT ``protocol.create`` 'std')."""
    ex = np.array([[i, (i + dist_exc) % n_el] for i in range(n_el)], dtype=np.int64)
    rows = []
    for a, b in ex:
        m = np.arange(n_el)
        n = (m + step_meas) % n_el
        keep = (m != a) & (m != b) & (n != a) & (n != b)
        rows.append(np.column_stack([n[keep], m[keep]]))
    return Pattern(n_el, ex, np.array(rows, dtype=np.int64), name)


def adjacent_pattern(n_el: int = 16) -> Pattern:
    """Adjacent drive, adjacent measurement: 16 electrodes → 16 × 13 = 208 values."""
    return make_pattern(n_el, 1, 1, "adjacent")


def opposition_pattern(n_el: int = 16) -> Pattern:
    """Opposition drive (i, i + n/2), adjacent measurement (OpenEIT): 8/16/32 → 32/192/896."""
    return make_pattern(n_el, n_el // 2, 1, "opposition")


def potentials_to_measurements(U: np.ndarray, pattern: Pattern) -> np.ndarray:
    """Electrode potentials ``U`` (n_exc, n_el) → flattened differential frame (n_exc*n_meas,)."""
    k = np.arange(pattern.n_exc)[:, None]
    v: np.ndarray = U[k, pattern.meas_mat[:, :, 0]] - U[k, pattern.meas_mat[:, :, 1]]
    return v.reshape(-1)
