"""Driver for a PET ring front end streaming PETsys-style singles over TCP (``tcp://host:port``).

One link carries both the command channel (text commands, replies with a numeric
:class:`~medacq.protocols.petsys.ReplyCode`) and the singles blocks
(:mod:`medacq.protocols.petsys`). At ``open`` the driver applies its settings (threshold,
coincidence window, energy window) and reads the device's configuration (``GET CONFIG``: ring
geometry, windows, isotope, sensitivity), which travels in the stream descriptor.

Frames: one per singles block, ``int64`` array ``(n, 3)``, axes ``("single", "field")``, fields
``time_ps`` (device time, ps), ``energy_ev`` (keV x 1000, rounded), ``crystal`` (ring crystal
index). ``n`` varies per frame (descriptor shape ``[-1, 3]``). Frame meta: ``block`` (the
device's block counter), ``t_start_ps``/``t_end_ps`` (the device time the block covers) and
``dead_singles`` (singles the front end lost to dead time in the block).

Loss: the block counter must step by one; a jump is a :class:`~medacq.drivers._base.Gap` of that
many frames (counter ``lost_blocks``); a frame with a bad CRC is counted (``bad_frames``) and
shows up as that jump. The connection is kept.
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medacq.protocols.petsys import PetsysConnection, SinglesBlock
from medacq.protocols.stream import StreamDescriptor

from ._base import DeviceError, Frame, Gap
from ._framed_tcp import FramedTcpDriver
from .transports import TcpTransport

__all__ = ["PetDriver", "PetSettings", "singles_to_frame"]

FIELDS = ["time_ps", "energy_ev", "crystal"]


class PetSettings(BaseModel):
    """Settings sent to the front end at ``open`` (``None``: keep the device's value).

    Attributes:
        threshold_kev: front-end lower energy threshold, keV.
        cwindow_ps: coincidence (prompt) window for the sorter, ps.
        ewindow_kev: energy window ``[lo, hi]`` for the sorter, keV.
        command_timeout_s: how long to wait for a reply.
    """

    model_config = ConfigDict(extra="forbid")

    threshold_kev: float | None = Field(None, ge=0, le=700)
    cwindow_ps: float | None = Field(None, ge=100, le=100000)
    ewindow_kev: tuple[float, float] | None = None
    command_timeout_s: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _window(self) -> "PetSettings":
        if self.ewindow_kev is not None and not 0 <= self.ewindow_kev[0] < self.ewindow_kev[1] <= 1000:
            raise ValueError("ewindow_kev needs 0 <= lo < hi <= 1000")
        return self


def singles_to_frame(singles: np.ndarray) -> np.ndarray:
    """PETsys records (:data:`~medacq.protocols.petsys.SINGLE_DTYPE`) → ``(n, 3)`` int64 frame."""
    out = np.empty((len(singles), 3), np.int64)
    out[:, 0] = singles["time_ps"]
    np.rint(singles["energy"] * np.float32(1000.0), out=out[:, 1], casting="unsafe")
    out[:, 2] = singles["id"]
    return out


class PetDriver(FramedTcpDriver):
    """PETsys-style singles driver (kind ``pet``, modality ``pet``)."""

    kind = "pet"
    modality = "pet"
    Settings = PetSettings

    def __init__(self, name: str, address: str, settings: PetSettings) -> None:
        super().__init__(name, address, settings, buffer_bytes=8 << 20)
        self.settings: PetSettings = settings
        self._codec = PetsysConnection("host")

    def open(self) -> None:
        s = self.settings
        self._link = self._tcp = TcpTransport(self.address)
        self._codec = PetsysConnection("host")
        self._pending.clear()
        self.command("STOP")
        self._pending.clear()
        if s.threshold_kev is not None:
            self.command(f"SET THRESHOLD {s.threshold_kev:g}")
        if s.cwindow_ps is not None:
            self.command(f"SET CWINDOW {s.cwindow_ps:g}")
        if s.ewindow_kev is not None:
            self.command(f"SET EWINDOW {s.ewindow_kev[0]:g} {s.ewindow_kev[1]:g}")
        try:
            self.config = json.loads(self.command("GET CONFIG"))
        except json.JSONDecodeError as exc:
            raise DeviceError(f"{self.name}: GET CONFIG is not JSON: {exc}") from None

    def descriptor(self) -> StreamDescriptor:
        c = self.config
        geometry = dict(c.get("geometry", {}))
        geometry.update({k: c[k] for k in ("cwindow_ps", "ewindow_kev", "threshold_kev", "time_reference",
                                            "sensitivity", "isotope", "phantom") if k in c})
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"petsys:{c.get('device', 'pet ring')}",
            dtype="<i8", shape=[-1, 3], axes=["single", "field"], units="ps,eV,index",
            channel_names=list(FIELDS), geometry=geometry,
            meta={"address": self.address, "block_ps": c.get("block_ps"), "singles_rate": c.get("singles_rate"),
                  "physics": c.get("physics", {})},
        )

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        for ev in events:
            if not isinstance(ev, SinglesBlock):
                self.count("stray_replies")
                continue
            gap = self._counter_gap(ev.counter)
            if gap is not None:
                out.append(gap)
            self.count("singles", len(ev.singles))
            self.count("dead_singles", ev.dead_singles)
            out.append(Frame(singles_to_frame(ev.singles), t_host, t_mono, t_device=ev.t_start_ps * 1e-12,
                             meta={"block": ev.counter, "t_start_ps": ev.t_start_ps, "t_end_ps": ev.t_end_ps,
                                   "dead_singles": ev.dead_singles}))
        return out
