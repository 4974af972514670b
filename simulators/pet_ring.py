"""PET ring front end on the PETsys-style singles link (device role), binding
:class:`~medacq.simulators.pet_model.PetRingModel` to
:class:`~medacq.protocols.petsys.PetsysConnection`.

Commands (text, one reply each, code :class:`~medacq.protocols.petsys.ReplyCode`)::

    GET STATUS              state=<stopped|running> blocks_sent=<n> counter=<n> t_ps=<device time>
    GET CONFIG              JSON: ring geometry, physics, settings, phantom and isotope (truth for the μ-map)
    SET THRESHOLD <keV>     front-end lower energy threshold, 0..700 (applied in the device)
    SET CWINDOW <ps>        coincidence window for the host's sorter, 100..100000 (held and reported)
    SET EWINDOW <lo> <hi>   energy window for the host, keV, 0 <= lo < hi <= 1000 (held and reported)
    SET RATE <singles/s>    singles rate at t = 0, 1e3..2e7 (rescales the phantom's activity)
    START | STOP

Settings are refused with ``BUSY`` while running. Singles go out in blocks covering ``block_ms``
of device time each (device time: ps since the simulator started; it is also the decay clock,
t = 0 being the phantom's calibration time). Unpaced, blocks come as fast as the host reads.
``replay_s``: generate that many seconds once and replay them in a loop, shifted in time (for
ingest benchmarks; the statistics then repeat, decay still applies by thinning). Live generation
manages about 0.5-1 M singles/s on one core, so above ``LIVE_RATE_LIMIT`` (4e5/s) the default is
to replay a 0.5 s pool (``replay_s=0`` forces live generation; a paced simulator that cannot keep
up skips blocks, and the block counter shows it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from medacq.protocols.models.nuclear_phantom import IecBodyPhantom
from medacq.protocols.pet_geometry import PetRing
from medacq.protocols.petsys import PetsysConnection, ReplyCode, SinglesBlock
from medacq.simulators._block_device import BlockDeviceInterface
from medacq.simulators.pet_model import PetPhysics, PetRingModel, SinglesSlice

__all__ = ["PetRingInterface", "make"]


class _Replay:
    """A pool of ``seconds`` of singles replayed in a loop with a time shift. Decay goes on: a
    replayed block keeps each annihilation's singles with probability ``A(t) / A(t_pool)``
    (thinning by annihilation, so pairs stay pairs)."""

    def __init__(self, model: PetRingModel, seconds: float, block_ps: int) -> None:
        n = max(1, int(round(seconds * 1e12 / block_ps)))
        self.slices = [model.generate(k * block_ps, (k + 1) * block_ps) for k in range(n)]
        self.period_ps = n * block_ps
        self.block_ps = block_ps
        self.lam = model.phantom.iso.decay_constant

    def generate(self, t0: int, t1: int) -> SinglesSlice:
        k = (t0 // self.block_ps) % len(self.slices)
        base = self.slices[k]
        shift = t0 - k * self.block_ps
        keep = slice(None)
        if shift:
            factor = float(np.exp(-self.lam * shift * 1e-12))
            loop = shift // self.period_ps
            h = (base.event_id.astype(np.uint64) * np.uint64(2654435761) + np.uint64(loop * 40503)) & np.uint64(0xFFFFFFFF)
            keep = h < np.uint64(int(factor * 2**32))  # type: ignore[assignment]
        s = base.singles[keep].copy()
        s["time_ps"] += shift
        return SinglesSlice(s, base.event_id[keep], base.scattered[keep], base.dead, base.decays)


#: above this singles rate (1/s) the simulator replays a pool unless told otherwise (``replay_s``):
#: live generation runs at about 0.5-1 M singles/s on one core
LIVE_RATE_LIMIT = 4e5
AUTO_REPLAY_S = 0.5


class PetRingInterface(BlockDeviceInterface):
    """The ring's front end on the wire (module doc)."""

    codec: PetsysConnection

    def __init__(self, model: PetRingModel | None = None, *, block_ms: float = 10.0,
                 replay_s: float | None = None) -> None:
        self.model = model or PetRingModel()
        self.block_ps = int(round(block_ms * 1e9))
        self._replay_opt = replay_s
        self.replay_s = self._auto_replay(replay_s)
        self._source: PetRingModel | _Replay = (_Replay(self.model, self.replay_s, self.block_ps) if self.replay_s
                                                else self.model)
        super().__init__()
        self.cwindow_ps = 4000.0
        self.ewindow_kev = (425.0, 650.0)
        self._next: float | None = None  # device time (s) of the next block's start
        self.singles_sent = 0
        self.dropped_counters: list[int] = []
        self.true_randoms = 0

    def _auto_replay(self, replay_s: float | None) -> float:
        if replay_s is not None:
            return float(replay_s)
        return AUTO_REPLAY_S if self.model.singles_rate > LIVE_RATE_LIMIT else 0.0

    def _new_codec(self) -> PetsysConnection:
        return PetsysConnection("device")

    def next_deadline(self) -> float | None:
        if self.state != "running" or self._next is None:
            return None
        return self._next + self.block_ps * 1e-12

    def poll(self, t: float) -> bytes:
        if self.state != "running" or self._next is None:
            return b""
        out: list[bytes] = []
        block_s = self.block_ps * 1e-12
        while self._next + block_s <= t and len(out) < 64:
            t0 = int(round(self._next * 1e12))
            t0 -= t0 % self.block_ps  # blocks sit on a grid of block_ps
            t1 = t0 + self.block_ps
            self._next = t1 * 1e-12
            counter = self.codec.next_block_counter()
            if self._drop_next:
                self._drop_next -= 1
                self.dropped_counters.append(counter)
                self._source.generate(t0, t1)  # the physics goes on
                continue
            sl = self._source.generate(t0, t1)
            out.append(self.codec.send(SinglesBlock(counter, t0, t1, sl.dead, sl.singles)))
            self.blocks_sent += 1
            self.singles_sent += len(sl.singles)
        if self._next + 8 * block_s <= t:  # far behind real time: skip ahead, counters show it
            missed = int((t - self._next) / block_s) - 1
            for _ in range(missed):
                self.dropped_counters.append(self.codec.next_block_counter())
            self._next += missed * block_s
        return b"".join(out)

    def truth(self) -> dict:
        return {**self.model.truth(), "state": self.state, "blocks_sent": self.blocks_sent,
                "singles_sent": self.singles_sent, "dropped_counters": list(self.dropped_counters[-1000:])}

    # ---- commands ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        m = self.model
        return {"device": "medacq-sim pet ring (PETsys TOFPET2-style singles)",
                "geometry": m.ring.to_descriptor(), "physics": m.physics.__dict__.copy(),
                "threshold_kev": m.physics.threshold_kev, "cwindow_ps": self.cwindow_ps,
                "ewindow_kev": list(self.ewindow_kev), "singles_rate": m.singles_rate,
                "block_ps": self.block_ps, "time_unit": "ps", "energy_unit": "keV",
                "time_reference": "simulator start = phantom calibration time",
                "phantom": m.phantom.to_dict(), "isotope": m.phantom.isotope,
                "sensitivity": {"p_det": m.physics.p_det,
                                "positron_fraction": m.phantom.iso.positron_fraction}}

    def _status(self, t: float) -> str:
        return f"state={self.state} blocks_sent={self.blocks_sent} counter={self.codec._block_counter} t_ps={int(t * 1e12)}"

    def _start(self, t: float) -> None:
        self.state, self._next = "running", t

    def _stop(self) -> None:
        self.state, self._next = "stopped", None

    def _set(self, what: str, words: list[str]) -> tuple[ReplyCode, str] | None:
        args = [float(w) for w in words]
        if what == "THRESHOLD":
            if not 0 <= args[0] <= 700:
                return ReplyCode.OUT_OF_RANGE, "threshold must be 0..700 keV"
            self.model.physics = replace(self.model.physics, threshold_kev=args[0])
            return ReplyCode.OK, ""
        if what == "CWINDOW":
            if not 100 <= args[0] <= 100000:
                return ReplyCode.OUT_OF_RANGE, "coincidence window must be 100..100000 ps"
            self.cwindow_ps = args[0]
            return ReplyCode.OK, ""
        if what == "EWINDOW":
            if len(args) != 2:
                return ReplyCode.BAD_ARGUMENT, "EWINDOW needs <lo> <hi> keV"
            if not 0 <= args[0] < args[1] <= 1000:
                return ReplyCode.OUT_OF_RANGE, "energy window needs 0 <= lo < hi <= 1000 keV"
            self.ewindow_kev = (args[0], args[1])
            return ReplyCode.OK, ""
        if what == "RATE":
            if not 1e3 <= args[0] <= 2e7:
                return ReplyCode.OUT_OF_RANGE, "rate must be 1e3..2e7 singles/s"
            m = self.model
            self.model = PetRingModel(m.ring, IecBodyPhantom(ratio=m.phantom.ratio, isotope=m.phantom.isotope),
                                      m.physics, args[0], m.seed)
            self.replay_s = self._auto_replay(self._replay_opt)
            self._source = _Replay(self.model, self.replay_s, self.block_ps) if self.replay_s else self.model
            return ReplyCode.OK, ""
        return None


