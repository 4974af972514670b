"""``medacq up --rig RIG.toml``: one rig started across named hosts, and ``medacq rig-host``, its part on each.

``up --rig`` (:func:`cmd_up_rig`) validates the rig file (:mod:`medacq.daemon.common.rigfile`)
and refuses it before anything starts; then, for every ``[[host]]``, runs ``LAUNCH... MEDACQ...
rig-host --host NAME`` and writes that host's part (its rig config and which of its devices are
simulated) as one JSON line to the command's stdin, so nothing has to be copied to the host.
``rig-host`` (:func:`cmd_rig_host`) serves the host's simulated devices from its own process,
writes the config into a private folder there, starts ``medacq run`` and ``medacq recon`` on it
as its children (:func:`medacq.daemon.common.procs.spawn_module`: they die with it), prints one
JSON line (the folder, the devices' addresses) and stays until its stdin closes, or SIGTERM /
SIGINT / SIGHUP, or one of its children ends; then it stops them all.

The reconstruction stage takes one daemon (``recon_source`` is one endpoint and it asks that
daemon's control socket for descriptors), so each host runs its own stage beside its daemon: raw
frames never cross the network to be reconstructed, and ``recon/<device>`` comes from the device's
host. ``up --rig`` waits until every daemon answers ``ping`` with the CLI's key, prints every
endpoint, and at ``--for``, Ctrl-C, SIGTERM or SIGHUP stops every part: it closes each launcher's
stdin (ssh forwards the end of file; ``ip netns exec`` is the ``rig-host`` process itself), waits,
then signals the launchers that are left (SIGTERM, SIGKILL after a grace period). If ``up``
itself is killed, its end of every stdin pipe closes with it: each host stops its part all the same.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from medacq.daemon.cli._common import CliError, load_rig
from medacq.daemon.common.procs import SHUTDOWN_BOUND_S, exit_within, spawn_module, stop_processes

__all__ = ["cmd_up_rig", "cmd_rig_host", "register", "simulator_entry"]

_CLI = "medacq.daemon.cli"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT_S = 60.0
"""How long (s) ``up --rig`` waits for every host's part to report and every daemon to answer ``ping``."""
HOST_STOP_S = 20.0
"""How long (s) a host's part may take to stop after its stdin closed: its children's grace
(5 s, then SIGKILL) and the simulators; after that ``up --rig`` signals the launcher."""


def simulator_entry(name: str, kind: str, options: dict[str, Any], settings: dict[str, Any]) -> Any:
    """The built-in simulator for a ``simulate = true`` device of driver ``kind`` (a
    :class:`medacq.simulators.rig.RigEntry` like ``medacq up``'s, with ``options`` over its
    simulator options); ``ValueError`` when no simulator of the default rig serves that kind."""
    from medacq.simulators.rig import DEFAULT_RIG, RigEntry

    for e in DEFAULT_RIG:
        if e.driver_kind == kind:
            return RigEntry(name, e.sim_kind, e.driver_kind, e.transport, e.address, {**e.sim_options, **options},
                            dict(settings), e.ports)
    kinds = sorted({e.driver_kind for e in DEFAULT_RIG})
    raise ValueError(f"no built-in simulator for device kind {kind!r} (simulated kinds: {', '.join(kinds)})")


