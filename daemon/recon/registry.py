"""Which reconstructor serves which modality (``"module:Class"``, imported on first use, or
ahead of it by :func:`preload_reconstructors`), the queue policy a stream gets (the reconstructor's declared ``qos`` under
``[recon.qos.<stream>]``), and the check of ``[recon.settings.<modality>]`` and ``[recon.qos]``."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from medacq.protocols.qos import QosPolicy

from medacq.daemon.common.config import ReconSection, validation_problems
from medacq.daemon.recon.base import Reconstructor

__all__ = ["DEFAULT_QUEUE_DEPTH", "RECONSTRUCTORS", "check_recon_settings", "preload_reconstructors",
           "reconstructor_class", "resolve_qos"]

log = logging.getLogger("medacq.recon")

RECONSTRUCTORS: dict[str, str] = {
    # in the order the stage preloads them: ``fifo`` modalities first (frames that wait for their
    # reconstructor count against the queue's frame bound), ``latest`` ones after (only the newest waits)
    "eeg": "medacq.daemon.recon.modalities.biosignal:EEGReconstructor",
    "ekg": "medacq.daemon.recon.modalities.biosignal:EKGReconstructor",
    "meg": "medacq.daemon.recon.modalities.biosignal:MEGReconstructor",
    "ct": "medacq.daemon.recon.modalities.xray:CTReconstructor",
    "xray": "medacq.daemon.recon.modalities.xray:XrayReconstructor",
    "tactile": "medacq.daemon.recon.modalities.tactile:TactileImager",
    "eit": "medacq.daemon.recon.modalities.eit:EitImager",
    "mri": "medacq.daemon.recon.modalities.mri:MriReconstructor",
    "us": "medacq.daemon.recon.modalities.ultrasound:BModeReconstructor",
    "swe": "medacq.daemon.recon.modalities.elastography:ShearWaveReconstructor",
    "thermal": "medacq.daemon.recon.modalities.cameras:ThermalReconstructor",
    "photo": "medacq.daemon.recon.modalities.cameras:PhotoReconstructor",
    "endoscope": "medacq.daemon.recon.modalities.cameras:EndoscopeReconstructor",
    "synthetic": "medacq.daemon.recon.modalities.synthetic:RunningMean",
    "pet": "medacq.daemon.recon.modalities.pet:PetReconstructor",
    "spect": "medacq.daemon.recon.modalities.spect:SpectReconstructor",
}


def reconstructor_class(modality: str) -> type[Reconstructor] | None:
    """The class for ``modality``, or ``None`` when no reconstructor handles it."""
    target = RECONSTRUCTORS.get(modality)
    if target is None:
        return None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def preload_reconstructors(modalities: Iterable[str] | None = None) -> dict[str, float | str]:
    """Import the reconstructor of each modality (default: every one registered) and run its
    :meth:`~medacq.daemon.recon.base.Reconstructor.preload`, one after the other in the
    calling thread. Returns, per modality, the seconds it took, or the error (``"Type: why"``)
    that stopped it; an error is logged and never raised (the stream's build retries)."""
    done: dict[str, float | str] = {}
    for modality in (RECONSTRUCTORS if modalities is None else modalities):
        t0 = time.perf_counter()
        try:
            cls = reconstructor_class(modality)
            if cls is not None:
                cls.preload()
        except Exception as exc:  # noqa: BLE001 - a failed preload is the build's problem, not the stage's
            done[modality] = f"{type(exc).__name__}: {exc}"
            log.warning("preloading the %s reconstructor failed: %s", modality, done[modality])
            continue
        done[modality] = round(time.perf_counter() - t0, 3)
    return done


DEFAULT_QUEUE_DEPTH: int = ReconSection.model_fields["queue_depth"].default
"""``[recon] queue_depth``'s default (512; why: :class:`~medacq.daemon.common.config.ReconSection`)."""


def resolve_qos(cls: type[Reconstructor] | None, override: QosPolicy | None = None,
                queue_depth: int = DEFAULT_QUEUE_DEPTH) -> QosPolicy:
    """The policy of a stream served by ``cls`` (``None``: no reconstructor yet or none for the
    modality): ``fifo`` with ``max_frames = queue_depth`` and ``max_batch = cls.max_batch``,
    under the fields ``cls.qos`` sets, under the fields ``[recon.qos.<stream>]`` (``override``)
    sets. ``max_age_ms`` only counts under ``fifo``."""
    doc: dict[str, Any] = {"policy": "fifo", "max_frames": queue_depth,
                           "max_batch": cls.max_batch if cls is not None else 1}
    for layer in (cls.qos if cls is not None else None, override):
        if layer is not None:
            doc.update({k: getattr(layer, k) for k in layer.model_fields_set})
    if doc["policy"] != "fifo":
        doc.pop("max_age_ms", None)
    return QosPolicy.model_validate(doc)


def _qos_problems(data: dict[str, Any], recon: dict[str, Any]) -> list[tuple[str, str]]:
    """What the structural check cannot see in ``[recon.qos.<stream>]``: an age bound under a
    policy without one, and a stream no configured device publishes (a typo would otherwise
    leave the stream on its default policy, silently); the same for ``[recon.isolation]``."""
    qos = recon.get("qos")
    problems: list[tuple[str, str]] = []
    devices = data.get("device")
    names = sorted(d["name"] for d in devices if isinstance(d, dict) and isinstance(d.get("name"), str)) \
        if isinstance(devices, list) else []
    for stream, table in (qos.items() if isinstance(qos, dict) else ()):
        if not isinstance(table, dict):
            continue
        policy = table.get("policy")
        if "max_age_ms" in table and policy in ("latest", "lossless"):
            problems.append((f"recon.qos.{stream}.max_age_ms", f"max_age_ms applies to policy \"fifo\" only; this "
                             f"table sets policy = \"{policy}\""))
        if names and not recon.get("subscribe") and stream not in names:
            problems.append((f"recon.qos.{stream}", f"no device publishes stream {stream!r}; devices: "
                             f"{', '.join(names)}"))
    iso = recon.get("isolation")
    if isinstance(iso, dict) and names and not recon.get("subscribe"):
        problems += [(f"recon.isolation.{stream}", f"no device publishes stream {stream!r}; devices: "
                      f"{', '.join(names)}") for stream in iso if stream not in names]
    return problems


def check_recon_settings(data: dict[str, Any]) -> list[tuple[str, str]]:
    """A config check (:data:`medacq.daemon.common.config.Check`): every table under
    ``[recon.settings]`` names a modality with a reconstructor and passes its ``Settings``
    model; problems are located like ``recon.settings.us.angles``. Only the modalities
    present are imported. ``[recon.qos.<stream>]``: an age bound under ``latest``/``lossless``
    and a stream no device of this config publishes (when ``[recon] subscribe`` is not set)
    are problems too (its keys and values are checked by the structural check). Malformed
    structure (``recon`` or a table not being a table) is left to the structural check."""
    recon = data.get("recon") if isinstance(data, dict) else None
    if not isinstance(recon, dict):
        return []
    problems: list[tuple[str, str]] = _qos_problems(data, recon)
    settings = recon.get("settings")
    if not isinstance(settings, dict):
        return problems
    for modality, table in settings.items():
        cls = reconstructor_class(modality)
        if cls is None:
            problems.append((f"recon.settings.{modality}", f"no reconstructor for modality {modality!r}; known "
                             f"modalities: {', '.join(sorted(RECONSTRUCTORS))}"))
            continue
        if not isinstance(table, dict):
            continue
        try:
            cls.validate_settings(table)
        except ValidationError as exc:
            problems += validation_problems(exc, ("recon", "settings", modality))
    return problems
