"""The LSL republisher: a pylsl inlet sees medacq's EEG stream with labels, units, rate and
the same values the daemon published."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl", reason="pylsl is not installed (medacq[lsl])")

from medacq.client import Subscriber  # noqa: E402
from medacq.daemon.common.config import parse_config  # noqa: E402
from medacq.daemon.bridges.lsl import run_lsl_bridge  # noqa: E402
from medacq.daemon.acquisition.service import AcquisitionDaemon  # noqa: E402
from medacq.simulators.adapters import SimulatorServer  # noqa: E402
from medacq.simulators.cyton import CytonInterface  # noqa: E402


def test_lsl_outlet_carries_labels_units_rate_and_values(endpoints):
    with SimulatorServer(CytonInterface(seed=8, daisy=True), "pty", paced=True) as sim:
        cfg = parse_config({**endpoints, "device": [{"name": "eeg0", "kind": "cyton", "address": sim.address,
                                                     "settings": {"daisy": True}}]})
        stop = threading.Event()
        result: dict = {}
        bridge = threading.Thread(target=lambda: result.update(
            run_lsl_bridge(cfg.daemon.data_endpoint, ["raw/eeg0"], duration_s=30, stop=stop, allow_lan=True)),
            daemon=True)
        with Subscriber(cfg.daemon.data_endpoint, "raw/eeg0") as sub:
            bridge.start()
            d = AcquisitionDaemon(cfg).start()
            try:
                found = pylsl.resolve_byprop("source_id", "medacq:raw/eeg0", timeout=10)
                if not found:
                    pytest.skip("no LSL outlet could be resolved here (multicast/loopback unavailable)")
                inlet = pylsl.StreamInlet(found[0])
                info = inlet.info(timeout=5)
                inlet.open_stream(timeout=5)
                got: list = []
                while sum(len(c) for c in got) < 250:
                    chunk, _ = inlet.pull_chunk(timeout=1.0)
                    if chunk:
                        got.append(np.asarray(chunk))
                raw = [a for _, a in sub.frames(timeout=2, max_frames=200)]
            finally:
                d.shutdown()
                stop.set()
                bridge.join(5)
    assert info.channel_count() == 16 and info.nominal_srate() == 125.0 and info.type() == "EEG"
    ch = info.desc().child("channels").child("channel")
    assert ch.child_value("label") == "Fp1" and ch.child_value("unit") == "µV"
    lsl = np.concatenate(got)                     # (samples, channels)
    med = np.concatenate(raw, axis=1).T           # (samples, channels)
    k = int(np.argmin(np.abs(med - lsl[-1]).max(axis=1)))  # LSL's last sample within medacq's record
    n = min(100, k + 1)
    np.testing.assert_array_equal(lsl[-n:], med[k - n + 1:k + 1])
    assert result["outlets"] == ["raw/eeg0"] and result["samples"]["raw/eeg0"] >= 250


def test_lsl_bridge_bridges_biosignals_only_and_survives_reconfiguration(endpoints):
    """A non-biosignal stream gets no outlet; a descriptor that changes the channel count
    replaces the outlet; a frame that fits no outlet is counted, not fatal."""
    import time

    import zmq

    from medacq.daemon.bridges.lsl import LslBridge
    from medacq.protocols.stream import HeaderTemplate, MessageKind, StreamDescriptor, StreamHeader, encode_header

    ep = parse_config({**endpoints}).daemon.data_endpoint
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(ep)
    series = "3c1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a13"

    def desc(stream, modality, nch, rate=250.0):
        d = StreamDescriptor(stream=stream, modality=modality, dtype="<f4", shape=[nch, -1],
                             axes=["channel", "sample"], units="µV", sample_rate_hz=rate,
                             channel_names=[f"C{i}" for i in range(nch)])
        return encode_header(StreamHeader(stream=stream, kind=MessageKind.DESCRIPTOR, series=series, seq=0,
                                          t_host_ns=1, t_mono_ns=2, descriptor=d))

    def frame(stream, seq, nch, n=10):
        tpl = HeaderTemplate(stream, series, "<f4", [nch, n], ["channel", "sample"], "µV")
        return [f"raw/{stream}".encode(), tpl.frame(seq, time.time_ns(), time.monotonic_ns()),
                np.full((nch, n), seq, "<f4").tobytes()]

    bridge = LslBridge(ep, "raw/", allow_lan=True)
    try:
        time.sleep(0.5)
        msgs = [[b"raw/eeg9", desc("eeg9", "eeg", 2)], frame("eeg9", 0, 2),
                [b"raw/us9", desc("us9", "ultrasound", 4)], frame("us9", 0, 4),
                frame("eeg9", 1, 3),                                  # does not fit: counted
                [b"raw/eeg9", desc("eeg9", "eeg", 3)], frame("eeg9", 2, 3),
                [b"raw/eeg9", desc("eeg9", "eeg", 3)]]                # unchanged: same outlet
        for m in msgs:
            pub.send_multipart(m)
        for _ in range(len(msgs)):
            bridge.step(2.0)
        info = bridge.outlets["raw/eeg9"].get_info()
        assert sorted(bridge.outlets) == ["raw/eeg9"] and info.channel_count() == 3
        assert info.desc().child("channels").child("channel").next_sibling().next_sibling().child_value(
            "label") == "C2"
        assert bridge.outlets_replaced == 1 and bridge.skipped_modality == 1
        assert bridge.skipped_bad_frame == 1 and "does not fit" in bridge.last_error
        assert bridge.samples == {"raw/eeg9": 20}
    finally:
        bridge.close()
        pub.close(0)
