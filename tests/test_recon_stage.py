"""Reconstruction stage end to end: raw frames in, recon frames out, failures survived."""

from __future__ import annotations

import time

import numpy as np
import zmq

from medacq.client import ControlClient, RequestFailed, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.daemon.recon.stage import ReconStage
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.protocols.stream import HeaderTemplate, MessageKind, StreamDescriptor, StreamHeader, encode_header
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame

from conftest import wait_for

import pytest


def test_running_mean_end_to_end(endpoints):
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        settings = {"shape": [3, 8], "rate_hz": 200.0, "seed": 11}
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": settings}],
                            "recon": {**endpoints["recon"], "settings": {"synthetic": {"alpha": 0.5}}}})
        stage = ReconStage(cfg).start()
        with Subscriber(cfg.recon.data_endpoint, "recon/syn0") as rsub:
            d = AcquisitionDaemon(cfg).start()
            try:
                out = list(rsub.frames(timeout=10, max_frames=40))
                with ControlClient(cfg.recon.control_endpoint) as c:
                    st = c.request("status")["streams"]["syn0"]
                    assert c.request("action", target="syn0", action="reset") == {"reset": True}
                    with pytest.raises(RequestFailed, match="no action"):
                        c.request("action", target="syn0", action="explode")
            finally:
                d.shutdown()
                stage.shutdown()
    assert len(out) == 40
    sc = SynthConfig(**settings)
    seqs = [h["source"]["seq"] for h, _ in out]
    assert seqs == list(range(seqs[0], seqs[0] + 40))  # every source frame, in order
    # recompute the running mean from what the simulator generated: with alpha 0.5, where the
    # stage started its mean no longer matters after 40 frames (< 2^-40)
    mean = None
    for s in range(seqs[-1] - 40, seqs[-1] + 1):
        x = synth_frame(sc, max(s, 0)).astype(np.float32)
        mean = x if mean is None else mean + np.float32(0.5) * (x - mean)
    np.testing.assert_allclose(out[-1][1], mean, rtol=1e-5, atol=1e-6)
    assert out[-1][0]["source"]["stream"] == "syn0" and out[-1][0]["axes"] == ["channel", "sample"]
    assert out[-1][0]["t_mono_ns"] == out[-1][0]["source"]["t_mono_ns"]
    assert st["reconstructor"] == "RunningMean" and st["errors"] == 0


def test_stage_survives_malformed_frames(endpoints):
    """Wrong shape, wrong dtype, garbage headers and a descriptor change mid-stream."""
    cfg = parse_config({**endpoints})
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(cfg.daemon.data_endpoint)
    stage = ReconStage(cfg).start()
    series = "2b1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a11"
    try:
        with Subscriber(cfg.recon.data_endpoint, "recon/") as rsub:
            time.sleep(0.5)

            def desc(shape):
                d = StreamDescriptor(stream="s", modality="synthetic", dtype="<f4", shape=shape, axes=["a", "b"])
                return encode_header(StreamHeader(stream="s", kind=MessageKind.DESCRIPTOR, series=series, seq=0,
                                                  t_host_ns=1, t_mono_ns=2, descriptor=d))

            tpl = HeaderTemplate("s", series, "<f4", [2, 2], ["a", "b"], "")
            pub.send_multipart([b"raw/s", desc([2, 2])])
            time.sleep(0.2)
            pub.send_multipart([b"raw/s", tpl.frame(0, 1, 2), np.ones((2, 2), "<f4").tobytes()])
            pub.send_multipart([b"raw/s", b"{garbage", b""])
            bad_shape = HeaderTemplate("s", series, "<f4", [3, 3], ["a", "b"], "")
            pub.send_multipart([b"raw/s", bad_shape.frame(1, 1, 2), np.ones((3, 3), "<f4").tobytes()])
            bad_dtype = HeaderTemplate("s", series, "<i2", [2, 2], ["a", "b"], "")
            pub.send_multipart([b"raw/s", bad_dtype.frame(2, 1, 2), np.ones((2, 2), "<i2").tobytes()])
            pub.send_multipart([b"raw/s", tpl.frame(3, 1, 2), np.full((2, 2), 3, "<f4").tobytes()])
            # the descriptor changes mid-stream: the reconstructor is rebuilt for the new shape
            pub.send_multipart([b"raw/s", desc([1, 4])])
            time.sleep(0.2)
            tpl2 = HeaderTemplate("s", series, "<f4", [1, 4], ["a", "b"], "")
            pub.send_multipart([b"raw/s", tpl2.frame(4, 1, 2), np.full((1, 4), 7, "<f4").tobytes()])
            outs = list(rsub.frames(timeout=3, max_frames=3))
        st = wait_for(lambda: stage.status()["streams"].get("s"), 5)
    finally:
        stage.shutdown()
        pub.close(0)
    assert [o[1].shape for o in outs] == [(2, 2), (2, 2), (1, 4)]
    assert [o[0]["source"]["seq"] for o in outs] == [0, 3, 4]
    np.testing.assert_array_equal(outs[2][1], np.full((1, 4), 7, "<f4"))
    assert st["errors"] == 2 and "descriptor says" in st["last_error"]
    assert stage.sub.counters.bad_headers == 1


