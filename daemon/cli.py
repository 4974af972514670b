"""``medacq``: the command line for bench operators and for systemd.

Errors are one clear line and a non-zero exit, not tracebacks (``--debug`` shows them).
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("medacq.cli")

DEFAULT_BASE_PORT = 5555


class CliError(Exception):
    """A failure explained in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# -- helpers ---------------------------------------------------------------------------
def _endpoints(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """(daemon control, recon control, data endpoints) from --config or --base-port."""
    if getattr(args, "config", None):
        cfg = _load(args.config)
        return cfg.daemon.control_endpoint, cfg.recon.control_endpoint, [cfg.daemon.data_endpoint,
                                                                         cfg.recon.data_endpoint]
    from .rig import endpoints_for

    ep = endpoints_for(args.base_port)
    return (ep["daemon"]["control_endpoint"], ep["recon"]["control_endpoint"],
            [ep["daemon"]["data_endpoint"], ep["recon"]["data_endpoint"]])


def _client_curve(args: argparse.Namespace):
    """Client keys from --keys/--server-key, or from the config's [security] section."""
    from .security import load_client_keys

    keys, server = getattr(args, "keys", None), getattr(args, "server_key", None)
    if keys or server:
        if not (keys and server):
            raise CliError("CurveZMQ needs both --keys CLIENT.key_secret and --server-key SERVER.key", 2)
        try:
            return load_client_keys(keys, server)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot load keys: {exc}", 2) from None
    if getattr(args, "config", None):
        sec = _load(args.config).security
        if sec.curve:
            return load_client_keys(sec.client_secret_key or sec.server_secret_key, sec.server_secret_key)
    return None


def _load(path: str):
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _kv(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise CliError(f"expected KEY=VALUE, got {p!r}", 2)
        k, _, v = p.partition("=")
        out[k.strip()] = _parse_value(v)
    return out


# -- commands ------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from medacq.drivers.registry import known_kinds

    cfg = _load(args.file)
    print(f"{args.file}: OK — {len(cfg.device)} device(s): "
          + (", ".join(f"{d.name} ({d.kind} at {d.address})" for d in cfg.device) or "none"))
    print(f"  data {cfg.daemon.data_endpoint}, control {cfg.daemon.control_endpoint}, "
          f"recon {cfg.recon.data_endpoint}")
    if args.verbose:
        print(f"  known device kinds: {', '.join(known_kinds())}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .service import AcquisitionDaemon, BindError

    cfg = _load(args.config)
    try:
        d = AcquisitionDaemon(cfg).start()
    except BindError as exc:
        raise CliError(str(exc)) from None
    print(f"medacq daemon: data {cfg.daemon.data_endpoint}, control {cfg.daemon.control_endpoint}", flush=True)
    d.run_forever(args.for_s)
    return 0


def cmd_recon(args: argparse.Namespace) -> int:
    from .recon.stage import ReconStage
    from .service import BindError

    cfg = _load(args.config)
    try:
        stage = ReconStage(cfg).start()
    except BindError as exc:
        raise CliError(str(exc)) from None
    print(f"medacq recon: {cfg.recon_source} -> {cfg.recon.data_endpoint}", flush=True)
    stage.run_forever(args.for_s)
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from medacq.simulators.adapters import PortInUseError, SimulatorServer
    from medacq.simulators.registry import make_simulator

    try:
        iface = make_simulator(args.kind, **_kv(args.option))
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
        from .faults import FaultServer

        faults = FaultServer({args.name or args.kind: srv}, f"tcp://127.0.0.1:{args.faults}").start()
    print(srv.address if srv.transport == "pty" else f"{srv.address}  ({srv.tcp_address})", flush=True)
    _wait_for_signal(args.for_s)
    if faults is not None:
        faults.stop()
    srv.stop()
    if srv.error:
        raise CliError(f"simulator failed: {srv.error}")
    return 0


def _wait_for_signal(duration: float | None) -> int | None:
    got: list[int] = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, _f: got.append(signum))
    end = None if duration is None else time.monotonic() + duration
    while not got and (end is None or time.monotonic() < end):
        time.sleep(0.1)
    return got[0] if got else None


def cmd_ctl(args: argparse.Namespace) -> int:
    from .client import ControlClient, DaemonUnreachable, RequestFailed

    control, recon_control, _ = _endpoints(args)
    endpoint = args.endpoint or (recon_control if args.recon else control)
    fields: dict[str, Any] = {}
    pos = list(args.args)
    if args.command in ("describe", "configure") and pos:
        fields["device"] = pos.pop(0)
    elif args.command in ("start", "stop") and pos:
        fields["device"] = pos.pop(0)
    elif args.command == "descriptor" and pos:
        fields["stream"] = pos.pop(0)
    elif args.command == "action" and len(pos) >= 2:
        fields["target"], fields["action"] = pos.pop(0), pos.pop(0)
    if pos:
        kv = _kv(pos)
        if args.command == "configure":
            fields["settings"] = kv
        elif args.command == "action":
            fields["args"] = kv
        else:
            fields.update(kv)
    try:
        with ControlClient(endpoint, timeout=args.timeout, curve=_client_curve(args)) as c:
            result = c.request(args.command, **fields)
    except DaemonUnreachable:
        raise CliError(f"no medacq daemon answers at {endpoint} (is it running? --config/--endpoint?)", 3) from None
    except RequestFailed as exc:
        raise CliError(f"daemon refused {args.command}: {exc}", 1) from None
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from .client import Subscriber

    _, _, data = _endpoints(args)
    endpoints = [args.endpoint] if args.endpoint else data
    n = 0
    t0 = time.monotonic()
    rates: dict[str, list[float]] = {}
    end = None if args.for_s is None else t0 + args.for_s
    with Subscriber(endpoints, args.topic, errors="skip", curve=_client_curve(args)) as sub:
        try:
            while (end is None or time.monotonic() < end) and (args.count is None or n < args.count):
                msg = sub.recv(timeout=0.5)
                if msg is None:
                    continue
                h = msg.header
                now = time.monotonic()
                if msg.array is not None:
                    r = rates.setdefault(h["stream"], [now, 0, 0])
                    r[1] += 1
                    r[2] += msg.array.nbytes
                    fps = r[1] / max(now - r[0], 1e-9)
                    lat_ms = (time.monotonic_ns() - h["t_mono_ns"]) / 1e6
                    print(f"{msg.topic:24s} frame seq={h['seq']:<8d} {h['dtype']}{h['shape']} "
                          f"{fps:7.1f} fps  {r[2] / max(now - r[0], 1e-9) / 1e6:7.2f} MB/s  lat {lat_ms:6.2f} ms",
                          flush=True)
                    n += 1
                else:
                    extra = h.get("reason") or ""
                    if h["kind"] == "gap":
                        extra = f"{h.get('gap_frames')} frame(s) lost: {extra}"
                    print(f"{msg.topic:24s} {h['kind']:<12s} seq={h['seq']} {extra}", flush=True)
        except KeyboardInterrupt:
            pass
        for g in sub.gaps:
            if not g.announced:
                print(f"gap: {g.stream} seq {g.first_seq}..{g.last_seq} missed by this subscriber", file=sys.stderr)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .client import ControlClient, DaemonUnreachable
    from .config import dump_config
    from .rig import SimulatedRig
    from .status_view import StatusView

    from .faults import FaultServer

    workdir = Path(tempfile.mkdtemp(prefix="medacq-up-"))
    rig = SimulatedRig(paced=True).start()
    procs: list[subprocess.Popen] = []
    faults = None
    try:
        faults = FaultServer(rig.servers, f"tcp://127.0.0.1:{args.base_port + 4}").start()
        doc = rig.config(args.base_port)
        cfg_path = workdir / "rig.toml"
        cfg_path.write_text(dump_config(doc))
        cfg = _load(str(cfg_path))
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


def cmd_fault(args: argparse.Namespace) -> int:
    import zmq

    endpoint = args.endpoint or f"tcp://127.0.0.1:{args.base_port + 4}"
    if args.sim in ("list", "status"):
        body = {"fault": args.sim}
    else:
        if not args.fault:
            raise CliError("name a fault: pull_cable, stall, corrupt, garbage, slow_replies, drop, device_error", 2)
        body = {"sim": args.sim, "fault": args.fault, "args": _kv(args.args)}
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


def cmd_lsl(args: argparse.Namespace) -> int:
    try:
        import pylsl  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        raise CliError(f"the LSL bridge needs pylsl (pip install 'medacq[lsl]'): {exc}", 2) from None
    from .lsl_bridge import run_lsl_bridge

    _, _, data = _endpoints(args)
    endpoints = [args.endpoint] if args.endpoint else data
    print(f"medacq lsl: republishing {', '.join(args.topics)} from {', '.join(endpoints)} as LSL outlets "
          "(Ctrl-C to stop)", flush=True)
    try:
        result = run_lsl_bridge(endpoints, args.topics, args.for_s)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(result, indent=2))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .security import generate_keypair

    for name in args.names:
        public, secret = generate_keypair(args.folder, name)
        print(f"{name}: public {public}  secret {secret}")
    print("Put the daemon's NAME.key_secret in [security] server_secret_key; copy client NAME.key files into the "
          "readers/ or operators/ folder; give each client its own NAME.key_secret and the daemon's NAME.key.")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """``medacq view``: the live web page (see medacq.daemon.view and docs/view.md)."""
    try:
        from .view import ViewSettings, run_view
    except ImportError as exc:
        raise CliError(f"the live view needs aiohttp (pip install aiohttp): {exc}", 2) from None
    control, recon_control, data = _endpoints(args)
    settings = ViewSettings(control, recon_control, data, port=args.port, max_fps=args.max_fps,
                            curve=_client_curve(args))
    try:
        run_view(settings, args.for_s, on_ready=lambda url: print(f"medacq view: {url}", flush=True))
    except OSError as exc:
        raise CliError(f"cannot serve the view on 127.0.0.1:{args.port}: {exc}") from None
    return 0


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


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medacq", description="Acquisition and control daemon for medical-imaging rigs.")
    p.add_argument("--debug", action="store_true", help="log debug messages and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def endpoints(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="rig config (to find the endpoints)")
        sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help="without --config: the rig's first port (default %(default)s, as `medacq up`)")
        sp.add_argument("--endpoint", help="explicit ZeroMQ endpoint")
        sp.add_argument("--keys", help="CurveZMQ: this client's NAME.key_secret")
        sp.add_argument("--server-key", help="CurveZMQ: the daemon's public key file (NAME.key)")

    sp = sub.add_parser("up", help="run a complete simulated rig with a live status view")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                    help="first of 5 loopback ports: data, control, recon data, recon control, fault side door")
    sp.add_argument("--view-port", type=int, default=8555, help="live web view port (default %(default)s)")
    sp.add_argument("--no-view", action="store_true", help="do not start the live web view")
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("view", help="serve the live web view on 127.0.0.1 (prints the URL)")
    sp.add_argument("--port", type=int, default=8555, help="HTTP port (default %(default)s; 0 picks a free one)")
    sp.add_argument("--max-fps", type=float, default=20.0, help="most updates per second per panel")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    endpoints(sp)
    sp.set_defaults(fn=cmd_view)

    sp = sub.add_parser("run", help="run the acquisition daemon")
    sp.add_argument("--config", required=True)
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("recon", help="run the reconstruction stage")
    sp.add_argument("--config", required=True)
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.set_defaults(fn=cmd_recon)

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

    sp = sub.add_parser("ctl", help="send a control request (status, list, describe, configure, start, stop, ...)")
    sp.add_argument("command", help="list | describe DEV | configure DEV K=V.. | start [DEV] | stop [DEV] | "
                                    "status | ping | descriptor STREAM | action TARGET ACTION [K=V..]")
    sp.add_argument("args", nargs="*")
    sp.add_argument("--recon", action="store_true", help="talk to the reconstruction stage")
    sp.add_argument("--timeout", type=float, default=5.0)
    endpoints(sp)
    sp.set_defaults(fn=cmd_ctl)

    sp = sub.add_parser("tail", help="print live headers and rates of a topic prefix")
    sp.add_argument("topic", nargs="?", default="", help="topic prefix, e.g. raw/eeg0 or recon/")
    sp.add_argument("--count", type=int, help="stop after N frames")
    sp.add_argument("--for", dest="for_s", type=float)
    endpoints(sp)
    sp.set_defaults(fn=cmd_tail)

    sp = sub.add_parser("record", help="record topics to HDF5 (crash-safe), or start/stop the daemon's recorder")
    from .recorder import add_record_arguments, cmd_record

    add_record_arguments(sp)
    sp.set_defaults(fn=cmd_record)

    sp = sub.add_parser("check-config", help="validate a rig config file")
    sp.add_argument("file")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.set_defaults(fn=cmd_check_config)

    sp = sub.add_parser("lsl", help="republish biosignal streams as Lab Streaming Layer outlets (medacq[lsl])")
    sp.add_argument("topics", nargs="*", default=["raw/", "recon/"], help="topic prefixes (default raw/ recon/)")
    sp.add_argument("--for", dest="for_s", type=float)
    endpoints(sp)
    sp.set_defaults(fn=cmd_lsl)

    sp = sub.add_parser("keys", help="generate CurveZMQ key pairs (NAME.key public, NAME.key_secret)")
    sp.add_argument("action", choices=["generate"])
    sp.add_argument("folder")
    sp.add_argument("names", nargs="+", help="e.g. server operator1 viewer1")
    sp.set_defaults(fn=cmd_keys)

    sp = sub.add_parser("bench", help="measure performance figures (see README)")
    from .bench import add_bench_arguments

    add_bench_arguments(sp)
    sp.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.fn(args) or 0)
    except CliError as exc:
        print(f"medacq {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a person gets one line, --debug the traceback
        if args.debug:
            raise
        print(f"medacq {args.command}: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
