"""MRI trigger words on the timeline, measured against the rig trigger bus's truth.

One simulated MaRCoS console (:mod:`medacq.simulators.mri`, its FSM crystal ``clock_ppm`` off and
its cycle counter at ``clock_offset_s`` when it starts) serves the real ``mri`` driver over TCP
inside a real :class:`AcquisitionDaemon`; the driver's gradient-echo sequence raises the console's
trigger output (``GATES_LEDS`` bit 2, ``trig_out``) for ``width_ms`` at the start of every acquired
TR, and the console puts each high period on a simulated rig trigger bus at its true time. A
HackEEG (1 kHz, ``-30`` ppm) cabled to the same bus records the pulses on its GPIO1 (EEG during
fMRI). The daemon publishes the driver's ``trig_out`` events (console-clock time mapped through
the driver's fit of the console clock to its replies' arrival) on ``markers/mri0`` and the
HackEEG's edges on ``markers/ekg0``. This bench subscribes like any client.

Figures: ``events`` (``markers/mri0`` trig_out markers received), ``matched`` (those whose
nearest true bus pulse is the one of their order: the console is the line's only source, so the
i-th marker is the i-th pulse; the first ``warmup_s`` of pulses are left out, the clock fit's
first seconds), ``p99_abs_err_ms``/``max_abs_err_ms``/``median_err_ms`` (marker - true pulse),
``bar_ms`` (1 ms: the issue's bar for a stream of >= 1 kHz; the console's clock is 122.88 MHz, so
no sample-period quantisation applies), ``eeg_vs_mri_p99_abs_ms`` (the HackEEG's marker minus the
console's for the same pulse: the alignment an EEG-fMRI analysis sees, without the daemon's bus
alignment), ``eeg_missed`` (scored pulses the HackEEG has no marker for), ``late_pulses`` (pulses
the simulator put on the line after their time: 0 unless the machine stalled it for more than
the console's ``trig_lead_s``), ``t_device_max_err_us`` (the markers' console times against the
console's true clock: the cycle counter's quantisation, ~0.01 µs).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["measure_mri_triggers"]

_BAR_MS = 1.0


def measure_mri_triggers(pulses: int = 100, tr_ms: float = 40.0, width_ms: float = 3.0, lines_per_run: int = 4,
                         clock_ppm: float = 40.0, clock_offset_s: float = 1234.5, warmup_s: float = 1.0,
                         eeg: bool = True, timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the rig above until ``pulses`` trig_out markers after ``warmup_s`` are in and return
    the figures (module doc). ``RuntimeError`` when fewer arrive within ``timeout_s``."""
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.bench.runner import free_ports
    from medacq.daemon.common.config import parse_config
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.hackeeg import HackEEGInterface
    from medacq.simulators.mri import make
    from medacq.simulators.trigger_bus import TriggerBus, attach, drive

    bus = TriggerBus()
    console = make(clock_ppm=clock_ppm, clock_offset_s=clock_offset_s)
    p = free_ports(2)
    msim = SimulatorServer(console, "tcp", paced=True, name="mri0")
    esim = SimulatorServer(HackEEGInterface(seed=3, rate=1000, clock_ppm=-30.0), "pty", paced=True, name="ekg0") \
        if eeg else None
    msgs: list[Any] = []
    with msim:
        if esim is not None:
            esim.start()
        try:
            drive(msim, bus)
            devices = [{"name": "mri0", "kind": "mri", "address": msim.tcp_address,
                        "settings": {"sequence": {"sequence": "gre", "matrix": 32, "te_ms": 5, "tr_ms": tr_ms,
                                                  "flip_deg": 30},
                                     "lines_per_run": lines_per_run, "dummy_scans": 2, "repetitions": 0,
                                     "trig_out_ms": width_ms}}]
            if esim is not None:
                attach(esim, bus, "GPIO1")
                devices.append({"name": "ekg0", "kind": "hackeeg", "address": esim.address,
                                "settings": {"rate": 1000, "frame_samples": 20, "trigger_gpio": 1}})
            cfg = parse_config({"daemon": {"data_endpoint": f"tcp://127.0.0.1:{p[0]}",
                                           "control_endpoint": f"tcp://127.0.0.1:{p[1]}", "local_operator": True},
                                "device": devices})
            with Subscriber(cfg.daemon.data_endpoint, "markers/") as sub:
                sub.wait_connected(2.0)
                d = AcquisitionDaemon(cfg).start()
                try:
                    t_first: float | None = None
                    end = time.monotonic() + timeout_s
                    n = 0
                    while time.monotonic() < end:
                        m = sub.recv(timeout=0.2)
                        if m is None or m.array is None:
                            continue
                        msgs.append(m)
                        if m.topic == "markers/mri0":
                            t = m.header["t_mono_ns"] / 1e9
                            t_first = t if t_first is None else t_first
                            n += t >= t_first + warmup_s
                            if n >= pulses:
                                break
                    time.sleep(0.3)  # the EEG's marker of the last pulse
                    while (m := sub.recv(timeout=0.05)) is not None:
                        if m.array is not None:
                            msgs.append(m)
                finally:
                    d.shutdown()
            truth = msim.call(console.truth)
            t0 = msim._t0
        finally:
            if esim is not None:
                esim.stop()
    edges = np.array(sorted(bus.edges()))
    mri = [m for m in msgs if m.topic == "markers/mri0" and m.header["meta"].get("line") == "trig_out"]
    ekg = np.array([m.header["t_mono_ns"] / 1e9 for m in msgs if m.topic == "markers/ekg0"])
    if not mri:
        raise RuntimeError("no trig_out markers on markers/mri0")
    mono = np.array([m.header["t_mono_ns"] / 1e9 for m in mri])
    tdev = np.array([float(m.header["t_device"]) for m in mri])
    scored = [i for i in range(len(mri)) if mono[i] >= mono[0] + warmup_s][:pulses]
    if len(scored) < pulses:
        raise RuntimeError(f"only {len(scored)} of {pulses} trig_out markers after the warm-up within {timeout_s} s")
    matched = [i for i in scored if i < len(edges) and int(np.argmin(np.abs(edges - mono[i]))) == i]
    err_ms = np.array([(mono[i] - edges[i]) * 1e3 for i in matched])
    dev_true = clock_offset_s + (edges[:len(mri)] - t0) * (1 + clock_ppm * 1e-6)
    dev_err_us = np.abs(tdev[:len(dev_true)] - dev_true) * 1e6
    out: dict[str, Any] = {
        "stream": "mri0", "line": "trig_out", "events": len(scored), "matched": len(matched),
        "p99_abs_err_ms": float(np.percentile(np.abs(err_ms), 99)) if len(err_ms) else None,
        "max_abs_err_ms": float(np.max(np.abs(err_ms))) if len(err_ms) else None,
        "median_err_ms": float(np.median(err_ms)) if len(err_ms) else None,
        "bar_ms": _BAR_MS, "clock_ppm": clock_ppm, "tr_ms": tr_ms, "lines_per_run": lines_per_run,
        "t_device_max_err_us": float(np.max(dev_err_us[[i for i in matched if i < len(dev_err_us)]]))
        if matched else None,
        "late_pulses": int(truth["trig_out_late"]), "collisions": int(truth["trig_out_collisions"]),
        "errors_ms": [round(float(e), 4) for e in err_ms],
    }
    if eeg:
        diffs, missed = [], 0
        for i in matched:
            j = int(np.argmin(np.abs(ekg - edges[i]))) if len(ekg) else -1
            if j < 0 or abs(ekg[j] - edges[i]) > 0.010:
                missed += 1
            else:
                diffs.append((ekg[j] - mono[i]) * 1e3)
        out["eeg_vs_mri_p99_abs_ms"] = float(np.percentile(np.abs(diffs), 99)) if diffs else None
        out["eeg_vs_mri_max_abs_ms"] = float(np.max(np.abs(diffs))) if diffs else None
        out["eeg_missed"] = missed
    return out


if __name__ == "__main__":  # python -m medacq.daemon.bench.timeline_mri [pulses]
    import json
    import sys

    print(json.dumps(measure_mri_triggers(int(sys.argv[1]) if len(sys.argv) > 1 else 100), indent=1))
