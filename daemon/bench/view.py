"""``medacq bench view``: frame → pixels latency of the live view in headless Chromium.

A synthetic rig (a trace stream, an image stream and a scalar stream, each also
reconstructed by the synthetic running mean) runs with the daemon and the reconstruction
stage as separate processes (as ``medacq up`` does) and ``medacq view`` as a third; Debian's
Chromium, driven by Playwright, shows the page for ``--duration`` seconds. The page
acknowledges each drawn update (``requestAnimationFrame``) and the view server aggregates

* ``acq_to_pixels_ms``: frame clock (header ``t_mono_ns``) → drawn, p50/p99;
* ``bridge_to_pixels_ms``: the view's own share (ZeroMQ receive in the bridge → drawn).

Baseline, same run: a plain :class:`~medacq.client.Subscriber` in this process measures
frame clock → received for the same topics (``baseline_subscriber_ms``): the ZeroMQ floor a
view cannot beat. ``view_overhead_ms_p50`` is the difference of the p50s.

:class:`ViewRig` (also used by the browser tests) starts the rig.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


from medacq.daemon.bench.runner import free_ports
from medacq.simulators.rig import RigEntry, SimulatedRig

__all__ = ["VIEW_RIG", "ViewRig", "chromium_path", "browser_args", "bench_view"]

#: The synthetic rig the view is measured and tested against: one stream of each panel kind.
VIEW_RIG: list[RigEntry] = [
    RigEntry("synth0", "synthetic", "synthetic", "pty", "serial", {"seed": 1},
             {"shape": [8, 64], "dtype": "<f4", "rate_hz": 50.0, "seed": 1, "units": "uV"}),
    RigEntry("img0", "synthetic", "synthetic", "pty", "serial", {"seed": 2},
             {"shape": [128, 128], "dtype": "<u2", "rate_hz": 20.0, "seed": 2, "axes": ["y", "x"],
              "units": "counts"}),
    RigEntry("val0", "synthetic", "synthetic", "pty", "serial", {"seed": 3},
             {"shape": [3], "dtype": "<f4", "rate_hz": 5.0, "seed": 3, "axes": ["value"], "units": "a.u."}),
]

#: Chromium flags for a closed network and a root user (see the machine notes).
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's Chromium (``/usr/bin/chromium``), or ``$MEDACQ_CHROMIUM``, or ``None``."""
    for p in (os.environ.get("MEDACQ_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if p and os.path.exists(p):
            return p
    return None


def browser_args() -> list[str]:
    """Flags for ``chromium.launch(args=...)`` (Playwright gives each launch a fresh, empty profile)."""
    return list(BROWSER_FLAGS)


class ViewRig:
    """Simulators in this process; daemon, recon stage (and optionally the view) as subprocesses.

    Args:
        entries: rig entries (default :data:`VIEW_RIG`).
        view: also run ``medacq view`` as a subprocess (``view_url`` once up).
        view_args: extra ``medacq view`` arguments.
        operator: start the view with ``--operator`` (its buttons work); else read-only.

    The view gets a fresh token (``$MEDACQ_VIEW_TOKEN``): :attr:`view_url` is the browser's
    address (``?token=``), :attr:`view_base` the bare one, :attr:`view_token` the token (scripts send
    ``Authorization: Bearer <token>``, :meth:`view_headers`).
    """

    def __init__(self, entries: list[RigEntry] | None = None, view: bool = True,
                 view_args: list[str] | None = None, operator: bool = True) -> None:
        from medacq.daemon.bridges.view import new_token

        self.entries = list(VIEW_RIG if entries is None else entries)
        self.want_view = view
        self.view_args = (["--operator"] if operator else []) + (view_args or [])
        self.view_token = new_token()
        self.view_base: str | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="medacq-view-"))
        self.rig = SimulatedRig(self.entries, paced=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.view_url: str | None = None
        self.cfg_path = self.workdir / "rig.toml"
        self.endpoints: dict[str, dict[str, str]] = {}

    def __enter__(self) -> "ViewRig":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> "ViewRig":
        from medacq.daemon.client.api import ControlClient, DaemonUnreachable
        from medacq.daemon.common.config import dump_config

        self.rig.start()
        try:
            p = free_ports(4)
            doc = self.rig.config(p[0])
            for i, (sec, key) in enumerate([("daemon", "data_endpoint"), ("daemon", "control_endpoint"),
                                            ("recon", "data_endpoint"), ("recon", "control_endpoint")]):
                doc[sec][key] = f"tcp://127.0.0.1:{p[i]}"
            doc["daemon"]["descriptor_interval_s"] = 1.0
            self.endpoints = {k: dict(v) for k, v in doc.items() if k in ("daemon", "recon")}
            self.cfg_path.write_text(dump_config(doc))
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            for sub in ("run", "recon"):
                self._spawn(sub, [sub, "--config", str(self.cfg_path)], env)
            with ControlClient(self.endpoints["daemon"]["control_endpoint"], timeout=0.5) as c:
                deadline = time.monotonic() + timeout
                while True:
                    self._check_alive()
                    try:
                        c.request("ping")
                        break
                    except DaemonUnreachable:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the daemon did not answer in time") from None
            if self.want_view:
                vp = free_ports(1)[0]
                self._spawn("view", ["view", "--config", str(self.cfg_path), "--port", str(vp), *self.view_args],
                            {**env, "MEDACQ_VIEW_TOKEN": self.view_token})
                deadline = time.monotonic() + timeout
                while True:
                    self._check_alive()
                    try:
                        with socket.create_connection(("127.0.0.1", vp), timeout=0.5):
                            break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the view did not listen in time") from None
                        time.sleep(0.1)
                self.view_base = f"http://127.0.0.1:{vp}/"
                self.view_url = f"{self.view_base}?token={self.view_token}"
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        logf = open(self.workdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", *args],
                                            stdout=logf, stderr=subprocess.STDOUT, env=env)

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited (code {p.returncode}): {self.log(name)[-800:]}")

    def log(self, name: str) -> str:
        f = self.workdir / f"{name}.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def view_headers(self) -> dict[str, str]:
        """HTTP headers that carry the view's token."""
        return {"Authorization": f"Bearer {self.view_token}"}

    def control(self, target: str = "daemon"):
        from medacq.daemon.client.api import ControlClient

        return ControlClient(self.endpoints[target]["control_endpoint"], timeout=3.0)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2)
        self.procs.clear()
        self.rig.stop()


