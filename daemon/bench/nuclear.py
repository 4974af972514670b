"""``medacq bench nuclear``: PET image quality the NEMA NU 2 way and list-mode throughput, in one run.

* ``crc_<d>mm`` (``crc_37mm``...), ``bg_variability`` (37 mm ROIs; ``bg_variability_by_size``),
  ``bg_quant_error``: the simulated IEC body phantom slice (4:1; :func:`simulate_and_reconstruct` takes ``ratio=8`` for 8:1), a
  360-crystal ring (20 blocks x 18), 2.5 s at 2 M singles/s, singles from :class:`~medacq.simulators.pet_model.PetRingModel`
  through the reconstruction stage's own code (:class:`~medacq.daemon.recon.modalities.pet.PetReconstructor`:
  energy window, prompt/delayed sorting, randoms, μ-map attenuation, scatter tail fit, OSEM 10
  subsets x 3 iterations, Bq/mL with decay and dead-time correction). CRC_j =
  (C_sphere / C_bg - 1) / (ratio - 1) with a circular ROI of the sphere's diameter on its centre;
  C_bg and the variability (SD / mean of the ROI means) over 12 background ROIs of each size;
  the quantitation error is |C_bg - true background| / true background (true: the simulator's
  concentration at t = 0); ``lung_residual``: mean in a 30 mm ROI on the cold lung insert / C_bg.
* ``sort_singles_per_s``: energy window + prompt and delayed windows (one core, numpy) per
  input single, on simulated singles at 10 M singles/s.
* ``bin_events_per_s``: crystal pairs → sinogram (look-up table + bincount).
* ``osem_iter_ms``: one OSEM iteration (all 10 subsets) on 128² from 180 views (sparse system
  matrix); ``mlem_numpy_iter_ms``: one MLEM iteration with the same projector written the obvious
  way (view by view in numpy); ``osem_speedup``.
* ``ingest_singles_per_s``, ``lost_blocks``: the ring simulator in another process (unpaced,
  replaying 0.2 s of singles at 10 M/s) → TCP → the ``pet`` driver → acquisition daemon → ZeroMQ →
  a subscriber in this process: singles per second received, blocks announced lost (gaps).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from typing import Any

import numpy as np

from medacq.daemon.bench.runner import free_port

__all__ = ["bench_nuclear", "nema_figures", "simulate_and_reconstruct"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _background_rois(phantom: Any, roi_d: float = 37.0, n: int = 12) -> list[tuple[float, float]]:
    a, b = phantom.body_axes_mm
    cands = []
    for ang in np.linspace(0, 2 * np.pi, 72, endpoint=False):
        for margin in (30.0, 45.0):
            x, y = (a - margin) * np.cos(ang), (b - margin) * np.sin(ang)
            if all(np.hypot(x - s.x_mm, y - s.y_mm) > s.diameter_mm / 2 + roi_d / 2 + 5 for s in phantom.spheres) \
                    and np.hypot(x, y) > phantom.lung_diameter_mm / 2 + roi_d / 2 + 5:
                cands.append((float(x), float(y)))
                break
    idx = np.linspace(0, len(cands), n, endpoint=False).astype(int)
    return [cands[i] for i in idx]


def nema_figures(img: np.ndarray, phantom: Any, fov_mm: float, t_ref_s: float = 0.0) -> dict[str, Any]:
    """CRC per sphere, background variability and quantitation error of an image (Bq/mL, the
    layout of :meth:`IecBodyPhantom.activity_image`)."""
    n = img.shape[0]
    px = fov_mm / n
    c = (np.arange(n) + 0.5) * px - fov_mm / 2
    X, Y = np.meshgrid(c, -c)

    def roi(x: float, y: float, d: float) -> float:
        return float(img[(X - x) ** 2 + (Y - y) ** 2 <= (d / 2) ** 2].mean())

    centres = _background_rois(phantom)
    out: dict[str, Any] = {}
    var: dict[str, float] = {}
    true_bg = phantom.concentration(t_ref_s)["background"]
    for s in phantom.spheres:
        bg = np.array([roi(x, y, s.diameter_mm) for x, y in centres])
        cb = float(bg.mean())
        out[f"crc_{s.diameter_mm:g}mm"] = round((roi(s.x_mm, s.y_mm, s.diameter_mm) / cb - 1) / (phantom.ratio - 1), 3)
        var[f"{s.diameter_mm:g}mm"] = round(float(bg.std(ddof=1) / cb), 4)
        if s.diameter_mm == 37.0:
            out["bg_measured_bq_ml"] = round(cb, 1)
            out["bg_true_bq_ml"] = round(true_bg, 1)
            out["bg_quant_error"] = round(abs(cb - true_bg) / true_bg, 4)
    out["bg_variability"] = var.get("37mm")
    # NEMA NU 2 accuracy of corrections: residual in a 30 mm ROI on the cold lung insert
    out["lung_residual"] = round(roi(0.0, 0.0, 30.0) / out.get("bg_measured_bq_ml", 1.0), 3)
    out["bg_variability_by_size"] = var
    return out


def _frame(singles: np.ndarray) -> np.ndarray:
    """PETsys records → the ``pet`` driver's ``(n, 3)`` int64 frame (time ps, energy eV, crystal)."""
    out = np.empty((len(singles), 3), np.int64)
    out[:, 0], out[:, 1], out[:, 2] = singles["time_ps"], np.rint(singles["energy"] * 1000.0), singles["id"]
    return out


