"""Issue #20, "A rig on several machines": ``medacq up --rig RIG.toml`` starts each host's part through
its launcher, and stops every part again.

Two network namespaces joined by a veth pair stand for two hosts: ``imaging`` (namespace A, launched
with ``ip netns exec A``) serves a simulated synthetic device, ``bio`` (namespace B, ``launch = []``:
``up`` itself runs in B) a simulated HackEEG on a pty. A Subscriber in B with a reader's key and both
hosts' endpoints sees both streams; after ``up`` ends no process of the rig is left and no process
is left in either namespace. Rig files that name an unknown host, or put a host off loopback without
``[security]``, are refused before anything starts (a launcher that would leave a marker file shows it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medacq.daemon.bench.netns import NetnsUnavailable, VethPair

from conftest import medacq_cmd, run_medacq

_CLIENT = r"""
import json, sys, time
from medacq.client import ClientKeys, Subscriber

a = json.loads(sys.argv[1])
keys = ClientKeys.load(a["key"], a["server"])
frames = {}
want = {"raw/img0", "raw/ekg0", "recon/img0"}
with Subscriber(a["data"], "", curve=keys, errors="skip") as sub:
    end = time.monotonic() + a["within_s"]  # a bound on a loaded machine: it stops as soon as it has all
    while time.monotonic() < end:
        m = sub.recv(timeout=0.1)
        if m is not None and m.array is not None:
            frames.setdefault(m.topic, []).append(m.header["seq"])
        if want <= set(frames) and len(frames["raw/img0"]) >= 20 and {"raw/img0", "raw/ekg0"} <= set(sub.descriptors):
            break
    descriptors = sorted(sub.descriptors)
print(json.dumps({"frames": {t: len(s) for t, s in frames.items()},
                  "contiguous": {t: s == list(range(s[0], s[0] + len(s))) for t, s in frames.items()},
                  "descriptors": descriptors}))
