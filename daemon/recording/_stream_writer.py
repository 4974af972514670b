"""A small base of the recorder writers that put one stream into one file made from its
descriptor (:class:`~medacq.daemon.recording.petsird.PetsirdStreamWriter`,
:class:`~medacq.daemon.recording.ismrmrd.IsmrmrdStreamWriter`).

The file is created at the first descriptor of a stream of :attr:`DescriptorStreamWriter.modality`;
frames that come before it (a subscriber that joined after the series started waits for the daemon's
periodic descriptor) are held, up to ``max_backlog_bytes`` (the oldest dropped first and counted in
``backlog_dropped_frames``), and written then. Frames of other streams are skipped and counted; gaps
of the recorded stream are counted (neither format has a gap record).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

__all__ = ["DescriptorStreamWriter"]


class DescriptorStreamWriter(ABC):
    """The recorder's writer interface (``message``, ``gap``, ``checkpoint``, ``close``, ``abort``,
    ``status`` and the counters the recorder's status reads) for one stream of :attr:`modality`
    (module doc). A subclass opens its file in :meth:`_open`, writes a frame in :meth:`_append` and
    implements :meth:`checkpoint` and ``status``."""

    #: the descriptor ``modality`` whose stream is recorded
    modality: ClassVar[str]
    #: the file writer, from :meth:`_open` (it has ``close()``)
    writer: Any

    def __init__(self, path: str, topics: list[str] | None, max_backlog_bytes: int) -> None:
        self.path, self.topics = path, list(topics or [""])
        self.writer = None
        self.topic: str | None = None
        self.state = "waiting"
        self.max_backlog_bytes = max_backlog_bytes
        self._backlog: list[tuple[str, dict[str, Any], np.ndarray]] = []  # frames that came before any descriptor
        self._backlog_bytes = 0
        self.backlog_dropped_frames = self.skipped_frames = 0
        self.frames_committed = self.pending_frames = self.pending_bytes = 0
        self.checkpoints = self.gaps_committed = 0
        self.last_checkpoint_s = self.max_checkpoint_s = 0.0
        self.gaps = self.lost_frames = 0

    # ---- hooks ------------------------------------------------------------------------------------
    @abstractmethod
    def _open(self, topic: str, desc: dict[str, Any]) -> None:
        """Create :attr:`writer` (the file) from the stream's descriptor."""

    @abstractmethod
    def _append(self, h: dict[str, Any], arr: np.ndarray) -> None:
        """Write one frame of the recorded stream (``ValueError`` if it is not one of its frames)."""

    @abstractmethod
    def checkpoint(self, complete: bool = False) -> int:
        """Commit what was handed over; return the frames committed."""

    def _finish(self) -> None:
        """At :meth:`close`, before the file closes: write what is still held. Default: nothing."""

    # ---- the writer interface ---------------------------------------------------------------------
    def message(self, topic: str, h: dict[str, Any], arr: np.ndarray | None) -> None:
        desc = h.get("descriptor")
        if self.writer is None and isinstance(desc, dict) and desc.get("modality") == self.modality:
            self._open(topic, desc)
            self.topic, self.state = topic, "recording"
            backlog, self._backlog, self._backlog_bytes = self._backlog, [], 0
            for t, hh, a in backlog:  # frames that arrived before the descriptor (a subscriber joins late)
                self.message(t, hh, a)
        if arr is None or h.get("kind") != "frame":
            return
        if self.writer is None:  # no descriptor yet: keep the frame (bounded; the oldest go first)
            self._backlog.append((topic, dict(h), np.array(arr, copy=True)))
            self._backlog_bytes += arr.nbytes
            while self._backlog_bytes > self.max_backlog_bytes and self._backlog:
                self._backlog_bytes -= self._backlog.pop(0)[2].nbytes
                self.backlog_dropped_frames += 1
            return
        if topic != self.topic:
            self.skipped_frames += 1
            return
        self._append(h, arr)
        self.pending_frames += 1
        self.pending_bytes += arr.nbytes

    def gap(self, topic: str, stream: str, series: str, first_seq: int | None, count: int, announced: bool,
            reason: str, lost_samples: int | None) -> None:
        if topic == self.topic:
            self.gaps += 1
            self.gaps_committed += 1
            self.lost_frames += int(count)

    def close(self, reason: str = "") -> None:
        """Commit, write what is held and close the file. ``RuntimeError`` if no stream of
        :attr:`modality` was seen (no file is written)."""
        if self.state == "closed":
            return
        self.state = "closed"
        if self.writer is None:
            raise RuntimeError(f"nothing to record in {self.path}: no {self.modality} stream descriptor on "
                               f"{' '.join(self.topics)}")
        self.checkpoint(True)
        self._finish()
        self.writer.close()

    def abort(self, error: str) -> None:
        """The recorder failed: close the file with what was written so far (a readable file)."""
        if self.state != "closed" and self.writer is not None:
            self.state = "closed"
            self.writer.close()
        self.state = "closed"

    @property
    def dropped_frames(self) -> int:
        """Frames not in the file (other streams' frames, backlog overflow before the descriptor)."""
        return self.skipped_frames + self.backlog_dropped_frames
