"""The reconstruction stage (``medacq recon``): raw frames in, ``recon/...`` results out.

A separate process. It subscribes to ``raw/`` on the daemon, gives each stream its own
worker thread and queue (a slow reconstructor never blocks another stream), builds the
reconstructor registered for the stream's modality from its descriptor (again whenever the
descriptor changes), and publishes every output with the same header conventions plus a
``source`` reference (stream, series, seq, acquisition clocks) so any subscriber can measure
acquisition → reconstruction latency.

Queues honour declared quality of service (:mod:`medacq.protocols.qos`): each reconstructor
class declares ``qos`` and ``max_batch`` (:class:`~medacq.daemon.recon.base.Reconstructor`),
``[recon.qos.<stream>]`` overrides them (:func:`~medacq.daemon.recon.registry.resolve_qos`).
``latest`` keeps only the newest frame (replaced frames are counted ``superseded``, not
lost); ``fifo`` keeps every frame in order while it is younger than ``max_age_ms`` and drops
the oldest at the frame/byte bounds; ``lossless`` only drops at the bounds. Every drop
reaches the stream's outputs as a ``gap``, in order. A frame's age is ``time.time_ns()``
minus the acquisition time of its last sample (``t_host_ns``, plus ``(n - 1) / fs`` for
frames with a ``sample`` axis and a ``sample_rate_hz`` in the descriptor).

Start-up: frames that wait for their stream's reconstructor (built when the descriptor
arrives, or ``warming`` while it builds an operator in the background) are held, not aged
out: the ``max_age_ms`` bound counts from the later of a frame's acquisition and the moment
the reconstructor became ready, so a build costs latency on the first frames, never a gap
(only the frame/byte bounds still drop, and announce, while it builds). To make builds short,
the stage imports every registered reconstructor and runs its
:meth:`~medacq.daemon.recon.base.Reconstructor.preload` (numba kernels compiled or loaded from
their on-disk cache) on a background thread as soon as it starts, before streams arrive;
``status`` reports it (``preload``) and, per stream, ``ready_after_s`` (first frame here →
reconstructor ready).

Threads: one receive thread (the SUB socket), one preload thread (at start, then gone), one
worker per stream (its reconstructor:
every reconstructor call, control actions included, runs there), one publisher thread (the
PUB socket: every message the stage sends, in the order the workers queued it, and the
periodic descriptors), and the control thread (the ROUTER socket; a modality ``action`` is
queued to the stream's worker and answered when it ran, or refused if the worker did not
take it within :attr:`ReconStage.action_timeout_s`: then it is never applied).

A malformed frame (wrong dtype or shape for its descriptor, an exception inside a
reconstructor) is logged and counted; the stream goes on. A message that cannot be decoded
at all is counted in ``bad_messages`` and skipped; the receive thread goes on. A worker that
stays inside one reconstructor call longer than :attr:`ReconStage.stuck_after_s` makes the
stage unhealthy (``status``, and the systemd watchdog is no longer fed).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from medacq.protocols.control import (
    MAX_REQUEST_BYTES,
    ActionRequest,
    ControlError,
    ListRequest,
    PingRequest,
    StatusRequest,
)
from medacq.protocols.markers import MARKER_TOPIC_PREFIX, marker_descriptor
from medacq.protocols.qos import Dropped, QosQueue
from medacq.protocols.stream import (HeaderError, MessageKind, SourceRef, StreamDescriptor, StreamHeader,
                                     encode_header, message_hwm)

from medacq.daemon.client.api import ControlClient, DaemonUnreachable, GapInfo, Message, RequestFailed, Subscriber
from medacq.daemon.common.config import RigConfig
from medacq.daemon.acquisition.control import ControlServer, Deferred
from medacq.daemon.common.binding import bind
from medacq.daemon.common.interpreter import freeze_heap, gc_pauses
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.registry import RECONSTRUCTORS, preload_reconstructors, reconstructor_class, resolve_qos
from medacq.daemon.recon.worker_process import ProcessReconstructor, WorkerProcess

__all__ = ["ReconStage"]

log = logging.getLogger("medacq.recon")


@dataclass
class _OutState:
    series: str
    seq: int = 0
    descriptor: StreamDescriptor | None = None
    signature: tuple | None = None
    last_descriptor: float = 0.0


@dataclass(slots=True)
class _Frame:
    """A queued frame and the acquisition time (ns, CLOCK_REALTIME) its age counts from."""

    msg: Message
    t_ns: int | None


@dataclass(eq=False)
class _Action:
    """A modality action waiting for the stream's worker (``future`` is the control reply)."""

    action: str
    args: dict[str, Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass(eq=False)
class _StreamState:
    """One source stream. ``lock`` guards ``queue``, ``actions`` and the sample deques;
    ``outputs`` is guarded by the stage's output lock; the rest is written by one thread
    (the receive thread: ``frames_in``, ``sample_rate_hz``; the worker: everything else)."""

    name: str
    queue: QosQueue
    qos_source: str = "default"
    lock: threading.Lock = field(default_factory=threading.Lock)
    cv: threading.Condition = field(init=False)
    actions: deque = field(default_factory=deque)
    sample_rate_hz: float | None = None
    descriptor: dict[str, Any] | None = None
    recon: Reconstructor | None = None
    recon_descriptor: dict[str, Any] | None = None
    build_error: str | None = None
    build_failed_at: float = 0.0
    outputs: dict[str, _OutState] = field(default_factory=dict)
    frames_in: int = 0
    frames_done: int = 0
    unprocessed: int = 0
    outputs_sent: int = 0
    batches: int = 0
    errors: int = 0
    bad_frames: int = 0
    last_error: str | None = None
    no_recon: bool = False
    superseded_seen: int = 0
    busy_since: float | None = None
    busy_what: str | None = None
    worker: WorkerProcess | None = None
    proc_us: deque = field(default_factory=lambda: deque(maxlen=256))
    latency_us: deque = field(default_factory=lambda: deque(maxlen=256))
    age_ms: deque = field(default_factory=lambda: deque(maxlen=512))
    thread: threading.Thread | None = None
    gaps_forwarded: int = 0
    first_frame_mono: float | None = None  # time.monotonic() of the first frame received
    ready_ns: int | None = None  # time.time_ns() the current reconstructor became ready (None: none, or building)
    first_ready_mono: float | None = None  # time.monotonic() the first reconstructor became ready

    def __post_init__(self) -> None:
        self.cv = threading.Condition(self.lock)


def _processing_view(desc: dict[str, Any]) -> dict[str, Any]:
    """The descriptor without the ``meta`` keys it names in ``meta.live`` (device state that
    changes while streaming, e.g. a sensor's status LEDs): a change there does not change how
    frames are to be read, so the reconstructor (and its filter state) is kept."""
    meta = desc.get("meta") or {}
    live = meta.get("live") or []
    if not live:
        return desc
    return {**desc, "meta": {k: v for k, v in meta.items() if k not in live}}


def _gap_message(topic: str, stream: str, first_seq: int | None, count: int, reason: str) -> Message:
    """A ``gap`` message made here, for frames this stage never processed."""
    return Message(topic, {"stream": stream, "kind": "gap", "seq": first_seq or 0, "gap_frames": count,
                           "reason": reason, "meta": {}})


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class _Publisher:
    """The PUB socket and its one-at-a-time use.

    A worker sends its outputs itself, holding the socket's lock (ZeroMQ sockets are not
    thread-safe; the lock's fences make handing the socket from thread to thread safe, and no two
    threads are ever inside it). PUB never blocks: a subscriber past its mark loses messages in
    libzmq, as before. This thread runs ``tick`` (the periodic descriptors) about every 0.1 s and
    closes the socket at the end.

    Until session 9 the workers queued here and this thread sent: every output woke it (a futex
    wake, then the woken thread waiting for the GIL and a CPU) before it could leave. Beside the
    whole rig, 22 % of the samples in which a stage thread held the GIL were inside that wake-up
    (py-spy ``--gil``; a thread preempted while it holds the GIL counts there too, so this is
    where the GIL was stuck, not CPU time). Now an output leaves on its worker's thread; libzmq's
    I/O thread, which needs no GIL, does the rest.
    """

    def __init__(self, pub: zmq.Socket, tick: Callable[[], None]) -> None:
        self.pub = pub
        self.tick = tick
        self._lock = threading.Lock()
        self._closed = False
        self._halt = threading.Event()
        self.sent = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name="recon-pub", daemon=True)

    def put(self, parts: tuple) -> None:
        """Send ``parts`` now (zero-copy), in this thread; after :meth:`stop`, nothing."""
        with self._lock:
            if self._closed:
                return
            try:
                self.pub.send_multipart(parts, copy=False)
                self.sent += 1
            except zmq.ZMQError as exc:
                self.errors += 1
                log.warning("publish failed: %s", exc)

    def _run(self) -> None:
        try:
            while not self._halt.wait(0.1):
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - the publisher never dies of a timer
                    log.exception("descriptor timer failed")
        finally:
            with self._lock:
                self._closed = True
                self.pub.close(200)

    def stop(self, timeout: float) -> None:
        """Close the socket (what was sent still leaves, for up to 0.2 s of linger)."""
        self._halt.set()
        if self.thread.is_alive():
            self.thread.join(timeout)


