"""GigE Vision, sans-I/O, both roles: GVCP (control, UDP 3956) and GVSP (streaming, UDP).

Every constant here was checked against Aravis's sources (github AravisProject/aravis,
``src/arvgvcpprivate.h``, ``src/arvgvcp.c``, ``src/arvgvspprivate.h``, ``src/arvgvsp.c``,
``src/arvgvfakecamera.c``, ``src/arvgvdevice.c``, ``src/arvgvstream.c``, ``src/arvenums.h``;
commit 98c2d790, July 2026), which follow the GigE Vision 2.x specification. All fields are
big-endian (network order).

GVCP
----
One message per UDP datagram. A command has an 8-byte header -- key ``0x42``, flags (bit 0:
acknowledge required; ``0x10``: extended ids / allow broadcast ack for DISCOVERY), command
(u16), payload length in bytes (u16), request id (u16, never 0) -- then the payload. An
acknowledge has status (u16, 0 success, ``0x8xxx`` errors), answer (command + 1), length and
the echoed request id. Payloads (u32 words):

=============== ====================================== ==================================
command         command payload                        ack payload
=============== ====================================== ==================================
DISCOVERY 0x02  --                                     bootstrap bytes 0..0xF8
READREG 0x80    address × n                            value × n
WRITEREG 0x82   (address, value) × n                   index (u32: registers written)
READMEM 0x84    address, count (low 16 bits, ×4)       address, data
WRITEMEM 0x86   address, data (×4)                     index (u32: bytes written)
PACKETRESEND    stream channel (u16 high), block id    (none: the device resends GVSP)
0x40            (low u16), first packet id, last       
                packet id (24-bit each)
=============== ====================================== ==================================

GVSP
----
One packet per UDP datagram: status (u16; ``0x0100`` marks a resent packet), block id (u16,
1..65535, 0 is never used), packet info (u32: bit 31 extended-id mode, bits 30..24 content
type, bits 23..0 packet id). Packet 0 of a block is the *leader* (reserved u16, payload type
u16 = 1 image, timestamp u64, pixel format u32, width, height, x offset, y offset u32, x/y
padding u16), packets 1..n carry the *payload* in order, packet n+1 is the *trailer*
(payload type u32, size y u32). Each payload packet carries ``packet_size - 36`` bytes: the
stream channel's packet size (bootstrap ``0xD04``) counts the IP (20), UDP (8) and GVSP (8)
headers, as ``ARV_GVSP_PACKET_PROTOCOL_OVERHEAD`` does.

Host role (:class:`GvspReceiver`): it rebuilds blocks, asks for resends of missing packets
(:class:`ResendRequest`, which the driver sends as a PACKETRESEND on GVCP), and delivers a
block only when it is complete (:class:`BlockComplete`); a block still incomplete after its
resends is announced :class:`BlockLost` -- never delivered torn. The receiver never reads a
clock: the caller passes ``now`` (seconds, monotonic).
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np

from ._sansio import NEED_DATA, Garbage, LocalProtocolError, NeedData

__all__ = [
    "GVCP_PORT", "GVCP_KEY", "GvcpFlag", "GvcpCommand", "GvcpStatus", "Bootstrap", "Capability",
    "Privilege", "PixelFormat", "GvspContent", "GvspStatus", "PAYLOAD_TYPE_IMAGE", "GVSP_OVERHEAD",
    "GVSP_LEADER_SIZE", "DiscoveryCmd", "DiscoveryAck", "DeviceInfo", "ReadRegCmd", "ReadRegAck", "WriteRegCmd",
    "WriteRegAck", "ReadMemCmd", "ReadMemAck", "WriteMemCmd", "WriteMemAck", "PacketResendCmd", "GvcpErrorAck",
    "GvcpMessage", "GvcpCodec", "GvspLeader", "GvspPayload", "GvspTrailer", "GvspPacket", "encode_gvsp",
    "decode_gvsp", "block_packets", "payload_per_packet", "packets_for", "bytes_per_pixel", "pack_12p",
    "unpack_12p", "parse_genicam_url", "make_genicam_url", "next_block_id", "BlockComplete", "BlockLost",
    "ResendRequest", "GvspReceiver",
]

#: GVCP's UDP port on the device (``ARV_GVCP_PORT``)
GVCP_PORT = 3956
#: first byte of every GVCP command (``ARV_GVCP_PACKET_TYPE_CMD``)
GVCP_KEY = 0x42
_HDR = struct.Struct(">BBHHH")  # key/status-high, flags/status-low, command, length, req id
_ACK = struct.Struct(">HHHH")  # status, answer, length, ack id


class GvcpFlag(IntEnum):
    """Command flags byte (``ArvGvcpCmdPacketFlags``, ``ArvGvcpDiscoveryPacketFlags``)."""

    ACK_REQUIRED = 0x01
    EXTENDED_IDS = 0x10  # PACKETRESEND: 64-bit block ids (same bit as ALLOW_BROADCAST_ACK)
    ALLOW_BROADCAST_ACK = 0x10  # DISCOVERY only


class GvcpCommand(IntEnum):
    """GVCP command and acknowledge codes (``ArvGvcpCommand``)."""

    DISCOVERY = 0x0002
    DISCOVERY_ACK = 0x0003
    BYE = 0x0004
    BYE_ACK = 0x0005
    PACKETRESEND = 0x0040
    PACKETRESEND_ACK = 0x0041
    READREG = 0x0080
    READREG_ACK = 0x0081
    WRITEREG = 0x0082
    WRITEREG_ACK = 0x0083
    READMEM = 0x0084
    READMEM_ACK = 0x0085
    WRITEMEM = 0x0086
    WRITEMEM_ACK = 0x0087
    PENDING_ACK = 0x0089


class GvcpStatus(IntEnum):
    """Acknowledge status codes (``ArvGvcpError`` with the 0x8000 error bit, as on the wire)."""

    SUCCESS = 0x0000
    NOT_IMPLEMENTED = 0x8001
    INVALID_PARAMETER = 0x8002
    INVALID_ADDRESS = 0x8003
    WRITE_PROTECT = 0x8004
    BAD_ALIGNMENT = 0x8005
    ACCESS_DENIED = 0x8006
    BUSY = 0x8007
    PACKET_UNAVAILABLE = 0x800C
    DATA_OVERRUN = 0x800D
    INVALID_HEADER = 0x800E
    PACKET_NOT_YET_AVAILABLE = 0x8010
    PACKET_AND_PREV_REMOVED_FROM_MEMORY = 0x8011
    PACKET_REMOVED_FROM_MEMORY = 0x8012
    ERROR = 0x8FFF


class Bootstrap(IntEnum):
    """Bootstrap register map (byte addresses, ``ARV_GVBS_*``)."""

    VERSION = 0x0000  # major << 16 | minor
    DEVICE_MODE = 0x0004  # bit 31: big-endian device
    MAC_HIGH = 0x0008
    MAC_LOW = 0x000C
    SUPPORTED_IP_CONFIGURATION = 0x0010
    CURRENT_IP_CONFIGURATION = 0x0014
    CURRENT_IP = 0x0024
    CURRENT_SUBNET_MASK = 0x0034
    CURRENT_GATEWAY = 0x0044
    MANUFACTURER_NAME = 0x0048  # 32 bytes
    MODEL_NAME = 0x0068  # 32 bytes
    DEVICE_VERSION = 0x0088  # 32 bytes
    MANUFACTURER_INFO = 0x00A8  # 48 bytes
    SERIAL_NUMBER = 0x00D8  # 16 bytes
    USER_DEFINED_NAME = 0x00E8  # 16 bytes
    DISCOVERY_DATA_SIZE = 0x00F8
    FIRST_URL = 0x0200  # 512 bytes
    SECOND_URL = 0x0400  # 512 bytes
    N_NETWORK_INTERFACES = 0x0600
    N_MESSAGE_CHANNELS = 0x0900
    N_STREAM_CHANNELS = 0x0904
    GVCP_CAPABILITY = 0x0934
    HEARTBEAT_TIMEOUT = 0x0938  # ms
    TIMESTAMP_TICK_FREQUENCY_HIGH = 0x093C
    TIMESTAMP_TICK_FREQUENCY_LOW = 0x0940
    TIMESTAMP_CONTROL = 0x0944
    TIMESTAMP_LATCHED_HIGH = 0x0948
    TIMESTAMP_LATCHED_LOW = 0x094C
    CONTROL_CHANNEL_PRIVILEGE = 0x0A00
    STREAM_CHANNEL_0_PORT = 0x0D00  # SCP0: host port (u16 in the low bits)
    STREAM_CHANNEL_0_PACKET_SIZE = 0x0D04  # SCPS0: low 16 bits, bytes incl. IP/UDP/GVSP headers
    STREAM_CHANNEL_0_PACKET_DELAY = 0x0D08  # SCPD0
    STREAM_CHANNEL_0_IP_ADDRESS = 0x0D18  # SCDA0


#: sizes of the bootstrap string fields (bytes)
STRING_SIZES = {Bootstrap.MANUFACTURER_NAME: 32, Bootstrap.MODEL_NAME: 32, Bootstrap.DEVICE_VERSION: 32,
                Bootstrap.MANUFACTURER_INFO: 48, Bootstrap.SERIAL_NUMBER: 16, Bootstrap.USER_DEFINED_NAME: 16,
                Bootstrap.FIRST_URL: 512, Bootstrap.SECOND_URL: 512}


class Capability(IntEnum):
    """GVCP capability register bits (``ARV_GVBS_GVCP_CAPABILITY_*``)."""

    CONCATENATION = 1 << 0
    WRITE_MEMORY = 1 << 1
    PACKET_RESEND = 1 << 2
    EVENT = 1 << 3
    PENDING_ACK = 1 << 5
    HEARTBEAT_DISABLE = 1 << 29
    SERIAL_NUMBER = 1 << 30
    NAME_REGISTER = 1 << 31


class Privilege(IntEnum):
    """Control channel privilege register bits (``ARV_GVBS_CONTROL_CHANNEL_PRIVILEGE_*``)."""

    EXCLUSIVE = 1 << 0
    CONTROL = 1 << 1


class PixelFormat(IntEnum):
    """PFNC pixel format codes used here (``ARV_PIXEL_FORMAT_*`` in ``arvenums.h``)."""

    Mono8 = 0x01080001
    Mono16 = 0x01100007
    BayerRG8 = 0x01080009
    BayerRG12 = 0x01100011
    BayerRG12p = 0x010C0059


class GvspContent(IntEnum):
    """GVSP content types (``ArvGvspContentType``)."""

    LEADER = 0x01
    TRAILER = 0x02
    PAYLOAD = 0x03
    ALL_IN = 0x04


class GvspStatus(IntEnum):
    """GVSP packet status (``ArvGvspPacketStatus``); bit 15 set = error."""

    SUCCESS = 0x0000
    PACKET_RESEND = 0x0100
    PACKET_UNAVAILABLE = 0x800C


#: leader/trailer payload type of an image (``ARV_BUFFER_PAYLOAD_TYPE_IMAGE``)
PAYLOAD_TYPE_IMAGE = 0x0001
#: bytes a GVSP packet spends on IP (20) + UDP (8) + GVSP (8) headers
GVSP_OVERHEAD = 36
_GVSP = struct.Struct(">HHI")
_LEADER = struct.Struct(">HHIIIIIIIHH")  # reserved, payload type, ts hi, ts lo, pf, w, h, x, y, xpad, ypad
GVSP_LEADER_SIZE = _GVSP.size + _LEADER.size
_TRAILER = struct.Struct(">II")
_U32 = struct.Struct(">I")


def _check_u32(name: str, v: int) -> None:
    if not 0 <= v <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{name} {v} does not fit in 32 bits")


# ---------------------------------------------------------------------------------------------
# GVCP messages


@dataclass(frozen=True, slots=True)
class DiscoveryCmd:
    """DISCOVERY: who is there? (Aravis sends request id 0xFFFF.)"""

    req_id: int = 0xFFFF
    allow_broadcast_ack: bool = False


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The identity a DISCOVERY_ACK carries (bootstrap bytes 0..0xF8, decoded)."""

    version_major: int
    version_minor: int
    mac: str
    ip: str
    manufacturer: str
    model: str
    device_version: str
    manufacturer_info: str
    serial: str
    user_name: str


