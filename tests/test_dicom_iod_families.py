"""DICOM objects of the newer families: MR, PET, NM, VL Endoscopic, VL Photographic, thermograms (SC).

Judged by dciodvfy (dicom3tools) and dcmdump (dcmtk); pixel values checked against what the
reconstruction published, after the documented rescale; and the real reconstructors run on
simulated data to confirm the samples have the shapes, units, geometry and meta they publish."""

from __future__ import annotations

import io
import shutil
import subprocess
import uuid

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM export needs pydicom (pip install pydicom)")

import test_dicom_iod as base  # noqa: E402  (its STUDY, encode() and dciodvfy_errors(): one helper, not a copy)

from medacq.daemon.interop import samples  # noqa: E402
from medacq.daemon.interop.dicom import (  # noqa: E402
    SOP_CLASSES, STIFFNESS_CHOICE, THERMAL_CHOICE, DicomExportError, DicomWriter, ReconFrame, iod_of)
from medacq.protocols.stream import StreamDescriptor  # noqa: E402

NUCLEAR = {"radiopharmaceutical": "Fluorodeoxyglucose F^18^", "injected_dose_bq": 3.7e8,
           "injection_time_ns": samples.T0_NS - 3_600_000_000_000}
KINDS = {  # IOD key -> (sample frames, dciodvfy's name of the IOD it checked against)
    "MR": (samples.mri_images, "MRImage"), "PT": (samples.pet_images, "PETImage"),
    "NM": (samples.spect_images, "NMImage"), "ES": (samples.endoscope_frames, "VLEndoscopicImage"),
    "XC": (samples.photo_frames, "VLPhotographicImage"), "SC": (samples.thermal_frames, "MultiframeGrayscaleWordSCImage"),
}


def export(frames: list[ReconFrame], **kw) -> list:
    w = DicomWriter(base.STUDY, us_cine_frames=8, **{**NUCLEAR, **kw})
    out = []
    for f in frames:
        out += w.add(f)
    return out + w.flush()


def roundtrip(ds):
    return pydicom.dcmread(io.BytesIO(base.encode(ds)))


def check_with_tools(objs, tmp_path, iod_name: str) -> None:
    """dciodvfy: 0 errors, against the IOD named; dcmdump reads every object."""
    for i, ds in enumerate(objs):
        p = tmp_path / f"{i:02d}_{ds.Modality}.dcm"
        p.write_bytes(base.encode(ds))
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        assert iod_name in [x.strip() for x in (r.stdout + r.stderr).splitlines()]  # it checked the IOD we meant
        assert base.dciodvfy_errors(p) == [], (ds.Modality, base.dciodvfy_errors(p))
        if shutil.which("dcmdump"):
            d = subprocess.run(["dcmdump", "-q", str(p)], capture_output=True, text=True, timeout=60)
            assert d.returncode == 0 and str(ds.SOPInstanceUID) in d.stdout, d.stderr


@base.needs_dciodvfy
@pytest.mark.parametrize("iod", list(KINDS))
def test_each_family_object_passes_dciodvfy_and_dcmdump(iod, tmp_path):
    make, name = KINDS[iod]
    objs = export(make())
    assert objs and {str(o.SOPClassUID) for o in objs} == {SOP_CLASSES[iod]}
    check_with_tools(objs, tmp_path, name)


@base.needs_dciodvfy
def test_without_frame_meta_or_sequence_still_valid(tmp_path):
    """A recording keeps no per-frame meta and the MR descriptor may lack the sequence: still 0 errors."""
    frames = []
    for f in samples.mri_images(n=1) + samples.pet_images(n=1, dynamic=True) + samples.spect_images():
        frames.append(ReconFrame(f.topic, {**f.header, "meta": {}}, f.data, {**f.descriptor, "meta": {}}))
    objs = export(frames, patient_position="FFP", radiopharmaceutical="", injected_dose_bq=None,
                  injection_time_ns=None)
    assert [o.Modality for o in objs] == ["MR", "PT", "NM"]
    assert objs[0].EchoTime == "" and objs[1].DecayFactor == 1.0
    for o, name in zip(objs, ["MRImage", "PETImage", "NMImage"]):
        check_with_tools([o], tmp_path, name)


