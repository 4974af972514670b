"""``medacq bench cameras --under-load``: the ingest and age figures go through the runner's shared
idle/under-load mechanism; thermal and photography run once. (The figures themselves are
measurements, not tested here.)"""

from __future__ import annotations

import argparse

import pytest

from medacq.daemon.bench import cameras, rig
from medacq.daemon.bench.runner import UNDER_LOAD


def test_under_load_runs_ingest_and_age_idle_then_loaded_and_accuracy_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    ages = iter([30.0, 80.0])

    def ingest(args: argparse.Namespace) -> dict:
        calls.append("ingest")
        return {"gvsp_fps": 60.0, "gvsp_lost_frames": 0, "endoscope_age_p99_ms": next(ages), "endoscope_age_p50_ms": 20.0}

    def accuracy(args: argparse.Namespace) -> dict:
        calls.append("accuracy")
        return {"thermal_error_max_c": 0.2, "deltaE_mean": 0.03}

    def shared(name: str, run, args: argparse.Namespace) -> dict:  # the runner's mechanism, without a rig
        idle, loaded = run(args), run(args)
        return {"benchmark": name, "loadavg_1min_under_load": [5.0, 6.0],
                "results": [{"figure": k, "idle": idle[k], "under_load": loaded[k]} for k in idle]}

    monkeypatch.setattr(cameras, "_ingest_and_age", ingest)
    monkeypatch.setattr(cameras, "_accuracy", accuracy)
    monkeypatch.setattr(rig, "idle_and_under_load", shared)
    assert "cameras" in UNDER_LOAD
    res = cameras.bench_cameras(argparse.Namespace(under_load=True, seconds=1.0))
    assert calls == ["ingest", "ingest", "accuracy"]
    assert res["benchmark"] == "cameras"
    assert (res["endoscope_age_p99_ms_idle"], res["endoscope_age_p99_ms"]) == (30.0, 80.0)
    assert res["thermal_error_max_c"] == 0.2 and res["deltaE_mean"] == 0.03
    # without --under-load: one run, flat keys
    ages = iter([40.0])
    calls.clear()
    flat = cameras.bench_cameras(argparse.Namespace(under_load=False, seconds=1.0))
    assert calls == ["ingest", "accuracy"] and flat["endoscope_age_p99_ms"] == 40.0 and "results" not in flat


def test_print_result_under_load_table(capsys: pytest.CaptureFixture[str]) -> None:
    cameras.print_result({"benchmark": "cameras", "under_load": "the default rig", "loadavg_1min_under_load": [5.0, 6.0],
                          "results": [{"figure": "endoscope_age_p99_ms", "idle": 30.5, "under_load": 80.25,
                                       "ratio": 2.631}], "endoscope_age_p99_ms": 80.25})
    out = capsys.readouterr().out
    assert "endoscope_age_p99_ms" in out and "80.25" in out and "2.631" in out and "[5.0, 6.0]" in out
