"""Blob files as the receiving endpoint reads them: mapped, checked, unlinked; and
`strip_run`, the rest of a relayed run, natively and in Python alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mybus_actors import _ringcore, codec, inbound
from mybus_actors.errors import SerializationError
from mybus_actors.relayed import (
    BLOB,
    BLOB_HEADER,
    INNER_META,
    PREFIX,
    RELAYED,
    Dedup,
    _strip_run,
    map_blob,
    read_blob,
)


def _blob(path: Path, meta: int, message: bytes, *, claim: int | None = None) -> Path:
    total = len(message) if claim is None else claim
    path.write_bytes(BLOB_HEADER.pack(total, meta) + message)
    return path


@pytest.mark.parametrize("reader", [map_blob, read_blob])
def test_a_blob_gives_back_its_meta_and_message_and_is_unlinked(tmp_path: Path, reader) -> None:
    meta, body = codec.encode({"big": b"x" * 300_000}, sender="alpha/a", correlation_id=7)
    path = _blob(tmp_path / "b", meta, body)
    got_meta, got = reader(path)
    assert not path.exists()
    assert got_meta == meta
    assert bytes(got) == body
    assert codec.decode_fields(got_meta, got) == (int(codec.Kind.USER), "alpha/a", 7,
                                                  {"big": b"x" * 300_000})  # fmt: skip


def test_a_mapped_raw_message_decodes_to_bytes_that_outlive_the_mapping(tmp_path: Path) -> None:
    message = os.urandom(1 << 20)
    meta, body = codec.encode(message, sender="alpha/a")
    got_meta, view = map_blob(_blob(tmp_path / "b", meta, body))
    decoded = codec.decode_message(got_meta, view)
    del view  # the mapping goes with its last view
    assert type(decoded) is bytes
    assert decoded == message


@pytest.mark.parametrize("reader", [map_blob, read_blob])
def test_an_empty_message_is_a_blob_too(tmp_path: Path, reader) -> None:
    meta, got = reader(_blob(tmp_path / "b", 0, b""))
    assert (meta, bytes(got)) == (0, b"")


@pytest.mark.parametrize("reader", [map_blob, read_blob])
@pytest.mark.parametrize("claim", [10, 2_000])
def test_a_blob_that_holds_other_than_it_says_is_refused(tmp_path: Path, reader, claim) -> None:
    path = _blob(tmp_path / "b", 0, b"y" * 1_000, claim=claim)
    with pytest.raises(SerializationError, match="holds"):
        reader(path)
    assert not path.exists()


@pytest.mark.parametrize("reader", [map_blob, read_blob])
def test_a_missing_or_headless_blob_is_refused(tmp_path: Path, reader) -> None:
    with pytest.raises(SerializationError, match="cannot read"):
        reader(tmp_path / "gone")
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(SerializationError, match="no header"):
        reader(tmp_path / "short")


# -- strip_run: the rest of a relayed run, natively and in Python ------------------------


def _relayed(
    stream: int, position: int, body: bytes, meta: int = 0x48, blob: bool = False
) -> tuple[int, bytes]:
    bits = RELAYED | (BLOB if blob else 0)
    return meta | bits, PREFIX.pack(stream, position) + body


_RUNS = [_strip_run, _ringcore.strip_run]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["relayed", "blob", "plain", "short"]),
            st.integers(1, 3),  # stream
            st.integers(0, 12),  # position
            st.binary(max_size=40),
        ),
        max_size=30,
    ),
    st.integers(0, 5),
    st.integers(1, 3),
    st.integers(-1, 6),
)
def test_native_and_python_strip_the_same_run(
    spec: list[tuple[str, int, int, bytes]], index: int, stream: int, last: int
) -> None:
    items: list[tuple[int, bytes]] = []
    for what, s, pos, body in spec:
        if what == "plain":
            items.append((0x48, body))
        elif what == "short":
            items.append((0x48 | RELAYED, body[:15]))
        else:
            items.append(_relayed(s, pos, body, blob=what == "blob"))
    last = last % (1 << 64)  # an unsigned position, as PREFIX holds it
    results = []
    for run in _RUNS:
        out: list[tuple[int, Any]] = [("before", b"")]  # appended to, not replaced
        results.append((run(items, index, stream, last, out), out))
    assert results[0] == results[1]
    (end, new_last), out = results[0]
    taken = items[index:end]
    assert [o[1] for o in out[1:]] == [payload[PREFIX.size :] for _, payload in taken]
    assert all(o[0] == meta & INNER_META for o, (meta, _) in zip(out[1:], taken, strict=True))
    assert new_last == (PREFIX.unpack_from(taken[-1][1])[1] if taken else last)
    if end < len(items):  # it stopped on a record that does not go on the run
        meta, payload = items[end]
        goes_on = (
            meta & (RELAYED | BLOB) == RELAYED
            and len(payload) >= PREFIX.size
            and PREFIX.unpack_from(payload)[0] == stream
            and PREFIX.unpack_from(payload)[1] > new_last
        )
        assert not goes_on


def test_the_native_run_stops_at_what_is_not_bytes_and_python_reads_on() -> None:
    items: list[tuple[int, Any]] = [
        _relayed(1, 1, b"a"),
        (_relayed(1, 2, b"b")[0], memoryview(_relayed(1, 2, b"b")[1])),
        _relayed(1, 3, b"c"),
    ]
    out: list[tuple[int, Any]] = []
    assert _ringcore.strip_run(items, 0, 1, 0, out) == (1, 1)
    assert out == [(0x48, b"a")]
    out = []
    assert _strip_run(items, 0, 1, 0, out) == (3, 3)
    assert [bytes(p) for _, p in out] == [b"a", b"b", b"c"]


class _Receiver:
    """What `Inbound._unrelay` reads of its endpoint: the dedup table, a counter."""

    def __init__(self) -> None:
        self._relayed = Dedup()
        self.undelivered = 0


@pytest.mark.parametrize("run", _RUNS, ids=["python", "native"])
def test_a_receiver_drops_what_a_restarted_gateway_relays_again(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Inbound._unrelay` on a batch as a gateway may write it after a restart: a run,
    part of it again (dropped), another stream, the first going on, a local record."""
    monkeypatch.setattr(inbound, "strip_run", run)
    batch = [_relayed(7, p, b"m%d" % p) for p in (1, 2, 3)]
    batch += [_relayed(7, p, b"again") for p in (2, 3)]
    batch += [_relayed(9, 1, b"other"), _relayed(7, 4, b"m4"), (0x48, b"plain")]
    receiver = _Receiver()
    got = inbound.Inbound._unrelay(receiver, batch)  # type: ignore[arg-type]
    assert got == [(0x48, b"m1"), (0x48, b"m2"), (0x48, b"m3"), (0x48, b"other"),
                   (0x48, b"m4"), (0x48, b"plain")]  # fmt: skip
    assert receiver._relayed.duplicates == 2
    # The table learnt each run's end: the whole batch again is all duplicates.
    assert inbound.Inbound._unrelay(receiver, batch) == [(0x48, b"plain")]  # type: ignore[arg-type]
