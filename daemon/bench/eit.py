"""``medacq bench eit``: EIT reconstruction setup, per-frame cost, accuracy and end to end.

Figures (one JSON object with ``--json``):

* ``setup_s``: uncached setup for 16 electrodes on the ~3000-element thorax mesh (mesh,
  Jacobian, Woodbury reconstruction matrix, 32×32 pixel map); ``pyeit_setup_s``: pyEIT's
  ``JAC`` setup (Jacobian + H) on the same mesh and pattern, measured in the same run
  (baseline; ``null`` when pyEIT is not installed); ``cached_setup_s``: the same setup
  from the disk cache.
* ``frame_p50_ms``/``frame_p99_ms``: one time-difference image (difference + one float32
  mat-vec + global impedance), over 2000 frames.
* ``centre_error_frac``: an inclusion placed by the phantom (complete electrode model on a
  finer mesh) found in the image, error / domain radius. ``pyeit_correlation``: element
  conductivity change against pyEIT's JAC solution on the same mesh and pattern.
* ``e2e_fps``/``e2e_gaps``: Sciospec simulator (another process, 50 fps paced, over a
  pty) → driver → daemon → reconstruction stage → image subscriber; gaps = every frame
  lost anywhere on the way (driver gaps, daemon queue drops, stage drops, subscriber holes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["bench_eit"]


def _log(msg: str) -> None:
    print(f"  eit: {msg}", file=sys.stderr, flush=True)


def _accuracy_and_pyeit(rec_mesh, pat) -> dict[str, Any]:
    from medacq.daemon.recon.algorithms import eit as rc
    from medacq.simulators.eit_phantom import ThoraxPhantom

    out: dict[str, Any] = {}
    # accuracy against the phantom's ground truth (no inverse crime: CEM, other mesh)
    r = rc.EitReconstructor.from_mesh(rec_mesh, pat, rc.ReconParams(normalize=True))
    ph = ThoraxPhantom(n_el=16, seed=1, breathing_amplitude=0.0, cardiac_amplitude=0.0, snr_db=60.0)
    errs = []
    for x, y, rad, c in [(0.4, 0.25, 0.14, 2.5), (-0.5, -0.2, 0.12, 0.4), (0.0, -0.1, 0.15, 2.0)]:
        ph.clear_inclusions()
        v_ref = ph.frame(0.0, pat)
        ph.add_inclusion(x, y, rad, c)
        img = r.image(r.difference(ph.frame(0.0, pat), v_ref))
        cx, cy = rc.image_centroid(img, sign=1 if c > 1 else -1)
        errs.append(float(np.hypot(cx - x, cy - y) / ph.mesh.domain_radius))
    out["centre_error_frac"] = round(max(errs), 4)
    out["centre_errors"] = [round(e, 4) for e in errs]
    # pyEIT as the oracle (optional at run time)
    try:
        import pyeit.eit.protocol as protocol
        from pyeit.eit.jac import JAC
        from pyeit.mesh import PyEITMesh
    except ImportError:
        out["pyeit_setup_s"] = None
        out["pyeit_correlation"] = None
        return out
    t0 = time.perf_counter()
    pm = PyEITMesh(element=rec_mesh.elements, node=rec_mesh.nodes, el_pos=rec_mesh.el_pos, ref_node=rec_mesh.ref_node)
    solver = JAC(pm, protocol.create(16, 1, 1, "std"))
    solver.setup(p=0.2, lamb=1e-3, method="kotre")
    out["pyeit_setup_s"] = round(time.perf_counter() - t0, 4)
    r0 = rc.EitReconstructor.from_mesh(rec_mesh, pat, rc.ReconParams())
    ph.clear_inclusions()
    v_ref = ph.frame(0.0, pat)
    ph.add_inclusion(-0.35, 0.25, 0.15, 2.5)
    v = ph.frame(0.0, pat)
    ds_pyeit = solver.solve(v, v_ref, normalize=False)
    ds = r0.elements(r0.difference(v, v_ref))
    out["pyeit_correlation"] = round(float(np.corrcoef(ds, ds_pyeit)[0, 1]), 6)
    return out


def _e2e(duration: float, fps: float = 50.0) -> dict[str, Any]:
    from medacq.client import Subscriber
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recon.stage import ReconStage
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.bench.runner import free_ports

    ports = free_ports(4)
    ep = [f"tcp://127.0.0.1:{p}" for p in ports]
    link_dir = tempfile.mkdtemp(prefix="medacq-bench-eit-")
    sim = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", "sim", "sciospec", "n_el=16", "seed=5",
                            "--name", "eit0", "--link-dir", link_dir], stdout=subprocess.PIPE, text=True)
    try:
        address = sim.stdout.readline().strip()
        if not address:
            raise RuntimeError("the sciospec simulator did not start")
        cfg = parse_config({
            "daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1]},
            "recon": {"data_endpoint": ep[2], "control_endpoint": ep[3], "settings": {"eit": {"n_ref": 10}}},
            "device": [{"name": "eit0", "kind": "sciospec", "address": address, "settings": {"n_el": 16, "fps": fps}}],
        })
        stage = ReconStage(cfg).start()
        with Subscriber(cfg.recon.data_endpoint, "recon/eit0") as sub:
            sub.wait_connected()
            d = AcquisitionDaemon(cfg).start()
            try:
                n = 0
                t_first = t_last = 0.0
                warm_end = time.monotonic() + 30
                # warm-up: reference frames and the first images
                while time.monotonic() < warm_end:
                    m = sub.recv(timeout=1.0)
                    if m is not None and m.array is not None and m.header["stream"] == "eit0":
                        break
                gaps0 = len(sub.gaps)
                end = time.monotonic() + duration
                lat = []
                while time.monotonic() < end:
                    m = sub.recv(timeout=1.0)
                    if m is None or m.array is None or m.header["stream"] != "eit0":
                        continue
                    now = time.monotonic()
                    lat.append((time.monotonic_ns() - m.header["source"]["t_mono_ns"]) / 1e6)
                    if n == 0:
                        t_first = now
                    t_last = now
                    n += 1
                dstat = d.status()["streams"]["eit0"]
                sstat = stage.status()["streams"]["eit0"]
            finally:
                d.shutdown()
                stage.shutdown()
        sub_gaps = sum(g.count for g in sub.gaps[gaps0:])
        lost = int(dstat.get("gap_frames", 0)) + int(dstat.get("drops", 0)) + int(sstat["dropped"]) + sub_gaps
        return {
            "e2e_fps": round((n - 1) / (t_last - t_first), 2) if n > 1 else 0.0,
            "e2e_gaps": lost,
            "e2e_frames": n,
            "e2e_latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat else None,
            "e2e_recon_us_p50": sstat.get("proc_us_p50"),
            "e2e_target_fps": fps,
        }
    finally:
        sim.terminate()
        try:
            sim.wait(5)
        except subprocess.TimeoutExpired:
            sim.kill()
        try:
            os.rmdir(link_dir)
        except OSError:
            pass


def bench_eit(args: argparse.Namespace) -> dict[str, Any]:
    """EIT benchmark; see the module docstring for the keys."""
    from medacq.daemon.recon.algorithms import eit as rc
    from medacq.protocols.models.eit_fem import adjacent_pattern, thorax_mesh

    result: dict[str, Any] = {"benchmark": "eit", "n_el": 16}
    pat = adjacent_pattern(16)
    thorax_mesh(16, 500)  # import/JIT warm-up outside the timing
    t0 = time.perf_counter()
    r = rc.EitReconstructor.for_thorax(16, 3000, "adjacent", rc.ReconParams(normalize=True), cache_dir=None)
    result["setup_s"] = round(time.perf_counter() - t0, 4)
    rec_mesh = thorax_mesh(16, 3000)
    result["mesh_elements"] = rec_mesh.n_elements
    _log(f"setup {result['setup_s']} s on {rec_mesh.n_elements} elements")
    with tempfile.TemporaryDirectory() as cache:
        rc.EitReconstructor.for_thorax(16, 3000, "adjacent", rc.ReconParams(normalize=True), cache_dir=cache)
        t0 = time.perf_counter()
        rc.EitReconstructor.for_thorax(16, 3000, "adjacent", rc.ReconParams(normalize=True), cache_dir=cache)
        result["cached_setup_s"] = round(time.perf_counter() - t0, 4)

    # per-frame cost
    rng = np.random.default_rng(0)
    v0 = np.abs(rng.normal(1.0, 0.1, pat.n_total)).astype(np.float32)
    imager = rc.TimeDifferenceImager(r, n_ref=1)
    imager.push(v0)
    frames = (v0 * (1 + 0.01 * rng.normal(size=(2200, pat.n_total)))).astype(np.float32)
    ts = np.empty(len(frames))
    for i, v in enumerate(frames):
        t = time.perf_counter_ns()
        imager.push(v)
        ts[i] = time.perf_counter_ns() - t
    ts = ts[200:] / 1e6
    result["frame_p50_ms"] = round(float(np.percentile(ts, 50)), 4)
    result["frame_p99_ms"] = round(float(np.percentile(ts, 99)), 4)
    _log(f"per frame p50 {result['frame_p50_ms']} ms, p99 {result['frame_p99_ms']} ms")

    acc = _accuracy_and_pyeit(rec_mesh, pat)
    result.update(acc)
    _log(f"pyEIT setup {acc.get('pyeit_setup_s')} s, correlation {acc.get('pyeit_correlation')}, "
         f"centre error {acc['centre_error_frac']}")
    if result.get("pyeit_setup_s"):
        result["setup_speedup_vs_pyeit"] = round(result["pyeit_setup_s"] / result["setup_s"], 2)

    e2e_s = max(5.0, float(getattr(args, "duration", 2.0)))
    _log(f"end to end at 50 fps for {e2e_s} s ...")
    result.update(_e2e(e2e_s))
    _log(f"end to end {result['e2e_fps']} fps, {result['e2e_gaps']} gaps")
    result["e2e_duration_s"] = e2e_s
    return result
