"""OpenBCI Cyton, beyond the basics: time-stamped packets carrying one accelerometer axis
(codec bytes one at a time and host/device pairs, the simulator, the driver), and the
sample-rate rule over the USB dongle (``~n`` replies, ``~~``, the forced 250 Hz at ``b``,
the driver's validated ``sample_rate_hz``).

Firmware facts under test (OpenBCI/OpenBCI_Cyton_Library, OpenBCI_32bit_Library.cpp):
``sendTimeWithAccelSerial`` puts axis ``sampleCounter % 10`` = 7/8/9 → X/Y/Z in bytes
26–27 of a 0xC3/0xC4 packet (0x0000 on other counters); the first packet after ``<`` is
0xC3 ("time set"), later ones 0xC4; ``processChar('b')`` sets a non-250 rate back to 250
SPS (re-initialising the ADS) unless the command came from the WiFi shield.
"""

from __future__ import annotations


import numpy as np
import pytest
from pydantic import ValidationError

from medacq.drivers._base import Frame, Gap
from medacq.drivers.cyton import CytonDriver, CytonSettings
from medacq.protocols import cyton as cy
from medacq.protocols._sansio import LocalProtocolError
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.cyton import CytonInterface

from test_bio_drivers import assemble, collect, cyton_expected

from conftest import drain, feed_bytewise, run_unpaced

X, Y, Z = cy.AccelAxis.X, cy.AccelAxis.Y, cy.AccelAxis.Z


def ts_sample(counter: int, stop: int = 0xC4, accel=(100, -200, 8000), ts: int = 1000) -> cy.CytonSample:
    """A firmware-shaped time-stamped packet: the axis of this counter, or nothing."""
    axis = cy.timestamp_accel_axis(counter)
    reading = None if axis is None or stop not in (0xC3, 0xC4) else cy.AccelAxisReading(axis, accel[axis])
    chans = tuple((counter * 1000 + k) * (-1) ** k for k in range(8))
    aux = (reading.counts if reading else 0).to_bytes(2, "big", signed=True) + (ts + 4 * counter).to_bytes(4, "big")
    return cy.CytonSample(counter, chans, stop, aux, None, ts + 4 * counter, reading)


# ------------------------------------------------------------------------------ codec
def test_axis_by_counter_matches_the_firmware_table() -> None:
    got = {c: cy.timestamp_accel_axis(c) for c in range(256)}
    assert {c for c, a in got.items() if a is X} == {c for c in range(256) if c % 10 == 7}
    assert {c for c, a in got.items() if a is Y} == {c for c in range(256) if c % 10 == 8}
    assert {c for c, a in got.items() if a is Z} == {c for c in range(256) if c % 10 == 9}
    # the 8-bit counter wraps: 247/248/249 are X/Y/Z, 250..256 (0..6 after the wrap) carry none
    assert [got[c] for c in (247, 248, 249, 250, 255, 0, 6)] == [X, Y, Z, None, None, None, None]


def test_known_bytes_of_time_stamped_accel_packets() -> None:
    # counter 17 (→ X) = -2 (0xFFFE), board time 0x01020304 ms, stop 0xC4
    pkt = bytes([0xA0, 17]) + b"\x00\x00\x01" + b"\x00" * 21 + b"\xff\xfe" + b"\x01\x02\x03\x04" + b"\xc4"
    host = cy.CytonHostCodec()
    host.receive_data(pkt)
    (s,) = drain(host)
    assert s.stop_byte == 0xC4 and s.channels[0] == 1 and s.timestamp_ms == 0x01020304
    assert s.accel is None and s.accel_axis == cy.AccelAxisReading(X, -2)
    assert s.accel_readings == (cy.AccelAxisReading(X, -2),)
    # the same bytes on counters 18, 19 are Y and Z; on 20 they are no axis at all
    for counter, want in ((18, Y), (19, Z), (20, None)):
        host.receive_data(pkt[:1] + bytes([counter]) + pkt[2:])
        (s,) = drain(host)
        assert (s.accel_axis.axis if s.accel_axis else None) == want
    assert s.accel_readings == () and s.aux[:2] == b"\xff\xfe"  # raw bytes stay available
    # 0xC3 ("time set": the first packet after '<') carries the axis the same way
    host.receive_data(pkt[:1] + bytes([9]) + pkt[2:32] + b"\xc3")
    (s,) = drain(host)
    assert s.accel_axis == cy.AccelAxisReading(Z, -2) and s.timestamp_ms == 0x01020304
    # raw-aux time-stamped packets (0xC5/0xC6) carry aux, never an accelerometer axis
    host.receive_data(pkt[:1] + bytes([7]) + pkt[2:32] + b"\xc6")
    (s,) = drain(host)
    assert s.accel_axis is None and s.accel_readings == () and s.aux[:2] == b"\xff\xfe"


