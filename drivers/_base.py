"""The driver contract: what every device driver gives the acquisition daemon.

A driver is built from a *transport address* -- a serial path, ``socket://host:port``,
a VISA resource string, ``tcp://host:port`` -- so the code that runs on the bench runs in
CI against a simulator. It turns device events into :class:`Frame` and :class:`Gap`
items; the daemon assigns sequence numbers, queues and publishes them.

Lifecycle (all called from the device's own acquisition thread)::

    d = DriverClass(name, address, settings)
    d.open()          # connect, identify, apply settings; descriptor() is valid after
    d.start()
    while running: for item in d.read(timeout): ...
    d.stop(); d.close()

Errors: raise :class:`ConnectionLost` when the transport fails (the daemon reconnects
with backoff and starts a new series) and :class:`DeviceError` when the device refuses
something (bad settings, an error code). Garbage on the wire is *not* an error: count it
(:attr:`Driver.counters`) and emit a :class:`Gap` for what it cost.

Status: :meth:`Driver.status` is the one thing another thread may call (the daemon's
``status`` request): a typed :class:`DriverStatus` built from snapshots, never from state
the acquisition thread is changing -- with :meth:`Driver.cut_output`, which a driver whose
device allows it makes safe to call from another thread.

Safe state: :meth:`Driver.enter_safe_state` turns the device's physical output off (X-ray
source, ultrasound transmit, EIT current) and says what it did; the default, for devices that
emit nothing (biosignal amplifiers), does nothing and says so (:data:`NOTHING_TO_MAKE_SAFE`).
Leaving the safe state is never the driver's doing: only a later :meth:`Driver.start` (the
operator's) turns the output on again.

Command/reply drivers (one byte link, one sans-I/O host codec: commands out, replies and
data in on the same link) derive from :class:`CodecDriver`, which owns the read-and-drain
step and the command loop (send, read until the reply or a deadline, keep the data that
raced the reply for :meth:`Driver.read`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NotRequired, Protocol, TypedDict

import numpy as np
from pydantic import BaseModel

from medacq.protocols._sansio import NEED_DATA, READ_ROOM, Garbage
from medacq.protocols.stream import StreamDescriptor

__all__ = ["Frame", "Gap", "Driver", "DriverError", "DeviceError", "ConnectionLost", "DeviceNotFound",
           "DriverStatus", "SensorStatus", "ByteLink", "HostCodec", "CodecDriver", "NOTHING_TO_MAKE_SAFE"]

#: what :meth:`Driver.enter_safe_state` reports for a device with no output to turn off
NOTHING_TO_MAKE_SAFE = "nothing to make safe"


@dataclass(slots=True)
class Frame:
    """One acquired frame.

    Attributes:
        data: the array, in the layout the descriptor announces (e.g. ``(channel, sample)``).
        t_host_ns: CLOCK_REALTIME (ns) at acquisition of the first sample.
        t_mono_ns: CLOCK_MONOTONIC (ns) at the same instant.
        t_device: the device's clock or sample counter for the first sample, if it has one.
        meta: per-frame JSON-able metadata (e.g. ``{"angle_deg": 12.5}``).
    """

    data: np.ndarray
    t_host_ns: int
    t_mono_ns: int
    t_device: float | int | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """Data lost on the device link, announced to subscribers as a ``gap`` message.

    Attributes:
        lost_frames: whole frames that will never be delivered (they consume sequence
            numbers, so subscribers see exactly which are missing).
        lost_samples: device samples lost between delivered frames (sample streams), if known.
        reason: why (``"device counter jumped 17->20"``, ``"crc mismatch"``).
    """

    lost_frames: int = 0
    lost_samples: int | None = None
    reason: str = ""


class DriverError(Exception):
    """Base of driver errors."""


class DeviceError(DriverError):
    """The device refused a command, reported an error code, or did not identify."""


class ConnectionLost(DriverError):
    """The transport failed (cable pulled, peer closed, read error)."""


class DeviceNotFound(ConnectionLost):
    """The address names nothing that exists (missing device path, refused TCP port)."""


class SensorStatus(TypedDict):
    """One sensor of a multi-sensor driver (e.g. one OPM of a QuSpin rig), for ``status``.

    Attributes:
        label: the sensor's channel name.
        address: its transport address.
        state: ``ok``, or ``stalled`` (no samples for the driver's stall time while the
            others stream).
        lost_samples: its samples lost in this run so far (NaN-filled plus stream gaps).
        late_samples_dropped: its samples discarded because they came after their slots
            were filled.
        leds: the sensor's status LEDs, name → lit (``laser_on``, ``cell_temp_lock``...).
        last_message: the last text message the sensor sent.
    """

    label: str
    address: str
    state: Literal["ok", "stalled"]
    lost_samples: int
    late_samples_dropped: int
    leds: dict[str, bool]
    last_message: str


class DriverStatus(TypedDict):
    """What a driver reports about itself (:meth:`Driver.status`); the acquisition worker
    shows it as the ``driver`` entry of the stream's ``status``: the counters, flattened,
    and ``sensors`` beside them.

    Attributes:
        counters: a copy of :attr:`Driver.counters` (name → count: garbage bytes, resyncs...).
        sensors: per-sensor state, only for drivers that merge several sensors into one stream.
    """

    counters: dict[str, int]
    sensors: NotRequired[list[SensorStatus]]


class Driver(ABC):
    """Base class of every device driver.

    Class attributes:
        kind: the config ``kind`` that selects this driver (``synthetic``, ``cyton``...).
        modality: the stream modality the reconstruction stage keys on.
        Settings: pydantic model of the device's settings (config ``[device.settings]``).
    """

    kind: ClassVar[str]
    modality: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]

    def __init__(self, name: str, address: str, settings: BaseModel) -> None:
        self.name = name
        self.address = address
        self.settings = settings
        self.counters: dict[str, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a named counter shown in ``status`` (garbage bytes, resyncs...)."""
        self.counters[key] = self.counters.get(key, 0) + n

    def status(self) -> DriverStatus:
        """The driver's live status (typed), for the daemon's ``status`` request.

        Called from *other* threads while the acquisition thread runs the driver: build it
        from snapshots only (a copy of :attr:`counters`, objects the acquisition thread
        replaces and never mutates). Drivers with more to say extend it (``sensors``).
        """
        return {"counters": dict(self.counters)}

    @abstractmethod
    def open(self) -> None:
        """Connect, identify the device and apply :attr:`settings`."""

    @abstractmethod
    def close(self) -> None:
        """Release the transport. Must not raise."""

    @abstractmethod
    def start(self) -> None:
        """Begin acquisition."""

    @abstractmethod
    def stop(self) -> None:
        """End acquisition (the transport stays open)."""

    @abstractmethod
    def descriptor(self) -> StreamDescriptor:
        """The stream descriptor for the current settings (valid after :meth:`open`)."""

    @abstractmethod
    def read(self, timeout: float) -> Iterable[Frame | Gap]:
        """Frames and gaps that arrived, waiting at most ``timeout`` seconds for the first."""

    @classmethod
    def validate_settings(cls, raw: dict[str, Any]) -> BaseModel:
        """Validate raw settings (from config or a ``configure`` request)."""
        return cls.Settings.model_validate(raw)

    def enter_safe_state(self) -> str:
        """Turn the device's physical output off -- X-ray source off and exposure aborted,
        ultrasound transmit stopped, EIT current injection stopped -- check that the device
        says so where it can, and return what was done (for the operator, the audit log and the
        ``safety/<device>`` message).

        Called on the acquisition thread, after (or instead of) :meth:`stop`: it also ends an
        acquisition in progress. It must not turn anything on; leaving the safe state is a later
        :meth:`start`. Raises :class:`ConnectionLost` when the link fails (the daemon enters the
        safe state again at reconnect) and :class:`DeviceError` when the device refuses or
        cannot do it (the reason says which). The default, for devices that emit nothing
        (biosignal amplifiers, the synthetic device), does nothing and returns
        :data:`NOTHING_TO_MAKE_SAFE`: the daemon then keeps acquiring.
        """
        return NOTHING_TO_MAKE_SAFE

    def cut_output(self) -> str | None:
        """The fast path of :meth:`enter_safe_state`, callable from *any* thread, at once, while
        the acquisition thread may be inside any other call of this driver (a slow
        ``configure``, a read waiting for a long exposure): send the device the command that
        turns its output off, without reading a reply, and return what was sent.

        Only a driver whose protocol allows it overrides this (a command with no reply, sent
        under the driver's own write lock); the default returns ``None`` (not possible here: the
        acquisition thread's :meth:`enter_safe_state` does it). It does not replace
        :meth:`enter_safe_state`, which still runs to confirm. May raise :class:`DriverError`.
        """
        return None