def make(**options: Any) -> PetRingInterface:
    """Factory for ``medacq sim pet``.

    Options: ``blocks`` (16), ``crystals_per_block`` (24), ``radius_mm`` (400), ``fov_mm`` (330),
    ``slice_mm`` (4), ``singles_rate`` (1e6 /s at t = 0), ``ratio`` (sphere:background, 4),
    ``isotope`` (F-18), ``p_det`` (0.5), ``energy_fwhm`` (0.11), ``ctr_ps`` (300), ``dead_time_ns``
    (200), ``threshold_kev`` (100), ``block_ms`` (10), ``replay_s`` (default: 0.5 above 4e5 singles/s, else
    0 = live), ``seed`` (0),
    ``start`` (False: stream without waiting for ``START``).
    """
    known = {"blocks", "crystals_per_block", "radius_mm", "fov_mm", "slice_mm", "singles_rate", "ratio",
             "isotope", "p_det", "energy_fwhm", "ctr_ps", "dead_time_ns", "threshold_kev", "block_ms",
             "replay_s", "seed", "start"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown pet simulator options: {', '.join(sorted(unknown))}")
    ring = PetRing(**{k: options[k] for k in ("blocks", "crystals_per_block", "radius_mm", "fov_mm", "slice_mm")
                      if k in options})
    phys = PetPhysics(p_det=float(options.get("p_det", 0.5)), energy_fwhm=float(options.get("energy_fwhm", 0.11)),
                      ctr_fwhm_ps=float(options.get("ctr_ps", 300.0)),
                      dead_time_ns=float(options.get("dead_time_ns", 200.0)),
                      threshold_kev=float(options.get("threshold_kev", 100.0)))
    phantom = IecBodyPhantom(ratio=float(options.get("ratio", 4.0)), isotope=str(options.get("isotope", "F-18")))
    rate = float(options.get("singles_rate", 1e6))
    if not 1e3 <= rate <= 2e7:
        raise ValueError("singles_rate must be 1e3..2e7 /s")
    model = PetRingModel(ring, phantom, phys, rate, int(options.get("seed", 0)))
    replay = options.get("replay_s")
    iface = PetRingInterface(model, block_ms=float(options.get("block_ms", 10.0)),
                             replay_s=None if replay is None else float(replay))
    if options.get("start", False):
        iface.state, iface._next = "running", 0.0
    return iface
