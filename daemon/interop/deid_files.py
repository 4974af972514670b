"""De-identified copies of HDF5 recordings, EDF+/BDF+ files and ISMRMRD files (``medacq export --deidentify``).

The same PS3.15 Basic profile choices as the DICOM objects (:mod:`medacq.daemon.interop.deid`), applied
to what each format holds, with one :class:`~medacq.daemon.interop.deid.Deidentifier` per export (its
UID map, its time offset, its identifying strings):

* **HDF5 recording** (``daemon/recording/hdf5.py``): the root ``study`` attribute (the study context) →
  :meth:`Deidentifier.study`; every other string (attributes, string datasets, JSON descriptors) has the
  identifying strings replaced by ``X``; every CLOCK_REALTIME time (``t_host_ns`` datasets and gap records,
  ``*_t_host_ns`` attributes, ``file_time``) moved by the export's offset unless ``retain_dates``; the
  streams' series uuids replaced consistently. Frames, ``seq``, ``t_mono_ns`` and ``t_device`` are copied
  unchanged (same dtype, chunks and filters).
* **EDF+/BDF+**: rewritten byte for byte except the header's patient field (``X X X X``: code, sex, birth
  date, name unknown), recording field (``Startdate dd-MMM-yyyy X X X``: admin code, technician and
  equipment removed), start date/time (moved, or kept with ``retain_dates``), free text of the signal
  headers, and the annotation texts (identifying strings → ``X``, each TAL re-packed in its record's
  bytes). Signal samples are not touched.
* **ISMRMRD**: the XML header's elements mapped to the DICOM attributes they mirror get those attributes'
  action in PS3.15 Table E.1-1 (``subjectInformation``, ``studyInformation``, ``measurementInformation``,
  ``acquisitionSystemInformation``; see :data:`ISMRMRD_TAGS`), other text is scrubbed, acquisition/image
  ``acquisition_time_stamp`` rebased to 0 unless ``retain_dates``; everything else is copied as the HDF5
  recording is.

Each copy is written to a new file (never patched in place: freed HDF5 space would keep the old bytes),
then read back and checked: :class:`~medacq.daemon.interop.deid.DeidError` if an identifying string is in
any decoded value or (6 characters or longer) anywhere in the file's bytes; the partial file is removed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medacq.daemon.interop.deid import PROFILE_VERSION, SHIFTED_START_NS, Deidentifier, DeidError

__all__ = ["ISMRMRD_TAGS", "detect_format", "deidentify_edf", "deidentify_hdf5", "deidentify_ismrmrd"]

_COPY_BYTES = 64 << 20  # a dataset is copied in slabs of about this size


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"edf"`` (EDF/EDF+), ``"bdf"`` (BDF/BDF+), ``"ismrmrd"`` (HDF5 with ``/dataset/xml``), ``"hdf5"``
    (other HDF5: a medacq recording) from the file's first bytes; ``ValueError`` otherwise."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"0       ":
        return "edf"
    if head == b"\xffBIOSEMI":
        return "bdf"
    if head == b"\x89HDF\r\n\x1a\n":
        import h5py

        with h5py.File(os.fspath(path), "r") as h5:
            return "ismrmrd" if any(isinstance(g, h5py.Group) and "xml" in g for g in h5.values()) else "hdf5"
    raise ValueError(f"{os.fspath(path)}: not an EDF+/BDF+ or HDF5 file")


# -- HDF5 ------------------------------------------------------------------------------------------------------

def _text(v: Any) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    return None


def _is_str(dt: np.dtype) -> bool:
    import h5py

    return dt.kind in "SU" or (dt.kind == "O" and h5py.check_string_dtype(dt) is not None)


def _has_str(dt: np.dtype) -> bool:
    return _is_str(dt) or bool(dt.names and any(_has_str(dt[f]) for f in dt.names))


def _shift_json(obj: Any, off: int) -> Any:
    if isinstance(obj, dict):
        return {k: (v + off if isinstance(v, int) and not isinstance(v, bool) and v and k.endswith("t_host_ns")
                    else _shift_json(v, off)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shift_json(v, off) for v in obj]
    return obj


class _H5Copy:
    """Recursive HDF5 copy with de-identifying transforms (one source file, one new file)."""

    def __init__(self, deid: Deidentifier, offset_ns: int, ismrmrd: bool = False) -> None:
        self.deid, self.off, self.ismrmrd = deid, offset_ns, ismrmrd
        self.stamp0: int | None = None  # ISMRMRD: the first acquisition_time_stamp (rebased to 0)

    def string(self, s: str, key: str = "") -> str:
        if self.off and key == "file_time":
            try:
                t = _dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S%z")
                return (t + _dt.timedelta(microseconds=self.off // 1000)).astimezone(_dt.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%S%z")
            except ValueError:
                pass
        if self.off and "t_host_ns" in s and s[:1] in "{[":
            try:
                s = json.dumps(_shift_json(json.loads(s), self.off), separators=(",", ":"))
            except ValueError:
                pass
        return self.deid.scrub(s)

    def attr(self, key: str, v: Any, group_path: str) -> Any:
        t = _text(v)
        if t is not None:
            if key == "series" and "/series/" in group_path:  # a stream's series uuid
                return self.deid.uuid(t)
            return self.string(t, key)
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and key.endswith("t_host_ns"):
            return int(v) + self.off if int(v) else v
        if isinstance(v, np.ndarray) and v.dtype.kind in "OSU":
            strs = [self.string(_text(x) or str(x)) for x in v.ravel()]
            if v.dtype.kind == "S":
                return np.array([x.encode() for x in strs]).reshape(v.shape)
            import h5py

            return np.array(strs, dtype=h5py.string_dtype() if v.dtype.kind == "O" else None).reshape(v.shape)
        return v

    def group(self, src: Any, dst: Any) -> None:
        import h5py

        for k, v in src.attrs.items():
            dst.attrs[k] = self.attr(k, v, src.name)
        for name in src:
            link = src.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                dst[name] = h5py.SoftLink(link.path)
                continue
            if isinstance(link, h5py.ExternalLink):
                raise DeidError(f"{src.name}/{name}: an external link (its target would not be de-identified)")
            obj = src[name]
            if isinstance(obj, h5py.Group):
                self.group(obj, dst.create_group(name))
            else:
                self.dataset(obj, dst, name)

    def _values(self, name: str, a: np.ndarray) -> np.ndarray:
        dt = a.dtype
        if dt.names:
            a = a.copy()
            for f in dt.names:
                sub = a[f]
                if f == "t_host_ns" and self.off and sub.dtype.kind == "i":
                    a[f] = np.where(sub != 0, sub + self.off, 0)
                elif f == "head" and sub.dtype.names and "acquisition_time_stamp" in sub.dtype.names:
                    a[f] = self._stamps(sub)
                elif f == "acquisition_time_stamp" and self.ismrmrd:
                    a[f] = self._stamps_field(sub)
                elif _is_str(sub.dtype):
                    a[f] = self._strings(sub)
            return a
        if name == "t_host_ns" and self.off and dt.kind == "i":
            return np.where(a != 0, a + self.off, 0).astype(dt)
        if _is_str(dt):
            return self._strings(a)
        return a

    def _strings(self, a: np.ndarray) -> np.ndarray:
        out = np.empty(a.shape, dtype=object)
        for i, x in enumerate(a.ravel()):
            t = _text(x)
            s = self.string(t) if t is not None else x
            out.flat[i] = s.encode() if isinstance(x, bytes) and isinstance(s, str) else s
        if a.dtype.kind == "S":  # fixed-length bytes: a scrubbed value is never longer
            return out.astype(a.dtype)
        if a.dtype.kind == "U":
            return out.astype(a.dtype)
        return out

    def _stamps_field(self, sub: np.ndarray) -> np.ndarray:
        if self.deid.retain_dates or sub.size == 0:
            return sub
        if self.stamp0 is None:
            self.stamp0 = int(sub.min())
        return ((sub.astype(np.int64) - self.stamp0) % (1 << 32)).astype(sub.dtype)

    def _stamps(self, head: np.ndarray) -> np.ndarray:
        head = head.copy()
        head["acquisition_time_stamp"] = self._stamps_field(head["acquisition_time_stamp"])
        return head

    def dataset(self, src: Any, dst_group: Any, name: str) -> None:
        kw: dict[str, Any] = {"shape": src.shape, "dtype": src.dtype, "maxshape": src.maxshape, "chunks": src.chunks}
        if src.chunks is not None:
            kw.update(compression=src.compression, compression_opts=src.compression_opts, shuffle=src.shuffle,
                      fletcher32=src.fletcher32, scaleoffset=src.scaleoffset)
        if src.chunks is None:
            kw.pop("maxshape")
        d = dst_group.create_dataset(name, **kw)
        for k, v in src.attrs.items():
            d.attrs[k] = self.attr(k, v, src.name)
        if src.shape == ():
            v = src[()]
            t = _text(v)
            d[()] = self.string(t) if t is not None else v
            return
        if src.size == 0:
            return
        row = max(1, int(np.prod(src.shape[1:])) * max(1, src.dtype.itemsize))
        step = max(1, _COPY_BYTES // row)
        for i in range(0, src.shape[0], step):
            d[i:i + step] = self._values(name, src[i:i + step])


def _read_back(path: str, deid: Deidentifier) -> Iterator[str]:
    """Every decoded string of an HDF5 file: names, attributes, string datasets and string fields."""
    import h5py

    def values(v: Any) -> Iterator[str]:
        t = _text(v)
        if t is not None:
            yield t
        elif isinstance(v, np.ndarray) and (v.dtype.kind in "OSU" or v.dtype.names):
            if v.dtype.names:
                for f in v.dtype.names:
                    if _has_str(v.dtype[f]):
                        yield from values(np.asarray(v[f]))
            else:
                for x in v.ravel():
                    yield from values(x)

    with h5py.File(path, "r") as h5:
        out: list[str] = []

        def visit(name: str, obj: Any) -> None:
            out.append(name)
            for k, v in obj.attrs.items():
                out.append(k)
                out.extend(values(v))
            if isinstance(obj, h5py.Dataset) and _has_str(obj.dtype):
                out.extend(values(np.asarray(obj[()])))
        for k, v in h5.attrs.items():
            out.append(k)
            out.extend(values(v))
        h5.visititems(visit)
    yield from out


def _finish(path: str, deid: Deidentifier, what: str, texts: Iterator[str] | list[str]) -> None:
    try:
        deid.check_text(texts, what)
        deid.check_file(path)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


def _h5_reference_ns(h5: Any) -> int | None:
    v = h5.attrs.get("started_t_host_ns")
    if v is not None and int(v):
        return int(v)
    found: list[int] = []

    def visit(name: str, obj: Any) -> None:
        if not found and name.endswith("t_host_ns") and getattr(obj, "shape", None) and obj.shape[0]:
            found.append(int(obj[0]))
    h5.visititems(visit)
    return found[0] if found else None


def deidentify_hdf5(h5: Any, dst: str | os.PathLike[str], deid: Deidentifier) -> dict[str, Any]:
    """Write a de-identified copy of an open medacq HDF5 recording (``h5py.File``) to ``dst``.

    The root ``study`` attribute, if any, gives more identifying strings and becomes the de-identified
    context; returns ``{"path", "study_uid"}`` (the new study uid, or None).
    """
    import h5py

    from medacq.daemon.interop.study import StudyContext

    study = None
    raw = h5.attrs.get("study")
    if raw is not None:
        study = StudyContext.model_validate_json(_text(raw) or str(raw))
        deid.add_strings(study.patient_strings())
        deid.add_strings([study.study_uid])  # the old uid must not survive either
    off = deid.offset_for(_h5_reference_ns(h5))
    dst = os.fspath(dst)
    cp = _H5Copy(deid, off)
    new_study = deid.study(study) if study is not None else None
    try:
        with h5py.File(dst, "w") as out:
            cp.group(h5, out)
            if new_study is not None:
                out.attrs["study"] = new_study.model_dump_json()
            started = h5.attrs.get("started_t_host_ns")
            if off and "file_time" in h5.attrs and started is not None and int(started):
                # the file's local-time stamp has whole seconds: give the moved start itself (UTC)
                t = _dt.datetime.fromtimestamp((int(started) + off) / 1e9, _dt.timezone.utc)
                out.attrs["file_time"] = t.strftime("%Y-%m-%dT%H:%M:%S%z")
            out.attrs["patient_identity_removed"] = "YES"
            out.attrs["deidentification_method"] = json.dumps(deid.method())
            out.attrs["deidentification_profile"] = PROFILE_VERSION
    except BaseException:
        Path(dst).unlink(missing_ok=True)
        raise
    _finish(dst, deid, dst, _read_back(dst, deid))
    return {"path": dst, "study_uid": new_study.study_uid if new_study else None}


# -- ISMRMRD -------------------------------------------------------------------------------------------------

_NS = "http://www.ismrm.org/ISMRMRD"
#: ISMRMRD XML header element → the DICOM attribute it mirrors (its PS3.15 Table E.1-1 action applies)
ISMRMRD_TAGS: dict[str, tuple[int, int]] = {
    "patientName": (0x0010, 0x0010), "patientID": (0x0010, 0x0020), "patientBirthdate": (0x0010, 0x0030),
    "patientGender": (0x0010, 0x0040), "patientWeight_kg": (0x0010, 0x1030), "patientHeight_m": (0x0010, 0x1020),
    "studyDate": (0x0008, 0x0020), "studyTime": (0x0008, 0x0030), "studyID": (0x0020, 0x0010),
    "accessionNumber": (0x0008, 0x0050), "referringPhysicianName": (0x0008, 0x0090),
    "studyDescription": (0x0008, 0x1030), "studyInstanceUID": (0x0020, 0x000D), "bodyPartExamined": (0x0018, 0x0015),
    "seriesDate": (0x0008, 0x0021), "seriesTime": (0x0008, 0x0031), "protocolName": (0x0018, 0x1030),
    "sequenceName": (0x0018, 0x0024), "seriesDescription": (0x0008, 0x103E), "frameOfReferenceUID": (0x0020, 0x0052),
    "referencedSOPInstanceUID": (0x0008, 0x1155), "patientPosition": (0x0018, 0x5100),
    "institutionName": (0x0008, 0x0080), "stationName": (0x0008, 0x1010), "deviceID": (0x0018, 0x1003),
    "deviceSerialNumber": (0x0018, 0x1000), "systemVendor": (0x0008, 0x0070), "systemModel": (0x0008, 0x1090),
}
_XML_DATES = {"studyDate": "studyTime", "seriesDate": "seriesTime"}
_XML_REMOVE = {"seriesInstanceUIDRoot"}  # a UID root (no DICOM attribute): a new one would leak nothing, none is needed


def _profile_category(tag: tuple[int, int]) -> str:
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    table = dicom_anonymization_database_selector(PROFILE_VERSION)
    for cat, tags in table.items():
        if cat != "ALL_TAGS" and tag in tags:
            return cat.removesuffix("_TAGS")
    return "K"


def _deid_xml(xml: str, deid: Deidentifier) -> tuple[str, dict[str, Any]]:
    import xml.etree.ElementTree as ET

    ET.register_namespace("", _NS)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"the ISMRMRD XML header does not parse: {exc}") from None
    q = lambda n: f"{{{_NS}}}{n}"  # noqa: E731
    # identifying strings the header itself holds
    for n in ("patientName", "patientID", "accessionNumber", "referringPhysicianName", "studyID"):
        for e in root.iter(q(n)):
            deid.add_strings([(e.text or "").strip()])
    for e in root.iter(q("patientBirthdate")):
        deid.add_strings([(e.text or "").strip().replace("-", "")])
    old_uids = [(e.text or "").strip() for n in ("studyInstanceUID", "frameOfReferenceUID", "referencedSOPInstanceUID")
                for e in root.iter(q(n))]
    # the time offset: the study's (else the series') date and time are the file's start
    ref = None
    for d, t in _XML_DATES.items():
        de, te = root.find(f".//{q(d)}"), root.find(f".//{q(t)}")
        if ref is None and de is not None and de.text:
            try:
                ref_dt = _dt.datetime.fromisoformat(de.text.strip() + "T" + ((te.text or "00:00:00").strip()
                                                                               if te is not None else "00:00:00"))
                ref = int(ref_dt.replace(tzinfo=_dt.timezone.utc).timestamp()) * 1_000_000_000
            except ValueError:
                pass
    off = deid.offset_for(ref)
    done: dict[str, str] = {}
    for parent in list(root.iter()):
        for e in list(parent):
            name = e.tag.removeprefix(f"{{{_NS}}}")
            if name in _XML_REMOVE:
                parent.remove(e)
                done[name] = "X"
                continue
            tag = ISMRMRD_TAGS.get(name)
            if tag is None:
                if len(e) == 0 and e.text:
                    e.text = deid.scrub(e.text)
                continue
            cat = _profile_category(tag)
            is_time = name in _XML_DATES or name in _XML_DATES.values()
            if is_time and tag[0] != 0x0010:
                if not deid.retain_dates and off:
                    e.text = _shift_xml_time(parent, name, e.text or "", off)
                done[name] = "kept" if deid.retain_dates else "shifted"
            elif "U" in cat:
                e.text = deid.uid((e.text or "").strip())
                done[name] = "U"
            elif name == "patientName":
                e.text = "ANONYMOUS"
                done[name] = "D"
            elif name == "patientID":
                e.text = "ANON"
                done[name] = "D"
            elif cat == "K":
                if e.text:
                    e.text = deid.scrub(e.text)
            else:  # X, Z, D and their combinations: the element is optional in ismrmrd.xsd; Z/D of a typed
                parent.remove(e)  # value (date, long, enumeration) cannot be an empty or dummy string
                done[name] = cat
    deid.add_strings(u for u in old_uids if u)
    return ET.tostring(root, encoding="unicode", xml_declaration=True), done


def _shift_xml_time(parent: Any, name: str, text: str, off: int) -> str:
    """Move an xs:date (with its sibling xs:time) or an xs:time by ``off`` ns."""
    q = lambda n: f"{{{_NS}}}{n}"  # noqa: E731
    if name in _XML_DATES:
        te = parent.find(q(_XML_DATES[name]))
        t = (te.text or "00:00:00").strip() if te is not None else "00:00:00"
        dt = _dt.datetime.fromisoformat(text.strip() + "T" + t) + _dt.timedelta(microseconds=off // 1000)
        return dt.date().isoformat()
    # a time alone: its date (the element before it, moved already) took the carry over midnight
    dt = _dt.datetime.fromisoformat("2000-01-01T" + text.strip()) + _dt.timedelta(microseconds=off // 1000)
    return dt.time().isoformat()


def deidentify_ismrmrd(h5: Any, dst: str | os.PathLike[str], deid: Deidentifier) -> dict[str, Any]:
    """Write a de-identified copy of an open ISMRMRD file (``h5py.File``) to ``dst``; returns
    ``{"path", "xml": {element: action}}``."""
    import h5py

    dst = os.fspath(dst)
    actions: dict[str, Any] = {}
    xmls: dict[str, str] = {}
    for gname, g in h5.items():  # the XML first: it holds identifying strings the copy must scrub everywhere
        if isinstance(g, h5py.Group) and "xml" in g:
            raw = g["xml"][0]
            xmls[gname], actions[gname] = _deid_xml(_text(raw) or "", deid)
    cp = _H5Copy(deid, deid.offset_for(None), ismrmrd=True)
    try:
        with h5py.File(dst, "w") as out:
            for k, v in h5.attrs.items():
                out.attrs[k] = cp.attr(k, v, "/")
            for gname, g in h5.items():
                if gname in xmls:
                    og = out.create_group(gname)
                    for k, v in g.attrs.items():
                        og.attrs[k] = cp.attr(k, v, g.name)
                    for name in g:
                        if name == "xml":
                            x = og.create_dataset("xml", shape=(1,), dtype=h5py.vlen_dtype(bytes))
                            x[0] = xmls[gname].encode()
                        elif isinstance(g[name], h5py.Group):
                            cp.group(g[name], og.create_group(name))
                        else:
                            cp.dataset(g[name], og, name)
                elif isinstance(g, h5py.Group):
                    cp.group(g, out.create_group(gname))
                else:
                    cp.dataset(g, out, gname)
            out.attrs["patient_identity_removed"] = "YES"
            out.attrs["deidentification_method"] = json.dumps(deid.method())
    except BaseException:
        Path(dst).unlink(missing_ok=True)
        raise
    _finish(dst, deid, dst, _read_back(dst, deid))
    return {"path": dst, "xml": actions}


# -- EDF+ / BDF+ ------------------------------------------------------------------------------------------------

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def _field(raw: bytes, a: int, n: int) -> str:
    return raw[a:a + n].decode("ascii", "replace")


def _put(buf: bytearray, a: int, n: int, text: str) -> None:
    b = text.encode("ascii", "replace")[:n]
    buf[a:a + n] = b + b" " * (n - len(b))


def _edf_start(raw: bytes) -> _dt.datetime | None:
    d, t = _field(raw, 168, 8), _field(raw, 176, 8)
    try:
        dd, mm, yy = (int(x) for x in d.split("."))
        hh, mi, ss = (int(x) for x in t.split("."))
    except ValueError:
        return None
    year = 1900 + yy if yy >= 85 else 2000 + yy
    m = re.search(r"Startdate (\d\d)-([A-Z]{3})-(\d{4})", _field(raw, 88, 80))
    if m and m.group(2) in _MONTHS:
        year = int(m.group(3))
    try:
        return _dt.datetime(year, mm, dd, hh, mi, ss)
    except ValueError:
        return None


def _tals(chunk: bytes) -> list[tuple[bytes, list[bytes]]]:
    """The TALs of one annotation signal's bytes in one data record: ``(onset[+duration], [texts])``."""
    out = []
    for tal in chunk.split(b"\x00"):
        if not tal:
            continue
        parts = tal.split(b"\x14")
        out.append((parts[0], [p for p in parts[1:-1]] if len(parts) > 1 else []))
    return out


