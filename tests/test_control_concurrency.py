"""The control plane never wedges: slow requests run elsewhere, timed-out ones are never applied.

A test-only driver (:class:`SlowDriver`, registered in-process the way ``MEDACQ_EXTRA_DRIVERS``
registers ``tests/ops_wedge_driver.py`` for a subprocess) is the synthetic driver with two
knobs: ``open_delay_s`` makes every open (so every applied ``configure``) slow, and while the
file named by ``block_file`` exists its ``read`` does not return (the device thread is stuck,
as in a hung transfer), so a ``configure`` cannot even start.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import zmq

from medacq.client import ControlClient, RequestFailed
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.drivers import registry
from medacq.drivers.synthetic import SyntheticDriver, SyntheticSettings
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthInterface

from conftest import wait_for

#: every open of a SlowDriver, in order: (device name, seed, rate_hz)
OPENS: list[tuple[str, int, float]] = []
_OPENS_LOCK = threading.Lock()


class SlowSettings(SyntheticSettings):
    open_delay_s: float = 0.0
    block_file: str = ""


class SlowDriver(SyntheticDriver):
    kind = "slowcfg"
    Settings = SlowSettings

    def open(self) -> None:
        time.sleep(self.settings.open_delay_s)
        with _OPENS_LOCK:
            OPENS.append((self.name, self.settings.seed, self.settings.rate_hz))
        super().open()

    def read(self, timeout: float):
        while self.settings.block_file and os.path.exists(self.settings.block_file):
            time.sleep(0.01)
        return super().read(timeout)


@pytest.fixture
def slow_kind(monkeypatch):
    monkeypatch.setitem(registry.DRIVERS, "slowcfg", f"{__name__}:SlowDriver")
    OPENS.clear()
    return "slowcfg"


def _daemon(endpoints, sims, audit: Path, **slow_settings) -> AcquisitionDaemon:
    base = {"shape": [2, 8], "rate_hz": 100.0}
    cfg = parse_config({**endpoints, "security": {"audit_log": str(audit)}, "device": [
        {"name": "slow0", "kind": "slowcfg", "address": sims[0].address, "settings": {**base, **slow_settings}},
        {"name": "syn1", "kind": "synthetic", "address": sims[1].address, "settings": base},
    ]})
    return AcquisitionDaemon(cfg)


def _audit(path: Path, command: str = "configure") -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["command"] == command]


def _timed(c: ControlClient, cmd: str, **fields) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = c.request(cmd, **fields)
    return time.perf_counter() - t0, r


def _dealer(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _send(s: zmq.Socket, rid: str, cmd: str, **fields) -> None:
    s.send_multipart([b"", json.dumps({"id": rid, "cmd": cmd, **fields}).encode()])


def _recv(s: zmq.Socket, timeout_s: float) -> dict:
    assert s.poll(int(timeout_s * 1000)), "no reply in time"
    return json.loads(s.recv_multipart()[-1])


def test_stop_and_status_answer_while_a_configure_runs(endpoints, slow_kind, tmp_path):
    audit = tmp_path / "audit.log"
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as s0, \
            SimulatorServer(SynthInterface(), "tcp", paced=True) as s1:
        d = _daemon(endpoints, (s0, s1), audit).start()
        d.configure_timeout_s = 1.0  # the change starts at once; then its deadline passes while it runs
        ep = d.config.daemon.control_endpoint
        dealer = _dealer(ep)
        try:
            with ControlClient(ep, timeout=5) as c:
                streams = lambda: c.request("status")["streams"]  # noqa: E731
                wait_for(lambda: all(s["state"] == "acquiring" for s in streams().values()), 15)
                t_sent = time.monotonic()
                _send(dealer, "cfg", "configure", device="slow0", settings={"open_delay_s": 2.5, "seed": 5})
                wait_for(lambda: streams()["slow0"]["state"] == "connecting", 2, 0.01)  # it is being applied
                assert not dealer.poll(0)
                lat = {}
                lat["ping"], _ = _timed(c, "ping")
                lat["status"], st = _timed(c, "status")
                lat["stop"], r = _timed(c, "stop", device="syn1")
                lat["describe"], _ = _timed(c, "describe", device="syn1")
                assert r == {"devices": ["syn1"]}
                assert st["control"]["in_flight"] == 1 and st["streams"]["slow0"]["state"] == "connecting"
                assert not dealer.poll(0), "the configure was answered before it finished"
                assert max(lat.values()) < 0.1, lat
                wait_for(lambda: streams()["syn1"]["state"] == "idle", 5)
                # the configure's deadline (1 s) passed while it was being applied: it is not
                # abandoned; its reply and audit record say what happened when it ends
                reply = _recv(dealer, 10)
                took = time.monotonic() - t_sent
                assert reply["ok"] and reply["id"] == "cfg" and reply["result"]["settings"]["seed"] == 5
                assert took >= 2.4
                assert c.request("describe", device="slow0")["settings"]["seed"] == 5
                wait_for(lambda: streams()["slow0"]["state"] == "acquiring", 10)
                assert d.workers["slow0"].driver.settings.seed == 5
                assert c.request("status")["control"]["in_flight"] == 0
        finally:
            dealer.close(0)
            d.shutdown()
    rec = _audit(audit)
    assert [(r["ok"], r["outcome"]) for r in rec] == [(True, "applied (after its deadline)")]
    assert [(r["command"], r["outcome"]) for r in _audit(audit, "stop")] == [("stop", "applied")]


def test_a_configure_that_times_out_is_never_applied(endpoints, slow_kind, tmp_path):
    audit = tmp_path / "audit.log"
    block = tmp_path / "block"
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as s0, \
            SimulatorServer(SynthInterface(), "tcp", paced=True) as s1:
        d = _daemon(endpoints, (s0, s1), audit, block_file=str(block), seed=1).start()
        d.configure_timeout_s = 0.5
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
                streams = lambda: c.request("status")["streams"]  # noqa: E731
                wait_for(lambda: streams()["slow0"]["state"] == "acquiring", 15)
                series = streams()["slow0"]["series"]
                opens = list(OPENS)
                block.touch()  # the device thread is now stuck in read()
                time.sleep(0.3)
                t0 = time.monotonic()
                with pytest.raises(RequestFailed) as exc:
                    c.request("configure", device="slow0", settings={"seed": 99})
                waited = time.monotonic() - t0
                assert exc.value.code == "timeout" and "cancelled" in exc.value.message
                assert 0.4 < waited < 2.0
                # meanwhile the other device and the control plane are fine
                lat, _ = _timed(c, "stop", device="syn1")
                assert lat < 0.1
                block.unlink()  # the device thread is back: it must drop the withdrawn change
                wait_for(lambda: not d.workers["slow0"]._reconfigs, 10, 0.01)  # it has dealt with it
                frames = streams()["slow0"]["frames"]
                wait_for(lambda: streams()["slow0"]["frames"] > frames + 20, 10)
                st = streams()["slow0"]
                assert st["state"] == "acquiring" and st["series"] == series  # not even interrupted
                assert c.request("describe", device="slow0")["settings"]["seed"] == 1
                assert d.workers["slow0"].settings.seed == 1
                assert d.workers["slow0"].driver.settings.seed == 1
                assert OPENS == opens  # no reopen at all, let alone with seed 99
                ctl = c.request("status")["control"]
                assert ctl["timeouts"] == 1 and ctl["in_flight"] == 0
        finally:
            if block.exists():
                block.unlink()
            d.shutdown()
    rec = _audit(audit)
    assert len(rec) == 1 and rec[0]["ok"] is False and rec[0]["outcome"] == "timeout, cancelled"
    assert rec[0]["request"]["settings"] == {"seed": 99} and "timeout" in rec[0]["error"]


def test_configures_to_one_device_apply_in_arrival_order(endpoints, slow_kind, tmp_path):
    audit = tmp_path / "audit.log"
    block = tmp_path / "block"
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as s0, \
            SimulatorServer(SynthInterface(), "tcp", paced=True) as s1:
        d = _daemon(endpoints, (s0, s1), audit, block_file=str(block), seed=1).start()
        dealer = _dealer(d.config.daemon.control_endpoint)
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
                wait_for(lambda: c.request("status")["streams"]["slow0"]["state"] == "acquiring", 15)
                del OPENS[:]
                block.touch()  # hold the device thread so that all three queue up
                time.sleep(0.3)
                _send(dealer, "a", "configure", device="slow0", settings={"seed": 2})
                _send(dealer, "b", "configure", device="slow0", settings={"seed": 3})
                _send(dealer, "c", "configure", device="slow0", settings={"rate_hz": 50.0})
                wait_for(lambda: c.request("status")["control"]["in_flight"] == 3, 2, 0.01)
                block.unlink()
                replies = [_recv(dealer, 10) for _ in range(3)]
                assert [(r["id"], r["ok"]) for r in replies] == [("a", True), ("b", True), ("c", True)]
                # each change is applied over the one before it, in arrival order
                assert [(r["result"]["settings"]["seed"], r["result"]["settings"]["rate_hz"]) for r in replies] \
                    == [(2, 100.0), (3, 100.0), (3, 50.0)]
                assert [(s, r) for n, s, r in OPENS if n == "slow0"] == [(2, 100.0), (3, 100.0), (3, 50.0)]
                assert c.request("describe", device="slow0")["settings"]["rate_hz"] == 50.0
        finally:
            dealer.close(0)
            if block.exists():
                block.unlink()
            d.shutdown()
    rec = _audit(audit)
    assert [(r["request"]["settings"], r["outcome"]) for r in rec] == [
        ({"seed": 2}, "applied"), ({"seed": 3}, "applied"), ({"rate_hz": 50.0}, "applied")]
