"""CurveZMQ: allow-list, read-only vs operator rights, audit log; loopback-only without it."""

from __future__ import annotations

import json

import pytest

from medacq.client import ControlClient, DaemonUnreachable, RequestFailed, Subscriber
from medacq.daemon.common.config import ConfigError, parse_config
from medacq.daemon.common.security import load_client_keys
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthInterface

from conftest import run_medacq


@pytest.fixture
def keys(tmp_path):
    r = run_medacq("keys", "generate", str(tmp_path / "k"), "server", "alice", "bob", "mallory")
    assert r.returncode == 0, r.stderr
    k = tmp_path / "k"
    (tmp_path / "readers").mkdir()
    (tmp_path / "operators").mkdir()
    (k / "bob.key").rename(tmp_path / "readers" / "bob.key")
    (k / "alice.key").rename(tmp_path / "operators" / "alice.key")
    return tmp_path


def test_non_loopback_needs_curve(keys):
    with pytest.raises(ConfigError) as exc:
        parse_config({"daemon": {"data_endpoint": "tcp://0.0.0.0:5555"}})
    assert "daemon.data_endpoint" in dict(exc.value.problems)
    cfg = parse_config({"daemon": {"data_endpoint": "tcp://0.0.0.0:5555"},
                        "security": {"server_secret_key": str(keys / "k" / "server.key_secret"),
                                     "readers": str(keys / "readers")}})
    assert cfg.security.curve


def test_rights_and_audit(keys, endpoints):
    audit = keys / "audit.log"
    server_pub = str(keys / "k" / "server.key")
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = parse_config({**endpoints, "device": [{"name": "s0", "kind": "synthetic", "address": sim.address}],
                            "security": {"server_secret_key": str(keys / "k" / "server.key_secret"),
                                         "readers": str(keys / "readers"), "operators": str(keys / "operators"),
                                         "audit_log": str(audit)}})
        alice = load_client_keys(str(keys / "k" / "alice.key_secret"), server_pub)
        bob = load_client_keys(str(keys / "k" / "bob.key_secret"), server_pub)
        mallory = load_client_keys(str(keys / "k" / "mallory.key_secret"), server_pub)
        d = AcquisitionDaemon(cfg).start()
        try:
            ep = cfg.daemon.control_endpoint
            with ControlClient(ep, timeout=2, curve=bob) as c:
                assert c.request("status")["streams"]["s0"]
                with pytest.raises(RequestFailed) as exc:
                    c.request("stop", device="s0")
                assert exc.value.code == "forbidden"
            with ControlClient(ep, timeout=2, curve=alice) as c:
                assert c.request("stop", device="s0") == {"devices": ["s0"]}
                c.request("start", device="s0")
            with ControlClient(ep, timeout=1, curve=mallory) as c, pytest.raises(DaemonUnreachable):
                c.request("status")
            with ControlClient(ep, timeout=1) as c, pytest.raises(DaemonUnreachable):
                c.request("status")  # no keys at all
            with Subscriber(cfg.daemon.data_endpoint, "raw/", curve=bob) as sub:
                assert len(list(sub.frames(timeout=5, max_frames=5))) == 5
            with Subscriber(cfg.daemon.data_endpoint, "raw/", curve=mallory) as sub:
                assert list(sub.frames(timeout=1, max_frames=1)) == []
            # the CLI takes keys too
            r = run_medacq("ctl", "status", "--endpoint", ep, "--keys", str(keys / "k" / "bob.key_secret"),
                           "--server-key", server_pub)
            assert r.returncode == 0 and "s0" in r.stdout
            # medacq record subscribes with keys: a reader records, no keys records nothing
            out = keys / "rec.h5"
            r = run_medacq("record", "--endpoint", cfg.daemon.data_endpoint, "--out", str(out), "--for", "1.5",
                           "--keys", str(keys / "k" / "bob.key_secret"), "--server-key", server_pub)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stderr.strip().splitlines()[-1])["frames_recorded"] > 0
            r = run_medacq("record", "--endpoint", cfg.daemon.data_endpoint, "--out", str(keys / "no.h5"),
                           "--for", "1.0")
            assert json.loads(r.stderr.strip().splitlines()[-1])["frames_recorded"] == 0
        finally:
            d.shutdown()
    records = [json.loads(l) for l in audit.read_text().splitlines()]
    who = {r["who"] for r in records}
    assert [(r["command"], r["ok"]) for r in records] == [("stop", False), ("stop", True), ("start", True)]
    assert records[0]["who"] == bob.public.decode() and records[1]["who"] == alice.public.decode()
    assert len(who) == 2
