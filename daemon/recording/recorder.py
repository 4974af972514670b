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
from pathlib import Path
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

class Recorder(threading.Thread):
    """Subscribe to topic prefixes on one or more endpoints and record them.

    Args:
        endpoints: PUB endpoints (the daemon's and the reconstruction stage's data sockets).
        topics: topic prefixes (``raw/``, ``recon/``, ``raw/eeg0``).
        path: output file.
        flush_s: checkpoint interval, seconds (the most a ``kill -9`` can lose).
        fmt: ``hdf5``, ``edf`` or ``bdf``.
        durable: fsync at each checkpoint.
        max_pending_bytes: checkpoint early when this much frame data is buffered.
        rcvhwm: receive high-water mark per SUB socket (messages); beyond it ZeroMQ drops,
            and the drop is recorded as a detected gap.
        on_checkpoint: called (in the recorder thread) with :meth:`status` after each checkpoint.
        settle_s: ``edf``/``bdf`` only: seconds after the first frame to wait for the other
            streams' descriptors before the file is created (default :func:`edf_settle_s`).
    """

    def __init__(self, endpoints: str | list[str], topics: list[str], path: str | os.PathLike[str],
                 flush_s: float = 1.0, fmt: str = "hdf5", durable: bool = True,
                 max_pending_bytes: int = 256 << 20, rcvhwm: int = 1000, on_checkpoint: Any = None,
                 settle_s: float | None = None) -> None:
        super().__init__(name="recorder", daemon=True)
        if not 0 < flush_s <= 3600:
            raise ValueError("flush interval must be in (0, 3600] s")
        if fmt not in ("hdf5", "edf", "bdf"):
            raise ValueError("format must be hdf5, edf or bdf")
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.topics = list(topics) or [""]
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
        self.frames_received = 0
        self.holes = 0  # frames this recorder missed (subscriber-detected, not announced)
        self.announced_gap_frames = 0
        self.last_frame_t_host_ns: int | None = None
        self.last_checkpoint_at: float | None = None
        self.ready = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain briefly, write the final checkpoint, close the file."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        import zmq

        from medacq.daemon.client.api import Subscriber

        subs: list[Any] = []
        try:
            if self.fmt == "hdf5":
                self.writer = Hdf5RecordingWriter(
                    self.path, {"topics": json.dumps(self.topics), "endpoints": json.dumps(self.endpoints),
                                "flush_interval_s": self.flush_s}, durable=self.durable)
            else:
                self.writer = EdfStreamWriter(self.path, bdf=self.fmt == "bdf", topics=self.topics, settle_s=self.settle_s)
            ctx = zmq.Context.instance()
            poller = zmq.Poller()
            for ep in self.endpoints:
                pending_gaps: list[Any] = []
                sub = Subscriber(ep, self.topics, errors="skip", rcvhwm=self.rcvhwm, context=ctx,
                                 on_gap=pending_gaps.append, curve=self.curve)
                sub._medacq_gaps = pending_gaps  # type: ignore[attr-defined]
                sub._medacq_topics = {}  # type: ignore[attr-defined]
                subs.append(sub)
                poller.register(sub.sock, zmq.POLLIN)
            self.state = "recording"
            self.ready.set()
            next_flush = time.monotonic() + self.flush_s
            quiet_since: float | None = None
            halt_at: float | None = None
            while True:
                now = time.monotonic()
                if self._halt.is_set():  # take what is in flight (series_end...) for up to 0.5 s, then stop
                    halt_at = halt_at or now
                    quiet_since = quiet_since or now
                    if now - quiet_since > 0.15 or now - halt_at > 0.5:
                        break
                events = dict(poller.poll(max(0, min(100, int((next_flush - now) * 1000)))))
                got = 0
                for sub in subs:
                    if sub.sock in events:
                        got += self._drain(sub)
                if got:
                    quiet_since = None
                now = time.monotonic()
                if now >= next_flush or self.writer.pending_bytes >= self.max_pending_bytes:
                    self._checkpoint()
                    next_flush = now + self.flush_s
            with self._lock:
                self.writer.close()
            self.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - reported in status, never takes the daemon down
            log.exception("recorder failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self._abort_writer()
            self.state = "failed"
        finally:
            self.ready.set()
            for sub in subs:
                sub.close()

    def _abort_writer(self) -> None:
        """After a failure: let the writer close its file (EDF/BDF: readable up to the failure,
        with an annotation saying so). A writer without ``abort`` (HDF5) keeps its last checkpoint."""
        abort = getattr(self.writer, "abort", None)
        if abort is None:
            return
        try:
            with self._lock:
                abort(self.error or "")
        except Exception as exc:  # noqa: BLE001 - reported in status
            log.exception("recorder: closing %s after the failure failed too", self.path)
            self.error = f"{self.error}; the file could not be closed: {type(exc).__name__}: {exc}"

    def _drain(self, sub: Any, limit: int = 2000) -> int:
        n = 0
        topics: dict[str, str] = sub._medacq_topics
        while n < limit:
            msg = sub.recv(timeout=0)
            if msg is None:
                break
            n += 1
            h = msg.header
            topics[h["stream"]] = msg.topic
            for g in sub._medacq_gaps:  # gaps found while decoding this message (same stream)
                self._gap(g.topic or topics.get(g.stream, msg.topic), g)
            sub._medacq_gaps.clear()
            if msg.array is not None:
                self.frames_received += 1
                self.last_frame_t_host_ns = h["t_host_ns"]
            with self._lock:
                self.writer.message(msg.topic, h, msg.array)
        return n

    def _gap(self, topic: str, g: Any) -> None:
        if g.announced:
            self.announced_gap_frames += g.count
        else:
            self.holes += g.count
        with self._lock:
            self.writer.gap(topic, g.stream, g.series, g.first_seq, g.count, g.announced, g.reason, g.lost_samples)

    def _checkpoint(self) -> None:
        with self._lock:
            self.writer.checkpoint()
        self.last_checkpoint_at = time.time()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.status())

    def status(self) -> dict[str, Any]:
        """State and counters; ``behind`` is true when the recorder cannot keep up."""
        w = self.writer
        lag = None if self.last_frame_t_host_ns is None else max(0.0, (time.time_ns() - self.last_frame_t_host_ns) / 1e9)
        since = None if self.last_checkpoint_at is None else time.time() - self.last_checkpoint_at
        behind = bool(
            self.holes
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
            "last_checkpoint_ms": round(w.last_checkpoint_s * 1000, 2) if w else None,
            "max_checkpoint_ms": round(w.max_checkpoint_s * 1000, 2) if w else None,
            "seconds_since_checkpoint": None if since is None else round(since, 3),
            "lag_s": None if lag is None else round(lag, 3),
            "behind": behind,
        }
        if isinstance(w, Hdf5RecordingWriter):
            out["streams"] = {t: {"frames": s.frames, "gap_frames": s.gap_frames, "series": len(s.series)}
                              for t, s in list(w.streams.items())}
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
        self.recorder: Recorder | None = None
        self.last: dict[str, Any] | None = None

    def _resolve(self, path: str | None, fmt: str) -> Path:
        from medacq.protocols.control import ControlError

        base = recordings_dir().resolve()
        ext = ".h5" if fmt == "hdf5" else f".{fmt}"
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
                       settle_s=self.settle_s)
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
        cfg = daemon.config
        curve = getattr(daemon, "curve", None)
        svc = RecordingService([cfg.daemon.data_endpoint, cfg.recon.data_endpoint],
                               curve.client_keys() if curve is not None else None,
                               settle_s=edf_settle_s(cfg.daemon.descriptor_interval_s))
        daemon._recording = svc
    return svc


def recording_status(daemon: Any) -> dict[str, Any]:
    """``recording`` key of the daemon's ``status``."""
    svc = getattr(daemon, "_recording", None)
    return svc.status() if svc is not None else {"state": "off"}


# -- CLI -----------------------------------------------------------------------------------------
