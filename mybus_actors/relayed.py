"""What a gateway adds to a record it writes into a local ring: where it came from.

A gateway writes remote messages (and dead letters it makes for local senders) into its
rings to local actors with a *relay prefix*: the identity of the stream the message came
by and the message's position in it. The receiving endpoint strips the prefix and drops
a message whose position it has already seen on that stream: after a gateway restarts,
its successor may deliver again what it delivered before it died (the acknowledgement
that would have stopped the resend died with it), and the receiver, which outlives the
gateway, is where that knowledge survives.

A large message comes as a *blob*: the gateway assembles it in a file under ``blobs/``
(so the part received survives the gateway's death, and a restarted gateway goes on
where its predecessor stopped) and delivers a short record naming the file; the
receiving endpoint reads the file and unlinks it.

Knows the prefix layout, blob files and the dedup table; not rings, sockets or actors.

Prefix: stream id u64 (a hash of the stream's identity: node, origin, target, ring
generation), position u64; then the payload, or, with `BLOB`, the blob's file name
(ASCII). Sixteen bytes read with one `struct` call: the prefix is on every remote
message's path. Blob file: total u64, meta u32, 4 zero bytes, then the message.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

from mybus_actors import ringcore
from mybus_actors.errors import SerializationError

__all__ = [
    "BLOB",
    "BLOB_HEADER",
    "INNER_META",
    "PREFIX",
    "RELAYED",
    "Dedup",
    "blob_name",
    "dead_letter_id",
    "map_blob",
    "read_blob",
    "stream_id",
    "strip_run",
    "unwrap",
]

RELAYED: Final = 1 << 23  # meta bit: the payload begins with a relay prefix
BLOB: Final = 1 << 22  # with RELAYED: what follows the prefix names a blob file
INNER_META: Final = BLOB - 1  # the message's own meta bits
BLOB_HEADER: Final = struct.Struct("<QI4x")
PREFIX: Final = struct.Struct("<QQ")  # stream id, position
_DEDUP_SIZE: Final = 1 << 16  # streams remembered per endpoint (least recently used go)


def _strip_run(
    items: Any, index: int, stream: int, last: int, out: list[tuple[int, Any]]
) -> tuple[int, int]:
    """`strip_run` in Python (the reference; the native core has its own)."""
    n = len(items)
    while index < n:
        meta, payload = items[index]
        if meta & (RELAYED | BLOB) != RELAYED or len(payload) < PREFIX.size:
            break
        key, position = PREFIX.unpack_from(payload)
        if key != stream or position <= last:
            break
        out.append((meta & INNER_META, payload[PREFIX.size :]))
        last = position
        index += 1
    return index, last


_NATIVE = ringcore.NATIVE
strip_run = _NATIVE.strip_run if _NATIVE is not None else _strip_run
"""strip_run(items, index, stream, last, out) -> (index, last): append to ``out`` the
(meta, payload) records of ``items`` from ``index`` on that go on a run of ``stream``
past position ``last`` (relayed, not blobs, of that stream, positions rising), each as
(its own meta, its payload without the prefix); return the index of the first that does
not and the run's last position. A receiver strips a batch from one gateway with it: the
first record of a run is checked against its dedup table, the rest of the run follows."""


def _id(text: str) -> int:
    # 64 bits of BLAKE2b: two streams sharing an id by chance is a 2**-64 event per pair.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def stream_id(node: str, origin: str, target: str, gen: int) -> int:
    """The id of the stream from ``origin`` on ``node`` to local ``target``."""
    return _id(f"{node}/{origin}>{target}.{gen:x}")


def dead_letter_id(node: str, target: str, origin: str, gen: int) -> int:
    """The id of the dead letters made for ``origin`` from its ring to ``node/target``
    (a stream of their own: they never mix with deliveries)."""
    return _id(f"dl/{node}/{target}<{origin}.{gen:x}")


def blob_name(node: str, origin: str, target: str, gen: int, first_end: int) -> str:
    """The file a large message of a stream is assembled in (one per message)."""
    return f"{node}@{origin}~{target}.{gen:x}.{first_end:x}"


def unwrap(meta: int, data: bytes) -> tuple[int, int, int, bytes]:
    """(stream id, position, the message's meta, what follows the prefix) of a relayed
    record (the gateway writes it as ``PREFIX.pack(stream, position) + body``, its meta
    with `RELAYED`, and `BLOB` when ``body`` is a blob's file name).

    Raises:
        SerializationError: a record shorter than the prefix.
    """
    if len(data) < PREFIX.size:
        raise SerializationError("relayed record shorter than its prefix")
    stream, position = PREFIX.unpack_from(data)
    return stream, position, meta & INNER_META, data[PREFIX.size :]


def read_blob(path: Path) -> tuple[int, bytes]:
    """(meta, message) of a complete blob file, which is then unlinked.

    Raises:
        SerializationError: the file is missing, short, or longer than it says.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(BLOB_HEADER.size)
            if len(head) != BLOB_HEADER.size:
                raise SerializationError(f"blob {path.name} has no header")
            total, meta = BLOB_HEADER.unpack(head)
            data = f.read(total + 1)
    except OSError as exc:
        raise SerializationError(f"cannot read blob {path.name}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if len(data) != total:
        raise SerializationError(f"blob {path.name} holds {len(data)} of {total} bytes")
    return int(meta), data


def map_blob(path: Path) -> tuple[int, memoryview]:
    """(meta, message) of a complete blob file, mapped rather than read; the file is
    unlinked at once, its pages freed when the last view of the message goes.

    The receiving endpoint's path: a read copies the whole message into a new bytes
    object, and the decoder would copy it again to cut the envelope off; a view costs
    neither, and a raw payload is copied once, into the bytes the actor gets. Nobody
    else writes the file any more (the gateway closed it before delivering its name,
    and no one can open it once unlinked), so the mapping cannot lose pages under us.

    Raises:
        SerializationError: the file is missing, short, or longer than it says.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SerializationError(f"cannot read blob {path.name}: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, BLOB_HEADER.size, 0)
        if len(head) != BLOB_HEADER.size:
            raise SerializationError(f"blob {path.name} has no header")
        total, meta = BLOB_HEADER.unpack(head)
        if size != BLOB_HEADER.size + total:
            raise SerializationError(f"blob {path.name} holds {size - 16} of {total} bytes")
        if total == 0:
            return int(meta), memoryview(b"")
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except OSError as exc:
        raise SerializationError(f"cannot read blob {path.name}: {exc}") from exc
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return int(meta), memoryview(mapped)[BLOB_HEADER.size :]


class Dedup:
    """Per stream key, the last position taken: a record at or before it is a duplicate."""

    def __init__(self, size: int = _DEDUP_SIZE) -> None:
        self._last: OrderedDict[int, int] = OrderedDict()
        self._size = size
        self.duplicates = 0

    def fresh(self, key: int, position: int) -> bool:
        """Whether a record at ``position`` on ``key`` is new; if so, it is taken."""
        last = self._last.get(key)
        if last is not None:
            if position - last <= 0:
                self.duplicates += 1
                return False
            self._last.move_to_end(key)
        elif len(self._last) >= self._size:
            self._last.popitem(last=False)
        self._last[key] = position
        return True

    def seen(self, key: int, position: int) -> None:
        """Record that ``key`` was taken up to ``position`` (past what `fresh` took last:
        the records in between were checked by the caller against that)."""
        self._last[key] = position
