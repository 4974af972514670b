"""The acquisition daemon: devices, publisher and control plane in one process.

:class:`AcquisitionDaemon` wires a :class:`~medacq.daemon.common.config.RigConfig` into running
threads: one :class:`~medacq.daemon.acquisition.worker.AcquisitionWorker` per device, one
:class:`~medacq.daemon.acquisition.publisher.Publisher` on the PUB socket, one control server on
the ROUTER socket. ``run_forever`` adds signals and the systemd notify protocol.

Safe state (:meth:`AcquisitionDaemon.request_safe_state`): the operator's ``safe_state`` request
and the automatic triggers of ``[device.safety]`` -- operator heartbeats missing on the control
socket, a device fault, the reconstruction stage silent on ``recon/<device>`` -- go to the
device's worker, ahead of its waiting work, and, for a driver with a thread-safe fast path
(:meth:`~medacq.drivers._base.Driver.cut_output`, the X-ray panel), to that path at once on the
*safety lane* (a small thread pool), so a device thread busy in a slow driver call does not
delay it. Every transition is published on ``safety/<device>`` (a ``safety`` message of the
stream protocol, in order with the device's stream) and written to the audit log. The *safety
watch* thread runs the silence timers, owns the subscription to the reconstruction stage, and
answers a request whose device thread is still busy after :attr:`AcquisitionDaemon.safe_reply_s`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zmq

from medacq.protocols.control import (
    MAX_REQUEST_BYTES,
    READ_ONLY_COMMANDS,
    ConfigureRequest,
    ControlError,
    DescribeRequest,
    DescriptorRequest,
    ListRequest,
    MarkRequest,
    PingRequest,
    SafeStateRequest,
    StartRequest,
    StatusRequest,
    StopRequest,
    StudyRequest,
)
from medacq.protocols.stream import MessageKind, StreamHeader, encode_header
from medacq.drivers._base import DeviceError, DriverError
from medacq.drivers.registry import driver_class

from medacq.daemon.acquisition.queue import DescriptorUpdate, FrameQueue, Notice
from medacq.daemon.acquisition.worker import AcquisitionWorker, SafetyEvent, SettingsRefused, StreamStats
from medacq.daemon.acquisition.devices import check_settings_change, effective_limits, settings_policy

from medacq.daemon.common.config import RigConfig
from medacq.daemon.common.security import LOCAL_USER, AuditLog, CurveServer, local_rights, prepare_ipc_dir
from medacq.daemon.acquisition.publisher import Publisher, sndhwm_for
from medacq.daemon.acquisition.markers import MarkerHub
from medacq.protocols.markers import MarkerError
from medacq.daemon.acquisition.control import ControlServer, Deferred
from medacq.daemon.common.binding import BindError, bind, check_exposure
from medacq.daemon.common.interpreter import gc_pauses
from medacq.daemon.common.sdnotify import Notifier, watchdog_interval_s
from medacq.daemon.interop.study import StudyState

__all__ = ["AcquisitionDaemon", "BindError"]

log = logging.getLogger("medacq.daemon")


class AcquisitionDaemon:
    """The daemon. ``start()`` binds and launches; ``shutdown()`` ends every series and closes.

    Attributes:
        configure_timeout_s: how long a ``configure`` may wait for its device's thread to take
            it (a device that is reconnecting or stuck in a read); then it is cancelled, never
            applied, and the client gets ``timeout``. Once taken it runs to its end.
        record_timeout_s: the same for ``record start``/``stop`` (they run one at a time).
        safe_reply_s: how long a ``safe_state`` reply waits for a device thread that is busy
            (inside a slow driver call); then that device is answered ``requested`` (the safe
            state is still entered at its next opportunity: a safe state is never withdrawn).
    """

    configure_timeout_s: float = 10.0
    record_timeout_s: float = 15.0
    safe_reply_s: float = 2.0

    def __init__(self, config: RigConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        # CurveZMQ needs a context of its own: its ZAP handler serves every socket of the context
        self.ctx = zmq.Context() if config.security.curve else (context or zmq.Context.instance())
        self.curve: CurveServer | None = None
        self.audit = AuditLog(config.security.audit_log)
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.wake = threading.Event()
        self.workers: dict[str, AcquisitionWorker] = {}
        self.kinds: dict[str, str] = {}
        self.publisher: Publisher | None = None
        self.markers: MarkerHub | None = None  # markers/<source> streams (software markers, device triggers)
        self._control_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.limits: dict[str, dict[str, tuple[float, float]]] = {d.name: dict(d.limits) for d in config.device}
        self._record_lane: ThreadPoolExecutor | None = None  # record start/stop, off the control thread
        self.control = ControlServer(self.handle, None, self.audit)
        self.study = StudyState()  # patient context: control plane and exports only, never the data plane
        # -- safe state
        self._safety_lane: ThreadPoolExecutor | None = None  # drivers' cut_output(), off the control thread
        self._safety_thread: threading.Thread | None = None
        self._safe_lock = threading.Lock()
        #: (deadline, device, reason, trigger, settle): safe_state replies to give even if the device
        #: thread is busy
        self._safe_deadlines: list[tuple[float, str, str, str, Any]] = []
        #: CLOCK_MONOTONIC (s) of the latest operator heartbeat (ping or state-changing request)
        self.last_control = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "AcquisitionDaemon":
        dc = self.config.daemon
        if self.config.security.curve:
            self.curve = CurveServer(self.config.security, self.ctx)
            self.control.curve = self.curve
        else:
            for ep, what in ((dc.data_endpoint, "data"), (dc.control_endpoint, "control")):
                # checked before either socket exists
                check_exposure(f"bind {what} endpoint", ep, allowed=False,
                               needs="CurveZMQ ([security] server_secret_key)")
        for ep in (dc.data_endpoint, dc.control_endpoint):
            try:
                prepare_ipc_dir(ep)
            except OSError as exc:
                raise BindError(f"cannot create the directory of {ep}: {exc}") from None
        if self.curve is None:  # after the ipc directory exists: its mode is part of the answer
            self.control.local_rights, self.control.local_reason = local_rights(dc.control_endpoint,
                                                                                dc.local_operator)
            log.info("control clients without CurveZMQ have %s rights (%s)", self.control.local_rights,
                     self.control.local_reason)
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, sndhwm_for(dc.sndhwm, dc.sndhwm_mb, dc.max_frame_mb))  # fixed at bind
        pub.setsockopt(zmq.LINGER, 500)
        ctl = self.ctx.socket(zmq.ROUTER)
        ctl.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES + 1024)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.curve is not None:
            self.curve.serve(pub)
            self.curve.serve(ctl)
        try:
            bind(pub, dc.data_endpoint, "data")
            bind(ctl, dc.control_endpoint, "control")
        except BindError:
            pub.close(0)
            ctl.close(0)
            raise
        self.publisher = Publisher(pub, self.wake, dc.heartbeat_s, dc.descriptor_interval_s,
                                   max_frame_bytes=int(dc.max_frame_mb * 1e6))
        self.markers = MarkerHub(self.publisher, self.wake, trigger_reference=dc.trigger_reference)
        for dev in self.config.device:
            cls = driver_class(dev.kind)
            settings = cls.validate_settings(dev.settings)
            q = FrameQueue(dc.queue_depth, self.wake, int(dc.queue_mb * 1e6))
            stats = StreamStats()
            self.publisher.add_stream(dev.name, q, stats)
            w = AcquisitionWorker(dev.name, cls, dev.address, settings, q, stats, dc.reconnect_max_s,
                                  on_fault=dev.safety.on_fault, on_safety=self._on_safety,
                                  on_triggers=self.markers.triggers, frame_offset_ns=self.markers.frame_offset_ns)
            self.workers[dev.name] = w
            self.kinds[dev.name] = dev.kind
        self.publisher.start()
        self._safety_lane = ThreadPoolExecutor(max_workers=max(2, len(self.workers)), thread_name_prefix="safety")
        self.last_control = time.monotonic()
        self._safety_thread = threading.Thread(target=self._safety_watch, name="safety-watch", daemon=True)
        self._safety_thread.start()
        for dev in self.config.device:
            w = self.workers[dev.name]
            if dev.autostart:
                w.want_running.set()
            w.start()
        self._control_thread = threading.Thread(target=self._control_loop, args=(ctl,), name="control", daemon=True)
        self._control_thread.start()
        log.info("data on %s, control on %s, %d device(s)", dc.data_endpoint, dc.control_endpoint, len(self.workers))
        return self

    def shutdown(self, timeout: float = 1.5) -> None:
        """End every series (``series_end`` is published), stop threads, close sockets."""
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            w.shutdown()
        for w in self.workers.values():
            w.join(max(0.05, deadline - time.monotonic()))
        self._stop.set()
        if self.markers is not None:
            self.markers.close()
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher.join(max(0.05, deadline - time.monotonic()))
            if self.publisher.is_alive():  # still sending (a large frame to a slow peer): give it longer
                self.publisher.join(5.0)
            if self.publisher.is_alive():
                # never close a socket another thread may be using (libzmq sockets are not
                # thread-safe: that crashes the process); the context's term reclaims it
                log.warning("publisher thread still busy at shutdown; its socket is left to it")
            else:
                self.publisher.sock.close(linger=200)
        if getattr(self, "_recording", None) is not None:  # after the publisher: the file gets each series_end
            self._recording.shutdown()
        if self._control_thread is not None:
            self._control_thread.join(0.5)
        if self._safety_thread is not None:
            self._safety_thread.join(0.5)
        if self._safety_lane is not None:
            self._safety_lane.shutdown(wait=False, cancel_futures=True)
        if self._record_lane is not None:
            self._record_lane.shutdown(wait=False, cancel_futures=True)
        if self.curve is not None:
            self.curve.stop()

    def streams_up(self) -> bool:
        """Every autostarted device is acquiring."""
        auto = {d.name for d in self.config.device if d.autostart}
        return all(self.workers[n].stats.state == "acquiring" for n in auto)

    def streams_tried(self) -> bool:
        """Every autostarted device has acquired or failed its first connection attempt."""
        auto = {d.name for d in self.config.device if d.autostart}
        return all(self.workers[n].attempted for n in auto)

    def healthy(self) -> bool:
        """No thread is wedged: each made progress within ``watchdog_stall_s``."""
        limit = self.config.daemon.watchdog_stall_s
        now = time.monotonic()
        if self.publisher is None or not self.publisher.is_alive() or now - self.publisher.last_progress > limit:
            return False
        return all(w.is_alive() and now - w.last_progress <= limit for w in self.workers.values())

    # -- control plane ---------------------------------------------------------------
    def _control_loop(self, sock: zmq.Socket) -> None:
        self.control.serve(sock, self._stop)

    def handle_raw(self, body: bytes | None, who: str = LOCAL_USER) -> bytes:
        """One request body in, one reply body out (rights and audit: :class:`ControlServer`). Never raises."""
        return self.control.handle_raw(body, who)

    def _worker(self, name: str) -> AcquisitionWorker:
        try:
            return self.workers[name]
        except KeyError:
            raise ControlError("unknown_device", f"no device named {name!r}; devices: {', '.join(self.workers)}") from None

    def handle(self, req: Any) -> Any:
        # an operator heartbeat ([device.safety] on_control_silence_s): an operator's ping or any request
        # that acts; a reader's ping (a remote clock estimator, a dashboard) keeps no watchdog quiet
        if (req.cmd not in READ_ONLY_COMMANDS
                or (isinstance(req, PingRequest) and self.control.caller_rights in (None, "operator"))):
            self.last_control = time.monotonic()
        if isinstance(req, SafeStateRequest):
            names = [req.device] if req.device else list(self.workers)
            for n in names:
                self._worker(n)  # an unknown name is refused before anything is done
            why = f"operator: {req.reason}" if req.reason else "operator: safe_state request"
            return Deferred(self.request_safe_state(names, why, "operator"), self.safe_reply_s + 5.0,
                            what="safe_state")
        if isinstance(req, MarkRequest):
            if req.source in self.workers:
                raise ControlError("bad_request", f"marker source {req.source!r} is a device: markers/{req.source} "
                                                  "carries its hardware triggers; choose another source name")
            assert self.markers is not None
            try:
                return self.markers.mark(req.source, req.text)
            except MarkerError as exc:
                raise ControlError("bad_request", f"mark: {exc}") from None
        if isinstance(req, PingRequest):
            return {"t_host_ns": time.time_ns(), "t_mono_ns": time.monotonic_ns(), "pid": os.getpid()}
        if isinstance(req, StatusRequest):
            return self.status()
        if isinstance(req, ListRequest):
            return {
                "devices": [
                    {"name": n, "kind": self.kinds[n], "address": w.address, "state": w.stats.state,
                     "topic": f"raw/{n}"}
                    for n, w in self.workers.items()
                ]
            }
        if isinstance(req, DescribeRequest):
            w = self._worker(req.device)
            policy = settings_policy(w.driver_cls.Settings)
            return {
                "name": w.device, "kind": self.kinds[w.device], "address": w.address, "state": w.stats.state,
                "settings": w.settings.model_dump(mode="json"),
                "config_only": sorted(policy.config_only),
                "config_only_paths": sorted(policy.config_only_path),
                "limits": {k: list(v) for k, v in effective_limits(w.driver_cls.Settings, self.limits[w.device]).items()},
                "descriptor": w.descriptor.model_dump(mode="json", exclude_none=True) if w.descriptor else None,
            }
        if isinstance(req, DescriptorRequest):
            w = self._worker(req.stream)
            if w.descriptor is None:
                raise ControlError("unknown_stream", f"stream {req.stream!r} has no descriptor yet (device not open)")
            w.queue.put_control(DescriptorUpdate(None))
            return w.descriptor.model_dump(mode="json", exclude_none=True)
        if isinstance(req, (StartRequest, StopRequest)):
            names = [req.device] if req.device else list(self.workers)
            for n in names:
                w = self._worker(n)
                w.request_start() if isinstance(req, StartRequest) else w.request_stop()
            return {"devices": names}
        if isinstance(req, ConfigureRequest):
            return self._configure(req)
        if isinstance(req, StudyRequest):
            try:
                return self.study.handle(req.action, req.study)
            except ValueError as exc:
                raise ControlError("bad_request", f"study: {exc}") from None
        if req.cmd == "record":  # the optional built-in recorder (daemon/recording/recorder.py)
            from medacq.daemon.recording.recorder import recording_service

            svc = recording_service(self)
            if req.action == "status":
                return svc.handle(req)
            if self._record_lane is None:
                self._record_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
            fut: Future[Any] = self._record_lane.submit(svc.handle, req)  # the executor claims it atomically
            return Deferred(fut, self.record_timeout_s, what=f"record {req.action}")
        raise ControlError("unknown_command", f"unhandled command {type(req).__name__}")

    def _configure(self, req: ConfigureRequest) -> Deferred:
        """Judge the change here (config-only fields, limits, validation: an immediate refusal)
        and queue it to the device's thread, which applies changes in arrival order."""
        w = self._worker(req.device)
        check_settings_change(w.driver_cls, w.settings, req.settings, self.limits[req.device], req.device)
        device = req.device

        def result(fut: Future[Any]) -> dict[str, Any]:
            try:
                settings = fut.result()
            except SettingsRefused as exc:
                raise ControlError("invalid_settings", f"{device}: {exc}") from None
            except DeviceError as exc:
                raise ControlError("device_error", f"{device}: {exc}") from None
            return {"device": device, "settings": settings.model_dump(mode="json")}

        return Deferred(w.submit_settings(req.settings), self.configure_timeout_s, result, f"{device}: configure")

    # -- safe state ------------------------------------------------------------------
    def request_safe_state(self, names: list[str], reason: str, trigger: str = "operator") -> Future[dict[str, Any]]:
        """Any thread: put the named devices in their safe state now (module doc).

        Returns a Future, already running (it cannot be cancelled: a safe state is never
        withdrawn), whose result is ``{"devices": {name: outcome}}``: for each device the first
        of its device thread's answer, its driver's fast path having sent the command, or
        :attr:`safe_reply_s` passing (``state`` ``requested``).
        """
        whole: Future[dict[str, Any]] = Future()
        whole.set_running_or_notify_cancel()
        results: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()

        def settle(name: str, outcome: dict[str, Any]) -> bool:
            with lock:
                if name in results or whole.done():
                    return False
                results[name] = outcome
                complete = len(results) == len(names)
            if complete:
                whole.set_result({"devices": {n: results[n] for n in names}})
            return True

        if not names:
            whole.set_result({"devices": {}})
        for name in names:
            w = self.workers[name]
            w.request_safe_state(reason, trigger).add_done_callback(
                lambda f, name=name: settle(name, f.result().result()))
            if w.can_cut and self._safety_lane is not None:
                try:
                    self._safety_lane.submit(self._cut_output, w, reason, trigger, settle)
                except RuntimeError:  # shutting down: the device thread answers (or says it could not)
                    pass
            with self._safe_lock:
                self._safe_deadlines.append((time.monotonic() + self.safe_reply_s, name, reason, trigger, settle))
        return whole

    def _cut_output(self, w: AcquisitionWorker, reason: str, trigger: str, settle: Any) -> None:
        """Safety lane: the driver's fast path, while its device thread may be busy."""
        try:
            done = w.cut_output()
        except (DriverError, OSError) as exc:
            log.warning("%s: fast safe-state path failed (the device thread still does it): %s", w.device, exc)
            return
        except Exception:  # noqa: BLE001 - a driver bug: the device thread still does it
            log.exception("%s: fast safe-state path failed", w.device)
            return
        if done is None:
            return
        ev = SafetyEvent(w.device, "safe", reason, done, trigger, verified=False, path="control")
        if settle(w.device, ev.result()):  # first: say so now; the device thread confirms later
            self._on_safety(ev)

    def _on_safety(self, ev: SafetyEvent) -> None:
        """Publish a transition on ``safety/<device>`` (in order with the device's stream) and
        audit it. Any thread."""
        w = self.workers.get(ev.device)
        if w is not None:
            h = StreamHeader(stream=ev.device, kind=MessageKind.SAFETY, series="", seq=0, t_host_ns=time.time_ns(),
                             t_mono_ns=time.monotonic_ns(), reason=ev.reason, state=ev.state,
                             meta={"detail": ev.detail, "trigger": ev.trigger, "verified": ev.verified,
                                   "path": ev.path})
            w.queue.put_control(Notice(f"safety/{ev.device}".encode(), encode_header(h)))
        ok = ev.state != "failed"
        self.audit.record("daemon", "safety", ev.result(), ok, None if ok else ev.detail, outcome=ev.state)

    def _safety_watch(self) -> None:
        """The safety watch thread: silence timers, the ``recon/`` subscription (this thread's
        socket only), and safe_state replies that cannot wait longer for a busy device thread."""
        quiet = {d.name: d.safety.on_control_silence_s for d in self.config.device if d.safety.on_control_silence_s}
        watch = {d.name: d.safety.on_recon_silence_s for d in self.config.device if d.safety.on_recon_silence_s}
        sub: zmq.Socket | None = None
        if watch:
            sub = self.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 64)
            if self.curve is not None:
                self.curve.client_keys().apply(sub)
            for name in watch:
                sub.setsockopt(zmq.SUBSCRIBE, f"recon/{name}".encode())
            sub.connect(self.config.recon.data_endpoint)
        seen: dict[str, float] = {}  # device -> CLOCK_MONOTONIC of its latest recon/ message
        tripped: dict[tuple[str, str], float] = {}  # one trigger per silence episode
        try:
            while not self._stop.is_set():
                if sub is None:
                    self._stop.wait(0.05)
                elif sub.poll(50):
                    for _ in range(256):
                        try:
                            topic = sub.recv_multipart(zmq.NOBLOCK, copy=False)[0].bytes
                        except zmq.Again:
                            break
                        name = topic.decode("utf-8", "replace")[len("recon/"):].split("/", 1)[0]
                        if name in watch:
                            seen[name] = time.monotonic()
                try:
                    self._safety_timers(quiet, watch, seen, tripped)
                except Exception:  # noqa: BLE001 - the watch must keep watching
                    log.exception("safety watch: a timer check failed")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.exception("safety watch stopped")
        finally:
            if sub is not None:
                sub.close(0)

    def _safety_timers(self, quiet: dict[str, float], watch: dict[str, float], seen: dict[str, float],
                       tripped: dict[tuple[str, str], float]) -> None:
        """One turn of the safety watch: overdue safe_state replies, then the silence timers."""
        now = time.monotonic()
        with self._safe_lock:
            due = [d for d in self._safe_deadlines if d[0] <= now]
            self._safe_deadlines = [d for d in self._safe_deadlines if d[0] > now]
        for _, name, reason, trigger, settle in due:
            w = self.workers[name]
            settle(name, {"device": name, "state": "requested", "reason": reason, "trigger": trigger,
                          "verified": False, "path": "worker", "detail": f"the device thread is busy (state "
                          f"{w.stats.state}): the safe state is entered at its next opportunity, ahead of any "
                          "configure"})
        last = self.last_control
        for name, limit in quiet.items():
            if now - last > limit and tripped.get((name, "control")) != last:
                tripped[(name, "control")] = last
                self.request_safe_state([name], f"no operator heartbeat on the control socket for {now - last:.1f} s "
                                        f"(on_control_silence_s = {limit:g})", "control_silence")
        for name, limit in watch.items():
            w = self.workers[name]
            if w.stats.state != "acquiring":
                continue
            ref = max(w.acquiring_since, seen.get(name, 0.0))
            if now - ref > limit and tripped.get((name, "recon")) != ref:
                tripped[(name, "recon")] = ref
                self.request_safe_state([name], f"no message from the reconstruction stage on recon/{name} for "
                                        f"{now - ref:.1f} s (on_recon_silence_s = {limit:g})", "recon_silence")

    def status(self) -> dict[str, Any]:
        streams = {}
        for name, w in self.workers.items():
            s = w.stats
            streams[name] = {
                "topic": f"raw/{name}", "kind": self.kinds[name], "state": s.state, "series": s.series,
                "frames": s.frames_published, "frames_acquired": s.frames_acquired, "bytes": s.bytes_published,
                "fps": round(s.fps, 2), "mbps": round(s.mbps, 3), "drops": w.queue.dropped,
                "gap_frames": s.gap_frames, "lost_samples": s.lost_samples, "queue_depth": len(w.queue),
                "queue_high_water": w.queue.high_water, "queue_capacity": w.queue.depth,
                "queue_bytes": w.queue.bytes,
                "latency_us_p50": s.latency_us_p50, "latency_us_p99": s.latency_us_p99,
                "reconnects": s.reconnects, "connect_failures": s.connect_failures, "last_error": s.last_error, "last_error_at": s.last_error_at,
                "driver": w.driver_counters(),
                "safety": w.safety_status(),
            }
        return {
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_at,
            "pid": os.getpid(),
            "gil_switch_ms": round(sys.getswitchinterval() * 1000.0, 3), "gc": gc_pauses().status(),
            "healthy": self.healthy(),
            "control": {"requests": self.control.requests, "errors": self.control.errors,
                        "deferred": self.control.deferred, "timeouts": self.control.timeouts,
                        "in_flight": self.control.in_flight,
                        "local_rights": None if self.curve is not None else self.control.local_rights},
            "publisher_errors": self.publisher.errors if self.publisher else 0,
            "publisher": self.publisher.hwm_status() if self.publisher else {},
            "recording": self._recording.status() if getattr(self, "_recording", None) else {"state": "off"},
            "study_uid": self.study.status()["study_uid"],
            "markers": self.markers.status() if self.markers else {},
            "streams": streams,
        }

    # -- process main ------------------------------------------------------------------
    def run_forever(self, duration_s: float | None = None, exit_within_s: float | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``duration_s``), speaking sd_notify when under systemd.
        ``exit_within_s``: once stopping, the process exits by then whatever hangs
        (:func:`~medacq.daemon.common.procs.exit_within`; process mains only)."""
        notifier = Notifier()
        stop = threading.Event()

        def _signal(signum: int, _frame: object) -> None:
            stop.set()

        old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
        wd = watchdog_interval_s()
        ready = False
        last_status = ""
        end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                # READY once every stream is up; a device that is unplugged at boot does not hold
                # the service hostage: after its first failed attempt READY goes out, and STATUS
                # (and `medacq ctl status`) say which streams are still reconnecting
                if not ready and (self.streams_up() or self.streams_tried() or not self.workers):
                    notifier.notify("READY=1", f"STATUS={self._status_line(self.healthy())}")
                    ready = True
                healthy = self.healthy()
                if wd is not None and healthy:
                    notifier.notify("WATCHDOG=1")
                line = self._status_line(healthy)
                if line != last_status:
                    notifier.notify(f"STATUS={line}")
                    last_status = line
                stop.wait(min(wd or 0.5, 0.5))
        finally:
            if exit_within_s is not None:
                from medacq.daemon.common.procs import exit_within

                exit_within(exit_within_s)
            notifier.notify("STOPPING=1")
            self.shutdown()
            notifier.close()
            for s, h in old.items():
                signal.signal(s, h)

    def _status_line(self, healthy: bool) -> str:
        states = [w.stats.state for w in self.workers.values()]
        up = states.count("acquiring")
        return f"{up}/{len(states)} acquiring" + ("" if healthy else "; UNHEALTHY (a thread is stalled)")