def simulate_and_reconstruct(seconds: float = 3.0, ratio: float = 4.0, singles_rate: float = 2e6, seed: int = 1,
                             iterations: int = 3, subsets: int = 10, p_det: float = 0.8
                             ) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Simulate ``seconds`` of singles of the IEC phantom on the 360-crystal ring and reconstruct
    them with the stage's PET reconstructor. Returns (image Bq/mL, phantom, output meta)."""
    from medacq.daemon.recon.modalities.pet import PetReconstructor
    from medacq.protocols.stream import StreamDescriptor
    from medacq.simulators.pet_ring import make

    iface = make(blocks=20, crystals_per_block=18, singles_rate=singles_rate, ratio=ratio, p_det=p_det, seed=seed,
                 block_ms=50.0, replay_s=0.0)
    cfg = iface.config()
    geometry = dict(cfg["geometry"])
    geometry.update({k: cfg[k] for k in ("cwindow_ps", "ewindow_kev", "threshold_kev", "sensitivity", "isotope",
                                         "phantom")})
    desc = StreamDescriptor(stream="pet0", modality="pet", dtype="<i8", shape=[-1, 3], axes=["single", "field"],
                            geometry=geometry)
    rec = PetReconstructor(desc, {"frame_s": 1e9, "iterations": iterations, "subsets": subsets})
    rec.wait_ready()
    block = iface.block_ps
    for k in range(int(round(seconds * 1e12 / block))):
        sl = iface.model.generate(k * block, (k + 1) * block)
        rec.process({"meta": {"t_start_ps": k * block, "t_end_ps": (k + 1) * block, "dead_singles": sl.dead}},
                    _frame(sl.singles))
    out = rec.image()[0]
    return out.data, iface.model.phantom, out.meta or {}


def _serve(port: int, ready: Any, stop: Any) -> None:
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.registry import make_simulator

    iface = make_simulator("pet", blocks=20, crystals_per_block=18, singles_rate=1e7, replay_s=0.2, block_ms=5.0)
    with SimulatorServer(iface, "tcp", port=port, paced=False):
        ready.set()
        stop.wait(120)


