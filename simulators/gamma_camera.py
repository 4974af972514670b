"""SPECT Anger camera on a step-and-shoot gantry, on the ``ANGR`` link (device role), binding
:class:`~medacq.simulators.spect_model.SpectCameraModel` to
:class:`~medacq.protocols.anger.AngerConnection`.

Commands (one reply each, codes :class:`~medacq.protocols.petsys.ReplyCode`)::

    GET STATUS            state=<stopped|running> stop=<k> angle_deg=<a> blocks_sent=<n>
    GET CONFIG            JSON: PMT positions, collimator, rotation radius, isotope, gantry plan,
                          phantom (μ-map source) and the correction maps (linearity, energy, uniformity)
    SET STOPS <n>         gantry stops per 360° (2..360)
    SET DWELL <s>         seconds per stop (0.01..600; a multiple of the block length)
    START | STOP          settings are refused with BUSY while running

Events go out in blocks of ``block_ms`` of device time (µs since the simulator started), each
tagged with the gantry angle of its stop; stop ``k`` after START is at ``k * 360 / stops`` degrees
(rotations repeat). Unpaced, blocks come as fast as the host reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medacq.protocols.anger import AngerConnection, EventBlock, ReplyCode, event_dtype
from medacq.simulators._block_device import BlockDeviceInterface
from medacq.simulators.spect_model import SpectCameraModel

__all__ = ["GammaCameraInterface", "make"]


class GammaCameraInterface(BlockDeviceInterface):
    """The camera on the wire (module doc)."""

    codec: AngerConnection

    def __init__(self, model: SpectCameraModel | None = None, *, block_ms: float = 10.0, stops: int = 60,
                 dwell_s: float = 1.0) -> None:
        self.model = model or SpectCameraModel()
        self.block_us = int(round(block_ms * 1000))
        self.stops, self.dwell_s = int(stops), float(dwell_s)
        super().__init__()
        self._next_us: int | None = None
        self._start_us = 0
        self.events_sent = 0
        self.dtype = event_dtype(self.model.n_pmt)

    def _new_codec(self) -> AngerConnection:
        return AngerConnection("device")

    def next_deadline(self) -> float | None:
        if self.state != "running" or self._next_us is None:
            return None
        return (self._next_us + self.block_us) * 1e-6

    def angle_at(self, t_us: int) -> tuple[int, float]:
        """(stop index, gantry angle in degrees) at device time ``t_us`` of this acquisition."""
        k = int((t_us - self._start_us) // int(round(self.dwell_s * 1e6)))
        return k, (k % self.stops) * 360.0 / self.stops

    def poll(self, t: float) -> bytes:
        if self.state != "running" or self._next_us is None:
            return b""
        out: list[bytes] = []
        while (self._next_us + self.block_us) * 1e-6 <= t and len(out) < 64:
            t0 = self._next_us
            t1 = t0 + self.block_us
            self._next_us = t1
            _, ang = self.angle_at(t0)
            counter = self.codec.next_block_counter()
            ev = self.model.generate(t0, t1, ang)
            if self._drop_next:
                self._drop_next -= 1
                continue
            rec = np.empty(len(ev.t_us), self.dtype)
            rec["dt_ns"] = np.rint((ev.t_us - t0) * 1000).astype(np.uint32)
            rec["pmt"] = ev.amp
            out.append(self.codec.send(EventBlock(counter, t0, t1, int(round(ang * 1000)), rec)))
            self.blocks_sent += 1
            self.events_sent += len(rec)
        return b"".join(out)

    def truth(self) -> dict:
        return {"config": self.model.config(), "state": self.state, "events_sent": self.events_sent}

    # ---- commands ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg = self.model.config()
        cfg.update({"stops": self.stops, "dwell_s": self.dwell_s, "block_us": self.block_us,
                    "n_pmt": self.model.n_pmt, "time_unit": "us", "energy_unit": "ADC counts"})
        return cfg

    def _status(self, t: float) -> str:
        k, ang = self.angle_at(self._next_us or 0)
        return f"state={self.state} stop={k} angle_deg={ang:g} blocks_sent={self.blocks_sent}"

    def _start(self, t: float) -> None:
        now = int(t * 1e6)
        now -= now % self.block_us
        self.state, self._next_us, self._start_us = "running", now, now

    def _stop(self) -> None:
        self.state, self._next_us = "stopped", None

    def _set(self, what: str, words: list[str]) -> tuple[ReplyCode, str] | None:
        v = float(words[0])
        if what == "STOPS":
            if not 2 <= v <= 360:
                return ReplyCode.OUT_OF_RANGE, "stops must be 2..360"
            self.stops = int(v)
            return ReplyCode.OK, ""
        if what == "DWELL":
            if not 0.01 <= v <= 600:
                return ReplyCode.OUT_OF_RANGE, "dwell must be 0.01..600 s"
            if round(v * 1e6) % self.block_us:
                return ReplyCode.BAD_ARGUMENT, f"dwell must be a multiple of {self.block_us} us"
            self.dwell_s = v
            return ReplyCode.OK, ""
        return None


def make(**options: Any) -> GammaCameraInterface:
    """Factory for ``medacq sim spect``. Options: ``rate_cps`` (50000 detected events/s at t = 0),
    ``ratio`` (sphere:background, 4), ``stops`` (60), ``dwell_s`` (1), ``block_ms`` (10), ``seed`` (0),
    ``start`` (False)."""
    from medacq.protocols.models.nuclear_phantom import IecBodyPhantom

    known = {"rate_cps", "ratio", "stops", "dwell_s", "block_ms", "seed", "start"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown spect simulator options: {', '.join(sorted(unknown))}")
    model = SpectCameraModel(phantom=IecBodyPhantom(ratio=float(options.get("ratio", 4.0)), isotope="Tc-99m"),
                             rate_cps=float(options.get("rate_cps", 50_000.0)), seed=int(options.get("seed", 0)))
    iface = GammaCameraInterface(model, block_ms=float(options.get("block_ms", 10.0)),
                                 stops=int(options.get("stops", 60)), dwell_s=float(options.get("dwell_s", 1.0)))
    if options.get("start", False):
        iface.state, iface._next_us, iface._start_us = "running", 0, 0
    return iface
