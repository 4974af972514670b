"""Modality worklist (C-FIND MWL) against dcmtk's ``wlmscpfs`` serving a worklist folder made here, and
``medacq study worklist --pick`` setting the daemon's study context from the picked step."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("pynetdicom", reason="the worklist client needs pynetdicom")
if shutil.which("wlmscpfs") is None or shutil.which("dump2dcm") is None:
    pytest.skip("dcmtk's wlmscpfs and dump2dcm are not installed (Debian package dcmtk)", allow_module_level=True)

from conftest import free_port  # noqa: E402

from medacq.daemon.interop.pacs import PacsAddress  # noqa: E402
from medacq.daemon.interop.worklist import WorklistError, query_worklist  # noqa: E402

US_UID = "1.2.826.0.1.3680043.8.498.4711"


def _entry(pid, name, birth, sex, acc, referring, uid, rp_id, rp_desc, modality, station, date, tm, sps_desc):
    uid_line = f"(0020,000d) UI  [{uid}]\n" if uid else "(0020,000d) UI\n"
    return (f"(0008,0005) CS  [ISO_IR 100]\n(0008,0050) SH  [{acc}]\n(0008,0090) PN  [{referring}]\n"
            f"(0010,0010) PN  [{name}]\n(0010,0020) LO  [{pid}]\n(0010,0030) DA  [{birth}]\n(0010,0040) CS  [{sex}]\n"
            f"{uid_line}(0032,1060) LO  [{rp_desc}]\n(0040,0100) SQ\n(fffe,e000) -\n(0008,0060) CS  [{modality}]\n"
            f"(0040,0001) AE  [{station}]\n(0040,0002) DA  [{date}]\n(0040,0003) TM  [{tm}]\n"
            f"(0040,0006) PN  [Tech^Terry]\n(0040,0007) LO  [{sps_desc}]\n(0040,0009) SH  [SPS-{acc}]\n"
            "(0040,0010) SH  [STN1]\n(0040,0011) SH  [ROOM1]\n(0040,0012) LO\n(0040,0400) LT\n(fffe,e00d) -\n"
            f"(fffe,e0dd) -\n(0040,1001) SH  [{rp_id}]\n(0040,1003) SH  [LOW]\n")


ENTRIES = {
    "us1": ("PID4711X", "Doemeier^Janine", "19700102", "F", "ACC98765", "Housemann^Gregor", US_UID, "RP-1",
            "Echocardiogram", "US", "MEDACQ_US", "20261206", "143000", "TTE complete"),
    "ct1": ("PID0815", "Brandt^Otto", "19551231", "M", "ACC-CT-2", "Weiss^Anna", "1.2.3.4.6", "RP-2", "CT thorax",
            "CT", "CT_ROOM", "20261206", "090000", "Thorax native"),
    "us2": ("PID0042", "Kowalski^Ewa", "19881111", "F", "ACC-US-3", "Housemann^Gregor", "1.2.3.4.5", "RP-3",
            "Abdomen", "US", "MEDACQ_US", "20261207", "080000", "Liver"),
}


def _listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (Linux ``/proc/net/tcp*``, state 0A), without connecting."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


@pytest.fixture
def worklist_scp(tmp_path):
    """``wlmscpfs`` on a free loopback port, serving three scheduled steps (called AE ``WLSCP``)."""
    db = tmp_path / "wlistdb" / "WLSCP"
    db.mkdir(parents=True)
    (db / "lockfile").touch()
    for key, fields in ENTRIES.items():
        dump = tmp_path / f"{key}.dump"
        dump.write_text(_entry(*fields))
        subprocess.run(["dump2dcm", "-g", str(dump), str(db / f"{key}.wl")], check=True, capture_output=True,
                       timeout=30)
    port = free_port()
    proc = subprocess.Popen(["wlmscpfs", "-s", "-dfp", str(tmp_path / "wlistdb"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # ready when its socket listens, seen in the kernel's table: no probe connection, which a
    # single-process wlmscpfs must first read to its end, and under load sometimes answered
    # the test's first association with nothing (two CI failures)
    deadline = time.monotonic() + 10
    while not _listening(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"wlmscpfs did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    try:
        yield PacsAddress("WLSCP", "127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_cfind_filters_and_values(worklist_scp):
    us = query_worklist(worklist_scp, modality="US").items
    assert sorted(i.accession_number for i in us) == ["ACC-US-3", "ACC98765"]
    (it,) = query_worklist(worklist_scp, modality="US", date="20261206").items
    assert (it.patient_id, it.patient_name, it.birth_date.isoformat(), it.sex) == \
        ("PID4711X", "Doemeier^Janine", "1970-01-02", "F")
    assert (it.accession_number, it.referring_physician, it.study_uid) == ("ACC98765", "Housemann^Gregor", US_UID)
    assert (it.requested_procedure_id, it.requested_procedure_description) == ("RP-1", "Echocardiogram")
    assert (it.modality, it.station_ae, it.start.isoformat(), it.step_description, it.performing_physician) == \
        ("US", ["MEDACQ_US"], "2026-12-06T14:30:00", "TTE complete", "Tech^Terry")
    ctx = it.study_context()
    assert (ctx.patient_id, ctx.patient_name, ctx.accession_number, ctx.study_uid, ctx.study_description,
            ctx.series_description, ctx.study_id) == ("PID4711X", "Doemeier^Janine", "ACC98765", US_UID,
                                                      "Echocardiogram", "TTE complete", "RP-1")
    (ct,) = query_worklist(worklist_scp, station_ae="CT_ROOM").items
    assert (ct.patient_name, ct.modality, ct.study_uid) == ("Brandt^Otto", "CT", "1.2.3.4.6")
    # (a Study Instance UID is a type 1 return key; wlmscpfs refuses entries without one:)
    assert dataclasses.replace(ct, study_uid="").study_context().study_uid.startswith("2.25.")  # a new random one
    assert [i.patient_id for i in query_worklist(worklist_scp, date="20261207-").items] == ["PID0042"]
    assert query_worklist(worklist_scp, modality="MR").items == []
    with pytest.raises(ValueError, match="YYYYMMDD"):
        query_worklist(worklist_scp, date="6 Dec")


def test_pick_sets_the_daemons_study_context(worklist_scp, tmp_path, endpoints):
    from medacq.client import ControlClient
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.common.config import dump_config, load_config

    p = tmp_path / "rig.toml"
    p.write_text('[[device]]\nname = "s0"\nkind = "synthetic"\naddress = "socket://127.0.0.1:1"\n\n'
                 + dump_config(endpoints))
    d = AcquisitionDaemon(load_config(p)).start()
    cli = [sys.executable, "-m", "medacq.daemon.cli", "study", "worklist", str(worklist_scp),
           "--endpoint", d.config.daemon.control_endpoint]
    try:
        r = subprocess.run(cli + ["--modality", "US"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        listed = json.loads(r.stdout)["items"]
        assert [i["n"] for i in listed] == [1, 2]
        n = next(i["n"] for i in listed if i["accession_number"] == "ACC98765")
        save = tmp_path / "study.json"
        r = subprocess.run(cli + ["--modality", "US", "--pick", str(n), "--save", str(save)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["study_uid"] == US_UID and out["picked"]["patient_id"] == "PID4711X"
        with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
            got = c.request("study", action="get")["study"]
            assert c.request("status")["study_uid"] == US_UID
        assert (got["patient_id"], got["patient_name"], got["birth_date"], got["sex"], got["accession_number"],
                got["referring_physician"], got["study_description"], got["study_uid"]) == \
            ("PID4711X", "Doemeier^Janine", "1970-01-02", "F", "ACC98765", "Housemann^Gregor", "Echocardiogram",
             US_UID)
        assert json.loads(save.read_text())["accession_number"] == "ACC98765"
        # --accession picks by value; --no-set leaves the daemon alone
        r = subprocess.run(cli + ["--accession", "ACC-CT-2", "--no-set", "--save", str(save)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(save.read_text())["patient_name"] == "Brandt^Otto"
        with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
            assert c.request("study", action="get")["study"]["patient_id"] == "PID4711X"
        r = subprocess.run(cli + ["--modality", "US", "--pick", "7"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "answered 2 step(s)" in r.stderr
    finally:
        d.shutdown()


def test_a_worklist_down_refusing_or_answering_garbage_is_a_clear_error(worklist_scp):
    with pytest.raises(WorklistError, match="accepted no association"):
        query_worklist(PacsAddress("WLSCP", "127.0.0.1", free_port()), timeout_s=3)
    with pytest.raises(WorklistError, match="rejected the association"):
        query_worklist(PacsAddress("NOSUCHAE", worklist_scp.host, worklist_scp.port), timeout_s=5)
    # something that is not DICOM: a server answering HTTP
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + bytes(range(256)))
                except OSError:
                    pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(WorklistError, match="accepted no association"):
            query_worklist(PacsAddress("WLSCP", "127.0.0.1", srv.getsockname()[1]), timeout_s=3)
    finally:
        stop.set()
        t.join(2)
        srv.close()
    # off loopback without TLS: refused before any connection
    with pytest.raises(WorklistError, match="TLS"):
        query_worklist(PacsAddress("WLSCP", "192.0.2.7", 104), timeout_s=1)
    r = subprocess.run([sys.executable, "-m", "medacq.daemon.cli", "study", "worklist", "WLSCP@192.0.2.7:104",
                        "--no-set"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "TLS" in r.stderr


def _mwl_identifier(accession: str) -> "object":
    from pydicom import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doemeier^Janine", "PID4711X", "19700102", "F"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyInstanceUID = accession, "Housemann^Gregor", US_UID
    ds.RequestedProcedureID, ds.RequestedProcedureDescription = "RP-1", "Echocardiogram"
    sps = Dataset()
    sps.Modality, sps.ScheduledStationAETitle = "US", "MEDACQ_US"
    sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = "20261206", "1430"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


@pytest.mark.filterwarnings("ignore:The value length")  # (the over-long value is the point)
def test_tls_worklist_a_failure_status_and_an_unusable_answer(tmp_path):
    """pynetdicom's own worklist SCP over TLS (a certificate our CA signed, PS3.15 B.1): the query goes
    through ``pacs.tls_context``; an answer whose accession number cannot be a study context (17+
    characters) is skipped and counted; a plain association to the TLS SCP fails; an SCP that ends the
    C-FIND with a failure status is a WorklistError naming the status."""
    import ssl

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    from medacq.daemon.interop.pacs import tls_context

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    run = lambda *a: subprocess.run(["openssl", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=medacq test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "wl.key", "-out", "wl.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "wl.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "wl.pem",
        "-days", "2", "-extfile", "san.cnf")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(tmp_path / "wl.pem"), str(tmp_path / "wl.key"))

    def on_find(event):
        if event.assoc.requestor.ae_title == "FAILME":
            yield 0xC311, None  # "unable to process"
            return
        yield 0xFF00, _mwl_identifier("ACC98765")
        yield 0xFF00, _mwl_identifier("ACC-TOO-LONG-FOR-SH")

    ae = AE(ae_title="TLSWL")
    ae.add_supported_context(ModalityWorklistInformationFind)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server,
                          evt_handlers=[(evt.EVT_C_FIND, on_find)])
    addr = PacsAddress("TLSWL", "127.0.0.1", port)
    try:
        res = query_worklist(addr, tls=tls_context(str(tmp_path / "ca.pem")), timeout_s=10)
        assert [i.accession_number for i in res.items] == ["ACC98765"] and res.rejected == 1
        assert "accession_number" in res.last_rejected and "ACC-TOO" not in res.last_rejected
        assert res.items[0].study_context().patient_id == "PID4711X"
        with pytest.raises(WorklistError, match="failed the query: status 0xC311"):
            query_worklist(addr, tls=tls_context(str(tmp_path / "ca.pem")), calling_ae="FAILME", timeout_s=10)
        with pytest.raises(WorklistError, match="accepted no association"):
            query_worklist(addr, timeout_s=3)  # no TLS to a TLS-only SCP
    finally:
        scp.shutdown()
