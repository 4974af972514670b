"""``medacq bench rig``: a short run of the whole default rig yields a figure for every stream.

Smoke test of the benchmark tool, not of performance: it checks the shape and the accounting of
the output (every raw and reconstructed topic of the rig, rates above zero, recorded = delivered),
never the bars.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from contextlib import redirect_stdout
from pathlib import Path

from medacq.daemon.bench.rig import STREAM_KEYS, idle_and_under_load, print_result
from medacq.simulators.rig import DEFAULT_RIG

from conftest import run_medacq


def test_bench_rig_json_covers_every_stream():
    r = run_medacq("bench", "rig", "--seconds", "3", "--warmup-s", "1", "--capacity-s", "0.2", "--json",
                   timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    streams = {e["topic"]: e for e in out["streams"]}
    assert len(streams) == len(out["streams"])  # one entry per topic
    raw = {f"raw/{e.name}" for e in DEFAULT_RIG}
    main = {f"recon/{e.name}" for e in DEFAULT_RIG}
    assert raw | main <= set(streams)
    assert all(t.startswith(("raw/", "recon/")) for t in streams)
    for topic, e in streams.items():
        assert tuple(e) == STREAM_KEYS, topic
        assert isinstance(e["in_fps"], float) and e["in_fps"] > 0, (topic, e)
        assert isinstance(e["gaps"], int) and e["gaps"] >= 0
    for topic in raw:
        e = streams[topic]
        assert e["out_fps"] is None and e["capacity_fps"] is None
        assert isinstance(e["lost"], int) and e["lost"] >= 0
        assert e["age_p50_ms"] > 0 and e["age_p50_ms"] <= e["age_p99_ms"] <= e["age_max_ms"]
        assert 0 < e["first_frame_s"] < 120
    for topic in main:  # a recon topic's in_fps is its source's
        e, src = streams[topic], streams["raw/" + topic.split("/", 1)[1]]
        assert e["in_fps"] == src["in_fps"]
        assert isinstance(e["capacity_fps"], float) and e["capacity_fps"] > 0, (topic, e)
        assert e["first_frame_s"] is None or e["first_frame_s"] >= src["first_frame_s"]
    # the recording holds exactly what the subscriber received, per raw stream
    red = out["recorded_equals_delivered"]
    assert set(red["streams"]) == raw
    assert red["all"] is True and all(red["streams"].values()), (out["recording"], out["recorder"])
    assert out["recorder"]["state"] == "stopped" and out["recorder"]["missed_frames"] == 0
    assert all(out["recording"][t]["recorded"] == out["recording"][t]["delivered"] > 0 for t in raw)
    assert out["recording_problems"] == []
    # every raw stream is judged on loss and recording; every main recon output on rate and age
    judged = {(b["topic"], b["figure"]) for b in out["bars"]}
    assert {(t, "lost") for t in raw} | {(t, "recorded_equals_delivered") for t in raw} <= judged
    assert {(t, f) for t in main for f in ("age_p99_ms", "out_fps", "first_frame_s")} <= judged
    assert out["passed"] == all(b["ok"] for b in out["bars"])
    # the live view's client pulled updates
    assert out["view"]["client"]["updates"] > 0 and out["view"]["client"]["error"] is None
    # the stage's start-up, its own per-stream figures and the GIL check are reported
    names = {e.name for e in DEFAULT_RIG}
    su = out["recon_startup"]
    assert isinstance(su["preload"]["seconds"], float) and set(su["preload"]["modalities"]) >= {"us", "eeg", "ct"}
    assert set(su["ready_after_s"]) == set(su["lost_in_warmup"]) == set(out["stage"]) == names
    us = out["stage"]["us0"]
    assert us["frames_done"] > 0 and us["batches"] == us["frames_done"]  # latest: one frame per call
    if os.path.exists("/proc/self/task"):
        assert us["cpu_run_pct"] > 0 and us["cpu_wait_pct"] >= 0
    g = out["gil"]
    assert g["heavy"] == "us0" and "us0" not in g["rest"] and len(g["rest"]) == len(names) - 1
    for pair in ("beside_rest", "beside_python"):
        assert g[pair]["threads_sum"] > 0 and g[pair]["processes_sum"] > 0 and g[pair]["threads_vs_processes"] > 0
    # how late each simulator's output left, over the window (every device of the rig streams)
    late = out["simulator_late_ms"]
    assert names <= set(late), sorted(late)
    for v in late.values():
        assert v["n"] > 0 and 0 <= v["p50"] <= v["p99"] <= v["max"]
    # the table names every topic and marks each bar
    buf = io.StringIO()
    with redirect_stdout(buf):
        print_result(out)
    table = buf.getvalue()
    assert all(t in table for t in streams)
    assert table.count(" ok") + table.count(" FAIL(") >= len(out["bars"]) - len(raw)


def _children() -> set[int]:
    """This process's children, but multiprocessing's resource tracker (it stays for the session)."""
    pids = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids |= {int(p) for p in (task / "children").read_text().split()}
    out = set()
    for pid in pids:
        try:
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except OSError:
            pass
    return out


def test_under_load_runs_idle_then_beside_the_rig():
    calls: list[dict] = []

    def run(_args):
        calls.append({"children": len(_children()), "t": time.monotonic()})
        return {"benchmark": "probe", "fps": 10.0 * len(calls), "label": "x", "children": calls[-1]["children"]}

    args = argparse.Namespace(under_load=True, warmup_s=1.0)
    res = idle_and_under_load("probe", run, args)
    assert len(calls) == 2
    # the second run had the rig beside it: simulators, recorder, recon, view, daemon, view client
    assert calls[0]["children"] + 6 <= calls[1]["children"]
    rows = {r["figure"]: r for r in res["results"]}
    assert rows["fps"] == {"figure": "fps", "idle": 10.0, "under_load": 20.0, "ratio": 2.0}
    assert rows["label"]["ratio"] is None and rows["label"]["idle"] == "x"
    assert "benchmark" not in rows
    # and nothing of the rig outlives it
    deadline = time.monotonic() + 10
    while len(_children()) > calls[0]["children"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_children()) <= calls[0]["children"]
    # without --under-load: the plain run
    assert idle_and_under_load("probe", run, argparse.Namespace(under_load=False))["fps"] == 30.0


# -- the accounting, on synthetic inputs (no rig) ----------------------------------------------------------
import subprocess
import sys

import numpy as np

from medacq.daemon.bench.rig import compare_seqs
from medacq.daemon.bench.runner import StreamLedger, end_series_and_drain


def test_recorded_equals_delivered_compares_frames_not_counts():
    delivered = {("raw/a", "s1"): [0, 1, 2, 3], ("raw/b", "s1"): [0, 1, 2]}
    same = compare_seqs(delivered, {k: np.asarray(v, np.uint64) for k, v in delivered.items()})
    assert all(c["equal"] for c in same.values()) and same["raw/a"]["recorded"] == 4
    # a duplicate and a loss: the counts are equal, the frames are not
    dup_loss = compare_seqs(delivered, {("raw/a", "s1"): np.asarray([0, 1, 1, 3], np.uint64),
                                        ("raw/b", "s1"): np.asarray([0, 1, 2], np.uint64)})
    assert dup_loss["raw/a"]["recorded"] == dup_loss["raw/a"]["delivered"] == 4
    assert dup_loss["raw/a"] == {"recorded": 4, "delivered": 4, "missing": 1, "extra": 1, "equal": False}
    assert dup_loss["raw/b"]["equal"]
    # a frame recorded under another series is both missing and extra
    moved = compare_seqs({("raw/a", "s1"): [0, 1]}, {("raw/a", "s1"): np.asarray([0], np.uint64),
                                                      ("raw/a", "s2"): np.asarray([1], np.uint64)})
    assert moved["raw/a"]["missing"] == 1 and moved["raw/a"]["extra"] == 1
    # check_recording's problems fail the bar even when the frames match
    assert not compare_seqs(delivered, {k: np.asarray(v, np.uint64) for k, v in delivered.items()},
                            file_ok=False)["raw/a"]["equal"]


def test_ledger_counting_from_zero_sees_a_lost_series_start():
    for from_zero, lost in ((False, 0), (True, 5)):
        led = StreamLedger(count_from_zero=from_zero)
        for seq in range(5, 10):  # series_start and frames 0..4 dropped before this subscriber
            led.see("raw/a", {"kind": "frame", "series": "s1", "seq": seq})
        led.see("raw/a", {"kind": "series_end", "series": "s1", "seq": 10})
        assert led.generated("raw/a") - led.delivered["raw/a"] == lost


class _FakeSub:
    """recv() hands out its script: a message, or None (nothing within the timeout)."""

    def __init__(self, script: list) -> None:
        self.script = script

    def recv(self, timeout: float) -> object:
        if self.script:
            item = self.script.pop(0)
            if item is not None:
                return item
        time.sleep(timeout)
        return None


def test_drain_goes_on_after_a_pause_until_the_socket_is_quiet():
    daemon = subprocess.Popen([sys.executable, "-c", "pass"])
    daemon.wait()  # the daemon has exited; its last messages are still on their way
    got: list = []
    end_series_and_drain(daemon, _FakeSub(["m1", "m2", None, "m3", None, None, "m4"]), got.append)
    assert got == ["m1", "m2", "m3", "m4"]


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def test_sigterm_to_a_benchmark_stops_its_children():
    """``medacq bench`` killed with SIGTERM (a CI timeout, systemd) ends its child processes as on
    Ctrl-C: the transport benchmark's sender, a multiprocessing child, outlived it before."""
    import signal

    from conftest import medacq_cmd

    p = subprocess.Popen(medacq_cmd("bench", "transport", "--duration", "30", "--sizes", "1KiB", "--repeat", "1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while not kids and time.monotonic() < deadline:
            time.sleep(0.2)
            kids = _descendants(p.pid)
        assert kids, "the benchmark started no child process"
        time.sleep(1.0)  # the sender is sending
        kids = _descendants(p.pid)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) != 0
        deadline = time.monotonic() + 10
        alive = kids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {k for k in alive if os.path.exists(f"/proc/{k}") and
                     open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"}
        assert not alive, f"children left running after SIGTERM: {sorted(alive)}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        for k in kids:  # a failed run leaves nothing behind either
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
