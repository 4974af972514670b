"""``medacq bench elastography``: tissue stiffness figures (issue #18).

Tactile imaging (one JSON object with ``--json``):

* The probe is calibrated first, as on the bench: the zero map at open, and a gain map
  from a 5 kPa uniform bladder load (the same simulated cells, in-process, unpaced;
  ``tactile_calibration_s``).
* ``tactile_gaps``: a 32×32 MTP/1 probe simulator (another process, ``medacq sim tactile``,
  paced, on a pty) at the protocol's full rate (``tactile_rate_hz``, 500 frames/s) → driver
  → daemon → ZeroMQ → subscriber, for ``tactile_duration_s``: every frame lost anywhere on
  the way (driver counter jumps, daemon queue drops, subscriber holes). ``tactile_fps``
  is the delivered rate; ``tactile_frames`` the frames delivered.
* ``tactile_position_error_cells``: the reconstruction stage's inclusion estimate
  (``recon/tac0/inclusion``) on every frame at full press, against the simulator's truth:
  the largest Euclidean distance, in cells. ``tactile_diameter_mm`` (a surface footprint,
  next to ``tactile_true_diameter_mm``), ``tactile_relative_stiffness`` (pressure-vs-depth
  slope over the inclusion / background, next to the model's surface contrast
  ``tactile_surface_stiffness_ratio``); ``tactile_recon_dropped``: frames the stage's
  ``fifo`` (250 ms age bound) queue dropped.

Shear-wave elastography: one push ensemble of the ``us_swe`` scanner simulator in its RF
mode (150 frames at 10 kHz = 15 ms of 0° plane-wave tracking, channel RF int16 ``(150, 1, 128,
896)`` = 34 MB, as it goes on the wire), processed as the ``swe`` reconstructor does: the
B-mode DAS operator batched over the 150 frames onto 101 lines × 0.3 mm, 12..40 mm deep
(0.077 mm), then:

* ``modulus_error_inclusion`` / ``modulus_error_background``: relative error of the median
  Young's modulus in the stiff inclusion's core (within 0.6 radius) / in the background
  (≥ 2 mm from both inclusions, ≥ 6 mm from the push), against the phantom's truth.
* ``inclusion_diameter_error_mm``: the segmented stiff region's equivalent diameter minus
  the true one. ``soft_modulus_error``: the same as the first, for the soft inclusion.
* ``displacement_bias_um``: mean of (Loupas interframe displacement − the simulator's true
  interframe displacement at the pixel) over every frame and pixel of that region;
  ``displacement_rms_um`` beside it.
* ``swe_process_ms_p99``: beamforming + displacement + speed map + modulus + segmentation of
  one ensemble (p99 of 20; the numba kernel when installed), ``swe_beamform_ms_p50``/``_p99``
  the beamforming part, ``swe_process_ms_p99_numpy`` the same chain with the plain numpy
  displacement kernel (p99 of 3) in the same run, and ``loupas_ms_numba`` /
  ``loupas_ms_numpy`` for the displacement kernel alone. ``swe_iq_process_ms_p99`` /
  ``swe_iq_modulus_error_inclusion``: the scanner-beamformed IQ mode (no beamforming in the
  receiver) on the same phantom, for comparison. ``swe_eikonal_*``: the IQ mode with the shear
  wave's first arrivals (eikonal: refraction, head waves through the stiff inclusion, the wave
  around the soft one) instead of straight rays: what time-of-flight makes of physics it does
  not assume. ``load_avg_1min``: the machine's load when
  the figures were taken (the 2-core machine is shared); ``swe_process_ms_min`` and
  ``swe_process_cpu_ms_p50`` (CPU time of the process per ensemble, all threads) beside the p99
  say how much of it is waiting for a core. ``swe_threads``: the numba threads of those
  figures, the ``swe`` reconstructor's default (``threads``, 1); ``swe_process_ms_p99_2threads``
  (``_p50``, ``swe_process_cpu_ms_p50_2threads``): the same 20 ensembles on 2 threads.
* Beside B-mode (issue #18's bar: "≤ 200 ms ... beside B-mode"): the default rig's live B-mode
  (``us0`` of :data:`medacq.simulators.rig.DEFAULT_RIG`: 3 angles, 128 elements × 2048 samples →
  256 × 256, the stage's ``us`` reconstructor with ``medacq up``'s settings, OpenIGTLink off) runs in
  another process on RF frames of the simulator's model, paced at 20 frames/s (frame ``k`` due at
  ``k/20`` s; when behind, the newest due frame next, the others skipped, as the stage's ``latest``
  queue does), while 20 more ensembles are timed: ``swe_process_ms_p99_beside_bmode`` (``_p50``,
  ``swe_process_cpu_ms_p50_beside_bmode``), and the B-mode's own ``bmode_fps_beside_swe`` (of
  ``bmode_target_fps``), ``bmode_frames_skipped_beside_swe``, ``bmode_frame_ms_p99_beside_swe``;
  then again with 2 threads (suffix ``_2threads``). The quiet figures above are the baseline; the
  B-mode process is built before them and idle until its window.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from medacq.daemon.bench.runner import free_port

__all__ = ["bench_elastography"]

TACTILE_RATE_HZ = 500.0
TACTILE_OPTIONS = {"rows": 32, "cols": 32, "pitch_mm": 1.25, "seed": 3, "inclusion_x_mm": -6.25,
                   "inclusion_y_mm": 5.0}


def _log(msg: str) -> None:
    print(f"  elastography: {msg}", file=sys.stderr, flush=True)


def _calibrate_gain_map(path: str) -> float:
    """Bladder calibration of the bench's probe (same seed, so the same cells): 5 kPa uniform,
    the simulator unpaced on a pty, through the daemon (no gain map: every cell at gain 1);
    the map (mean reading / 5 kPa per cell, as ``medacq.drivers.tactile.gain_map_from_uniform``)
    is saved to ``path``. Returns the seconds taken."""
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.tactile import make

    t0 = time.perf_counter()
    kpa = 5.0
    sim = make(**TACTILE_OPTIONS, load="bladder", bladder_kpa=kpa, air_s=0.5, creep_tau_s=0.2)
    ep = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    frames: list[np.ndarray] = []
    with SimulatorServer(sim, "pty", paced=False) as srv:
        cfg = parse_config({"daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1]},
                            "device": [{"name": "cal", "kind": "tactile", "address": srv.address,
                                        "settings": {"rate_hz": TACTILE_RATE_HZ,
                                                     "pitch_mm": float(TACTILE_OPTIONS["pitch_mm"])}}]})
        with Subscriber(cfg.daemon.data_endpoint, "raw/cal") as sub:
            sub.wait_connected()
            d = AcquisitionDaemon(cfg).start()
            try:
                deadline = time.monotonic() + 60
                while len(frames) < 300 and time.monotonic() < deadline:
                    m = sub.recv(timeout=1.0)
                    if m is not None and m.array is not None and (m.header.get("t_device") or 0) >= 1.5:
                        frames.append(np.array(m.array, dtype=np.float64))
            finally:
                d.shutdown()
    if len(frames) < 300:
        raise RuntimeError(f"bladder calibration: only {len(frames)} frames")
    f = np.stack(frames)
    n = np.isfinite(f).sum(axis=0)
    g = np.where(n > 0, np.nansum(f, axis=0) / np.maximum(n, 1), np.nan) / kpa
    g[~np.isfinite(g) | (g <= 0.05)] = np.nan
    np.save(path, g)
    return time.perf_counter() - t0


def _tactile(duration: float) -> dict[str, Any]:
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recon.stage import ReconStage
    from medacq.simulators.tactile_model import TactileOptions, TissueContact

    opts = TactileOptions.model_validate(TACTILE_OPTIONS)
    truth = TissueContact(opts).truth()
    ep = [f"tcp://127.0.0.1:{free_port()}" for _ in range(4)]
    link_dir = tempfile.mkdtemp(prefix="medacq-bench-tactile-")
    gain_map = os.path.join(link_dir, "gain_map.npy")
    cal_s = _calibrate_gain_map(gain_map)
    sim = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", "sim", "tactile",
                            *[f"{k}={v}" for k, v in TACTILE_OPTIONS.items()],
                            "--name", "tac0", "--link-dir", link_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        address = sim.stdout.readline().strip()
        if not address:
            raise RuntimeError("the tactile simulator did not start")
        cfg = parse_config({
            "daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1]},
            "recon": {"data_endpoint": ep[2], "control_endpoint": ep[3]},
            "device": [{"name": "tac0", "kind": "tactile", "address": address,
                        "settings": {"rate_hz": TACTILE_RATE_HZ, "pitch_mm": opts.pitch_mm,
                                     "gain_map": gain_map}}],
        })
        stage = ReconStage(cfg).start()
        with Subscriber(cfg.daemon.data_endpoint, "raw/tac0") as raw, \
                Subscriber(cfg.recon.data_endpoint, "recon/tac0/inclusion") as rec:
            raw.wait_connected()
            rec.wait_connected()
            d = AcquisitionDaemon(cfg).start()
            try:
                n = 0
                t_first = t_last = 0.0
                counters: list[int] = []
                seqs: list[int] = []
                incs: list[dict[str, Any]] = []
                end = None
                t_wait = time.monotonic() + 30
                while end is None or time.monotonic() < end:
                    m = raw.recv(timeout=0.02)
                    if m is not None and m.array is not None and m.header["stream"] == "tac0":
                        now = time.monotonic()
                        if n == 0:
                            t_first, end = now, now + duration
                        t_last = now
                        n += 1
                        counters.append(int(m.header["meta"]["device_frame"]))
                        seqs.append(int(m.header["seq"]))
                    while (r := rec.recv(timeout=0)) is not None:
                        if r.array is not None:
                            incs.append({**r.header["meta"], "seq": (r.header.get("source") or {}).get("seq")})
                    if end is None and time.monotonic() > t_wait:
                        break
                time.sleep(0.3)
                drain_end = time.monotonic() + 1.0  # the results of the window's last frames; the rig runs on
                while time.monotonic() < drain_end and (r := rec.recv(timeout=0.05)) is not None:
                    if r.array is not None:
                        incs.append({**r.header["meta"], "seq": (r.header.get("source") or {}).get("seq")})
                dstat = d.status()["streams"]["tac0"]
                sstat = stage.status()["streams"]["tac0"]
            finally:
                d.shutdown()
                stage.shutdown()
            raw_gap_frames = sum(g.count for g in raw.gaps)
    finally:
        sim.terminate()
        try:
            sim.wait(5)
        except subprocess.TimeoutExpired:
            sim.kill()
        shutil.rmtree(link_dir, ignore_errors=True)
    counter_holes = int(np.sum(np.diff(counters) - 1)) if len(counters) > 1 else 0
    lost = int(dstat.get("gap_frames", 0)) + int(dstat.get("drops", 0)) + raw_gap_frames
    # the recon results of the frames the raw window saw (the stage may run ahead of or behind it)
    lo, hi = (min(seqs), max(seqs)) if seqs else (0, -1)
    window = {m["seq"]: m for m in incs if m.get("seq") is not None and lo <= m["seq"] <= hi}
    deep = [m for m in window.values() if (m.get("depth_mm") or 0) >= opts.depth_max_mm - 1e-6]
    found = [m for m in deep if m.get("found")]
    errs = [float(np.hypot(m["row"] - truth["inclusion_row"], m["col"] - truth["inclusion_col"])) for m in found]
    rel = [m["relative_stiffness"] for m in found if m.get("relative_stiffness") is not None]
    return {
        "tactile_rate_hz": TACTILE_RATE_HZ,
        "tactile_calibration_s": round(cal_s, 2),
        "tactile_cells": [opts.rows, opts.cols],
        "tactile_duration_s": duration,
        "tactile_frames": n,
        "tactile_fps": round((n - 1) / (t_last - t_first), 2) if n > 1 else 0.0,
        "tactile_gaps": max(lost, counter_holes),
        "tactile_counter_holes": counter_holes,
        "tactile_recon_dropped": int(sstat.get("dropped", 0)),
        "tactile_recon_results_in_window": len(window),
        "tactile_full_press_frames": len(deep),
        "tactile_detected_frames": len(found),
        "tactile_position_error_cells": round(max(errs), 3) if errs and len(found) == len(deep) else None,
        "tactile_position_error_cells_median": round(float(np.median(errs)), 3) if errs else None,
        "tactile_diameter_mm": round(float(np.median([m["diameter_mm"] for m in found])), 2) if found else None,
        "tactile_true_diameter_mm": truth["inclusion_diameter_mm"],
        "tactile_relative_stiffness": round(float(np.median(rel)), 3) if rel else None,
        "tactile_surface_stiffness_ratio": round(truth["surface_stiffness_ratio"], 3),
        "tactile_true_modulus_ratio": round(truth["e_inclusion_kpa"] / truth["e_background_kpa"], 3),
    }


def _p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


BMODE_FPS = 20.0
"""Rate (frames/s) of the live B-mode run beside the SWE timing: the default rig's ``us0``."""


