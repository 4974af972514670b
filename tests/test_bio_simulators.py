"""Biosignal simulators driven in memory with the host-role codecs."""

from __future__ import annotations

import numpy as np

from medacq.protocols import cyton as cy
from medacq.protocols import hackeeg as he
from medacq.protocols import quspin as qs
from medacq.protocols._sansio import NEED_DATA
from medacq.simulators.biosignal_models import EEGModel, EKGModel
from medacq.simulators.cyton import CytonInterface
from medacq.simulators.hackeeg import HackEEGInterface
from medacq.simulators.quspin import QuSpinInterface

from conftest import run_unpaced


def events(codec, data: bytes) -> list:
    codec.receive_data(data)
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


# ------------------------------------------------------------------------- Cyton
def test_cyton_brainflow_connect_sequence() -> None:
    """What BrainFlow's OpenBCISerialBoard does: 'v' then read to '$$$', then 'd', and
    fail if the reply starts with 'Failure'; 'b' starts, 's' stops."""
    dev, host = CytonInterface(seed=1), cy.CytonHostCodec()
    assert dev.on_connect(0.0) == b""
    (banner,) = events(host, dev.on_bytes(b"v", 0.01))
    assert banner.text.startswith("OpenBCI V3 8-16 channel") and "Firmware: v3.1.2" in banner.text
    (d,) = events(host, dev.on_bytes(b"d", 0.02))
    assert d.text == "updating channel settings to default"
    assert events(host, dev.on_bytes(b"x3020000X", 0.03)) == [cy.CytonText("Success: Channel set for 3")]
    assert events(host, dev.on_bytes(b"x302000X", 0.04)) == [cy.CytonText("Failure: too few chars")]
    assert events(host, dev.on_bytes(b"~~", 0.05)) == [cy.CytonText("Success: Sample rate is 250Hz")]
    assert events(host, dev.on_bytes(b"V", 0.05)) == [cy.CytonText("v3.1.2")]
    assert events(host, dev.on_bytes(b"C", 0.05)) == [cy.CytonText("no daisy to attach!8")]
    assert dev.on_bytes(b"b", 1.0) == b"" and dev.streaming
    data = run_unpaced(dev, 2.0)
    evs = events(host, data)
    assert len(evs) == 251 and all(isinstance(e, cy.CytonSample) for e in evs)
    assert [e.counter for e in evs] == [k % 256 for k in range(251)]
    # while streaming, x is applied but not answered
    assert dev.on_bytes(b"x1060110X", 2.0) == b""
    dev.on_bytes(b"s", 2.0)
    assert dev.next_deadline() is None


def test_cyton_samples_equal_model_in_uv_with_gain() -> None:
    dev, host = CytonInterface(seed=3, mains_hz=60.0), cy.CytonHostCodec()
    events(host, dev.on_bytes(b"x2040110X", 0.0))  # channel 2 gain 8
    dev.on_bytes(b"b1", 0.0)  # start, channel 1 off
    evs = events(host, run_unpaced(dev, 3.999))
    counts = np.array([e.channels for e in evs]).T
    gains = np.array([24, 8] + [24] * 6)
    uv = cy.counts_to_uv(counts, gains)
    ref = EEGModel(3, fs=250.0, labels=EEGModel(0).labels[:8], mains_hz=60.0).generate(counts.shape[1])
    assert np.all(counts[0] == 0)
    np.testing.assert_allclose(uv[1:], ref[1:], atol=cy.counts_to_uv(1, 8) / 2 + 1e-9)


def test_cyton_daisy_16_channels_at_125hz() -> None:
    dev, host = CytonInterface(seed=2, daisy=True), cy.CytonHostCodec()
    (banner,) = events(host, dev.on_bytes(b"v", 0.0))
    assert "On Daisy ADS1299 Device ID" in banner.text
    dev.on_bytes(b"b", 0.0)
    pairer = cy.DaisyPairer()
    merged = []
    for e in events(host, run_unpaced(dev, 2.0 - 1e-6)):
        merged += pairer.push(e)
    samples = [m for m in merged if isinstance(m, cy.DaisySample)]
    assert len(samples) == 250 and not any(isinstance(m, cy.LostSample) for m in merged)
    counts = np.array([s.channels for s in samples]).T
    ref = EEGModel(2, fs=125.0).generate(250)
    np.testing.assert_allclose(cy.counts_to_uv(counts, 24), ref, atol=0.02)
    dev.on_bytes(b"s", 2.0)
    assert events(host, dev.on_bytes(b"c", 2.1)) == [cy.CytonText("daisy removed")]
    assert events(host, dev.on_bytes(b"C", 2.2)) == [cy.CytonText("daisy attached16")]


def test_cyton_same_seed_same_bytes_regardless_of_poll_pattern() -> None:
    a, b = CytonInterface(seed=9), CytonInterface(seed=9)
    a.on_bytes(b"b", 0.0)
    b.on_bytes(b"b", 0.0)
    wa = run_unpaced(a, 1.0)
    wb = b.poll(0.3) + b.poll(0.31) + b.poll(1.0)
    assert wa == wb and len(wa) == 33 * 251


