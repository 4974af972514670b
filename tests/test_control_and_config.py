"""Control-plane request parsing and rig config validation."""

from __future__ import annotations

import json

import pytest

from medacq.daemon.acquisition.devices import parse_rig_config
from medacq.daemon.common.config import ConfigError, dump_config, load_config, parse_config
from medacq.protocols.control import ControlError, parse_request


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "bad_json"),
        (b"\xff", "bad_json"),
        (b"[1]", "bad_request"),
        (b'{"id": 1}', "bad_request"),
        (b'{"cmd": "reboot"}', "unknown_command"),
        (b'{"cmd": "describe"}', "bad_request"),
        (b'{"cmd": "configure", "device": "x", "settings": 5}', "bad_request"),
        (b'{"cmd": "status", "extra": 1}', "bad_request"),
        (b'{"cmd": "status", "pad": "' + b"x" * 300_000 + b'"}', "too_large"),
    ],
)
def test_malformed_requests_get_precise_codes(body, code):
    with pytest.raises(ControlError) as exc:
        parse_request(body)
    assert exc.value.code == code


def test_valid_request_keeps_id():
    req = parse_request(json.dumps({"id": "a1", "cmd": "configure", "device": "d", "settings": {"x": 1}}).encode())
    assert req.id == "a1" and req.device == "d" and req.settings == {"x": 1}


def test_config_reports_every_problem_with_location(tmp_path):
    doc = {
        "daemon": {"data_endpoint": "tcp://10.1.2.3:5555", "queue_depth": 0},
        "device": [
            {"name": "ok0", "kind": "synthetic", "address": "/dev/null", "settings": {"rate_hz": 10}},
            {"name": "bad name", "kind": "synthetic", "address": "x", "settings": {"rate_hz": -5, "shape": [0]}},
            {"name": "k", "kind": "toaster", "address": "x"},
        ],
    }
    with pytest.raises(ConfigError) as exc:
        parse_rig_config(doc, "rig.toml")
    locs = dict(exc.value.problems)
    assert "daemon.data_endpoint" in locs and "CurveZMQ" in locs["daemon.data_endpoint"]
    assert "daemon.queue_depth" in locs
    assert "device[1].name" in locs
    assert "device[1].settings.rate_hz" in locs and "-5" in locs["device[1].settings.rate_hz"]
    assert "device[1].settings.shape" in locs
    assert "device[2].kind" in locs and "synthetic" in locs["device[2].kind"]
    assert str(exc.value).startswith("rig.toml:")


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\nx=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_dump_and_load_roundtrip(tmp_path):
    doc = {"daemon": {"heartbeat_s": 0.5}, "device": [
        {"name": "s0", "kind": "synthetic", "address": "socket://127.0.0.1:1", "settings": {"shape": [2, 3], "seed": 4}}]}
    p = tmp_path / "rig.toml"
    p.write_text(dump_config(doc))
    cfg = load_config(p)
    assert cfg.daemon.heartbeat_s == 0.5 and cfg.device[0].settings == {"shape": [2, 3], "seed": 4}
