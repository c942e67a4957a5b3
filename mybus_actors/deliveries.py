"""The receiving half of a gateway: runs from other nodes into local rings.

Each record of a remote stream is checked (its sender must be on the peer's node; no
remote may address ``gateway`` or the runtime's ``_`` names, answers to asks and clients'
mailboxes excepted), then written into the gateway's ring to the target with a relay
prefix (`relayed`): the stream and the record's position, by which the receiving
endpoint drops one it already has. A stream is acknowledged (DONE) only up to what is
in a local ring (or, for a large message, in its blob file): a gateway that dies has
acknowledged nothing it could lose, and the sender sends the rest again.

A full target is "not yet" for its streams only: their records wait here, in order, and
go in as the target reads; the sender's window bounds what waits per stream and
``max_buffer`` what waits in all (beyond it records are dropped and asked for again,
REWIND, once there is room). A large message is assembled in a file under ``blobs/``
and delivered, complete, as one record naming the file: the part received survives the
gateway, and a restarted gateway continues the file where the sender's ring stands.

A record that cannot be delivered is BOUNCED back to the sending gateway (which still
holds it, and makes the dead letter there); one this gateway delivered to an actor that
then died unread comes back from its ring (`salvaged`) and goes to its sender as a dead
letter through the outbox. Knows rings (through the endpoint), blob files and streams;
not sockets or links.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from mybus_actors import codec
from mybus_actors.codec import Kind
from mybus_actors.deadletter import notice_for
from mybus_actors.errors import (
    ActorNotFound,
    InvalidAddress,
    MailboxClosed,
    RemoteProtocolError,
    ResourceExhausted,
    RingCorrupted,
    SerializationError,
)
from mybus_actors.items import (
    LAST,
    WHOLE,
    Control,
    PackedRecords,
    Record,
    Run,
    StreamAck,
    fragment_identity,
    record_type,
)
from mybus_actors.link import InStream
from mybus_actors.mailbox import Endpoint
from mybus_actors.pressure import OnceLog
from mybus_actors.registry import FORWARD_TO, forward_name
from mybus_actors.relayed import (
    BLOB,
    BLOB_HEADER,
    PREFIX,
    RELAYED,
    blob_name,
    read_blob,
    stream_id,
    unwrap,
)

__all__ = ["DEFAULT_MAX_BUFFER", "Deliveries", "may_address"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_BUFFER: Final = 64 << 20
_ACK_BYTES: Final = 32 << 10  # delivered and not acknowledged: acknowledge now

StreamId = tuple[str, str, str, int]  # peer node, origin, target, gen


class _Blob(NamedTuple):
    """A large message complete in its file, its record not yet in the target's ring."""

    end: int
    meta: int
    name: str


_Waiting = Record | _Blob


def may_address(to: str, kind: int, origin: bytes, peer: bytes) -> bool:
    """Whether a message from another node may be delivered to ``to`` here.

    ``gateway`` takes nothing; the runtime's own ``_`` names take only answers to asks,
    except a client's mailbox (``_client-...``), which takes what an actor's does: tells,
    and the peer gateway's dead-letter notices (``peer`` is ``b"node/"``).
    """
    if to == FORWARD_TO:
        return False
    if not to.startswith("_"):
        return True
    if kind in (Kind.REPLY, Kind.ERROR_REPLY):
        return True
    if to.startswith("_client-"):
        return kind == Kind.USER or (kind == Kind.SYSTEM and origin == peer + b"gateway")
    return False


