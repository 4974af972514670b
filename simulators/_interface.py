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

Every interface is also a :class:`DeviceFaults`: the device-level half of the fault side door
(``medacq fault SIM drop|device_error``; the wire-level half -- cable, stall, corruption -- is
the adapter's :class:`~medacq.simulators.adapters.FaultInjector`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from medacq.protocols._sansio import NEED_DATA, Garbage

__all__ = ["DeviceInterface", "DeviceFaults", "FaultNotSupported"]


class FaultNotSupported(ValueError):
    """The simulated device cannot show this fault (its protocol has no error reply, or a
    loss there would be invisible to the host)."""


class DeviceFaults(ABC):
    """The device-level fault side door, one typed interface for every simulated device.

    Called from other threads only under the adapter's lock
    (:meth:`~medacq.simulators.adapters.SimulatorServer.call`). A device that cannot show a
    fault raises :class:`FaultNotSupported` (a ``ValueError``) saying why.
    """

    @abstractmethod
    def drop(self, n: int) -> None:
        """Lose the next ``n`` units of streamed output *at the device* (packets, frames,
        samples, sub-frames: the device's own unit), as a FIFO overrun or a radio dropout
        does. Their sequence numbers are consumed, so a host sees the hole where the protocol
        numbers its output."""

    @abstractmethod
    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Answer the next ``n`` commands with the device's own error reply instead of
        executing them: ``message``, and ``code`` where the protocol has numeric codes
        (``None``: the device's usual code). ``n = 0`` withdraws what is still pending."""


class DeviceInterface(DeviceFaults):
    """A device's behaviour on the wire.

    Timing contract: ``t`` is seconds since the adapter started (monotonic). In *paced* mode
    the adapter calls :meth:`poll` at (or soon after) :meth:`next_deadline`; in *unpaced*
    mode (tests, ``--fast``) the adapter advances ``t`` to ``next_deadline()`` immediately
    each time, so streaming data comes out as fast as the transport takes it while every
    byte stays identical to the paced run.

    Every interface implements the fault side door (:class:`DeviceFaults`: ``drop``,
    ``inject_error``); the helpers :meth:`queue_error` / :meth:`take_injected_error` keep the
    pending error replies.
    """

    @abstractmethod
    def on_connect(self, t: float) -> bytes:
        """A host connected (TCP accept / pty opened). Returns bytes to send at once."""

    @abstractmethod
    def on_bytes(self, data: bytes, t: float) -> bytes:
        """Host→device bytes arrived. Returns the immediate reply bytes (may be ``b""``); the
        adapter sends them before it next calls :meth:`poll`, however long that takes."""

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

    def queue_error(self, message: str, n: int, code: int | None) -> None:
        """For :meth:`inject_error` implementations: the next ``n`` commands get an error reply
        (consumed with :meth:`take_injected_error`)."""
        self._injected = (int(n), str(message), None if code is None else int(code))

    def take_injected_error(self) -> tuple[str, int | None] | None:
        """For interfaces: consume one injected error, if any is pending."""
        n, message, code = self._injected
        if n <= 0:
            return None
        self._injected = (n - 1, message, code)
        return message, code