@dataclass(frozen=True, slots=True)
class DiscoveryAck:
    """DISCOVERY_ACK: ``data`` is the first 0xF8 bytes of the bootstrap memory."""

    req_id: int
    data: bytes

    def info(self) -> DeviceInfo:
        """The identity fields, decoded (strings are NUL-terminated ASCII)."""
        d = self.data.ljust(Bootstrap.DISCOVERY_DATA_SIZE, b"\0")

        def s(off: int) -> str:
            return d[off: off + STRING_SIZES[Bootstrap(off)]].split(b"\0", 1)[0].decode("ascii", "replace")

        version, = _U32.unpack_from(d, 0)
        mac = d[0x0A:0x10]
        ip = d[0x24:0x28]
        return DeviceInfo(version >> 16, version & 0xFFFF, ":".join(f"{b:02x}" for b in mac),
                          ".".join(str(b) for b in ip), s(0x48), s(0x68), s(0x88), s(0xA8), s(0xD8), s(0xE8))


@dataclass(frozen=True, slots=True)
class ReadRegCmd:
    """READREG: read 32-bit registers (addresses multiple of 4)."""

    req_id: int
    addresses: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReadRegAck:
    req_id: int
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WriteRegCmd:
    """WRITEREG: ``(address, value)`` pairs written in order."""

    req_id: int
    writes: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class WriteRegAck:
    """``index``: how many registers were written."""

    req_id: int
    index: int


