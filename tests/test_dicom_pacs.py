"""C-STORE to a real Orthanc (Debian ``orthanc``) through the durable outbox; a PACS outage loses nothing."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM export needs pydicom")
pytest.importorskip("pynetdicom", reason="C-STORE needs pynetdicom")

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.dicom import DicomWriter  # noqa: E402
from medacq.daemon.interop.orthanc import OrthancProcess, orthanc_available  # noqa: E402
from medacq.daemon.interop.pacs import DicomOutbox, PacsAddress, store_files  # noqa: E402
from medacq.daemon.interop.study import StudyContext  # noqa: E402

from conftest import free_port  # noqa: E402

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed (Debian package orthanc)")

STUDY = StudyContext(patient_id="PID4711", patient_name="Doe^Jane", birth_date=datetime.date(1970, 1, 2), sex="F",
                     accession_number="ACC123", referring_physician="House^Gregory", series_description="medacq")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    o = OrthancProcess(tmp_path_factory.mktemp("orthanc"), free_port(), free_port())
    o.start()
    yield o
    o.stop()


@pytest.fixture
def pacs(orthanc):
    if orthanc.proc is None:
        orthanc.start()
    orthanc.clear()
    return orthanc


def objects(seed: int = 0) -> list:
    w = DicomWriter(STUDY, us_cine_frames=8)
    out = []
    for f in samples.every_kind(seed):
        out += w.add(f)
    return out + w.flush()


def test_address_parsing():
    a = PacsAddress.parse("ORTHANC@127.0.0.1:4242")
    assert (a.ae_title, a.host, a.port, str(a)) == ("ORTHANC", "127.0.0.1", 4242, "ORTHANC@127.0.0.1:4242")
    for bad in ("ORTHANC@host", "127.0.0.1:4242", "A@h:99999", "WAYTOOLONGAETITLE17@h:1"):
        with pytest.raises(ValueError, match="AE@host:port"):
            PacsAddress.parse(bad)


def test_every_instance_arrives_with_its_tags_and_pixels(pacs, tmp_path):
    objs = objects()
    box = DicomOutbox(tmp_path / "outbox", PacsAddress.parse(pacs.address))
    for ds in objs:
        box.put(ds)
    assert len(box.pending()) == len(objs)
    assert box.drain(30) and box.pending() == [] and box.status()["sent"] == len(objs)
    ids = pacs.instances()
    assert len(ids) == len(objs)
    sent = {str(ds.SOPInstanceUID): ds for ds in objs}
    for i in ids:
        tags = pacs.tags(i)
        ds = sent.pop(tags["SOPInstanceUID"])
        assert tags["PatientID"] == "PID4711" and tags["PatientName"] == "Doe^Jane"
        assert tags["AccessionNumber"] == "ACC123" and tags["StudyInstanceUID"] == STUDY.study_uid
        assert tags["SeriesInstanceUID"] == ds.SeriesInstanceUID and tags["Modality"] == ds.Modality
        assert tags["SOPClassUID"] == ds.SOPClassUID
        stored = pydicom.dcmread(io.BytesIO(pacs.file(i)))
        if "PixelData" in ds:
            assert stored.PixelData == ds.PixelData  # byte for byte what we sent
            np.testing.assert_array_equal(stored.pixel_array, ds.pixel_array)
        else:
            assert stored.WaveformSequence[0].WaveformData == ds.WaveformSequence[0].WaveformData
    assert sent == {}


def test_ct_pixels_at_the_pacs_equal_the_reconstruction(pacs, tmp_path):
    frames = samples.ct_slices(n=2, size=64)
    w = DicomWriter(STUDY)
    objs = [o for f in frames for o in w.add(f)]
    files = []
    for k, ds in enumerate(objs):
        p = tmp_path / f"{k}.dcm"
        pydicom.dcmwrite(p, ds, enforce_file_format=True)
        files.append(p)
    rep = store_files(files, PacsAddress.parse(pacs.address))
    assert (rep.sent, rep.refused, rep.error) == (2, 0, "")
    for f, ds in zip(frames, objs):
        (iid,) = [i for i in pacs.instances() if pacs.tags(i)["SOPInstanceUID"] == ds.SOPInstanceUID]
        got = pydicom.dcmread(io.BytesIO(pacs.file(iid)))
        hu = got.pixel_array * float(got.RescaleSlope) + float(got.RescaleIntercept)
        np.testing.assert_allclose(hu, 1000 * (f.data - 0.0195) / 0.0195, atol=0.5 + 1e-4)


def test_pacs_outage_loses_nothing(pacs, tmp_path):
    objs = objects(seed=7)
    addr = PacsAddress.parse(pacs.address)
    pacs.stop()
    box = DicomOutbox(tmp_path / "outbox", addr, retry_initial_s=0.2, retry_max_s=0.5, timeout_s=2)
    for ds in objs[:5]:
        box.put(ds)
    rep = box.send_pending()
    assert rep.sent == 0 and rep.error.startswith("no association") and rep.remaining == 5
    box.start()  # the background sender retries with backoff
    for ds in objs[5:]:
        box.put(ds)
    time.sleep(1.0)
    assert box.status()["failed_attempts"] >= 2 and len(box.pending()) == len(objs)
    # the sender process dies; a new one finds the outbox on disk
    box.stop()
    box2 = DicomOutbox(tmp_path / "outbox", addr, retry_initial_s=0.2, retry_max_s=0.5, timeout_s=2)
    assert len(box2.pending()) == len(objs)
    box2.start()
    pacs.start()
    deadline = time.monotonic() + 30
    while box2.pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    box2.stop()
    assert box2.pending() == []
    arrived = {pacs.tags(i)["SOPInstanceUID"] for i in pacs.instances()}
    assert arrived == {str(ds.SOPInstanceUID) for ds in objs}  # 0 lost


def test_export_cli_from_a_recording_to_files_and_orthanc(pacs, tmp_path):
    from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter

    rec = tmp_path / "rec.h5"
    w = Hdf5RecordingWriter(rec, durable=False)
    frames = samples.ct_slices(n=2) + samples.bmode_frames(n=8) + samples.ekg_chunks(seconds=2.0)
    seen = set()
    for f in frames:
        if f.topic not in seen:
            seen.add(f.topic)
            h = {**f.header, "kind": "descriptor", "descriptor": dict(f.descriptor)}
            w.message(f.topic, h, None)
        w.message(f.topic, dict(f.header), f.data)
    w.message("recon/ekg0/hr", {**frames[-1].header, "stream": "ekg0/hr", "kind": "frame", "series": "s", "seq": 0},
              np.array([60.0], dtype=np.float32))
    w.checkpoint(complete=True)
    w.close()
    study = tmp_path / "study.json"
    study.write_text(STUDY.model_dump_json())
    out = tmp_path / "dicom"
    r = subprocess.run([sys.executable, "-m", "medacq.daemon.cli", "export", str(rec), "--out", str(out),
                        "--pacs", pacs.address, "--study", str(study)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["files"] == 4 and rep["sent"] == 4 and rep["pending"] == 0  # 2 CT + 1 US cine + 1 ECG
    assert "recon/ekg0/hr" in rep["skipped"]
    assert sorted(p.parent.name for p in out.rglob("*.dcm")) == ["CT", "CT", "ECG", "US"]
    arrived = [pacs.tags(i) for i in pacs.instances()]
    assert sorted(t["Modality"] for t in arrived) == ["CT", "CT", "ECG", "US"]
    assert {t["PatientID"] for t in arrived} == {"PID4711"}
    # the same recording exported again: the same UIDs, so the PACS still holds 4 instances
    r = subprocess.run([sys.executable, "-m", "medacq.daemon.cli", "export", str(rec), "--pacs", pacs.address,
                        "--outbox", str(tmp_path / "ob2"), "--study", str(study)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(pacs.instances()) == 4
    bad = subprocess.run([sys.executable, "-m", "medacq.daemon.cli", "export", str(rec), "--pacs", "nonsense",
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "AE@host:port" in bad.stderr


def test_an_object_refused_for_good_is_set_aside_and_the_rest_arrive(tmp_path):
    """A PACS (pynetdicom's own SCP) refuses one object with 0xA900 (data set does not match the SOP
    class: no retry cures it) and another once with 0xA700 (out of resources: retried): the first
    goes to ``refused/`` and is counted, every other object arrives, nothing stays pending."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    objs = objects(3)
    bad, busy = str(objs[0].SOPInstanceUID), str(objs[1].SOPInstanceUID)
    stored: list[str] = []
    busy_once: list[str] = []

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid == bad:
            return 0xA900
        if uid == busy and not busy_once:
            busy_once.append(uid)
            return 0xA700
        stored.append(uid)
        return 0x0000

    ae = AE(ae_title="FAKEPACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        box = DicomOutbox(tmp_path / "outbox", PacsAddress("FAKEPACS", "127.0.0.1", port), retry_initial_s=0.05)
        for ds in objs:
            box.put(ds)
        assert box.drain(timeout_s=30)
    finally:
        scp.shutdown()
    assert box.pending() == [] and box.dead_letters == 1
    assert [p.name.split("-")[1] for p in (tmp_path / "outbox" / "refused").iterdir()] == [bad]
    assert sorted(stored) == sorted(str(d.SOPInstanceUID) for d in objs[1:]) and busy_once == [busy]
    assert box.status()["dead_letters"] == 1 and box.refused == 2


def _tls_files(d):
    """A CA, and a PACS certificate it signed for 127.0.0.1 (openssl, as a site's PKI would make them)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=medacq test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "pacs.key", "-out", "pacs.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "pacs.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "pacs.pem",
        "-days", "2", "-extfile", "san.cnf")
    return d / "ca.pem", d / "pacs.pem", d / "pacs.key"


def test_a_pacs_off_loopback_needs_tls_and_tls_associations_store(tmp_path):
    """The rig's exposure rule for associations we open: a PACS off loopback without TLS is refused
    before anything is sent (the address below is never contacted); over TLS (PS3.15 B.1) to a TLS
    SCP with a certificate our CA signed, every object arrives; a plain association to it fails and
    the objects wait in the outbox."""
    import ssl

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from medacq.daemon.interop.pacs import PacsError, check_pacs_exposure, tls_context

    ca, cert, key = _tls_files(tmp_path)
    client = tls_context(str(ca))
    far = PacsAddress("PACS", "192.0.2.10", 11112)  # TEST-NET-1: documentation only, never reached
    with pytest.raises(PacsError, match="refusing to send DICOM objects to 192.0.2.10:11112 without TLS"):
        check_pacs_exposure(far, None)
    with pytest.raises(PacsError):
        DicomOutbox(tmp_path / "far", far)
    check_pacs_exposure(far, client)  # with TLS it may leave the machine
    check_pacs_exposure(PacsAddress("PACS", "127.0.0.1", 11112), None)  # loopback needs none

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert), str(key))
    stored: list[str] = []
    ae = AE(ae_title="TLSPACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server,
                          evt_handlers=[(evt.EVT_C_STORE, lambda e: (stored.append(str(e.request.AffectedSOPInstanceUID)), 0)[1])])
    try:
        objs = objects(5)[:4]
        plain = DicomOutbox(tmp_path / "plain", PacsAddress("TLSPACS", "127.0.0.1", port), timeout_s=3)
        for ds in objs:
            plain.put(ds)
        assert plain.send_pending().error and len(plain.pending()) == 4 and stored == []
        box = DicomOutbox(tmp_path / "tls", PacsAddress("TLSPACS", "127.0.0.1", port), tls=client)
        for ds in objs:
            box.put(ds)
        assert box.drain(timeout_s=20) and box.pending() == []
    finally:
        scp.shutdown()
    assert sorted(stored) == sorted(str(d.SOPInstanceUID) for d in objs)
