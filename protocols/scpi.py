"""Sans-I/O SCPI codec (IEEE 488.2 / SCPI-99 message syntax), both roles.

Wire format (raw TCP ``SOCKET`` style, port 5025 customary):

* host → device: *program messages*, one per line, terminated by ``\\n`` (``\\r\\n``
  accepted). A message holds one or more *program message units* separated by ``;``:
  ``CONF:EXP 0.05;GAIN HIGH;:TRIG:SOUR SOFT;*OPC?``. A header starting with ``:`` is
  absolute; a header without it, following a ``;``, is relative to the node of the
  previous compound header (IEEE 488.2 §7.6.1 / SCPI-99 §6.2.4). Common commands
  (``*IDN?``) never change that path. Arguments follow one space, separated by ``,``;
  they may be numbers (with SI-prefixed units), character data, quoted strings or
  definite-length blocks.
* device → host: *response messages*, terminated by ``\\n``. Text units separated by
  ``;``, or an IEEE 488.2 arbitrary block: definite ``#<n><n-digit length><bytes>``
  (n = 1..9) or indefinite ``#0<bytes>`` that ends with the message END (on a raw socket
  there is no END signal: the host calls :meth:`ScpiHost.end_of_message` or feeds
  ``b""`` at EOF).

Roles:

* :class:`ScpiHost` — ``send(Command)`` → bytes; ``receive_data`` device bytes →
  :class:`Reply` / :class:`Block` / :class:`Garbage` events.
* :class:`ScpiDevice` — ``receive_data`` host bytes → :class:`Command` /
  :class:`MessageEnd` / :class:`ParseError` events; ``send(Reply | Block | Response)``
  → bytes.

Helpers: :class:`CommandTree` (``CONFigure:EXPosure[:TIME]`` patterns, short/long form,
optional nodes, numeric suffixes ``OUTPut#``), :func:`parse_numeric` (SI suffixes, MIN /
MAX / DEF), :func:`parse_bool`, :func:`match_choice`, :class:`ErrorQueue` (SCPI error
queue with -350 overflow) and :class:`ScpiErrorCode` (standard negative error numbers).

Garbage never raises: an over-long line, a malformed block header or an oversized block
is skipped (and counted in a :class:`Garbage` event); the codec resynchronises on the
next line.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ._sansio import (
    NEED_DATA,
    Garbage,
    LocalProtocolError,
    NeedData,
    ReceiveBuffer,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Command",
    "MessageEnd",
    "ParseError",
    "Reply",
    "Block",
    "Response",
    "ScpiHost",
    "ScpiDevice",
    "ScpiError",
    "ScpiErrorCode",
    "ErrorQueue",
    "CommandTree",
    "ScpiHandler",
    "Mnemonic",
    "encode_block",
    "block_header",
    "parse_numeric",
    "parse_bool",
    "parse_string",
    "match_choice",
    "split_units",
    "split_values",
    "NEED_DATA",
    "Garbage",
]


# --------------------------------------------------------------------------- errors


class ScpiErrorCode(IntEnum):
    """Standard SCPI-99 error numbers (negative) with their canonical messages."""

    NO_ERROR = 0
    COMMAND_ERROR = -100
    INVALID_CHARACTER = -101
    SYNTAX_ERROR = -102
    INVALID_SEPARATOR = -103
    DATA_TYPE_ERROR = -104
    PARAMETER_NOT_ALLOWED = -108
    MISSING_PARAMETER = -109
    HEADER_SEPARATOR_ERROR = -111
    PROGRAM_MNEMONIC_TOO_LONG = -112
    UNDEFINED_HEADER = -113
    HEADER_SUFFIX_OUT_OF_RANGE = -114
    NUMERIC_DATA_ERROR = -120
    INVALID_SUFFIX = -131
    CHARACTER_DATA_ERROR = -140
    ILLEGAL_PARAMETER_VALUE = -224
    INVALID_STRING_DATA = -151
    BLOCK_DATA_ERROR = -160
    INVALID_BLOCK_DATA = -161
    EXECUTION_ERROR = -200
    TRIGGER_IGNORED = -211
    INIT_IGNORED = -213
    SETTINGS_CONFLICT = -221
    DATA_OUT_OF_RANGE = -222
    DATA_QUESTIONABLE = -230
    HARDWARE_ERROR = -240
    QUEUE_OVERFLOW = -350
    QUERY_ERROR = -400
    QUERY_INTERRUPTED = -410
    QUERY_UNTERMINATED = -420
    QUERY_DEADLOCKED = -430


_MESSAGES: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -111: "Header separator error",
    -112: "Program mnemonic too long",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -120: "Numeric data error",
    -131: "Invalid suffix",
    -140: "Character data error",
    -151: "Invalid string data",
    -160: "Block data error",
    -161: "Invalid block data",
    -200: "Execution error",
    -211: "Trigger ignored",
    -213: "Init ignored",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -240: "Hardware error",
    -350: "Queue overflow",
    -400: "Query error",
    -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED",
    -430: "Query DEADLOCKED",
}


class ScpiError(Exception):
    """An SCPI error (number + message), raised by argument helpers and command handlers.

    A device interface catches it and pushes ``(code, message)`` to its :class:`ErrorQueue`.
    """

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = int(code)
        self.detail = detail
        super().__init__(self.text)

    @property
    def message(self) -> str:
        return _MESSAGES.get(self.code, "Device-specific error")

    @property
    def text(self) -> str:
        """The ``SYST:ERR?`` response: ``-222,"Data out of range; exposure 9 s"``."""
        msg = self.message + (f"; {self.detail}" if self.detail else "")
        return f'{self.code},"{msg.replace(chr(34), chr(39))}"'


class ErrorQueue:
    """The SCPI error/event queue (FIFO, bounded).

    When full, the most recent entry is replaced by ``-350,"Queue overflow"`` and further
    errors are discarded until one is read (SCPI-99 §21.8; IEEE 488.2 §11.4.3.4). Reading
    an empty queue gives ``0,"No error"``. ``*CLS`` calls :meth:`clear`.
    """

    def __init__(self, size: int = 30) -> None:
        if size < 2:
            raise ValueError("size must be >= 2")
        self.size = size
        self._q: deque[ScpiError] = deque()

    def push(self, err: ScpiError | int, detail: str = "") -> None:
        if not isinstance(err, ScpiError):
            err = ScpiError(err, detail)
        if len(self._q) < self.size:
            self._q.append(err)
        elif self._q[-1].code != ScpiErrorCode.QUEUE_OVERFLOW:
            self._q[-1] = ScpiError(ScpiErrorCode.QUEUE_OVERFLOW)

    def pop(self) -> ScpiError:
        """Oldest error, or ``ScpiError(0)`` (``0,"No error"``) when empty."""
        return self._q.popleft() if self._q else ScpiError(0)

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)

    def codes(self) -> list[int]:
        return [e.code for e in self._q]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Command:
    """One program message unit.

    Host role: build it and ``send`` it; ``header`` is written as given (``"CONF:EXP"``,
    ``"*IDN"``); ``query`` appends ``?``; ``args`` are already-formatted argument strings
    (or ``bytes``, sent as a definite-length block).

    Device role: emitted by :class:`ScpiDevice`. ``header`` is the absolute upper-case
    header as resolved against the compound path (``"CONF:EXP"``, ``"*IDN"``, no ``?``);
    ``args`` are raw argument texts (strings keep their quotes; blocks are ``bytes``).
    """

    header: str
    args: tuple[str | bytes, ...] = ()
    query: bool = False

    @property
    def nodes(self) -> tuple[str, ...]:
        """Header split at ``:`` (``("CONF", "EXP")``)."""
        return tuple(n for n in self.header.split(":") if n)


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """Device role: the program message (line) that held the preceding commands ended.

    ``queries`` counts the query units in it: the device answers them in one response
    message (see :class:`Response`).
    """

    queries: int


@dataclass(frozen=True, slots=True)
class ParseError:
    """Device role: a program message unit could not be parsed.

    The unit is dropped (the rest of the line still runs); the interface should push
    ``code`` to its error queue. ``text`` is the offending unit.
    """

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A text response message (no terminator). Units are ``;``-separated."""

    text: str

    def units(self) -> list[str]:
        return split_units(self.text)

    def values(self) -> list[str]:
        """Comma-separated values of a single-unit reply (quotes kept)."""
        return split_values(self.text)


