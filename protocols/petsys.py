"""Sans-I/O codec for a PETsys-TOFPET2-style singles stream over TCP (both roles).

What follows PETsys (github ``PETsys/sw_daq_tofpet2``, ``src/base/DataFileWriter.hpp``,
``struct Event``, written by ``DataFileWriter::writeSingleEvents`` for
``convert_raw_to_singles --writeBinary``): one processed single is a packed 16-byte record::

    long long time   (i64, ps)      float e   (f32)      int id   (i32)

in the host's byte order (little-endian on every PETsys DAQ host; this codec fixes it to
little-endian). PETsys writes ``time`` in picoseconds from its time reference, ``e`` in the
energy unit of the channel's calibration (QDC counts, ToT ns, or keV once calibrated) and
``id`` as the absolute channel id ``portID << 17 | slaveID << 12 | chipID << 6 | channel``
(``MAKE_GID`` in ``src/base/SystemConfig.cpp``). Here ``e`` is keV (the device is
energy-calibrated) and ``id`` is the crystal index of the ring (the channel map is applied in
the device); :data:`SINGLE_DTYPE` is that record.

What is this project's own (PETsys streams to files and shared memory, not over TCP): the
framing of a TCP link that carries blocks of those records *and* a command channel. Every
message is a frame, little-endian::

    magic "PSYS" | version u8 (=1) | kind u8 | reserved u16 (=0) | length u32 | counter u32
    payload (length bytes)
    crc32 u32   (zlib/IEEE CRC-32 of header + payload)

``kind``: 1 = singles block (device → host), 2 = command (host → device), 3 = reply (device →
host). For a singles block ``counter`` is the **block counter** (u32, +1 per block, wraps), so a
host sees every lost block; its payload is a 24-byte block header then the records::

    t_start_ps i64 | t_end_ps i64 | n_records u32 | dead_singles u32 | n_records x SINGLE_DTYPE

``[t_start_ps, t_end_ps)`` is the device time the block covers (blocks tile time with no hole
unless some are lost), ``dead_singles`` the singles the front end lost to dead time in it (for
dead-time correction). For a command ``counter`` is the request id and the payload is UTF-8
text (``START``, ``SET CWINDOW 4000``, see :class:`ReplyCode` and ``docs/nuclear.md``); the
reply echoes the request id, payload ``code i32`` then UTF-8 text.

Errors on the receive path never raise. A header whose length does not match the block's record
count (read before the payload arrives) is not waited for; a frame whose CRC or layout is wrong gives a
:class:`BadFrame` (the block counter of the next good block shows the hole) and the codec
re-scans from the byte after the bad frame's magic, so a truncated frame never swallows the next;
bytes that are not a frame are skipped as :class:`~medacq.protocols._sansio.Garbage`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal, cast

import numpy as np

from medacq.protocols._block_link import (
    FRAME_HEADER,
    BadFrame,
    BlockLink,
    Command,
    FrameKind,
    Reply,
    ReplyCode,
)
from medacq.protocols._sansio import Garbage, LocalProtocolError, NeedData

__all__ = [
    "SINGLE_DTYPE",
    "SINGLE_SIZE",
    "MAGIC",
    "FRAME_HEADER_SIZE",
    "BLOCK_HEADER_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "FrameKind",
    "ReplyCode",
    "SinglesBlock",
    "Command",
    "Reply",
    "BadFrame",
    "PetsysEvent",
    "PetsysConnection",
    "petsys_channel_id",
]

#: one processed single, PETsys ``struct Event`` (packed): time ps, energy, channel/crystal id
SINGLE_DTYPE: Final = np.dtype([("time_ps", "<i8"), ("energy", "<f4"), ("id", "<i4")])
SINGLE_SIZE: Final = 16
assert SINGLE_DTYPE.itemsize == SINGLE_SIZE

MAGIC: Final = b"PSYS"
VERSION: Final = 1
_BLOCK = struct.Struct("<qqII")
_N_RECORDS = struct.Struct("<16xI")  # n_records of a block header
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size  # 16
BLOCK_HEADER_SIZE: Final = _BLOCK.size  # 24
DEFAULT_MAX_PAYLOAD: Final = 64 << 20


def petsys_channel_id(port: int, slave: int, chip: int, channel: int) -> int:
    """PETsys absolute channel id (``MAKE_GID``): ``port << 17 | slave << 12 | chip << 6 | channel``."""
    return (int(port) << 17) | (int(slave) << 12) | (int(chip) << 6) | int(channel)


@dataclass(frozen=True, slots=True, eq=False)
class SinglesBlock:
    """One block of singles (device → host).

    Attributes:
        counter: block counter (u32, wraps); consecutive blocks differ by 1.
        t_start_ps, t_end_ps: device time the block covers, ps.
        dead_singles: singles lost to front-end dead time within the block.
        singles: ``(n,)`` array of :data:`SINGLE_DTYPE` (time ps, energy keV, crystal id),
            time-ordered. Read-only when decoded.
    """

    counter: int
    t_start_ps: int
    t_end_ps: int
    dead_singles: int
    singles: np.ndarray


PetsysEvent = SinglesBlock | Command | Reply | BadFrame | Garbage


class PetsysConnection(BlockLink):
    """Both ends of the link: ``role="host"`` (sends :class:`Command`, receives blocks and replies)
    or ``role="device"`` (sends :class:`SinglesBlock` and :class:`Reply`, receives commands).

    ``receive_data(bytes)`` then ``next_event()`` until :data:`NEED_DATA`; ``send(event) -> bytes``.
    ``max_payload`` bounds a frame (a larger length field is garbage, not a reason to buffer).
    The framing is :class:`~medacq.protocols._block_link.BlockLink`'s.
    """

    MAGIC = MAGIC
    BLOCK_TYPE = SinglesBlock
    BLOCK_NAME = "singles blocks"
    BLOCK_HEADER_SIZE = BLOCK_HEADER_SIZE
    BLOCK_PEEK = _N_RECORDS.size
    LENGTH_MISMATCH = "frame length does not match its record count"

    def __init__(self, role: Literal["host", "device"] = "host", *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        super().__init__(role, max_payload=max_payload)

    def next_event(self) -> PetsysEvent | NeedData:
        """The next event, or :data:`NEED_DATA`."""
        return cast("PetsysEvent | NeedData", super().next_event())

    def _block_length(self, head: bytes) -> int:
        (n_rec,) = _N_RECORDS.unpack(head)
        return int(BLOCK_HEADER_SIZE + n_rec * SINGLE_SIZE)

    def _decode_block(self, counter: int, payload: memoryview) -> SinglesBlock | BadFrame:
        kind = FrameKind.SINGLES
        if len(payload) < BLOCK_HEADER_SIZE:
            return BadFrame(kind, counter, "singles block shorter than its header")
        t0, t1, n, dead = _BLOCK.unpack_from(payload)
        if len(payload) != BLOCK_HEADER_SIZE + n * SINGLE_SIZE:
            return BadFrame(kind, counter, f"singles block of {len(payload)} bytes does not hold {n} records")
        singles = np.frombuffer(payload, SINGLE_DTYPE, count=n, offset=BLOCK_HEADER_SIZE)
        return SinglesBlock(counter, t0, t1, dead, singles)

    def _encode_block(self, event: SinglesBlock) -> tuple[int, tuple[bytes, ...]]:
        s = event.singles
        if s.dtype != SINGLE_DTYPE:
            try:
                s = s.astype(SINGLE_DTYPE)
            except (TypeError, ValueError) as exc:
                raise LocalProtocolError(f"singles must be {SINGLE_DTYPE}, not {s.dtype}") from exc
        if not (0 <= event.dead_singles <= 0xFFFFFFFF):
            raise LocalProtocolError("dead_singles must fit a u32")
        body = _BLOCK.pack(event.t_start_ps, event.t_end_ps, len(s), event.dead_singles)
        return event.counter, (body, np.ascontiguousarray(s).tobytes())

    def send(self, event: SinglesBlock | Command | Reply) -> bytes:
        """Encode ``event`` as one frame. :class:`LocalProtocolError` if this role does not send it
        or a field is out of range."""
        return super().send(event)
