"""What DATA and ACK frames carry between gateways: runs of ring records, stream acks.

Knows bytes and ring record headers; not sockets, rings, files or actors. Payloads are
opaque ``bytes`` and are never deserialized here.

A *stream* is one ring on the sending node: the messages one sender wrote for one actor
of the receiving node (``origin`` and ``target`` names, and the ring's ``gen``). A DATA
frame carries *runs*: consecutive records of one stream, each as it stands in the ring
(its header word: length, type, meta) with its end position there. Positions only grow,
so a record's end is its identity: the receiver takes each record once, however often
it is sent, and acknowledges a stream up to a position ("done through"), which is what
the sending gateway may release from its ring. Fragments of a large message travel as
the ring's own FIRST / MIDDLE / LAST records (a MIDDLE or LAST names its FIRST's end and
its offset), so the receiver can resume one from wherever the sender's ring stands.

Layout (integers little-endian, names u8 length + ASCII ``[A-Za-z0-9_.-]{1,64}``)::

    DATA body    run count u32, runs
    run          origin name, target name, gen u64, start u64, released u64,
                 record count u32, records
    record       end u64, header u64 (length u32 | type u8 | meta u24), payload
    ACK body     entry count u32, entries
    entry        kind u8 (DONE / BOUNCED / REWIND), origin name, target name, gen u64,
                 position u64, and for BOUNCED a reason (u16 length, UTF-8)

``start`` is the position of the run's first record (the end of the one before it, or
of a padding record); ``released`` the sender's head: everything before it is freed, so
a receiver that sees ``start`` beyond its own progress and ``released`` at ``start``
knows the sender gave the messages in between up.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple, overload

import attrs

from mybus_actors import ringcore
from mybus_actors.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "FIRST",
    "LAST",
    "MIDDLE",
    "WHOLE",
    "BodyReader",
    "Control",
    "PackedRecords",
    "Record",
    "Run",
    "StreamAck",
    "encode_acks",
    "encode_runs",
    "fragment_identity",
    "read_acks",
    "read_runs",
    "record_type",
    "run_size",
    "scan_packed",
    "unpack_packed",
]

# Ring record types (ring.py's values; PAD never travels).
WHOLE: Final = 1
FIRST: Final = 2
MIDDLE: Final = 3
LAST: Final = 4

Record = tuple[int, int, bytes]
"""(end position, ring header word, payload): one ring record, as `ring.Reader` reads it."""

_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_U64X2: Final = struct.Struct("<QQ")
_RUN_TAIL: Final = struct.Struct("<QQQI")  # gen, start, released, record count
_ENTRY_TAIL: Final = struct.Struct("<QQ")  # gen, position
_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1
_NAME_RE: Final = re.compile(rb"[A-Za-z0-9_.-]{1,64}")
_LEN_MASK: Final = 0xFFFFFFFF
_FIRST_PREFIX: Final = 8
_NEXT_PREFIX: Final = 16


def _scan_packed(data: Any, offset: int, count: int, start: int) -> int:
    """`scan_packed` in Python (the reference; the native core has its own)."""
    mv = memoryview(data)
    size = len(mv)
    pos = start
    for _ in range(count):
        if size - offset < 16:
            raise RemoteProtocolError(
                f"DATA frame truncated: record end and header needs 16 bytes, "
                f"{size - offset} left in the body"
            )
        end, header = _U64X2.unpack_from(mv, offset)
        n = header & _LEN_MASK
        rtype = record_type(header)
        if not WHOLE <= rtype <= LAST:
            raise RemoteProtocolError(f"record of type {rtype} in a run")
        if end - pos < 8 + ((n + 7) & ~7):
            raise RemoteProtocolError(f"record ending at {end} does not fit after {pos}")
        if size - offset - 16 < n:
            raise RemoteProtocolError(
                f"DATA frame truncated: record payload needs {n} bytes, "
                f"{size - offset - 16} left in the body"
            )
        offset += 16 + n
        pos = end
    return offset


def _unpack_packed(data: Any, offset: int, count: int) -> list[Record]:
    """`unpack_packed` in Python (the reference; the native core has its own)."""
    mv = memoryview(data)
    out: list[Record] = []
    for _ in range(count):
        end, header = _U64X2.unpack_from(mv, offset)
        n = header & _LEN_MASK
        if offset + 16 + n > len(mv):
            raise ValueError("packed records run past their data (not scanned?)")
        out.append((int(end), int(header), bytes(mv[offset + 16 : offset + 16 + n])))
        offset += 16 + n
    return out


_NATIVE = ringcore.NATIVE
scan_packed = _NATIVE.scan_packed if _NATIVE is not None else _scan_packed
"""scan_packed(data, offset, count, start) -> the offset after ``count`` records packed
at ``offset``, each checked as `read_runs` checks records (a type a run carries, an end
far enough past the previous one, from ``start``, to hold it in a ring, the bytes there).

