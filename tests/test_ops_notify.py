"""sd_notify over a real ``NOTIFY_SOCKET``: READY, STATUS, WATCHDOG; pings stop when acquisition hangs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from medacq.client import ControlClient
from medacq.daemon.common.config import dump_config
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthInterface

from conftest import medacq_cmd

TESTS = Path(__file__).resolve().parent


class NotifyListener:
    """What systemd does: a bound AF_UNIX datagram socket collecting ``KEY=VALUE`` messages."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.log: list[tuple[float, str]] = []

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.log += [(now, line) for line in data.decode().splitlines()]

    def until(self, pred, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            self.pump(0.1)
        raise TimeoutError(f"not seen in {timeout} s; got {[m for _, m in self.log][-10:]}")

    def lines(self, prefix: str, after: float = 0.0) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.log if m.startswith(prefix) and t >= after]


def test_notify_ready_status_watchdog_and_watchdog_stops_on_hang(endpoints, tmp_path):
    wedge = tmp_path / "wedge"
    listener = NotifyListener(tmp_path / "notify.sock")
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        doc = {"daemon": {**endpoints["daemon"], "watchdog_stall_s": 1.0}, "recon": endpoints["recon"],
               "device": [{"name": "w0", "kind": "wedgeable", "address": sim.address,
                           "settings": {"shape": [4, 16], "rate_hz": 200.0, "wedge_file": str(wedge)}}]}
        cfg = tmp_path / "rig.toml"
        cfg.write_text(dump_config(doc))
        env = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000",
               "MEDACQ_EXTRA_DRIVERS": "wedgeable=ops_wedge_driver:WedgeableDriver",
               "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        p = subprocess.Popen(medacq_cmd("run", "--config", str(cfg)), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        try:
            listener.until(lambda: listener.lines("READY=1"), timeout=30)
            t_ready = listener.lines("READY=1")[0][0]
            listener.until(lambda: len(listener.lines("WATCHDOG=1", t_ready)) >= 5, timeout=10)
            assert any("1/1 acquiring" in m for _, m in listener.lines("STATUS="))
            pings = [t for t, _ in listener.lines("WATCHDOG=1", t_ready)]
            assert max(b - a for a, b in zip(pings, pings[1:])) < 0.4 + 0.3  # every WATCHDOG_USEC/2, loosely

            wedge.touch()  # the device thread now blocks inside the driver for good
            listener.until(lambda: any("UNHEALTHY" in m for _, m in listener.lines("STATUS=")), timeout=15)
            t_bad = [t for t, m in listener.lines("STATUS=") if "UNHEALTHY" in m][0]
            listener.pump(2.5)  # > 6 ping periods
            assert listener.lines("WATCHDOG=1", t_bad + 0.05) == []  # systemd would now kill and restart us
            with ControlClient(endpoints["daemon"]["control_endpoint"], timeout=5) as c:
                st = c.request("status")  # the control plane still answers, and says why
            assert st["healthy"] is False
            p.send_signal(signal.SIGTERM)
            p.wait(15)
            listener.pump(0.3)
            assert listener.lines("STOPPING=1")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            listener.sock.close()
