"""Message envelopes: the `meta` integer and the body of one ring record.

Guarantees: `decode(*encode(m, ...))` gives back `m` (bytes-like payloads come back as
`bytes`) with its kind, sender and correlation id; a message that cannot be serialized or
a body that cannot be decoded raises `SerializationError` (chained), never anything else:
not even a payload whose unpickling raises `SystemExit` or `GeneratorExit`. Only a
`KeyboardInterrupt` in the main thread passes (that is the user's Ctrl-C, which must
not be swallowed); see `contained`.
A plain-bytes USER message with no sender and no correlation id is passed through with
meta 0 and no copy. RAW payloads are never copied by `encode`: the caller must not mutate
a bytearray or memoryview until the transport has copied it into the ring.

This module knows envelopes and payload serialization; it does not know rings, sockets,
processes or what an address means beyond "at most 255 ASCII bytes".

Layout of `meta` (the ring offers 24 bits; this module uses 7 and rejects any other):

    bits 0-2  kind               (`Kind`)
    bits 3-4  tag                (`Tag`: how the payload is serialized)
    bit  5    has_correlation    (set for ASK/REPLY/ERROR_REPLY, or any non-zero id)
    bit  6    has_sender

Layout of the body, in order, each part present only when its bit says so:

    [8-byte little-endian unsigned correlation id][1-byte length + ASCII sender][payload]
"""

from __future__ import annotations

import enum
import functools
import pickle
import struct
import threading
from typing import Final, NoReturn, Protocol

import attrs
import cloudpickle

from mybus_actors import ringcore
from mybus_actors.errors import InvalidAddress, SerializationError

__all__ = [
    "HAS_CORRELATION",
    "HAS_SENDER",
    "Buffer",
    "DecodeFields",
    "Encode",
    "Envelope",
    "Kind",
    "Tag",
    "contained",
    "decode",
    "decode_fields",
    "decode_fields_python",
    "decode_message",
    "encode",
    "encode_python",
    "peek",
    "sender_bytes",
]

Buffer = bytes | bytearray | memoryview


class Kind(enum.IntEnum):
    """What a message is for; bits 0-2 of `meta`."""

    USER = 0
    ASK = 1
    REPLY = 2
    SYSTEM = 3
    ERROR_REPLY = 4  # a reply carrying a failure
    FORWARD = 5  # for the gateway: a record for another node (see routing.py)


class Tag(enum.IntEnum):
    """How the payload is serialized; bits 3-4 of `meta`."""

    RAW = 0  # bytes-like, travels as is; the receiver gets `bytes`
    PICKLE = 1  # stdlib pickle, protocol 5
    CLOUDPICKLE = 2  # only for what plain pickle refuses (lambdas, local classes)


@attrs.frozen
class Envelope:
    """What `decode` tells about a record besides the message itself."""

    kind: Kind
    sender: str | None
    correlation_id: int
    tag: Tag


_TAG_SHIFT: Final = 3
_PICKLE_BITS: Final = Tag.PICKLE.value << _TAG_SHIFT
_CLOUDPICKLE_BITS: Final = Tag.CLOUDPICKLE.value << _TAG_SHIFT
_HAS_CORRELATION: Final = 1 << 5
_HAS_SENDER: Final = 1 << 6
# Public for the relay, which reads the sender of a record without decoding it: with
# HAS_SENDER the body begins (after 8 bytes of correlation id with HAS_CORRELATION)
# with the sender address, a length byte then ASCII (`sender_bytes`).
HAS_CORRELATION: Final = _HAS_CORRELATION
HAS_SENDER: Final = _HAS_SENDER
_KNOWN_BITS: Final = 0x7F
_PROTOCOL: Final = 5
_MAX_SENDER: Final = 255
# FORWARD wraps a whole record for the gateway (routing.py); it is not a message kind.
_KIND_VALUES: Final = frozenset(int(k) for k in Kind if k is not Kind.FORWARD)
_CORRELATED_KINDS: Final = frozenset((Kind.ASK.value, Kind.REPLY.value, Kind.ERROR_REPLY.value))
# Indexed by the 3 kind bits / 2 tag bits; None marks values no sender writes.
_KINDS: Final[tuple[Kind | None, ...]] = tuple(
    Kind(k) if k in _KIND_VALUES else None for k in range(8)
)
_TAGS: Final[tuple[Tag | None, ...]] = (*Tag, None)