# ----------------------------------------------------------------------- HackEEG
def test_hackeeg_client_dialogue_and_ekg_values() -> None:
    dev = HackEEGInterface(seed=4, rate=500)
    host = he.HackEEGHostCodec()
    # hackeeg-client-python: 'jsonlines' as text, then sdatac, wreg, rdatac (JSON)
    assert events(host, dev.on_bytes(host.send(he.HackEEGCommand("jsonlines")), 0.0)) == [
        he.HackEEGResponse(200, "Ok", None)]
    assert events(host, dev.on_bytes(host.send(he.HackEEGCommand("rreg", (he.REG_ID,))), 0.0)) == [
        he.HackEEGResponse(200, "Ok", 0x92)]
    assert events(host, dev.on_bytes(host.send(he.HackEEGCommand("rreg", (1,))), 0.0))[0].data == 0x86
    events(host, dev.on_bytes(host.send(he.HackEEGCommand("wreg", (he.REG_CHNSET + 7, he.chnset(6, mux=1)))), 0.0))
    events(host, dev.on_bytes(host.send(he.HackEEGCommand("messagepack")), 0.0))
    r = events(host, dev.on_bytes(host.send(he.HackEEGCommand("rdatac")), 0.0))
    assert r == [he.HackEEGResponse(200, "Ok", None)] and dev.rdatac
    evs = events(host, run_unpaced(dev, 4.0 - 1e-6))
    assert len(evs) == 2000 and [e.sample_number for e in evs[:3]] == [0, 1, 2]
    counts = np.array([e.channels for e in evs]).T
    uv = he.counts_to_uv(counts, dev.gains())
    ref = EKGModel(4, fs=500.0).generate(2000)
    np.testing.assert_allclose(uv[:7], ref[:7], atol=he.counts_to_uv(1, 6))
    assert np.all(counts[7] == 0)  # shorted channel
    ts = np.array([e.timestamp_us for e in evs])
    assert np.all(np.diff(ts) == 2000)
    assert events(host, dev.on_bytes(host.send(he.HackEEGCommand("sdatac")), 4.0)) == [
        he.HackEEGResponse(200, "Ok", None)]
    assert dev.next_deadline() is None


def test_hackeeg_rate_change_16ksps_and_errors() -> None:
    dev = HackEEGInterface(seed=1)
    host = he.HackEEGHostCodec()
    events(host, dev.on_bytes(host.send(he.HackEEGCommand("jsonlines")), 0.0))
    events(host, dev.on_bytes(host.send(he.HackEEGCommand("wreg", (1, he.config1_for_rate(16000)))), 0.0))
    assert dev.rate == 16000
    assert events(host, dev.on_bytes(host.send(he.HackEEGCommand("bogus")), 0.0)) == [
        he.HackEEGResponse(406, "Unrecognized command", None)]
    events(host, dev.on_bytes(host.send(he.HackEEGCommand("rdatac")), 0.0))
    evs = events(host, dev.poll(0.1))
    assert len(evs) == 1601 and evs[-1].sample_number == 1600
    # text-mode replies
    dev2 = HackEEGInterface(seed=1)
    assert dev2.on_bytes(b"nop\n", 0.0) == b"200 Ok\r\n"
    assert dev2.on_bytes(b"rreg 01\n", 0.0) == b"200 Ok (Read Register 01) \r\n86\r\n\r\n"


def test_hackeeg_same_bytes_whatever_the_poll_pattern_and_truth_is_what_was_sent() -> None:
    """The board generates its physiology 50 ms ahead (one model call per block, not per USB
    frame): the samples are those of one big call, and the true beats end where the sent samples do."""
    def started() -> tuple[HackEEGInterface, he.HackEEGHostCodec]:
        dev, host = HackEEGInterface(seed=9, rate=500), he.HackEEGHostCodec()
        for cmd in ("jsonlines", "messagepack", "rdatac"):
            events(host, dev.on_bytes(host.send(he.HackEEGCommand(cmd)), 0.0))
        return dev, host

    ref = EKGModel(9, fs=500.0)
    ref.generate(1600)
    true_beats = ref.beat_times()
    a, host = started()
    b, _ = started()
    wa = bytearray()
    for k in range(1, 3001):  # paced: a sample per USB frame; the truth checked after each
        wa += a.poll(k * 0.001)
        sent = a.truth()["samples_sent"]
        np.testing.assert_array_equal(a.truth()["beat_times_s"], true_beats[true_beats < sent / 500.0])
    assert bytes(wa) == b.poll(3.0) and len(events(host, bytes(wa))) == 1501 == a.truth()["samples_sent"]


# ------------------------------------------------------------------------ QuSpin
def test_quspin_stream_status_and_field_zero() -> None:
    dev, host = QuSpinInterface(seed=3, sensor=2, background_pt=300.0), qs.QuSpinHostCodec()
    idle = events(host, dev.poll(1.0))
    assert any(isinstance(e, qs.QuSpinStatus) and e.code == 7 for e in idle)
    assert any(isinstance(e, qs.QuSpinLed) for e in idle)
    events(host, dev.on_bytes(b">", 1.0))
    led = [e for e in events(host, dev.poll(5.0)) if isinstance(e, qs.QuSpinLed) and e.led == 3]
    assert led[-1].on
    got = events(host, dev.on_bytes(b"7", 5.0))
    assert qs.QuSpinMessage("Data stream on") in got
    s = [e for e in events(host, run_unpaced(dev, 6.0)) if isinstance(e, qs.QuSpinSample)]
    assert len(s) == 200
    f = np.array([e.field_pt for e in s])
    assert abs(f.mean() - 300) < 40
    events(host, dev.on_bytes(b"D", 6.0))
    events(host, run_unpaced(dev, 16.0))
    s = [e for e in events(host, run_unpaced(dev, 17.0)) if isinstance(e, qs.QuSpinSample)]
    assert abs(np.mean([e.field_pt for e in s])) < 5
    assert qs.QuSpinMessage("Calibration done") in events(host, dev.on_bytes(b"9", 17.0))
    assert dev.truth()["calibrated"]
    # two sensors on a rig are independent streams
    other = QuSpinInterface(seed=3, sensor=3)
    other.on_bytes(b"7", 0.0)
    assert run_unpaced(other, 0.5) != run_unpaced(QuSpinInterface(seed=3, sensor=2), 0.5)