# -- the host's side: medacq rig-host ------------------------------------------------------
def cmd_rig_host(args: argparse.Namespace) -> int:
    """One host's part of a rig (module doc); its part arrives as one JSON line on stdin."""
    from medacq.daemon.common.config import dump_config
    from medacq.daemon.common.interpreter import freeze_heap
    from medacq.simulators.rig import SIMULATOR_NICE, SimulatedRig, lower_priority

    stop = threading.Event()
    old = {s: signal.signal(s, lambda _n, _f: stop.set()) for s in _STOP_SIGNALS}
    line = sys.stdin.buffer.readline()
    try:
        part = json.loads(line)
        doc, simulate = part["config"], part.get("simulate", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"expected the host's part as one JSON line on stdin ({type(exc).__name__}: {exc})", 2) from None

    def lifeline() -> None:  # stdin closed (the launcher ended, `up` ended): stop
        try:
            while os.read(sys.stdin.fileno(), 4096):  # nothing more is sent: only the end of file counts
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=lifeline, name="rig-host-stdin", daemon=True).start()
    procs: list[subprocess.Popen[bytes]] = []
    rig = None
    try:
        try:
            entries = [simulator_entry(d["name"], d["kind"], simulate[d["name"]], d.get("settings", {}))
                       for d in doc.get("device", []) if d["name"] in simulate]
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
        rig = SimulatedRig(entries, paced=True).start()
        for d in doc.get("device", []):
            for e in entries:
                if e.name == d["name"]:
                    d["address"] = rig.address(e)
        workdir = Path(tempfile.mkdtemp(prefix=f"medacq-rig-{args.host}-"))
        cfg_path = workdir / "rig.toml"
        cfg_path.write_text(dump_config(doc))
        cfg = load_rig(str(cfg_path))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        parts = ["run"] + (["recon"] if cfg.recon.enabled else [])
        for sub in parts:
            procs.append(spawn_module(_CLI, [sub, "--config", str(cfg_path)], workdir / f"{sub}.log", env))
        lower_priority(SIMULATOR_NICE)  # the simulators stand for hardware: the daemon and the stage go first
        freeze_heap("simulators started")
        print(json.dumps({"host": args.host, "workdir": str(workdir), "pid": os.getpid(),
                          "children": {sub: p.pid for sub, p in zip(parts, procs)},
                          "devices": {d["name"]: d["address"] for d in doc.get("device", [])}}), flush=True)
        while not stop.wait(0.2):
            for sub, p in zip(parts, procs):
                if p.poll() is not None:
                    tail = (workdir / f"{sub}.log").read_text(errors="replace")[-800:].strip()
                    raise CliError(f"host {args.host}: `medacq {sub}` exited (code {p.returncode}):\n{tail}")
        return 0
    finally:
        exit_within(HOST_STOP_S)  # whatever hangs below, this process ends (and its children with it)
        stop_processes(procs)
        if rig is not None:
            rig.stop()
        for s, h in old.items():
            signal.signal(s, h)


# -- the operator's side: medacq up --rig ---------------------------------------------------
@dataclass
class _Part:
    """One host's part while ``up --rig`` runs it."""

    host: Any  # RigHost
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    _buf: bytes = b""

    def read_ready(self) -> bool:
        """Read what the part printed so far; True once its JSON line is complete."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
            if b"\n" in self._buf:
                line = self._buf.split(b"\n", 1)[0]
                try:
                    self.ready = json.loads(line)
                except ValueError:
                    raise CliError(f"host {self.host.name}: unexpected output from its part: {line[:200]!r}") from None
                return True
        return False

    def failure(self, what: str) -> CliError:
        tail = self.log.read_text(errors="replace")[-1200:].strip() if self.log.exists() else ""
        return CliError(f"host {self.host.name}: {what}" + (f":\n{tail}" if tail else ""))


def _host_argv(host: Any) -> list[str]:
    """The command that runs the host's part there (``ssh``: one shell-quoted string)."""
    medacq = host.medacq or (["medacq"] if host.launch else [sys.executable, "-m", _CLI])
    cmd = [*medacq, "rig-host", "--host", host.name]
    if host.launch and os.path.basename(host.launch[0]) == "ssh":
        return [*host.launch, shlex.join(cmd)]
    return [*host.launch, *cmd]


def _load(path: str) -> Any:
    from medacq.daemon.acquisition.devices import check_devices
    from medacq.daemon.common.config import ConfigError
    from medacq.daemon.common.rigfile import load_rig_file
    from medacq.daemon.recon.registry import check_recon_settings

    try:
        return load_rig_file(path, (check_devices, check_recon_settings))
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


