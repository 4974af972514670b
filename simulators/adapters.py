"""Transport adapters: serve a :class:`DeviceInterface` on a real pty or TCP port.

:class:`SimulatorServer` runs one device in a background thread. It owns the clock:
*paced* (real time, the device rate) or *unpaced* (virtual time advanced as fast as the
host reads, for tests). Its :attr:`faults` side door pulls the cable, refuses reconnection,
stalls, corrupts, injects garbage, slows replies and drops packets.

Addresses handed to drivers:

* pty: a stable symlink (``<dir>/<name>``) to the current ``/dev/pts/N``. When the cable is
  pulled the pty is closed; when it is "plugged back" a new pty is made and the symlink
  re-pointed, like a USB serial device reappearing under its udev name.
* TCP: ``socket://127.0.0.1:PORT`` (pyserial URL) -- drivers that speak TCP natively take
  ``tcp://`` instead; :attr:`SimulatorServer.tcp_address` gives that form.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import select
import socket
import tempfile
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ._interface import DeviceInterface

__all__ = ["FaultInjector", "SimulatorServer", "PortInUseError", "LATE_SAMPLES"]

_OUT_HIGH = 1 << 20  # unpaced mode: produce more only below this many pending bytes
_OUT_CAP = 64 << 20  # paced mode: a host that does not read loses data past this
LATE_SAMPLES = 8192
"""How many of a paced simulator's latest lateness values :attr:`SimulatorServer.late_s` keeps."""


class PortInUseError(OSError):
    """The TCP port a simulator was asked to serve on is taken."""


@dataclass
class FaultInjector:
    """Faults to apply on the wire. Thread-safe setters; the server thread applies them.

    All durations in seconds. Counters record what was applied.
    """

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    pull_requested: bool = False
    refuse_until: float = 0.0
    stall_until: float = 0.0
    corrupt_bytes: int = 0
    garbage_pending: int = 0
    reply_delay_s: float = 0.0
    seed: int = 0
    cable_pulls: int = 0
    bytes_corrupted: int = 0
    garbage_sent: int = 0

    def pull_cable(self, refuse_s: float = 0.0) -> None:
        """Drop the connection now; refuse (or do not re-create) it for ``refuse_s``."""
        with self._lock:
            self.pull_requested = True
            self.refuse_until = time.monotonic() + refuse_s

    def stall(self, seconds: float) -> None:
        """Neither read nor write for ``seconds`` (a hung device)."""
        with self._lock:
            self.stall_until = time.monotonic() + seconds

    def corrupt(self, nbytes: int) -> None:
        """Flip bits in the next ``nbytes`` outgoing bytes."""
        with self._lock:
            self.corrupt_bytes += nbytes

    def garbage(self, nbytes: int) -> None:
        """Send a burst of ``nbytes`` random bytes."""
        with self._lock:
            self.garbage_pending += nbytes

    def slow_replies(self, delay_s: float) -> None:
        """Delay every command reply by ``delay_s`` (0 restores)."""
        with self._lock:
            self.reply_delay_s = delay_s

    def _mangle(self, data: bytes | memoryview, rng: random.Random) -> bytes | memoryview:
        with self._lock:
            n = min(self.corrupt_bytes, len(data))
            self.corrupt_bytes -= n
            self.bytes_corrupted += n
        if not n:
            return data
        b = bytearray(data)
        for i in range(n):
            b[i] ^= rng.randrange(1, 256)
        return bytes(b)

    def _take_garbage(self, rng: random.Random) -> bytes:
        with self._lock:
            n, self.garbage_pending = self.garbage_pending, 0
            self.garbage_sent += n
        return rng.randbytes(n) if n else b""


