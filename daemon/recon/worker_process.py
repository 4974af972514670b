"""Reconstructors in a worker process of their own: one GIL per heavy stream.

The stage runs every reconstructor in one process, one thread per stream. A reconstructor
whose Python glue is large (the B-mode beamformer's per-frame envelope, log compression and
OpenIGTLink publishing around its sparse product) then waits for the GIL behind every other
stream's thread: ``medacq bench rig``'s ``gil`` section measures it (beside a pure-Python
thread the beamformer ran at 13.8 frames/s as a thread, 58 as a process). A stream whose
reconstructor declares ``isolation = "process"`` (or that ``[recon.isolation] <stream> =
"process"`` names) is served through :class:`ProcessReconstructor`: the stage's worker thread
for that stream stays where it is (queue, QoS, gaps, publishing are unchanged) and hands each
frame to a child process that holds the real reconstructor.

When it pays: where cores are spare and the GIL is the bottleneck. On the 2-core development
machine, saturated by the whole simulated rig, it did not (B-mode in a process: 39 and 45 of
``bench rig``'s 50 bars against 47 in a thread; the child's ~2.5 s start under load delayed the
first B-mode frame past 10 s, and the other streams lost the core the GIL used to give back), so
no reconstructor declares it by default; ``[recon.isolation]`` turns it on per stream.

Transport, per stream (:class:`WorkerProcess`):

* one Unix socketpair (a :class:`multiprocessing.connection.Connection` each side) carries the
  small messages: headers, outputs, control calls and their answers, pickled;
* frames go through one shared-memory block (``memfd_create``, its descriptor passed over the
  socket with ``SCM_RIGHTS``): the parent copies a batch in (one ``memcpy`` per frame), the
  child copies each frame out before the reconstructor sees it (a reconstructor may keep a
  frame; the block is reused by the next call). The block grows when a batch needs more.

One call is in flight at a time (the stream's worker thread makes them; other threads only
read :attr:`ProcessReconstructor.warming`, which answers from its last known value while a
call is running). The child is started with ``python -m medacq.daemon.recon.worker_process``
(not ``fork``: the parent has ZeroMQ threads), ignores SIGINT (the stage stops it), and dies
with its parent (``PR_SET_PDEATHSIG``, and end-of-file on its socket). A child that dies is
restarted at the next call (counted in ``restarts``; the stream reports ``warming`` until the
new one is built); the call that found it dead raises :class:`ReconstructorError`, so that
frame counts as an error, never as a silent loss.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np
from pydantic import BaseModel

from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.protocols.stream import StreamDescriptor

__all__ = ["ProcessReconstructor", "WorkerProcess"]

log = logging.getLogger("medacq.recon")

_START_TIMEOUT_S = 60.0
"""How long a child may take to import and answer its first message (numba loads its cache)."""
_RESTART_AFTER_S = 1.0
"""A child that died is not restarted sooner than this after the previous start."""


def _copy_in(block: mmap.mmap, arrays: Sequence[np.ndarray]) -> list[tuple[str, tuple[int, ...], int]]:
    """Copy ``arrays`` one after another into ``block`` (large enough); each one's
    ``(dtype, shape, byte offset)``. No view of the block outlives the call (it may be replaced)."""
    specs = []
    off = 0
    buf = np.frombuffer(block, np.uint8)
    try:
        for f in arrays:
            a = np.ascontiguousarray(f)
            buf[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
            specs.append((a.dtype.str, a.shape, off))
            off += a.nbytes
    finally:
        del buf
    return specs


def _copy_out(block: mmap.mmap, dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """A copy of the array :func:`_copy_in` put at ``offset`` (the block is reused by the next call)."""
    return np.frombuffer(block, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape).copy()


class _InBlock:
    """Where an output array lies in the child's output block (its place in a pickled :class:`Output`)."""

    __slots__ = ("dtype", "shape", "offset")

    def __init__(self, dtype: str, shape: tuple[int, ...], offset: int) -> None:
        self.dtype, self.shape, self.offset = dtype, shape, offset

    def __reduce__(self) -> tuple[Any, ...]:
        return (_InBlock, (self.dtype, self.shape, self.offset))


_SMALL_OUTPUT = 4096
"""Output arrays up to this many bytes travel pickled; larger ones through the output block."""


