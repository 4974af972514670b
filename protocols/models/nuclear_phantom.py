"""2D NEMA IEC body phantom slice: the ground truth the PET simulator emits from and the bench
scores against.

Geometry (mm, slice through the sphere centres; x right, y up, origin at the ring centre):

* body: the IEC body phantom's interior outline (300 mm wide, 230 mm high) approximated by an
  ellipse of those axes (the real outline is a rectangle with two rounded upper corners), water;
* six hot spheres of inner diameter 10, 13, 17, 22, 28, 37 mm on a circle of radius 57.2 mm
  (NEMA NU 2) about the lung insert, at 30 + 60 k degrees, activity ``ratio`` (4 or 8) times the
  background;
* the lung insert, 51 mm diameter, centred, cold (no activity), lung density (μ 0.3 x water);
* water attenuation at 511 keV: μ = 0.0096 / mm (NIST XCOM 0.0969 cm²/g at 500 keV).

Activity: ``background_bq_ml`` at ``t = 0`` (NEMA: 5.3 kBq/mL), decaying with the isotope's
half-life (F-18: 109.77 min). A 2D slice of thickness ``slice_mm`` (set by the ring) holds the
activity ``concentration x area x thickness``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ISOTOPES", "Isotope", "Sphere", "IecBodyPhantom", "MU_WATER_511_PER_MM", "mu_water_per_mm"]

#: linear attenuation of water at 511 keV, 1/mm
MU_WATER_511_PER_MM = 0.0096

# NIST XCOM, water, total attenuation with coherent scattering (cm^2/g), for scattered photons
_E_KEV = np.array([100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 511.0, 600.0])
_MU_CM2_G = np.array([0.1707, 0.1505, 0.1370, 0.1186, 0.1061, 0.09687, 0.0960, 0.08956])


def mu_water_per_mm(energy_kev: np.ndarray | float) -> np.ndarray:
    """Linear attenuation of water (1/mm) at ``energy_kev`` (interpolated in the XCOM table)."""
    return np.asarray(np.interp(energy_kev, _E_KEV, _MU_CM2_G), float) / 10.0


@dataclass(frozen=True)
class Isotope:
    """A positron emitter: ``half_life_s`` and ``positron_fraction`` (branching ratio)."""

    name: str
    half_life_s: float
    positron_fraction: float = 1.0

    @property
    def decay_constant(self) -> float:
        return float(np.log(2) / self.half_life_s)

    def decay_factor(self, t_s: float | np.ndarray) -> float | np.ndarray:
        """A(t) / A(0)."""
        return np.exp(-self.decay_constant * np.asarray(t_s, float))


ISOTOPES: dict[str, Isotope] = {
    "F-18": Isotope("F-18", 109.77 * 60.0, 0.9686),
    "Ga-68": Isotope("Ga-68", 67.71 * 60.0, 0.8891),
    "Tc-99m": Isotope("Tc-99m", 6.0067 * 3600.0, 0.0),  # SPECT: no positrons (140.5 keV gamma, 88.5 %)
}


@dataclass(frozen=True)
class Sphere:
    """A hot sphere's slice: centre (mm) and inner diameter (mm)."""

    x_mm: float
    y_mm: float
    diameter_mm: float


def _default_spheres() -> tuple[Sphere, ...]:
    out = []
    for k, d in enumerate((10.0, 13.0, 17.0, 22.0, 28.0, 37.0)):
        a = np.deg2rad(30.0 + 60.0 * k)
        out.append(Sphere(round(57.2 * np.cos(a), 3), round(57.2 * np.sin(a), 3), d))
    return tuple(out)


