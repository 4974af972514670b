"""The command side of a simulated device on a block link (:mod:`medacq.protocols._block_link`):
the PET ring (:mod:`~medacq.simulators.pet_ring`) and the gamma camera
(:mod:`~medacq.simulators.gamma_camera`).

:class:`BlockDeviceInterface` answers every :class:`~medacq.protocols._block_link.Command` with one
:class:`~medacq.protocols._block_link.Reply`, counts bad frames and garbage, keeps the fault side
door (``drop``: the next blocks are lost in the device, ``inject_error``: the next commands get an
error reply) and parses the command grammar shared by the devices::

    GET STATUS | GET CONFIG | START | STOP | SET <setting> <value>...

A device names its codec, its status line, its configuration, what START and STOP do and its
settings (the hooks below). Settings are refused with ``BUSY`` while running; a value that is not
a number is ``BAD_ARGUMENT``.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import Any

from medacq.protocols._block_link import BadFrame, BlockLink, Command, Reply, ReplyCode
from medacq.simulators._interface import DeviceInterface

__all__ = ["BlockDeviceInterface"]


class BlockDeviceInterface(DeviceInterface):
    """A device on a block link: command channel, counters and fault side door (module doc).

    Attributes set here: ``codec`` (from :meth:`_new_codec`, fresh on every connection), ``state``
    (``"stopped"`` or ``"running"``), ``blocks_sent``, ``bad_frames``, ``garbage_bytes`` and the
    pending drop count ``_drop_next`` (a subclass's ``poll`` consumes it).
    """

    def __init__(self) -> None:
        self.codec: BlockLink = self._new_codec()
        self.state = "stopped"
        self._drop_next = 0
        self.blocks_sent = 0
        self.bad_frames = 0
        self.garbage_bytes = 0

    # ---- hooks ------------------------------------------------------------------------------------
    @abstractmethod
    def _new_codec(self) -> BlockLink:
        """A fresh device-role codec."""

    @abstractmethod
    def _status(self, t: float) -> str:
        """The ``GET STATUS`` reply text at adapter time ``t`` (s)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The ``GET CONFIG`` reply (sent as JSON)."""

    @abstractmethod
    def _start(self, t: float) -> None:
        """``START`` while stopped, at adapter time ``t`` (s): set ``state`` and the block clock."""

    @abstractmethod
    def _stop(self) -> None:
        """``STOP`` (and a lost connection): set ``state`` and clear the block clock."""

    @abstractmethod
    def _set(self, what: str, args: list[str]) -> tuple[ReplyCode, str] | None:
        """``SET <what> <args>...`` while stopped (``what`` upper case, at least one arg): the reply,
        or ``None`` for a setting the device does not have. ``ValueError`` / ``IndexError`` make a
        ``BAD_ARGUMENT`` reply."""

    # ---- fault side door ---------------------------------------------------------------------
    def drop(self, n: int) -> None:
        """The next ``n`` blocks are lost in the device (their counters are consumed)."""
        self._drop_next += int(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """The next ``n`` commands get ``code`` (default ``DEVICE_FAULT``) and ``message``."""
        self.queue_error(message, n, code)

    # ---- DeviceInterface ------------------------------------------------------------------------
    def on_connect(self, t: float) -> bytes:
        self.codec = self._new_codec()
        return b""

    def on_disconnect(self, t: float) -> None:
        self._stop()

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.dispatch(self.codec, data, lambda ev: self._on_event(ev, t))

    def _on_event(self, ev: Any, t: float) -> bytes:
        if isinstance(ev, Command):
            injected = self.take_injected_error()
            if injected is not None:
                code = ReplyCode.DEVICE_FAULT if injected[1] is None else injected[1]
                return self.codec.send(Reply(ev.request_id, int(code), injected[0]))
            code, text = self.handle_command(ev.text, t)
            return self.codec.send(Reply(ev.request_id, int(code), text))
        if isinstance(ev, BadFrame):
            self.bad_frames += 1
        return b""

    # ---- commands ---------------------------------------------------------------------------------
    def handle_command(self, text: str, t: float) -> tuple[ReplyCode, str]:
        """The reply ``(code, text)`` to one command's text at adapter time ``t`` (s)."""
        words = text.strip().split()
        if not words:
            return ReplyCode.UNKNOWN_COMMAND, "empty command"
        cmd = words[0].upper()
        try:
            if cmd == "GET" and len(words) > 1 and words[1].upper() == "STATUS":
                return ReplyCode.OK, self._status(t)
            if cmd == "GET" and len(words) > 1 and words[1].upper() == "CONFIG":
                return ReplyCode.OK, json.dumps(self.config())
            if cmd == "START":
                if self.state != "running":
                    self._start(t)
                return ReplyCode.OK, ""
            if cmd == "STOP":
                self._stop()
                return ReplyCode.OK, ""
            if cmd == "SET":
                if len(words) < 3:
                    return ReplyCode.BAD_ARGUMENT, "SET needs a setting and a value"
                if self.state == "running":
                    return ReplyCode.BUSY, "stop acquisition first"
                what = words[1].upper()
                reply = self._set(what, words[2:])
                return (ReplyCode.UNKNOWN_COMMAND, f"unknown setting {what}") if reply is None else reply
        except (ValueError, IndexError) as exc:
            return ReplyCode.BAD_ARGUMENT, str(exc)[:200]
        return ReplyCode.UNKNOWN_COMMAND, f"unknown command {words[0]}"
