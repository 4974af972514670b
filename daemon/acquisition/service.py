"""The acquisition daemon: devices, publisher and control plane in one process.

:class:`AcquisitionDaemon` wires a :class:`~medacq.daemon.common.config.RigConfig` into running
threads: one :class:`~medacq.daemon.acquisition.worker.AcquisitionWorker` per device, one
:class:`~medacq.daemon.acquisition.publisher.Publisher` on the PUB socket, one control server on
the ROUTER socket. ``run_forever`` adds signals and the systemd notify protocol.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import zmq

from medacq.protocols.control import (
    MAX_REQUEST_BYTES,
    ConfigureRequest,
    ControlError,
    DescribeRequest,
    DescriptorRequest,
    ListRequest,
    PingRequest,
    StartRequest,
    StatusRequest,
    StopRequest,
)
from medacq.drivers.registry import driver_class

from medacq.daemon.acquisition.queue import DescriptorUpdate, FrameQueue
from medacq.daemon.acquisition.worker import AcquisitionWorker, StreamStats

from medacq.daemon.common.config import RigConfig, endpoint_is_local
from medacq.daemon.common.security import LOCAL_USER, AuditLog, CurveServer
from medacq.daemon.acquisition.publisher import Publisher
from medacq.daemon.acquisition.control import ControlServer
from medacq.daemon.common.binding import BindError, bind
from medacq.daemon.common.sdnotify import Notifier, watchdog_interval_s

__all__ = ["AcquisitionDaemon", "BindError"]

log = logging.getLogger("medacq.daemon")


class AcquisitionDaemon:
    """The daemon. ``start()`` binds and launches; ``shutdown()`` ends every series and closes."""

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
        self._control_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.control = ControlServer(self.handle, None, self.audit)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "AcquisitionDaemon":
        dc = self.config.daemon
        if self.config.security.curve:
            self.curve = CurveServer(self.config.security, self.ctx)
            self.control.curve = self.curve
        else:
            for ep, what in ((dc.data_endpoint, "data"), (dc.control_endpoint, "control")):
                if not endpoint_is_local(ep):  # checked before either socket exists
                    raise BindError(f"refusing to bind {what} endpoint {ep} without CurveZMQ "
                                    "([security] server_secret_key)")
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, dc.sndhwm)
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
        self.publisher = Publisher(pub, self.wake, dc.heartbeat_s, dc.descriptor_interval_s)
        for dev in self.config.device:
            cls = driver_class(dev.kind)
            settings = cls.validate_settings(dev.settings)
            q = FrameQueue(dc.queue_depth, self.wake, int(dc.queue_mb * 1e6))
            stats = StreamStats()
            self.publisher.add_stream(dev.name, q, stats)
            w = AcquisitionWorker(dev.name, cls, dev.address, settings, q, stats, dc.reconnect_max_s)
            self.workers[dev.name] = w
            self.kinds[dev.name] = dev.kind
        self.publisher.start()
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
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher.join(max(0.05, deadline - time.monotonic()))
            self.publisher.sock.close(linger=200)
        if getattr(self, "_recording", None) is not None:  # after the publisher: the file gets each series_end
            self._recording.shutdown()
        if self._control_thread is not None:
            self._control_thread.join(0.5)
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
            return {
                "name": w.device, "kind": self.kinds[w.device], "address": w.address, "state": w.stats.state,
                "settings": w.settings.model_dump(mode="json"),
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
            w = self._worker(req.device)
            merged = {**w.settings.model_dump(), **req.settings}
            try:
                settings = w.driver_cls.validate_settings(merged)
            except Exception as exc:  # pydantic ValidationError
                errs = getattr(exc, "errors", lambda: [])()
                detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs) or str(exc)
                raise ControlError("invalid_settings", f"{req.device}: {detail}") from None
            err = w.reconfigure(settings)
            if err:
                raise ControlError("device_error", f"{req.device}: {err}")
            return {"device": req.device, "settings": settings.model_dump(mode="json")}
        if req.cmd == "record":  # the optional built-in recorder (daemon/recorder.py)
            from medacq.daemon.recording.recorder import recording_service

            return recording_service(self).handle(req)
        raise ControlError("unknown_command", f"unhandled command {type(req).__name__}")

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
            }
        return {
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_at,
            "pid": os.getpid(),
            "healthy": self.healthy(),
            "control": {"requests": self.control.requests, "errors": self.control.errors},
            "publisher_errors": self.publisher.errors if self.publisher else 0,
            "recording": self._recording.status() if getattr(self, "_recording", None) else {"state": "off"},
            "streams": streams,
        }

    # -- process main ------------------------------------------------------------------
    def run_forever(self, duration_s: float | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``duration_s``), speaking sd_notify when under systemd."""
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
            notifier.notify("STOPPING=1")
            self.shutdown()
            notifier.close()
            for s, h in old.items():
                signal.signal(s, h)

    def _status_line(self, healthy: bool) -> str:
        states = [w.stats.state for w in self.workers.values()]
        up = states.count("acquiring")
        return f"{up}/{len(states)} acquiring" + ("" if healthy else "; UNHEALTHY (a thread is stalled)")