@dataclass(frozen=True, slots=True)
class Block:
    """An IEEE 488.2 arbitrary block.

    ``data`` is the payload (a ``bytearray`` owned by the event when decoded, no extra
    copy); ``ndigits`` is the header's length-digit count (0 = indefinite). In device role
    ``send(Block(data))`` picks the smallest ``ndigits`` unless one is given (> 0).
    """

    data: bytes | bytearray | memoryview
    ndigits: int = 0

    def as_array(self, dtype: str = "<u2", shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The payload as a numpy array (little-endian uint16 by default), no copy."""
        import numpy as np

        a = np.frombuffer(self.data, dtype=dtype)
        return a.reshape(shape) if shape is not None else a


@dataclass(frozen=True, slots=True)
class Response:
    """Device role: one response message made of several units (str or block bytes)."""

    units: tuple[str | bytes | bytearray | memoryview | Block, ...]


# --------------------------------------------------------------------------- helpers


def block_header(nbytes: int, ndigits: int = 0) -> bytes:
    """``#<n><len>`` for a payload of ``nbytes``; ``ndigits=0`` picks the smallest n."""
    s = str(nbytes)
    if ndigits <= 0:
        ndigits = len(s)
    if ndigits > 9 or len(s) > ndigits:
        raise LocalProtocolError(f"block of {nbytes} bytes does not fit {ndigits} digits")
    return b"#%d%s" % (ndigits, s.zfill(ndigits).encode())


def encode_block(data: bytes | bytearray | memoryview, ndigits: int = 0) -> bytes:
    """A definite-length block ``#<n><len><data>`` (no terminator)."""
    mv = memoryview(data).cast("B")
    return block_header(mv.nbytes, ndigits) + mv


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside quoted strings."""
    out: list[str] = []
    cur: list[str] = []
    quote = ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def split_units(text: str) -> list[str]:
    """Split a response message into its ``;``-separated units (quotes respected)."""
    return [u.strip() for u in _split_top(text, ";")]


def split_values(text: str) -> list[str]:
    """Split a response unit into its ``,``-separated values (quotes respected)."""
    return [u.strip() for u in _split_top(text, ",")]


def parse_string(arg: str | bytes) -> str:
    """A quoted string argument (``"abc"`` or ``'abc'``, doubled quotes unescaped)."""
    if isinstance(arg, (bytes, bytearray)):
        raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, "block where string expected")
    a = arg.strip()
    if len(a) >= 2 and a[0] in "\"'" and a[-1] == a[0]:
        q = a[0]
        return a[1:-1].replace(q + q, q)
    raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, f"string expected, got {a!r}")


_SI = {
    "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3,
    "M": 1e-3, "U": 1e-6, "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18,
}
_NUM_RE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
_NONDEC_RE = re.compile(r"^#([HhQqBb])([0-9A-Fa-f]+)$")


def parse_numeric(
    arg: str | bytes,
    unit: str = "",
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    default: float | None = None,
    integer: bool = False,
) -> float:
    """Decode ``<NRf>`` / ``<numeric value>`` program data into a float (or an int).

    * ``unit``: the SI unit the value is expressed in (``"S"``, ``"HZ"``, ``"V"``,
      ``"A"``); the argument may carry it with an SI multiplier (``50 MS``, ``2.5ms``,
      ``10 KHZ``; SCPI's ``MA`` is mega except before a unit, so ``5 MA`` with
      ``unit="A"`` is 5 mA, and ``MHZ`` / ``MOHM`` are mega). Without a unit, a bare SI
      multiplier is allowed (``1.5K``).
    * ``MIN`` / ``MINimum``, ``MAX`` / ``MAXimum``, ``DEF`` / ``DEFault`` map to the bounds
      given; ``#H1F``, ``#Q17``, ``#B101`` non-decimal integers are accepted.
    * Raises :class:`ScpiError` -104 (not numeric), -131 (bad suffix), -222 (out of range),
      -109 (empty).
    """
    if isinstance(arg, (bytes, bytearray, memoryview)):
        raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, "block where number expected")
    a = arg.strip()
    if not a:
        raise ScpiError(ScpiErrorCode.MISSING_PARAMETER)
    up = a.upper()
    value: float
    if up in ("MIN", "MINIMUM", "MAX", "MAXIMUM", "DEF", "DEFAULT"):
        v = {"MIN": minimum, "MAX": maximum, "DEF": default}[up[:3]]
        if v is None:
            raise ScpiError(ScpiErrorCode.ILLEGAL_PARAMETER_VALUE, f"{a} not defined here")
        return int(v) if integer else float(v)
    m = _NONDEC_RE.match(a)
    if m:
        base = {"H": 16, "Q": 8, "B": 2}[m.group(1).upper()]
        try:
            value = float(int(m.group(2), base))
        except ValueError:
            raise ScpiError(ScpiErrorCode.NUMERIC_DATA_ERROR, a) from None
    else:
        m = _NUM_RE.match(a)
        if not m:
            if up in ("INF", "NINF", "NAN"):
                value = {"INF": 9.9e37, "NINF": -9.9e37, "NAN": 9.91e37}[up]
                m = None
            else:
                raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, f"number expected, got {a!r}")
        if m is not None:
            value = float(m.group(1))
            suffix = m.group(2).upper()
            if suffix:
                value *= _suffix_multiplier(suffix, unit.upper())
    if not math.isfinite(value):
        raise ScpiError(ScpiErrorCode.NUMERIC_DATA_ERROR, a)
    if integer:
        if abs(value - round(value)) > 1e-9 * max(1.0, abs(value)):
            raise ScpiError(ScpiErrorCode.DATA_OUT_OF_RANGE, f"{a} is not an integer")
        value = int(round(value))
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ScpiError(
            ScpiErrorCode.DATA_OUT_OF_RANGE, f"{a} outside [{minimum}, {maximum}] {unit}".strip()
        )
    return value


def _suffix_multiplier(suffix: str, unit: str) -> float:
    if unit:
        if suffix == unit:
            return 1.0
        if unit == "HZ" and suffix == "MHZ":
            return 1e6
        if unit == "OHM" and suffix == "MOHM":
            return 1e6
        if suffix.endswith(unit):
            prefix = suffix[: -len(unit)]
            if prefix in _SI:
                return _SI[prefix]
        raise ScpiError(ScpiErrorCode.INVALID_SUFFIX, f"{suffix!r} is not a {unit} suffix")
    if suffix in _SI:
        return _SI[suffix]
    raise ScpiError(ScpiErrorCode.INVALID_SUFFIX, f"unexpected suffix {suffix!r}")


def parse_bool(arg: str | bytes) -> bool:
    """``ON`` / ``OFF`` / ``1`` / ``0`` (any non-zero number is true). -104 otherwise."""
    if isinstance(arg, (bytes, bytearray, memoryview)):
        raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, "block where boolean expected")
    a = arg.strip().upper()
    if a == "ON":
        return True
    if a == "OFF":
        return False
    try:
        return round(float(a)) != 0
    except ValueError:
        raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, f"boolean expected, got {arg!r}") from None


class Mnemonic:
    """One SCPI keyword such as ``EXPosure``: upper-case part = short form.

    ``matches("EXP")`` and ``matches("exposure")`` are true, ``"EXPO"`` is not (SCPI allows
    only the short or the long form). A trailing ``#`` (``OUTPut#``) accepts a numeric
    suffix (default 1) returned by :meth:`match`.
    """

    __slots__ = ("long", "short", "suffixed")

    def __init__(self, pattern: str) -> None:
        self.suffixed = pattern.endswith("#")
        p = pattern.rstrip("#")
        self.long = p.upper()
        short = "".join(c for c in p if not c.islower())
        self.short = short if short else self.long

    def match(self, word: str) -> int | None:
        """Numeric suffix (1 if absent) when ``word`` matches, else ``None``."""
        w = word.upper()
        n = 1
        if self.suffixed:
            m = re.match(r"^(.*?)(\d+)$", w)
            if m and m.group(1):
                w, n = m.group(1), int(m.group(2))
        elif not w or w[-1].isdigit() and not (self.long[-1].isdigit()):
            return None
        return n if w in (self.short, self.long) else None

    def matches(self, word: str) -> bool:
        return self.match(word) is not None

    def __repr__(self) -> str:
        return f"Mnemonic({self.long!r}/{self.short!r})"


def match_choice(arg: str | bytes, choices: Sequence[str]) -> str:
    """Match character data against mnemonics (``("INTernal", "EXTernal", "SOFTware")``).

    Returns the canonical short form (``"INT"``); raises -224 for no match, -104 for a
    string or block.
    """
    if isinstance(arg, (bytes, bytearray, memoryview)) or arg.strip()[:1] in ("'", '"'):
        raise ScpiError(ScpiErrorCode.DATA_TYPE_ERROR, "character data expected")
    for c in choices:
        m = Mnemonic(c)
        if m.matches(arg.strip()):
            return m.short
    raise ScpiError(
        ScpiErrorCode.ILLEGAL_PARAMETER_VALUE, f"{arg.strip()!r} not one of {'|'.join(choices)}"
    )


ScpiHandler = Callable[..., object]
"""A :class:`CommandTree` handler: called by the device model as it chooses (typically
``handler(command, *suffixes)``)."""
_H = TypeVar("_H", bound=ScpiHandler)


@dataclass(slots=True)
class _Pattern:
    nodes: list[tuple[Mnemonic, bool]]  # (mnemonic, optional)
    query: str  # "no" | "yes" | "both"
    handler: ScpiHandler
    text: str


class CommandTree:
    """A generic SCPI command table: patterns → handlers.

    Patterns: ``"CONFigure:EXPosure[:TIME]"`` (optional node), ``"OUTPut#:STATe"`` (numeric
    suffix), ``"*IDN?"`` (query only), ``"CONF:EXP?"`` (query only), ``"INITiate"``
    (command only); add ``query="both"`` to accept both forms of one pattern.

    :meth:`resolve` maps a device-role :class:`Command` to ``(handler, suffixes)`` or raises
    :class:`ScpiError` -113 (undefined header).
    """

    def __init__(self) -> None:
        self._patterns: list[_Pattern] = []

    def add(self, pattern: str, handler: ScpiHandler, *, query: str | None = None) -> None:
        """Register ``pattern``; ``query`` is ``"no"``, ``"yes"`` or ``"both"``
        (default: ``"yes"`` if the pattern ends with ``?`` else ``"no"``)."""
        text = pattern.strip()
        q = "yes" if text.endswith("?") else "no"
        text = text.rstrip("?")
        if query is not None:
            q = query
        nodes: list[tuple[Mnemonic, bool]] = []
        for m in re.finditer(r"\[:?([^\]]+)\]|:?([^:\[\]]+)", text):
            if m.group(1):
                nodes.append((Mnemonic(m.group(1).lstrip(":")), True))
            else:
                nodes.append((Mnemonic(m.group(2)), False))
        self._patterns.append(_Pattern(nodes, q, handler, pattern))

    def command(self, pattern: str, *, query: str | None = None) -> Callable[[_H], _H]:
        """Decorator form of :meth:`add`."""

        def deco(fn: _H) -> _H:
            self.add(pattern, fn, query=query)
            return fn

        return deco

    def resolve(self, cmd: Command) -> tuple[ScpiHandler, tuple[int, ...]]:
        words = list(cmd.nodes)
        for p in self._patterns:
            if cmd.query and p.query == "no" or not cmd.query and p.query == "yes":
                continue
            sfx = self._match(p.nodes, words)
            if sfx is not None:
                return p.handler, tuple(sfx)
        raise ScpiError(ScpiErrorCode.UNDEFINED_HEADER, cmd.header + ("?" if cmd.query else ""))

    @classmethod
    def _match(cls, nodes: list[tuple[Mnemonic, bool]], words: list[str]) -> list[int] | None:
        if not nodes:
            return [] if not words else None
        (mn, optional), rest = nodes[0], nodes[1:]
        if words:
            n = mn.match(words[0])
            if n is not None:
                tail = cls._match(rest, words[1:])
                if tail is not None:
                    return ([n] if mn.suffixed else []) + tail
        if optional:
            return cls._match(rest, words)
        return None

    def patterns(self) -> list[str]:
        return [p.text for p in self._patterns]


# --------------------------------------------------------------------------- host role

_DIGITS = frozenset(b"0123456789")


class ScpiHost:
    """Host (controller) role.

    A block unit inside a compound response (``1;#15hello;2``) splits it: the text units
    before it come as one :class:`Reply`, then the :class:`Block`, then the rest.

    ``send(Command)`` → program message bytes (``\\n`` terminated); several commands can
    be sent as one message with :meth:`send_many`. ``receive_data`` takes device bytes;
    ``next_event`` yields :class:`Reply`, :class:`Block`, :class:`Garbage` or NEED_DATA.

    Block payloads are copied once, straight into a pre-allocated ``bytearray`` of the
    declared length (the receive buffer never holds a large block). Limits: a text line
    longer than ``max_line`` bytes is discarded as garbage; a definite block larger than
    ``max_block`` bytes is skipped (its payload counted as garbage), so memory stays bounded.
    """

    def __init__(self, *, max_line: int = 1 << 16, max_block: int = 256 << 20) -> None:
        self._buf = ReceiveBuffer(max_size=max(2 * max_line, 1 << 16))
        self.max_line = max_line
        self.max_block = max_block
        self._block: bytearray | None = None
        self._block_pos = 0
        self._block_digits = 0
        self._skip = 0  # payload bytes of an oversized block still to drop
        self._skip_total = 0
        self._indef: bytearray | None = None
        self._after_block = False
        self._events: deque[Reply | Block | Garbage] = deque()
        self._eof = False
        self._discarding = False  # inside an over-long line: drop through its newline
        self._discarded = 0

    # -- host → device
    def send(self, event: Command) -> bytes:
        if not isinstance(event, Command):
            raise LocalProtocolError(f"host role cannot send {type(event).__name__}")
        return self._unit(event) + b"\n"

    def send_many(self, commands: Iterable[Command]) -> bytes:
        """Several units as one program message: ``A 1;B?\\n`` (headers sent as given)."""
        return b";".join(self._unit(c) for c in commands) + b"\n"

    @staticmethod
    def _unit(c: Command) -> bytes:
        h = c.header.strip()
        if not h or any(ch in h for ch in " ;\n\r?,"):
            raise LocalProtocolError(f"bad header {c.header!r}")
        out = h.encode("ascii") + (b"?" if c.query else b"")
        if c.args:
            parts: list[bytes] = []
            for a in c.args:
                if isinstance(a, (bytes, bytearray, memoryview)):
                    parts.append(encode_block(a))
                else:
                    s = str(a)
                    if "\n" in s:
                        raise LocalProtocolError("newline in argument")
                    parts.append(s.encode("ascii"))
            out += b" " + b",".join(parts)
        return out

    # -- device → host
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed device bytes; ``b""`` means EOF (ends an indefinite block).

        Parsing happens here, eagerly, so any amount may be fed before draining: block
        payload goes straight into the block's own buffer.
        """
        if not data:
            self._eof = True
            self._pump()
            return
        mv = memoryview(data).cast("B")
        while len(mv):
            if self._block is not None or self._skip:
                mv = self._fill_block(mv)
                continue
            if self._indef is not None and not len(self._buf):
                self._indef += mv
                break
            k = min(len(mv), self.max_line)
            self._buf.append(mv[:k])
            mv = mv[k:]
            self._pump()
        self._pump()

    def _pump(self) -> None:
        while not isinstance(ev := self._parse(), NeedData):
            self._events.append(ev)

    def end_of_message(self) -> None:
        """The transport signalled END (VISA): completes an indefinite ``#0`` block."""
        self._eof = True

    def _fill_block(self, mv: memoryview) -> memoryview:
        if self._skip:
            n = min(self._skip, len(mv))
            self._skip -= n
            if not self._skip:
                self._events.append(Garbage(self._skip_total, "block larger than max_block"))
                self._after_block = True
            return mv[n:]
        blk = self._block
        assert blk is not None
        n = min(len(blk) - self._block_pos, len(mv))
        blk[self._block_pos : self._block_pos + n] = mv[:n]
        self._block_pos += n
        if self._block_pos == len(blk):
            self._events.append(Block(blk, self._block_digits))
            self._block = None
            self._after_block = True
        return mv[n:]

    def next_event(self) -> Reply | Block | Garbage | NeedData:
        if not self._events:
            self._pump()  # e.g. EOF / end_of_message() since the last feed
        return self._events.popleft() if self._events else NEED_DATA

    def _parse(self) -> Reply | Block | Garbage | NeedData:
        while True:
            ov = self._buf.take_overflow()
            if ov:
                return Garbage(ov, "receive buffer overflow")
            if self._block is not None or self._skip:
                # Buffer may hold payload bytes fed before the header was parsed.
                if not len(self._buf):
                    return NEED_DATA
                rest = self._fill_block(self._buf.view())
                self._buf.skip(len(self._buf) - len(rest))
                continue
            if self._indef is not None:
                if len(self._buf):
                    self._indef += self._buf.view()
                    self._buf.skip(len(self._buf))
                if self._eof:
                    data = self._indef
                    if data.endswith(b"\n"):
                        del data[-1:]
                    self._indef = None
                    self._eof = False
                    return Block(data, 0)
                return NEED_DATA
            n = len(self._buf)
            if not n:
                return NEED_DATA
            if self._after_block:
                c = self._buf.peek(1)
                self._after_block = False
                if c == b"\n" or c == b";":
                    self._buf.skip(1)
                    continue
                if c == b"\r" and self._buf.peek(2) == b"\r\n":
                    self._buf.skip(2)
                    continue
            head = self._buf.peek(1)
            if head == b"#":
                if n < 2:
                    return NEED_DATA
                d = self._buf.peek(2)[1:2]
                if d.isascii() and d.isdigit():
                    ev = self._parse_block_header()
                    if ev is NEED_DATA:
                        return NEED_DATA
                    if ev is not None:
                        return ev
                    continue
            i = self._buf.find(b"\n")
            j = self._buf.find(b";#")
            if 0 <= j and (i < 0 or j < i) and j + 2 < n and self._buf.view()[j + 2] in _DIGITS:
                # A block unit inside a compound response: text before it is one Reply.
                text = self._buf.consume(j + 1)[:-1]
                return Reply(text.decode("latin-1"))
            if self._discarding:
                k = n if i < 0 else i + 1
                self._buf.skip(k)
                self._discarded += k
                if i < 0:
                    return NEED_DATA
                self._discarding = False
                g, self._discarded = Garbage(self._discarded, "line too long"), 0
                return g
            if i < 0:
                if n > self.max_line:
                    self._buf.skip(n)
                    self._discarding = True
                    self._discarded = n
                return NEED_DATA
            line = self._buf.consume(i + 1)
            if i > self.max_line:
                return Garbage(i + 1, "line too long")
            text = line[:-1].rstrip(b"\r")
            try:
                return Reply(text.decode("ascii"))
            except UnicodeDecodeError:
                return Reply(text.decode("latin-1"))

    def _parse_block_header(self) -> Garbage | NeedData | None:
        nd = int(self._buf.peek(2)[1:2])
        if nd == 0:
            self._buf.skip(2)
            self._indef = bytearray()
            return None
        if len(self._buf) < 2 + nd:
            return NEED_DATA
        digits = self._buf.peek(2 + nd)[2:]
        if not (digits.isascii() and digits.isdigit()):
            # Malformed header: drop through the end of the line.
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > self.max_line:
                    k = len(self._buf)
                    self._buf.skip(k)
                    return Garbage(k, "bad block header")
                return NEED_DATA
            self._buf.skip(i + 1)
            return Garbage(i + 1, "bad block header")
        length = int(digits)
        self._buf.skip(2 + nd)
        self._block_digits = nd
        if length > self.max_block:
            self._skip = self._skip_total = length
            if length == 0:  # pragma: no cover - max_block >= 0
                self._skip = 0
            return None
        self._block = bytearray(length)
        self._block_pos = 0
        if length == 0:
            self._block = None
            self._after_block = True
            return Block(bytearray(), nd)  # type: ignore[return-value]
        return None


# --------------------------------------------------------------------------- device role


class ScpiDevice:
    """Device (instrument) role.

    ``receive_data`` takes host bytes; ``next_event`` yields, per program message (line),
    one :class:`Command` per unit (absolute header, upper case), :class:`ParseError` for
    units that do not parse, then :class:`MessageEnd`. ``send`` encodes :class:`Reply`,
    :class:`Block` or :class:`Response` (units joined by ``;``) with the ``\\n`` terminator.

    Block arguments (``:CAL:DATA #43000<bytes>``) may contain ``\\n``; the scanner skips
    over them. A line longer than ``max_line`` (blocks excluded from the count only up to
    ``max_block``) is discarded with a :class:`Garbage` event and ``-102`` is *not*
    reported automatically — the interface decides.
    """

    def __init__(self, *, max_line: int = 1 << 16, max_block: int = 64 << 20) -> None:
        self._buf = ReceiveBuffer(max_size=max_line + max_block + 64)
        self.max_line = max_line
        self.max_block = max_block
        self._scan = 0  # bytes of the current message already scanned
        self._quote = 0
        self._events: deque[Command | ParseError | MessageEnd | Garbage] = deque()
        self._path: tuple[str, ...] = ()
        self._discarding = False
        self._discarded = 0
        self._discard_reason = ""
        self._blockbytes = 0

    # -- device → host
    def send(self, event: Reply | Block | Response) -> bytes:
        if isinstance(event, Reply):
            if "\n" in event.text:
                raise LocalProtocolError("newline in reply")
            return event.text.encode("ascii") + b"\n"
        if isinstance(event, Block):
            mv = memoryview(event.data).cast("B")
            return b"".join((block_header(mv.nbytes, event.ndigits), mv, b"\n"))  # one copy
        if isinstance(event, Response):
            # one join, one copy of each block payload (frames are megabytes)
            parts: list[bytes | memoryview] = []
            for i, u in enumerate(event.units):
                if i:
                    parts.append(b";")
                if isinstance(u, (Block, bytes, bytearray, memoryview)):
                    data, nd = (u.data, u.ndigits) if isinstance(u, Block) else (u, 0)
                    mv = memoryview(data).cast("B")
                    parts += (block_header(mv.nbytes, nd), mv)
                else:
                    if "\n" in u:
                        raise LocalProtocolError("newline in reply")
                    parts.append(u.encode("ascii"))
            parts.append(b"\n")
            return b"".join(parts)
        raise LocalProtocolError(f"device role cannot send {type(event).__name__}")

    def send_indefinite_block(self, data: bytes | bytearray | memoryview) -> bytes:
        """``#0<data>\\n``; the host needs END (or EOF) to know where it stops."""
        return b"#0" + bytes(memoryview(data).cast("B")) + b"\n"

    # -- host → device
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._buf.append(data)

    def next_event(self) -> Command | ParseError | MessageEnd | Garbage | NeedData:
        while True:
            if self._events:
                return self._events.popleft()
            ov = self._buf.take_overflow()
            if ov:
                self._scan = 0
                self._quote = 0
                return Garbage(ov, "receive buffer overflow")
            end = self._find_end()
            if end is None:
                return NEED_DATA
            if isinstance(end, Garbage):
                return end
            raw = self._buf.consume(end + 1)[:-1]
            self._scan = 0
            self._quote = 0
            self._blockbytes = 0
            self._parse_message(raw)

    def _find_end(self) -> int | None | Garbage:
        """Index of the message terminator (scanning over quotes and blocks), ``None`` if
        incomplete, or a :class:`Garbage` event when bytes had to be dropped."""
        if self._discarding:
            i = self._buf.find(b"\n")
            k = len(self._buf) if i < 0 else i + 1
            self._buf.skip(k)
            self._discarded += k
            if i < 0:
                return None
            self._discarding = False
            g, self._discarded = Garbage(self._discarded, self._discard_reason), 0
            return g
        view = self._buf.view()
        n = len(view)
        i = self._scan
        while i < n:
            c = view[i]
            if c == 0x0A:
                return i  # a newline ends the message even inside an unclosed string
            if self._quote:
                if c == self._quote:
                    self._quote = 0
                i += 1
                continue
            if c in (0x22, 0x27):
                self._quote = c
            elif c == 0x23:
                if i + 1 >= n:
                    break  # need the next byte to know whether a block starts
                if 0x31 <= view[i + 1] <= 0x39:
                    nd = view[i + 1] - 0x30
                    if i + 2 + nd > n:
                        break
                    digits = bytes(view[i + 2 : i + 2 + nd])
                    if digits.isdigit():
                        ln = int(digits)
                        if ln > self.max_block:
                            return self._start_discard(i + 2 + nd, "block argument too large")
                        if i + 2 + nd + ln > n:
                            break
                        i += 2 + nd + ln
                        self._blockbytes += 2 + nd + ln
                        continue
            i += 1
        self._scan = i
        if i - self._blockbytes > self.max_line:
            return self._start_discard(i, "line too long")
        return None

    def _start_discard(self, k: int, reason: str) -> Garbage | None:
        """Drop ``k`` bytes and everything up to the next newline (then resync)."""
        self._buf.skip(k)
        self._discarded = k
        self._discard_reason = reason
        self._blockbytes = 0
        self._discarding = True
        self._scan = 0
        self._quote = 0
        return self._find_end()  # type: ignore[return-value]

    def _parse_message(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        units = _split_units_bytes(raw)
        queries = 0
        self._path = ()
        for u in units:
            ev = self._parse_unit(u)
            if ev is None:
                continue
            if isinstance(ev, Command) and ev.query:
                queries += 1
            self._events.append(ev)
        self._events.append(MessageEnd(queries))

    def _parse_unit(self, u: bytes) -> Command | ParseError | None:
        s = u.lstrip(b" \t")
        if not s.strip():
            return None
        # header: up to first whitespace
        m = re.match(rb"^([^\s]+)(?:[ \t]+(.*))?$", s, re.S)
        if not m:
            return ParseError(ScpiErrorCode.SYNTAX_ERROR, s.decode("latin-1"))
        hdr_b, arg_b = m.group(1), m.group(2)
        try:
            hdr = hdr_b.decode("ascii").upper()
        except UnicodeDecodeError:
            return ParseError(ScpiErrorCode.INVALID_CHARACTER, s.decode("latin-1"))
        query = hdr.endswith("?")
        if query:
            hdr = hdr[:-1]
        if not re.fullmatch(r"(\*[A-Z]+|:?[A-Z][A-Z0-9_]*(:[A-Z][A-Z0-9_]*)*)", hdr):
            return ParseError(
                ScpiErrorCode.INVALID_CHARACTER
                if re.search(r"[^A-Z0-9_:*]", hdr)
                else ScpiErrorCode.SYNTAX_ERROR,
                s.decode("latin-1").strip(),
            )
        if hdr.startswith("*"):
            full = hdr
        else:
            nodes = tuple(x for x in hdr.split(":") if x)
            absolute = nodes if hdr.startswith(":") else self._path + nodes
            self._path = absolute[:-1]
            full = ":".join(absolute)
        args: tuple[str | bytes, ...] = ()
        if arg_b is not None and arg_b.strip():
            try:
                args = _split_args(arg_b)
            except ScpiError as e:
                return ParseError(e.code, s.decode("latin-1").strip())
        return Command(full, args, query)


def _split_units_bytes(raw: bytes) -> list[bytes]:
    """Split at ``;`` outside strings and blocks."""
    out: list[bytes] = []
    start = 0
    i = 0
    n = len(raw)
    quote = 0
    while i < n:
        c = raw[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3B:
            out.append(raw[start:i])
            start = i + 1
        elif c == 0x23 and i + 1 < n and 0x31 <= raw[i + 1] <= 0x39:
            nd = raw[i + 1] - 0x30
            digits = raw[i + 2 : i + 2 + nd]
            if len(digits) == nd and digits.isdigit():
                i += 2 + nd + int(digits)
                continue
        i += 1
    out.append(raw[start:])
    return out


def _split_args(arg_b: bytes) -> tuple[str | bytes, ...]:
    """Split argument text at ``,`` (outside strings/blocks); blocks become bytes."""
    out: list[str | bytes] = []
    i = 0
    n = len(arg_b)
    cur = bytearray()
    quote = 0
    pending_block: bytes | None = None
    while i < n:
        c = arg_b[i]
        if quote:
            cur.append(c)
            if c == quote:
                quote = 0
            i += 1
            continue
        if c in (0x22, 0x27):
            quote = c
            cur.append(c)
        elif c == 0x2C:
            out.append(pending_block if pending_block is not None else _arg_text(cur))
            cur = bytearray()
            pending_block = None
        elif c == 0x23 and not cur.strip() and i + 1 < n and 0x30 <= arg_b[i + 1] <= 0x39:
            nd = arg_b[i + 1] - 0x30
            digits = arg_b[i + 2 : i + 2 + nd]
            if nd == 0 or len(digits) != nd or not digits.isdigit():
                raise ScpiError(ScpiErrorCode.INVALID_BLOCK_DATA)
            ln = int(digits)
            start = i + 2 + nd
            if start + ln > n:
                raise ScpiError(ScpiErrorCode.INVALID_BLOCK_DATA, "block shorter than declared")
            pending_block = bytes(arg_b[start : start + ln])
            i = start + ln
            continue
        else:
            if pending_block is not None and c not in (0x20, 0x09):
                raise ScpiError(ScpiErrorCode.INVALID_SEPARATOR)
            cur.append(c)
        i += 1
    if quote:
        raise ScpiError(ScpiErrorCode.INVALID_STRING_DATA, "unterminated string")
    out.append(pending_block if pending_block is not None else _arg_text(cur))
    if any(isinstance(a, str) and a == "" for a in out):
        raise ScpiError(ScpiErrorCode.MISSING_PARAMETER, "empty argument")
    return tuple(out)


def _arg_text(cur: bytearray) -> str:
    try:
        return cur.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ScpiError(ScpiErrorCode.INVALID_CHARACTER) from None