def _ingest(duration: float) -> dict[str, Any]:
    """Simulator process → TCP → ``pet`` driver → acquisition daemon → ZeroMQ → subscriber here."""
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.client.api import Subscriber
    from medacq.daemon.common.config import parse_config

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    port = free_port()
    proc = ctx.Process(target=_serve, args=(port, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            return {"ingest_error": "simulator did not start"}
        eps = {"daemon": {"data_endpoint": f"tcp://127.0.0.1:{free_port()}",
                          "control_endpoint": f"tcp://127.0.0.1:{free_port()}"},
               "recon": {"data_endpoint": f"tcp://127.0.0.1:{free_port()}",
                         "control_endpoint": f"tcp://127.0.0.1:{free_port()}"}}
        cfg = parse_config({**eps, "device": [{"name": "pet0", "kind": "pet", "address": f"tcp://127.0.0.1:{port}"}]})
        with Subscriber(cfg.daemon.data_endpoint, "raw/pet0") as sub:
            d = AcquisitionDaemon(cfg).start()
            try:
                singles = frames = 0
                t_first = t_last = None
                end = time.monotonic() + duration + 30
                while time.monotonic() < end:
                    m = sub.recv(timeout=0.5)
                    if m is None or m.kind != "frame" or m.array is None:
                        continue
                    now = time.monotonic()
                    if t_first is None:
                        t_first, end = now, now + duration
                        continue
                    singles += len(m.array)
                    frames += 1
                    t_last = now
            finally:
                d.shutdown()
        lost = sum(g.count for g in sub.gaps)
        dt = (t_last - t_first) if (t_first and t_last) else float("nan")
        return {"ingest_singles_per_s": round(singles / dt) if frames else 0, "ingest_frames": frames,
                "lost_blocks": lost}
    finally:
        stop.set()
        proc.join(5)
        if proc.is_alive():
            proc.terminate()


def bench_nuclear(args: argparse.Namespace) -> dict[str, Any]:
    """All figures of the module doc in one run (about 40 s)."""
    from medacq.daemon.recon.algorithms.nuclear import PetSystemMatrix, bin_pairs, mlem_numpy, osem, sort_coincidences
    from medacq.protocols.pet_geometry import PetRing
    from medacq.simulators.pet_model import PetRingModel

    ratio = 4.0  # 8:1: simulate_and_reconstruct(ratio=8.0)
    seconds = 2.5  # device seconds of the phantom (5 M singles: most of the run time)
    res: dict[str, Any] = {"ring": "20 blocks x 18 crystals, R 400 mm", "image": [128, 128], "ratio": ratio}
    _log(f"image quality: simulating {seconds:g} s of the IEC phantom at {ratio:g}:1 ...")
    t0 = time.perf_counter()
    img, phantom, meta = simulate_and_reconstruct(seconds, ratio)
    res["iq_seconds"] = round(time.perf_counter() - t0, 1)
    res.update(nema_figures(img, phantom, 320.0))
    res["prompts"] = meta.get("prompts")
    res["scatter_fraction_est"] = round(float(meta.get("scatter_fraction", 0.0)), 3)

    ring = PetRing(blocks=20, crystals_per_block=18)
    _log("sorting and binning ...")
    model = PetRingModel(ring=ring, singles_rate=1e7, seed=3)
    parts = [model.generate(k * 10 ** 10, (k + 1) * 10 ** 10).singles for k in range(20)]
    s = np.concatenate(parts)  # 0.2 s at 10 M/s
    frame = np.empty((len(s), 3), np.int64)
    frame[:, 0], frame[:, 1], frame[:, 2] = s["time_ps"], np.rint(s["energy"] * 1000), s["id"]

    def sort_once() -> Any:
        e = frame[:, 1]
        keep = (e >= 425_000) & (e <= 650_000)
        t = frame[keep, 0]
        return sort_coincidences(t, 4000.0, 100_000.0), frame[keep, 2]

    sort_once()
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 2.0:
        co, crys = sort_once()
        reps += 1
    res["sort_singles_per_s"] = round(reps * len(frame) / (time.perf_counter() - t0))
    res["sort_input_singles"] = len(frame)
    rng = np.random.default_rng(0)
    c1 = rng.integers(0, ring.n_crystals, 5_000_000)
    c2 = (c1 + ring.n_crystals // 2 + rng.integers(-60, 61, len(c1))) % ring.n_crystals
    sino = np.zeros(ring.n_views * ring.n_radial)
    bin_pairs(ring, c1, c2, sino)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 1.0:
        bin_pairs(ring, c1, c2, sino)
        reps += 1
    res["bin_events_per_s"] = round(reps * len(c1) / (time.perf_counter() - t0))

    _log("OSEM vs numpy MLEM ...")
    t0 = time.perf_counter()
    system = PetSystemMatrix(ring, 128, 320.0, 10)
    res["system_matrix_build_s"] = round(time.perf_counter() - t0, 2)
    res["system_matrix_nnz"] = system.nnz
    truth = phantom.activity_image(128, 320.0)
    y = rng.poisson(system.forward(truth / truth.max() * 50)).astype(np.float64)
    mult, add = np.ones_like(y), np.full_like(y, 0.1)
    x = osem(system, y, mult, add, n_iter=1)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        x = osem(system, y, mult, add, n_iter=1, x0=x)
        times.append(time.perf_counter() - t0)
    res["osem_iter_ms"] = round(1e3 * float(np.median(times)), 1)
    res["osem_views"] = ring.n_views
    res["osem_subsets"] = 10
    t0 = time.perf_counter()
    mlem_numpy(ring, y, mult, add, 128, 320.0, n_iter=1)
    res["mlem_numpy_iter_ms"] = round(1e3 * (time.perf_counter() - t0), 1)
    res["osem_speedup"] = round(res["mlem_numpy_iter_ms"] / res["osem_iter_ms"], 1)

    _log("ingest over TCP ...")
    res.update(_ingest(4.0))
    res["bars"] = {"crc_37mm": ">= 0.8", "bg_quant_error": "<= 0.05", "sort_singles_per_s": ">= 1e7",
                   "bin_events_per_s": ">= 1e7", "osem_iter_ms": "<= 100", "ingest_singles_per_s": ">= 5e6",
                   "lost_blocks": "0"}
    return res
