"""Test ports come from outside the kernel's ephemeral range, so no outgoing connect can take one."""

from __future__ import annotations

import socket

from medacq.daemon.bench.runner import _ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    lo, hi = _ephemeral_range()
    ports = free_ports(12)
    assert len(set(ports)) == 12
    if lo > 10000 + 4 * 12 + 100:
        assert all(10000 <= p < lo for p in ports), (ports, lo)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_held_by_someone_else_is_never_handed_out():
    held = []
    try:
        for p in free_ports(50):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            s.listen()
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert not taken & set(free_ports(50))
    finally:
        for s in held:
            s.close()
