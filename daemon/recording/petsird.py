"""PET list mode as PETSIRD (the ETSI raw-data format), through the ``petsird`` package (PyPI).

The scanner is described as PETSIRD wants it: one module type, the detector *block*, holding
``crystals_per_block`` box crystals (20 mm deep radially, the crystal pitch wide, ``slice_mm``
long), replicated ``blocks`` times around the z axis; crystal ``k`` of the ring (block
``k // crystals_per_block``, element ``k % crystals_per_block``) sits at angle ``2 pi k / n``
exactly as in :class:`~medacq.protocols.pet_geometry.PetRing`. One event energy bin (the energy
window), so a PETSIRD detection bin equals our crystal index. TOF bins: ``tof_bins`` equal bins of
``(t1 - t2) c / 2`` over the coincidence window (mm). Events go in :class:`petsird.EventTimeBlock` s
of ``block_ms`` (PETSIRD time blocks are whole milliseconds since the start of acquisition);
prompts and delayed coincidences, each pair ordered so that ``detection_bin1 >= detection_bin2``
(PETSIRD's constraint; the TOF difference is negated when a pair is swapped).

``petsird`` is imported on use: it is an optional dependency (``pip install petsird``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from medacq.protocols.pet_geometry import SPEED_OF_LIGHT_MM_PER_PS, PetRing

from medacq.daemon.recording._stream_writer import DescriptorStreamWriter

if TYPE_CHECKING:  # pragma: no cover
    import petsird

__all__ = ["petsird_header", "PetsirdListModeWriter", "PetsirdStreamWriter", "write_singles_as_petsird"]

CRYSTAL_DEPTH_MM = 20.0


def _petsird() -> Any:
    try:
        import petsird
    except ImportError as exc:  # pragma: no cover - reported to the user
        raise RuntimeError("PETSIRD output needs the petsird package: pip install petsird") from exc
    return petsird


def petsird_header(ring: PetRing, ewindow_kev: tuple[float, float] = (425.0, 650.0), cwindow_ps: float = 4000.0,
                   ctr_fwhm_ps: float = 300.0, energy_fwhm: float = 0.11, tof_bins: int = 1,
                   model_name: str = "medacq PET ring") -> "petsird.Header":
    """A PETSIRD header for ``ring`` (geometry, energy window, TOF bins, policies)."""
    p = _petsird()
    from petsird.helpers.create import initialize_scanner_information_dimensions

    n = ring.n_crystals
    pitch = 2 * math.pi * ring.radius_mm / n
    L = (CRYSTAL_DEPTH_MM, pitch, ring.slice_mm)
    corners = [(0, 0, 0), (0, 0, L[2]), (0, L[1], L[2]), (0, L[1], 0),
               (L[0], 0, 0), (L[0], 0, L[2]), (L[0], L[1], L[2]), (L[0], L[1], 0)]
    box = p.BoxShape(corners=[p.Coordinate(c=np.array(c, np.float32)) for c in corners])
    crystal = p.BoxSolidVolume(shape=box, material_id=0)
    elements = p.ReplicatedBoxSolidVolume(object=crystal)
    for j in range(ring.crystals_per_block):
        a = 2 * math.pi * j / n
        # the box's first axis points radially out from radius R, centred on its other axes
        elements.transforms.append(p.RigidTransformation(matrix=np.array(
            ((math.cos(a), -math.sin(a), 0.0, ring.radius_mm * math.cos(a) + (L[1] / 2) * math.sin(a)),
             (math.sin(a), math.cos(a), 0.0, ring.radius_mm * math.sin(a) - (L[1] / 2) * math.cos(a)),
             (0.0, 0.0, 1.0, -L[2] / 2)), np.float32)))
    module = p.DetectorModule(detecting_elements=elements)
    rep = p.ReplicatedDetectorModule(object=module)
    for b in range(ring.blocks):
        a = 2 * math.pi * b * ring.crystals_per_block / n
        rep.transforms.append(p.RigidTransformation(matrix=np.array(
            ((math.cos(a), -math.sin(a), 0.0, 0.0), (math.sin(a), math.cos(a), 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)),
            np.float32)))
    scanner = p.ScannerInformation(model_name=model_name,
                                   scanner_geometry=p.ScannerGeometry(replicated_modules=[rep]))
    initialize_scanner_information_dimensions(scanner, 1, False, False)
    half = cwindow_ps * SPEED_OF_LIGHT_MM_PER_PS / 2
    scanner.tof_bin_edges[0][0] = p.BinEdges(edges=np.linspace(-half, half, tof_bins + 1, dtype=np.float32))
    # float32 fields: store the float32 value, so that what is read back compares equal
    scanner.tof_resolution[0][0] = float(np.float32(ctr_fwhm_ps * SPEED_OF_LIGHT_MM_PER_PS / 2))
    scanner.event_energy_bin_edges[0] = p.BinEdges(edges=np.array(ewindow_kev, np.float32))
    scanner.energy_resolution_at_511[0] = float(np.float32(energy_fwhm))
    scanner.prompt_event_policy = p.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    scanner.delayed_event_policy = p.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    scanner.single_event_policy = p.SingleEventPolicy.NONE
    scanner.triple_event_policy = p.TripleEventPolicy.NONE
    scanner.quadruple_event_policy = p.QuadrupleEventPolicy.NONE
    return p.Header(scanner=scanner)


class PetsirdListModeWriter:
    """Write a PETSIRD binary file: the header at construction, then one event time block per
    :meth:`write_block`; :meth:`close` ends the stream (a reader checks it was completed)."""

    def __init__(self, path: str, header: "petsird.Header") -> None:
        p = _petsird()
        self._p = p
        self.header = header
        s = header.scanner
        self._edges = np.asarray(s.tof_bin_edges[0][0].edges, np.float64)
        self._writer = p.BinaryPETSIRDWriter(path)
        self._writer.write_header(header)
        self.blocks = 0
        self.events = 0

    def _events(self, c1: np.ndarray, c2: np.ndarray, dt_ps: np.ndarray) -> list[Any]:
        p = self._p
        swap = c1 < c2
        a, b = np.where(swap, c2, c1), np.where(swap, c1, c2)
        d_mm = np.where(swap, -dt_ps, dt_ps) * (SPEED_OF_LIGHT_MM_PER_PS / 2)
        tof = np.clip(np.searchsorted(self._edges, d_mm, "right") - 1, 0, len(self._edges) - 2)
        return [p.CoincidenceEvent(detection_bins=[int(x), int(y)], tof_idx=int(t)) for x, y, t in zip(a, b, tof)]

    def write_block(self, start_ms: int, stop_ms: int, prompts: tuple[np.ndarray, np.ndarray, np.ndarray],
                    delayed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """One time block: prompt (and delayed) pairs as ``(crystal1, crystal2, t1 - t2 in ps)``."""
        p = self._p
        pe = self._events(*prompts)
        de = self._events(*delayed) if delayed is not None else []
        block = p.EventTimeBlock(time_interval=p.TimeInterval(start=int(start_ms), stop=int(stop_ms)),
                                 prompt_events=[[pe]], delayed_events=[[de]])
        self._writer.write_time_blocks((p.TimeBlock.EventTimeBlock(block),))
        self.blocks += 1
        self.events += len(pe) + len(de)

    def close(self) -> None:
        if not self.blocks:  # the stream of time blocks must be begun (and ended) even when empty
            self._writer.write_time_blocks(())
        self._writer.close()

    def __enter__(self) -> "PetsirdListModeWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_singles_as_petsird(path: str, ring: PetRing, frames: Iterable[np.ndarray], block_ms: int = 100,
                             cwindow_ps: float = 4000.0, ewindow_kev: tuple[float, float] = (425.0, 650.0),
                             delay_ps: float = 100_000.0, tof_bins: int = 1, **header_kw: Any) -> dict[str, int]:
    """Sort singles frames (the ``pet`` driver's ``(n, 3)`` int64: time ps, energy eV, crystal;
    time-ordered) into prompts and delayed coincidences and write them as PETSIRD, in time blocks
    of ``block_ms`` (device time 0 = acquisition start). Returns counts written."""
    from medacq.daemon.recon.algorithms.nuclear import sort_coincidences

    f = np.concatenate(list(frames)) if not isinstance(frames, np.ndarray) else frames
    keep = (f[:, 1] >= ewindow_kev[0] * 1000) & (f[:, 1] <= ewindow_kev[1] * 1000)
    t, c = f[keep, 0], f[keep, 2]
    co = sort_coincidences(t, cwindow_ps, delay_ps)
    header = petsird_header(ring, ewindow_kev, cwindow_ps, tof_bins=tof_bins, **header_kw)
    blk_ps = int(block_ms) * 10**9
    with PetsirdListModeWriter(path, header) as w:
        if len(t):
            last = int(t[-1] // blk_ps)
            for k in range(last + 1):
                lo, hi = k * blk_ps, (k + 1) * blk_ps
                ps = (t[co.prompt_a] >= lo) & (t[co.prompt_a] < hi)
                ds = (t[co.delayed_a] >= lo) & (t[co.delayed_a] < hi)
                pa, pb = co.prompt_a[ps], co.prompt_b[ps]
                da, db = co.delayed_a[ds], co.delayed_b[ds]
                w.write_block(k * block_ms, (k + 1) * block_ms,
                              (c[pa], c[pb], t[pa] - t[pb]),
                              (c[da], c[db], t[da] - (t[db] - int(delay_ps))))
        return {"prompts": len(co.prompt_a), "delayed": len(co.delayed_a), "blocks": w.blocks}


class PetsirdStreamWriter(DescriptorStreamWriter):
    """A :class:`~medacq.daemon.recording.recorder.Recorder` writer for ``--format petsird``: the
    singles frames of one ``pet`` stream (driver ``pet``: ``(n, 3)`` int64 time ps, energy eV,
    crystal) sorted into prompts and delayed coincidences as they arrive and written as PETSIRD
    event time blocks of ``block_ms`` of device time.

    The file is created at the stream's first descriptor (it carries the ring, the windows and
    the resolutions); frames that come before it (a subscriber that joined after the series started
    waits for the daemon's periodic descriptor) are held, up to ``max_backlog_bytes``, and written
    then. Frames of other streams are skipped and counted. Gaps (lost blocks) are counted in :meth:`status`: PETSIRD has no gap record, the time
    blocks that cover them simply hold fewer events. Interface: ``message``, ``gap``,
    ``checkpoint``, ``close``, ``abort``, ``status`` and the counters the recorder's status reads
    (``pending_bytes``, ``pending_frames``, ``frames_committed``, ``gaps_committed``, ``checkpoints``,
    ``last_checkpoint_s``, ``max_checkpoint_s``); the descriptor, backlog and gap handling is
    :class:`~medacq.daemon.recording._stream_writer.DescriptorStreamWriter`'s.
    """

    modality = "pet"
    writer: PetsirdListModeWriter | None

    def __init__(self, path: str, topics: list[str] | None = None, block_ms: int = 100,
                 delay_ps: float = 100_000.0, tof_bins: int = 1) -> None:
        super().__init__(path, topics, max_backlog_bytes=256 << 20)
        self.block_ms, self.delay_ps, self.tof_bins = int(block_ms), float(delay_ps), int(tof_bins)
        self.ring: PetRing | None = None
        self.prompts = self.delayed = 0
        self.warnings: list[str] = []
        self._t = np.empty(0, np.int64)
        self._c = np.empty(0, np.int64)
        self._first = True
        self._block = 0  # index of the time block being filled
        self._pairs: list[tuple[np.ndarray, ...]] = []  # (opener time, c1, c2, dt) prompts of the open block
        self._dpairs: list[tuple[np.ndarray, ...]] = []

    def _open(self, topic: str, desc: dict[str, Any]) -> None:
        g = desc.get("geometry") or {}
        self.ring = PetRing.from_descriptor(g)
        self.window = float(g.get("cwindow_ps", 4000.0))
        ew = g.get("ewindow_kev", (425.0, 650.0))
        self.e_lo, self.e_hi = float(ew[0]) * 1000.0, float(ew[1]) * 1000.0
        phys = (desc.get("meta") or {}).get("physics") or {}
        header = petsird_header(self.ring, (float(ew[0]), float(ew[1])), self.window,
                                ctr_fwhm_ps=float(phys.get("ctr_fwhm_ps", 300.0)),
                                energy_fwhm=float(phys.get("energy_fwhm", 0.11)), tof_bins=self.tof_bins,
                                model_name=str(desc.get("device") or "medacq PET ring"))
        self.writer = PetsirdListModeWriter(self.path, header)

    def _append(self, h: dict[str, Any], arr: np.ndarray) -> None:
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"pet frame must be (n, 3), not {arr.shape}")
        self._add(arr)

    def _add(self, f: np.ndarray) -> None:
        from medacq.daemon.recon.algorithms.nuclear import sort_coincidences

        keep = (f[:, 1] >= self.e_lo) & (f[:, 1] <= self.e_hi)
        t, c = f[keep, 0], f[keep, 2]
        if len(self._t) and len(t) and t[0] < self._t[-1]:  # time went back: a new series
            self._t, self._c, self._first = self._t[:0], self._c[:0], True
        tt, cc = np.concatenate([self._t, t]), np.concatenate([self._c, c])
        if not len(tt):
            return
        stop = int(np.searchsorted(tt, tt[-1] - int(self.delay_ps + self.window) - 1, "right"))
        start = 0 if self._first else 1
        if stop > start:
            co = sort_coincidences(tt, self.window, self.delay_ps, start, stop)
            pa, pb, da, db = co.prompt_a, co.prompt_b, co.delayed_a, co.delayed_b
            self._pairs.append((tt[pa], cc[pa], cc[pb], tt[pa] - tt[pb]))
            self._dpairs.append((tt[da], cc[da], cc[db], tt[da] - (tt[db] - int(self.delay_ps))))
            self._first = False
            self._t, self._c = tt[stop - 1:], cc[stop - 1:]
            self._flush_blocks(int(tt[stop - 1]))
        else:
            self._t, self._c = tt, cc

    def _flush_blocks(self, t_done_ps: int, final: bool = False) -> None:
        """Write every time block that ends at or before ``t_done_ps`` (all of them when ``final``)."""
        assert self.writer is not None
        blk = self.block_ms * 10**9
        p = [np.concatenate(x) for x in zip(*self._pairs)] if self._pairs else [np.empty(0, np.int64)] * 4
        d = [np.concatenate(x) for x in zip(*self._dpairs)] if self._dpairs else [np.empty(0, np.int64)] * 4
        last = max(int(p[0].max()) if len(p[0]) else -1, int(d[0].max()) if len(d[0]) else -1)
        end_block = (last // blk + 1) if final else (t_done_ps // blk)
        while self._block < end_block:
            lo, hi = self._block * blk, (self._block + 1) * blk
            ps = (p[0] >= lo) & (p[0] < hi)
            ds = (d[0] >= lo) & (d[0] < hi)
            self.writer.write_block(self._block * self.block_ms, (self._block + 1) * self.block_ms,
                                    (p[1][ps], p[2][ps], p[3][ps]), (d[1][ds], d[2][ds], d[3][ds]))
            self.prompts += int(ps.sum())
            self.delayed += int(ds.sum())
            self._block += 1
        cut = self._block * blk
        pk, dk = p[0] >= cut, d[0] >= cut
        self._pairs = [tuple(x[pk] for x in p)]
        self._dpairs = [tuple(x[dk] for x in d)]

    def checkpoint(self, complete: bool = False) -> int:
        """Count what was handed over (time blocks are written as soon as they are complete; the
        file's stream ends only at :meth:`close`, so a killed recorder leaves an unterminated file)."""
        n, self.pending_frames, self.pending_bytes = self.pending_frames, 0, 0
        self.frames_committed += n
        self.checkpoints += 1
        return n

    def _finish(self) -> None:
        """At :meth:`close`: write the last time blocks (the PETSIRD stream then ends)."""
        self._sort_tail()
        self._flush_blocks(0, final=True)

    def _sort_tail(self) -> None:
        """At the end of the stream: the carried singles open their windows too (nothing follows)."""
        from medacq.daemon.recon.algorithms.nuclear import sort_coincidences

        tt, cc = self._t, self._c
        start = 0 if self._first else 1
        if len(tt) > start:
            co = sort_coincidences(tt, self.window, self.delay_ps, start, len(tt))
            pa, pb, da, db = co.prompt_a, co.prompt_b, co.delayed_a, co.delayed_b
            self._pairs.append((tt[pa], cc[pa], cc[pb], tt[pa] - tt[pb]))
            self._dpairs.append((tt[da], cc[da], cc[db], tt[da] - (tt[db] - int(self.delay_ps))))
        self._t, self._c = tt[:0], cc[:0]

    def stream_status(self) -> dict[str, Any]:
        """Per recorded topic: frames handed over, time blocks and events written."""
        if self.topic is None:
            return {}
        return {self.topic: {"frames": self.frames_committed + self.pending_frames,
                             "time_blocks": self.writer.blocks if self.writer else 0,
                             "prompts": self.prompts, "delayed": self.delayed, "lost_frames": self.lost_frames}}

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "topic": self.topic, "time_blocks": self.writer.blocks if self.writer else 0,
                "prompts": self.prompts, "delayed": self.delayed, "gaps": self.gaps, "lost_frames": self.lost_frames,
                "skipped_frames": self.skipped_frames, "frames_committed": self.frames_committed}