_U64: Final = struct.Struct("<Q")
_pack_u64 = _U64.pack
_unpack_u64_from = _U64.unpack_from
_dumps = pickle.dumps
_loads = pickle.loads


def contained(exc: BaseException) -> bool:
    """Whether an exception raised while unpickling is the payload's fault, to report.

    Unpickling runs code the sender chose (``__reduce__``): it may raise anything,
    ``SystemExit`` included, and that must not end the receiving process. A
    `KeyboardInterrupt` in the main thread is the exception: it may be a real Ctrl-C.
    """
    return not (
        isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()
    )


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=4096)
def _sender_prefix(sender: str) -> bytes:
    # Memoized: a process sends from few addresses, and encoding/checking costs more
    # than the cache lookup. Exceptions are not cached.
    if not isinstance(sender, str):
        raise InvalidAddress(f"sender address must be a str, got {_type_name(sender)!r}")
    try:
        raw = sender.encode("ascii")
    except UnicodeEncodeError as exc:
        raise InvalidAddress(f"sender address {sender!r} is not ASCII") from exc
    if len(raw) > _MAX_SENDER:
        raise InvalidAddress(
            f"sender address {sender[:40]!r}... is {len(raw)} bytes long, "
            f"at most {_MAX_SENDER} allowed"
        )
    return bytes((len(raw),)) + raw


def _flat(view: memoryview) -> bytes | memoryview:
    # The ring copies `len(body)` bytes, so the body must be a 1-D unsigned-byte buffer.
    if view.c_contiguous:
        if view.ndim == 1 and view.format == "B":
            return view
        return view.cast("B")
    return view.tobytes()


def _cloudpickle(message: object) -> bytes:
    # Called from the `except` of the plain-pickle attempt, so that failure stays
    # visible as the __context__ of the cloudpickle one.
    try:
        data: bytes = cloudpickle.dumps(message, protocol=_PROTOCOL)
    except Exception as exc:  # cloudpickle raises many types (TypeError, PicklingError...)
        raise SerializationError(
            f"cannot serialize message of type {_type_name(message)!r}: {exc}"
        ) from exc
    return data


def encode_python(
    message: object,
    *,
    kind: int = Kind.USER,
    sender: str | None = None,
    correlation_id: int = 0,
) -> tuple[int, Buffer]:
    """Turn a message and its envelope into a ring record's `(meta, body)`.

    `bytes`, `bytearray` and `memoryview` travel as RAW, without a copy unless a prefix is
    needed (a non-contiguous or multi-byte-item memoryview is flattened first). Anything
    else is pickled (protocol 5), or cloudpickled if plain pickle refuses it.

    Args:
        message: The payload.
        kind: A `Kind` value.
        sender: The sender's address (at most 255 ASCII bytes), or None.
        correlation_id: Unsigned 64-bit id pairing an ask with its reply; always carried
            for ASK, REPLY and ERROR_REPLY, otherwise only when non-zero.

    Returns:
        `(meta, body)`; meta fits in 7 bits.

    Raises:
        SerializationError: Neither pickle nor cloudpickle can serialize `message`.
        InvalidAddress: `sender` is not ASCII or longer than 255 bytes.
        ValueError: `kind` is not a `Kind` or `correlation_id` does not fit in a u64.
    """
    payload: Buffer
    if type(message) is bytes:
        if not kind and sender is None and not correlation_id:
            return 0, message
        meta, payload = 0, message
    elif type(message) is bytearray:
        meta, payload = 0, message
    elif type(message) is memoryview:
        meta, payload = 0, _flat(message)
    else:
        try:
            meta, payload = _PICKLE_BITS, _dumps(message, _PROTOCOL)
        except Exception:
            meta, payload = _CLOUDPICKLE_BITS, _cloudpickle(message)
    if not kind and sender is None and not correlation_id:
        return meta, payload
    if kind not in _KIND_VALUES:
        raise ValueError(f"kind must be a message Kind value (0-4), got {kind!r}")
    meta |= kind
    if correlation_id or kind in _CORRELATED_KINDS:
        try:
            corr = _pack_u64(correlation_id)
        except struct.error as exc:
            raise ValueError(
                f"correlation_id must be an int in [0, 2**64), got {correlation_id!r}"
            ) from exc
        if sender is None:
            return meta | _HAS_CORRELATION, corr + payload
        return (
            meta | _HAS_CORRELATION | _HAS_SENDER,
            b"".join((corr, _checked_prefix(sender), payload)),
        )
    if sender is None:
        return meta, payload
    return meta | _HAS_SENDER, _checked_prefix(sender) + payload


