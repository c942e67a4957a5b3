"""A single-producer / single-consumer ring laid out in a byte buffer.

This module knows a buffer and nothing else: not files, not processes, not actors.
The buffer may be a ``bytearray`` (tests) or an ``mmap`` shared by two processes.

Guarantees:

- Positions (head, tail) are 64-bit counters that only grow; offset = position mod
  capacity. Every shared word is loaded and stored as one aligned 8-byte operation
  through ``memoryview.cast("Q")``: ``struct.pack_into`` writes byte by byte and was seen
  to expose torn values to the other process.
- Commit order: the producer writes a record (payload first, then its header word) and
  only then publishes the tail; the consumer reads the tail, then the records, and only
  then publishes the head. x86-64 keeps stores in order and loads in order, so a record
  is never seen half-written, and a producer killed mid-write never publishes it.
- Records are 8-byte aligned; a padding record covers the end of the buffer where the
  next record would not fit. A message longer than ``max_record`` is streamed as
  fragments (FIRST carries the total length, then MIDDLE..., LAST), so any size passes
  while the consumer drains. Each MIDDLE and LAST names its message (the position just
  after its FIRST) and its offset in it: a reader that starts in the middle of a message
  (the gateway's successor, adopting a ring) knows where it stands.
- Reading is not releasing: a `Reader` reads records at its own position and advances
  the head (frees the space) only when told, up to a position it has read. What it has
  read and not released is still there for a successor, who starts at the head.
- A ring may carry several streams: a SELECT record (`Producer.select`) names, with an
  opaque tag, the stream of the records after it, up to the next SELECT; a `Consumer`
  stops before a SELECT so that one `poll` returns records of one stream, and exposes
  the tag (`Consumer.selected`). SELECTs are not messages: no counter counts them.
- "Full" is a return value (``False`` / no progress), never an exception: waiting is the
  caller's business.

Layout (word = 8 bytes)::

    0    magic, version, capacity, max_record           (read-only after create)
    64   tail, messages written, bytes written, full events, producer closed,
         producer identity (two words the caller fills, e.g. a pid and its start time)
    128  head, consumer signal (running / waiting / closed), messages read, bytes read,
         the length and first 8 bytes of the SELECT tag in force at the head
    256  data[capacity]                                   (capacity: a power of two)

Record header word: bits 0-31 payload length, bits 32-39 record type, bits 40-63 the
caller's ``meta`` (opaque here; the codec puts the envelope's kind and tag in it).
Record types: WHOLE, FIRST, MIDDLE, LAST (fragments), PAD, SELECT (payload: the tag).
Fragment payloads begin with: FIRST, the total length (u64); MIDDLE and LAST, the end
position of their FIRST record and their offset in the message (u64 each).
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

import attrs

from mybus_actors.errors import RingCorrupted

__all__ = [
    "CLOSED",
    "DEFAULT_CAPACITY",
    "FIRST",
    "FULL",
    "HEADER_SIZE",
    "LAST",
    "MAX_META",
    "MIDDLE",
    "PAD",
    "RUNNING",
    "SELECT",
    "STATE_MASK",
    "WAITING",
    "WHOLE",
    "Consumer",
    "Producer",
    "Reader",
    "Record",
    "RingStats",
    "buffer_size",
    "header_stats",
    "init_ring",
]

MAGIC: Final = 0x3130474E_49525542  # b"BURING01", little-endian
VERSION: Final = 3
HEADER_SIZE: Final = 256
DEFAULT_CAPACITY: Final = 1 << 21
MIN_CAPACITY: Final = 128  # room for fragments of at least 8 bytes of data
MAX_CAPACITY: Final = 1 << 31
MAX_META: Final = (1 << 24) - 1
# A MIDDLE fragment carries 16 bytes of identity, then data: with max_record 16 it would
# carry no data and offer_fragments would never make progress.
MIN_MAX_RECORD: Final = 24

# Word indices into the buffer viewed as unsigned 64-bit words.
_MAGIC, _VERSION, _CAPACITY, _MAX_RECORD = 0, 1, 2, 3
_TAIL, _MSGS_W, _BYTES_W, _FULL, _P_CLOSED, _P_ID, _P_TOKEN = 8, 9, 10, 11, 12, 13, 14
_HEAD, _SIGNAL, _MSGS_R, _BYTES_R, _SEL_LEN, _SEL_HEAD = 16, 17, 18, 19, 20, 21

# The consumer's signal word, which `Producer.write` reads right after publishing: a
# state in the low two bits and, with WAITING, the number of that sleep above them, so
# a producer rings once per sleep rather than once per message sent while it lasts.
RUNNING: Final = 0  # the consumer is draining: nothing to do
WAITING: Final = 1  # it may sleep: ring its doorbell (once for this sleep number)
CLOSED: Final = 2  # it has stopped reading for good
STATE_MASK: Final = 3
FULL: Final = -1  # `Producer.write` found no room

# Record types. Zero is never written, so zeroed memory is never mistaken for a record.
WHOLE: Final = 1
FIRST: Final = 2
MIDDLE: Final = 3
LAST: Final = 4
PAD: Final = 5
SELECT: Final = 6  # the records after it belong to the stream its payload (a tag) names
MAX_TAG: Final = 1024

_LEN_MASK: Final = 0xFFFFFFFF
_FIRST_PREFIX: Final = 8  # a FIRST fragment's payload begins with the total length
_NEXT_PREFIX: Final = 16  # a MIDDLE or LAST one with its FIRST's end and its offset
_U64: Final = struct.Struct("<Q")
_U64X2: Final = struct.Struct("<QQ")

Record = tuple[int, int, bytes]
"""What a `Reader` returns per record: (end position, header word, payload)."""


def buffer_size(capacity: int) -> int:
    """Bytes a ring of ``capacity`` data bytes needs (header included)."""
    _check_capacity(capacity)
    return HEADER_SIZE + capacity


def _check_capacity(capacity: int) -> None:
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError(
            f"ring capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}],"
            f" got {capacity!r}"
        )


def init_ring(buf: Any, capacity: int, *, max_record: int | None = None) -> None:
    """Write a fresh header into ``buf`` (zeroing the header; data is left as is).

    Args:
        buf: a writable buffer of at least ``buffer_size(capacity)`` bytes.
        capacity: data bytes, a power of two.
        max_record: largest payload written as one record; longer messages go as
            fragments. Defaults to a quarter of the capacity.

    Raises:
        ValueError: a bad capacity, max_record or buffer size.
    """
    _check_capacity(capacity)
    if max_record is None:
        max_record = capacity // 4
    if not MIN_MAX_RECORD <= max_record <= capacity // 2 - 16:
        raise ValueError(
            f"max_record must be in [{MIN_MAX_RECORD}, capacity/2 - 16], got {max_record!r}"
        )
    mv = memoryview(buf).cast("B")
    if len(mv) < HEADER_SIZE + capacity:
        raise ValueError(f"buffer of {len(mv)} bytes is too small for capacity {capacity}")
    words = mv[:HEADER_SIZE].cast("Q")
    for i in range(HEADER_SIZE // 8):
        words[i] = 0
    words[_VERSION] = VERSION
    words[_CAPACITY] = capacity
    words[_MAX_RECORD] = max_record
    # The magic goes last: a reader that sees it sees a complete header.
    words[_MAGIC] = MAGIC
    words.release()
    mv.release()


class _RingView:
    """Shared attachment logic: validate the header and bind the views."""

    def __init__(self, buf: Any) -> None:
        mv = memoryview(buf).cast("B")
        if len(mv) < HEADER_SIZE + MIN_CAPACITY:
            size = len(mv)  # len() of a released view raises ValueError
            mv.release()
            raise RingCorrupted(f"buffer of {size} bytes cannot hold a ring")
        words = mv.cast("Q") if len(mv) % 8 == 0 else mv[: len(mv) & ~7].cast("Q")
        magic, version, capacity = words[_MAGIC], words[_VERSION], words[_CAPACITY]
        max_record = words[_MAX_RECORD]
        problem = None
        if magic != MAGIC:
            problem = f"bad magic {magic:#x}"
        elif version != VERSION:
            problem = f"layout version {version}, this code reads {VERSION}"
        elif capacity < MIN_CAPACITY or capacity & (capacity - 1):
            problem = f"capacity {capacity} is not a power of two"
        elif HEADER_SIZE + capacity > len(mv):
            problem = f"capacity {capacity} exceeds the {len(mv)}-byte buffer"
        elif not MIN_MAX_RECORD <= max_record <= capacity // 2 - 16:
            problem = f"max_record {max_record} out of range"
        if problem is not None:
            words.release()
            mv.release()
            raise RingCorrupted(problem)
        self._mv = mv
        self._words = words
        self.capacity: int = capacity
        self.max_record: int = max_record
        self._mask = capacity - 1

    def release(self) -> None:
        """Drop the views so the underlying mmap can be closed."""
        self._words.release()
        self._mv.release()

    def stats(self) -> RingStats:
        w = self._words
        return RingStats(
            capacity=self.capacity,
            used=w[_TAIL] - w[_HEAD],
            messages_written=w[_MSGS_W],
            bytes_written=w[_BYTES_W],
            full_events=w[_FULL],
            messages_read=w[_MSGS_R],
            bytes_read=w[_BYTES_R],
        )


def header_stats(header: bytes) -> RingStats:
    """The counters in a copy of a ring's first `HEADER_SIZE` bytes (what `mybus top`
    and metrics read with one ``pread``, never mapping the ring).

    The copy is not atomic as a whole: each word is whole (8-byte aligned stores), but
    the counters may be from slightly different moments, as any sampled gauge is.

    Raises:
        RingCorrupted: not a ring header of this layout.
    """
    if len(header) < HEADER_SIZE:
        raise RingCorrupted(f"a ring header has {HEADER_SIZE} bytes, got {len(header)}")
    w = memoryview(header)[:HEADER_SIZE].cast("Q")
    if w[_MAGIC] != MAGIC or w[_VERSION] != VERSION:
        raise RingCorrupted(f"not a layout-{VERSION} ring header")
    return RingStats(
        capacity=w[_CAPACITY],
        used=max(0, w[_TAIL] - w[_HEAD]),
        messages_written=w[_MSGS_W],
        bytes_written=w[_BYTES_W],
        full_events=w[_FULL],
        messages_read=w[_MSGS_R],
        bytes_read=w[_BYTES_R],
    )


@attrs.frozen
class RingStats:
    """A snapshot of a ring's counters (for `mybus ls` and tests)."""

    capacity: int
    used: int
    messages_written: int
    bytes_written: int
    full_events: int
    messages_read: int
    bytes_read: int