def test_time_stamped_stream_bytewise_host_device_pair() -> None:
    dev, host = cy.CytonDeviceCodec(), cy.CytonHostCodec()
    sent = [ts_sample(c % 256, 0xC3 if c == 0 else 0xC4) for c in range(300)]  # wraps 255 → 0
    wire = dev.send(cy.CytonText("Time stamp ON")) + b"".join(dev.send(s) for s in sent)
    got = feed_bytewise(host, wire)
    assert got[0] == cy.CytonText("Time stamp ON")
    assert got[1:] == sent  # every field, accel_axis included
    axes = [(g.counter, g.accel_axis) for g in got[1:] if g.accel_axis is not None]
    # 25 triples in 0..255, then 4 more after the wrap (counter 0 follows 255, not "256")
    assert len(axes) == 3 * (25 + 4) and all(a.counts == (100, -200, 8000)[a.axis] for _, a in axes)
    # bytes 26-27 are zero on every counter that carries no axis, as the firmware sends them
    assert all(g.aux[:2] == b"\x00\x00" for g in got[1:] if g.accel_axis is None)


def test_encoding_a_wrong_axis_is_a_local_error() -> None:
    dev = cy.CytonDeviceCodec()
    chans = (0,) * 8
    bad = [
        cy.CytonSample(5, chans, 0xC4, accel_axis=cy.AccelAxisReading(X, 1)),   # counter 5: no axis
        cy.CytonSample(7, chans, 0xC4, accel_axis=cy.AccelAxisReading(Y, 1)),   # counter 7 is X
        cy.CytonSample(7, chans, 0xC0, accel_axis=cy.AccelAxisReading(X, 1)),   # not time-stamped
        cy.CytonSample(7, chans, 0xC6, accel_axis=cy.AccelAxisReading(X, 1)),   # raw-aux variant
        cy.CytonSample(7, chans, 0xC4, accel_axis=cy.AccelAxisReading(X, 40000)),  # > int16
    ]
    for s in bad:
        with pytest.raises(LocalProtocolError):
            dev.send(s)
    assert dev.send(cy.CytonSample(7, chans, 0xC4, accel_axis=cy.AccelAxisReading(X, -1)))[26:28] == b"\xff\xff"


def test_accel_readings_of_standard_packets() -> None:
    assert cy.CytonSample(0, (0,) * 8, 0xC0, accel=(0, 0, 0)).accel_readings == ()  # no new reading
    r = cy.CytonSample(0, (0,) * 8, 0xC0, accel=(0, 0, 8000)).accel_readings
    assert [(a.axis, a.counts) for a in r] == [(X, 0), (Y, 0), (Z, 8000)]


def test_daisy_pairs_keep_both_halves_axes() -> None:
    p = cy.DaisyPairer()
    out = []
    for c in range(10):
        out += p.push(ts_sample(c))
    merged = [m for m in out if isinstance(m, cy.DaisySample)]
    assert [m.counter for m in merged] == [0, 2, 4, 6, 8]
    # pair (6, 7): X rides in the main half; pair (8, 9): Y in the Daisy half, Z in the main
    assert merged[3].accel_readings == (cy.AccelAxisReading(X, 100),)
    assert merged[4].accel_readings == (cy.AccelAxisReading(Y, -200), cy.AccelAxisReading(Z, 8000))
    assert merged[4].timestamp_ms == 1000 + 4 * 9  # the main (odd) packet's time


