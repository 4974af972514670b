"""EDF+/BDF+ recordings from stream messages: the adapter between the recorder and :mod:`medacq.daemon.recording.edf`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np


from medacq.daemon.recording import edf as record_edf

__all__ = ["DEFAULT_SETTLE_S", "EdfStreamWriter", "edf_settle_s"]

log = logging.getLogger("medacq.daemon.recording")

DEFAULT_SETTLE_S = 2.0


def edf_settle_s(descriptor_interval_s: float | None = None) -> float:
    """How long an EDF/BDF recorder waits for descriptors after its first frame: 2 s, or one
    descriptor re-publication interval plus 1 s when that is longer (a recorder that joins
    mid-stream sees each stream's descriptor within one interval)."""
    return DEFAULT_SETTLE_S if descriptor_interval_s is None else max(DEFAULT_SETTLE_S, descriptor_interval_s + 1.0)


class EdfStreamWriter:
    """``--format edf|bdf``: the :class:`Recorder`'s writer for :mod:`medacq.daemon.recording.edf`.

    EDF needs every signal in its header before the first record, so frames (and gaps) are
    held in a bounded backlog until the file can be created: when every requested topic
    that names a stream exactly, and every topic seen so far, has a descriptor, or else
    ``settle_s`` after the first frame. Streams are keyed by topic (``raw/eeg0`` and
    ``recon/eeg0`` share the stream name ``eeg0``). A topic whose descriptor is not an EDF
    signal (``recon/eeg0/bandpower``, ``recon/ekg0/hr``) is *skipped*; one that shows up
    after the file was created is *late*: its frames are dropped and counted, with a
    warning in the log and in :meth:`status` (never silently).

    Args:
        path, bdf: output file, BDF+ (24 bit) or EDF+ (16 bit).
        topics: the recorder's topic prefixes.
        settle_s: seconds to wait after the first frame for the other streams' descriptors.
        max_backlog_bytes, max_backlog_messages: backlog bound while waiting; beyond it the
            oldest entries are dropped (counted in ``backlog_dropped_frames``).
    """

    def __init__(self, path: str, bdf: bool, topics: list[str] | None = None, settle_s: float = DEFAULT_SETTLE_S,
                 max_backlog_bytes: int = 64 << 20, max_backlog_messages: int = 100_000) -> None:
        self._mod = record_edf
        self.path, self.bdf = path, bdf
        self.topics = list(topics or [""])
        self.settle_s = settle_s
        self.max_backlog_bytes = max_backlog_bytes
        self.max_backlog_messages = max_backlog_messages
        self.rec: Any = None
        self.state = "waiting"  # waiting (for descriptors) -> recording -> closed
        self.descriptors: dict[str, dict[str, Any]] = {}  # by topic
        self.seen: dict[str, int] = {}  # frames per topic while waiting
        # ("frame", topic, header, array) or ("gap", topic, write_gap keywords, None), in arrival order
        self.backlog: deque[tuple[str, str, Any, Any]] = deque()
        self.backlog_bytes = 0
        self.backlog_dropped_frames = 0
        self.first_frame_at: float | None = None
        self.created_after_s: float | None = None
        self.frames_in_file: dict[str, int] = {}  # by topic: the streams in the file
        self.skipped: dict[str, str] = {}  # topic -> why it is not an EDF signal
        self.skipped_frames: dict[str, int] = {}
        self.late: dict[str, int] = {}  # topic -> frames dropped (arrived after the file was created)
        self.rejected: dict[str, int] = {}  # topic -> frames that did not fit the header (channel count)
        self.gaps_ignored = 0
        self.warnings: list[str] = []
        self.frames_committed = self.pending_frames = self.pending_bytes = self.checkpoints = 0
        self.gaps_committed = self.commit_bytes = 0
        self.last_checkpoint_s = self.max_checkpoint_s = 0.0

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def dropped_frames(self) -> int:
        """Frames received but not in the file: late streams, rejected frames, backlog overflow."""
        return sum(self.late.values()) + sum(self.rejected.values()) + self.backlog_dropped_frames

    def _warn(self, text: str) -> None:
        log.warning("%s: %s", self.path, text)
        if len(self.warnings) < 50:
            self.warnings.append(text)

    def _spec(self, topic: str) -> tuple[Any, str | None]:
        try:
            return self._mod.signal_spec(self.descriptors[topic]), None
        except ValueError as exc:
            return None, str(exc)

    def _buffer(self, entry: tuple[str, str, Any, Any]) -> None:
        self.backlog.append(entry)
        if entry[0] == "frame":
            self.backlog_bytes += entry[3].nbytes
        while self.backlog and (self.backlog_bytes > self.max_backlog_bytes
                                or len(self.backlog) > self.max_backlog_messages):
            kind, topic, _, arr = self.backlog.popleft()
            if kind == "frame":
                self.backlog_bytes -= arr.nbytes
                self.backlog_dropped_frames += 1
        self.pending_bytes = self.backlog_bytes

    # -- creating the file ----------------------------------------------------------------------
    def _all_known(self) -> bool:
        return all(t in self.descriptors for t in self.topics) and all(t in self.descriptors for t in self.seen)

    def _maybe_create(self, final: bool = False) -> None:
        if self.rec is not None or self.state == "closed":
            return
        settled = self.first_frame_at is not None and time.monotonic() - self.first_frame_at >= self.settle_s
        if final or settled or self._all_known():
            self._create()

    def _create(self) -> bool:
        """Create the file with every stream whose descriptor is known; replay the backlog."""
        usable: dict[str, dict[str, Any]] = {}
        for topic in sorted(self.descriptors):
            spec, why = self._spec(topic)
            if spec is None:
                if topic not in self.skipped:
                    self.skipped[topic] = why or "not an EDF signal"
                    log.info("%s: %s is not recorded: %s", self.path, topic, why)
            else:
                usable[topic] = self.descriptors[topic]
        if not usable:
            return False
        starts = [int(h["t_host_ns"]) for kind, t, h, _ in self.backlog
                  if kind == "frame" and t in usable and h.get("t_host_ns")]
        self.rec = self._mod.EdfRecorder(self.path, usable, bdf=self.bdf, start_ns=min(starts) if starts else None,
                                         recording=f"medacq {' '.join(usable)}")
        self.frames_in_file = {t: 0 for t in usable}
        self.state = "recording"
        if self.first_frame_at is not None:
            self.created_after_s = round(time.monotonic() - self.first_frame_at, 3)
        backlog, self.backlog = self.backlog, deque()
        self.backlog_bytes = self.pending_bytes = 0
        for kind, topic, h, arr in backlog:
            if kind == "frame":
                self._write(topic, h, arr)
            else:
                self._write_gap(topic, h)
        return True

    # -- input (the Recorder's writer interface) ------------------------------------------------
    def message(self, topic: str, h: dict[str, Any], arr: np.ndarray | None) -> None:
        kind = h["kind"]
        if kind == "descriptor" and h.get("descriptor"):
            self.descriptors[topic] = h["descriptor"]
            if topic in self.late:
                spec, why = self._spec(topic)
                if spec is None:  # not an EDF signal after all: skipped, not late
                    self.skipped[topic] = why or "not an EDF signal"
                    self.skipped_frames[topic] = self.skipped_frames.get(topic, 0) + self.late.pop(topic)
                    self.warnings = [w for w in self.warnings if not w.startswith(f"{topic}:")]
        elif kind == "frame" and arr is not None:
            if self.rec is None:
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                self.seen[topic] = self.seen.get(topic, 0) + 1
                self._buffer(("frame", topic, h, np.array(arr, copy=True)))
            else:
                self._write(topic, h, arr)
        self._maybe_create()

    def _write(self, topic: str, h: dict[str, Any], arr: np.ndarray) -> None:
        if topic in self.frames_in_file:
            try:
                self.rec.write_frame(h, arr, key=topic)
            except ValueError as exc:  # a descriptor change EDF cannot follow (channel count)
                if topic not in self.rejected:
                    self._warn(f"{topic}: frames no longer fit the file ({exc}); dropped from here on")
                self.rejected[topic] = self.rejected.get(topic, 0) + 1
                return
            self.frames_in_file[topic] += 1
            self.pending_frames += 1
        elif topic in self.skipped:
            self.skipped_frames[topic] = self.skipped_frames.get(topic, 0) + 1
        else:
            if topic in self.descriptors:
                spec, why = self._spec(topic)
                if spec is None:
                    self.skipped[topic] = why or "not an EDF signal"
                    self.skipped_frames[topic] = self.skipped_frames.get(topic, 0) + 1
                    return
            if topic not in self.late:
                self._warn(f"{topic}: no descriptor before the file was created "
                           f"({self.created_after_s if self.created_after_s is not None else 0} s after the first "
                           f"frame); EDF cannot add a signal later, its frames are dropped and counted")
            self.late[topic] = self.late.get(topic, 0) + 1

    def _write_gap(self, topic: str, kw: dict[str, Any]) -> None:
        if topic in self.frames_in_file:
            self.rec.write_gap(topic, **kw)
            self.gaps_committed += 1
        else:
            self.gaps_ignored += 1

    def gap(self, topic: str, stream: str, series: str, first_seq: int | None, count: int, announced: bool,
            reason: str, lost_samples: int | None) -> None:
        kw = {"first_seq": first_seq, "count": count, "lost_samples": lost_samples, "reason": reason}
        if self.rec is None:
            self._buffer(("gap", topic, kw, None))
        else:
            self._write_gap(topic, kw)

    def checkpoint(self, complete: bool = False) -> int:
        t0 = time.perf_counter()
        self._maybe_create()
        if self.rec is not None:
            self.rec.flush()
        n, self.pending_frames = self.pending_frames, 0
        self.frames_committed += n
        self.checkpoints += 1
        self.last_checkpoint_s = time.perf_counter() - t0
        self.max_checkpoint_s = max(self.max_checkpoint_s, self.last_checkpoint_s)
        return n

    def close(self, reason: str = "") -> None:
        """Create the file if it is still waiting, write the last record, close it.

        Raises ``RuntimeError`` when no stream could be recorded (no file is written)."""
        if self.state == "closed":
            return
        if self.rec is None:
            self._maybe_create(final=True)
        if self.rec is None:
            self.state = "closed"
            seen = ", ".join(f"{t} ({n} frames)" for t, n in self.seen.items()) or "no frames"
            skipped = "; ".join(f"{t}: {w}" for t, w in self.skipped.items())
            raise RuntimeError(f"nothing to record in {self.path}: no EDF-compatible stream descriptor on "
                               f"{' '.join(self.topics)} (seen: {seen}{'; skipped ' + skipped if skipped else ''})")
        try:
            self.checkpoint(True)
        finally:
            self.state = "closed"
            self.rec.close()

    def abort(self, error: str) -> None:
        """The recorder failed: note it in the file and close the file (what was written stays readable)."""
        if self.state == "closed" or self.rec is None or self.rec.closed:
            self.state = "closed"
            return
        self.state = "closed"
        try:
            self.rec.add_annotation(f"RECORDING FAILED: {error}")
        finally:
            self.rec.close()

    def status(self) -> dict[str, Any]:
        """EDF specifics for :meth:`Recorder.status`."""
        rec = self.rec
        waiting = None
        if self.rec is None and self.first_frame_at is not None:
            waiting = round(time.monotonic() - self.first_frame_at, 3)
        out: dict[str, Any] = {
            "state": self.state, "settle_s": self.settle_s, "waiting_s": waiting,
            "created_after_s": self.created_after_s,
            "backlog_frames": sum(1 for e in list(self.backlog) if e[0] == "frame"),
            "backlog_bytes": self.backlog_bytes, "backlog_dropped_frames": self.backlog_dropped_frames,
            "skipped_streams": dict(self.skipped), "skipped_frames": dict(self.skipped_frames),
            "late_streams": dict(self.late), "rejected_frames": dict(self.rejected),
            "dropped_frames": self.dropped_frames, "gaps_ignored": self.gaps_ignored,
            "records": rec.records if rec is not None else 0,
            "annotations": len(rec.annotations) if rec is not None else 0,
            "annotations_dropped": rec.annotations_dropped if rec is not None else 0,
        }
        return out

    def stream_status(self) -> dict[str, Any]:
        """Per recorded topic: EDF labels, rate, frames/samples in the file, fills, device index at the start."""
        if self.rec is None:
            return {t: {"frames": 0, "waiting": True, "has_descriptor": t in self.descriptors}
                    for t in list(self.seen)}
        return dict(self.rec.stream_info())


# -- the recorder (a subscriber thread) ------------------------------------------------------
