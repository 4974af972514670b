"""Which driver class serves which device ``kind``.

Entries are ``"module:Class"`` strings imported on first use, so a rig only imports the
families it configures. A device family adds one line here.
"""

from __future__ import annotations

import importlib

from ._base import Driver

__all__ = ["DRIVERS", "driver_class", "known_kinds"]

DRIVERS: dict[str, str] = {
    "synthetic": "medacq.drivers.synthetic:SyntheticDriver",
    "ultrasound": "medacq.drivers.ultrasound:UltrasoundDriver",
    "cyton": "medacq.drivers.cyton:CytonDriver",
    "hackeeg": "medacq.drivers.hackeeg:HackEEGDriver",
    "quspin": "medacq.drivers.quspin:QuSpinDriver",
    "flatpanel": "medacq.drivers.flatpanel:FlatPanelDriver",
    "sciospec": "medacq.drivers.sciospec:SciospecDriver",
    "openeit": "medacq.drivers.openeit:OpenEITDriver",
    "mri": "medacq.drivers.mri:MriDriver",
    "gige": "medacq.drivers.gige:GigEDriver",
    "pet": "medacq.drivers.pet:PetDriver",
    "tactile": "medacq.drivers.tactile:TactileDriver",
    "us_swe": "medacq.drivers.us_elastography:ElastographyDriver",
    "spect": "medacq.drivers.spect:SpectDriver",
}


# Extra kinds from the environment, for test-only drivers: MEDACQ_EXTRA_DRIVERS="kind=module:Class,..."
# (never overrides a built-in kind).
for _spec in __import__("os").environ.get("MEDACQ_EXTRA_DRIVERS", "").split(","):
    _kind, _sep, _target = _spec.partition("=")
    if _sep and ":" in _target:
        DRIVERS.setdefault(_kind.strip(), _target.strip())


def known_kinds() -> list[str]:
    return sorted(DRIVERS)


def driver_class(kind: str) -> type[Driver]:
    """The driver class for ``kind``; KeyError naming the known kinds if there is none."""
    try:
        target = DRIVERS[kind]
    except KeyError:
        raise KeyError(f"unknown device kind {kind!r}; known kinds: {', '.join(known_kinds())}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
