"""The one control server: request envelope, rights, audit and replies (daemon and recon stage).

One loop serves a ROUTER socket: wait for a request, find who sent it (the CurveZMQ user id,
i.e. the client's Z85 public key, or ``"local"`` without CurveZMQ), split the ROUTER envelope
(identity, and the empty delimiter a REQ client adds), answer, and send the reply back on the
same envelope. :class:`ControlServer` is the answer: it parses the request, checks the
client's rights, calls the service's handler with the typed request, audits every
state-changing request with its result, and encodes the reply. A service (the acquisition
daemon, the reconstruction stage) only writes its handler. Nothing a client sends can stop
the loop or raise out of :meth:`ControlServer.handle_raw`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from medacq.daemon.common.security import LOCAL_USER, AuditLog, CurveServer, allowed
from medacq.protocols.control import READ_ONLY_COMMANDS, ControlError, encode_reply, parse_request

__all__ = ["ControlServer", "Handler", "serve_control"]

log = logging.getLogger("medacq.control")

Handler = Callable[[Any], Any]
"""A service's answer to one parsed, authorised request (a :mod:`medacq.protocols.control`
request model); returns the JSON-able result or raises :class:`ControlError`."""


class ControlServer:
    """Rights, audit and replies around a service's :data:`Handler`.

    Args:
        handler: the service's answer to a typed request.
        curve: the CurveZMQ server (its allow-list gives each client's rights); ``None``
            means no CurveZMQ, where every local client is an operator.
        audit: where state-changing requests are logged with who sent them and the result.

    Attributes:
        requests: requests received (count).
        errors: requests answered with an error, and socket errors of the serving loop (count).
    """

    def __init__(self, handler: Handler, curve: CurveServer | None, audit: AuditLog) -> None:
        self.handler = handler
        self.curve = curve
        self.audit = audit
        self.requests = 0
        self.errors = 0

    def rights(self, who: str) -> str | None:
        """``"operator"``, ``"reader"`` or ``None`` (unknown client) for a CurveZMQ user id."""
        return "operator" if self.curve is None else self.curve.rights(who)

    def handle_raw(self, body: bytes | None, who: str = LOCAL_USER) -> bytes:
        """One request body in, one reply body out. Never raises.

        ``body`` is ``None`` when the request was not exactly one message part.
        """
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
                raise ControlError("forbidden", f"{req.cmd} needs operator rights; this client has "
                                                f"{rights or 'no'} rights")
            result = self.handler(req)
            if req.cmd not in READ_ONLY_COMMANDS:
                self.audit.record(who, req.cmd, req.model_dump(exclude_none=True), True)
            return encode_reply(rid, result)
        except ControlError as exc:
            self.errors += 1
            if req is not None and req.cmd not in READ_ONLY_COMMANDS:
                self.audit.record(who, req.cmd, req.model_dump(exclude_none=True), False, f"{exc.code}: {exc}")
            return encode_reply(exc.request_id if rid is None else rid, error=exc)
        except Exception as exc:  # noqa: BLE001 - the control plane never dies
            self.errors += 1
            log.exception("control request failed")
            if req is not None and req.cmd not in READ_ONLY_COMMANDS:
                self.audit.record(who, req.cmd, req.model_dump(exclude_none=True), False,
                                  f"internal: {type(exc).__name__}: {exc}")
            return encode_reply(rid, error=ControlError("internal", f"{type(exc).__name__}: {exc}"))

    def serve(self, sock: zmq.Socket, stop: threading.Event) -> None:
        """Answer requests on ``sock`` until ``stop`` is set; then close the socket."""

        def error() -> None:
            self.errors += 1

        serve_control(sock, stop, self.handle_raw, self.curve is not None, error)


def serve_control(sock: zmq.Socket, stop: threading.Event, handle: Callable[[bytes | None, str], bytes],
                  curve: bool, on_error: Callable[[], None] = lambda: None) -> None:
    """Answer requests on ``sock`` with ``handle(body, who)`` until ``stop`` is set; then close it."""
    while not stop.is_set():
        if not sock.poll(100):
            continue
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            on_error()
            continue
        who = LOCAL_USER
        if curve:
            try:
                who = frames[-1].get("User-Id") or ""
            except zmq.ZMQError:
                who = ""
        parts = [f.bytes for f in frames]
        envelope, rest = [parts[0]], parts[1:]
        if rest and rest[0] == b"":
            envelope.append(b"")
            rest = rest[1:]
        reply = handle(rest[0] if len(rest) == 1 else None, who)
        try:
            sock.send_multipart([*envelope, reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            on_error()
    sock.close(0)
