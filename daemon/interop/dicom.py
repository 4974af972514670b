"""DICOM objects from reconstructed frames: one IOD per kind of result.

Input is exactly what a ``recon/...`` subscriber holds: the stream descriptor, the frame header
and the ndarray (:class:`ReconFrame`). :class:`DicomWriter` maps each result to the IOD a PACS
and a viewer expect:

=======================  =======================================  ===============================
stream (modality/output)  IOD (SOP class)                          pixels / samples
=======================  =======================================  ===============================
``xray`` ``recon/<s>``    Digital X-Ray, For Presentation (DX)     uint16, Rescale Slope/Intercept
                                                                   back to ``I/I0`` (or ``-ln``)
``xray`` ``.../dsa``      X-Ray Angiographic (XA), one frame       uint16, log-subtracted (LOG)
``ct`` ``.../slice``      CT Image                                 int16 Hounsfield units (Rescale 1/0)
``us`` ``recon/<s>``      Ultrasound Multi-frame (cine)            uint8 grey from dB, US regions
``ekg`` ``recon/<s>``     12-lead ECG (12 standard leads, 200–     int16, Channel Sensitivity µV
                          1000 Hz) else General ECG
``eeg`` ``recon/<s>``     Routine Scalp EEG                        int16, Channel Sensitivity µV
``eit`` ``recon/<s>``     Multi-frame Grayscale Word Secondary     uint16, Rescale → dσ/σ
                          Capture (see :data:`EIT_CHOICE`)
``thermal`` ``recon/<s>`` the same (see :data:`THERMAL_CHOICE`)    uint16, Rescale → °C
``swe``, ``tactile``      the same (see :data:`STIFFNESS_CHOICE`)  uint16, Rescale → kPa
``mri`` ``recon/<s>``     MR Image                                 uint16, Real World Value Map (a.u.)
``pet`` ``recon/<s>``     PET Image                                uint16, Rescale Slope → Bq/mL (BQML)
``spect`` ``recon/<s>``   NM Image (RECON TOMO)                    uint16, Real World Value Map Bq/mL
``endoscope`` ``...``     VL Endoscopic Image                      uint8 RGB, exact
``photo`` ``recon/<s>``   VL Photographic Image                    uint8 RGB, exact
=======================  =======================================  ===============================

MR/PET/NM planes: the scanner frame taken as LPS of a head-first supine patient, turned by the
``patient_position`` rig setting (docs/dicom.md, "MR, PET, NM geometry").

Identity: the Study Instance UID is the study context's random uid; Series Instance UIDs are
derived from (study uid, topic, stream series) and SOP Instance UIDs from (study uid, topic,
stream series, first seq), each by :func:`derived_uid` (``2.25.`` + SHA-512 of those, as
``pydicom.uid.generate_uid`` does with entropy sources). So one recording exported twice gives
the same UIDs, and a C-STORE retried after an outage replaces, never duplicates.

Clocks: a frame's ``t_host_ns`` (CLOCK_REALTIME of the acquiring host, ns) becomes Acquisition
DateTime / Content Date and Time, in UTC (Timezone Offset From UTC ``+0000``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    GeneralECGWaveformStorage,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    RoutineScalpElectroencephalogramWaveformStorage,
    TwelveLeadECGWaveformStorage,
    UltrasoundMultiFrameImageStorage,
    VLEndoscopicImageStorage,
    VLPhotographicImageStorage,
    XRayAngiographicImageStorage,
)

from medacq import __version__ as _medacq_version
from medacq.daemon.interop.study import StudyContext

__all__ = ["DicomExportError", "DicomWriter", "EIT_CHOICE", "STIFFNESS_CHOICE", "THERMAL_CHOICE", "ReconFrame", "derived_uid", "iod_of",
           "SOP_CLASSES", "ECG_LEADS"]

EIT_CHOICE = (
    "EIT images go out as Multi-frame Grayscale Word Secondary Capture, not as a Parametric Map: "
    "a Parametric Map (and any cross-sectional IOD) needs a Frame of Reference and per-frame plane "
    "position/orientation in patient millimetres, but the EIT reconstruction grid is in units of the "
    "thorax half-width of a generic electrode plane, so any patient geometry we wrote would be invented. "
    "Secondary Capture states honestly 'a derived picture', keeps the real values through Rescale "
    "Slope/Intercept (dσ/σ), and every PACS and viewer displays it."
)

THERMAL_CHOICE = (
    "Thermograms go out as Multi-frame Grayscale Word Secondary Capture with Rescale Slope/Intercept to "
    "degrees Celsius (and a Real World Value Mapping in UCUM 'Cel'), not as a Parametric Map: a Parametric "
    "Map needs a Frame of Reference and per-frame plane position/orientation in patient millimetres, and "
    "an infrared camera looking at a face has no patient coordinate system; any geometry written would be "
    "invented. Secondary Capture keeps the temperatures exact to the quantisation step and every PACS shows it."
)

STIFFNESS_CHOICE = (
    "Shear-wave modulus maps (swe) and tactile pressure maps go out as Multi-frame Grayscale Word Secondary "
    "Capture with Rescale Slope/Intercept to kPa (and a Real World Value Mapping in UCUM 'kPa'): no IOD holds an "
    "elastogram or a pressure map, and a Parametric Map needs a patient frame of reference that a hand-held probe "
    "does not have; the map's grid (mm) is in Image Comments. Pixels without an estimate (NaN) are stored as the "
    "map's minimum and counted in Image Comments."
)

SOP_CLASSES: dict[str, UID] = {
    "DX": DigitalXRayImageStorageForPresentation,
    "XA": XRayAngiographicImageStorage,
    "CT": CTImageStorage,
    "US": UltrasoundMultiFrameImageStorage,
    "ECG12": TwelveLeadECGWaveformStorage,
    "ECG": GeneralECGWaveformStorage,
    "EEG": RoutineScalpElectroencephalogramWaveformStorage,
    "SC": MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    "MR": MRImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
    "NM": NuclearMedicineImageStorage,
    "ES": VLEndoscopicImageStorage,
    "XC": VLPhotographicImageStorage,
}

# ISO/IEEE 11073 MDC codes of the standard leads (partition 2: MDC_ECG_LEAD_*), as DICOM CID 3001 uses them
ECG_LEADS: dict[str, tuple[str, str]] = {
    "I": ("2:1", "Lead I"), "II": ("2:2", "Lead II"), "III": ("2:61", "Lead III"),
    "aVR": ("2:62", "aVR, augmented voltage, right"), "aVL": ("2:63", "aVL, augmented voltage, left"),
    "aVF": ("2:64", "aVF, augmented voltage, foot"),
    "V1": ("2:3", "Lead V1"), "V2": ("2:4", "Lead V2"), "V3": ("2:5", "Lead V3"),
    "V4": ("2:6", "Lead V4"), "V5": ("2:7", "Lead V5"), "V6": ("2:8", "Lead V6"),
}
_LOCAL_SCHEME = "99MEDACQ"  # a private coding scheme (PS3.3 8.1: "99" prefix) for EEG electrode labels
_ROOT_SERIES = {"DX": 1, "XA": 2, "CT": 3, "US": 4, "ECG12": 5, "ECG": 5, "EEG": 6, "SC": 7}
#: one image per frame, each its own object (the rest batch frames into multi-frame or waveform objects)
_SINGLE = ("DX", "XA", "CT", "MR", "PT", "NM", "ES", "XC")


class DicomExportError(ValueError):
    """A frame no IOD here can carry (unknown modality, wrong axes or shape, no geometry)."""


@dataclass(frozen=True, slots=True)
class ReconFrame:
    """One reconstructed frame as a subscriber of ``recon/...`` holds it.

    Attributes:
        topic: ``recon/xr0``, ``recon/xr0/dsa``, ``recon/ct0/slice``, ``recon/us0``, ``recon/ekg0``.
        header: the frame header (``protocols/stream.py`` ``StreamHeader`` fields: ``series``, ``seq``,
            ``t_host_ns``, ``units``, ``meta`` ...).
        data: the array, axes as in the header (``(row, col)``, ``(y, x)``, ``(z, x)``, ``(channel, sample)``).
        descriptor: the stream's descriptor (``StreamDescriptor`` fields: ``modality``, ``geometry``, ``meta``).
    """

    topic: str
    header: Mapping[str, Any]
    data: np.ndarray
    descriptor: Mapping[str, Any]

    @property
    def output(self) -> str:
        """The output name: ``""`` for ``recon/<s>``, ``dsa`` for ``recon/<s>/dsa``."""
        parts = self.topic.split("/")
        return parts[2] if len(parts) > 2 else ""


def derived_uid(*parts: object) -> str:
    """A stable UID from its parts: ``2.25.`` + the SHA-512 of them, reduced to 128 bits (<= 44 chars)."""
    h = hashlib.sha512("\x1f".join(str(p) for p in parts).encode()).digest()
    return f"2.25.{int.from_bytes(h[:16], 'big')}"


def iod_of(modality: str, output: str, data: np.ndarray | None = None,
           channel_names: Sequence[str] | None = None, sample_rate_hz: float | None = None) -> str:
    """The IOD key (of :data:`SOP_CLASSES`) for a stream's modality and output name.

    Raises :class:`DicomExportError` for a result with no IOD here (band power, heart rate, CT
    projections and previews: derived numbers or partial results, not images a PACS keeps).
    """
    key = (modality, output)
    if key == ("xray", ""):
        return "DX"
    if key == ("xray", "dsa"):
        return "XA"
    if key == ("ct", "slice"):
        return "CT"
    if key == ("us", ""):
        return "US"
    if key in (("eit", ""), ("thermal", ""), ("swe", ""), ("tactile", "")):
        return "SC"
    if key == ("mri", ""):
        return "MR"
    if key == ("pet", ""):
        return "PT"
    if key == ("spect", ""):
        return "NM"
    if key == ("endoscope", ""):
        return "ES"
    if key == ("photo", ""):
        return "XC"
    if key == ("eeg", ""):
        return "EEG"
    if key == ("ekg", ""):
        names = list(channel_names or [])
        if (sorted(names) == sorted(ECG_LEADS) and sample_rate_hz is not None
                and 200 <= sample_rate_hz <= 1000):
            return "ECG12"
        return "ECG"
    raise DicomExportError(f"no DICOM IOD for modality {modality!r} output {output!r}")


def _dt_parts(t_ns: int) -> tuple[str, str, str]:
    """(DA, TM, DT) strings in UTC for a CLOCK_REALTIME time in ns."""
    t = _dt.datetime.fromtimestamp(t_ns / 1e9, tz=_dt.timezone.utc)
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S.%f"), t.strftime("%Y%m%d%H%M%S.%f") + "+0000"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _ds_str(x: float) -> str:
    """A DS (decimal string) value of at most 16 characters."""
    s = f"{x:.10g}"
    if len(s) > 16:
        s = f"{x:.8e}"
    return s


def _to_uint16(img: np.ndarray, lo: float | None = None, hi: float | None = None) -> tuple[np.ndarray, float, float]:
    """Quantise a float image to uint16: ``real = stored * slope + intercept``. Returns (stored, slope, intercept)."""
    finite = np.isfinite(img)
    v = np.where(finite, img, 0.0).astype(np.float64)
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    slope = float(_ds_str(slope))  # the slope as written, so decoding uses exactly the same value
    intercept = float(_ds_str(lo))
    stored = np.clip(np.rint((v - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept



#: patient position -> signs taking the scanner frame (LPS of a head-first supine patient) to patient LPS
_PATIENT_POSITIONS: dict[str, tuple[int, int, int]] = {
    "HFS": (1, 1, 1), "HFP": (-1, -1, 1), "FFS": (-1, 1, -1), "FFP": (1, -1, -1)}
_FAMILY_IODS = {"MR": "_mr", "PT": "_pt", "NM": "_nm", "ES": "_vl", "XC": "_vl"}
_NUCLIDES = {"F-18": ("cid4020", "_18Fluorine"), "Ga-68": ("cid4020", "_68Gallium"),
             "Tc-99m": ("cid18", "_99mTechnetium")}


def _radionuclide_code(isotope: str) -> Dataset | None:
    """The DICOM code (CID 4020 PET / CID 18 isotopes, SNOMED CT) of ``F-18``, ``Ga-68``, ``Tc-99m``."""
    from pydicom.sr.codedict import codes

    where = _NUCLIDES.get(isotope)
    if where is None:
        return None
    c = getattr(getattr(codes, where[0]), where[1])
    return _code(c.value, c.scheme_designator, c.meaning)


def _isotope(name: str) -> tuple[float, float] | None:
    """(half-life s, positron fraction) of an isotope the nuclear phantom knows."""
    from medacq.protocols.models.nuclear_phantom import ISOTOPES

    iso = ISOTOPES.get(name)
    return (float(iso.half_life_s), float(iso.positron_fraction)) if iso is not None else None


def slice_geometry(frame: ReconFrame) -> tuple[tuple[float, float], list[float], float]:
    """PET/SPECT slice: ((row, column) spacing mm, centre of pixel (0, 0) in the LPS-for-HFS frame, slice mm).

    The reconstructions publish ``origin_mm`` = (x of column 0, y of row 0) with y up (row 0 at +y):
    LPS-for-HFS y (posterior) is minus that y.
    """
    geo = dict(frame.descriptor.get("geometry") or {})
    try:
        py, px = (float(v) for v in geo["pixel_mm"])
        x0, y0 = (float(v) for v in geo["origin_mm"])
        thick = float(geo["slice_mm"])
    except (KeyError, TypeError, ValueError):
        raise DicomExportError(f"{frame.topic}: a slice needs geometry.pixel_mm, origin_mm and slice_mm") from None
    return (py, px), [x0, -y0, 0.0], thick


@dataclass
class _Pending:
    """Frames of one multi-frame object (US cine, waveform) waiting for their batch to fill."""

    iod: str
    frames: list[ReconFrame] = field(default_factory=list)
    samples: int = 0


class DicomWriter:
    """Turns :class:`ReconFrame` s into pydicom datasets; stateful only for batched objects.

    Images (DX, XA, CT) come out one per frame from :meth:`add`. Ultrasound cines collect
    ``us_cine_frames`` frames of one series into one multi-frame object; biosignal chunks collect
    ``waveform_seconds`` of samples (12-lead ECG at most 16384 samples, as its IOD limits) into
    one waveform object. :meth:`flush` returns what is still collecting (call it at the end of a
    series or recording).

    Args:
        study: patient and study context (the writer is the only place where it meets the data).
        ct_mu_water_per_mm: linear attenuation of water at the effective energy (1/mm), for
            Hounsfield units: ``HU = 1000 (µ − µ_water) / µ_water``. 0.0195/mm ≈ water at 70 keV.
        ct_slice_thickness_mm: Slice Thickness when the slice's descriptor has none (default: its pixel size).
        us_dynamic_range_db: dB span mapped to grey 0..255 (0 dB = 255).
        dx_patient_orientation: Patient Orientation of radiographs (row direction, column direction):
            how the panel is mounted relative to the patient, a property of the rig. The default
            (``L``, ``F``) is a PA view: columns toward the patient's left, rows toward the feet.
        station_name, institution_name, manufacturer: General Equipment.
        patient_position: Patient Position of MR/PET/NM slices (how the patient lies in the
            scanner: ``HFS``, ``FFS``, ``HFP`` ...), a rig setting; with ``HFS`` the scanner's x, y, z
            (MRI: magnet axes; PET/SPECT: ring x, y up, z) map to DICOM LPS as documented in docs/dicom.md.
        radiopharmaceutical: PET/NM Radiopharmaceutical (free text, e.g. ``Fluorodeoxyglucose F^18^``;
            a DICOM CID 4021/25 meaning is coded): an operator/rig setting the device does not know.
        injected_dose_bq, injection_time_ns: Radionuclide Total Dose (Bq) and Radiopharmaceutical Start
            DateTime (CLOCK_REALTIME ns): operator settings; omitted when None.
        spect_radionuclide: the SPECT isotope (``Tc-99m``): the SPECT reconstruction's output descriptor
            does not name it (the PET one does).
    """

    def __init__(self, study: StudyContext, *, ct_mu_water_per_mm: float = 0.0195,
                 ct_slice_thickness_mm: float | None = None, us_cine_frames: int = 32,
                 us_dynamic_range_db: float | None = None, waveform_seconds: float = 10.0,
                 dx_patient_orientation: tuple[str, str] = ("L", "F"),
                 station_name: str = "medacq", institution_name: str = "", manufacturer: str = "medacq",
                 patient_position: str = "HFS", radiopharmaceutical: str = "",
                 injected_dose_bq: float | None = None, injection_time_ns: int | None = None,
                 spect_radionuclide: str = "Tc-99m") -> None:
        if us_cine_frames < 1 or waveform_seconds <= 0 or ct_mu_water_per_mm <= 0:
            raise ValueError("us_cine_frames >= 1, waveform_seconds > 0 and ct_mu_water_per_mm > 0 are required")
        self.study = study
        self.mu_water = ct_mu_water_per_mm
        self.ct_slice_thickness_mm = ct_slice_thickness_mm
        self.dx_patient_orientation = dx_patient_orientation
        self.us_cine_frames = us_cine_frames
        self.us_dynamic_range_db = us_dynamic_range_db
        self.waveform_seconds = waveform_seconds
        self.station_name, self.institution_name, self.manufacturer = station_name, institution_name, manufacturer
        if patient_position not in _PATIENT_POSITIONS:
            raise ValueError(f"patient_position must be one of {sorted(_PATIENT_POSITIONS)}")
        self.patient_position = patient_position
        self.radiopharmaceutical = radiopharmaceutical
        self.injected_dose_bq = injected_dose_bq
        self.injection_time_ns = injection_time_ns
        self.spect_radionuclide = spect_radionuclide
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._series_numbers: dict[tuple[str, str], int] = {}
        self._emitted: dict[tuple[str, str], int] = {}
        self.rejected = 0  # frames refused with DicomExportError

    # ---- public ---------------------------------------------------------------------------
    def add(self, frame: ReconFrame) -> list[Dataset]:
        """Take one frame; return the objects it completes (zero or more)."""
        desc = frame.descriptor
        meta = dict(desc.get("meta") or {})
        try:
            iod = iod_of(str(desc.get("modality", "")), frame.output, frame.data,
                         meta.get("channel_names") or desc.get("channel_names"),
                         meta.get("sample_rate_hz") or desc.get("sample_rate_hz"))
            if iod in _SINGLE:
                return [self._image(iod, frame)]
            key = (frame.topic, str(frame.header.get("series", "")))
            # a batch of a different series (or shape) is complete
            out = []
            for k in [k for k in self._pending if k[0] == frame.topic and k != key]:
                out += self._finish(k)
            p = self._pending.get(key)
            if p is not None and p.frames and (p.frames[-1].data.shape[:-1] != frame.data.shape[:-1]
                                               if iod not in ("US", "SC")
                                               else p.frames[-1].data.shape != frame.data.shape):
                out += self._finish(key)
                p = None
            if p is None:
                p = self._pending[key] = _Pending(iod)
            self._check(iod, frame)
            p.frames.append(frame)
            if iod in ("US", "SC"):
                if len(p.frames) >= self.us_cine_frames:
                    out += self._finish(key)
            else:
                p.samples += frame.data.shape[1]
                if p.samples >= self._max_samples(iod, frame):
                    out += self._finish(key, keep_rest=True)
            return out
        except DicomExportError:
            self.rejected += 1
            raise

    def flush(self) -> list[Dataset]:
        """Every object still collecting frames (the end of a recording)."""
        out: list[Dataset] = []
        for key in list(self._pending):
            out += self._finish(key)
        return out

    def flush_series(self, topic: str, series: str) -> list[Dataset]:
        """What one stream series still collects (its ``series_end`` arrived)."""
        return self._finish((topic, series))

    # ---- common modules -------------------------------------------------------------------
    def _series_number(self, topic: str, series: str) -> int:
        key = (topic, series)
        if key not in self._series_numbers:
            self._series_numbers[key] = len(self._series_numbers) + 1
        return self._series_numbers[key]

    def _base(self, iod: str, frame: ReconFrame, first_seq: int, modality: str) -> Dataset:
        st = self.study
        h = frame.header
        series = str(h.get("series", ""))
        ds = Dataset()
        ds.file_meta = fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = SOP_CLASSES[iod]
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        fm.ImplementationVersionName = f"MEDACQ_{_medacq_version}"[:16]
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = SOP_CLASSES[iod]
        ds.SOPInstanceUID = derived_uid(st.study_uid, frame.topic, series, first_seq, iod)
        fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        t_ns = int(h.get("t_host_ns") or 0)
        da, tm, dt = _dt_parts(t_ns)
        ds.InstanceCreationDate, ds.InstanceCreationTime = da, tm
        ds.TimezoneOffsetFromUTC = "+0000"
        # patient
        ds.PatientName = st.patient_name
        ds.PatientID = st.patient_id
        ds.PatientBirthDate = st.birth_date.strftime("%Y%m%d") if st.birth_date else ""
        ds.PatientSex = st.sex
        # study
        ds.StudyInstanceUID = st.study_uid
        ds.StudyDate, ds.StudyTime = da, tm
        ds.ReferringPhysicianName = st.referring_physician
        ds.StudyID = st.study_id
        ds.AccessionNumber = st.accession_number
        if st.study_description:
            ds.StudyDescription = st.study_description
        # series
        ds.Modality = modality
        ds.SeriesInstanceUID = derived_uid(st.study_uid, frame.topic, series)
        ds.SeriesNumber = self._series_number(frame.topic, series)
        stream = frame.topic.removeprefix("recon/")
        ds.SeriesDescription = f"{st.series_description} {stream}".strip()[:64]
        ds.SeriesDate, ds.SeriesTime = da, tm
        # equipment
        ds.Manufacturer = self.manufacturer
        ds.InstitutionName = self.institution_name
        ds.StationName = self.station_name
        ds.ManufacturerModelName = str(frame.descriptor.get("device", ""))[:64] or "medacq"
        ds.SoftwareVersions = f"medacq {_medacq_version}"
        ds.InstanceNumber = first_seq + 1
        ds.ContentDate, ds.ContentTime = da, tm
        ds.AcquisitionDateTime = dt
        ds.AcquisitionDate, ds.AcquisitionTime = da, tm
        return ds

    @staticmethod
    def _pixels(ds: Dataset, stored: np.ndarray, frames: int = 1) -> None:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
        bits = stored.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
        if frames > 1 or "NumberOfFrames" in ds:
            ds.NumberOfFrames = frames
        ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()

    # ---- images ---------------------------------------------------------------------------
    def _check(self, iod: str, frame: ReconFrame) -> None:
        d = frame.data
        if iod in ("DX", "XA", "CT", "US", "SC", "MR", "PT", "NM") and d.ndim != 2:
            raise DicomExportError(f"{frame.topic}: an image needs 2 axes, got shape {d.shape}")
        if iod in ("ES", "XC") and (d.ndim != 3 or d.shape[2] != 3 or d.dtype != np.uint8):
            raise DicomExportError(f"{frame.topic}: a colour image needs uint8 (y, x, 3), got {d.dtype} {d.shape}")
        if iod in ("ECG12", "ECG", "EEG") and (d.ndim != 2 or d.shape[1] == 0):
            raise DicomExportError(f"{frame.topic}: a waveform needs (channel, sample), got shape {d.shape}")
        if not np.issubdtype(d.dtype, np.number) or np.iscomplexobj(d):
            raise DicomExportError(f"{frame.topic}: real numeric data required, got {d.dtype}")

    def _image(self, iod: str, frame: ReconFrame) -> Dataset:
        self._check(iod, frame)
        h, desc = frame.header, frame.descriptor
        geo = dict(desc.get("geometry") or {})
        seq = int(h.get("seq", 0))
        data = np.asarray(frame.data, dtype=np.float64)
        if iod == "CT":
            return self._ct(frame, data, geo, seq)
        if iod in _FAMILY_IODS:
            return getattr(self, _FAMILY_IODS[iod])(frame, seq)
        ds = self._base(iod, frame, seq, "DX" if iod == "DX" else "XA")
        pitch = float(geo.get("pixel_pitch_mm", 0) or 0) * float(geo.get("binning", 1) or 1)
        if pitch <= 0:
            raise DicomExportError(f"{frame.topic}: no pixel_pitch_mm in the descriptor geometry")
        units = str(h.get("units", desc.get("units", "")))
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.ImagerPixelSpacing = [_ds_str(pitch), _ds_str(pitch)]
        ds.PixelSpacing = [_ds_str(pitch), _ds_str(pitch)]
        ds.PatientOrientation = ""
        ds.KVP = ""
        ds.BodyPartExamined = ""
        if iod == "DX":
            # For Presentation: the DX Image module fixes Rescale Slope 1 / Intercept 0, so the stored
            # values are the presentation values: the frame's range quantised to 16 bits; the mapping
            # back to the frame's units is in Image Comments (and the real values stay in HDF5).
            log = units == "1"
            stored, slope, intercept = _to_uint16(data)
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.PixelIntensityRelationship = "LOG" if log else "LIN"
            ds.PixelIntensityRelationshipSign = 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
            ds.ImageComments = f"{units or 'value'} = stored * {_ds_str(slope)} + {_ds_str(intercept)}"
            ds.BurnedInAnnotation = "NO"
            ds.DetectorType = "SCINTILLATOR"  # a Dexela-class CMOS panel behind CsI
            ds.ViewPosition = ""
            ds.ImageLaterality = "U"
            ds.PositionerType = ""
            ds.AnatomicRegionSequence = DicomSequence([])
            ds.AcquisitionContextSequence = DicomSequence([])
            ds.LossyImageCompression = "00"
            ds.PatientOrientation = list(self.dx_patient_orientation)
            # -ln(I/I0) (attenuation): high = dense = white: MONOCHROME2. I/I0 (transmission): high =
            # more X-rays = dark on film: MONOCHROME1 with an INVERSE presentation LUT.
            self._pixels(ds, stored)
            ds.PhotometricInterpretation = "MONOCHROME2" if log else "MONOCHROME1"
            ds.PresentationLUTShape = "IDENTITY" if log else "INVERSE"
            ds.WindowCenter = _ds_str(float(stored.max()) / 2.0)
            ds.WindowWidth = _ds_str(max(float(stored.max()), 2.0))
        else:  # XA, one frame of a DSA run: ln(mask) - ln(live), positive where contrast arrived
            stored, slope, intercept = _to_uint16(data)
            ds.PixelIntensityRelationship = "LOG"
            ds.PositionerMotion = "STATIC"
            ds.RadiationSetting = "GR"
            ds.RescaleIntercept, ds.RescaleSlope = _ds_str(intercept), _ds_str(slope)
            ds.RescaleType = "US"
            ds.PositionerPrimaryAngle = "0"
            ds.PositionerSecondaryAngle = "0"
            ds.ImageType = ["DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"]
            ds.LossyImageCompression = "00"
            ds.MaskSubtractionSequence = DicomSequence([self._mask_item(frame)])
            ds.RecommendedViewingMode = "SUB"
            ds.Laterality = ""
            ds.Exposure, ds.ExposureTime, ds.XRayTubeCurrent = "", "", ""
            self._pixels(ds, stored)
            del ds.PixelSpacing
        ds.AcquisitionNumber = int(h.get("meta", {}).get("frame_index", seq)) + 1
        return ds

    @staticmethod
    def _mask_item(frame: ReconFrame) -> Dataset:
        item = Dataset()
        item.MaskOperation = "AVG_SUB"
        masks = [int(i) for i in (frame.header.get("meta") or {}).get("mask_frames", [])] or [1]
        item.MaskFrameNumbers = [m + 1 for m in masks][:16] if len(masks) > 1 else masks[0] + 1
        return item

    def _ct(self, frame: ReconFrame, mu: np.ndarray, geo: dict[str, Any], seq: int) -> Dataset:
        meta = dict(frame.header.get("meta") or {})
        px = float(meta.get("pixel_mm") or geo.get("pixel_mm") or 0)
        if px <= 0:
            raise DicomExportError(f"{frame.topic}: no pixel_mm for a CT slice")
        ds = self._base("CT", frame, seq, "CT")
        hu = 1000.0 * (mu - self.mu_water) / self.mu_water
        stored = np.clip(np.rint(np.nan_to_num(hu, nan=-1024.0)), -32768, 32767).astype(np.int16)  # HU = stored
        rows, cols = stored.shape
        thick = float(geo.get("slice_thickness_mm") or self.ct_slice_thickness_mm or px)
        ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.FrameOfReferenceUID = derived_uid(self.study.study_uid, frame.topic, frame.header.get("series", ""), "FoR")
        ds.PositionReferenceIndicator = ""
        # the isocentre at the image centre; patient x to the left-hand columns, y down the rows (axial, HFS)
        ds.ImagePositionPatient = [_ds_str(-(cols - 1) / 2 * px), _ds_str(-(rows - 1) / 2 * px), "0"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = "0"
        ds.PixelSpacing = [_ds_str(px), _ds_str(px)]
        ds.SliceThickness = _ds_str(thick)
        ds.KVP = ""
        ds.AcquisitionNumber = int(meta.get("rotation", seq)) + 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.ConvolutionKernel = "RAMLAK"
        self._pixels(ds, stored)
        ds.BitsStored, ds.HighBit = 16, 15
        return ds

    # ---- cross-sectional images of the newer families (MR, PET, NM) -------------------------
    def _plane(self, ds: Dataset, frame: ReconFrame, spacing_mm: tuple[float, float], first_xyz_mm: Sequence[float],
               thickness_mm: float, top_level: bool = True) -> None:
        """Frame of Reference + Image Plane from the scanner frame (module doc of docs/dicom.md).

        ``first_xyz_mm``: centre of pixel (0, 0) in the scanner's LPS-for-HFS frame; rows advance along
        +y, columns along +x of that frame. The patient position turns it into patient LPS.
        """
        sx, sy, sz = _PATIENT_POSITIONS[self.patient_position]
        ds.Laterality = ""  # dciodvfy asks for it (Type 2C) in cross-sectional series
        if top_level:
            ds.PatientPosition = self.patient_position
        ds.FrameOfReferenceUID = derived_uid(self.study.study_uid, frame.topic, frame.header.get("series", ""), "FoR")
        ds.PositionReferenceIndicator = ""
        x, y, z = (float(v) for v in first_xyz_mm)
        ipp = [_ds_str(sx * x), _ds_str(sy * y), _ds_str(sz * z)]
        iop = [_ds_str(float(sx)), "0", "0", "0", _ds_str(float(sy)), "0"]
        if top_level:
            ds.ImagePositionPatient, ds.ImageOrientationPatient = ipp, iop
            ds.SliceLocation = _ds_str(sz * z)
        ds.PixelSpacing = [_ds_str(spacing_mm[0]), _ds_str(spacing_mm[1])]
        ds.SliceThickness = _ds_str(thickness_mm)

    @staticmethod
    def _rwvm(slope: float, intercept: float, last: int, units: tuple[str, str, str], label: str) -> Dataset:
        """A Real World Value Mapping item: ``value = stored * slope + intercept`` in UCUM ``units``."""
        m = Dataset()
        m.RealWorldValueFirstValueMapped, m.RealWorldValueLastValueMapped = 0, last
        m.RealWorldValueIntercept, m.RealWorldValueSlope = float(intercept), float(slope)
        m.LUTExplanation = f"{label} ({units[2]})"[:64]
        m.LUTLabel = label[:16]
        m.MeasurementUnitsCodeSequence = DicomSequence([_code(units[0], units[1], units[2])])
        return m

    def _mr(self, frame: ReconFrame, seq: int) -> Dataset:
        desc = frame.descriptor
        geo = dict(desc.get("geometry") or {})
        meta = dict(desc.get("meta") or {})
        try:
            dy, dx = (float(v) * 1e3 for v in geo["pixel_spacing_m"])
            # a multi-slice scan puts each slice's origin (its z) in the frame meta; else the descriptor's
            origin = [float(v) * 1e3 for v in ((frame.header.get("meta") or {}).get("origin_m") or geo["origin_m"])]
        except (KeyError, TypeError, ValueError):
            raise DicomExportError(f"{frame.topic}: MR needs geometry.pixel_spacing_m and origin_m") from None
        sq = dict(meta.get("sequence") or {})
        ds = self._base("MR", frame, seq, "MR")
        data = np.asarray(frame.data, dtype=np.float64)
        stored, slope, intercept = _to_uint16(data, lo=0.0)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        kind = str(sq.get("sequence", ""))
        ds.ScanningSequence = "GR" if kind == "gre" else "SE"
        ds.SequenceVariant = "SP" if kind == "gre" else "NONE"  # spoiled gradient echo
        ds.ScanOptions = "PFP" if float(sq.get("partial_fourier", 1.0) or 1.0) < 1.0 else ""
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = {"se": "se2d", "gre": "gre2d", "tse": "tse2d"}.get(kind, "")
        ds.RepetitionTime = _ds_str(float(sq["tr_ms"])) if "tr_ms" in sq else ""
        ds.EchoTime = _ds_str(float(sq["te_ms"])) if "te_ms" in sq else ""
        ds.EchoTrainLength = int(sq.get("etl", 1)) if kind == "tse" else (1 if sq else "")
        if "flip_deg" in sq:
            ds.FlipAngle = _ds_str(float(sq["flip_deg"]))
        if sq.get("larmor_hz"):
            ds.ImagingFrequency = _ds_str(float(sq["larmor_hz"]) / 1e6)  # MHz
        if sq.get("b0_t"):
            ds.MagneticFieldStrength = _ds_str(float(sq["b0_t"]))
        if sq.get("bandwidth_hz") and geo.get("matrix"):
            ds.PixelBandwidth = _ds_str(float(sq["bandwidth_hz"]) / float(geo["matrix"][-1]))  # Hz per pixel
        ds.ImagedNucleus = "1H"
        ds.NumberOfAverages = "1"
        ds.AngioFlag = "N"
        matrix = geo.get("matrix") or list(stored.shape)
        ds.AcquisitionMatrix = [0, int(matrix[-1]), int(matrix[0]), 0]  # frequency rows, columns; phase rows, columns
        ds.InPlanePhaseEncodingDirection = "COL"  # phase along y = down the columns
        thick = float(geo.get("slice_mm") or sq.get("slice_mm") or 0.0)
        self._plane(ds, frame, (dy, dx), origin, thick)
        if not thick:
            ds.SliceThickness = ""
        ds.AcquisitionNumber = int((frame.header.get("meta") or {}).get("image", seq)) + 1
        self._pixels(ds, stored)
        ds.RealWorldValueMappingSequence = DicomSequence([self._rwvm(slope, intercept, 65535, ("1", "UCUM", "no units"),
                                                                     "magnitude")])
        ds.WindowCenter = _ds_str(float(stored.max()) / 2.0)
        ds.WindowWidth = _ds_str(max(float(stored.max()), 2.0))
        ds.ImageComments = f"magnitude (a.u.) = stored * {_ds_str(slope)}"
        return ds

    def _nuclear_common(self, ds: Dataset, frame: ReconFrame, isotope: str, pet: bool) -> None:
        """Radiopharmaceutical Information and the NM/PET Patient Orientation (the NM Isotope module
        has no half-life, positron fraction or start DateTime)."""
        ri = Dataset()
        if self.radiopharmaceutical:
            ri.Radiopharmaceutical = self.radiopharmaceutical[:64]
        nuclide = _radionuclide_code(isotope)
        ri.RadionuclideCodeSequence = DicomSequence([nuclide] if nuclide is not None else [])
        iso = _isotope(isotope)
        if iso is not None and pet:
            ri.RadionuclideHalfLife = _ds_str(iso[0])
            if iso[1] > 0:
                ri.RadionuclidePositronFraction = _ds_str(iso[1])
        if self.injected_dose_bq is not None:
            ri.RadionuclideTotalDose = _ds_str(float(self.injected_dose_bq))
        if self.injection_time_ns is not None and pet:
            ri.RadiopharmaceuticalStartDateTime = _dt_parts(int(self.injection_time_ns))[2]
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([ri])
        # PS3.16 CID 19 / CID 21: recumbent, supine or prone; headfirst or feet-first
        pos = self.patient_position
        orient = _code("102538003", "SCT", "recumbent")
        orient.PatientOrientationModifierCodeSequence = DicomSequence(
            [_code("40199007", "SCT", "supine") if pos.endswith("S") else _code("1240000", "SCT", "prone")])
        ds.PatientOrientationCodeSequence = DicomSequence([orient])
        ds.PatientGantryRelationshipCodeSequence = DicomSequence(
            [_code("102540008", "SCT", "headfirst") if pos.startswith("H") else _code("102541007", "SCT", "feet-first")])

    def _slice_geometry(self, frame: ReconFrame) -> tuple[tuple[float, float], list[float], float]:
        return slice_geometry(frame)

    @staticmethod
    def _timing(frame: ReconFrame, half_life_s: float | None) -> tuple[int, float, float, float]:
        """(wall-clock ns of device time 0, frame start s, frame duration s, decay factor) of a nuclear image.

        ``t_host_ns`` is the host time of the last source block (device time ``t_end_s``) when the
        frame meta says so; without it (a recording made before per-frame meta was kept) the frame is taken as ending at
        ``t_host_ns`` with unknown duration (0) and decay factor 1."""
        m = dict(frame.header.get("meta") or {})
        t_host = int(frame.header.get("t_host_ns") or 0)
        if "t_end_s" in m and "t_start_s" in m:
            t0, t1 = float(m["t_start_s"]), float(m["t_end_s"])
            zero = t_host - int(round(t1 * 1e9))
            dur = max(t1 - t0, 0.0)
            exp = float(m.get("exposure_s") or 0.0)
            if exp > 0 and dur > 0:
                factor = dur / exp  # ∫dt / ∫exp(-λt)dt: the factor the counts were scaled by to reach t = 0
            elif half_life_s:
                lam = np.log(2) / half_life_s
                factor = float(np.exp(lam * (t0 + t1) / 2))
            else:
                factor = 1.0
            return zero, t0, dur, factor
        return t_host, 0.0, 0.0, 1.0

    def _pt(self, frame: ReconFrame, seq: int) -> Dataset:
        desc = frame.descriptor
        geo = dict(desc.get("geometry") or {})
        units = str(frame.header.get("units") or desc.get("units") or "")
        if units != "Bq/mL":
            raise DicomExportError(f"{frame.topic}: PET image units {units!r}: only Bq/mL is mapped (BQML)")
        spacing, first, thick = self._slice_geometry(frame)
        isotope = str(geo.get("isotope", ""))
        iso = _isotope(isotope)
        zero_ns, t0, dur, factor = self._timing(frame, iso[0] if iso else None)
        meta = dict(frame.header.get("meta") or {})
        ds = self._base("PT", frame, seq, "PT")
        # Series Date/Time = device time 0: decay correction (START) and Frame Reference Time refer to it
        da0, tm0, _ = _dt_parts(zero_ns)
        ds.SeriesDate, ds.SeriesTime = da0, tm0
        da1, tm1, dt1 = _dt_parts(zero_ns + int(round(t0 * 1e9)))
        ds.AcquisitionDate, ds.AcquisitionTime, ds.AcquisitionDateTime = da1, tm1, dt1
        data = np.asarray(frame.data, dtype=np.float64)
        stored, slope, _ = _to_uint16(np.clip(data, 0.0, None), lo=0.0)  # PET Image: Rescale Intercept 0
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["DYNAMIC" if meta.get("dynamic") else "STATIC", "IMAGE"]
        if meta.get("dynamic"):
            ds.NumberOfTimeSlices = 1  # streamed: each image its own time frame object
        ds.NumberOfSlices = 1
        corrected = ["DECY", "ATTN", "RAN", "DTIM", "NORM"] + (["SCAT"] if meta.get("scatter_fraction") else [])
        ds.CorrectedImage = corrected
        ds.DecayCorrection = "START"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.ReconstructionMethod = (f"OSEM {meta['iterations']}i{meta['subsets']}s" if "iterations" in meta
                                   else "OSEM")[:64]
        ds.AttenuationCorrectionMethod = "measured mu-map (phantom)"
        ds.ScatterCorrectionMethod = "tail fit" if "SCAT" in corrected else ""
        ds.CollimatorType = "NONE"
        ds.AxialAcceptance = ""
        self._nuclear_common(ds, frame, isotope, pet=True)
        self._plane(ds, frame, spacing, first, thick)
        del ds.PatientPosition  # PET uses the Patient Orientation code sequences instead
        ds.RescaleIntercept, ds.RescaleSlope = "0", _ds_str(slope)
        # the time at which the decay factor applies: exp(λ t_ref) = factor (the mid-frame without a decay model)
        t_ref = float(np.log(factor) * iso[0] / np.log(2)) if iso and factor > 1 else t0 + dur / 2
        ds.FrameReferenceTime = _ds_str(1000.0 * t_ref)
        ds.ImageIndex = 1
        ds.ActualFrameDuration = int(round(dur * 1000))
        ds.DecayFactor = _ds_str(factor)
        ds.AcquisitionNumber = seq + 1
        self._pixels(ds, stored)
        ds.WindowCenter = _ds_str(float(stored.max()) * slope / 2.0)
        ds.WindowWidth = _ds_str(max(float(stored.max()) * slope, 1e-3))
        return ds

    def _nm(self, frame: ReconFrame, seq: int) -> Dataset:
        desc = frame.descriptor
        units = str(frame.header.get("units") or desc.get("units") or "")
        if units != "Bq/mL":
            raise DicomExportError(f"{frame.topic}: SPECT image units {units!r}: only Bq/mL is mapped")
        spacing, first, thick = self._slice_geometry(frame)
        ds = self._base("NM", frame, seq, "NM")
        data = np.asarray(frame.data, dtype=np.float64)
        stored, slope, _ = _to_uint16(np.clip(data, 0.0, None), lo=0.0)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
        ds.FrameIncrementPointer = [(0x0054, 0x0080)]  # Slice Vector
        ds.SliceVector = [1]
        ds.NumberOfSlices = 1
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT"] if (frame.header.get("meta") or {}).get("scatter_fraction") \
            else ["DECY", "ATTN"]
        self._nuclear_common(ds, frame, self.spect_radionuclide, pet=False)
        ds.EnergyWindowInformationSequence = DicomSequence([])
        ds.NumberOfEnergyWindows = 1
        ds.NumberOfDetectors = 1
        ds.NumberOfRotations = 1
        ds.RotationInformationSequence = DicomSequence([])  # the gantry plan is the source stream's, not known here
        ds.CountsAccumulated = int((frame.header.get("meta") or {}).get("events", 0)) or ""
        self._plane(ds, frame, spacing, first, thick, top_level=False)
        sx, sy, sz = _PATIENT_POSITIONS[self.patient_position]
        det = Dataset()  # RECON TOMO: the plane's position and orientation live in the Detector Information item
        det.ImagePositionPatient = [_ds_str(sx * first[0]), _ds_str(sy * first[1]), _ds_str(sz * first[2])]
        det.ImageOrientationPatient = [_ds_str(float(sx)), "0", "0", "0", _ds_str(float(sy)), "0"]
        det.CollimatorType = "PARA"  # parallel-hole (the SPECT model's collimator)
        ds.DetectorInformationSequence = DicomSequence([det])
        ds.SpacingBetweenSlices = _ds_str(thick)
        ds.SliceLocation = "0"
        ds.ReconstructionDiameter = _ds_str(float((desc.get("geometry") or {}).get("fov_mm", 0) or 0))
        ds.ConvolutionKernel = "OSEM"
        self._pixels(ds, stored, frames=1)
        ds.NumberOfFrames = 1
        ds.RealWorldValueMappingSequence = DicomSequence([self._rwvm(slope, 0.0, 65535, ("Bq/ml", "UCUM",
                                                                                        "Becquerels/milliliter"),
                                                                     "activity")])
        ds.ImageComments = f"Bq/mL = stored * {_ds_str(slope)} (decay-corrected to device time 0)"
        ds.AcquisitionNumber = seq + 1
        return ds

    # ---- visible light -----------------------------------------------------------------------
    def _vl(self, frame: ReconFrame, seq: int) -> Dataset:
        iod = "ES" if str(frame.descriptor.get("modality")) == "endoscope" else "XC"
        ds = self._base(iod, frame, seq, iod)
        rgb = np.ascontiguousarray(frame.data, dtype=np.uint8)
        ds.ImageType = ["DERIVED", "PRIMARY"]  # demosaiced, white-balanced, colour-corrected
        ds.Laterality = ""  # unknown to the camera (dciodvfy wants the Type 2C element)
        ds.PatientOrientation = ""
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.AcquisitionContextSequence = DicomSequence([])
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"  # uncompressed: RGB (YBR_FULL_422 is for JPEG)
        ds.PlanarConfiguration = 0  # colour-by-pixel, as (y, x, c) is laid out
        ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb.tobytes()
        ds.AcquisitionNumber = seq + 1
        return ds

    # ---- batched objects ------------------------------------------------------------------
    def _max_samples(self, iod: str, frame: ReconFrame) -> int:
        fs = self._fs(frame)
        n = int(round(self.waveform_seconds * fs))
        return min(n, 16384) if iod == "ECG12" else max(n, 1)

    @staticmethod
    def _fs(frame: ReconFrame) -> float:
        desc = frame.descriptor
        fs = (desc.get("meta") or {}).get("sample_rate_hz") or desc.get("sample_rate_hz")
        if not fs:
            raise DicomExportError(f"{frame.topic}: no sample_rate_hz in the descriptor")
        return float(fs)

    def _finish(self, key: tuple[str, str], keep_rest: bool = False) -> list[Dataset]:
        """Objects from a batch. ``keep_rest``: waveforms emit only whole objects of the IOD's
        length and keep the remaining samples collecting (as one frame starting where they start)."""
        p = self._pending.pop(key, None)
        if p is None or not p.frames:
            return []
        if p.iod == "US":
            return [self._us(p.frames)]
        if p.iod == "SC":
            return [self._sc(p.frames)]
        f0 = p.frames[0]
        x = np.concatenate([np.asarray(f.data, dtype=np.float64) for f in p.frames], axis=1)  # (channel, sample)
        limit = self._max_samples(p.iod, f0)
        full = (x.shape[1] // limit) * limit if keep_rest else x.shape[1]
        out = self._waveform(p.iod, key, f0, x[:, :full])
        if full < x.shape[1]:
            t_rest = int(f0.header.get("t_host_ns") or 0) + int(round(full / self._fs(f0) * 1e9))
            rest = ReconFrame(f0.topic, {**f0.header, "t_host_ns": t_rest}, x[:, full:], f0.descriptor)
            self._pending[key] = _Pending(p.iod, [rest], x.shape[1] - full)
        return out

    @staticmethod
    def _frame_time_ms(frames: list[ReconFrame]) -> float:
        t = [int(f.header.get("t_host_ns") or 0) for f in frames]
        if len(t) < 2 or t[-1] <= t[0]:
            rate = frames[0].descriptor.get("frame_rate_hz")
            return 1000.0 / float(rate) if rate else 100.0
        return (t[-1] - t[0]) / (len(t) - 1) / 1e6

    def _us(self, frames: list[ReconFrame]) -> Dataset:
        f0 = frames[0]
        geo = dict(f0.descriptor.get("geometry") or {})
        sp = geo.get("pixel_spacing_mm")
        if not sp:
            raise DicomExportError(f"{f0.topic}: no pixel_spacing_mm in the B-mode descriptor geometry")
        dz, dx = float(sp[0]), float(sp[1])
        ds = self._base("US", f0, int(f0.header.get("seq", 0)), "US")
        dr = self.us_dynamic_range_db or float((f0.header.get("meta") or {}).get("dynamic_range_db", 60.0))
        cube = np.stack([np.asarray(f.data, dtype=np.float64) for f in frames])
        grey = np.clip(np.rint((cube + dr) / dr * 255.0), 0, 255).astype(np.uint8)  # 0 dB -> 255, -dr dB -> 0
        ds.ImageType = ["DERIVED", "PRIMARY", "ABDOMINAL", "0001"]
        ds.Laterality = ""
        ds.LossyImageCompression = "00"
        ds.FrameTime = _ds_str(self._frame_time_ms(frames))
        ds.FrameIncrementPointer = (0x0018, 0x1063)
        ds.NumberOfFrames = len(frames)
        ds.CineRate = max(1, int(round(1000.0 / max(float(ds.FrameTime), 1e-3))))
        ds.PatientOrientation = ""
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY"
        ds.TransducerData = ""
        ds.ProcessingFunction = ""
        ds.MechanicalIndex = ""
        ds.BoneThermalIndex = ""
        ds.CranialThermalIndex = ""
        ds.SoftTissueThermalIndex = ""
        ds.DepthOfScanField = ""
        ds.PixelSpacing = None
        del ds.PixelSpacing
        z0 = float((geo.get("origin_mm") or [0.0, 0.0])[0])
        rows, cols = grey.shape[1], grey.shape[2]
        r = Dataset()
        r.RegionSpatialFormat = 1          # 2D
        r.RegionDataType = 1               # tissue
        r.RegionFlags = 0
        r.RegionLocationMinX0, r.RegionLocationMinY0 = 0, 0
        r.RegionLocationMaxX1, r.RegionLocationMaxY1 = cols - 1, rows - 1
        r.PhysicalUnitsXDirection = 3      # cm
        r.PhysicalUnitsYDirection = 3
        r.PhysicalDeltaX = dx / 10.0
        r.PhysicalDeltaY = dz / 10.0
        r.ReferencePixelX0 = int(round((cols - 1) / 2))
        r.ReferencePixelY0 = 0
        r.ReferencePixelPhysicalValueX = 0.0
        r.ReferencePixelPhysicalValueY = z0 / 10.0
        ds.SequenceOfUltrasoundRegions = DicomSequence([r])
        self._pixels(ds, grey, frames=len(frames))
        ds.NumberOfFrames = len(frames)
        return ds

    def _sc(self, frames: list[ReconFrame]) -> Dataset:
        f0 = frames[0]
        ds = self._base("SC", f0, int(f0.header.get("seq", 0)), "OT")
        cube = np.stack([np.asarray(f.data, dtype=np.float64) for f in frames])
        holes = int((~np.isfinite(cube)).sum())
        if holes:  # no estimate there (a modulus map's edges): the map's minimum, counted below
            finite = cube[np.isfinite(cube)]
            cube = np.where(np.isfinite(cube), cube, float(finite.min()) if finite.size else 0.0)
        stored, slope, intercept = _to_uint16(cube)
        ds.ConversionType = "WSD"
        ds.Laterality = ""
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.BurnedInAnnotation = "NO"
        ds.PatientOrientation = ""
        ds.RescaleIntercept, ds.RescaleSlope = _ds_str(intercept), _ds_str(slope)
        ds.RescaleType = "US"
        if len(frames) > 1:  # one frame: no Frame Increment Pointer (dciodvfy: 1C condition unsatisfied)
            ds.FrameTime = _ds_str(self._frame_time_ms(frames))
            ds.FrameIncrementPointer = (0x0018, 0x1063)
        ds.NumberOfFrames = len(frames)
        modality = str(f0.descriptor.get("modality"))
        if modality == "thermal":
            ds.ImageComments = f"temperature degC = stored * {_ds_str(slope)} + {_ds_str(intercept)}"
            ds.RealWorldValueMappingSequence = DicomSequence([self._rwvm(slope, intercept, 65535,
                                                                         ("Cel", "UCUM", "degree Celsius"), "temperature")])
        elif modality in ("swe", "tactile"):
            what = "Young's modulus" if modality == "swe" else "contact pressure"
            grid = ((f0.descriptor.get("geometry") or {}).get("grid") or {})
            where = ("; grid x {:.1f}..{:.1f} mm, z {:.1f}..{:.1f} mm".format(
                *(float(grid[k]) * 1e3 for k in ("x_min", "x_max", "z_min", "z_max")))
                if all(k in grid for k in ("x_min", "x_max", "z_min", "z_max")) else "")
            ds.ImageComments = (f"{what} kPa = stored * {_ds_str(slope)} + {_ds_str(intercept)}{where}"
                                + (f"; {holes} pixels without an estimate stored as the minimum" if holes else ""))[:10240]
            ds.RealWorldValueMappingSequence = DicomSequence([self._rwvm(slope, intercept, 65535,
                                                                         ("kPa", "UCUM", "kilopascal"),
                                                                         "modulus" if modality == "swe" else "pressure")])
        else:
            ds.ImageComments = "EIT dsigma/sigma (time-difference); " + EIT_CHOICE[:60]
        ds.PresentationLUTShape = "IDENTITY"
        self._pixels(ds, stored, frames=len(frames))
        ds.BitsStored, ds.HighBit = 16, 15
        return ds

    def _waveform(self, iod: str, key: tuple[str, str], f0: ReconFrame, x: np.ndarray) -> list[Dataset]:
        """Waveform objects of at most the IOD's length from ``x`` ``(channel, sample)`` starting at ``f0``'s clock."""
        fs = self._fs(f0)
        meta = dict(f0.descriptor.get("meta") or {})
        names = list(meta.get("channel_names") or f0.descriptor.get("channel_names") or [])
        if len(names) != x.shape[0]:
            names = [f"ch{i + 1}" for i in range(x.shape[0])]
        limit = self._max_samples(iod, f0)
        out = []
        for start in range(0, x.shape[1], limit):
            offset = self._emitted.get(key, 0)  # samples of this series already in objects: the UID's part
            chunk = x[:, start:start + limit]
            out.append(self._waveform_object(iod, f0, chunk, names, fs, start, offset, limit))
            self._emitted[key] = offset + chunk.shape[1]
        return out

    def _waveform_object(self, iod: str, f0: ReconFrame, x: np.ndarray, names: list[str], fs: float, start: int,
                         offset: int, limit: int) -> Dataset:
        modality = "EEG" if iod == "EEG" else "ECG"
        t0 = int(f0.header.get("t_host_ns") or 0) + int(round(start / fs * 1e9))
        ds = self._base(iod, f0, offset, modality)  # UID from the series' sample offset
        ds.InstanceNumber = offset // max(limit, 1) + 1
        da, tm, dt = _dt_parts(t0)
        ds.AcquisitionDateTime, ds.ContentDate, ds.ContentTime = dt, da, tm
        del ds.AcquisitionDate, ds.AcquisitionTime
        ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"  # UTC synchronisation
        ds.SynchronizationTrigger = "NO TRIGGER"
        ds.AcquisitionTimeSynchronized = "N"
        ds.AcquisitionContextSequence = DicomSequence([])
        units = str(f0.header.get("units") or f0.descriptor.get("units") or "µV")
        if units not in ("µV", "uV"):
            raise DicomExportError(f"{f0.topic}: waveform units {units!r}: only µV is mapped")
        peak = float(np.nanmax(np.abs(x))) if x.size else 0.0
        ladder = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        sens = next((s for s in ladder if peak / s <= 32000), ladder[-1])  # µV per count
        counts = np.clip(np.rint(np.nan_to_num(x) / sens), -32768, 32767).astype("<i2")
        w = Dataset()
        w.WaveformOriginality = "DERIVED"  # filtered by the reconstruction stage
        w.NumberOfWaveformChannels = x.shape[0]
        w.NumberOfWaveformSamples = x.shape[1]
        w.SamplingFrequency = _ds_str(fs)
        w.MultiplexGroupLabel = "EEG" if iod == "EEG" else "ECG"
        filt = (f0.descriptor.get("meta") or {}).get("filter") or {}
        band = filt.get("band_hz") or [None, None]
        chans = []
        for name in names:
            c = Dataset()
            c.ChannelLabel = name[:16]
            c.ChannelStatus = "OK"
            if iod == "EEG":
                src = _code(name[:16], _LOCAL_SCHEME, f"EEG lead {name}"[:64])
            elif name in ECG_LEADS:
                src = _code(ECG_LEADS[name][0], "MDC", ECG_LEADS[name][1])
            else:
                src = _code(name[:16], _LOCAL_SCHEME, f"ECG lead {name}"[:64])
            c.ChannelSourceSequence = DicomSequence([src])
            c.ChannelSensitivity = _ds_str(sens)
            c.ChannelSensitivityUnitsSequence = DicomSequence([_code("uV", "UCUM", "microvolt")])
            c.ChannelSensitivityCorrectionFactor = "1"
            c.ChannelBaseline = "0"
            c.ChannelSampleSkew = "0"
            c.WaveformBitsStored = 16
            if band[0]:
                c.FilterLowFrequency = _ds_str(float(band[0]))
            if band[1]:
                c.FilterHighFrequency = _ds_str(float(band[1]))
            if filt.get("notch_hz"):
                c.NotchFilterFrequency = _ds_str(float(filt["notch_hz"]))
            chans.append(c)
        w.ChannelDefinitionSequence = DicomSequence(chans)
        w.WaveformBitsAllocated = 16
        w.WaveformSampleInterpretation = "SS"
        w.WaveformData = counts.T.copy().tobytes()  # multiplexed: sample-major, channels interleaved
        ds.WaveformSequence = DicomSequence([w])
        return ds
