"""Recording: ``medacq record`` and the daemon's ``record`` service, HDF5 that survives ``kill -9``.

The writers: :mod:`~medacq.daemon.recording.hdf5` (crash-safe through :mod:`~medacq.daemon.recording.wal`) and
:mod:`~medacq.daemon.recording.edf_stream` (EDF+/BDF+). Layout and crash consistency: ``docs/operations.md``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from collections.abc import Callable
from typing import Any

from medacq.daemon.recording.edf_stream import EdfStreamWriter, edf_settle_s
from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter

__all__ = [
    "Recorder",
    "RecordingService",
    "recordings_dir",
    "recording_service",
    "recording_status",
    "edf_settle_s",
]

log = logging.getLogger("medacq.daemon.recording.recorder")

_I64_MAX = (1 << 63) - 1


def _header_problem(h: dict[str, Any]) -> str | None:
    """Why a decoded header cannot be recorded (the fields the writers rely on), or ``None``.

    :func:`~medacq.protocols.stream.decode_header` checks a frame's header only on its fast path
    (presence of the required fields, ``seq``, ``dtype``, ``shape``); a hostile or broken
    publisher can still send, say, a string clock. Checked here, before the message reaches
    the writer, so that it is skipped and counted instead of failing a checkpoint.
    """
    if not (isinstance(h.get("stream"), str) and isinstance(h.get("series"), str)):
        return "stream and series must be strings"
    for k in ("t_host_ns", "t_mono_ns"):
        v = h.get(k)
        if type(v) is not int or not -_I64_MAX <= v <= _I64_MAX:
            return f"{k} must be a 64-bit integer"
    if h["seq"] > _I64_MAX:
        return "seq beyond 2**63 - 1 (the recording stores gap positions as int64)"
    if h["kind"] == "frame":
        td = h.get("t_device")
        if td is not None:
            if type(td) not in (int, float):
                return "t_device must be a number"
            try:
                float(td)
            except OverflowError:
                return "t_device does not fit a float64"
        axes, units = h.get("axes"), h.get("units")
        if axes is not None and not (isinstance(axes, list) and all(isinstance(a, str) for a in axes)):
            return "axes must be a list of strings"
        if units is not None and not isinstance(units, str):
            return "units must be a string"
    return None


def _gap_problem(g: Any) -> str | None:
    """Why a gap cannot be recorded as it is (int64 fields of the ``gaps`` table), or ``None``."""
    if not (isinstance(g.stream, str) and isinstance(g.series, str)):
        return "gap of a stream whose name or series is not a string"
    if g.first_seq is not None and not 0 <= g.first_seq <= _I64_MAX:
        return f"gap first_seq {g.first_seq} out of range"
    if type(g.count) is not int or not 0 <= g.count <= _I64_MAX:
        return f"gap count {g.count!r} out of range"
    return None


class _Inbox:
    """The bounded hand-off from the receive thread to the writer thread.

    Frames are bounded in number and bytes; other messages (descriptors, series start/end,
    gaps: small, but they shape the file) in number only, separately, so that a flood of
    frames never pushes them out. :meth:`put` never blocks: it returns ``False`` when the
    item does not fit and the caller counts the loss.
    """

    def __init__(self, max_frames: int, max_bytes: int, max_other: int) -> None:
        self.max_frames, self.max_bytes, self.max_other = max_frames, max_bytes, max_other
        self._items: deque[tuple[Any, ...]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.frames = self.bytes = self.other = 0
        self.peak_frames = self.peak_bytes = 0

    def put(self, item: tuple[Any, ...], nbytes: int = 0, frame: bool = False, force: bool = False) -> bool:
        with self._cond:
            if frame:
                if not force and (self.frames >= self.max_frames
                                  or (self.bytes and self.bytes + nbytes > self.max_bytes)):
                    return False
                self.frames += 1
                self.bytes += nbytes
                self.peak_frames = max(self.peak_frames, self.frames)
                self.peak_bytes = max(self.peak_bytes, self.bytes)
            else:
                if not force and self.other >= self.max_other:
                    return False
                self.other += 1
            self._items.append((frame, nbytes, item))
            self._cond.notify()
            return True

    def get(self, timeout: float, limit: int = 1000) -> list[tuple[Any, ...]]:
        """Up to ``limit`` items, waiting up to ``timeout`` seconds for the first."""
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait(timeout)
            out = []
            while self._items and len(out) < limit:
                frame, nbytes, item = self._items.popleft()
                if frame:
                    self.frames -= 1
                    self.bytes -= nbytes
                else:
                    self.other -= 1
                out.append(item)
            return out

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def status(self) -> dict[str, int]:
        return {"frames": self.frames, "bytes": self.bytes, "other": self.other, "max_frames": self.max_frames,
                "max_bytes": self.max_bytes, "peak_frames": self.peak_frames, "peak_bytes": self.peak_bytes}


class Recorder(threading.Thread):
    """Subscribe to topic prefixes on one or more endpoints and record them.

    Two threads: a receive thread owns the ZeroMQ SUB sockets (no other thread touches
    them) and only decodes and hands messages on; this thread (the writer) owns the file
    and writes checkpoints. Between them a bounded queue (``queue_frames`` frames,
    ``queue_bytes`` bytes) absorbs a slow checkpoint, so a large checkpoint no longer
    stalls the sockets until ZeroMQ's high-water mark drops frames. The receive thread
    never waits for the writer: a frame that does not fit is dropped, counted
    (``queue_dropped_frames``, ``behind``) and recorded in the file as a gap (reason
    ``recorder queue full``). A message that cannot be decoded or recorded is skipped and
    counted (``bad_messages``); the recording goes on.

    Args:
        endpoints: PUB endpoints (the daemon's and the reconstruction stage's data sockets).
        topics: topic prefixes (``raw/``, ``recon/``, ``raw/eeg0``).
        path: output file.
        flush_s: checkpoint interval, seconds. A ``kill -9`` loses what was received and not yet
            committed: up to ``flush_s`` plus the checkpoint's own duration, plus whatever waits in
            the receive queue (``queue``, ``lag_s`` in :meth:`status`) when the writer is behind;
            never a frame a checkpoint committed (``on_checkpoint`` is called after the commit).
        fmt: ``hdf5``, ``edf``, ``bdf``, or ``petsird`` (PET list mode of one ``pet`` stream:
            :class:`~medacq.daemon.recording.petsird.PetsirdStreamWriter`, needs the ``petsird`` package),
            or ``ismrmrd`` (the lines of one ``mri`` stream as ISMRMRD v1 HDF5:
            :class:`~medacq.daemon.recording.ismrmrd.IsmrmrdStreamWriter`).
        durable: fsync at each checkpoint.
        max_pending_bytes: checkpoint early when this much frame data is buffered.
        rcvhwm: receive high-water mark per SUB socket (messages); beyond it ZeroMQ drops,
            and the drop is recorded as a detected gap.
        on_checkpoint: called (in the writer thread) with :meth:`status` after each checkpoint.
        settle_s: ``edf``/``bdf`` only: seconds after the first frame to wait for the other
            streams' descriptors before the file is created (default :func:`edf_settle_s`).
        queue_frames, queue_bytes: bound of the queue between the receive and writer threads.
        attrs: ``hdf5`` only: more root attributes (the daemon's study context, ``study``: JSON,
            :meth:`medacq.daemon.interop.study.StudyState.recording_attrs`; never in the streams).
    """

    def __init__(self, endpoints: str | list[str], topics: list[str], path: str | os.PathLike[str],
                 flush_s: float = 1.0, fmt: str = "hdf5", durable: bool = True,
                 max_pending_bytes: int = 256 << 20, rcvhwm: int = 1000, on_checkpoint: Any = None,
                 settle_s: float | None = None, queue_frames: int = 100_000, queue_bytes: int = 256 << 20,
                 attrs: dict[str, str] | None = None) -> None:
        super().__init__(name="recorder", daemon=True)
        if not 0 < flush_s <= 3600:
            raise ValueError("flush interval must be in (0, 3600] s")
        if fmt not in ("hdf5", "edf", "bdf", "petsird", "ismrmrd"):
            raise ValueError("format must be hdf5, edf, bdf, petsird or ismrmrd")
        if queue_frames < 1 or queue_bytes < 1:
            raise ValueError("the receive queue needs room for at least one frame")
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.topics = list(topics) or [""]
        self.attrs = dict(attrs or {})
        self.path = os.fspath(path)
        self.flush_s = flush_s
        self.fmt = fmt
        self.durable = durable
        self.max_pending_bytes = max_pending_bytes
        self.rcvhwm = rcvhwm
        self.on_checkpoint = on_checkpoint
        self.settle_s = edf_settle_s() if settle_s is None else float(settle_s)
        self.curve: Any = None  # ClientKeys when the daemon uses CurveZMQ
        self.writer: Any = None
        self.state = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        # receive-thread counters
        self.frames_received = 0
        self.holes = 0  # frames this recorder missed (subscriber-detected, not announced)
        self.announced_gap_frames = 0
        self.queue_dropped_frames = 0
        self.queue_dropped_messages = 0
        self.bad_messages = 0  # undecodable or unrecordable messages, skipped
        self.last_bad_message: str | None = None
        self.last_frame_t_host_ns: int | None = None
        # writer-thread counters
        self.rejected_messages = 0  # decoded, but the writer refused them
        self.last_checkpoint_at: float | None = None
        self.ready = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._inbox = _Inbox(queue_frames, queue_bytes, max(1000, queue_frames // 10))
        self._rx: threading.Thread | None = None
        self._rx_subscribed = threading.Event()
        self._rx_done = threading.Event()
        self._rx_error: str | None = None
        self._subs_bad: list[Any] = []  # the Subscribers' counters (read-only from here)
        self._drop_runs: dict[str, list[Any]] = {}  # topic -> [stream, series, first_seq, count] being dropped

    def stop(self, timeout: float = 10.0) -> None:
        """Drain briefly, write the final checkpoint, close the file."""
        self._halt.set()
        self._inbox.wake()
        if self.is_alive():
            self.join(timeout)

    # -- the writer thread ---------------------------------------------------------------------
    def run(self) -> None:
        try:
            if self.fmt == "hdf5":
                self.writer = Hdf5RecordingWriter(
                    self.path, {**self.attrs, "topics": json.dumps(self.topics),
                                "endpoints": json.dumps(self.endpoints), "flush_interval_s": self.flush_s},
                    durable=self.durable)
            elif self.fmt == "petsird":
                from medacq.daemon.recording.petsird import PetsirdStreamWriter

                self.writer = PetsirdStreamWriter(self.path, topics=self.topics)
            elif self.fmt == "ismrmrd":
                from medacq.daemon.recording.ismrmrd import IsmrmrdStreamWriter

                self.writer = IsmrmrdStreamWriter(self.path, topics=self.topics)
            else:
                self.writer = EdfStreamWriter(self.path, bdf=self.fmt == "bdf", topics=self.topics, settle_s=self.settle_s)
            self._rx = threading.Thread(target=self._receive, name="recorder-rx", daemon=True)
            self._rx.start()
            while not (self._rx_subscribed.wait(0.05) or self._rx_done.is_set()):
                pass
            if self._rx_error is not None:
                raise RuntimeError(f"cannot subscribe: {self._rx_error}")
            self.state = "recording"
            self.ready.set()
            next_flush = time.monotonic() + self.flush_s
            while True:
                done = self._rx_done.is_set()  # read before the queue: what it put is in the queue now
                items = self._inbox.get(max(0.0, min(0.1, next_flush - time.monotonic())))
                for item in items:
                    self._write(item)
                now = time.monotonic()
                if now >= next_flush or self.writer.pending_bytes >= self.max_pending_bytes:
                    self._checkpoint()
                    next_flush = now + self.flush_s
                if done and not items:
                    break
            with self._lock:
                self.writer.close()
            if self._rx_error is not None:
                raise RuntimeError(f"receiving failed: {self._rx_error}")
            self.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - reported in status, never takes the daemon down
            log.exception("recorder failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self._abort_writer()
            self.state = "failed"
        finally:
            self._halt.set()
            if self._rx is not None:
                self._rx.join(5)
            self.ready.set()

    def _write(self, item: tuple[Any, ...]) -> None:
        kind, topic, a, b = item
        try:
            with self._lock:
                if kind == "msg":
                    self.writer.message(topic, a, b)
                else:  # "gap": (stream, series, first_seq, count, announced, reason, lost_samples)
                    self.writer.gap(topic, *a)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:  # one bad message, not a bad recording
            self.rejected_messages += 1
            self.last_bad_message = f"{topic}: {type(exc).__name__}: {exc}"
            if self.rejected_messages <= 10 or self.rejected_messages % 1000 == 0:
                log.warning("recorder: message on %s not recorded (%d so far): %s", topic, self.rejected_messages,
                            exc)
            if kind == "msg" and b is not None:  # a frame that is not in the file: a gap says so
                try:
                    with self._lock:
                        self.writer.gap(topic, a["stream"], a["series"], a["seq"], 1, False,
                                        f"frame not recordable: {exc}", None)
                except (ValueError, TypeError, KeyError, OverflowError):
                    log.warning("recorder: no gap row either for the refused frame on %s", topic)

    def _abort_writer(self) -> None:
        """After a failure: let the writer close its file (EDF/BDF: readable up to the failure,
        with an annotation saying so; HDF5: its last checkpoint, released without committing more)."""
        abort = getattr(self.writer, "abort", None)
        if abort is None:
            return
        try:
            with self._lock:
                abort(self.error or "")
        except Exception as exc:  # noqa: BLE001 - reported in status
            log.exception("recorder: closing %s after the failure failed too", self.path)
            self.error = f"{self.error}; the file could not be closed: {type(exc).__name__}: {exc}"

    def _checkpoint(self) -> None:
        with self._lock:
            self.writer.checkpoint()
        self.last_checkpoint_at = time.time()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.status())

    # -- the receive thread (the only one that touches the SUB sockets) ---------------------------
    def _receive(self) -> None:
        import zmq

        from medacq.daemon.client.api import Subscriber

        subs: list[tuple[Any, list[Any], dict[str, str]]] = []  # (subscriber, its pending gaps, stream -> topic)
        try:
            ctx = zmq.Context.instance()
            poller = zmq.Poller()
            for ep in self.endpoints:
                pending_gaps: list[Any] = []
                sub = Subscriber(ep, self.topics, errors="skip", rcvhwm=self.rcvhwm, context=ctx,
                                 on_gap=pending_gaps.append, curve=self.curve)
                subs.append((sub, pending_gaps, {}))
                self._subs_bad.append(sub.counters)
                poller.register(sub.sock, zmq.POLLIN)
            self._rx_subscribed.set()
            quiet_since: float | None = None
            halt_at: float | None = None
            while True:
                now = time.monotonic()
                if self._halt.is_set():  # take what is in flight (series_end...) for up to 0.5 s, then stop
                    halt_at = halt_at or now
                    quiet_since = quiet_since or now
                    if now - quiet_since > 0.15 or now - halt_at > 0.5:
                        break
                events = dict(poller.poll(50))
                got = 0
                for sub, gaps, topics in subs:
                    if sub.sock in events:
                        got += self._drain(sub, gaps, topics)
                if got:
                    quiet_since = None
        except Exception as exc:  # noqa: BLE001 - the writer thread reports it
            log.exception("recorder: receiving failed")
            self._rx_error = f"{type(exc).__name__}: {exc}"
        finally:
            for topic in list(self._drop_runs):
                self._end_drop_run(topic, force=True)
            for sub, _, _ in subs:
                sub.close()
            self._rx_done.set()
            self._inbox.wake()

    def _bad(self, topic: str, why: str) -> None:
        self.bad_messages += 1
        self.last_bad_message = f"{topic}: {why}"
        if self.bad_messages <= 10 or self.bad_messages % 1000 == 0:
            log.warning("recorder: skipping a message on %s (%d so far): %s", topic, self.bad_messages, why)

    def _drain(self, sub: Any, pending_gaps: list[Any], topics: dict[str, str], limit: int = 2000) -> int:
        import zmq

        n = 0
        while n < limit:
            try:
                msg = sub.recv(timeout=0)
            except zmq.ZMQError:
                raise
            except Exception as exc:  # noqa: BLE001 - one hostile message must not stop the recording
                # errors="skip" already skips (and counts) bad headers; this catches whatever a hostile
                # message makes the decoder raise beyond that: the message is consumed, the socket is fine
                pending_gaps.clear()
                n += 1
                self._bad("?", f"{type(exc).__name__}: {exc}")
                continue
            if msg is None:
                break
            n += 1
            h = msg.header
            for g in pending_gaps:  # gaps found while decoding this message (same stream)
                self._gap(g.topic or topics.get(g.stream, msg.topic), g)
            pending_gaps.clear()
            problem = _header_problem(h)
            if problem is not None:
                self._bad(msg.topic, problem)
                if msg.array is not None and isinstance(h["stream"], str) and isinstance(h["series"], str) \
                        and h["seq"] <= _I64_MAX:  # received but not in the file: a gap says so
                    self._put_gap(msg.topic, (h["stream"], h["series"], h["seq"], 1, False,
                                              f"frame not recordable: {problem}", None))
                continue
            topics[h["stream"]] = msg.topic
            if msg.array is not None:
                self.frames_received += 1
                self.last_frame_t_host_ns = h["t_host_ns"]
                if self._inbox.put(("msg", msg.topic, h, msg.array), msg.array.nbytes, frame=True):
                    self._end_drop_run(msg.topic)
                else:
                    self._dropped(msg.topic, h)
            else:
                self._end_drop_run(msg.topic)
                if not self._inbox.put(("msg", msg.topic, h, None)):
                    self.queue_dropped_messages += 1
        return n

    def _gap(self, topic: str, g: Any) -> None:
        problem = _gap_problem(g)
        if problem is not None:
            self._bad(topic, problem)
            return
        if g.announced:
            self.announced_gap_frames += g.count
        else:
            self.holes += g.count
        ls = g.lost_samples if type(g.lost_samples) is int and 0 <= g.lost_samples <= _I64_MAX else None
        self._put_gap(topic, (g.stream, g.series, g.first_seq, g.count, g.announced, str(g.reason), ls))

    def _put_gap(self, topic: str, gap: tuple[Any, ...], force: bool = False) -> None:
        """Queue ``(stream, series, first_seq, count, announced, reason, lost_samples)`` for the writer."""
        if not self._inbox.put(("gap", topic, gap, None), force=force):
            self.queue_dropped_messages += 1

    def _dropped(self, topic: str, h: dict[str, Any]) -> None:
        """A frame did not fit in the queue: count it and extend (or start) this topic's run of drops."""
        self.queue_dropped_frames += 1
        if self.queue_dropped_frames == 1 or self.queue_dropped_frames % 1000 == 0:
            log.warning("recorder: the writer is behind; %d frame(s) dropped so far (queue full: %s)",
                        self.queue_dropped_frames, self._inbox.status())
        run = self._drop_runs.get(topic)
        if run is not None and run[1] == h["series"] and run[2] + run[3] == h["seq"]:
            run[3] += 1
            return
        self._end_drop_run(topic)
        self._drop_runs[topic] = [h["stream"], h["series"], h["seq"], 1]

    def _end_drop_run(self, topic: str, force: bool = False) -> None:
        """Hand a finished run of dropped frames to the writer as a gap (``recorder queue full``)."""
        run = self._drop_runs.pop(topic, None)
        if run is None:
            return
        stream, series, first, count = run
        self._put_gap(topic, (stream, series, first, count, False, "recorder queue full", None), force=force)

    def status(self) -> dict[str, Any]:
        """State and counters; ``behind`` is true when the recorder cannot keep up."""
        w = self.writer
        lag = None if self.last_frame_t_host_ns is None else max(0.0, (time.time_ns() - self.last_frame_t_host_ns) / 1e9)
        since = None if self.last_checkpoint_at is None else time.time() - self.last_checkpoint_at
        behind = bool(
            self.holes or self.queue_dropped_frames or self.queue_dropped_messages
            or (w is not None and w.last_checkpoint_s > self.flush_s)
            or (since is not None and self.state == "recording" and since > 2 * self.flush_s + 1)
        )
        out: dict[str, Any] = {
            "state": self.state, "path": self.path, "format": self.fmt, "topics": self.topics,
            "endpoints": self.endpoints, "flush_s": self.flush_s, "error": self.error,
            "frames_received": self.frames_received,
            "frames_recorded": w.frames_committed if w else 0,
            "pending_frames": w.pending_frames if w else 0,
            "pending_bytes": w.pending_bytes if w else 0,
            "checkpoints": w.checkpoints if w else 0,
            "gaps_recorded": w.gaps_committed if w else 0,
            "announced_gap_frames": self.announced_gap_frames,
            "missed_frames": self.holes,
            "queue": self._inbox.status(),
            "queue_dropped_frames": self.queue_dropped_frames,
            "queue_dropped_messages": self.queue_dropped_messages,
            "bad_messages": self.bad_messages + self.rejected_messages + sum(c.bad_headers for c in self._subs_bad),
            "last_bad_message": self.last_bad_message,
            "last_checkpoint_ms": round(w.last_checkpoint_s * 1000, 2) if w else None,
            "max_checkpoint_ms": round(w.max_checkpoint_s * 1000, 2) if w else None,
            "seconds_since_checkpoint": None if since is None else round(since, 3),
            "lag_s": None if lag is None else round(lag, 3),
            "behind": behind,
        }
        if isinstance(w, Hdf5RecordingWriter):
            out["streams"] = {t: {"frames": s.frames, "gap_frames": s.gap_frames, "series": len(s.series)}
                              for t, s in list(w.streams.items())}
        elif self.fmt in ("petsird", "ismrmrd") and w is not None:
            out[self.fmt] = w.status()
        elif isinstance(w, EdfStreamWriter):
            out["streams"] = w.stream_status()
            out["edf"] = w.status()
            out["dropped_frames"] = w.dropped_frames
            out["warnings"] = list(w.warnings)
        return out


