"""PETSIRD round trip: a file our writer makes is read back unchanged by the ``petsird`` package."""

from __future__ import annotations

import numpy as np
import pytest

petsird = pytest.importorskip("petsird", reason="PETSIRD output needs the petsird package (pip install petsird)")

from medacq.daemon.recording.petsird import PetsirdListModeWriter, petsird_header, write_singles_as_petsird  # noqa: E402
from medacq.protocols.pet_geometry import PetRing  # noqa: E402
from medacq.simulators.pet_model import PetRingModel  # noqa: E402


def _read(path: str) -> tuple[object, list]:
    with petsird.BinaryPETSIRDReader(path) as r:
        header = r.read_header()
        blocks = list(r.read_time_blocks())
    return header, blocks


def test_round_trip_unchanged(tmp_path) -> None:
    ring = PetRing(blocks=8, crystals_per_block=6, radius_mm=300, fov_mm=300)
    header = petsird_header(ring, tof_bins=5)
    rng = np.random.default_rng(0)
    written = []
    path = str(tmp_path / "lm.petsird")
    with PetsirdListModeWriter(path, header) as w:
        for k in range(3):
            c1 = rng.integers(0, 48, 50)
            c2 = (c1 + 24 + rng.integers(-5, 6, 50)) % 48
            dt = rng.integers(-2000, 2000, 50)
            w.write_block(k * 10, (k + 1) * 10, (c1, c2, dt), (c2[:5], c1[:5], dt[:5]))
            written.append((c1, c2, dt))
    h2, blocks = _read(path)
    assert h2 == header
    assert len(blocks) == 3
    geo = h2.scanner.scanner_geometry.replicated_modules[0]
    assert len(geo.transforms) == 8 and len(geo.object.detecting_elements.transforms) == 6
    for (c1, c2, dt), tb in zip(written, blocks):
        ev = tb.value.prompt_events[0][0]
        assert len(ev) == 50
        got = np.array([e.detection_bins for e in ev])
        np.testing.assert_array_equal(got.max(axis=1), np.maximum(c1, c2))
        np.testing.assert_array_equal(got.min(axis=1), np.minimum(c1, c2))
        assert all(e.detection_bins[0] >= e.detection_bins[1] for e in ev)  # PETSIRD's ordering
        assert {e.tof_idx for e in ev} <= set(range(5))
        assert len(tb.value.delayed_events[0][0]) == 5
    # the crystal geometry: crystal k at angle 2 pi k / n on the ring radius (block 3, element 2)
    m = np.asarray(geo.transforms[3].matrix, float)
    e = np.asarray(geo.object.detecting_elements.transforms[2].matrix, float)
    pitch = 2 * np.pi * 300 / 48
    local = np.array([10.0, pitch / 2, 2.0, 1.0])  # inside the box: 10 mm deep, mid-pitch
    p = m @ np.append(e @ local, 1.0)
    ang = np.arctan2(p[1], p[0]) % (2 * np.pi)
    assert ang == pytest.approx(2 * np.pi * (3 * 6 + 2) / 48, abs=1e-4)
    assert np.hypot(p[0], p[1]) == pytest.approx(310.0, abs=0.5)


def test_simulated_singles_to_petsird(tmp_path) -> None:
    ring = PetRing(blocks=12, crystals_per_block=16)
    model = PetRingModel(ring=ring, singles_rate=5e5, seed=3)
    frames = []
    for k in range(10):
        s = model.generate(k * 10**10, (k + 1) * 10**10).singles
        frames.append(np.stack([s["time_ps"], np.rint(s["energy"] * 1000).astype(np.int64), s["id"]], axis=1))
    path = str(tmp_path / "sim.petsird")
    counts = write_singles_as_petsird(path, ring, frames, block_ms=20)
    _, blocks = _read(path)
    assert len(blocks) == counts["blocks"] == 5
    n_prompts = sum(len(tb.value.prompt_events[0][0]) for tb in blocks)
    assert n_prompts == counts["prompts"] > 1000
    assert [tb.value.time_interval.start for tb in blocks] == [0, 20, 40, 60, 80]


def test_stream_writer_equals_one_shot(tmp_path) -> None:
    from medacq.daemon.recording.petsird import PetsirdStreamWriter
    from medacq.simulators.pet_ring import make

    iface = make(blocks=12, crystals_per_block=16, singles_rate=1e6, seed=6, block_ms=7.0)
    cfg = iface.config()
    geometry = {**cfg["geometry"], "cwindow_ps": cfg["cwindow_ps"], "ewindow_kev": cfg["ewindow_kev"]}
    desc = {"stream": "pet0", "modality": "pet", "device": "sim", "dtype": "<i8", "shape": [-1, 3],
            "axes": ["single", "field"], "geometry": geometry, "meta": {"physics": cfg["physics"]}}
    frames = []
    w = PetsirdStreamWriter(str(tmp_path / "stream.petsird"), ["raw/pet0"], block_ms=20)
    blk = iface.block_ps
    for k in range(12):
        if k == 3:  # a late joiner: the first frames come before the (periodic) descriptor
            w.message("raw/pet0", {"kind": "descriptor", "descriptor": desc}, None)
        s = iface.model.generate(k * blk, (k + 1) * blk).singles
        f = np.stack([s["time_ps"], np.rint(s["energy"] * 1000).astype(np.int64), s["id"]], axis=1)
        frames.append(f)
        w.message("raw/pet0", {"kind": "frame", "seq": k}, f)
    w.message("raw/other", {"kind": "frame", "seq": 0}, np.zeros((2, 3), np.int64))
    w.gap("raw/pet0", "pet0", "s", 12, 2, True, "block counter", None)
    w.close()
    st = w.status()
    assert st["skipped_frames"] == 1 and st["lost_frames"] == 2
    ring = PetRing(blocks=12, crystals_per_block=16)
    ref = write_singles_as_petsird(str(tmp_path / "ref.petsird"), ring, frames, block_ms=20)
    h1, b1 = _read(str(tmp_path / "stream.petsird"))
    h2, b2 = _read(str(tmp_path / "ref.petsird"))
    assert st["prompts"] == ref["prompts"] > 1000 and st["delayed"] == ref["delayed"]
    assert len(b1) == len(b2) == 5  # 84 ms in 20 ms blocks
    for x, y in zip(b1, b2):
        assert x.value.prompt_events == y.value.prompt_events
        assert x.value.delayed_events == y.value.delayed_events
    assert h1.scanner.scanner_geometry == h2.scanner.scanner_geometry