class ByteLink(Protocol):
    """The transport a :class:`CodecDriver` reads and writes: a
    :class:`~medacq.drivers.transports.SerialTransport`, a
    :class:`~medacq.drivers.transports.TcpTransport`, or an in-memory stand-in in tests."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (all of it); :class:`ConnectionLost` on failure."""

    def read_some(self, timeout: float, max_bytes: int = 1 << 20) -> bytes:
        """Whatever bytes are available, at most ``max_bytes`` of them, waiting up to ``timeout`` s
        for the first (``b""``: none). Bytes beyond ``max_bytes`` stay for the next call."""

    def reset_input(self) -> None:
        """Discard what has been received and not yet read."""

    def close(self) -> None:
        """Release the transport; must not raise."""


class HostCodec(Protocol):
    """A sans-I/O codec in host role (:mod:`medacq.protocols`): bytes in, events out, events to bytes."""

    def receive_data(self, data: Any) -> None:
        """Feed received bytes."""

    def next_event(self) -> Any:
        """The next event, or ``NEED_DATA``."""

    def send(self, event: Any) -> bytes:
        """Encode an outgoing event."""


class CodecDriver(Driver):
    """Base of the drivers that talk to one device over one :class:`ByteLink` through one
    sans-I/O :class:`HostCodec`: commands out, replies *and* streamed data in, on one link.

    It owns what every such driver used to write out for itself:

    * **bytes in** (:meth:`_pump`): one read from the link, waiting up to ``timeout`` s for
      the first byte, fed to the codec;
    * **the drain** (:meth:`_events`): the codec's events until ``NEED_DATA``. A
      :class:`~medacq.protocols._sansio.Garbage` event is handed to :meth:`_garbage` (which
      counts ``garbage_bytes``) and passed on only when :attr:`pass_garbage` is set;
    * **the command loop** (:meth:`_request`, :meth:`_await`): send, then drain and read in
      slices of at most :attr:`poll_s` s until an event ``accept`` takes or the deadline
      passes (:class:`ConnectionLost`: a device that does not answer is treated as gone).
      Every event before the reply that ``accept`` declines -- data frames that raced it --
      goes to :meth:`_hold`, by default kept in order in :attr:`_pending`; events decoded
      after the reply stay in the codec for the next call, so nothing is lost;
    * **events for read()** (:meth:`_receive`): the held events first, then the codec's; it
      waits for bytes only when there are neither.

    Subclasses create ``self._codec`` in ``__init__`` and ``self._link`` in ``open``, and
    override the hooks (:meth:`_pump`, :meth:`_events`, :meth:`_garbage`, :meth:`_hold`)
    where their device differs. All of it runs on the device's acquisition thread.
    """

    #: longest single read inside the command loop (s): the loop's deadline granularity
    poll_s: ClassVar[float] = 0.05
    #: most bytes one :meth:`_pump` takes from the link (a serial port gives at most 64 KiB). The
    #: codec's events are drained before each read, so its buffer then holds at most one partial
    #: message, and every host codec keeps :data:`~medacq.protocols._sansio.READ_ROOM` beyond
    #: its largest message: a fast source or a starved driver never overflows it, and what the
    #: driver has not read yet waits in the kernel instead of being discarded.
    read_max: ClassVar[int] = READ_ROOM
    #: hand Garbage events on to the caller (after counting them), e.g. to turn them into gaps
    pass_garbage: ClassVar[bool] = False

    _codec: HostCodec

    def __init__(self, name: str, address: str, settings: BaseModel) -> None:
        super().__init__(name, address, settings)
        self._link: ByteLink | None = None
        #: events that arrived while a command waited for its reply, oldest first, for read()
        self._pending: list[Any] = []
        #: CLOCK_MONOTONIC (ns) at which the latest bytes arrived (set by :meth:`_pump`), the
        #: arrival time of what :meth:`_receive` returns
        self._t_in_ns = 0
        #: bytes of the latest read (:meth:`_pump`), and the longest hold they allow (see _receive)
        self._in_bytes = 0
        self._hold_cap_s = 1.0

    # -- bytes in, events out ---------------------------------------------------------------
    def _connected(self) -> ByteLink:
        if self._link is None:
            raise ConnectionLost(f"{self.name}: not connected")
        return self._link

    def _pump(self, timeout: float) -> bool:
        """Read once from the link (waiting up to ``timeout`` s for the first byte) into the
        codec and note the arrival time (:attr:`_t_in_ns`). True if bytes came."""
        data = self._connected().read_some(timeout, self.read_max)
        if not data:
            return False
        self._in_bytes = len(data)
        self._t_in_ns = time.monotonic_ns()
        self._codec.receive_data(data)
        return True

    def _events(self) -> Iterator[Any]:
        """The codec's events until it needs more data (garbage counted, see :attr:`pass_garbage`)."""
        codec = self._codec
        while True:
            ev = codec.next_event()
            if ev is NEED_DATA:
                return
            if isinstance(ev, Garbage):
                self._garbage(ev)
                if not self.pass_garbage:
                    continue
            yield ev

    def _garbage(self, ev: Garbage) -> None:
        """Bytes the codec discarded: counted as ``garbage_bytes``."""
        self.count("garbage_bytes", ev.nbytes)

    def _hold_s(self) -> float:
        """Seconds :meth:`_receive` may let pass before it reads (when nothing is decoded yet)
        without delaying a frame. A driver that cuts each frame from many small packets returns
        the time until the packet *before* its next frame's last one is due: the bytes wait in
        the kernel meanwhile and come in one read, and the read that completes the frame still
        wakes on its last bytes. Default 0: read at once."""
        return 0.0

    #: most bytes a hold lets pile up in the kernel (a pty's line discipline holds 4 KiB, then its
    #: writer blocks): a hold after which more came is shortened in proportion for the next one
    hold_max_bytes: ClassVar[int] = 2048

    def _receive(self, timeout: float) -> list[Any]:
        """Events for :meth:`Driver.read`: those held while a command waited, then the codec's;
        reads (waiting up to ``timeout`` s, after :meth:`_hold_s`) only when there are none of either."""
        events = self._pending
        self._pending = []
        events.extend(self._events())
        if not events:
            hold = self._hold_s()
            if hold > 0.0:
                hold = min(hold, timeout, self._hold_cap_s)
                time.sleep(hold)
                timeout -= hold
                self._in_bytes = 0
            if self._pump(timeout):
                events.extend(self._events())
            if hold > 0.0:  # keep what piles up during a hold within hold_max_bytes
                if self._in_bytes > self.hold_max_bytes:
                    self._hold_cap_s = hold * self.hold_max_bytes / self._in_bytes
                elif self._in_bytes < self.hold_max_bytes // 2:
                    self._hold_cap_s = min(1.0, self._hold_cap_s * 1.25)
        return events

    def _arrival(self) -> tuple[int, int]:
        """``(t_mono_ns, t_host_ns)``: when the latest bytes arrived, on CLOCK_MONOTONIC and
        on CLOCK_REALTIME (for frames stamped with their arrival)."""
        t_mono = self._t_in_ns
        return t_mono, t_mono + (time.time_ns() - time.monotonic_ns())

    # -- the command loop -------------------------------------------------------------------
    def _hold(self, ev: Any) -> None:
        """An event that arrived while a command waited and is not its reply. Default: keep
        it for :meth:`Driver.read` (a data frame that raced the reply). Override to drop or
        count what the device cannot meaningfully send then."""
        self._pending.append(ev)

    def _write(self, data: bytes) -> None:
        """Send raw bytes to the device."""
        self._connected().write(data)

    def _send(self, event: Any) -> None:
        """Encode ``event`` with the codec and send it."""
        self._connected().write(self._codec.send(event))

    def _await(self, accept: Callable[[Any], bool], timeout: float) -> Any | None:
        """The first event ``accept`` takes within ``timeout`` s, or ``None`` when the deadline
        passes. Events it declines go to :meth:`_hold`, in order; events after the accepted one
        stay in the codec. ``accept`` may keep state (e.g. collect the events it sees)."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self._events():
                if accept(ev):
                    return ev
                self._hold(ev)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(min(self.poll_s, left))

    def _request(self, data: bytes, accept: Callable[[Any], bool], timeout: float, silence: str) -> Any:
        """Send ``data`` and return the reply (the first event ``accept`` takes) within ``timeout``
        s; on silence :class:`ConnectionLost` with ``"<name>: <silence>"``."""
        self._write(data)
        ev = self._await(accept, timeout)
        if ev is None:
            raise ConnectionLost(f"{self.name}: {silence}")
        return ev

    def close(self) -> None:
        """Release the link (drivers that must tell the device first do so, then call this)."""
        self._pending.clear()
        if self._link is not None:
            self._link.close()
            self._link = None
