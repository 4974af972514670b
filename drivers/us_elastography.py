"""Driver for shear-wave elastography on the OpenIGTLink research scanner (``kind = "us_swe"``,
modality ``swe``).

Same link and commands as :class:`~medacq.drivers.ultrasound.UltrasoundDriver`, plus the
push-and-track sequence (``docs/elastography.md``): ``SET PUSH``, ``SET TRACKING``,
``GET SWE``, ``PUSH``. While running the driver fires one push every ``push_interval_s``;
each push's tracking ensemble arrives as one NDARRAY message named ``SWE`` and becomes one
stream frame: with ``tracking_data = "rf"`` (default) int16 ``(frame, angle, element, sample)``
channel RF counts of the 0° tracking plane wave, the tracking acquisition (``GET TRACKING``)
in ``geometry.acquisition`` (the reconstructor beamforms); with ``"iq"`` int16 ``(frame, z, x,
iq)`` beamformed IQ counts (``iq`` = I, Q). The beamforming grid (``z0_mm``, ``dz_mm``,
``x0_mm``, ``dx_mm``) is in the descriptor geometry either way, the push counter in the frame
meta (a hole in it is a :class:`Gap`); an ensemble of the wrong kind or shape is counted
(``bad_ensembles``) and dropped. B-mode RF frames on the same link are not this stream's: counted
(``rf_frames_ignored``) and dropped.

Transmit safety. The push settings are *limited* (``push_duration_us``, ``push_voltage_v``,
``push_interval_s``: a control-plane ``configure`` moves them only inside the config file's
``[device.limits]``), and the bounds ``max_push_duration_us``, ``max_duty`` (push time /
interval) and ``max_mi`` (mechanical index estimate, :func:`mi_estimate`) are
*config-only*: settings beyond them are refused when validated (config load and
``configure``), and :meth:`ElastographyDriver.push` checks them again before every push.
``enter_safe_state`` disarms pushes first, then ``STOP`` (which also cancels a push in
flight on the scanner) and checks ``state=stopped``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
import json
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from medacq.protocols.igtl import BadMessage, ConnectionClosed, ImageMessage, NdArrayMessage, StringMessage
from medacq.protocols.stream import StreamDescriptor
from medacq.protocols.us_geometry import PlaneWaveAcquisition

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from .ultrasound import UltrasoundDriver, UltrasoundSettings

__all__ = ["ElastographyDriver", "ElastographySettings", "mi_estimate"]

#: transmit pressure per volt at the focus in water (MPa/V), the MI model's probe constant
MPA_PER_VOLT = 0.05
#: derating (dB/cm/MHz) of the FDA/IEC mechanical index
DERATING_DB_CM_MHZ = 0.3


def mi_estimate(voltage_v: float, depth_mm: float, f0_hz: float = 5e6) -> float:
    """Mechanical index estimate of the push: derated peak rarefactional pressure (MPa) over
    sqrt(centre frequency in MHz); pressure = ``MPA_PER_VOLT`` × voltage in water, derated by
    0.3 dB/cm/MHz over the focal depth. A model for limits, not a measurement."""
    f_mhz = f0_hz / 1e6
    p = MPA_PER_VOLT * voltage_v * 10 ** (-DERATING_DB_CM_MHZ * (depth_mm / 10.0) * f_mhz / 20.0)
    return p / math.sqrt(f_mhz)


class ElastographySettings(UltrasoundSettings):
    """Scanner settings (:class:`UltrasoundSettings`; here 1 angle at 1 Hz B-mode by default)
    plus the push sequence and its limits.

    Attributes:
        push_duration_us: push length, µs (limited).
        push_depth_mm: push focal depth, mm.
        push_voltage_v: push transmit voltage, V (limited).
        push_interval_s: time between pushes, s (limited; duty = duration / interval).
        tracking_prf_hz: plane-wave tracking PRF, 5..10 kHz.
        tracking_frames: frames per ensemble (10..20 ms of tracking).
        tracking_data: ``"rf"`` (channel RF, beamformed by the reconstructor) or ``"iq"``
            (beamformed IQ from the scanner).
        bmode_stream: the B-mode stream of the same probe (the live view draws the modulus
            map over it; default: the only B-mode stream of the rig).
        f0_hz: transmit centre frequency used by the MI estimate.
        max_push_duration_us, max_duty, max_mi: the push limits (config file only).
    """

    angles: int = Field(1, ge=1, le=75)
    prf_hz: float = Field(1.0, gt=0, le=50000, json_schema_extra={"limited": True})
    push_duration_us: float = Field(200.0, ge=50, le=1000, json_schema_extra={"limited": True})
    push_depth_mm: float = Field(25.0, ge=5, le=60)
    push_voltage_v: float = Field(50.0, ge=1, le=90, json_schema_extra={"limited": True})
    push_interval_s: float = Field(0.5, ge=0.05, le=60, json_schema_extra={"limited": True})
    tracking_prf_hz: float = Field(8000.0, ge=5000, le=10000)
    tracking_frames: int = Field(120, ge=50, le=200)
    tracking_data: Literal["rf", "iq"] = "rf"
    bmode_stream: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    f0_hz: float = Field(5e6, gt=0)
    max_push_duration_us: float = Field(400.0, gt=0, le=1000, json_schema_extra={"config_only": True})
    max_duty: float = Field(0.002, gt=0, le=0.05, json_schema_extra={"config_only": True})
    max_mi: float = Field(1.9, gt=0, le=1.9, json_schema_extra={"config_only": True})

    @model_validator(mode="after")
    def _push_limits(self) -> "ElastographySettings":
        problems = self.push_problems()
        if problems:
            raise ValueError("; ".join(problems))
        ms = self.tracking_frames / self.tracking_prf_hz * 1e3
        if not 10.0 - 1e-9 <= ms <= 20.0 + 1e-9:
            raise ValueError(f"tracking lasts {ms:g} ms (tracking_frames / tracking_prf_hz); 10..20 ms allowed")
        return self

    def duty(self) -> float:
        return self.push_duration_us * 1e-6 / self.push_interval_s

    def mi(self) -> float:
        return mi_estimate(self.push_voltage_v, self.push_depth_mm, self.f0_hz)

    def push_problems(self) -> list[str]:
        """Which push limit the settings break (empty: none)."""
        out = []
        if self.push_duration_us > self.max_push_duration_us:
            out.append(f"push_duration_us {self.push_duration_us:g} > max_push_duration_us "
                       f"{self.max_push_duration_us:g}")
        if self.duty() > self.max_duty:
            out.append(f"push duty {self.duty():.4g} (push_duration_us / push_interval_s) > max_duty {self.max_duty:g}")
        if self.mi() > self.max_mi:
            out.append(f"mechanical index estimate {self.mi():.3g} > max_mi {self.max_mi:g}")
        return out


class ElastographyDriver(UltrasoundDriver):
    """Push-and-track shear-wave elastography on the OpenIGTLink scanner (module doc)."""

    kind = "us_swe"
    modality = "swe"
    Settings = ElastographySettings

    def __init__(self, name: str, address: str, settings: ElastographySettings) -> None:
        super().__init__(name, address, settings)
        self.settings: ElastographySettings = settings
        self.swe: dict[str, float] = {}
        self.tracking: PlaneWaveAcquisition | None = None
        self._armed = False
        self._next_push = 0.0
        self._in_flight = False
        self._push_sent_at = 0.0
        self._expected_push: int | None = None

    def _events(self) -> Iterator[Any]:
        """The scanner's events, plus the ``SWE`` NDARRAY ensembles."""
        for ev in CodecDriver._events(self):
            if isinstance(ev, NdArrayMessage) and ev.device_name == "SWE":
                yield ev
            elif isinstance(ev, ImageMessage) and ev.device_name == "RF":
                self.count("rf_frames_ignored")
            else:
                yield from self._filter_one(ev)

    def _filter_one(self, ev: Any) -> Iterator[Any]:
        """The parent's filter for one event: bad messages counted, replies on, a closed link raised."""
        if isinstance(ev, BadMessage):
            self.count("bad_messages")
            yield ev
        elif isinstance(ev, ConnectionClosed):
            raise ConnectionLost(f"{self.name}: {self.address} closed the connection")
        elif isinstance(ev, StringMessage):
            yield ev
        else:
            self.count("other_messages")

    def open(self) -> None:
        super().open()
        s = self.settings
        self.command(f"SET PUSH {s.push_duration_us:g} {s.push_depth_mm:g} {s.push_voltage_v:g}")
        self.command(f"SET TRACKING {s.tracking_prf_hz:g} {s.tracking_frames} {s.tracking_data.upper()}")
        reply = self.command("GET SWE", timeout=max(s.command_timeout_s, 60.0))
        self.swe = {k: float(v) for k, v in (w.split("=", 1) for w in reply.split() if "=" in w and
                                             not w.startswith("data="))}
        self.tracking = None
        if s.tracking_data == "rf":
            try:
                self.tracking = PlaneWaveAcquisition.from_descriptor(json.loads(self.command("GET TRACKING")))
            except ValueError as exc:
                raise DeviceError(f"{self.name}: GET TRACKING: {str(exc).splitlines()[0][:200]}") from None

    def start(self) -> None:
        super().start()
        self._armed = True
        self._in_flight = False
        self._expected_push = None
        self._next_push = time.monotonic()

    def stop(self) -> None:
        self._armed = False
        super().stop()

    def enter_safe_state(self) -> str:
        """Disarm pushes, then ``STOP`` (cancels a push in flight) and check ``state=stopped``."""
        self._armed = False
        self._in_flight = False
        done = super().enter_safe_state()
        return "pushes disarmed; " + done

    def push(self) -> int:
        """Fire one push now (limits checked first); returns the scanner's push counter."""
        problems = self.settings.push_problems()
        if problems:
            raise DeviceError(f"{self.name}: push refused: {'; '.join(problems)}")
        reply = self.command("PUSH")
        self._in_flight = True
        self._push_sent_at = time.monotonic()
        self.count("pushes")
        return int(reply.split("=", 1)[1])

    def descriptor(self) -> StreamDescriptor:
        s, w = self.settings, self.swe
        geometry: dict[str, Any] = {
            "z0_mm": w.get("z0_mm"), "dz_mm": w.get("dz_mm"), "x0_mm": w.get("x0_mm"), "dx_mm": w.get("dx_mm"),
            "nz": int(w.get("nz", 0)), "nx": int(w.get("nx", 0)), "prf_hz": s.tracking_prf_hz,
            "f0_hz": w.get("f0", s.f0_hz), "fs_iq_hz": w.get("fs_iq"), "c_m_s": 1540.0,
            "tracking_data": s.tracking_data}
        if s.tracking_data == "rf" and self.tracking is not None:
            shape = [s.tracking_frames, *self.tracking.rf_shape]
            axes = ["frame", "angle", "element", "sample"]
            geometry["acquisition"] = self.tracking.to_descriptor()
            geometry["layout"] = ("channel RF of the 0-degree tracking plane wave after one push; frame 0 at the end "
                                  "of the push; beamform onto the (z0_mm, dz_mm, nz) x (x0_mm, dx_mm, nx) grid")
        else:
            shape = [s.tracking_frames, int(w.get("nz", 0)), int(w.get("nx", 0)), 2]
            axes = ["frame", "z", "x", "iq"]
            geometry["layout"] = "beamformed IQ after one push; frame 0 at the end of the push"
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device="igtl:swe",
            dtype="<i2", shape=shape, axes=axes, units="counts",
            frame_rate_hz=1.0 / s.push_interval_s,
            geometry=geometry,
            meta={"push_duration_us": s.push_duration_us, "push_depth_mm": s.push_depth_mm,
                  "push_voltage_v": s.push_voltage_v, "push_interval_s": s.push_interval_s,
                  "duty": s.duty(), "mi_estimate": round(s.mi(), 4),
                  "limits": {"max_push_duration_us": s.max_push_duration_us, "max_duty": s.max_duty,
                             "max_mi": s.max_mi}, "address": self.address,
                  **({"bmode_stream": s.bmode_stream} if s.bmode_stream else {})},
        )

    @property
    def _shape(self) -> list[int] | None:
        if not self.swe:
            return None
        return list(self.descriptor().shape)

    def read(self, timeout: float) -> list[Frame | Gap]:
        now = time.monotonic()
        ensemble_s = self.settings.tracking_frames / self.settings.tracking_prf_hz
        if self._in_flight and now - self._push_sent_at > ensemble_s + 5.0:
            self._in_flight = False  # the ensemble never came: its counter hole shows the loss
            self.count("ensembles_missing")
        if self._armed and not self._in_flight and now >= self._next_push:
            self._next_push = max(now, self._next_push + self.settings.push_interval_s)
            self.push()
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        for ev in events:
            if not isinstance(ev, NdArrayMessage):
                if not isinstance(ev, ImageMessage):
                    self.count("stray_replies")
                continue
            self._in_flight = False
            if ev.metadata.get("data", "iq") != self.settings.tracking_data or \
                    (self._shape is not None and list(ev.array.shape) != self._shape):
                self.count("bad_ensembles")  # not what the descriptor announced: dropped, the counter shows it
                continue
            try:
                k = int(ev.metadata.get("push", ev.message_id))
            except ValueError:
                k = ev.message_id
            exp = self._expected_push
            if exp is not None and k > exp:
                out.append(Gap(lost_frames=k - exp, reason=f"push {exp}->{k}: ensembles lost"))
            self._expected_push = k + 1
            arr = np.ascontiguousarray(ev.array, dtype="<i2")
            meta = {"push": k, "iq_scale": float(ev.metadata.get("iq_scale", "1"))}
            out.append(Frame(arr, t_host, t_mono, t_device=ev.timestamp, meta=meta))
        return out
