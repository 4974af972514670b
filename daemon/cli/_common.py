"""What every command group shares: one-line errors, endpoints, client keys, KEY=VALUE options."""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

__all__ = ["CliError", "DEFAULT_BASE_PORT", "add_endpoint_args", "client_curve", "rig_endpoints", "parse_kv", "load_rig",
           "parse_value", "wait_for_signal"]

DEFAULT_BASE_PORT = 5555


class CliError(Exception):
    """A failure explained in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def rig_endpoints(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """(daemon control, recon control, data endpoints) from --config or --base-port."""
    if getattr(args, "config", None):
        cfg = load_rig(args.config)
        return cfg.daemon.control_endpoint, cfg.recon.control_endpoint, [cfg.daemon.data_endpoint,
                                                                         cfg.recon.data_endpoint]
    from medacq.simulators.rig import endpoints_for

    ep = endpoints_for(args.base_port)
    return (ep["daemon"]["control_endpoint"], ep["recon"]["control_endpoint"],
            [ep["daemon"]["data_endpoint"], ep["recon"]["data_endpoint"]])


def client_curve(args: argparse.Namespace):
    """Client keys from --keys/--server-key, or from the config's [security] section."""
    from medacq.daemon.common.security import load_client_keys

    keys, server = getattr(args, "keys", None), getattr(args, "server_key", None)
    if keys or server:
        if not (keys and server):
            raise CliError("CurveZMQ needs both --keys CLIENT.key_secret and --server-key SERVER.key", 2)
        try:
            return load_client_keys(keys, server)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot load keys: {exc}", 2) from None
    if getattr(args, "config", None):
        sec = load_rig(args.config).security
        if sec.curve:
            return load_client_keys(sec.client_secret_key or sec.server_secret_key, sec.server_secret_key)
    return None


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
    sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                    help="without --config: the rig's first port (default %(default)s, as `medacq up`)")
    sp.add_argument("--endpoint", help="explicit ZeroMQ endpoint")
    sp.add_argument("--keys", help="CurveZMQ: this client's NAME.key_secret")
    sp.add_argument("--server-key", help="CurveZMQ: the daemon's public key file (NAME.key)")
