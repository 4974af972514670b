"""``medacq bench cameras``: GigE Vision ingest, thermal accuracy, photography colour accuracy.

One run (``--seconds S`` per ingest phase, default 10):

* **GVSP ingest** -- the endoscope simulator (1920×1080 BayerRG8 at 60 fps ≈ 124 MB/s, link
  paced at 1 GbE) runs in its own process on 127.0.x.y:3956; in this process:
  ``udp_raw_*``: a plain UDP socket receiving the same stream (the bench takes control over GVCP
  and counts bytes, nothing else); ``gvsp_*``: the ``gige`` driver (reassembly, resend,
  frames as arrays); ``aravis_fps``: ``arv-camera-test-0.8`` against the same simulator, where
  installed. ``gvsp_lost_frames`` counts frames the driver announced lost plus frames the camera
  sent that never came out (by block id).
* **Thermal accuracy** -- the thermal simulator with 1.5 K of accumulated drift (+0.4 K/min) and a
  fever case; the driver, then :class:`ThermalReconstructor` (Planck calibration + black-body
  drift correction). ``thermal_error_max_c``: the largest error, over the frames after the
  drift estimate settled, of the canthus maximum (skin) and of the black body, against the
  simulator's truth; ``thermal_error_uncorrected_max_c``: the same without drift correction.
* **Photography** -- one 4000×3000 BayerRG8 still on software trigger; ``deltaE_mean``/
  ``deltaE_max``: CIEDE2000 over the 24 ColorChecker patches after the fitted colour matrix.
* **Endoscope age** -- ``endoscope_age_p50_ms``/``_p99_ms``: glass-to-glass, from the simulated
  camera's frame time (leader timestamp on the camera's CLOCK_MONOTONIC origin) to this process
  holding the ``recon/endo0`` image (demosaic, white balance, distortion correction at 1080p,
  ``latest``), with ``medacq run`` and ``medacq recon`` as child processes on the same
  simulator, once the stage has preloaded its reconstructors; ``endoscope_recon_fps``: images
  that reached the subscriber per second; split at the driver's receipt of the frame
  (``endoscope_age_cam_to_driver_*``: camera frame buffer + 1 GbE link; ``..._driver_to_sub_*``:
  daemon, stage, ZeroMQ); the stage's ``process`` time (``endoscope_stage_proc_ms_*``) and
  superseded frames (``latest``).

``--under-load``: the GVSP ingest and the endoscope age idle, then again beside the whole default
rig (:func:`~medacq.daemon.bench.rig.idle_and_under_load`, as ``bench detector``/``ultrasound``/
``mri --under-load``): one row per figure (``idle``, ``under_load``, ratio), the 1-min load
averages, and the headline figures at top level (``endoscope_age_p99_ms`` under load,
``endoscope_age_p99_ms_idle``, ...); thermal and photography once, idle.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np

__all__ = ["bench_cameras", "print_result"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _serve(ip: str, opts: dict[str, Any], ready: Any, stop: Any, t0: Any) -> None:
    from medacq.simulators.gige_camera import GigEVisionServer, make

    dev = make(**opts)
    with GigEVisionServer(dev, ip, 3956, link_MBps=125.0) as srv:
        t0.value = srv._t0  # CLOCK_MONOTONIC of device time 0 (the leader timestamps count from it)
        ready.set()
        while not stop.wait(0.5):
            pass
        _ = srv


class _RawStream:
    """Protocol-only controller (no driver): take control, point the stream at a plain UDP
    socket, start, count what arrives; heartbeat while counting."""

    def __init__(self, ip: str) -> None:
        from medacq.protocols.genicam import parse_genicam_xml
        from medacq.protocols.gigev import Bootstrap, GvcpCodec, parse_genicam_url

        self.ip = ip
        self.codec = GvcpCodec("host")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)
        self.sock.connect((ip, 3956))
        self.req = 0
        url = self.read_mem(Bootstrap.FIRST_URL, 512).split(b"\0", 1)[0].decode()
        _, addr, length = parse_genicam_url(url)
        self.features = parse_genicam_xml(self.read_mem(addr, (length + 3) // 4 * 4)[:length])
        self.B = Bootstrap

    def _tx(self, msg_fn: Any) -> Any:
        from medacq.protocols._sansio import NEED_DATA

        self.req = self.req % 0xFFFF + 1
        msg = msg_fn(self.req)
        for _ in range(5):
            self.sock.send(self.codec.send(msg))
            try:
                self.codec.receive_data(self.sock.recv(2048))
            except socket.timeout:
                continue
            while (ev := self.codec.next_event()) is not NEED_DATA:
                if getattr(ev, "req_id", None) == self.req:
                    return ev
        raise RuntimeError(f"no answer to {type(msg).__name__}")

    def read_mem(self, addr: int, size: int) -> bytes:
        from medacq.protocols.gigev import ReadMemCmd

        out = bytearray()
        while len(out) < size:
            n = min(512, size - len(out))
            out += self._tx(lambda r, a=addr + len(out), n=n: ReadMemCmd(r, a, n)).data[:n]
        return bytes(out)

    def write(self, *writes: tuple[int, int]) -> None:
        from medacq.protocols.gigev import WriteRegCmd

        self._tx(lambda r: WriteRegCmd(r, tuple(writes)))

    def beat(self) -> None:
        from medacq.protocols.gigev import ReadRegCmd

        self._tx(lambda r: ReadRegCmd(r, (int(self.B.CONTROL_CHANNEL_PRIVILEGE),)))

    def run(self, seconds: float) -> dict[str, float]:
        B = self.B
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind((self.sock.getsockname()[0], 0))
        rx.settimeout(0.2)
        ip_u32 = struct.unpack(">I", socket.inet_aton(self.sock.getsockname()[0]))[0]
        self.write((B.CONTROL_CHANNEL_PRIVILEGE, 2))
        self.write((B.STREAM_CHANNEL_0_PACKET_SIZE, 9000), (B.STREAM_CHANNEL_0_IP_ADDRESS, ip_u32),
                   (B.STREAM_CHANNEL_0_PORT, rx.getsockname()[1]))
        self.write((self.features["AcquisitionStart"].address, 1))
        buf = bytearray(65536)
        n_bytes = n_pk = 0
        t_beat = t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < seconds:
            if now - t_beat > 0.5:
                self.beat()
                t_beat = now
            try:
                n = rx.recv_into(buf)
            except socket.timeout:
                continue
            n_bytes += n
            n_pk += 1
        dt = time.monotonic() - t0
        self.write((self.features["AcquisitionStop"].address, 1))
        self.write((B.CONTROL_CHANNEL_PRIVILEGE, 0))
        rx.close()
        self.sock.close()
        return {"udp_raw_MBps": n_bytes / dt / 1e6, "udp_raw_packets_per_s": n_pk / dt}


def _ingest_driver(ip: str, seconds: float) -> dict[str, Any]:
    from medacq.daemon.acquisition.devices import make_driver

    import resource

    d = make_driver("gige", "endo0", f"gige://{ip}", {"frame_rate_hz": 60})
    d.open()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    frames = lost = 0
    nbytes = 0
    blocks: list[int] = []
    try:
        d.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            for it in d.read(0.1):
                if hasattr(it, "data"):
                    frames += 1
                    nbytes += it.data.nbytes
                    blocks.append(it.meta["block_id"])
                else:
                    lost += it.lost_frames
        dt = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        d.stop()
        # frames still in flight when the clock stopped are not lost
        for it in d.read(0.3):
            if hasattr(it, "data"):
                blocks.append(it.meta["block_id"])
            else:
                lost += it.lost_frames
    finally:
        counters = dict(d.counters)
        d.close()
    # holes in the block ids the driver never announced (there should be none)
    unannounced = sum(max(0, ((b - a) % 0xFFFF) - 1) for a, b in zip(blocks, blocks[1:])) - lost
    return {"gvsp_fps": frames / dt, "gvsp_MBps": nbytes / dt / 1e6, "gvsp_packets_per_s": counters.get("packets", 0) / dt,
            "gvsp_lost_frames": lost + max(0, unannounced), "gvsp_unannounced_frames": max(0, unannounced),
            "gvsp_frames": frames,
            "gvsp_cpu_frac": (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / dt,
            "gvsp_resend_requests": counters.get("resend_requests", 0),
            "gvsp_frames_recovered": counters.get("frames_recovered", 0)}


def _aravis(ip: str, seconds: float) -> dict[str, Any]:
    exe = shutil.which("arv-camera-test-0.8")
    if exe is None:
        return {"aravis_fps": None, "aravis": "arv-camera-test-0.8 not installed (apt-get install aravis-tools)"}
    try:
        r = subprocess.run(["timeout", "-s", "INT", str(seconds + 2), exe, "-n", ip, "-f", "60"],
                           capture_output=True, text=True, timeout=seconds + 15)
        out = r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        out = str(exc.stdout or "")
    rates = [float(m.group(1)) for m in re.finditer(r"^\s*(\d+) frames?/s", out, re.M)]
    mib = [float(m.group(1)) for m in re.finditer(r"([\d.]+) MiB/s", out)]
    miss = re.search(r"n_missing_frames\s*=\s*(\d+)", out)
    done = re.search(r"n_completed_buffers\s*=\s*(\d+)", out)
    steady = rates[1:] or rates
    return {"aravis_fps": float(np.median(steady)) if steady else None,
            "aravis_MBps": float(np.median(mib[1:] or mib)) if mib else None,  # printed as "MiB/s"; it is 1e6 B/s
            "aravis_missing_frames": int(miss.group(1)) if miss else None,
            "aravis_completed": int(done.group(1)) if done else None}


def _q(values: list[float], pct: float) -> float | None:
    return round(float(np.percentile(values, pct)), 2) if values else None


def _endoscope_age(ip: str, t0: float, seconds: float) -> dict[str, Any]:
    """Glass-to-glass age: the simulated camera's frame time (leader timestamp + its clock's
    origin, both CLOCK_MONOTONIC) to the moment this process, a subscriber, holds the
    ``recon/endo0`` image. The daemon (``medacq run``) and the stage (``medacq recon``) run as
    child processes, as in a rig; the camera in its own process. The window starts once the
    stage has preloaded its reconstructors (a one-off at its start: numba kernels of other
    modalities compiled on a thread of the same process) and a first image has arrived.

    The age splits at the driver's receipt of the frame (header ``t_mono_ns``, the source's for
    ``recon/``): ``..._cam_to_driver_...`` (the camera's frame buffer and the link: a 1080p60
    BayerRG8 frame is 16.7 ms on the wire at 1 GbE) and ``..._driver_to_sub_...`` (daemon →
    ZeroMQ → stage queue → reconstruction → ZeroMQ → here)."""
    import tempfile
    from pathlib import Path

    from medacq.client import Subscriber
    from medacq.daemon.bench.runner import free_ports, service_status, spawn_services, stop_processes

    p = free_ports(4)
    ep = [f"tcp://127.0.0.1:{x}" for x in p]
    doc = {"daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1], "local_operator": True},
           "recon": {"data_endpoint": ep[2], "control_endpoint": ep[3]},
           "device": [{"name": "endo0", "kind": "gige", "address": f"gige://{ip}", "settings": {"frame_rate_hz": 60}}]}
    ages: list[float] = []
    cam_drv: list[float] = []
    drv_sub: list[float] = []
    raw_ages: list[float] = []
    stage: dict[str, Any] = {}
    preload_s = None
    with tempfile.TemporaryDirectory(prefix="medacq-cameras-") as tmp:
        procs = spawn_services(doc, Path(tmp))
        try:
            with Subscriber(ep[2], "recon/endo0") as sub, Subscriber(ep[0], "raw/endo0") as raw:
                t_first = None
                t_ask = 0.0
                deadline = time.monotonic() + 60 + seconds
                while time.monotonic() < deadline:
                    r = raw.recv(0)
                    while r is not None:  # the raw stream's age at a subscriber, for comparison
                        if t_first is not None and r.array is not None and r.header.get("t_device") is not None:
                            raw_ages.append((time.monotonic() - (t0 + float(r.header["t_device"]))) * 1e3)
                        r = raw.recv(0)
                    m = sub.recv(0.005)
                    if m is None or m.array is None or m.header.get("t_device") is None:
                        continue
                    now = time.monotonic()
                    if t_first is None:  # not measuring before the stage's preload has ended
                        if now - t_ask < 0.5:
                            continue
                        t_ask = now
                        preload_s = (service_status(ep[3]).get("preload") or {}).get("seconds")
                        if preload_s is None:
                            continue
                        t_first = now
                        continue
                    t_cam = t0 + float(m.header["t_device"])
                    t_drv = int(m.header["t_mono_ns"]) / 1e9
                    ages.append((now - t_cam) * 1e3)
                    cam_drv.append((t_drv - t_cam) * 1e3)
                    drv_sub.append((now - t_drv) * 1e3)
                    if now - t_first >= seconds:
                        break
                stage = (service_status(ep[3], 3.0).get("streams") or {}).get("endo0") or {}
        finally:
            stop_processes(procs)
    window = (time.monotonic() - t_first) if t_first is not None else seconds
    return {"endoscope_age_p50_ms": _q(ages, 50), "endoscope_age_p99_ms": _q(ages, 99),
            "endoscope_age_max_ms": _q(ages, 100),
            "endoscope_age_cam_to_driver_p50_ms": _q(cam_drv, 50), "endoscope_age_cam_to_driver_p99_ms": _q(cam_drv, 99),
            "endoscope_age_driver_to_sub_p50_ms": _q(drv_sub, 50), "endoscope_age_driver_to_sub_p99_ms": _q(drv_sub, 99),
            "endoscope_recon_fps": len(ages) / window if ages else 0.0,
            "endoscope_raw_age_p50_ms": _q(raw_ages, 50), "endoscope_raw_age_p99_ms": _q(raw_ages, 99),
            "endoscope_raw_fps": len(raw_ages) / window if raw_ages else 0.0,
            "endoscope_stage_proc_ms_p50": _ms(stage.get("proc_us_p50")),
            "endoscope_stage_proc_ms_p99": _ms(stage.get("proc_us_p99")),
            "endoscope_stage_superseded": stage.get("superseded"),
            "endoscope_stage_preload_s": preload_s}


def _ms(us: Any) -> float | None:
    return round(float(us) / 1e3, 2) if isinstance(us, (int, float)) else None


def _thermal(seconds: float) -> dict[str, Any]:
    from medacq.daemon.acquisition.devices import make_driver
    from medacq.daemon.recon.algorithms.cameras import counts_to_celsius
    from medacq.daemon.recon.modalities.cameras import ThermalReconstructor
    from medacq.simulators.gige_camera import GigEVisionServer, make

    out: dict[str, Any] = {}
    errs: list[float] = []
    unc: list[float] = []
    for fever in (False, True):
        dev = make(model="thermal", fever=fever, drift0_k=1.5, drift_k_per_min=0.4, seed=7)
        with GigEVisionServer(dev, "127.0.0.1", 0, link_MBps=0) as srv:
            d = make_driver("gige", "th0", srv.address, {"frame_rate_hz": 30})
            d.open()
            try:
                desc = d.descriptor()
                rec = ThermalReconstructor(desc, {"drift_tau_frames": 10})
                d.start()
                n = 0
                t0 = time.monotonic()
                while time.monotonic() - t0 < seconds:
                    for f in d.read(0.2):
                        if not hasattr(f, "data"):
                            continue
                        outs = rec.process({}, f.data)
                        n += 1
                        truth = dev.model.truth()
                        raw_c = counts_to_celsius(f.data, desc.geometry["radiometry"])
                        y0, x0, y1, x1 = truth["rois"]["canthus"]
                        unc.append(abs(float(raw_c[y0:y1, x0:x1].max()) - truth["canthus_max_c"]))
                        if n > 30:  # the running drift estimate has settled (3 time constants)
                            m = outs[1].meta
                            errs.append(max(abs(m["canthus_max_c"] - truth["canthus_max_c"]),
                                            abs(m["blackbody_c"] - truth["blackbody_c"])))
                d.stop()
            finally:
                d.close()
        out["thermal_fever_detected" if fever else "thermal_false_alarm"] = bool(outs[1].meta["fever"])
    out.update({"thermal_error_max_c": max(errs) if errs else None,
                "thermal_error_uncorrected_max_c": max(unc) if unc else None, "thermal_frames": len(errs)})
    return out


def _photo() -> dict[str, Any]:
    from medacq.daemon.acquisition.devices import make_driver
    from medacq.daemon.recon.modalities.cameras import PhotoReconstructor
    from medacq.simulators.gige_camera import GigEVisionServer, make

    dev = make(model="photo")
    with GigEVisionServer(dev, "127.0.0.1", 0, link_MBps=0) as srv:
        d = make_driver("gige", "photo0", srv.address, {"trigger": "software"})
        d.open()
        try:
            desc = d.descriptor()
            d.start()
            d.trigger()  # type: ignore[attr-defined]
            frame = None
            t0 = time.monotonic()
            while frame is None and time.monotonic() - t0 < 20:
                frame = next((f for f in d.read(0.5) if hasattr(f, "data")), None)
            d.stop()
        finally:
            d.close()
    if frame is None:
        return {"deltaE_mean": None, "photo": "no still arrived"}
    t = time.perf_counter()
    outs = PhotoReconstructor(desc, {"publish_image": False}).process({}, frame.data)
    meta = outs[0].meta
    return {"deltaE_mean": meta["deltaE_mean"], "deltaE_max": meta["deltaE_max"],
            "photo_recon_s": time.perf_counter() - t, "photo_shape": list(frame.data.shape)}


def _free_loopback() -> str:
    for _ in range(50):
        ip = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, 3956))
                return ip
            except OSError:
                continue
    raise RuntimeError("no free 127.x.y.z:3956")


def bench_cameras(args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the module doc. ``--under-load``: the GVSP ingest and the endoscope age idle,
    then beside the whole default rig (:func:`~medacq.daemon.bench.rig.idle_and_under_load`: one
    row per figure); thermal and photography accuracy once, idle (they do not depend on load)."""
    if getattr(args, "under_load", False):
        from medacq.daemon.bench.rig import idle_and_under_load

        res = idle_and_under_load("cameras", _ingest_and_age, args)
        rows = {r["figure"]: r for r in res.get("results", [])}
        for k in ("endoscope_age_p99_ms", "endoscope_age_p50_ms", "gvsp_fps", "gvsp_lost_frames"):
            res[f"{k}_idle"] = rows.get(k, {}).get("idle")
            res[k] = rows.get(k, {}).get("under_load")
        res.update(_accuracy(args))
        res["bars"] = {"endoscope_age_p99_ms": "<= 50 under the rig", "gvsp_lost_frames": "0 over 60 s",
                       "thermal_error_max_c": "<= 0.3", "deltaE_mean": "<= 2"}
        return res
    res = _ingest_and_age(args)
    res.update(_accuracy(args))
    return res