def _bmode_frames() -> tuple[dict[str, Any], list[tuple[dict[str, Any], np.ndarray]]]:
    """The default rig's ``us0`` (:data:`medacq.simulators.rig.DEFAULT_RIG`: 3 angles, 128 elements ×
    2048 samples) as the stage sees it: its stream descriptor (as the ``ultrasound`` driver writes it)
    and 4 RF frames ``(angle, element, sample)`` int16 from the simulator's model, 1/20 s apart."""
    from medacq.simulators.registry import make_simulator
    from medacq.simulators.rig import DEFAULT_RIG

    entry = next(e for e in DEFAULT_RIG if e.name == "us0")
    sim = make_simulator(entry.sim_kind, **entry.sim_options)
    model = sim.model  # type: ignore[attr-defined]
    acq = model.acquisition
    desc = {"stream": entry.name, "modality": "us", "device": f"igtl:{acq.probe.name}", "dtype": "<i2",
            "shape": list(acq.rf_shape), "axes": ["angle", "element", "sample"], "units": "counts",
            "sample_rate_hz": acq.sampling_frequency_hz, "frame_rate_hz": acq.frame_rate_hz,
            "geometry": {"acquisition": acq.to_descriptor()}}
    frames = [({"stream": entry.name, "seq": i, "t_host_ns": 0}, model.frame(i / BMODE_FPS)) for i in range(4)]
    return desc, frames


