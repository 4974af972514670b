"""The simulated rig's trigger bus: one TTL signal split to every device, as a BNC splitter does.

:class:`TriggerBus` holds the pulses of one TTL line on *true time* -- CLOCK_MONOTONIC seconds of
this host, the one clock every simulator of an in-process rig shares. A simulated device that
has a trigger input gets a :class:`TriggerInput` (which of its inputs the cable goes to, and the
*epoch*: the CLOCK_MONOTONIC second its adapter's ``t = 0`` stands for). The device samples the
line with its own sample clock -- its drift (its ``clock_ppm``), its sample grid, its frames --
and puts the level in its own data exactly where the real device does (the Cyton's digital-read
aux bytes, the ADS1298 status word's GPIO bits, the flat panel's frame-sync record), so a host
sees the edge at the device's own time of the first sample taken at or after it.

A device with a trigger *output* (the MRI console's ``trig_out``) is a source: :func:`drive`
gives it a :class:`TriggerOutput`, and the pulses it puts there are on the line for every device
attached to it (EEG during fMRI: the scanner's volume triggers in the amplifier's data).

:class:`DelayedInterface` wraps any simulated device to give its link a transport delay: a
fixed latency plus a uniform jitter drawn per delivery (the USB/serial scheduling a host clock fit
must see through). The device's timeline is unchanged; its bytes simply arrive later.

Configurable from the fault side door (``medacq fault SIM trigger`` / ``trigger_train``, see
:func:`apply_trigger_fault`) and the rig config (``[[trigger]]`` lines, :func:`wire`).

True time never reaches a driver: the bench and tests read it here to judge the alignment.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from medacq.simulators._interface import DeviceInterface

__all__ = ["TriggerBus", "TriggerInput", "TriggerOutput", "DelayedInterface", "attach", "drive", "apply_trigger_fault"]


class TriggerBus:
    """One TTL line's pulses on true time (CLOCK_MONOTONIC seconds). Thread-safe.

    Args:
        width_s: default pulse width (s).
    """

    def __init__(self, width_s: float = 0.010) -> None:
        self.width_s = float(width_s)
        self._lock = threading.Lock()
        self._starts: list[float] = []
        self._ends: list[float] = []

    def pulse(self, t_true: float, width_s: float | None = None) -> float:
        """Schedule a pulse rising at ``t_true`` (CLOCK_MONOTONIC s); returns ``t_true``. Pulses
        must not overlap (an overlapping one raises ``ValueError``)."""
        w = self.width_s if width_s is None else float(width_s)
        if not w > 0:
            raise ValueError("pulse width must be > 0")
        with self._lock:
            i = bisect.bisect_left(self._starts, t_true)
            if (i > 0 and self._ends[i - 1] > t_true) or (i < len(self._starts) and self._starts[i] < t_true + w):
                raise ValueError(f"a pulse at {t_true:.6f} s overlaps another")
            self._starts.insert(i, float(t_true))
            self._ends.insert(i, float(t_true) + w)
        return float(t_true)

    def fire(self, delay_s: float = 0.0, width_s: float | None = None) -> float:
        """A pulse ``delay_s`` from now; returns its true time."""
        return self.pulse(time.monotonic() + delay_s, width_s)

    def train(self, n: int, period_s: float, start_in_s: float = 0.2, width_s: float | None = None,
              jitter_s: float = 0.0, seed: int = 0) -> list[float]:
        """``n`` pulses every ``period_s`` (plus a uniform ``[0, jitter_s)`` each, so events do not
        fall on one phase of every device's sample grid), the first ``start_in_s`` from now."""
        w = self.width_s if width_s is None else float(width_s)
        if not 0 < w < period_s:
            raise ValueError("a train needs 0 < width_s < period_s")
        rng = random.Random(seed)
        t0 = time.monotonic() + start_in_s
        return [self.pulse(t0 + i * period_s + rng.uniform(0.0, max(0.0, min(jitter_s, period_s - w) - 1e-6)), w)
                for i in range(int(n))]

    def level(self, t_true: float) -> bool:
        """The line's level at true time ``t_true`` (high during ``[start, start + width)``)."""
        with self._lock:
            i = bisect.bisect_right(self._starts, t_true) - 1
            return i >= 0 and t_true < self._ends[i]

    def first_edge(self, lo: float, hi: float) -> float | None:
        """The first rising edge in ``[lo, hi)`` (true time, s), or ``None``."""
        with self._lock:
            i = bisect.bisect_left(self._starts, lo)
            return self._starts[i] if i < len(self._starts) and self._starts[i] < hi else None

    def transitions(self, lo: float, hi: float) -> list[tuple[float, int]]:
        """Every change of the line in ``(lo, hi]`` (true time, s) as ``(time, +1 rising / -1
        falling)``, in time order (a device that filters the line: the Cyton's analog input)."""
        with self._lock:
            i = max(0, bisect.bisect_right(self._starts, lo) - 1)
            out = []
            for s, e in zip(self._starts[i:], self._ends[i:]):
                if s > hi:
                    break
                out += [(t, d) for t, d in ((s, 1), (e, -1)) if lo < t <= hi]
            return out

    def edges(self) -> list[float]:
        """True times (CLOCK_MONOTONIC s) of every rising edge scheduled so far."""
        with self._lock:
            return list(self._starts)

    def clear(self) -> None:
        with self._lock:
            self._starts.clear()
            self._ends.clear()


@dataclass
class TriggerInput:
    """Where the bus's cable goes on one device.

    Attributes:
        bus: the line.
        line: the device's input name (``D11`` on a Cyton, ``GPIO1`` on a HackEEG, ``frame_sync``).
        epoch: CLOCK_MONOTONIC second of the device adapter's ``t = 0`` (set by :func:`attach`
            once the adapter has started).
    """

    bus: TriggerBus
    line: str
    epoch: float = 0.0

    def level(self, t_device_s: float) -> bool:
        """The level the device reads at its own adapter time ``t_device_s``."""
        return self.bus.level(self.epoch + t_device_s)

    def first_edge(self, lo_s: float, hi_s: float) -> float | None:
        """The first rising edge in ``[lo_s, hi_s)`` of the device's adapter time, on that time
        (a device that timestamps edges itself: the ultrasound scanner), or ``None``."""
        t = self.bus.first_edge(self.epoch + lo_s, self.epoch + hi_s)
        return None if t is None else t - self.epoch

    def transitions(self, lo_s: float, hi_s: float) -> list[tuple[float, int]]:
        """:meth:`TriggerBus.transitions` in ``(lo_s, hi_s]`` of the device's adapter time, on that time."""
        return [(t - self.epoch, d) for t, d in self.bus.transitions(self.epoch + lo_s, self.epoch + hi_s)]


@dataclass
class TriggerOutput:
    """A device's trigger *output* cabled to a bus (the device is a source: an MRI console's
    ``trig_out``). The device puts pulses on the line at its own adapter time; ``collisions``
    counts pulses the line refused (they overlapped one already on it).

    Attributes:
        bus: the line.
        line: the device's output name (``trig_out``).
        epoch: CLOCK_MONOTONIC second of the device adapter's ``t = 0`` (set by :func:`drive`).
    """

    bus: TriggerBus
    line: str
    epoch: float = 0.0
    collisions: int = 0
    pulses: int = 0
    late: int = 0
    worst_late_s: float = 0.0

    def pulse(self, t_device_s: float, width_s: float) -> float | None:
        """A pulse rising at adapter time ``t_device_s`` for ``width_s`` seconds; its true time
        (CLOCK_MONOTONIC s), or ``None`` when it overlaps a pulse already on the line (counted).
        One put there after its rising time is counted in ``late`` (a sink may have sampled that
        moment already and miss it)."""
        t_true = self.epoch + t_device_s
        lag = time.monotonic() - t_true
        try:
            t = self.bus.pulse(t_true, width_s)
        except ValueError:
            self.collisions += 1
            return None
        self.pulses += 1
        if lag > 0:
            self.late += 1
            self.worst_late_s = max(self.worst_late_s, lag)
        return t


def drive(server: Any, bus: TriggerBus, line: str = "trig_out", device: Any | None = None) -> TriggerOutput:
    """Cable output ``line`` of the device a started SimulatorServer serves (through a
    :class:`DelayedInterface` too) to ``bus``: the device becomes a source of the line's pulses,
    which every device :func:`attach`-ed to it sees. Returns the output (epoch: the adapter's start)."""
    dev = device if device is not None else server.interface
    inner = dev.inner if isinstance(dev, DelayedInterface) else dev
    if not hasattr(inner, "trigger_out"):
        raise ValueError(f"{type(inner).__name__} has no trigger output (the MRI console has one)")
    out = TriggerOutput(bus, line, server._t0)
    inner.trigger_out = out
    return out


def attach(server: Any, bus: TriggerBus, line: str, device: Any | None = None) -> TriggerInput:
    """Cable ``bus`` to input ``line`` of the device a started SimulatorServer serves (through a
    :class:`DelayedInterface` too). Returns the input (its epoch is the adapter's start)."""
    dev = device if device is not None else server.interface
    inner = dev.inner if isinstance(dev, DelayedInterface) else dev
    if not hasattr(inner, "trigger"):
        raise ValueError(f"{type(inner).__name__} has no trigger input (Cyton, HackEEG, the flat panel, the "
                         "ultrasound scanner, the MRI console and the GigE cameras (Line0) have one)")
    inp = TriggerInput(bus, line, server._t0)  # the adapter's t = 0 (SimulatorServer.start sets it)
    inner.trigger = inp
    return inp


class DelayedInterface(DeviceInterface):
    """A device whose bytes reach the host ``latency_s + U[0, jitter_s)`` after the device made them.

    The inner device runs on a delayed clock: the adapter's ``t`` minus the current delay (never
    going backwards), so whatever it emits for its time ``T`` leaves at ``T + delay``. One delay
    is drawn per delivery (a burst of samples shares it, as one USB transfer does).
    """

    def __init__(self, inner: DeviceInterface, latency_s: float = 0.0, jitter_s: float = 0.0, seed: int = 0) -> None:
        if latency_s < 0 or jitter_s < 0:
            raise ValueError("latency_s and jitter_s must be >= 0")
        self.inner = inner
        self.latency_s = float(latency_s)
        self.jitter_s = float(jitter_s)
        self._rng = random.Random(seed)
        self._d = self._draw()
        self._last = float("-inf")

    def _draw(self) -> float:
        return self.latency_s + (self._rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)

    def _t(self, t: float) -> float:
        self._last = max(self._last, t - self._d)
        return self._last

    def on_connect(self, t: float) -> bytes:
        return self.inner.on_connect(self._t(t))

    def on_disconnect(self, t: float) -> None:
        self.inner.on_disconnect(self._t(t))

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return self.inner.on_bytes(data, self._t(t))

    def poll(self, t: float) -> bytes:
        out = self.inner.poll(self._t(t))
        if out:
            self._d = self._draw()
        return out

    def next_deadline(self) -> float | None:
        d = self.inner.next_deadline()
        return None if d is None else d + self._d

    def drop(self, n: int) -> None:
        self.inner.drop(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        self.inner.inject_error(message, n, code)

    def truth(self) -> dict:
        return {**self.inner.truth(), "link_latency_s": self.latency_s, "link_jitter_s": self.jitter_s}

    def __getattr__(self, name: str) -> Any:  # the inner device's own attributes (fault status...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def apply_trigger_fault(bus: TriggerBus, fault: str, args: dict[str, Any]) -> dict[str, Any]:
    """The fault side door's trigger requests: ``trigger`` (one pulse now, or ``delay_s`` from now,
    ``width_s``) and ``trigger_train`` (``n``, ``period_s``, ``start_in_s``, ``width_s``). Returns the
    true times scheduled (CLOCK_MONOTONIC s). ``ValueError`` for bad arguments."""
    if fault == "trigger":
        t = bus.fire(float(args.get("delay_s", 0.0)), args.get("width_s"))
        return {"edges": [t]}
    if fault == "trigger_train":
        ts = bus.train(int(args.get("n", 10)), float(args.get("period_s", 0.1)), float(args.get("start_in_s", 0.2)),
                       args.get("width_s"), float(args.get("jitter_s", 0.0)), int(args.get("seed", 0)))
        return {"edges": ts}
    raise ValueError(f"unknown trigger fault {fault!r} (trigger, trigger_train)")