class WorkerProcess:
    """The child process of one stream, its socket and its shared-memory block.

    Thread safety: every method takes the instance's lock; a call blocks other callers until
    its answer arrives (the stream's worker thread is the only one that makes calls that
    take long).

    Args:
        stream: the stream's name (the child's process title and the log's).
        rt_priority: ``SCHED_RR`` priority (1..99) for the child's main thread, the one that runs
            the reconstructor, asked for before its first frame (after the build, so a background
            build keeps the normal class); ``None``: the normal class. Refused (EPERM: no
            CAP_SYS_NICE and an ``RLIMIT_RTPRIO`` below it) it is logged once and reported in
            :meth:`status` (``realtime_error``); frames go on at the normal class.
    """

    def __init__(self, stream: str, rt_priority: int | None = None) -> None:
        self.stream = stream
        self.rt_priority = rt_priority
        self.rt_error: str | None = None
        self._rt_gen = 0  # the child generation the real-time class was asked for in
        self.restarts = 0
        self.starts = 0
        self.last_exit: int | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._mm: mmap.mmap | None = None
        self._cap = 0
        self._out: mmap.mmap | None = None
        self.warming_of: dict[int, bool] = {}
        """Each reconstructor's ``warming`` as the child's last answer about it reported it."""
        self._started_at = 0.0
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    @property
    def generation(self) -> int:
        """Increases each time a child is started: a reconstructor built in an older child is gone."""
        return self.starts

    def _start_locked(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "medacq.daemon.recon.worker_process", str(child.fileno()), self.stream],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._proc, self._conn = proc, Connection(parent.detach())
        self._mm, self._cap, self._out = None, 0, None
        self._started_at = time.monotonic()
        self.starts += 1
        if self.starts > 1:
            self.restarts += 1
        try:  # the first answer: the child imported its modules
            if not self._conn.poll(_START_TIMEOUT_S):
                raise ReconstructorError(f"{self.stream}: worker process did not start within {_START_TIMEOUT_S:.0f} s")
            self._conn.recv()
        except (EOFError, OSError) as exc:
            self._dead_locked()
            raise ReconstructorError(f"{self.stream}: worker process failed to start ({exc or 'exited'})") from exc
        except ReconstructorError:
            self._dead_locked()
            raise

    def _dead_locked(self) -> None:
        """Forget a child that stopped answering (kill it if it is still there)."""
        proc, conn, mm, out = self._proc, self._conn, self._mm, self._out
        self._proc, self._conn, self._mm, self._cap, self._out = None, None, None, 0, None
        if conn is not None:
            conn.close()
        for m in (mm, out):
            if m is not None:
                m.close()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                self.last_exit = proc.wait(5)
            except subprocess.TimeoutExpired:
                self.last_exit = None

    def _ensure_locked(self) -> Connection:
        if self._closed:
            raise ReconstructorError(f"{self.stream}: worker process stopped")
        if self._conn is None or self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._dead_locked()
            wait = self._started_at + _RESTART_AFTER_S - time.monotonic()
            if self.starts and wait > 0:
                raise ReconstructorError(f"{self.stream}: worker process exited (code {self.last_exit}); "
                                         f"restarting in {wait:.1f} s")
            self._start_locked()
        assert self._conn is not None
        return self._conn

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the child to close its reconstructors and exit; kill it after ``timeout`` s."""
        with self._lock:
            self._closed = True
            conn, proc = self._conn, self._proc
            if conn is not None and proc is not None and proc.poll() is None:
                try:
                    conn.send(("exit",))
                    proc.wait(timeout)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._dead_locked()

    # -- calls ------------------------------------------------------------------------------
    def call(self, msg: tuple[Any, ...], frames: Sequence[np.ndarray] = ()) -> Any:
        """Send ``msg`` (with ``frames`` in shared memory) and return the child's answer.

        Raises:
            ReconstructorError: the child raised (its type and message), or it died (the
                next call starts a new one).
        """
        with self._lock:
            conn = self._ensure_locked()
            gen = self.starts
            try:
                specs = self._put_frames_locked(conn, frames) if frames else None
                conn.send(msg if specs is None else (*msg, specs))
                while True:
                    answer = conn.recv()
                    if answer[0] != "shm":
                        break
                    self._take_out_block_locked(conn, answer[1])
                status, value = answer[0], answer[1]
                if len(answer) > 2:
                    self.warming_of[msg[1]] = answer[2]
                if status == "ok" and msg[0] == "process":
                    value = self._outputs_locked(value)
            except (EOFError, OSError, pickle.PicklingError) as exc:
                self._dead_locked()
                raise ReconstructorError(f"{self.stream}: worker process exited (code {self.last_exit}) "
                                         f"during {msg[0]!r}: {type(exc).__name__}") from exc
            if gen != self.starts:  # cannot happen under the lock; kept as an invariant
                raise ReconstructorError(f"{self.stream}: worker process restarted during {msg[0]!r}")
        if status == "err":
            raise ReconstructorError(value)
        return value

    def _put_frames_locked(self, conn: Connection, frames: Sequence[np.ndarray]) -> list[tuple[str, tuple[int, ...], int]]:
        need = sum(f.nbytes for f in frames)
        if self._mm is None or need > self._cap:
            cap = max(need, 2 * self._cap, 1 << 16)
            try:
                fd = os.memfd_create(f"medacq-recon-{self.stream}", os.MFD_CLOEXEC)
            except OSError as exc:
                raise ReconstructorError(f"{self.stream}: no shared memory for {cap} bytes of frames: {exc}") from exc
            try:
                try:
                    os.ftruncate(fd, cap)
                    mm = mmap.mmap(fd, cap)
                except OSError as exc:  # the child is fine: this frame is an error, the next may fit
                    raise ReconstructorError(f"{self.stream}: no shared memory for {cap} bytes of frames: {exc}") \
                        from exc
                conn.send(("shm", cap))  # a failure from here on is the link's: the caller restarts the child
                send_handle(conn, fd, self._proc.pid if self._proc else 0)
            finally:
                os.close(fd)
            if self._mm is not None:
                self._mm.close()
            self._mm, self._cap = mm, cap
        return _copy_in(self._mm, frames)

    def _take_out_block_locked(self, conn: Connection, size: int) -> None:
        fd = recv_handle(conn)
        try:
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if self._out is not None:
            self._out.close()
        self._out = mm

    def _outputs_locked(self, results: list[list[Output]]) -> list[list[Output]]:
        """Each output's array out of the child's block (copied: the next call reuses the block)."""
        for outs in results:
            for o in outs:
                if isinstance(o.data, _InBlock):
                    assert self._out is not None
                    o.data = _copy_out(self._out, o.data.dtype, o.data.shape, o.data.offset)
        return results

    def ensure_realtime(self) -> None:
        """Ask the current child for ``SCHED_RR`` (once per child; see ``rt_priority``)."""
        if self.rt_priority is None or self._rt_gen == self.starts:
            return
        self._rt_gen = self.starts
        try:
            self.call(("realtime", self.rt_priority))
            self.rt_error = None
        except ReconstructorError as exc:
            if self.rt_error is None:
                log.warning("%s: real-time scheduling (SCHED_RR %d) refused: %s; running at the normal class",
                            self.stream, self.rt_priority, exc)
            self.rt_error = str(exc)

    @property
    def realtime(self) -> bool:
        """The child's main thread runs ``SCHED_RR``/``SCHED_FIFO`` now (read from the kernel)."""
        pid = self.pid
        if pid is None:
            return False
        try:
            return os.sched_getscheduler(pid) in (os.SCHED_RR, os.SCHED_FIFO)
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        """``pid`` (None when not running), ``starts``, ``restarts``, ``last_exit``, ``shm_bytes``,
        ``realtime_priority`` (asked for; None: not), ``realtime`` (in force), ``realtime_error``."""
        return {"pid": self.pid, "starts": self.starts, "restarts": self.restarts, "last_exit": self.last_exit,
                "shm_bytes": self._cap, "realtime_priority": self.rt_priority, "realtime": self.realtime,
                "realtime_error": self.rt_error}


