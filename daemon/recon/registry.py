"""Which reconstructor serves which modality (``"module:Class"``, imported on first use),
and the check of ``[recon.settings.<modality>]`` against each one's ``Settings`` model."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from medacq.daemon.common.config import validation_problems
from medacq.daemon.recon.base import Reconstructor

__all__ = ["RECONSTRUCTORS", "check_recon_settings", "reconstructor_class"]

RECONSTRUCTORS: dict[str, str] = {
    "synthetic": "medacq.daemon.recon.modalities.synthetic:RunningMean",
    "us": "medacq.daemon.recon.modalities.ultrasound:BModeReconstructor",
    "eeg": "medacq.daemon.recon.modalities.biosignal:EEGReconstructor",
    "ekg": "medacq.daemon.recon.modalities.biosignal:EKGReconstructor",
    "meg": "medacq.daemon.recon.modalities.biosignal:MEGReconstructor",
    "xray": "medacq.daemon.recon.modalities.xray:XrayReconstructor",
    "ct": "medacq.daemon.recon.modalities.xray:CTReconstructor",
    "eit": "medacq.daemon.recon.modalities.eit:EitImager",
}


def reconstructor_class(modality: str) -> type[Reconstructor] | None:
    """The class for ``modality``, or ``None`` when no reconstructor handles it."""
    target = RECONSTRUCTORS.get(modality)
    if target is None:
        return None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def check_recon_settings(data: dict[str, Any]) -> list[tuple[str, str]]:
    """A config check (:data:`medacq.daemon.common.config.Check`): every table under
    ``[recon.settings]`` names a modality with a reconstructor and passes its ``Settings``
    model; problems are located like ``recon.settings.us.angles``. Only the modalities
    present are imported. Malformed structure (``recon`` or a table not being a table) is
    left to the structural check."""
    recon = data.get("recon") if isinstance(data, dict) else None
    settings = recon.get("settings") if isinstance(recon, dict) else None
    if not isinstance(settings, dict):
        return []
    problems: list[tuple[str, str]] = []
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
