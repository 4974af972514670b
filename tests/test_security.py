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
    # named by their key files in readers/ and operators/, with the Z85 key beside the name
    assert [(r["who"], r["key"]) for r in records] == [("bob", bob.public.decode()), ("alice", alice.public.decode()),
                                                       ("alice", alice.public.decode())]
    assert who == {"bob", "alice"}


# -- without CurveZMQ: the transport decides (ipc in a private directory: operator; TCP loopback: reader) --

import os  # noqa: E402
import stat  # noqa: E402

from medacq.daemon.common.security import local_rights, prepare_ipc_dir  # noqa: E402


def private_mode() -> int:
    """The mode the services give a directory they create: 0770 with group medacq where it exists
    and this user may give the directory to it, else 0700."""
    import grp

    try:
        gid = grp.getgrnam("medacq").gr_gid
    except KeyError:
        return 0o700
    return 0o770 if os.geteuid() == 0 or gid in os.getgroups() else 0o700


def test_local_rights_follow_the_transport(tmp_path):
    tcp = "tcp://127.0.0.1:5556"
    assert local_rights(tcp, None)[0] == "reader" and "local_operator = true" in local_rights(tcp, None)[1]
    assert local_rights(tcp, True)[0] == "operator" and local_rights(tcp, False)[0] == "reader"
    run = tmp_path / "run" / "medacq"
    ep = f"ipc://{run}/control"
    prepare_ipc_dir(ep)
    assert stat.S_IMODE(run.stat().st_mode) == private_mode()
    assert local_rights(ep, None)[0] == "operator"
    assert local_rights(ep, False)[0] == "reader"  # the config has the last word
    os.chmod(run, 0o777)  # others may enter: the OS no longer decides who connects
    rights, why = local_rights(ep, None)
    assert rights == "reader" and "other users can enter" in why


def _rig(endpoints, control: str, audit: str = "", **daemon):
    d = {k: v for k, v in endpoints["daemon"].items() if k != "local_operator"}
    return parse_config({"daemon": {**d, "control_endpoint": control, **daemon}, "recon": endpoints["recon"],
                         "security": {"audit_log": audit},
                         "device": [{"name": "s0", "kind": "synthetic", "address": "socket://127.0.0.1:1",
                                     "autostart": False}]})


def test_tcp_loopback_without_curve_gives_reader_rights(endpoints, tmp_path):
    audit = tmp_path / "audit.log"
    cfg = _rig(endpoints, endpoints["daemon"]["control_endpoint"], str(audit))
    d = AcquisitionDaemon(cfg).start()
    try:
        with ControlClient(cfg.daemon.control_endpoint, timeout=3) as c:
            st = c.request("status")
            assert st["control"]["local_rights"] == "reader" and "s0" in st["streams"]
            assert c.request("describe", device="s0")["name"] == "s0"
            for cmd, fields in [("start", {"device": "s0"}), ("configure", {"device": "s0", "settings": {"seed": 1}}),
                                ("record", {"action": "start"})]:
                with pytest.raises(RequestFailed) as exc:
                    c.request(cmd, **fields)
                assert exc.value.code == "forbidden" and "reader rights" in exc.value.message
                assert "local_operator = true" in exc.value.message
            assert c.request("describe", device="s0")["settings"]["seed"] == 0
            assert d.workers["s0"].want_running.is_set() is False
    finally:
        d.shutdown()
    records = [json.loads(l) for l in audit.read_text().splitlines()]
    assert [(r["command"], r["ok"], r["outcome"]) for r in records] == [
        ("start", False, "refused"), ("configure", False, "refused"), ("record", False, "refused")]


@pytest.mark.parametrize("local_operator", [None, True])
def test_ipc_in_a_private_directory_or_local_operator_gives_operator_rights(endpoints, tmp_path, local_operator):
    if local_operator:
        control = endpoints["daemon"]["control_endpoint"]
        cfg = _rig(endpoints, control, local_operator=True)
    else:
        run = tmp_path / "run" / "medacq"  # created by the daemon, 0770 (group medacq) or 0700
        control = f"ipc://{run}/control"
        cfg = _rig(endpoints, control)
    d = AcquisitionDaemon(cfg).start()
    try:
        if local_operator is None:
            assert stat.S_IMODE((tmp_path / "run" / "medacq").stat().st_mode) == private_mode()
        with ControlClient(control, timeout=3) as c:
            assert c.request("status")["control"]["local_rights"] == "operator"
            assert c.request("configure", device="s0", settings={"seed": 3})["settings"]["seed"] == 3
            assert c.request("stop", device="s0") == {"devices": ["s0"]}
    finally:
        d.shutdown()