@dataclass(frozen=True, slots=True)
class ReadMemCmd:
    """READMEM: ``size`` bytes (multiple of 4, ≤ 536 on the wire by the spec; Aravis uses ≤ 512)."""

    req_id: int
    address: int
    size: int


@dataclass(frozen=True, slots=True)
class ReadMemAck:
    req_id: int
    address: int
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteMemCmd:
    req_id: int
    address: int
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteMemAck:
    """``index``: bytes written."""

    req_id: int
    index: int


@dataclass(frozen=True, slots=True)
class PacketResendCmd:
    """PACKETRESEND: resend packets ``first..last`` (inclusive) of block ``block_id`` on
    stream channel ``channel``. Standard (16-bit block id) form; no acknowledge."""

    req_id: int
    block_id: int
    first_packet: int
    last_packet: int
    channel: int = 0


@dataclass(frozen=True, slots=True)
class GvcpErrorAck:
    """An acknowledge whose status is not SUCCESS (``answer`` = the acknowledge code)."""

    req_id: int
    answer: int
    status: int
    payload: bytes = b""


GvcpMessage = (DiscoveryCmd | DiscoveryAck | ReadRegCmd | ReadRegAck | WriteRegCmd | WriteRegAck | ReadMemCmd
               | ReadMemAck | WriteMemCmd | WriteMemAck | PacketResendCmd | GvcpErrorAck)


