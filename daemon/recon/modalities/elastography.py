"""Reconstruction-stage binding for shear-wave elastography streams (modality ``swe``).

Source frames, one push's tracking ensemble
(:class:`~medacq.drivers.us_elastography.ElastographyDriver`): int16 ``(frame, angle, element,
sample)`` channel RF (``geometry.tracking_data = "rf"``, the acquisition in
``geometry.acquisition``), beamformed here with the B-mode DAS operator batched over all the
frames (:class:`~medacq.daemon.recon.algorithms.elastography.EnsembleBeamformer`), or int16
``(frame, z, x, iq)`` IQ the scanner beamformed; the grid (``z0_mm``, ``dz_mm``, ``x0_mm``,
``dx_mm``), ``prf_hz``, ``f0_hz``, ``fs_iq_hz``, ``c_m_s`` in the descriptor geometry.
Algorithms: :mod:`medacq.daemon.recon.algorithms.elastography` (Loupas displacement,
time-of-flight speed, E = 3ρc²). The RF path builds its operator in a background thread
(cached on disk under ``$MEDACQ_CACHE_DIR``/``~/.cache/medacq``; :attr:`warming` meanwhile).

Outputs, per push:

* ``recon/<stream>``: ``float32 (z, x)`` Young's modulus, kPa (NaN where no estimate).
* ``recon/<stream>/confidence``: ``float32 (z, x)`` 0..1 (fit R² × displacement amplitude).
* ``recon/<stream>/speed``: ``float32 (z, x)`` shear-wave speed, m/s.
* ``recon/<stream>/inclusion``: ``float32 [found, x_mm, z_mm, diameter_mm, e_inclusion_kpa,
  e_background_kpa, process_ms]`` (also by name in ``meta``).

Maps are on every ``axial_step``-th depth sample (``geometry.z_mm``). Settings
``[recon.settings.swe]``: ``axial_window`` (9 samples), ``axial_step`` (2), ``half_window_mm`` (1.5),
``min_peak_um`` (0.5), ``kernel`` (``auto``: numba when installed, else numpy), and for RF
``f_number`` (1.5), ``backend`` (``auto``/``sparse``/``cupy``/``numpy``), ``threads`` (of the
numba kernels of an RF ensemble: demodulation, product, Loupas; 1). ``process_ms`` in the
inclusion vector is the whole chain (beamforming included). Queue policy ``latest`` (a live
stiffness map: only the newest push counts).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor
from medacq.protocols.us_geometry import PlaneWaveAcquisition

from medacq.daemon.recon.algorithms import elastography as el
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError

__all__ = ["ShearWaveReconstructor", "ShearWaveSettings", "INCLUSION_FIELDS"]

log = logging.getLogger("medacq.recon.swe")

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
    f_number: float = Field(default=1.5, gt=0, description="RF ensembles: receive F-number of the DAS")
    backend: Literal["auto", "sparse", "cupy", "numpy"] = Field(
        default="auto", description="RF ensembles: beamforming operator (auto: CuPy when usable, else sparse CPU)")
    threads: int = Field(default=1, ge=1, le=1024, description="RF ensembles: threads of the numba kernels "
                         "(demodulation, product, Loupas). 1: on the shared 2-core rig with the live B-mode beside "
                         "(medacq bench elastography), 2 threads took 20-35 % more CPU per ensemble and the B-mode "
                         "fell further behind its 20 frames/s; 2 is faster on a machine with an idle core")


class ShearWaveReconstructor(Reconstructor):
    """Young's modulus map from one push ensemble (module doc)."""

    modality = "swe"
    Settings = ShearWaveSettings
    qos = QosPolicy(policy="latest")

    def __init__(self, descriptor: StreamDescriptor, settings: ShearWaveSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        g = descriptor.geometry
        s: ShearWaveSettings = self.settings  # type: ignore[assignment]
        self.rf = g.get("tracking_data") == "rf"
        self.acquisition: PlaneWaveAcquisition | None = None
        self.beamformer: el.EnsembleBeamformer | None = None
        self.last_error: str | None = None
        self.frames_skipped_warmup = 0
        self._closed = False
        self._building: threading.Thread | None = None
        try:
            if self.rf:
                nf, na, ne, ns = (int(v) for v in descriptor.shape)
                nz, nx = int(g["nz"]), int(g["nx"])
                self.acquisition = PlaneWaveAcquisition.from_descriptor(g["acquisition"])
                if self.acquisition.rf_shape != (na, ne, ns):
                    raise ValueError(f"shape {descriptor.shape[1:]} is not the acquisition's "
                                     f"{list(self.acquisition.rf_shape)}")
            else:
                nf, nz, nx, two = (int(v) for v in descriptor.shape)
                if two != 2:
                    raise ReconstructorError(f"{descriptor.stream}: last axis must be (I, Q), got {two}")
            self.z_mm = float(g["z0_mm"]) + float(g["dz_mm"]) * np.arange(nz)
            self.x_mm = float(g["x0_mm"]) + float(g["dx_mm"]) * np.arange(nx)
            self.t_s = np.arange(nf) / float(g["prf_hz"])
            self.f0, self.fs, self.c = float(g["f0_hz"]), float(g["fs_iq_hz"]), float(g.get("c_m_s", 1540.0))
        except (KeyError, TypeError, ValueError) as exc:
            what = ("shape (frame, angle, element, sample), geometry.acquisition and the grid (nz, nx)" if self.rf
                    else "shape (frame, z, x, 2) and the grid")
            raise ReconstructorError(f"{descriptor.stream}: SWE descriptor needs {what} in geometry "
                                     f"({str(exc).splitlines()[0]})") from None
        if self.rf:
            self._build(s)
        step = int(self.settings.axial_step)  # type: ignore[attr-defined]
        zm = self.z_mm[::step]
        geo = {"x_mm": self.x_mm.tolist(), "z_mm": zm.tolist(), "axes": ["z", "x"],
               # the B-mode reconstructor's grid form (m), so the live view can lay the map over it
               "grid": {"nx": len(self.x_mm), "nz": len(zm), "x_min": float(self.x_mm[0]) * 1e-3,
                        "x_max": float(self.x_mm[-1]) * 1e-3, "z_min": float(zm[0]) * 1e-3,
                        "z_max": float(zm[-1]) * 1e-3},
               "origin_mm": [float(zm[0]), float(self.x_mm[0])],
               "pixel_spacing_mm": [float(zm[1] - zm[0]) if len(zm) > 1 else 0.0,
                                    float(self.x_mm[1] - self.x_mm[0]) if len(self.x_mm) > 1 else 0.0]}
        self._meta = {"geometry": geo, "method": "Loupas 2D autocorrelation, time-to-peak TOF, E = 3 rho c^2"}

    @classmethod
    def preload(cls) -> None:
        from medacq.daemon.recon.algorithms.beamform import warm_kernels

        if el.HAVE_NUMBA:
            el.loupas_numba(np.zeros((3, 4, 2), np.complex64), 5e6, 10e6)
        warm_kernels()

    # ---- RF: the beamformer (background) --------------------------------------------------
    def _build(self, s: ShearWaveSettings) -> None:
        acq = self.acquisition
        assert acq is not None

        def work() -> None:
            try:
                cache = os.environ.get("MEDACQ_CACHE_DIR", os.path.expanduser("~/.cache/medacq"))
                z_map, _ = el.rf_map_grid(self.z_mm, s.axial_step, s.axial_window)
                bf = el.EnsembleBeamformer(acq, self.x_mm, z_map, f_number=s.f_number, backend=s.backend,
                                           threads=s.threads, cache_dir=cache)
                # compile (or load from numba's cache) the batched demodulation and product kernels,
                # touch the operator: a batch as large as the kernels' threshold
                bf(np.zeros((16, *acq.rf_shape), np.int16))
                if not self._closed:
                    self.beamformer = bf
            except Exception as exc:  # noqa: BLE001 - reported in status
                self.last_error = f"operator build failed: {exc}"
                log.warning("%s: %s", self.descriptor.stream, self.last_error)

        self._building = threading.Thread(target=work, name=f"swe-build-{self.descriptor.stream}", daemon=True)
        self._building.start()

    @property
    def warming(self) -> bool:
        t = self._building
        return self.rf and self.beamformer is None and t is not None and t.is_alive()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until the RF beamformer is built (tests, benchmarks); True at once for IQ."""
        if self._building is not None:
            self._building.join(timeout)
        return not self.rf or self.beamformer is not None

    def close(self) -> None:
        self._closed = True
        self.beamformer = None

    def control(self, action: str, args: dict[str, Any]) -> Any:
        """``status``: the RF beamformer's state (ready, backend, operator MB, frames skipped while
        warming, last error)."""
        if action == "status":
            bf = self.beamformer
            return {"tracking_data": "rf" if self.rf else "iq", "ready": not self.rf or bf is not None,
                    "backend": bf.backend if bf else None,
                    "operator_mb": round(bf.beamformer.operator_bytes / 1e6, 1) if bf else None,
                    "frames_skipped_warmup": self.frames_skipped_warmup, "last_error": self.last_error}
        return super().control(action, args)

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        s: ShearWaveSettings = self.settings  # type: ignore[assignment]
        t0 = time.perf_counter()
        fd, fs = self.f0, self.fs
        if self.rf:
            bf = self.beamformer
            if bf is None:
                self.frames_skipped_warmup += 1
                return []
            if frame.ndim != 4 or frame.shape[1:] != bf.acquisition.rf_shape:
                raise ReconstructorError(f"{self.descriptor.stream}: RF ensemble shape {list(frame.shape)} is not "
                                         f"(frame, {', '.join(map(str, bf.acquisition.rf_shape))})")
            iq = bf(frame)  # on the map's depths already
            z_mm, window = el.rf_map_grid(self.z_mm, s.axial_step, s.axial_window)
            fd, fs, step = bf.f_demod_hz, bf.fs_hz, 1
        else:
            iq = (frame[..., 0].astype(np.float32) + 1j * frame[..., 1].astype(np.float32)).astype(np.complex64)
            z_mm, window, step = self.z_mm, s.axial_window, s.axial_step
        kernel = "numba" if s.kernel == "auto" and el.HAVE_NUMBA else ("numpy" if s.kernel == "auto" else s.kernel)
        r = el.process_ensemble(iq, self.t_s, self.x_mm, z_mm, fd, fs, self.c,
                                window, s.half_window_mm, s.min_peak_um, kernel, step)
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
