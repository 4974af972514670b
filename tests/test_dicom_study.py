"""The ``study`` control request: patient context on the control plane, the uid only elsewhere, nothing in the audit log."""

from __future__ import annotations

import json

import pytest

from medacq.daemon.common.config import dump_config, load_config

RIG = '[[device]]\nname = "s0"\nkind = "synthetic"\naddress = "socket://127.0.0.1:1"\n'


def test_study_request_over_the_control_plane(tmp_path, endpoints):
    from medacq.client import ControlClient, RequestFailed
    from medacq.daemon.acquisition.service import AcquisitionDaemon

    p = tmp_path / "rig.toml"
    audit = tmp_path / "audit.log"
    p.write_text(RIG + "\n" + dump_config(endpoints) + f'\n[security]\naudit_log = "{audit}"\n')
    d = AcquisitionDaemon(load_config(p)).start()
    patient = {"patient_id": "PID4711", "patient_name": "Doe^Jane", "birth_date": "1970-01-02", "sex": "F",
               "accession_number": "ACC123", "referring_physician": "House^Gregory"}
    try:
        with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
            assert c.request("status")["study_uid"] is None
            ref = c.request("study", action="set", study=patient)
            assert set(ref) == {"study_uid"} and ref["study_uid"].startswith("2.25.")
            assert c.request("status")["study_uid"] == ref["study_uid"]
            got = c.request("study", action="get")["study"]
            assert got["patient_name"] == "Doe^Jane" and got["study_uid"] == ref["study_uid"]
            with pytest.raises(RequestFailed) as exc:
                c.request("study", action="set", study={**patient, "sex": "Q", "accession_number": "X" * 17})
            assert exc.value.code == "bad_request"
            assert "sex" in exc.value.message and "accession_number" in exc.value.message
            assert "Doe" not in exc.value.message and "XXXXXXXXXXXXXXXXX" not in exc.value.message
            assert c.request("study", action="get")["study"]["patient_id"] == "PID4711"  # unchanged
            assert c.request("study", action="clear") == {"study_uid": None}
            assert c.request("status")["study_uid"] is None
    finally:
        d.shutdown()
    text = audit.read_text()
    rec = [json.loads(line) for line in text.splitlines() if '"study"' in line]
    assert [(r["request"].get("action"), r["ok"]) for r in rec] == [("set", True), ("get", True), ("set", False),
                                                                  ("get", True), ("clear", True)]
    for s in list(patient.values()) + ["19700102"]:
        if len(s) > 2:
            assert s not in text  # the audit log never holds patient data


def test_a_recording_started_over_the_control_plane_carries_the_study(tmp_path, endpoints, monkeypatch):
    """``record start`` after ``study set``: the file's root attribute ``study`` holds the context
    (what ``medacq export`` reads), and no stream header of the recording holds a patient string."""
    h5py = pytest.importorskip("h5py")
    from medacq.client import ControlClient
    from medacq.daemon.acquisition.service import AcquisitionDaemon
    from medacq.daemon.interop.export import study_from_recording

    monkeypatch.setenv("MEDACQ_RECORDINGS_DIR", str(tmp_path / "rec"))
    p = tmp_path / "rig.toml"
    p.write_text(RIG + "\n" + dump_config(endpoints))
    d = AcquisitionDaemon(load_config(p)).start()
    try:
        with ControlClient(d.config.daemon.control_endpoint, timeout=5) as c:
            ref = c.request("study", action="set", study={"patient_id": "PID4711", "patient_name": "Doe^Jane"})
            st = c.request("record", action="start", topics=["raw/"], path="s.h5", flush_s=0.2)
            c.request("record", action="stop")
    finally:
        d.shutdown()
    with h5py.File(st["path"], "r") as h5:
        study = study_from_recording(h5)
        assert study is not None and study.patient_id == "PID4711" and study.study_uid == ref["study_uid"]