class GvcpCodec:
    """GVCP, one datagram per message. ``role="host"`` encodes commands and decodes acks;
    ``role="device"`` the reverse.

    ``receive_data(datagram)`` then ``next_event()`` until :data:`NEED_DATA`; a datagram that
    is not a valid message of the expected direction comes out as a :class:`Garbage` event
    (counted in :attr:`garbage_datagrams`). ``send(message) -> bytes``.
    """

    def __init__(self, role: Literal["host", "device"]) -> None:
        if role not in ("host", "device"):
            raise ValueError("role must be 'host' or 'device'")
        self.role = role
        self._events: deque[GvcpMessage | Garbage] = deque()
        self.garbage_datagrams = 0

    # -- in -----------------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """One whole datagram."""
        b = bytes(data)
        try:
            ev = self._decode_cmd(b) if self.role == "device" else self._decode_ack(b)
        except (struct.error, ValueError) as exc:
            ev = Garbage(len(b), f"bad GVCP datagram: {exc}")
        if isinstance(ev, Garbage):
            self.garbage_datagrams += 1
        self._events.append(ev)

    def next_event(self) -> GvcpMessage | Garbage | NeedData:
        return self._events.popleft() if self._events else NEED_DATA

    def _decode_cmd(self, b: bytes) -> GvcpMessage | Garbage:
        if len(b) < 8:
            return Garbage(len(b), "GVCP datagram shorter than its 8-byte header")
        key, flags, cmd, length, req = _HDR.unpack_from(b)
        if key != GVCP_KEY:
            return Garbage(len(b), f"GVCP key 0x{key:02x}, not 0x42")
        body = b[8:8 + length]
        if len(body) != length:
            return Garbage(len(b), f"GVCP length {length} but {len(b) - 8} payload bytes")
        if cmd == GvcpCommand.DISCOVERY:
            return DiscoveryCmd(req, bool(flags & GvcpFlag.ALLOW_BROADCAST_ACK))
        if cmd == GvcpCommand.READREG:
            if length % 4 or not length:
                return Garbage(len(b), "READREG length not a positive multiple of 4")
            return ReadRegCmd(req, struct.unpack(f">{length // 4}I", body))
        if cmd == GvcpCommand.WRITEREG:
            if length % 8 or not length:
                return Garbage(len(b), "WRITEREG length not a positive multiple of 8")
            w = struct.unpack(f">{length // 4}I", body)
            return WriteRegCmd(req, tuple(zip(w[0::2], w[1::2])))
        if cmd == GvcpCommand.READMEM:
            if length != 8:
                return Garbage(len(b), "READMEM length is not 8")
            addr, size = struct.unpack(">II", body)
            return ReadMemCmd(req, addr, size & 0xFFFF)
        if cmd == GvcpCommand.WRITEMEM:
            if length < 4:
                return Garbage(len(b), "WRITEMEM without an address")
            return WriteMemCmd(req, _U32.unpack_from(body)[0], body[4:])
        if cmd == GvcpCommand.PACKETRESEND:
            if flags & GvcpFlag.EXTENDED_IDS:
                if length != 20:
                    return Garbage(len(b), "extended PACKETRESEND length is not 20")
                ch, first, last, block = struct.unpack(">IIIQ", body)
                return PacketResendCmd(req, block, first, last, ch >> 16)
            if length != 12:
                return Garbage(len(b), "PACKETRESEND length is not 12")
            w0, first, last = struct.unpack(">III", body)
            return PacketResendCmd(req, w0 & 0xFFFF, first & 0xFFFFFF, last & 0xFFFFFF, w0 >> 16)
        return Garbage(len(b), f"unsupported GVCP command 0x{cmd:04x}")

    def _decode_ack(self, b: bytes) -> GvcpMessage | Garbage:
        if len(b) < 8:
            return Garbage(len(b), "GVCP datagram shorter than its 8-byte header")
        status, answer, length, req = _ACK.unpack_from(b)
        body = b[8:8 + length]
        if len(body) != length:
            return Garbage(len(b), f"GVCP ack length {length} but {len(b) - 8} payload bytes")
        if status != GvcpStatus.SUCCESS:
            return GvcpErrorAck(req, answer, status, body)
        if answer == GvcpCommand.DISCOVERY_ACK:
            return DiscoveryAck(req, body)
        if answer == GvcpCommand.READREG_ACK:
            if length % 4:
                return Garbage(len(b), "READREG_ACK length not a multiple of 4")
            return ReadRegAck(req, struct.unpack(f">{length // 4}I", body))
        if answer == GvcpCommand.WRITEREG_ACK:
            return WriteRegAck(req, _U32.unpack_from(body)[0] if length >= 4 else 0)
        if answer == GvcpCommand.READMEM_ACK:
            if length < 4:
                return Garbage(len(b), "READMEM_ACK without an address")
            return ReadMemAck(req, _U32.unpack_from(body)[0], body[4:])
        if answer == GvcpCommand.WRITEMEM_ACK:
            return WriteMemAck(req, _U32.unpack_from(body)[0] if length >= 4 else 0)
        return Garbage(len(b), f"unsupported GVCP acknowledge 0x{answer:04x}")

    # -- out ----------------------------------------------------------------------------------
    def send(self, msg: GvcpMessage) -> bytes:
        """Encode ``msg``; :class:`LocalProtocolError` if this role does not send it."""
        host = isinstance(msg, (DiscoveryCmd, ReadRegCmd, WriteRegCmd, ReadMemCmd, WriteMemCmd, PacketResendCmd))
        if host != (self.role == "host"):
            raise LocalProtocolError(f"a {self.role} does not send {type(msg).__name__}")
        if not 0 <= msg.req_id <= 0xFFFF:
            raise LocalProtocolError(f"request id {msg.req_id} does not fit in 16 bits")
        if isinstance(msg, DiscoveryCmd):
            flags = GvcpFlag.ACK_REQUIRED | (GvcpFlag.ALLOW_BROADCAST_ACK if msg.allow_broadcast_ack else 0)
            return self._cmd(GvcpCommand.DISCOVERY, b"", msg.req_id, flags)
        if isinstance(msg, ReadRegCmd):
            if not msg.addresses or len(msg.addresses) > 135:
                raise LocalProtocolError("READREG takes 1..135 addresses")
            for a in msg.addresses:
                _check_u32("address", a)
            return self._cmd(GvcpCommand.READREG, struct.pack(f">{len(msg.addresses)}I", *msg.addresses), msg.req_id)
        if isinstance(msg, WriteRegCmd):
            if not msg.writes or len(msg.writes) > 67:
                raise LocalProtocolError("WRITEREG takes 1..67 writes")
            flat = [x for pair in msg.writes for x in pair]
            for x in flat:
                _check_u32("address/value", x)
            return self._cmd(GvcpCommand.WRITEREG, struct.pack(f">{len(flat)}I", *flat), msg.req_id)
        if isinstance(msg, ReadMemCmd):
            if msg.size <= 0 or msg.size > 536:
                raise LocalProtocolError("READMEM size must be 1..536 bytes")
            _check_u32("address", msg.address)
            size4 = (msg.size + 3) // 4 * 4  # as arv_gvcp_packet_new_read_memory_cmd rounds it
            return self._cmd(GvcpCommand.READMEM, struct.pack(">II", msg.address, size4), msg.req_id)
        if isinstance(msg, WriteMemCmd):
            if not msg.data or len(msg.data) > 536 or len(msg.data) % 4:
                raise LocalProtocolError("WRITEMEM data must be 4..536 bytes, a multiple of 4")
            _check_u32("address", msg.address)
            return self._cmd(GvcpCommand.WRITEMEM, _U32.pack(msg.address) + bytes(msg.data), msg.req_id)
        if isinstance(msg, PacketResendCmd):
            if not (0 < msg.block_id <= 0xFFFF and 0 <= msg.first_packet <= msg.last_packet <= 0xFFFFFF):
                raise LocalProtocolError("PACKETRESEND: block id 1..65535, 0 <= first <= last < 2**24")
            body = struct.pack(">III", (msg.channel & 0xFFFF) << 16 | msg.block_id, msg.first_packet, msg.last_packet)
            return self._cmd(GvcpCommand.PACKETRESEND, body, msg.req_id, 0)
        # device role
        if isinstance(msg, DiscoveryAck):
            return self._ack(GvcpCommand.DISCOVERY_ACK, bytes(msg.data), msg.req_id)
        if isinstance(msg, ReadRegAck):
            for v in msg.values:
                _check_u32("value", v)
            return self._ack(GvcpCommand.READREG_ACK, struct.pack(f">{len(msg.values)}I", *msg.values), msg.req_id)
        if isinstance(msg, WriteRegAck):
            return self._ack(GvcpCommand.WRITEREG_ACK, _U32.pack(msg.index), msg.req_id)
        if isinstance(msg, ReadMemAck):
            return self._ack(GvcpCommand.READMEM_ACK, _U32.pack(msg.address) + bytes(msg.data), msg.req_id)
        if isinstance(msg, WriteMemAck):
            return self._ack(GvcpCommand.WRITEMEM_ACK, _U32.pack(msg.index), msg.req_id)
        if isinstance(msg, GvcpErrorAck):
            if not msg.status & 0x8000:
                raise LocalProtocolError("an error acknowledge needs a status with bit 15 set")
            return _ACK.pack(msg.status, msg.answer, len(msg.payload), msg.req_id) + msg.payload
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}")

    @staticmethod
    def _cmd(cmd: int, body: bytes, req: int, flags: int = GvcpFlag.ACK_REQUIRED) -> bytes:
        if req == 0:
            raise LocalProtocolError("request id 0 is reserved")
        return _HDR.pack(GVCP_KEY, flags, cmd, len(body), req) + body

    @staticmethod
    def _ack(answer: int, body: bytes, req: int) -> bytes:
        return _ACK.pack(GvcpStatus.SUCCESS, answer, len(body), req) + body