class ProcessReconstructor(Reconstructor):
    """A reconstructor of class ``cls`` built and run in ``worker``'s child process.

    The stage uses it as it uses ``cls`` itself: ``process``/``process_batch`` send the frames
    and return the child's outputs; ``on_gap``, ``on_superseded``, ``control`` are calls;
    ``warming`` is the child's reconstructor's (true also until it is built, and while a dead
    child is restarted); ``close`` closes it in the child (the child keeps running for the
    stream's next reconstructor, as a port its reconstructor holds carries over).

    Args:
        worker: the stream's child process.
        cls: the reconstructor class (importable by module and name).
        descriptor: the source stream's descriptor.
        settings: ``[recon.settings.<modality>]``, validated here against ``cls.Settings``.
    """

    modality = "process"
    _ids = 0
    _ids_lock = threading.Lock()

    def __init__(self, worker: WorkerProcess, cls: type[Reconstructor], descriptor: StreamDescriptor,
                 settings: BaseModel | Mapping[str, Any] | None = None) -> None:
        self.descriptor = descriptor
        self.settings = cls.validate_settings(settings)
        self.inner = cls
        self.worker = worker
        with ProcessReconstructor._ids_lock:
            ProcessReconstructor._ids += 1
            self.rid = ProcessReconstructor._ids
        self._gen = -1
        self._warming = True
        self._closed = False
        self._build()

    def _build(self) -> None:
        self.worker.call(("build", self.rid, self.inner.__module__, self.inner.__qualname__,
                          self.descriptor.model_dump(mode="json"), self.settings.model_dump(mode="json")))
        self._gen = self.worker.generation

    def _current(self) -> None:
        """Rebuild in a restarted child (the old one took this reconstructor with it)."""
        if self._gen != self.worker.generation or self.worker.pid is None:
            self._warming = True
            self.worker.call(("ping",))  # starts a new child if the last one died (or raises)
            if self._gen != self.worker.generation:
                self._build()

    @property
    def warming(self) -> bool:
        w = self.worker
        if not self._closed and self._gen == w.generation and w.warming_of.get(self.rid) is False \
                and w.pid is not None:
            return False  # every answer from the child says it: no round trip per frame
        if self._closed or not w._lock.acquire(blocking=False):
            return self._warming  # a call is running: the last known value
        try:
            if self._gen != w.generation or w._conn is None or w.pid is None:
                # the child that held it is gone: not warming, so the stage's next call
                # restarts the child and rebuilds this reconstructor (frames wait meanwhile)
                self._warming = False
                return False
            w._conn.send(("warming", self.rid))
            answer = w._conn.recv()
            self._warming = bool(answer[1]) if answer[0] == "ok" else False
            w.warming_of[self.rid] = self._warming
        except (EOFError, OSError):
            w._dead_locked()
            self._warming = False
        finally:
            w._lock.release()
        return self._warming

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        self._current()
        self.worker.ensure_realtime()
        out: list[list[Output]] = self.worker.call(("process", self.rid, [header]), [frame])
        return out[0]

    def process_batch(self, headers: Sequence[dict[str, Any]], frames: Sequence[np.ndarray]) -> list[list[Output]]:
        self._current()
        self.worker.ensure_realtime()
        out: list[list[Output]] = self.worker.call(("process", self.rid, list(headers)), list(frames))
        return out

    def on_gap(self, first_seq: int | None, count: int) -> None:
        self._current()
        self.worker.call(("call", self.rid, "on_gap", (first_seq, count)))

    def on_superseded(self, count: int) -> None:
        self._current()
        self.worker.call(("call", self.rid, "on_superseded", (count,)))

    def control(self, action: str, args: dict[str, Any]) -> Any:
        self._current()
        return self.worker.call(("call", self.rid, "control", (action, args)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.worker.warming_of.pop(self.rid, None)
        if self._gen == self.worker.generation and self.worker.pid is not None:
            try:
                self.worker.call(("close", self.rid))
            except ReconstructorError as exc:
                log.warning("%s: closing %s in its worker process failed: %s", self.worker.stream,
                            self.inner.__name__, exc)


# -- the child ---------------------------------------------------------------------------------
class _OutBlock:
    """The child's output block: large output arrays are copied here and replaced by
    :class:`_InBlock` places before the answer is pickled (one copy each side instead of a
    pickle, a socket transfer and an unpickle). The block is sent to the parent (``shm``
    message before the answer) whenever it is replaced by a bigger one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.mm: mmap.mmap | None = None
        self.cap = 0

    def place(self, results: list[list[Output]]) -> None:
        big = [o for outs in results for o in outs
               if isinstance(o.data, np.ndarray) and o.data.nbytes > _SMALL_OUTPUT]
        need = sum(o.data.nbytes for o in big)
        if not big:
            return
        if self.mm is None or need > self.cap:
            cap = max(need, 2 * self.cap, 1 << 16)
            fd = os.memfd_create("medacq-recon-out", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, cap)
                new = mmap.mmap(fd, cap)
                self.conn.send(("shm", cap))
                send_handle(self.conn, fd, os.getppid())
            finally:
                os.close(fd)
            if self.mm is not None:
                self.mm.close()
            self.mm, self.cap = new, cap
        for o, (dt, shape, off) in zip(big, _copy_in(self.mm, [o.data for o in big])):
            o.data = _InBlock(dt, shape, off)  # type: ignore[assignment]


def _die_with_parent() -> None:
    """SIGTERM this process when its parent exits (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _child(conn: Connection) -> None:
    recons: dict[int, Reconstructor] = {}
    preloaded: set[type[Reconstructor]] = set()
    mm: mmap.mmap | None = None
    out = _OutBlock(conn)
    conn.send(("ok", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        op = msg[0]
        if op == "exit":
            break
        try:
            if op == "shm":
                try:
                    fd = recv_handle(conn)
                    try:
                        new = mmap.mmap(fd, msg[1])
                    finally:
                        os.close(fd)
                except Exception as exc:  # noqa: BLE001 - "shm" has no answer: an error here would
                    # be taken for the next call's answer; exit instead (the stage restarts the child)
                    log.error("cannot map the stage's frame block: %s", exc)
                    break
                if mm is not None:
                    mm.close()
                mm = new
                continue  # no answer: the next message is the call that uses it
            if op == "ping":
                value: Any = os.getpid()
            elif op == "realtime":  # this (the main) thread only: threads started later inherit it
                os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(int(msg[1])))
                value = None
            elif op == "build":
                _, rid, module, qualname, desc, settings = msg
                cls = getattr(importlib.import_module(module), qualname)
                if cls not in preloaded:
                    preloaded.add(cls)
                    try:
                        cls.preload()
                    except Exception as exc:  # noqa: BLE001 - a failed preload is the build's problem
                        log.warning("preloading %s failed: %s", qualname, exc)
                recons[rid] = cls(StreamDescriptor.model_validate(desc), settings)
                value = None
            elif op == "warming":
                r = recons.get(msg[1])
                value = bool(r.warming) if r is not None else False
            elif op == "process":
                _, rid, headers, specs = msg
                r = recons[rid]
                assert mm is not None
                frames = [_copy_out(mm, dt, shape, off) for dt, shape, off in specs]
                if len(frames) == 1:
                    value = [r.process(headers[0], frames[0])]
                else:
                    value = r.process_batch(headers, frames)
                out.place(value)
            elif op == "call":
                _, rid, name, args = msg
                value = getattr(recons[rid], name)(*args)
            elif op == "close":
                r = recons.pop(msg[1], None)
                if r is not None:
                    r.close()
                value = None
            else:
                raise ReconstructorError(f"unknown worker request {op!r}")
        except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
            msg_text = str(exc) if isinstance(exc, ReconstructorError) else f"{type(exc).__name__}: {exc}"
            try:
                conn.send(("err", msg_text))
            except (OSError, pickle.PicklingError):
                break
            continue
        r = recons.get(msg[1]) if op in ("build", "process", "call", "warming") else None
        try:
            conn.send(("ok", value) if r is None else ("ok", value, bool(r.warming)))
        except pickle.PicklingError as exc:
            conn.send(("err", f"the result of {op!r} cannot be sent back: {exc}"))
        except OSError:
            break
    for r in recons.values():
        try:
            r.close()
        except Exception:  # noqa: BLE001
            pass


def main(argv: list[str] | None = None) -> None:
    """``python -m medacq.daemon.recon.worker_process FD STREAM``: serve the stage on socket FD."""
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s recon worker {args[1]}: %(message)s")
    conn = Connection(int(args[0]))
    if os.getppid() == 1:  # the parent is already gone
        return
    _child(conn)


if __name__ == "__main__":  # run the module under its own name: what it pickles must unpickle in the stage
    from medacq.daemon.recon import worker_process as _named

    _named.main()