def _centre_of(ds, img: np.ndarray, pos=None, orient=None) -> np.ndarray:
    """LPS mm of the centroid of the pixels above 60 % of the maximum, from Image Position/Orientation
    and Pixel Spacing."""
    pos = np.array(pos if pos is not None else ds.ImagePositionPatient, float)
    o = np.array(orient if orient is not None else ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing (down), column spacing (across)
    r, c = np.nonzero(img > 0.6 * img.max())
    return pos + c.mean() * dc * o[:3] + r.mean() * dr * o[3:]


def test_mr_geometry_sequence_and_values():
    frames = samples.mri_images(n=1, matrix=64, fov_m=0.2)
    ds = roundtrip(export(frames)[0])
    f = frames[0]
    assert ds.SOPClassUID == SOP_CLASSES["MR"] and ds.Modality == "MR"
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([200 / 64, 200 / 64])
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([-100.0, -100.0, 0.0])
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(ds.SliceThickness) == 5.0 and ds.PatientPosition == "HFS"
    assert (float(ds.EchoTime), float(ds.RepetitionTime), float(ds.FlipAngle)) == (15.0, 500.0, 90.0)
    assert ds.ScanningSequence == "SE" and float(ds.MagneticFieldStrength) == 0.2
    m = ds.RealWorldValueMappingSequence[0]
    real = ds.pixel_array * float(m.RealWorldValueSlope) + float(m.RealWorldValueIntercept)
    assert np.max(np.abs(real - f.data)) <= float(m.RealWorldValueSlope) / 2 + 1e-12
    # the insert sits at +20 mm x (patient left, HFS): the dark disc's centre maps there
    dark = np.where(f.data > 2e-4, 0.0, 1.0) * (f.data > 5e-5)
    got = _centre_of(ds, np.asarray(dark))
    assert abs(got[0] - 20.0) < 2 and abs(got[1]) < 2


def test_pet_bqml_decay_and_geometry():
    frames = samples.pet_images(n=2, size=64, frame_s=2.0)
    objs = [roundtrip(o) for o in export(frames)]
    ds, f = objs[1], frames[1]
    assert ds.Units == "BQML" and ds.DecayCorrection == "START" and float(ds.RescaleIntercept) == 0
    assert ds.SeriesType == ["STATIC", "IMAGE"] and "DECY" in ds.CorrectedImage and "ATTN" in ds.CorrectedImage
    bq = ds.pixel_array * float(ds.RescaleSlope)
    assert np.max(np.abs(bq - f.data)) <= float(ds.RescaleSlope) / 2 + 1e-9
    # device time 0 = Series Time; this image covers 0..4 s; decay factor = duration / decay-weighted exposure
    lam = np.log(2) / (109.77 * 60)
    assert ds.SeriesTime == "202640.000000" and ds.AcquisitionTime == "202640.000000"
    assert ds.ActualFrameDuration == 4000
    assert float(ds.DecayFactor) == pytest.approx(4.0 * lam / (1 - np.exp(-lam * 4.0)), rel=1e-8)
    assert float(ds.FrameReferenceTime) == pytest.approx(2000.0, abs=1.0)  # mid-frame for a short frame
    ri = ds.RadiopharmaceuticalInformationSequence[0]
    assert ri.RadionuclideCodeSequence[0].CodeValue == "77004003"  # SNOMED CT ^18^Fluorine (CID 4020)
    assert float(ri.RadionuclideHalfLife) == pytest.approx(6586.2) and float(ri.RadionuclideTotalDose) == 3.7e8
    assert ri.Radiopharmaceutical == "Fluorodeoxyglucose F^18^"
    assert ri.RadiopharmaceuticalStartDateTime == "20260528192640.000000+0000"
    # the hot sphere at scanner (x=+50, y=+30 up) is patient LPS (+50, -30) for a supine head-first patient
    got = _centre_of(ds, ds.pixel_array.astype(float))
    assert abs(got[0] - 50) < 5 and abs(got[1] + 30) < 5 and got[2] == 0
    assert [float(v) for v in ds.ImagePositionPatient] == [-157.5, -157.5, 0.0]
    assert ds.PatientGantryRelationshipCodeSequence[0].CodeMeaning == "headfirst"
    assert objs[0].SeriesInstanceUID == objs[1].SeriesInstanceUID != base.STUDY.study_uid


def test_pet_dynamic_frames_and_refused_units():
    frames = samples.pet_images(n=2, dynamic=True)
    objs = export(frames)
    assert [o.SeriesType for o in objs] == [["DYNAMIC", "IMAGE"]] * 2
    assert [o.AcquisitionTime for o in objs] == ["202640.000000", "202642.000000"]  # frames 0-2 s, 2-4 s
    f = frames[0]
    w = DicomWriter(base.STUDY)
    with pytest.raises(DicomExportError, match="Bq/mL"):
        w.add(ReconFrame(f.topic, {**f.header, "units": "counts"}, f.data, {**f.descriptor, "units": "counts"}))
    with pytest.raises(DicomExportError, match="pixel_mm"):
        w.add(ReconFrame(f.topic, f.header, f.data, {**f.descriptor, "geometry": {}}))
    assert w.rejected == 2


def test_nm_values_and_plane_in_detector_item():
    frames = samples.spect_images(n=1)
    ds = roundtrip(export(frames)[0])
    assert ds.ImageType[2:] == ["RECON TOMO", "EMISSION"] and ds.NumberOfFrames == 1
    det = ds.DetectorInformationSequence[0]
    m = ds.RealWorldValueMappingSequence[0]
    assert m.MeasurementUnitsCodeSequence[0].CodeValue == "Bq/ml"
    bq = ds.pixel_array * float(m.RealWorldValueSlope)
    assert np.max(np.abs(bq - frames[0].data)) <= float(m.RealWorldValueSlope) / 2 + 1e-9
    got = _centre_of(ds, ds.pixel_array.astype(float), det.ImagePositionPatient, det.ImageOrientationPatient)
    assert abs(got[0] - 50) < 5 and abs(got[1] + 30) < 5
    assert float(ds.SliceThickness) == 20.0
    ri = ds.RadiopharmaceuticalInformationSequence[0]
    assert ri.RadionuclideCodeSequence[0].CodeMeaning == "^99m^Technetium"


@pytest.mark.parametrize("kind", ["endoscope", "photo"])
def test_vl_colour_pixels_exact(kind):
    frames = samples.endoscope_frames() if kind == "endoscope" else samples.photo_frames()
    objs = [roundtrip(o) for o in export(frames)]
    assert len(objs) == len(frames)
    for ds, f in zip(objs, frames):
        assert ds.Modality == ("ES" if kind == "endoscope" else "XC")
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 and ds.PlanarConfiguration == 0
        np.testing.assert_array_equal(ds.pixel_array, f.data)


def test_thermal_secondary_capture_in_celsius():
    frames = samples.thermal_frames(n=8)
    (ds,) = [roundtrip(o) for o in export(frames)]
    assert ds.SOPClassUID == SOP_CLASSES["SC"] and ds.NumberOfFrames == 8
    c = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.max(np.abs(c - np.stack([f.data for f in frames]))) <= float(ds.RescaleSlope) / 2 + 1e-6
    assert ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "Cel"
    assert "Parametric Map" in THERMAL_CHOICE
    with pytest.raises(DicomExportError):
        iod_of("thermal", "view")  # the iron-palette view is a picture of the data, not the data


@pytest.mark.parametrize("kind", ["swe", "tactile"])
def test_stiffness_and_pressure_maps_as_secondary_capture_in_kpa(kind, tmp_path):
    """Shear-wave modulus and tactile pressure maps: Secondary Capture in kPa (no IOD holds them:
    STIFFNESS_CHOICE); pixels without an estimate are the map's minimum and counted; valid for dciodvfy."""
    frames = samples.swe_maps() if kind == "swe" else samples.tactile_maps()
    objs = export(frames)
    check_with_tools(objs, tmp_path, "MultiframeGrayscaleWordSCImage")
    (ds,) = [roundtrip(o) for o in objs]
    assert ds.SOPClassUID == SOP_CLASSES["SC"] and ds.NumberOfFrames == len(frames)
    kpa = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    truth = np.stack([f.data for f in frames])
    ok = np.isfinite(truth)
    assert np.max(np.abs(kpa[ok] - truth[ok])) <= float(ds.RescaleSlope) / 2 + 1e-6
    assert ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "kPa"
    if kind == "swe":
        assert np.allclose(kpa[~ok], np.nanmin(truth), atol=float(ds.RescaleSlope))
        assert f"{int((~ok).sum())} pixels without an estimate" in ds.ImageComments
        assert "grid x -10.0..10.0 mm, z 10.0..35.0 mm" in ds.ImageComments
    assert "Parametric Map" in STIFFNESS_CHOICE


def test_patient_position_turns_the_axes():
    f = samples.pet_images(n=1)[0]
    (hfs,) = export([f])
    (ffp,) = export([f], patient_position="FFP")
    assert [float(v) for v in ffp.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]
    assert [float(v) for v in ffp.ImagePositionPatient] == [-157.5, 157.5, 0.0]
    assert ffp.PatientGantryRelationshipCodeSequence[0].CodeMeaning == "feet-first"
    assert hfs.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence[0].CodeMeaning == "supine"
    with pytest.raises(ValueError):
        DicomWriter(base.STUDY, patient_position="XYZ")


# ---- the real reconstructors publish what the samples assume --------------------------------------
def published(rec, out, source: str, t_host_ns: int = samples.T0_NS) -> ReconFrame:
    """An Output as the stage publishes it on recon/<source>[/<name>] (daemon/recon/stage.py _publish)."""
    data = np.ascontiguousarray(out.data)
    extra = dict(out.descriptor_meta)
    stream = f"{source}/{out.name}" if out.name else source
    desc = StreamDescriptor(stream=stream, modality=rec.modality, device=f"recon:{type(rec).__name__}",
                            dtype=data.dtype.str, shape=list(data.shape), axes=out.axes, units=out.units,
                            geometry=extra.pop("geometry", {}), meta={"source": source, **extra}).model_dump()
    header = {"v": 1, "stream": stream, "kind": "frame", "series": str(uuid.uuid4()), "seq": 0,
              "dtype": data.dtype.str, "shape": list(data.shape), "axes": out.axes, "units": out.units,
              "t_host_ns": t_host_ns, "t_mono_ns": 0, "meta": out.meta or {}}
    return ReconFrame(f"recon/{stream}", header, data, desc)


def same_shape_as(real: ReconFrame, sample: ReconFrame) -> None:
    rd, sd = real.descriptor, sample.descriptor
    assert (rd["modality"], rd["dtype"], rd["axes"], rd["units"]) == (sd["modality"], sd["dtype"], sd["axes"], sd["units"])
    assert real.data.ndim == sample.data.ndim and real.data.shape[2:] == sample.data.shape[2:]
    assert set(sd["geometry"]) <= set(rd["geometry"]), set(sd["geometry"]) - set(rd["geometry"])
    assert set(sample.header["meta"]) <= set(real.header["meta"])


@pytest.fixture(scope="module")
def real_outputs():
    """One published image of each family's real reconstructor on simulated data (module-scoped: ~5 s)."""
    out: dict[str, ReconFrame] = {}
    # MRI: k-space of a disc, line by line (the driver's frame meta), through MriReconstructor
    from medacq.daemon.recon.modalities.mri import MriReconstructor

    n = 32
    img = np.zeros((n, n))
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    img[xx ** 2 + yy ** 2 < (n / 3) ** 2] = 1.0
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img))).astype(np.complex64)
    seq = {"sequence": "se", "te_ms": 20.0, "tr_ms": 400.0, "flip_deg": 90.0, "b0_t": 0.2}
    desc = StreamDescriptor(stream="mr0", modality="mri", dtype="<c8", shape=[2, n], axes=["coil", "readout"],
                            geometry={"fov_m": [0.2, 0.2], "matrix": [n, n], "slice_mm": 5.0}, meta={"sequence": seq})
    rec = MriReconstructor(desc, {"kspace_view": False})
    outs = []
    for line in range(n):
        outs = rec.process({"meta": {"line": line, "image": 0, "last": line == n - 1}}, np.stack([k[line], k[line]]))
    out["mri"] = published(rec, outs[0], "mr0")
    # PET: the ring simulator's singles through PetReconstructor (small image)
    from medacq.daemon.bench.nuclear import _frame
    from medacq.daemon.recon.modalities.pet import PetReconstructor
    from medacq.simulators.pet_ring import make as make_pet

    iface = make_pet(blocks=20, crystals_per_block=18, singles_rate=2e6, seed=1, block_ms=50.0, replay_s=0.0)
    cfg = iface.config()
    geometry = dict(cfg["geometry"])
    geometry.update({k: cfg[k] for k in ("cwindow_ps", "ewindow_kev", "threshold_kev", "sensitivity", "isotope",
                                         "phantom")})
    rec = PetReconstructor(StreamDescriptor(stream="pet0", modality="pet", dtype="<i8", shape=[-1, 3],
                                            axes=["single", "field"], geometry=geometry),
                           {"frame_s": 0.2, "image_size": 32, "iterations": 1, "subsets": 4})
    assert rec.wait_ready()
    block, outs = iface.block_ps, []
    for i in range(4):
        sl = iface.model.generate(i * block, (i + 1) * block)
        outs += rec.process({"meta": {"t_start_ps": i * block, "t_end_ps": (i + 1) * block, "dead_singles": sl.dead}},
                            _frame(sl.singles))
    out["pet"] = published(rec, outs[0], "pet0", samples.T0_NS + int(0.2e9))
    # SPECT: the gamma camera model's events through SpectReconstructor (8 stops)
    from medacq.daemon.recon.modalities.spect import SpectReconstructor
    from medacq.drivers.spect import AngerCorrector
    from medacq.simulators.gamma_camera import make as make_spect

    iface = make_spect(stops=8, dwell_s=0.1, rate_cps=50_000.0, seed=4)
    cfg = iface.model.config()
    cfg.update(stops=8, dwell_s=0.1)
    corr = AngerCorrector(cfg)
    geometry = {k: cfg[k] for k in ("radius_mm", "collimator", "photon_kev", "photon_yield", "half_life_s",
                                    "stops", "dwell_s", "phantom")}
    rec = SpectReconstructor(StreamDescriptor(stream="spect0", modality="spect", dtype="<f8", shape=[-1, 6],
                                              axes=["event", "field"], geometry=geometry),
                             {"image_size": 32, "iterations": 1, "subsets": 4})
    assert rec.wait_ready()
    outs = []
    for s in range(8):
        t0, ang = s * 100_000, s * 45.0
        ev = iface.model.generate(t0, t0 + 100_000, ang)
        x, y, e, wgt = corr(ev.amp)
        f = np.stack([x, y, e, ev.t_us * 1e-6, np.full(len(x), ang), wgt], axis=1)
        outs += rec.process({"meta": {"t_start_us": t0, "t_end_us": t0 + 100_000, "angle_deg": ang}}, f)
    out["spect"] = published(rec, outs[0], "spect0")
    # cameras: the GigE Vision simulator over UDP through the gige driver (test_cameras_recon's helper)
    import test_cameras_recon as cams

    from medacq.daemon.recon.modalities.cameras import EndoscopeReconstructor, PhotoReconstructor, ThermalReconstructor
    from medacq.drivers.gige import GigESettings

    _, desc, frames = cams._grab({"model": "thermal"}, 1, GigESettings(frame_rate_hz=30))
    rec = ThermalReconstructor(desc)
    out["thermal"] = published(rec, rec.process({}, frames[0].data)[0], "ir0")
    _, desc, frames = cams._grab({"model": "endoscope", "width": 320, "height": 240, "loop_frames": 2}, 1,
                                 GigESettings(frame_rate_hz=30))
    rec = EndoscopeReconstructor(desc)
    out["endoscope"] = published(rec, rec.process({}, frames[0].data)[0], "endo0")
    _, desc, frames = cams._grab({"model": "photo", "width": 800, "height": 600}, 1,
                                 GigESettings(trigger="software"), trigger=True)
    rec = PhotoReconstructor(desc)
    out["photo"] = published(rec, rec.process({}, frames[0].data)[0], "photo0")
    return out


