"""ISMRMRD v1 HDF5 writer for ``mri`` streams (raw k-space lines → ``/dataset/xml``, ``/dataset/data``).

Written with h5py from the ISMRMRD 1.x format (ismrmrd.h ``ISMRMRD_AcquisitionHeader`` and the
``ismrmrd.xsd`` header schema); the ``ismrmrd`` Python package reads the files
(``ismrmrd.Dataset(path).read_acquisition(i)``). One acquisition per frame: ``data`` the
``(coil, readout)`` complex64 line, ``idx.kspace_encode_step_1`` the phase line,
``idx.repetition`` the image, flags first/last in encode step 1 and last in repetition; the XML
header carries the Larmor frequency, field strength, coils, matrix, FOV, TE/TR/flip and the
Cartesian encoding limits from the stream descriptor.

``medacq record --format ismrmrd`` records one ``mri`` stream through
:class:`IsmrmrdStreamWriter` (the recorder's writer interface): the file is created at the
stream's first descriptor and every line is appended as it arrives; each checkpoint flushes the
HDF5 file. (Not crash-consistent like the HDF5 recorder's write-ahead log: a killed recorder may
leave the last lines unreadable; record ``--format hdf5`` where that matters and export.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from xml.sax.saxutils import escape

import h5py
import numpy as np

from medacq.protocols.mrd import ACQUISITION_HEADER_DTYPE

from medacq.daemon.recording._stream_writer import DescriptorStreamWriter

__all__ = ["ACQUISITION_HEADER_DTYPE", "IsmrmrdStreamWriter", "IsmrmrdWriter", "write_ismrmrd", "header_xml",
           "acquisition_header"]

_ACQ = np.dtype([("head", ACQUISITION_HEADER_DTYPE), ("traj", h5py.vlen_dtype(np.dtype("<f4"))),
                 ("data", h5py.vlen_dtype(np.dtype("<f4")))])
# flag bits (ISMRMRD_AcquisitionFlags, 1-based)
_FIRST_IN_ENCODE_STEP1, _LAST_IN_ENCODE_STEP1, _LAST_IN_REPETITION = 1, 2, 14


def header_xml(descriptor: dict[str, Any]) -> str:
    """The ISMRMRD XML header for an ``mri`` stream descriptor (as a dict)."""
    meta = descriptor.get("meta") or {}
    geo = descriptor.get("geometry") or {}
    seq = meta.get("sequence") or {}
    ny, nx = (geo.get("matrix") or [descriptor["shape"][1]] * 2)[:2]
    fov_y, fov_x = [1e3 * v for v in (geo.get("fov_m") or [0.2, 0.2])[:2]]
    slice_mm = float(geo.get("slice_mm") or seq.get("slice_mm") or 5.0)
    coils = int(descriptor["shape"][0])
    space = (f"<matrixSize><x>{nx}</x><y>{ny}</y><z>1</z></matrixSize>"
             f"<fieldOfView_mm><x>{fov_x}</x><y>{fov_y}</y><z>{slice_mm}</z></fieldOfView_mm>")
    lim = lambda n: f"<minimum>0</minimum><maximum>{n - 1}</maximum><center>{n // 2}</center>"  # noqa: E731
    parts = ['<?xml version="1.0"?>', '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">',
             "<acquisitionSystemInformation>",
             f"<systemVendor>{escape(str(descriptor.get('device', 'marcos')))}</systemVendor>",
             f"<systemFieldStrength_T>{float(meta.get('field_strength_t', 0.0))}</systemFieldStrength_T>",
             f"<receiverChannels>{coils}</receiverChannels>", "</acquisitionSystemInformation>",
             "<experimentalConditions>",
             f"<H1resonanceFrequency_Hz>{int(round(float(meta.get('larmor_hz', 0.0))))}</H1resonanceFrequency_Hz>",
             "</experimentalConditions>",
             "<encoding>", f"<encodedSpace>{space}</encodedSpace>", f"<reconSpace>{space}</reconSpace>",
             "<encodingLimits>", f"<kspace_encoding_step_1>{lim(ny)}</kspace_encoding_step_1>",
             f"<slice>{lim(int(geo.get('slices') or 1))}</slice>",
             "</encodingLimits>", "<trajectory>cartesian</trajectory>", "</encoding>"]
    sp = []
    for key, tag in (("tr_ms", "TR"), ("te_ms", "TE"), ("flip_deg", "flipAngle_deg")):
        if key in seq:
            sp.append(f"<{tag}>{float(seq[key])}</{tag}>")
    if seq.get("sequence") in ("se", "gre", "tse"):
        kind = {"se": "SpinEcho", "gre": "GradientEcho", "tse": "TurboSpinEcho"}[seq["sequence"]]
        sp.append(f"<sequence_type>{kind}</sequence_type>")
    if sp:
        parts += ["<sequenceParameters>", *sp, "</sequenceParameters>"]
    parts.append("</ismrmrdHeader>")
    return "".join(parts)


class IsmrmrdWriter:
    """Append acquisitions to ``path`` (group ``/dataset``); ``close()`` when done."""

    def __init__(self, path: str, descriptor: dict[str, Any]) -> None:
        self.descriptor = descriptor
        self.f = h5py.File(path, "w")
        g = self.f.create_group("dataset")
        xml = g.create_dataset("xml", shape=(1,), dtype=h5py.vlen_dtype(bytes))
        xml[0] = header_xml(descriptor).encode()
        self.data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=_ACQ, chunks=(64,))
        geo = descriptor.get("geometry") or {}
        self.n_lines = int((geo.get("matrix") or [descriptor["shape"][1]])[0])
        bw = float(descriptor.get("sample_rate_hz") or 0.0)
        self.dwell_us = 1e6 / bw if bw else 0.0
        self.count = 0

    def append(self, line: np.ndarray, meta: dict[str, Any], t_ms: int = 0) -> None:
        """One ``(coil, readout)`` complex line with its frame ``meta`` (``line``, ``image``, ``last``)."""
        line = np.ascontiguousarray(line, dtype=np.complex64)
        rec = np.zeros((1,), _ACQ)
        rec["head"][0] = acquisition_header(line, meta, self.n_lines, self.dwell_us, self.count, t_ms)
        rec[0]["traj"] = np.zeros(0, np.float32)
        rec[0]["data"] = line.view(np.float32).reshape(-1)  # (coil, sample) interleaved re/im, as ISMRMRD
        self.data.resize((self.count + 1,))
        self.data[self.count] = rec[0]
        self.count += 1

    def close(self) -> None:
        self.f.close()


def acquisition_header(line: np.ndarray, meta: dict[str, Any], n_lines: int, dwell_us: float, scan_counter: int,
                       t_ms: int = 0) -> np.ndarray:
    """The ISMRMRD acquisition header (one :data:`ACQUISITION_HEADER_DTYPE` record) of a
    ``(coil, readout)`` line with its frame ``meta`` (``line``, ``image``, ``last``, ``slice``,
    ``slice_position_mm``) in an ``n_lines``-line image."""
    coils, n = line.shape
    h = np.zeros((), ACQUISITION_HEADER_DTYPE)
    h["version"] = 1
    ky = int(meta.get("line", 0))
    flags = 0
    if ky == 0:
        flags |= 1 << (_FIRST_IN_ENCODE_STEP1 - 1)
    if ky == n_lines - 1 or meta.get("last"):
        flags |= (1 << (_LAST_IN_ENCODE_STEP1 - 1)) | (1 << (_LAST_IN_REPETITION - 1))
    h["flags"] = flags
    h["scan_counter"] = scan_counter
    h["acquisition_time_stamp"] = t_ms & 0xFFFFFFFF
    h["number_of_samples"] = n
    h["available_channels"] = coils
    h["active_channels"] = coils
    h["channel_mask"][0] = (1 << coils) - 1
    h["center_sample"] = n // 2
    h["sample_time_us"] = dwell_us
    h["read_dir"] = (1, 0, 0)
    h["phase_dir"] = (0, 1, 0)
    h["slice_dir"] = (0, 0, 1)
    h["idx"]["kspace_encode_step_1"] = ky
    h["idx"]["repetition"] = int(meta.get("image", 0))
    h["idx"]["slice"] = int(meta.get("slice", 0))
    if meta.get("slice_position_mm") is not None:
        h["position"] = (0.0, 0.0, float(meta["slice_position_mm"]))
    return h


def write_ismrmrd(path: str, descriptor: dict[str, Any], frames: Iterable[tuple[dict[str, Any], np.ndarray]]) -> int:
    """Write every ``(meta, (coil, readout) complex line)`` to an ISMRMRD file; returns the count."""
    w = IsmrmrdWriter(path, descriptor)
    try:
        for meta, line in frames:
            w.append(line, meta)
    finally:
        w.close()
    return w.count


class IsmrmrdStreamWriter(DescriptorStreamWriter):
    """A :class:`~medacq.daemon.recording.recorder.Recorder` writer for ``--format ismrmrd``: the
    frames of the first ``mri`` stream seen (``(coil, readout)`` complex lines) appended to one
    ISMRMRD file as they arrive. Frames before the stream's descriptor wait (bounded, the oldest
    dropped first and counted); frames of other streams are skipped and counted; gaps (lost lines)
    are counted in :meth:`status` (ISMRMRD has no gap record: the lines are missing from the file).
    The descriptor, backlog and gap handling is
    :class:`~medacq.daemon.recording._stream_writer.DescriptorStreamWriter`'s.
    """

    modality = "mri"
    writer: IsmrmrdWriter | None

    def __init__(self, path: str, topics: list[str] | None = None, max_backlog_bytes: int = 64 << 20) -> None:
        super().__init__(path, topics, max_backlog_bytes)

    def _open(self, topic: str, desc: dict[str, Any]) -> None:
        self.writer = IsmrmrdWriter(self.path, desc)

    def _append(self, h: dict[str, Any], arr: np.ndarray) -> None:
        assert self.writer is not None
        if arr.ndim != 2 or arr.dtype.kind != "c":
            raise ValueError(f"an mri frame is a (coil, readout) complex line, not {arr.dtype} {arr.shape}")
        t_ms = int(h.get("t_host_ns") or 0) // 1_000_000
        self.writer.append(arr, h.get("meta") or {}, t_ms)

    def checkpoint(self, complete: bool = False) -> int:
        """Flush the file (the lines appended so far reach it)."""
        import time

        t0 = time.perf_counter()
        if self.writer is not None:
            self.writer.f.flush()
        n, self.pending_frames, self.pending_bytes = self.pending_frames, 0, 0
        self.frames_committed += n
        self.checkpoints += 1
        self.last_checkpoint_s = time.perf_counter() - t0
        self.max_checkpoint_s = max(self.max_checkpoint_s, self.last_checkpoint_s)
        return n

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "topic": self.topic, "lines": self.writer.count if self.writer else 0,
                "gaps": self.gaps, "lost_frames": self.lost_frames, "skipped_frames": self.skipped_frames,
                "frames_committed": self.frames_committed}
