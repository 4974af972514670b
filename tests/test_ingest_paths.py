"""The daemon's cheap ingest paths: the reused receive buffer of every codec, the frame buffer
pool, the POSIX serial fast path (one poll + one read), IGTL bodies decoded from a caller's
buffer, and the biosignal read hold (frames complete, fewer reads)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from medacq.drivers._base import ConnectionLost, Frame
from medacq.drivers._bufpool import BufferPool
from medacq.drivers.hackeeg import HackEEGDriver, HackEEGSettings
from medacq.drivers.transports import SerialTransport
from medacq.protocols._sansio import ReceiveBuffer
from medacq.protocols.igtl import IgtlConnection, ImageMessage
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator


def test_receive_buffer_reuses_its_storage_and_keeps_its_contract():
    b = ReceiveBuffer(max_size=64)
    b.append(b"abcdef")
    assert b.consume(2) == b"ab" and len(b) == 4 and b.peek(10) == b"cdef"
    assert b.find(b"e") == 2 and b.find(b"a") == -1 and b.find(ord("f"), 1) == 3
    b.skip(4)
    assert len(b) == 0 and b.peek(3) == b"" and b.find(b"c") == -1  # consumed bytes are gone
    store = b._buf
    for i in range(50):  # a stream of messages through the same storage
        b.append(memoryview(bytes([i]) * 30))
        assert b.consume(30) == bytes([i]) * 30
    assert b._buf is store
    b.append(b"x" * 40)
    b.append(b"y" * 40)  # 16 oldest bytes dropped, counted
    assert len(b) == 64 and b.take_overflow() == 16 and b.peek(64) == b"x" * 24 + b"y" * 40
    b.append(b"z" * 100)  # more than max_size at once: only its newest 64 bytes stay
    assert b.take_overflow() == 64 + 36 and b.consume(100) == b"z" * 64
    v = b.view()
    assert v.readonly and len(v) == 0


def test_buffer_pool_reuses_a_buffer_only_when_nothing_refers_to_it():
    pool = BufferPool(keep=2)
    frame = pool.take(1000).view("<u2").reshape(10, 50)  # a frame still in use (a view)
    other = pool.take(1000)
    assert pool.allocated == 2 and not np.shares_memory(frame, other)
    root = frame
    while root.base is not None:
        root = root.base
    first = id(root)
    del other, root
    again = pool.take(1000)
    assert pool.reused == 1 and not np.shares_memory(again, frame)
    del again, frame
    assert id(pool.take(1000)) == first and pool.reused == 2
    assert pool.take(999).nbytes == 999  # another size: a new buffer


def test_serial_fast_path_reads_everything_waiting_at_once_and_a_hangup_is_connection_lost():
    master, slave = os.openpty()
    link = SerialTransport(os.ttyname(slave))
    try:
        assert link.fileno() is not None
        assert link.read_some(0.05) == b""  # nothing: a timeout, not an error
        os.write(master, b"0123456789" * 100)
        time.sleep(0.05)
        got = b""
        while len(got) < 1000:
            part = link.read_some(0.5)
            assert part
            got += part
        assert got == b"0123456789" * 100
        os.close(master)
        master = -1
        with pytest.raises(ConnectionLost, match="read from"):
            for _ in range(3):
                link.read_some(0.5)
    finally:
        link.close()
        os.close(slave)
        if master >= 0:
            os.close(master)


def test_igtl_bodies_decode_from_the_callers_buffer_as_read_only_views():
    img = np.arange(3 * 64 * 100, dtype="<i2").reshape(3, 64, 100)
    wire = IgtlConnection().send(ImageMessage(image=img, device_name="RF", header_version=2, message_id=7,
                                              metadata={"seq": "7"}))
    pool = BufferPool(keep=2)
    given: list[np.ndarray] = []

    def body_buffer(n: int) -> memoryview | None:
        given.append(pool.take(n))
        return memoryview(given[-1])

    rx = IgtlConnection(body_buffer=body_buffer)
    for i in range(0, len(wire), 1000):  # in pieces, as a socket delivers it
        rx.receive_data(wire[i:i + 1000])
    ev = rx.next_event()
    assert isinstance(ev, ImageMessage) and ev.metadata["seq"] == "7" and ev.message_id == 7
    np.testing.assert_array_equal(ev.image, img)
    assert not ev.image.flags.writeable and np.shares_memory(ev.image, given[0])
    del given[:]
    assert pool.take(len(wire) - 58) is not None and pool.reused == 0  # still held by the event's image
    plain = IgtlConnection()
    plain.receive_data(wire)
    np.testing.assert_array_equal(plain.next_event().image, img)


def test_hackeeg_hold_cuts_reads_and_keeps_every_sample():
    """Paced 500 SPS, 20-sample frames: every sample arrives, in order, in whole frames, with
    a few reads per frame (one per sample without the hold)."""
    with SimulatorServer(make_simulator("hackeeg", seed=3), "pty", paced=True) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=500, frame_samples=20))
        d.open()
        d.start()
        frames: list[Frame] = []
        reads = 0
        try:
            while len(frames) < 20:
                reads += 1
                frames += [f for f in d.read(0.2) if isinstance(f, Frame)]
        finally:
            d.stop()
            d.close()
    t_dev = [int(f.t_device or 0) for f in frames]
    assert all(f.data.shape == (8, 20) for f in frames)
    assert t_dev == list(range(t_dev[0], t_dev[0] + 20 * len(frames), 20))
    assert reads < 10 * len(frames)


def test_receive_buffer_gives_back_a_burst_of_storage_once_drained() -> None:
    """A burst (or a corrupt length field that made a codec wait for a huge message) grows the
    storage; once the unconsumed bytes fall below an eighth of it, it is given back, contents kept."""
    from medacq.protocols._sansio import ReceiveBuffer

    b = ReceiveBuffer(max_size=64 << 20)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(40):
        b.append(chunk)
    assert len(b) == 40 << 20 and len(b._buf) >= 40 << 20
    b.skip((40 << 20) - 1000)
    assert len(b) == 1000 and len(b._buf) < 1 << 20  # given back, the live bytes kept
    assert b.peek(1000) == chunk[-1000:]
    b.skip(1000)
    b.append(chunk[:10])
    assert b.peek(10) == chunk[:10]
    small = ReceiveBuffer(max_size=64 << 20)  # below the threshold the storage is kept and reused
    small.append(chunk * 4)
    cap = len(small._buf)
    small.skip(4 << 20)
    small.append(chunk)
    assert len(small._buf) == cap and small.peek(4) == chunk[:4]