def test_stage_reports_every_source_frame_it_did_not_use(endpoints):
    """A hole in the source's seq (never announced) and frames the stage drops itself (its
    queue full) reach recon subscribers as gaps: processed + reported = sent."""
    cfg = parse_config({**endpoints, "recon": {**endpoints["recon"], "queue_depth": 2}})
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(cfg.daemon.data_endpoint)
    stage = ReconStage(cfg).start()
    series = "6f1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a12"
    try:
        with Subscriber(cfg.recon.data_endpoint, "recon/", rcvhwm=0) as rsub:
            time.sleep(0.5)
            d = StreamDescriptor(stream="s", modality="synthetic", dtype="<f4", shape=[2, 2], axes=["a", "b"])
            pub.send_multipart([b"raw/s", encode_header(StreamHeader(
                stream="s", kind=MessageKind.DESCRIPTOR, series=series, seq=0, t_host_ns=1, t_mono_ns=2,
                descriptor=d))])
            time.sleep(0.2)
            tpl = HeaderTemplate("s", series, "<f4", [2, 2], ["a", "b"], "")
            one = np.ones((2, 2), "<f4").tobytes()
            for seq in (0, 1, 5):  # 2..4 never sent, never announced
                pub.send_multipart([b"raw/s", tpl.frame(seq, 1, 2), one])
                time.sleep(0.1)
            for seq in range(6, 2006):  # a burst: a queue of 2 drops some
                pub.send_multipart([b"raw/s", tpl.frame(seq, 1, 2), one])
            time.sleep(0.2)
            pub.send_multipart([b"raw/s", tpl.frame(2006, 1, 2), one])
            outs: list[int] = []
            end = time.monotonic() + 20
            while time.monotonic() < end and (not outs or outs[-1] != 2006):
                m = rsub.recv(timeout=1.0)
                if m is not None and m.array is not None:
                    outs.append(m.header["source"]["seq"])
            st = stage.status()["streams"]["s"]
    finally:
        stage.shutdown()
        pub.close(0)
    gaps = [g for g in rsub.gaps if g.topic == "recon/s"]
    assert all(g.announced and g.count == 0 for g in gaps)  # the recon stream itself lost no frame
    assert gaps[0].reason == "source s lost frames 2..4: missing seq"
    full = [g for g in gaps[1:] if "dropped by the reconstruction stage (fifo queue full" in g.reason]
    assert len(full) == len(gaps) - 1 and (len(full) > 0) == (st["lost"] > 0)
    assert len(outs) + 3 + st["lost"] == 2007 and outs[-1] == 2006
    assert st["policy"] == "fifo" and st["qos"]["max_frames"] == 2 and st["superseded"] == 0
    assert st["dropped"] == st["lost"]  # the older name, kept for status readers
    assert st["gaps_forwarded"] == len(gaps)


def test_live_device_state_in_the_descriptor_keeps_the_reconstructor(endpoints):
    """A descriptor change confined to ``meta.live`` keys (device status) keeps the running
    mean; any other change rebuilds it."""
    cfg = parse_config({**endpoints, "recon": {**endpoints["recon"], "settings": {"synthetic": {"alpha": 0.5}}}})
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(cfg.daemon.data_endpoint)
    stage = ReconStage(cfg).start()
    series = "7a1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a14"

    def desc(**meta):
        d = StreamDescriptor(stream="s", modality="synthetic", dtype="<f4", shape=[1, 2], axes=["a", "b"],
                             meta={"live": ["leds"], **meta})
        return [b"raw/s", encode_header(StreamHeader(stream="s", kind=MessageKind.DESCRIPTOR, series=series, seq=0,
                                                     t_host_ns=1, t_mono_ns=2, descriptor=d))]

    tpl = HeaderTemplate("s", series, "<f4", [1, 2], ["a", "b"], "")
    try:
        with Subscriber(cfg.recon.data_endpoint, "recon/") as rsub:
            time.sleep(0.5)
            steps = [desc(leds="off", gain=1), 0.0, desc(leds="on", gain=1), 4.0, desc(leds="on", gain=2), 8.0]
            seq = 0
            for st in steps:
                if isinstance(st, float):
                    pub.send_multipart([b"raw/s", tpl.frame(seq, 1, 2), np.full((1, 2), st, "<f4").tobytes()])
                    seq += 1
                else:
                    pub.send_multipart(st)
                time.sleep(0.2)
            outs = list(rsub.frames(timeout=3, max_frames=3))
    finally:
        stage.shutdown()
        pub.close(0)
    # 0 -> (LEDs changed: kept) 0 + 0.5 * (4 - 0) = 2 -> (gain changed: rebuilt) 8
    assert [float(o[1][0, 0]) for o in outs] == [0.0, 2.0, 8.0]


@pytest.mark.parametrize("local_operator, rights", [(None, "reader"), (False, "reader"), (True, "operator")])
def test_stage_control_rights_follow_the_endpoint(endpoints, local_operator, rights):
    """The stage's control socket gives a client without CurveZMQ the rights the daemon's would
    (``local_rights``): over TCP loopback a reader unless ``[daemon] local_operator = true``."""
    daemon = {k: v for k, v in endpoints["daemon"].items() if k != "local_operator"}
    if local_operator is not None:
        daemon["local_operator"] = local_operator
    cfg = parse_config({"daemon": daemon, "recon": endpoints["recon"]})
    stage = ReconStage(cfg).start()
    try:
        assert stage.control.local_rights == rights
        with ControlClient(cfg.recon.control_endpoint, timeout=3) as c:
            assert "streams" in c.request("status")  # read-only: every local client
            if rights == "reader":
                with pytest.raises(RequestFailed) as exc:
                    c.request("action", target="syn0", action="reset")
                assert exc.value.code == "forbidden"
                assert "local_operator" in exc.value.message  # it says how to get operator rights
            else:  # an operator reaches the handler: no such stream
                with pytest.raises(RequestFailed) as exc:
                    c.request("action", target="syn0", action="reset")
                assert exc.value.code != "forbidden"
    finally:
        stage.shutdown()
