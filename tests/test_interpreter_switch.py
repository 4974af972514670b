"""The services' GIL switch interval: ``[daemon]``/``[recon] gil_switch_ms`` reach the processes
``medacq run`` and ``medacq recon`` start (read back from their status), bad values are refused
by the config, and :func:`set_switch_interval` sets and returns the interval."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from medacq.daemon.common.config import ConfigError, dump_config, parse_config
from medacq.daemon.common.interpreter import DEFAULT_SWITCH_MS, freeze_heap, gc_pauses, set_switch_interval

from conftest import medacq_cmd, run_medacq


def test_set_switch_interval_sets_and_returns_the_previous_value():
    before = sys.getswitchinterval()
    try:
        old = set_switch_interval(2.5)
        assert old == pytest.approx(before * 1000.0)
        assert sys.getswitchinterval() == pytest.approx(0.0025)
        assert set_switch_interval(0.75) == pytest.approx(2.5)
        assert sys.getswitchinterval() == pytest.approx(0.00075)
        for bad in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match="switch interval"):
                set_switch_interval(bad)
        assert sys.getswitchinterval() == pytest.approx(0.00075)  # a refused value changes nothing
    finally:
        sys.setswitchinterval(before)


def test_config_default_and_bounds():
    cfg = parse_config({})
    assert cfg.daemon.gil_switch_ms == cfg.recon.gil_switch_ms == DEFAULT_SWITCH_MS == 1.0
    for section in ("daemon", "recon"):
        for bad in (0, -2, 1000):
            with pytest.raises(ConfigError) as exc:
                parse_config({section: {"gil_switch_ms": bad}})
            assert [field for field, _ in exc.value.problems] == [f"{section}.gil_switch_ms"]


def test_run_and_recon_processes_use_the_configured_interval(tmp_path, endpoints):
    path = tmp_path / "rig.toml"
    path.write_text(dump_config({"daemon": {**endpoints["daemon"], "gil_switch_ms": 2.5},
                                 "recon": {**endpoints["recon"], "gil_switch_ms": 0.5}}))
    procs = [subprocess.Popen(medacq_cmd(cmd, "--config", str(path), "--for", "20"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for cmd in ("run", "recon")]
    try:
        got: dict[str, float] = {}
        gcs: dict[str, dict] = {}
        deadline = time.monotonic() + 20
        while len(gcs) < 2 and time.monotonic() < deadline:
            for name, extra in (("daemon", []), ("recon", ["--recon"])):
                if name not in gcs:
                    r = run_medacq("ctl", *extra, "status", "--config", str(path), "--timeout", "1")
                    if r.returncode == 0:
                        st = json.loads(r.stdout)
                        got[name] = st["gil_switch_ms"]
                        if st["gc"]["frozen"] > 0:  # frozen once started (the stage again after its preload)
                            gcs[name] = st["gc"]
            time.sleep(0.2)
        assert got == {"daemon": 2.5, "recon": 0.5}, [p.stderr.read() if p.poll() is not None else "" for p in procs]
        # start-up's heap is out of the collector's scans: tens of thousands of objects each
        assert set(gcs) == {"daemon", "recon"} and all(g["frozen"] > 10_000 for g in gcs.values()), gcs
        assert all(set(g) == {"frozen", "gen0", "gen1", "gen2"} and g["gen2"]["n"] >= 0 for g in gcs.values())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_gc_pauses_are_counted_and_freezing_can_be_turned_off(monkeypatch):
    import gc

    p = gc_pauses()
    assert gc_pauses() is p  # one per process, its callback installed once
    assert gc.callbacks.count(p._callback) == 1
    n2 = p.count[2]
    gc.collect()
    st = p.status()
    assert p.count[2] == n2 + 1 and st["gen2"]["n"] == n2 + 1 and st["gen2"]["max_ms"] > 0
    assert st["gen2"]["total_ms"] >= st["gen2"]["max_ms"] - 0.06  # (rounded to 0.1 and 0.01 ms)
    frozen = gc.get_freeze_count()
    monkeypatch.setenv("MEDACQ_GC_FREEZE", "0")  # (this test process's heap is never frozen)
    assert freeze_heap("test") == 0 and gc.get_freeze_count() == frozen