class Encode(Protocol):
    """`encode`'s signature."""

    def __call__(
        self,
        message: object,
        *,
        kind: int = Kind.USER,
        sender: str | None = None,
        correlation_id: int = 0,
    ) -> tuple[int, Buffer]: ...


# `encode_python`, or on the native core its common calls (one message, with or without
# an envelope given by keyword) in C, with everything else handed to `encode_python`:
# the same results, a Python frame and a few checks less per message.
encode: Encode = encode_python
if ringcore.NATIVE is not None:
    encode = ringcore.NATIVE.Encoder(
        encode_python, _dumps, _PROTOCOL, _PICKLE_BITS,
        prefix=_sender_prefix,  # memoized; the C side hands it only a str
        has_correlation=_HAS_CORRELATION,
        has_sender=_HAS_SENDER,
        kinds=sum(1 << k for k in _KIND_VALUES),
        correlated=sum(1 << k for k in _CORRELATED_KINDS),
    )  # fmt: skip


def _checked_prefix(sender: str) -> bytes:
    try:
        return _sender_prefix(sender)
    except TypeError as exc:  # unhashable, so not a str either
        raise InvalidAddress(f"sender address must be a str, got {_type_name(sender)!r}") from exc


def _load_error(tag: int, payload: Buffer, exc: BaseException) -> SerializationError:
    return SerializationError(
        f"cannot deserialize {Tag(tag).name} payload of {len(payload)} bytes: "
        f"{type(exc).__name__}: {exc}"
    )


def _load(tag: int, payload: Buffer) -> object:
    if tag == 0:
        return payload if type(payload) is bytes else bytes(payload)
    try:
        # Cloudpickle output is plain pickle data that imports cloudpickle helpers.
        return _loads(payload)
    except BaseException as exc:  # corrupt or hostile data raises any type: see contained
        if not contained(exc):
            raise
        raise _load_error(tag, payload, exc) from exc


def _parse(meta: int, body: Buffer) -> tuple[Kind, Tag, str | None, int, Buffer]:
    kind = _KINDS[meta & 7]
    tag = _TAGS[(meta >> _TAG_SHIFT) & 3]
    if kind is None or tag is None or meta & ~_KNOWN_BITS:
        raise SerializationError(f"record meta {meta:#x} has unknown kind, tag or flag bits")
    pos = 0
    correlation_id = 0
    sender = None
    size = len(body)
    if meta & _HAS_CORRELATION:
        if size < 8:
            raise SerializationError(
                f"record of {size} bytes is too short for its 8-byte correlation id"
            )
        correlation_id = _unpack_u64_from(body)[0]
        pos = 8
    if meta & _HAS_SENDER:
        end = pos + 1 + body[pos] if pos < size else pos + 1
        if end > size:
            raise SerializationError(f"record of {size} bytes is too short for its sender")
        try:
            sender = str(body[pos + 1 : end], "ascii")
        except UnicodeDecodeError as exc:
            raise SerializationError("record's sender address is not ASCII") from exc
        pos = end
    return kind, tag, sender, correlation_id, (body[pos:] if pos else body)


