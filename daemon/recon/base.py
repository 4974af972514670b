"""The reconstructor contract: one small interface every modality implements.

A reconstructor is built from a stream's descriptor (``__init__``), processes one frame
at a time (``process``), or a run of up to ``max_batch`` consecutive frames in one call
(``process_batch``), and returns zero or more :class:`Output` items per frame, each published
on ``recon/<stream>`` (``name == ""``) or ``recon/<stream>/<name>``. When the source
descriptor changes the stage builds a new reconstructor and closes the old one
(:meth:`Reconstructor.close`), as it does when it drops one (the modality has no
reconstructor any more, the stage stops); ``control`` takes modality actions
(re-reference, capture calibration) from the control plane.

Quality of service: each class declares what it needs from the stage's queue for its
streams, ``qos`` (a :class:`~medacq.protocols.qos.QosPolicy`: ``latest`` for live images,
``fifo`` with ``max_age_ms`` for filters and CT projections, ``lossless``), and ``max_batch``;
``[recon.qos.<stream>]`` overrides them per stream
(:func:`~medacq.daemon.recon.registry.resolve_qos`). A reconstructor that builds something
slow (an operator, a forward solve) in the background says so with :attr:`Reconstructor.warming`:
the stage leaves frames in the queue meanwhile, where the policy handles them.

Threading: the stage calls every method (``process``, ``process_batch``, ``on_gap``,
``on_superseded``, ``control``, ``close``) from the stream's own worker thread, one at a
time; only :attr:`~Reconstructor.warming` is also read from other threads, and the class
method :meth:`~Reconstructor.preload` runs on the stage's preload thread.

Settings: each class names a pydantic model, ``Settings`` (``extra="forbid"``), for its
``[recon.settings.<modality>]`` table; ``medacq check-config`` validates the table against it
(:func:`~medacq.daemon.recon.registry.check_recon_settings`), so a misspelt key is an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from medacq.protocols.qos import QosPolicy
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
    qos: ClassVar[QosPolicy] = QosPolicy(policy="fifo")
    """The queue policy this reconstructor's streams get by default (only the fields set here
    count; ``max_frames`` defaults to ``[recon] queue_depth``). Default: ``fifo``, no age bound."""
    max_batch: ClassVar[int] = 1
    """Most frames the stage hands to :meth:`process_batch` in one call (default batch size of
    the policy; ``[recon.qos.<stream>] max_batch`` overrides it). Under ``latest`` the queue holds
    one frame, so batches are single frames."""

    isolation: ClassVar[Literal["thread", "process", "realtime"]] = "thread"
    """Where the stage runs it: ``thread`` (a thread of the stage's process, the default) or
    ``process`` (a worker process of its own, :mod:`medacq.daemon.recon.worker_process`: its
    Python does not wait for the GIL behind the other streams'; frames cross in shared memory).
    ``realtime``: a process whose reconstructor thread runs ``SCHED_RR`` (``[recon]
    realtime_priority``; needs CAP_SYS_NICE or ``RLIMIT_RTPRIO``, else the normal class, reported).
    ``[recon.isolation] <stream> = "thread"|"process"|"realtime"`` overrides it per stream."""

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

    def process_batch(self, headers: Sequence[dict[str, Any]], frames: Sequence[np.ndarray]) -> list[list[Output]]:
        """Consume consecutive frames of one series and descriptor (oldest first, at most
        ``max_batch``); return each frame's outputs, in the same order (one list per frame).

        Default: :meth:`process` on each frame (the stage then calls :meth:`process` itself,
        frame by frame, publishing each frame's outputs at once). Override it where one call
        on the batch is cheaper than one per frame (the B-mode beamformer reads its operator
        once per batch); a run of a single frame still goes to :meth:`process`. If it raises,
        every frame of the batch counts as an error and none is published."""
        return [self.process(h, f) for h, f in zip(headers, frames)]

    @classmethod
    def preload(cls) -> None:
        """Warm what every instance of this class shares in this process, before any stream
        arrives: compile (or load from numba's on-disk cache) its kernels, import what it
        imports lazily. The stage calls it once per registered class when it starts, on a
        background thread (:func:`~medacq.daemon.recon.registry.preload_reconstructors`),
        so the first descriptor of a stream only builds the per-stream parts. Must be
        idempotent and safe to call from any thread; a failure is logged, not fatal (the
        build then does the work). Default: nothing (importing the module is enough)."""

    @property
    def warming(self) -> bool:
        """True while this reconstructor builds what it needs in the background (an operator,
        a forward solve): the stage then hands it no frames and reports ``warming``; frames
        wait in the queue under its policy (``latest``: only the newest survives). Must be
        cheap and safe to read from any thread. Default: False."""
        return False

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Source frames were lost. Default: nothing (stateless reconstructors)."""

    def on_superseded(self, count: int) -> None:
        """``count`` source frames were replaced in the stage's queue (``latest`` policy)
        before this reconstructor saw them; the next frame is the newest. Not a loss (nothing
        the consumer asked for is missing), so no gap is announced; a reconstructor that keeps
        a time base over frames (the EIT respiratory rate) accounts for them here. Called
        just before the next frame is processed. Default: nothing."""

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
