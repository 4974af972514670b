"""Acquisition workers: one thread per device, a bounded queue to the publisher.

A worker owns its driver. It connects (with exponential backoff and jitter when that
fails), starts a series, and moves every :class:`Frame`/:class:`Gap` the driver yields
into the device's :class:`FrameQueue`. A blocking read on one device never stalls
another: each has its own thread and the publisher never waits on a device.

Sequence numbers are assigned here, before the queue, so a frame the queue had to drop
leaves a hole the publisher announces as a ``gap`` message.

Safe state (:meth:`AcquisitionWorker.request_safe_state`) jumps this thread's queue: it is
served before any waiting settings change, between two driver reads (each at most
:attr:`AcquisitionWorker.read_slice_s` for a device with an output), in a reconnect backoff,
and before the restart that follows a reconfiguration. A driver call already in progress is not
interrupted; a driver that can (:meth:`~medacq.drivers._base.Driver.cut_output`) is also told at
once from another thread by the daemon. Once in the safe state the device stays open and
stopped (state ``safe``) until the operator's ``start``; a ``configure`` is applied and keeps it
safe. A device with nothing to make safe (the driver does not override
:meth:`~medacq.drivers._base.Driver.enter_safe_state`) keeps acquiring.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from medacq.drivers._base import NOTHING_TO_MAKE_SAFE, ConnectionLost, DeviceError, Driver, DriverError, Frame, Gap
from medacq.protocols.stream import StreamDescriptor, new_series_id
from medacq.daemon.acquisition.queue import DescriptorUpdate, FrameItem, FrameQueue, GapItem, SeriesEnd, SeriesStart

__all__ = ["StreamStats", "AcquisitionWorker", "SettingsRefused", "SafetyEvent", "SafetyState"]

log = logging.getLogger("medacq.daemon.acquisition.worker")

@dataclass
class StreamStats:
    """Counters of one stream, shown by ``status``. Written by one thread each."""

    state: str = "stopped"
    series: str | None = None
    frames_acquired: int = 0
    frames_published: int = 0
    bytes_published: int = 0
    gap_frames: int = 0
    lost_samples: int = 0
    reconnects: int = 0          # connections re-established after a loss
    connect_failures: int = 0    # failed attempts (each backoff step)
    last_error: str | None = None
    last_error_at: float | None = None
    fps: float = 0.0
    mbps: float = 0.0
    latency_us_p50: float | None = None
    latency_us_p99: float | None = None
    latencies_us: deque = field(default_factory=lambda: deque(maxlen=512))

    def error(self, msg: str) -> None:
        self.last_error = msg
        self.last_error_at = time.time()


class SettingsRefused(ValueError):
    """A queued settings change that does not validate over the settings in force."""


SafetyState = Literal["safe", "normal", "pending", "requested", "failed", "not_applicable"]
"""Where a device stands: ``safe`` (output off, the device stopped), ``normal`` (left the safe
state: the operator's start), ``pending`` (not reachable: entered as soon as it reconnects),
``requested`` (its thread is busy: entered at its next opportunity), ``failed`` (the device
refused or cannot: see the detail), ``not_applicable`` (no output to make safe: acquisition
continues)."""


@dataclass(frozen=True)
class SafetyEvent:
    """One safe-state transition or outcome of a device, published on ``safety/<device>`` and
    audited by the daemon.

    Attributes:
        device: the device.
        state: see :data:`SafetyState`.
        reason: why (``operator: ...``, ``no control request for 5.0 s ...``, ``device fault: ...``).
        detail: what was done, or what went wrong.
        trigger: ``operator``, ``control_silence``, ``fault``, ``recon_silence``, ``start``.
        verified: the device confirmed it (a reply or a status read back).
        path: ``worker`` (the device's thread) or ``control`` (the fast path,
            :meth:`~medacq.drivers._base.Driver.cut_output`).
    """

    device: str
    state: SafetyState
    reason: str
    detail: str
    trigger: str
    verified: bool = False
    path: Literal["worker", "control"] = "worker"

    def result(self) -> dict[str, Any]:
        """The JSON-able form (control reply, audit record)."""
        return {"device": self.device, "state": self.state, "reason": self.reason, "detail": self.detail,
                "trigger": self.trigger, "verified": self.verified, "path": self.path}


@dataclass
class _SafetyRequest:
    """One safe-state request waiting for the worker; ``gen``: starts requested before it."""

    reason: str
    trigger: str
    gen: int
    future: Future[SafetyEvent]


@dataclass
class _SettingsChange:
    """One queued ``configure``: the fields it sets, and its requester's Future."""

    patch: dict[str, Any]
    future: Future[BaseModel]


class AcquisitionWorker(threading.Thread):
    """The thread that runs one device.

    Args:
        name: device/stream name.
        driver_cls: the driver class.
        address: transport address.
        settings: validated settings model.
        queue: where frames go.
        stats: this stream's counters.
        reconnect_max_s: backoff cap.
        on_fault: ``[device.safety] on_fault``: after a fault while acquiring, enter the safe
            state at reconnect and do not resume.
        on_safety: called (on this thread) with every :class:`SafetyEvent`: the daemon
            publishes and audits it.
        on_triggers: called (on this thread) with ``(device, events)`` for a frame whose
            ``meta["triggers"]`` lists trigger events its driver decoded: the daemon publishes
            them on ``markers/<device>``.
        frame_offset_ns: called (on this thread) with the device name for each frame: ns to
            remove from its clocks (the trigger-bus alignment, :class:`~.markers.BusAligner`).
    """

    #: how often (s) a running driver's ``descriptor()`` is re-read; a changed one (e.g. a
    #: device status in its meta) is republished at once, not at the next descriptor timer
    descriptor_check_s: float = 1.0
    #: longest single driver read (s) of a device with an output to make safe: the longest a
    #: safe-state request waits for this thread while it acquires (others: ``idle_read_s``)
    read_slice_s: float = 0.05
    idle_read_s: float = 0.2

    def __init__(
        self,
        name: str,
        driver_cls: type[Driver],
        address: str,
        settings: BaseModel,
        queue: FrameQueue,
        stats: StreamStats,
        reconnect_max_s: float = 5.0,
        on_fault: bool = False,
        on_safety: Callable[[SafetyEvent], None] | None = None,
        on_triggers: Callable[[str, Any], Any] | None = None,
        frame_offset_ns: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__(name=f"acq-{name}", daemon=True)
        self.device = name
        self.driver_cls = driver_cls
        self.address = address
        self.settings = settings
        self.queue = queue
        self.stats = stats
        self.reconnect_max_s = reconnect_max_s
        self.driver: Driver | None = None
        self.descriptor: StreamDescriptor | None = None
        self.want_running = threading.Event()
        self._shutdown = threading.Event()
        self._poke = threading.Event()
        # settings changes in arrival order; each is applied only if its Future is still wanted
        self._reconfigs: deque[_SettingsChange] = deque()
        self._series_open = False
        self._seq = 0
        self.last_progress = time.monotonic()
        #: the first connection attempt has ended (acquiring, or failed and backing off)
        self.attempted = False
        self._lost = False  # a connection was lost (or never made) and not yet re-established
        self._rng = random.Random(hash(name))
        # -- safe state
        self.on_fault = on_fault
        self.on_safety = on_safety
        self.on_triggers = on_triggers
        self.frame_offset_ns = frame_offset_ns
        #: the driver has an output to make safe (it overrides Driver.enter_safe_state)
        self.has_output = driver_cls.enter_safe_state is not Driver.enter_safe_state
        #: the driver has a thread-safe fast path (Driver.cut_output)
        self.can_cut = driver_cls.cut_output is not Driver.cut_output
        self.safe = False  # in the safe state: output off, stopped, until the operator's start
        self.safety: SafetyEvent | None = None  # the latest transition (status)
        self.safety_since: float | None = None  # its CLOCK_REALTIME (s)
        self._safety: deque[_SafetyRequest] = deque()  # waiting for this thread, oldest first
        self._safe_waiters: list[_SafetyRequest] = []  # served at the next successful open
        self._safe_on_open: tuple[str, str, int] | None = None  # (reason, trigger, gen): enter at open
        self._start_gen = 0  # start requests so far (a start after a safe request wins)
        self._run_lock = threading.Lock()  # start requests vs. the safe state clearing want_running
        self._opening: Driver | None = None  # the driver being opened (for cut_output)
        self._in_acquire = False
        #: CLOCK_MONOTONIC (s) at which the current acquisition started (0: none yet)
        self.acquiring_since = 0.0

    # -- requests from other threads -------------------------------------------------
    def request_start(self) -> None:
        with self._run_lock:
            self._start_gen += 1
            self.want_running.set()
        self._poke.set()

    def request_safe_state(self, reason: str, trigger: str = "operator") -> Future[SafetyEvent]:
        """Any thread: put the device in its safe state at this thread's next opportunity, ahead
        of every waiting settings change (module doc). The Future (already running: it cannot be
        cancelled) gets the :class:`SafetyEvent` that answers it: ``safe``, ``not_applicable``,
        ``pending`` (not reachable: entered at reconnect) or ``failed``. A ``start`` requested
        after this request still happens after it (the device then leaves the safe state)."""
        fut: Future[SafetyEvent] = Future()
        fut.set_running_or_notify_cancel()
        with self._run_lock:
            gen = self._start_gen
        self._safety.append(_SafetyRequest(reason, trigger, gen, fut))
        self._poke.set()
        return fut

    def cut_output(self) -> str | None:
        """Any thread: the driver's fast path (:meth:`~medacq.drivers._base.Driver.cut_output`) on
        the open driver, or the one being opened; ``None`` when there is none or it has no fast
        path. May raise :class:`~medacq.drivers._base.DriverError`."""
        drv = self.driver or self._opening
        return None if drv is None else drv.cut_output()

    def safety_status(self) -> dict[str, Any]:
        """The ``safety`` entry of this stream's ``status``."""
        ev = self.safety
        return {"state": "safe" if self.safe else ("pending" if self._safe_on_open else "normal"),
                "last": None if ev is None else {**ev.result(), "at": self.safety_since},
                "waiting": len(self._safety)}

    def request_stop(self) -> None:
        self.want_running.clear()
        self._poke.set()

    def shutdown(self) -> None:
        self._shutdown.set()
        self.want_running.clear()
        self._poke.set()

    def submit_settings(self, patch: dict[str, Any]) -> Future[BaseModel]:
        """Queue a settings change: ``patch`` (field -> value) over the settings in force when
        it is applied. Changes are applied in submission order, by this worker's thread: stop,
        reopen with the new settings, restart if it was running.

        The Future's result is the applied settings model; it fails with
        :class:`SettingsRefused` (the merged settings do not validate) or
        :class:`~medacq.drivers._base.DeviceError` (the device refused them; the old settings
        are back). Cancel it (``Future.cancel()``) to withdraw the change: one that has not
        started is then never applied — the worker claims each change with
        ``set_running_or_notify_cancel()`` before it touches the device.
        """
        fut: Future[BaseModel] = Future()
        self._reconfigs.append(_SettingsChange(dict(patch), fut))
        self._poke.set()
        return fut

    def driver_counters(self) -> dict[str, Any]:
        """The ``driver`` entry of this stream's ``status``, from the driver's typed
        :meth:`~medacq.drivers._base.Driver.status`: its counters, flattened, and ``sensors``
        beside them for a multi-sensor driver. Empty while no driver is open."""
        d = self.driver
        if d is None:
            return {}
        st = d.status()
        out: dict[str, Any] = dict(st["counters"])
        if "sensors" in st:
            out["sensors"] = st["sensors"]
        return out

    # -- the thread ------------------------------------------------------------------
    def run(self) -> None:
        backoff = 0.1
        while not self._shutdown.is_set():
            self.last_progress = time.monotonic()
            if self._safety:  # ahead of everything else
                try:
                    self._serve_safety(acquiring=False)
                except (ConnectionLost, OSError) as exc:
                    backoff = self._failed(exc, backoff)
                continue
            if self._change_pending():
                self._apply_reconfig()
                continue
            if not self.want_running.is_set() and self._safe_on_open is None:
                if self.stats.state not in ("stopped",) and self.driver is None:
                    self.stats.state = "stopped"
                elif self.driver is not None:
                    self.stats.state = "safe" if self.safe else "idle"
                self._poke.wait(0.2)
                self._poke.clear()
                continue
            try:
                self._ensure_open()
                if self._safe_on_open is not None:  # reconnected: the safe state comes first
                    self._safe_at_open()
                    continue
                self._acquire()
                backoff = 0.1
            except (ConnectionLost, DeviceError, OSError, ValueError) as exc:
                backoff = self._failed(exc, backoff)
            except Exception as exc:  # noqa: BLE001 - a driver bug must not kill the daemon
                log.exception("%s: unexpected driver error", self.device)
                backoff = self._failed(exc, backoff)
        while self._reconfigs:  # never started, never will be: their requesters hear so
            self._reconfigs.popleft().future.cancel()
        left = list(self._safety) + self._safe_waiters
        self._safety.clear()
        self._safe_waiters = []
        if left:  # their requesters hear the truth: nothing was done
            self._answer(left, SafetyEvent(self.device, "failed", left[0].reason, "the daemon shut down before "
                                           "the device thread could serve the safe state", left[0].trigger))
        self._end_series("daemon shutdown")
        self._close_driver()
        self.stats.state = "stopped"

    def _ensure_open(self) -> None:
        if self.driver is None:
            self.stats.state = "connecting"
            drv = self.driver_cls(self.device, self.address, self.settings)
            self._opening = drv
            try:
                drv.open()
            except BaseException:
                drv.close()
                raise
            finally:
                self._opening = None
            self.driver = drv
            self.descriptor = drv.descriptor()

    def _acquire(self) -> None:
        drv = self.driver
        assert drv is not None and self.descriptor is not None
        series = new_series_id()
        self._seq = 0
        self.queue.put_control(SeriesStart(series, self.descriptor))
        self._series_open = True
        self.stats.series = series
        self._in_acquire = True
        drv.start()
        if self.safe:  # the operator's start: the only way out of the safe state
            self.safe = False
            self._event(SafetyEvent(self.device, "normal", "operator start", "left the safe state: the device "
                                    "is started again (its output on)", "start", True))
        self.stats.state = "acquiring"
        self.acquiring_since = time.monotonic()
        self.attempted = True
        if self._lost:
            self.stats.reconnects += 1
            self._lost = False
        log.info("%s: acquiring (series %s)", self.device, series)
        q, stats = self.queue, self.stats
        next_descriptor_check = time.monotonic() + self.descriptor_check_s
        slice_s = self.read_slice_s if self.has_output else self.idle_read_s
        while True:
            if self._safety and self._serve_safety(acquiring=True):
                self._in_acquire = False
                return  # in the safe state: the series ended there, the device is stopped
            if not self.want_running.is_set() or self._shutdown.is_set() or self._change_pending():
                break
            for item in drv.read(slice_s):
                if type(item) is Frame:
                    data = item.data
                    if not data.flags.c_contiguous:
                        item.data = np.ascontiguousarray(data)
                    if self.frame_offset_ns is not None and (off := self.frame_offset_ns(self.device)):
                        item.t_host_ns -= off
                        item.t_mono_ns -= off
                    seq = self._seq
                    self._seq = seq + 1
                    stats.frames_acquired += 1
                    q.put_frame(FrameItem(seq, item))
                    meta = item.meta
                    if meta and "triggers" in meta and self.on_triggers is not None:
                        try:
                            self.on_triggers(self.device, meta["triggers"])
                        except Exception:  # noqa: BLE001 - a marker must never stop the stream
                            log.exception("%s: publishing trigger events failed", self.device)
                elif isinstance(item, Gap):
                    q.put_control(GapItem(self._seq, item.lost_frames, item.lost_samples, item.reason))
                    self._seq += item.lost_frames
            self.last_progress = now = time.monotonic()
            if now >= next_descriptor_check:
                next_descriptor_check = now + self.descriptor_check_s
                self._refresh_descriptor(drv)
        self._in_acquire = False
        try:
            drv.stop()
        finally:
            self._end_series("stopped" if not self._shutdown.is_set() else "daemon shutdown")

    def _refresh_descriptor(self, drv: Driver) -> None:
        """Re-read the running driver's descriptor; a changed one is republished at once."""
        try:
            desc = drv.descriptor()
        except Exception:  # noqa: BLE001 - keep streaming with the descriptor we have
            log.exception("%s: descriptor() failed while acquiring", self.device)
            return
        if desc != self.descriptor:
            self.descriptor = desc
            self.queue.put_control(DescriptorUpdate(desc))

    def _end_series(self, reason: str) -> None:
        if self._series_open:
            self.queue.put_control(SeriesEnd(reason))
            self._series_open = False

    def _close_driver(self) -> None:
        if self.driver is not None:
            self.driver.close()
            self.driver = None

    def _failed(self, exc: BaseException, backoff: float) -> float:
        msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ConnectionLost, DeviceError)) else str(exc)
        self.stats.error(msg)
        if self._in_acquire and self.on_fault and self.has_output and self._safe_on_open is None:
            with self._run_lock:  # [device.safety] on_fault: safe state at reconnect, no resume
                self._safe_on_open = (f"device fault while acquiring: {msg}", "fault", self._start_gen)
            self._event(SafetyEvent(self.device, "pending", self._safe_on_open[0], "the device will be put in its "
                                    "safe state as soon as it is reachable again, before anything else; "
                                    "acquisition does not resume by itself", "fault"))
        self._in_acquire = False
        if self._safe_waiters:  # safe-state requests for a device we cannot reach now
            waiters, self._safe_waiters = self._safe_waiters, []
            reason, trigger, _ = self._safe_on_open or (waiters[0].reason, waiters[0].trigger, 0)
            self._answer(waiters, self._event(SafetyEvent(
                self.device, "pending", reason, f"device not reachable ({msg}): its safe state will be entered as "
                "soon as it reconnects, before anything else", trigger)))
        self._end_series(f"connection lost: {msg}")
        self._close_driver()
        self.stats.connect_failures += 1
        self._lost = True
        self.stats.state = "reconnecting"
        log.warning("%s: %s; reconnecting in %.2f s", self.device, msg, backoff)
        # interruptible sleep with jitter; the thread is alive and well meanwhile (watchdog)
        end = time.monotonic() + backoff * (0.5 + self._rng.random() / 2)
        while not self._poke.is_set() and (left := end - time.monotonic()) > 0:
            self._poke.wait(min(left, 0.5))
            self.last_progress = time.monotonic()
        self._poke.clear()
        self.attempted = True
        return min(backoff * 2, self.reconnect_max_s)

    # -- safe state ----------------------------------------------------------------------
    def _event(self, ev: SafetyEvent) -> SafetyEvent:
        """Record a transition (status) and hand it to the daemon (publish, audit)."""
        self.safety, self.safety_since = ev, time.time()
        log.log(logging.WARNING if ev.state in ("failed", "pending") else logging.INFO,
                "%s: safety %s (%s): %s", self.device, ev.state, ev.reason, ev.detail)
        if self.on_safety is not None:
            try:
                self.on_safety(ev)
            except Exception:  # noqa: BLE001 - reporting must not stop the safe state
                log.exception("%s: reporting a safety event failed", self.device)
        return ev

    @staticmethod
    def _answer(reqs: list[_SafetyRequest], ev: SafetyEvent) -> None:
        for r in reqs:
            if not r.future.done():
                r.future.set_result(ev)

    def _serve_safety(self, acquiring: bool) -> bool:
        """Serve every waiting safe-state request at once (one device action). True when the
        device is now in the safe state (the series, if any, has ended: no ``stop()`` follows).
        :class:`ConnectionLost` propagates (the requests then wait for the reconnect)."""
        reqs = list(self._safety)
        for _ in reqs:
            self._safety.popleft()
        if not reqs:
            return False
        reason = "; ".join(dict.fromkeys(r.reason for r in reqs))
        trigger = ",".join(dict.fromkeys(r.trigger for r in reqs))
        gen = max(r.gen for r in reqs)
        drv = self.driver
        if not self.has_output:
            done = drv.enter_safe_state() if drv is not None else NOTHING_TO_MAKE_SAFE
            self._answer(reqs, self._event(SafetyEvent(self.device, "not_applicable", reason, done + (
                ": acquisition continues" if acquiring else ""), trigger, True)))
            return False
        if drv is None:  # not connected: connect (the run loop does it now), then make safe
            with self._run_lock:
                self._safe_on_open = (reason, trigger, gen)
            self._safe_waiters += reqs
            return False
        try:
            done = drv.enter_safe_state()
        except (ConnectionLost, OSError):
            with self._run_lock:
                self._safe_on_open = (reason, trigger, gen)
            self._safe_waiters += reqs
            raise
        except Exception as exc:  # noqa: BLE001 - refused, impossible, or a driver bug: say so, change nothing
            detail = str(exc) if isinstance(exc, DriverError) else f"{type(exc).__name__}: {exc}"
            self._answer(reqs, self._event(SafetyEvent(self.device, "failed", reason, detail, trigger)))
            return False
        self._made_safe(reason, trigger, gen, done, reqs)
        return True

    def _safe_at_open(self) -> None:
        """The device (re)connected with a safe state due (a fault, or requested while it was
        unreachable): enter it before anything else."""
        assert self._safe_on_open is not None and self.driver is not None
        reason, trigger, gen = self._safe_on_open
        waiters, self._safe_waiters = self._safe_waiters, []
        try:
            done = self.driver.enter_safe_state()
        except (ConnectionLost, OSError):
            self._safe_waiters = waiters + self._safe_waiters
            raise
        except Exception as exc:  # noqa: BLE001 - refused or impossible: say so, change nothing
            self._safe_on_open = None
            detail = str(exc) if isinstance(exc, DriverError) else f"{type(exc).__name__}: {exc}"
            self._answer(waiters, self._event(SafetyEvent(self.device, "failed", reason, detail, trigger)))
            return
        self._safe_on_open = None
        if self._lost:
            self.stats.reconnects += 1
            self._lost = False
        self.attempted = True
        self._made_safe(reason, trigger, gen, done, waiters)

    def _made_safe(self, reason: str, trigger: str, gen: int, done: str, reqs: list[_SafetyRequest]) -> None:
        self.safe = True
        with self._run_lock:
            if self._start_gen == gen:  # no start since the request: stay stopped
                self.want_running.clear()
        self._end_series(f"safe state: {reason}")
        # published and audited before the status says so: whoever sees "safe" finds the record
        ev = self._event(SafetyEvent(self.device, "safe", reason, done, trigger, True))
        self.stats.state = "safe"
        self._answer(reqs, ev)

    def _change_pending(self) -> bool:
        """A settings change waits that is still wanted (withdrawn ones are dropped unseen: a
        configure that timed out does not even interrupt the running series)."""
        q = self._reconfigs
        while q and q[0].future.cancelled():
            q.popleft()
            log.info("%s: a settings change was withdrawn (timed out) before it started; not applied", self.device)
        return bool(q)

    def _apply_reconfig(self) -> None:
        change = self._reconfigs.popleft()
        fut = change.future
        if not fut.set_running_or_notify_cancel():
            log.info("%s: a settings change was withdrawn (timed out) before it started; not applied", self.device)
            return
        old = self.settings
        try:
            try:
                settings = self.driver_cls.validate_settings({**old.model_dump(), **change.patch})
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                fut.set_exception(SettingsRefused(detail or str(exc)))
                return
            was_open = self.driver is not None
            self._end_series("reconfigured")
            self._close_driver()
            self.settings = settings
            if was_open or self.want_running.is_set():
                try:
                    self._ensure_open()
                except (ConnectionLost, DeviceError, OSError, ValueError, ValidationError) as exc:
                    self.stats.error(f"configure refused: {exc}")
                    self.settings = old
                    self._close_driver()
                    fut.set_exception(DeviceError(str(exc)))
                    return
                if self.safe and self.driver is not None:  # reopened: still safe, whatever open() did
                    try:
                        self.driver.enter_safe_state()
                    except DriverError as exc:
                        self._event(SafetyEvent(self.device, "failed", "configure applied in the safe state",
                                                f"re-entering the safe state after reopening failed: {exc}",
                                                "operator"))
            fut.set_result(settings)
        except Exception as exc:  # noqa: BLE001 - a driver bug: the requester hears it, the thread lives on
            log.exception("%s: applying settings failed", self.device)
            self.stats.error(f"configure failed: {type(exc).__name__}: {exc}")
            self.settings = old
            self._close_driver()
            fut.set_exception(DeviceError(f"{type(exc).__name__}: {exc}"))
        finally:
            if not fut.done():
                fut.set_exception(DeviceError("the settings change was interrupted"))
