"""``medacq bench mri``: image accuracy, contrast, reconstruction latency, simulator speed.

One run, all over real TCP and ZeroMQ on loopback: ``medacq sim mri`` (in-process
:class:`~medacq.simulators.adapters.SimulatorServer`, unpaced so the bench is quick -- the
physics is the same) ← the daemon running the ``mri`` driver's built-in 256² spin echo (TE 15 ms, TR 500 ms,
FOV 200 mm, 50 kHz) and a 128² spoiled gradient echo (TE 6 ms, TR 50 ms, 30°) → the ``mri``
reconstructor, line by line.

* ``nrmse_se``: ``‖a·img − truth‖ / ‖truth‖`` of the 256² spin echo (``a`` the least-squares
  scale; the image is in arbitrary units) against the phantom's ground truth: the compartments'
  Bloch steady-state signals painted on a 4× supersampled raster of the ellipses (so Gibbs
  ringing and partial volume count as error). Bar ≤ 0.05.
* ``contrast_error_max``: in regions of every compartment at least 4 pixels from any edge (≥ 9 pixels), the ratio of its
  mean to grey matter's, against the same ratio of the Bloch values (spin echo and gradient
  echo); the largest relative deviation. Bar ≤ 0.05.
* ``recon_p99_ms``: the reconstructor's update of a 256² two-coil image (one FFT per line as it
  arrives), 99th percentile. Bar ≤ 20 ms.
* ``e2e_age_p99_ms``: a paced 64² gradient echo (TR 10 ms, 8 lines per ``run_seq``) from a
  ``medacq sim mri`` child process through ``medacq run`` and ``medacq recon`` child processes
  (real ZeroMQ): the complete image's age at a ``recon/mri0`` subscriber in this process after
  the reply carrying its last line arrived at the driver, 99th percentile over 100 images
  (0.64 s each); ``e2e_raw_age_*``: the last line's raw frame at a subscriber, for the split.
  Bar ≤ 50 ms under the whole rig (``--under-load``; without it, the MRI rig alone).
* ``sim_realtime_factor``: the 256² spin echo's duration (TR × lines) over the simulator's time
  to decode and play it (machine code → timelines → every ADC sample), in process. Bar ≥ 2.
* ``pf_nrmse_pocs``: partial Fourier, 5/8 of the phase lines: the first 80 of the 128² gradient
  echo's lines (those a 5/8 scan acquires, same acquisition), POCS-reconstructed, against the
  image of all 128 lines (NRMSE after the least-squares scale). Bar ≤ 0.05 (ours, the issue
  asks for the capability); ``pf_nrmse_homodyne`` and ``pf_nrmse_zero_filled`` beside it.

``--under-load``: only the age figure, twice: idle, then beside the whole default rig (``bench
rig``'s load, :func:`~medacq.daemon.bench.rig.idle_and_under_load`); ``e2e_age_p99_ms`` is the
figure under load, ``e2e_age_p99_ms_idle`` the idle one.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

__all__ = ["bench_mri"]


def _endpoints() -> dict[str, Any]:
    from medacq.daemon.bench.runner import free_ports

    ep = [f"tcp://127.0.0.1:{p}" for p in free_ports(4)]
    return {"daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1], "local_operator": True},
            "recon": {"data_endpoint": ep[2], "control_endpoint": ep[3]}}


def _acquire(kind: str, n: int, te: float, tr: float, flip: float) -> tuple[Any, Any, list]:
    """One image through the daemon (in this process) from an unpaced simulator; the raw line
    frames as a subscriber of ``raw/mri0`` gets them."""
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.protocols.stream import StreamDescriptor
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.mri import make

    iface = make()
    seq = {"sequence": kind, "matrix": n, "te_ms": te, "tr_ms": tr, "flip_deg": flip, "fov_mm": 200,
           "bandwidth_hz": 50000}
    got: dict[int, tuple[dict, np.ndarray]] = {}
    with SimulatorServer(iface, "tcp", paced=False) as sim:
        cfg = parse_config({**_endpoints(), "device": [{
            "name": "mri0", "kind": "mri", "address": sim.tcp_address,
            "settings": {"sequence": seq, "repetitions": 2, "lines_per_run": 8, "dummy_scans": 8}}]})
        with Subscriber(cfg.daemon.data_endpoint, "raw/mri0") as sub:
            d = AcquisitionDaemon(cfg).start()
            deadline = time.monotonic() + 60
            try:
                # the second image: the first one's opening lines may go before the subscription
                # reaches the publisher (ZeroMQ's slow joiner)
                for h, a in sub.frames(timeout=10):
                    meta = h.get("meta") or {}
                    if h.get("stream") == "mri0" and meta.get("image") == 1:
                        got[int(meta["line"])] = ({"meta": meta}, a.copy())
                    if len(got) >= n or time.monotonic() > deadline:
                        break
            finally:
                d.shutdown()
    frames = [got[k] for k in sorted(got)]
    desc = StreamDescriptor(stream="mri0", modality="mri", dtype="<c8", shape=[2, n], axes=["coil", "readout"],
                            geometry={"fov_m": [0.2, 0.2], "matrix": [n, n]})
    return iface, desc, frames


def _recon(desc: Any, frames: list) -> tuple[np.ndarray, list[float]]:
    from medacq.daemon.recon.modalities.mri import MriReconstructor

    r = MriReconstructor(desc, {"kspace_view": False})
    times = []
    img = None
    for h, a in frames:
        t0 = time.perf_counter()
        out = r.process(h, a)
        times.append((time.perf_counter() - t0) * 1e3)
        img = out[0].data
    assert img is not None
    return img, times


def _rois(ph: Any, n: int, fov: float) -> dict[int, np.ndarray]:
    from scipy.ndimage import binary_erosion

    masks = ph.masks(n, fov, 4)
    rois = {}
    for i in range(ph.n):
        inner = [j for j in range(ph.n) if ph.parent[j] == i]
        excl = (masks[i] >= 1.0)
        for j in inner:
            excl &= masks[j] <= 0.0
        # not inside any other non-child ellipse either
        for j in range(ph.n):
            if j != i and j not in inner and ph.parent[i] != j and masks[j].any() and j > i:
                excl &= masks[j] <= 0.0
        excl = binary_erosion(excl, iterations=4)  # 4 px (3 mm at 256²) away from every edge: no Gibbs
        if excl.sum() >= 9:
            rois[i] = excl
    return rois


def _contrast(img: np.ndarray, ph: Any, signal: np.ndarray, fov: float) -> dict[str, float]:
    n = img.shape[0]
    rois = _rois(ph, n, fov)
    ref = 3  # grey matter
    out = {}
    for i, m in rois.items():
        if i == ref:
            continue
        meas = img[m].mean() / img[rois[ref]].mean()
        bloch = signal[i] / signal[ref]
        out[f"{i}:{ph.tissue[i]}"] = float(abs(meas / bloch - 1))
    return out


E2E_IMAGES = 100
"""Images whose age ``e2e_age_p99_ms`` is the 99th percentile of (20 made it the second-largest of 20)."""


def _e2e_age(images: int = E2E_IMAGES) -> dict[str, Any]:
    """The image's age after its last line, through ``medacq run`` and ``medacq recon`` child
    processes (as a rig runs them; real ZeroMQ) to a subscriber in this process; the console is a
    ``medacq sim mri`` child process, as a console is its own machine. The window opens once the
    stage has preloaded its reconstructors (a one-off at its start). ``e2e_raw_age_*``: the raw
    frame of the image's last line at a subscriber of the daemon, for the split."""
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from medacq.client import Subscriber
    from medacq.daemon.bench.runner import free_port, service_status, spawn_services, stop_processes

    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", "sim", "mri", "--tcp", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ages: list[float] = []
    raw_ages: list[float] = []
    try:
        t_end = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if sim.poll() is not None or time.monotonic() > t_end:
                    return {"e2e_age_p99_ms": None, "e2e_error": "medacq sim mri did not start"}
                time.sleep(0.1)
        doc = {**_endpoints(), "device": [{
            "name": "mri0", "kind": "mri", "address": f"tcp://127.0.0.1:{port}",
            "settings": {"sequence": {"sequence": "gre", "matrix": 64, "te_ms": 5, "tr_ms": 10, "flip_deg": 30},
                         "lines_per_run": 8, "dummy_scans": 0}}]}
        with tempfile.TemporaryDirectory(prefix="medacq-mri-") as tmp:
            procs = spawn_services(doc, Path(tmp))
            try:
                t_pre = time.monotonic() + 60
                while (service_status(doc["recon"]["control_endpoint"]).get("preload") or {}).get("seconds") is None:
                    if time.monotonic() > t_pre or any(p.poll() is not None for p in procs):
                        return {"e2e_age_p99_ms": None, "e2e_error": "the stage did not preload within 60 s"}
                    time.sleep(0.2)
                with Subscriber(doc["recon"]["data_endpoint"], "recon/mri0") as sub, \
                        Subscriber(doc["daemon"]["data_endpoint"], "raw/mri0") as raw:
                    deadline = time.monotonic() + 10 + images * 1.0
                    while len(ages) < images and time.monotonic() < deadline:
                        while (r := raw.recv(0)) is not None:
                            if r.array is not None and (r.header.get("meta") or {}).get("last"):
                                raw_ages.append((time.monotonic_ns() - int(r.header["t_mono_ns"])) / 1e6)
                        m = sub.recv(0.001)  # short: the raw subscriber is read between these
                        if m is None or m.array is None:
                            continue
                        h, meta = m.header, m.header.get("meta") or {}
                        if meta.get("complete") and meta.get("last_line") == 63 and h.get("source"):
                            ages.append((time.monotonic_ns() - int(h["source"]["t_mono_ns"])) / 1e6)
            finally:
                stop_processes(procs)
    finally:
        sim.terminate()
        sim.wait(10)

    def q(v: list[float], pct: float) -> float | None:
        return round(float(np.percentile(v, pct)), 2) if v else None

    return {"e2e_age_p99_ms": q(ages, 99), "e2e_age_median_ms": q(ages, 50), "e2e_images": len(ages),
            "e2e_raw_age_p99_ms": q(raw_ages, 99), "e2e_raw_age_median_ms": q(raw_ages, 50)}