class ReconStage:
    """Run the reconstruction stage for a rig config.

    Attributes:
        action_timeout_s: how long (s) a modality action may wait for the stream's worker to
            take it; then it is cancelled (never applied) and answered ``timeout``. Below the
            control client's default timeout (5 s), so a client never gives up on an action
            that is later applied.
        stuck_after_s: a worker inside one ``process``/``process_batch``/action call longer
            than this (s) is stuck: the stage reports itself unhealthy.
        build_stuck_after_s: the same for building a reconstructor (operators, forward solves).
        rebuild_after_s: after a reconstructor failed to build, frames of the same descriptor
            are counted as errors without retrying for this long (s).
        max_streams: most source streams served (each has a thread); messages of further
            stream names are counted in ``bad_messages`` and skipped.
    """

    action_timeout_s = 2.0
    stuck_after_s = 30.0
    build_stuck_after_s = 600.0
    rebuild_after_s = 5.0
    max_streams = 256

    def __init__(self, config: RigConfig, context: zmq.Context | None = None,
                 preload: bool | Iterable[str] = True) -> None:
        """``preload``: import and :meth:`~medacq.daemon.recon.base.Reconstructor.preload` every
        registered reconstructor when the stage starts (``True``), none (``False``), or those
        of the modalities named."""
        self.config = config
        self._preload_modalities: list[str] = (list(RECONSTRUCTORS) if preload is True else
                                               [] if preload is False else list(preload))
        self.preload_result: dict[str, float | str] | None = None
        self.preload_s: float | None = None
        #: after the preload, :func:`~medacq.daemon.common.interpreter.freeze_heap` (``medacq recon``
        #: sets it: a process of its own; not for a stage inside someone else's process)
        self.freeze_heap_after_preload = False
        self.sndhwm = 0  # the PUB socket's send high-water mark (messages per subscriber), set by start()
        # a context of its own unless given one: shutdown() terminates it, so that when it returns the
        # sockets are closed and their endpoints free (libzmq closes a listener asynchronously)
        self._own_ctx = context is None
        self.ctx = context if context is not None else zmq.Context()
        self.curve = None
        self.client_keys = None
        from medacq.daemon.common.security import AuditLog

        self.audit = AuditLog(config.security.audit_log)
        self.control = ControlServer(self._dispatch, None, self.audit)
        self.streams: dict[str, _StreamState] = {}
        self._streams_lock = threading.Lock()
        self._out_lock = threading.Lock()  # every _OutState, and the order messages are queued to publish
        self._halt = threading.Event()
        self._publisher: _Publisher | None = None
        self.started = time.monotonic()
        self.rx_errors = 0  # messages the subscriber let through but this stage could not use
        self.last_bad_message: str | None = None
        self._bad_logged = 0.0

    # -- sockets -------------------------------------------------------------------------
    def start(self) -> "ReconStage":
        rc = self.config.recon
        if self.config.security.curve:
            from medacq.daemon.common.security import CurveServer, tool_keys

            # the stage's own key pair ([security] tool_keys/stage.key_secret: a reader), never the
            # server's; loaded first, so that a missing key stops the start before any thread runs
            self.client_keys = tool_keys(self.config.security, "stage", env=False)
            self.curve = CurveServer(self.config.security, self.ctx)
            self.control.curve = self.curve
        pub = self.ctx.socket(zmq.PUB)
        if self.curve is not None:
            self.curve.serve(pub)
        dc = self.config.daemon  # the daemon's bound: sndhwm_mb of frames up to max_frame_mb each
        self.sndhwm = message_hwm(int(dc.sndhwm_mb * 1e6), int(dc.max_frame_mb * 1e6), dc.sndhwm)
        pub.setsockopt(zmq.SNDHWM, self.sndhwm)
        pub.setsockopt(zmq.LINGER, 200)
        bind(pub, rc.data_endpoint, "recon data", self.curve is not None)
        self._ctl = self.ctx.socket(zmq.ROUTER)
        self._ctl.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES + 1024)
        self._ctl.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.serve(self._ctl)
        try:
            bind(self._ctl, rc.control_endpoint, "recon control", self.curve is not None)
        except Exception:
            pub.close(0)
            raise
        if self.curve is None:  # after the bind: an ipc directory's mode is part of the answer
            from medacq.daemon.common.security import local_rights

            self.control.local_rights, self.control.local_reason = local_rights(
                rc.control_endpoint, self.config.daemon.local_operator)
            log.info("recon control clients without CurveZMQ have %s rights (%s)", self.control.local_rights,
                     self.control.local_reason)
        self.sub = Subscriber(self.config.recon_source, "raw/", errors="skip", context=self.ctx,
                              curve=self.client_keys, on_gap=self._on_source_hole)
        if self._preload_modalities:  # after subscribing: frames that arrive meanwhile are held, not missed
            threading.Thread(target=self._preload, name="recon-preload", daemon=True).start()
        # sockets are handed to their threads here and used by those threads only
        self._publisher = _Publisher(pub, self._descriptor_timers)
        self._publisher.thread.start()
        self._rx = threading.Thread(target=self._receive_loop, name="recon-rx", daemon=True)
        self._rx.start()
        self._ctl_thread = threading.Thread(target=self._control_loop, name="recon-ctl", daemon=True)
        self._ctl_thread.start()
        log.info("reconstruction: %s -> %s", self.config.recon_source, rc.data_endpoint)
        return self

    def _preload(self) -> None:
        """Import every reconstructor and run its ``preload`` (preload thread)."""
        t0 = time.perf_counter()
        result = preload_reconstructors(self._preload_modalities)
        self.preload_s = round(time.perf_counter() - t0, 3)
        self.preload_result = result
        log.info("reconstructors preloaded in %.2f s (%s)", self.preload_s,
                 ", ".join(f"{m} {v:.2f} s" if isinstance(v, float) else f"{m} FAILED" for m, v in result.items()))
        if self.freeze_heap_after_preload:
            freeze_heap("reconstructors preloaded")

    def _stream_list(self) -> list[_StreamState]:
        with self._streams_lock:
            return list(self.streams.values())

    def shutdown(self, timeout: float = 1.5) -> None:
        self._halt.set()
        streams = self._stream_list()
        for st in streams:
            with st.cv:
                st.cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in [self._rx, self._ctl_thread, *(s.thread for s in streams if s.thread)]:
            t.join(max(0.05, deadline - time.monotonic()))
        # each worker closed its own reconstructor on its way out; one still inside a call keeps it
        for st in streams:
            if st.thread is not None and st.thread.is_alive():
                log.warning("%s: worker still busy (%s) at shutdown; its reconstructor is not closed",
                            st.name, st.busy_what)
        with self._out_lock:
            for st in streams:
                for name, out in st.outputs.items():
                    self._queue_control(st, name, out, MessageKind.SERIES_END, reason="reconstruction stage stopped")
        if self._publisher is not None:
            self._publisher.stop(max(2.0, deadline - time.monotonic()))
        if self.curve is not None:
            self.curve.stop()
        busy = [t.name for t in (self._rx, self._ctl_thread, self._publisher.thread if self._publisher else None)
                if t is not None and t.is_alive()]
        if self._own_ctx and not busy:
            term = threading.Thread(target=self.ctx.term, name="recon-ctx-term", daemon=True)
            term.start()
            term.join(2.0)
            if term.is_alive():
                log.warning("reconstruction stage: sockets still closing at shutdown (context not terminated)")
        elif busy:
            log.warning("reconstruction stage: %s still running at shutdown; their sockets are left to them",
                        ", ".join(busy))

    # -- receiving -----------------------------------------------------------------------
    def _receive_loop(self) -> None:
        asked: dict[str, float] = {}
        try:
            while not self._halt.is_set():
                try:
                    msg = self.sub.recv(timeout=0.1)
                except zmq.ZMQError:
                    break  # the context or socket is gone: the stage is stopping
                except Exception as exc:  # noqa: BLE001 - nothing a publisher sends ends this thread
                    # HeaderError (the subscriber counts and skips those itself), and whatever
                    # else a hostile message provokes while decoding: a frame of dtype "O"
                    # (numpy refuses to wrap the payload: ValueError), odd types (TypeError)...
                    self._bad_message(exc)
                    continue
                if msg is None:
                    continue
                try:
                    self._accept(msg, asked)
                except Exception as exc:  # noqa: BLE001
                    self._bad_message(exc)
        finally:
            self.sub.close()

    def _bad_message(self, exc: BaseException) -> None:
        self.rx_errors += 1
        self.last_bad_message = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._bad_logged >= 1.0:  # a flood of garbage does not flood the journal
            self._bad_logged = now
            log.warning("skipping undecodable message (%d so far): %s", self.bad_messages, self.last_bad_message)

    @property
    def bad_messages(self) -> int:
        """Messages skipped because they could not be decoded (count)."""
        return self.sub.counters.bad_headers + self.rx_errors

    def _accept(self, msg: Message, asked: dict[str, float]) -> None:
        """Queue one decoded message on its stream (receive thread)."""
        h = msg.header
        stream = h["stream"]
        if not isinstance(stream, str):
            raise HeaderError(f"stream name must be a string, got {stream!r}")
        if msg.kind == "frame":
            if msg.array is None:
                raise HeaderError("frame without payload", stream)
            st = self._stream_state(stream)
            t_ns = self._frame_time(st, h)
            if st.first_frame_mono is None:
                st.first_frame_mono = time.monotonic()
            st.frames_in += 1
            if st.descriptor is None and time.monotonic() - asked.get(stream, 0) > 2.0:
                asked[stream] = time.monotonic()
                threading.Thread(target=self._ask_descriptor, args=(stream,), daemon=True).start()
            with st.cv:  # stale frames go at the push too: a worker stuck in a long call holds
                # max_age_ms of frames, not max_frames of them (none while the stream waits for its build)
                st.queue.push_frame(_Frame(msg, t_ns), msg.array.nbytes, t_ns, h["seq"],
                                    self._age_clock(st, time.time_ns()))
                st.cv.notify()
            return
        st = self._stream_state(stream)
        if msg.kind == "descriptor":
            d = h.get("descriptor") or {}
            fs = d.get("sample_rate_hz") if isinstance(d, dict) else None
            st.sample_rate_hz = float(fs) if isinstance(fs, (int, float)) and fs > 0 else None
        with st.cv:
            st.queue.push_control(msg)
            st.cv.notify()

    @staticmethod
    def _frame_time(st: _StreamState, h: dict[str, Any]) -> int | None:
        """Acquisition time (ns) of the frame's last sample, or ``None`` when the header's clock is unusable."""
        t = h.get("t_host_ns")
        if type(t) is not int:
            return None
        fs, axes, shape = st.sample_rate_hz, h.get("axes"), h.get("shape")
        if fs and isinstance(axes, list) and "sample" in axes and isinstance(shape, list) \
                and len(shape) == len(axes):
            n = shape[axes.index("sample")]
            if type(n) is int and n > 1:
                t += int((n - 1) * 1e9 / fs)
        return t

    def _ask_descriptor(self, stream: str) -> None:
        """A late joiner asks the daemon to republish the descriptor now."""
        try:
            with ControlClient(self.config.daemon.control_endpoint, timeout=1.0, context=self.ctx,
                               curve=self.client_keys) as c:
                c.request("descriptor", stream=stream)
        except (DaemonUnreachable, RequestFailed) as exc:
            log.debug("descriptor request for %s failed: %s", stream, exc)

    def _stream_state(self, stream: str) -> _StreamState:
        st = self.streams.get(stream)
        if st is not None:
            return st
        with self._streams_lock:
            st = self.streams.get(stream)
            if st is None:
                if len(self.streams) >= self.max_streams:
                    raise HeaderError(f"more than {self.max_streams} streams; {stream!r} is not served", stream)
                override = self.config.recon.qos.get(stream)
                st = _StreamState(stream, QosQueue(resolve_qos(None, override, self.config.recon.queue_depth)),
                                  qos_source="config" if override is not None else "default")
                st.thread = threading.Thread(target=self._worker, args=(st,), name=f"recon-{stream}", daemon=True)
                self.streams[stream] = st
                st.thread.start()
        return st

    def _on_source_hole(self, g: GapInfo) -> None:
        """This stage's subscriber saw a hole in ``seq`` (it fell behind, or the network
        dropped frames): queue it as a gap ahead of the frame that revealed it."""
        if not g.announced:  # announced gaps arrive as messages of their own
            st = self._stream_state(g.stream)
            with st.cv:
                st.queue.push_control(_gap_message(g.topic or f"raw/{g.stream}", g.stream, g.first_seq, g.count,
                                                   g.reason))
                st.cv.notify()

    # -- per-stream worker -----------------------------------------------------------------
    def _worker(self, st: _StreamState) -> None:
        try:
            while not self._halt.is_set():
                step = self._next(st)
                if step is None:
                    continue
                if isinstance(step, _Action):
                    self._run_action(st, step)
                    continue
                items, superseded = step
                if isinstance(items[0], _Frame):
                    self._frames(st, items, superseded)
                    continue
                try:
                    if isinstance(items[0], Dropped):
                        self._dropped(st, items[0])
                    else:
                        self._handle(st, items[0])
                except Exception as exc:  # noqa: BLE001 - a bad message never ends the stream
                    self._error(st, exc)
        finally:
            with st.cv:
                pending, st.actions = list(st.actions), deque()
            for act in pending:
                act.future.cancel()  # not started: answered "cancelled", never applied
            self._drop_recon(st)
            if st.worker is not None:
                st.worker.stop()

    def _next(self, st: _StreamState) -> _Action | tuple[list, int] | None:
        """The next thing to do: an action, or queue entries (with the frames superseded
        since the last frames taken); ``None`` after a short wait when there is nothing
        (or the reconstructor is warming: frames stay queued under the policy)."""
        with st.cv:
            if st.actions:
                return st.actions.popleft()
            if self._halt.is_set():
                return None
            recon = st.recon
            if recon is not None and _warming(recon):
                st.cv.wait(0.05)
                return None
            now = time.time_ns()
            if recon is not None and st.ready_ns is None:
                st.ready_ns = now
                if st.first_ready_mono is None:
                    st.first_ready_mono = time.monotonic()
            items = st.queue.take(self._age_clock(st, now))
            if not items:
                st.cv.wait(0.2)
                return None
            superseded = 0
            if isinstance(items[0], _Frame):
                superseded = st.queue.superseded - st.superseded_seen
                st.superseded_seen = st.queue.superseded
            return items, superseded

    @staticmethod
    def _age_clock(st: _StreamState, now_ns: int) -> int | None:
        """The time the queue judges ``max_age_ms`` at: ``None`` (no age drops) until the
        stream's reconstructor has been ready for ``max_age_ms``, then ``now_ns``. That is
        exactly "age counted from the later of acquisition and readiness": a frame is older
        than the bound by both clocks only once readiness itself is older than the bound.
        Frames waiting for a build or a warming reconstructor are so held, never aged out."""
        limit = st.queue.policy.max_age_ms
        if limit is None:
            return now_ns
        if st.ready_ns is None or now_ns - st.ready_ns <= limit * 1e6:
            return None
        return now_ns

    @contextmanager
    def _busy(self, st: _StreamState, what: str) -> Iterator[None]:
        """Mark the worker as inside a reconstructor call (the stuck-worker check)."""
        st.busy_what, st.busy_since = what, time.monotonic()
        try:
            yield
        finally:
            st.busy_since, st.busy_what = None, None

    def _error(self, st: _StreamState, exc: BaseException, what: str = "") -> None:
        st.errors += 1
        st.last_error = f"{what}{type(exc).__name__}: {exc}"
        log.warning("%s: %s", st.name, st.last_error)

    def _run_action(self, st: _StreamState, act: _Action) -> None:
        if not act.future.set_running_or_notify_cancel():
            return  # its deadline passed before this worker took it: answered, never applied
        try:
            if st.recon is None:
                raise ControlError("unknown_stream", f"no reconstructor is running for stream {st.name!r}")
            with self._busy(st, f"action {act.action}"):
                result = st.recon.control(act.action, act.args)
        except ControlError as exc:
            act.future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a reconstructor's refusal is the client's error
            act.future.set_exception(ControlError("bad_request", f"{st.name}: {exc}"))
        else:
            act.future.set_result(result)

    def _handle(self, st: _StreamState, msg: Message) -> None:
        h = msg.header
        kind = h["kind"]
        if kind == "descriptor" and h.get("descriptor"):
            if h["descriptor"] != st.descriptor:
                st.descriptor = h["descriptor"]
                self._ensure_recon(st)  # built now, before its frames: they wait (warming)
        elif kind == "series_start":
            self._end_outputs(st, "source series ended")
        elif kind == "gap":
            if st.recon is not None:
                st.recon.on_gap(h["seq"], int(h.get("gap_frames") or 0))
            self._forward_gap(st, h)
        elif kind == "series_end":
            self._end_outputs(st, h.get("reason") or "source ended")

    def _end_outputs(self, st: _StreamState, reason: str) -> None:
        with self._out_lock:
            for name, out in st.outputs.items():
                self._queue_control(st, name, out, MessageKind.SERIES_END, reason=reason)
            st.outputs.clear()

    def _dropped(self, st: _StreamState, d: Dropped) -> None:
        """Frames this stage's queue dropped (age or bound): a gap, in order, like a source gap."""
        if st.recon is not None:
            st.recon.on_gap(d.first_seq, d.count)
        self._forward_gap(st, {"seq": d.first_seq or 0, "gap_frames": d.count,
                               "reason": f"dropped by the reconstruction stage ({d.reason})", "meta": {}})

    def _forward_gap(self, st: _StreamState, h: dict[str, Any]) -> None:
        """A source gap reaches every output of the stream as a samples-only ``gap``
        (``gap_frames`` 0: no output seq is missing, but what follows was computed across
        lost input), so recon subscribers see it too; never silently bridged."""
        n = int(h.get("gap_frames") or 0)
        lost = (h.get("meta") or {}).get("lost_samples")
        what = f"frames {h['seq']}..{h['seq'] + n - 1}" if n else "device samples"
        reason = f"source {st.name} lost {what}" + (f" ({lost} samples)" if lost else "")
        if h.get("reason"):
            reason += f": {h['reason']}"
        meta = {"source_seq": h["seq"], "source_gap_frames": n}
        if lost is not None:
            meta["lost_samples"] = lost
        with self._out_lock:
            for name, out in st.outputs.items():
                self._queue_control(st, name, out, MessageKind.GAP, gap_frames=0, reason=reason, meta=meta)
        st.gaps_forwarded += 1

    def _set_policy(self, st: _StreamState, cls: type[Reconstructor] | None) -> None:
        policy = resolve_qos(cls, self.config.recon.qos.get(st.name), self.config.recon.queue_depth)
        with st.cv:
            if policy != st.queue.policy:
                st.queue.set_policy(policy)

    def _ensure_recon(self, st: _StreamState) -> Reconstructor | None:
        if st.descriptor is None:
            return None
        if st.recon_descriptor is not None and (
                st.recon_descriptor is st.descriptor  # the per-frame case: nothing new arrived
                or _processing_view(st.recon_descriptor) == _processing_view(st.descriptor)):
            st.recon_descriptor = st.descriptor  # only live device state in meta changed
            if st.recon is not None or st.no_recon:
                return st.recon
            if st.build_error is not None and time.monotonic() - st.build_failed_at < self.rebuild_after_s:
                raise ReconstructorError(f"no reconstructor ({st.build_error})")
        st.recon_descriptor = st.descriptor
        st.build_error = None
        desc = StreamDescriptor.model_validate(st.descriptor)
        cls = reconstructor_class(desc.modality)
        if cls is None:
            if not st.no_recon:
                log.info("%s: no reconstructor for modality %r; not reconstructed", st.name, desc.modality)
            st.no_recon = True
            self._drop_recon(st)
            self._set_policy(st, None)
            return None
        st.no_recon = False
        self._set_policy(st, cls)
        t0 = time.perf_counter()
        old, st.recon = st.recon, None  # never feed the new descriptor's frames to the old reconstructor
        st.ready_ns = None  # its frames are held (not aged out) until the new one is ready
        try:
            settings = self.config.recon.settings.get(desc.modality, {})
            with self._busy(st, "build"):
                iso = self.config.recon.isolation.get(st.name, cls.isolation)
                if iso != "thread":
                    if st.worker is None:
                        st.worker = WorkerProcess(st.name, self.config.recon.realtime_priority
                                                  if iso == "realtime" else None)
                    st.recon = ProcessReconstructor(st.worker, cls, desc, settings)
                else:
                    st.recon = cls(desc, settings)
        except Exception as exc:
            st.build_error, st.build_failed_at = f"{type(exc).__name__}: {exc}", time.monotonic()
            raise
        finally:  # closed after its replacement is built, so shared resources (a port) carry over
            if old is not None:
                _close_recon(old, st.name)
        log.info("%s: %s ready in %.3f s (%s)", st.name, cls.__name__, time.perf_counter() - t0,
                 st.queue.policy.policy)
        return st.recon

    def _drop_recon(self, st: _StreamState) -> None:
        """Stop using the stream's reconstructor and close it."""
        old, st.recon = st.recon, None
        st.ready_ns = None
        if old is not None:
            _close_recon(old, st.name)

    def _check_frame(self, recon: Reconstructor, h: dict[str, Any], frame: np.ndarray) -> None:
        d = recon.descriptor
        if np.dtype(h["dtype"]) != np.dtype(d.dtype) or len(frame.shape) != len(d.shape) or any(
            a != b for a, b in zip(frame.shape, d.shape) if b != -1
        ):
            raise ValueError(
                f"frame seq {h['seq']} is {h['dtype']} {list(frame.shape)} but the descriptor says "
                f"{d.dtype} {d.shape}; frame skipped"
            )

    def _frames(self, st: _StreamState, frames: list[_Frame], superseded: int) -> None:
        """A run of consecutive frames (at most the policy's ``max_batch``)."""
        try:
            recon = self._ensure_recon(st)
        except Exception as exc:  # noqa: BLE001 - each frame that cannot be reconstructed is an error
            for _ in frames:
                self._error(st, exc)
            return
        if recon is None:
            st.unprocessed += len(frames)
            return
        if superseded:
            try:
                recon.on_superseded(superseded)
            except Exception as exc:  # noqa: BLE001
                self._error(st, exc, "on_superseded: ")
        good: list[_Frame] = []
        for f in frames:
            try:
                self._check_frame(recon, f.msg.header, f.msg.array)
                good.append(f)
            except Exception as exc:  # noqa: BLE001
                st.bad_frames += 1
                self._error(st, exc)
        if not good:
            return
        now = time.time_ns()
        ages = [(now - f.t_ns) / 1e6 for f in good if f.t_ns is not None]
        with st.lock:
            st.age_ms.extend(ages)
        if len(good) > 1 and _recon_class(recon).process_batch is not Reconstructor.process_batch:
            t0 = time.perf_counter_ns()
            try:
                with self._busy(st, "process_batch"):
                    results = recon.process_batch([f.msg.header for f in good], [f.msg.array for f in good])
                if len(results) != len(good):
                    raise ReconstructorError(f"process_batch returned {len(results)} results for {len(good)} frames")
            except Exception as exc:  # noqa: BLE001 - a bad batch never ends the stream
                for _ in good:
                    self._error(st, exc, f"batch of {len(good)}: ")
                return
            per = (time.perf_counter_ns() - t0) / 1000 / len(good)
            with st.lock:
                st.proc_us.extend([per] * len(good))
            st.frames_done += len(good)
            st.batches += 1
            for f, outs in zip(good, results):
                self._publish_all(st, f.msg.header, outs)
            return
        for f in good:
            t0 = time.perf_counter_ns()
            try:
                with self._busy(st, "process"):
                    outs = recon.process(f.msg.header, f.msg.array)
            except Exception as exc:  # noqa: BLE001 - a bad frame never ends the stream
                self._error(st, exc)
                continue
            with st.lock:
                st.proc_us.append((time.perf_counter_ns() - t0) / 1000)
            st.frames_done += 1
            st.batches += 1
            self._publish_all(st, f.msg.header, outs)

    def _publish_all(self, st: _StreamState, h: dict[str, Any], outputs: list[Output]) -> None:
        src = SourceRef(stream=st.name, series=h["series"], seq=h["seq"], t_host_ns=h["t_host_ns"],
                        t_mono_ns=h["t_mono_ns"], t_device=h.get("t_device"))
        for out in outputs:
            try:
                self._publish(st, out, src, h["series"])
            except Exception as exc:  # noqa: BLE001 - an unpublishable output is that frame's error
                self._error(st, exc, f"output {out.name!r}: ")

    # -- publishing (each worker sends its own outputs through the publisher's lock) --------
    def _out_stream(self, st: _StreamState, name: str) -> str:
        if name.startswith(MARKER_TOPIC_PREFIX):  # a marker output: its source name
            return name.removeprefix(MARKER_TOPIC_PREFIX)
        return f"{st.name}/{name}" if name else st.name

    def _out_topic(self, st: _StreamState, name: str) -> str:
        """``recon/<stream>[/<name>]``, or ``markers/<source>`` for an output named so (an event
        stream, e.g. the EKG's R peaks, published in the marker format of :mod:`medacq.protocols.markers`)."""
        return name if name.startswith(MARKER_TOPIC_PREFIX) else f"recon/{self._out_stream(st, name)}"

    def _publish(self, st: _StreamState, out: Output, src: SourceRef, source_series: str) -> None:
        data = np.ascontiguousarray(out.data)
        stream = self._out_stream(st, out.name)
        with self._out_lock:
            o = st.outputs.get(out.name)
            if o is None:
                series = str(uuid.uuid5(uuid.UUID(source_series) if _is_uuid(source_series) else uuid.NAMESPACE_OID,
                                        out.name or "main"))
                o = st.outputs[out.name] = _OutState(series)
                self._queue_control(st, out.name, o, MessageKind.SERIES_START)
            sig = (data.dtype.str, data.shape, tuple(out.axes), out.units)
            marker = out.name.startswith(MARKER_TOPIC_PREFIX)
            if sig != o.signature:
                o.signature = sig
                assert st.recon is not None
                if marker:
                    md = marker_descriptor(stream)
                    o.descriptor = md.model_copy(update={"meta": {**md.meta, "source": st.name, **out.descriptor_meta}})
                else:
                    o.descriptor = StreamDescriptor(
                        stream=stream, modality=f"{_recon_class(st.recon).modality}", device=f"recon:{_recon_name(st.recon)}",
                        dtype=data.dtype.str, shape=list(data.shape), axes=out.axes, units=out.units,
                        geometry=out.descriptor_meta.pop("geometry", {}),
                        meta={"source": st.name, **out.descriptor_meta})
                self._queue_control(st, out.name, o, MessageKind.DESCRIPTOR, descriptor=o.descriptor)
                o.last_descriptor = time.monotonic()
            meta = dict(out.meta or {})
            # recon headers carry the *source* acquisition clocks in t_*; a marker its event's own
            # clocks (meta t_host_ns, t_mono_ns, t_device, taken out of meta)
            clk = (meta.pop("t_host_ns", src.t_host_ns), meta.pop("t_mono_ns", src.t_mono_ns),
                   meta.pop("t_device", src.t_device)) if marker else (src.t_host_ns, src.t_mono_ns, src.t_device)
            h = StreamHeader(stream=stream, kind=MessageKind.FRAME, series=o.series, seq=o.seq, dtype=data.dtype.str,
                             shape=list(data.shape), axes=out.axes, units=out.units, t_host_ns=int(clk[0]),
                             t_mono_ns=int(clk[1]), t_device=clk[2], source=src, meta=meta)
            assert self._publisher is not None
            self._publisher.put((self._out_topic(st, out.name).encode(), encode_header(h), data))
            o.seq += 1
        st.outputs_sent += 1
        with st.lock:
            st.latency_us.append((time.monotonic_ns() - src.t_mono_ns) / 1000)

    def _queue_control(self, st: _StreamState, name: str, o: _OutState, kind: MessageKind, **fields: Any) -> None:
        """Queue a control message of output ``name`` (caller holds the output lock)."""
        stream = self._out_stream(st, name)
        h = StreamHeader(stream=stream, kind=kind, series=o.series, seq=o.seq, t_host_ns=time.time_ns(),
                         t_mono_ns=time.monotonic_ns(), **fields)
        assert self._publisher is not None
        self._publisher.put((self._out_topic(st, name).encode(), encode_header(h)))

    def _descriptor_timers(self) -> None:
        """Republish each output's descriptor every ``descriptor_interval_s`` (publisher thread)."""
        now = time.monotonic()
        every = self.config.daemon.descriptor_interval_s
        streams = self._stream_list()
        with self._out_lock:
            for st in streams:
                for name, o in st.outputs.items():
                    if o.descriptor is not None and now - o.last_descriptor >= every:
                        self._queue_control(st, name, o, MessageKind.DESCRIPTOR, descriptor=o.descriptor)
                        o.last_descriptor = now

    # -- control -------------------------------------------------------------------------
    def _control_loop(self) -> None:
        self.control.serve(self._ctl, self._halt)

    def _handle_request(self, body: bytes | None, who: str = "local") -> bytes:
        """One request body in, one reply body out (rights and audit: :class:`ControlServer`). Never raises."""
        return self.control.handle_raw(body, who)

    def _dispatch(self, req: Any) -> Any:
        """The stage's answer to one authorised request (ping, status, list, action). Runs on
        the control thread and never waits: an action is queued to the stream's worker and
        answered when it ran there (:class:`Deferred`)."""
        if isinstance(req, PingRequest):
            return {"t_host_ns": time.time_ns(), "t_mono_ns": time.monotonic_ns()}
        if isinstance(req, StatusRequest):
            return self.status()
        if isinstance(req, ListRequest):
            return {"streams": sorted(st.name for st in self._stream_list())}
        if isinstance(req, ActionRequest):
            with self._streams_lock:
                st = self.streams.get(req.target)
            if st is None or (st.recon is None and st.busy_what != "build"):
                raise ControlError("unknown_stream", f"no reconstructor is running for stream {req.target!r}")
            act = _Action(req.action, dict(req.args or {}))
            with st.cv:
                st.actions.append(act)
                st.cv.notify()
            return Deferred(act.future, self.action_timeout_s, what=f"{req.target}: {req.action}")
        raise ControlError("unknown_command", f"the reconstruction stage does not handle {req.cmd!r}")

    def _stream_status(self, st: _StreamState, now: float) -> dict[str, Any]:
        with st.lock:  # a consistent snapshot: the worker and the receive thread change these under it
            q = st.queue
            policy = q.policy
            qs = {"superseded": q.superseded, "lost": q.lost, "queue_frames": q.frames, "queue_bytes": q.bytes,
                  "queue_depth": len(q), "queue_high_water": q.high_water, "actions_pending": len(st.actions)}
            proc, lat, age = list(st.proc_us), list(st.latency_us), list(st.age_ms)
        with self._out_lock:
            outs = sorted(self._out_topic(st, n) for n in st.outputs)
        recon = st.recon
        busy_since, busy_what = st.busy_since, st.busy_what
        busy_s = None if busy_since is None else round(now - busy_since, 3)
        return {
            "reconstructor": _recon_name(recon),
            "isolation": None if recon is None else "thread" if not isinstance(recon, ProcessReconstructor)
            else "realtime" if st.worker is not None and st.worker.rt_priority is not None else "process",
            "worker_process": st.worker.status() if st.worker is not None else None,
            "policy": policy.policy, "qos": policy.model_dump(), "qos_source": st.qos_source,
            "warming": busy_what == "build" or (recon is not None and _warming(recon)),
            "ready_after_s": _ready_after(st),
            "thread_native_id": st.thread.native_id if st.thread is not None else None,
            "frames_in": st.frames_in, "frames_done": st.frames_done, "unprocessed": st.unprocessed,
            "outputs": st.outputs_sent, "batches": st.batches, **qs, "dropped": qs["lost"],
            "gaps_forwarded": st.gaps_forwarded, "errors": st.errors, "bad_frames": st.bad_frames,
            "last_error": st.last_error,
            "age_ms_p50": _pct(age, 50), "age_ms_p99": _pct(age, 99),
            "proc_us_p50": _pct(proc, 50), "proc_us_p99": _pct(proc, 99),
            "latency_us_p50": _pct(lat, 50), "latency_us_p99": _pct(lat, 99),
            "busy": busy_what, "busy_s": busy_s, "stuck": self._stuck(busy_what, busy_s),
            "outputs_streams": outs,
        }

    def _stuck(self, what: str | None, busy_s: float | None) -> bool:
        if what is None or busy_s is None:
            return False
        return busy_s > (self.build_stuck_after_s if what == "build" else self.stuck_after_s)

    def health(self) -> list[str]:
        """What is wrong with the stage now (empty: healthy): a dead receive, publisher or
        worker thread, or a worker stuck inside one reconstructor call."""
        if self._halt.is_set():
            return []
        problems = []
        if not hasattr(self, "_rx"):
            return ["not started"]
        if not self._rx.is_alive():
            problems.append("receive thread stopped")
        if self._publisher is None or not self._publisher.thread.is_alive():
            problems.append("publisher thread stopped")
        now = time.monotonic()
        for st in self._stream_list():
            if st.thread is not None and not st.thread.is_alive():
                problems.append(f"{st.name}: worker thread stopped")
            what, since = st.busy_what, st.busy_since
            busy_s = None if since is None else now - since
            if self._stuck(what, busy_s):
                problems.append(f"{st.name}: worker stuck in {what} for {busy_s:.0f} s")
        return problems

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        out = {st.name: self._stream_status(st, now) for st in self._stream_list()}
        problems = self.health()
        pub = self._publisher
        return {"uptime_s": round(now - self.started, 3), "pid": os.getpid(),
                "gil_switch_ms": round(sys.getswitchinterval() * 1000.0, 3), "gc": gc_pauses().status(),
                "streams": out,
                "preload": {"modalities": self._preload_modalities, "seconds": self.preload_s,
                            "result": self.preload_result},
                "bad_messages": self.bad_messages, "last_bad_message": self.last_bad_message,
                "healthy": not problems, "problems": problems,
                "published": pub.sent if pub else 0, "publish_errors": pub.errors if pub else 0}

    def run_forever(self, duration_s: float | None = None, exit_within_s: float | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``duration_s``), speaking sd_notify when under systemd.
        ``exit_within_s``: once stopping, the process exits by then whatever hangs (process mains only)."""
        import signal

        stop = threading.Event()
        old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        from medacq.daemon.common.sdnotify import Notifier, watchdog_interval_s

        n = Notifier()
        n.notify("READY=1", "STATUS=reconstructing")
        wd = watchdog_interval_s()
        said = "reconstructing"
        try:
            end = None if duration_s is None else time.monotonic() + duration_s
            while not stop.is_set() and (end is None or time.monotonic() < end):
                problems = self.health()
                state = "reconstructing" if not problems else "UNHEALTHY: " + "; ".join(problems)
                if state != said:
                    said = state
                    n.notify(f"STATUS={state}")
                    if problems:
                        log.error("reconstruction stage unhealthy: %s", "; ".join(problems))
                if wd is not None and not problems:  # a stuck worker starves the watchdog: systemd restarts us
                    n.notify("WATCHDOG=1")
                stop.wait(min(wd or 0.5, 0.5))
        finally:
            if exit_within_s is not None:
                from medacq.daemon.common.procs import exit_within

                exit_within(exit_within_s)
            n.notify("STOPPING=1")
            self.shutdown()
            for s, h in old.items():
                signal.signal(s, h)


def _ready_after(st: _StreamState) -> float | None:
    """Seconds from the stream's first frame here to its first reconstructor being ready (0 when
    it was ready first); ``None`` until both happened."""
    frame, ready = st.first_frame_mono, st.first_ready_mono
    if frame is None or ready is None:
        return None
    return round(max(0.0, ready - frame), 3)


def _recon_class(recon: Reconstructor) -> type[Reconstructor]:
    """The class doing the work (the one a :class:`ProcessReconstructor` runs in its child)."""
    return recon.inner if isinstance(recon, ProcessReconstructor) else type(recon)


def _recon_name(recon: Reconstructor | None) -> str | None:
    return None if recon is None else _recon_class(recon).__name__


def _warming(recon: Reconstructor) -> bool:
    try:
        return bool(recon.warming)
    except Exception:  # noqa: BLE001 - a broken property must not stop the stream
        return False


def _close_recon(recon: Reconstructor, stream: str) -> None:
    """:meth:`Reconstructor.close`, logged, never raising (a bad close must not stop the stream or the stage)."""
    try:
        recon.close()
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: closing %s failed: %s: %s", stream, type(recon).__name__, type(exc).__name__, exc)


def _is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
    except ValueError:
        return False
    return True
