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
        (b"[" * 100_000, "bad_json"),  # deeper than the parser's recursion limit
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


# -- what a control-plane configure may change (config-only fields, [device.limits]) ----------------

from medacq.daemon.acquisition.devices import check_settings_change, load_rig_config, settings_policy  # noqa: E402
from medacq.drivers.flatpanel import FlatPanelDriver, FlatPanelSettings  # noqa: E402
from medacq.drivers.sciospec import SciospecDriver, SciospecSettings  # noqa: E402
from medacq.drivers.ultrasound import UltrasoundDriver, UltrasoundSettings  # noqa: E402


def test_drivers_mark_code_loading_and_physical_output_settings():
    xr = settings_policy(FlatPanelSettings)
    assert xr.config_only == {"visa_library"}
    assert xr.bounds == {"kvp": (40.0, 150.0), "ma": (0.1, 500.0), "exposure_s": (0.0, None)}
    eit = settings_policy(SciospecSettings)
    assert eit.config_only == set() and eit.bounds == {"frequency_hz": (0.0, 10e6), "amplitude_a": (0.0, 0.01)}
    assert settings_policy(UltrasoundSettings).bounds == {"prf_hz": (0.0, 50000.0)}


@pytest.mark.parametrize("cls, field, limit, inside, outside", [
    (FlatPanelDriver, "kvp", (40, 120), 100, 150),
    (FlatPanelDriver, "ma", (0.1, 10), 5, 20),
    (FlatPanelDriver, "exposure_s", (0.001, 0.1), 0.05, 0.5),
    (SciospecDriver, "amplitude_a", (1e-4, 2e-3), 1.5e-3, 5e-3),
    (SciospecDriver, "frequency_hz", (10e3, 100e3), 80e3, 1e6),
    (UltrasoundDriver, "prf_hz", (100, 1000), 900, 5000),
])
def test_configure_moves_a_limited_setting_only_inside_the_config_limit(cls, field, limit, inside, outside):
    current = cls.validate_settings({})
    merged = check_settings_change(cls, current, {field: inside}, {field: limit}, "dev0")
    assert getattr(merged, field) == inside and getattr(current, field) != inside
    with pytest.raises(ControlError) as exc:
        check_settings_change(cls, current, {field: outside}, {field: limit}, "dev0")
    assert exc.value.code == "invalid_settings"
    assert exc.value.message == (f"dev0: {field}={outside:g} outside the limit [{limit[0]:g}, {limit[1]:g}] "
                                 "set in the config file")
    # no limit in the config: the model's own range (here the driver's validation says no)
    check_settings_change(cls, current, {field: outside}, {}, "dev0")


def test_without_config_limits_the_tube_keeps_its_own_range():
    current = FlatPanelDriver.validate_settings({})
    for bad in (30, 151):
        with pytest.raises(ControlError) as exc:
            check_settings_change(FlatPanelDriver, current, {"kvp": bad}, {}, "xr0")
        assert exc.value.code == "invalid_settings" and "kvp" in exc.value.message
    assert check_settings_change(FlatPanelDriver, current, {"kvp": "90"}, {}).kvp == 90.0


def test_config_only_settings_are_refused_over_the_control_plane():
    current = FlatPanelDriver.validate_settings({})
    with pytest.raises(ControlError) as exc:
        check_settings_change(FlatPanelDriver, current, {"visa_library": "/tmp/evil.so", "kvp": 80}, {}, "xr0")
    assert exc.value.code == "forbidden"
    assert exc.value.message.startswith("xr0: visa_library can only be set in the config file")
    # sending back the value in force (a GUI echoing describe's settings) is no change
    assert check_settings_change(FlatPanelDriver, current, {"visa_library": "@py", "kvp": 80}, {}).kvp == 80


