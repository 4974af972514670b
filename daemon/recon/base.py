"""The reconstructor contract: one small interface every modality implements.

A reconstructor is built from a stream's descriptor (``__init__``), processes one frame
at a time (``process``) and returns zero or more :class:`Output` items, each published on
``recon/<stream>`` (``name == ""``) or ``recon/<stream>/<name>``. When the source
descriptor changes the stage builds a new reconstructor and closes the old one
(:meth:`Reconstructor.close`), as it does when it drops one (the modality has no
reconstructor any more, the stage stops); ``control`` takes modality actions
(re-reference, capture calibration) from the control plane.

Settings: each class names a pydantic model, ``Settings`` (``extra="forbid"``), for its
``[recon.settings.<modality>]`` table; ``medacq check-config`` validates the table against it
(:func:`~medacq.daemon.recon.registry.check_recon_settings`), so a misspelt key is an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from medacq.protocols.stream import StreamDescriptor

__all__ = ["NoSettings", "Output", "Reconstructor", "ReconstructorError"]


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


class NoSettings(BaseModel):
    """The settings of a reconstructor that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid")


class Reconstructor(ABC):
    """Base class. Subclasses set ``modality`` and ``Settings`` and implement :meth:`process`.

    Args:
        descriptor: the source stream's descriptor.
        settings: ``[recon.settings.<modality>]`` from the rig config, as an instance of
            ``Settings`` or as the raw table (validated here; a bad key or value raises
            :class:`pydantic.ValidationError`). ``self.settings`` is the validated model.
    """

    modality: ClassVar[str]
    Settings: ClassVar[type[BaseModel]] = NoSettings
    """pydantic model of ``[recon.settings.<modality>]`` (``extra="forbid"``, defaults for every field)."""

    def __init__(self, descriptor: StreamDescriptor, settings: BaseModel | Mapping[str, Any] | None = None) -> None:
        self.descriptor = descriptor
        self.settings = self.validate_settings(settings)

    @classmethod
    def validate_settings(cls, raw: BaseModel | Mapping[str, Any] | None) -> BaseModel:
        """``raw`` as a ``Settings`` instance (raises :class:`pydantic.ValidationError`)."""
        if isinstance(raw, cls.Settings):
            return raw
        if isinstance(raw, BaseModel):
            raw = raw.model_dump(exclude_unset=True)
        return cls.Settings.model_validate(dict(raw or {}))

    @abstractmethod
    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        """Consume one source frame; return the outputs it completes (possibly none)."""

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Source frames were lost. Default: nothing (stateless reconstructors)."""

    def control(self, action: str, args: dict[str, Any]) -> Any:
        """A modality action from the control plane. Default: none are known."""
        raise ReconstructorError(f"{self.modality} reconstructor has no action {action!r}")

    def close(self) -> None:
        """Release what this reconstructor holds beyond plain memory: threads, pools, sockets,
        GPU buffers, open files. The stage calls it once when it replaces the reconstructor
        (the source descriptor changed) or drops it (no reconstructor for the modality any
        more, stage stopped); it feeds it no frames afterwards.
        It must not raise and must return promptly (it runs on the stream's worker thread).
        Default: nothing to release."""
