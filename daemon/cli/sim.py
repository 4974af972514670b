"""``medacq sim``, ``medacq fault``, ``medacq up``: simulated devices, their fault side door, a whole simulated rig."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medacq.daemon.cli._common import DEFAULT_BASE_PORT, CliError, load_rig, parse_kv, wait_for_signal
from medacq.daemon.common.procs import spawn_module, stop_processes


def cmd_sim(args: argparse.Namespace) -> int:
    from medacq.simulators.adapters import PortInUseError, SimulatorServer
    from medacq.simulators.registry import make_simulator

    try:
        iface = make_simulator(args.kind, **parse_kv(args.option))
    except (KeyError, ValueError) as exc:
        raise CliError(str(exc).strip("'\""), 2) from None
    if args.tcp is not None:
        from medacq.daemon.common.binding import BindError, check_exposure

        try:  # a device protocol has no encryption or authentication: loopback unless asked
            check_exposure("serve a simulated device on", args.tcp, allowed=args.allow_remote,
                           needs="--allow-remote (its protocol has no authentication: anyone who can reach "
                           "the address drives the simulated device)")
        except BindError as exc:
            raise CliError(str(exc), 2) from None
    try:
        if getattr(iface, "transport", None) == "udp":  # GigE Vision cameras: GVCP/GVSP on UDP, --tcp HOST:PORT
            host, _, port = (args.tcp or "127.0.0.1:3956").rpartition(":")
            srv = iface.udp_server(host or "127.0.0.1", int(port))
        elif args.tcp is not None:
            host, _, port = args.tcp.rpartition(":")
            srv = SimulatorServer(iface, "tcp", host=host or "127.0.0.1", port=int(port), paced=not args.fast)
        else:
            srv = SimulatorServer(iface, "pty", paced=not args.fast, name=args.name or args.kind,
                                  link_dir=args.link_dir)
    except PortInUseError as exc:
        raise CliError(str(exc)) from None
    except ValueError:
        raise CliError(f"bad --tcp address {args.tcp!r}; expected HOST:PORT", 2) from None
    srv.start()
    faults = None
    if args.faults is not None:
        from medacq.simulators.faults import FaultServer

        faults = FaultServer({args.name or args.kind: srv}, f"tcp://127.0.0.1:{args.faults}").start()
    print(srv.address if srv.transport in ("pty", "udp") else f"{srv.address}  ({srv.tcp_address})", flush=True)
    wait_for_signal(args.for_s)
    if faults is not None:
        faults.stop()
    srv.stop()
    if srv.error:
        raise CliError(f"simulator failed: {srv.error}")
    return 0


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals on which ``medacq up`` stops its children and exits."""

_CLI = "medacq.daemon.cli"
"""The module ``medacq up`` runs its children with (``python -m medacq.daemon.cli COMMAND ...``)."""


def cmd_up(args: argparse.Namespace) -> int:
    """The whole simulated rig: simulators here, the daemon, the stage and the view as child processes.

    The children never outlive ``up``: SIGINT, SIGTERM and SIGHUP stop them (SIGTERM to each
    child's process group, SIGKILL after 5 s), as does any error here; if ``up`` itself is
    killed (SIGKILL, a crash of the interpreter) the kernel sends them SIGTERM
    (``PR_SET_PDEATHSIG``). With ``--rig RIG.toml``: the rig's parts on its named hosts
    (:func:`medacq.daemon.cli.rig.cmd_up_rig`).
    """
    if args.rig is not None:
        from medacq.daemon.cli.rig import cmd_up_rig

        return cmd_up_rig(args)
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable
    from medacq.daemon.common.config import dump_config
    from medacq.daemon.common.interpreter import freeze_heap
    from medacq.simulators.rig import SIMULATOR_NICE, SimulatedRig, lower_priority
    from medacq.daemon.cli.status_view import StatusView

    from medacq.simulators.faults import FaultServer

    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if not stopping:  # the first one stops the rig; later ones must not interrupt the cleanup
            stopping.append(signum)
            raise KeyboardInterrupt

    old_handlers = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
    procs: list[subprocess.Popen] = []
    faults = None
    rig = None
    try:
        workdir = Path(tempfile.mkdtemp(prefix="medacq-up-"))
        rig = SimulatedRig(paced=True).start()
        faults = FaultServer(rig.servers, f"tcp://127.0.0.1:{args.base_port + 4}").start()
        freeze_heap("simulators started")  # their threads share this process's collector pauses
        doc = rig.config(args.base_port)
        cfg_path = workdir / "rig.toml"
        cfg_path.write_text(dump_config(doc))
        cfg = load_rig(str(cfg_path))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for sub in ("run", "recon"):  # children die with up (medacq.daemon.common.procs)
            procs.append(spawn_module(_CLI, [sub, "--config", str(cfg_path)], workdir / f"{sub}.log", env))
        print(f"medacq up: {len(rig.servers)} simulator(s), daemon and reconstruction stage "
              f"(config and logs in {workdir}; fault side door on port {args.base_port + 4})", flush=True)
        with ControlClient(cfg.daemon.control_endpoint, timeout=0.5) as c:
            deadline = time.monotonic() + 15
            while True:
                for p, name in zip(procs, ("daemon", "recon")):
                    if p.poll() is not None:
                        tail = (workdir / f"{'run' if name == 'daemon' else 'recon'}.log").read_text()[-800:]
                        raise CliError(f"the {name} exited at start (code {p.returncode}):\n{tail.strip()}")
                try:
                    c.request("ping")
                    break
                except DaemonUnreachable:
                    if time.monotonic() > deadline:
                        raise CliError("the daemon did not answer within 15 s") from None
        if not args.no_view:  # the live web page, in its own process
            _start_view(procs, cfg_path, args.view_port, workdir, env)
        # This process hosts the simulators. On a real rig the devices are separate hardware; here
        # they must not take the daemon's and the stage's cores, so they run at lower priority
        # (the children above were started first and keep theirs).
        lower_priority(SIMULATOR_NICE)  # every thread of this process (os.nice: only the calling one)
        view = StatusView(cfg, interactive=sys.stdout.isatty() and not os.environ.get("CI"))
        view.run(args.for_s)  # returns on --for, Ctrl-C, or SIGTERM/SIGHUP (on_signal)
        return 0
    finally:
        stopping.append(0)  # from here on a signal no longer interrupts anything
        stop_processes(procs)
        if faults is not None:
            faults.stop()
        if rig is not None:
            rig.stop()
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _start_view(procs: list, cfg_path: Path, port: int, workdir: Path, env: dict) -> None:
    """``medacq up``: run ``medacq view --operator`` as its own process and print its URL with a fresh
    token (passed to the view in its environment, not on its command line; a failure only warns)."""
    import secrets
    import socket

    token = secrets.token_urlsafe(32)
    from medacq.daemon.bridges.view import VIEW_NICE

    p = spawn_module(_CLI, ["view", "--config", str(cfg_path), "--port", str(port), "--operator"],
                     workdir / "view.log", {**env, "MEDACQ_VIEW_TOKEN": token}, nice=VIEW_NICE)
    procs.append(p)
    deadline = time.monotonic() + 15
    while p.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                print(f"medacq up: live view at http://127.0.0.1:{port}/?token={token}", flush=True)
                return
        except OSError:
            time.sleep(0.1)
    tail = (workdir / "view.log").read_text(errors="replace")[-400:].strip()
    print(f"medacq up: the live view did not start (the rig runs on): {tail}", file=sys.stderr, flush=True)