def _partial_fourier(frames: list, n: int, fraction: float = 0.625) -> dict[str, Any]:
    from medacq.daemon.recon.algorithms.mri import CartesianKspace, centred_ifft2, homodyne, pocs, rss

    ks = CartesianKspace(2, n, n)
    for h, a in frames:
        ks.add(int(h["meta"]["line"]), a)
    full = rss(centred_ifft2(ks.k))
    na = int(np.ceil(n * fraction))
    kp = ks.k.copy()
    kp[:, na:] = 0

    def nrmse(img: np.ndarray) -> float:
        a = float((img * full).sum() / (img ** 2).sum())
        return round(float(np.linalg.norm(a * img - full) / np.linalg.norm(full)), 4)

    return {"pf_fraction": fraction, "pf_lines": na, "pf_nrmse_pocs": nrmse(rss(pocs(kp, na))),
            "pf_nrmse_homodyne": nrmse(np.sqrt((homodyne(kp, na).clip(min=0) ** 2).sum(0))),
            "pf_nrmse_zero_filled": nrmse(rss(centred_ifft2(kp)))}


def _age_only(args: argparse.Namespace) -> dict[str, Any]:
    return _e2e_age()


def bench_mri(args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the module doc; ``--under-load``: the age idle and beside the whole rig."""
    if getattr(args, "under_load", False):
        from medacq.daemon.bench.rig import idle_and_under_load

        res = idle_and_under_load("mri", _age_only, args)
        rows = {r["figure"]: r for r in res.get("results", [])}
        age = rows.get("e2e_age_p99_ms", {})
        res["e2e_age_p99_ms_idle"] = age.get("idle")
        res["e2e_age_p99_ms"] = age.get("under_load")
        res["bars"] = {"e2e_age_p99_ms": "<= 50 under the whole rig"}
        return res
    return _bench_mri(args)


def _bench_mri(args: argparse.Namespace) -> dict[str, Any]:
    from medacq.protocols.marga import decode
    from medacq.protocols.models.mri_phantom import spin_echo_signal, spoiled_gre_signal
    from medacq.protocols.mri_sequences import CartesianSequence, SequenceParams, SystemLimits
    from medacq.simulators.mri import make

    res: dict[str, Any] = {}
    n, te, tr, fov = 256, 15.0, 500.0, 0.2
    iface, desc, frames = _acquire("se", n, te, tr, 90)
    res["se_lines"] = len(frames)
    img, times = _recon(desc, frames)
    ph = iface.model.phantom
    sig = spin_echo_signal(ph.m0, ph.t1, ph.t2, te * 1e-3, tr * 1e-3)
    truth = ph.image(sig, n, fov, supersample=4)
    a = float((img * truth).sum() / (truth ** 2).sum())
    res["nrmse_se"] = round(float(np.linalg.norm(img / a - truth) / np.linalg.norm(truth)), 4)
    ce_se = _contrast(img, ph, sig, fov)
    res["recon_p99_ms"] = round(float(np.percentile(times, 99)), 3)
    res["recon_median_ms"] = round(float(np.median(times)), 3)

    iface2, desc2, frames2 = _acquire("gre", 128, 6.0, 50.0, 30)
    img2, _ = _recon(desc2, frames2)
    sig2 = spoiled_gre_signal(ph.m0, ph.t1, ph.t2, 6e-3, 50e-3, 30)
    ce_gre = _contrast(img2, ph, sig2, fov)
    res["contrast_error_se"] = {k: round(v, 4) for k, v in ce_se.items()}
    res["contrast_error_gre"] = {k: round(v, 4) for k, v in ce_gre.items()}
    res["contrast_error_max"] = round(max(list(ce_se.values()) + list(ce_gre.values())), 4)
    res.update(_partial_fourier(frames2, 128))

    # simulator speed, in process: decode + play the whole 256² spin echo
    seq = CartesianSequence(SequenceParams(sequence="se", matrix=n, te_ms=te, tr_ms=tr, fov_mm=200,
                                           bandwidth_hz=50000), SystemLimits())
    model = make().model
    t_seq = 0.0
    t0 = time.perf_counter()
    for first in range(0, n, 8):
        r = model.run(decode(seq.lines(first, 8)), t_seq)
        t_seq += r.duration_s
    wall = time.perf_counter() - t0
    res["sim_seconds_of_sequence"] = round(t_seq, 2)
    res["sim_wall_s"] = round(wall, 3)
    res["sim_realtime_factor"] = round(t_seq / wall, 1)
    res.update(_e2e_age())
    res["bars"] = {"nrmse_se": "<= 0.05", "contrast_error_max": "<= 0.05", "recon_p99_ms": "<= 20",
                   "sim_realtime_factor": ">= 2", "pf_nrmse_pocs": "<= 0.05 (ours)",
                   "e2e_age_p99_ms": "<= 50 under the whole rig (here: the MRI rig alone; --under-load for the rig)"}
    return res
