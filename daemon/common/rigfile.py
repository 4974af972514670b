"""A rig on several hosts: the ``medacq up --rig RIG.toml`` file, validated before anything starts.

A rig file names the hosts (``[[host]]``) and puts each device on one of them; :func:`load_rig_file`
checks it as a whole and :func:`host_configs` splits it into one ordinary rig config document per host
(:func:`medacq.daemon.common.config.parse_config` takes each), its four endpoints on that host's
address::

    [security]                       # needed as soon as one host's address is not loopback;
    server_secret_key = "/etc/medacq/keys/server.key_secret"   # the same paths must exist on
    readers = "/etc/medacq/keys/readers"                       # every host and here (the CLI's key)
    operators = "/etc/medacq/keys/operators"
    tool_keys = "/etc/medacq/keys/tools"

    [daemon]                         # optional: every host's [daemon] (no endpoints here)
    heartbeat_s = 0.5

    [[host]]
    name = "imaging"
    address = "10.0.0.1"             # its daemon and stage bind here
    launch = ["ssh", "imaging-pc"]   # argv prefix that runs a command there; [] = this machine
    base_port = 5555                 # data, control, recon data, recon control: base_port + 0..3

    [[device]]
    name = "us0"
    kind = "ultrasound"
    host = "imaging"
    address = "tcp://192.168.1.20:18944"

    [[device]]
    name = "ekg0"
    kind = "hackeeg"
    host = "bio"
    simulate = true                  # served by a simulator on its host (no address)

Every problem is reported with its location, all at once (:class:`~medacq.daemon.common.config.ConfigError`).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medacq.daemon.common.config import (Check, ConfigError, SafetySection, SecuritySection, endpoint_is_local,
                                         parse_config, validation_problems)

__all__ = ["RigHost", "RigDevice", "RigFile", "load_rig_file", "parse_rig_file", "host_configs",
           "SIMULATED_ADDRESS"]

SIMULATED_ADDRESS = "simulated"
"""The placeholder address of a ``simulate = true`` device until its host's simulator is serving."""

_ENDPOINT_KEYS = ("data_endpoint", "control_endpoint")


class RigHost(BaseModel):
    """``[[host]]``: one machine of the rig and how to run a command there.

    Attributes:
        name: the name devices refer to (``host = "..."``); letters, digits, ``_``, ``-``.
        address: the IP address (or host name) the host's daemon and reconstruction stage bind on
            and clients connect to. Not loopback: the rig file needs ``[security]``.
        launch: argv prefix that runs a command on the host: ``["ssh", "imaging-pc"]``,
            ``["ip", "netns", "exec", "ns1"]``; ``[]``: this machine. When the prefix's program
            is ``ssh`` the command is passed as one shell-quoted string (ssh hands it to the
            remote shell).
        medacq: argv that runs ``medacq`` on the host. Default: ``["medacq"]`` through a
            launcher, this interpreter (``python -m medacq.daemon.cli``) with ``launch = []``.
        base_port: the host's four ports: daemon data, daemon control, recon data, recon control
            (``base_port + 0 .. 3``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    address: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    launch: list[str] = Field(default_factory=list)
    medacq: list[str] | None = None
    base_port: int = Field(default=5555, ge=1, le=65532)

    @field_validator("medacq")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("an argv with at least the program (e.g. [\"medacq\"])")
        return v

    def endpoint(self, offset: int) -> str:
        """``tcp://ADDRESS:base_port+offset`` (an IPv6 address in brackets)."""
        host = self.address
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"tcp://{host}:{self.base_port + offset}"

    @property
    def local(self) -> bool:
        """The address is loopback (``127.0.0.0/8``, ``::1``, ``localhost``): no keys needed."""
        return endpoint_is_local(self.endpoint(0))


class RigDevice(BaseModel):
    """``[[device]]``: a device of the rig (the fields of a rig config's ``[[device]]``) and its host.

    Attributes:
        host: the ``[[host]]`` it is cabled to (its daemon reads it).
        simulate: serve it by a simulator on that host (the built-in one for its ``kind``, as
            ``medacq up`` does); ``address`` is then filled in when the simulator serves.
        sim_options: simulator options (``medacq sim KIND KEY=VALUE``), with ``simulate``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kind: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    host: str = Field(min_length=1)
    address: str | None = Field(default=None, min_length=1)
    autostart: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    safety: SafetySection = Field(default_factory=SafetySection)
    simulate: bool = False
    sim_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _address(self) -> "RigDevice":
        if self.simulate and self.address is not None:
            raise ValueError("a simulated device has no address (its host's simulator gives it)")
        if not self.simulate and self.address is None:
            raise ValueError("address: required (or simulate = true)")
        if self.sim_options and not self.simulate:
            raise ValueError("sim_options: only with simulate = true")
        return self

    def device_doc(self) -> dict[str, Any]:
        """This device as a rig config's ``[[device]]`` table."""
        doc = self.model_dump(exclude={"host", "simulate", "sim_options", "safety", "limits"}, exclude_none=True)
        doc["address"] = self.address or SIMULATED_ADDRESS
        if self.limits:
            doc["limits"] = {k: list(v) for k, v in self.limits.items()}
        safety = self.safety.model_dump(exclude_defaults=True)
        if safety:
            doc["safety"] = safety
        return doc


