"""``medacq up`` never leaves orphans: whatever stops it, its daemon, stage and view go with it.

Each case starts a whole simulated rig (with the live view), waits until the daemon answers
``ping``, notes ``up``'s child processes, stops ``up`` with one signal and checks, within a few
seconds, that no child is alive and that every port of the rig can be bound again.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medacq.client import ControlClient, DaemonUnreachable
from medacq.daemon.common.procs import SHUTDOWN_BOUND_S

from conftest import free_port, medacq_cmd

pytestmark = pytest.mark.slow  # four rig starts (about 8 s each on a shared 2-core machine)


def _port_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:``port`` (SO_REUSEADDR, as ZeroMQ and aiohttp bind:
    connections of a stopped server left in TIME_WAIT do not count as holding the port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def _rig_ports() -> tuple[int, int]:
    """A base port with its 4 successors free, and a free view port."""
    for _ in range(50):
        base = free_port()
        if base + 5 < 65535 and all(_port_free(base + i) for i in range(6)):
            return base, base + 5
    raise RuntimeError("no 6 consecutive free ports")


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, start time in clock ticks, comm) of a live process; None once it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    state, start = fields[0], int(fields[19])
    return None if state in ("Z", "X") else (state, start, comm)


def _children(ppid: int) -> dict[int, tuple[int, str]]:
    """The live children of ``ppid``: pid -> (start time, command line)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/stat").read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) != ppid:
                continue
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        st = _stat(int(d))
        if st is not None:
            out[int(d)] = (st[1], cmd)
    return out


def _thread_nice(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (``/proc/PID/task/TID/stat`` field 19)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended since the listing
            continue
        out.add(int(text[text.rindex(")") + 2 :].split()[16]))
    return out


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start  # same start time: not a recycled pid


def _child_logs(children: dict[int, tuple[int, str]]) -> str:
    """The tails of the logs in the run directories the children's command lines name."""
    dirs = {m.group(1) for _, cmd in children.values() for m in [re.search(r"--config (\S+)/rig\.toml", cmd)] if m}
    out = []
    for d in sorted(dirs):
        for f in sorted(Path(d).glob("*.log")):
            out.append(f"--- {f}\n{f.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)


def test_exit_within_ends_a_process_whose_shutdown_hangs(tmp_path):
    """The hard bound on a stopping process: a non-daemon thread that never ends would keep the
    interpreter from exiting; exit_within ends it at the bound, with every thread's stack in its
    stderr (what held it up)."""
    code = ("import threading, time\n"
            "from medacq.daemon.common.procs import exit_within\n"
            "threading.Thread(target=lambda: time.sleep(3600), name='wedged').start()\n"
            "exit_within(0.5)\n")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert 0.4 < took < 10, took
    err = p.stderr.decode(errors="replace")
    assert "Timeout (0:00:00.500000)!" in err, err
    assert err.count("Thread 0x") >= 2, err  # the main thread and the wedged one


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_up_takes_every_child_with_it(sig, tmp_path):
    base, view_port = _rig_ports()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(medacq_cmd("up", "--for", "60", "--base-port", str(base), "--view-port", str(view_port)),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "CI": "true"})
    children: dict[int, tuple[int, str]] = {}
    try:
        deadline = time.monotonic() + 60
        while "live view at" not in log.read_text(errors="replace"):  # printed after the daemon answered
            assert up.poll() is None, f"medacq up exited early ({up.returncode}):\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the rig did not come up:\n{log.read_text()[-2000:]}"
            time.sleep(0.2)
        with ControlClient(f"tcp://127.0.0.1:{base + 1}", timeout=5) as c:
            assert c.request("ping") is not None
        children = _children(up.pid)
        roles = sorted(next(r for r in ("run", "recon", "view") if f" {r} --config" in cmd)
                       for _, cmd in children.values())
        assert roles == ["recon", "run", "view"], children
        if sig == signal.SIGINT:  # the view yields the cores to the daemon and the stage, every thread of it
            from medacq.daemon.bridges.view import VIEW_NICE

            own = os.getpriority(os.PRIO_PROCESS, 0)
            nice = {next(r for r in ("run", "recon", "view") if f" {r} --config" in cmd): _thread_nice(pid)
                    for pid, (_, cmd) in children.items()}
            assert nice == {"run": {own}, "recon": {own}, "view": {min(19, own + VIEW_NICE)}}, nice
        os.kill(up.pid, sig)
        up.wait(20)
        # the daemon's own shutdown may take ~8 s (workers 1.5 s, a publisher still sending up to 5 s more,
        # control and safety threads 0.5 s each) after the SIGTERM its PR_SET_PDEATHSIG delivers; whatever
        # hangs, each child exits SHUTDOWN_BOUND_S after it was asked to (exit_within)
        deadline = time.monotonic() + SHUTDOWN_BOUND_S + 5
        while any(_alive(pid, start) for pid, (start, _) in children.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = {pid: cmd for pid, (start, cmd) in children.items() if _alive(pid, start)}
        assert survivors == {}, f"children of medacq up survived {sig.name}: {survivors}\n{_child_logs(children)}"
        ports = [base + i for i in range(5)] + [view_port]
        deadline = time.monotonic() + 3
        while not all(_port_free(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.1)
        held = [p for p in ports if not _port_free(p)]
        assert held == [], f"ports still held after {sig.name}: {held}"
        if sig != signal.SIGKILL:  # a requested stop is a clean exit
            assert up.returncode == 0, log.read_text()[-2000:]
        with pytest.raises(DaemonUnreachable), ControlClient(f"tcp://127.0.0.1:{base + 1}", timeout=0.3) as c:
            c.request("ping")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        for pid, (start, _) in children.items():  # never leave them behind, even when the test fails
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
