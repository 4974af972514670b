"""The command/data link the nuclear front ends share (``pet``, ``spect``): one TCP connection,
CRC-checked frames of this project's block framing (:mod:`medacq.protocols._block_link`, under
:mod:`~medacq.protocols.petsys` and :mod:`~medacq.protocols.anger`), text commands answered by a numeric
:class:`~medacq.protocols.petsys.ReplyCode`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from medacq.protocols.petsys import BadFrame, Command, Reply, ReplyCode

from ._base import DeviceError, Gap
from ._tcp_codec import TcpCodecDriver

__all__ = ["FramedTcpDriver"]


class FramedTcpDriver(TcpCodecDriver):
    """A :class:`~medacq.drivers._tcp_codec.TcpCodecDriver` (one TCP link) whose codec emits
    :class:`Reply` to commands and :class:`BadFrame` for frames that failed their CRC (counted in
    ``bad_frames``). Subclasses set ``self._codec`` (host role) and ``self._tcp``/``self._link`` in
    ``open``; ``settings`` has ``command_timeout_s``."""

    def __init__(self, name: str, address: str, settings: Any, buffer_bytes: int) -> None:
        super().__init__(name, address, settings, buffer_bytes)
        self._expected: int | None = None
        self.config: dict[str, Any] = {}

    def _events(self) -> Iterator[Any]:
        for ev in super()._events():
            if isinstance(ev, BadFrame):
                self.count("bad_frames")
                continue
            yield ev

    def _hold(self, ev: Any) -> None:
        if isinstance(ev, Reply):
            self.count("stray_replies")
        else:
            self._pending.append(ev)

    def command(self, text: str, timeout: float | None = None) -> str:
        """Send one command; return the reply text (:class:`DeviceError` on a non-OK code)."""
        rid = self._codec.next_request_id()
        t = timeout or self.settings.command_timeout_s
        r = self._request(self._codec.send(Command(rid, text)),
                          lambda ev: isinstance(ev, Reply) and ev.request_id == rid,
                          t, f"no reply to {text!r} within {t} s")
        if r.code != ReplyCode.OK:
            try:
                name = ReplyCode(r.code).name
            except ValueError:
                name = f"code {r.code}"
            raise DeviceError(f"{self.name}: device answered {name} ({r.text!r}) to {text!r}")
        return str(r.text)

    def start(self) -> None:
        self._expected = None
        self.command("START")

    def _counter_gap(self, counter: int) -> Gap | None:
        """Check a block's 32-bit counter against the one expected: a jump forward is a
        :class:`Gap` of that many blocks (``lost_blocks``), one backwards is counted
        (``out_of_order``)."""
        exp, self._expected = self._expected, (counter + 1) & 0xFFFFFFFF
        if exp is None or counter == exp:
            return None
        lost = (counter - exp) & 0xFFFFFFFF
        if lost >= 0x80000000:
            self.count("out_of_order")
            return None
        self.count("lost_blocks", lost)
        return Gap(lost_frames=lost, reason=f"block counter {exp}->{counter}")