def test_a_file_path_setting_is_config_only_while_its_table_form_is_not():
    """The MRI console's ``sequence``: a table (TE, TR, ...) may change over the control plane; a
    string (a Pulseq file path the daemon would open) only in the config file, so a client with
    configure rights cannot make the daemon open an arbitrary path (a FIFO would hang its worker)."""
    from medacq.drivers.mri import MriDriver

    current = MriDriver.validate_settings({})
    with pytest.raises(ControlError) as exc:
        check_settings_change(MriDriver, current, {"sequence": "/tmp/some.fifo"}, {}, "mri0")
    assert exc.value.code == "forbidden"
    assert exc.value.message.startswith("mri0: sequence can only be set in the config file")
    te = current.sequence.te_ms
    merged = check_settings_change(MriDriver, current, {"sequence": {**current.sequence.model_dump(), "te_ms": te + 5}},
                                   {}, "mri0")
    assert merged.sequence.te_ms == te + 5
    assert settings_policy(MriDriver.Settings).config_only_path == {"sequence"}


XRAY_TOML = """
[[device]]
name = "xr0"
kind = "flatpanel"
address = "TCPIP::127.0.0.1::1::SOCKET"
autostart = false
settings = { kvp = %s }

[device.limits]
kvp = [40, 120]
ma = [0.1, 10]
%s
"""


def test_device_limits_in_the_config_file(tmp_path):
    p = tmp_path / "rig.toml"
    p.write_text(XRAY_TOML % (90, ""))
    cfg = load_rig_config(p)
    assert cfg.device[0].limits == {"kvp": (40.0, 120.0), "ma": (0.1, 10.0)}
    p.write_text(XRAY_TOML % (130, 'binning = [1, 2]\nexposure_s = [0.2, 0.1]'))
    with pytest.raises(ConfigError) as exc:
        load_rig_config(p)
    locs = dict(exc.value.problems)
    assert "outside this device's own limit [40, 120]" in locs["device[0].settings.kvp"]
    assert "binning is not a limited setting" in locs["device[0].limits.binning"]
    assert "exposure_s: a limit is [low, high] with finite low <= high" in locs["device[0].limits"]
    assert len(locs) == 3


def test_configure_refusals_over_the_control_plane_are_audited(tmp_path, endpoints):
    from medacq.client import ControlClient, RequestFailed
    from medacq.daemon.acquisition.service import AcquisitionDaemon

    p = tmp_path / "rig.toml"
    audit = tmp_path / "audit.log"
    p.write_text(XRAY_TOML % (90, "") + "\n" + dump_config(endpoints)
                 + f'\n[security]\naudit_log = "{audit}"\n')
    d = AcquisitionDaemon(load_rig_config(p)).start()
    try:
        with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
            for settings, code, text in [
                ({"kvp": 150}, "invalid_settings", "xr0: kvp=150 outside the limit [40, 120] set in the config file"),
                ({"ma": 20}, "invalid_settings", "xr0: ma=20 outside the limit [0.1, 10] set in the config file"),
                ({"visa_library": "/tmp/evil.so"}, "forbidden", "xr0: visa_library can only be set in the config file"),
            ]:
                with pytest.raises(RequestFailed) as exc:
                    c.request("configure", device="xr0", settings=settings)
                assert exc.value.code == code and exc.value.message.startswith(text)
            desc = c.request("describe", device="xr0")
            assert desc["settings"]["kvp"] == 90 and desc["settings"]["visa_library"] == "@py"
            assert desc["config_only"] == ["visa_library"]
            assert desc["limits"]["kvp"] == [40, 120] and desc["limits"]["exposure_s"] == [0, None]
            # inside the limits: applied (the device is not started, so nothing is opened)
            assert c.request("configure", device="xr0", settings={"kvp": 110})["settings"]["kvp"] == 110
            assert c.request("describe", device="xr0")["settings"]["kvp"] == 110
    finally:
        d.shutdown()
    rec = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["request"]["settings"], r["ok"], r["outcome"]) for r in rec] == [
        ({"kvp": 150}, False, "refused"), ({"ma": 20}, False, "refused"),
        ({"visa_library": "/tmp/evil.so"}, False, "refused"), ({"kvp": 110}, True, "applied")]
    assert "outside the limit [40, 120]" in rec[0]["error"]
