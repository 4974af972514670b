"""Reconstruction-stage binding for shear-wave elastography streams (modality ``swe``).

Source frames: int16 ``(frame, z, x, iq)`` beamformed IQ of one push's tracking ensemble
(:class:`~medacq.drivers.us_elastography.ElastographyDriver`), the grid (``z0_mm``,
``dz_mm``, ``x0_mm``, ``dx_mm``), ``prf_hz``, ``f0_hz``, ``fs_iq_hz``, ``c_m_s`` in the
descriptor geometry. Algorithms: :mod:`medacq.daemon.recon.algorithms.elastography`
(Loupas displacement, time-of-flight speed, E = 3ρc²).

Outputs, per push:

* ``recon/<stream>``: ``float32 (z, x)`` Young's modulus, kPa (NaN where no estimate).
* ``recon/<stream>/confidence``: ``float32 (z, x)`` 0..1 (fit R² × displacement amplitude).
* ``recon/<stream>/speed``: ``float32 (z, x)`` shear-wave speed, m/s.
* ``recon/<stream>/inclusion``: ``float32 [found, x_mm, z_mm, diameter_mm, e_inclusion_kpa,
  e_background_kpa, process_ms]`` (also by name in ``meta``).

Maps are on every ``axial_step``-th depth sample (``geometry.z_mm``). Settings
``[recon.settings.swe]``: ``axial_window`` (9 samples), ``axial_step`` (2), ``half_window_mm`` (1.5),
``min_peak_um`` (0.5), ``kernel`` (``auto``: numba when installed, else numpy). Queue policy
``latest`` (a live stiffness map: only the newest push counts).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.algorithms import elastography as el
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError

__all__ = ["ShearWaveReconstructor", "ShearWaveSettings", "INCLUSION_FIELDS"]

INCLUSION_FIELDS = ["found", "x_mm", "z_mm", "diameter_mm", "e_inclusion_kpa", "e_background_kpa", "process_ms"]


class ShearWaveSettings(BaseModel):
    """``[recon.settings.swe]``."""

    model_config = ConfigDict(extra="forbid")

    axial_window: int = Field(default=9, ge=1, le=64, description="Loupas axial window, IQ samples")
    half_window_mm: float = Field(default=1.5, gt=0, le=10, description="lateral half-window of the TOF fit, mm")
    min_peak_um: float = Field(default=0.5, ge=0, description="peak displacement below which confidence falls to 0, µm")
    axial_step: int = Field(default=2, ge=1, le=8, description="estimate every n-th depth sample (map grid)")
    kernel: Literal["auto", "numba", "numpy"] = Field(default="auto", description="displacement kernel: auto = "
                                                      "numba when installed, else numpy")


class ShearWaveReconstructor(Reconstructor):
    """Young's modulus map from one push ensemble (module doc)."""

    modality = "swe"
    Settings = ShearWaveSettings
    qos = QosPolicy(policy="latest")

    def __init__(self, descriptor: StreamDescriptor, settings: ShearWaveSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        g = descriptor.geometry
        try:
            nf, nz, nx, two = (int(v) for v in descriptor.shape)
            self.z_mm = float(g["z0_mm"]) + float(g["dz_mm"]) * np.arange(nz)
            self.x_mm = float(g["x0_mm"]) + float(g["dx_mm"]) * np.arange(nx)
            self.t_s = np.arange(nf) / float(g["prf_hz"])
            self.f0, self.fs, self.c = float(g["f0_hz"]), float(g["fs_iq_hz"]), float(g.get("c_m_s", 1540.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReconstructorError(f"{descriptor.stream}: SWE descriptor needs shape (frame, z, x, 2) and the grid "
                                     f"in geometry ({exc})") from None
        if two != 2:
            raise ReconstructorError(f"{descriptor.stream}: last axis must be (I, Q), got {two}")
        step = int(self.settings.axial_step)  # type: ignore[attr-defined]
        geo = {"x_mm": self.x_mm.tolist(), "z_mm": self.z_mm[::step].tolist()}
        self._meta = {"geometry": geo, "method": "Loupas 2D autocorrelation, time-to-peak TOF, E = 3 rho c^2"}

    @classmethod
    def preload(cls) -> None:
        if el.HAVE_NUMBA:
            el.loupas_numba(np.zeros((3, 4, 2), np.complex64), 5e6, 10e6)

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        s: ShearWaveSettings = self.settings  # type: ignore[assignment]
        t0 = time.perf_counter()
        iq = frame[..., 0].astype(np.float32) + 1j * frame[..., 1].astype(np.float32)
        kernel = "numba" if s.kernel == "auto" and el.HAVE_NUMBA else ("numpy" if s.kernel == "auto" else s.kernel)
        r = el.process_ensemble(iq.astype(np.complex64), self.t_s, self.x_mm, self.z_mm, self.f0, self.fs, self.c,
                                s.axial_window, s.half_window_mm, s.min_peak_um, kernel, s.axial_step)
        ms = (time.perf_counter() - t0) * 1e3
        inc = r.inclusion
        vec = np.array([float(inc.found), inc.x_mm, inc.z_mm, inc.diameter_mm, inc.e_kpa, inc.e_background_kpa, ms],
                       np.float32)
        push = (header.get("meta") or {}).get("push")
        return [
            Output("", r.modulus_kpa, ["z", "x"], "kPa", meta={"push": push}, descriptor_meta=dict(self._meta)),
            Output("confidence", r.confidence, ["z", "x"], "1", meta={"push": push}, descriptor_meta=dict(self._meta)),
            Output("speed", r.speed_m_s, ["z", "x"], "m/s", meta={"push": push}, descriptor_meta=dict(self._meta)),
            Output("inclusion", vec, ["quantity"], "mixed",
                   meta={**{k: (float(v) if np.isfinite(v) else None) for k, v in zip(INCLUSION_FIELDS, vec)},
                         "push": push},
                   descriptor_meta={"channel_names": INCLUSION_FIELDS}),
        ]
