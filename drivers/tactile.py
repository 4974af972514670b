"""Driver for a tactile imaging probe speaking MTP/1 (``kind = "tactile"``, modality ``tactile``).

MTP/1 is this project's own framed binary format (:mod:`medacq.protocols.tactile`,
``docs/tactile.md``): USB CDC serial, frames of ``rows × cols`` u16 counts with a frame
counter, the probe's indentation depth and a CRC; ASCII commands with ``#`` replies.

``open()``: stop any stream, identify (``ID?``: model, rows, cols), set rate and front-end
gain, then take the **zero map**: ``zero_frames`` frames streamed with the probe unloaded
(the operator holds it in air; the simulated probe is in air for its first ``air_s``
after ``START``), averaged per cell. Cells that read 0 or 65535 or do not vary at all in
those frames are **dead** (listed in the descriptor, published as NaN). The **gain map**
(dimensionless, ``(row, col)``, mean about 1) comes from a ``.npy`` file made with
:func:`gain_map_from_uniform` on frames recorded (without a gain map) under a uniform
calibration pressure (a bladder); without one every cell has gain 1.

Frames: ``float32 (row, col)`` in kPa, ``(counts - zero) · kpa_per_count / afe_gain /
gain_map``; row 0 / col 0 first on the wire; cell ``(r, c)`` at ``x = (c - (cols-1)/2)·pitch``,
``y = (r - (rows-1)/2)·pitch`` mm from the probe centre (``geometry``). Per-frame meta:
``device_frame`` (the counter) and ``depth_mm`` (indentation). A counter jump is a
:class:`Gap` of exactly the lost frames; a CRC failure is counted (``crc_errors``) and shows
as the counter jump it causes. The probe emits nothing: the safe state has nothing to do.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medacq.protocols import tactile as tp
from medacq.protocols._sansio import Garbage
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, DeviceError, Frame, Gap
from .transports import SerialTransport

__all__ = ["TactileDriver", "TactileSettings", "gain_map_from_uniform", "zero_map"]


class TactileSettings(BaseModel):
    """``[device.settings]`` of a tactile probe.

    Attributes:
        rate_hz: scan rate, frames/s (1..500).
        gain: analogue front-end gain (1, 2, 4, 8).
        kpa_per_count: the probe's nominal sensitivity at gain 1, kPa per count.
        pitch_mm: cell pitch, mm (the protocol does not report it).
        zero_frames: frames averaged into the zero map at open (probe unloaded).
        gain_map: path of a ``.npy`` ``(rows, cols)`` relative gain map, or None (all 1).
        command_timeout_s: how long a command waits for its reply.
    """

    model_config = ConfigDict(extra="forbid")

    rate_hz: float = Field(default=100.0, ge=tp.RATE_RANGE_HZ[0], le=tp.RATE_RANGE_HZ[1])
    gain: int = Field(default=4)
    kpa_per_count: float = Field(default=0.01, gt=0)
    pitch_mm: float = Field(default=2.5, gt=0, le=20)
    zero_frames: int = Field(default=16, ge=1, le=1000)
    gain_map: str | None = None
    command_timeout_s: float = Field(default=1.0, gt=0, le=30)

    @field_validator("gain")
    @classmethod
    def _gain_known(cls, v: int) -> int:
        if v not in tp.GAINS:
            raise ValueError(f"gain must be one of {tp.GAINS}")
        return v


def zero_map(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(zero, dead)`` from unloaded frames ``(frame, row, col)`` in counts: the per-cell
    mean (float64 counts) and the dead-cell mask (0, 65535, or no variation at all)."""
    c = np.asarray(counts, dtype=np.float64)
    zero = c.mean(axis=0)
    dead = (c.min(axis=0) <= 0) | (c.max(axis=0) >= 65535)
    if c.shape[0] > 2:
        dead |= c.std(axis=0) == 0
    return zero, dead


