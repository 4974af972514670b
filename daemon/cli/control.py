"""``medacq ctl``, ``medacq tail``, ``medacq keys``: talking to a running rig."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from typing import Any

from medacq.daemon.cli._common import CliError, add_endpoint_args, client_curve, rig_endpoints, parse_kv


def cmd_ctl(args: argparse.Namespace) -> int:
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed

    control, recon_control, _ = rig_endpoints(args)
    endpoint = args.endpoint or (recon_control if args.recon else control)
    if args.command == "clock":
        return _ctl_clock(endpoint, args)
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


def _ctl_clock(endpoint: str, args: argparse.Namespace) -> int:
    """``medacq ctl clock [probes=N]``: the daemon's clock offset (remote minus local) and its uncertainty."""
    from medacq.daemon.client.clock import ClockError, ClockEstimator

    kv = parse_kv(list(args.args))
    unknown = set(kv) - {"probes"}
    if unknown or not isinstance(kv.get("probes", 16), int) or kv.get("probes", 16) < 1:
        raise CliError("usage: medacq ctl clock [probes=N] (N >= 1, default 16)", 2)
    try:
        with ClockEstimator(endpoint, curve=client_curve(args), probes=kv.get("probes", 16),
                            timeout=args.timeout) as clk:
            est = clk.estimate
    except ClockError as exc:
        raise CliError(f"no clock estimate: {exc} (is a daemon running? --config/--endpoint?)", 3) from None
    assert est is not None
    print(json.dumps({"endpoint": endpoint, **est.as_dict()}, indent=2))
    return 0


def cmd_mark(args: argparse.Namespace) -> int:
    """``medacq mark TEXT [--source NAME]``: a software marker on ``markers/<source>``."""
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed

    control, _, _ = rig_endpoints(args)
    endpoint = args.endpoint or control
    try:
        with ControlClient(endpoint, timeout=args.timeout, curve=client_curve(args)) as c:
            result = c.request("mark", text=args.text, source=args.source)
    except DaemonUnreachable:
        raise CliError(f"no medacq daemon answers at {endpoint} (is it running? --config/--endpoint?)", 3) from None
    except RequestFailed as exc:
        raise CliError(f"daemon refused mark: {exc}", 1) from None
    print(json.dumps(result, indent=2, default=str))
    return 0