def decode_message(meta: int, body: Buffer) -> object:
    """Return only the message of a ring record: the dispatcher's fast path.

    Args:
        meta: The record's meta, as written by `encode`.
        body: The record's body (a memoryview into the ring is fine; it is not kept).

    Returns:
        The message; RAW payloads come back as `bytes`.

    Raises:
        SerializationError: Unknown meta bits, a truncated prefix, or a payload that
            cannot be unpickled here (corrupt, or its class is not importable).
    """
    if not meta:
        return body if type(body) is bytes else bytes(body)
    if meta == _PICKLE_BITS:
        try:
            return _loads(body)
        except BaseException as exc:
            if not contained(exc):
                raise
            raise _load_error(meta >> _TAG_SHIFT, body, exc) from exc
    _, tag, _, _, payload = _parse(meta, body)
    return _load(tag, payload)


def decode_fields_python(meta: int, body: Buffer) -> tuple[int, str | None, int, object]:
    """Return (kind, sender, correlation id, message): `decode` without the Envelope.

    For hot paths (replies, asks), where building the value object costs more than
    the rest of the decode.

    Raises:
        SerializationError: as `decode`.
    """
    kind, tag, sender, correlation_id, payload = _parse(meta, body)
    return kind, sender, correlation_id, _load(tag, payload)


def _load_failed(tag: int, payload: Buffer, exc: BaseException) -> NoReturn:
    """What the native decode_fields calls when unpickling raised: `_load`'s handling."""
    if not contained(exc):
        raise exc
    raise _load_error(tag, payload, exc) from exc


class DecodeFields(Protocol):
    """`decode_fields`'s signature."""

    def __call__(self, meta: int, body: Buffer) -> tuple[int, str | None, int, object]: ...


# `decode_fields_python`, or on the native core the same in C for every record it can
# read cleanly (what it cannot, the Python function reads, and raises for).
decode_fields: DecodeFields = decode_fields_python
if ringcore.NATIVE is not None:
    decode_fields = ringcore.NATIVE.FieldsDecoder(
        decode_fields_python, _loads, _load_failed, _KINDS,
        pickle_tags=(1 << Tag.PICKLE) | (1 << Tag.CLOUDPICKLE),
        has_correlation=_HAS_CORRELATION,
        has_sender=_HAS_SENDER,
    )  # fmt: skip


def decode(meta: int, body: Buffer) -> tuple[Envelope, object]:
    """Return the envelope and the message of a ring record.

    Args:
        meta: The record's meta, as written by `encode`.
        body: The record's body (a memoryview into the ring is fine; it is not kept).

    Returns:
        `(envelope, message)`; RAW payloads come back as `bytes`.

    Raises:
        SerializationError: Unknown meta bits, a truncated prefix, a non-ASCII sender, or
            a payload that cannot be unpickled here.
    """
    kind, tag, sender, correlation_id, payload = _parse(meta, body)
    return Envelope(kind, sender, correlation_id, tag), _load(tag, payload)


# -- for the gateway: envelopes handled without touching (or unpickling) the payload ------


def peek(meta: int, body: Buffer) -> tuple[int, str | None, int]:
    """Return (kind, sender, correlation id) of a record; the payload is not decoded.

    Raises:
        SerializationError: unknown meta bits or a truncated prefix.
    """
    kind, _, sender, correlation_id, _ = _parse(meta, body)
    return kind, sender, correlation_id


def sender_bytes(meta: int, body: Buffer) -> bytes | None:
    """The sender address of a record as raw ASCII bytes, or None when it names none.

    The gateway's per-message check of who a remote record claims to come from: no
    object beyond the bytes, nothing of the payload touched.

    Raises:
        SerializationError: the prefix runs past the end of the body.
    """
    if not meta & _HAS_SENDER:
        return None
    pos = 8 if meta & _HAS_CORRELATION else 0
    size = len(body)
    end = pos + 1 + body[pos] if pos < size else size + 1
    if end > size:
        raise SerializationError(f"record of {size} bytes is too short for its sender")
    return bytes(body[pos + 1 : end])
