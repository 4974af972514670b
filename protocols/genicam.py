"""A small GenICam GenApi XML writer and reader for register-mapped camera features.

Device facts are data: a camera's features are a list of :class:`Feature` (name, type,
register address, access, limits, enumeration entries). :func:`genicam_xml` writes the
GenApi XML a GigE Vision device serves from its memory (pointed at by the bootstrap's first
URL); :func:`parse_genicam_xml` reads such an XML back into features -- what a host needs to
access them through their registers. Feature names follow the SFNC (Width, Height,
PixelFormat, AcquisitionMode, AcquisitionStart, ExposureTime, Gain, TriggerMode...).

The subset written and read: ``Integer``/``Float``/``Enumeration``/``Boolean``/``Command``
nodes whose ``pValue`` is an ``IntReg`` (4 bytes) or ``FloatReg`` (8 bytes, IEEE double),
``StringReg`` nodes, and ``Category`` nodes listing them; all registers big-endian on the
``Device`` port (the GigE Vision device port). Aravis reads this XML as a real camera's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal
from xml.sax.saxutils import escape

__all__ = ["Feature", "FeatureKind", "genicam_xml", "parse_genicam_xml", "GENAPI_NS"]

GENAPI_NS = "http://www.genicam.org/GenApi/Version_1_1"

FeatureKind = Literal["int", "float", "enum", "bool", "command", "string"]


@dataclass(frozen=True, slots=True)
class Feature:
    """One register-mapped feature.

    Attributes:
        name: SFNC name (``ExposureTime``).
        kind: ``int`` (u32 register), ``float`` (8-byte IEEE double register), ``enum`` (u32
            register holding an entry's value), ``bool`` (u32, 0/1), ``command`` (write
            ``command_value`` to execute), ``string`` (``length`` bytes, NUL-padded).
        address: register byte address in device memory.
        access: ``RO``, ``RW`` or ``WO``.
        minimum, maximum, increment: numeric limits (``int``/``float``).
        unit: physical unit (``us``, ``dB``, ``Hz``, ``C``).
        entries: enumeration entry name → value.
        length: register size in bytes (4 for int/enum/bool/command, 8 for float, any for string).
        description: tooltip.
        category: the category it is listed under.
    """

    name: str
    kind: FeatureKind
    address: int
    access: Literal["RO", "RW", "WO"] = "RW"
    minimum: float | None = None
    maximum: float | None = None
    increment: int | None = None
    unit: str = ""
    entries: dict[str, int] = field(default_factory=dict)
    length: int = 0
    description: str = ""
    category: str = "DeviceControl"
    command_value: int = 1

    @property
    def size(self) -> int:
        """Register size in bytes."""
        if self.length:
            return self.length
        return 8 if self.kind == "float" else 4


def _num(v: float, kind: str) -> str:
    return str(int(v)) if kind != "float" else repr(float(v))


def genicam_xml(features: list[Feature], *, model: str, vendor: str, tooltip: str = "",
                version: tuple[int, int, int] = (1, 0, 0)) -> str:
    """The GenApi XML describing ``features`` (schema 1.1)."""
    cats: dict[str, list[str]] = {}
    for f in features:
        cats.setdefault(f.category, []).append(f.name)
    o: list[str] = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<RegisterDescription ModelName="{escape(model)}" VendorName="{escape(vendor)}" StandardNameSpace="None" '
        'SchemaMajorVersion="1" SchemaMinorVersion="1" SchemaSubMinorVersion="0" '
        f'MajorVersion="{version[0]}" MinorVersion="{version[1]}" SubMinorVersion="{version[2]}" '
        f'ToolTip="{escape(tooltip or model)}" ProductGuid="00000000-0000-0000-0000-000000000000" '
        'VersionGuid="00000000-0000-0000-0000-000000000000" '
        f'xmlns="{GENAPI_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{GENAPI_NS} GenApiSchema_Version_1_1.xsd">',
        '  <Category Name="Root" NameSpace="Standard">',
        *[f"    <pFeature>{c}</pFeature>" for c in cats],
        "  </Category>",
    ]
    for c, names in cats.items():
        o.append(f'  <Category Name="{c}" NameSpace="Standard">')
        o += [f"    <pFeature>{n}</pFeature>" for n in names]
        o.append("  </Category>")
    for f in features:
        desc = f"    <ToolTip>{escape(f.description)}</ToolTip>" if f.description else ""
        reg = f"{f.name}Reg"
        if f.kind == "string":
            o += [f'  <StringReg Name="{f.name}" NameSpace="Standard">', desc,
                  f"    <Address>0x{f.address:x}</Address>", f"    <Length>{f.size}</Length>",
                  f"    <AccessMode>{f.access}</AccessMode>", "    <pPort>Device</pPort>", "  </StringReg>"]
            continue
        if f.kind == "int":
            o += [f'  <Integer Name="{f.name}" NameSpace="Standard">', desc, f"    <pValue>{reg}</pValue>"]
            if f.minimum is not None:
                o.append(f"    <Min>{_num(f.minimum, 'int')}</Min>")
            if f.maximum is not None:
                o.append(f"    <Max>{_num(f.maximum, 'int')}</Max>")
            if f.increment is not None:
                o.append(f"    <Inc>{f.increment}</Inc>")
            if f.unit:
                o.append(f"    <Unit>{escape(f.unit)}</Unit>")
            o.append("  </Integer>")
        elif f.kind == "float":
            o += [f'  <Float Name="{f.name}" NameSpace="Standard">', desc, f"    <pValue>{reg}</pValue>"]
            if f.minimum is not None:
                o.append(f"    <Min>{_num(f.minimum, 'float')}</Min>")
            if f.maximum is not None:
                o.append(f"    <Max>{_num(f.maximum, 'float')}</Max>")
            if f.unit:
                o.append(f"    <Unit>{escape(f.unit)}</Unit>")
            o.append("  </Float>")
        elif f.kind == "enum":
            o += [f'  <Enumeration Name="{f.name}" NameSpace="Standard">', desc]
            for en, ev in f.entries.items():
                o += [f'    <EnumEntry Name="{en}" NameSpace="Standard">', f"      <Value>{ev}</Value>",
                      "    </EnumEntry>"]
            o += [f"    <pValue>{reg}</pValue>", "  </Enumeration>"]
        elif f.kind == "bool":
            o += [f'  <Boolean Name="{f.name}" NameSpace="Standard">', desc, f"    <pValue>{reg}</pValue>",
                  "    <OnValue>1</OnValue>", "    <OffValue>0</OffValue>", "  </Boolean>"]
        elif f.kind == "command":
            o += [f'  <Command Name="{f.name}" NameSpace="Standard">', desc, f"    <pValue>{reg}</pValue>",
                  f"    <CommandValue>{f.command_value}</CommandValue>", "  </Command>"]
        else:
            raise ValueError(f"unknown feature kind {f.kind!r}")
        if f.kind == "float":
            o += [f'  <FloatReg Name="{reg}">', f"    <Address>0x{f.address:x}</Address>", "    <Length>8</Length>",
                  f"    <AccessMode>{f.access}</AccessMode>", "    <pPort>Device</pPort>",
                  "    <Endianess>BigEndian</Endianess>", "  </FloatReg>"]
        else:
            o += [f'  <IntReg Name="{reg}">', f"    <Address>0x{f.address:x}</Address>", "    <Length>4</Length>",
                  f"    <AccessMode>{f.access}</AccessMode>", "    <pPort>Device</pPort>",
                  "    <Sign>Unsigned</Sign>", "    <Endianess>BigEndian</Endianess>", "  </IntReg>"]
    o.append('  <Port Name="Device" NameSpace="Standard"/>')
    o.append("</RegisterDescription>")
    return "\n".join(line for line in o if line) + "\n"


def _text(el: ET.Element, tag: str, ns: str) -> str | None:
    c = el.find(f"{ns}{tag}")
    return None if c is None or c.text is None else c.text.strip()


def parse_genicam_xml(text: str | bytes) -> dict[str, Feature]:
    """Features (name → :class:`Feature`) of a GenApi XML of the subset :func:`genicam_xml`
    writes. Nodes of other forms are skipped. ValueError if the XML does not parse."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"GenICam XML does not parse: {exc}") from None
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    regs: dict[str, tuple[int, int, str]] = {}
    for tag in ("IntReg", "FloatReg"):
        for el in root.iter(f"{ns}{tag}"):
            addr = _text(el, "Address", ns)
            if addr is None:
                continue
            regs[el.get("Name", "")] = (int(addr, 0), int(_text(el, "Length", ns) or "4"),
                                        _text(el, "AccessMode", ns) or "RW")
    cat_of: dict[str, str] = {}
    for el in root.iter(f"{ns}Category"):
        for p in el.findall(f"{ns}pFeature"):
            if p.text and el.get("Name") != "Root":
                cat_of[p.text.strip()] = el.get("Name", "")
    out: dict[str, Feature] = {}
    kinds = {"Integer": "int", "Float": "float", "Enumeration": "enum", "Boolean": "bool", "Command": "command"}
    for tag, kind in kinds.items():
        for el in root.iter(f"{ns}{tag}"):
            name = el.get("Name", "")
            pv = _text(el, "pValue", ns)
            if pv is None or pv not in regs:
                continue
            reg_addr, length, access = regs[pv]
            mn, mx, inc = _text(el, "Min", ns), _text(el, "Max", ns), _text(el, "Inc", ns)
            entries = {e.get("Name", ""): int(_text(e, "Value", ns) or "0", 0) for e in el.findall(f"{ns}EnumEntry")}
            out[name] = Feature(
                name, kind, reg_addr, access,  # type: ignore[arg-type]
                minimum=None if mn is None else float(mn), maximum=None if mx is None else float(mx),
                increment=None if inc is None else int(inc, 0), unit=_text(el, "Unit", ns) or "",
                entries=entries, length=length, description=_text(el, "ToolTip", ns) or "",
                category=cat_of.get(name, ""), command_value=int(_text(el, "CommandValue", ns) or "1", 0))
    for el in root.iter(f"{ns}StringReg"):
        addr = _text(el, "Address", ns)
        if addr is None:
            continue
        name = el.get("Name", "")
        out[name] = Feature(name, "string", int(addr, 0), (_text(el, "AccessMode", ns) or "RO"),  # type: ignore[arg-type]
                            length=int(_text(el, "Length", ns) or "0"), category=cat_of.get(name, ""))
    return out
