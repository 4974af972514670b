"""Driver for Sciospec-style EIT16/32 devices (framed binary serial protocol).

Reached over pyserial: a serial device, a pty path or ``socket://host:port``.

Setup (:meth:`SciospecDriver.open`): stop any running measurement, reset the setup, then
burst count, frame rate, one excitation frequency, amplitude and the adjacent injection
pattern (pairs ``(i, i+1)``, 1-based on the wire), every command acknowledged
``18 01 83 18`` (a NACK is a :class:`DeviceError`, silence is :class:`ConnectionLost`).

Frame assembly: the device sends one 140-byte data frame per injection and 16-channel
group; ONE stream frame is all ``n_el × n_el/16`` of them for one EIT frame, turned into
the adjacent measurement vector (pyEIT convention: ``U[n] - U[m]`` for the pairs that
do not touch a current electrode). An EIT frame with a missing, duplicated or corrupted
sub-frame is never published: it becomes a :class:`Gap` (as do whole frames skipped, found
from the device timestamps), so subscribers see exactly which frames are missing.

Safe state (:meth:`SciospecDriver.enter_safe_state`): stop measurement (``B4 01 00 B4``),
which ends current injection; its acknowledge is the confirmation (the protocol has no status
query for it). Only ``start()`` starts a measurement again.

Stream frame: ``float32 (measurement,)``, V. ``quantity = "real"`` (default) publishes the
in-phase (real) part of each differential voltage, ``"magnitude"`` its modulus. 16
electrodes → 208 values, 32 → 928. The descriptor's ``geometry`` carries the pattern
(``ex_mat``, ``meas_mat``, 0-based) so a subscriber needs nothing else to reconstruct.

Frame start (``frame_triggers = true``): each published EIT frame's start -- the device
timestamp (ms) of its first sub-frame, the device's own frame-start event -- is published as a
trigger event on ``markers/<device>`` (line ``frame_start``). The device's ms clock is fitted to
the arrival times of the first sub-frames (:class:`~medacq.drivers._clockfit.DeviceClock`, lower
envelope; u32 wrap unwrapped), so the event's host time carries the fit's error, the 1 ms
timestamp resolution and the first sub-frame's own measuring time (1 / (fps × sub-frames)),
not a half frame period. The Sciospec protocol here has no trigger input, so the rig's trigger
bus is not cabled to it.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols import sciospec as sc
from medacq.protocols._sansio import Garbage
from medacq.protocols.eit_pattern import Pattern, adjacent_pattern
from medacq.protocols.stream import StreamDescriptor

from medacq.protocols.markers import FRAME_TRIGGERS_KEY

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from ._clockfit import DeviceClock
from .transports import SerialTransport
from .triggers import clock_trigger

__all__ = ["SciospecDriver", "SciospecSettings", "FrameAssembler"]


class SciospecSettings(BaseModel):
    """Settings of a Sciospec-style EIT device.

    Attributes:
        n_el: electrodes, 16 or 32 (adjacent drive, adjacent measurement).
        fps: EIT frames per second, 1..50.
        frequency_hz: excitation frequency (Hz).
        amplitude_a: excitation current amplitude (A), up to 10 mA. ``amplitude_a`` and
            ``frequency_hz`` are *limited*: ``configure`` keeps them inside the config file's
            ``[device.limits]``.
        burst_count: frames per start, 0 = until stopped.
        quantity: ``real`` (in-phase part of each differential voltage) or ``magnitude``.
        baudrate: serial line rate (ignored on ptys and sockets).
        frame_triggers: publish each EIT frame's start on ``markers/<device>`` (line
            ``frame_start``; module doc).
    """

    model_config = ConfigDict(extra="forbid")

    n_el: Literal[16, 32] = 16
    fps: float = Field(default=20.0, ge=1.0, le=50.0)
    # current injected into the patient: a control-plane configure keeps both inside the
    # config file's [device.limits] (the permitted current depends on the frequency)
    frequency_hz: float = Field(default=50e3, gt=0, le=10e6, json_schema_extra={"limited": True})
    amplitude_a: float = Field(default=1e-3, gt=0, le=0.01, json_schema_extra={"limited": True})
    burst_count: int = Field(default=0, ge=0, le=65535)
    quantity: Literal["real", "magnitude"] = "real"
    baudrate: int = 921600
    frame_triggers: bool = False


class FrameAssembler:
    """Sub-frames → complete EIT frames and gaps (pure logic, no I/O).

    ``push(df)`` returns a list of ``("frame", idx, U, ts_ms)`` and ``("gap", n, reason)``
    items. ``U`` is ``(n_exc, n_el)`` complex64 electrode potentials (V); ``idx`` the device
    frame index (frames counted from the first one seen, from the timestamps).
    """

    def __init__(self, n_el: int, pairs: list[tuple[int, int]], fps: float) -> None:
        self.n_el = n_el
        self.groups = n_el // sc.CHANNELS_PER_GROUP
        self.pair_index = {p: i for i, p in enumerate(pairs)}
        self.n_sub = len(pairs) * self.groups
        self.period_ms = 1000.0 / fps
        self._cur: np.ndarray | None = None
        self._cur_idx = 0
        self._cur_t0 = 0.0
        self._cur_ts = 0
        self._expected = 0
        self._broken = ""
        self._last_t0: float | None = None
        self._last_idx = -1
        self._next_idx: int | None = None

    def _position(self, df: sc.DataFrame) -> int | None:
        e = self.pair_index.get((df.inj, df.gnd))
        if e is None or not 1 <= df.channel_group <= self.groups:
            return None
        return e * self.groups + (df.channel_group - 1)

    def _index_of(self, t0: float) -> int:
        if self._last_t0 is None:
            return 0
        d = (t0 - self._last_t0) % float(1 << 32)  # u32 ms timestamps wrap
        if d > float(1 << 31):
            d -= float(1 << 32)
        return self._last_idx + int(round(d / self.period_ms))

    def _abandon(self, out: list) -> None:
        if self._cur is None:
            return
        got = self._expected
        reason = self._broken or f"incomplete EIT frame: {got}/{self.n_sub} sub-frames"
        if self._next_idx is not None:  # before the first frame there is nothing to announce
            out.append(("gap", max(self._cur_idx - self._next_idx + 1, 1), reason))
        self._next_idx = self._cur_idx + 1
        self._cur = None

    def lost(self, reason: str) -> None:
        """Bytes were lost on the link: the frame being assembled cannot be trusted."""
        if self._cur is not None and not self._broken:
            self._broken = f"incomplete EIT frame: {reason}"

    def push(self, df: sc.DataFrame) -> list:
        out: list = []
        p = self._position(df)
        if p is None:
            self.lost(f"unexpected sub-frame (inj {df.inj}, gnd {df.gnd}, group {df.channel_group})")
            return out
        t0 = df.timestamp_ms - p * self.period_ms / self.n_sub
        idx = self._index_of(t0)
        if self._cur is not None and (idx != self._cur_idx or p < self._expected):
            self._abandon(out)
        if self._cur is None:
            self._cur = np.zeros((len(self.pair_index), self.n_el), np.complex64)
            self._cur_idx, self._cur_t0, self._expected, self._broken = idx, t0, 0, ""
            if idx <= self._last_idx and self._last_t0 is not None:
                idx = self._cur_idx = self._last_idx + 1  # timestamp went backwards: count on
        if p != self._expected and not self._broken:
            self._broken = f"incomplete EIT frame: sub-frame {p} arrived, {self._expected} expected"
        e, g = divmod(p, self.groups)
        self._cur[e, 16 * g : 16 * (g + 1)] = df.values
        if p == 0:
            self._cur_ts = df.timestamp_ms
        self._expected = p + 1
        self._last_t0, self._last_idx = t0, self._cur_idx
        if self._expected == self.n_sub:
            if self._broken:
                self._abandon(out)
            else:
                if self._next_idx is not None and self._cur_idx > self._next_idx:
                    n = self._cur_idx - self._next_idx
                    out.append(("gap", n, f"{n} EIT frame(s) missing (device timestamps)"))
                out.append(("frame", self._cur_idx, self._cur, self._cur_ts))
                self._next_idx = self._cur_idx + 1
                self._cur = None
        return out


#: acknowledge codes that end a command (DATA_HOLDUP is a streaming notice, not an answer)
_FINAL_ACKS = (sc.AckCode.ACK, sc.AckCode.NOT_EXECUTED, sc.AckCode.NOT_RECOGNISED)


class SciospecDriver(CodecDriver):
    """Sciospec-style EIT16/32 over a serial link; one stream frame per complete EIT frame."""

    kind = "sciospec"
    modality = "eit"
    Settings = SciospecSettings

    def __init__(self, name: str, address: str, settings: SciospecSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: SciospecSettings = settings
        self._codec = sc.SciospecHostCodec()
        self._idn = ""
        self.pattern: Pattern = adjacent_pattern(settings.n_el)
        self._pairs = [(int(a) + 1, int(b) + 1) for a, b in self.pattern.ex_mat]
        self._asm = FrameAssembler(settings.n_el, self._pairs, settings.fps)
        self._running = False
        self._clock = DeviceClock(settings.fps)
        self._k = np.arange(self.pattern.n_exc)[:, None]
        self._ts_clock = DeviceClock(1000.0)  # device ms of first sub-frames -> host
        self._ts_last: int | None = None      # last raw u32 ms seen, and its unwrapped value
        self._ts_unwrapped = 0

    # -- command/ack ---------------------------------------------------------------------
    def _garbage(self, ev: Garbage) -> None:
        super()._garbage(ev)
        self._asm.lost(f"{ev.nbytes} garbage byte(s): {ev.reason}")

    def _hold(self, ev: Any) -> None:
        """Data frames that race an ack are kept while measuring; other replies are dropped."""
        if self._running and isinstance(ev, sc.DataFrame):
            self._pending.append(ev)

    def _command(self, cmd: sc.SciospecCommand, timeout: float = 2.0) -> list[sc.SciospecReply]:
        """Send ``cmd``; return the replies up to and including its ack. NACK → DeviceError."""
        got: list[sc.SciospecReply] = []

        def ends(ev: Any) -> bool:
            if isinstance(ev, sc.DataFrame):
                return False
            got.append(ev)
            return isinstance(ev, sc.Ack) and ev.code in _FINAL_ACKS

        name = type(cmd).__name__
        ack = self._request(self._codec.send(cmd), ends, timeout, f"no acknowledge to {name} within {timeout} s")
        if not ack.ok:
            raise DeviceError(f"{self.name}: device refused {name} (status 0x{ack.code:02X})")
        return got

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        s = self.settings
        self._link = link = SerialTransport(self.address, baudrate=s.baudrate)
        self._codec = sc.SciospecHostCodec()
        self._running = False
        try:
            self._command(sc.StopMeasurement(), timeout=1.0)
        except DeviceError:
            pass
        time.sleep(0.02)
        link.reset_input()
        self._codec = sc.SciospecHostCodec()
        info = self._command(sc.GetDeviceInfo())
        self._idn = next((r.payload.decode("ascii", "replace") for r in info if isinstance(r, sc.DeviceInfo)), "")
        self._command(sc.ResetSetup())
        self._command(sc.SetBurstCount(s.burst_count))
        self._command(sc.SetFrameRate(s.fps))
        self._command(sc.SetFrequencies(s.frequency_hz, s.frequency_hz, 1, False))
        self._command(sc.SetAmplitude(s.amplitude_a))
        for inj, gnd in self._pairs:
            self._command(sc.AddInjectionPair(inj, gnd))

    def close(self) -> None:
        self._running = False
        super().close()

    def start(self) -> None:
        self._asm = FrameAssembler(self.settings.n_el, self._pairs, self.settings.fps)
        self._clock = DeviceClock(self.settings.fps)
        self._ts_clock, self._ts_last, self._ts_unwrapped = DeviceClock(1000.0), None, 0
        self._pending.clear()
        self._running = True
        try:
            self._command(sc.StartMeasurement())
        except BaseException:
            self._running = False
            raise

    def stop(self) -> None:
        self._running = False
        if self._link is not None:
            try:
                self._command(sc.StopMeasurement(), timeout=1.0)
            except (DeviceError, ConnectionLost):
                pass
        self._pending.clear()

    def enter_safe_state(self) -> str:
        """Stop the measurement (and with it the current injection); the acknowledge confirms it."""
        self._running = False
        self._command(sc.StopMeasurement(), timeout=1.0)
        self._pending.clear()
        return "stop measurement (B4 01 00 B4) acknowledged: current injection stopped"

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        pat = self.pattern
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=self._idn or f"sciospec EIT{s.n_el}",
            dtype="<f4", shape=[pat.n_total], axes=["measurement"], units="V",
            frame_rate_hz=s.fps,
            geometry={"n_el": s.n_el, "pattern": pat.name, "ex_mat": pat.ex_mat.tolist(),
                      "meas_mat": pat.meas_mat.tolist(), "electrodes": "0-based, equally spaced, CCW, "
                      "electrode 0 anterior midline", "order": "excitation-major: index = exc * n_meas + meas",
                      "shape": "thorax"},
            meta={"quantity": s.quantity, "frequency_hz": s.frequency_hz, "amplitude_a": s.amplitude_a,
                  "burst_count": s.burst_count, "vendor": "sciospec"},
        )

    # -- streaming -----------------------------------------------------------------------
    def _measurements(self, U: np.ndarray) -> np.ndarray:
        mm = self.pattern.meas_mat
        v = U[self._k, mm[:, :, 0]] - U[self._k, mm[:, :, 1]]
        v = np.abs(v) if self.settings.quantity == "magnitude" else v.real
        return np.ascontiguousarray(v.reshape(-1), dtype="<f4")

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        off = t_host - t_mono
        out: list[Frame | Gap] = []
        if not self._running:
            return out
        period_ns = int(1e9 / self.settings.fps)
        for ev in events:
            if not isinstance(ev, sc.DataFrame):
                if isinstance(ev, sc.Ack) and ev.code == sc.AckCode.DATA_HOLDUP:
                    self.count("data_holdup")
                continue
            if self.settings.frame_triggers and self._asm._position(ev) == 0:
                self._ts_clock.update(self._unwrap_ms(ev.timestamp_ms), t_mono)
            for item in self._asm.push(ev):
                if item[0] == "gap":
                    self.count("incomplete_frames" if "incomplete" in item[2] else "missing_frames", item[1])
                    out.append(Gap(lost_frames=item[1], reason=item[2]))
                else:
                    _, idx, U, ts = item
                    self._clock.update(idx, t_mono)
                    t0 = int(self._clock.time_of(idx)) - period_ns
                    meta: dict[str, Any] = {"device_frame": idx}
                    if self.settings.frame_triggers and self._ts_last == ts:
                        meta[FRAME_TRIGGERS_KEY] = [clock_trigger(
                            self._ts_clock, self._ts_unwrapped, "frame_start", off, t_device=ts / 1000.0,
                            latched=False, sample=idx).to_meta()]
                    out.append(Frame(self._measurements(U), t0 + off, t0, t_device=ts / 1000.0, meta=meta))
        return out

    def _unwrap_ms(self, raw: int) -> int:
        """The device's u32 ms timestamp, unwrapped (steps back of under 2^31 ms stay steps back)."""
        if self._ts_last is not None:
            d = (raw - self._ts_last) % (1 << 32)
            self._ts_unwrapped += d - (1 << 32) if d > (1 << 31) else d
        self._ts_last = raw
        return self._ts_unwrapped
