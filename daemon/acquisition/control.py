"""The one control server: request envelope, rights, audit and replies (daemon and recon stage).

One thread owns the ROUTER socket(s): it waits for a request, finds who sent it (the CurveZMQ
user id, i.e. the client's Z85 public key, named in the audit log by its allow-list file; without
CurveZMQ the local account over ``ipc://``, as the kernel reports it, or ``"local"`` over TCP),
splits the ROUTER envelope (identity, and the empty delimiter a REQ client adds), answers, and
sends the reply back on the same envelope. :class:`ControlServer` is the answer: it parses the
request, checks the client's rights, calls the service's handler with the typed request, audits
every state-changing request with what actually happened, and encodes the reply. A service (the
acquisition daemon, the reconstruction stage) only writes its handler. Nothing a client sends
can stop the loop or raise out of :meth:`ControlServer.handle_raw`.

Slow work never blocks the loop. A handler answers at once (``ping``, ``status``, ``stop``...)
or returns a :class:`Deferred`: a :class:`concurrent.futures.Future` that another thread (a
device worker applying a ``configure``, the recorder's lane) completes. The loop keeps serving
other clients meanwhile; when the future is done its reply goes out through the loop's thread
(the ROUTER socket is only ever touched by that thread). A deferred request that has not
*started* within its ``timeout_s`` is cancelled (``Future.cancel``) and answered with the
``timeout`` error: whoever does the work calls ``Future.set_running_or_notify_cancel()`` first,
which atomically either claims the request or reports it cancelled, so a request whose reply
said it failed is never applied later. Work that has started is never abandoned: its reply (and
its audit record) come when it ends, with its true outcome.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

import zmq

from medacq.daemon.common.security import LOCAL_USER, AuditLog, CurveServer, allowed, local_peer
from medacq.protocols.control import READ_ONLY_COMMANDS, ControlError, encode_reply, parse_request

__all__ = ["ControlServer", "Deferred", "Handler"]

log = logging.getLogger("medacq.control")

Handler = Callable[[Any], Any]
"""A service's answer to one parsed, authorised request (a :mod:`medacq.protocols.control`
request model): the JSON-able result, a :class:`Deferred` one, or raises :class:`ControlError`.
It runs on the control thread, so it must not block: slow work goes in a :class:`Deferred`."""

#: requests taken from the ROUTER socket in one go before finished work is answered
_BATCH = 64


@dataclass(frozen=True)
class Deferred:
    """A handler's answer that comes later, when ``future`` is done.

    Attributes:
        future: completed by the thread that does the work, which must call
            ``future.set_running_or_notify_cancel()`` before it starts and skip the work when
            that returns ``False`` (the request was cancelled: its reply already said so).
        timeout_s: how long (s) the work may wait to *start*; then it is cancelled and the
            client gets a ``timeout`` error (audit: ``timeout, cancelled``).
        result: maps the done future to the reply's result (may raise :class:`ControlError`);
            default ``future.result()``.
        what: names the work in the timeout message (``"syn0: configure"``).
    """

    future: Future[Any]
    timeout_s: float
    result: Callable[[Future[Any]], Any] | None = None
    what: str = ""


@dataclass(eq=False)
class _Call:
    """One deferred request between its arrival and its reply."""

    req: Any
    who: str
    deferred: Deferred
    deadline: float
    envelope: list[bytes] | None = None
    expired: bool = False   # its deadline passed while it was running: wait for the outcome
    answered: bool = False


class ControlServer:
    """Rights, audit and replies around a service's :data:`Handler`.

    Args:
        handler: the service's answer to a typed request.
        curve: the CurveZMQ server (its allow-list gives each client's rights); ``None``
            means no CurveZMQ, where every client has ``local_rights``.
        audit: where state-changing requests are logged with who sent them and the outcome.
        local_rights: rights of a client without CurveZMQ (the service decides them from its
            control endpoint: :func:`medacq.daemon.common.security.local_rights`).
        local_reason: why, quoted when a request is refused for want of rights.

    Attributes:
        requests: requests received (count).
        errors: requests answered with an error, and socket errors of the serving loop (count).
        deferred: requests answered later (configure, record start/stop...) (count).
        timeouts: deferred requests cancelled because they did not start in time (count).
        in_flight: deferred requests not yet answered.
    """

    def __init__(self, handler: Handler, curve: CurveServer | None, audit: AuditLog,
                 local_rights: str = "operator", local_reason: str = "") -> None:
        self.handler = handler
        self.curve = curve
        self.audit = audit
        self.local_rights = local_rights
        #: the rights (``reader``/``operator``) of the client whose request the handler is running
        #: now, ``None`` outside a handler call (the control thread only: requests are handled one
        #: at a time there)
        self.caller_rights: str | None = None
        self.local_reason = local_reason
        self.requests = 0
        self.errors = 0
        self.deferred = 0
        self.timeouts = 0
        self.in_flight = 0

    def rights(self, who: str) -> str | None:
        """``"operator"``, ``"reader"`` or ``None`` (unknown client) for a CurveZMQ user id;
        without CurveZMQ, :attr:`local_rights`."""
        return self.local_rights if self.curve is None else self.curve.rights(who)

    # -- one request -----------------------------------------------------------------------
    def _audit(self, req: Any, who: str, ok: bool, outcome: str, error: str | None = None) -> None:
        if req is not None and req.cmd not in READ_ONLY_COMMANDS:
            name, key = (who, None) if self.curve is None else (self.curve.name(who), who)
            self.audit.record(name, req.cmd, req.model_dump(exclude_none=True), ok, error, outcome=outcome, key=key)

    def _error(self, req: Any, who: str, rid: Any, exc: ControlError, outcome: str) -> bytes:
        self.errors += 1
        self._audit(req, who, False, outcome, f"{exc.code}: {exc}")
        return encode_reply(exc.request_id if rid is None else rid, error=exc)

    def _begin(self, body: bytes | None, who: str) -> bytes | _Call:
        """Parse, authorise and hand a request to the handler: its reply, or a :class:`_Call`
        to answer when its deferred work is done. Never raises."""
        self.requests += 1
        if body is None:
            self.errors += 1
            return encode_reply(None, error=ControlError("bad_request", "a request is exactly one message part"))
        rid = None
        req = None
        try:
            req = parse_request(body)
            rid = req.id
            rights = self.rights(who)
            if rights is None or not allowed(req.cmd, rights):
                why = f" ({self.local_reason})" if self.curve is None and self.local_reason else ""
                client = "this client" if self.curve is None else f"this client ({self.curve.name(who)})"
                raise ControlError("forbidden", f"{req.cmd} needs operator rights; {client} has "
                                                f"{rights or 'no'} rights{why}")
            self.caller_rights = rights
            try:
                result = self.handler(req)
            finally:
                self.caller_rights = None
            if isinstance(result, Deferred):
                self.deferred += 1
                self.in_flight += 1
                return _Call(req, who, result, time.monotonic() + result.timeout_s)
            self._audit(req, who, True, "applied")
            return encode_reply(rid, result)
        except ControlError as exc:
            return self._error(req, who, rid, exc, "refused")
        except Exception as exc:  # noqa: BLE001 - the control plane never dies
            log.exception("control request failed")
            return self._error(req, who, rid, ControlError("internal", f"{type(exc).__name__}: {exc}"), "failed")

    def _expire(self, call: _Call) -> bytes | None:
        """The deadline of ``call`` passed: cancel it if its work has not started (its
        timeout reply), else ``None`` (it is running: the reply comes when it ends)."""
        if not call.deferred.future.cancel():
            call.expired = True
            return None
        self.timeouts += 1
        self.in_flight -= 1
        call.answered = True
        what = call.deferred.what or call.req.cmd
        exc = ControlError("timeout", f"{what}: not started within {call.deferred.timeout_s:g} s (device busy or "
                                      "reconnecting?); cancelled, nothing was changed")
        return self._error(call.req, call.who, call.req.id, exc, "timeout, cancelled")

    def _finish(self, call: _Call) -> bytes:
        """The reply of a deferred request whose future is done (or cancelled elsewhere)."""
        self.in_flight -= 1
        call.answered = True
        fut, req = call.deferred.future, call.req
        try:
            if fut.cancelled():
                what = call.deferred.what or req.cmd
                return self._error(req, call.who, req.id, ControlError(
                    "busy", f"{what}: cancelled before it started (shutting down?); nothing was changed"), "cancelled")
            result = call.deferred.result(fut) if call.deferred.result is not None else fut.result()
            self._audit(req, call.who, True, "applied" + (" (after its deadline)" if call.expired else ""))
            return encode_reply(req.id, result)
        except ControlError as exc:
            return self._error(req, call.who, req.id, exc, "failed")
        except Exception as exc:  # noqa: BLE001 - the control plane never dies
            log.error("deferred %s failed: %s: %s", req.cmd, type(exc).__name__, exc)
            return self._error(req, call.who, req.id, ControlError("internal", f"{type(exc).__name__}: {exc}"),
                               "failed")

    def handle_raw(self, body: bytes | None, who: str = LOCAL_USER) -> bytes:
        """One request body in, one reply body out, waiting for deferred work. Never raises.

        ``body`` is ``None`` when the request was not exactly one message part. For callers
        outside the serving loop (tests, tools); :meth:`serve` never waits like this.
        """
        step = self._begin(body, who)
        if isinstance(step, bytes):
            return step
        fut = step.deferred.future
        try:
            fut.exception(max(0.0, step.deadline - time.monotonic()))
        except (FutureTimeout, CancelledError):
            pass
        if not fut.done():
            reply = self._expire(step)
            if reply is not None:
                return reply
            wait_futures([fut])
        return self._finish(step)

    # -- the serving loop ----------------------------------------------------------------------
    def serve(self, sock: zmq.Socket, stop: threading.Event) -> None:
        """Answer requests on the ROUTER ``sock`` until ``stop`` is set; then close it.

        This thread is the only one that touches ``sock``; deferred work is answered through it
        (a socket pair wakes it when a future is done).
        """
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        done: SimpleQueue[_Call] = SimpleQueue()
        waiting: list[_Call] = []

        def notify(call: _Call) -> None:  # any thread: the future is done
            done.put(call)
            try:
                wake_w.send(b"\0")
            except OSError:  # buffer full: a wake-up is pending anyway
                pass

        def send(envelope: list[bytes], reply: bytes) -> None:
            try:
                sock.send_multipart([*envelope, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.errors += 1

        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        try:
            while not stop.is_set():
                timeout_ms = 100.0
                live = [c.deadline for c in waiting if not c.expired]
                if live:
                    timeout_ms = min(timeout_ms, max(0.0, (min(live) - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout_ms))
                if wake_r in events:
                    try:
                        while wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                while True:  # deferred work that ended
                    try:
                        call = done.get_nowait()
                    except Empty:
                        break
                    if not call.answered:
                        waiting.remove(call)
                        assert call.envelope is not None
                        send(call.envelope, self._finish(call))
                now = time.monotonic()
                for call in [c for c in waiting if not c.expired and c.deadline <= now]:
                    reply = self._expire(call)
                    if reply is not None:
                        waiting.remove(call)
                        assert call.envelope is not None
                        send(call.envelope, reply)
                for _ in range(_BATCH if sock in events else 0):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    except zmq.ZMQError:
                        self.errors += 1
                        break
                    who = LOCAL_USER
                    if self.curve is not None:
                        try:
                            who = frames[-1].get("User-Id") or ""
                        except zmq.ZMQError:
                            who = ""
                    else:  # over ipc:// the kernel tells who connected (SO_PEERCRED)
                        try:
                            who = local_peer(frames[-1].get("Peer-Address"))
                        except zmq.ZMQError:
                            pass
                    parts = [f.bytes for f in frames]
                    envelope, rest = [parts[0]], parts[1:]
                    if rest and rest[0] == b"":
                        envelope.append(b"")
                        rest = rest[1:]
                    step = self._begin(rest[0] if len(rest) == 1 else None, who)
                    if isinstance(step, bytes):
                        send(envelope, step)
                        continue
                    step.envelope = envelope
                    waiting.append(step)
                    step.deferred.future.add_done_callback(lambda _f, c=step: notify(c))
        finally:
            for call in waiting:  # not started: never will be (a started one ends unanswered)
                call.deferred.future.cancel()
            sock.close(0)
            wake_r.close()
            wake_w.close()
