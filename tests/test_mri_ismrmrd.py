"""ISMRMRD v1 file of an acquisition, read back with the ``ismrmrd`` package."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.daemon.recording.ismrmrd import write_ismrmrd
from medacq.drivers._base import Frame
from medacq.drivers.mri import MriDriver, MriSettings
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.mri import make

ismrmrd = pytest.importorskip("ismrmrd", reason="the ismrmrd package (PyPI) reads the file back")


def test_written_file_reads_back_with_header_values(tmp_path):
    n = 16
    with SimulatorServer(make(), "tcp", paced=False) as srv:
        d = MriDriver("mri0", srv.tcp_address, MriSettings.model_validate(
            {"sequence": {"sequence": "gre", "matrix": n, "te_ms": 4, "tr_ms": 20, "flip_deg": 30},
             "repetitions": 1, "dummy_scans": 0}))
        d.open()
        d.start()
        frames: list = []
        deadline = time.monotonic() + 20
        while len(frames) < n and time.monotonic() < deadline:
            frames += [f for f in d.read(0.5) if isinstance(f, Frame)]
        desc = d.descriptor().model_dump()
        d.close()
    path = str(tmp_path / "mri0.h5")
    assert write_ismrmrd(path, desc, [(f.meta, f.data) for f in frames]) == n
    ds = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
    hdr = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
    assert hdr.experimentalConditions.H1resonanceFrequency_Hz == round(desc["meta"]["larmor_hz"])
    assert hdr.acquisitionSystemInformation.receiverChannels == 2
    assert abs(hdr.acquisitionSystemInformation.systemFieldStrength_T - 0.2) < 1e-9
    enc = hdr.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (n, n)
    assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(200.0)
    assert enc.encodingLimits.kspace_encoding_step_1.maximum == n - 1
    assert hdr.sequenceParameters.TR == [20.0] and hdr.sequenceParameters.TE == [4.0]
    assert ds.number_of_acquisitions() == n
    for i in (0, 7, n - 1):
        acq = ds.read_acquisition(i)
        assert acq.idx.kspace_encode_step_1 == frames[i].meta["line"] == i
        assert acq.active_channels == 2 and acq.number_of_samples == n
        np.testing.assert_array_equal(acq.data, frames[i].data)
    assert ds.read_acquisition(n - 1).is_flag_set(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1)
    assert ds.read_acquisition(0).is_flag_set(ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1)
    ds.close()


def test_medacq_record_format_ismrmrd_through_the_daemon(endpoints, tmp_path):
    """``medacq record --format ismrmrd``: the recorder subscribed to a running rig appends every
    k-space line of the ``mri`` stream to an ISMRMRD file the ``ismrmrd`` package reads back, line
    for line, with the phase-encode index of each."""
    from medacq.client import Subscriber
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import parse_config
    from medacq.daemon.recording.recorder import Recorder

    n = 16
    out = tmp_path / "run.h5"
    with SimulatorServer(make(), "tcp", paced=False) as sim:
        cfg = parse_config({**endpoints, "recon": {**endpoints["recon"], "enabled": False},
                            "device": [{"name": "mri0", "kind": "mri", "address": sim.tcp_address, "autostart": False,
                                        "settings": {"sequence": {"sequence": "gre", "matrix": n, "te_ms": 4,
                                                                  "tr_ms": 20, "flip_deg": 30},
                                                     "repetitions": 2, "dummy_scans": 0}}]})
        rec = Recorder(cfg.daemon.data_endpoint, ["raw/mri0"], out, fmt="ismrmrd", flush_s=0.2)
        rec.start()
        assert rec.ready.wait(10) and rec.state == "recording", rec.error
        d = AcquisitionDaemon(cfg).start()
        try:
            from medacq.client import ControlClient

            with Subscriber(cfg.daemon.data_endpoint, "raw/mri0") as sub:
                time.sleep(0.5)  # both subscriptions in place before the first line
                with ControlClient(cfg.daemon.control_endpoint, timeout=5) as c:
                    c.request("start", device="mri0")
                lines = [(h, a.copy()) for h, a in sub.frames(timeout=5, max_frames=2 * n)]
            deadline = time.monotonic() + 10
            while rec.status()["ismrmrd"]["lines"] < 2 * n and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            d.shutdown()
            rec.stop()
    st = rec.status()
    assert st["state"] == "stopped" and st["error"] is None and st["ismrmrd"]["lines"] == 2 * n, st
    ds = ismrmrd.Dataset(str(out), "dataset", create_if_needed=False)
    assert ds.number_of_acquisitions() == 2 * n == len(lines)
    for i, (h, a) in enumerate(lines):
        acq = ds.read_acquisition(i)
        assert acq.idx.kspace_encode_step_1 == h["meta"]["line"] and acq.idx.repetition == h["meta"]["image"]
        np.testing.assert_array_equal(acq.data, a)
