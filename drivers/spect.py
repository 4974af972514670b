"""Driver for an Anger gamma camera on a rotating gantry streaming raw PMT events over TCP
(``tcp://host:port``, :mod:`medacq.protocols.anger`).

At ``open`` it sets the gantry plan (stops per rotation, dwell) and reads ``GET CONFIG``: PMT
positions, collimator, isotope, and the camera's correction maps. Every event then goes through
Anger logic here (:func:`~medacq.protocols.anger.anger_centroid`: thresholded centroid, energy =
sum of the PMT signals), the linearity map (displacement added to the centroid), the energy map
(keV per ADC count at the corrected position) and the uniformity map (weight ``1 / u(x, y)``).

Frames: one per event block, float64 ``(n, 6)``, axes ``("event", "field")``, fields ``x_mm``
(tangential, on the face), ``y_mm`` (axial), ``energy_kev``, ``t_s`` (device time), ``angle_deg``
(gantry), ``weight`` (uniformity correction). Frame meta: ``block``, ``t_start_us``, ``t_end_us``,
``angle_deg``. A block-counter jump is a gap (``lost_blocks``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.anger import (
    AngerConnection,
    EventBlock,
    anger_centroid,
    interp_grid,
)
from medacq.protocols.stream import StreamDescriptor

from ._base import DeviceError, Frame, Gap
from ._framed_tcp import FramedTcpDriver
from .transports import TcpTransport

__all__ = ["SpectDriver", "SpectSettings", "AngerCorrector"]

FIELDS = ["x_mm", "y_mm", "energy_kev", "t_s", "angle_deg", "weight"]


class SpectSettings(BaseModel):
    """Settings sent at ``open`` (``None``: keep the camera's value).

    Attributes:
        stops: gantry stops per 360°.
        dwell_s: seconds per stop.
        command_timeout_s: reply timeout.
    """

    model_config = ConfigDict(extra="forbid")

    stops: int | None = Field(None, ge=2, le=360)
    dwell_s: float | None = Field(None, ge=0.01, le=600)
    command_timeout_s: float = Field(5.0, gt=0)


class AngerCorrector:
    """Anger logic plus the camera's correction maps (``GET CONFIG`` content)."""

    def __init__(self, config: dict[str, Any]) -> None:
        try:
            self.pmt_xy = np.asarray(config["pmt_xy_mm"], float)
            m = config["maps"]
            self.half = float(m["half_mm"])
            self.dx = np.asarray(m["linearity_dx_mm"], float)
            self.dy = np.asarray(m["linearity_dy_mm"], float)
            self.gain = np.asarray(m["energy_gain_kev_per_adc"], float)
            self.unif = np.asarray(m["uniformity"], float)
            self.threshold = float(m.get("threshold_fraction", 0.1))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceError(f"camera config lacks PMT positions or maps: {exc}") from None
        if self.pmt_xy.ndim != 2 or self.pmt_xy.shape[1] != 2:
            raise DeviceError("pmt_xy_mm must be (n_pmt, 2)")

    def __call__(self, amp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, energy_kev, weight)`` of raw events ``amp`` ``(n, n_pmt)``."""
        rx, ry, s = anger_centroid(amp, self.pmt_xy, self.threshold)
        x = rx + interp_grid(self.dx, rx, ry, self.half)
        y = ry + interp_grid(self.dy, rx, ry, self.half)
        e = s * interp_grid(self.gain, x, y, self.half)
        w = 1.0 / np.clip(interp_grid(self.unif, x, y, self.half), 0.2, None)
        return x, y, e, w


class SpectDriver(FramedTcpDriver):
    """Anger camera driver (kind ``spect``, modality ``spect``)."""

    kind = "spect"
    modality = "spect"
    Settings = SpectSettings

    def __init__(self, name: str, address: str, settings: SpectSettings) -> None:
        super().__init__(name, address, settings, buffer_bytes=4 << 20)
        self.settings: SpectSettings = settings
        self._codec = AngerConnection("host")
        self.corrector: AngerCorrector | None = None

    def open(self) -> None:
        s = self.settings
        self._link = self._tcp = TcpTransport(self.address)
        self._codec = AngerConnection("host")
        self._pending.clear()
        self.command("STOP")
        self._pending.clear()
        if s.stops is not None:
            self.command(f"SET STOPS {s.stops}")
        if s.dwell_s is not None:
            self.command(f"SET DWELL {s.dwell_s:g}")
        try:
            self.config = json.loads(self.command("GET CONFIG"))
        except json.JSONDecodeError as exc:
            raise DeviceError(f"{self.name}: GET CONFIG is not JSON: {exc}") from None
        self.corrector = AngerCorrector(self.config)

    def descriptor(self) -> StreamDescriptor:
        c = self.config
        geometry = {k: c[k] for k in ("radius_mm", "face_half_mm", "collimator", "isotope", "photon_kev",
                                      "photon_yield", "half_life_s", "axial_mm", "stops", "dwell_s", "phantom")
                    if k in c}
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device="anger-camera", dtype="<f8", shape=[-1, 6],
            axes=["event", "field"], units="mm,mm,keV,s,deg,1", channel_names=list(FIELDS), geometry=geometry,
            meta={"address": self.address, "n_pmt": c.get("n_pmt")})

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        corr = self.corrector
        for ev in events:
            if not isinstance(ev, EventBlock) or corr is None:
                self.count("stray_replies")
                continue
            gap = self._counter_gap(ev.counter)
            if gap is not None:
                out.append(gap)
            n = len(ev.events)
            if ev.events.dtype["pmt"].shape != (len(corr.pmt_xy),):
                self.count("bad_shape")
                continue
            x, y, e, w = corr(ev.events["pmt"].reshape(n, -1))
            frame = np.empty((n, 6))
            frame[:, 0], frame[:, 1], frame[:, 2], frame[:, 5] = x, y, e, w
            frame[:, 3] = ev.t_start_us * 1e-6 + ev.events["dt_ns"] * 1e-9
            frame[:, 4] = ev.angle_mdeg / 1000.0
            self.count("events", n)
            out.append(Frame(frame, t_host, t_mono, t_device=ev.t_start_us * 1e-6,
                             meta={"block": ev.counter, "t_start_us": ev.t_start_us, "t_end_us": ev.t_end_us,
                                   "angle_deg": ev.angle_mdeg / 1000.0}))
        return out
