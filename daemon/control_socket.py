"""Serving control requests on a ROUTER socket (shared by the daemon and the reconstruction stage).

One loop: wait for a request, find who sent it (the CurveZMQ user id, i.e. the client's Z85
public key, or ``"local"`` without CurveZMQ), split the ROUTER envelope (identity, and the empty
delimiter a REQ client adds), hand the body to the handler, send the reply back on the same
envelope. A request of more than one part gets ``None`` as its body (the handler answers
``bad_request``). Nothing a client sends can stop the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from .security import LOCAL_USER

__all__ = ["serve_control"]


def serve_control(sock: zmq.Socket, stop: threading.Event, handle: Callable[[bytes | None, str], bytes],
                  curve: bool, on_error: Callable[[], None] = lambda: None) -> None:
    """Answer requests on ``sock`` until ``stop`` is set; then close the socket."""
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
