"""Issue #20, "A rig on several machines": two daemons on two network namespaces joined by a veth
pair, CurveZMQ on every socket, one subscriber and one recording for both.

Namespace A ("imaging host", 10.77.n.1) runs a synthetic simulator and a daemon (``img0``);
namespace B ("biosignal host", 10.77.n.2) a HackEEG simulator on a pty and a daemon (``ekg0``).
Both daemons bind on their veth address with one rig's keys (``medacq keys generate-rig``); the
clients run in namespace B: daemon A is across the veth, daemon B on B's own veth address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from medacq.daemon.bench.netns import NetnsUnavailable, VethPair
from medacq.daemon.common.config import dump_config

from conftest import run_medacq

h5py = pytest.importorskip("h5py", reason="medacq record writes HDF5 (h5py, the [all] extra)")

_DATA, _CTL = 7555, 7556
_SYNTH = {"shape": [4, 16], "rate_hz": 100.0, "seed": 7}

# the clients in namespace B: one subscriber with a reader's key for both daemons, one without keys,
# one with a key on no allow-list, the control socket refusing the stranger, and the clock estimates
_CLIENT = r"""
import json, sys, time
import numpy as np
from medacq.client import ClientKeys, ClockEstimator, ControlClient, DaemonUnreachable, Subscriber
from medacq.simulators.synthetic import SynthConfig, synth_frame

a = json.loads(sys.argv[1])
reader = ClientKeys.load(a["reader"], a["server"])
stranger = ClientKeys.load(a["stranger"], a["server"])
synth = SynthConfig(shape=a["synth"]["shape"], dtype="<f4", rate_hz=a["synth"]["rate_hz"], seed=a["synth"]["seed"])
subs = {"reader": Subscriber(a["data"], "", curve=reader), "no_key": Subscriber(a["data"], ""),
        "stranger": Subscriber(a["data"], "", curve=stranger)}
got = {k: {} for k in subs}
msgs = {k: 0 for k in subs}
mismatch = 0
end = time.monotonic() + a["for_s"]
while time.monotonic() < end:
    for k, sub in subs.items():
        while (m := sub.recv(timeout=0)) is not None:
            msgs[k] += 1
            if m.array is not None:
                got[k].setdefault(m.topic, []).append(m.header["seq"])
                if m.topic == "raw/img0" and not np.array_equal(m.array, synth_frame(synth, m.header["seq"])):
                    mismatch += 1
    time.sleep(0.02)
out = {"frames": {k: {t: len(s) for t, s in v.items()} for k, v in got.items()}, "messages": msgs,
       "contiguous": {t: s == list(range(s[0], s[0] + len(s))) for t, s in got["reader"].items()},
       "img0_mismatch": mismatch, "gaps": [g.topic for g in subs["reader"].gaps if not g.local],
       "descriptors": sorted(subs["reader"].descriptors)}
for sub in subs.values():
    sub.close()
refused = {}
for name, keys in (("stranger", stranger), ("no_key", None)):
    try:
        with ControlClient(a["ctl"][0], timeout=1.0, curve=keys) as c:
            c.request("ping")
        refused[name] = False
    except DaemonUnreachable:
        refused[name] = True
out["control_refused"] = refused
out["clock"] = {}
for ep in a["ctl"]:
    with ClockEstimator(ep, curve=reader, probes=32) as clk:
        out["clock"][ep] = clk.estimate.as_dict()