def _seconds(args: argparse.Namespace) -> float:
    return float(args.seconds) if getattr(args, "seconds", None) is not None else 10.0


def _ingest_and_age(args: argparse.Namespace) -> dict[str, Any]:
    """GVSP ingest (plain socket, driver, Aravis) and the endoscope age, on one simulator."""
    seconds = _seconds(args)
    res: dict[str, Any] = {"seconds": seconds, "machine_cores": __import__("os").cpu_count(),
                           "loadavg_1min": round(__import__("os").getloadavg()[0], 2)}
    ip = _free_loopback()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    t0 = ctx.Value("d", 0.0)
    proc = ctx.Process(target=_serve, args=(ip, {"model": "endoscope", "fps": 60.0}, ready, stop, t0), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the endoscope simulator did not start")
        _log(f"cameras: 1080p60 BayerRG8 simulator on {ip}:3956; plain UDP socket {seconds:g} s")
        res.update(_RawStream(ip).run(seconds))
        time.sleep(0.5)
        _log("cameras: gige driver")
        res.update(_ingest_driver(ip, seconds))
        time.sleep(0.5)
        _log("cameras: arv-camera-test-0.8")
        res.update(_aravis(ip, seconds))
        time.sleep(0.5)
        _log("cameras: endoscope glass-to-glass age (driver → daemon → stage → subscriber)")
        res.update(_endoscope_age(ip, t0.value, min(seconds, 20.0)))
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    res["gvsp_vs_udp_raw"] = res["gvsp_MBps"] / res["udp_raw_MBps"] if res.get("udp_raw_MBps") else None
    res["loadavg_1min_end"] = round(__import__("os").getloadavg()[0], 2)
    return res


def _accuracy(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    _log("cameras: thermal accuracy")
    res.update(_thermal(min(_seconds(args), 4.0)))
    _log("cameras: photography ΔE2000")
    res.update(_photo())
    return res


def print_result(result: dict[str, Any]) -> None:
    if "results" in result:  # --under-load: one row per figure
        print(f"under load: {result.get('under_load')}; 1-min load average {result.get('loadavg_1min_under_load')}")
        print(f"{'figure':40s} {'idle':>12s} {'under_load':>12s} {'ratio':>8s}")
        for r in result["results"]:
            print(f"{r['figure']:40s} {_cell(r['idle']):>12s} {_cell(r['under_load']):>12s} {_cell(r['ratio']):>8s}")
        result = {k: v for k, v in result.items() if k not in ("results", "under_load", "loadavg_1min_under_load")}
    for k, v in result.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
