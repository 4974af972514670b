"""``medacq ctl``, ``medacq tail``, ``medacq keys``: talking to a running rig."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from medacq.daemon.cli._common import CliError, add_endpoint_args, client_curve, rig_endpoints, parse_kv


def cmd_ctl(args: argparse.Namespace) -> int:
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed

    control, recon_control, _ = rig_endpoints(args)
    endpoint = args.endpoint or (recon_control if args.recon else control)
    fields: dict[str, Any] = {}
    pos = list(args.args)
    command = "safe_state" if args.command in ("safe", "safe_state") else args.command
    if command == "safe_state":  # safe DEVICE | safe all
        if not pos:
            raise CliError("usage: medacq ctl safe DEVICE|all [reason=TEXT]", 2)
        name = pos.pop(0)
        if name != "all":
            fields["device"] = name
    elif args.command in ("describe", "configure") and pos:
        fields["device"] = pos.pop(0)
    elif args.command in ("start", "stop") and pos:
        fields["device"] = pos.pop(0)
    elif args.command == "descriptor" and pos:
        fields["stream"] = pos.pop(0)
    elif args.command == "action" and len(pos) >= 2:
        fields["target"], fields["action"] = pos.pop(0), pos.pop(0)
    if pos:
        kv = parse_kv(pos)
        if args.command == "configure":
            fields["settings"] = kv
        elif args.command == "action":
            fields["args"] = kv
        else:
            fields.update(kv)
    try:
        with ControlClient(endpoint, timeout=args.timeout, curve=client_curve(args)) as c:
            result = c.request(command, **fields)
    except DaemonUnreachable:
        raise CliError(f"no medacq daemon answers at {endpoint} (is it running? --config/--endpoint?)", 3) from None
    except RequestFailed as exc:
        raise CliError(f"daemon refused {args.command}: {exc}", 1) from None
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from medacq.daemon.client.api import Subscriber

    _, _, data = rig_endpoints(args)
    endpoints = [args.endpoint] if args.endpoint else data
    n = 0
    t0 = time.monotonic()
    rates: dict[str, list[float]] = {}
    end = None if args.for_s is None else t0 + args.for_s
    with Subscriber(endpoints, args.topic, errors="skip", curve=client_curve(args)) as sub:
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


def cmd_keys(args: argparse.Namespace) -> int:
    from medacq.daemon.common.security import generate_keypair

    for name in args.names:
        public, secret = generate_keypair(args.folder, name)
        print(f"{name}: public {public}  secret {secret}")
    print("Put the daemon's NAME.key_secret in [security] server_secret_key; copy client NAME.key files into the "
          "readers/ or operators/ folder; give each client its own NAME.key_secret and the daemon's NAME.key.")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("ctl", help="send a control request (status, list, describe, configure, start, stop, ...)")
    sp.add_argument("command", help="list | describe DEV | configure DEV K=V.. | start [DEV] | stop [DEV] | "
                                    "status | ping | descriptor STREAM | action TARGET ACTION [K=V..] | "
                                    "safe DEV|all [reason=TEXT] (safe state: source/transmit/current off)")
    sp.add_argument("args", nargs="*")
    sp.add_argument("--recon", action="store_true", help="talk to the reconstruction stage")
    sp.add_argument("--timeout", type=float, default=5.0)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_ctl)

    sp = sub.add_parser("tail", help="print live headers and rates of a topic prefix")
    sp.add_argument("topic", nargs="?", default="", help="topic prefix, e.g. raw/eeg0 or recon/")
    sp.add_argument("--count", type=int, help="stop after N frames")
    sp.add_argument("--for", dest="for_s", type=float)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_tail)

    sp = sub.add_parser("keys", help="generate CurveZMQ key pairs (NAME.key public, NAME.key_secret)")
    sp.add_argument("action", choices=["generate"])
    sp.add_argument("folder")
    sp.add_argument("names", nargs="+", help="e.g. server operator1 viewer1")
    sp.set_defaults(fn=cmd_keys)

