"""Per-frame header ``meta`` in HDF5 recordings: kept frame by frame (a ``meta`` dataset, made only in
blocks whose frames carry one), read back by the export, so a PET image exported from a recording
gets its frame timing and decay factor, and a multi-slice MR image its slice position, as the live
export does."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from medacq.daemon.interop import samples
from medacq.daemon.interop.dicom import DicomWriter
from medacq.daemon.interop.export import recon_frames
from medacq.daemon.interop.study import StudyContext
from medacq.daemon.recording.hdf5 import Hdf5RecordingWriter, check_recording


def _record(path, frames, checkpoint_every: int = 1) -> None:
    w = Hdf5RecordingWriter(path, durable=False)
    seen = set()
    for i, f in enumerate(frames):
        if f.topic not in seen:
            seen.add(f.topic)
            w.message(f.topic, {**f.header, "kind": "descriptor", "descriptor": dict(f.descriptor)}, None)
        w.message(f.topic, dict(f.header), f.data)
        if (i + 1) % checkpoint_every == 0:
            w.checkpoint()
    w.checkpoint(complete=True)
    w.close()


def test_meta_round_trips_and_the_pet_decay_factor_survives_a_recording(tmp_path):
    pet = samples.pet_images(n=3, size=16, dynamic=True)
    path = tmp_path / "rec.h5"
    _record(path, pet)
    assert check_recording(path)["problems"] == []
    with h5py.File(path, "r") as f:
        assert f["recon/pet0/data_000/meta"].shape == (3,)
    with h5py.File(path, "r") as f:
        back = list(recon_frames(f))
    assert [b.header["meta"] for b in back] == [p.header["meta"] for p in pet]
    study = StudyContext(patient_id="P1", patient_name="Doe^Jane")
    live = [DicomWriter(study).add(p)[0] for p in pet]
    rec = [DicomWriter(study).add(b)[0] for b in back]
    for a, b in zip(live, rec):
        assert float(b.DecayFactor) == pytest.approx(float(a.DecayFactor), rel=1e-9)
        assert int(b.ActualFrameDuration) == int(a.ActualFrameDuration) > 0
        assert float(b.FrameReferenceTime) == pytest.approx(float(a.FrameReferenceTime))
    assert float(rec[-1].DecayFactor) > float(rec[0].DecayFactor) > 1.0  # later frames, more decay undone


def test_meta_dataset_only_where_frames_carry_meta_and_earlier_rows_empty(tmp_path):
    ct = samples.ct_slices(n=2, size=8)
    for f in ct:
        f.header["meta"] = {}
    late = samples.ct_slices(n=1, size=8)[0]
    late.header["meta"] = {"pixel_mm": 0.5, "note": "only this one"}
    late.header["seq"] = 2
    path = tmp_path / "rec.h5"
    _record(path, [*ct, late])
    with h5py.File(path, "r") as f:
        blk = f["recon/ct0"]["data_000"] if "recon/ct0" in f else next(iter(f["recon"].values()))["data_000"]
        metas = [m.decode() if isinstance(m, bytes) else m for m in blk["meta"][:]]
        assert metas[:2] == ["", ""] and '"note":"only this one"' in metas[2]
    eeg_only = tmp_path / "plain.h5"
    w = Hdf5RecordingWriter(eeg_only, durable=False)
    h = {"v": 1, "stream": "s0", "kind": "frame", "series": "a" * 32, "seq": 0, "dtype": "<f4", "shape": [4],
         "axes": ["sample"], "units": "V", "t_host_ns": 1, "t_mono_ns": 1}
    w.message("raw/s0", h, np.zeros(4, "<f4"))
    w.checkpoint(complete=True)
    w.close()
    with h5py.File(eeg_only, "r") as f:
        assert "meta" not in f["raw/s0/data_000"]  # no meta, no dataset: files without meta are unchanged