def _bmode_worker(conn: Any, fps: float) -> None:
    """Process beside the SWE timing: the stage's B-mode reconstructor for ``us0`` with the rig's
    settings (``medacq up``: the defaults, OpenIGTLink off), built and warm (``ready``); on
    ``start`` it processes frames paced at ``fps`` (frame ``k`` due at ``t0 + k/fps``; when it falls
    behind, the newest due frame next, the rest skipped, as the stage's ``latest`` policy does) until
    the parent sends anything; then sends its figures."""
    from medacq.daemon.bench.gil import ReconFeeder

    desc, frames = _bmode_frames()
    feeder = ReconFeeder(desc, frames, {"us": {}})
    try:
        conn.send("ready")
        while conn.recv() == "start":
            period = 1.0 / fps
            ms: list[float] = []
            k = skipped = 0
            t0 = time.monotonic()
            while not conn.poll(0):
                wait = t0 + k * period - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                t = time.perf_counter()
                feeder.feed()
                ms.append((time.perf_counter() - t) * 1e3)
                newest = int((time.monotonic() - t0) / period)  # the newest frame due by now
                skipped += max(0, newest - (k + 1))
                k = max(k + 1, newest)
            elapsed = time.monotonic() - t0
            conn.recv()  # the stop
            conn.send({"fps": len(ms) / elapsed if elapsed > 0 else 0.0, "frames": len(ms), "skipped": skipped,
                       "ms_p50": _p(ms, 50) if ms else None, "ms_p99": _p(ms, 99) if ms else None})
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        feeder.close()


