"""The simulators' fault side door, driven from the CLI, and the daemon surviving it."""

from __future__ import annotations

import json

import numpy as np

from medacq.client import ControlClient, Subscriber
from medacq.daemon.config import parse_config
from medacq.daemon.faults import FaultServer
from medacq.daemon.service import AcquisitionDaemon
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame

from conftest import free_port, run_medacq, wait_for


def test_faults_from_the_cli(endpoints):
    settings = {"shape": [4, 16], "rate_hz": 200.0, "seed": 3}
    with SimulatorServer(SynthInterface(), "pty", paced=True, name="syn0") as sim:
        door = f"tcp://127.0.0.1:{free_port()}"
        fs = FaultServer({"syn0": sim}, door).start()
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": settings}]})
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub, ControlClient(cfg.daemon.control_endpoint) as c:
                list(sub.frames(timeout=5, max_frames=10))
                # garbage burst and corrupted bytes: frames resume, the loss is counted
                for fault, kv in (("garbage", "nbytes=5000"), ("corrupt", "nbytes=300"), ("drop", "n=4")):
                    r = run_medacq("fault", "syn0", fault, kv, "--endpoint", door)
                    assert r.returncode == 0, r.stderr
                    assert json.loads(r.stdout)["applied"] == fault
                # read on (through the backlog of the CLI calls) until the announced drop shows up
                frames = []
                for h, a in sub.frames(timeout=5, max_frames=3000):
                    frames.append((h, a))
                    if any(g.announced and g.count >= 4 for g in sub.gaps) and len(frames) > 50:
                        break
                for h, a in frames:
                    np.testing.assert_array_equal(a, synth_frame(SynthConfig(**settings), h["seq"]))
                st = c.request("status")["streams"]["syn0"]
                assert st["driver"]["garbage_bytes"] >= 5000
                assert any(g.announced and g.count >= 4 for g in sub.gaps)
                # pull the cable: the daemon reconnects, a new series starts
                r = run_medacq("fault", "syn0", "pull_cable", "refuse_s=0.3", "--endpoint", door)
                assert r.returncode == 0
                wait_for(lambda: c.request("status")["streams"]["syn0"]["reconnects"] >= 1, 10)
                wait_for(lambda: c.request("status")["streams"]["syn0"]["state"] == "acquiring", 10)
                r = run_medacq("fault", "status", "--endpoint", door)
                assert json.loads(r.stdout)["syn0"]["cable_pulls"] == 1
                r = run_medacq("fault", "syn0", "explode", "--endpoint", door)
                assert r.returncode == 1 and "unknown fault" in r.stderr
                r = run_medacq("fault", "nosuch", "stall", "seconds=1", "--endpoint", door)
                assert r.returncode == 1 and "no simulator named" in r.stderr
        finally:
            d.shutdown()
            fs.stop()