def parse_genicam_url(url: str) -> tuple[str, int, int]:
    """``Local:name.xml;ADDRESS;LENGTH`` (hex, with or without ``0x``) → ``(name, address, length)``.
    ValueError for any other scheme or form."""
    text = url.split("\0", 1)[0].strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() != "local":
        raise ValueError(f"not a Local: GenICam URL: {text!r}")
    parts = rest.split(";")
    if len(parts) != 3:
        raise ValueError(f"Local: URL needs name;address;length: {text!r}")
    name, addr, length = parts
    return name, int(addr, 16), int(length.split("?")[0], 16)


def make_genicam_url(name: str, address: int, length: int) -> str:
    """The first-URL register text for an XML at ``address`` of ``length`` bytes."""
    return f"Local:{name};{address:x};{length:x}"


# ---------------------------------------------------------------------------------------------
# GVSP packets


@dataclass(frozen=True, slots=True)
class GvspLeader:
    """Image leader (packet id 0). ``timestamp`` in device ticks."""

    block_id: int
    timestamp: int
    pixel_format: int
    width: int
    height: int
    x_offset: int = 0
    y_offset: int = 0
    x_padding: int = 0
    y_padding: int = 0
    packet_id: int = 0
    status: int = 0


@dataclass(frozen=True, slots=True)
class GvspPayload:
    block_id: int
    packet_id: int
    data: bytes | memoryview
    status: int = 0