SAMPLE_OF = {"mri": samples.mri_images, "pet": samples.pet_images, "spect": samples.spect_images,
             "thermal": samples.thermal_frames, "endoscope": samples.endoscope_frames, "photo": samples.photo_frames}


@base.needs_dciodvfy
@pytest.mark.parametrize("kind", list(SAMPLE_OF))
def test_real_reconstructor_output_matches_samples_and_exports_valid(kind, real_outputs, tmp_path):
    real = real_outputs[kind]
    same_shape_as(real, SAMPLE_OF[kind]()[0])
    objs = export([real])
    assert len(objs) == 1
    iod = iod_of(kind, "")
    check_with_tools(objs, tmp_path, KINDS[iod][1])
    ds = roundtrip(objs[0])
    if iod in ("ES", "XC"):
        np.testing.assert_array_equal(ds.pixel_array, real.data)
        return
    if iod == "MR":  # the reconstructor passes the source's sequence parameters on (the fixture's TE/TR/flip)
        assert (float(ds.EchoTime), float(ds.RepetitionTime), float(ds.FlipAngle)) == (20.0, 400.0, 90.0)
    if iod in ("MR", "NM"):
        m = ds.RealWorldValueMappingSequence[0]
        slope, icpt = float(m.RealWorldValueSlope), float(m.RealWorldValueIntercept)
    else:
        slope, icpt = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert np.max(np.abs(ds.pixel_array * slope + icpt - np.clip(real.data, 0 if iod in ("PT", "NM") else None, None))) \
        <= slope / 2 + 1e-6


@base.needs_dciodvfy
def test_deidentified_family_objects_stay_valid(tmp_path):
    from medacq.daemon.interop.deid import deidentify

    objs = export(samples.family_kinds())
    assert {o.Modality for o in objs} == {"MR", "PT", "NM", "ES", "XC", "OT"}  # OT: thermal, swe, tactile (SC)
    for i, ds in enumerate(objs):
        deidentify(ds, retain_dates=False, patient_strings=base.STUDY.patient_strings())  # raises if one survives
        p = tmp_path / f"{i:02d}.dcm"
        p.write_bytes(base.encode(ds))
        assert base.dciodvfy_errors(p) == [], ds.Modality
        assert ds.PatientID != base.STUDY.patient_id