# -- the daemon's record service -------------------------------------------------------------
def recordings_dir() -> Path:
    """Where the daemon's ``record start`` writes: ``$MEDACQ_RECORDINGS_DIR``, else
    ``$STATE_DIRECTORY/recordings`` (systemd ``StateDirectory=``), else
    ``~/.local/share/medacq/recordings``."""
    if os.environ.get("MEDACQ_RECORDINGS_DIR"):
        return Path(os.environ["MEDACQ_RECORDINGS_DIR"])
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "recordings"
    return Path(os.path.expanduser("~/.local/share/medacq/recordings"))


class RecordingService:
    """One optional :class:`Recorder` inside the daemon, driven by the ``record`` control request.

    Paths are confined to :func:`recordings_dir` (a control client cannot make the daemon
    write elsewhere).
    """

    def __init__(self, data_endpoints: list[str], curve: Any = None, settle_s: float | None = None) -> None:
        self.data_endpoints = data_endpoints
        self.curve = curve  # ClientKeys when the daemon uses CurveZMQ
        self.settle_s = settle_s  # EDF/BDF: descriptor wait (see Recorder)
        #: root attributes of each new HDF5 recording, asked at ``record start`` (the study context)
        self.study_attrs: Callable[[], dict[str, str]] = dict
        self.recorder: Recorder | None = None
        self.last: dict[str, Any] | None = None

    def _resolve(self, path: str | None, fmt: str) -> Path:
        from medacq.protocols.control import ControlError

        base = recordings_dir().resolve()
        ext = ".h5" if fmt in ("hdf5", "ismrmrd") else f".{fmt}"
        p = Path(path) if path else Path(time.strftime(f"medacq-%Y%m%dT%H%M%S{ext}"))
        full = (p if p.is_absolute() else base / p).resolve()
        if full != base and base not in full.parents:
            raise ControlError("forbidden", f"recordings go under {base}; {path!r} is outside it")
        if full.exists():
            raise ControlError("bad_request", f"{full} exists; choose a new path")
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def handle(self, req: Any) -> dict[str, Any]:
        from medacq.protocols.control import ControlError

        if req.action == "status":
            return self.status()
        if req.action == "stop":
            if self.recorder is None:
                raise ControlError("bad_request", "not recording")
            self.stop()
            return self.status()
        if self.recorder is not None and self.recorder.is_alive():
            raise ControlError("busy", f"already recording to {self.recorder.path}")
        path = self._resolve(req.path, req.format)
        rec = Recorder(self.data_endpoints, req.topics, path, flush_s=req.flush_s, fmt=req.format,
                       settle_s=self.settle_s, attrs=self.study_attrs())
        rec.curve = self.curve
        rec.start()
        rec.ready.wait(5)
        if rec.state == "failed":
            raise ControlError("internal", f"recorder failed to start: {rec.error}")
        self.recorder = rec
        return self.status()

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
            self.last = self.recorder.status()
            self.recorder = None

    def status(self) -> dict[str, Any]:
        if self.recorder is not None:
            return self.recorder.status()
        return {"state": "off", "last": self.last}

    shutdown = stop


def recording_service(daemon: Any) -> RecordingService:
    """The daemon's recording service (created on first use)."""
    svc = getattr(daemon, "_recording", None)
    if svc is None:
        from medacq.daemon.common.security import ToolKeyError, tool_keys
        from medacq.protocols.control import ControlError

        cfg = daemon.config
        try:  # the recorder's own key pair ([security] tool_keys/recorder.key_secret), never the server's
            keys = tool_keys(cfg.security, "recorder", env=False)
        except ToolKeyError as exc:
            raise ControlError("internal", str(exc)) from None
        svc = RecordingService([cfg.daemon.data_endpoint, cfg.recon.data_endpoint], keys,
                               settle_s=edf_settle_s(cfg.daemon.descriptor_interval_s))
        study = getattr(daemon, "study", None)
        if study is not None:  # the operator's study context goes into the file's root attributes
            svc.study_attrs = study.recording_attrs
        daemon._recording = svc
    return svc


def recording_status(daemon: Any) -> dict[str, Any]:
    """``recording`` key of the daemon's ``status``."""
    svc = getattr(daemon, "_recording", None)
    return svc.status() if svc is not None else {"state": "off"}


# -- CLI -----------------------------------------------------------------------------------------
