"""The LSL republisher: a pylsl inlet sees medacq's EEG stream with labels, units, rate and
the same values the daemon published."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl", reason="pylsl is not installed (medacq[lsl])")

from medacq.client import Subscriber  # noqa: E402
from medacq.daemon.config import parse_config  # noqa: E402
from medacq.daemon.lsl_bridge import run_lsl_bridge  # noqa: E402
from medacq.daemon.service import AcquisitionDaemon  # noqa: E402
from medacq.simulators.adapters import SimulatorServer  # noqa: E402
from medacq.simulators.cyton import CytonInterface  # noqa: E402


def test_lsl_outlet_carries_labels_units_rate_and_values(endpoints):
    with SimulatorServer(CytonInterface(seed=8, daisy=True), "pty", paced=True) as sim:
        cfg = parse_config({**endpoints, "device": [{"name": "eeg0", "kind": "cyton", "address": sim.address,
                                                     "settings": {"daisy": True}}]})
        stop = threading.Event()
        result: dict = {}
        bridge = threading.Thread(target=lambda: result.update(
            run_lsl_bridge(cfg.daemon.data_endpoint, ["raw/eeg0"], duration_s=30, stop=stop)), daemon=True)
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