Raises: RemoteProtocolError: what is wrong."""
unpack_packed = _NATIVE.unpack_packed if _NATIVE is not None else _unpack_packed
"""unpack_packed(data, offset, count) -> the [(end, header, payload), ...] packed there."""


class PackedRecords(Sequence[Record]):
    """A run's records as the wire carries them, in one bytes object: (end u64, header
    u64, payload) each, back to back, and how many (`number`).

    The gateway's hot paths move these, not a Python object per record: the sender's
    ring reader packs them (`ring.Reader.peek_packed`), a DATA body carries the bytes as
    they are, the receiver checks them in one call (`scan_packed`) and writes the plain
    ones into local rings in one more (`ring.Producer.relay`). Read as a sequence, it
    unpacks: it compares equal to the tuple of the same records.
    """

    __slots__ = ("data", "number")

    def __init__(self, data: bytes, number: int) -> None:
        self.data = data
        self.number = number

    def records(self, offset: int = 0, skip: int = 0) -> tuple[Record, ...]:
        """The records, unpacked: all, or those from byte ``offset`` on (``skip`` of
        them lie before it). Made anew each time: the hot paths never ask."""
        return tuple(unpack_packed(self.data, offset, self.number - skip))

    @property
    def payload_bytes(self) -> int:
        return len(self.data) - 16 * self.number

    def __len__(self) -> int:
        return self.number

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Record, ...]: ...

    def __getitem__(self, index: int | slice) -> Record | tuple[Record, ...]:
        return self.records()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedRecords):
            return self.number == other.number and self.data == other.data
        if isinstance(other, tuple):
            return self.records() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedRecords({self.number} records, {len(self.data)} bytes)"


class Control(enum.IntEnum):
    """What an ACK entry says about a stream."""

    DONE = 1  # every record up to the position is taken (delivered, or bounced)
    BOUNCED = 2  # the record ending at the position was not delivered: reason
    REWIND = 3  # send again from the position (what came after it was dropped)


class Run(NamedTuple):
    """Consecutive records of one stream (a NamedTuple: one is made per stream per frame
    on both sides of every hop, and a tuple is made in a fraction of an attrs class's
    time)."""

    origin: str
    target: str
    gen: int
    start: int
    released: int
    records: tuple[Record, ...] | PackedRecords


@attrs.frozen
class StreamAck:
    kind: Control
    origin: str
    target: str
    gen: int
    position: int
    reason: str = ""


def record_type(header: int) -> int:
    return (header >> 32) & 0xFF


def fragment_identity(header: int, payload: bytes) -> tuple[int, int]:
    """(FIRST's end, offset) of a MIDDLE or LAST record; (0, total) for a FIRST.

    Raises:
        RemoteProtocolError: the payload is too short for its prefix.
    """
    if record_type(header) == FIRST:
        if len(payload) < _FIRST_PREFIX:
            raise RemoteProtocolError("FIRST record too short for its total")
        return 0, int(_U64.unpack_from(payload)[0])
    if len(payload) < _NEXT_PREFIX:
        raise RemoteProtocolError("fragment record too short for its identity")
    first, offset = _U64X2.unpack_from(payload)
    return int(first), int(offset)


def _str8(name: str) -> bytes:
    raw = name.encode("ascii")
    return bytes((len(raw),)) + raw


def _check_name(name: object, what: str) -> bytes:
    head = _HEADS.get(name) if isinstance(name, str) else None
    if head is not None:
        return head
    if not (
        isinstance(name, str) and name.isascii() and _NAME_RE.fullmatch(name.encode())
    ):
        raise LocalProtocolError(f"{what} {name!r} is not a valid name")
    if len(_HEADS) > 4096:
        _HEADS.clear()
    head = _HEADS[name] = _str8(name)
    return head


_HEADS: dict[str, bytes] = {}  # names already checked, as they go on the wire


def _check_u64(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
        raise LocalProtocolError(f"{what} {value!r} is not a u64")


def run_size(run: Run) -> int:
    """Bytes ``run`` takes in a DATA body."""
    head = 2 + len(run.origin) + len(run.target) + _RUN_TAIL.size
    if isinstance(run.records, PackedRecords):
        return head + len(run.records.data)
    return head + sum(16 + len(payload) for _, _, payload in run.records)


def encode_runs(runs: Sequence[Run]) -> list[bytes]:
    """A DATA body as parts (joined by the framing, never here: payloads are not copied).

    Raises:
        LocalProtocolError: a bad name, position or record.
    """
    parts: list[bytes] = [_U32.pack(len(runs))]
    for run in runs:
        head = _check_name(run.origin, "origin") + _check_name(run.target, "target")
        for value, what in ((run.gen, "gen"), (run.start, "start"), (run.released, "released")):
            _check_u64(value, what)
        parts.append(head + _RUN_TAIL.pack(run.gen, run.start, run.released, len(run.records)))
        if isinstance(run.records, PackedRecords):
            parts.append(run.records.data)  # packed by our own ring reader: as it stands
            continue
        for end, header, payload in run.records:
            if header & _LEN_MASK != len(payload) or not WHOLE <= record_type(header) <= LAST:
                raise LocalProtocolError(f"record header {header:#x} does not fit its payload")
            parts.append(_U64X2.pack(end, header))
            parts.append(payload)
    return parts


def encode_acks(entries: Sequence[StreamAck]) -> list[bytes]:
    """An ACK body as parts.

    Raises:
        LocalProtocolError: a bad name, kind or position.
    """
    parts: list[bytes] = [_U32.pack(len(entries))]
    for e in entries:
        if not isinstance(e.kind, Control):
            raise LocalProtocolError(f"not a Control kind: {e.kind!r}")
        _check_u64(e.gen, "gen")
        _check_u64(e.position, "position")
        names = _check_name(e.origin, "origin") + _check_name(e.target, "target")
        parts.append(bytes((e.kind,)) + names + _ENTRY_TAIL.pack(e.gen, e.position))
        if e.kind is Control.BOUNCED:
            reason = e.reason.encode("utf-8", "replace")[:0xFFFF]
            parts.append(_U16.pack(len(reason)) + reason)
    return parts


class BodyReader:
    """Reads the fields of one frame body; running short is the peer's fault."""

    __slots__ = ("_end", "_mv", "_pos", "_what")

    def __init__(self, mv: memoryview, start: int, end: int, what: str) -> None:
        self._mv, self._pos, self._end, self._what = mv, start, end, what

    def _take(self, n: int, field: str) -> int:
        pos = self._pos
        if n > self._end - pos:
            raise RemoteProtocolError(
                f"{self._what} frame truncated: {field} needs {n} bytes, "
                f"{self._end - pos} left in the body"
            )
        self._pos = pos + n
        return pos

    def u8(self, field: str) -> int:
        return self._mv[self._take(1, field)]

    def u16(self, field: str) -> int:
        value: int = _U16.unpack_from(self._mv, self._take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = _U32.unpack_from(self._mv, self._take(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = _U64.unpack_from(self._mv, self._take(8, field))[0]
        return value

    def u64x2(self, field: str) -> tuple[int, int]:
        a, b = _U64X2.unpack_from(self._mv, self._take(16, field))
        return int(a), int(b)

    def raw(self, n: int, field: str) -> bytes:
        pos = self._take(n, field)
        return bytes(self._mv[pos : pos + n])

    def name(self, field: str) -> str:
        raw = self.raw(self.u8(f"{field} length"), field)
        name = _NAMES.get(raw)
        if name is None:
            if _NAME_RE.fullmatch(raw) is None:
                raise RemoteProtocolError(
                    f"{self._what} frame has an invalid {field} {raw[:70]!r}"
                )
            name = _remember(raw)
        return name

    @property
    def position(self) -> int:
        """Where the next field begins (an index into `view`)."""
        return self._pos

    @property
    def view(self) -> memoryview:
        """The frame's bytes, up to the body's end (fields are read at `position`)."""
        return self._mv[: self._end]

    def done(self, what: str = "") -> None:
        if self._pos != self._end:
            raise RemoteProtocolError(
                f"{self._what} frame has {self._end - self._pos} trailing bytes{what}"
            )


def read_runs(r: BodyReader) -> Iterator[Run]:
    """The runs of a DATA body, each checked: positions grow, records fit their ends.

    Raises:
        RemoteProtocolError: anything malformed (the message says what).
    """
    for _ in range(r.u32("run count")):
        origin, target = r.name("origin"), r.name("target")
        gen, start, released = r.u64("gen"), r.u64("start"), r.u64("released")
        if released > start:
            raise RemoteProtocolError(f"run of {origin}->{target} starts before its release")
        count = r.u32("record count")
        begin = r.position
        end = scan_packed(r.view, begin, count, start)
        packed = PackedRecords(r.raw(end - begin, "records"), count)
        yield Run(origin, target, gen, start, released, packed)


def read_acks(r: BodyReader) -> Iterator[StreamAck]:
    """The entries of an ACK body.

    Raises:
        RemoteProtocolError: anything malformed.
    """
    for _ in range(r.u32("entry count")):
        kind = r.u8("entry kind")
        if kind not in _CONTROLS:
            raise RemoteProtocolError(f"ACK entry of unknown kind {kind}")
        origin, target = r.name("origin"), r.name("target")
        gen, position = r.u64x2("gen and position")
        reason = ""
        if kind == Control.BOUNCED:
            reason = r.raw(r.u16("reason length"), "reason").decode("utf-8", "replace")
        yield StreamAck(Control(kind), origin, target, gen, position, reason)


_CONTROLS: Final = frozenset(int(c) for c in Control)
_NAMES: dict[bytes, str] = {}  # names already validated: a few, seen again and again


def _remember(raw: bytes) -> str:
    if len(_NAMES) > 4096:
        _NAMES.clear()
    name = _NAMES[raw] = raw.decode("ascii")
    return name


def check_u32(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32_MAX:
        raise LocalProtocolError(f"{what} {value!r} is not a u32")
