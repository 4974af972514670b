"""``medacq export RECORDING.h5 --out DIR [--pacs AE@host:port] [--deidentify]``: DICOM from a recording;
``medacq export --live ...``: DICOM from the running reconstruction stage as results arrive."""

from __future__ import annotations

import argparse
import json

from medacq.daemon.cli._common import DEFAULT_BASE_PORT, CliError, rig_endpoints, wait_for_signal

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="DICOM files (and C-STORE to a PACS) from an HDF5 recording's recon streams")
    p.add_argument("recording", nargs="?", help="an HDF5 recording (medacq record); omit with --live")
    p.add_argument("--live", action="store_true", help="subscribe to recon/ topics of a running rig instead")
    p.add_argument("--topics", nargs="+", default=["recon/"], help="--live: topic prefixes (default recon/)")
    p.add_argument("--endpoint", action="append", help="--live: data endpoint(s) (default: the rig's)")
    p.add_argument("--config", help="--live: rig config (to find the endpoints)")
    p.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="--live: medacq up's base port")
    p.add_argument("--for", dest="duration", type=float, help="--live: stop after S seconds (default: Ctrl-C)")
    p.add_argument("--out", help="folder for the DICOM files (<Modality>/<SOP Instance UID>.dcm)")
    p.add_argument("--pacs", metavar="AE@HOST:PORT", help="C-STORE every object through a durable outbox")
    p.add_argument("--outbox", help="outbox folder (default: OUT/.outbox)")
    p.add_argument("--study", metavar="FILE.json", help="study context (JSON of StudyContext); default: the "
                   "recording's 'study' attribute, else an anonymous study with a random uid")
    p.add_argument("--deidentify", action="store_true", help="PS3.15 Basic Application Level Confidentiality Profile")
    p.add_argument("--retain-dates", action="store_true", help="with --deidentify: keep full dates (longitudinal option)")
    p.add_argument("--pacs-timeout", type=float, default=60.0, help="seconds to keep retrying the PACS (default 60)")
    p.add_argument("--tls-ca", metavar="CA.pem", help="TLS to the PACS, its certificate checked against this CA "
                   "(required for a PACS off loopback)")
    p.add_argument("--tls-cert", metavar="CERT.pem", help="our certificate, for a PACS that asks for one")
    p.add_argument("--tls-key", metavar="KEY.pem", help="the key of --tls-cert")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from medacq.daemon.interop.export import export_recording, study_from_recording
    from medacq.daemon.interop.pacs import PacsAddress
    from medacq.daemon.interop.study import StudyContext
    from medacq.daemon.recording.hdf5 import open_recording

    if not args.out and not args.pacs:
        raise CliError("give --out DIR, --pacs AE@host:port, or both", 2)
    if bool(args.live) == bool(args.recording):
        raise CliError("give a RECORDING.h5 or --live (not both)", 2)
    if args.pacs and not (args.out or args.outbox):
        raise CliError("--pacs needs --out or --outbox (the outbox lives on disk)", 2)
    from medacq.daemon.interop.pacs import PacsError, check_pacs_exposure, tls_context

    try:
        pacs = PacsAddress.parse(args.pacs) if args.pacs else None
        tls = tls_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
        if pacs is not None:
            check_pacs_exposure(pacs, tls)
    except (ValueError, PacsError) as exc:
        raise CliError(str(exc), 2) from None
    if (args.tls_cert or args.tls_key) and not args.tls_ca:
        raise CliError("--tls-cert/--tls-key need --tls-ca (the PACS's certificate is always checked)", 2)
    args.tls = tls
    if args.live:
        return _live(args, pacs)
    try:
        h5 = open_recording(args.recording)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot open {args.recording}: {exc}", 2) from None
    with h5:
        try:
            if args.study:
                with open(args.study) as f:
                    study = StudyContext.model_validate_json(f.read())
            else:
                study = study_from_recording(h5) or StudyContext()
        except (OSError, ValidationError, ValueError) as exc:
            raise CliError(f"study context: {exc}", 2) from None
        import logging

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one INFO line per C-STORE otherwise
        rep = export_recording(h5, args.out, study, deidentify_profile=args.deidentify,
                               retain_dates=args.retain_dates, pacs=pacs, outbox_dir=args.outbox,
                               pacs_timeout_s=args.pacs_timeout, tls=args.tls)
    print(json.dumps(rep.as_dict()))
    if rep.pending:
        raise CliError(f"{rep.pending} object(s) not yet stored at {pacs} ({rep.pacs_error}); they wait in the "
                       "outbox: run the export again to retry", 1)
    return 0


def _live(args: argparse.Namespace, pacs) -> int:
    import logging
    from pathlib import Path

    from pydantic import ValidationError

    from medacq.daemon.interop.live import DicomSink
    from medacq.daemon.interop.study import StudyContext

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one INFO line per C-STORE otherwise
    try:
        study = StudyContext.model_validate_json(Path(args.study).read_text()) if args.study else StudyContext()
    except (OSError, ValidationError, ValueError) as exc:
        raise CliError(f"study context: {exc}", 2) from None
    endpoints = args.endpoint or rig_endpoints(argparse.Namespace(config=args.config, base_port=args.base_port))[2]
    outbox = args.outbox or (str(Path(args.out) / ".outbox") if args.out else None)
    sink = DicomSink(endpoints, study, args.topics, out_dir=args.out, pacs=pacs, outbox_dir=outbox,
                     deidentify_profile=args.deidentify, retain_dates=args.retain_dates, tls=args.tls)
    sink.start()
    try:
        wait_for_signal(args.duration)
    finally:
        sink.stop(drain_s=args.pacs_timeout)
    st = sink.status()
    print(json.dumps(st))
    pending = (st["outbox"] or {}).get("pending", 0)
    if pending:
        raise CliError(f"{pending} object(s) wait in the outbox {outbox}: rerun to retry", 1)
    return 0