# -------------------------------------------------------------------------- simulator
def test_simulator_time_stamped_packets_follow_the_firmware() -> None:
    dev, host = CytonInterface(seed=1, accel_g=(0.25, -0.5, 0.75)), cy.CytonHostCodec()
    assert drain_bytes(host, dev.on_bytes(b"<", 0.0)) == [cy.CytonText("Time stamp ON")]
    dev.on_bytes(b"b", 1.0)
    evs = drain_bytes(host, run_unpaced(dev, 2.0))
    assert len(evs) == 251 and [e.counter for e in evs] == [k % 256 for k in range(251)]
    assert evs[0].stop_byte == 0xC3 and {e.stop_byte for e in evs[1:]} == {0xC4}
    assert np.all(np.diff([e.timestamp_ms for e in evs]) == 4) and evs[0].timestamp_ms == 1000
    want = {X: 2000, Y: -4000, Z: 6000}  # g / (0.002/16)
    for e in evs:
        axis = cy.timestamp_accel_axis(e.counter)
        assert (e.accel_axis is None) == (axis is None)
        if axis is not None:
            assert e.accel_axis.counts == want[axis]
    # a new stream does not repeat the "time set" packet; a second '<' does
    dev.on_bytes(b"s", 2.0)
    dev.on_bytes(b"b", 3.0)
    assert drain_bytes(host, run_unpaced(dev, 3.01))[0].stop_byte == 0xC4
    dev.on_bytes(b"<", 3.01)  # while streaming: no reply
    assert [e.stop_byte for e in drain_bytes(host, run_unpaced(dev, 3.02))][-3:] == [0xC3, 0xC4, 0xC4]
    dev.on_bytes(b"s", 3.02)
    assert drain_bytes(host, dev.on_bytes(b">", 3.1)) == [cy.CytonText("Time stamp OFF")]
    dev.on_bytes(b"b", 4.0)
    std = drain_bytes(host, run_unpaced(dev, 4.1))
    assert {e.stop_byte for e in std} == {0xC0}
    assert [e.counter for e in std if e.accel_readings] == [0, 10, 20]  # 25 Hz accelerometer
    assert std[0].accel == (2000, -4000, 6000) and std[1].accel == (0, 0, 0)


def test_simulator_board_modes_switch_the_packet_type() -> None:
    dev, host = CytonInterface(seed=1), cy.CytonHostCodec()
    assert drain_bytes(host, dev.on_bytes(b"/2", 0.0)) == [cy.CytonText("Success: analog")]
    assert drain_bytes(host, dev.on_bytes(b"//", 0.0)) == [cy.CytonText("Success: analog")]
    dev.on_bytes(b"<b", 0.0)
    evs = drain_bytes(host, run_unpaced(dev, 0.05))
    assert evs[0].stop_byte == 0xC5 and {e.stop_byte for e in evs[1:]} == {0xC6}
    assert all(e.accel_axis is None for e in evs)
    # board-mode replies come even while streaming; default mode turns the accelerometer on
    got = drain_bytes(host, dev.on_bytes(b"/0", 0.05) + run_unpaced(dev, 0.1))
    assert got[0] == cy.CytonText("Success: default")
    assert got[1].stop_byte == 0xC3 and {e.stop_byte for e in got[2:]} == {0xC4}
    dev.on_bytes(b"s>", 0.1)
    assert drain_bytes(host, dev.on_bytes(b"/4", 0.2)) == [cy.CytonText("Success: marker")]
    dev.on_bytes(b"b", 1.0)
    first = drain_bytes(host, run_unpaced(dev, 1.0))
    dev.on_bytes(b"`A", 1.001)
    nxt = drain_bytes(host, run_unpaced(dev, 1.008))
    assert first[0].stop_byte == 0xC1 and first[0].aux == b"\x00" * 6
    assert [e.aux[:2] for e in nxt] == [b"\x00A", b"\x00\x00"]  # the marker, once, in auxData[0]


