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
        assert s["equal"] == (s["missing"] == 0 and s["extra"] == 0 and s["problems"] == [])
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
