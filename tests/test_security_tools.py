"""Issue #14, "who may do what": every tool has its own key pair and the audit log names it;
the default endpoints are ipc:// sockets in a runtime directory closed to other users."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from medacq.client import ControlClient, RequestFailed, Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon, BindError
from medacq.daemon.client import runtime
from medacq.daemon.client.keys import ClientKeys
from medacq.daemon.common import security
from medacq.daemon.common.config import ConfigError, dump_config, parse_config
from medacq.daemon.common.security import (RuntimeDirError, ToolKeyError, check_runtime_dir, local_peer,
                                           prepare_ipc_dir, tool_keys)
from medacq.daemon.recon.stage import ReconStage
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthInterface

from conftest import run_medacq
from test_security import private_mode


def _pub(path: Path) -> str:
    return zmq.auth.load_certificate(str(path))[0].decode()


@pytest.fixture
def rig_keys(tmp_path):
    r = run_medacq("keys", "generate-rig", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    return tmp_path / "keys"


# -- one key pair per tool ----------------------------------------------------------------------
def test_generate_rig_gives_each_tool_a_pair_and_the_rights_it_needs(rig_keys, tmp_path):
    k = rig_keys
    assert sorted(p.name for p in (k / "readers").iterdir()) == ["recorder.key", "stage.key", "view.key"]
    assert sorted(p.name for p in (k / "operators").iterdir()) == ["cli.key"]
    assert sorted(p.name for p in (k / "tools").glob("*.key_secret")) == [
        "cli.key_secret", "recorder.key_secret", "stage.key_secret", "view.key_secret"]
    for tool, folder in (("stage", "readers"), ("recorder", "readers"), ("view", "readers"), ("cli", "operators")):
        assert _pub(k / folder / f"{tool}.key") == _pub(k / "tools" / f"{tool}.key_secret")
        assert stat.S_IMODE((k / "tools" / f"{tool}.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((k / "server.key_secret").stat().st_mode) == 0o600
    keys = {_pub(p) for p in [*(k / "tools").glob("*.key_secret"), k / "server.key_secret"]}
    assert len(keys) == 5  # five distinct identities
    # new keys would lock every client out: an existing rig's folder is refused
    r = run_medacq("keys", "generate-rig", str(k))
    assert r.returncode == 2 and "already holds a rig's keys" in r.stderr
    r = run_medacq("keys", "generate-rig", str(tmp_path / "k2"), "--operator-view")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "k2" / "operators").iterdir()) == ["cli.key", "view.key"]
    assert sorted(p.name for p in (tmp_path / "k2" / "readers").iterdir()) == ["recorder.key", "stage.key"]
    # the printed snippet is a valid [security] section
    snippet = r.stdout[r.stdout.index("[security]"):].split("\n\n")[0]
    import tomllib

    sec = parse_config(tomllib.loads(snippet)).security
    assert sec.tool_keys == str((tmp_path / "k2" / "tools").resolve()) and sec.curve


def _curve_config(rig_keys, endpoints, sim_address, audit, **security):
    return {**endpoints, "device": [{"name": "s0", "kind": "synthetic", "address": sim_address}],
            "security": {"server_secret_key": str(rig_keys / "server.key_secret"), "readers": str(rig_keys / "readers"),
                         "operators": str(rig_keys / "operators"), "tool_keys": str(rig_keys / "tools"),
                         "audit_log": str(audit), **security}}


def test_the_audit_log_names_each_tool_and_person(rig_keys, endpoints, tmp_path):
    audit = tmp_path / "audit.log"
    # a person with her own pair, on the operators' list
    r = run_medacq("keys", "generate", str(tmp_path / "people"), "alice")
    assert r.returncode == 0, r.stderr
    (tmp_path / "people" / "alice.key").rename(rig_keys / "operators" / "alice.key")
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        doc = _curve_config(rig_keys, endpoints, sim.address, audit)
        cfg = parse_config(doc)
        rig = tmp_path / "rig.toml"
        rig.write_text(dump_config(doc))
        d = AcquisitionDaemon(cfg).start()
        stage = ReconStage(cfg, preload=False).start()
        try:
            # the stage connects with its own key (a reader), not the server's
            assert stage.client_keys.public.decode() == _pub(rig_keys / "readers" / "stage.key")
            # the CLI: its own key from [security] tool_keys
            r = run_medacq("ctl", "stop", "s0", "--config", str(rig))
            assert r.returncode == 0, r.stderr
            # a person's own key ($MEDACQ_KEY): the same command line, another name in the audit
            r = run_medacq("ctl", "start", "s0", "--config", str(rig),
                           env={"MEDACQ_KEY": str(tmp_path / "people" / "alice.key_secret")})
            assert r.returncode == 0, r.stderr
            # the view's key is a reader's: its stop is refused, and the refusal names it
            view = tool_keys(cfg.security, "view", env=False)
            with ControlClient(cfg.daemon.control_endpoint, timeout=3, curve=view) as c:
                with pytest.raises(RequestFailed) as exc:
                    c.request("stop", device="s0")
                assert exc.value.code == "forbidden" and "this client (view) has reader rights" in exc.value.message
            # the server's own key is no tool's key: reader rights at most, named "server"
            server = ClientKeys.load(rig_keys / "server.key_secret", rig_keys / "server.key")
            with ControlClient(cfg.daemon.control_endpoint, timeout=3, curve=server) as c:
                with pytest.raises(RequestFailed) as exc:
                    c.request("stop", device="s0")
                assert exc.value.code == "forbidden"
            # the recorder records with its own key (a reader): frames arrive
            r = run_medacq("record", "--config", str(rig), "--out", str(tmp_path / "rec.h5"), "--for", "1.5")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stderr.strip().splitlines()[-1])["frames_recorded"] > 0
            from medacq.daemon.recording.recorder import recording_service

            assert recording_service(d).curve.public.decode() == _pub(rig_keys / "readers" / "recorder.key")
            # and the stage, with its reader key, receives the daemon's frames
            with Subscriber(cfg.recon.data_endpoint, "recon/s0", curve=view) as sub:
                assert len(list(sub.frames(timeout=10, max_frames=2))) == 2
        finally:
            stage.shutdown()
            d.shutdown()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["who"], r["key"], r["command"], r["ok"]) for r in records] == [
        ("cli", _pub(rig_keys / "operators" / "cli.key"), "stop", True),
        ("alice", _pub(rig_keys / "operators" / "alice.key"), "start", True),
        ("view", _pub(rig_keys / "readers" / "view.key"), "stop", False),
        ("server", _pub(rig_keys / "server.key"), "stop", False),
    ]


def test_no_tool_falls_back_to_the_server_key(rig_keys, endpoints, tmp_path):
    doc = _curve_config(rig_keys, endpoints, "socket://127.0.0.1:1", "", tool_keys=None)
    del doc["security"]["tool_keys"]
    cfg = parse_config(doc)
    for tool in ("cli", "view", "stage", "recorder"):
        with pytest.raises(ToolKeyError) as exc:
            tool_keys(cfg.security, tool, env=False)
        assert f"the {tool} has no client key" in str(exc.value) and "medacq keys generate-rig DIR" in str(exc.value)
    with pytest.raises(ToolKeyError, match="medacq keys generate-rig"):
        ReconStage(cfg, preload=False).start()
    rig = tmp_path / "rig.toml"
    rig.write_text(dump_config(doc))
    r = run_medacq("ctl", "status", "--config", str(rig), env={"MEDACQ_KEY": ""})
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("medacq status: the cli has no client key") and "generate-rig" in r.stderr
    r = run_medacq("recon", "--config", str(rig), "--for", "1")
    assert r.returncode == 1 and "the stage has no client key" in r.stderr
    # the server's own pair, given as a tool's key, is refused
    with pytest.raises(ToolKeyError, match="is the server's own key pair"):
        tool_keys(cfg.security, "cli", str(rig_keys / "server.key_secret"), env=False)
    # the old shared client key is gone, with a message that says what replaced it
    with pytest.raises(ConfigError) as exc:
        parse_config({"security": {"client_secret_key": str(rig_keys / "tools" / "cli.key_secret")}})
    assert "client_secret_key is gone" in str(exc.value) and "tool_keys" in str(exc.value)
    # a missing file in tool_keys names the file
    (rig_keys / "tools" / "view.key_secret").unlink()
    sec = parse_config(_curve_config(rig_keys, endpoints, "socket://127.0.0.1:1", "")).security
    with pytest.raises(ToolKeyError, match=r"tools/view\.key_secret does not exist"):
        tool_keys(sec, "view", env=False)
    # without CurveZMQ no tool needs a key
    assert tool_keys(parse_config({}).security, "stage", env=False) is None


# -- ipc:// default endpoints in a private runtime directory -----------------------------------------
def test_the_runtime_directory_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDACQ_RUNTIME_DIR", str(tmp_path / "rt"))
    assert runtime.runtime_dir() == tmp_path / "rt"
    assert runtime.default_endpoints() == {
        "daemon": {"data_endpoint": f"ipc://{tmp_path}/rt/data", "control_endpoint": f"ipc://{tmp_path}/rt/control"},
        "recon": {"data_endpoint": f"ipc://{tmp_path}/rt/recon-data",
                  "control_endpoint": f"ipc://{tmp_path}/rt/recon-control"}}
    monkeypatch.delenv("MEDACQ_RUNTIME_DIR")
    system = tmp_path / "run" / "medacq"
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(runtime, "SYSTEM_RUNTIME_DIR", system)
    assert runtime.runtime_dir() == system  # /run/medacq, when this user may use (or create) it
    monkeypatch.setattr(runtime, "SYSTEM_RUNTIME_DIR", tmp_path / "absent" / "medacq")
    (tmp_path / "xdg").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert runtime.runtime_dir() == tmp_path / "xdg" / "medacq"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime.runtime_dir() == Path(f"/tmp/medacq-{os.getuid()}")
    # no daemon on the default control socket: a client told nothing tries medacq up's TCP ports
    monkeypatch.setenv("MEDACQ_RUNTIME_DIR", str(tmp_path / "rt"))
    assert runtime.local_rig_endpoints()["daemon"]["control_endpoint"] == "tcp://127.0.0.1:5556"
    # a listener in the runtime directory is used only while the directory is closed to others
    import socket

    (tmp_path / "rt").mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "rt" / "control"))
        s.listen()
        assert runtime.local_rig_endpoints()["daemon"]["control_endpoint"] == f"ipc://{tmp_path}/rt/control"
        os.chmod(tmp_path / "rt", 0o777)
        assert runtime.local_rig_endpoints()["daemon"]["control_endpoint"] == "tcp://127.0.0.1:5556"
    # a config that names no endpoints gets the ipc ones
    cfg = parse_config({})
    assert (cfg.daemon.data_endpoint, cfg.daemon.control_endpoint, cfg.recon.data_endpoint,
            cfg.recon.control_endpoint) == tuple(f"ipc://{tmp_path}/rt/{n}"
                                                 for n in ("data", "control", "recon-data", "recon-control"))


def test_the_runtime_directory_is_created_private_and_checked(tmp_path, monkeypatch):
    rt = tmp_path / "rt"
    monkeypatch.setenv("MEDACQ_RUNTIME_DIR", str(rt))
    prepare_ipc_dir(f"ipc://{rt}/control")
    assert stat.S_IMODE(rt.stat().st_mode) == private_mode() and rt.stat().st_uid == os.geteuid()
    # with a medacq group this user may use, 0770 and that group
    grouped = tmp_path / "grouped"
    monkeypatch.setattr(security, "_medacq_gid", lambda: os.getgid())
    prepare_ipc_dir(f"ipc://{grouped}/control")
    assert stat.S_IMODE(grouped.stat().st_mode) == 0o770 and grouped.stat().st_gid == os.getgid()
    # open to others: refused (the default directory), named, with the fix
    os.chmod(rt, 0o777)
    with pytest.raises(RuntimeDirError) as exc:
        prepare_ipc_dir(f"ipc://{rt}/control")
    assert str(exc.value) == f"refusing runtime directory {rt}: mode 0777 lets other users in; chmod o-rwx {rt} " \
                             "(0770 with group medacq, or 0700)"
    os.chmod(rt, 0o700)
    check_runtime_dir(rt)
    # an endpoint the config names outside the runtime directory may be open: its clients get reader rights
    prepare_ipc_dir(f"ipc://{grouped}/control")
    os.chmod(grouped, 0o777)
    prepare_ipc_dir(f"ipc://{grouped}/control")
    assert security.local_rights(f"ipc://{grouped}/control", None)[0] == "reader"
    # a link in place of the directory
    link = tmp_path / "link"
    link.symlink_to(rt)
    with pytest.raises(RuntimeDirError, match="is not a directory"):
        check_runtime_dir(link)
    if os.geteuid() == 0:  # someone else's directory (root can make one)
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
        with pytest.raises(RuntimeDirError) as exc:
            check_runtime_dir(other)
        assert "it belongs to uid 65534, not to this user" in str(exc.value)


def test_local_peer_names_the_ipc_user():
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    assert local_peer(f"localhost:{os.getuid()}:{os.getgid()}:1234") == f"uid {os.getuid()} ({me})"
    assert local_peer("127.0.0.1") == local_peer("::1") == local_peer(None) == "local"
    assert local_peer("::ffff:127.0.0.1") == "local"


def test_a_config_without_endpoints_serves_ipc_with_operator_rights_for_its_user(tmp_path, monkeypatch):
    import pwd

    rt = tmp_path / "rt"
    monkeypatch.setenv("MEDACQ_RUNTIME_DIR", str(rt))
    env = {"MEDACQ_RUNTIME_DIR": str(rt)}
    audit = tmp_path / "audit.log"
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = parse_config({"daemon": {"heartbeat_s": 0.2, "descriptor_interval_s": 0.5},
                            "security": {"audit_log": str(audit)},
                            "device": [{"name": "s0", "kind": "synthetic", "address": sim.address}]})
        assert cfg.daemon.control_endpoint == f"ipc://{rt}/control"
        d = AcquisitionDaemon(cfg).start()
        stage = ReconStage(cfg, preload=False).start()
        try:
            assert stat.S_IMODE(rt.stat().st_mode) == private_mode()
            assert sorted(p.name for p in rt.iterdir()) == ["control", "data", "recon-control", "recon-data"]
            # clients told nothing find the rig: the CLI...
            r = run_medacq("ctl", "status", env=env)
            assert r.returncode == 0, r.stderr
            st = json.loads(r.stdout)
            assert st["control"]["local_rights"] == "operator" and "s0" in st["streams"]
            r = run_medacq("ctl", "stop", "s0", env=env)
            assert r.returncode == 0 and json.loads(r.stdout) == {"devices": ["s0"]}
            r = run_medacq("ctl", "status", "--recon", env=env)
            assert r.returncode == 0, r.stderr
            with ControlClient() as c:  # ... and the library
                assert c.request("start", device="s0") == {"devices": ["s0"]}
            with Subscriber(topics="raw/s0") as sub:
                assert sub.endpoints == [f"ipc://{rt}/data", f"ipc://{rt}/recon-data"]
                assert len(list(sub.frames(timeout=10, max_frames=3))) == 3
            # a second daemon on the same sockets is refused (ZeroMQ would silently take them over)
            with pytest.raises(BindError, match=f"ipc://{rt}/data is already in use"):
                AcquisitionDaemon(cfg).start()
            with ControlClient(timeout=2) as c:  # the first one still answers
                assert c.request("ping")
        finally:
            stage.shutdown()
            d.shutdown()
    me = f"uid {os.getuid()} ({pwd.getpwuid(os.getuid()).pw_name})"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["who"], r["command"], r["ok"]) for r in records] == [(me, "stop", True), (me, "start", True)]


def test_medacq_up_style_tcp_configs_are_unchanged(endpoints):
    import argparse

    from medacq.daemon.cli._common import rig_endpoints

    cfg = parse_config({**endpoints})
    assert (cfg.daemon.control_endpoint, cfg.recon.data_endpoint) == (endpoints["daemon"]["control_endpoint"],
                                                                       endpoints["recon"]["data_endpoint"])
    # --base-port still means a medacq up rig on TCP loopback
    assert rig_endpoints(argparse.Namespace(config=None, base_port=7000)) == (
        "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7003", ["tcp://127.0.0.1:7000", "tcp://127.0.0.1:7002"])


def _request_as(uid: int, gid: int, endpoint: str, command: str, **fields) -> dict:
    """Send one control request from a forked child running as ``uid``/``gid`` (no other groups):
    ``{"result": ...}``, ``{"error": code}`` or ``{"unreachable": True}``."""
    import zmq

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the other user, then a fresh ZeroMQ context
        out = {"unreachable": True}
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            ctx = zmq.Context()
            try:
                with ControlClient(endpoint, timeout=1.5, context=ctx) as c:
                    out = {"result": c.request(command, **fields)}
            except RequestFailed as exc:
                out = {"error": exc.code}
            except Exception:  # noqa: BLE001 - unreachable (DaemonUnreachable) or anything else
                out = {"unreachable": True}
            ctx.destroy(0)
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users (uid 65534 and 65533)")
def test_the_os_decides_who_connects(monkeypatch):
    """A member of the runtime directory's group connects and is an operator; anyone else is
    stopped by the kernel before ZeroMQ sees them. The audit log names the member's account."""
    import pwd
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="medacq-test-"))  # not pytest's tmp_path: its parents are 0700
    try:
        os.chmod(base, 0o711)  # others may pass through to rt, not list it
        rt = base / "rt"
        monkeypatch.setenv("MEDACQ_RUNTIME_DIR", str(rt))
        monkeypatch.setattr(security, "_medacq_gid", lambda: 65534)  # "group medacq" for this test: nogroup
        audit = base / "audit.log"
        cfg = parse_config({"security": {"audit_log": str(audit)},
                            "device": [{"name": "s0", "kind": "synthetic", "address": "socket://127.0.0.1:1",
                                        "autostart": False}]})
        d = AcquisitionDaemon(cfg).start()
        try:
            assert stat.S_IMODE(rt.stat().st_mode) == 0o770 and rt.stat().st_gid == 65534
            ep = cfg.daemon.control_endpoint
            assert _request_as(65534, 65534, ep, "stop", device="s0") == {"result": {"devices": ["s0"]}}
            assert _request_as(65533, 65533, ep, "stop", device="s0") == {"unreachable": True}
            assert _request_as(65533, 65534, ep, "status")["result"]["control"]["local_rights"] == "operator"
        finally:
            d.shutdown()
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        name = pwd.getpwuid(65534).pw_name
        assert [(r["who"], r["command"], r["ok"]) for r in records] == [(f"uid 65534 ({name})", "stop", True)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