class Producer(_RingView):
    """The writing end. One thread of one process at a time.

    The shared message and byte counters are published with the tail, by every write,
    batch and fragment (`mybus top` reads them from the header, even of a ring whose
    reader is stopped); `publish_counters` stays for a caller that wants them now.
    """

    def __init__(self, buf: Any) -> None:
        super().__init__(buf)
        w = self._words
        self._tail: int = w[_TAIL]
        self._head_cache: int = w[_HEAD]
        self._frag_sent = 0
        self._msgs: int = w[_MSGS_W]
        self._bytes: int = w[_BYTES_W]
        self._full: int = w[_FULL]
        self._first_end = 0  # the end of the FIRST record of the message being streamed
        # A full fence between publishing the tail and reading the consumer's signal:
        # an uncontended lock's acquire and release are lock-prefixed instructions.
        lock = threading.Lock()
        self._acquire = lock.acquire
        self._release = lock.release

    # -- state the consumer shares with us ------------------------------------------

    @property
    def consumer_waiting(self) -> bool:
        """The consumer announced it may sleep: ring its doorbell after publishing."""
        return self._words[_SIGNAL] & STATE_MASK == WAITING

    @property
    def consumer_closed(self) -> bool:
        return self._words[_SIGNAL] & STATE_MASK == CLOSED

    def signal(self) -> int:
        """Fence, then read the consumer's signal word (its state: word & STATE_MASK)."""
        self._acquire()
        self._release()
        return self._words[_SIGNAL]

    @property
    def empty(self) -> bool:
        """Everything published has been consumed."""
        return self._words[_HEAD] == self._tail

    @property
    def written(self) -> int:
        """Messages this producer has published (exact, unlike the shared counter)."""
        return self._msgs

    @property
    def unread(self) -> int:
        """Messages published and not yet read (as far as the consumer has told)."""
        return self._msgs - self._words[_MSGS_R]

    @property
    def unread_bytes(self) -> int:
        """Bytes published and not yet released by the consumer (records and padding)."""
        return self._tail - self._words[_HEAD]

    def close(self) -> None:
        """Tell the consumer no more records will come."""
        self.publish_counters()
        self._words[_P_CLOSED] = 1

    def set_identity(self, ident: int, token: int) -> None:
        """Record who writes here (opaque to the ring), so a reader can check liveness."""
        self._words[_P_ID] = ident
        self._words[_P_TOKEN] = token

    def publish_counters(self) -> None:
        self._words[_MSGS_W] = self._msgs
        self._words[_BYTES_W] = self._bytes

    def stats(self) -> RingStats:
        self.publish_counters()
        return super().stats()

    # -- writing -----------------------------------------------------------------------

    def write(self, data: Any, meta: int = 0) -> int:
        """Write and publish one message of at most ``max_record`` bytes.

        The hot path of every local send, so `_put` is inlined here by hand: a Python
        call costs as much as a shared-word store.

        Returns:
            FULL when there is no room now; otherwise the consumer's signal word read
            after a full fence, whose state (word & STATE_MASK) is RUNNING, WAITING (ring
            its doorbell, unless already rung for this same word) or CLOSED.

        Raises:
            ValueError: the message needs fragments (use `offer_fragments`).
        """
        n = len(data)
        if n > self.max_record:
            raise ValueError(f"{n}-byte message exceeds max_record {self.max_record}")
        words = self._words
        cap = self.capacity
        tail = self._tail
        size = (n + 15) & ~7
        off = tail & self._mask
        room = cap - off
        need = size if size <= room else size + room
        if tail + need - self._head_cache > cap:
            self._head_cache = words[_HEAD]
            if tail + need - self._head_cache > cap:
                self._note_full()
                return FULL
        if size > room:
            words[(HEADER_SIZE + off) >> 3] = (room - 8) | (PAD << 32)
            tail += room
            off = 0
        start = HEADER_SIZE + off
        self._mv[start + 8 : start + 8 + n] = data
        words[start >> 3] = n | (WHOLE << 32) | (meta << 40)
        tail += size
        self._tail = tail
        # The counters are published with every message (for `mybus top`: a reader that
        # was stopped never reads the ones it would otherwise count).
        words[_MSGS_W] = self._msgs = self._msgs + 1
        words[_BYTES_W] = self._bytes = self._bytes + n
        words[_TAIL] = tail  # the commit point
        self._acquire()
        self._release()
        return words[_SIGNAL]

    def select(self, tag: bytes) -> bool:
        """Write and publish a SELECT record: the records after it, up to the next
        SELECT, belong to the stream ``tag`` names (opaque here, at most `MAX_TAG`
        bytes). Not a message: no counter moves, and no doorbell need ring for it.

        Returns:
            False when there is no room now.
        """
        if not 0 < len(tag) <= MAX_TAG:
            raise ValueError(f"a SELECT tag has 1 to {MAX_TAG} bytes, got {len(tag)}")
        tail = self._put(self._tail, tag, len(tag), SELECT, 0)
        if tail < 0:
            self._note_full()
            return False
        self._tail = tail
        self._words[_TAIL] = tail
        return True

    def _put(self, tail: int, data: Any, n: int, rtype: int, meta: int) -> int:
        """Write one record at ``tail`` without publishing; return the new tail or -1."""
        size = (n + 15) & ~7
        off = tail & self._mask
        room = self.capacity - off
        need = size if size <= room else size + room
        if tail + need - self._head_cache > self.capacity:
            self._head_cache = self._words[_HEAD]
            if tail + need - self._head_cache > self.capacity:
                return -1
        words = self._words
        if size > room:
            words[(HEADER_SIZE + off) >> 3] = (room - 8) | (PAD << 32)
            tail += room
            off = 0
        start = HEADER_SIZE + off + 8
        self._mv[start : start + n] = data
        words[(HEADER_SIZE + off) >> 3] = n | (rtype << 32) | (meta << 40)
        return tail + size

    def _publish(self, tail: int, messages: int, nbytes: int) -> None:
        self._msgs += messages
        self._bytes += nbytes
        self.publish_counters()
        self._tail = tail
        self._words[_TAIL] = tail  # the commit point: everything above is now visible

    def _note_full(self) -> None:
        self._full += 1
        self._words[_FULL] = self._full

    def offer(self, data: Any, meta: int = 0) -> bool:
        """Write one message of at most ``max_record`` bytes and publish it.

        Returns:
            True when written, False when the ring has no room for it now.

        Raises:
            ValueError: the message needs fragments (use `offer_fragments`).
        """
        return self.write(data, meta) != FULL

    def offer_batch(self, items: Iterable[tuple[Any, int]]) -> int:
        """Write as many (data, meta) messages as fit, publishing the tail once.

        Returns:
            How many were written (a prefix of ``items``).

        Raises:
            ValueError: a message needs fragments.
        """
        tail = self._tail
        count = nbytes = 0
        for data, meta in items:
            n = len(data)
            if n > self.max_record:
                raise ValueError(f"{n}-byte message exceeds max_record {self.max_record}")
            new_tail = self._put(tail, data, n, WHOLE, meta)
            if new_tail < 0:
                self._note_full()
                break
            tail = new_tail
            count += 1
            nbytes += n
        if count:
            self._publish(tail, count, nbytes)
        return count

    def offer_fragments(self, data: Any, meta: int, sent: int) -> int:
        """Stream a message of any size: write as many fragments as fit now.

        Call again with the returned count until it equals ``len(data)``; in between,
        write nothing else to this ring. One tail publish per call.

        Args:
            data: the whole message (bytes-like, format "B").
            meta: the caller's tag, carried by the first fragment.
            sent: bytes of ``data`` already written (0 to start).

        Returns:
            Bytes of ``data`` written so far (unchanged when the ring is full).

        Raises:
            ValueError: ``data`` is empty.
        """
        total = len(data)
        if total == 0:
            raise ValueError("an empty message needs no fragments: use offer()")
        tail = self._put_fragments(data, meta, sent, all_or_nothing=False)
        if tail == self._tail:
            return sent
        done = self._frag_sent
        self._publish(tail, 1 if done == total else 0, done - sent)
        return done

    def offer_message(self, data: Any, meta: int = 0) -> bool:
        """Write a whole message, as one record or as fragments, all or nothing, and
        publish it at once: a reader never sees part of it, whoever dies when.

        Returns:
            True when written, False when the ring has no room for all of it now.
        """
        if len(data) <= self.max_record:
            return self.write(data, meta) != FULL
        tail = self._put_fragments(data, meta, 0, all_or_nothing=True)
        if tail == self._tail:
            self._note_full()
            return False
        self._publish(tail, 1, len(data))
        return True

    def relay(
        self,
        data: Any,
        offset: int,
        count: int,
        key: int,
        after: int,
        prefix: bytes,
        kinds: int,
        sender_bit: int,
        corr_bit: int,
        relayed_bit: int,
    ) -> tuple[int, int, int, int, int]:
        """The gateway's inbound hot path: write the plain records of a packed run.

        ``data`` holds records packed as a run carries them on the wire ((end u64,
        header u64, payload) each, checked by `scan_packed`); from ``offset``, up to
        ``count`` of them are written here, each as ``<QQ key, end> + payload`` with
        ``relayed_bit`` added to its meta, and published at once. The first record that
        is not plain stops it, left for the caller's per-record path: not WHOLE, too long
        for one record here, not past ``after`` (seen before), of a kind (meta & 7)
        outside the ``kinds`` bit mask, without a sender (meta & ``sender_bit``), with a
        sender not starting with ``prefix`` (the sender address is a length byte and its
        ASCII, after 8 bytes of correlation id when meta & ``corr_bit``), or no room.

        Returns:
            (records written, the offset after them, the end of the last one (``after``
            when none), their payload bytes, the consumer's signal word when something
            was written, else -1).
        """
        mv = memoryview(data).cast("B")
        size = len(mv)
        tail = self._tail
        taken = nbytes = written = 0
        max_payload = self.max_record - 16
        plen = len(prefix)
        try:
            while taken < count and offset + 16 <= size:
                end, header = _U64X2.unpack_from(mv, offset)
                n = header & _LEN_MASK
                meta = header >> 40
                if (
                    offset + 16 + n > size
                    or (header >> 32) & 0xFF != WHOLE
                    or n > max_payload
                    or end - after <= 0
                    or not (kinds >> (meta & 7)) & 1
                    or not meta & sender_bit
                ):
                    break
                body = mv[offset + 16 : offset + 16 + n]
                at = 8 if meta & corr_bit else 0
                if at >= n:
                    break
                slen = body[at]
                if at + 1 + slen > n or slen < plen or body[at + 1 : at + 1 + plen] != prefix:
                    break
                record = _U64X2.pack(key, end) + body
                new_tail = self._put(tail, record, n + 16, WHOLE, (meta | relayed_bit) & MAX_META)
                if new_tail < 0:
                    self._note_full()
                    break
                tail = new_tail
                after = end
                taken += 1
                nbytes += n
                written += n + 16
                offset += 16 + n
        finally:
            mv.release()
        signal = -1
        if taken:
            self._publish(tail, taken, written)
            signal = self.signal()
        return taken, offset, after, nbytes, signal

    def _put_fragments(self, data: Any, meta: int, sent: int, *, all_or_nothing: bool) -> int:
        """Write fragments of ``data`` from ``sent`` on without publishing; return the new
        tail (the old one when nothing, or not everything asked for, fits)."""
        total = len(data)
        view = memoryview(data)
        tail = self._tail
        chunk_max = self.max_record
        try:
            while sent < total:
                if sent == 0:
                    chunk = min(total, chunk_max - _FIRST_PREFIX)
                    record = _U64.pack(total) + view[:chunk]
                    new_tail = self._put(tail, record, len(record), FIRST, meta)
                    self._first_end = new_tail
                else:
                    chunk = min(total - sent, chunk_max - _NEXT_PREFIX)
                    rtype = LAST if sent + chunk == total else MIDDLE
                    record = _U64X2.pack(self._first_end, sent) + view[sent : sent + chunk]
                    new_tail = self._put(tail, record, len(record), rtype, 0)
                if new_tail < 0:
                    if all_or_nothing:
                        return self._tail
                    self._note_full()
                    break
                tail = new_tail
                sent += chunk
        finally:
            view.release()
        self._frag_sent = sent
        return tail