def _edf_layout(raw: bytes) -> tuple[int, int, list[int], list[bool], int, int]:
    """(header bytes, signal count, samples per record per signal, annotation signal?, bytes per sample,
    data records)."""
    bdf = raw[:8] == b"\xffBIOSEMI"
    ns = int(_field(raw, 252, 4))
    hdr = 256 + 256 * ns
    labels = [_field(raw, 256 + 16 * i, 16).strip() for i in range(ns)]
    base = 256 + ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
    spr = [int(_field(raw, base + 8 * i, 8)) for i in range(ns)]
    ann = [lab in ("EDF Annotations", "BDF Annotations") for lab in labels]
    nrec = int(_field(raw, 236, 8))
    bps = 3 if bdf else 2
    rec = sum(spr) * bps
    if nrec < 0:
        nrec = (len(raw) - hdr) // rec if rec else 0
    return hdr, ns, spr, ann, bps, nrec


def deidentify_edf(src: str | os.PathLike[str], dst: str | os.PathLike[str], deid: Deidentifier) -> dict[str, Any]:
    """Write a de-identified copy of an EDF(+)/BDF(+) file; returns ``{"path", "annotations_scrubbed",
    "start"}`` (the new start, ISO)."""
    raw = Path(src).read_bytes()
    if raw[:8] not in (b"0       ", b"\xffBIOSEMI") or len(raw) < 256:
        raise ValueError(f"{os.fspath(src)}: not an EDF/BDF file")
    try:
        hdr, ns, spr, ann, bps, nrec = _edf_layout(raw)
    except ValueError as exc:
        raise ValueError(f"{os.fspath(src)}: not a valid EDF/BDF header ({exc})") from None
    if ns < 1 or len(raw) < hdr + nrec * sum(spr) * bps:
        raise ValueError(f"{os.fspath(src)}: truncated EDF/BDF file ({len(raw)} bytes for {nrec} data records)")
    plus = _field(raw, 192, 44).startswith(("EDF+", "BDF+"))
    patient, recording = _field(raw, 8, 80).split(), _field(raw, 88, 80).split()
    if plus:  # EDF+ subfields: code sex birthdate name [...] / Startdate date admincode technician equipment [...]
        if len(patient) >= 4:
            deid.add_strings([patient[0], patient[3], patient[3].replace("_", " "), *patient[4:]])
            m = re.fullmatch(r"(\d\d)-([A-Z]{3})-(\d{4})", patient[2])
            if m and m.group(2) in _MONTHS:
                deid.add_strings([f"{m.group(3)}{_MONTHS.index(m.group(2)) + 1:02d}{m.group(1)}"])
        if len(recording) >= 5:
            deid.add_strings(s for s in recording[2:4] if s != "X")
    else:  # plain EDF: free text
        deid.add_strings(w for w in patient if len(w) >= 3)
    start = _edf_start(raw)
    ref = int(start.replace(tzinfo=_dt.timezone.utc).timestamp()) * 1_000_000_000 if start else None
    off = deid.offset_for(ref)
    new_start = start + _dt.timedelta(microseconds=off // 1000) if start else None
    if new_start is not None and not 1985 <= new_start.year <= 2084:
        new_start = None  # outside what an EDF header holds
    out = bytearray(raw)
    _put(out, 8, 80, "X X X X")
    if plus:
        date = (f"{new_start.day:02d}-{_MONTHS[new_start.month - 1]}-{new_start.year}" if new_start else "X")
        _put(out, 88, 80, f"Startdate {date} X X X")
    else:
        _put(out, 88, 80, "X")
    if new_start is not None:
        _put(out, 168, 8, new_start.strftime("%d.%m.") + f"{new_start.year % 100:02d}")
        _put(out, 176, 8, new_start.strftime("%H.%M.%S"))
    else:
        _put(out, 168, 8, "01.01.85")
        _put(out, 176, 8, "00.00.00")
    # free text of the signal headers: label (16), transducer (80), prefiltering (80)
    for a, n in ((256, 16), (256 + 16 * ns, 80), (256 + ns * (16 + 80 + 8 * 5), 80)):
        for i in range(ns):
            _put(out, a + n * i, n, deid.scrub(_field(raw, a + n * i, n).rstrip()))
    rec = sum(spr) * bps
    scrubbed = 0
    texts: list[str] = []
    for r in range(nrec):
        pos = hdr + r * rec
        for i in range(ns):
            n = spr[i] * bps
            if ann[i]:
                chunk = bytes(raw[pos:pos + n])
                new = bytearray()
                for onset, items in _tals(chunk):
                    clean = []
                    for t in items:
                        s = t.decode("utf-8", "replace")
                        c = deid.scrub(s)
                        scrubbed += c != s
                        clean.append(c.encode("utf-8"))
                    new += onset + b"\x14" + b"".join(c + b"\x14" for c in clean) + b"\x00"
                if len(new) > n:  # pragma: no cover - a replacement is never longer than what it replaces
                    raise DeidError("an annotation grew during de-identification")
                out[pos:pos + n] = bytes(new) + b"\x00" * (n - len(new))
                texts += [t.decode("utf-8", "replace") for _, items in _tals(bytes(out[pos:pos + n])) for t in items]
            pos += n
    dst = os.fspath(dst)
    Path(dst).write_bytes(bytes(out))
    head = bytes(out[:hdr]).decode("ascii", "replace")
    _finish(dst, deid, dst, [head, *texts])
    return {"path": dst, "annotations_scrubbed": scrubbed,
            "start": new_start.isoformat() if new_start else None}
