"""Ultrasound probe and plane-wave acquisition facts, as data.

Models a 128-element linear array of the Verasonics L11-4v class as used by PICMUS
(pitch 0.3 mm, centre frequency 5.208 MHz, sampling 20.832 MHz = 4 samples per period,
c = 1540 m/s) and a plane-wave transmit sequence of 1 to 75 angles within −16°..+16°.

Conventions (shared by the simulator and the beamformer):

* coordinates in metres; x lateral (element 0 at the most negative x, array centred on 0),
  z depth (the array face is z = 0);
* time zero of each transmit is the instant the plane wavefront passes the origin, so the
  transmit delay to a point is ``(x sin θ + z cos θ) / c``; sample ``n`` is at
  ``start_time_s + n / sampling_frequency_hz``;
* RF frames are int16 ``(angles, elements, samples)`` (PICMUS order);
* B-mode images are ``(nz, nx)`` (row = depth).

Every model converts to and from a JSON-able dict (``to_descriptor`` / ``from_descriptor``)
so acquisition parameters can travel in a stream descriptor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_ANGLES",
    "MAX_ANGLE_DEG",
    "LinearArrayProbe",
    "PlaneWaveAcquisition",
    "PixelGrid",
    "L11_4V",
    "plane_wave_angles",
]

MAX_ANGLES = 75
MAX_ANGLE_DEG = 16.0


class LinearArrayProbe(BaseModel):
    """A linear array. Lengths in m, frequencies in Hz."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "L11-4v"
    n_elements: int = Field(128, ge=1, le=1024)
    pitch_m: float = Field(0.3e-3, gt=0)
    element_width_m: float = Field(0.27e-3, gt=0)
    center_frequency_hz: float = Field(5.208e6, gt=0)
    fractional_bandwidth: float = Field(0.67, gt=0, le=2.0)  # −6 dB, two-way

    @property
    def element_x(self) -> np.ndarray:
        """Element centre x positions (m), shape (n_elements,), ascending, centred on 0."""
        return (np.arange(self.n_elements) - (self.n_elements - 1) / 2) * self.pitch_m

    @property
    def aperture_m(self) -> float:
        """Distance between the outer element centres (m)."""
        return (self.n_elements - 1) * self.pitch_m


L11_4V = LinearArrayProbe()


def plane_wave_angles(n: int, max_deg: float = MAX_ANGLE_DEG) -> tuple[float, ...]:
    """``n`` equally spaced steering angles in degrees over ``[-max_deg, +max_deg]`` (0 if n=1)."""
    if not 1 <= n <= MAX_ANGLES:
        raise ValueError(f"1..{MAX_ANGLES} angles, got {n}")
    if n == 1:
        return (0.0,)
    return tuple(float(a) for a in np.linspace(-max_deg, max_deg, n))


