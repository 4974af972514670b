"""markers/ streams: software markers over the real control socket, in order, on the daemon's
clocks, seen by a Subscriber and recorded into HDF5 by ``medacq record --topics markers/``."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

from medacq.client import ControlClient, RequestFailed, Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import parse_config
from medacq.daemon.recording.hdf5 import open_recording
from medacq.protocols.markers import (MARKER_TEXT_BYTES, MarkerError, TriggerEvent, decode_marker_text,
                                      encode_marker_text)
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthInterface

from conftest import medacq_cmd


def test_marker_text_codec():
    a = encode_marker_text("stim ✓ 12")
    assert a.dtype == np.uint8 and a.shape == (MARKER_TEXT_BYTES,)
    assert decode_marker_text(a) == "stim ✓ 12"
    assert decode_marker_text(encode_marker_text("x" * MARKER_TEXT_BYTES)) == "x" * MARKER_TEXT_BYTES
    with pytest.raises(MarkerError):
        encode_marker_text("é" * 65)  # 130 bytes
    with pytest.raises(MarkerError):
        encode_marker_text("a\0b")
    ev = TriggerEvent("D11", "rising", 12, 12.0, 5, 6, 0.004)
    assert TriggerEvent.from_meta(ev.to_meta()) == ev
    with pytest.raises(MarkerError):
        TriggerEvent.from_meta({"line": "D11", "edge": "up"})


@pytest.fixture
def synth_daemon(endpoints):
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": {"shape": [2, 8], "rate_hz": 50.0, "seed": 1}}]})
        d = AcquisitionDaemon(cfg).start()
        try:
            yield cfg, d
        finally:
            d.shutdown()


def test_markers_in_order_on_the_daemon_clock_and_recorded(synth_daemon, tmp_path):
    cfg, d = synth_daemon
    out = tmp_path / "markers.h5"
    rec = subprocess.Popen(medacq_cmd("record", "--endpoint", cfg.daemon.data_endpoint, "--topics", "markers/",
                                      "--out", str(out), "--flush", "0.1", "--progress"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert rec.stdout.readline(), rec.stderr.read()  # its first checkpoint: subscribed
        with Subscriber(cfg.daemon.data_endpoint, "markers/") as sub, \
                ControlClient(cfg.daemon.control_endpoint, timeout=5) as c:
            sub.wait_connected(0.5)
            time.sleep(0.3)
            replies, windows = [], []
            for i in range(30):
                m0, h0 = time.monotonic_ns(), time.time_ns()
                replies.append(c.request("mark", text=f"trial {i}"))
                windows.append((m0, time.monotonic_ns(), h0, time.time_ns()))
            with pytest.raises(RequestFailed) as e:
                c.request("mark", text="x", source="syn0")  # a device's name: its trigger stream
            assert e.value.code == "bad_request"
            with pytest.raises(RequestFailed) as e:
                c.request("mark", text="é" * 100)  # 200 UTF-8 bytes
            assert e.value.code == "bad_request"
            cli = subprocess.run(medacq_cmd("mark", "from the CLI", "--source", "cli",
                                            "--endpoint", cfg.daemon.control_endpoint),
                                 capture_output=True, text=True, timeout=30)
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["topic"] == "markers/cli"
            got, from_cli = [], []
            end = time.monotonic() + 5
            while (len(got) < 30 or not from_cli) and time.monotonic() < end:
                msg = sub.recv(timeout=0.5)
                if msg is not None and msg.array is not None:
                    (from_cli if msg.topic == "markers/cli" else got).append(msg)
        assert [decode_marker_text(m.array) for m in from_cli] == ["from the CLI"]
        assert [m.topic for m in got] == ["markers/operator"] * 30
        assert [m.header["seq"] for m in got] == list(range(30))
        assert [decode_marker_text(m.array) for m in got] == [f"trial {i}" for i in range(30)]
        assert [m.header["meta"]["text"] for m in got] == [f"trial {i}" for i in range(30)]
        mono = [m.header["t_mono_ns"] for m in got]
        host = [m.header["t_host_ns"] for m in got]
        assert all(b > a for a, b in zip(mono, mono[1:])) and all(b >= a for a, b in zip(host, host[1:]))
        for m, r, (m0, m1, h0, h1) in zip(got, replies, windows):
            assert m0 <= m.header["t_mono_ns"] <= m1  # stamped by the daemon while the request was in flight
            assert h0 - 2_000_000 <= m.header["t_host_ns"] <= h1 + 2_000_000
            assert r["t_mono_ns"] == m.header["t_mono_ns"] and r["topic"] == "markers/operator"
        assert sub.descriptors["markers/operator"]["modality"] == "marker"
        assert d.status()["markers"]["published"] == 31 and d.status()["markers"]["refused"] == 1
        time.sleep(0.4)  # a few checkpoints
    finally:
        rec.terminate()
        rec.wait(10)
    with open_recording(out) as f:
        g = f["markers/operator/data_000"]
        assert g.attrs["frame_count"] == 30
        assert [decode_marker_text(r) for r in g["frames"][:]] == [f"trial {i}" for i in range(30)]
        np.testing.assert_array_equal(g["t_mono_ns"][:], mono)
        np.testing.assert_array_equal(g["seq"][:], np.arange(30))


def test_bad_trigger_events_from_a_driver_are_counted_not_raised():
    import threading

    import zmq

    from medacq.daemon.acquisition.markers import MarkerHub
    from medacq.daemon.acquisition.publisher import Publisher

    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://markers-test")
    wake = threading.Event()
    hub = MarkerHub(Publisher(pub, wake), wake)
    good = TriggerEvent("GPIO1", "rising", 7, 7.0, 1_000, 2_000, 0.001).to_meta()
    assert hub.triggers("ekg0", [{"line": "GPIO1"}, "garbage", good, {**good, "edge": "sideways"}]) == 1
    assert hub.refused == 3 and hub.published == 1
    st = hub.status()["sources"]["ekg0"]
    assert st["topic"] == "markers/ekg0" and st["seq"] == 1
    pub.close(0)
