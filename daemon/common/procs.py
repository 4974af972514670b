"""Child processes that never outlive their parent: ``medacq up``'s daemon, stage and view, a benchmark's rig.

:func:`spawn_module` runs ``python -m MODULE ARGS`` as a child in its own process group, its
output in a log file, through :data:`CHILD_BOOTSTRAP`: the child asks the kernel for SIGTERM when
its parent dies (``PR_SET_PDEATHSIG``, Linux), then checks that the parent did not die before that
took effect. :func:`signal_group` signals a child's process group (the child and whatever it
started), :func:`stop_processes` ends a set of children: SIGTERM to each group, SIGKILL after a
grace period.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process: spawn
from the main thread (or one that lives as long as the children). The request is made in the new
interpreter, not in a ``preexec_fn``: Python code between fork and exec can deadlock in a process
with threads (``medacq up`` serves its simulators from threads).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["CHILD_BOOTSTRAP", "SHUTDOWN_BOUND_S", "exit_within", "spawn_module", "signal_group", "stop_processes"]

SHUTDOWN_BOUND_S = 12.0
"""How long (s) a medacq process (daemon, stage, view) may take to stop once asked: its orderly
shutdown takes ~8 s at most (workers 1.5 s, a publisher still sending 5 s, control threads 1 s)."""


def exit_within(seconds: float = SHUTDOWN_BOUND_S) -> None:
    """Arm a hard bound on this process's exit: if it is still running ``seconds`` (s) from now, the
    stack of every thread goes to stderr (its log: what held it up) and the process exits with
    status 1 (``faulthandler``, which needs no working Python thread to fire). For a process's
    main, once it was asked to stop: a shutdown that hangs would leave an orphan holding its ports
    (after ``medacq up`` is killed) or make systemd wait for its stop timeout. Never call it in a
    process that must outlive its component (a test runner): it ends the whole process."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)

CHILD_BOOTSTRAP = """\
import os, runpy, signal, sys
try:  # PR_SET_PDEATHSIG (Linux): SIGTERM to this process when the thread that started it ends
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl(1, int(signal.SIGTERM), 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):  # the parent died before that took effect
    sys.exit(1)
if int(sys.argv[2]):  # lower priority, before any thread starts: every thread inherits it
    os.nice(int(sys.argv[2]))


def _orphan_watch(parent=int(sys.argv[1])):  # in case the death signal never came (or was ignored)
    import time
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(%(hard_exit_s)r)
    os._exit(1)


import threading
threading.Thread(target=_orphan_watch, name="orphan-watch", daemon=True).start()
del sys.argv[:3]  # as python -m MODULE ARGS: argv[0] becomes the module's path, argv[1:] its ARGS
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
""" % {"hard_exit_s": SHUTDOWN_BOUND_S + 3.0}
"""How a child starts: ``python -c CHILD_BOOTSTRAP PARENT_PID NICE MODULE ARGS...`` (``NICE``: niceness
added in the child before it starts any thread, so every thread of it has it; 0: unchanged).

Besides ``PR_SET_PDEATHSIG`` a thread watches the parent (every 0.5 s): once it is gone, the child
sends itself SIGTERM and, if it is still running :data:`SHUTDOWN_BOUND_S` + 3 s later, exits. A CI
run saw ``medacq run`` keep reconnecting to its simulators for 8 s and more after ``medacq up`` was
SIGKILLed, with no sign of a shutdown: the death signal had not stopped it."""


def spawn_module(module: str, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 nice: int = 0) -> subprocess.Popen[bytes]:
    """Start ``python -m MODULE ARGS`` as a child of this process (module doc): stdin from
    ``/dev/null``, stdout and stderr to ``log_path`` (truncated), its own process group, SIGTERM
    when this process dies, ``nice`` added to its niceness (every thread). ``env`` defaults to this
    process's environment with ``PYTHONUNBUFFERED=1``."""
    argv = [sys.executable, "-c", CHILD_BOOTSTRAP, str(os.getpid()), str(int(nice)), module, *args]
    with open(log_path, "wb") as logf:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"},
                                process_group=0)


def signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a child's process group. Only while the child is not reaped: until then its pid, and
    so its group id, cannot be reused by an unrelated process."""
    if p.returncode is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not (yet) a group leader (not started by spawn_module): the child alone
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM every child's process group, wait up to ``grace_s`` (s) in all, then SIGKILL the rest."""
    procs = list(procs)
    for p in procs:
        signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