class TailRate:
    """Frames/s and MB/s of one stream over the arrivals of the last ``window_s`` seconds.

    A rate needs two arrivals: over ``k`` intervals, ``k`` frames (the first arrival of the
    window opens it and is not counted). Until then, and when the arrivals share one instant,
    :attr:`fps` and :attr:`mbps` are ``None``."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._arrivals: deque[tuple[float, int]] = deque()  # (monotonic s, payload bytes)
        self._bytes = 0  # payload bytes of every arrival in the window but the first

    def add(self, t: float, nbytes: int) -> None:
        """A frame of ``nbytes`` payload bytes arrived at ``t`` (monotonic seconds)."""
        a = self._arrivals
        if a:
            self._bytes += nbytes
        a.append((t, nbytes))
        while len(a) > 2 and t - a[1][0] >= self.window_s:  # keep the window's opening arrival
            a.popleft()
            self._bytes -= a[0][1]

    def _span(self) -> float | None:
        a = self._arrivals
        if len(a) < 2 or a[-1][0] <= a[0][0]:
            return None
        return a[-1][0] - a[0][0]

    @property
    def fps(self) -> float | None:
        span = self._span()
        return None if span is None else (len(self._arrivals) - 1) / span

    @property
    def mbps(self) -> float | None:
        span = self._span()
        return None if span is None else self._bytes / span / 1e6


def _fmt_rate(v: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}s}" if v is None else f"{v:{width}.{digits}f}"


def cmd_tail(args: argparse.Namespace) -> int:
    from medacq.daemon.client.api import Subscriber

    _, _, data = rig_endpoints(args)
    endpoints = [args.endpoint] if args.endpoint else data
    n = 0
    t0 = time.monotonic()
    rates: dict[str, TailRate] = {}
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
                    r = rates.setdefault(msg.topic, TailRate())
                    r.add(now, msg.array.nbytes)
                    lat_ms = (time.monotonic_ns() - h["t_mono_ns"]) / 1e6
                    print(f"{msg.topic:24s} frame seq={h['seq']:<8d} {h['dtype']}{h['shape']} "
                          f"{_fmt_rate(r.fps, 7, 1)} fps  {_fmt_rate(r.mbps, 7, 2)} MB/s  lat {lat_ms:6.2f} ms",
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
    from medacq.daemon.common.security import TOOL_RIGHTS, generate_keypair, generate_rig_keys

    if args.action == "generate-rig":
        if args.names:
            raise CliError("usage: medacq keys generate-rig DIR [--operator-view] (it names the keys itself)", 2)
        try:
            paths = generate_rig_keys(args.folder, operator_view=args.operator_view)
        except OSError as exc:
            raise CliError(str(exc), 2) from None
        for tool, rights in TOOL_RIGHTS.items():
            rights = "operators" if tool == "view" and args.operator_view else rights
            print(f"{tool}: {paths['tools'] / (tool + '.key_secret')}  ({rights[:-1]})")
        print(f"server: {paths['server']}\n\n[security]\nserver_secret_key = \"{paths['server'].resolve()}\"\n"
              f"readers = \"{paths['readers'].resolve()}\"\noperators = \"{paths['operators'].resolve()}\"\n"
              f"tool_keys = \"{paths['tools'].resolve()}\"\n\n"
              "Each tool connects with its own key and the audit log names it. For a person or a script: "
              "medacq keys generate DIR NAME, copy NAME.key into readers/ or operators/, and give them "
              "NAME.key_secret ($MEDACQ_KEY or --key) with the public server.key ($MEDACQ_SERVER_KEY or --server-key).")
        return 0
    if not args.names:
        raise CliError("usage: medacq keys generate DIR NAME [NAME...]", 2)
    for name in args.names:
        public, secret = generate_keypair(args.folder, name)
        print(f"{name}: public {public}  secret {secret}")
    print("Copy each client's NAME.key into the readers/ or operators/ folder (the audit log names the client NAME); "
          "give each client its own NAME.key_secret and the daemon's public server.key. A whole rig "
          "(server, and a pair for each tool): medacq keys generate-rig DIR.")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("ctl", help="send a control request (status, list, describe, configure, start, stop, ...)")
    sp.add_argument("command", help="list | describe DEV | configure DEV K=V.. | start [DEV] | stop [DEV] | "
                                    "status | ping | descriptor STREAM | action TARGET ACTION [K=V..] | "
                                    "safe DEV|all [reason=TEXT] (safe state: source/transmit/current off) | "
                                    "clock [probes=N] (the daemon's clock offset from ping round trips)")
    sp.add_argument("args", nargs="*")
    sp.add_argument("--recon", action="store_true", help="talk to the reconstruction stage")
    sp.add_argument("--timeout", type=float, default=5.0)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_ctl)

    sp = sub.add_parser("mark", help="publish a software marker on markers/<source> (host clocks at receipt)")
    sp.add_argument("text", help="the marker's label (at most 128 UTF-8 bytes)")
    sp.add_argument("--source", default="operator", help="marker stream name (default operator)")
    sp.add_argument("--timeout", type=float, default=5.0)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_mark)

    sp = sub.add_parser("tail", help="print live headers and rates of a topic prefix")
    sp.add_argument("topic", nargs="?", default="", help="topic prefix, e.g. raw/eeg0 or recon/")
    sp.add_argument("--count", type=int, help="stop after N frames")
    sp.add_argument("--for", dest="for_s", type=float)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_tail)

    sp = sub.add_parser("keys", help="generate CurveZMQ key pairs: a rig's (generate-rig DIR) or one per NAME")
    sp.add_argument("action", choices=["generate", "generate-rig"],
                    help="generate-rig: the server's pair, one pair per tool (cli, view, stage, recorder) and "
                         "the readers/ and operators/ allow-lists; generate: NAME.key and NAME.key_secret per NAME")
    sp.add_argument("folder")
    sp.add_argument("names", nargs="*", help="generate: e.g. alice monitor1")
    sp.add_argument("--operator-view", action="store_true",
                    help="generate-rig: put the view's key in operators/ (for medacq view --operator)")
    sp.set_defaults(fn=cmd_keys)