def cmd_up_rig(args: argparse.Namespace) -> int:
    """``medacq up --rig RIG.toml`` (module doc)."""
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable
    from medacq.daemon.common.rigfile import host_configs
    from medacq.daemon.common.security import ToolKeyError, tool_keys

    rig = _load(args.rig)
    problems = []
    for i, d in enumerate(rig.device):
        if d.simulate:
            try:
                simulator_entry(d.name, d.kind, d.sim_options, d.settings)
            except ValueError as exc:
                problems.append(f"device[{i}].simulate: {exc}")
    for i, h in enumerate(rig.host):
        if h.launch and shutil.which(h.launch[0]) is None:
            problems.append(f"host[{i}].launch: {h.launch[0]!r} is not a command here")
    try:
        curve = tool_keys(rig.security, "cli")
    except ToolKeyError as exc:
        problems.append(f"security: the CLI's key (to ping every daemon): {exc}")
    if problems:
        raise CliError(f"{args.rig}: {len(problems)} problem(s); nothing started\n  " + "\n  ".join(problems), 2)

    docs = host_configs(rig)
    workdir = Path(tempfile.mkdtemp(prefix="medacq-up-rig-"))
    parts = [_Part(h, _host_argv(h), workdir / f"{h.name}.log") for h in rig.host]
    stopping = threading.Event()
    old = {s: signal.signal(s, lambda _n, _f: stopping.set()) for s in _STOP_SIGNALS}
    try:
        for part in parts:
            doc = docs[part.host.name]
            simulate = {d.name: d.sim_options for d in rig.device if d.host == part.host.name and d.simulate}
            with open(part.log, "wb") as logf:
                part.proc = subprocess.Popen(part.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                             process_group=0)  # Ctrl-C reaches up alone; up stops the parts
            stdin: IO[bytes] = part.proc.stdin  # type: ignore[assignment]
            stdin.write(json.dumps({"config": doc, "simulate": simulate}).encode() + b"\n")
            stdin.flush()
        print(f"medacq up --rig: starting {len(parts)} host(s) ({', '.join(p.host.name for p in parts)}; "
              f"logs in {workdir})", flush=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(parts)
        while waiting and not stopping.is_set():
            for part in list(waiting):
                if part.read_ready():
                    waiting.remove(part)
                elif part.proc is not None and part.proc.poll() is not None:
                    raise part.failure(f"its part exited at start (code {part.proc.returncode})")
            if time.monotonic() > deadline:
                raise CliError(f"no answer from host(s) {', '.join(p.host.name for p in waiting)} within "
                               f"{READY_TIMEOUT_S:.0f} s (logs in {workdir})")
            time.sleep(0.05)
        for part in parts:
            if stopping.is_set():
                break
            ep = docs[part.host.name]["daemon"]["control_endpoint"]
            with ControlClient(ep, timeout=0.5, curve=curve) as c:
                while not stopping.is_set():
                    if part.proc is not None and part.proc.poll() is not None:
                        raise part.failure(f"its part exited (code {part.proc.returncode})")
                    try:
                        c.request("ping")
                        break
                    except DaemonUnreachable:
                        if time.monotonic() > deadline:
                            raise part.failure(f"its daemon at {ep} did not answer ping within "
                                               f"{READY_TIMEOUT_S:.0f} s") from None
        if stopping.is_set():
            return 0
        data = []
        staged = rig.recon.get("enabled", True) is not False
        for part in parts:
            doc, h = docs[part.host.name], part.host
            via = " ".join(h.launch) or "this machine"
            devs = ", ".join(f"{n} at {a}" for n, a in part.ready.get("devices", {}).items()) or "no devices"
            stage = (f"recon data {doc['recon']['data_endpoint']} control {doc['recon']['control_endpoint']}"
                     if staged else "no reconstruction stage")
            print(f"  {h.name} ({h.address}, via {via}): daemon data {doc['daemon']['data_endpoint']} control "
                  f"{doc['daemon']['control_endpoint']}; {stage}; {devs}; its folder {part.ready.get('workdir')}",
                  flush=True)
            data += [doc["daemon"]["data_endpoint"]] + ([doc["recon"]["data_endpoint"]] if staged else [])
        print(f"medacq up --rig: every daemon answers; all streams: {' '.join(data)}", flush=True)
        end = None if args.for_s is None else time.monotonic() + args.for_s
        while not stopping.is_set() and (end is None or time.monotonic() < end):
            for part in parts:
                if part.proc is not None and part.proc.poll() is not None:
                    raise part.failure(f"its part ended (code {part.proc.returncode}); stopping the rig")
            stopping.wait(0.2)
        return 0
    finally:
        _stop_parts(parts)
        for s, h in old.items():
            signal.signal(s, h)
        print("medacq up --rig: stopped", flush=True)


def _stop_parts(parts: list[_Part]) -> None:
    """Close every part's stdin (its lifeline), give them :data:`HOST_STOP_S` in all, then SIGTERM
    the launchers left (SIGKILL after 5 s)."""
    procs = [p.proc for p in parts if p.proc is not None]
    for p in procs:
        for f in (p.stdin, p.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
    deadline = time.monotonic() + HOST_STOP_S
    for p in procs:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    stop_processes([p for p in procs if p.poll() is None])


def register(sub: Any) -> None:
    """Add ``rig-host`` (``up --rig``'s part on each host; not for people) to the ``medacq`` parser."""
    sp = sub.add_parser("rig-host", description="one host's part of `medacq up --rig` (its part as one JSON line on stdin)")
    sp.add_argument("--host", required=True, help="the host's name in the rig file")
    sp.set_defaults(fn=cmd_rig_host)