def cmd_fault(args: argparse.Namespace) -> int:
    import zmq

    endpoint = args.endpoint or f"tcp://127.0.0.1:{args.base_port + 4}"
    if args.sim in ("list", "status"):
        body = {"fault": args.sim}
    else:
        if not args.fault:
            raise CliError("name a fault: pull_cable, stall, corrupt, garbage, slow_replies, drop, device_error", 2)
        body = {"sim": args.sim, "fault": args.fault, "args": parse_kv(args.args)}
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", json.dumps(body).encode()])
        if not sock.poll(int(args.timeout * 1000)):
            raise CliError(f"no simulator side door answers at {endpoint}", 3)
        reply = json.loads(sock.recv_multipart()[-1])
    finally:
        sock.close(0)
    if not reply.get("ok"):
        raise CliError(reply.get("error", "refused"), 1)
    print(json.dumps(reply["result"], indent=2))
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("up", help="run a complete simulated rig with a live status view")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                    help="first of 5 loopback ports: data, control, recon data, recon control, fault side door")
    sp.add_argument("--view-port", type=int, default=8555, help="live web view port (default %(default)s)")
    sp.add_argument("--no-view", action="store_true", help="do not start the live web view")
    sp.add_argument("--rig", metavar="RIG.toml", help="start a rig file's parts on its named hosts ([[host]]: "
                    "address, launch) instead of the simulated rig here (docs/timeline.md, \"Several hosts\")")
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("sim", help="serve a simulated device on a pty (default) or TCP port")
    sp.add_argument("kind")
    sp.add_argument("option", nargs="*", help="simulator options as KEY=VALUE (JSON values)")
    sp.add_argument("--tcp", metavar="HOST:PORT", help="serve on TCP instead of a pty")
    sp.add_argument("--name", help="pty link name")
    sp.add_argument("--link-dir", help="folder for the pty link")
    sp.add_argument("--fast", action="store_true", help="unpaced: as fast as the host reads")
    sp.add_argument("--allow-remote", action="store_true", help="allow --tcp off loopback (the device protocol "
                    "has no authentication; the fault side door always stays on loopback)")
    sp.add_argument("--faults", type=int, metavar="PORT", help="serve the fault side door on 127.0.0.1:PORT")
    sp.add_argument("--for", dest="for_s", type=float)
    sp.set_defaults(fn=cmd_sim)

    sp = sub.add_parser("fault", help="inject a fault into a running simulator (medacq up / medacq sim --faults)")
    sp.add_argument("sim", help="simulator name (e.g. synth0), or 'list' / 'status'")
    sp.add_argument("fault", nargs="?", default="", help="pull_cable | stall | corrupt | garbage | slow_replies | "
                                                          "drop | device_error")
    sp.add_argument("args", nargs="*", help="KEY=VALUE: refuse_s, seconds, nbytes, delay_s, n, ...")
    sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="the rig's first port (side door at +4)")
    sp.add_argument("--endpoint", help="explicit side-door endpoint")
    sp.add_argument("--timeout", type=float, default=3.0)
    sp.set_defaults(fn=cmd_fault)

