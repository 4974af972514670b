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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from medacq.protocols.stream import StreamDescriptor

__all__ = ["Frame", "Gap", "Driver", "DriverError", "DeviceError", "ConnectionLost", "DeviceNotFound"]


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
