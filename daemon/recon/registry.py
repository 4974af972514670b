"""Which reconstructor serves which modality (``"module:Class"``, imported on first use)."""

from __future__ import annotations

import importlib

from .base import Reconstructor

__all__ = ["RECONSTRUCTORS", "reconstructor_class"]

RECONSTRUCTORS: dict[str, str] = {
    "synthetic": "medacq.daemon.recon.synthetic:RunningMean",
    "us": "medacq.daemon.recon.ultrasound:BModeReconstructor",
    "eeg": "medacq.daemon.recon.biosignal_stage:EEGReconstructor",
    "ekg": "medacq.daemon.recon.biosignal_stage:EKGReconstructor",
    "meg": "medacq.daemon.recon.biosignal_stage:MEGReconstructor",
    "xray": "medacq.daemon.recon.xray_stage:XrayReconstructor",
    "ct": "medacq.daemon.recon.xray_stage:CTReconstructor",
    "eit": "medacq.daemon.recon.eit_stage:EitImager",
}


def reconstructor_class(modality: str) -> type[Reconstructor] | None:
    """The class for ``modality``, or ``None`` when no reconstructor handles it."""
    target = RECONSTRUCTORS.get(modality)
    if target is None:
        return None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
