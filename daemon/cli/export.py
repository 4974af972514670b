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
    p.add_argument("--format", choices=("dicom", "hdf5", "edf", "ismrmrd"), help="dicom: DICOM objects of the recon "
                   "streams (default for an HDF5 recording); hdf5|edf|ismrmrd: with --deidentify, a de-identified copy "
                   "of the input in its own format, OUT/<name> (default for an EDF+/BDF+ or ISMRMRD input)")
    p.add_argument("--pacs-timeout", type=float, default=60.0, help="seconds to keep retrying the PACS (default 60)")
    p.add_argument("--tls-ca", metavar="CA.pem", help="TLS to the PACS, its certificate checked against this CA "
                   "(required for a PACS off loopback)")
    p.add_argument("--tls-cert", metavar="CERT.pem", help="our certificate, for a PACS that asks for one")
    p.add_argument("--tls-key", metavar="KEY.pem", help="the key of --tls-cert")
    p.add_argument("--nifti", metavar="DIR", help="research export: CT/MRI/PET/SPECT images as NIfTI-1 (.nii.gz)")
    p.add_argument("--bids", metavar="DIR", help="research export: EEG streams as a BIDS folder (EDF + sidecars)")
    p.add_argument("--bids-subject", default="01", help="--bids: subject label (default 01; never the patient id)")
    p.add_argument("--bids-session", default="01", help="--bids: session label (default 01)")
    p.add_argument("--bids-task", default="recording", help="--bids: task label (default recording)")
    p.add_argument("--line-freq", type=float, default=50.0, help="--bids: PowerLineFrequency, Hz (default 50)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from medacq.daemon.interop.export import export_recording, study_from_recording
    from medacq.daemon.interop.pacs import PacsAddress
    from medacq.daemon.interop.study import StudyContext
    from medacq.daemon.recording.hdf5 import open_recording

    if getattr(args, "nifti", None) or getattr(args, "bids", None):
        return _research(args)
    if not args.out and not args.pacs:
        raise CliError("give --out DIR, --pacs AE@host:port, or both", 2)
    if bool(args.live) == bool(args.recording):
        raise CliError("give a RECORDING.h5 or --live (not both)", 2)
    copy_fmt = _copy_format(args)
    if copy_fmt is not None:
        return _copy(args, copy_fmt)
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


def _copy_format(args: argparse.Namespace) -> str | None:
    """``--format`` hdf5/edf/ismrmrd, or the input's own when it is EDF+/BDF+/ISMRMRD; None: DICOM."""
    if args.live and args.format not in (None, "dicom"):
        raise CliError(f"--format {args.format} copies a recording file: not with --live", 2)
    if args.live or not args.recording or args.format == "dicom":
        return None
    if args.format is not None:
        return str(args.format)
    from medacq.daemon.interop.deid_files import detect_format

    try:
        found = detect_format(args.recording)
    except (OSError, ValueError):
        return None  # open_recording says what is wrong with it
    return {"edf": "edf", "bdf": "edf", "ismrmrd": "ismrmrd"}.get(found)


def _copy(args: argparse.Namespace, fmt: str) -> int:
    """``medacq export REC --deidentify --format hdf5|edf|ismrmrd --out DIR``: a de-identified copy."""
    from pydantic import ValidationError

    from medacq.daemon.interop.deid import Deidentifier, DeidError
    from medacq.daemon.interop.export import deidentified_copy
    from medacq.daemon.interop.study import StudyContext

    if not args.deidentify:
        raise CliError(f"--format {fmt} writes a de-identified copy: give --deidentify (or --format dicom)", 2)
    if args.pacs or not args.out:
        raise CliError(f"--format {fmt} writes files: give --out DIR (no --pacs)", 2)
    try:
        study = StudyContext.model_validate_json(open(args.study).read()) if args.study else None
    except (OSError, ValidationError, ValueError) as exc:
        raise CliError(f"study context: {exc}", 2) from None
    deid = Deidentifier(retain_dates=args.retain_dates, patient_strings=study.patient_strings() if study else ())
    try:
        if fmt == "hdf5":
            from medacq.daemon.interop.deid_files import detect_format
            from medacq.daemon.recording.hdf5 import open_recording

            if detect_format(args.recording) != "hdf5":
                rep = deidentified_copy(args.recording, args.out, deid, fmt=fmt)  # (says what it is)
            else:
                with open_recording(args.recording) as h5:  # recovered first, like every reader of a recording
                    rep = deidentified_copy(args.recording, args.out, deid, fmt=fmt, h5=h5)
        else:
            rep = deidentified_copy(args.recording, args.out, deid, fmt=fmt)
    except DeidError as exc:
        raise CliError(str(exc), 1) from None
    except (OSError, ValueError) as exc:
        raise CliError(str(exc), 2) from None
    print(json.dumps(rep))
    return 0


def _research(args: argparse.Namespace) -> int:
    """``--nifti DIR`` / ``--bids DIR``: research formats from a recording (no patient data in them)."""
    from medacq.daemon.interop.bids import export_bids
    from medacq.daemon.interop.export import recon_frames
    from medacq.daemon.interop.nifti import export_nifti
    from medacq.daemon.recording.edf import EdfRecorder
    from medacq.daemon.recording.hdf5 import open_recording

    if not args.recording or args.live:
        raise CliError("--nifti/--bids export a RECORDING.h5 (not --live)", 2)
    try:
        h5 = open_recording(args.recording)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot open {args.recording}: {exc}", 2) from None
    rep: dict = {}
    with h5:
        try:
            if args.nifti:
                rep["nifti"] = export_nifti(recon_frames(h5), args.nifti).as_dict()
            if args.bids:
                rep["bids"] = export_bids(h5, args.bids, EdfRecorder, subject=args.bids_subject,
                                          session=args.bids_session, task=args.bids_task,
                                          line_freq_hz=args.line_freq).as_dict()
        except (OSError, ValueError) as exc:
            raise CliError(f"export: {exc}", 2) from None
    print(json.dumps(rep))
    return 0
