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

import json
from typing import Any

import numpy as np

from medacq.protocols._sansio import Garbage
from medacq.protocols.anger import AngerConnection, BadFrame, Command, EventBlock, Reply, ReplyCode, event_dtype
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.spect_model import SpectCameraModel

__all__ = ["GammaCameraInterface", "make"]


class GammaCameraInterface(DeviceInterface):
    """The camera on the wire (module doc)."""

    def __init__(self, model: SpectCameraModel | None = None, *, block_ms: float = 10.0, stops: int = 60,
                 dwell_s: float = 1.0) -> None:
        self.model = model or SpectCameraModel()
        self.block_us = int(round(block_ms * 1000))
        self.stops, self.dwell_s = int(stops), float(dwell_s)
        self.codec = AngerConnection("device")
        self.state = "stopped"
        self._next_us: int | None = None
        self._start_us = 0
        self._drop_next = 0
        self.blocks_sent = 0
        self.events_sent = 0
        self.bad_frames = 0
        self.garbage_bytes = 0
        self.dtype = event_dtype(self.model.n_pmt)

    # ---- fault side door -----------------------------------------------------------------------
    def drop(self, n: int) -> None:
        """The next ``n`` event blocks are lost in the head (counters consumed)."""
        self._drop_next += int(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        self.queue_error(message, n, code)

    # ---- DeviceInterface ---------------------------------------------------------------------------
    def on_connect(self, t: float) -> bytes:
        self.codec = AngerConnection("device")
        return b""

    def on_disconnect(self, t: float) -> None:
        self.state, self._next_us = "stopped", None

    def on_bytes(self, data: bytes, t: float) -> bytes:
        self.codec.receive_data(data)
        out: list[bytes] = []
        while True:
            ev = self.codec.next_event()
            if not ev:
                break
            if isinstance(ev, Command):
                injected = self.take_injected_error()
                if injected is not None:
                    code = ReplyCode.DEVICE_FAULT if injected[1] is None else injected[1]
                    out.append(self.codec.send(Reply(ev.request_id, int(code), injected[0])))
                else:
                    code, text = self.handle_command(ev.text, t)
                    out.append(self.codec.send(Reply(ev.request_id, int(code), text)))
            elif isinstance(ev, BadFrame):
                self.bad_frames += 1
            elif isinstance(ev, Garbage):
                self.garbage_bytes += ev.nbytes
        return b"".join(out)

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

    def handle_command(self, text: str, t: float) -> tuple[ReplyCode, str]:
        words = text.strip().split()
        if not words:
            return ReplyCode.UNKNOWN_COMMAND, "empty command"
        cmd = words[0].upper()
        try:
            if cmd == "GET" and len(words) > 1 and words[1].upper() == "STATUS":
                k, ang = self.angle_at(self._next_us or 0)
                return ReplyCode.OK, (f"state={self.state} stop={k} angle_deg={ang:g} blocks_sent={self.blocks_sent}")
            if cmd == "GET" and len(words) > 1 and words[1].upper() == "CONFIG":
                cfg = self.model.config()
                cfg.update({"stops": self.stops, "dwell_s": self.dwell_s, "block_us": self.block_us,
                            "n_pmt": self.model.n_pmt, "time_unit": "us", "energy_unit": "ADC counts"})
                return ReplyCode.OK, json.dumps(cfg)
            if cmd == "START":
                if self.state != "running":
                    now = int(t * 1e6)
                    now -= now % self.block_us
                    self.state, self._next_us, self._start_us = "running", now, now
                return ReplyCode.OK, ""
            if cmd == "STOP":
                self.state, self._next_us = "stopped", None
                return ReplyCode.OK, ""
            if cmd == "SET":
                if len(words) < 3:
                    return ReplyCode.BAD_ARGUMENT, "SET needs a setting and a value"
                if self.state == "running":
                    return ReplyCode.BUSY, "stop acquisition first"
                what, v = words[1].upper(), float(words[2])
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
                return ReplyCode.UNKNOWN_COMMAND, f"unknown setting {what}"
        except (ValueError, IndexError) as exc:
            return ReplyCode.BAD_ARGUMENT, str(exc)[:200]
        return ReplyCode.UNKNOWN_COMMAND, f"unknown command {words[0]}"


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
