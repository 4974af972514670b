"""What a client needs to reach a CurveZMQ server (kept in the client: it imports only protocols)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zmq

__all__ = ["ClientKeys"]


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a CurveZMQ server: its key pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public
