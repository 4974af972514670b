"""The built-in simulated rig that ``medacq up`` runs: every simulator that exists.

:data:`DEFAULT_RIG` lists one entry per simulated instrument: which simulator to serve
(and how), which driver reads it, with which settings. A device family adds its entry
here. :class:`SimulatedRig` starts the simulators in this process and writes the rig
config the daemon and the reconstruction stage are then started with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator
from medacq.simulators.trigger_bus import TriggerBus, attach, drive

__all__ = ["RigEntry", "DEFAULT_RIG", "SIMULATOR_NICE", "SimulatedRig", "endpoints_for", "lower_priority"]


@dataclass(frozen=True)
class RigEntry:
    """One simulated instrument of the default rig.

    Attributes:
        name: stream name.
        sim_kind: simulator kind (:mod:`medacq.simulators.registry`).
        driver_kind: driver kind (:mod:`medacq.drivers.registry`).
        transport: how the simulator is served: ``pty`` or ``tcp``.
        address: which address form the driver takes: ``serial`` (pty path or
            ``socket://``), ``tcp`` (``tcp://h:p``) or ``visa`` (``TCPIP::h::p::SOCKET``).
        sim_options: simulator options; settings: driver settings.
        ports: simulators served for this one instrument (e.g. one OPM sensor per serial
            port); with more than one, simulator ``i`` gets option ``sensor=i``, is served as
            ``<name>-<i>`` (``i`` ≥ 1) and the driver's address lists them comma-separated.
        trigger_line: the simulator's input the rig's trigger bus is cabled to (``D11`` on a
            Cyton, ``GPIO1`` on a HackEEG, ``frame_sync`` on the flat panel, ``trigger_in`` on the
            ultrasound scanner; see
            :mod:`medacq.simulators.trigger_bus`); the driver's settings name it too.
        trigger_out: the simulator's output that drives the rig's trigger bus (``trig_out`` on the
            MRI console, whose driver setting ``trig_out_ms`` makes it pulse at every TR): every
            entry with a ``trigger_line`` then sees those pulses (EEG during fMRI).
    """

    name: str
    sim_kind: str
    driver_kind: str
    transport: Literal["pty", "tcp"] = "pty"
    address: Literal["serial", "tcp", "visa"] = "serial"
    sim_options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    ports: int = 1
    trigger_line: str | None = None
    trigger_out: str | None = None


DEFAULT_RIG: list[RigEntry] = [
    RigEntry("synth0", "synthetic", "synthetic", "pty", "serial", {"seed": 1},
             {"shape": [8, 64], "dtype": "<f4", "rate_hz": 50.0, "seed": 1}),
    # X-ray: a fluoroscopy panel (2x2 binned, 10 fps) and a CT panel (4x4, 20 projections/s)
    RigEntry("xr0", "flatpanel", "flatpanel", "tcp", "visa", {"seed": 31},
             {"mode": "FLUORO", "binning": 2, "exposure_s": 0.1}),
    RigEntry("ct0", "flatpanel", "flatpanel", "tcp", "visa", {"seed": 32},
             {"mode": "CT", "binning": 4, "exposure_s": 0.05, "ct_projections": 180}),
    RigEntry("eit0", "sciospec", "sciospec", "pty", "serial", {"n_el": 16, "seed": 2},
             {"n_el": 16, "fps": 20.0, "frequency_hz": 50e3, "amplitude_a": 1e-3}),
    RigEntry("eit1", "openeit", "openeit", "pty", "serial", {"fps": 4.0, "seed": 3}, {"n_el": 16, "fps": 4.0}),
    # EEG and EKG: ~20-ms frames (3 samples at the daisy Cyton's 125 Hz, 10 at 500 SPS), not the
    # biosignal default of 40 ms, for the reason MEG's are (below): a frame's age counts from its
    # first sample. Session 10, bench rig, two runs: recon age p50 eeg0 20-21 / ekg0 23-24 ms
    # (34-36 / 41-44 with 40-ms frames), p99 47 and 70 / 52 and 74 ms (69-73 / 69-83 in six runs
    # with 40-ms frames: the tail follows the machine's load more than the frame)
    RigEntry("eeg0", "cyton", "cyton", "pty", "serial", {"seed": 11, "daisy": True},
             {"daisy": True, "frame_samples": 3}),
    RigEntry("ekg0", "hackeeg", "hackeeg", "pty", "serial", {"seed": 12, "rate": 500},
             {"rate": 500, "mode": "messagepack", "frame_samples": 10}),
    # MEG: 20-ms frames (4 samples at 200 Hz), not the biosignal default of 40 ms: the sensors'
    # merge already holds a frame for the slowest of 3 serial ports, and a frame's age counts
    # from its first sample, so shorter frames keep recon/meg0 within 100 ms under load
    RigEntry("meg0", "quspin", "quspin", "pty", "serial", {"seed": 13}, {"frame_samples": 4}, ports=3),
    # 3 angles at 20 B-mode frames/s: light enough to beamform live beside the whole rig on a laptop
    RigEntry("us0", "us", "ultrasound", "tcp", "tcp", {"angles": 3, "prf_hz": 60.0, "seed": 21},
             {"angles": 3, "prf_hz": 60.0}),
]


SIMULATOR_NICE = 5
"""Niceness added to the process hosting a simulated rig's simulators (``medacq up``, ``medacq bench
rig``), every thread of it (:func:`lower_priority`): on a real rig the devices are separate
hardware; here they must not take the daemon's and the reconstruction stage's cores."""


def lower_priority(nice: int = SIMULATOR_NICE) -> int:
    """Add ``nice`` to the niceness of every thread of this process (capped at 19); returns how
    many threads were changed.

    On Linux niceness belongs to each thread: ``os.nice`` changes only the calling one (the
    simulators' server threads, started before, kept 0), and a thread inherits its creator's
    niceness when it starts. So this walks ``/proc/self/task``; threads started afterwards by
    any of these threads inherit the lower priority. Elsewhere (no ``/proc``) ``os.nice``, which
    is per process there. A thread that ends meanwhile is skipped."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        os.nice(nice)
        return 1
    changed = 0
    for tid in tids:
        try:
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, now + nice))
            changed += 1
        except (ProcessLookupError, PermissionError):
            continue
    return changed