class _BModeBeside:
    """The B-mode worker process (:func:`_bmode_worker`), started in the background at once."""

    def __init__(self, fps: float = BMODE_FPS) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_bmode_worker, args=(theirs, fps), name="bmode-beside", daemon=True)
        self.proc.start()
        theirs.close()
        self.ready = False

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        if not self.ready:
            try:
                ok = self.conn.poll(timeout_s) and self.conn.recv() == "ready"
            except EOFError:
                ok = False
            if not ok:
                raise RuntimeError(f"the B-mode worker process did not start (exit code {self.proc.exitcode})")
            self.ready = True

    def start(self, settle_s: float = 0.5) -> None:
        self.conn.send("start")
        time.sleep(settle_s)

    def stop(self) -> dict[str, Any]:
        try:
            self.conn.send("stop")
            if self.conn.poll(60):
                res: dict[str, Any] = self.conn.recv()
                return res
        except (EOFError, OSError):
            pass
        raise RuntimeError(f"the B-mode worker process did not answer (exit code {self.proc.exitcode})")

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _swe() -> dict[str, Any]:
    bmode = _BModeBeside()  # builds its operator meanwhile; idle until started
    try:
        return _swe_measure(bmode)
    finally:
        bmode.close()


def _swe_measure(bmode: _BModeBeside) -> dict[str, Any]:
    from medacq.daemon.recon.algorithms import elastography as el
    from medacq.daemon.recon.algorithms.beamform import warm_kernels
    from medacq.daemon.recon.modalities.elastography import ShearWaveSettings
    from medacq.simulators.swe_model import TrackingSetup
    from medacq.simulators.us_swe import ElastographyScannerInterface

    threads = ShearWaveSettings().threads  # the swe reconstructor's
    warm_kernels()
    sim = ElastographyScannerInterface(setup=TrackingSetup(), seed=4)
    t0 = time.perf_counter()
    ens = sim.rf_ensemble()
    render_s = time.perf_counter() - t0
    s = ens.setup
    rf = ens.rf  # int16 (frame, angle, element, sample): what goes on the wire
    x, z = ens.x_mm, ens.z_mm
    t0 = time.perf_counter()
    z_map, window = el.rf_map_grid(z, 2, 9)  # the reconstructor's defaults: axial_step 2, axial_window 9
    bf = el.EnsembleBeamformer(ens.acquisition, x, z_map, backend="sparse", threads=threads)
    build_s = time.perf_counter() - t0
    X, Z = np.meshgrid(x, z[::2])  # the maps' grid: every 2nd depth sample (process_ensemble's axial_step)
    stiff, soft = sim.phantom.regions
    kernel = "numba" if el.HAVE_NUMBA else "numpy"

    cpu: list[float] = []

    def chain(k: str) -> tuple[Any, float, float]:
        c = time.process_time()
        t = time.perf_counter()
        iq = bf(rf)
        tb = time.perf_counter()
        r = el.process_ensemble(iq, ens.t_s, x, z_map, bf.f_demod_hz, bf.fs_hz, axial_window=window, kernel=k,
                                axial_step=1)
        te = time.perf_counter()
        cpu.append((time.process_time() - c) * 1e3)
        return r, (te - t) * 1e3, (tb - t) * 1e3

    r, _, _ = chain(kernel)  # warm-up (numba compile or cache load, the operator touched)
    bmode.wait_ready()  # built and idle: the quiet figures first
    times, times_bf = [], []
    cpu.clear()
    for _ in range(20):
        r, ms, ms_bf = chain(kernel)
        times.append(ms)
        times_bf.append(ms_bf)
    cpu_ms = list(cpu)
    other = 2 if threads == 1 else 1
    bf.beamformer.threads = other  # the quiet figure with the other thread count
    cpu.clear()
    times_other = [chain(kernel)[1] for _ in range(20)]
    cpu_other = list(cpu)
    # the same, with the rig's live B-mode (us0) processed at 20 frames/s in another process: the
    # reconstructor's threads, then the other of 1 and 2 (kernels of 2 threads may wait on each other
    # for a core)
    beside: dict[int, dict[str, Any]] = {}
    for n_threads in (threads, other):
        bf.beamformer.threads = n_threads  # numba's thread count, set per call (demod, then Loupas)
        cpu.clear()
        bmode.start()
        tb_ms = [chain(kernel)[1] for _ in range(20)]
        beside[n_threads] = {"ms": tb_ms, "cpu": list(cpu), "bmode": bmode.stop()}
    bf.beamformer.threads = threads
    times_np = []
    for _ in range(3):
        r_np, ms, _ = chain("numpy")
        times_np.append(ms)
    iq = bf(rf)
    lk = {}
    for name in (["numba"] if el.HAVE_NUMBA else []) + ["numpy"]:
        fn = el.loupas_numba if name == "numba" else el.loupas_numpy
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            fn(iq, bf.f_demod_hz, bf.fs_hz, 1540.0, window, 1)
            ts.append((time.perf_counter() - t) * 1e3)
        lk[f"loupas_ms_{name}"] = round(float(np.median(ts)), 2)
    # the scanner-beamformed IQ mode (no beamforming in the receiver) beside it, same phantom and wave
    q, scale, ens_iq = sim.ensemble()
    iq_s = (q[..., 0].astype(np.float32) + 1j * q[..., 1].astype(np.float32)).astype(np.complex64) / np.float32(scale)
    times_iq = []
    for _ in range(5):
        t = time.perf_counter()
        r_iq = el.process_ensemble(iq_s, ens_iq.t_s, x, z, s.f0_hz, s.fs_iq_hz, kernel=kernel)
        times_iq.append((time.perf_counter() - t) * 1e3)
    # the same phantom with first-arrival (eikonal) propagation instead of straight rays (IQ mode)
    sim.propagation = "eikonal"
    q_e, scale_e, ens_e = sim.ensemble()
    sim.propagation = "rays"
    iq_e = (q_e[..., 0].astype(np.float32) + 1j * q_e[..., 1].astype(np.float32)).astype(np.complex64) \
        / np.float32(scale_e)
    r_eik = el.process_ensemble(iq_e, ens_e.t_s, x, z, s.f0_hz, s.fs_iq_hz, kernel=kernel)
    core = (X - stiff.x_mm) ** 2 + (Z - stiff.z_mm) ** 2 <= (0.6 * stiff.radius_mm) ** 2
    soft_core = (X - soft.x_mm) ** 2 + (Z - soft.z_mm) ** 2 <= (0.6 * soft.radius_mm) ** 2
    bg = X > sim.wave().x_push_mm + 6.0
    for reg in (stiff, soft):
        bg &= (X - reg.x_mm) ** 2 + (Z - reg.z_mm) ** 2 > (reg.radius_mm + 2.0) ** 2
    e_in = float(np.nanmedian(r.modulus_kpa[core]))
    e_bg = float(np.nanmedian(r.modulus_kpa[bg]))
    e_soft = float(np.nanmedian(r.modulus_kpa[soft_core]))
    err = (r.velocity_um - np.diff(ens.displacement_um, axis=0)[:, ::2])[:, bg | core | soft_core]
    inc = r.inclusion
    e_in_iq = float(np.nanmedian(r_iq.modulus_kpa[core]))
    return {
        "modulus_error_inclusion": round(abs(e_in - stiff.e_kpa) / stiff.e_kpa, 4),
        "modulus_error_background": round(abs(e_bg - sim.phantom.e_background_kpa) / sim.phantom.e_background_kpa, 4),
        "inclusion_diameter_error_mm": round(abs(inc.diameter_mm - 2 * stiff.radius_mm), 3) if inc.found else None,
        "displacement_bias_um": round(abs(float(err.mean())), 6),
        "displacement_rms_um": round(float(np.sqrt((err ** 2).mean())), 4),
        "swe_process_ms_p99": _p(times, 99),
        "swe_process_ms_p50": _p(times, 50),
        "swe_process_ms_min": round(min(times), 1),
        "swe_process_cpu_ms_p50": _p(cpu_ms, 50),
        "swe_beamform_ms_p50": _p(times_bf, 50),
        "swe_beamform_ms_p99": _p(times_bf, 99),
        "swe_kernel": kernel,
        "swe_process_ms_p99_numpy": _p(times_np, 99),
        "swe_process_ms_p50_numpy": _p(times_np, 50),
        **lk,
        "swe_e_inclusion_kpa": round(e_in, 2), "swe_true_e_inclusion_kpa": stiff.e_kpa,
        "swe_e_background_kpa": round(e_bg, 2), "swe_true_e_background_kpa": sim.phantom.e_background_kpa,
        "soft_modulus_error": round(abs(e_soft - soft.e_kpa) / soft.e_kpa, 4),
        "swe_inclusion_diameter_mm": round(inc.diameter_mm, 3) if inc.found else None,
        "swe_true_inclusion_diameter_mm": 2 * stiff.radius_mm,
        "swe_kernels_max_diff_um": round(float(np.max(np.abs(r.velocity_um - r_np.velocity_um))), 4),
        "swe_kernels_e_inclusion_kpa_numpy": round(float(np.nanmedian(r_np.modulus_kpa[core])), 2),
        "swe_ensemble_shape": list(rf.shape), "swe_ensemble_mb": round(rf.nbytes / 1e6, 1),
        "swe_map_shape": list(r.modulus_kpa.shape), "swe_render_s": round(render_s, 2),
        "swe_operator_build_s": round(build_s, 2), "swe_operator_mb": round(bf.beamformer.operator_bytes / 1e6, 1),
        "swe_beamforming_included": True,
        "swe_iq_process_ms_p99": _p(times_iq, 99),
        "swe_iq_modulus_error_inclusion": round(abs(e_in_iq - stiff.e_kpa) / stiff.e_kpa, 4),
        "swe_eikonal_modulus_error_inclusion":
            round(abs(float(np.nanmedian(r_eik.modulus_kpa[core])) - stiff.e_kpa) / stiff.e_kpa, 4),
        "swe_eikonal_modulus_error_background":
            round(abs(float(np.nanmedian(r_eik.modulus_kpa[bg])) - sim.phantom.e_background_kpa)
                  / sim.phantom.e_background_kpa, 4),
        "swe_eikonal_soft_modulus_error":
            round(abs(float(np.nanmedian(r_eik.modulus_kpa[soft_core])) - soft.e_kpa) / soft.e_kpa, 4),
        "swe_eikonal_inclusion_diameter_error_mm":
            round(abs(r_eik.inclusion.diameter_mm - 2 * stiff.radius_mm), 3) if r_eik.inclusion.found else None,
        **_beside_keys(beside, threads, {other: (times_other, cpu_other)}),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }


def _beside_keys(beside: dict[int, dict[str, Any]], threads: int,
                 quiet_other: dict[int, tuple[list[float], list[float]]]) -> dict[str, Any]:
    """The beside-B-mode figures and the quiet ones of the other thread count: the reconstructor's
    thread count unsuffixed, the other ``_<n>thread(s)``."""
    out: dict[str, Any] = {"swe_threads": threads, "bmode_target_fps": BMODE_FPS}
    for n, (ms, cpu) in quiet_other.items():
        sfx = f"_{n}thread{'s' if n > 1 else ''}"
        out |= {f"swe_process_ms_p99{sfx}": _p(ms, 99), f"swe_process_ms_p50{sfx}": _p(ms, 50),
                f"swe_process_cpu_ms_p50{sfx}": _p(cpu, 50)}
    for n, b in beside.items():
        sfx = "" if n == threads else f"_{n}thread{'s' if n > 1 else ''}"
        out |= {f"swe_process_ms_p99_beside_bmode{sfx}": _p(b["ms"], 99),
                f"swe_process_ms_p50_beside_bmode{sfx}": _p(b["ms"], 50),
                f"swe_process_cpu_ms_p50_beside_bmode{sfx}": _p(b["cpu"], 50),
                f"bmode_fps_beside_swe{sfx}": round(b["bmode"]["fps"], 2),
                f"bmode_frames_skipped_beside_swe{sfx}": b["bmode"]["skipped"],
                f"bmode_frame_ms_p99_beside_swe{sfx}": b["bmode"]["ms_p99"]}
    return out


def bench_elastography(args: argparse.Namespace) -> dict[str, Any]:
    """Elastography and tactile benchmark; see the module docstring for the keys."""
    result: dict[str, Any] = {"benchmark": "elastography"}
    _log("shear-wave elastography: render one push ensemble, then process it ...")
    result.update(_swe())
    _log(f"swe: E inclusion error {result['modulus_error_inclusion']}, background {result['modulus_error_background']}, "
         f"diameter error {result['inclusion_diameter_error_mm']} mm, p99 {result['swe_process_ms_p99']} ms "
         f"({result['swe_kernel']}; numpy {result['swe_process_ms_p99_numpy']} ms); beside B-mode "
         f"p99 {result['swe_process_ms_p99_beside_bmode']} ms, B-mode {result['bmode_fps_beside_swe']} fps")
    duration = max(5.0, 2.5 * float(getattr(args, "duration", 2.0)))
    _log(f"tactile: 32x32 probe at {TACTILE_RATE_HZ:g} Hz for {duration} s through the daemon ...")
    result.update(_tactile(duration))
    _log(f"tactile: {result['tactile_fps']} fps, {result['tactile_gaps']} gaps, position error "
         f"{result['tactile_position_error_cells']} cells")
    return result
