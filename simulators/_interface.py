"""The contract between a simulated device and its transport adapter.

A simulator is *model + interface + adapter* (as in Lewis):

* the **model** holds physics and state and knows nothing of bytes;
* the **interface** (a :class:`DeviceInterface`) binds the model to a sans-I/O codec in
  device role: host bytes in, device bytes out;
* the **adapter** (pty, TCP; see :mod:`medacq.simulators.adapters`) moves those bytes over
  a real transport and owns the clock.

The interface never reads a clock and never sleeps: the adapter passes the time in, so a
seeded simulator produces the same bytes for the same inputs, and tests can drive an
interface directly in memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from medacq.protocols._sansio import NEED_DATA, Garbage

__all__ = ["DeviceInterface"]


class DeviceInterface(ABC):
    """A device's behaviour on the wire.

    Timing contract: ``t`` is seconds since the adapter started (monotonic). In *paced* mode
    the adapter calls :meth:`poll` at (or soon after) :meth:`next_deadline`; in *unpaced*
    mode (tests, ``--fast``) the adapter advances ``t`` to ``next_deadline()`` immediately
    each time, so streaming data comes out as fast as the transport takes it while every
    byte stays identical to the paced run.
    """

    @abstractmethod
    def on_connect(self, t: float) -> bytes:
        """A host connected (TCP accept / pty opened). Returns bytes to send at once."""

    @abstractmethod
    def on_bytes(self, data: bytes, t: float) -> bytes:
        """Host→device bytes arrived. Returns the immediate reply bytes (may be ``b""``)."""

    @abstractmethod
    def poll(self, t: float) -> bytes:
        """Device-initiated output due by time ``t`` (e.g. streamed samples). ``b""`` if none."""

    @abstractmethod
    def next_deadline(self) -> float | None:
        """Time (s) at which :meth:`poll` has more output due, or ``None`` when idle."""

    def on_disconnect(self, t: float) -> None:
        """The host went away (cable pulled, socket closed). Default: nothing."""

    def truth(self) -> dict:
        """Ground truth the model can report for tests (positions, rates, ...). Default empty."""
        return {}

    # -- helpers for interfaces ----------------------------------------------------------
    garbage_bytes: int = 0

    def dispatch(self, codec: Any, data: bytes, handle: Callable[[Any], bytes], *,
                 count_garbage: bool = True) -> bytes:
        """Feed host bytes to a device-role codec; return ``handle(event)`` of every event, joined.

        With ``count_garbage`` a :class:`Garbage` event is counted in :attr:`garbage_bytes`
        (and not handed on); otherwise ``handle`` receives it like any other event.
        """
        codec.receive_data(data)
        out = bytearray()
        while (ev := codec.next_event()) is not NEED_DATA:
            if count_garbage and isinstance(ev, Garbage):
                self.garbage_bytes += ev.nbytes
                continue
            out += handle(ev)
        return bytes(out)

    # -- fault side door: device error codes ------------------------------------------------
    _injected: tuple[int, str, int | None] = (0, "", None)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """The next ``n`` commands are answered with the device's own error reply (``message``,
        and ``code`` where the protocol has numeric codes) instead of being executed."""
        self._injected = (int(n), str(message), code)

    def take_injected_error(self) -> tuple[str, int | None] | None:
        """For interfaces: consume one injected error, if any is pending."""
        n, message, code = self._injected
        if n <= 0:
            return None
        self._injected = (n - 1, message, code)
        return message, code
