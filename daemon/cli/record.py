"""``medacq record``: record topics to HDF5 / EDF+ / BDF+, check a recording, drive the daemon's recorder."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from medacq.daemon.cli._common import CliError, add_base_port_arg, add_key_args, client_curve, load_rig, rig_endpoints
from medacq.daemon.recording.edf_stream import edf_settle_s
from medacq.daemon.recording.hdf5 import check_recording
from medacq.daemon.recording.recorder import Recorder


def add_record_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", nargs="?", choices=["start", "stop", "status"],
                    help="control the daemon's built-in recorder instead of recording here")
    sp.add_argument("--topics", nargs="+", default=["raw/"], help="topic prefixes (default: raw/)")
    sp.add_argument("--out", help="output file (.h5; or .edf/.bdf/.petsird/.h5 with --format)")
    sp.add_argument("--for", dest="for_s", type=float, help="stop after SECONDS")
    sp.add_argument("--flush", type=float, default=1.0, help="checkpoint interval, s (default 1)")
    sp.add_argument("--format", choices=["hdf5", "edf", "bdf", "petsird", "ismrmrd"], default="hdf5",
                    help="hdf5 (any stream), edf/bdf (biosignals), petsird (PET list mode of one pet stream), "
                    "ismrmrd (the k-space lines of one mri stream)")
    sp.add_argument("--settle", type=float, metavar="S",
                    help="edf/bdf: wait up to S seconds after the first frame for every stream's descriptor "
                         "before creating the file (default: the rig's descriptor interval + 1 s, at least 2 s)")
    sp.add_argument("--no-fsync", action="store_true", help="skip fsync at checkpoints (kill -9 safe, not power-loss safe)")
    sp.add_argument("--progress", action="store_true", help="print one JSON line per checkpoint on stdout")
    sp.add_argument("--check", metavar="FILE", help="recover if needed and verify a recording, print a summary")
    sp.add_argument("--config", help="rig config (to find the endpoints)")
    add_base_port_arg(sp)
    sp.add_argument("--endpoint", action="append", help="data endpoint(s) to subscribe to (repeatable); "
                                                        "with start/stop/status: the control endpoint")
    sp.add_argument("--timeout", type=float, default=5.0)
    add_key_args(sp)


def cmd_record(args: argparse.Namespace) -> int:
    if args.check:
        if not os.path.exists(args.check):
            raise CliError(f"no such file: {args.check}", 2)
        try:
            summary = check_recording(args.check)
        except (OSError, ValueError) as exc:
            raise CliError(str(exc) if isinstance(exc, ValueError) else f"{args.check}: not a readable recording: {exc}"
                           ) from None
        print(json.dumps(summary, indent=2))
        return 1 if summary["problems"] else 0
    control, _, data = rig_endpoints(argparse.Namespace(config=args.config, base_port=args.base_port))
    if args.action:
        from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed

        endpoint = (args.endpoint or [control])[0]
        fields: dict[str, Any] = {"action": args.action}
        if args.action == "start":
            fields.update(topics=args.topics, flush_s=args.flush, format=args.format)
            if args.out:
                fields["path"] = args.out
        try:
            with ControlClient(endpoint, timeout=args.timeout, curve=client_curve(args)) as c:
                result = c.request("record", **fields)
        except DaemonUnreachable:
            raise CliError(f"no medacq daemon answers at {endpoint}", 3) from None
        except RequestFailed as exc:
            raise CliError(f"daemon refused record {args.action}: {exc}") from None
        print(json.dumps(result, indent=2, default=str))
        return 0
    if not args.out:
        raise CliError("--out FILE is required (or start/stop/status, or --check FILE)", 2)
    if os.path.exists(args.out):
        raise CliError(f"{args.out} exists; choose a new file", 2)

    def progress(st: dict[str, Any]) -> None:
        if args.progress:
            print(json.dumps({"checkpoint": st["checkpoints"], "frames": st["frames_recorded"],
                              "streams": st.get("streams", {}), "missed_frames": st["missed_frames"],
                              "bad_messages": st.get("bad_messages", 0)}), flush=True)

    settle = args.settle
    if settle is None and args.format in ("edf", "bdf"):
        from medacq.daemon.common.config import DaemonSection

        interval = load_rig(args.config).daemon.descriptor_interval_s if args.config else \
            DaemonSection.model_fields["descriptor_interval_s"].default
        settle = edf_settle_s(interval)
    from medacq.daemon.common.interpreter import freeze_heap
    from medacq.daemon.common.malloc import pin_malloc_thresholds

    pin_malloc_thresholds()  # frames queued while the writer catches up go back to the OS once written
    rec = Recorder(args.endpoint or data, args.topics, args.out, flush_s=args.flush, fmt=args.format,
                   durable=not args.no_fsync, on_checkpoint=progress, settle_s=settle)
    rec.curve = client_curve(args, "recorder")
    rec.start()
    rec.ready.wait(10)
    if rec.state == "failed":
        raise CliError(f"cannot record: {rec.error}")
    freeze_heap("recorder started")
    print(f"recording {' '.join(args.topics)} from {' '.join(rec.endpoints)} to {args.out}", file=sys.stderr,
          flush=True)
    end = None if args.for_s is None else time.monotonic() + args.for_s
    got: list[int] = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, _f: got.append(signum))
    while not got and rec.is_alive() and (end is None or time.monotonic() < end):
        time.sleep(0.05)
    rec.stop()
    st = rec.status()
    print(json.dumps({k: st[k] for k in ("state", "frames_recorded", "checkpoints", "gaps_recorded",
                                         "missed_frames", "dropped_frames", "bad_messages", "warnings", "streams", "error")
                      if k in st}, default=str),
          file=sys.stderr)
    return 0 if st["state"] == "stopped" else 1


def register(sub: Any) -> None:
    """Add this group's commands to the ``medacq`` parser."""
    sp = sub.add_parser("record", help="record topics to HDF5 (crash-safe), or start/stop the daemon's recorder")
    add_record_arguments(sp)
    sp.set_defaults(fn=cmd_record)

