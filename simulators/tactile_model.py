"""Physics of a tactile imaging probe pressed onto soft tissue with a hard inclusion.

Knows nothing of bytes (the interface, :mod:`medacq.simulators.tactile`, binds it to the
wire). Two parts:

* :class:`TissueContact` -- the surface pressure under a flat rigid probe pressed ``d`` mm
  into a tissue layer of thickness ``H`` mm. A Winkler-type layer model: each surface
  point is a column in uniaxial compression, with a spherical inclusion (radius ``a``,
  centre depth ``z``) in series with the background inside the columns it crosses; the
  column modulus is ``H / ((H - t)/E_bg + t/E_inc)`` (``t`` = the sphere's chord under the
  point). A Winkler layer has no lateral coupling, so the *contrast* of the column modulus
  is spread by a Gaussian of width ``lateral_spread * z`` (the surface footprint of a
  buried inclusion widens with its depth). Strain stiffening: ``p = E_col ε (1 + β ε)``,
  ``ε = d / H``. Pressures in kPa. This is a simple model, not a finite-element solution.
* :class:`CellArray` -- the sensing matrix: per-cell gain and offset non-uniformity, a
  play-operator hysteresis (width in kPa), first-order creep (a fraction of the load,
  time constant in s), white noise (counts), dead cells stuck at 0, a 16-bit ADC.

Geometry: cell ``(row, col)`` is centred at ``x = (col - (cols-1)/2)·pitch``,
``y = (row - (rows-1)/2)·pitch`` mm from the probe centre.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TactileOptions", "TissueContact", "CellArray", "PressProfile"]


class TactileOptions(BaseModel):
    """Options of the simulated probe and phantom (``medacq sim tactile --opt key=value``)."""

    model_config = ConfigDict(extra="forbid")

    rows: int = Field(default=16, ge=16, le=32, description="cell rows")
    cols: int = Field(default=16, ge=16, le=32, description="cell columns")
    pitch_mm: float = Field(default=2.5, gt=0, le=10, description="cell pitch, mm")
    seed: int = 0
    # tissue
    layer_mm: float = Field(default=30.0, gt=5, description="tissue layer thickness, mm")
    e_background_kpa: float = Field(default=15.0, gt=0, description="background Young's modulus, kPa")
    e_inclusion_kpa: float = Field(default=75.0, gt=0, description="inclusion Young's modulus, kPa")
    inclusion_x_mm: float = Field(default=6.25, description="inclusion centre, x (column direction) from probe centre, mm")
    inclusion_y_mm: float = Field(default=-3.75, description="inclusion centre, y (row direction) from probe centre, mm")
    inclusion_radius_mm: float = Field(default=5.0, ge=0, description="inclusion radius, mm (0: none)")
    inclusion_depth_mm: float = Field(default=10.0, gt=0, description="inclusion centre depth below the surface, mm")
    lateral_spread: float = Field(default=0.25, ge=0, description="surface spread of the contrast, × inclusion depth")
    stiffening: float = Field(default=2.0, ge=0, description="strain-stiffening coefficient β (dimensionless)")
    # press profile
    load: Literal["press", "bladder"] = Field(default="press", description="press: the probe indents the phantom; "
                                              "bladder: uniform calibration pressure")
    bladder_kpa: float = Field(default=5.0, gt=0, description="bladder calibration pressure, kPa")
    depth_max_mm: float = Field(default=6.0, gt=0, description="deepest indentation, mm")
    air_s: float = Field(default=1.0, ge=0, description="unloaded time at the start of each cycle, s")
    ramp_s: float = Field(default=1.5, gt=0, description="press (and release) ramp, s")
    hold_s: float = Field(default=0.5, ge=0, description="hold at the deepest point, s")
    # sensor
    kpa_per_count: float = Field(default=0.01, gt=0, description="nominal sensitivity at front-end gain 1, kPa/count")
    offset_counts: float = Field(default=2000.0, ge=0, description="mean cell offset, counts")
    offset_spread_counts: float = Field(default=200.0, ge=0, description="cell offset spread (σ), counts")
    gain_spread: float = Field(default=0.08, ge=0, lt=0.5, description="relative cell gain spread (σ)")
    noise_counts: float = Field(default=3.0, ge=0, description="white noise (σ), counts")
    hysteresis_kpa: float = Field(default=0.05, ge=0, description="play-operator half width, kPa")
    creep_fraction: float = Field(default=0.03, ge=0, lt=1, description="creep amplitude, fraction of the load")
    creep_tau_s: float = Field(default=2.0, gt=0, description="creep time constant, s")
    dead_cells: int = Field(default=2, ge=0, le=16, description="cells stuck at 0 counts")


class PressProfile:
    """Indentation depth (mm) against time since START (s): periodic air → ramp in → hold → ramp out."""

    def __init__(self, o: TactileOptions) -> None:
        self.air, self.ramp, self.hold, self.dmax = o.air_s, o.ramp_s, o.hold_s, o.depth_max_mm
        self.period = self.air + 2 * self.ramp + self.hold

    def depth_mm(self, t: float) -> float:
        u = t % self.period
        if u < self.air:
            return 0.0
        u -= self.air
        if u < self.ramp:
            return self.dmax * u / self.ramp
        u -= self.ramp
        if u < self.hold:
            return self.dmax
        u -= self.hold
        return self.dmax * max(0.0, 1.0 - u / self.ramp)


class TissueContact:
    """Surface pressure (kPa, ``(row, col)``) under the probe for an indentation depth."""

    def __init__(self, o: TactileOptions, subsample: int = 5) -> None:
        self.o = o
        R, C, p = o.rows, o.cols, o.pitch_mm
        s = subsample
        # fine grid inside each cell (cell-area average of the column modulus)
        fx = (np.arange(C * s) + 0.5) / s * p - C * p / 2
        fy = (np.arange(R * s) + 0.5) / s * p - R * p / 2
        X, Y = np.meshgrid(fx, fy)
        a, z, H = o.inclusion_radius_mm, o.inclusion_depth_mm, o.layer_mm
        r2 = (X - o.inclusion_x_mm) ** 2 + (Y - o.inclusion_y_mm) ** 2
        # chord of the sphere under each point, limited to the layer
        t = np.where(r2 < a * a, 2.0 * np.sqrt(np.clip(a * a - r2, 0, None)), 0.0)
        t = np.minimum(t, H)
        e_col = H / ((H - t) / o.e_background_kpa + t / o.e_inclusion_kpa)
        contrast = e_col - o.e_background_kpa
        sigma = o.lateral_spread * z
        if sigma > 0 and a > 0:
            contrast = _gauss_blur(contrast, sigma / (p / s))
        fine = o.e_background_kpa + contrast
        #: effective column modulus per cell, kPa ``(row, col)``
        self.modulus_kpa = fine.reshape(R, s, C, s).mean(axis=(1, 3))

    def pressure_kpa(self, depth_mm: float) -> np.ndarray:
        eps = max(0.0, depth_mm) / self.o.layer_mm
        return self.modulus_kpa * (eps * (1.0 + self.o.stiffening * eps))

    def truth(self) -> dict:
        o = self.o
        return {"inclusion_row": o.inclusion_y_mm / o.pitch_mm + (o.rows - 1) / 2,
                "inclusion_col": o.inclusion_x_mm / o.pitch_mm + (o.cols - 1) / 2,
                "inclusion_x_mm": o.inclusion_x_mm, "inclusion_y_mm": o.inclusion_y_mm,
                "inclusion_diameter_mm": 2 * o.inclusion_radius_mm, "inclusion_depth_mm": o.inclusion_depth_mm,
                "e_background_kpa": o.e_background_kpa, "e_inclusion_kpa": o.e_inclusion_kpa,
                "surface_stiffness_ratio": float(self.modulus_kpa.max() / o.e_background_kpa),
                "pitch_mm": o.pitch_mm, "rows": o.rows, "cols": o.cols}


def _gauss_blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur with zero padding (the contrast is zero far from the inclusion)."""
    r = max(1, int(np.ceil(3 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    k /= k.sum()
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, a)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, out)


class CellArray:
    """The sensing matrix: kPa at each cell → u16 ADC counts, with the sensor's imperfections."""

    def __init__(self, o: TactileOptions) -> None:
        self.o = o
        rng = np.random.default_rng(o.seed)
        shape = (o.rows, o.cols)
        #: relative gain per cell (dimensionless, mean 1)
        self.gain = np.clip(1.0 + o.gain_spread * rng.standard_normal(shape), 0.5, 1.5)
        #: offset per cell, counts
        self.offset = np.clip(o.offset_counts + o.offset_spread_counts * rng.standard_normal(shape), 100, 20000)
        flat = rng.choice(o.rows * o.cols, size=o.dead_cells, replace=False)
        self.dead = np.zeros(shape, bool)
        self.dead.flat[flat] = True
        self._rng = np.random.default_rng(o.seed + 1)
        self.reset()

    def reset(self) -> None:
        shape = (self.o.rows, self.o.cols)
        self._play = np.zeros(shape)
        self._creep = np.zeros(shape)
        self._t: float | None = None

    def sense_kpa(self, p: np.ndarray, t: float) -> np.ndarray:
        """The load the cells feel at time ``t`` (s): hysteresis (play operator) plus creep."""
        o = self.o
        w = o.hysteresis_kpa
        self._play = np.clip(self._play, p - w, p + w)
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        self._creep += (o.creep_fraction * p - self._creep) * (1.0 - np.exp(-dt / o.creep_tau_s))
        return self._play + self._creep

    def counts(self, p_sensed: np.ndarray, afe_gain: int) -> np.ndarray:
        """u16 counts ``(row, col)``."""
        o = self.o
        c = self.offset + self.gain * afe_gain * p_sensed / o.kpa_per_count
        if o.noise_counts > 0:
            c = c + o.noise_counts * self._rng.standard_normal(c.shape)
        c = np.clip(np.rint(c), 0, 65535)
        c[self.dead] = 0
        return c.astype(np.uint16)
