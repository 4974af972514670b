"""PET ring geometry and its sinogram, as data (shared by simulator, driver and reconstruction).

Conventions:

* one ring (2D) of ``n_crystals = blocks * crystals_per_block`` crystals on a circle of radius
  ``radius_mm``; crystal ``k`` is centred at angle ``alpha_k = 2 pi k / n`` (x = R cos, y = R sin,
  mm); block ``b`` holds crystals ``b * crystals_per_block ..``;
* a line of response (LOR) between crystals ``i`` and ``j`` has normal angle ``phi`` in
  ``[0, pi)`` and signed distance ``s`` from the centre (every point p on it has
  ``p . (cos phi, sin phi) = s``);
* the sinogram is *not* arc-corrected: half-view ``h = (i + j) mod n`` (``phi = pi h / n``) and
  ``u`` with ``s = R cos(pi u / n)`` (``u = j - i`` for ``i < j`` when ``i + j < n``, else
  ``n - (j - i)``); ``u`` has the parity of ``h``. Views interleave two half-views: view
  ``v = h // 2`` (``n / 2`` views), radial bin ``r = u - u_min`` (``u_min .. u_max`` covers the
  field of view), so every sinogram bin is exactly one crystal pair; the sinogram is
  ``(views, radial)``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PetRing", "SPEED_OF_LIGHT_MM_PER_PS"]

SPEED_OF_LIGHT_MM_PER_PS = 0.299792458


class PetRing(BaseModel):
    """A ring of block detectors.

    Attributes:
        blocks: detector blocks around the ring.
        crystals_per_block: crystals per block (transaxial).
        radius_mm: ring radius to the crystal faces, mm.
        fov_mm: diameter of the transaxial field of view kept in the sinogram, mm.
        slice_mm: axial thickness of the imaged slice, mm (for Bq/mL).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocks: int = Field(16, ge=2, le=256)
    crystals_per_block: int = Field(24, ge=1, le=256)
    radius_mm: float = Field(400.0, gt=0)
    fov_mm: float = Field(330.0, gt=0)
    slice_mm: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "PetRing":
        if self.n_crystals % 2:
            raise ValueError("the ring needs an even number of crystals")
        if self.fov_mm >= 2 * self.radius_mm:
            raise ValueError("fov_mm must be smaller than the ring diameter")
        return self

    @property
    def n_crystals(self) -> int:
        return self.blocks * self.crystals_per_block

    @property
    def n_views(self) -> int:
        return self.n_crystals // 2

    @property
    def u_range(self) -> tuple[int, int]:
        """``(u_min, u_max)`` inclusive: the pairs whose LOR passes within ``fov_mm / 2``."""
        n = self.n_crystals
        half = np.arcsin(min(1.0, self.fov_mm / 2 / self.radius_mm)) * n / np.pi
        return int(np.ceil(n / 2 - half)), int(np.floor(n / 2 + half))

    @property
    def n_radial(self) -> int:
        lo, hi = self.u_range
        return hi - lo + 1

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(views, radial)``."""
        return self.n_views, self.n_radial

    def crystal_xy(self) -> np.ndarray:
        """``(n_crystals, 2)`` crystal centres, mm."""
        a = 2 * np.pi * np.arange(self.n_crystals) / self.n_crystals
        return self.radius_mm * np.stack([np.cos(a), np.sin(a)], axis=1)

    def block_of(self, crystal: np.ndarray) -> np.ndarray:
        return np.asarray(crystal) // self.crystals_per_block

    @cached_property
    def pair_lut(self) -> np.ndarray:
        """``(n, n)`` int32: flat sinogram bin ``v * n_radial + r`` of crystal pair ``(i, j)``, or
        -1 (same crystal, or outside the field of view). Symmetric."""
        n = self.n_crystals
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        d = hi - lo
        ssum = lo + hi
        u = np.where(ssum < n, d, n - d)
        h = ssum % n
        u_min, u_max = self.u_range
        ok = (d > 0) & (u >= u_min) & (u <= u_max)
        flat = (h // 2) * self.n_radial + (u - u_min)
        return np.where(ok, flat, -1).astype(np.int32)

    def bin_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """``(phi, s)`` of every sinogram bin, each ``(views, radial)``: normal angle (rad) and
        signed distance (mm). Bins whose ``u`` has the other parity than the view's first
        half-view sit at ``phi + pi / n``."""
        n = self.n_crystals
        u_min, _ = self.u_range
        u = u_min + np.arange(self.n_radial)
        v = np.arange(self.n_views)
        h = 2 * v[:, None] + (u[None, :] % 2)
        return np.pi * h / n, np.broadcast_to(self.radius_mm * np.cos(np.pi * u / n), (self.n_views, self.n_radial)).copy()

    def to_descriptor(self) -> dict[str, Any]:
        return {"ring": self.model_dump(), "n_crystals": self.n_crystals,
                "sinogram_shape": list(self.sinogram_shape)}

    @classmethod
    def from_descriptor(cls, d: dict[str, Any]) -> "PetRing":
        return cls.model_validate(d["ring"] if "ring" in d else d)