@dataclass(frozen=True)
class IecBodyPhantom:
    """The phantom (see the module doc). ``ratio``: sphere-to-background activity (4 or 8)."""

    background_bq_ml: float = 5300.0
    ratio: float = 4.0
    isotope: str = "F-18"
    body_axes_mm: tuple[float, float] = (150.0, 115.0)
    lung_diameter_mm: float = 51.0
    lung_mu_scale: float = 0.3
    spheres: tuple[Sphere, ...] = field(default_factory=_default_spheres)

    # ---- facts -------------------------------------------------------------------------------
    @property
    def iso(self) -> Isotope:
        return ISOTOPES[self.isotope]

    def to_dict(self) -> dict[str, Any]:
        return {"background_bq_ml": self.background_bq_ml, "ratio": self.ratio, "isotope": self.isotope,
                "body_axes_mm": list(self.body_axes_mm), "lung_diameter_mm": self.lung_diameter_mm,
                "lung_mu_scale": self.lung_mu_scale,
                "spheres": [[s.x_mm, s.y_mm, s.diameter_mm] for s in self.spheres]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IecBodyPhantom":
        kw = dict(d)
        if "body_axes_mm" in kw:
            kw["body_axes_mm"] = tuple(kw["body_axes_mm"])
        if "spheres" in kw:
            kw["spheres"] = tuple(Sphere(*map(float, s)) for s in kw["spheres"])
        return cls(**kw)

    def concentration(self, t_s: float = 0.0) -> dict[str, float]:
        """Activity concentrations (Bq/mL) at time ``t_s``: ``background``, ``sphere``, ``lung``."""
        f = float(self.iso.decay_factor(t_s))
        return {"background": self.background_bq_ml * f, "sphere": self.background_bq_ml * self.ratio * f,
                "lung": 0.0}

    def _region_areas_mm2(self) -> tuple[float, float]:
        a, b = self.body_axes_mm
        spheres = sum(np.pi * (s.diameter_mm / 2) ** 2 for s in self.spheres)
        lung = np.pi * (self.lung_diameter_mm / 2) ** 2
        return float(np.pi * a * b - spheres - lung), float(spheres)

    def total_activity_bq(self, slice_mm: float, t_s: float = 0.0) -> float:
        """Activity in a slice ``slice_mm`` thick at ``t_s`` (Bq)."""
        bg_area, sph_area = self._region_areas_mm2()
        c = self.concentration(t_s)
        return (c["background"] * bg_area + c["sphere"] * sph_area) * slice_mm * 1e-3  # mm^3 -> mL

    # ---- images ------------------------------------------------------------------------------
    def _inside(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.body_axes_mm
        body = (x / a) ** 2 + (y / b) ** 2 <= 1.0
        lung = x ** 2 + y ** 2 <= (self.lung_diameter_mm / 2) ** 2
        sph = np.zeros(np.shape(x), bool)
        for s in self.spheres:
            sph |= (x - s.x_mm) ** 2 + (y - s.y_mm) ** 2 <= (s.diameter_mm / 2) ** 2
        return body, lung, sph

    def _grid(self, n: int, fov_mm: float, oversample: int) -> tuple[np.ndarray, np.ndarray]:
        m = n * oversample
        c = (np.arange(m) + 0.5) * (fov_mm / m) - fov_mm / 2
        x, y = np.meshgrid(c, -c)  # row 0 at the top (+y)
        return x, y

    def activity_image(self, n: int, fov_mm: float, t_s: float = 0.0, oversample: int = 4) -> np.ndarray:
        """``(n, n)`` activity concentration (Bq/mL) at ``t_s``; rows = y from +fov/2 down, cols =
        x from -fov/2 (pixel averages over ``oversample``² sub-pixels)."""
        x, y = self._grid(n, fov_mm, oversample)
        body, lung, sph = self._inside(x, y)
        c = self.concentration(t_s)
        img = np.where(body & ~lung, c["background"], 0.0)
        img = np.where(sph, c["sphere"], img)
        return np.asarray(img.reshape(n, oversample, n, oversample).mean(axis=(1, 3)), float)

    def mu_map(self, n: int, fov_mm: float, oversample: int = 4) -> np.ndarray:
        """``(n, n)`` linear attenuation at 511 keV (1/mm), same layout as :meth:`activity_image`."""
        x, y = self._grid(n, fov_mm, oversample)
        body, lung, _ = self._inside(x, y)
        mu = np.where(body, MU_WATER_511_PER_MM, 0.0)
        mu = np.where(lung, MU_WATER_511_PER_MM * self.lung_mu_scale, mu)
        return np.asarray(mu.reshape(n, oversample, n, oversample).mean(axis=(1, 3)), float)

    # ---- sampling and rays (simulator) ---------------------------------------------------------
    def sample_emission(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` annihilation points (x, y mm) drawn from the activity distribution (the shape
        does not decay; only the rate does)."""
        bg_area, sph_area = self._region_areas_mm2()
        w_sph = sph_area * self.ratio
        n_sph = rng.binomial(n, w_sph / (w_sph + bg_area))
        xs, ys = [], []
        # spheres: pick one by area, uniform in its disc
        areas = np.array([s.diameter_mm ** 2 for s in self.spheres])
        k = rng.choice(len(self.spheres), size=n_sph, p=areas / areas.sum())
        r = np.sqrt(rng.random(n_sph)) * np.array([s.diameter_mm / 2 for s in self.spheres])[k]
        t = rng.random(n_sph) * 2 * np.pi
        xs.append(np.array([s.x_mm for s in self.spheres])[k] + r * np.cos(t))
        ys.append(np.array([s.y_mm for s in self.spheres])[k] + r * np.sin(t))
        need = n - n_sph
        a, b = self.body_axes_mm
        while need > 0:  # background: uniform in the ellipse, outside lung and spheres
            m = int(need * 1.2) + 16
            r = np.sqrt(rng.random(m))
            t = rng.random(m) * 2 * np.pi
            x, y = a * r * np.cos(t), b * r * np.sin(t)
            _, lung, sph = self._inside(x, y)
            keep = ~lung & ~sph
            x, y = x[keep][:need], y[keep][:need]
            xs.append(x)
            ys.append(y)
            need -= len(x)
        x, y = np.concatenate(xs), np.concatenate(ys)
        perm = rng.permutation(n)
        return x[perm], y[perm]

    def ray_segments(self, px: np.ndarray, py: np.ndarray, dx: np.ndarray, dy: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For rays from ``(px, py)`` along unit ``(dx, dy)`` (points inside the body): the distance
        to the body's edge ``L`` and the lung segment ``[a, b]`` on the ray (``a == b`` if none), mm."""
        ax, by = self.body_axes_mm
        L = _ray_exit_ellipse(px / ax, py / by, dx / ax, dy / by)
        rl = self.lung_diameter_mm / 2
        a, b = _ray_circle(px / rl, py / rl, dx / rl, dy / rl)
        return L, np.minimum(a, L), np.minimum(b, L)

    def optical_depth(self, L: np.ndarray, a: np.ndarray, b: np.ndarray, mu_scale: np.ndarray | float = 1.0) -> np.ndarray:
        """∫μ along ``[0, L]`` with the lung segment ``[a, b]`` (μ at 511 keV x ``mu_scale``)."""
        mu = MU_WATER_511_PER_MM * np.asarray(mu_scale)
        return np.asarray(mu * (L - (1.0 - self.lung_mu_scale) * (b - a)), float)

    def depth_to_distance(self, tau: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distance along the ray at which the optical depth (511 keV) reaches ``tau`` (inverse of
        :meth:`optical_depth` for ``L`` = infinity)."""
        mu_w = MU_WATER_511_PER_MM
        mu_l = mu_w * self.lung_mu_scale
        ta = mu_w * a
        tb = ta + mu_l * (b - a)
        return np.where(tau <= ta, tau / mu_w, np.where(tau <= tb, a + (tau - ta) / mu_l, b + (tau - tb) / mu_w))


def _ray_exit_ellipse(px: np.ndarray, py: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Forward distance from an inside point to the unit circle in scaled coordinates (t in the
    caller's units since only the direction was scaled)."""
    A = dx * dx + dy * dy
    B = px * dx + py * dy
    C = px * px + py * py - 1.0
    disc = np.maximum(B * B - A * C, 0.0)
    return np.asarray(np.maximum((-B + np.sqrt(disc)) / A, 0.0), float)


def _ray_circle(px: np.ndarray, py: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward segment ``[a, b]`` (a >= 0) of the ray inside the unit circle (scaled coordinates)."""
    A = dx * dx + dy * dy
    B = px * dx + py * dy
    C = px * px + py * py - 1.0
    disc = B * B - A * C
    hit = disc > 0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    t1 = np.maximum((-B - sq) / A, 0.0)
    t2 = np.maximum((-B + sq) / A, 0.0)
    t1 = np.where(hit, t1, 0.0)
    t2 = np.where(hit, t2, 0.0)
    return t1, np.maximum(t2, t1)