class _ConsumerSide(_RingView):
    """What every reading end shares: the signal word, and what the producer told."""

    def __init__(self, buf: Any) -> None:
        super().__init__(buf)
        self._sleeps = self._words[_SIGNAL] >> 2

    @property
    def producer_closed(self) -> bool:
        return self._words[_P_CLOSED] != 0

    @property
    def producer_identity(self) -> tuple[int, int]:
        """The two words the producer stored with `Producer.set_identity`."""
        return self._words[_P_ID], self._words[_P_TOKEN]

    def set_waiting(self, waiting: bool) -> None:
        """Announce (or withdraw) that this consumer may sleep on its doorbell.

        The caller must issue a full fence between setting it and re-checking
        `pending`: x86-64 may reorder a store before a later load.
        """
        words = self._words
        if words[_SIGNAL] != CLOSED:
            if waiting:
                self._sleeps += 1
                words[_SIGNAL] = WAITING | (self._sleeps << 2)
            else:
                words[_SIGNAL] = RUNNING

    def close(self) -> None:
        """Tell the producer that nothing more will be read (after the last poll)."""
        self._words[_SIGNAL] = CLOSED


class Consumer(_ConsumerSide):
    """The reading end that releases what it reads. One thread of one process at a time."""

    def __init__(self, buf: Any) -> None:
        super().__init__(buf)
        w = self._words
        self._head: int = w[_HEAD]
        self._msgs: int = w[_MSGS_R]
        self._bytes: int = w[_BYTES_R]
        self._frag: bytearray | None = None
        self._frag_meta = 0
        self._frag_len = 0  # the announced total of the message being reassembled
        self._frag_first = 0  # the end of its FIRST record, which the others name
        # The tag of the last SELECT read: the stream being read. A consumer that takes
        # over a ring (a sender reading back what a gone reader left) starts with the
        # first 8 bytes of the one in force, which every consumer publishes.
        n = min(int(w[_SEL_LEN]), 8)
        self.selected = int(w[_SEL_HEAD]).to_bytes(8, "little")[:n]
        self.selects = 0  # SELECT records read so far
        self.at_select = False  # the last poll stopped before a SELECT (more to read)

    @property
    def pending(self) -> bool:
        """Something is published and not yet read."""
        return self._words[_TAIL] != self._head

    @property
    def partial(self) -> bool:
        """A fragmented message is half received (its producer has not finished)."""
        return self._frag is not None

    def discard_partial(self) -> None:
        """Forget a half-received fragmented message (its producer died)."""
        self._frag = None

    def poll(self, budget: int = 64) -> list[tuple[int, bytes]]:
        """Read up to ``budget`` whole messages; publish the head once.

        Returns:
            (meta, payload) pairs in the order written, all of one stream: a SELECT is
            read only first (then `selected` names the stream), and ends the read
            otherwise. Fragments are reassembled: a long message appears once, whole,
            after its last fragment.

        Raises:
            RingCorrupted: a record header no producer of this layout writes.
        """
        words = self._words
        head = self._head
        tail = words[_TAIL]
        self.at_select = False
        if head == tail:
            return []
        mv = self._mv
        mask = self._mask
        out: list[tuple[int, bytes]] = []
        append = out.append
        nbytes = 0
        selected = False
        while head != tail and budget > 0:
            off = head & mask
            h = words[(HEADER_SIZE + off) >> 3]
            n = h & _LEN_MASK
            rtype = (h >> 32) & 0xFF
            s = HEADER_SIZE + off + 8
            size = (n + 15) & ~7
            if rtype == WHOLE and size <= self.capacity - off:
                append((h >> 40, mv[s : s + n].tobytes()))
                nbytes += n
                budget -= 1
                head += size
            elif rtype == PAD and n == self.capacity - off - 8:
                head += n + 8
            elif rtype == SELECT and 0 < n <= MAX_TAG and size <= self.capacity - off:
                if out or selected:
                    self.at_select = True
                    break  # the next stream is read by the next poll
                if self._frag is not None:
                    raise RingCorrupted("SELECT inside a fragmented message")
                tag = self.selected = mv[s : s + n].tobytes()
                self.selects += 1
                words[_SEL_LEN] = n
                words[_SEL_HEAD] = int.from_bytes(tag[:8].ljust(8, b"\0"), "little")
                selected = True
                head += size
            elif FIRST <= rtype <= LAST and size <= self.capacity - off:
                done = self._fragment(rtype, h >> 40, mv[s : s + n], head + size)
                if done is not None:
                    append(done)
                    nbytes += len(done[1])
                    budget -= 1
                head += size
            else:
                raise RingCorrupted(f"bad record header {h:#018x} at position {head}")
            if head - tail > 0:
                raise RingCorrupted(f"record at {head} runs past the tail {tail}")
        self._head = head
        self._msgs += len(out)
        self._bytes += nbytes
        words[_MSGS_R] = self._msgs
        words[_BYTES_R] = self._bytes
        words[_HEAD] = head  # frees the space: the producer may now overwrite it
        return out

    def _fragment(
        self, rtype: int, meta: int, chunk: memoryview, end: int
    ) -> tuple[int, bytes] | None:
        if rtype == FIRST:
            if self._frag is not None or len(chunk) < _FIRST_PREFIX:
                raise RingCorrupted("FIRST fragment inside another message")
            total = _U64.unpack_from(chunk)[0]
            body = chunk[_FIRST_PREFIX:]
            if total > MAX_MESSAGE or len(body) > total:
                raise RingCorrupted(f"fragmented message claims {total} bytes")
            # Grown as fragments arrive, not allocated from the claim: a corrupt length
            # must fail as RingCorrupted, not as an attempt to allocate it.
            self._frag = bytearray(body)
            self._frag_len = total
            self._frag_meta = meta
            self._frag_first = end
            if len(body) == total:
                return self._finish()
            return None
        frag = self._frag
        if frag is None or len(chunk) < _NEXT_PREFIX:
            raise RingCorrupted("fragment without a FIRST")
        first, offset = _U64X2.unpack_from(chunk)
        body = chunk[_NEXT_PREFIX:]
        if first != self._frag_first or offset != len(frag):
            raise RingCorrupted(
                f"fragment of message {first} at {offset}, expected {self._frag_first}"
                f" at {len(frag)}"
            )
        if len(frag) + len(body) > self._frag_len:
            raise RingCorrupted("fragment longer than announced")
        frag += body
        if rtype == LAST:
            if len(frag) != self._frag_len:
                raise RingCorrupted("LAST fragment before the announced length")
            return self._finish()
        return None

    def _finish(self) -> tuple[int, bytes]:
        assert self._frag is not None
        done = (self._frag_meta, bytes(self._frag))
        self._frag = None
        return done


