"""``medacq run``, ``medacq recon``, ``medacq check-config``: the services and their config."""

from __future__ import annotations

import argparse
from typing import Any

from medacq.daemon.cli._common import CliError, load_rig
from medacq.daemon.common.procs import SHUTDOWN_BOUND_S


def cmd_check_config(args: argparse.Namespace) -> int:
    from medacq.daemon.acquisition.devices import known_kinds

    cfg = load_rig(args.file)
    print(f"{args.file}: OK — {len(cfg.device)} device(s): "
          + (", ".join(f"{d.name} ({d.kind} at {d.address})" for d in cfg.device) or "none"))
    print(f"  data {cfg.daemon.data_endpoint}, control {cfg.daemon.control_endpoint}, "
          f"recon {cfg.recon.data_endpoint}")
    if cfg.security.curve:
        from medacq.daemon.common.security import TOOL_RIGHTS, ToolKeyError, tool_keys

        missing = []
        for tool in TOOL_RIGHTS:
            try:
                tool_keys(cfg.security, tool, env=False)
            except ToolKeyError:
                missing.append(tool)
        print(f"  CurveZMQ: tool keys in {cfg.security.tool_keys}" if not missing else
              f"  warning: no client key for {', '.join(missing)} ([security] tool_keys); those tools will not "
              "start: run `medacq keys generate-rig DIR`")
    if args.verbose:
        print(f"  known device kinds: {', '.join(known_kinds())}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from medacq.daemon.acquisition.service import AcquisitionDaemon, BindError
    from medacq.daemon.common.malloc import pin_malloc_thresholds
    from medacq.daemon.common.interpreter import freeze_heap, set_switch_interval

    pin_malloc_thresholds()  # freed frames go back to the OS (RSS stays flat after a subscriber stalls)
    cfg = load_rig(args.config)
    set_switch_interval(cfg.daemon.gil_switch_ms)
    try:
        d = AcquisitionDaemon(cfg).start()
    except BindError as exc:
        raise CliError(str(exc)) from None
    freeze_heap("daemon started")  # start-up's objects out of the collector's full scans
    print(f"medacq daemon: data {cfg.daemon.data_endpoint}, control {cfg.daemon.control_endpoint}", flush=True)
    d.run_forever(args.for_s, exit_within_s=SHUTDOWN_BOUND_S)
    return 0


def cmd_recon(args: argparse.Namespace) -> int:
    from medacq.daemon.recon.stage import ReconStage
    from medacq.daemon.acquisition.service import BindError
    from medacq.daemon.common.malloc import pin_malloc_thresholds
    from medacq.daemon.common.interpreter import freeze_heap, set_switch_interval
    from medacq.daemon.common.security import ToolKeyError

    pin_malloc_thresholds()
    cfg = load_rig(args.config)
    set_switch_interval(cfg.recon.gil_switch_ms)
    stage = ReconStage(cfg)
    stage.freeze_heap_after_preload = True  # again once the reconstructors' modules are in
    try:
        stage.start()
    except (BindError, ToolKeyError) as exc:
        raise CliError(str(exc)) from None
    freeze_heap("stage started")
    print(f"medacq recon: {cfg.recon_source} -> {cfg.recon.data_endpoint}", flush=True)
    stage.run_forever(args.for_s, exit_within_s=SHUTDOWN_BOUND_S)
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("run", help="run the acquisition daemon")
    sp.add_argument("--config", required=True)
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("recon", help="run the reconstruction stage")
    sp.add_argument("--config", required=True)
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.set_defaults(fn=cmd_recon)

    sp = sub.add_parser("check-config", help="validate a rig config file")
    sp.add_argument("file")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.set_defaults(fn=cmd_check_config)

