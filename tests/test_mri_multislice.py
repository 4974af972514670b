"""MRI multi-slice: slice-selective sinc pulses under a z gradient, the slice's frequency offset
on the TX LO, interleaved slice order; the console excites the plane the RF/LO words and the
gradient select, and two slices of the 3D phantom come back where the phantom put them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.daemon.recon.modalities.mri import MriReconstructor
from medacq.drivers._base import Frame
from medacq.drivers.mri import MriDriver, MriSettings
from medacq.protocols.marga import F_CLK_HZ, decode
from medacq.protocols.models.mri_phantom import MRSheppLogan, spin_echo_signal
from medacq.protocols.mri_sequences import (
    GAMMA_BAR_HZ_PER_T, CartesianSequence, SequenceError, SequenceParams, SystemLimits,
)
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.mri import make

N, FOV = 48, 0.2
# slices at z = -25 mm (the ventricles, white matter, tumours) and +62.5 mm (a small CSF blob
# at y = +10 mm, none of the z = -25 mm structures)
SLICES = {"slices": 2, "slice_spacing_mm": 87.5, "slice_centre_mm": 18.75}


def test_interleaved_order_and_slice_pulses_in_the_machine_code():
    p = SequenceParams(sequence="gre", matrix=32, te_ms=8, tr_ms=150, flip_deg=30, slices=5, slice_spacing_mm=6)
    assert p.slice_order() == [0, 2, 4, 1, 3]
    assert p.slice_positions_mm() == [-12.0, -6.0, 0.0, 6.0, 12.0]
    seq = CartesianSequence(p, SystemLimits())
    assert [a for a in seq.shot_acqs(3)] == [(0, 3), (2, 3), (4, 3), (1, 3), (3, 3)]
    tl = decode(seq.lines(0, 1))
    # one ADC window per slice and receiver, demodulated by DDS1 (at the Larmor frequency)
    assert len(tl.rx) == 10 and {w.lo for w in tl.rx} == {1}
    lo_t, lo_v = tl.lo_hz[1]
    assert lo_v[-1] == pytest.approx(SystemLimits().larmor_hz, abs=0.1)
    # each pulse: TX LO 0 at larmor + γ̄ Gz z of its slice, with Gz on; in interleaved order
    t, a = tl.tx[0]
    on = np.flatnonzero((np.abs(a[1:]) > 0) & (np.abs(a[:-1]) == 0)) + 1
    assert len(on) == 5
    gt, gv = tl.grad[2]
    zs = []
    for i in on:
        c = t[i] + int(seq.rf_us * 1e-6 * F_CLK_HZ / 2)
        g = gv[np.searchsorted(gt, c, side="right") - 1] * SystemLimits().grad_full_scale_mt_per_m * 1e-3
        f = tl.lo_hz[0][1][np.searchsorted(tl.lo_hz[0][0], t[i], side="right") - 1]
        assert g > 0.005
        zs.append((f - SystemLimits().larmor_hz) / (GAMMA_BAR_HZ_PER_T * g) * 1e3)
    assert zs == pytest.approx([-12.0, 0.0, 12.0, -6.0, 6.0], abs=0.05)
    # 5 mm slice: the pulse's bandwidth (time-bandwidth 4) over γ̄ Gz
    assert 4 / (seq.rf_us * 1e-6) / (GAMMA_BAR_HZ_PER_T * seq.gz) * 1e3 == pytest.approx(5.0)


def test_multislice_limits_are_named():
    with pytest.raises(SequenceError, match="TR 25 ms is below the minimum .* for TE 8 ms and 3 slices"):
        CartesianSequence(SequenceParams(sequence="gre", matrix=32, te_ms=8, tr_ms=25, slices=3), SystemLimits())
    with pytest.raises(SequenceError, match="not tse"):
        CartesianSequence(SequenceParams(sequence="tse", matrix=32, te_ms=24, tr_ms=800, slices=2), SystemLimits())
    with pytest.raises(ValueError, match="max_rf_duty"):
        MriSettings.model_validate({"sequence": {"sequence": "se", "matrix": 32, "te_ms": 20, "tr_ms": 300,
                                                 "slices": 4},
                                    "limits": {"max_rf_duty": 0.001}})


def _acquire(seq: dict) -> tuple[list[Frame], object]:
    with SimulatorServer(make(), "tcp", paced=False) as srv:
        d = MriDriver("mri0", srv.tcp_address, MriSettings.model_validate(
            {"sequence": seq, "repetitions": 1, "dummy_scans": 2, "lines_per_run": 8}))
        d.open()
        d.start()
        frames: list[Frame] = []
        deadline = time.monotonic() + 30
        want = N * seq.get("slices", 1)
        while len(frames) < want and time.monotonic() < deadline:
            frames += [f for f in d.read(0.5) if isinstance(f, Frame)]
        desc = d.descriptor()
        d.close()
    return frames, desc


TE, TR = 15.0, 300.0


@pytest.fixture(scope="module")
def two_slices():
    return _acquire({"sequence": "se", "matrix": N, "te_ms": TE, "tr_ms": TR, **SLICES})


def test_two_slices_of_the_phantom_found_where_it_put_them(two_slices):
    te, tr = TE, TR
    frames, desc = two_slices
    assert len(frames) == 2 * N
    assert [f.meta["slice"] for f in frames[:4]] == [0, 1, 0, 1]
    assert {f.meta["slice_position_mm"] for f in frames} == {-25.0, 62.5}
    assert desc.geometry["slice_positions_mm"] == [-25.0, 62.5]
    rec = MriReconstructor(desc, {"kspace_view": False})
    imgs = {}
    for f in frames:
        for o in rec.process({"meta": f.meta}, f.data):
            imgs[o.meta["slice"]] = o
    assert sorted(imgs) == [0, 1]
    assert imgs[1].meta["origin_m"] == pytest.approx([-0.1, -0.1, 0.0625])
    assert imgs[0].meta["complete"] and imgs[1].meta["complete"]
    truths = {}
    for sl, z in ((0, -0.25), (1, 0.625)):
        ph = MRSheppLogan(z=z)
        truths[sl] = ph.image(spin_echo_signal(ph.m0, ph.t1, ph.t2, te * 1e-3, tr * 1e-3), N, FOV)

    def nrmse(img, truth):
        a = (img * truth).sum() / (truth ** 2).sum()
        return float(np.linalg.norm(img / a - truth) / np.linalg.norm(truth))

    for sl in (0, 1):
        own, other = nrmse(imgs[sl].data, truths[sl]), nrmse(imgs[sl].data, truths[1 - sl])
        assert own < 0.2 and other > 0.5, (sl, own, other)
    # features: the left ventricle (x = -22 mm, y = 0; CSF, dark at TR 300 ms) in slice 0 only;
    # the small CSF blob (x = 0, y = +10 mm) dark in slice 1, a bright tumour there in slice 0
    d = FOV / N
    px = lambda x_mm, y_mm: (int(round(y_mm * 1e-3 / d + N / 2)), int(round(x_mm * 1e-3 / d + N / 2)))  # noqa: E731
    s0, s1 = (imgs[k].data / np.median(imgs[k].data[imgs[k].data > 0.3 * imgs[k].data.max()]) for k in (0, 1))
    assert s0[px(-22, 0)] < 0.5 and s1[px(-22, 0)] > 0.8
    assert s1[px(0, 10)] < 0.6 and s0[px(0, 10)] > 0.8


def test_ismrmrd_file_carries_the_slices(two_slices, tmp_path):
    ismrmrd = pytest.importorskip("ismrmrd", reason="the ismrmrd package (PyPI) reads the file back")
    from medacq.daemon.recording.ismrmrd import write_ismrmrd

    frames, desc = two_slices
    path = str(tmp_path / "ms.h5")
    assert write_ismrmrd(path, desc.model_dump(), [(f.meta, f.data) for f in frames]) == 2 * N
    ds = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
    hdr = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
    assert hdr.encoding[0].encodingLimits.slice.maximum == 1
    for i in (0, 1, 2 * N - 1):
        acq = ds.read_acquisition(i)
        assert acq.idx.slice == frames[i].meta["slice"] and acq.idx.kspace_encode_step_1 == frames[i].meta["line"]
        assert acq.position[2] == pytest.approx(frames[i].meta["slice_position_mm"])
    ds.close()
