"""The ``[[device]]`` tables' meaning: which kinds exist, what settings each driver takes, and
which of them a control-plane ``configure`` may change.

Kept here, not in :mod:`medacq.daemon.common.config`, because only the acquisition service
imports drivers (``tests/test_layering.py``); the config module checks structure, this module
the device part, and :func:`load_rig_config` puts both together.

A driver's settings model marks two kinds of field (``Field(json_schema_extra=...)``):

- ``{"config_only": True}``: the field loads code or names a file (e.g. the flat panel's
  ``visa_library``, a shared library pyvisa loads with ctypes). Only the config file sets it;
  a ``configure`` that changes it is refused (``forbidden``).
- ``{"config_only_path": True}``: the field takes either a value (a control-plane ``configure``
  may change it) or a string naming a file the daemon reads (the MRI console's Pulseq ``.seq``):
  a ``configure`` that sets or changes a string value is refused (``forbidden``), so a client with
  configure rights cannot make the daemon open an arbitrary path (a FIFO would hang its worker).
- ``{"limited": True}``: the field sets a physical output (X-ray tube kVp/mA, EIT injection
  current, ultrasound PRF). A ``configure`` may move it only inside the device's
  ``[device.limits]`` range from the config file, else inside the model's own bounds
  (``invalid_settings``, naming the limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError

from medacq.daemon.common.config import RigConfig, load_config, parse_config, validation_problems
from medacq.drivers._base import Driver
from medacq.drivers.registry import driver_class, known_kinds
from medacq.protocols.control import ControlError

__all__ = ["SettingsPolicy", "check_devices", "check_settings_change", "effective_limits", "known_kinds",
           "load_rig_config", "make_driver", "parse_rig_config", "settings_policy"]


@dataclass(frozen=True)
class SettingsPolicy:
    """What a control-plane ``configure`` may do to one settings model.

    Attributes:
        config_only: fields only the config file sets.
        config_only_path: fields whose *string* values (file paths) only the config file sets.
        bounds: each *limited* field's own range ``(low, high)`` from its model (``None``: open).
    """

    config_only: frozenset[str]
    bounds: dict[str, tuple[float | None, float | None]]
    config_only_path: frozenset[str] = frozenset()


def _marks(info: Any) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def settings_policy(settings_cls: type[BaseModel]) -> SettingsPolicy:
    """The config-only and limited fields of a driver's settings model (see the module doc)."""
    config_only = set()
    paths = set()
    bounds: dict[str, tuple[float | None, float | None]] = {}
    for name, info in settings_cls.model_fields.items():
        marks = _marks(info)
        if marks.get("config_only"):
            config_only.add(name)
        if marks.get("config_only_path"):
            paths.add(name)
        if marks.get("limited"):
            lo = hi = None
            for m in info.metadata:
                if isinstance(m, (Ge, Gt)):
                    lo = float(m.ge if isinstance(m, Ge) else m.gt)
                elif isinstance(m, (Le, Lt)):
                    hi = float(m.le if isinstance(m, Le) else m.lt)
            bounds[name] = (lo, hi)
    return SettingsPolicy(frozenset(config_only), bounds, frozenset(paths))


def _fmt(v: float | None) -> str:
    return "open" if v is None else f"{v:g}"


def effective_limits(settings_cls: type[BaseModel], limits: dict[str, tuple[float, float]]
                     ) -> dict[str, tuple[float | None, float | None]]:
    """Each limited field's range for ``configure``: the config file's, else the model's."""
    return {**settings_policy(settings_cls).bounds, **{k: (float(lo), float(hi)) for k, (lo, hi) in limits.items()}}


def check_settings_change(driver_cls: type[Driver], current: BaseModel, patch: dict[str, Any],
                          limits: dict[str, tuple[float, float]], device: str = "") -> BaseModel:
    """Judge a control-plane ``configure``: ``patch`` over ``current`` under the config's ``limits``.

    Returns the merged, validated settings. Raises :class:`ControlError`: ``forbidden`` when
    the patch changes a config-only field, ``invalid_settings`` when the merged settings do not
    validate or a limited field leaves its limit (the message names the limit and its source).
    """
    where = f"{device}: " if device else ""
    policy = settings_policy(driver_cls.Settings)
    now = current.model_dump()
    changed = sorted(k for k in patch if k in policy.config_only and patch[k] != now.get(k))
    changed += sorted(k for k in patch if k in policy.config_only_path and isinstance(patch[k], str)
                      and patch[k] != now.get(k))
    if changed:
        raise ControlError("forbidden", f"{where}{', '.join(changed)} can only be set in the config file "
                                        "(it names code or a file the daemon would load); edit the config "
                                        "and restart the daemon")
    try:
        merged = driver_cls.validate_settings({**now, **patch})
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) or str(exc)
        raise ControlError("invalid_settings", f"{where}{detail}") from None
    for name in sorted(k for k in patch if k in policy.bounds):
        v = getattr(merged, name)
        if v is None:
            continue
        if name in limits:
            lo, hi = limits[name]
            source = "set in the config file"
        else:
            lo, hi = policy.bounds[name]  # type: ignore[assignment]
            source = f"of the {driver_cls.kind} settings model"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ControlError("invalid_settings", f"{where}{name}={v:g} outside the limit "
                                                   f"[{_fmt(lo)}, {_fmt(hi)}] {source}")
    return merged


def _limit_problems(i: int, cls: type[Driver], dev: dict[str, Any]) -> list[tuple[str, str]]:
    """``[device.limits]`` names limited fields only, and the file's own settings lie inside."""
    limits = dev.get("limits")
    if not isinstance(limits, dict):
        return []  # the structural check reports it
    policy = settings_policy(cls.Settings)
    problems: list[tuple[str, str]] = []
    try:
        settings = cls.validate_settings(dev.get("settings", {}))
    except ValidationError:
        settings = None  # reported by the settings check
    for name, rng in limits.items():
        if name not in policy.bounds:
            known = ", ".join(sorted(policy.bounds)) or "none"
            problems.append((f"device[{i}].limits.{name}", f"{name} is not a limited setting of {cls.kind} "
                                                           f"devices (limited settings: {known})"))
            continue
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in rng)
                and rng[0] <= rng[1]):
            continue  # the structural check reports it
        v = getattr(settings, name, None) if settings is not None else None
        if v is not None and not rng[0] <= v <= rng[1]:
            problems.append((f"device[{i}].settings.{name}", f"{name}={v:g} is outside this device's own limit "
                                                             f"[{rng[0]:g}, {rng[1]:g}] (device[{i}].limits)"))
    return problems


def check_devices(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Every device's kind is registered, its ``settings`` pass that driver's settings model, and
    its ``limits`` name limited settings that its own settings lie inside."""
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
            cls = driver_class(dev["kind"])
            try:
                cls.validate_settings(dev.get("settings", {}))
            except ValidationError as exc:
                problems += validation_problems(exc, ("device", i, "settings"))
            problems += _limit_problems(i, cls, dev)
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
