"""Acquisition workers: one thread per device, a bounded queue to the publisher.

A worker owns its driver. It connects (with exponential backoff and jitter when that
fails), starts a series, and moves every :class:`Frame`/:class:`Gap` the driver yields
into the device's :class:`FrameQueue`. A blocking read on one device never stalls
another: each has its own thread and the publisher never waits on a device.

Sequence numbers are assigned here, before the queue, so a frame the queue had to drop
leaves a hole the publisher announces as a ``gap`` message.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from medacq.drivers._base import ConnectionLost, DeviceError, Driver, Frame, Gap
from medacq.protocols.stream import StreamDescriptor, new_series_id
from medacq.daemon.acquisition.queue import DescriptorUpdate, FrameItem, FrameQueue, GapItem, SeriesEnd, SeriesStart

__all__ = ["StreamStats", "AcquisitionWorker"]

log = logging.getLogger("medacq.daemon.acquisition.worker")

@dataclass
class StreamStats:
    """Counters of one stream, shown by ``status``. Written by one thread each."""

    state: str = "stopped"
    series: str | None = None
    frames_acquired: int = 0
    frames_published: int = 0
    bytes_published: int = 0
    gap_frames: int = 0
    lost_samples: int = 0
    reconnects: int = 0          # connections re-established after a loss
    connect_failures: int = 0    # failed attempts (each backoff step)
    last_error: str | None = None
    last_error_at: float | None = None
    fps: float = 0.0
    mbps: float = 0.0
    latency_us_p50: float | None = None
    latency_us_p99: float | None = None
    latencies_us: deque = field(default_factory=lambda: deque(maxlen=512))

    def error(self, msg: str) -> None:
        self.last_error = msg
        self.last_error_at = time.time()


class AcquisitionWorker(threading.Thread):
    """The thread that runs one device.

    Args:
        name: device/stream name.
        driver_cls: the driver class.
        address: transport address.
        settings: validated settings model.
        queue: where frames go.
        stats: this stream's counters.
        reconnect_max_s: backoff cap.
    """

    #: how often (s) a running driver's ``descriptor()`` is re-read; a changed one (e.g. a
    #: device status in its meta) is republished at once, not at the next descriptor timer
    descriptor_check_s: float = 1.0

    def __init__(
        self,
        name: str,
        driver_cls: type[Driver],
        address: str,
        settings: BaseModel,
        queue: FrameQueue,
        stats: StreamStats,
        reconnect_max_s: float = 5.0,
    ) -> None:
        super().__init__(name=f"acq-{name}", daemon=True)
        self.device = name
        self.driver_cls = driver_cls
        self.address = address
        self.settings = settings
        self.queue = queue
        self.stats = stats
        self.reconnect_max_s = reconnect_max_s
        self.driver: Driver | None = None
        self.descriptor: StreamDescriptor | None = None
        self.want_running = threading.Event()
        self._shutdown = threading.Event()
        self._poke = threading.Event()
        self._reconfig: tuple[BaseModel, threading.Event, list[str | None]] | None = None
        self._series_open = False
        self._seq = 0
        self.last_progress = time.monotonic()
        #: the first connection attempt has ended (acquiring, or failed and backing off)
        self.attempted = False
        self._lost = False  # a connection was lost (or never made) and not yet re-established
        self._rng = random.Random(hash(name))

    # -- requests from other threads -------------------------------------------------
    def request_start(self) -> None:
        self.want_running.set()
        self._poke.set()

    def request_stop(self) -> None:
        self.want_running.clear()
        self._poke.set()

    def shutdown(self) -> None:
        self._shutdown.set()
        self.want_running.clear()
        self._poke.set()

    def reconfigure(self, settings: BaseModel, timeout: float = 10.0) -> str | None:
        """Apply new settings (stop, reopen, restart if it was running).

        Returns ``None`` on success or the device's error message, in which case the old
        settings are restored.
        """
        done = threading.Event()
        result: list[str | None] = [None]
        self._reconfig = (settings, done, result)
        self._poke.set()
        if not done.wait(timeout):
            return "device did not apply the settings in time (still reconnecting?)"
        return result[0]

    def driver_counters(self) -> dict[str, Any]:
        """The driver's counters, plus its ``status_extra`` snapshot when it keeps one (a
        dict it replaces, never mutates: e.g. per-sensor state of a multi-sensor rig)."""
        d = self.driver
        if d is None:
            return {}
        out: dict[str, Any] = dict(d.counters)
        extra = getattr(d, "status_extra", None)
        if isinstance(extra, dict):
            out.update(extra)
        return out

    # -- the thread ------------------------------------------------------------------
    def run(self) -> None:
        backoff = 0.1
        while not self._shutdown.is_set():
            self.last_progress = time.monotonic()
            if self._reconfig is not None:
                self._apply_reconfig()
                continue
            if not self.want_running.is_set():
                if self.stats.state not in ("stopped",) and self.driver is None:
                    self.stats.state = "stopped"
                elif self.driver is not None and self.stats.state != "idle":
                    self.stats.state = "idle"
                self._poke.wait(0.2)
                self._poke.clear()
                continue
            try:
                self._ensure_open()
                self._acquire()
                backoff = 0.1
            except (ConnectionLost, DeviceError, OSError, ValueError) as exc:
                backoff = self._failed(exc, backoff)
            except Exception as exc:  # noqa: BLE001 - a driver bug must not kill the daemon
                log.exception("%s: unexpected driver error", self.device)
                backoff = self._failed(exc, backoff)
        self._end_series("daemon shutdown")
        self._close_driver()
        self.stats.state = "stopped"

    def _ensure_open(self) -> None:
        if self.driver is None:
            self.stats.state = "connecting"
            drv = self.driver_cls(self.device, self.address, self.settings)
            try:
                drv.open()
            except BaseException:
                drv.close()
                raise
            self.driver = drv
            self.descriptor = drv.descriptor()

    def _acquire(self) -> None:
        drv = self.driver
        assert drv is not None and self.descriptor is not None
        series = new_series_id()
        self._seq = 0
        self.queue.put_control(SeriesStart(series, self.descriptor))
        self._series_open = True
        self.stats.series = series
        drv.start()
        self.stats.state = "acquiring"
        self.attempted = True
        if self._lost:
            self.stats.reconnects += 1
            self._lost = False
        log.info("%s: acquiring (series %s)", self.device, series)
        q, stats = self.queue, self.stats
        next_descriptor_check = time.monotonic() + self.descriptor_check_s
        while self.want_running.is_set() and not self._shutdown.is_set() and self._reconfig is None:
            for item in drv.read(0.2):
                if type(item) is Frame:
                    data = item.data
                    if not data.flags.c_contiguous:
                        item.data = np.ascontiguousarray(data)
                    seq = self._seq
                    self._seq = seq + 1
                    stats.frames_acquired += 1
                    q.put_frame(FrameItem(seq, item))
                elif isinstance(item, Gap):
                    q.put_control(GapItem(self._seq, item.lost_frames, item.lost_samples, item.reason))
                    self._seq += item.lost_frames
            self.last_progress = now = time.monotonic()
            if now >= next_descriptor_check:
                next_descriptor_check = now + self.descriptor_check_s
                self._refresh_descriptor(drv)
        try:
            drv.stop()
        finally:
            self._end_series("stopped" if not self._shutdown.is_set() else "daemon shutdown")

    def _refresh_descriptor(self, drv: Driver) -> None:
        """Re-read the running driver's descriptor; a changed one is republished at once."""
        try:
            desc = drv.descriptor()
        except Exception:  # noqa: BLE001 - keep streaming with the descriptor we have
            log.exception("%s: descriptor() failed while acquiring", self.device)
            return
        if desc != self.descriptor:
            self.descriptor = desc
            self.queue.put_control(DescriptorUpdate(desc))

    def _end_series(self, reason: str) -> None:
        if self._series_open:
            self.queue.put_control(SeriesEnd(reason))
            self._series_open = False

    def _close_driver(self) -> None:
        if self.driver is not None:
            self.driver.close()
            self.driver = None

    def _failed(self, exc: BaseException, backoff: float) -> float:
        msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ConnectionLost, DeviceError)) else str(exc)
        self.stats.error(msg)
        self._end_series(f"connection lost: {msg}")
        self._close_driver()
        self.stats.connect_failures += 1
        self._lost = True
        self.stats.state = "reconnecting"
        log.warning("%s: %s; reconnecting in %.2f s", self.device, msg, backoff)
        # interruptible sleep with jitter; the thread is alive and well meanwhile (watchdog)
        end = time.monotonic() + backoff * (0.5 + self._rng.random() / 2)
        while not self._poke.is_set() and (left := end - time.monotonic()) > 0:
            self._poke.wait(min(left, 0.5))
            self.last_progress = time.monotonic()
        self._poke.clear()
        self.attempted = True
        return min(backoff * 2, self.reconnect_max_s)

    def _apply_reconfig(self) -> None:
        assert self._reconfig is not None
        settings, done, result = self._reconfig
        self._reconfig = None
        old = self.settings
        was_open = self.driver is not None
        self._end_series("reconfigured")
        self._close_driver()
        self.settings = settings
        if was_open or self.want_running.is_set():
            try:
                self._ensure_open()
            except (ConnectionLost, DeviceError, OSError, ValueError, ValidationError) as exc:
                result[0] = str(exc)
                self.stats.error(f"configure refused: {exc}")
                self.settings = old
                self._close_driver()
        done.set()
