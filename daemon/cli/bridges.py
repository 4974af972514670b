"""``medacq view``, ``medacq lsl``: the live web view and the Lab Streaming Layer bridge."""

from __future__ import annotations

import argparse
import json
from typing import Any

from medacq.daemon.cli._common import CliError, add_endpoint_args, client_curve, rig_endpoints


def cmd_view(args: argparse.Namespace) -> int:
    """``medacq view``: the live web page (see medacq.daemon.bridges.view and docs/view.md)."""
    try:
        from medacq.daemon.bridges.view import ViewSettings, run_view
    except ImportError as exc:
        raise CliError(f"the live view needs aiohttp (pip install aiohttp): {exc}", 2) from None
    control, recon_control, data = rig_endpoints(args)
    settings = ViewSettings(control, recon_control, data, port=args.port, max_fps=args.max_fps,
                            curve=client_curve(args))
    try:
        run_view(settings, args.for_s, on_ready=lambda url: print(f"medacq view: {url}", flush=True))
    except OSError as exc:
        raise CliError(f"cannot serve the view on 127.0.0.1:{args.port}: {exc}") from None
    return 0


def cmd_lsl(args: argparse.Namespace) -> int:
    try:
        import pylsl  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        raise CliError(f"the LSL bridge needs pylsl (pip install 'medacq[lsl]'): {exc}", 2) from None
    from medacq.daemon.bridges.lsl import run_lsl_bridge

    _, _, data = rig_endpoints(args)
    endpoints = [args.endpoint] if args.endpoint else data
    print(f"medacq lsl: republishing {', '.join(args.topics)} from {', '.join(endpoints)} as LSL outlets "
          "(Ctrl-C to stop)", flush=True)
    try:
        result = run_lsl_bridge(endpoints, args.topics, args.for_s)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(result, indent=2))
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("view", help="serve the live web view on 127.0.0.1 (prints the URL)")
    sp.add_argument("--port", type=int, default=8555, help="HTTP port (default %(default)s; 0 picks a free one)")
    sp.add_argument("--max-fps", type=float, default=20.0, help="most updates per second per panel")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_view)

    sp = sub.add_parser("lsl", help="republish biosignal streams as Lab Streaming Layer outlets (medacq[lsl])")
    sp.add_argument("topics", nargs="*", default=["raw/", "recon/"], help="topic prefixes (default raw/ recon/)")
    sp.add_argument("--for", dest="for_s", type=float)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_lsl)

