"""The live DICOM sink: recon frames over real ZeroMQ → DICOM → a real Orthanc."""

from __future__ import annotations

import datetime
import io
import time

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM export needs pydicom")
pytest.importorskip("pynetdicom", reason="C-STORE needs pynetdicom")
zmq = pytest.importorskip("zmq")

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.live import DicomSink  # noqa: E402
from medacq.daemon.interop.orthanc import OrthancProcess, orthanc_available  # noqa: E402
from medacq.daemon.interop.pacs import PacsAddress  # noqa: E402
from medacq.daemon.interop.study import StudyContext  # noqa: E402
from medacq.protocols.stream import MessageKind, StreamDescriptor, StreamHeader, encode_header  # noqa: E402

from conftest import free_port  # noqa: E402

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed (Debian package orthanc)")

STUDY = StudyContext(patient_id="PID4711", patient_name="Doe^Jane", birth_date=datetime.date(1970, 1, 2), sex="F",
                     accession_number="ACC123")


def _publish(pub, frames, wire: list[bytes]) -> None:
    started = set()
    for f in frames:
        h = f.header
        base = dict(stream=h["stream"], series=h["series"], seq=h["seq"], t_host_ns=h["t_host_ns"],
                    t_mono_ns=h["t_mono_ns"])
        if f.topic not in started:
            started.add(f.topic)
            for kind, extra in ((MessageKind.SERIES_START, {}),
                                (MessageKind.DESCRIPTOR, {"descriptor": StreamDescriptor(**f.descriptor)})):
                parts = [f.topic.encode(), encode_header(StreamHeader(kind=kind, **base, **extra))]
                wire += parts
                pub.send_multipart(parts)
        hb = encode_header(StreamHeader(kind=MessageKind.FRAME, dtype=f.data.dtype.str, shape=list(f.data.shape),
                                        axes=h["axes"], units=h["units"], meta=h["meta"], **base))
        wire.append(hb)
        pub.send_multipart([f.topic.encode(), hb, f.data], copy=False)
        time.sleep(0.002)
    for topic in started:
        last = [f for f in frames if f.topic == topic][-1].header
        parts = [topic.encode(), encode_header(StreamHeader(kind=MessageKind.SERIES_END, stream=last["stream"],
                                                            series=last["series"], seq=last["seq"] + 1,
                                                            t_host_ns=last["t_host_ns"], t_mono_ns=0,
                                                            reason="stopped"))]
        wire += parts
        pub.send_multipart(parts)


def test_live_sink_to_orthanc(tmp_path):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    o = OrthancProcess(tmp_path / "orthanc", free_port(), free_port())
    o.start()
    sink = DicomSink(f"tcp://127.0.0.1:{port}", STUDY, "recon/", out_dir=tmp_path / "dcm",
                     pacs=PacsAddress.parse(o.address), outbox_dir=tmp_path / "outbox")
    try:
        sink.start()
        time.sleep(0.5)  # the subscription reaches the PUB socket
        ct = samples.ct_slices(n=3, size=64)
        frames = ct + samples.bmode_frames(n=5) + samples.ekg_chunks(seconds=1.0)
        wire: list[bytes] = []
        _publish(pub, frames, wire)
        deadline = time.monotonic() + 20
        while sink.frames < len(frames) and time.monotonic() < deadline:
            time.sleep(0.05)
        # series_end completes the cine (5 < 32 frames) and the ECG (1 s < 10 s) without waiting for stop
        deadline = time.monotonic() + 20
        while len(o.instances()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        st = sink.status()
        assert (st["frames"], st["objects"], st["rejected"]) == (len(frames), 5, 0), st
    finally:
        sink.stop(drain_s=10)
        pub.close(0)
    try:
        tags = [o.tags(i) for i in o.instances()]
        assert sorted(t["Modality"] for t in tags) == ["CT", "CT", "CT", "ECG", "US"]
        assert {t["PatientID"] for t in tags} == {"PID4711"}
        for f in ct:
            (iid,) = [i for i in o.instances() if o.tags(i)["InstanceNumber"] == str(f.header["seq"] + 1)
                      and o.tags(i)["Modality"] == "CT"]
            ds = pydicom.dcmread(io.BytesIO(o.file(iid)))
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            np.testing.assert_allclose(hu, 1000 * (f.data - 0.0195) / 0.0195, atol=0.5 + 1e-4)
        assert len(list((tmp_path / "dcm").rglob("*.dcm"))) == 5
    finally:
        o.stop()