def endpoints_for(base_port: int) -> dict[str, dict[str, Any]]:
    """The four loopback endpoints of a rig, on consecutive ports from ``base_port``.

    A simulated rig is a bench: every local client of its daemon is an operator
    (``local_operator``; TCP loopback alone gives reader rights).
    """
    ep = lambda i: f"tcp://127.0.0.1:{base_port + i}"  # noqa: E731
    return {
        "daemon": {"data_endpoint": ep(0), "control_endpoint": ep(1), "local_operator": True},
        "recon": {"data_endpoint": ep(2), "control_endpoint": ep(3)},
    }


class SimulatedRig:
    """Serve every simulator of a rig in this process and describe the rig as a config."""

    def __init__(self, entries: list[RigEntry] | None = None, paced: bool = True) -> None:
        self.entries = list(DEFAULT_RIG if entries is None else entries)
        self.paced = paced
        self.servers: dict[str, SimulatorServer] = {}
        #: the rig's one TTL line, cabled to every entry with a ``trigger_line``
        self.trigger_bus = TriggerBus()

    def start(self) -> "SimulatedRig":
        try:
            for e in self.entries:
                for i in range(e.ports):
                    opts = {**e.sim_options, "sensor": i} if e.ports > 1 else e.sim_options
                    name = e.name if i == 0 else f"{e.name}-{i}"
                    iface = make_simulator(e.sim_kind, **opts)
                    self.servers[name] = SimulatorServer(iface, e.transport, paced=self.paced, name=name).start()
                    if e.trigger_line and i == 0:
                        attach(self.servers[name], self.trigger_bus, e.trigger_line)
                    if e.trigger_out and i == 0:
                        drive(self.servers[name], self.trigger_bus, e.trigger_out)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # every server told first, then each waited for: eleven threads that each need a CPU to see
        # their stop (nice 5, a loaded machine) take about the time of the slowest, not the sum
        for s in self.servers.values():
            s.request_stop()
        for s in self.servers.values():
            s.stop()
        self.servers.clear()

    def lateness_ms(self, reset: bool = False) -> dict[str, dict[str, float | int]]:
        """Per simulator, how late its due work ran (ms: ``p50``, ``p99``, ``max``, and ``n``
        values; :attr:`SimulatorServer.late_s`) since the start or the last ``reset``; with
        ``reset``, the record starts again after reading."""
        out: dict[str, dict[str, float | int]] = {}
        for name, srv in self.servers.items():
            q = srv.late_s
            # popleft/list are atomic under the GIL: what the server thread appends meanwhile
            # stays for the next call
            vals = sorted([q.popleft() for _ in range(len(q))] if reset else list(q))
            if vals:
                out[name] = {"n": len(vals), "p50": round(vals[len(vals) // 2] * 1e3, 2),
                             "p99": round(vals[min(len(vals) - 1, int(0.99 * len(vals)))] * 1e3, 2),
                             "max": round(vals[-1] * 1e3, 2)}
        return out

    def address(self, e: RigEntry) -> str:
        if e.ports > 1:
            return ",".join(self.address(RigEntry(n, e.sim_kind, e.driver_kind, e.transport, e.address))
                            for n in [e.name, *(f"{e.name}-{i}" for i in range(1, e.ports))])
        s = self.servers[e.name]
        if e.address == "tcp":
            return s.tcp_address
        if e.address == "visa":
            return f"TCPIP::{s.host}::{s.port}::SOCKET"
        return s.address

    def config(self, base_port: int = 5555, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The rig config document (see :func:`medacq.daemon.common.config.parse_config`)."""
        doc: dict[str, Any] = endpoints_for(base_port)
        doc["device"] = [
            {"name": e.name, "kind": e.driver_kind, "address": self.address(e), "settings": dict(e.settings)}
            for e in self.entries
        ]
        for k, v in (extra or {}).items():
            doc.setdefault(k, {}).update(v)
        return doc
