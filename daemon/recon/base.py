"""The reconstructor contract: one small interface every modality implements.

A reconstructor is built from a stream's descriptor (``__init__``), processes one frame
at a time (``process``) and returns zero or more :class:`Output` items, each published on
``recon/<stream>`` (``name == ""``) or ``recon/<stream>/<name>``. When the source
descriptor changes the stage builds a new reconstructor; ``control`` takes modality
actions (re-reference, capture calibration) from the control plane.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from medacq.protocols.stream import StreamDescriptor

__all__ = ["Output", "Reconstructor", "ReconstructorError"]


class ReconstructorError(Exception):
    """A frame the reconstructor cannot use (wrong shape, missing calibration...)."""


@dataclass(slots=True)
class Output:
    """One result.

    Attributes:
        name: output stream suffix (``""`` → ``recon/<stream>``, ``"hr"`` → ``recon/<stream>/hr``).
        data: the array (C-contiguous after publishing).
        axes: axis names, e.g. ``["y", "x"]``.
        units: physical unit.
        meta: JSON-able per-frame metadata.
        descriptor_meta: extra descriptor content for this output (geometry, labels...).
    """

    name: str
    data: np.ndarray
    axes: list[str]
    units: str = ""
    meta: dict[str, Any] | None = None
    descriptor_meta: dict[str, Any] = field(default_factory=dict)


class Reconstructor(ABC):
    """Base class. Subclasses set ``modality`` and implement :meth:`process`.

    Args:
        descriptor: the source stream's descriptor.
        settings: ``[recon.settings.<modality>]`` from the rig config.
    """

    modality: ClassVar[str]

    def __init__(self, descriptor: StreamDescriptor, settings: dict[str, Any]) -> None:
        self.descriptor = descriptor
        self.settings = settings

    @abstractmethod
    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        """Consume one source frame; return the outputs it completes (possibly none)."""

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Source frames were lost. Default: nothing (stateless reconstructors)."""

    def control(self, action: str, args: dict[str, Any]) -> Any:
        """A modality action from the control plane. Default: none are known."""
        raise ReconstructorError(f"{self.modality} reconstructor has no action {action!r}")
