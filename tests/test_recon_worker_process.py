"""Reconstructors in a worker process of their own (medacq.daemon.recon.worker_process)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from medacq.client import ControlClient, Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.base import ReconstructorError
from medacq.daemon.recon.modalities.synthetic import RunningMean
from medacq.daemon.recon.stage import ReconStage
from medacq.daemon.recon.worker_process import ProcessReconstructor, WorkerProcess
from medacq.protocols.stream import StreamDescriptor
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame

from conftest import wait_for


def _desc(shape=(3, 5)) -> StreamDescriptor:
    return StreamDescriptor(stream="w0", modality="synthetic", dtype="<i2", shape=list(shape), axes=["a", "b"])


def _frames(n: int, shape=(3, 5), seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-1000, 1000, shape, dtype=np.int16) for _ in range(n)]


def _header(seq: int) -> dict:
    return {"series": "s1", "seq": seq, "t_host_ns": 0, "t_mono_ns": 0}


def test_outputs_equal_the_same_reconstructor_in_a_thread():
    w = WorkerProcess("w0")
    try:
        remote = ProcessReconstructor(w, RunningMean, _desc(), {"alpha": 0.25})
        local = RunningMean(_desc(), {"alpha": 0.25})
        assert w.pid is not None and w.pid != os.getpid()
        frames = _frames(7)
        got = [remote.process(_header(i), f) for i, f in enumerate(frames[:3])]
        got += remote.process_batch([_header(i) for i in range(3, 7)], frames[3:])  # one call, 4 frames in shm
        want = [local.process(_header(i), f) for i, f in enumerate(frames)]
        assert len(got) == 7
        for g, x in zip(got, want):
            assert [o.name for o in g] == [o.name for o in x] and g[0].axes == ["a", "b"]
            np.testing.assert_array_equal(g[0].data, x[0].data)
            assert g[0].descriptor_meta == {"alpha": 0.25}
        assert remote.control("reset", {}) == {"reset": True}
        with pytest.raises(ReconstructorError, match="no action 'explode'"):
            remote.control("explode", {})  # the child's error, its message kept
        assert remote.warming is False
        # a bigger frame than the shared block holds: the block grows, the result is still exact
        big = _frames(2, (300, 200))
        r2 = ProcessReconstructor(w, RunningMean, _desc((300, 200)), {"alpha": 1.0})
        out = r2.process_batch([_header(0), _header(1)], big)
        np.testing.assert_array_equal(out[1][0].data, big[1].astype(np.float32))
        assert w.status()["shm_bytes"] >= 2 * big[0].nbytes
        remote.close()
        r2.close()
    finally:
        w.stop()
    assert w.pid is None


def test_a_dead_worker_is_an_error_then_restarted():
    w = WorkerProcess("w0")
    try:
        r = ProcessReconstructor(w, RunningMean, _desc(), {"alpha": 1.0})
        f = _frames(1)[0]
        np.testing.assert_array_equal(r.process(_header(0), f)[0].data, f.astype(np.float32))
        pid = w.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(ReconstructorError, match="exited"):
            r.process(_header(1), f)  # that frame is an error, not a silent loss
        assert r.warming is False  # so the stage calls again, which restarts it
        deadline = time.monotonic() + 10
        while True:
            try:
                out = r.process(_header(2), f)
                break
            except ReconstructorError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        np.testing.assert_array_equal(out[0].data, f.astype(np.float32))
        assert w.pid not in (None, pid) and w.restarts == 1 and w.last_exit == -signal.SIGKILL
    finally:
        w.stop()


@pytest.mark.parametrize("iso", ["process", "realtime"])
def test_stage_runs_a_declared_process_stream_end_to_end(endpoints, iso):
    """``[recon.isolation] syn0 = "process"``: the same frames out as the thread test
    (tests/test_recon_stage.py), the reconstructor in another process, gone when the stage stops."""
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        settings = {"shape": [3, 8], "rate_hz": 50.0, "seed": 11}
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": settings}],
                            "recon": {**endpoints["recon"], "settings": {"synthetic": {"alpha": 0.5}},
                                      "isolation": {"syn0": iso}, "realtime_priority": 5}})
        stage = ReconStage(cfg).start()
        try:
            with Subscriber(cfg.recon.data_endpoint, "recon/syn0") as rsub:
                d = AcquisitionDaemon(cfg).start()
                try:
                    # 50 frames/s: the fifo queue (64 frames) holds the child's start (~0.5 s) and
                    # the round trips' scheduling delays on a loaded machine (each frame wakes
                    # the child and then this process: ~1 ms each with other work on 2 cores)
                    out = list(rsub.frames(timeout=15, max_frames=40))
                    desc = rsub.descriptors["recon/syn0"]
                    with ControlClient(cfg.recon.control_endpoint) as c:
                        st = c.request("status")["streams"]["syn0"]
                        assert c.request("action", target="syn0", action="reset") == {"reset": True}
                finally:
                    d.shutdown()
        finally:
            stage.shutdown()
    assert st["reconstructor"] == "RunningMean" and st["isolation"] == iso and st["errors"] == 0
    assert st["worker_process"]["realtime_priority"] == (5 if iso == "realtime" else None)
    assert st["worker_process"]["realtime"] is (iso == "realtime" and _rt_allowed(5))
    child = st["worker_process"]["pid"]
    assert child is not None and child != os.getpid()
    assert wait_for(lambda: not os.path.exists(f"/proc/{child}"), 5)  # stopped with the stage
    assert len(out) == 40
    seqs = [h["source"]["seq"] for h, _ in out]
    assert seqs == list(range(seqs[0], seqs[0] + 40))
    sc = SynthConfig(**settings)
    mean = None
    for s in range(seqs[-1] - 40, seqs[-1] + 1):
        x = synth_frame(sc, max(s, 0)).astype(np.float32)
        mean = x if mean is None else mean + np.float32(0.5) * (x - mean)
    np.testing.assert_allclose(out[-1][1], mean, rtol=1e-5, atol=1e-6)
    assert out[-1][0]["source"]["stream"] == "syn0"
    assert desc["modality"] == "synthetic" and desc["device"] == "recon:RunningMean"


def _rt_allowed(prio: int) -> bool:
    """May this process's children take SCHED_RR at ``prio`` (CAP_SYS_NICE, as root, or RLIMIT_RTPRIO)?"""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    if soft == resource.RLIM_INFINITY or soft >= prio:
        return True
    try:
        with open("/proc/self/status") as f:
            eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(eff & (1 << 23))  # CAP_SYS_NICE


def test_realtime_isolation_runs_the_reconstructor_thread_at_sched_rr_or_says_why_not():
    """``rt_priority``: the child's reconstructor thread asks for SCHED_RR before its first frame.
    Where the kernel allows it the policy is in force (read back from the kernel); where it does
    not, the refusal is reported and frames still come out exact at the normal class."""
    w = WorkerProcess("w0", rt_priority=7)
    try:
        r = ProcessReconstructor(w, RunningMean, _desc(), {"alpha": 1.0})
        assert w.status()["realtime"] is False  # built at the normal class (a background build stays there)
        f = _frames(1)[0]
        np.testing.assert_array_equal(r.process(_header(0), f)[0].data, f.astype(np.float32))
        st = w.status()
        assert st["realtime_priority"] == 7
        if _rt_allowed(7):
            assert st["realtime"] is True and st["realtime_error"] is None
            assert os.sched_getscheduler(st["pid"]) == os.SCHED_RR
            assert os.sched_getparam(st["pid"]).sched_priority == 7
        else:
            assert st["realtime"] is False and "not permitted" in (st["realtime_error"] or "")
        np.testing.assert_array_equal(r.process(_header(1), f)[0].data, f.astype(np.float32))
    finally:
        w.stop()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the stage's own threads are never changed