class PlaneWaveAcquisition(BaseModel):
    """One plane-wave sequence: what an RF frame ``(angles, elements, samples)`` contains.

    ``prf_hz`` is the transmit (pulse) repetition frequency; one frame is one pass through
    all angles, so the frame rate is ``prf_hz / n_angles``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    probe: LinearArrayProbe = L11_4V
    angles_deg: tuple[float, ...] = (0.0,)
    sampling_frequency_hz: float = Field(20.832e6, gt=0)
    speed_of_sound_m_s: float = Field(1540.0, gt=0)
    n_samples: int = Field(2048, ge=16, le=65535)
    start_time_s: float = 0.0
    prf_hz: float = Field(5000.0, gt=0, le=50000.0)

    @field_validator("angles_deg")
    @classmethod
    def _check_angles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not 1 <= len(v) <= MAX_ANGLES:
            raise ValueError(f"1..{MAX_ANGLES} angles")
        if any(abs(a) > MAX_ANGLE_DEG + 1e-9 for a in v):
            raise ValueError(f"angles must lie within ±{MAX_ANGLE_DEG}°")
        return tuple(float(a) for a in v)

    @model_validator(mode="after")
    def _check_prf(self) -> "PlaneWaveAcquisition":
        if self.prf_hz * self.listen_time_s > 1.0 + 1e-9:
            raise ValueError(f"PRF {self.prf_hz} Hz leaves less time than the {self.n_samples} "
                             f"samples need ({self.listen_time_s * 1e6:.1f} µs)")
        return self

    @classmethod
    def with_angles(cls, n: int, max_deg: float = MAX_ANGLE_DEG, **kw: Any) -> "PlaneWaveAcquisition":
        return cls(angles_deg=plane_wave_angles(n, max_deg), **kw)

    @classmethod
    def for_depth(cls, depth_m: float, **kw: Any) -> "PlaneWaveAcquisition":
        """Enough samples (rounded up to a multiple of 64) for echoes from ``depth_m``
        received on the farthest element at the largest angle."""
        base = cls(**kw)
        half = base.probe.aperture_m
        path = depth_m + np.hypot(depth_m, half) + half * np.sin(np.radians(MAX_ANGLE_DEG))
        n = int(np.ceil(path / base.speed_of_sound_m_s * base.sampling_frequency_hz / 64) * 64)
        return base.model_copy(update={"n_samples": max(n, 64)})

    @property
    def n_angles(self) -> int:
        return len(self.angles_deg)

    @property
    def angles_rad(self) -> np.ndarray:
        rad: np.ndarray = np.radians(np.asarray(self.angles_deg))
        return rad

    @property
    def rf_shape(self) -> tuple[int, int, int]:
        """``(angles, elements, samples)``."""
        return (self.n_angles, self.probe.n_elements, self.n_samples)

    @property
    def frame_bytes(self) -> int:
        a, e, s = self.rf_shape
        return a * e * s * 2

    @property
    def listen_time_s(self) -> float:
        return self.start_time_s + self.n_samples / self.sampling_frequency_hz

    @property
    def max_depth_m(self) -> float:
        """Depth reached by the last sample for a 0° wave received straight above (m)."""
        return self.speed_of_sound_m_s * self.listen_time_s / 2

    @property
    def wavelength_m(self) -> float:
        return self.speed_of_sound_m_s / self.probe.center_frequency_hz

    @property
    def frame_rate_hz(self) -> float:
        return self.prf_hz / self.n_angles

    def sample_times(self) -> np.ndarray:
        """Time of each sample (s), shape (n_samples,)."""
        return self.start_time_s + np.arange(self.n_samples) / self.sampling_frequency_hz

    def to_descriptor(self) -> dict[str, Any]:
        """JSON-able dict (with the RF layout) for a stream descriptor."""
        d = self.model_dump(mode="json")
        d["layout"] = {"axes": ["angle", "element", "sample"], "dtype": "int16",
                       "shape": list(self.rf_shape), "units": "counts"}
        return d

    @classmethod
    def from_descriptor(cls, d: dict[str, Any]) -> "PlaneWaveAcquisition":
        return cls.model_validate({k: v for k, v in d.items() if k != "layout"})


class PixelGrid(BaseModel):
    """A B-mode pixel grid: ``nx`` columns over ``[x_min, x_max]``, ``nz`` rows over
    ``[z_min, z_max]`` (m, pixel centres at the ends). Default 256×256: x over the
    L11-4v aperture (±19.05 mm), z 5–45 mm (40 mm of depth)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nx: int = Field(256, ge=1, le=4096)
    nz: int = Field(256, ge=1, le=4096)
    x_min: float = -19.05e-3
    x_max: float = 19.05e-3
    z_min: float = 5e-3
    z_max: float = 45e-3

    @model_validator(mode="after")
    def _check(self) -> "PixelGrid":
        if self.x_max < self.x_min or self.z_max < self.z_min or self.z_min < 0:
            raise ValueError("bad grid extent")
        return self

    @property
    def x(self) -> np.ndarray:
        return np.linspace(self.x_min, self.x_max, self.nx)

    @property
    def z(self) -> np.ndarray:
        return np.linspace(self.z_min, self.z_max, self.nz)

    @property
    def shape(self) -> tuple[int, int]:
        """``(nz, nx)``."""
        return (self.nz, self.nx)

    def to_descriptor(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_descriptor(cls, d: dict[str, Any]) -> "PixelGrid":
        return cls.model_validate(d)
