"""Unit tests for mybus_actors.codec: pure, on bytes and memoryviews, no ring.

Every test runs twice: against `encode` as the package uses it (on the native core, the
C `Encoder` in front of the Python function) and against `encode_python` alone (the
`encoder` fixture); the C `FieldsDecoder` is held against `decode_fields_python` on the
same records, corrupt ones included. A native core that is not built fails here, it is
not skipped.
"""

from __future__ import annotations

import array
import contextlib
import pickle
import struct
import sys
import threading
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mybus_actors import _ringcore, codec
from mybus_actors.codec import (
    Envelope,
    Kind,
    Tag,
    decode,
    decode_message,
    encode,
    peek,
)
from mybus_actors.errors import InvalidAddress, SerializationError

HAS_CORRELATION = 1 << 5
HAS_SENDER = 1 << 6

MESSAGES = {
    "empty-bytes": b"",
    "bytes": b"hello",
    "4MiB-bytes": bytes(range(256)) * (4 * 1024 * 1024 // 256),
    "int": 42,
    "none": None,
    "small-dict": {"i": 1, "v": "x" * 40},
    "nested": {"a": [1, (2, 3), {"b": {4, 5}}], "c": {"d": [b"e", None, 1.5]}},
    "large-list": list(range(100_000)),
    "exception": ValueError("boom"),
}


@pytest.fixture(autouse=True, params=["native", "python"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tests' `encode`: the package's (native in front) or the Python one alone."""
    if request.param == "python":
        monkeypatch.setitem(globals(), "encode", codec.encode_python)
    return str(request.param)


def test_the_package_encodes_with_the_native_encoder(encoder: str) -> None:
    assert isinstance(codec.encode, _ringcore.Encoder)
    assert (encode is codec.encode_python) == (encoder == "python")


class _Reduces:
    """Pickling raises what it was given."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[object, ...]:
        raise self.exc


AGREEING = {
    **MESSAGES,
    "bytearray": bytearray(b"ba"),
    "memoryview": memoryview(b"mv"),
    "bytes-subclass": type("B", (bytes,), {})(b"sub"),
    "lambda": lambda: 1,
    "tuple": (1, "two", 3.0),
}


@pytest.mark.parametrize("name", list(AGREEING))
def test_native_and_python_encoders_agree(name: str) -> None:
    message = AGREEING[name]
    native_meta, native_body = codec.encode(message)
    meta, body = codec.encode_python(message)
    assert native_meta == meta
    assert bytes(native_body) == bytes(body)


ENVELOPES: dict[str, dict[str, object]] = {
    "ask": {"kind": Kind.ASK, "correlation_id": 7},
    "ask-int-kind": {"kind": 1, "correlation_id": 2**64 - 1},
    "reply-from": {"kind": Kind.REPLY, "sender": "_reply-1-1", "correlation_id": 3},
    "error-reply-zero-id": {"kind": Kind.ERROR_REPLY, "correlation_id": 0},
    "user-from": {"kind": Kind.USER, "sender": "node1/actor-7"},
    "user-with-id": {"correlation_id": 9},
    "system": {"kind": Kind.SYSTEM},
    "nothing": {"kind": 0, "sender": None, "correlation_id": 0},
    "bad-kind": {"kind": 9},
    "forward-kind": {"kind": Kind.FORWARD},
    "negative-kind": {"kind": -1},
    "str-kind": {"kind": "1"},
    "negative-id": {"kind": Kind.ASK, "correlation_id": -1},
    "huge-id": {"kind": Kind.ASK, "correlation_id": 2**64},
    "float-id": {"correlation_id": 1.0},
    "non-ascii-sender": {"sender": "\u00e9"},
    "long-sender": {"sender": "x" * 256},
    "int-sender": {"sender": 5},
    "unknown-keyword": {"kind": Kind.ASK, "reply_to": "a"},
}


_VALID_ENVELOPES = (
    "ask", "ask-int-kind", "reply-from", "error-reply-zero-id", "user-from", "user-with-id",
    "system", "nothing",
)  # fmt: skip


def _interrupt() -> None:
    raise KeyboardInterrupt


def _outcome(fn: object, message: object, envelope: dict[str, object]) -> object:
    try:
        meta, body = fn(message, **envelope)  # type: ignore[operator]
    except Exception as exc:
        return type(exc), str(exc)
    return meta, bytes(body)


@pytest.mark.parametrize("envelope", list(ENVELOPES))
@pytest.mark.parametrize("name", list(AGREEING))
def test_native_and_python_encoders_agree_on_envelopes_and_their_errors(
    name: str, envelope: str
) -> None:
    message, env = AGREEING[name], ENVELOPES[envelope]
    assert _outcome(codec.encode, message, env) == _outcome(codec.encode_python, message, env)


def test_the_native_encoder_lets_a_keyboard_interrupt_through() -> None:
    with pytest.raises(KeyboardInterrupt):
        codec.encode(_Reduces(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        codec.encode(_Reduces(KeyboardInterrupt()), kind=Kind.ASK, correlation_id=1)


def test_the_native_encoder_hands_a_refused_pickle_to_cloudpickle() -> None:
    with pytest.raises(SerializationError, match="_Reduces"):
        codec.encode(_Reduces(RuntimeError("no")))


def as_received(body: bytes | bytearray | memoryview) -> memoryview:
    """What a receiver gets: a view of a copy of the body (as if read from the ring)."""
    return memoryview(bytes(body))


def roundtrip(message: object, **envelope: object) -> tuple[int, Envelope, object, object]:
    meta, body = encode(message, **envelope)  # type: ignore[arg-type]
    env, got = decode(meta, as_received(body))
    env_b, got_b = decode(meta, bytes(body))
    assert env_b == env
    fast = decode_message(meta, as_received(body))
    assert type(fast) is type(got)
    return meta, env, got, got_b


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MESSAGES))
@pytest.mark.parametrize("kind", [k for k in Kind if k is not Kind.FORWARD])
@pytest.mark.parametrize("sender", [None, "a", "node1/actor-7"])
@pytest.mark.parametrize("correlation_id", [0, 1, 2**64 - 1])
def test_roundtrip(name: str, kind: Kind, sender: str | None, correlation_id: int) -> None:
    message = MESSAGES[name]
    meta, env, got, got_b = roundtrip(
        message, kind=kind, sender=sender, correlation_id=correlation_id
    )
    if isinstance(message, Exception):
        assert type(got) is type(message) and got.args == message.args
    else:
        assert got == message
        assert got_b == message
    assert env.kind is kind
    assert env.sender == sender
    assert env.correlation_id == correlation_id
    assert env.tag is (Tag.RAW if isinstance(message, bytes) else Tag.PICKLE)
    assert meta < 128


@pytest.mark.parametrize(
    "payload, expected",
    [
        (bytearray(b"abc"), b"abc"),
        (bytearray(), b""),
        (memoryview(b"abcdef"), b"abcdef"),
        (memoryview(b"abcdef")[::2], b"ace"),
        (memoryview(b"abcdef")[::-1], b"fedcba"),
        (memoryview(array.array("i", [1, 2])), array.array("i", [1, 2]).tobytes()),
        (memoryview(array.array("i", [1, 2, 3, 4]))[::2], array.array("i", [1, 3]).tobytes()),
        (memoryview(b"abcdef").cast("B", (2, 3)), b"abcdef"),
        (memoryview(b"ab").cast("c"), b"ab"),
    ],
    ids=lambda v: repr(v)[:30],
)
@pytest.mark.parametrize("envelope", [{}, {"kind": Kind.ASK, "sender": "s", "correlation_id": 9}])
def test_bytes_like_travel_raw_and_arrive_as_bytes(
    payload: bytearray | memoryview, expected: bytes, envelope: dict[str, object]
) -> None:
    meta, body = encode(payload, **envelope)  # type: ignore[arg-type]
    assert (meta >> 3) & 3 == Tag.RAW
    # The ring copies len(body) bytes, so the body must be a flat byte buffer.
    assert memoryview(body).nbytes == len(body)
    assert bytes(body).endswith(expected)
    env, got = decode(meta, as_received(body))
    assert type(got) is bytes and got == expected
    assert env.tag is Tag.RAW
    fast = decode_message(meta, as_received(body))
    assert type(fast) is bytes and fast == expected


def test_fast_path_returns_the_same_bytes_object() -> None:
    message = b"x" * 64
    meta, body = encode(message)
    assert meta == 0
    assert body is message
    assert decode_message(0, body) is message
    assert decode(0, body)[1] is message


def test_contiguous_bytearray_and_memoryview_are_not_copied() -> None:
    buf = bytearray(b"abc")
    assert encode(buf)[1] is buf
    view = memoryview(b"abc")
    assert encode(view)[1] is view


def test_decode_message_copies_a_view_into_bytes() -> None:
    backing = bytearray(b"abc")
    got = decode_message(0, memoryview(backing))
    backing[0] = ord("z")
    assert got == b"abc"


# --- layout ---------------------------------------------------------------------


def test_meta_and_body_layout() -> None:
    meta, body = encode(b"hi", kind=Kind.REPLY, sender="abc", correlation_id=7)
    assert meta == Kind.REPLY | Tag.RAW << 3 | HAS_CORRELATION | HAS_SENDER
    assert bytes(body) == struct.pack("<Q", 7) + b"\x03abc" + b"hi"

    meta, body = encode({"k": 1}, sender="ab")
    assert meta == Tag.PICKLE << 3 | HAS_SENDER
    assert bytes(body) == b"\x02ab" + pickle.dumps({"k": 1}, protocol=5)

    meta, body = encode(b"hi", kind=Kind.SYSTEM)
    assert (meta, bytes(body)) == (Kind.SYSTEM, b"hi")


@pytest.mark.parametrize("kind", [Kind.ASK, Kind.REPLY, Kind.ERROR_REPLY])
def test_correlated_kinds_carry_correlation_zero(kind: Kind) -> None:
    meta, body = encode(b"q", kind=kind)
    assert meta & HAS_CORRELATION
    assert bytes(body) == bytes(8) + b"q"
    env, got = decode(meta, body)
    assert (env.kind, env.correlation_id, got) == (kind, 0, b"q")


def test_user_message_with_correlation_carries_it() -> None:
    meta, body = encode(b"q", correlation_id=5)
    assert meta == HAS_CORRELATION
    assert decode(meta, body)[0].correlation_id == 5


def test_envelope_is_frozen() -> None:
    env = decode(*encode(b"", kind=Kind.ASK, sender="me", correlation_id=3))[0]
    assert env == Envelope(kind=Kind.ASK, sender="me", correlation_id=3, tag=Tag.RAW)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        env.sender = "other"  # type: ignore[misc]


def test_enum_values_are_pinned() -> None:
    assert [(k.name, k.value) for k in Kind] == [
        ("USER", 0),
        ("ASK", 1),
        ("REPLY", 2),
        ("SYSTEM", 3),
        ("ERROR_REPLY", 4),
        ("FORWARD", 5),
    ]
    assert [(t.name, t.value) for t in Tag] == [("RAW", 0), ("PICKLE", 1), ("CLOUDPICKLE", 2)]


# --- pickle and cloudpickle ----------------------------------------------------------


def test_plain_dict_uses_pickle() -> None:
    meta, body = encode({"a": 1})
    env, got = decode(meta, body)
    assert env.tag is Tag.PICKLE
    assert got == {"a": 1}
    assert decode_message(meta, body) == {"a": 1}


def test_lambda_falls_back_to_cloudpickle() -> None:
    meta, body = encode(lambda x: x * 3, kind=Kind.ASK, sender="me", correlation_id=1)
    env, got = decode(meta, as_received(body))
    assert env.tag is Tag.CLOUDPICKLE
    assert callable(got) and got(5) == 15
    fast = decode_message(meta, as_received(body))
    assert callable(fast) and fast(2) == 6


def test_local_class_falls_back_to_cloudpickle() -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x = x
            self.y = y

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

    meta, body = encode(Point(3, -4))
    env, got = decode(meta, as_received(body))
    assert env.tag is Tag.CLOUDPICKLE
    assert got.norm1() == 7  # type: ignore[attr-defined]


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "message, type_name",
    [(threading.Lock(), "_thread.lock"), (_generator(), "generator")],
    ids=["lock", "generator"],
)
@pytest.mark.parametrize("envelope", [{}, {"kind": Kind.ASK, "sender": "s"}])
def test_unpicklable_message_names_its_type(
    message: object, type_name: str, envelope: dict[str, object]
) -> None:
    with pytest.raises(SerializationError) as info:
        encode(message, **envelope)  # type: ignore[arg-type]
    assert f"cannot serialize message of type '{type_name}'" in str(info.value)
    assert info.value.__cause__ is not None


def test_class_not_importable_on_receiver_side() -> None:
    # A pickle naming a module the receiver does not have.
    body = pickle.dumps(object, protocol=5).replace(b"builtins", b"nomodule")
    with pytest.raises(SerializationError, match="PICKLE") as info:
        decode_message(Tag.PICKLE << 3, body)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


# --- invalid input -----------------------------------------------------------------


@pytest.mark.parametrize("sender", ["é", "a" * 256, "ok\u2603"])
@pytest.mark.parametrize("message", [b"x", {"k": 1}])
def test_invalid_sender(sender: str, message: object) -> None:
    with pytest.raises(InvalidAddress):
        encode(message, sender=sender)
    with pytest.raises(InvalidAddress):
        encode(message, kind=Kind.ASK, sender=sender, correlation_id=1)


@pytest.mark.parametrize("sender", [b"bytes", ["list"]])
def test_non_str_sender(sender: object) -> None:
    with pytest.raises(InvalidAddress):
        encode(b"x", sender=sender)  # type: ignore[arg-type]


def test_sender_of_255_ascii_bytes_is_fine() -> None:
    sender = "a" * 255
    env, _ = decode(*encode(b"x", sender=sender))
    assert env.sender == sender


@pytest.mark.parametrize("correlation_id", [-1, 2**64, 2**100])
def test_correlation_out_of_range(correlation_id: int) -> None:
    with pytest.raises(ValueError, match="correlation_id"):
        encode(b"x", correlation_id=correlation_id)
    with pytest.raises(ValueError, match="correlation_id"):
        encode({"k": 1}, kind=Kind.ASK, correlation_id=correlation_id)


@pytest.mark.parametrize("kind", [5, 7, -1, 8])
def test_unknown_kind_on_encode(kind: int) -> None:
    with pytest.raises(ValueError, match="kind"):
        encode(b"x", kind=kind)


@pytest.mark.parametrize(
    "meta",
    [5, 6, 7, Tag.RAW | 3 << 3, 1 << 7, 1 << 8, 1 << 23, -1],
)
def test_unknown_meta_bits_on_decode(meta: int) -> None:
    with pytest.raises(SerializationError, match="meta"):
        decode(meta, b"x" * 300)
    with pytest.raises(SerializationError, match="meta"):
        decode_message(meta, b"x" * 300)


@pytest.mark.parametrize(
    "meta, body",
    [
        (HAS_CORRELATION, b""),
        (HAS_CORRELATION, bytes(7)),
        (HAS_SENDER, b""),
        (HAS_SENDER, b"\x05abc"),
        (HAS_CORRELATION | HAS_SENDER, bytes(8)),
        (HAS_CORRELATION | HAS_SENDER, bytes(8) + b"\x02a"),
        (Tag.PICKLE << 3 | HAS_SENDER, b"\x09abc"),
    ],
)
def test_truncated_prefix(meta: int, body: bytes) -> None:
    with pytest.raises(SerializationError, match="too short"):
        decode(meta, body)
    with pytest.raises(SerializationError, match="too short"):
        decode_message(meta, memoryview(body))


def test_non_ascii_sender_on_decode() -> None:
    with pytest.raises(SerializationError, match="ASCII") as info:
        decode(HAS_SENDER, b"\x01\xffpayload")
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("meta", [Tag.PICKLE << 3, Tag.CLOUDPICKLE << 3])
def test_empty_or_garbage_pickle(meta: int) -> None:
    for body in (b"", b"\x80\x05", b"not a pickle"):
        with pytest.raises(SerializationError) as info:
            decode_message(meta, body)
        assert info.value.__cause__ is not None


# --- fuzz --------------------------------------------------------------------------

_FUZZ_DICT = {"alpha": 1, "beta": [2, 3.5, "gamma"], "delta": (None, True)}
PICKLED = [
    encode(_FUZZ_DICT),
    encode(_FUZZ_DICT, kind=Kind.ASK, sender="node/actor", correlation_id=77),
    encode(_FUZZ_DICT, kind=Kind.SYSTEM, sender="s"),
]


def _decodes_or_serialization_error(meta: int, body: bytes) -> None:
    for fn in (decode, decode_message):
        for received in (body, memoryview(body)):
            with contextlib.suppress(SerializationError):
                fn(meta, received)


@given(
    meta=st.integers(0, 255).filter(lambda m: (m >> 3) & 3 not in (Tag.PICKLE, Tag.CLOUDPICKLE)),
    body=st.binary(max_size=300),
)
def test_fuzz_raw_meta_and_random_body(meta: int, body: bytes) -> None:
    _decodes_or_serialization_error(meta, body)


@given(
    meta=st.integers(0, 255).filter(lambda m: (m >> 3) & 3 in (Tag.PICKLE, Tag.CLOUDPICKLE)),
    body=st.binary(max_size=8),
)
def test_fuzz_pickle_meta_with_short_body(meta: int, body: bytes) -> None:
    # Bodies too short to hold a pickle calling anything.
    _decodes_or_serialization_error(meta, body)


@given(
    which=st.integers(0, len(PICKLED) - 1),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.integers(0, 10_000 * 8), max_size=3),
)
def test_fuzz_truncated_or_bit_flipped_pickle(which: int, cut: int, flips: list[int]) -> None:
    meta, body = PICKLED[which]
    damaged = bytearray(body[: cut % (len(body) + 1)])
    for bit in flips:
        if damaged:
            index = (bit // 8) % len(damaged)
            damaged[index] ^= 1 << (bit % 8)
    _decodes_or_serialization_error(meta, bytes(damaged))


def test_peek_reads_the_header_without_the_payload() -> None:
    meta, body = encode({"k": 1}, kind=Kind.ASK, sender="alpha/_reply-1-0", correlation_id=42)
    assert peek(meta, body) == (Kind.ASK, "alpha/_reply-1-0", 42)
    # A payload that would fail to unpickle is never touched by peek.
    assert peek(meta, body[:-3]) == (Kind.ASK, "alpha/_reply-1-0", 42)


def test_forward_is_not_a_message_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        encode(b"x", kind=Kind.FORWARD)
    with pytest.raises(SerializationError, match="meta"):
        decode(int(Kind.FORWARD), b"x")


# --- decode_fields: the native reader and the Python one ------------------------------


def _fields(fn: object, meta: int, body: object) -> object:
    try:
        kind, sender, corr, message = fn(meta, body)  # type: ignore[operator]
    except SerializationError as exc:
        return SerializationError, str(exc)
    return type(kind), kind, sender, corr, type(message).__name__, repr(message)


def test_the_package_decodes_fields_with_the_native_reader() -> None:
    assert isinstance(codec.decode_fields, _ringcore.FieldsDecoder)


@pytest.mark.parametrize("view", [False, True], ids=["bytes", "memoryview"])
@pytest.mark.parametrize("envelope", [e for e in ENVELOPES if e in _VALID_ENVELOPES])
@pytest.mark.parametrize("name", [n for n in AGREEING if n != "lambda"])
def test_native_and_python_decode_fields_agree(name: str, envelope: str, view: bool) -> None:
    meta, body = codec.encode_python(AGREEING[name], **ENVELOPES[envelope])  # type: ignore[arg-type]
    record: object = as_received(body) if view else bytes(body)
    native = _fields(codec.decode_fields, meta, record)
    assert native == _fields(codec.decode_fields_python, meta, record)
    assert native[0] is Kind


def test_a_raw_body_with_no_prefix_comes_back_as_the_same_bytes() -> None:
    body = b"as it was"
    assert codec.decode_fields(0, body)[3] is body


CORRUPT = {
    "unknown-bit": (0x80, b"x"),
    "forward-kind": (Kind.FORWARD, b"x"),
    "unknown-tag": (3 << 3, b"x"),
    "negative-meta": (-1, b"x"),
    "short-correlation": (HAS_CORRELATION | Kind.ASK, b"1234567"),
    "no-sender-length": (HAS_SENDER, b""),
    "short-sender": (HAS_SENDER, b"\x05abc"),
    "non-ascii-sender": (HAS_SENDER, b"\x02\xc3\xa9"),
    "bad-pickle": (Tag.PICKLE << 3, b"\x80\x05not a pickle"),
    # Past 4 KiB the native reader unpickles through a view instead of a copy.
    "bad-large-pickle": (Tag.PICKLE << 3, b"\x80\x05" + b"\xff" * 8192),
    "truncated-large-pickle": (Tag.PICKLE << 3, pickle.dumps(list(range(5000)), 5)[:-1]),
    "huge-meta": (2**70, b"x"),
}


class _ExitsOnLoad:
    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


CORRUPT["pickle-exits"] = (Tag.PICKLE << 3, pickle.dumps(_ExitsOnLoad(), 5))


@pytest.mark.parametrize("case", list(CORRUPT))
def test_native_and_python_decode_fields_refuse_alike(case: str) -> None:
    meta, body = CORRUPT[case]
    for record in (body, memoryview(body)):
        native = _fields(codec.decode_fields, meta, record)
        assert native[0] is SerializationError
        assert native == _fields(codec.decode_fields_python, meta, record)


def test_a_keyboard_interrupt_while_unpickling_goes_through_the_native_reader() -> None:
    class Interrupts:
        def __reduce__(self) -> tuple[object, ...]:
            return (_interrupt, ())

    body = pickle.dumps(Interrupts(), 5)
    with pytest.raises(KeyboardInterrupt):
        codec.decode_fields(Tag.PICKLE << 3, body)