"""


def _write_rig(path: Path, hosts: list[dict], devices: list[dict], security: dict | None, extra: str = "") -> None:
    def val(v) -> str:
        return json.dumps(v)  # a JSON string/list/number/bool is a TOML one too

    lines = []
    if security:
        lines.append("[security]")
        lines += [f"{k} = {val(v)}" for k, v in security.items()]
    lines.append(extra)
    for h in hosts:
        lines.append("[[host]]")
        lines += [f"{k} = {val(v)}" for k, v in h.items()]
    for d in devices:
        lines.append("[[device]]")
        lines += [f"{k} = {val(v)}" if not isinstance(v, dict) else
                  f"{k} = {{ {', '.join(f'{kk} = {val(vv)}' for kk, vv in v.items())} }}" for k, v in d.items()]
    path.write_text("\n".join(lines) + "\n")


def _marker_launcher(marker: Path) -> list[str]:
    """A launcher that leaves ``marker`` behind if it ever runs, then runs the command here."""
    return ["sh", "-c", f'touch "{marker}"; exec "$@"', "sh"]


@pytest.fixture
def veth():
    try:
        pair = VethPair().create()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces cannot be made here: {exc}")
    try:
        yield pair
    finally:
        pair.close()


def _ns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def _procs_naming(text: str) -> list[str]:
    """Command lines of live processes (not this test's) that contain ``text``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if text in cmd and state not in ("Z", "X"):
            out.append(f"{d}: {cmd}")
    return out


def test_up_rig_on_two_namespace_hosts_delivers_both_streams_and_leaves_nothing(veth, tmp_path):
    keys = tmp_path / "keys"
    r = run_medacq("keys", "generate-rig", str(keys))
    assert r.returncode == 0, r.stderr
    py = [sys.executable, "-m", "medacq.daemon.cli"]
    rig = tmp_path / "two-hosts.toml"
    _write_rig(rig, hosts=[{"name": "imaging", "address": veth.addr_a, "launch": ["ip", "netns", "exec", veth.ns_a],
                            "medacq": py, "base_port": 7655},
                           {"name": "bio", "address": veth.addr_b, "launch": [], "base_port": 7655}],
               devices=[{"name": "img0", "kind": "synthetic", "host": "imaging", "simulate": True,
                         "settings": {"shape": [4, 16], "rate_hz": 100.0, "seed": 3}},
                        {"name": "ekg0", "kind": "hackeeg", "host": "bio", "simulate": True,
                         "settings": {"rate": 250}, "sim_options": {"rate": 250}}],
               security={"server_secret_key": str(keys / "server.key_secret"), "readers": str(keys / "readers"),
                         "operators": str(keys / "operators"), "tool_keys": str(keys / "tools")},
               extra="[daemon]\nheartbeat_s = 0.2\ndescriptor_interval_s = 0.5\n")
    # --for bounds the run; the test ends it with SIGTERM (as systemd or Ctrl-C would) once the client has all
    up = subprocess.Popen(veth.exec_argv(veth.ns_b, medacq_cmd("up", "--rig", str(rig), "--for", "90")),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        end = time.monotonic() + 90  # the start of 7 interpreters; minutes on a machine shared with builds
        while not any("every daemon answers" in ln for ln in lines):
            assert time.monotonic() < end and up.poll() is None, (lines, up.stderr.read() if up.poll() is not None
                                                                  else "still starting")
            time.sleep(0.1)
        data = next(ln for ln in lines if "every daemon answers" in ln).split("all streams: ", 1)[1].split()
        assert data == [f"tcp://{veth.addr_a}:7655", f"tcp://{veth.addr_a}:7657",
                        f"tcp://{veth.addr_b}:7655", f"tcp://{veth.addr_b}:7657"]
        # the Subscriber in B, with a reader's key: the imaging host is across the veth
        args = {"key": str(keys / "tools" / "recorder.key_secret"), "server": str(keys / "server.key"),
                "data": data, "within_s": 30.0}
        cl = subprocess.run(veth.exec_argv(veth.ns_b, [sys.executable, "-c", _CLIENT, json.dumps(args)]),
                            capture_output=True, text=True, timeout=60)
        assert cl.returncode == 0, cl.stderr
        out = json.loads(cl.stdout)
        # where the parts ran: the imaging host's part and its children in namespace A, bio's in B
        ns_a_during, ns_b_during = _ns_pids(veth.ns_a), _ns_pids(veth.ns_b)
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        reader.join(10)
        err = up.stderr.read()  # type: ignore[union-attr]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
    assert up.returncode == 0, (lines, err)
    assert out["frames"].get("raw/img0", 0) >= 20 and out["frames"].get("raw/ekg0", 0) >= 1, out
    assert out["frames"].get("recon/img0", 0) >= 1, out  # the imaging host's own stage
    assert all(out["contiguous"].values()), out
    assert {"raw/img0", "raw/ekg0"} <= set(out["descriptors"]), out
    host_lines = {ln.split()[0]: ln for ln in lines if ln.startswith("  ")}
    assert "; img0 at /" in host_lines["imaging"] and f"via ip netns exec {veth.ns_a}" in host_lines["imaging"]
    assert "; ekg0 at /" in host_lines["bio"] and "via this machine" in host_lines["bio"]  # the simulators' ptys
    # A held the imaging part (rig-host, daemon, stage); B held up, bio's part (rig-host, daemon, stage)
    assert len(ns_a_during) >= 3 and len(ns_b_during) >= 4, (ns_a_during, ns_b_during)
    # nothing left: not in either namespace, and no process of the rig anywhere
    assert _ns_pids(veth.ns_a) == [] and _ns_pids(veth.ns_b) == []
    assert _procs_naming("rig-host") == [] and _procs_naming(str(rig)) == []
    workdirs = [ln.rsplit("its folder ", 1)[1].strip() for ln in host_lines.values()]
    assert all(_procs_naming(w) == [] for w in workdirs)
    veth.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert veth.ns_a not in listed and veth.ns_b not in listed


def _up_rig_here(rig: Path, capsys) -> tuple[int, str]:
    """``medacq up --rig RIG --for 1`` through the CLI's entry point, in this process (the refusals
    start nothing, so nothing needs a process of its own): exit status and stderr."""
    from medacq.daemon.cli.app import main

    code = main(["up", "--rig", str(rig), "--for", "1"])
    return code, capsys.readouterr().err


def test_a_device_on_an_unknown_host_is_refused_before_anything_starts(tmp_path, capsys):
    marker = tmp_path / "launched"
    rig = tmp_path / "rig.toml"
    _write_rig(rig, hosts=[{"name": "imaging", "address": "127.0.0.1", "launch": _marker_launcher(marker)}],
               devices=[{"name": "img0", "kind": "synthetic", "host": "imaging", "simulate": True},
                        {"name": "ekg0", "kind": "hackeeg", "host": "biosignals", "simulate": True}], security=None)
    code, err = _up_rig_here(rig, capsys)
    assert code == 2, err
    assert "device[1].host: unknown host 'biosignals'; the rig's hosts: imaging" in err
    assert not marker.exists()


def test_an_off_loopback_host_without_security_is_refused_before_anything_starts(tmp_path, capsys):
    marker = tmp_path / "launched"
    rig = tmp_path / "rig.toml"
    _write_rig(rig, hosts=[{"name": "imaging", "address": "127.0.0.1", "launch": _marker_launcher(marker)},
                           {"name": "bio", "address": "10.77.3.2", "launch": _marker_launcher(marker),
                            "base_port": 6000}],
               devices=[{"name": "ekg0", "kind": "hackeeg", "host": "bio", "simulate": True}], security=None)
    code, err = _up_rig_here(rig, capsys)
    assert code == 2, err
    assert "host[1].address: host 'bio' binds on a non-loopback address (10.77.3.2), which requires CurveZMQ" in err
    assert "host[0]" not in err  # the loopback host needs no keys
    assert not marker.exists()


def test_the_rig_file_becomes_one_config_per_host_and_every_problem_is_listed(tmp_path):
    from medacq.daemon.acquisition.devices import check_devices
    from medacq.daemon.common.config import ConfigError, parse_config
    from medacq.daemon.common.rigfile import SIMULATED_ADDRESS, host_configs, parse_rig_file

    doc = {"daemon": {"heartbeat_s": 0.5},
           "host": [{"name": "imaging", "address": "127.0.0.1", "base_port": 6100},
                    {"name": "bio", "address": "::1", "launch": ["ssh", "bio-pc"], "base_port": 6200}],
           "device": [{"name": "img0", "kind": "synthetic", "host": "imaging", "address": "socket://127.0.0.1:7311"},
                      {"name": "ekg0", "kind": "hackeeg", "host": "bio", "simulate": True,
                       "settings": {"rate": 250}}]}
    rig = parse_rig_file(doc, "rig.toml", (check_devices,))
    cfgs = host_configs(rig)
    assert list(cfgs) == ["imaging", "bio"]
    img, bio = (parse_config(cfgs[n]) for n in ("imaging", "bio"))
    assert (img.daemon.data_endpoint, img.daemon.control_endpoint, img.recon.data_endpoint,
            img.recon.control_endpoint) == tuple(f"tcp://127.0.0.1:{p}" for p in (6100, 6101, 6102, 6103))
    assert bio.daemon.data_endpoint == "tcp://[::1]:6200" and bio.daemon.heartbeat_s == 0.5
    assert [(d.name, d.address) for d in img.device] == [("img0", "socket://127.0.0.1:7311")]
    assert [(d.name, d.address, d.settings) for d in bio.device] == [("ekg0", SIMULATED_ADDRESS, {"rate": 250})]
    assert "security" not in cfgs["imaging"]  # both hosts on loopback: no keys needed

    bad = {"host": [{"name": "a", "address": "127.0.0.1", "base_port": 6100},
                    {"name": "b", "address": "127.0.0.1", "base_port": 6102}],
           "daemon": {"data_endpoint": "tcp://127.0.0.1:1"},
           "device": [{"name": "x", "kind": "synthetic", "host": "a", "simulate": True},
                      {"name": "x", "kind": "synthetic", "host": "b", "address": "socket://127.0.0.1:1"}]}
    with pytest.raises(ConfigError) as e:
        parse_rig_file(bad, "bad.toml")
    assert e.value.problems == [("daemon", "data_endpoint: set per host by up --rig (address and base_port), "
                                           "not here")]
    del bad["daemon"]
    with pytest.raises(ConfigError) as e:
        parse_rig_file(bad, "bad.toml")
    assert e.value.problems == [
        ("device", "device names must be unique across the rig (one topic tree); repeated: x"),
        ("host[1].base_port", "127.0.0.1:6102 is also a port of host 'a': give hosts on one address base ports "
                              "at least 4 apart")]
    with pytest.raises(ConfigError) as e:
        parse_rig_file({"host": [{"name": "a", "address": "127.0.0.1"}],
                        "device": [{"name": "y", "kind": "synthetic", "host": "a"}]}, "bad.toml")
    assert e.value.problems == [("device[0]", "address: required (or simulate = true)")]