def gain_map_from_uniform(frames_kpa: np.ndarray, kpa: float) -> np.ndarray:
    """Relative gain map ``(row, col)`` (dimensionless) from frames ``(frame, row, col)`` in kPa
    recorded *without* a gain map (every cell at gain 1) under a uniform pressure ``kpa``
    (a calibration bladder): each cell's mean reading over ``kpa``. Cells that do not
    respond (dead, NaN, or below 5 % of the load) get NaN; save it with ``numpy.save`` and
    name the file in the ``gain_map`` setting."""
    if kpa <= 0:
        raise ValueError("the calibration pressure must be > 0 kPa")
    f = np.asarray(frames_kpa, dtype=np.float64)
    n = np.isfinite(f).sum(axis=0)
    g = np.where(n > 0, np.nansum(f, axis=0) / np.maximum(n, 1), np.nan) / kpa
    g[~np.isfinite(g) | (g <= 0.05)] = np.nan
    return g


class TactileDriver(CodecDriver):
    """An MTP/1 tactile probe over a serial link; one stream frame per probe frame."""

    kind = "tactile"
    modality = "tactile"
    Settings = TactileSettings

    def __init__(self, name: str, address: str, settings: TactileSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: TactileSettings = settings
        self._codec: tp.TactileHostCodec = tp.TactileHostCodec()
        self.rows = 0
        self.cols = 0
        self.model = ""
        self.firmware = ""
        self._running = False
        self.zero: np.ndarray | None = None
        self.dead: np.ndarray | None = None
        self._scale: np.ndarray | None = None  # kPa per count, per cell (NaN: dead)
        self._gain_map_source = "uniform (none loaded)"

    # -- commands -------------------------------------------------------------------------
    def _hold(self, ev: Any) -> None:
        """Frames while a command waits belong to no run (only START's stream is published)."""
        if isinstance(ev, tp.PressureFrame) and self._running:
            self._pending.append(ev)

    def _command(self, cmd: tp.TactileCommand, want: str) -> tp.Reply:
        def accept(ev: Any) -> bool:
            return isinstance(ev, tp.Reply) and ev.kind in (want, "ERR")
        reply: tp.Reply = self._request(self._codec.send(cmd), accept, self.settings.command_timeout_s,
                                        f"no reply to {tp.encode_command(cmd).strip().decode()!r}")
        if reply.kind == "ERR":
            self.count("device_errors")
            raise DeviceError(f"{self.name}: probe refused {tp.encode_command(cmd).strip().decode()!r}: "
                              f"{' '.join(reply.args)}")
        return reply

    def open(self) -> None:
        s = self.settings
        self._link = SerialTransport(self.address, baudrate=115200)
        self._codec = tp.TactileHostCodec()
        self._running = False
        self._command(tp.Stop(), "OK")
        ident = self._command(tp.Identify(), "ID")
        try:
            model, rows, cols, fw = ",".join(ident.args).split(",")[:4]
            self.rows, self.cols, self.model, self.firmware = int(rows), int(cols), model, fw
        except ValueError:
            raise DeviceError(f"{self.name}: cannot parse the identity {ident.text!r}") from None
        if not (1 <= self.rows <= tp.MAX_CELLS_SIDE and 1 <= self.cols <= tp.MAX_CELLS_SIDE):
            raise DeviceError(f"{self.name}: probe reports {self.rows}x{self.cols} cells")
        self._command(tp.SetRate(s.rate_hz), "OK")
        self._command(tp.SetGain(s.gain), "OK")
        gain_map = np.ones((self.rows, self.cols))
        if s.gain_map:
            try:
                gain_map = np.load(os.path.expanduser(s.gain_map))
            except (OSError, ValueError) as exc:
                raise DeviceError(f"{self.name}: cannot read gain map {s.gain_map!r}: {exc}") from None
            if gain_map.shape != (self.rows, self.cols):
                raise DeviceError(f"{self.name}: gain map {gain_map.shape} does not match the probe's "
                                  f"{self.rows}x{self.cols} cells")
            self._gain_map_source = s.gain_map
        self._take_zero(gain_map)

    def _take_zero(self, gain_map: np.ndarray) -> None:
        s = self.settings
        frames: list[np.ndarray] = []

        def enough(ev: Any) -> bool:
            if isinstance(ev, tp.PressureFrame) and ev.cells.shape == (self.rows, self.cols):
                frames.append(ev.cells)
            return len(frames) >= s.zero_frames

        self._codec.reset_counter()
        self._command(tp.Start(), "OK")
        got = self._await(enough, s.zero_frames / s.rate_hz * 3 + 2 * s.command_timeout_s)
        self._command(tp.Stop(), "OK")
        if got is None:
            raise DeviceError(f"{self.name}: only {len(frames)} of {s.zero_frames} zero frames arrived")
        self.zero, self.dead = zero_map(np.stack(frames))
        self.count("dead_cells", int(self.dead.sum()))
        g = np.where(np.isfinite(gain_map) & (gain_map > 0.05), gain_map, np.nan)
        self.dead = self.dead | ~np.isfinite(g)
        scale = s.kpa_per_count / s.gain / g
        scale[self.dead] = np.nan
        self._scale = scale

    def start(self) -> None:
        self._codec.reset_counter()
        self._pending.clear()
        self._running = True
        self._command(tp.Start(), "OK")

    def stop(self) -> None:
        self._running = False
        if self._link is not None:
            self._command(tp.Stop(), "OK")

    def close(self) -> None:
        self._running = False
        super().close()

    # -- data -------------------------------------------------------------------------------
    def kpa(self, cells: np.ndarray) -> np.ndarray:
        """Counts ``(row, col)`` → kPa ``float32 (row, col)`` (zero and gain map applied; dead cells NaN)."""
        if self.zero is None or self._scale is None:
            raise DeviceError(f"{self.name}: not calibrated (open() first)")
        return ((cells - self.zero) * self._scale).astype("<f4")

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        p = s.pitch_mm
        x = ((np.arange(self.cols) - (self.cols - 1) / 2) * p).tolist()
        y = ((np.arange(self.rows) - (self.rows - 1) / 2) * p).tolist()
        dead = [] if self.dead is None else np.argwhere(self.dead).tolist()
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"{self.model or 'tactile'} {self.rows}x{self.cols}",
            dtype="<f4", shape=[self.rows, self.cols], axes=["row", "col"], units="kPa",
            frame_rate_hz=s.rate_hz,
            geometry={"pitch_mm": p, "x_mm": x, "y_mm": y, "origin": "probe centre; x along col, y along row",
                      "dead_cells": dead},
            meta={"vendor": "medacq", "protocol": "MTP/1", "model": self.model, "firmware": self.firmware,
                  "afe_gain": s.gain, "kpa_per_count": s.kpa_per_count,
                  "calibration": {"zero_frames": s.zero_frames, "gain_map": self._gain_map_source},
                  "frame_meta": {"device_frame": "frame counter", "depth_mm": "indentation depth, mm"}},
        )

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        for ev in events:
            if not self._running:
                continue
            if isinstance(ev, tp.PressureFrame):
                if ev.cells.shape != (self.rows, self.cols):
                    self.count("bad_frames")
                    out.append(Gap(lost_frames=1, reason=f"frame of {ev.rows}x{ev.cols} cells, expected "
                                                         f"{self.rows}x{self.cols}"))
                    continue
                out.append(Frame(self.kpa(ev.cells), t_host, t_mono, t_device=ev.t_device_us * 1e-6,
                                 meta={"device_frame": ev.counter, "depth_mm": ev.depth_um / 1000.0}))
            elif isinstance(ev, tp.CounterJump):
                self.count("lost_frames", ev.lost)
                out.append(Gap(lost_frames=ev.lost, reason=f"device counter jumped {ev.expected - 1}->{ev.received}"))
            elif isinstance(ev, tp.Reply):
                self.count("unexpected_replies")
        return out

    def _garbage(self, ev: Garbage) -> None:
        super()._garbage(ev)
        if ev.reason == "crc mismatch":
            self.count("crc_errors")
