"""A child started through ``CHILD_BOOTSTRAP`` never outlives its parent, even when the death signal
does not stop it: here the child ignores SIGTERM, so ``PR_SET_PDEATHSIG`` alone leaves it running;
its orphan watch sees the parent gone and ends it ``SHUTDOWN_BOUND_S`` + 3 s later."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from medacq.daemon.common.procs import CHILD_BOOTSTRAP, SHUTDOWN_BOUND_S

PARENT = r'''
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), "0", "deaf_child"],
                         env={**os.environ, "PYTHONPATH": sys.argv[2]}, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)  # not our captured stderr: run() would wait for it
print(child.pid, flush=True)
child.stdout.readline()  # the child is running and deaf to SIGTERM
os._exit(0)  # the parent dies without stopping it
'''


def test_a_child_deaf_to_sigterm_still_ends_after_its_parent(tmp_path):
    (tmp_path / "deaf_child.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n")
    r = subprocess.run([sys.executable, "-c", PARENT, CHILD_BOOTSTRAP, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    pid = int(r.stdout.split()[0])
    t0 = time.monotonic()

    def alive() -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    try:
        time.sleep(2.0)
        assert alive(), "the child should outlive the SIGTERM it ignores, for now"
        while alive() and time.monotonic() - t0 < SHUTDOWN_BOUND_S + 15:
            time.sleep(0.2)
        took = time.monotonic() - t0
        assert not alive(), f"the orphaned child {pid} is still running {took:.0f} s after its parent died"
        assert took >= SHUTDOWN_BOUND_S, took  # it was given its shutdown bound first
    finally:
        if alive():  # never leave it behind
            os.kill(pid, 9)
