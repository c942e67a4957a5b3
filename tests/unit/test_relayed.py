"""Blob files as the receiving endpoint reads them: mapped, checked, unlinked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mybus_actors import codec
from mybus_actors.errors import SerializationError
from mybus_actors.relayed import BLOB_HEADER, map_blob, read_blob


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