def test_simulator_sample_rate_rule() -> None:
    dev, host = CytonInterface(seed=2, daisy=True), cy.CytonHostCodec()
    say = lambda cmd, t=0.0: [e.text for e in drain_bytes(host, dev.on_bytes(cmd, t))]  # noqa: E731
    assert say(b"~~") == ["Success: Sample rate is 250Hz"]
    assert say(b"x2040110X") == ["Success: Channel set for 2"]
    # ~4 answers 1000 Hz and re-initialises the ADS: the gain just set is gone
    assert say(b"~4") == ["Success: Sample rate is 1000Hz"]
    assert dev.gains().tolist() == [24] * 16
    assert say(b"~~") == ["Success: Sample rate is 1000Hz"]
    assert "CONFIG1, 01, B4, " in say(b"?")[0]  # DR bits = 4; the main ADS drives the Daisy's clock
    assert say(b"v")[0].startswith("OpenBCI V3 8-16 channel")
    assert say(b"~~") == ["Success: Sample rate is 1000Hz"]  # a soft reset keeps the rate
    assert say(b"~9") == ["Failure: sample value out of bounds"]
    assert say(b"~x") == ["Failure: invalid sample value"]
    assert say(b"x2040110X") == ["Success: Channel set for 2"]
    # 'b' over the dongle: back to 250 SPS first, which wipes the channel settings again
    assert say(b"b", 1.0) == []
    assert dev.sample_rate_hz == 250 and dev.gains().tolist() == [24] * 16
    evs = drain_bytes(host, run_unpaced(dev, 2.0 - 1e-6) + dev.on_bytes(b"~~", 2.0))
    assert sum(isinstance(e, cy.CytonSample) for e in evs) == 250  # 250 packets/s, 125 Hz pairs
    assert evs[-1] == cy.CytonText("Success: Sample rate is 250Hz")  # '~~' answers mid-stream
    # '~n' mid-stream: no reply, ADS restarted (counter back to 0), packets still 250/s
    assert dev.on_bytes(b"~5", 2.0) == b""
    evs = drain_bytes(host, run_unpaced(dev, 2.1 - 1e-6))
    assert [e.counter for e in evs] == list(range(25))
    dev.on_bytes(b"s", 2.1)
    assert say(b"~~", 2.2) == ["Success: Sample rate is 500Hz"]


def test_simulator_register_dump_reflects_settings() -> None:
    dev, host = CytonInterface(seed=2), cy.CytonHostCodec()
    for cmd in (b"x2040110X", b"x5161000X", b"z410Z", b"3", b"x8060111X"):
        dev.on_bytes(cmd, 0.0)
    (dump,) = drain_bytes(host, dev.on_bytes(b"?", 0.0))
    regs = {ln.split(", ")[0]: ln.split(", ")[2] for ln in dump.text.splitlines() if ln.count(", ") == 10}
    assert regs["ADS_ID"] == "3E" and regs["CONFIG1"] == "96" and regs["LOFF"] == "02"
    assert regs["CH1SET"] == "68" and regs["CH2SET"] == "48"  # gain 24 / gain 8, SRB2 closed
    assert regs["CH3SET"] == "E0"  # '3': powered down, SRB2 opened, gain kept
    assert regs["CH5SET"] == "E1"  # GUI "off": powered down, shorted, no SRB2
    assert regs["BIAS_SENSP"] == regs["BIAS_SENSN"] == f"{0xFF & ~0b10100:02X}"
    assert regs["LOFF_SENSP"] == "08" and regs["LOFF_SENSN"] == "00"
    assert regs["MISC1"] == "20"  # SRB1 closed by channel 8's x command (one switch per ADS)
    assert "LIS3DH Registers\n" in dump.text and "0x0F 33" in dump.text
    assert "Daisy ADS Registers" not in dump.text
    # '!' .. restores SRB2 and bias as they were; 'd' clears lead-off and SRB1
    dev.on_bytes(b"#d", 0.0)
    (dump,) = drain_bytes(host, dev.on_bytes(b"?", 0.0))
    regs = {ln.split(", ")[0]: ln.split(", ")[2] for ln in dump.text.splitlines() if ln.count(", ") == 10}
    assert all(regs[f"CH{k}SET"] == "68" for k in range(1, 9))
    assert regs["LOFF_SENSP"] == "00" and regs["MISC1"] == "00" and regs["BIAS_SENSP"] == "FF"
    assert drain_bytes(host, dev.on_bytes(b"-", 0.0)) == [cy.CytonText("Success: Configured internal test signal.")]


def drain_bytes(codec, data: bytes) -> list:
    codec.receive_data(data)
    return drain(codec)


