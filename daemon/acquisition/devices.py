"""The ``[[device]]`` tables' meaning: which kinds exist and what settings each driver takes.

Kept here, not in :mod:`medacq.daemon.common.config`, because only the acquisition service
imports drivers (``tests/test_layering.py``); the config module checks structure, this module
the device part, and :func:`load_rig_config` puts both together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medacq.daemon.common.config import RigConfig, load_config, parse_config, validation_problems
from medacq.drivers._base import Driver
from medacq.drivers.registry import driver_class, known_kinds

__all__ = ["check_devices", "known_kinds", "load_rig_config", "make_driver", "parse_rig_config"]


def check_devices(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Every device's kind is registered and its ``settings`` pass that driver's settings model."""
    problems: list[tuple[str, str]] = []
    devices = data.get("device", [])
    kinds = known_kinds()
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        if not isinstance(dev, dict) or not isinstance(dev.get("kind"), str):
            continue  # the structural check reports it
        if dev["kind"] not in kinds:
            problems.append((f"device[{i}].kind", f"unknown device kind {dev['kind']!r}; known kinds: {', '.join(kinds)}"))
            continue
        if isinstance(dev.get("settings", {}), dict):
            try:
                driver_class(dev["kind"]).validate_settings(dev.get("settings", {}))
            except ValidationError as exc:
                problems += validation_problems(exc, ("device", i, "settings"))
    return problems


def parse_rig_config(data: dict[str, Any], source: str = "<config>") -> RigConfig:
    """:func:`~medacq.daemon.common.config.parse_config` with the device checks."""
    return parse_config(data, source, (check_devices,))


def load_rig_config(path: str | Path) -> RigConfig:
    """:func:`~medacq.daemon.common.config.load_config` with the device checks."""
    return load_config(path, (check_devices,))


def make_driver(kind: str, name: str, address: str, settings: dict[str, Any] | None = None) -> Driver:
    """A driver of ``kind`` for ``address`` with validated ``settings`` (not yet opened).

    For tools that drive one device directly (``medacq bench``); the daemon's workers own theirs.
    """
    cls = driver_class(kind)
    return cls(name, address, cls.validate_settings(settings or {}))
