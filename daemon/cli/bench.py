"""``medacq bench NAME``: every benchmark (they live in :mod:`medacq.daemon.bench`)."""

from __future__ import annotations

import argparse
from typing import Any

from medacq.daemon.cli._common import CliError


def cmd_bench(args: argparse.Namespace) -> int:
    from medacq.daemon.bench.runner import UNDER_LOAD, run_bench

    if args.under_load and args.what not in UNDER_LOAD:
        raise CliError(f"--under-load is for {' and '.join(UNDER_LOAD)} only", 2)
    return run_bench(args)


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("bench", help="measure performance figures (see README)")
    from medacq.daemon.bench.runner import add_bench_arguments

    add_bench_arguments(sp)
    sp.set_defaults(fn=cmd_bench)
