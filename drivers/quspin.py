"""Driver for a rig of QuSpin-style optically pumped magnetometers (QZFM), one sensor per
serial port, merged into ONE multichannel MEG stream.

Address: the sensors' ports separated by commas, in channel order, e.g.
``/dev/ttyUSB0,/dev/ttyUSB1,/dev/ttyUSB2`` (pyserial URLs such as ``socket://h:p`` work
too). Channel ``i`` of the stream is the sensor on port ``i``.

Open, per sensor: ``8`` (stop a running stream), read the idle status block (LEDs:
laser on, cell-temperature lock, laser lock, field zeroed), ``>`` auto-start if the laser
is off, ``D`` field zeroing and ``9`` calibration when asked. ``7``/``8`` start/stop.

Frames: ``(channel, sample)`` float32 pT at 200 Hz, ``frame_samples`` samples each. The
sensors have no sample counter, so the merge aligns them by arrival order: a garbled line
on one sensor (a lost sample) is filled with NaN on that channel so the others stay
aligned, counted in ``meta.nan_filled`` and the ``lost_samples`` counter -- never bridged
silently. A sensor that stops sending for ``stall_s`` is NaN-filled and flagged
``stalled`` in ``meta.sensor_state``. Timestamps come from a fitted clock on sensor 0's
sample count. Per-sensor status (LEDs, last message) is in the descriptor's
``meta.sensors``; frame meta carries ``sensor_state`` (``ok``/``stalled``) per channel.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols import quspin as qs
from medacq.protocols._sansio import NEED_DATA, Garbage
from medacq.protocols.stream import StreamDescriptor

from ._base import ConnectionLost, DeviceError, Driver, Frame, Gap
from .bio_common import SampleFramer, default_frame_samples
from .transports import SerialTransport

__all__ = ["QuSpinDriver", "QuSpinSettings", "parse_ports"]

_LED_NAMES = {1: "laser_on", 2: "cell_temp_lock", 3: "laser_lock", 4: "field_zeroed", 5: "master"}
_RATE = 200.0


def parse_ports(address: str) -> list[str]:
    """Comma-separated ports → list (blank entries rejected)."""
    ports = [p.strip() for p in address.split(",")]
    if not ports or any(not p for p in ports):
        raise ValueError(f"QuSpin address must be comma-separated ports, got {address!r}")
    return ports


class QuSpinSettings(BaseModel):
    """QuSpin rig settings.

    Attributes:
        labels: channel names, one per port (default ``OPM1``…).
        auto_start: send ``>`` at open when the laser is off.
        field_zero: enable on-sensor field zeroing (``D``) at open.
        calibrate: run the calibration (``9``) at open (after zeroing).
        frame_samples: samples per frame (default 8 = 40 ms at 200 Hz).
        stall_s: a sensor silent this long while the others stream is NaN-filled.
        mains_hz: local mains frequency (descriptor hint for the notch filter).
        timeout_s: how long to wait for the idle status block / replies at open.
    """

    model_config = ConfigDict(extra="forbid")

    labels: list[str] | None = None
    auto_start: bool = True
    field_zero: bool = True
    calibrate: bool = True
    frame_samples: int | None = Field(default=None, ge=1, le=10_000)
    stall_s: float = Field(default=0.5, gt=0)
    mains_hz: float = Field(default=50.0, ge=0)
    timeout_s: float = Field(default=2.0, gt=0)


@dataclass
class _Sensor:
    address: str
    link: SerialTransport
    codec: qs.QuSpinHostCodec = field(default_factory=qs.QuSpinHostCodec)
    fifo: deque = field(default_factory=deque)
    leds: dict[str, bool] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    last_message: str = ""
    received: int = 0       # samples taken into the fifo (incl. NaN fills)
    lost: int = 0           # NaN-filled samples
    last_rx: float = 0.0
    state: str = "ok"

    def summary(self) -> dict[str, Any]:
        return {"address": self.address, **self.leds, "last_message": self.last_message,
                "lost_samples": self.lost, "state": self.state}


class QuSpinDriver(Driver):
    """Several QZFM sensors → one ``(channel, sample)`` pT stream."""

    kind = "quspin"
    modality = "meg"
    Settings = QuSpinSettings

    def __init__(self, name: str, address: str, settings: QuSpinSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: QuSpinSettings = settings
        self.ports = parse_ports(address)
        if settings.labels is not None and len(settings.labels) != len(self.ports):
            raise DeviceError(f"{name}: {len(settings.labels)} labels for {len(self.ports)} ports")
        self._sensors: list[_Sensor] = []
        self._framer: SampleFramer | None = None
        self._merged = 0
        self._nan_frame: np.ndarray | None = None

    @property
    def n_channels(self) -> int:
        return len(self.ports)

    @property
    def frame_samples(self) -> int:
        return self.settings.frame_samples or default_frame_samples(_RATE)

    # -- per-sensor I/O --------------------------------------------------------------
    def _drain(self, s: _Sensor, streaming: bool) -> int:
        """Decode what ``s`` has buffered; returns samples taken."""
        n = 0
        while True:
            ev = s.codec.next_event()
            if ev is NEED_DATA:
                return n
            t = type(ev)
            if t is qs.QuSpinSample:
                if streaming:
                    s.fifo.append(ev.field_pt)
                    n += 1
            elif t is qs.QuSpinLed:
                s.leds[_LED_NAMES.get(ev.led, f"led{ev.led}")] = ev.on
            elif t is qs.QuSpinStatus:
                s.status[f"{ev.code:02d}"] = ev.value
            elif t is qs.QuSpinMessage:
                s.last_message = ev.text
            elif isinstance(ev, Garbage):
                self.count("garbage_bytes", ev.nbytes)
                if streaming:  # a garbled sample line: keep alignment with a NaN
                    k = 1 if ev.reason == "unparseable line" else max(1, ev.nbytes // 10)
                    s.fifo.extend([math.nan] * k)
                    s.lost += k
                    n += k
                    self.count("lost_samples", k)

    def _pump(self, s: _Sensor, timeout: float, streaming: bool) -> int:
        data = s.link.read_some(timeout)
        if data:
            s.codec.receive_data(data)
            s.last_rx = time.monotonic()
        return self._drain(s, streaming)

    def _wait_message(self, s: _Sensor, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        s.last_message = ""
        while time.monotonic() < deadline:
            self._pump(s, 0.02, False)
            if s.last_message:
                return s.last_message
        raise ConnectionLost(f"{self.name}: sensor at {s.address} did not answer {prefix!r} within {timeout} s")

    def _send(self, s: _Sensor, char: str) -> None:
        s.link.write(s.codec.send(qs.QuSpinCommand(char)))

    def open(self) -> None:
        st = self.settings
        self._sensors = []
        try:
            for addr in self.ports:
                self._sensors.append(_Sensor(addr, SerialTransport(addr, 115200)))
            for s in self._sensors:
                self._send(s, qs.STREAM_OFF)
            time.sleep(0.05)
            for s in self._sensors:
                s.link.reset_input()
                s.codec = qs.QuSpinHostCodec()
                deadline = time.monotonic() + st.timeout_s
                while "master" not in s.leds and time.monotonic() < deadline:  # a whole status block
                    self._pump(s, 0.05, False)
                if "master" not in s.leds:
                    raise DeviceError(f"{self.name}: no status block from {s.address} (is it a QZFM sensor?)")
                if st.auto_start and not s.leds.get("laser_on"):
                    self._send(s, qs.AUTO_START)
                    self._wait_message(s, qs.AUTO_START, st.timeout_s)
                    s.leds["laser_on"] = True
                if st.field_zero:
                    self._send(s, qs.FIELD_ZERO_ON)
                    self._wait_message(s, qs.FIELD_ZERO_ON, st.timeout_s)
                    s.leds["field_zeroed"] = True
                if st.calibrate:
                    self._send(s, qs.CALIBRATE)
                    msg = self._wait_message(s, qs.CALIBRATE, st.timeout_s)
                    if "fail" in msg.lower():
                        raise DeviceError(f"{self.name}: calibration of {s.address} failed: {msg}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for s in self._sensors:
            try:
                s.link.write(b"8")
            except ConnectionLost:
                pass
            s.link.close()
        self._sensors = []

    def start(self) -> None:
        self._framer = SampleFramer(self.n_channels, _RATE, self.frame_samples, self._meta)
        self._merged = 0
        now = time.monotonic()
        for s in self._sensors:
            s.fifo.clear()
            s.received = s.lost = 0
            s.last_rx = now
            s.state = "ok"
            self._send(s, qs.STREAM_ON)

    def stop(self) -> None:
        for s in self._sensors:
            try:
                self._send(s, qs.STREAM_OFF)
            except ConnectionLost:
                pass

    def labels(self) -> list[str]:
        return list(self.settings.labels or [f"OPM{i + 1}" for i in range(self.n_channels)])

    def descriptor(self) -> StreamDescriptor:
        st = self.settings
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"quspin-qzfm x{self.n_channels}",
            dtype="<f4", shape=[self.n_channels, -1], axes=["channel", "sample"], units="pT",
            channel_names=self.labels(), sample_rate_hz=_RATE, frame_rate_hz=_RATE / self.frame_samples,
            meta={"sensors": [s.summary() for s in self._sensors], "ports": list(self.ports),
                  "frame_samples": self.frame_samples, "mains_hz": st.mains_hz,
                  "field_zero": st.field_zero, "calibrated": st.calibrate,
                  "t_device": "merged sample index of the first sample (sensor 0's count)"},
        )

    def _meta(self, first: int, n: int) -> dict[str, Any]:
        m: dict[str, Any] = {"sensor_state": [s.state for s in self._sensors]}
        if self._nan_frame is not None:
            m["nan_filled"] = [int(v) for v in self._nan_frame]
        return m

    # -- streaming -------------------------------------------------------------------
    def read(self, timeout: float) -> list[Frame | Gap]:
        assert self._framer is not None
        out: list[Frame | Gap] = []
        sensors = self._sensors
        deadline = time.monotonic() + timeout
        while True:
            got = 0
            for s in sensors:
                got += self._pump(s, 0.002, True)
            if got or time.monotonic() >= deadline:
                break
        t_read = time.monotonic_ns()
        now = time.monotonic()
        lens = [len(s.fifo) for s in sensors]
        longest = max(lens)
        for s, ln in zip(sensors, lens):
            if now - s.last_rx > self.settings.stall_s and longest > ln:
                if s.state != "stalled":
                    self.count("sensor_stalls")
                s.state = "stalled"
                k = longest - ln
                s.fifo.extend([math.nan] * k)
                s.lost += k
                self.count("lost_samples", k)
            elif now - s.last_rx <= self.settings.stall_s:
                s.state = "ok"
        m = min(len(s.fifo) for s in sensors)
        if m == 0:
            return out
        block = np.empty((len(sensors), m))
        for i, s in enumerate(sensors):
            f = s.fifo
            block[i] = [f.popleft() for _ in range(m)]
        nan = np.isnan(block).sum(axis=1)
        self._nan_frame = nan if nan.any() else None
        first = self._merged
        self._merged += m
        # sensor 0's newest sample (still possibly in its fifo) arrived now
        self._framer.observe(self._merged - 1 + len(sensors[0].fifo), t_read)
        self._framer.push(first, block, out)
        return out
