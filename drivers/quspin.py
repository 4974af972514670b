"""Driver for a rig of QuSpin-style optically pumped magnetometers (QZFM), one sensor per
serial port, merged into ONE multichannel MEG stream.

Address: the sensors' ports separated by commas, in channel order, e.g.
``/dev/ttyUSB0,/dev/ttyUSB1,/dev/ttyUSB2`` (pyserial URLs such as ``socket://h:p`` work
too). Channel ``i`` of the stream is the sensor on port ``i``.

Open, per sensor: ``8`` (stop a running stream), read the idle status block (LEDs:
laser on, cell-temperature lock, laser lock, field zeroed), ``>`` auto-start if the laser
is off, ``D`` field zeroing and ``9`` calibration when asked. ``7``/``8`` start/stop.

Frames: ``(channel, sample)`` float32 pT at 200 Hz, ``frame_samples`` samples each.

Merging without sample counters. Every sensor sample gets a *slot* on the rig's timeline
(``t_device`` of a frame = slot of its first sample): its own running count plus the samples
the driver has found missing. Missing samples are found three ways, none bridged silently:

* a garbled line (the codec's ``Garbage``): one NaN on that channel;
* **the clock**: the rig clock (:class:`~medacq.drivers._clockfit.DeviceClock`, lower
  envelope of every sensor's arrivals) says when each slot should have arrived. A sensor
  whose newest sample stays ``loss_tolerance_s`` or more behind that (relative to its own
  lateness learned in the first second) for ``loss_confirm_s`` -- every read in that window,
  so jitter and a briefly late device, which catch up, never count -- has lost that many
  samples: its slots move on and the hole is NaN on its channel. While a sensor is under
  such suspicion its samples are held back (the merge waits at most ``loss_confirm_s``), so the
  NaN lands exactly where the samples went missing;
* **drift** between sensor clocks: a sensor that falls ``1.5`` samples behind the most
  advanced sensor (minimum lateness over ``drift_window_s``) gets NaN slips;
* a sensor silent for ``stall_s`` while others stream is NaN-filled up to the others
  (state ``stalled``); samples it delivers late for slots already filled are discarded.

A slot that *no* sensor delivered is not a sample: it is cut out of the stream and announced
as a ``Gap`` with ``lost_samples`` (``t_device`` jumps), exactly like a counter jump on a
Cyton. A hole on only some channels is NaN in the frames (stream ``lost_samples`` would
make recorders zero-fill time that was delivered), announced by a ``Gap`` with
``lost_frames = 0``, ``lost_samples = 0`` and a reason naming the sensor and the count once
the hole has been published. Clock checks switch themselves off (counter
``clock_checks_off``) when data arrive faster than real time (an unpaced simulator).

Frame ``meta`` (one entry per channel): ``sensor_state`` (``ok``/``stalled`` at the frame's
last sample), ``nan_filled`` (NaN samples of that channel in this frame), ``lost_samples``
(that sensor's samples lost so far in this run, this frame included: NaN-filled plus stream
gaps), ``leds`` (the sensor's LEDs, kept live from ``|`` lines). Descriptor ``meta.sensors``:
``address``, LEDs and the last ``#`` message of the open sequence -- it changes only when an
LED does. Timestamps come from the rig clock.
"""

from __future__ import annotations

import logging
import math
import select
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols import quspin as qs
from medacq.protocols._sansio import NEED_DATA, Garbage
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, ConnectionLost, DeviceError, Driver, DriverStatus, Frame, Gap, SensorStatus
from .bio_common import SampleFramer, default_frame_samples
from .transports import SerialTransport

__all__ = ["QuSpinDriver", "QuSpinSettings", "parse_ports"]

log = logging.getLogger("medacq.drivers.quspin")

