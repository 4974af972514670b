"""The judge: marcos_client's own conformance tests (``test_server.py``) and its ``Experiment``
class, unchanged, against ``medacq sim mri`` over TCP.

Needs a checkout of github vnegnev/marcos_client (nothing of it is vendored here): set
``MEDACQ_MARCOS_CLIENT=/path/to/marcos_client``; the test writes the ``local_config.py`` that
marcos_client expects from its users (address, port, 122.88 MHz, GPA-FHDO) into a temp folder.
Its test_server.py imports matplotlib.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

MC = os.environ.get("MEDACQ_MARCOS_CLIENT", "")

pytestmark = [
    pytest.mark.skipif(not MC or not (Path(MC) / "test_server.py").is_file(),
                       reason="set MEDACQ_MARCOS_CLIENT to a checkout of github vnegnev/marcos_client"),
]


@pytest.fixture
def console(tmp_path):
    pytest.importorskip("matplotlib", reason="marcos_client's test_server.py imports matplotlib")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", "sim", "mri", "--tcp", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"medacq sim mri did not start: {proc.stdout.read() if proc.stdout else ''}")
                time.sleep(0.1)
        cfg = tmp_path / "cfg"
        cfg.mkdir()
        (cfg / "local_config.py").write_text(
            f'ip_address = "127.0.0.1"\nport = {port}\nfpga_clk_freq_MHz = 122.88\n'
            'grad_board = "gpa-fhdo"\ngpa_fhdo_current_per_volt = 2.5\n')
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cfg), MC]), "MPLBACKEND": "Agg"}
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


def test_stock_test_server_conformance_suite_passes(console):
    r = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_server"], cwd=MC, env=console,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for case in ("test_version", "test_bad_packet", "test_idle", "test_bus", "test_fpga_clk",
                 "test_fpga_clk_partial", "test_leds", "test_mar_mem", "test_grad_adc"):
        assert re.search(rf"^{case} \(test_server\.ServerTest\.{case}\)\n?[^\n]*?\.\.\. ok$", out, re.M), out
    assert "FAILED" not in out


_EXPERIMENT = r'''
import socket
import numpy as np
import experiment as ex
from local_config import ip_address, port
s = socket.create_connection((ip_address, port))  # one connection for both (prev_socket)
larmor_mhz = 42.577478 * 0.2
e = ex.Experiment(lo_freq=larmor_mhz, rx_t=10.0, halt_and_reset=True, prev_socket=s)
p90 = 100.0  # us: a 90 degree hard pulse at the simulator's default 2.5 kHz B1
e.add_flodict({"tx0": (np.array([50, 50 + p90]), np.array([1.0, 0])),
               "tx_gate": (np.array([45, 52 + p90]), np.array([1, 0])),
               "rx0_en": (np.array([200, 2200]), np.array([1, 0])),
               "rx1_en": (np.array([200, 2200]), np.array([1, 0]))})
rxd, msgs = e.run()
off = ex.Experiment(lo_freq=1.0, rx_t=10.0, prev_socket=s)  # 7.5 MHz off resonance: nothing is excited
off.add_flodict({"tx0": (np.array([50, 50 + p90]), np.array([1.0, 0])),
                 "rx0_en": (np.array([200, 2200]), np.array([1, 0]))})
rxo, _ = off.run()
print("RESULT", len(rxd["rx0"]), len(rxd["rx1"]), float(np.abs(rxd["rx0"][:5]).mean()),
      float(np.abs(rxd["rx1"][:5]).mean()), float(np.abs(rxo["rx0"]).mean()), sorted(msgs))
'''


def test_stock_experiment_acquires_a_fid(console, tmp_path):
    script = tmp_path / "fid.py"
    script.write_text(_EXPERIMENT)
    r = subprocess.run([sys.executable, str(script)], cwd=MC, env=console, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))
    _, n0, n1, a0, a1, off, *_ = line.split(maxsplit=6)
    assert int(n0) == int(n1) == 199  # (2200 - 200) us / 10 us, minus the partial last dwell
    # the FID after a 90 degree pulse: 0.5 of full scale at k = 0 divided over two coils of
    # |c|^2 summing to 1, times the 2 ms of T2 decay already passed
    assert 0.25 < float(a0) < 0.45 and 0.25 < float(a1) < 0.45
    assert float(off) < 0.01 * float(a0)
