"""The simulators' output buffer: what goes on the wire is exactly what was queued, in order."""

from __future__ import annotations

import random

from medacq.simulators.adapters import OutBuffer


def test_random_appends_inserts_and_partial_sends_match_a_plain_bytearray():
    rng = random.Random(7)
    buf, model, wire, wire_model = OutBuffer(), bytearray(), bytearray(), bytearray()
    for step in range(5000):
        op = rng.random()
        if op < 0.45:  # a packet or a frame
            n = rng.choice([0, 1, 3, 33, 200, 70_000, 300_000])
            data = rng.randbytes(n)
            buf.append(data if step % 3 else bytearray(data))
            model += data
        elif op < 0.5:  # garbage in front of what is not yet sent
            junk = rng.randbytes(rng.randint(1, 50))
            buf.insert_front(junk)
            model[:0] = junk
        elif buf:  # a socket that takes part of what it is offered
            chunk = bytes(buf.peek(rng.choice([1 << 20, 1000])))
            assert chunk == model[: len(chunk)] and len(chunk) > 0
            n = rng.randint(1, len(chunk))
            wire += chunk[:n]
            wire_model += model[:n]
            buf.consume(n)
            del model[:n]
        assert len(buf) == len(model)
    assert wire == wire_model and len(wire) > 1_000_000


def test_small_packets_are_joined_and_a_large_frame_is_not_copied():
    buf = OutBuffer()
    for i in range(100):
        buf.append(bytes([i]) * 33)
    first = buf.peek()
    assert len(first) == 3300 and bytes(first) == b"".join(bytes([i]) * 33 for i in range(100))
    buf.consume(3300)
    frame = bytes(2 << 20)
    buf.append(frame)
    view = buf.peek(1 << 20)
    assert isinstance(view, memoryview) and view.obj is frame and len(view) == 1 << 20
    buf.consume(5)
    assert buf.peek(10).obj is frame and len(buf) == (2 << 20) - 5
    buf.clear()
    assert not buf and len(buf) == 0