class Reader(_ConsumerSide):
    """A reading end that frees space only when told: the gateway's outbox.

    `peek` reads records one by one (fragments too, not reassembled) from its own
    position and returns them with their end positions; `release_to` advances the head to
    such a position; `rewind` goes back to the head. What was read and not released is
    still in the ring: a successor (a new Reader on the same buffer) starts at the head
    and reads it again. One thread of one process at a time.
    """

    def __init__(self, buf: Any) -> None:
        super().__init__(buf)
        w = self._words
        self._head: int = w[_HEAD]
        self._read = self._head
        self._msgs: int = w[_MSGS_R]
        self._bytes: int = w[_BYTES_R]
        # Per record read and not released: (end, 1 if it ends a message else 0, bytes).
        self._unreleased: deque[tuple[int, int, int]] = deque()

    @property
    def head(self) -> int:
        """The released position: everything before it is freed."""
        return self._head

    @property
    def position(self) -> int:
        """Where the next `peek` reads."""
        return self._read

    @property
    def tail(self) -> int:
        return int(self._words[_TAIL])

    @property
    def pending(self) -> bool:
        """Something is published and not yet read."""
        return self._words[_TAIL] != self._read

    @property
    def unreleased(self) -> bool:
        """Something is published and not yet released (read or not)."""
        return self._words[_TAIL] != self._head

    def peek(self, budget: int = 64, max_bytes: int = 1 << 20) -> list[Record]:
        """Read up to ``budget`` records (at least one if any, else as many as fit in
        ``max_bytes`` of payload) from the read position, releasing nothing.

        Returns:
            (end position, header word, payload) per record, in ring order; padding
            is skipped.

        Raises:
            RingCorrupted: a record header no producer of this layout writes.
        """
        out: list[Record] = []
        for record in self._records(self._read, self.tail, budget, max_bytes):
            out.append(record)
            end, h, payload = record
            rtype = (h >> 32) & 0xFF
            self._unreleased.append((end, 1 if rtype in (WHOLE, LAST) else 0, len(payload)))
            self._read = end
        return out

    def peek_packed(self, budget: int = 64, max_bytes: int = 1 << 20) -> tuple[bytes, int]:
        """What `peek` reads, packed as a run carries records on the wire: (end u64,
        header u64, payload) each, back to back, in one bytes object; and their count.
        Each payload is copied once, from the ring into that object.

        Raises:
            RingCorrupted: the first record to read has a header no producer writes
                (what came before a bad one is returned first).
        """
        parts: list[bytes | memoryview] = []
        count = 0
        mv = self._mv
        try:
            for end, h, start, n in self._spans(self._read, self.tail, budget, max_bytes):
                parts.append(_U64X2.pack(end, h))
                parts.append(mv[start : start + n])
                rtype = (h >> 32) & 0xFF
                self._unreleased.append((end, 1 if rtype in (WHOLE, LAST) else 0, n))
                self._read = end
                count += 1
        except RingCorrupted:
            if not count:
                raise
        packed = b"".join(parts)
        for part in parts:
            if isinstance(part, memoryview):
                part.release()
        return packed, count

    def records(self, start: int | None = None, end: int | None = None) -> list[Record]:
        """The records from ``start`` (default: the head) up to ``end`` (default: the
        read position), read again without moving anything."""
        start = self._head if start is None else start
        stop = self._read if end is None else end
        return list(self._records(start, stop, 1 << 62, 1 << 62))

    def release_to(self, pos: int) -> int:
        """Free everything up to ``pos``, the end of a record already read.

        Returns:
            How many records that released (0 when ``pos`` is not past the head).

        Raises:
            ValueError: ``pos`` is past what was read, or not the end of a record.
        """
        if pos - self._head <= 0:
            return 0
        if pos - self._read > 0:
            raise ValueError(f"cannot release up to {pos}: only read up to {self._read}")
        done = msgs = nbytes = 0
        unreleased = self._unreleased
        while unreleased and unreleased[0][0] - pos <= 0:
            end, whole, size = unreleased.popleft()
            done += 1
            msgs += whole
            nbytes += size
            if end == pos:
                break
        else:
            if not unreleased or unreleased[0][0] != pos:
                raise ValueError(f"{pos} is not the end of a record read")
        self._head = pos
        self._msgs += msgs
        self._bytes += nbytes
        words = self._words
        words[_MSGS_R] = self._msgs
        words[_BYTES_R] = self._bytes
        words[_HEAD] = pos  # frees the space
        return done

    def rewind(self) -> None:
        """Read again from the head (what was read and not released comes again)."""
        self._read = self._head
        self._unreleased.clear()

    def rewind_to(self, pos: int) -> None:
        """Read again from ``pos``, the end of a record read and not released (the head
        when ``pos`` is before it; nothing when it is past the read position)."""
        if pos - self._head <= 0:
            self.rewind()
            return
        if pos - self._read >= 0:
            return
        unreleased = self._unreleased
        while unreleased and unreleased[-1][0] - pos > 0:
            unreleased.pop()
        if not unreleased or unreleased[-1][0] != pos:
            raise ValueError(f"{pos} is not the end of a record read")
        self._read = pos

    def _records(self, pos: int, tail: int, budget: int, max_bytes: int) -> Iterator[Record]:
        mv = self._mv
        for end, h, start, n in self._spans(pos, tail, budget, max_bytes):
            yield end, h, mv[start : start + n].tobytes()

    def _spans(
        self, pos: int, tail: int, budget: int, max_bytes: int
    ) -> Iterator[tuple[int, int, int, int]]:
        """(end position, header word, payload offset in the buffer, payload length) of
        each record from ``pos`` to ``tail`` (padding skipped), as `peek` bounds them."""
        words = self._words
        mask = self._mask
        cap = self.capacity
        taken = 0
        while pos != tail and budget > 0:
            off = pos & mask
            h = words[(HEADER_SIZE + off) >> 3]
            n = h & _LEN_MASK
            rtype = (h >> 32) & 0xFF
            size = (n + 15) & ~7
            if rtype == PAD and n == cap - off - 8:
                pos += n + 8
                continue
            if not WHOLE <= rtype <= LAST or size > cap - off or pos + size - tail > 0:
                raise RingCorrupted(f"bad record header {h:#018x} at position {pos}")
            if taken and taken + n > max_bytes:
                return
            pos += size
            taken += n
            budget -= 1
            yield pos, h, HEADER_SIZE + off + 8, n


MAX_MESSAGE: Final = 1 << 40  # a sanity bound on a fragmented message's claimed length
