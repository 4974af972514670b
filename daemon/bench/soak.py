"""``medacq bench soak --minutes N [--json]``: the whole rig, real rates, recorder on, faults.

Every simulator of :data:`~medacq.simulators.rig.DEFAULT_RIG` runs paced in this process; the
daemon and the reconstruction stage run as their own processes; ``medacq record`` records
``raw/`` in a fourth; a counting subscriber here receives ``raw/``. Every few seconds a fault is
injected into one simulator through the side door (cable pulled with reconnection refused for a
while, garbage burst, corrupted bytes, device-side packet drops, a stall), round robin.

Accounting, per stream and series (the daemon's numbering is the ground truth of what it
acquired): ``generated`` = frames numbered in each series (the last ``seq`` + 1 seen in a frame,
heartbeat or ``series_end``); ``delivered`` = frames the subscriber received; ``announced_lost`` =
frames inside ``gap`` messages; ``unaccounted`` = generated − delivered − announced_lost (holes
no one announced: the subscriber fell behind, or a bug). ``recorded`` = frames in the HDF5 file
after the recorder stops; it must equal ``delivered``. Data a device produced while its cable
was out never received a number: the ``series_end`` ("connection lost") and the next
``series_start`` announce that break, and ``reconnects`` counts them.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from medacq.daemon.bench.runner import (StreamLedger, end_series_and_drain, free_ports, half_growth,
                                        recorded_vs_delivered, rss_mb, spawn_cli, stop_processes, stop_recorder,
                                        terminate_as_interrupt)

__all__ = ["bench_soak"]


def bench_soak(args: argparse.Namespace) -> dict[str, Any]:
    from medacq.simulators.rig import SimulatedRig

    minutes = float(args.minutes)
    work = Path(tempfile.mkdtemp(prefix="medacq-soak-"))
    procs: dict[str, subprocess.Popen] = {}
    with terminate_as_interrupt():
        rig = SimulatedRig(paced=True).start()
        try:
            return _soak(args, rig, procs, work, minutes)
        finally:
            stop_processes(procs.values(), grace_s=10.0)
            rig.stop()


def _soak(args: argparse.Namespace, rig: Any, procs: dict[str, subprocess.Popen], work: Path,
          minutes: float) -> dict[str, Any]:
    from medacq.client import ControlClient, Subscriber

    from medacq.daemon.common.config import dump_config, load_config
    from medacq.simulators.faults import apply_fault

    duration = minutes * 60.0
    cfg_path = work / "rig.toml"
    doc = rig.config(0)
    for (sec, key), port in zip([("daemon", "data_endpoint"), ("daemon", "control_endpoint"),
                                 ("recon", "data_endpoint"), ("recon", "control_endpoint")], free_ports(4)):
        doc[sec][key] = f"tcp://127.0.0.1:{port}"
    for dev in doc["device"]:  # started over the control plane once every subscriber is connected
        dev["autostart"] = False
    cfg_path.write_text(dump_config(doc))
    cfg = load_config(cfg_path)
    sub = Subscriber(cfg.daemon.data_endpoint, "raw/", rcvhwm=1_000_000)
    ledger = StreamLedger()
    rec_file = work / "soak.h5"
    # subscribers first (recorder, reconstruction), so both see every series from its start
    for name, argv in (("recorder", ["record", "--topics", "raw/", "--out", str(rec_file), "--endpoint",
                                     cfg.daemon.data_endpoint, "--no-fsync", "--progress"]),
                       ("recon", ["recon", "--config", str(cfg_path)]),
                       ("daemon", ["run", "--config", str(cfg_path)])):
        procs[name] = spawn_cli(argv, work / f"{name}.log")
        if name == "recorder":  # it has subscribed once its file exists; then the slow-joiner margin
            end = time.monotonic() + 30
            while not rec_file.exists() and time.monotonic() < end:
                time.sleep(0.1)
        if name == "recon":
            time.sleep(1.5)
    ctl = ControlClient(cfg.daemon.control_endpoint, timeout=2.0)
    deadline = time.monotonic() + 30
    while True:
        try:
            ctl.request("ping")
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or procs["daemon"].poll() is not None:
                raise RuntimeError(f"daemon did not start; see {work / 'daemon.log'}") from None
    time.sleep(1.0)  # subscribers connected (ZeroMQ slow joiner)
    ctl.request("start")
    warm_end = time.monotonic() + 10.0  # let every stream reach steady state before the RSS baseline
    while time.monotonic() < warm_end:
        msg = sub.recv(timeout=0.05)
        if msg is not None:
            ledger.see(msg.topic, msg.header)
    rss_start = rss_mb(procs["daemon"].pid)
    faults = [("pull_cable", {"refuse_s": 1.0}), ("garbage", {"nbytes": 3000}), ("corrupt", {"nbytes": 200}),
              ("drop", {"n": 3}), ("stall", {"seconds": 0.5})]
    names = sorted(rig.servers)
    injected: list[dict[str, Any]] = []
    t0 = time.monotonic()
    rss_series = [rss_start]  # once a minute: warm-up levels off, a leak keeps climbing
    next_rss = t0 + 60.0
    next_fault = t0 + 3.0
    k = 0
    fault_end = t0 + max(0.0, duration - 10.0)  # the last seconds run clean, so every series can settle
    while time.monotonic() - t0 < duration:
        msg = sub.recv(timeout=0.05)
        if msg is not None:
            ledger.see(msg.topic, msg.header)
        now = time.monotonic()
        if now >= next_rss:
            rss_series.append(rss_mb(procs["daemon"].pid))
            next_rss += 60.0
        if now >= next_fault and now < fault_end and names:
            sim = names[k % len(names)]
            fault, fargs = faults[(k // len(names)) % len(faults)]
            try:
                apply_fault(rig.servers[sim], fault, fargs)
                injected.append({"t": round(now - t0, 1), "sim": sim, "fault": fault})
            except ValueError:  # this simulator cannot drop packets: pull its cable instead
                apply_fault(rig.servers[sim], "pull_cable", {"refuse_s": 0.5})
                injected.append({"t": round(now - t0, 1), "sim": sim, "fault": "pull_cable"})
            k += 1
            next_fault = now + float(getattr(args, "fault_every", 4.0) or 4.0)
    status = ctl.request("status")
    rss_end = rss_mb(procs["daemon"].pid)
    end_series_and_drain(procs["daemon"], sub, lambda msg: ledger.see(msg.topic, msg.header))
    recorded = stop_recorder(procs["recorder"], rec_file, progress_log=work / "recorder.log",
                             expect_frames=sum(ledger.delivered.values()))
    counts = recorded_vs_delivered(ledger, recorded)
    per = {}
    for t in ledger.topics():
        gen, dlv, ann = ledger.generated(t), ledger.delivered.get(t, 0), ledger.announced.get(t, 0)
        per[t] = {"generated": gen, "delivered": dlv, "announced_lost": ann, "unaccounted": gen - dlv - ann,
                  "recorded": counts[t]["recorded"],
                  "reconnects": status["streams"].get(t.split("/", 1)[1], {}).get("reconnects", 0)}
    total = {key: sum(v[key] for v in per.values())
             for key in ("generated", "delivered", "announced_lost", "unaccounted", "recorded", "reconnects")}
    ctl.close()
    sub.close()
    return {"benchmark": "soak", "minutes": minutes, **total, "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2) if rss_start else None,
            "rss_series_mb": [round(v, 1) for v in [*rss_series, rss_end]],
            "rss_growth_second_half_pct": half_growth([*rss_series, rss_end]),
            "faults_injected": len(injected), "recording_problems": recorded["problems"],
            "recorded_equals_delivered": total["recorded"] == total["delivered"],
            "streams": per, "faults": injected[-20:], "workdir": str(work)}


