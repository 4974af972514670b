"""The reconstruction stage (``medacq recon``): raw frames in, ``recon/...`` results out.

A separate process. It subscribes to ``raw/`` on the daemon, gives each stream its own
worker thread and bounded queue (a slow reconstructor never blocks another stream; a full
queue drops and counts), builds the reconstructor registered for the stream's modality
from its descriptor (again whenever the descriptor changes), and publishes every output
with the same header conventions plus a ``source`` reference (stream, series, seq,
acquisition clocks) so any subscriber can measure acquisition → reconstruction latency.

A malformed frame (wrong dtype or shape for its descriptor, an exception inside a
reconstructor) is logged and counted; the stream goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
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
from medacq.protocols.stream import MessageKind, SourceRef, StreamDescriptor, StreamHeader, encode_header

from medacq.daemon.client.api import ControlClient, DaemonUnreachable, GapInfo, Message, RequestFailed, Subscriber
from medacq.daemon.common.config import RigConfig
from medacq.daemon.acquisition.control import ControlServer
from medacq.daemon.common.binding import bind
from medacq.daemon.recon.base import Output, Reconstructor
from medacq.daemon.recon.registry import reconstructor_class

__all__ = ["ReconStage"]

log = logging.getLogger("medacq.recon")


@dataclass
class _OutState:
    series: str
    seq: int = 0
    descriptor: StreamDescriptor | None = None
    signature: tuple | None = None
    last_descriptor: float = 0.0


@dataclass
class _StreamState:
    name: str
    queue: deque = field(default_factory=deque)
    wake: threading.Event = field(default_factory=threading.Event)
    descriptor: dict[str, Any] | None = None
    recon: Reconstructor | None = None
    recon_descriptor: dict[str, Any] | None = None
    outputs: dict[str, _OutState] = field(default_factory=dict)
    frames_in: int = 0
    frames_done: int = 0
    outputs_sent: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str | None = None
    no_recon: bool = False
    proc_us: deque = field(default_factory=lambda: deque(maxlen=256))
    latency_us: deque = field(default_factory=lambda: deque(maxlen=256))
    thread: threading.Thread | None = None
    dropped_run: tuple[int, int] | None = None  # (first seq, count) dropped since the last queued message
    gaps_forwarded: int = 0


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


class ReconStage:
    """Run the reconstruction stage for a rig config."""

    def __init__(self, config: RigConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.ctx = zmq.Context() if config.security.curve else (context or zmq.Context.instance())
        self.curve = None
        self.client_keys = None
        from medacq.daemon.common.security import AuditLog

        self.audit = AuditLog(config.security.audit_log)
        self.control = ControlServer(self._dispatch, None, self.audit)
        self.streams: dict[str, _StreamState] = {}
        self._send_lock = threading.Lock()
        self._halt = threading.Event()
        self.pub: zmq.Socket | None = None
        self.started = time.monotonic()
        self.bad_messages = 0

    # -- sockets -------------------------------------------------------------------------
    def start(self) -> "ReconStage":
        rc = self.config.recon
        if self.config.security.curve:
            from medacq.daemon.common.security import CurveServer

            self.curve = CurveServer(self.config.security, self.ctx)
            self.client_keys = self.curve.client_keys()
            self.control.curve = self.curve
        self.pub = self.ctx.socket(zmq.PUB)
        if self.curve is not None:
            self.curve.serve(self.pub)
        self.pub.setsockopt(zmq.SNDHWM, self.config.daemon.sndhwm)
        self.pub.setsockopt(zmq.LINGER, 200)
        bind(self.pub, rc.data_endpoint, "recon data", self.curve is not None)
        self._ctl = self.ctx.socket(zmq.ROUTER)
        self._ctl.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES + 1024)
        self._ctl.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.serve(self._ctl)
        try:
            bind(self._ctl, rc.control_endpoint, "recon control", self.curve is not None)
        except Exception:
            self.pub.close(0)
            raise
        self.sub = Subscriber(self.config.recon_source, "raw/", errors="skip", context=self.ctx,
                              curve=self.client_keys, on_gap=self._on_source_hole)
        self._rx = threading.Thread(target=self._receive_loop, name="recon-rx", daemon=True)
        self._rx.start()
        self._ctl_thread = threading.Thread(target=self._control_loop, name="recon-ctl", daemon=True)
        self._ctl_thread.start()
        log.info("reconstruction: %s -> %s", self.config.recon_source, rc.data_endpoint)
        return self

    def shutdown(self, timeout: float = 1.5) -> None:
        self._halt.set()
        for st in self.streams.values():
            st.wake.set()
        deadline = time.monotonic() + timeout
        for t in [self._rx, self._ctl_thread, *(s.thread for s in self.streams.values() if s.thread)]:
            t.join(max(0.05, deadline - time.monotonic()))
        for st in self.streams.values():
            self._drop_recon(st)
        with self._send_lock:
            for st in self.streams.values():
                for name, out in st.outputs.items():
                    self._send_control(st, name, out, MessageKind.SERIES_END, reason="reconstruction stage stopped")
            self.pub.close(200)
        if self.curve is not None:
            self.curve.stop()

    # -- receiving -----------------------------------------------------------------------
    def _receive_loop(self) -> None:
        depth = self.config.recon.queue_depth
        asked: dict[str, float] = {}
        while not self._halt.is_set():
            try:
                msg = self.sub.recv(timeout=0.1)
            except zmq.ZMQError:
                break
            if msg is None:
                self._descriptor_timers()
                continue
            stream = msg.header["stream"]
            st = self._stream_state(stream)
            if msg.kind == "frame":
                st.frames_in += 1
                if st.descriptor is None and time.monotonic() - asked.get(stream, 0) > 2.0:
                    asked[stream] = time.monotonic()
                    threading.Thread(target=self._ask_descriptor, args=(stream,), daemon=True).start()
                if len(st.queue) >= depth:
                    st.dropped += 1
                    st.dropped_run = st.dropped_run or (msg.header["seq"], 0)
                    st.dropped_run = (st.dropped_run[0], st.dropped_run[1] + 1)
                    continue
            if st.dropped_run is not None:  # frames this stage dropped: a gap, in order
                first, n = st.dropped_run
                st.dropped_run = None
                st.queue.append(_gap_message(msg.topic, stream, first, n, "reconstruction queue full"))
            st.queue.append(msg)
            st.wake.set()
            self._descriptor_timers()
        self.sub.close()

    def _ask_descriptor(self, stream: str) -> None:
        """A late joiner asks the daemon to republish the descriptor now."""
        try:
            with ControlClient(self.config.daemon.control_endpoint, timeout=1.0, context=self.ctx,
                               curve=self.client_keys) as c:
                c.request("descriptor", stream=stream)
        except (DaemonUnreachable, RequestFailed) as exc:
            log.debug("descriptor request for %s failed: %s", stream, exc)

    # -- per-stream worker -----------------------------------------------------------------
    def _worker(self, st: _StreamState) -> None:
        while not self._halt.is_set():
            try:
                msg: Message = st.queue.popleft()
            except IndexError:
                st.wake.wait(0.2)
                st.wake.clear()
                continue
            try:
                self._handle(st, msg)
            except Exception as exc:  # noqa: BLE001 - a bad frame never ends the stream
                st.errors += 1
                st.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: %s", st.name, st.last_error)

    def _handle(self, st: _StreamState, msg: Message) -> None:
        h = msg.header
        kind = h["kind"]
        if kind == "descriptor" and h.get("descriptor"):
            if h["descriptor"] != st.descriptor:
                st.descriptor = h["descriptor"]
        elif kind == "series_start":
            for name, out in st.outputs.items():
                self._send_control(st, name, out, MessageKind.SERIES_END, reason="source series ended")
            st.outputs.clear()
        elif kind == "gap":
            if st.recon is not None:
                st.recon.on_gap(h["seq"], int(h.get("gap_frames") or 0))
            self._forward_gap(st, h)
        elif kind == "series_end":
            for name, out in st.outputs.items():
                self._send_control(st, name, out, MessageKind.SERIES_END, reason=h.get("reason") or "source ended")
            st.outputs.clear()
        elif kind == "frame":
            self._frame(st, h, msg.array)

    def _stream_state(self, stream: str) -> _StreamState:
        st = self.streams.get(stream)
        if st is None:
            st = self.streams[stream] = _StreamState(stream)
            st.thread = threading.Thread(target=self._worker, args=(st,), name=f"recon-{stream}", daemon=True)
            st.thread.start()
        return st

    def _on_source_hole(self, g: GapInfo) -> None:
        """This stage's subscriber saw a hole in ``seq`` (it fell behind, or the network
        dropped frames): queue it as a gap ahead of the frame that revealed it."""
        if not g.announced:  # announced gaps arrive as messages of their own
            st = self._stream_state(g.stream)
            st.queue.append(_gap_message(g.topic or f"raw/{g.stream}", g.stream, g.first_seq, g.count, g.reason))

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
        with self._send_lock:
            for name, out in st.outputs.items():
                self._send_control(st, name, out, MessageKind.GAP, gap_frames=0, reason=reason, meta=meta)
        st.gaps_forwarded += 1

    def _ensure_recon(self, st: _StreamState) -> Reconstructor | None:
        if st.descriptor is None:
            return None
        if st.recon is not None and st.recon_descriptor is not None and (
                st.recon_descriptor is st.descriptor  # the per-frame case: nothing new arrived
                or _processing_view(st.recon_descriptor) == _processing_view(st.descriptor)):
            st.recon_descriptor = st.descriptor  # only live device state in meta changed
            return st.recon
        desc = StreamDescriptor.model_validate(st.descriptor)
        cls = reconstructor_class(desc.modality)
        st.recon_descriptor = st.descriptor
        if cls is None:
            if not st.no_recon:
                log.info("%s: no reconstructor for modality %r; not reconstructed", st.name, desc.modality)
            st.no_recon = True
            self._drop_recon(st)
            return None
        t0 = time.perf_counter()
        old = st.recon
        try:
            st.recon = cls(desc, self.config.recon.settings.get(desc.modality, {}))
        except Exception:
            st.recon = None  # never feed the new descriptor's frames to the old reconstructor
            raise
        finally:  # closed after its replacement is built, so shared resources (a port) carry over
            if old is not None:
                _close_recon(old, st.name)
        st.no_recon = False
        log.info("%s: %s ready in %.3f s", st.name, cls.__name__, time.perf_counter() - t0)
        return st.recon

    def _drop_recon(self, st: _StreamState) -> None:
        """Stop using the stream's reconstructor and close it."""
        old, st.recon = st.recon, None
        if old is not None:
            _close_recon(old, st.name)

    def _frame(self, st: _StreamState, h: dict[str, Any], frame: np.ndarray | None) -> None:
        recon = self._ensure_recon(st)
        if recon is None or frame is None:
            return
        d = recon.descriptor
        if np.dtype(h["dtype"]) != np.dtype(d.dtype) or len(frame.shape) != len(d.shape) or any(
            a != b for a, b in zip(frame.shape, d.shape) if b != -1
        ):
            raise ValueError(
                f"frame seq {h['seq']} is {h['dtype']} {list(frame.shape)} but the descriptor says "
                f"{d.dtype} {d.shape}; frame skipped"
            )
        t0 = time.perf_counter_ns()
        outputs = recon.process(h, frame)
        st.proc_us.append((time.perf_counter_ns() - t0) / 1000)
        st.frames_done += 1
        src = SourceRef(stream=st.name, series=h["series"], seq=h["seq"], t_host_ns=h["t_host_ns"],
                        t_mono_ns=h["t_mono_ns"], t_device=h.get("t_device"))
        for out in outputs:
            self._publish(st, out, src, h["series"])

    # -- publishing ------------------------------------------------------------------------
    def _out_stream(self, st: _StreamState, name: str) -> str:
        return f"{st.name}/{name}" if name else st.name

    def _publish(self, st: _StreamState, out: Output, src: SourceRef, source_series: str) -> None:
        data = np.ascontiguousarray(out.data)
        stream = self._out_stream(st, out.name)
        o = st.outputs.get(out.name)
        with self._send_lock:
            if o is None:
                series = str(uuid.uuid5(uuid.UUID(source_series) if _is_uuid(source_series) else uuid.NAMESPACE_OID,
                                        out.name or "main"))
                o = st.outputs[out.name] = _OutState(series)
                self._send_control(st, out.name, o, MessageKind.SERIES_START)
            sig = (data.dtype.str, data.shape, tuple(out.axes), out.units)
            if sig != o.signature:
                o.signature = sig
                assert st.recon is not None
                o.descriptor = StreamDescriptor(
                    stream=stream, modality=f"{st.recon.modality}", device=f"recon:{type(st.recon).__name__}",
                    dtype=data.dtype.str, shape=list(data.shape), axes=out.axes, units=out.units,
                    geometry=out.descriptor_meta.pop("geometry", {}), meta={"source": st.name, **out.descriptor_meta},
                )
                self._send_control(st, out.name, o, MessageKind.DESCRIPTOR, descriptor=o.descriptor)
                o.last_descriptor = time.monotonic()
            h = StreamHeader(stream=stream, kind=MessageKind.FRAME, series=o.series, seq=o.seq, dtype=data.dtype.str,
                             shape=list(data.shape), axes=out.axes, units=out.units, t_host_ns=src.t_host_ns,
                             t_mono_ns=src.t_mono_ns, t_device=src.t_device, source=src, meta=out.meta or {})
            h_bytes = encode_header(h)
            # recon headers carry the *source* acquisition clocks in t_*; the publish time goes in meta
            self.pub.send_multipart((f"recon/{stream}".encode(), h_bytes, data), copy=False)
            o.seq += 1
            st.outputs_sent += 1
            st.latency_us.append((time.monotonic_ns() - src.t_mono_ns) / 1000)

    def _send_control(self, st: _StreamState, name: str, o: _OutState, kind: MessageKind, **fields: Any) -> None:
        stream = self._out_stream(st, name)
        h = StreamHeader(stream=stream, kind=kind, series=o.series, seq=o.seq, t_host_ns=time.time_ns(),
                         t_mono_ns=time.monotonic_ns(), **fields)
        assert self.pub is not None
        self.pub.send_multipart((f"recon/{stream}".encode(), encode_header(h)))

    def _descriptor_timers(self) -> None:
        now = time.monotonic()
        every = self.config.daemon.descriptor_interval_s
        with self._send_lock:
            for st in list(self.streams.values()):
                for name, o in list(st.outputs.items()):
                    if o.descriptor is not None and now - o.last_descriptor >= every:
                        self._send_control(st, name, o, MessageKind.DESCRIPTOR, descriptor=o.descriptor)
                        o.last_descriptor = now

    # -- control -------------------------------------------------------------------------
    def _control_loop(self) -> None:
        self.control.serve(self._ctl, self._halt)

    def _handle_request(self, body: bytes | None, who: str = "local") -> bytes:
        """One request body in, one reply body out (rights and audit: :class:`ControlServer`). Never raises."""
        return self.control.handle_raw(body, who)

    def _dispatch(self, req: Any) -> Any:
        """The stage's answer to one authorised request (ping, status, list, action)."""
        if isinstance(req, PingRequest):
            return {"t_host_ns": time.time_ns(), "t_mono_ns": time.monotonic_ns()}
        if isinstance(req, StatusRequest):
            return self.status()
        if isinstance(req, ListRequest):
            return {"streams": sorted(self.streams)}
        if isinstance(req, ActionRequest):
            st = self.streams.get(req.target)
            if st is None or st.recon is None:
                raise ControlError("unknown_stream", f"no reconstructor is running for stream {req.target!r}")
            try:
                return st.recon.control(req.action, req.args)
            except Exception as exc:  # noqa: BLE001 - a reconstructor's refusal is the client's error
                raise ControlError("bad_request", f"{req.target}: {exc}") from None
        raise ControlError("unknown_command", f"the reconstruction stage does not handle {req.cmd!r}")

    def status(self) -> dict[str, Any]:
        out = {}
        for name, st in self.streams.items():
            p = np.fromiter(st.proc_us, float) if st.proc_us else np.zeros(0)
            lat = np.fromiter(st.latency_us, float) if st.latency_us else np.zeros(0)
            out[name] = {
                "reconstructor": type(st.recon).__name__ if st.recon else None,
                "frames_in": st.frames_in, "frames_done": st.frames_done, "outputs": st.outputs_sent,
                "dropped": st.dropped, "gaps_forwarded": st.gaps_forwarded, "errors": st.errors, "last_error": st.last_error, "queue_depth": len(st.queue),
                "proc_us_p50": float(np.percentile(p, 50)) if p.size else None,
                "proc_us_p99": float(np.percentile(p, 99)) if p.size else None,
                "latency_us_p50": float(np.percentile(lat, 50)) if lat.size else None,
                "latency_us_p99": float(np.percentile(lat, 99)) if lat.size else None,
                "outputs_streams": sorted(f"recon/{self._out_stream(st, n)}" for n in st.outputs),
            }
        return {"uptime_s": round(time.monotonic() - self.started, 3), "streams": out,
                "bad_messages": self.sub.counters.bad_headers}

    def run_forever(self, duration_s: float | None = None) -> None:
        import signal

        stop = threading.Event()
        old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        from medacq.daemon.common.sdnotify import Notifier, watchdog_interval_s

        n = Notifier()
        n.notify("READY=1", "STATUS=reconstructing")
        wd = watchdog_interval_s()
        try:
            end = None if duration_s is None else time.monotonic() + duration_s
            while not stop.is_set() and (end is None or time.monotonic() < end):
                if wd is not None and self._rx.is_alive():
                    n.notify("WATCHDOG=1")
                stop.wait(min(wd or 0.5, 0.5))
        finally:
            n.notify("STOPPING=1")
            self.shutdown()
            for s, h in old.items():
                signal.signal(s, h)


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
