"""``medacq``: the command line for bench operators and for systemd.

Errors are one clear line and a non-zero exit, not tracebacks (``--debug`` shows them).
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 3 daemon unreachable.
Each command group is a module of this package with a ``register(sub)`` function.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medacq.daemon.cli import bench, bridges, control, export, record, rig, service, sim, study
from medacq.daemon.cli._common import CliError

__all__ = ["main", "build_parser"]

GROUPS = (sim, bridges, service, control, record, export, study, bench, rig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medacq", description="Acquisition and control daemon for medical-imaging rigs.")
    p.add_argument("--debug", action="store_true", help="log debug messages and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
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
