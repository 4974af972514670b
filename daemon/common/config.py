"""Rig configuration: one TOML file, validated by pydantic before anything starts.

Every error names the file, the field (``device[1].settings.rate_hz``) and what was
expected; nothing starts half-configured. See the README's configuration reference.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medacq.protocols.qos import QosPolicy

from medacq.daemon.client.runtime import default_endpoints


__all__ = [
    "Check",
    "ConfigError",
    "DaemonSection",
    "DeviceSection",
    "SafetySection",
    "ReconSection",
    "SecuritySection",
    "RigConfig",
    "load_config",
    "parse_config",
    "validation_problems",
    "endpoint_is_local",
]


class ConfigError(ValueError):
    """An invalid configuration. ``problems`` lists ``(location, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the configuration"]
        lines += [f"  {loc}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


def endpoint_is_local(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` and TCP on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(v: str) -> str:
    if not v.startswith(("tcp://", "ipc://", "inproc://")):
        raise ValueError("expected a ZeroMQ endpoint: tcp://HOST:PORT or ipc:///path")
    return v


class SecuritySection(BaseModel):
    """``[security]``: CurveZMQ authentication, rights, each tool's key pair and the audit log.

    Without ``server_secret_key`` every socket binds loopback/ipc only, and a local client of
    the daemon's control socket has the rights ``[daemon] local_operator`` gives it (operator
    over an ``ipc://`` endpoint in a private directory, such as the default endpoints; reader
    over TCP loopback, by default). With it, every socket (data, control, reconstruction) is a
    CurveZMQ server; only clients whose public key is in ``readers`` (subscribe, ``status``,
    ``list``, ``describe``, ``ping``, ``descriptor``) or ``operators`` (everything) may connect,
    and non-loopback endpoints are allowed. The audit log names each client by its key's file
    name in those folders (``operators/cli.key``: ``cli``).

    Attributes:
        server_secret_key: the daemon's key pair (``medacq keys generate-rig``: ``server.key_secret``;
            clients find the public ``server.key`` beside it). It identifies the daemon and
            the stage to their clients and is never a tool's client key.
        readers: folder of client public keys (``*.key``) with read-only rights.
        operators: folder of client public keys with operator rights (configure, start/stop, record).
        tool_keys: folder of the tools' own key pairs, one per tool: ``stage.key_secret`` (the
            reconstruction stage), ``recorder.key_secret`` (the daemon's recorder and ``medacq
            record``), ``view.key_secret`` (``medacq view``), ``cli.key_secret`` (``medacq ctl``,
            ``tail``, ``record start``...). A user's own tool uses its own pair instead
            (``--key``, ``$MEDACQ_KEY``). Made by ``medacq keys generate-rig DIR`` (``DIR/tools``).
        audit_log: file the audit records (JSON lines) are appended to; empty: the
            ``medacq.audit`` logger only (the journal under systemd).
    """

    model_config = ConfigDict(extra="forbid")

    server_secret_key: str | None = None
    readers: str | None = None
    operators: str | None = None
    tool_keys: str | None = None
    audit_log: str = ""

    @property
    def curve(self) -> bool:
        return bool(self.server_secret_key)

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "client_secret_key" in data:
            raise ValueError("client_secret_key is gone: every tool has a key pair of its own now; run "
                             "`medacq keys generate-rig DIR` and set tool_keys = \"DIR/tools\" (the stage, "
                             "recorder, view and CLI each load theirs; the audit log names each)")
        return data

    @model_validator(mode="after")
    def _files(self) -> "SecuritySection":
        if self.curve:
            for label, path, is_dir in (("server_secret_key", self.server_secret_key, False),
                                        ("readers", self.readers, True), ("operators", self.operators, True),
                                        ("tool_keys", self.tool_keys, True)):
                if path and not (Path(path).is_dir() if is_dir else Path(path).is_file()):
                    raise ValueError(f"{label}: {path} does not exist")
            if not (self.readers or self.operators):
                raise ValueError("CurveZMQ needs an allow-list: set readers and/or operators (folders of public keys)")
        return self


class DaemonSection(BaseModel):
    """``[daemon]``: sockets, queues and timers of the acquisition daemon.

    Attributes:
        data_endpoint: PUB socket the frames go out on. Default ``ipc://RUNTIME/data`` in the
            runtime directory (:func:`medacq.daemon.client.runtime.runtime_dir`: ``/run/medacq``
            under systemd, else ``$XDG_RUNTIME_DIR/medacq``, else ``/tmp/medacq-UID``), which the
            daemon creates closed to other users: the OS decides who may connect.
        control_endpoint: ROUTER socket for control requests (default ``ipc://RUNTIME/control``).
        queue_depth: frames buffered per device between driver and publisher; a full
            queue drops (and counts) rather than grows.
        queue_mb: the same bound in payload megabytes (whichever is reached first).
        sndhwm: ZeroMQ send high-water mark per subscriber (messages): the most a
            subscriber's queue in the daemon may hold, whatever the frames' size.
        sndhwm_mb: the same queue bounded in megabytes of frames: ZeroMQ counts messages, so
            the mark becomes ``sndhwm_mb / max_frame_mb`` messages (at least 2, at most ``sndhwm``).
        max_frame_mb: the largest frame any stream is expected to publish (MB); the default
            covers a 1536 x 1944 16-bit flat panel (6 MB). A stream with larger frames is
            reported (log, its ``last_error``, ``status.publisher.oversized_streams``): the
            bound is then ``mark x frame size``.
        heartbeat_s: per-stream heartbeat interval.
        descriptor_interval_s: descriptor re-publication interval.
        watchdog_stall_s: a device thread silent for longer is "unhealthy" (systemd watchdog).
        reconnect_max_s: cap of the exponential reconnect backoff.
        local_operator: without CurveZMQ, the rights of a client of ``control_endpoint`` (and
            of the reconstruction stage's ``[recon] control_endpoint``, by the same rule).
            Unset: an ``ipc://`` endpoint in a directory closed to "other" users (the OS
            decides who connects: the daemon's user and group) gives operator rights; a TCP
            loopback endpoint (any local user can connect) or an ``ipc://`` one in an open
            directory gives *reader* rights. ``true``: every local client is an operator
            (a bench, a simulated rig: ``medacq up`` sets it); ``false``: every local client is
            a reader. With CurveZMQ the allow-lists decide and this is ignored.
        trigger_reference: a device cabled to the rig's trigger line whose edge times define
            the timeline: every other device's trigger markers (and, where they share its
            clock, frames) are aligned to it from the common edges
            (:class:`~medacq.daemon.acquisition.markers.BusAligner`). Unset: no alignment.
        gil_switch_ms: the ``medacq run`` process's GIL switch interval, ms (CPython's default
            is 5): how long a thread may wait for another running Python code to let it run
            (:mod:`medacq.daemon.common.interpreter`, where the choice of 1 ms is measured).
    """

    model_config = ConfigDict(extra="forbid")

    data_endpoint: str = Field(default_factory=lambda: default_endpoints()["daemon"]["data_endpoint"])
    control_endpoint: str = Field(default_factory=lambda: default_endpoints()["daemon"]["control_endpoint"])
    queue_depth: int = Field(default=256, ge=1, le=1_000_000)
    queue_mb: float = Field(default=64.0, gt=0)
    sndhwm: int = Field(default=1000, ge=1)
    sndhwm_mb: float = Field(default=2048.0, gt=0)
    max_frame_mb: float = Field(default=8.0, gt=0)
    heartbeat_s: float = Field(default=1.0, gt=0)
    descriptor_interval_s: float = Field(default=3.0, gt=0)
    watchdog_stall_s: float = Field(default=10.0, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    local_operator: bool | None = None
    trigger_reference: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    gil_switch_ms: float = Field(default=1.0, gt=0, le=100)

    _ep = field_validator("data_endpoint", "control_endpoint")(classmethod(lambda cls, v: _check_endpoint(v)))


class SafetySection(BaseModel):
    """``[device.safety]``: when the daemon puts the device in its safe state by itself (X-ray
    source off and exposure aborted, ultrasound transmit stopped, EIT current injection stopped;
    a no-op for biosignal amplifiers). The operator's ``safe_state`` request always works; these
    add the automatic triggers. Leaving the safe state is always the operator's ``start``.

    Attributes:
        on_control_silence_s: enter the safe state when no operator heartbeat reaches the
            daemon's control socket for this long (s): a ``ping`` from any client, or any
            state-changing request (read-only queries such as ``status`` do not count: a
            monitor is not an operator). The clock starts when the daemon starts; once
            tripped it re-arms at the next heartbeat. Unset: off.
        on_fault: after a device fault while acquiring (the driver lost the connection or
            reported an error), enter the safe state as soon as the device is reachable again,
            before anything else, and do not resume acquiring (the operator starts again).
            Off: the daemon reconnects and resumes, as without this section.
        on_recon_silence_s: enter the safe state when the reconstruction stage publishes
            nothing on ``recon/<device>`` (frames, descriptors, gaps: any message) for this long
            (s) while the device acquires; counted from the start of acquisition, so leave the
            stage time to build its reconstructor. The daemon subscribes to ``[recon]
            data_endpoint``. Unset: off.
    """

    model_config = ConfigDict(extra="forbid")

    on_control_silence_s: float | None = Field(default=None, gt=0)
    on_fault: bool = False
    on_recon_silence_s: float | None = Field(default=None, gt=0)


class DeviceSection(BaseModel):
    """``[[device]]``: one instrument.

    Attributes:
        name: stream name (topic ``raw/<name>``); letters, digits, ``_`` and ``-``.
        kind: driver kind (``synthetic``, ...; ``medacq check-config`` lists them).
        address: transport address: serial path, ``socket://h:p``, ``tcp://h:p``, VISA resource.
        autostart: start acquiring when the daemon starts.
        settings: device settings, validated by the driver's settings model.
        limits: ``[device.limits]``: the range ``[low, high]`` (inclusive, in the setting's
            own unit) a control-plane ``configure`` may move each *limited* setting in (the
            fields a driver marks as physical output: X-ray ``kvp``/``ma``/``exposure_s``, EIT
            ``amplitude_a``/``frequency_hz``, ultrasound ``prf_hz``), e.g. ``kvp = [40, 120]``.
            A limited setting without an entry keeps the driver model's own range. The
            config file's own ``settings`` must lie inside. Which names are allowed is the
            driver's to say (``medacq.daemon.acquisition.devices.check_devices``).
        safety: ``[device.safety]``: automatic safe-state triggers (:class:`SafetySection`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    address: str = Field(min_length=1)
    autostart: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    safety: SafetySection = Field(default_factory=SafetySection)

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"{name}: a limit is [low, high] with finite low <= high (got [{lo}, {hi}])")
        return v

    kind: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class ReconSection(BaseModel):
    """``[recon]``: the reconstruction stage (``medacq recon``).

    Attributes:
        enabled: ``medacq up`` starts it.
        data_endpoint: PUB socket of the ``recon/...`` results (default ``ipc://RUNTIME/recon-data``).
        control_endpoint: ROUTER socket for ``status`` and modality ``action`` requests
            (default ``ipc://RUNTIME/recon-control``).
        subscribe: where raw frames come from (default: the daemon's data endpoint).
        queue_depth: default frame bound (``max_frames``) of each stream's queue (unless its
            reconstructor declares one; the byte bound, 256 MiB, holds for heavy frames), and the
            bound while the stage does not know the stream's reconstructor yet. At start, frames
            queue while a stream's worker waits for its modality's module, which the stage's
            preload thread may be importing just then (the biosignal one imports ``scipy.signal``:
            0.8 s alone, 2.1-2.4 s in ``medacq up``'s first seconds, where every process starts at
            once). With 64, ``medacq up`` lost 17-48 frames of each biosignal stream (50 frames/s)
            at every start, announced as gaps; 512 hold ~10 s of them. Under ``fifo`` with
            ``max_age_ms`` the age bound, not this one, limits the queue in steady state.
        settings: per-modality reconstructor settings, e.g. ``[recon.settings.synthetic]``.
        qos: per-stream queue policy, e.g. ``[recon.qos.us0] policy = "fifo"``
            (:class:`medacq.protocols.qos.QosPolicy`): the fields a table sets override the
            reconstructor's declared ``qos``/``max_batch``, the others keep them
            (:func:`medacq.daemon.recon.registry.resolve_qos`).
        isolation: per-stream ``"thread"``, ``"process"`` or ``"realtime"`` (a process whose
            reconstructor thread runs ``SCHED_RR`` at ``realtime_priority``), e.g.
            ``[recon.isolation] us0 = "realtime"``: overrides the reconstructor's declared
            ``isolation`` (:mod:`medacq.daemon.recon.worker_process`).
        realtime_priority: the ``SCHED_RR`` priority of ``"realtime"`` streams (1..99; needs
            CAP_SYS_NICE or an ``RLIMIT_RTPRIO`` at least this high, else refused and reported).
        gil_switch_ms: the ``medacq recon`` process's GIL switch interval, ms (as ``[daemon]
            gil_switch_ms``; CPython's default is 5).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    data_endpoint: str = Field(default_factory=lambda: default_endpoints()["recon"]["data_endpoint"])
    control_endpoint: str = Field(default_factory=lambda: default_endpoints()["recon"]["control_endpoint"])
    subscribe: str | None = None
    queue_depth: int = Field(default=512, ge=1)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    qos: dict[str, QosPolicy] = Field(default_factory=dict)
    isolation: dict[str, Literal["thread", "process", "realtime"]] = Field(default_factory=dict)
    realtime_priority: int = Field(default=10, ge=1, le=99)
    gil_switch_ms: float = Field(default=1.0, gt=0, le=100)

    _ep = field_validator("data_endpoint", "control_endpoint")(classmethod(lambda cls, v: _check_endpoint(v)))


class RigConfig(BaseModel):
    """A whole rig: ``[daemon]``, ``[[device]]`` tables and ``[recon]``."""

    model_config = ConfigDict(extra="forbid")

    daemon: DaemonSection = Field(default_factory=DaemonSection)
    device: list[DeviceSection] = Field(default_factory=list)
    recon: ReconSection = Field(default_factory=ReconSection)
    security: SecuritySection = Field(default_factory=SecuritySection)

    @model_validator(mode="after")
    def _unique(self) -> "RigConfig":
        names = [d.name for d in self.device]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"device names must be unique; repeated: {', '.join(dup)}")
        eps = [self.daemon.data_endpoint, self.daemon.control_endpoint, self.recon.data_endpoint,
               self.recon.control_endpoint]
        if len(set(eps)) != len(eps):
            raise ValueError("the daemon's and the reconstruction stage's endpoints must all differ")
        ref = self.daemon.trigger_reference
        if ref is not None and ref not in names:
            raise ValueError(f"daemon.trigger_reference {ref!r} is not a device of this rig")
        return self

    @property
    def recon_source(self) -> str:
        return self.recon.subscribe or self.daemon.data_endpoint


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_problems(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    out = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] != "missing" and "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        out.append((_loc(prefix + tuple(e["loc"])), msg))
    return out


Check = Callable[[dict[str, Any]], list[tuple[str, str]]]
"""A check of one part of a parsed config document: ``(location, problem)`` pairs, empty if fine.

The services that own a section's meaning supply them, so this module needs neither the
drivers nor the reconstructors: ``medacq.daemon.acquisition.devices.check_devices`` (device kinds
and each driver's settings model), ``medacq.daemon.recon.registry.check_recon_settings``.
"""


def parse_config(data: dict[str, Any], source: str = "<config>", checks: Sequence[Check] = ()) -> RigConfig:
    """Validate a parsed TOML document: its structure here, each section's meaning by ``checks``.

    Raises :class:`ConfigError` listing every problem found, not just the first.
    """
    problems: list[tuple[str, str]] = []
    cfg: RigConfig | None = None
    try:
        cfg = RigConfig.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(exc)
    if isinstance(data, dict):
        for check in checks:
            problems += check(data)
    problems += _remote_problems(data)
    if problems or cfg is None:
        raise ConfigError(source, problems)
    return cfg


def _remote_problems(data: Any) -> list[tuple[str, str]]:
    """Non-loopback endpoints without CurveZMQ, located by field."""
    if not isinstance(data, dict):
        return []
    sec = data.get("security")
    if isinstance(sec, dict) and sec.get("server_secret_key"):
        return []
    out = []
    for section in ("daemon", "recon"):
        body = data.get(section)
        for key in ("data_endpoint", "control_endpoint"):
            v = body.get(key) if isinstance(body, dict) else None
            if isinstance(v, str) and v.startswith("tcp://") and not endpoint_is_local(v):
                out.append((f"{section}.{key}", f"binding to a non-loopback address ({v}) requires CurveZMQ: set "
                            "[security] server_secret_key and an allow-list (readers/operators); see `medacq keys`"))
    return out


def load_config(path: str | Path, checks: Sequence[Check] = ()) -> RigConfig:
    """Read and validate a TOML rig config file (``checks``: see :data:`Check`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), [("(file)", "no such file")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [("(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [("(syntax)", f"not valid TOML: {exc}")]) from None
    return parse_config(data, str(p), checks)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def dump_config(data: dict[str, Any]) -> str:
    """Write a rig config document (as :func:`parse_config` takes it) as TOML text."""
    lines: list[str] = []
    for section in ("daemon", "recon", "security"):
        body = data.get(section)
        if body:
            lines.append(f"[{section}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items()]
            lines.append("")
    for dev in data.get("device", []):
        lines.append("[[device]]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in dev.items()]
        lines.append("")
    return "\n".join(lines)
