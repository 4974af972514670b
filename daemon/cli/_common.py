"""What every command group shares: one-line errors, endpoints, client keys, KEY=VALUE options."""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

__all__ = ["CliError", "DEFAULT_BASE_PORT", "add_base_port_arg", "add_endpoint_args", "add_key_args", "client_curve",
           "rig_endpoints", "parse_kv", "load_rig", "parse_value", "wait_for_signal"]

DEFAULT_BASE_PORT = 5555


class CliError(Exception):
    """A failure explained in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def rig_endpoints(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """(daemon control, recon control, data endpoints) from --config, else --base-port (a
    ``medacq up`` rig on TCP loopback), else the local rig: the default ``ipc://`` endpoints in
    the runtime directory when a daemon listens there, else ``medacq up``'s ports 5555..5558."""
    if getattr(args, "config", None):
        cfg = load_rig(args.config)
        return cfg.daemon.control_endpoint, cfg.recon.control_endpoint, [cfg.daemon.data_endpoint,
                                                                         cfg.recon.data_endpoint]
    from medacq.daemon.client.runtime import local_rig_endpoints, tcp_endpoints

    base = getattr(args, "base_port", None)
    ep = tcp_endpoints(base) if base is not None else local_rig_endpoints()
    return (ep["daemon"]["control_endpoint"], ep["recon"]["control_endpoint"],
            [ep["daemon"]["data_endpoint"], ep["recon"]["data_endpoint"]])


def client_curve(args: argparse.Namespace, tool: str = "cli"):
    """The CurveZMQ client keys ``tool`` connects with (``None`` without CurveZMQ): --key/--keys
    and --server-key, else ``$MEDACQ_KEY``/``$MEDACQ_SERVER_KEY``, else the config's
    ``[security] tool_keys``/``<tool>.key_secret`` (:func:`medacq.daemon.common.security.tool_keys`)."""
    from medacq.daemon.common.config import SecuritySection
    from medacq.daemon.common.security import ToolKeyError, tool_keys

    sec = load_rig(args.config).security if getattr(args, "config", None) else SecuritySection()
    try:
        return tool_keys(sec, tool, getattr(args, "keys", None), getattr(args, "server_key", None))
    except ToolKeyError as exc:
        raise CliError(str(exc), 2) from None


def load_rig(path: str):
    from medacq.daemon.acquisition.devices import check_devices
    from medacq.daemon.common.config import ConfigError, load_config
    from medacq.daemon.recon.registry import check_recon_settings

    try:
        return load_config(path, (check_devices, check_recon_settings))
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kv(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise CliError(f"expected KEY=VALUE, got {p!r}", 2)
        k, _, v = p.partition("=")
        out[k.strip()] = parse_value(v)
    return out


def wait_for_signal(duration: float | None) -> int | None:
    got: list[int] = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, _f: got.append(signum))
    end = None if duration is None else time.monotonic() + duration
    while not got and (end is None or time.monotonic() < end):
        time.sleep(0.1)
    return got[0] if got else None


def add_endpoint_args(sp: argparse.ArgumentParser) -> None:
    """--config / --base-port / --endpoint / --keys / --server-key, for commands that talk to a rig."""
    sp.add_argument("--config", help="rig config (to find the endpoints)")
    add_base_port_arg(sp)
    sp.add_argument("--endpoint", help="explicit ZeroMQ endpoint")
    add_key_args(sp)


def add_base_port_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--base-port", type=int, default=None,
                    help="without --config: a `medacq up` rig's first port (TCP loopback). Default: the local "
                         "rig's ipc:// sockets in the runtime directory if a daemon listens there, else "
                         f"port {DEFAULT_BASE_PORT} (`medacq up`)")


def add_key_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--key", "--keys", dest="keys", metavar="NAME.key_secret",
                    help="CurveZMQ: this client's own key pair (default: $MEDACQ_KEY, else the config's "
                         "[security] tool_keys)")
    sp.add_argument("--server-key", metavar="SERVER.key",
                    help="CurveZMQ: the daemon's public key (default: $MEDACQ_SERVER_KEY, else beside the "
                         "config's server_secret_key)")