class OutBuffer:
    """Bytes waiting for the wire, as the chunks they were produced in (no copy of a large one).

    A simulator's frames can be megabytes (an RF frame, an X-ray image) that a socket takes in
    pieces; a single ``bytearray`` was copied on every append, up to 1 MiB again for every
    partial send, and shifted on every consume, all holding the simulators' shared GIL (a fifth
    of the samples in which a simulator thread held it, beside the whole rig). Here a large chunk
    goes out as a ``memoryview`` of itself; small ones (packets of a few bytes) are joined, up to
    :attr:`JOIN` bytes, so that they do not cost a system call each. (The simulators' CPU, ~34 %
    of a core beside the rig, did not measurably change: memory copies are cheap, holding the GIL
    while one is preempted is what the other simulators wait for.)
    """

    JOIN = 64 << 10

    def __init__(self) -> None:
        self._chunks: deque[bytes | memoryview] = deque()
        self._head = 0  # bytes of the first chunk already sent
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` at the end (anything but ``bytes`` is copied once: its producer may reuse it)."""
        if data:
            b = data if isinstance(data, bytes) else bytes(data)
            self._chunks.append(b)
            self._len += len(b)

    def insert_front(self, data: bytes) -> None:
        """Queue ``data`` before everything not yet sent (garbage injected mid-frame, as on a wire)."""
        if not data:
            return
        if self._head and self._chunks:
            self._chunks[0] = memoryview(self._chunks[0])[self._head:]
            self._head = 0
        self._chunks.appendleft(data)
        self._len += len(data)

    def clear(self) -> None:
        self._chunks.clear()
        self._head = self._len = 0

    def peek(self, limit: int = 1 << 20) -> bytes | memoryview:
        """Up to ``limit`` bytes from the front, without removing them."""
        first = self._chunks[0]
        rest = len(first) - self._head
        join = min(self.JOIN, limit)
        if rest >= join or len(self._chunks) == 1:
            return memoryview(first)[self._head:self._head + limit]
        parts = [memoryview(first)[self._head:]]
        n = rest
        for c in itertools.islice(self._chunks, 1, None):  # stops at ``join`` bytes, however long the queue
            if n + len(c) > join:
                break
            parts.append(c)
            n += len(c)
        return b"".join(parts)

    def consume(self, n: int) -> None:
        """Drop the first ``n`` bytes (they were sent)."""
        self._len -= n
        while n:
            first = self._chunks[0]
            rest = len(first) - self._head
            if n < rest:
                self._head += n
                return
            n -= rest
            self._chunks.popleft()
            self._head = 0


class SimulatorServer:
    """Serve one :class:`DeviceInterface` over a pty or TCP, in a background thread.

    Args:
        interface: the device.
        transport: ``"pty"`` or ``"tcp"``.
        host, port: TCP bind address (port 0 picks a free one).
        paced: real time (True) or as fast as the host reads (False).
        name: pty symlink name (default: interface class name).
        link_dir: folder for the pty symlink (default: a fresh temp folder).
    """

    def __init__(
        self,
        interface: DeviceInterface,
        transport: Literal["pty", "tcp"] = "pty",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        paced: bool = True,
        name: str | None = None,
        link_dir: str | None = None,
    ) -> None:
        self.interface = interface
        self.transport = transport
        self.paced = paced
        self.faults = FaultInjector()
        self._rng = random.Random(self.faults.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # guards interface calls from other threads
        self._listen: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._out = OutBuffer()
        self._t0 = time.monotonic()
        self._vt = 0.0
        #: paced: how late (s) the device's due work ran -- the time from its deadline to the
        #: poll() that produced it, the newest :data:`LATE_SAMPLES`. A real device is not late;
        #: a simulator sharing a busy machine is, and a frame's age counts it
        self.late_s: deque[float] = deque(maxlen=LATE_SAMPLES)
        self.connections = 0
        self.bytes_out = 0
        self.bytes_overrun = 0
        self.error: BaseException | None = None
        self._name = name or type(interface).__name__.lower()
        self._link_dir = link_dir
        self._own_dir = False
        self.link_path: str | None = None
        if transport == "tcp":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                s.close()
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUseError(exc.errno, f"TCP port {host}:{port} is already in use") from None
                raise
            s.listen(1)
            s.setblocking(False)
            self._listen = s
            self.host, self.port = s.getsockname()[:2]
        elif transport == "pty":
            if self._link_dir is None:
                self._link_dir = tempfile.mkdtemp(prefix="medacq-sim-")
                self._own_dir = True
            self.link_path = os.path.join(self._link_dir, self._name)
            self._open_pty()
        else:
            raise ValueError(f"unknown transport {transport!r} (pty or tcp)")

    # -- public ---------------------------------------------------------------------
    @property
    def address(self) -> str:
        """What a pyserial-based driver opens: the pty symlink or ``socket://host:port``."""
        if self.transport == "pty":
            assert self.link_path
            return self.link_path
        return f"socket://{self.host}:{self.port}"

    @property
    def tcp_address(self) -> str:
        """``tcp://host:port`` for drivers that speak TCP themselves."""
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> "SimulatorServer":
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self._name}", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Tell the serving thread to stop, without waiting (:meth:`stop` waits): a rig asks all
        of its simulators at once, then waits for each."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._close_conn()
        if self._listen:
            self._listen.close()
        if self.link_path and os.path.islink(self.link_path):
            os.unlink(self.link_path)
        if self._own_dir and self._link_dir:
            try:
                os.rmdir(self._link_dir)
            except OSError:
                pass

    def __enter__(self) -> "SimulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn, *args, **kwargs):
        """Run ``fn(*args)`` under the server's lock (for side-door calls into the interface)."""
        with self._lock:
            return fn(*args, **kwargs)

    # -- internals ------------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic() - self._t0 if self.paced else self._vt

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link_path + ".tmp"  # type: ignore[operator]
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link_path)  # type: ignore[arg-type]
        self.connections += 1
        with self._lock:
            self._out.append(self.interface.on_connect(self._now()))

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        self._out.clear()

    def _fd(self) -> int | None:
        if self.transport == "tcp":
            return self._conn.fileno() if self._conn else None
        return self._master

    def _disconnect(self) -> None:
        with self._lock:
            self.interface.on_disconnect(self._now())
        self._close_conn()
        if self.transport == "pty" and self.link_path and os.path.islink(self.link_path):
            os.unlink(self.link_path)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - surfaced via .error
            self.error = exc

    def _loop(self) -> None:
        f = self.faults
        while not self._stop.is_set():
            mono = time.monotonic()
            if f.pull_requested:
                with f._lock:
                    f.pull_requested = False
                    f.cable_pulls += 1
                if self._fd() is not None:
                    self._disconnect()
            if mono < f.stall_until:
                time.sleep(min(0.05, f.stall_until - mono))
                continue
            fd = self._fd()
            if fd is None:
                if mono < f.refuse_until:
                    self._refuse()
                    time.sleep(0.02)
                    continue
                if self.transport == "pty":
                    self._open_pty()
                else:
                    self._accept(timeout=0.1)
                continue
            self._service(fd)

    def _refuse(self) -> None:
        if self._listen is None:
            return
        try:
            c, _ = self._listen.accept()
            c.close()
        except BlockingIOError:
            pass

    def _accept(self, timeout: float) -> None:
        assert self._listen is not None
        r, _, _ = select.select([self._listen], [], [], timeout)
        if not r:
            return
        try:
            conn, _ = self._listen.accept()
        except BlockingIOError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        self._conn = conn
        self.connections += 1
        if not self.paced:
            self._vt = 0.0
        with self._lock:
            self._out.append(self.interface.on_connect(self._now()))

    def _service(self, fd: int) -> None:
        f = self.faults
        with self._lock:
            deadline = self.interface.next_deadline()
        if self.paced:
            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - self._now()))
        else:
            wait = 0.05 if deadline is None else 0.0
        if self._out:
            wait = min(wait, 0.05)
        r, w, _ = select.select([fd], [fd] if self._out else [], [], wait)
        if r:
            try:
                data = self._read(fd)
            except OSError:
                data = b""
            if data == b"":
                self._disconnect()
                return
            if data:
                if f.reply_delay_s:
                    time.sleep(f.reply_delay_s)
                with self._lock:
                    reply = self.interface.on_bytes(data, self._now())
                if reply:
                    # the reply goes out now (behind what is already queued, as on a wire), not
                    # after poll() below: producing the next output can take long (the scanner
                    # renders its first frames after START), and a device answers first
                    self._out.append(reply)
                    self._write(fd)
                    if self._fd() != fd:  # the write found the host gone
                        return
        with self._lock:
            deadline = self.interface.next_deadline()
            if deadline is not None:
                if not self.paced and len(self._out) < _OUT_HIGH:
                    self._vt = max(self._vt, deadline)
                now = self._now()
                if now >= deadline:
                    if self.paced:
                        self.late_s.append(now - deadline)
                    produced = self.interface.poll(self._now())
                    if len(self._out) > _OUT_CAP:
                        # the host is not reading: like a device FIFO, lose the new data
                        self.bytes_overrun += len(produced)
                    else:
                        self._out.append(produced)
        junk = f._take_garbage(self._rng)
        if junk:
            self._out.insert_front(junk)
        if self._out:
            self._write(fd)

    def _read(self, fd: int) -> bytes | None:
        """Bytes from the host; ``b""`` when the host went away; ``None`` if none yet."""
        try:
            if self.transport == "tcp":
                assert self._conn is not None
                return self._conn.recv(65536)
            return os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return None

    def _write(self, fd: int) -> None:
        chunk = self._out.peek(1 << 20)
        chunk = self.faults._mangle(chunk, self._rng)
        try:
            if self.transport == "tcp":
                assert self._conn is not None
                n = self._conn.send(chunk)
            else:
                n = os.write(fd, chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._disconnect()
            return
        self._out.consume(n)
        self.bytes_out += n
