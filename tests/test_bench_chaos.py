"""``medacq bench chaos``: a half-minute run of the default rig under random faults.

Smoke test of the benchmark tool: the output has every section, every kind of fault was injected
(kills and a safe state included), every recorder span was checked, and the counting subscriber
accounted for every frame. The other bars (RSS, control and safe-state times) are figures of the
machine and are not asserted; their presence and shape are.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from medacq.daemon.bench.chaos import HOSTILE_DATA, RESULT_KEYS, hostile_data, print_result
from medacq.protocols.stream import StreamDecodeError, decode_message
from medacq.simulators.rig import DEFAULT_RIG

from conftest import run_medacq

import pytest


def test_hostile_stream_messages_are_all_undecodable():
    """The hostile data must never be a decodable frame (it would be recorded and counted as data)."""
    msgs = hostile_data()
    assert [n for n, _ in msgs] == HOSTILE_DATA and len(set(HOSTILE_DATA)) == len(msgs) >= 10
    for name, parts in msgs:
        with pytest.raises(StreamDecodeError):
            decode_message(parts, parts[0].decode())


def test_bench_chaos_half_a_minute():
    r = run_medacq("bench", "chaos", "--minutes", "0.5", "--json", timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert tuple(out) == RESULT_KEYS
    assert out["benchmark"] == "chaos" and out["minutes"] == 0.5 and out["seed"] == 1
    # faults of every timer and several drawn ones
    kinds = out["faults"]["by_kind"]
    assert {"kill_stage", "kill_recorder", "safe_state"} <= set(kinds), kinds
    assert out["faults"]["total"] == sum(kinds.values()) >= 8
    # the counting subscriber accounted for every frame the daemon numbered
    fr = out["frames"]
    assert fr["generated"] > 0 and fr["delivered"] > 0
    # (on a machine loaded far beyond its cores the subscriber can fall behind the daemon's send
    # mark: the holes are then in seen_as_holes and unannounced_holes, with the load beside them)
    assert fr["unaccounted"] == 0, (fr, out["loadavg_1min"])
    assert fr["generated"] == fr["delivered"] + fr["announced_lost"] + fr["unaccounted"]
    assert set(out["streams"]) == {f"raw/{e.name}" for e in DEFAULT_RIG}
    # one span per recorder process (killed once, then a new file), each checked against the subscriber
    spans = out["recorder_spans"]
    assert len(spans) == 2 and spans[0]["ended_by"] == "kill -9"
    for s in spans:
        assert s["frames_recorded"] > 0 and isinstance(s["missing"], int) and isinstance(s["extra"], int)
        w = s["missing_why"]  # every missing frame has one reason
        assert s["missing"] == w["uncommitted"] + w["recorder_gaps"] + w["silent"]
        if s["equal"]:  # a killed span lacks only what it had not committed; the last one nothing
            assert s["extra"] == 0 and s["problems"] == [] and w["silent"] == w["recorder_gaps"] == 0
            assert s["acknowledged"]["lost"] == 0
    assert not spans[-1]["equal"] or spans[-1]["missing"] == 0
    # the stage came back after its kill
    assert len(out["restarts"]["stage"]) == 1 and out["restarts"]["stage"][0]["ping_after_s"] is not None
    assert out["processes"]["survived"] is True
    # figures are there, with numbers
    assert len(out["rss"]["series_mb"]) >= 3 and out["rss"]["series_mb"][0] > 0
    assert out["control"]["status"]["n"] > 0 and out["control"]["status"]["p99_ms"] > 0
    assert out["control"]["stop"]["n"] > 0
    measured = [e for e in out["safe_state"] if "note" not in e]
    assert measured and all(e["ms"] > 0 and e["reply_state"] == "safe" for e in measured), out["safe_state"]
    # hostile input: a stale answer would show here; what was sent was counted by every consumer
    assert out["hostile_control"]["settings_before"] == out["hostile_control"]["settings_after"]
    assert all(h["daemon_answers_after"] for h in out["hostile_control"]["unexpected"])
    if out["hostile_data"]["sent"]:
        assert out["hostile_data"]["counted_by"]["subscriber"] > 0
    assert out["subscriber_stall"]["unreported"] == 0
    assert out["passed"] == all(b["ok"] for b in out["bars"])
    buf = io.StringIO()
    with redirect_stdout(buf):
        print_result(out)
    table = buf.getvalue()
    assert table.count("ok  ") + table.count("FAIL  ") == len(out["bars"])


# -- the accounting and the bars, on synthetic inputs (no rig) -------------------------------------------
import time as _time
from collections import Counter
from types import SimpleNamespace

import numpy as np

from medacq.daemon.bench.chaos import (_SafeEntry, _SeqLedger, _result, control_ok, settings_unchanged, silent_topics,
                                       span_accounting, stall_accounting)
from medacq.daemon.client.api import GapInfo

_K = ("raw/a", "s1")


def _frames(seqs, t0: float = 100.0, dt: float = 0.1) -> dict:
    """(seq, receive time) of frames received every ``dt`` s from ``t0``."""
    s = np.asarray(seqs, np.uint64)
    return {_K: (s, t0 + dt * np.arange(s.size))}


def test_span_accounting_a_whole_file_passes_and_a_kill_loses_only_its_edges():
    frames = _frames(range(200))  # received from t = 100.0 to 119.9
    # the recorder started at 99, killed at 118: it committed up to seq 170 (t = 117.0), its flush is 1 s
    ok = span_accounting(frames, {_K: np.arange(0, 171, dtype=np.uint64)}, 99.0, 118.0, 2.0)
    assert ok["ok"] and ok["missing"] == 0 and ok["frames_expected"] == 171 and ok["frames_recorded"] == 171
    # the last span (stopped after the run, margin 0) must hold everything to the end
    last = span_accounting(frames, {_K: np.arange(0, 200, dtype=np.uint64)}, 99.0, 121.0, 0.0)
    assert last["ok"] and last["frames_expected"] == 200
    # ... and its final checkpoint lost (the last 5 frames) shows
    lost_tail = span_accounting(frames, {_K: np.arange(0, 195, dtype=np.uint64)}, 99.0, 121.0, 0.0)
    assert not lost_tail["ok"] and lost_tail["missing"] == 5


def test_span_accounting_an_empty_file_or_a_wedged_writer_fails():
    frames = _frames(range(200))
    empty = span_accounting(frames, {}, 99.0, 121.0, 0.0)  # (the window came from the file: it passed)
    # frames received from its start + 10 s (join allowance) + 0.5 s on: seq 96..199
    assert not empty["ok"] and empty["frames_expected"] == 104 and empty["missing"] == 104
    # the writer wedged at t = 105 (seq 50) while its process stayed up until 120
    wedged = span_accounting(frames, {_K: np.arange(0, 51, dtype=np.uint64)}, 99.0, 120.0, 2.0)
    assert not wedged["ok"] and wedged["missing"] == 180 - 51  # frames received up to t < 118
    # a span that recorded nothing while nothing came to compare: a short window passes, a long one fails
    assert span_accounting({}, {}, 99.0, 101.0, 0.0)["ok"]
    assert not span_accounting({}, {}, 99.0, 130.0, 0.0)["ok"]


def test_span_accounting_a_late_recorder_and_extra_frames():
    frames = _frames(range(200))
    # started at 110 (seq 100 arrives then), joined at 112 (seq 120): its join is the window's start
    late = span_accounting(frames, {_K: np.arange(120, 200, dtype=np.uint64)}, 110.0, 121.0, 0.0)
    assert late["ok"] and late["frames_expected"] == 80
    # ... but not more than the join allowance after its start
    slow = span_accounting(frames, {_K: np.arange(190, 200, dtype=np.uint64)}, 100.0, 121.0, 0.0, join_s=5.0)
    assert not slow["ok"] and slow["missing"] == 190 - 56  # frames after 105.5 s
    extra = span_accounting(frames, {_K: np.asarray([*range(200), 500], np.uint64)}, 99.0, 121.0, 0.0)
    assert not extra["ok"] and extra["extra"] == 1


def test_stall_accounting_counts_the_whole_series_not_the_range_the_stalled_one_saw():
    frames = {_K: np.arange(100, dtype=np.uint64), ("raw/a", "s2"): np.arange(30, dtype=np.uint64)}
    got = {_K: set(range(10, 90))}  # it missed 0..9 and 90..99
    told = [(_K, 90, 10)]  # only the tail was reported (e.g. by series_end)
    acc = stall_accounting(frames, got, {_K}, told)
    # s2: no message at all, and not reported: its 30 frames count (the daemon lists ended series)
    assert acc["frames_missed"] == 50 and acc["unreported"] == 40 and acc["reported_as_gaps"] == 10
    assert acc["unseen_series"] == 1 and acc["unseen_series_frames"] == 30
    assert [(r["series"], r["first_seq"], r["count"], r["series_seen"]) for r in acc["unreported_ranges"]] == [
        ("s1", 0, 10, True), ("s2", 0, 30, False)]
    # reported whole (a later series listed it), though it got no message of it
    acc = stall_accounting(frames, got, {_K}, [*told, (_K, 0, 10), (("raw/a", "s2"), 0, 30)])
    assert acc["unreported"] == 0 and acc["frames_missed"] == 50 and acc["unseen_series"] == 1
    assert acc["unreported_ranges"] == []


def test_silent_topics_settings_and_control_bars():
    assert silent_topics({"raw/a": 99.0, "raw/b": 95.0}, ["raw/a", "raw/b", "raw/c"], 100.0, 3.0) == ["raw/b", "raw/c"]
    same_error = {"xr0": {"error": "timeout"}}
    assert not settings_unchanged(same_error, same_error)
    assert not settings_unchanged({}, {})
    assert settings_unchanged({"xr0": {"kvp": 70}}, {"xr0": {"kvp": 70}})
    assert not settings_unchanged({"xr0": {"kvp": 70}}, {"xr0": {"kvp": 130}})
    good = {"p99_ms": 5.0, "timeouts": 0, "errors": 0}
    assert control_ok(good)
    assert not control_ok({**good, "timeouts": 1})  # one 2 s timeout among 115 fast probes: p99 5 ms
    assert not control_ok({**good, "errors": 1})
    assert not control_ok({**good, "p99_ms": None})


def _see(led, topic: str, kind: str, series: str, seq: int, **kw) -> None:
    led.see(topic, {"kind": kind, "series": series, "seq": seq, **kw})


def _fake_chaos(**over) -> SimpleNamespace:
    """What _result reads of a run: two streams, every frame delivered, every bar met."""
    led = _SeqLedger(count_from_zero=True)
    for t in ("raw/a", "raw/b"):
        _see(led, t, "series_start", "s1", 0)
        for i in range(10):
            _see(led, t, "frame", "s1", i)
        _see(led, t, "series_end", "s1", 10)
    t_end = _time.monotonic()
    c = SimpleNamespace(
        ledger=led, sub=SimpleNamespace(gaps=[], bad_messages=0), spans=[], rss=[100.0, 100.0, 100.0], rss_t=[10.0, 70.0, 130.0],
        timings={"status": [1.0, 2.0], "stop": [1.0], "start": [1.0]}, ctl_timeouts=Counter(), ctl_errors=[],
        ctl_error_count=Counter(), stall_seqs={("raw/a", "s1"): set(range(10))}, stall_seen={("raw/a", "s1")},
        stall_sub=SimpleNamespace(gaps=[]), stalls=[3.0],
        safe=[_SafeEntry("xr0", 5.0, ms=20.0, reply_state="safe", resumed_after_s=1.0)],
        hostile_ctl=[{"ok": True}], hostile_sent=Counter(), stage_bad=[0], faults=Counter(), events=[],
        minutes=1.0, seed=1, t0=t_end - 60, t_run_end=t_end, problem=None, sim_errors={}, stage_restarts=[],
        cfg=SimpleNamespace(device=[SimpleNamespace(name="a"), SimpleNamespace(name="b")]))
    for k, v in over.items():
        setattr(c, k, v)
    return c


def _bars(c, before=None, after=None) -> dict:
    s = before if before is not None else {"xr0": {"kvp": 70}}
    out = _result(c, s, after if after is not None else s, {}, (0.0, 0.0))
    return {b["figure"].split(" (")[0].split(",")[0]: b["ok"] for b in out["bars"]} | {"passed": out["passed"]}


def test_result_bars_on_a_clean_run_pass():
    bars = _bars(_fake_chaos())
    assert bars.pop("daemon RSS growth over the second half") is True
    assert all(bars.values()), bars


def test_result_unaccounted_frames_of_two_streams_do_not_cancel():
    c = _fake_chaos()
    _see(c.ledger, "raw/a", "series_start", "s2", 0)
    _see(c.ledger, "raw/a", "frame", "s2", 0)
    _see(c.ledger, "raw/a", "frame", "s2", 3)  # 1, 2: lost, not announced (+2)
    _see(c.ledger, "raw/b", "series_start", "s2", 0)
    _see(c.ledger, "raw/b", "gap", "s2", 0, gap_frames=2)  # announced ...
    _see(c.ledger, "raw/b", "frame", "s2", 0)  # ... and delivered anyway (-2)
    _see(c.ledger, "raw/b", "frame", "s2", 1)
    out = _result(c, {"x": {}}, {"x": {}}, {}, (0.0, 0.0))
    assert out["frames"]["unaccounted"] == 0  # the sum cancels
    assert {t: s["unaccounted"] for t, s in out["streams"].items()} == {"raw/a": 2, "raw/b": -2}
    bar = next(b for b in out["bars"] if b["figure"].startswith("unaccounted"))
    assert bar["ok"] is False and not out["passed"]


def test_result_a_series_first_seen_mid_way_is_a_loss():
    c = _fake_chaos()
    _see(c.ledger, "raw/a", "frame", "s3", 5)  # its series_start and frames 0..4 never arrived
    out = _result(c, {"x": {}}, {"x": {}}, {}, (0.0, 0.0))
    assert out["streams"]["raw/a"]["unaccounted"] == 5


def test_result_bars_fail_when_not_exercised_or_not_measured():
    assert _bars(_fake_chaos(hostile_ctl=[]))["hostile control requests answered as expected"] is False
    assert _bars(_fake_chaos(stalls=[]))["stalled subscriber: missed frames not reported as gaps"] is False
    assert _bars(_fake_chaos(stall_seqs={}))["stalled subscriber: missed frames not reported as gaps"] is False
    stop = "control stop p99"
    assert _bars(_fake_chaos(ctl_timeouts=Counter(stop=1)))[stop] is False
    assert _bars(_fake_chaos(ctl_error_count=Counter(status=1)))["control status p99"] is False
    err = {"xr0": {"error": "no reply"}}
    assert _bars(_fake_chaos(), err, err)["settings after hostile configure requests"] is False
    not_back = [_SafeEntry("xr0", 5.0, ms=20.0, reply_state="safe", resumed_after_s=None)]
    assert _bars(_fake_chaos(safe=not_back))["safe states whose output did not come back after start"] is False
    c = _fake_chaos(cfg=SimpleNamespace(device=[SimpleNamespace(name=n) for n in ("a", "b", "dead")]))
    assert _bars(c)["raw topics without frames in the last 3 s"] is False
    dead_thread = _fake_chaos(sim_errors={"us0": "OSError('boom')"})
    assert _bars(dead_thread)["processes"] is False


def test_span_missing_tells_uncommitted_from_recorder_gaps_and_silent_loss():
    from medacq.daemon.bench.chaos import span_missing

    frames = _frames(range(200))  # received from t = 100.0 to 119.9, in order
    # the file: 0..149 committed, but 40..49 missing: 40..44 in a gap row of the file, 45..49 in none
    rec = {_K: np.asarray([*range(40), *range(50, 150)], np.uint64)}
    missing = {_K: np.asarray([*range(40, 50), *range(150, 180)], np.uint64)}  # the window ends at 118
    why = span_missing(missing, frames, rec, {_K: [(40, 5, "recorder queue full")]}, 120.0, 100.0)
    assert (why["uncommitted"], why["recorder_gaps"], why["silent"]) == (30, 5, 5)
    assert why["by_reason"] == {"recorder queue full": 5}
    assert why["uncommitted_s"] == 5.0  # seq 150, received at 115.0, was the oldest not committed at 120
    assert [(r["first_seq"], r["count"], r["why"]) for r in why["ranges"]] == [
        (40, 5, "recorder_gaps"), (45, 5, "silent"), (150, 30, "uncommitted")]
    # a series the file never held, received after the last committed frame: not committed either
    other = ("raw/b", "s9")
    frames2 = {**frames, other: (np.arange(3, dtype=np.uint64), np.asarray([116.0, 116.5, 117.0]))}
    why = span_missing({other: np.arange(3, dtype=np.uint64)}, frames2, rec, {}, 120.0, 100.0)
    assert why["uncommitted"] == 3 and why["silent"] == 0


def test_span_ok_a_killed_span_may_lack_only_what_it_had_not_committed():
    from medacq.daemon.bench.chaos import span_ok

    acc = {"extra": 0, "frames_expected": 100, "window_s": 20.0}
    why = {"uncommitted": 22, "recorder_gaps": 0, "silent": 0}
    assert span_ok(acc, why, killed=True, acknowledged_lost=0, live=True)
    assert not span_ok(acc, why, killed=False, acknowledged_lost=0, live=True)  # the last span: nothing lost
    assert not span_ok(acc, why, killed=True, acknowledged_lost=0, live=False)  # a wedged writer
    assert not span_ok(acc, why, killed=True, acknowledged_lost=3, live=True)  # acknowledged, then lost
    assert not span_ok(acc, {**why, "silent": 1}, killed=True, acknowledged_lost=0, live=True)
    assert not span_ok(acc, {**why, "recorder_gaps": 5}, killed=True, acknowledged_lost=0, live=True)
    assert not span_ok({**acc, "extra": 1}, why, killed=True, acknowledged_lost=0, live=True)
    assert not span_ok({**acc, "frames_expected": 0}, why, killed=True, acknowledged_lost=0, live=True)