class Deliveries:
    """Every stream this gateway receives, from every peer.

    ``refused(peer, kind, detail)`` is told of each message refused (to count and log).
    """

    def __init__(
        self,
        node: str,
        endpoint: Endpoint,
        blobs_dir: Path,
        *,
        refused: Callable[[str, str, str], None],
        max_buffer: int = DEFAULT_MAX_BUFFER,
        short: OnceLog | None = None,
    ) -> None:
        self.node = node
        self._ep = endpoint
        self._blobs = blobs_dir
        self._refused = refused
        self.max_buffer = max_buffer
        self._short = short or OnceLog(_log, "delivering to local actors")
        self._streams: dict[StreamId, InStream] = {}
        self._latest: dict[tuple[str, str, str], int] = {}  # newest gen per pair
        self._waiting: dict[StreamId, deque[_Waiting]] = {}
        self.waiting_bytes = 0
        self._owed: dict[str, list[StreamAck]] = {}  # BOUNCED / REWIND to send, per peer
        self._fresh_bytes: dict[StreamId, int] = {}  # delivered since the last DONE
        self._fds: dict[StreamId, int] = {}  # open blob files
        self._keys: dict[StreamId, int] = {}  # relay ids, made once
        self._fast_kinds: dict[str, int] = {}  # per target: see _kinds
        self._dropping: set[StreamId] = set()  # streams that owe their sender a rewind
        self._notices: list[tuple[str, str, int, bytes]] = []  # dead letters to send
        self.delivered = 0
        self.bounced = 0
        # Per peer node, for `mybus top` and metrics.
        self.duplicates: dict[str, int] = {}  # records sent again that were taken: dropped
        self.delivered_from: dict[str, int] = {}

    # -- runs in ------------------------------------------------------------------------

    def take(self, peer: str, run: Run) -> None:
        """Deliver what is new in ``run`` (or keep it, in order, while its target is full).

        Raises:
            RemoteProtocolError: a run that contradicts what this side knows of it.
        """
        sid: StreamId = (peer, run.origin, run.target, run.gen)
        self._newest(sid)
        stream = self._streams.get(sid)
        if stream is None:
            stream = self._streams[sid] = InStream()
        large = stream.large
        admitted = stream.admit(run.start, run.released)
        if stream.dropping:
            self._dropping.add(sid)
        if not admitted:
            return
        if large is not None and stream.large is None:  # the sender gave it up
            self._drop_blob(sid, large.first_end)
        waiting = self._waiting.get(sid)
        records: Sequence[Record] = run.records
        if isinstance(records, PackedRecords) and not waiting and not stream.dropping:
            records = self._relay(sid, stream, records)
        batch: list[Record] = []  # plain messages, in a row: written with one publish
        fits = self._ep.max_record(FORWARD_TO, sid[2]) - PREFIX.size
        for record in records:
            end = record[0]
            if not stream.fresh(end):
                self.duplicates[peer] = self.duplicates.get(peer, 0) + 1
                reason = stream.rebounce(end)
                if reason is not None:
                    self._owe(peer, Control.BOUNCED, sid, end, reason)
                continue
            if stream.dropping:
                break  # what was dropped comes again first
            if waiting:
                if self.waiting_bytes + len(record[2]) > self.max_buffer:
                    stream.stall()
                    break
                stream.take(end)
                waiting.append(record)
                self.waiting_bytes += len(record[2])
                continue
            stream.take(end)
            header = record[1]
            if (header >> 32) & 0xFF == WHOLE and header & 0xFFFFFFFF <= fits:
                batch.append(record)
                continue
            if batch:
                waiting = self._deliver_batch(sid, stream, batch)
                batch = []
                if waiting:
                    waiting.append(record)
                    self.waiting_bytes += len(record[2])
                    continue
            item = self._handle(sid, stream, record)
            if item is not None:
                waiting = self._waiting[sid] = deque([item])
                self.waiting_bytes += _size(item)
        if batch:
            self._deliver_batch(sid, stream, batch)
        if stream.dropping:
            self._dropping.add(sid)

    def _relay(self, sid: StreamId, stream: InStream, packed: PackedRecords) -> Sequence[Record]:
        """Write the leading plain records of ``packed`` (whole, new, from a sender on
        the peer's node, of a kind the target takes from other nodes) straight into the
        target's ring: one core call, no Python object per message. Returns the records
        from the first one that stopped it on, for the per-record path, which says what
        became of each (and meets again whatever error stopped this one)."""
        assert stream.taken is not None  # admitted
        try:
            written, offset, last, nbytes = self._ep.offer_relayed(
                FORWARD_TO,
                sid[2],
                packed.data,
                0,
                packed.number,
                self._key(sid),
                stream.taken,
                sid[0].encode("ascii") + b"/",  # how every sender on that node begins
                self._kinds(sid[2]),
            )
        except (ResourceExhausted, RingCorrupted, ActorNotFound, InvalidAddress):
            return packed
        if not written:
            return packed
        self._short.ok()
        stream.take(last)
        stream.done(last)
        self._count(sid, written)
        self._fresh_bytes[sid] = self._fresh_bytes.get(sid, 0) + nbytes
        return () if written == packed.number else packed.records(offset, written)

    def _kinds(self, target: str) -> int:
        """The message kinds (a bit mask) ``target`` takes from any sender of another
        node: the relay's fast path checks these; the rest, and a client's SYSTEM
        messages (taken from the peer's gateway only), go through `_check`."""
        mask = self._fast_kinds.get(target)
        if mask is None:
            if len(self._fast_kinds) > 4096:
                self._fast_kinds.clear()
            mask = 0
            for kind in range(8):
                if kind == Kind.SYSTEM and target.startswith("_client-"):
                    continue
                if may_address(target, kind, b"", b""):
                    mask |= 1 << kind
            self._fast_kinds[target] = mask
        return mask

    def _deliver_batch(
        self, sid: StreamId, stream: InStream, batch: list[Record]
    ) -> deque[_Waiting] | None:
        """Check and write consecutive plain messages into the target's ring at once;
        what does not fit waits (returned: the stream's queue, to append to)."""
        key = self._key(sid)
        items: list[tuple[bytes, int]] = []
        for end, header, payload in batch:
            why = self._check(sid, header >> 40, payload)
            if why is not None:
                if items:  # deliver what came before it first: order holds
                    left = self._write_batch(sid, stream, batch, items)
                    if left is not None:
                        return left
                    items = []
                self._bounce(sid, stream, end, why)
                batch = [r for r in batch if r[0] - end > 0]
                continue
            items.append((PREFIX.pack(key, end) + payload, (header >> 40) | RELAYED))
        return self._write_batch(sid, stream, batch, items) if items else None

    def _write_batch(
        self, sid: StreamId, stream: InStream, batch: list[Record], items: list[tuple[bytes, int]]
    ) -> deque[_Waiting] | None:
        """``items`` are the first of ``batch``, checked and prefixed."""
        try:
            written = self._ep.offer_batch(FORWARD_TO, sid[2], items)
        except (ResourceExhausted, RingCorrupted) as exc:
            self._short.failed(exc)
            written = 0
        except (ActorNotFound, InvalidAddress):
            for end, _, _ in batch[: len(items)]:
                self._bounce(sid, stream, end, f"no actor {sid[2]!r} on node {self.node!r}")
            return None
        else:
            self._short.ok()
        if written:
            last = batch[written - 1][0]
            stream.done(last)
            self._count(sid, written)
            size = sum(len(r[2]) for r in batch[:written])
            self._fresh_bytes[sid] = self._fresh_bytes.get(sid, 0) + size
        rest = batch[written : len(items)]
        if not rest:
            return None
        waiting = self._waiting.setdefault(sid, deque())
        waiting.extend(rest)
        self.waiting_bytes += sum(len(r[2]) for r in rest)
        return waiting

    def _key(self, sid: StreamId) -> int:
        key = self._keys.get(sid)
        if key is None:
            key = self._keys[sid] = stream_id(*sid)
        return key

    def _newest(self, sid: StreamId) -> None:
        """A newer generation of a pair means the older ones are done at the sender (it
        sends them in order): forget them, and any large message they left half made."""
        pair = sid[:3]
        latest = self._latest.get(pair)
        if latest is not None and sid[3] - latest <= 0:
            return  # the common case: the pair's newest generation, seen before
        self._latest[pair] = sid[3]
        for old in [s for s in self._streams if s[:3] == pair and s[3] != sid[3]]:
            stream = self._streams.pop(old)
            if stream.large is not None:
                self._drop_blob(old, stream.large.first_end)
            self._drop_waiting(old)

    def _handle(self, sid: StreamId, stream: InStream, record: Record) -> _Waiting | None:
        """Deliver one new record; return what must wait (the target is full), or None."""
        end, header, payload = record
        rtype = record_type(header)
        if rtype == WHOLE:
            return self._whole(sid, stream, record)
        kind = stream.fragment(record)
        if kind == "first":
            self._first(sid, stream, record)
            return None
        if kind == "skip":
            stream.done(end)
            return None
        first, offset = fragment_identity(header, payload)
        if kind == "unknown" and not self._resume(sid, stream, first, offset):
            self._bounce(sid, stream, end, "the beginning of this large message was lost")
            stream.skip(first, last=rtype == LAST)
            return None
        large = stream.large
        assert large is not None
        chunk = payload[16:]
        if not self._write(sid, large.first_end, 16 + offset, chunk):
            self._bounce(sid, stream, end, "no room left for this large message")
            stream.skip(first, last=rtype == LAST)
            return None
        large.received += len(chunk)
        self._fresh_bytes[sid] = self._fresh_bytes.get(sid, 0) + len(chunk)
        if rtype != LAST:
            stream.done(end)
            return None
        if large.received != large.total:
            raise RemoteProtocolError(f"message {first} ends short of its {large.total} bytes")
        self._close_blob(sid)
        return self._deliver_blob(sid, stream, _Blob(end, large.meta, self._blob(sid, first)))

    def _whole(self, sid: StreamId, stream: InStream, record: Record) -> _Waiting | None:
        end, header, payload = record
        meta = header >> 40
        why = self._check(sid, meta, payload)
        if why is not None:
            self._bounce(sid, stream, end, why)
            return None
        try:
            return self._write_whole(sid, stream, record)
        except (ActorNotFound, InvalidAddress):
            self._bounce(sid, stream, end, f"no actor {sid[2]!r} on node {self.node!r}")
            return None

    def _write_whole(self, sid: StreamId, stream: InStream, record: Record) -> _Waiting | None:
        end, header, payload = record
        meta = header >> 40
        data = PREFIX.pack(self._key(sid), end) + payload
        if not self._offer(sid[2], data, meta | RELAYED):
            return record
        self._delivered(sid, stream, end, len(payload))
        return None

    def _offer(self, target: str, data: bytes, meta: int) -> bool:
        """Write into the ring to ``target``; False: not now (full, or the host is out
        of descriptors or space: not "no such actor", and it waits in order).

        Raises:
            ActorNotFound, InvalidAddress: no such actor here.
        """
        try:
            ok = self._ep.offer(FORWARD_TO, target, data, meta)
        except (ResourceExhausted, RingCorrupted) as exc:
            self._short.failed(exc)
            return False
        self._short.ok()
        return ok

    def _first(self, sid: StreamId, stream: InStream, record: Record) -> None:
        end, header, payload = record
        meta = header >> 40
        total = int.from_bytes(payload[:8], "little")
        why = self._check(sid, meta, payload[8:])
        if why is None:
            try:
                self._ep.registry.lookup(sid[2])
            except (ActorNotFound, InvalidAddress):
                why = f"no actor {sid[2]!r} on node {self.node!r}"
        if why is None and not self._create(sid, end, total, meta, payload[8:]):
            why = f"no room on node {self.node!r} for a message of {total} bytes"
        if why is not None:
            self._bounce(sid, stream, end, why)
            stream.skip(end, last=False)
            return
        stream.begin_large(end, total, meta, len(payload) - 8)
        stream.done(end)
        self._fresh_bytes[sid] = self._fresh_bytes.get(sid, 0) + len(payload)

    def _check(self, sid: StreamId, meta: int, envelope: bytes) -> str | None:
        """Why a message from another node may not be delivered, or None."""
        peer = sid[0].encode("ascii") + b"/"
        try:
            origin = codec.sender_bytes(meta, envelope)
        except SerializationError:
            origin = None
        if origin is None or not origin.startswith(peer):
            claimed = "none" if origin is None else repr(origin.decode("ascii", "replace"))
            detail = f"its sender ({claimed}) is not on node {sid[0]!r}"
            self._refused(sid[0], "foreign sender", detail)
            return f"refused by node {self.node!r}: {detail}"
        if not may_address(sid[2], meta & 7, origin, peer):
            detail = f"{sid[2]!r} takes nothing of this kind from other nodes"
            self._refused(sid[0], "reserved target", detail)
            return f"refused by node {self.node!r}: {detail}"
        return None

    # -- what is delivered, or bounced ------------------------------------------------------

    def _count(self, sid: StreamId, delivered: int) -> None:
        self.delivered += delivered
        self.delivered_from[sid[0]] = self.delivered_from.get(sid[0], 0) + delivered

    def _delivered(self, sid: StreamId, stream: InStream, end: int, size: int) -> None:
        stream.done(end)
        self._count(sid, 1)
        self._fresh_bytes[sid] = self._fresh_bytes.get(sid, 0) + size

    def _bounce(self, sid: StreamId, stream: InStream, end: int, reason: str) -> None:
        stream.bounce(end, reason)
        self.bounced += 1
        self._owe(sid[0], Control.BOUNCED, sid, end, reason)

    def _owe(self, peer: str, kind: Control, sid: StreamId, pos: int, reason: str = "") -> None:
        self._owed.setdefault(peer, []).append(StreamAck(kind, sid[1], sid[2], sid[3], pos, reason))

    # -- large messages ------------------------------------------------------------------

    def _blob(self, sid: StreamId, first_end: int) -> str:
        return blob_name(*sid, first_end)

    def _create(self, sid: StreamId, end: int, total: int, meta: int, chunk: bytes) -> bool:
        self._close_blob(sid)
        path = self._blobs / self._blob(sid, end)
        try:
            fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        except OSError as exc:
            _log.warning("cannot create %s: %s", path.name, exc)
            return False
        try:
            os.posix_fallocate(fd, 0, BLOB_HEADER.size + total)
            os.pwrite(fd, BLOB_HEADER.pack(total, meta), 0)
            os.pwrite(fd, chunk, BLOB_HEADER.size)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            return False
        self._fds[sid] = fd
        return True

    def _resume(self, sid: StreamId, stream: InStream, first: int, offset: int) -> bool:
        """A fragment of a message begun before this gateway started: take it up from the
        file its predecessor left, if there is one."""
        path = self._blobs / self._blob(sid, first)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False
        try:
            total, meta = BLOB_HEADER.unpack(os.pread(fd, BLOB_HEADER.size, 0))
        except (OSError, struct.error):
            os.close(fd)
            return False
        self._close_blob(sid)
        self._fds[sid] = fd
        stream.resume(first, int(total), int(meta), offset)
        return True

    def _write(self, sid: StreamId, first: int, at: int, chunk: bytes) -> bool:
        fd = self._fds.get(sid)
        if fd is None:
            return False
        try:
            os.pwrite(fd, chunk, at)
        except OSError as exc:
            _log.warning("cannot write %s: %s", self._blob(sid, first), exc)
            return False
        return True

    def _close_blob(self, sid: StreamId) -> None:
        fd = self._fds.pop(sid, None)
        if fd is not None:
            os.close(fd)

    def _drop_blob(self, sid: StreamId, first_end: int) -> None:
        self._close_blob(sid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blobs / self._blob(sid, first_end))

    def _deliver_blob(self, sid: StreamId, stream: InStream, blob: _Blob) -> _Waiting | None:
        data = PREFIX.pack(self._key(sid), blob.end) + blob.name.encode("ascii")
        try:
            if not self._offer(sid[2], data, blob.meta | RELAYED | BLOB):
                return blob
        except (ActorNotFound, InvalidAddress):
            # Not for a dead letter here: the sender's ring no longer holds the message.
            self._salvage_blob(sid, blob, f"no actor {sid[2]!r} on node {self.node!r}")
            stream.end_large()
            stream.done(blob.end)
            return None
        stream.end_large()
        self._delivered(sid, stream, blob.end, 0)
        return None

    # -- what waits ----------------------------------------------------------------------

    def retry(self) -> bool:
        """Deliver what waits, in order per stream; ask for what was dropped once there
        is room. True when anything moved."""
        if not self._waiting and not self._dropping:
            return False
        moved = False
        for sid, waiting in list(self._waiting.items()):
            stream = self._streams.get(sid)
            if stream is None:
                self._drop_waiting(sid)
                continue
            while waiting:
                item = waiting[0]
                if isinstance(item, _Blob):
                    again = self._deliver_blob(sid, stream, item)
                else:
                    again = self._handle(sid, stream, item)
                if again is not None:
                    waiting[0] = again
                    break
                waiting.popleft()
                self.waiting_bytes -= _size(item)
                moved = True
            if not waiting:
                del self._waiting[sid]
        if self.waiting_bytes <= self.max_buffer // 2:
            for sid in list(self._dropping):
                stream = self._streams.get(sid)
                if stream is None or not stream.dropping:
                    self._dropping.discard(sid)
                    continue
                if sid not in self._waiting:
                    pos = stream.rewind_due()
                    if pos is not None:
                        self._owe(sid[0], Control.REWIND, sid, pos)
                        moved = True
        return moved

    def _drop_waiting(self, sid: StreamId) -> None:
        for item in self._waiting.pop(sid, ()):
            self.waiting_bytes -= _size(item)

    def waiting(self) -> bool:
        return bool(self._waiting)

    def forget_waiting(self, peer: str) -> None:
        """``peer`` is unreachable past its grace: what waits for its streams goes (it
        was never acknowledged: the sender sends it again, or returns it to its senders),
        and they are taken afresh."""
        for sid in [s for s in self._waiting if s[0] == peer]:
            self._drop_waiting(sid)
            stream = self._streams.get(sid)
            if stream is not None:
                stream.forget_waiting()
                stream.stall()
                self._dropping.add(sid)

    # -- what to tell the peers ----------------------------------------------------------

    def urgent(self, peer: str) -> bool:
        """Something for ``peer`` should go now: a bounce, a rewind, or much delivered."""
        if self._owed.get(peer):
            return True
        return any(n >= _ACK_BYTES for s, n in self._fresh_bytes.items() if s[0] == peer)

    def owed(self, peer: str) -> list[StreamAck]:
        """The entries to send ``peer`` now (DONE for every stream that moved)."""
        entries = self._owed.pop(peer, [])
        for sid, stream in self._streams.items():
            if sid[0] == peer:
                pos = stream.ack_due()
                if pos is not None:
                    stream.acked_to(pos)
                    self._fresh_bytes.pop(sid, None)
                    entries.append(StreamAck(Control.DONE, sid[1], sid[2], sid[3], pos))
        return entries

    def connection_lost(self, peer: str) -> None:
        """Acknowledgements not sent are sent again on the next connection."""
        for sid, stream in self._streams.items():
            if sid[0] == peer:
                stream.acked = None
        self._owed.pop(peer, None)  # bounces are sent again when the records come again

    # -- an actor died with what this gateway delivered unread -----------------------------

    def salvaged(self, receiver: str, lost: list[tuple[int, bytes]]) -> None:
        """What ``receiver`` never read: each goes back to its sender as a dead letter."""
        for meta, payload in lost:
            if not meta & RELAYED:
                continue
            try:
                _stream, _pos, inner, data = unwrap(meta, payload)
                if meta & BLOB:
                    inner, data = read_blob(self._blobs / data.decode("ascii"))
            except (SerializationError, UnicodeDecodeError) as exc:
                _log.warning("a message salvaged from %r could not be read: %s", receiver, exc)
                continue
            self._notice(inner, data, f"{self.node}/{receiver} stopped before reading it")

    def _salvage_blob(self, sid: StreamId, blob: _Blob, reason: str) -> None:
        try:
            meta, data = read_blob(self._blobs / blob.name)
        except SerializationError as exc:
            _log.warning("a large message for %r is lost: %s", sid[2], exc)
            return
        self._notice(meta, data, reason)

    def _notice(self, meta: int, data: bytes, reason: str) -> None:
        notice = notice_for(
            meta, data, reason, here=self.node, gateway=f"{self.node}/{FORWARD_TO}"
        )
        if notice is None or notice.node == self.node:
            return
        self._notices.append((notice.node, notice.name, notice.meta, notice.body))
        self.send_notices()

    def send_notices(self) -> None:
        """Write the dead letters owed to other nodes into the outbox (what does not fit
        now waits)."""
        notices, self._notices = self._notices, []
        for node, name, meta, body in notices:
            try:
                if self._ep.offer(FORWARD_TO, forward_name(node, name), body, meta):
                    continue
            except (ActorNotFound, MailboxClosed, InvalidAddress) as exc:
                _log.warning("dead letter for %s/%s dropped: %s", node, name, exc)
                continue
            self._notices.append((node, name, meta, body))

    def close(self) -> None:
        for sid in list(self._fds):
            self._close_blob(sid)


def _size(item: _Waiting) -> int:
    return 0 if isinstance(item, _Blob) else len(item[2])
