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

SIMULATOR_NICE = 5
"""Niceness added to the simulators' process by ``medacq up`` (after its children started)."""


def cmd_sim(args: argparse.Namespace) -> int:
    from medacq.simulators.adapters import PortInUseError, SimulatorServer
    from medacq.simulators.registry import make_simulator

    try:
        iface = make_simulator(args.kind, **parse_kv(args.option))
    except (KeyError, ValueError) as exc:
        raise CliError(str(exc).strip("'\""), 2) from None
    try:
        if args.tcp is not None:
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
    print(srv.address if srv.transport == "pty" else f"{srv.address}  ({srv.tcp_address})", flush=True)
    wait_for_signal(args.for_s)
    if faults is not None:
        faults.stop()
    srv.stop()
    if srv.error:
        raise CliError(f"simulator failed: {srv.error}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable
    from medacq.daemon.common.config import dump_config
    from medacq.simulators.rig import SimulatedRig
    from medacq.daemon.cli.status_view import StatusView

    from medacq.simulators.faults import FaultServer

    workdir = Path(tempfile.mkdtemp(prefix="medacq-up-"))
    rig = SimulatedRig(paced=True).start()
    procs: list[subprocess.Popen] = []
    faults = None
    try:
        faults = FaultServer(rig.servers, f"tcp://127.0.0.1:{args.base_port + 4}").start()
        doc = rig.config(args.base_port)
        cfg_path = workdir / "rig.toml"
        cfg_path.write_text(dump_config(doc))
        cfg = load_rig(str(cfg_path))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for sub in ("run", "recon"):
            logf = open(workdir / f"{sub}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", sub, "--config", str(cfg_path)],
                                          stdout=logf, stderr=subprocess.STDOUT, env=env))
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
        os.nice(SIMULATOR_NICE)
        view = StatusView(cfg, interactive=sys.stdout.isatty() and not os.environ.get("CI"))
        view.run(args.for_s)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if faults is not None:
            faults.stop()
        rig.stop()


def _start_view(procs: list, cfg_path: Path, port: int, workdir: Path, env: dict) -> None:
    """``medacq up``: run ``medacq view`` as its own process and print its URL (a failure only warns)."""
    import socket

    logf = open(workdir / "view.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", "view", "--config", str(cfg_path),
                          "--port", str(port)], stdout=logf, stderr=subprocess.STDOUT, env=env)
    procs.append(p)
    deadline = time.monotonic() + 15
    while p.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                print(f"medacq up: live view at http://127.0.0.1:{port}/", flush=True)
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
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("sim", help="serve a simulated device on a pty (default) or TCP port")
    sp.add_argument("kind")
    sp.add_argument("option", nargs="*", help="simulator options as KEY=VALUE (JSON values)")
    sp.add_argument("--tcp", metavar="HOST:PORT", help="serve on TCP instead of a pty")
    sp.add_argument("--name", help="pty link name")
    sp.add_argument("--link-dir", help="folder for the pty link")
    sp.add_argument("--fast", action="store_true", help="unpaced: as fast as the host reads")
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

