"""Cross-host clock figure of ``medacq bench timeline``: a daemon's clock offset measured across a veth.

A daemon (no devices, CurveZMQ with a fresh rig's keys) runs in network namespace A bound to its
veth address; a client in namespace B measures its clock offset with
:class:`medacq.client.ClockEstimator` (``bursts`` bursts of ``probes`` ``ping`` round trips,
``spacing_s`` apart, as its background refresh would) across the veth, and, as the baseline in the
same run, a client in namespace A the same daemon on the same address without crossing the veth.
Both namespaces share the kernel's clocks, so the true offset is 0: the *residual* is the estimate
itself. Figures (ms): the uncertainty (the chosen probes' largest RTT/2) median and max over the
bursts, the residual |offset| max (realtime and monotonic), whether every residual lay within its
burst's uncertainty, and the round trips.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medacq.daemon.bench.netns import NetnsUnavailable, VethPair

__all__ = ["cross_host_clock"]

_DATA, _CTL = 7655, 7656

_CLIENT = r"""
import json, sys, time
from medacq.client import ClientKeys, ClockEstimator
a = json.loads(sys.argv[1])
keys = ClientKeys.load(a["key"], a["server"])
end = time.monotonic() + 15
while True:  # the daemon may still be starting
    try:
        clk = ClockEstimator(a["ctl"], curve=keys, probes=a["probes"], timeout=1.0)
        break
    except Exception:
        if time.monotonic() > end:
            raise
        time.sleep(0.2)
with clk:
    for _ in range(a["bursts"] - 1):
        time.sleep(a["spacing_s"])
        clk.measure()
    print(json.dumps([e.as_dict() for e in clk.history]))
"""


def _summary(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    unc = [b["uncertainty_ms"] for b in bursts]
    res = [max(abs(b["offset_ms"]), abs(b["offset_mono_ms"])) for b in bursts]
    return {"bursts": len(bursts), "uncertainty_ms_median": round(statistics.median(unc), 4),
            "uncertainty_ms_max": round(max(unc), 4), "residual_ms_max": round(max(res), 4),
            "residual_within_uncertainty": all(abs(b["offset_mono_ms"]) <= b["uncertainty_ms"] for b in bursts),
            "rtt_min_ms": round(min(b["rtt_min_ms"] for b in bursts), 4),
            "rtt_median_ms": round(statistics.median(b["rtt_median_ms"] for b in bursts), 4)}


def cross_host_clock(probes: int = 32, bursts: int = 10, spacing_s: float = 0.2) -> dict[str, Any]:
    """The cross-host figures (keys ``cross_host_*``); ``cross_host_offset_uncertainty_ms`` is
    ``None`` with the reason in ``cross_host_note`` where namespaces cannot be made or the run fails."""
    from medacq.daemon.common.config import dump_config
    from medacq.daemon.common.security import generate_rig_keys

    try:
        pair = VethPair().create()
    except NetnsUnavailable as exc:
        return {"cross_host_offset_uncertainty_ms": None, "cross_host_note": f"not measured: {exc}"}
    try:
        with tempfile.TemporaryDirectory(prefix="medacq-xhost-") as tmp:
            keys = Path(tmp) / "keys"
            generate_rig_keys(keys)
            ctl = f"tcp://{pair.addr_a}:{_CTL}"
            cfg = {"daemon": {"data_endpoint": f"tcp://{pair.addr_a}:{_DATA}", "control_endpoint": ctl},
                   "recon": {"data_endpoint": "tcp://127.0.0.1:7657", "control_endpoint": "tcp://127.0.0.1:7658"},
                   "security": {"server_secret_key": str(keys / "server.key_secret"),
                                "readers": str(keys / "readers"), "operators": str(keys / "operators"),
                                "tool_keys": str(keys / "tools")}}
            (Path(tmp) / "rig.toml").write_text(dump_config(cfg))
            pair.popen(pair.ns_a, [sys.executable, "-m", "medacq.daemon.cli", "run", "--config",
                                   str(Path(tmp) / "rig.toml")], log=Path(tmp) / "daemon.log")
            args = {"key": str(keys / "tools" / "cli.key_secret"), "server": str(keys / "server.key"), "ctl": ctl,
                    "probes": probes, "bursts": bursts, "spacing_s": spacing_s}
            got: dict[str, list[dict[str, Any]]] = {}
            for where, ns in (("cross", pair.ns_b), ("same", pair.ns_a)):
                t0 = time.monotonic()
                r = subprocess.run(pair.exec_argv(ns, [sys.executable, "-c", _CLIENT, json.dumps(args)]),
                                   capture_output=True, text=True, timeout=60 + bursts * (spacing_s + 2))
                if r.returncode != 0:
                    log = (Path(tmp) / "daemon.log").read_text(errors="replace")[-300:]
                    return {"cross_host_offset_uncertainty_ms": None,
                            "cross_host_note": f"not measured: the clock client in {ns} failed after "
                                               f"{time.monotonic() - t0:.1f} s: {r.stderr.strip()[-300:]} "
                                               f"(daemon log: {log})"}
                got[where] = json.loads(r.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"cross_host_offset_uncertainty_ms": None, "cross_host_note": f"not measured: {exc}"}
    finally:
        pair.close()  # the daemon first, then both namespaces
    cross, same = _summary(got["cross"]), _summary(got["same"])
    return {
        "cross_host_offset_uncertainty_ms": cross["uncertainty_ms_median"],
        "cross_host_offset_residual_ms": cross["residual_ms_max"],
        "cross_host": {**cross, "probes": probes, "spacing_s": spacing_s, "same_namespace_baseline": same},
        "cross_host_note": (f"a daemon in network namespace {pair.ns_a} ({pair.addr_a}, CurveZMQ) measured from "
                            f"{pair.ns_b} across a veth pair with ClockEstimator: {bursts} bursts of {probes} pings, "
                            "offset = median of the lowest-RTT quarter, uncertainty = their largest RTT/2 "
                            "(median over bursts); the namespaces share one kernel clock, so the true offset is 0 "
                            "and the residual is |offset| (max over bursts, realtime and monotonic); baseline: "
                            "the same daemon from its own namespace"),
    }


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m medacq.daemon.bench.multihost
    print(json.dumps(cross_host_clock(), indent=2))
