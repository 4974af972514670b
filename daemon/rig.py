"""The built-in simulated rig that ``medacq up`` runs: every simulator that exists.

:data:`DEFAULT_RIG` lists one entry per simulated instrument: which simulator to serve
(and how), which driver reads it, with which settings. A device family adds its entry
here. :class:`SimulatedRig` starts the simulators in this process and writes the rig
config the daemon and the reconstruction stage are then started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator

__all__ = ["RigEntry", "DEFAULT_RIG", "SimulatedRig", "endpoints_for"]


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
    """

    name: str
    sim_kind: str
    driver_kind: str
    transport: Literal["pty", "tcp"] = "pty"
    address: Literal["serial", "tcp", "visa"] = "serial"
    sim_options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


DEFAULT_RIG: list[RigEntry] = [
    RigEntry("synth0", "synthetic", "synthetic", "pty", "serial", {"seed": 1},
             {"shape": [8, 64], "dtype": "<f4", "rate_hz": 50.0, "seed": 1}),
]


def endpoints_for(base_port: int) -> dict[str, dict[str, str]]:
    """The four loopback endpoints of a rig, on consecutive ports from ``base_port``."""
    ep = lambda i: f"tcp://127.0.0.1:{base_port + i}"  # noqa: E731
    return {
        "daemon": {"data_endpoint": ep(0), "control_endpoint": ep(1)},
        "recon": {"data_endpoint": ep(2), "control_endpoint": ep(3)},
    }


class SimulatedRig:
    """Serve every simulator of a rig in this process and describe the rig as a config."""

    def __init__(self, entries: list[RigEntry] | None = None, paced: bool = True) -> None:
        self.entries = list(DEFAULT_RIG if entries is None else entries)
        self.paced = paced
        self.servers: dict[str, SimulatorServer] = {}

    def start(self) -> "SimulatedRig":
        try:
            for e in self.entries:
                iface = make_simulator(e.sim_kind, **e.sim_options)
                self.servers[e.name] = SimulatorServer(iface, e.transport, paced=self.paced, name=e.name).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()
        self.servers.clear()

    def address(self, e: RigEntry) -> str:
        s = self.servers[e.name]
        if e.address == "tcp":
            return s.tcp_address
        if e.address == "visa":
            return f"TCPIP::{s.host}::{s.port}::SOCKET"
        return s.address

    def config(self, base_port: int = 5555, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The rig config document (see :func:`medacq.daemon.config.parse_config`)."""
        doc: dict[str, Any] = endpoints_for(base_port)
        doc["device"] = [
            {"name": e.name, "kind": e.driver_kind, "address": self.address(e), "settings": dict(e.settings)}
            for e in self.entries
        ]
        for k, v in (extra or {}).items():
            doc.setdefault(k, {}).update(v)
        return doc
