"""The simulators' fault-injection side door, reachable from the CLI.

A :class:`FaultServer` (ZeroMQ ROUTER, loopback) fronts one or more running
:class:`~medacq.simulators.adapters.SimulatorServer` s. ``medacq up`` serves one for the whole
rig on base port + 4; ``medacq sim --faults PORT`` for a single simulator. ``medacq fault SIM
FAULT [KEY=VALUE ...]`` sends a request::

    {"sim": "synth0", "fault": "pull_cable", "args": {"refuse_s": 2}}

Faults on the wire (the adapter's :class:`~medacq.simulators.adapters.FaultInjector`, every
simulator): ``pull_cable`` (refuse_s), ``stall`` (seconds), ``corrupt`` (nbytes), ``garbage``
(nbytes), ``slow_replies`` (delay_s). Faults in the device, through the one typed
:class:`~medacq.simulators._interface.DeviceFaults` interface every simulator implements:
``drop`` (n: packets/frames/samples lost at the device) and ``device_error`` (message, n, code:
the device answers its next n commands with its own error reply). A device that cannot show one
says why (:class:`~medacq.simulators._interface.FaultNotSupported`, reported as an error).
``list`` and ``status`` report simulators and fault counters; ``status`` also gives each device's
physical output as its model sees it (``output``: ``exposing``/``source_on`` of an X-ray panel,
``transmitting`` of an ultrasound probe, ``injecting`` of an EIT device), so a tool can time a
safe state to the device's own source-off.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import zmq

from medacq.simulators._interface import DeviceFaults
from medacq.simulators.adapters import SimulatorServer

__all__ = ["FaultServer", "apply_fault", "FAULTS"]

FAULTS = ("pull_cable", "stall", "corrupt", "garbage", "slow_replies", "drop", "device_error", "trigger",
          "trigger_train")

_DEVICE_ERROR_ARGS = frozenset({"message", "n", "code"})


def apply_fault(server: SimulatorServer, fault: str, args: dict[str, Any]) -> dict[str, Any]:
    """Apply one fault to a running simulator. ValueError for unknown faults, bad arguments,
    or a fault the device cannot show (:class:`~medacq.simulators._interface.FaultNotSupported`)."""
    f = server.faults
    device: DeviceFaults = server.interface
    try:
        if fault == "pull_cable":
            f.pull_cable(float(args.get("refuse_s", 0.0)))
        elif fault == "stall":
            f.stall(float(args["seconds"]))
        elif fault == "corrupt":
            f.corrupt(int(args["nbytes"]))
        elif fault == "garbage":
            f.garbage(int(args["nbytes"]))
        elif fault == "slow_replies":
            f.slow_replies(float(args["delay_s"]))
        elif fault == "drop":
            server.call(device.drop, int(args.get("n", 1)))
        elif fault == "device_error":
            unknown = set(args) - _DEVICE_ERROR_ARGS
            if unknown:
                raise ValueError(f"device_error takes message, n, code; not {', '.join(sorted(unknown))}")
            code = args.get("code")
            if isinstance(code, str):
                code = int(code, 0)  # "0x81" as well as "129"
            server.call(device.inject_error, str(args.get("message", "device fault")), int(args.get("n", 1)),
                        None if code is None else int(code))
        elif fault in ("trigger", "trigger_train"):  # a pulse on the rig trigger bus this device is cabled to
            dev = getattr(server.interface, "inner", server.interface)
            cable = getattr(dev, "trigger", None)
            if cable is None:
                raise ValueError(f"{fault}: no trigger input is cabled to this simulator (RigEntry trigger_line)")
            from medacq.simulators.trigger_bus import apply_trigger_fault

            return {"address": server.address, "applied": fault, **apply_trigger_fault(cable.bus, fault, args)}
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    except KeyError as exc:
        raise ValueError(f"{fault} needs argument {exc.args[0]!r}") from None
    except (TypeError,) as exc:
        raise ValueError(f"{fault}: {exc}") from None
    return {"address": server.address, "applied": fault, "args": args}


#: the device's physical output, where it has one (X-ray tube, ultrasound probe, EIT current source)
_OUTPUT_STATE = ("exposing", "source_on", "transmitting", "injecting")


def _status(server: SimulatorServer) -> dict[str, Any]:
    f = server.faults
    iface = server.interface
    output = {a: bool(server.call(getattr, iface, a)) for a in _OUTPUT_STATE if hasattr(iface, a)}
    return {"address": server.address, "connections": server.connections, "bytes_out": server.bytes_out,
            "bytes_overrun": server.bytes_overrun, "cable_pulls": f.cable_pulls,
            "bytes_corrupted": f.bytes_corrupted, "garbage_sent": f.garbage_sent,
            "error": repr(server.error) if server.error else None, "output": output}


class FaultServer:
    """Serve fault requests for named simulators on a loopback ROUTER socket."""

    def __init__(self, servers: dict[str, SimulatorServer], endpoint: str,
                 context: zmq.Context | None = None) -> None:
        self.servers = servers
        self.endpoint = endpoint
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 65536)
        self.sock.bind(endpoint)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faults", daemon=True)

    def start(self) -> "FaultServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(2)

    def handle(self, body: bytes) -> dict[str, Any]:
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            fault = req.get("fault")
            if fault == "list":
                return {"ok": True, "result": sorted(self.servers)}
            if fault == "status":
                return {"ok": True, "result": {n: _status(s) for n, s in self.servers.items()}}
            name = req.get("sim")
            if name not in self.servers:
                raise ValueError(f"no simulator named {name!r}; simulators: {', '.join(sorted(self.servers))}")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
            result = apply_fault(self.servers[name], str(fault), args)
            result["sim"] = name
            return {"ok": True, "result": result}
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": str(exc)}

    def _loop(self) -> None:
        while not self._halt.is_set():
            if not self.sock.poll(100):
                continue
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            env, body = parts[:-1], parts[-1]
            reply = json.dumps(self.handle(body)).encode()
            try:
                self.sock.send_multipart([*env, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.sock.close(0)