@dataclass(frozen=True, slots=True)
class GvspTrailer:
    """Image trailer (last packet): ``size_y`` = lines delivered."""

    block_id: int
    packet_id: int
    size_y: int
    payload_type: int = PAYLOAD_TYPE_IMAGE
    status: int = 0


GvspPacket = GvspLeader | GvspPayload | GvspTrailer


def _gvsp_header(status: int, block_id: int, content: int, packet_id: int) -> bytes:
    return _GVSP.pack(status, block_id & 0xFFFF, (content << 24) | (packet_id & 0xFFFFFF))


def encode_gvsp(p: GvspPacket) -> bytes:
    """One GVSP packet (standard ids)."""
    if not 0 < p.block_id <= 0xFFFF:
        raise LocalProtocolError(f"block id {p.block_id} must be 1..65535")
    if isinstance(p, GvspLeader):
        ts = p.timestamp & 0xFFFFFFFFFFFFFFFF
        return _gvsp_header(p.status, p.block_id, GvspContent.LEADER, p.packet_id) + _LEADER.pack(
            0, PAYLOAD_TYPE_IMAGE, ts >> 32, ts & 0xFFFFFFFF, p.pixel_format, p.width, p.height, p.x_offset,
            p.y_offset, p.x_padding, p.y_padding)
    if isinstance(p, GvspPayload):
        return _gvsp_header(p.status, p.block_id, GvspContent.PAYLOAD, p.packet_id) + bytes(p.data)
    return _gvsp_header(p.status, p.block_id, GvspContent.TRAILER, p.packet_id) + _TRAILER.pack(
        p.payload_type, p.size_y)


def decode_gvsp(b: bytes | bytearray | memoryview) -> GvspPacket | Garbage:
    """One GVSP datagram → a packet, or :class:`Garbage` saying why not (the payload of a
    :class:`GvspPayload` is a memoryview into ``b``)."""
    n = len(b)
    if n < 8:
        return Garbage(n, "GVSP datagram shorter than its 8-byte header")
    status, block, info = _GVSP.unpack_from(b)
    if info & 0x80000000:
        return Garbage(n, "extended-id GVSP packets are not supported")
    content, pid = (info >> 24) & 0x7F, info & 0xFFFFFF
    if content == GvspContent.PAYLOAD:
        return GvspPayload(block, pid, memoryview(b)[8:], status)
    if content == GvspContent.LEADER:
        if n < GVSP_LEADER_SIZE:
            return Garbage(n, "short GVSP leader")
        _r, ptype, hi, lo, pf, w, h, x, y, xp, yp = _LEADER.unpack_from(b, 8)
        if ptype != PAYLOAD_TYPE_IMAGE:
            return Garbage(n, f"GVSP payload type 0x{ptype:04x} is not image")
        return GvspLeader(block, hi << 32 | lo, pf, w, h, x, y, xp, yp, pid, status)
    if content == GvspContent.TRAILER:
        if n < 16:
            return Garbage(n, "short GVSP trailer")
        ptype, size_y = _TRAILER.unpack_from(b, 8)
        return GvspTrailer(block, pid, size_y, ptype, status)
    return Garbage(n, f"GVSP content type 0x{content:02x} not supported")


def next_block_id(block_id: int) -> int:
    """The block id after ``block_id`` (16-bit, wraps to 1: 0 is never used)."""
    return 1 if block_id >= 0xFFFF else block_id + 1


def payload_per_packet(packet_size: int) -> int:
    """Image bytes a payload packet carries for a stream packet size (bytes, incl. headers)."""
    n = packet_size - GVSP_OVERHEAD
    if n < 4:
        raise LocalProtocolError(f"packet size {packet_size} leaves no room for data")
    return n


def packets_for(payload_size: int, packet_size: int) -> int:
    """Number of payload packets for a block of ``payload_size`` bytes."""
    c = payload_per_packet(packet_size)
    return (payload_size + c - 1) // c


def block_packets(block_id: int, timestamp: int, pixel_format: int, width: int, height: int,
                  payload: bytes | bytearray | memoryview, packet_size: int) -> list[bytes]:
    """Device role: the whole block, leader + payload packets + trailer, ready for ``sendto``."""
    view = memoryview(payload).cast("B")
    c = payload_per_packet(packet_size)
    out = [encode_gvsp(GvspLeader(block_id, timestamp, pixel_format, width, height))]
    n = packets_for(len(view), packet_size)
    for i in range(n):
        out.append(_gvsp_header(0, block_id, GvspContent.PAYLOAD, i + 1) + view[i * c:(i + 1) * c])
    out.append(encode_gvsp(GvspTrailer(block_id, n + 1, height)))
    return out


