"""Reconstruction-stage binding for tactile imaging streams (modality ``tactile``).

Source frames: ``float32 (row, col)`` in kPa (zero and gain map applied by the driver; dead
cells NaN), ``geometry.pitch_mm``, per-frame ``meta.depth_mm`` (indentation).

Outputs (algorithms in :mod:`medacq.daemon.recon.algorithms.tactile`):

* ``recon/<stream>``: ``float32 (row, col)`` pressure image, kPa, dead cells filled from
  their neighbours.
* ``recon/<stream>/normalised``: ``float32 (row, col)``, the image over its mean
  (dimensionless); all zeros while the probe is unloaded.
* ``recon/<stream>/stiffness``: ``float32 (row, col)`` relative stiffness: the per-cell
  slope of pressure against depth over its median (dimensionless; NaN until the probe has
  pressed over at least 1 mm of depth).
* ``recon/<stream>/inclusion``: ``float32 (quantity,)`` = ``[found, row, col, x_mm, y_mm,
  diameter_mm, peak_ratio, relative_stiffness]`` for the hardest spot of this frame
  (position in cells and in mm from the probe centre; ``relative_stiffness`` = mean slope
  over the inclusion's region over the median slope).

Settings (``[recon.settings.tactile]``, :class:`TactileReconSettings`): ``threshold``
(0.12), ``min_mean_kpa`` (0.2), ``min_depth_mm`` (0.5), ``forget`` (0.999). Action
``reset`` restarts the slope accumulation; ``info`` reports it. Queue policy ``fifo`` with
a 250 ms age bound: the slope wants every frame, the images only fresh ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.algorithms.tactile import SlopeAccumulator, detect_inclusion, fill_dead_cells
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError

__all__ = ["TactileImager", "TactileReconSettings", "INCLUSION_FIELDS"]

INCLUSION_FIELDS = ["found", "row", "col", "x_mm", "y_mm", "diameter_mm", "peak_ratio", "relative_stiffness"]


class TactileReconSettings(BaseModel):
    """``[recon.settings.tactile]``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.12, gt=0, description="normalised peak excess over the median that counts as "
                             "an inclusion (dimensionless)")
    min_mean_kpa: float = Field(default=0.2, ge=0, description="below this mean pressure the probe is unloaded "
                                "(no detection), kPa")
    min_depth_mm: float = Field(default=0.5, ge=0, description="frames shallower than this are left out of the "
                                "slope, mm")
    forget: float = Field(default=0.999, gt=0.5, le=1.0, description="per-frame weight kept by the slope sums")


class TactileImager(Reconstructor):
    """Pressure image, hard-inclusion detection and relative stiffness of a tactile probe stream."""

    modality = "tactile"
    Settings = TactileReconSettings
    qos = QosPolicy(policy="fifo", max_age_ms=250)
    max_batch = 16

    def __init__(self, descriptor: StreamDescriptor,
                 settings: TactileReconSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: TactileReconSettings = self.settings  # type: ignore[assignment]
        if len(descriptor.shape) != 2 or descriptor.units != "kPa":
            raise ReconstructorError(f"{descriptor.stream}: tactile frames must be (row, col) in kPa, got shape "
                                     f"{descriptor.shape} in {descriptor.units!r}")
        self.shape = (int(descriptor.shape[0]), int(descriptor.shape[1]))
        self.pitch_mm = float(descriptor.geometry.get("pitch_mm", 1.0))
        self.slopes = SlopeAccumulator(self.shape, s.min_depth_mm, s.forget)
        geo = {"pitch_mm": self.pitch_mm, "x_mm": descriptor.geometry.get("x_mm"),
               "y_mm": descriptor.geometry.get("y_mm")}
        self._img_meta = {"geometry": geo, "method": "zero + gain map (driver), dead cells filled"}
        self._n_meta = {"geometry": geo, "method": "pressure / mean pressure"}
        self._k_meta = {"geometry": geo, "method": "per-cell slope dp/d(depth) over its median"}
        self._inc_meta = {"channel_names": INCLUSION_FIELDS,
                          "units": ["bool", "cell", "cell", "mm", "mm", "mm", "1", "1"]}

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        s: TactileReconSettings = self.settings  # type: ignore[assignment]
        if frame.shape != self.shape:
            raise ReconstructorError(f"frame of shape {frame.shape}, descriptor says {self.shape}")
        p = fill_dead_cells(frame)
        meta = header.get("meta") or {}
        depth = float(meta.get("depth_mm", float("nan")))
        self.slopes.add(p, depth)
        mean = float(p.mean())
        norm = (p / mean).astype(np.float32) if mean > s.min_mean_kpa else np.zeros_like(p)
        est = detect_inclusion(p, self.pitch_mm, s.threshold, s.min_mean_kpa)
        rel = self.slopes.relative_stiffness().astype(np.float32)
        k_inc = float(np.nanmean(rel[est.mask])) if est.found and np.isfinite(rel[est.mask]).any() else float("nan")
        vec = est.as_vector(k_inc)
        fmeta = {"depth_mm": depth, "mean_kpa": mean}
        return [
            Output("", p, ["row", "col"], "kPa", meta=fmeta, descriptor_meta=dict(self._img_meta)),
            Output("normalised", norm, ["row", "col"], "1", meta=fmeta, descriptor_meta=dict(self._n_meta)),
            Output("stiffness", rel, ["row", "col"], "1", meta={"frames": self.slopes.frames},
                   descriptor_meta=dict(self._k_meta)),
            Output("inclusion", vec, ["quantity"], "mixed",
                   meta={**dict(zip(INCLUSION_FIELDS, [None if not np.isfinite(v) else float(v) for v in vec])),
                         **fmeta},
                   descriptor_meta=dict(self._inc_meta)),
        ]

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "reset":
            self.slopes.reset()
            return {"reset": True}
        if action == "info":
            return {"slope_frames": self.slopes.frames, "ready": self.slopes.ready,
                    "depth_range_mm": [self.slopes.d_min, self.slopes.d_max] if self.slopes.frames else None}
        return super().control(action, args)