# ----------------------------------------------------------------------------- driver
@pytest.mark.parametrize("daisy", [False, True])
def test_driver_accel_from_time_stamped_packets(daisy):
    iface = CytonInterface(seed=6, daisy=daisy, accel_g=(0.25, -0.5, 0.75))
    iface.on_bytes(b"<", 0.0)  # a previous session left time stamps on; 'v' keeps them
    with SimulatorServer(iface, "pty", paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=daisy))
        d.open()
        try:
            d.start()
            items = collect(d, 300)
        finally:
            d.stop()
            d.close()
        assert sim.interface.packet_type == 4  # it really streamed 0xC4 packets
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, cyton_expected(6, daisy, idx.size), rtol=1e-6, atol=1e-3)
    frames = [f for f in items if isinstance(f, Frame)]
    # X, Y, Z arrive on counters 7, 8, 9: every frame after the first ten packets has all three
    metas = [f.meta for f in frames if f.t_device * (2 if daisy else 1) >= 10]
    assert metas and all(m == {"accel_g": [0.25, -0.5, 0.75]} for m in metas)


def test_driver_sample_rate_setting_is_validated():
    assert CytonSettings(daisy=False, sample_rate_hz=250).sample_rate_hz == 250
    assert CytonSettings(daisy=True, sample_rate_hz=125).sample_rate_hz == 125
    assert CytonSettings(daisy=True).sample_rate_hz is None
    with pytest.raises(ValidationError, match=r"sample_rate_hz=1000 cannot be delivered.*250 SPS.*RFduino"):
        CytonSettings(daisy=False, sample_rate_hz=1000)
    with pytest.raises(ValidationError, match=r"Daisy.*125 Hz.*use sample_rate_hz=125"):
        CytonSettings(daisy=True, sample_rate_hz=250)
    with pytest.raises(ValidationError, match="use sample_rate_hz=250"):
        CytonSettings(daisy=False, sample_rate_hz=125)


def test_driver_puts_a_board_left_at_1khz_back_before_configuring():
    iface = CytonInterface(seed=4)
    iface.on_bytes(b"~4", 0.0)  # another program left the ADS at 1000 SPS; 'v' keeps it
    with SimulatorServer(iface, "pty", paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=False, gain=8, sample_rate_hz=250))
        d.open()
        try:
            assert sim.interface.sample_rate_hz == 250 and d.counters.get("rate_reset") == 1
            assert d.descriptor().meta["board_sample_rate_hz"] == 250
            d.start()
            items = collect(d, 300)
        finally:
            d.stop()
            d.close()
        # had the driver left 1000 SPS, 'b' would have reset the ADS and the gains to 24
        assert sim.interface.gains().tolist() == [8] * 8
    idx, vals = assemble(items)
    np.testing.assert_allclose(vals, cyton_expected(4, False, idx.size, gain=8), rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("daisy", [False, True])
def test_driver_counts_whole_counter_wraps_from_the_board_clock(daisy):
    """A 2.4 s radio dropout (600 packets: two wraps of the 8-bit counter and 88) is 600
    lost packets, not 88: time-stamped packets carry the board's millisecond clock."""
    iface = CytonInterface(seed=7, daisy=daisy)
    iface.on_bytes(b"<", 0.0)
    with SimulatorServer(iface, "pty", paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=daisy))
        d.open()
        try:
            d.start()
            items = collect(d, 40)
            sim.call(sim.interface.drop_packets, 600)
            items += collect(d, 400)
        finally:
            d.stop()
            d.close()
        dropped = sim.interface.packets_dropped
    gaps = [g for g in items if isinstance(g, Gap)]
    assert len(dropped) == 600 and len(gaps) == 1
    # with a Daisy a 16-channel sample needs both packets: a dropout that starts or ends
    # between the halves costs the sample they share
    touched = sorted({k // 2 for k in dropped}) if daisy else dropped
    assert gaps[0].lost_samples == len(touched)
    idx, vals = assemble(items)
    assert sorted(set(range(int(idx.max()) + 1)) - set(idx.tolist())) == touched
    np.testing.assert_allclose(vals, cyton_expected(7, daisy, int(idx.max()) + 1)[:, idx], rtol=1e-6, atol=1e-3)