def bytes_per_pixel(pixel_format: int) -> float:
    """Bytes per pixel from the PFNC code's bits-per-pixel field (bits 23..16)."""
    return ((pixel_format >> 16) & 0xFF) / 8


def pack_12p(a: np.ndarray) -> bytes:
    """12-bit values → PFNC ``...12p`` packing (two pixels in three bytes, LSB first:
    ``b0 = p0[7:0]``, ``b1 = p0[11:8] | p1[3:0] << 4``, ``b2 = p1[11:4]``). Even pixel count."""
    v = np.ascontiguousarray(a, dtype=np.uint16).reshape(-1)
    if v.size % 2:
        raise LocalProtocolError("12p packing needs an even number of pixels")
    p0, p1 = v[0::2], v[1::2]
    out = np.empty((v.size // 2, 3), np.uint8)
    out[:, 0] = p0 & 0xFF
    out[:, 1] = ((p0 >> 8) & 0x0F) | ((p1 & 0x0F) << 4)
    out[:, 2] = (p1 >> 4) & 0xFF
    return out.tobytes()


def unpack_12p(b: bytes | bytearray | memoryview, count: int) -> np.ndarray:
    """Inverse of :func:`pack_12p`: ``count`` uint16 values."""
    raw = np.frombuffer(b, np.uint8, count=count * 3 // 2).reshape(-1, 3).astype(np.uint16)
    out = np.empty(count, np.uint16)
    out[0::2] = raw[:, 0] | ((raw[:, 1] & 0x0F) << 8)
    out[1::2] = (raw[:, 1] >> 4) | (raw[:, 2] << 4)
    return out


# ---------------------------------------------------------------------------------------------
# GVSP receiver (host role)


@dataclass(frozen=True, slots=True)
class BlockComplete:
    """Every packet of a block arrived. ``data``: the payload bytes (``payload_size`` of them);
    ``leader_t``: when the leader arrived (the ``now`` given with it, s), ``leader_resent``: the
    leader came in a resend round (its arrival time says little about when the device sent it)."""

    block_id: int
    leader: GvspLeader
    data: bytearray
    resent_packets: int
    leader_t: float = float("nan")
    leader_resent: bool = False


@dataclass(frozen=True, slots=True)
class BlockLost:
    """A block that will not be delivered: ``missing`` packets still absent after the resends."""

    block_id: int
    missing: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResendRequest:
    """Ask the device for packets ``first..last`` of ``block_id`` (a :class:`PacketResendCmd`)."""

    block_id: int
    first_packet: int
    last_packet: int


@dataclass(slots=True)
class _Block:
    block_id: int
    data: bytearray
    got: bytearray  # one flag per packet id 0..n+1
    n_payload: int
    leader: GvspLeader | None = None
    leader_t: float = float("nan")
    leader_resent: bool = False
    received: int = 0
    last_t: float = 0.0
    resends: int = 0
    resend_t: float = -1.0
    resent: int = 0
    ended: bool = False  # trailer seen, or a later block started


class GvspReceiver:
    """Rebuild GVSP image blocks; request resends; deliver whole blocks only.

    Args:
        payload_size: bytes per block (``PayloadSize``; the leader's geometry must match).
        packet_size: the stream channel packet size (bytes incl. headers).
        resend: ask for missing packets (False: a hole loses the block at once).
        resend_timeout_s: a resend unanswered for this long is asked again, up to ``max_resends``.
        max_resends: resend rounds per block before it is announced lost.
        block_timeout_s: a block that receives nothing for this long is treated as ended
            (its trailer lost): resend, or lost.
        max_in_flight: blocks being assembled at once; the oldest beyond it is lost.

    Feed each datagram with ``receive_data(datagram, now)``; call :meth:`tick` with the time
    regularly (timeouts); drain :meth:`next_event`. Counters: ``packets``, ``resent_packets``,
    ``duplicate_packets``, ``late_packets`` (for blocks already delivered or lost), ``garbage``.
    """

    def __init__(self, payload_size: int, packet_size: int, *, resend: bool = True, resend_timeout_s: float = 0.02,
                 max_resends: int = 3, block_timeout_s: float = 0.05, max_in_flight: int = 4) -> None:
        self.payload_size = payload_size
        self.packet_size = packet_size
        self.chunk = payload_per_packet(packet_size)
        self.n_payload = packets_for(payload_size, packet_size)
        self.resend = resend
        self.resend_timeout_s = resend_timeout_s
        self.max_resends = max_resends
        self.block_timeout_s = block_timeout_s
        self.max_in_flight = max_in_flight
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._done: deque[int] = deque(maxlen=64)
        self._done_set: set[int] = set()
        self._events: deque[BlockComplete | BlockLost | ResendRequest | Garbage] = deque()
        self.packets = 0
        self.resent_packets = 0
        self.duplicate_packets = 0
        self.late_packets = 0
        self.garbage = 0

    def next_event(self) -> BlockComplete | BlockLost | ResendRequest | Garbage | NeedData:
        return self._events.popleft() if self._events else NEED_DATA

    def _finish(self, bid: int) -> None:
        self._blocks.pop(bid, None)
        if len(self._done) == self._done.maxlen:
            self._done_set.discard(self._done[0])
        self._done.append(bid)
        self._done_set.add(bid)

    def _lose(self, blk: _Block, reason: str) -> None:
        missing = len(blk.got) - sum(blk.got)
        self._events.append(BlockLost(blk.block_id, missing, reason))
        self._finish(blk.block_id)

    def receive_data(self, b: bytes | bytearray | memoryview, now: float) -> None:
        """One GVSP datagram, received at ``now`` (s)."""
        n = len(b)
        if n < 8:
            self.garbage += 1
            self._events.append(Garbage(n, "GVSP datagram shorter than its header"))
            return
        status, bid, info = _GVSP.unpack_from(b)
        content, pid = (info >> 24) & 0x7F, info & 0xFFFFFF
        if info & 0x80000000 or status & 0x8000 or bid == 0:
            self.garbage += 1
            self._events.append(Garbage(n, f"GVSP packet status 0x{status:04x} / info 0x{info:08x} refused"))
            return
        self.packets += 1
        if bid in self._done_set:
            self.late_packets += 1
            return
        blk = self._blocks.get(bid)
        if blk is None:
            for other in self._blocks.values():  # a newer block began: the older ones have ended
                other.ended = True
            blk = _Block(bid, bytearray(self.payload_size), bytearray(self.n_payload + 2), self.n_payload)
            self._blocks[bid] = blk
            while len(self._blocks) > self.max_in_flight:
                self._lose(next(iter(self._blocks.values())), "too many blocks in flight")
        blk.last_t = now
        if pid > blk.n_payload + 1:
            self.garbage += 1
            self._events.append(Garbage(n, f"packet id {pid} beyond the block's {blk.n_payload + 1}"))
            return
        if blk.got[pid]:
            self.duplicate_packets += 1
            return
        if content == GvspContent.PAYLOAD:
            if not 1 <= pid <= blk.n_payload:
                self.garbage += 1
                self._events.append(Garbage(n, f"payload packet id {pid} outside 1..{blk.n_payload}"))
                return
            off = (pid - 1) * self.chunk
            want = min(self.chunk, self.payload_size - off)
            if n - 8 < want:
                self.garbage += 1
                self._events.append(Garbage(n, f"payload packet {pid} carries {n - 8} bytes, not {want}"))
                return
            blk.data[off:off + want] = memoryview(b)[8:8 + want]
        elif content == GvspContent.LEADER:
            p = decode_gvsp(b)
            if not isinstance(p, GvspLeader) or pid != 0:
                self.garbage += 1
                self._events.append(p if isinstance(p, Garbage) else Garbage(n, "leader with packet id != 0"))
                return
            size = int(p.width * p.height * bytes_per_pixel(p.pixel_format))
            if size != self.payload_size:
                self.garbage += 1
                self._events.append(Garbage(n, f"leader announces {size} bytes, expected {self.payload_size}"))
                return
            blk.leader = p
            blk.leader_t = now
            blk.leader_resent = status == GvspStatus.PACKET_RESEND or blk.resends > 0
        elif content == GvspContent.TRAILER:
            if pid != blk.n_payload + 1:
                self.garbage += 1
                self._events.append(Garbage(n, f"trailer packet id {pid}, expected {blk.n_payload + 1}"))
                return
            blk.ended = True
        else:
            self.garbage += 1
            self._events.append(Garbage(n, f"GVSP content type {content} not supported"))
            return
        blk.got[pid] = 1
        blk.received += 1
        if status == GvspStatus.PACKET_RESEND or blk.resends:
            blk.resent += 1
            self.resent_packets += 1
        if blk.received == blk.n_payload + 2:
            assert blk.leader is not None
            self._events.append(BlockComplete(bid, blk.leader, blk.data, blk.resent, blk.leader_t,
                                              blk.leader_resent))
            self._finish(bid)
        elif blk.ended and blk.resend_t < 0:
            self._ask(blk, now)

    def _ask(self, blk: _Block, now: float) -> None:
        if not self.resend:
            self._lose(blk, "packets missing (resend off)")
            return
        if blk.resends >= self.max_resends:
            self._lose(blk, f"packets still missing after {blk.resends} resend requests")
            return
        blk.resends += 1
        blk.resend_t = now
        got = blk.got
        i, end = 0, len(got)
        ranges = 0
        while i < end:
            if got[i]:
                i += 1
                continue
            j = i
            while j + 1 < end and not got[j + 1]:
                j += 1
            self._events.append(ResendRequest(blk.block_id, i, j))
            ranges += 1
            i = j + 1

    def tick(self, now: float) -> None:
        """Apply timeouts at ``now`` (s): resend rounds, ended blocks, lost blocks."""
        for blk in list(self._blocks.values()):
            if blk.resend_t >= 0:
                if now - blk.resend_t >= self.resend_timeout_s:
                    self._ask(blk, now)
            elif blk.ended or now - blk.last_t >= self.block_timeout_s:
                blk.ended = True
                self._ask(blk, now)

    def reset(self) -> None:
        """Forget blocks in flight (a new acquisition)."""
        self._blocks.clear()
        self._done.clear()
        self._done_set.clear()
        self._events.clear()
