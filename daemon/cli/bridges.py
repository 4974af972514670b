"""``medacq view``, ``medacq lsl``: the live web view and the Lab Streaming Layer bridge."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from medacq.daemon.cli._common import CliError, add_endpoint_args, client_curve, rig_endpoints
from medacq.daemon.common.procs import SHUTDOWN_BOUND_S


def cmd_view(args: argparse.Namespace) -> int:
    """``medacq view``: the live web page (see medacq.daemon.bridges.view and docs/view.md)."""
    try:
        from medacq.daemon.bridges.view import TOKEN_ENV, ViewSettings, ViewTokenError, read_token_file, run_view
    except ImportError as exc:
        raise CliError(f"the live view needs aiohttp (pip install aiohttp): {exc}", 2) from None
    from medacq.daemon.common.binding import BindError
    from medacq.daemon.common.interpreter import freeze_heap

    token, given = None, None
    try:
        if args.token_file:
            token, given = read_token_file(args.token_file), f"token from {args.token_file}"
        elif os.environ.get(TOKEN_ENV):
            token, given = os.environ[TOKEN_ENV], f"token from ${TOKEN_ENV}"
    except ViewTokenError as exc:
        raise CliError(str(exc), 2) from None
    control, recon_control, data = rig_endpoints(args)
    settings = ViewSettings(control, recon_control, data, host=args.host, port=args.port, max_fps=args.max_fps,
                            curve=client_curve(args, "view"), token=token, operator=args.operator)
    rights = "operator: buttons on" if args.operator else "read-only"

    def ready(url: str) -> None:
        # a token the operator chose is not echoed (it would land in logs/the journal)
        shown = url.partition("?")[0] + f"  ({given})" if given else url
        print(f"medacq view: {shown}  [{rights}]", flush=True)
        freeze_heap("view started")

    try:
        run_view(settings, args.for_s, on_ready=ready, exit_within_s=SHUTDOWN_BOUND_S)
    except (BindError, ViewTokenError) as exc:
        raise CliError(str(exc), 2) from None
    except OSError as exc:
        raise CliError(f"cannot serve the view on {args.host}:{args.port}: {exc}") from None
    return 0


def cmd_lsl(args: argparse.Namespace) -> int:
    from medacq.daemon.bridges.lsl import check_lsl_exposure, run_lsl_bridge
    from medacq.daemon.common.binding import BindError

    try:
        check_lsl_exposure(args.allow_lan)  # before pylsl: refused the same with or without it
    except BindError as exc:
        raise CliError(str(exc), 2) from None
    try:
        import pylsl  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        raise CliError(f"the LSL bridge needs pylsl (pip install 'medacq[lsl]'): {exc}", 2) from None

    _, _, data = rig_endpoints(args)
    endpoints = [args.endpoint] if args.endpoint else data
    print(f"medacq lsl: republishing {', '.join(args.topics)} from {', '.join(endpoints)} as LSL outlets "
          "(Ctrl-C to stop)", flush=True)
    try:
        result = run_lsl_bridge(endpoints, args.topics, args.for_s, allow_lan=args.allow_lan)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(result, indent=2))
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("view", help="serve the live web view on 127.0.0.1 (prints the URL with its token)")
    sp.add_argument("--port", type=int, default=8555, help="HTTP port (default %(default)s; 0 picks a free one)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="loopback address to serve on (default %(default)s; others are refused: use an SSH tunnel)")
    sp.add_argument("--operator", action="store_true",
                    help="let the page send start/stop/record and modality actions (default: read-only)")
    sp.add_argument("--token-file", metavar="PATH",
                    help="read the login token from PATH (chmod 600) instead of $MEDACQ_VIEW_TOKEN or a random one")
    sp.add_argument("--max-fps", type=float, default=20.0, help="most updates per second per panel")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_view)

    sp = sub.add_parser("lsl", help="republish biosignal streams as Lab Streaming Layer outlets (medacq[lsl])")
    sp.add_argument("topics", nargs="*", default=["raw/", "recon/"], help="topic prefixes (default raw/ recon/)")
    sp.add_argument("--allow-lan", action="store_true",
                    help="required: LSL outlets listen on every interface and are announced by multicast, "
                         "unencrypted and unauthenticated (a trusted lab network only)")
    sp.add_argument("--for", dest="for_s", type=float)
    add_endpoint_args(sp)
    sp.set_defaults(fn=cmd_lsl)