print(json.dumps(out))
"""


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


def _rig(keys, bind: str, device: dict) -> dict:
    return {"daemon": {"data_endpoint": f"tcp://{bind}:{_DATA}", "control_endpoint": f"tcp://{bind}:{_CTL}",
                       "heartbeat_s": 0.2, "descriptor_interval_s": 0.5},
            "recon": {"data_endpoint": "tcp://127.0.0.1:7557", "control_endpoint": "tcp://127.0.0.1:7558"},
            "device": [device],
            "security": {"server_secret_key": str(keys / "server.key_secret"), "readers": str(keys / "readers"),
                         "operators": str(keys / "operators"), "tool_keys": str(keys / "tools")}}


def _first_line(p: subprocess.Popen, what: str) -> str:
    assert p.stdout is not None
    line = p.stdout.readline().decode().strip()  # the simulator prints its address first
    if not line:
        raise AssertionError(f"{what} printed nothing (exit {p.poll()})")
    return line.split()[0]


def test_two_daemons_on_two_namespaces_one_topic_tree_with_keys(veth, tmp_path):
    keys = tmp_path / "keys"
    r = run_medacq("keys", "generate-rig", str(keys))
    assert r.returncode == 0, r.stderr
    r = run_medacq("keys", "generate", str(tmp_path / "people"), "alice", "mallory")
    assert r.returncode == 0, r.stderr
    (tmp_path / "people" / "alice.key").rename(keys / "readers" / "alice.key")  # mallory: on no list
    a, b = veth.ns_a, veth.ns_b

    # off loopback without CurveZMQ: the daemon refuses to start (before binding anything)
    insecure = _rig(keys, veth.addr_a, {"name": "img0", "kind": "synthetic", "address": "socket://127.0.0.1:1"})
    del insecure["security"]
    (tmp_path / "insecure.toml").write_text(dump_config(insecure))
    refusal = subprocess.Popen(veth.medacq_argv(a, "run", "--config", str(tmp_path / "insecure.toml"), "--for", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # the simulators, each in its daemon's namespace
    sim_a = veth.popen(a, [sys.executable, "-m", "medacq.daemon.cli", "sim", "synthetic", "--tcp", "127.0.0.1:7311"],
                       stdout=subprocess.PIPE)
    sim_b = veth.popen(b, [sys.executable, "-m", "medacq.daemon.cli", "sim", "hackeeg", "rate=250", "--name", "ekg",
                           "--link-dir", str(tmp_path)], stdout=subprocess.PIPE)
    addr_a, addr_b = _first_line(sim_a, "synthetic simulator"), _first_line(sim_b, "hackeeg simulator")
    cfg_a = _rig(keys, veth.addr_a, {"name": "img0", "kind": "synthetic", "address": addr_a, "settings": _SYNTH})
    cfg_b = _rig(keys, veth.addr_b, {"name": "ekg0", "kind": "hackeeg", "address": addr_b, "settings": {"rate": 250}})
    for name, cfg in (("a", cfg_a), ("b", cfg_b)):
        (tmp_path / f"rig_{name}.toml").write_text(dump_config(cfg))
    d_a = veth.popen(a, [sys.executable, "-m", "medacq.daemon.cli", "run", "--config", str(tmp_path / "rig_a.toml")],
                     log=tmp_path / "daemon_a.log")
    d_b = veth.popen(b, [sys.executable, "-m", "medacq.daemon.cli", "run", "--config", str(tmp_path / "rig_b.toml")],
                     log=tmp_path / "daemon_b.log")
    data = [f"tcp://{veth.addr_a}:{_DATA}", f"tcp://{veth.addr_b}:{_DATA}"]
    ctl = [f"tcp://{veth.addr_a}:{_CTL}", f"tcp://{veth.addr_b}:{_CTL}"]
    # both daemons answer across the veth (the cli's operator key from the rig's tool keys)
    for cfg_file, ep in (("rig_a.toml", ctl[0]), ("rig_b.toml", ctl[1])):
        deadline = time.monotonic() + 15
        while True:
            st = subprocess.run(veth.medacq_argv(b, "ctl", "list", "--config", str(tmp_path / cfg_file),
                                                 "--endpoint", ep, "--timeout", "2"),
                                capture_output=True, text=True, timeout=20)
            if st.returncode == 0 or time.monotonic() > deadline:
                break
        assert st.returncode == 0, (st.stderr, (tmp_path / "daemon_a.log").read_text()[-2000:],
                                    (tmp_path / "daemon_b.log").read_text()[-2000:])

    # one recording of both daemons, from namespace B, with the recorder's key; the subscribers meanwhile
    rec_path = tmp_path / "both.h5"
    rec_t0 = time.monotonic_ns()
    rec = subprocess.Popen(veth.medacq_argv(b, "record", "--endpoint", data[0], "--endpoint", data[1],
                                            "--topics", "raw/", "--out", str(rec_path), "--for", "4",
                                            "--key", str(keys / "tools" / "recorder.key_secret"),
                                            "--server-key", str(keys / "server.key")),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    args = {"reader": str(keys.parent / "people" / "alice.key_secret"), "server": str(keys / "server.key"),
            "stranger": str(keys.parent / "people" / "mallory.key_secret"), "data": data, "ctl": ctl,
            "for_s": 3.0, "synth": _SYNTH}
    cl = subprocess.run(veth.exec_argv(b, [sys.executable, "-c", _CLIENT, json.dumps(args)]), capture_output=True,
                        text=True, timeout=60)
    assert cl.returncode == 0, cl.stderr
    out = json.loads(cl.stdout)
    rec_out, rec_err = rec.communicate(timeout=30)
    rec_t1 = time.monotonic_ns()
    ref_out, ref_err = refusal.communicate(timeout=30)

    # the refusal: exit 2, and it says why
    assert refusal.returncode == 2, ref_err
    assert "requires CurveZMQ" in ref_err and veth.addr_a in ref_err

    # with a reader's key: every stream of both daemons under one tree, values intact, nothing lost
    frames = out["frames"]["reader"]
    assert {"raw/img0", "raw/ekg0"} <= set(frames), frames
    assert frames["raw/img0"] >= 100 and frames["raw/ekg0"] >= 5  # 100 frames/s for ~3 s; the EEG's 250 Hz frames
    assert all(out["contiguous"].values()) and out["gaps"] == []
    assert out["img0_mismatch"] == 0
    assert {"raw/img0", "raw/ekg0"} <= set(out["descriptors"])
    # without keys, or with a key on no allow-list: not one message, and no control reply
    assert out["messages"]["no_key"] == 0 and out["messages"]["stranger"] == 0
    assert out["control_refused"] == {"stranger": True, "no_key": True}

    # the clocks across the veth: one kernel, so the true offset is 0; the estimate is within its bound
    for ep in ctl:
        c = out["clock"][ep]
        assert c["probes"] == 32 and 0 < c["uncertainty_ms"] < 5.0
        assert abs(c["offset_mono_ms"]) <= c["uncertainty_ms"]
        assert abs(c["offset_ms"]) <= c["uncertainty_ms"] + 0.05

    # the recording: both daemons' streams in one file, frames per stream = what the recorder got
    assert rec.returncode == 0, rec_err
    status = json.loads(rec_err.strip().splitlines()[-1])
    assert status["missed_frames"] == 0
    with h5py.File(rec_path, "r") as f:
        got = {}
        for name in ("img0", "ekg0"):
            g = f["raw"][name]
            seq = np.concatenate([g[k]["seq"][:] for k in g if k.startswith("data_")])
            assert len(seq) == int(g.attrs["frames"]) > 0
            assert np.array_equal(seq, np.arange(seq[0], seq[0] + len(seq)))  # contiguous
            got[f"raw/{name}"] = len(seq)
            # one timeline: both daemons' frame times lie inside the recording's run on this host's clock
            # (one kernel: the offset is 0; 1 s margin for the frames in flight and the EEG's frame length)
            t = np.concatenate([g[k]["t_mono_ns"][:] for k in g if k.startswith("data_")]).astype(np.int64)
            assert rec_t0 - 1e9 < t.min() and t.max() < rec_t1 + 1e9
    assert got["raw/img0"] >= 200
    assert status["frames_recorded"] == sum(got.values())
    assert {t: s["frames"] for t, s in status["streams"].items()} == got
    assert all(s["gap_frames"] == 0 for s in status["streams"].values())
    assert veth.stop(d_a) == 0 and veth.stop(d_b) == 0


def test_without_the_right_to_make_namespaces_the_reason_is_given():
    """Not root / no CAP_NET_ADMIN: the fixture's skip and the bench's ``null`` say which command failed and why."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to drop to an unprivileged user")
    code = ("import json\nfrom medacq.daemon.bench.multihost import cross_host_clock\n"
            "print(json.dumps(cross_host_clock()))")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cross_host_offset_uncertainty_ms"] is None
    note = out["cross_host_note"]
    assert note.startswith("not measured: `ip netns add mq") and "needs root or CAP_NET_ADMIN" in note