def _state(rig: ViewRig) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(f"{rig.view_base}api/state", headers=rig.view_headers())
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def bench_view(args: argparse.Namespace) -> dict[str, Any]:
    """Run the view benchmark; returns the JSON object described in docs/view.md."""
    from medacq.daemon.client.api import Subscriber

    exe = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment]
    if exe is None or sync_playwright is None:
        raise SystemExit("bench view needs Debian's chromium (apt-get install chromium) and "
                         "playwright (pip install playwright)")
    duration = max(3.0, float(args.duration) if args.duration and args.duration != 2.0 else 15.0)
    with ViewRig() as rig:
        assert rig.view_url is not None
        ep = [rig.endpoints["daemon"]["data_endpoint"], rig.endpoints["recon"]["data_endpoint"]]
        base: dict[str, list[float]] = {}
        halt = threading.Event()

        def baseline() -> None:
            with Subscriber(ep, ["raw/", "recon/"], errors="skip") as sub:
                while not halt.is_set():
                    m = sub.recv(timeout=0.2)
                    if m is not None and m.array is not None:
                        base.setdefault(m.topic, []).append((time.monotonic_ns() - m.header["t_mono_ns"]) / 1e6)

        bt = threading.Thread(target=baseline, daemon=True)
        bt.start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=exe, args=browser_args(), headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1800})
                page.goto(rig.view_url)
                page.wait_for_function("document.querySelectorAll('.panel[data-updates]').length >= 6 && "
                                       "[...document.querySelectorAll('.panel')].every(p => +p.dataset.updates > 0)",
                                       timeout=30000)
                print(f"  view: panels up; measuring for {duration:.0f} s", file=sys.stderr, flush=True)
                warm = _state(rig)
                time.sleep(duration)
                st = _state(rig)
                updates = page.evaluate("Object.fromEntries([...document.querySelectorAll('.panel')]"
                                        ".map(p => [p.dataset.topic, +p.dataset.updates]))")
                browser.close()
        finally:
            halt.set()
            bt.join(2)
    lat = st["latency"]
    per = {}
    for topic, v in lat["panels"].items():
        w0 = warm["latency"]["panels"].get(topic, {}).get("drawn", 0)
        b = np.array(base.get(topic) or [np.nan])
        per[topic] = {
            "kind": next((p["kind"] for p in st["panels"] if p["topic"] == topic), None),
            "draws_per_s": round((v["drawn"] - w0) / duration, 2),
            "acq_to_pixels_ms_p50": v["acq_to_pixels_ms"]["p50"], "acq_to_pixels_ms_p99": v["acq_to_pixels_ms"]["p99"],
            "bridge_to_pixels_ms_p50": v["bridge_to_pixels_ms"]["p50"],
            "bridge_to_pixels_ms_p99": v["bridge_to_pixels_ms"]["p99"],
            "draw_ms_p50": v["draw_ms"]["p50"],
            "baseline_subscriber_ms_p50": round(float(np.nanpercentile(b, 50)), 3),
            "baseline_subscriber_ms_p99": round(float(np.nanpercentile(b, 99)), 3),
        }
    allb = np.concatenate([np.asarray(v) for v in base.values()]) if base else np.array([np.nan])
    b50, b99 = float(np.nanpercentile(allb, 50)), float(np.nanpercentile(allb, 99))
    a = lat["acq_to_pixels_ms"]
    return {
        "benchmark": "view",
        "browser": "headless Chromium (Debian) via Playwright",
        "duration_s": duration,
        "panels": len(per),
        "acq_to_pixels_ms_p50": a["p50"], "acq_to_pixels_ms_p99": a["p99"], "draws": a["n"],
        "bridge_to_pixels_ms_p50": lat["bridge_to_pixels_ms"]["p50"],
        "bridge_to_pixels_ms_p99": lat["bridge_to_pixels_ms"]["p99"],
        "baseline_subscriber_ms_p50": round(b50, 3), "baseline_subscriber_ms_p99": round(b99, 3),
        "view_overhead_ms_p50": round(a["p50"] - b50, 3) if a["p50"] is not None else None,
        "max_fps_per_panel": st["max_fps"],
        "page_updates": updates,
        "results": [{"topic": k, **v} for k, v in sorted(per.items())],
    }
