"""What a client needs to reach a CurveZMQ server (kept in the client: it imports only protocols)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth

__all__ = ["ClientKeys", "KEY_ENV", "SERVER_KEY_ENV"]

KEY_ENV = "MEDACQ_KEY"
"""Environment variable: this tool's own ``NAME.key_secret`` (``medacq keys generate``)."""

SERVER_KEY_ENV = "MEDACQ_SERVER_KEY"
"""Environment variable: the daemon's public key file (``server.key``)."""


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a CurveZMQ server: its key pair and the server's public key.

    Every tool connects with a key pair of its own (``medacq keys generate-rig`` makes one per
    tool, ``medacq keys generate DIR NAME`` one for a person or a script), so the daemon's audit
    log names who sent each request.
    """

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, secret_file: str | os.PathLike[str], server_key_file: str | os.PathLike[str]) -> "ClientKeys":
        """From this client's ``NAME.key_secret`` and the server's ``NAME.key`` (public) file.

        Raises:
            OSError: a file cannot be read.
            ValueError: a file holds no key, or ``secret_file`` no secret key.
        """
        public, secret = zmq.auth.load_certificate(os.fspath(secret_file))
        if secret is None:
            raise ValueError(f"{os.fspath(secret_file)} holds no secret key (use the NAME.key_secret file)")
        server_public, _ = zmq.auth.load_certificate(os.fspath(server_key_file))
        return cls(public, secret, server_public)

    @classmethod
    def from_env(cls) -> "ClientKeys | None":
        """From ``$MEDACQ_KEY`` and ``$MEDACQ_SERVER_KEY``; ``None`` when ``$MEDACQ_KEY`` is unset.

        Raises:
            ValueError: ``$MEDACQ_KEY`` is set without ``$MEDACQ_SERVER_KEY``, or a file is bad.
            OSError: a file cannot be read.
        """
        secret = os.environ.get(KEY_ENV)
        if not secret:
            return None
        server = os.environ.get(SERVER_KEY_ENV)
        if not server:
            raise ValueError(f"${KEY_ENV} is set but ${SERVER_KEY_ENV} (the daemon's public server.key) is not")
        return cls.load(secret, server)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public
