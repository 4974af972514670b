"""systemd units: ``systemd-analyze verify`` passes and ``security --offline`` rates medacq.service <= 2.0.

The units name ``/opt/medacq/bin/medacq``; ``verify`` checks that the executable exists, so
the test verifies copies whose ExecStart points at this checkout's ``medacq`` instead (the
only change). Skipped when ``systemd-analyze`` is missing (Debian: ``apt-get install -y systemd``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install -y systemd)")

MEDACQ = Path(sys.executable).parent / "medacq"


def _staged(tmp_path: Path) -> Path:
    exe = MEDACQ if MEDACQ.exists() else Path(shutil.which("medacq") or "/bin/true")
    for f in UNITS.glob("*.service"):
        (tmp_path / f.name).write_text(f.read_text().replace("/opt/medacq/bin/medacq", str(exe)))
    shutil.copy(tmp_path / "medacq-sim@.service", tmp_path / "medacq-sim@eeg0.service")
    return tmp_path


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_units_verify(tmp_path):
    d = _staged(tmp_path)
    r = _analyze("verify", "medacq.service", "medacq-recon.service", "medacq-sim@eeg0.service", cwd=d)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt directive or a missing executable is an error."""
    d = _staged(tmp_path)
    text = (d / "medacq.service").read_text()
    (d / "medacq.service").write_text(text.replace("ExecStart=" + str(MEDACQ), "ExecStart=/nonexistent/medacq"))
    r = _analyze("verify", "medacq.service", cwd=d)
    assert r.returncode != 0 and "nonexistent" in r.stderr


@pytest.mark.parametrize("unit,limit", [("medacq.service", 2.0), ("medacq-recon.service", 2.0),
                                        ("medacq-sim@eeg0.service", 2.0)])
def test_security_exposure(tmp_path, unit, limit):
    d = _staged(tmp_path)
    r = _analyze("security", "--offline=yes", f"--threshold={int(limit * 10)}", unit, cwd=d)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= limit
    assert r.returncode == 0, r.stderr


def test_daemon_unit_can_open_serial_devices_and_jit():
    text = (UNITS / "medacq.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "StateDirectory=medacq", "DevicePolicy=closed", "DeviceAllow=char-ttyUSB rw",
                 "DeviceAllow=char-ttyACM rw", "SupplementaryGroups=dialout", "MemoryDenyWriteExecute=no",
                 "ExecStart=/opt/medacq/bin/medacq run --config /etc/medacq/rig.toml"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)


def test_udev_rule_lines_are_well_formed():
    text = (UNITS / "99-medacq.rules").read_text().replace("\\\n", " ")
    rules = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert rules
    pair = re.compile(r'^\s*[A-Z_]+(\{[^}]+\})?\s*(==|!=|\+=|=|:=)\s*"[^"]*"\s*$')
    for rule in rules:
        for part in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', rule):
            assert pair.match(part), f"malformed udev key: {part!r}"
        assert 'SYMLINK+="medacq/' in rule and 'GROUP="dialout"' in rule