# -- every bound socket passes one rule (medacq.daemon.common.binding.check_exposure) -------------
@pytest.mark.parametrize("address,local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:5555", True), ("ipc:///run/medacq/control", True),
    ("inproc://x", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.0.2.1:5555", False),
    ("127.0.0.1:8555", True), ("127.0.0.2:8555", True), ("localhost:8555", True), ("[::1]:8555", True),
    ("::1", True), ("0.0.0.0:8555", False), ("[::]:8555", False), ("192.0.2.1:18944", False),
    ("rig.example.org:8555", False), ("", False),
])
def test_what_counts_as_local(address, local):
    from medacq.daemon.common.binding import address_is_local

    assert address_is_local(address) is local


def test_check_exposure_refuses_in_one_line_unless_allowed():
    from medacq.daemon.common.binding import BindError, check_exposure

    check_exposure("serve x on", "127.0.0.1:1", allowed=False, needs="y")
    check_exposure("serve x on", "0.0.0.0:1", allowed=True, needs="y")
    with pytest.raises(BindError) as exc:
        check_exposure("serve x on", "0.0.0.0:1", allowed=False, needs="the y setting")
    assert str(exc.value) == "refusing to serve x on 0.0.0.0:1 without the y setting"


def test_zeromq_bind_refuses_off_loopback_without_curve():
    import socket

    import zmq

    from medacq.daemon.common.binding import BindError, bind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = zmq.Context.instance().socket(zmq.PUB)
    try:
        with pytest.raises(BindError) as exc:
            bind(sock, f"tcp://0.0.0.0:{port}", "data", curve=False)
        assert str(exc.value) == (f"refusing to bind data endpoint tcp://0.0.0.0:{port} without CurveZMQ "
                                  "([security] server_secret_key)")
        assert sock.getsockopt(zmq.LAST_ENDPOINT) == b""  # nothing bound
        bind(sock, f"tcp://127.0.0.1:{port}", "data", curve=False)
        assert sock.getsockopt(zmq.LAST_ENDPOINT) == f"tcp://127.0.0.1:{port}".encode()
    finally:
        sock.close(0)


def test_openigtlink_server_needs_an_explicit_opt_in_off_loopback():
    from medacq.daemon.common.binding import BindError
    from medacq.daemon.recon.modalities.ultrasound import BModeSettings, IgtlImageServer
    from medacq.daemon.recon.registry import check_recon_settings

    problems = check_recon_settings({"recon": {"settings": {"us": {"igtl_host": "0.0.0.0"}}}})
    assert len(problems) == 1 and problems[0][0].startswith("recon.settings.us")
    assert "refusing to serve OpenIGTLink on 0.0.0.0:18944 without igtl_allow_remote = true" in problems[0][1]
    assert check_recon_settings({"recon": {"settings": {"us": {"igtl_host": "0.0.0.0",
                                                                "igtl_allow_remote": True}}}}) == []
    assert check_recon_settings({"recon": {"settings": {"us": {"igtl_host": "0.0.0.0", "igtl_port": 0}}}}) == []
    assert BModeSettings().igtl_host == "127.0.0.1" and BModeSettings().igtl_allow_remote is False
    with pytest.raises(BindError, match="refusing to serve OpenIGTLink on 192.0.2.1:0 without igtl_allow_remote"):
        IgtlImageServer("192.0.2.1", 0)  # refused before any bind (this address is not ours)
    srv = IgtlImageServer("127.0.0.1", 0)  # loopback needs nothing
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0
    finally:
        srv.close()


def test_lsl_bridge_needs_an_explicit_opt_in(endpoints):
    from medacq.daemon.bridges.lsl import LslBridge
    from medacq.daemon.common.binding import BindError

    with pytest.raises(BindError) as exc:  # before pylsl is even imported, and before any socket
        LslBridge(endpoints["daemon"]["data_endpoint"], "raw/")
    assert str(exc.value).startswith("refusing to serve LSL outlets on 0.0.0.0 (every interface, multicast "
                                     "discovery) without an explicit opt-in (medacq lsl --allow-lan")
    r = run_medacq("lsl", "--base-port", "1", "--for", "1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("medacq lsl: refusing to serve LSL outlets on 0.0.0.0") and r.stderr.count("\n") == 1


def test_the_view_refuses_http_off_loopback(endpoints):
    pytest.importorskip("aiohttp")
    from medacq.daemon.bridges.view import ViewServer, ViewSettings
    from medacq.daemon.common.binding import BindError

    with pytest.raises(BindError, match=r"^refusing to serve http on 0\.0\.0\.0:8555 without TLS .*SSH tunnel"):
        ViewServer(ViewSettings(endpoints["daemon"]["control_endpoint"], None, [], host="0.0.0.0", port=8555))