class RigFile(BaseModel):
    """A whole rig across hosts: ``[[host]]``, ``[[device]]`` (each with ``host``), and the sections
    every host's config shares: ``[security]``, ``[daemon]`` and ``[recon]`` without endpoints."""

    model_config = ConfigDict(extra="forbid")

    host: list[RigHost] = Field(min_length=1)
    device: list[RigDevice] = Field(default_factory=list)
    security: SecuritySection = Field(default_factory=SecuritySection)
    daemon: dict[str, Any] = Field(default_factory=dict)
    recon: dict[str, Any] = Field(default_factory=dict)

    @field_validator("daemon", "recon")
    @classmethod
    def _no_endpoints(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in (*_ENDPOINT_KEYS, "subscribe") if k in v]
        if bad:
            raise ValueError(f"{', '.join(bad)}: set per host by up --rig (address and base_port), not here")
        return v

    def by_name(self, name: str) -> RigHost:
        return next(h for h in self.host if h.name == name)


def _rig_problems(rig: RigFile) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    names = [h.name for h in rig.host]
    for n in sorted({n for n in names if names.count(n) > 1}):
        out.append(("host", f"host names must be unique; repeated: {n}"))
    dev_names = [d.name for d in rig.device]
    for n in sorted({n for n in dev_names if dev_names.count(n) > 1}):
        out.append(("device", f"device names must be unique across the rig (one topic tree); repeated: {n}"))
    for i, d in enumerate(rig.device):
        if d.host not in names:
            out.append((f"device[{i}].host", f"unknown host {d.host!r}; the rig's hosts: {', '.join(names)}"))
    ports: dict[tuple[str, int], str] = {}
    for i, h in enumerate(rig.host):
        for k in range(4):
            key = (h.address, h.base_port + k)
            if key in ports and ports[key] != h.name:
                out.append((f"host[{i}].base_port", f"{h.address}:{h.base_port + k} is also a port of host "
                            f"{ports[key]!r}: give hosts on one address base ports at least 4 apart"))
                break
            ports[key] = h.name
        if not h.local and not rig.security.curve:
            out.append((f"host[{i}].address", f"host {h.name!r} binds on a non-loopback address ({h.address}), "
                        "which requires CurveZMQ: add [security] server_secret_key, readers/operators and tool_keys "
                        "(`medacq keys generate-rig DIR`; the same paths on every host)"))
    return out


def parse_rig_file(data: dict[str, Any], source: str = "<rig>", checks: Sequence[Check] = ()) -> RigFile:
    """Validate a parsed rig file: its structure, hosts and devices, and every host's config as
    :func:`~medacq.daemon.common.config.parse_config` (with ``checks``) would take it. Raises
    :class:`~medacq.daemon.common.config.ConfigError` listing every problem."""
    try:
        rig = RigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from None
    problems = _rig_problems(rig)
    if not problems:
        # the checks see the rig's devices with the rig file's indices, and its shared [recon]
        whole: dict[str, Any] = {"device": [d.device_doc() for d in rig.device], "recon": dict(rig.recon)}
        for check in checks:
            problems += check(whole)
    if not problems:
        for name, doc in host_configs(rig).items():
            try:
                parse_config(doc, f"{source} (host {name})")
            except ConfigError as exc:
                problems += [(f"host {name}: {loc}", msg) for loc, msg in exc.problems]
    if problems:
        raise ConfigError(source, problems)
    return rig


def load_rig_file(path: str | Path, checks: Sequence[Check] = ()) -> RigFile:
    """Read and validate a rig file (:func:`parse_rig_file`)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(p), [("(file)", "no such file")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [("(file)", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [("(syntax)", f"not valid TOML: {exc}")]) from None
    return parse_rig_file(data, str(p), checks)


def host_configs(rig: RigFile) -> dict[str, dict[str, Any]]:
    """One rig config document per host (in ``[[host]]`` order): its devices, its endpoints on
    its address, the shared ``[daemon]``/``[recon]``/``[security]`` sections. A simulated device
    has the address :data:`SIMULATED_ADDRESS` until its simulator serves."""
    out: dict[str, dict[str, Any]] = {}
    sec = rig.security.model_dump(exclude_defaults=True)
    for h in rig.host:
        doc: dict[str, Any] = {
            "daemon": {**rig.daemon, "data_endpoint": h.endpoint(0), "control_endpoint": h.endpoint(1)},
            "recon": {**rig.recon, "data_endpoint": h.endpoint(2), "control_endpoint": h.endpoint(3)},
            "device": [d.device_doc() for d in rig.device if d.host == h.name],
        }
        if sec:
            doc["security"] = sec
        out[h.name] = doc
    return out