_AXIS_COMMANDS = {"x": "G", "y": "@", "z": "?"}  # read axis (QZFM command list)
_LED_NAMES = {1: "laser_on", 2: "cell_temp_lock", 3: "laser_lock", 4: "field_zeroed", 5: "master"}
_RATE = 200.0
_WARMUP_S = 1.0          # per sensor: learn its lateness on the rig clock before judging it
_DRIFT_SLIP = 1.5        # samples behind the most advanced sensor before a drift slip
_HIST_BUCKET_S = 0.25    # lateness history granularity (drift check)
_NAN = math.nan


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
        axis: the axis the digital output reads (``x``/``y``/``z``: ``G``/``@``/``?``), set at
            open before zeroing; ``None`` leaves the sensor's own choice. The serial output rate
            is the sensor's fixed 200 Hz, and the analog gain keys act on the analog output only,
            so neither is a setting of this (digital) driver.
        frame_samples: samples per frame (default 8 = 40 ms at 200 Hz).
        stall_s: a sensor that sends no samples this long while the others stream is NaN-filled.
        loss_tolerance_s: a sensor this far behind the rig clock (beyond its usual lateness)
            for ``loss_confirm_s`` has lost samples (default 25 ms = 5 samples).
        loss_confirm_s: how long a shortfall must persist before it counts (a late sensor,
            or a simulator on a loaded machine, catches up well within it); the merge waits
            this long at most while a sensor is suspect.
        drift_window_s: window of the drift check between sensor clocks.
        clock_check: detect losses and drift from the clock (off: garbled lines and stalls only).
        mains_hz: local mains frequency (descriptor hint for the notch filter).
        timeout_s: how long to wait for the idle status block / replies at open.
    """

    model_config = ConfigDict(extra="forbid")

    labels: list[str] | None = None
    auto_start: bool = True
    field_zero: bool = True
    calibrate: bool = True
    axis: Literal["x", "y", "z"] | None = None
    frame_samples: int | None = Field(default=None, ge=1, le=10_000)
    stall_s: float = Field(default=0.5, gt=0)
    loss_tolerance_s: float = Field(default=0.025, ge=0.005)
    loss_confirm_s: float = Field(default=1.0, gt=0, le=10.0)
    drift_window_s: float = Field(default=2.0, ge=0.5)
    clock_check: bool = True
    mains_hz: float = Field(default=50.0, ge=0)
    timeout_s: float = Field(default=2.0, gt=0)


@dataclass
class _Hole:
    """NaN slots ``[start, end)`` on one channel (``end`` None while a stall lasts)."""

    kind: str               # "stall", "clock" or "drift"
    start: int
    end: int | None
    published: int = 0      # of them, in published frames (not cut out as a stream gap)
    late: int = 0           # late samples discarded because their slots were filled


@dataclass
class _Sensor:
    address: str
    label: str
    link: SerialTransport
    codec: qs.QuSpinHostCodec = field(default_factory=qs.QuSpinHostCodec)
    leds: dict[str, bool] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    last_message: str = ""      # last '#' message of the open sequence
    stream_message: str = ""    # last '#' message while streaming
    # -- per acquisition run ------------------------------------------------------------
    fifo: deque = field(default_factory=deque)   # values of slots [merged, merged + len)
    new: list = field(default_factory=list)      # values decoded by the current read
    new_t: int = 0                               # monotonic ns of the read that got them
    count: int = 0          # samples received (a garbled line counts as one)
    shift: int = 0          # samples found missing by the clock: slot = count + shift
    last_sample: float = 0.0    # last sample line (a sensor sending only LED lines is stalled)
    t_first: float | None = None
    warm_min: float = math.inf
    bias: float | None = None                    # usual lateness on the rig clock, samples
    suspect_t: float | None = None
    held: list = field(default_factory=list)     # (first slot, values, t ns) while suspect
    recent: deque = field(default_factory=lambda: deque(maxlen=256))  # (newest slot, t ns) placed
    hist: deque = field(default_factory=deque)   # [bucket, min lateness] (drift check)
    hist_t0: float = 0.0
    fill_kind: str = "clock"                     # kind of the next slot jump
    state: str = "ok"                            # at the fifo's end
    marks: deque = field(default_factory=deque)  # (slot, state) changes not yet published
    frame_state: str = "ok"                      # at the last published sample
    holes: deque = field(default_factory=deque)  # _Hole, in slot order, until announced
    stall_hole: _Hole | None = None
    lost: int = 0           # samples of this sensor lost in published output (NaN + stream gaps)
    late_dropped: int = 0

    def reset_run(self, now: float) -> None:
        self.fifo.clear()
        self.new = []
        self.count = self.shift = 0
        self.last_sample = now
        self.t_first = None
        self.warm_min = math.inf
        self.bias = None
        self.suspect_t = None
        self.held = []
        self.recent.clear()
        self.hist.clear()
        self.fill_kind = "clock"
        self.state = self.frame_state = "ok"
        self.marks.clear()
        self.holes.clear()
        self.stall_hole = None
        self.lost = self.late_dropped = 0

    def describe(self) -> dict[str, Any]:
        """Descriptor entry: slow facts only (a descriptor change rebuilds reconstructors)."""
        return {"address": self.address, **self.leds, "last_message": self.last_message}


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
        self._merged = 0            # slot of the next column to merge
        self._checks = settings.clock_check
        self._next_drift_check = 0.0
        self._gap_reason = ""
        self._status_t = 0.0
        self._streaming = False
        #: per-sensor status snapshot for :meth:`status` (rebuilt by the acquisition thread,
        #: read by others: replaced, never mutated)
        self._sensor_status: list[SensorStatus] = []
        #: one poll() over every sensor's port (None: a port without a descriptor; see read())
        self._poller: select.poll | None = None
        self._by_fd: dict[int, _Sensor] = {}

    @property
    def n_channels(self) -> int:
        return len(self.ports)

    @property
    def frame_samples(self) -> int:
        return self.settings.frame_samples or default_frame_samples(_RATE)

    # -- per-sensor I/O --------------------------------------------------------------
    def _drain(self, s: _Sensor, streaming: bool) -> int:
        """Decode what ``s`` has buffered; returns samples taken (into ``s.new``)."""
        n = 0
        new = s.new
        while True:
            ev = s.codec.next_event()
            if ev is NEED_DATA:
                return n
            t = type(ev)
            if t is qs.QuSpinSample:
                if streaming:
                    new.append(ev.field_pt)
                    n += 1
            elif t is qs.QuSpinLed:
                s.leds[_LED_NAMES.get(ev.led, f"led{ev.led}")] = ev.on
            elif t is qs.QuSpinStatus:
                s.status[f"{ev.code:02d}"] = ev.value
            elif t is qs.QuSpinMessage:
                if streaming:
                    s.stream_message = ev.text
                else:
                    s.last_message = ev.text
            elif isinstance(ev, Garbage):
                self.count("garbage_bytes", ev.nbytes)
                if streaming:  # a garbled sample line: its slot stays, as NaN
                    k = 1 if ev.reason == "unparseable line" else max(1, ev.nbytes // 10)
                    new.extend([_NAN] * k)
                    n += k
                    self.count("garbled_samples", k)

    def _pump(self, s: _Sensor, timeout: float, streaming: bool) -> int:
        data = s.link.read_some(timeout, CodecDriver.read_max)
        if data:
            s.new_t = time.monotonic_ns()
            s.codec.receive_data(data)
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
            for addr, label in zip(self.ports, self.labels()):
                self._sensors.append(_Sensor(addr, label, SerialTransport(addr, 115200)))
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
                if st.axis is not None:
                    self._send(s, _AXIS_COMMANDS[st.axis])
                    msg = self._wait_message(s, _AXIS_COMMANDS[st.axis], st.timeout_s)
                    if not msg.lower().endswith(f"axis {st.axis}"):
                        raise DeviceError(f"{self.name}: {s.address} answered {msg!r} to the read-axis-{st.axis} command")
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
        fds = [s.link.fileno() for s in self._sensors]
        if all(fd is not None for fd in fds) and hasattr(select, "poll"):
            self._poller = select.poll()
            self._by_fd = {}
            for s, fd in zip(self._sensors, fds):
                assert fd is not None
                self._poller.register(fd, select.POLLIN)
                self._by_fd[fd] = s
        self._snapshot(time.monotonic(), force=True)

    def close(self) -> None:
        self._poller = None
        self._by_fd = {}
        for s in self._sensors:
            try:
                s.link.write(b"8")
            except ConnectionLost:
                pass
            s.link.close()
        self._sensors = []

    def start(self) -> None:
        self._framer = SampleFramer(self.n_channels, _RATE, self.frame_samples, None)
        self._framer.next_index = 0  # slots start at 0: a leading hole is a gap too
        self._merged = 0
        self._checks = self.settings.clock_check
        self._gap_reason = ""
        now = time.monotonic()
        self._next_drift_check = now + _WARMUP_S
        for s in self._sensors:
            s.reset_run(now)
            s.link.reset_input()  # samples left over from a previous run would shift its slots
            s.codec = qs.QuSpinHostCodec()
            self._send(s, qs.STREAM_ON)
        self._streaming = True

    def stop(self) -> None:
        self._streaming = False
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
            meta={"sensors": [s.describe() for s in self._sensors], "ports": list(self.ports),
                  "frame_samples": self.frame_samples, "mains_hz": st.mains_hz,
                  "field_zero": st.field_zero, "calibrated": st.calibrate, "axis": st.axis,
                  "t_device": "slot of the first sample on the rig timeline (jumps where no sensor delivered)",
                  "frame_meta": "per channel: sensor_state, nan_filled (this frame), lost_samples (so far), leds",
                  "live": ["sensors"]},
        )

    # -- streaming -------------------------------------------------------------------
    #: how long before the next frame's last slot is due a hold (see :meth:`read`) ends, s
    hold_margin_s = 0.004

    def _wait_samples(self, deadline: float) -> None:
        """Bytes in from the sensors (decoded into ``s.new``) until every live sensor has the
        samples the next frame needs, the deadline passes, or a sensor may be due for the stall
        fill (:meth:`_fill_stalled` runs after each read); one poll() waits on every port.

        First a hold: until the slot *before* the next frame's last one is due (less
        :attr:`hold_margin_s`) the lines wait in the kernel, so they come in one read per port,
        not one read each; each read's arrival time is that of the newest line it got
        (``s.new_t``, the clock checks' input), so the lateness of the newest sample is measured
        as before."""
        fr = self._framer
        assert fr is not None
        sensors = self._sensors
        poller = self._poller
        assert poller is not None
        now = time.monotonic()
        stall_s = self.settings.stall_s
        live = [s for s in sensors if now - s.last_sample <= stall_s]
        if live:
            need = fr.frame_samples - fr.pending - min(len(s.fifo) for s in live)
            if need <= 0:
                return
            # a live sensor that stays silent is NaN-filled once stall_s have passed: return by then
            end = min(deadline, min(s.last_sample for s in live) + stall_s)
        else:  # all silent: wait for any of them
            live, need, end = sensors, 1, deadline
        hold = (need - 1) / _RATE - self.hold_margin_s
        # and at most a frame's time after it: a sensor that falls silent does not hold up the others
        end = min(end, now + max(hold, 0.0) + fr.frame_samples / _RATE)
        if hold > 0:
            time.sleep(max(0.0, min(hold, end - now)))
        while True:
            left = end - time.monotonic()
            for fd, _ in poller.poll(max(0, math.ceil(left * 1000))):
                self._pump(self._by_fd[fd], 0.0, True)
            if left <= 0 or all(len(s.fifo) + len(s.new) >= need for s in live):
                return

    def read(self, timeout: float) -> list[Frame | Gap]:
        assert self._framer is not None
        out: list[Frame | Gap] = []
        sensors = self._sensors
        deadline = time.monotonic() + timeout
        if self._poller is not None:
            self._wait_samples(deadline)
        else:  # a port without a descriptor to wait on (socket://, loop://): poll each in turn
            while True:
                got = 0
                for s in sensors:
                    got += self._pump(s, 0.002, True)
                if got or time.monotonic() >= deadline:
                    break
        for s in sensors:
            if s.new:
                self._take(s)
        now = time.monotonic()
        if self._checks and now >= self._next_drift_check:
            self._next_drift_check = now + _HIST_BUCKET_S
            self._check_drift(now)
        self._fill_stalled(now)
        self._merge(out)
        self._snapshot(now)
        return out

    def _lateness(self, slot: int, t_ns: int) -> float:
        """How late (samples) slot ``slot`` arrived at ``t_ns`` on the rig clock."""
        assert self._framer is not None
        return (t_ns - int(self._framer.clock.time_of(slot))) * 1e-9 * _RATE

    def _take(self, s: _Sensor) -> None:
        """Place the samples of this read (``s.new``) on the rig timeline, or hold them while
        the clock says this sensor is short of samples and it is not yet certain."""
        fr = self._framer
        assert fr is not None
        vals, t_ns = s.new, s.new_t
        s.new = []
        first = s.count + s.shift
        s.count += len(vals)
        newest = first + len(vals) - 1
        t = t_ns * 1e-9
        s.last_sample = t
        if s.t_first is None:
            s.t_first = t
        if not self._checks or not fr.clock.updates:
            self._place(s, first, vals)
            fr.observe(newest, t_ns)
            return
        lam = self._lateness(newest, t_ns)
        st = self.settings
        if s.bias is None:  # warming up: learn this sensor's usual lateness
            s.warm_min = min(s.warm_min, lam)
            if t - s.t_first >= _WARMUP_S:
                s.bias = s.warm_min
                s.hist.clear()
                s.hist_t0 = t
                if s.count > 1.25 * _RATE * (t - s.t_first):
                    self._checks_off(f"{s.label} delivers {s.count / (t - s.t_first):.0f} samples/s, "
                                     f"faster than real time ({_RATE:.0f} Hz)")
            self._place(s, first, vals)
            fr.observe(newest, t_ns)
            s.recent.append((newest, t_ns))
            return
        lam -= s.bias
        tol = st.loss_tolerance_s * _RATE
        if lam < -2 * tol:  # ahead of any real-time clock: an unpaced simulator
            self._checks_off(f"{s.label} is {-lam:.0f} samples ahead of the rig clock")
            self._place(s, first, vals)
            fr.observe(newest, t_ns)
            return
        if s.suspect_t is None:
            if lam < tol:
                self._place(s, first, vals)
                fr.observe(newest, t_ns)
                self._hist_add(s, t, lam)
                s.recent.append((newest, t_ns))
                return
            s.suspect_t = t
        s.held.append((first, vals, t_ns))
        if lam < tol:  # caught up: it was late, nothing lost
            self._release(s, 0, len(s.held))
            fr.observe(newest, t_ns)
            self._hist_add(s, t, lam)
            s.recent.append((newest, t_ns))
        elif t - s.suspect_t >= st.loss_confirm_s and len(s.held) >= 3:
            self._confirm_loss(s, t)
            fr.observe(s.count + s.shift - 1, t_ns)

    def _confirm_loss(self, s: _Sensor, t: float) -> None:
        """Every read for ``loss_confirm_s`` came ``tol`` late or more: samples were lost.
        How many: the lateness that persists (lowest in the later half of the window) less
        the lowest of as long a window just before, both on today's rig clock line. Where:
        before the first held read from which the lateness stays at that level (reads before
        it were merely late)."""
        held = s.held
        half_s = self.settings.loss_confirm_s / 2
        t0 = s.suspect_t
        assert t0 is not None
        late = [self._lateness(first + len(vals) - 1, tn) for first, vals, tn in held]
        level = min(lam for lam, (_, _, tn) in zip(late, held) if tn * 1e-9 >= t0 + half_s)
        pre = [self._lateness(j, tn) for j, tn in s.recent if tn * 1e-9 >= t0 - half_s]
        if len(pre) < 3:
            pre = [self._lateness(j, tn) for j, tn in list(s.recent)[-20:]]
        floor = min(pre) if pre else (s.bias or 0.0)
        k = int(round(level - floor))
        if k < 1:  # the lateness rose on this link, nothing is missing
            self._release(s, 0, len(held))
            return
        p, low = len(held), math.inf
        for i in range(len(held) - 1, -1, -1):
            low = min(low, late[i])
            if low < level - 1:
                break
            p = i
        self.count("clock_losses")
        log.info("%s: %s (%s) is %d samples short by the rig clock", self.name, s.label, s.address, k)
        self._release(s, 0, p)
        s.shift += k
        s.fill_kind = "clock"
        self._release(s, k, len(held))
        s.hist.clear()
        s.recent.clear()
        s.hist_t0 = t

    def _release(self, s: _Sensor, k: int, upto: int) -> None:
        """Place held reads ``[:upto]`` (not yet placed) shifted by ``k`` slots."""
        held = s.held
        for first, vals, _ in held[:upto]:
            self._place(s, first + k, vals)
        del held[:upto]
        if not held:
            s.suspect_t = None

    def _checks_off(self, why: str) -> None:
        if self._checks:
            self._checks = False
            self.count("clock_checks_off")
            log.warning("%s: clock checks off for this run: %s", self.name, why)
            for s in self._sensors:
                self._release(s, 0, len(s.held))

    def _hist_add(self, s: _Sensor, t: float, lam: float) -> None:
        b = int(t / _HIST_BUCKET_S)
        h = s.hist
        if h and h[-1][0] == b:
            if lam < h[-1][1]:
                h[-1][1] = lam
        else:
            h.append([b, lam])
            lo = int((t - self.settings.drift_window_s) / _HIST_BUCKET_S) - 1
            while h and h[0][0] < lo:
                h.popleft()

    def _check_drift(self, now: float) -> None:
        """Slip a sensor whose clock has fallen behind the most advanced one's."""
        w = self.settings.drift_window_s
        lo = int((now - w) / _HIST_BUCKET_S)
        mins: dict[int, float] = {}
        for i, s in enumerate(self._sensors):
            if s.bias is None or s.suspect_t is not None or now - s.hist_t0 < w or s.state != "ok":
                continue
            vals = [v for b, v in s.hist if b >= lo]
            if vals:
                mins[i] = min(vals)
        if len(mins) < 2:
            return
        ref = min(mins.values())
        for i, m in mins.items():
            d = m - ref
            if d >= _DRIFT_SLIP:
                s = self._sensors[i]
                k = int(d)
                self.count("clock_slips", k)
                log.info("%s: %s drifted %.1f samples behind the rig; slipping %d", self.name, s.label, d, k)
                s.shift += k
                s.fill_kind = "drift"
                s.hist.clear()
                s.recent.clear()
                s.hist_t0 = now

    def _place(self, s: _Sensor, j: int, vals: list[float]) -> None:
        """Append ``vals`` whose first sample has slot ``j``: NaN-fill a hole before them,
        discard those whose slots were already filled (they came too late)."""
        f = self._merged + len(s.fifo)
        if j > f:
            s.fifo.extend([_NAN] * (j - f))
            if s.stall_hole is None:  # (else the stall's hole goes on: one episode)
                s.holes.append(_Hole(s.fill_kind, f, j))
            f = j
        elif j < f:
            d = min(f - j, len(vals))
            vals = vals[d:]
            s.late_dropped += d
            self.count("late_samples_dropped", d)
            hole = s.stall_hole or (s.holes[-1] if s.holes else None)
            if hole is not None:
                hole.late += d
        if vals:
            if s.state != "ok":
                s.state = "ok"
                s.marks.append((f, "ok"))
            if s.stall_hole is not None:
                s.stall_hole.end = f
                s.stall_hole = None
            s.fifo.extend(vals)

    def _fill_stalled(self, now: float) -> None:
        stall_s = self.settings.stall_s
        sensors = self._sensors
        silent = [s for s in sensors if now - s.last_sample > stall_s]
        if not silent or len(silent) == len(sensors):
            return
        # up to where every live sensor is (the merge cannot pass that): filling further could
        # claim slots the silent sensor's next samples will still arrive for
        target = min(self._merged + len(s.fifo) for s in sensors if now - s.last_sample <= stall_s)
        for s in silent:
            f = self._merged + len(s.fifo)
            if f >= target:
                continue
            if s.state != "stalled":
                s.state = "stalled"
                s.marks.append((f, "stalled"))
                self.count("sensor_stalls")
                log.warning("%s: %s (%s) stalled: no samples for %.2f s", self.name, s.label, s.address,
                            now - s.last_sample)
            if s.stall_hole is None:
                s.stall_hole = _Hole("stall", f, None)
                s.holes.append(s.stall_hole)
            s.fifo.extend([_NAN] * (target - f))

    def _merge(self, out: list[Frame | Gap]) -> None:
        sensors = self._sensors
        m = min(len(s.fifo) for s in sensors)
        if m == 0:
            return
        fr = self._framer
        assert fr is not None
        block = np.empty((len(sensors), m))
        for i, s in enumerate(sensors):
            f = s.fifo
            block[i] = [f.popleft() for _ in range(m)]
        a0 = self._merged
        self._merged += m
        nan = np.isnan(block)
        dead = nan.all(axis=0) if nan.any() else None
        k0 = len(out)
        if dead is None or not dead.any():
            fr.push(a0, block, out, reason=self._gap_reason)
        else:  # slots no sensor delivered: cut out, announced as a stream gap
            edges = np.flatnonzero(np.diff(np.r_[0, dead.astype(np.int8), 0]))
            start = 0
            for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()):  # dead runs [a, b)
                if a > start:
                    fr.push(a0 + start, block[:, start:a], out, reason=self._gap_reason)
                self._gap_reason = (f"samples {a0 + a}..{a0 + b - 1} reached no sensor (lost on all "
                                    f"{len(sensors)} sensors; found by the rig clock)")
                start = b
            if start < m:
                fr.push(a0 + start, block[:, start:], out, reason=self._gap_reason)
        self._annotate(out, k0)
        if any(s.holes for s in sensors):
            self._announce_holes(out, a0, m, np.zeros(m, bool) if dead is None else dead)

    def _annotate(self, out: list[Frame | Gap], k0: int) -> None:
        """Per-channel status into the meta of the frames just cut (in order)."""
        sensors = self._sensors
        for item in out[k0:]:
            if type(item) is Gap:
                lost = item.lost_samples or 0
                for s in sensors:
                    s.lost += lost
                self.count("lost_samples", lost * len(sensors))
                continue
            assert isinstance(item, Frame)
            nan = np.isnan(item.data).sum(axis=1).tolist()
            last = int(item.t_device or 0) + item.data.shape[1] - 1
            for s, k in zip(sensors, nan):
                s.lost += k
                marks = s.marks
                while marks and marks[0][0] <= last:
                    s.frame_state = marks.popleft()[1]
            self.count("lost_samples", sum(nan))
            item.meta = {"sensor_state": [s.frame_state for s in sensors], "nan_filled": nan,
                         "lost_samples": [s.lost for s in sensors], "leds": [dict(s.leds) for s in sensors]}

    def _announce_holes(self, out: list[Frame | Gap], a0: int, m: int, dead: np.ndarray) -> None:
        """Count each NaN hole's published slots; announce a finished hole that reached the
        stream (a hole wholly inside a stream gap was announced by that gap)."""
        end = a0 + m
        live = ~dead
        for s in self._sensors:
            holes = s.holes
            while holes:
                h = holes[0]
                if h.start >= end:
                    break
                lo, hi = max(h.start, a0), end if h.end is None else min(h.end, end)
                if hi > lo:
                    h.published += int(live[lo - a0:hi - a0].sum())
                if h.end is None or h.end > end:
                    break
                holes.popleft()
                if h.published:
                    out.append(Gap(0, 0, self._hole_reason(s, h)))

    def _hole_reason(self, s: _Sensor, h: _Hole) -> str:
        what = {"stall": "stalled", "clock": "lost samples (found by the rig clock)",
                "drift": "drifted behind the other sensors' clocks"}[h.kind]
        late = f", {h.late} late samples discarded" if h.late else ""
        return (f"{s.label} ({s.address}) {what}: {h.published} samples NaN-filled on its channel "
                f"(samples {h.start}..{h.end - 1 if h.end is not None else '?'}){late}; "
                f"the other channels have data, no stream samples lost")

    def status(self) -> DriverStatus:
        """Counters, and ``sensors``: one :class:`~medacq.drivers._base.SensorStatus` per port
        (a snapshot at most 0.2 s old while streaming)."""
        return {"counters": dict(self.counters), "sensors": self._sensor_status}

    def _snapshot(self, now: float, force: bool = False) -> None:
        if not force and now - self._status_t < 0.2:
            return
        self._status_t = now
        stall_s = self.settings.stall_s
        streaming = self._streaming
        self._sensor_status = [
            SensorStatus(label=s.label, address=s.address,
                         state=("stalled" if s.state == "stalled" or (streaming and now - s.last_sample > stall_s)
                                else "ok"),
                         lost_samples=s.lost, late_samples_dropped=s.late_dropped, leds=dict(s.leds),
                         last_message=s.stream_message or s.last_message)
            for s in self._sensors]
