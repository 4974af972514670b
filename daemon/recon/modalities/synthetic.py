"""Reconstructor for the synthetic device: an exponential running mean per element.

Proves the raw → recon path end to end: ``recon/<stream>`` carries
``mean_k = mean_{k-1} + alpha * (frame_k - mean_{k-1})`` in float32 with the source's
axes, restarting with each series. Action ``reset`` restarts the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.base import Output, Reconstructor

__all__ = ["RunningMean", "RunningMeanSettings"]


class RunningMeanSettings(BaseModel):
    """``[recon.settings.synthetic]``."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.1, gt=0, le=1,
                         description="weight of the newest frame in the running mean (0 < alpha <= 1; 1 = no averaging)")


class RunningMean(Reconstructor):
    """Exponential running mean. Settings: :class:`RunningMeanSettings`."""

    modality = "synthetic"
    Settings = RunningMeanSettings

    def __init__(self, descriptor: StreamDescriptor, settings: RunningMeanSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        self.settings: RunningMeanSettings
        self.alpha = self.settings.alpha
        self.mean: np.ndarray | None = None
        self.series: str | None = None

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        x = frame.astype(np.float32)
        if self.mean is None or self.series != header["series"] or self.mean.shape != x.shape:
            self.mean = x.copy()
            self.series = header["series"]
        else:
            self.mean += np.float32(self.alpha) * (x - self.mean)
        return [Output("", self.mean.copy(), list(self.descriptor.axes), self.descriptor.units,
                       descriptor_meta={"alpha": self.alpha})]

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "reset":
            self.mean = None
            return {"reset": True}
        return super().control(action, args)
