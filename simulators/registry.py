"""Simulator kinds for ``medacq sim KIND`` and ``medacq up``.

Each entry: ``kind -> "module:factory"``; the factory takes keyword options (validated by
the simulator's own options model) and returns a :class:`DeviceInterface`. A device
family adds one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._interface import DeviceInterface

__all__ = ["SIMULATORS", "make_simulator", "simulator_kinds"]

SIMULATORS: dict[str, str] = {
    "synthetic": "medacq.simulators.synthetic:make",
    "us": "medacq.simulators.us_scanner:make",
    "cyton": "medacq.simulators.cyton:make",
    "hackeeg": "medacq.simulators.hackeeg:make",
    "quspin": "medacq.simulators.quspin:make",
    "flatpanel": "medacq.simulators.flatpanel:make",
    "sciospec": "medacq.simulators.sciospec:make",
    "openeit": "medacq.simulators.openeit:make",
    "gige": "medacq.simulators.gige_camera:make",
    "mri": "medacq.simulators.mri:make",
    "pet": "medacq.simulators.pet_ring:make",
    "tactile": "medacq.simulators.tactile:make",
    "us_swe": "medacq.simulators.us_swe:make",
    "spect": "medacq.simulators.gamma_camera:make",
}


def simulator_kinds() -> list[str]:
    return sorted(SIMULATORS)


def make_simulator(kind: str, **options: Any) -> DeviceInterface:
    """Build the simulator ``kind`` with ``options``; KeyError/ValueError with a clear message."""
    try:
        target = SIMULATORS[kind]
    except KeyError:
        raise KeyError(f"unknown simulator {kind!r}; known: {', '.join(simulator_kinds())}") from None
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)(**options)
