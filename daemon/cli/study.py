"""``medacq study``: the patient and study context of a running rig (the ``study`` control request), typed
or picked from a modality worklist.

    medacq study get | clear
    medacq study set [--file STUDY.json] [patient_id=... patient_name=Family^Given birth_date=YYYY-MM-DD ...]
    medacq study worklist AE@HOST:PORT [--modality US] [--date today|YYYYMMDD|A-B] [--station AE]
                          [--accession X | --pick N] [--save STUDY.json] [--no-set] [--tls-ca CA.pem ...]

``worklist`` without ``--pick``/``--accession`` lists the matching scheduled procedure steps (numbered
from 1); with one it sets the picked step's study context on the daemon (unless ``--no-set``) and/or
saves it as JSON (``medacq export --study``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from typing import Any

from medacq.daemon.cli._common import CliError, add_endpoint_args, client_curve, parse_kv, rig_endpoints

__all__ = ["register"]


def _request(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed

    control, _, _ = rig_endpoints(args)
    endpoint = args.endpoint or control
    try:
        with ControlClient(endpoint, timeout=args.timeout, curve=client_curve(args)) as c:
            return dict(c.request("study", **fields))
    except DaemonUnreachable:
        raise CliError(f"no medacq daemon answers at {endpoint} (is it running? --config/--endpoint?)", 3) from None
    except RequestFailed as exc:
        raise CliError(f"daemon refused study {fields.get('action')}: {exc}", 1) from None


def cmd_study(args: argparse.Namespace) -> int:
    if args.action in ("get", "clear"):
        print(json.dumps(_request(args, action=args.action), indent=2))
        return 0
    if args.action == "set":
        fields: dict[str, Any] = {}
        if args.file:
            try:
                with open(args.file) as f:
                    fields.update(json.load(f))
            except (OSError, ValueError) as exc:
                raise CliError(f"study file: {exc}", 2) from None
        fields.update({k: str(v) for k, v in parse_kv(args.fields).items()})
        print(json.dumps(_request(args, action="set", study=fields), indent=2))
        return 0
    return _worklist(args)


def _worklist(args: argparse.Namespace) -> int:
    from medacq.daemon.interop.pacs import PacsAddress, tls_context
    from medacq.daemon.interop.worklist import WorklistError, query_worklist

    if args.pick is not None and args.accession:
        raise CliError("give --pick N or --accession X, not both", 2)
    if (args.tls_cert or args.tls_key) and not args.tls_ca:
        raise CliError("--tls-cert/--tls-key need --tls-ca (the worklist SCP's certificate is always checked)", 2)
    date = args.date
    if date == "today":
        date = _dt.date.today().strftime("%Y%m%d")
    try:
        scp = PacsAddress.parse(args.scp)
        tls = tls_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    except ValueError as exc:
        raise CliError(str(exc).replace("PACS address", "worklist address"), 2) from None
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        res = query_worklist(scp, modality=args.modality, date=date, station_ae=args.station,
                             accession_number=args.accession, calling_ae=args.calling_ae, tls=tls,
                             timeout_s=args.timeout)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    except WorklistError as exc:
        raise CliError(str(exc), 1) from None
    items = res.items
    if args.pick is None and not args.accession:
        print(json.dumps({"items": [{"n": k + 1, **it.as_dict()} for k, it in enumerate(items)],
                          "rejected": res.rejected}, indent=2))
        return 0
    if args.accession:
        chosen = [it for it in items if it.accession_number == args.accession]
        if len(chosen) != 1:
            raise CliError(f"{len(chosen)} scheduled step(s) with accession number {args.accession!r} "
                           f"(expected one; list them without --accession)", 1)
        item = chosen[0]
    else:
        if not 1 <= args.pick <= len(items):
            raise CliError(f"--pick {args.pick}: the worklist answered {len(items)} step(s) (numbered from 1)", 1)
        item = items[args.pick - 1]
    study = item.study_context()
    out: dict[str, Any] = {"picked": item.as_dict()}
    if args.save:
        with open(args.save, "w") as f:
            f.write(study.model_dump_json(indent=2))
        out["saved"] = args.save
    if not args.no_set:
        out.update(_request(args, action="set", study=study.model_dump(mode="json")))
    print(json.dumps(out, indent=2))
    return 0


def register(sub: Any) -> None:
    """Add ``medacq study`` to the ``medacq`` parser."""
    sp = sub.add_parser("study", help="the rig's patient/study context: get, set, clear, or pick from a worklist "
                                      "(C-FIND MWL)")
    acts = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=5.0, help="seconds (daemon and worklist SCP)")
    add_endpoint_args(common)
    for name, text in (("get", "print the daemon's study context (operators)"), ("clear", "clear it")):
        acts.add_parser(name, help=text, parents=[common]).set_defaults(fn=cmd_study)
    p = acts.add_parser("set", help="set it from a JSON file and/or FIELD=VALUE pairs (StudyContext fields)",
                        parents=[common])
    p.add_argument("--file", metavar="STUDY.json")
    p.add_argument("fields", nargs="*", metavar="FIELD=VALUE")
    p.set_defaults(fn=cmd_study)
    p = acts.add_parser("worklist", help="list the scheduled procedure steps of a worklist SCP; --pick N or "
                                         "--accession X sets that step's study context", parents=[common])
    p.add_argument("scp", metavar="AE@HOST:PORT", help="the worklist SCP (its called AE title, host, port)")
    p.add_argument("--modality", help="match Modality of the scheduled step (US, CT, DX, MR, ECG, EEG ...)")
    p.add_argument("--date", help="match the step's start date: today, YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    p.add_argument("--station", metavar="AE", help="match Scheduled Station AE Title")
    p.add_argument("--accession", help="match the Accession Number, and pick that step")
    p.add_argument("--pick", type=int, metavar="N", help="pick the N-th step listed (from 1)")
    p.add_argument("--save", metavar="STUDY.json", help="write the picked study context as JSON (medacq export --study)")
    p.add_argument("--no-set", action="store_true", help="do not send it to the daemon (with --save)")
    p.add_argument("--calling-ae", default="MEDACQ", help="our AE title (default MEDACQ)")
    p.add_argument("--tls-ca", metavar="CA.pem", help="TLS to the SCP, its certificate checked against this CA "
                   "(required off loopback)")
    p.add_argument("--tls-cert", metavar="CERT.pem", help="our certificate, for an SCP that asks for one")
    p.add_argument("--tls-key", metavar="KEY.pem", help="the key of --tls-cert")
    p.set_defaults(fn=cmd_study)
