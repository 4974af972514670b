"""GigE Vision cameras' frame starts on the timeline, measured against the simulator's truth.

One simulated thermal camera (Lepton geometry, 160 x 120 Mono16, ExposureTime 10 ms) whose
timestamp clock starts at ``clock_offset_s`` and runs ``clock_ppm`` off CLOCK_MONOTONIC serves
GVCP/GVSP on real loopback UDP; the real ``gige`` driver inside a real :class:`AcquisitionDaemon`
reads it with ``frame_triggers = true`` and the daemon publishes every frame's start on
``markers/cam0``. This bench subscribes like any client and compares each marker's ``t_mono_ns``
with the simulator's true exposure start of the frame it names (the leader timestamp, ``t_device``,
identifies it; :meth:`~medacq.simulators.gige_camera.GigEVisionServer.true_frame_starts`).

``trigger = "off"``: free-running at ``fps``; ``"line0"``: the camera's trigger input (TriggerSource
Line0) cabled to a simulated rig trigger bus, ``frames`` pulses 1/fps apart plus a random
0-``1/(2 fps)`` s, each starting one exposure 20 µs after its edge, so the true frame starts are
the bus's own edges + 20 µs, the rig's timeline (``sim_start_vs_bus_edge_max_ms`` checks it); each
frame's ``Line0`` marker, at the same time, is counted in ``other_line_markers``, not scored twice.

Figures: ``matched`` (frame-start markers scored: the first ``frames`` naming a frame whose true
start is ``warmup_s`` or more after the first frame's, the fit's first seconds left out),
``events`` (``matched`` plus markers naming no frame the camera sent: 0 unless broken),
``p99_abs_err_ms``/``max_abs_err_ms``/``median_err_ms`` (marker - true start), ``bar_ms`` (1 ms:
the issue's bar for a stream; the camera timestamps its own frame start, so no half-period
quantisation applies), ``arrival_median_ms`` (the frames' own ``t_mono_ns`` -- their arrival --
minus their true start: what the marker removes, ExposureTime included); ``errors_ms`` lists every
scored marker's error in order (drop it for a summary).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np

__all__ = ["measure_camera_frame_starts"]


def measure_camera_frame_starts(frames: int = 200, fps: float = 30.0, clock_ppm: float = 50.0,
                                clock_offset_s: float = 86_400.0, warmup_s: float = 2.0,
                                trigger: Literal["off", "line0"] = "off", seed: int = 1) -> dict[str, Any]:
    """Run the camera above for ``warmup_s`` + ``frames`` frames and return the figures (module doc).

    Args:
        frames: frames (or pulses, ``line0``) scored after the warm-up.
        fps: frame rate (Hz), or the pulse rate for ``line0``.
        clock_ppm: the camera clock's rate error (ppm, positive: fast).
        clock_offset_s: the camera clock's reading at the simulator's start (s).
        warmup_s: seconds of frames before scoring starts (the fit needs two 1-s buckets).
        trigger: ``off`` (free-running) or ``line0`` (a bus pulse per frame).
        seed: the pulse train's phase jitter.
    """
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.bench.runner import free_ports
    from medacq.daemon.common.config import parse_config
    from medacq.simulators.gige_camera import GigEVisionServer, make
    from medacq.simulators.trigger_bus import TriggerBus, attach

    if trigger not in ("off", "line0"):
        raise ValueError(f"trigger must be 'off' or 'line0', not {trigger!r}")
    if not (frames > 0 and 0 < fps <= 60 and warmup_s >= 0):
        raise ValueError("frames > 0, 0 < fps <= 60 and warmup_s >= 0 required")
    cam = make(model="thermal", lepton=True, clock_ppm=clock_ppm, clock_offset_s=clock_offset_s)
    bar_ms = 1.0
    p = free_ports(4)
    ep = [f"tcp://127.0.0.1:{x}" for x in p]
    markers: list[tuple[int, float]] = []   # (t_mono_ns, t_device s)
    arrivals: dict[int, int] = {}           # block id -> the frame's own t_mono_ns
    edges: list[float] = []
    other: dict[str, int] = {}              # markers of other lines, by line
    with GigEVisionServer(cam, "127.0.0.1", 0) as sim:
        settings: dict[str, Any] = {"frame_triggers": True}
        if trigger == "line0":
            bus = TriggerBus(width_s=0.002)
            attach(sim, bus, "Line0")
            settings["trigger"] = "line0"
        else:
            settings["frame_rate_hz"] = fps
        doc = {"daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1], "local_operator": True},
               "recon": {"data_endpoint": ep[2], "control_endpoint": ep[3]},
               "device": [{"name": "cam0", "kind": "gige", "address": sim.address, "settings": settings}]}
        daemon = AcquisitionDaemon(parse_config(doc)).start()
        try:
            with Subscriber(ep[0], ["markers/cam0", "raw/cam0"]) as sub:
                end = time.monotonic() + 20
                while not daemon.streams_up() and time.monotonic() < end:
                    time.sleep(0.05)
                if not daemon.streams_up():
                    raise RuntimeError(f"the camera did not start: {daemon.status()['streams']}")
                n_total = int(round(warmup_s * fps)) + frames
                if trigger == "line0":
                    edges = bus.train(n_total, 1.0 / fps, start_in_s=0.2, jitter_s=0.5 / fps, seed=seed)
                    stop_at = edges[-1] + 0.5
                else:
                    stop_at = time.monotonic() + n_total / fps + 0.5
                while time.monotonic() < stop_at:
                    m = sub.recv(timeout=0.2)
                    if m is None or m.array is None:
                        continue
                    if m.topic == "markers/cam0":
                        line = m.header.get("meta", {}).get("line")
                        if line == "frame_start":
                            markers.append((int(m.header["t_mono_ns"]), float(m.header["t_device"])))
                        else:  # Line0 (trigger = "line0"): the edge that started the frame, the same time
                            other[str(line)] = other.get(str(line), 0) + 1
                    else:
                        arrivals[int(m.header["meta"]["block_id"])] = int(m.header["t_mono_ns"])
        finally:
            daemon.shutdown()
        truth_list = sim.true_frame_starts()
        skipped = sim.call(lambda: int(cam.counters["frames_skipped_busy"]))
    truth = {round(td, 9): (bid, tm) for bid, td, tm in truth_list}
    t_first = truth_list[0][2] if truth_list else 0.0
    err, arr = [], []
    unmatched = 0
    for t_mono, td in markers:  # in publication order; the first ``frames`` after the warm-up are scored
        hit = truth.get(round(td, 9))
        if hit is None:
            unmatched += 1  # a marker naming no frame the camera sent (a defect): counted, not scored
            continue
        bid, t_true = hit
        if t_true < t_first + warmup_s or len(err) >= frames:
            continue
        err.append((t_mono / 1e9 - t_true) * 1e3)
        if bid in arrivals:
            arr.append((arrivals[bid] / 1e9 - t_true) * 1e3)
    matched = len(err)
    scored = matched + unmatched
    edge_err: list[float] = []
    if trigger == "line0" and truth_list:
        starts = np.array([tm for _, _, tm in truth_list])
        for e in edges:  # the bus's own edge + the camera's 20 µs trigger latency vs the exposure start
            j = int(np.argmin(np.abs(starts - (e + cam.trigger_latency_s))))
            edge_err.append((starts[j] - e - cam.trigger_latency_s) * 1e3)
    a = np.abs(np.array(err)) if err else None
    return {
        "stream": "cam0", "topic": "markers/cam0", "line": "frame_start", "trigger": trigger, "fps": fps,
        "clock_ppm": clock_ppm, "clock_offset_s": clock_offset_s, "warmup_s": warmup_s,
        "events": scored, "matched": matched, "frames_sent": len(truth_list), "frames_skipped_busy": skipped,
        "p99_abs_err_ms": None if a is None else round(float(np.percentile(a, 99)), 4),
        "max_abs_err_ms": None if a is None else round(float(a.max()), 4),
        "median_err_ms": None if a is None else round(float(np.median(err)), 4),
        "bar_ms": bar_ms, "within_bar": a is not None and float(np.percentile(a, 99)) <= bar_ms,
        "arrival_median_ms": round(float(np.median(arr)), 4) if arr else None,
        "bus_edges": len(edges), "other_line_markers": other, "sim_start_vs_bus_edge_max_ms": round(float(np.abs(edge_err).max()), 6)
        if edge_err else None,
        "errors_ms": [round(v, 4) for v in err],
        "event": "the camera's own frame start (GVSP leader timestamp, fitted to the host clock) against the "
                 "simulator's true exposure start" + (", each started by a trigger-bus pulse on Line0"
                                                      if trigger == "line0" else ""),
    }


if __name__ == "__main__":  # pragma: no cover - manual run
    import json
    import sys

    print(json.dumps(measure_camera_frame_starts(trigger=sys.argv[1] if len(sys.argv) > 1 else "off"),  # type: ignore[arg-type]
                     indent=1))
