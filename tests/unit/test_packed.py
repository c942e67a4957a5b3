"""Records packed as a run carries them: the pure and the native scan agree on every
input, good or bad (the same offset, or the same error), and unpacking gives the records
back; `PackedRecords` reads as the tuple of its records."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mybus_actors import _ringcore, items
from mybus_actors.errors import RemoteProtocolError
from mybus_actors.items import PackedRecords, Record

SCANS = {"python": items._scan_packed, "native": _ringcore.scan_packed}
UNPACKS = {"python": items._unpack_packed, "native": _ringcore.unpack_packed}


def pack(records: list[Record]) -> bytes:
    return b"".join(struct.pack("<QQ", end, h) + p for end, h, p in records)


def chain(start: int, payloads: list[tuple[int, bytes]]) -> list[Record]:
    """Records as a ring would have them: each end past the one before by its size."""
    out: list[Record] = []
    pos = start
    for rtype, payload in payloads:
        pos += 8 + (len(payload) + 7) // 8 * 8
        out.append((pos, len(payload) | rtype << 32 | 5 << 40, payload))
    return out


def outcome(scan: object, data: bytes, offset: int, count: int, start: int) -> object:
    try:
        return scan(data, offset, count, start)  # type: ignore[operator]
    except RemoteProtocolError as exc:
        return ("error", str(exc))


@given(
    st.integers(0, 1 << 40),
    st.lists(st.tuples(st.integers(1, 4), st.binary(max_size=40)), max_size=6),
    st.data(),
)
def test_both_scans_agree_on_good_and_spoilt_records(
    start: int, payloads: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    records = chain(start, payloads)
    body = bytearray(b"\xee" * 3 + pack(records))
    if body and data.draw(st.booleans()):  # spoil it: a flipped byte, or cut short
        if data.draw(st.booleans()):
            body[data.draw(st.integers(0, len(body) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        else:
            del body[data.draw(st.integers(0, len(body) - 1)) :]
    count = data.draw(st.integers(0, len(records) + 1))
    python, native = (outcome(SCANS[k], bytes(body), 3, count, start) for k in sorted(SCANS))
    assert native == python
    if not isinstance(python, tuple) and count <= len(records):
        assert UNPACKS["native"](bytes(body), 3, count) == UNPACKS["python"](bytes(body), 3, count)


@pytest.mark.parametrize("core", sorted(SCANS))
def test_scan_finds_each_kind_of_fault(core: str) -> None:
    scan = SCANS[core]
    good = chain(100, [(1, b"abc"), (2, b"x" * 20)])
    assert scan(pack(good), 0, 2, 100) == len(pack(good))
    with pytest.raises(RemoteProtocolError, match="record of type 6 in a run"):
        scan(pack([(120, 3 | 6 << 32, b"abc")]), 0, 1, 100)
    with pytest.raises(RemoteProtocolError, match="record ending at 105 does not fit after 100"):
        scan(pack([(105, 3 | 1 << 32, b"abc")]), 0, 1, 100)
    with pytest.raises(RemoteProtocolError, match="record payload needs 3 bytes, 2 left"):
        scan(pack(good)[:-len(pack(good)) + 16 + 2], 0, 1, 100)
    with pytest.raises(RemoteProtocolError, match="record end and header needs 16 bytes"):
        scan(pack(good), 0, 3, 100)


def test_packed_records_read_as_their_tuple() -> None:
    records = chain(0, [(1, b"one"), (1, b""), (4, b"three")])
    packed = PackedRecords(pack(records), 3)
    assert packed == tuple(records) and len(packed) == 3 and packed[1] == records[1]
    assert list(packed) == records and packed.payload_bytes == 8
    first = 16 + 3
    assert packed.records(first, 1) == tuple(records[1:])
    assert packed == PackedRecords(pack(records), 3) and packed != PackedRecords(b"", 0)
