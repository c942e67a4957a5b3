"""Unit tests for the ring: a producer and a consumer over one `bytearray`.

Every test runs twice, against each core: the pure-Python reference (`ring`) and the
native one (`_ringcore`), by rebinding this module's `Producer`, `Consumer` and `Reader`
(the `core` fixture). A native core that is not built fails here, it is not skipped.

Pure and fast: no files, no processes, no sleeping. Several tests read or poke raw words
of the buffer; the layout constants below restate ring.py's documented layout on purpose,
so that a layout change both ends would silently agree on still breaks a test.
"""

from __future__ import annotations

import random
import re
import struct
from collections import deque
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from mybus_actors import _ringcore
from mybus_actors import ring as pure_ring
from mybus_actors.errors import RingCorrupted
from mybus_actors.ring import (
    CLOSED,
    FULL,
    HEADER_SIZE,
    MAX_META,
    RUNNING,
    STATE_MASK,
    WAITING,
    Consumer,
    Producer,
    Reader,
    Record,
    buffer_size,
    header_stats,
    init_ring,
)

# Layout version 3: word indices (8-byte words) and record types; MIDDLE and LAST
# fragments begin with the end position of their FIRST and their offset (u64 each).
MAGIC_WORD, VERSION_WORD, CAPACITY_WORD, MAX_RECORD_WORD = 0, 1, 2, 3
TAIL_WORD, HEAD_WORD = 8, 16
DATA_WORD = HEADER_SIZE // 8
WHOLE, FIRST, MIDDLE, LAST, PAD, SELECT = 1, 2, 3, 4, 5, 6

CAP = 1024  # max_record defaults to CAP // 4 == 256

Message = tuple[int, bytes]

CORES = {"python": pure_ring, "native": _ringcore}


@pytest.fixture(autouse=True, params=sorted(CORES))
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test against one core: the module's ring ends become that core's."""
    module = CORES[request.param]
    for name in ("Producer", "Consumer", "Reader"):
        monkeypatch.setitem(globals(), name, getattr(module, name))
    return str(request.param)


def test_both_cores_are_what_they_say(core: str) -> None:
    expected = "mybus_actors.ring" if core == "python" else "mybus_actors._ringcore"
    assert Producer.__module__ == expected


# -- helpers ----------------------------------------------------------------------------


def make_ring(
    capacity: int = CAP, max_record: int | None = None
) -> tuple[bytearray, Producer, Consumer]:
    buf = bytearray(buffer_size(capacity))
    init_ring(buf, capacity, max_record=max_record)
    return buf, Producer(buf), Consumer(buf)


def words_of(buf: bytearray) -> memoryview:
    return memoryview(buf).cast("Q")


def record_size(n: int) -> int:
    """Bytes a record with an ``n``-byte payload takes on the ring."""
    return 8 + (n + 7) // 8 * 8


def header(n: int, rtype: int = WHOLE, meta: int = 0) -> int:
    return n | rtype << 32 | meta << 40


def message(seed: object, n: int) -> bytes:
    return random.Random(str(seed)).randbytes(n)


def drain(consumer: Consumer) -> list[Message]:
    out: list[Message] = []
    while batch := consumer.poll(budget=1 << 20):
        out.extend(batch)
    return out


def advance(producer: Producer, consumer: Consumer, nbytes: int) -> None:
    """Move an empty ring's head and tail forward by ``nbytes`` with consumed filler records.

    The fillers must not reach the buffer's end (no padding): the callers position the
    tail inside the first lap.
    """
    assert nbytes % 8 == 0 and producer.empty
    while nbytes:
        size = min(nbytes, record_size(producer.max_record))
        assert producer.offer(bytes(size - 8), meta=1)
        assert len(consumer.poll()) == 1
        nbytes -= size
    assert producer.empty


def stream(producer: Producer, consumer: Consumer, data: bytes, meta: int) -> list[Message]:
    """Drive `offer_fragments` to completion, polling between calls; return what was read."""
    received: list[Message] = []
    sent = 0
    for _ in range(10_000):
        if sent == len(data):
            return received
        sent = producer.offer_fragments(data, meta, sent)
        received.extend(consumer.poll())
    raise AssertionError(f"offer_fragments stalled at {sent} of {len(data)} bytes")


def need_with_padding(tail: int, n: int, capacity: int) -> int:
    """Ring bytes a record of ``n`` payload bytes needs at ``tail`` (padding included)."""
    size = record_size(n)
    room = capacity - tail % capacity
    return size if size <= room else size + room


# -- fill, wrap, padding, exact fit, full -----------------------------------------------


def test_fill_until_offer_refuses_then_drain_in_order() -> None:
    _buf, p, c = make_ring()
    sent: list[Message] = []
    i = 0
    while True:
        data = message(i, (i * 37) % (p.max_record + 1))
        if not p.offer(data, meta=i):
            break
        sent.append((i, data))
        i += 1
    stats = p.stats()
    assert len(sent) > 1
    assert stats.full_events == 1
    assert stats.messages_written == len(sent)
    assert stats.bytes_written == sum(len(d) for _, d in sent)
    # First lap, nothing consumed: no padding yet, so used is the sum of the records.
    assert stats.used == sum(record_size(len(d)) for _, d in sent) <= CAP
    assert stats.used + record_size(len(data)) > CAP
    assert not p.offer(data, meta=i)
    assert p.stats().full_events == 2
    assert p.stats().messages_written == len(sent)

    assert c.pending
    assert drain(c) == sent
    assert not c.pending
    assert p.empty
    stats = c.stats()
    assert stats.messages_read == len(sent)
    assert stats.bytes_read == sum(len(d) for _, d in sent)
    assert stats.used == 0
    assert p.offer(data, meta=i)
    assert c.poll() == [(i, data)]


def test_ring_holds_exactly_capacity_bytes_of_records() -> None:
    _buf, p, c = make_ring()
    msgs = [(i, message(i, 24)) for i in range(CAP // 32)]  # 32-byte records
    for meta, data in msgs:
        assert p.offer(data, meta)
    assert p.stats().used == CAP
    assert p.stats().full_events == 0
    assert not p.offer(b"")  # even an 8-byte record no longer fits
    assert p.stats().full_events == 1
    assert drain(c) == msgs


def test_wrap_around_many_times_with_odd_sizes() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    rng = random.Random(20240611)
    sizes = list(range(p.max_record + 1)) * 3
    rng.shuffle(sizes)
    expected: list[Message] = []
    received: list[Message] = []
    for i, n in enumerate(sizes):
        data = rng.randbytes(n)
        meta = (i * 7919) & MAX_META
        while not p.offer(data, meta):
            got = c.poll(budget=rng.randint(1, 8))
            assert got, "offer refused while the consumer had nothing to read"
            received.extend(got)
        expected.append((meta, data))
        assert 0 <= p.stats().used <= CAP
    received.extend(drain(c))
    assert received == expected
    assert words[TAIL_WORD] == words[HEAD_WORD] > 50 * CAP  # many laps
    stats = p.stats()
    assert stats.messages_written == stats.messages_read == len(sizes)
    assert stats.bytes_written == stats.bytes_read == sum(sizes)
    assert stats.used == 0


@pytest.mark.parametrize(
    ("room", "n"),
    [(8, 1), (8, 256), (16, 9), (24, 17), (24, 256), (96, 89), (256, 249)],
)
def test_padding_record_covers_the_end_when_a_record_does_not_fit(room: int, n: int) -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    advance(p, c, CAP - room)
    assert record_size(n) > room
    data = message(n, n)
    assert p.offer(data, meta=42)
    # A padding record of exactly the rest of the buffer, then the record at offset 0.
    assert words[DATA_WORD + (CAP - room) // 8] == header(room - 8, PAD)
    assert words[DATA_WORD] == header(n, WHOLE, 42)
    assert bytes(buf[HEADER_SIZE + 8 : HEADER_SIZE + 8 + n]) == data
    assert words[TAIL_WORD] == CAP + record_size(n)
    assert p.stats().used == room + record_size(n)  # the padding counts as used
    assert c.poll() == [(42, data)]
    assert words[HEAD_WORD] == CAP + record_size(n)
    assert c.stats().used == 0
    assert p.stats().bytes_read == p.stats().bytes_written  # padding is not payload


@pytest.mark.parametrize(("room", "n"), [(8, 0), (16, 1), (24, 9), (24, 16), (264, 256)])
def test_record_ending_exactly_at_the_buffer_end_needs_no_padding(room: int, n: int) -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    advance(p, c, CAP - room)
    assert record_size(n) == room
    data = message(n, n)
    assert p.offer(data, meta=7)
    assert words[DATA_WORD + (CAP - room) // 8] == header(n, WHOLE, 7)
    assert words[TAIL_WORD] == CAP
    assert p.stats().used == room
    nxt = message("next", 40)
    assert p.offer(nxt, meta=8)
    assert words[DATA_WORD] == header(40, WHOLE, 8)  # the next record starts at offset 0
    assert bytes(buf[HEADER_SIZE + 8 : HEADER_SIZE + 48]) == nxt
    assert p.stats().used == room + record_size(40)
    assert c.poll() == [(7, data), (8, nxt)]
    assert c.stats().used == 0


def test_record_that_fits_only_without_its_padding_is_refused_until_space_frees() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    advance(p, c, 24)  # head = tail = 24
    fillers = [(i, message(i, 192)) for i in range(4)] + [(4, message(4, 168))]
    for meta, data in fillers:
        assert p.offer(data, meta)
    assert words[TAIL_WORD] == 1000  # room before the end: 24 bytes
    assert p.stats().used == 976  # free: 48 bytes
    data = message("big", 32)  # a 40-byte record: fits in 48, not in 24 + 40
    assert p.stats().used + record_size(32) <= CAP
    assert need_with_padding(1000, 32, CAP) == 64
    full_before = p.stats().full_events

    assert not p.offer(data, meta=99)
    assert p.stats().full_events == full_before + 1
    assert words[TAIL_WORD] == 1000
    assert words[DATA_WORD + 1000 // 8] == 0  # not even the padding header was written
    assert not p.offer(data, meta=99)  # still full: nothing was consumed

    assert c.poll(budget=1) == fillers[:1]
    assert p.offer(data, meta=99)
    assert words[DATA_WORD + 1000 // 8] == header(16, PAD)
    assert p.stats().used == 776 + 24 + 40
    assert drain(c) == [*fillers[1:], (99, data)]


def test_positions_are_64_bit_counters_that_keep_growing() -> None:
    buf = bytearray(buffer_size(CAP))
    init_ring(buf, CAP)
    words = words_of(buf)
    start = (1 << 48) + CAP - 40  # near a lap boundary, far above 32 bits
    words[TAIL_WORD] = words[HEAD_WORD] = start
    p, c = Producer(buf), Consumer(buf)
    msgs = [(i, message(i, i * 5 % 200)) for i in range(100)]
    received: list[Message] = []
    for meta, data in msgs:
        while not p.offer(data, meta):
            received.extend(c.poll(budget=3))
    received.extend(drain(c))
    assert received == msgs
    assert words[TAIL_WORD] == words[HEAD_WORD] > start + 5 * CAP


@pytest.mark.parametrize("meta", [0, 1, 0xABCDE, MAX_META])
def test_meta_round_trips(meta: int) -> None:
    _buf, p, c = make_ring()
    assert p.offer(b"payload", meta)
    assert p.offer_batch([(b"x", meta)]) == 1
    assert c.poll() == [(meta, b"payload"), (meta, b"x")]
    assert stream(p, c, message(meta, 3000), meta) == [(meta, message(meta, 3000))]


@pytest.mark.parametrize("meta", [MAX_META + 1, 1 << 30, -1])
def test_meta_out_of_range_is_refused_and_publishes_nothing(meta: int) -> None:
    _buf, p, c = make_ring()
    advance(p, c, CAP - 16)  # the refused record would need padding
    with pytest.raises(ValueError):
        p.offer(b"abcdefghijklmnop", meta)
    with pytest.raises(ValueError):
        p.offer_batch([(b"ok", 1), (b"bad", meta)])
    with pytest.raises(ValueError):
        p.offer_fragments(message(0, 600), meta, 0)
    assert not c.pending
    assert p.stats().messages_written == c.stats().messages_read
    assert p.offer(b"next", 5)
    assert c.poll() == [(5, b"next")]


# -- batches and poll budgets -----------------------------------------------------------


def test_offer_batch_writes_the_prefix_that_fits_and_returns_its_length() -> None:
    _buf, p, c = make_ring()
    items = [(message(i, 24), i) for i in range(40)]  # 32-byte records: 32 fit
    expected = [(meta, data) for data, meta in items]
    assert p.offer_batch(items) == 32
    stats = p.stats()
    assert stats.messages_written == 32
    assert stats.bytes_written == 32 * 24
    assert stats.full_events == 1
    assert stats.used == CAP
    assert p.offer_batch(items[32:]) == 0
    assert p.stats().full_events == 2
    assert c.poll(budget=10) == expected[:10]
    assert p.offer_batch(items[32:]) == 8
    assert p.stats().full_events == 2  # all fitted: no full event
    assert drain(c) == expected[10:]


def test_offer_batch_publishes_the_tail_once_after_writing_all() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    items = [(message(i, 10 + i * 13), i) for i in range(8)]
    seen: list[tuple[bool, int]] = []

    def feed() -> Iterator[tuple[bytes, int]]:
        for item in items:
            seen.append((c.pending, words[TAIL_WORD]))
            yield item
        seen.append((c.pending, words[TAIL_WORD]))

    assert p.offer_batch(feed()) == len(items)
    assert seen == [(False, 0)] * (len(items) + 1)  # nothing visible while writing
    assert c.pending
    assert words[TAIL_WORD] == sum(record_size(len(d)) for d, _ in items)
    assert drain(c) == [(meta, data) for data, meta in items]


def test_offer_batch_wraps_with_padding_mid_batch() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    advance(p, c, CAP - 48)
    items = [(message(i, 24), i) for i in range(4)]  # 32-byte records
    assert p.offer_batch(items) == 4
    assert words[DATA_WORD + (CAP - 16) // 8] == header(8, PAD)
    assert p.stats().used == 32 + 16 + 3 * 32
    assert drain(c) == [(meta, data) for data, meta in items]


def test_offer_batch_of_nothing_publishes_nothing() -> None:
    _buf, p, c = make_ring()
    assert p.offer_batch([]) == 0
    assert not c.pending
    assert p.stats().full_events == 0


def test_offer_batch_with_an_oversized_message_raises_and_publishes_nothing() -> None:
    _buf, p, c = make_ring()
    items = [(b"a", 1), (b"b", 2), (bytes(p.max_record + 1), 3)]
    with pytest.raises(ValueError, match="257-byte message exceeds max_record 256"):
        p.offer_batch(items)
    assert not c.pending
    assert p.stats().messages_written == 0
    assert p.offer(b"c", 4)
    assert c.poll() == [(4, b"c")]


def test_poll_budget_limits_the_count_and_the_rest_comes_next() -> None:
    _buf, p, c = make_ring()
    items = [(message(i, i), i) for i in range(10)]
    expected = [(meta, data) for data, meta in items]
    assert p.offer_batch(items) == 10
    assert c.poll(budget=0) == []
    assert c.pending
    assert c.poll(budget=3) == expected[:3]
    assert c.stats().messages_read == 3
    assert c.poll(budget=3) == expected[3:6]
    assert c.poll(budget=100) == expected[6:]
    assert c.poll() == []
    assert not c.pending
    assert c.stats().messages_read == 10


def test_poll_budget_stops_before_a_padding_record_and_resumes_after_it() -> None:
    _buf, p, c = make_ring()
    advance(p, c, CAP - 48)
    msgs = [(i, message(i, 24)) for i in range(3)]  # the second one needs padding
    for meta, data in msgs:
        assert p.offer(data, meta)
    assert c.poll(budget=1) == msgs[:1]
    assert c.poll(budget=1) == msgs[1:2]
    assert c.poll(budget=1) == msgs[2:]
    assert c.stats().used == 0


# -- fragments --------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2.5, 3, 10])
def test_message_larger_than_the_ring_streams_as_fragments(factor: float) -> None:
    _buf, p, c = make_ring()
    data = message(factor, int(CAP * factor))
    meta = 0xABCDE
    sent = 0
    rounds = 0
    received: list[Message] = []
    while sent < len(data):
        new_sent = p.offer_fragments(data, meta, sent)
        assert new_sent > sent  # the consumer drained everything before this call
        sent = new_sent
        received.extend(c.poll())
        rounds += 1
        if sent < len(data):
            assert received == []
            assert c.partial
            assert c.stats().used == 0  # fragments are consumed as they arrive
    assert received == [(meta, data)]
    assert not c.partial
    assert rounds >= factor  # a round moves less than one ring of payload
    stats = p.stats()
    assert stats.messages_written == stats.messages_read == 1
    assert stats.bytes_written == stats.bytes_read == len(data)


@pytest.mark.parametrize("n", [1, 8, 247, 248, 249, 255, 256, 257, 504, 505, 700])
def test_offer_fragments_around_max_record(n: int) -> None:
    _buf, p, c = make_ring()
    data = message(n, n)
    assert p.offer(b"before", 1)
    assert p.offer_fragments(data, 2, 0) == n  # fits in one go: the ring is empty
    assert p.offer(b"after", 3)
    assert c.poll() == [(1, b"before"), (2, data), (3, b"after")]
    assert not c.partial
    assert p.stats().messages_written == 3


def test_fragments_reassemble_when_polled_with_a_budget_of_one() -> None:
    _buf, p, c = make_ring()
    data = message("budget", 5 * CAP)
    received: list[Message] = []
    sent = 0
    while sent < len(data):
        sent = p.offer_fragments(data, 77, sent)
        received.extend(c.poll(budget=1))
    assert received == [(77, data)]


def test_offer_fragments_on_a_full_ring_returns_sent_unchanged() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    for _ in range(3):
        assert p.offer(bytes(256))  # 264-byte records: 232 bytes stay free
    tail, full = words[TAIL_WORD], p.stats().full_events
    data = message("f", 3 * CAP)
    assert p.offer_fragments(data, 5, 0) == 0  # the FIRST record needs 232 + 264
    assert words[TAIL_WORD] == tail
    assert p.stats().full_events == full + 1
    assert len(c.poll(budget=1)) == 1  # 496 free: exactly padding + the FIRST record
    sent = p.offer_fragments(data, 5, 0)
    assert sent == p.max_record - 8
    assert p.stats().full_events == full + 2  # the MIDDLE that followed did not fit
    assert p.offer_fragments(data, 5, sent) == sent  # full again: nothing read
    rest = drain(c)
    assert c.partial
    assert rest == [(0, bytes(256))] * 2
    while sent < len(data):
        sent = p.offer_fragments(data, 5, sent)
        rest = c.poll()
    assert rest == [(5, data)]


def test_discard_partial_drops_a_half_received_message() -> None:
    buf, p, c = make_ring()
    data = message("half", 3 * CAP)
    sent = p.offer_fragments(data, 9, 0)
    assert 0 < sent < len(data)
    assert c.poll() == []
    assert c.partial
    c.discard_partial()  # the producer died mid-message
    assert not c.partial
    p.release()
    p2 = Producer(buf)  # its successor attaches to the same ring
    assert p2.offer(b"fresh", 10)
    assert p2.offer_fragments(message("whole", 600), 11, 0) == 600
    assert c.poll() == [(10, b"fresh"), (11, message("whole", 600))]
    assert not c.partial


def test_first_fragment_inside_a_partial_message_is_corruption() -> None:
    buf, p, c = make_ring()
    data = message("half", 3 * CAP)
    assert p.offer_fragments(data, 9, 0) < len(data)
    assert c.poll() == []
    p2 = Producer(buf)  # a successor that nobody told the consumer about
    assert p2.offer_fragments(message("new", 600), 12, 0) == 600
    with pytest.raises(RingCorrupted):
        c.poll()


def test_empty_message_through_offer_fragments_raises() -> None:
    _buf, p, c = make_ring()
    with pytest.raises(ValueError, match="empty"):
        p.offer_fragments(b"", 0, 0)
    assert not c.pending


def test_offer_above_max_record_raises() -> None:
    _buf, p, c = make_ring()
    assert p.offer(bytes(p.max_record))
    with pytest.raises(ValueError, match="257-byte message exceeds max_record 256"):
        p.offer(bytes(p.max_record + 1))
    assert p.stats().full_events == 0
    assert c.poll() == [(0, bytes(p.max_record))]


# -- streams: SELECT records -------------------------------------------------------------


def read_streams(cons: Consumer, budget: int = 64) -> list[tuple[bytes, list[Message]]]:
    """Everything readable, as (tag, messages) per poll, the way a demultiplexer reads."""
    out: list[tuple[bytes, list[Message]]] = []
    while True:
        selects = cons.selects
        batch = cons.poll(budget)
        if not batch:
            if cons.selects == selects:
                return out
            continue
        out.append((cons.selected, batch))


def test_a_poll_returns_one_stream_and_names_it() -> None:
    _buf, prod, cons = make_ring()
    assert prod.select(b"a")
    prod.write(b"a1", 1)
    prod.write(b"a2", 2)
    assert prod.select(b"bb")
    prod.write(b"b1", 3)
    assert prod.select(b"a")
    prod.write(b"a3", 4)
    assert read_streams(cons) == [
        (b"a", [(1, b"a1"), (2, b"a2")]),
        (b"bb", [(3, b"b1")]),
        (b"a", [(4, b"a3")]),
    ]
    assert not cons.pending


def test_selects_are_not_messages() -> None:
    _buf, prod, cons = make_ring()
    prod.select(b"x")
    prod.write(b"m")
    prod.select(b"y")
    prod.select(b"z")  # a stream switched to and left without a message
    prod.write(b"n")
    assert prod.written == 2
    assert prod.unread == 2
    streams = read_streams(cons)
    assert streams == [(b"x", [(0, b"m")]), (b"z", [(0, b"n")])]
    assert cons.selects == 3
    assert prod.unread == 0 and prod.empty


def test_select_is_refused_when_full_and_never_half_written() -> None:
    _buf, prod, cons = make_ring()
    while prod.write(b"x") != FULL:  # 16-byte records fill it to the byte
        pass
    assert not prod.select(b"tag")
    cons.poll(2)
    assert prod.select(b"tag")
    assert prod.write(b"after") != FULL
    *_, last = read_streams(cons)
    assert last == (b"tag", [(0, b"after")])


def test_a_consumer_taking_over_knows_the_stream_in_force() -> None:
    """A sender reading back what a gone reader left must know whose the records are,
    though the SELECT naming them was read (and freed) by that reader."""
    buf, prod, cons = make_ring()
    prod.select(b"\x01\x00and-a-long-declaration")
    for i in range(3):
        prod.write(bytes([i]))
    assert cons.poll(1) == [(0, b"\x00")]
    successor = Consumer(buf)
    assert successor.selected == b"\x01\x00and-a-"  # its first 8 bytes
    assert successor.poll() == [(0, b"\x01"), (0, b"\x02")]
    assert Consumer(make_ring()[0]).selected == b""  # none yet


@pytest.mark.parametrize("tag", [b"", b"t" * 1025])
def test_select_tag_length_is_bounded(tag: bytes) -> None:
    _buf, prod, _cons = make_ring()
    with pytest.raises(ValueError, match="SELECT tag"):
        prod.select(tag)


def test_a_select_inside_a_fragmented_message_is_corruption() -> None:
    _buf, prod, cons = make_ring()
    data = bytes(range(256)) * 16
    done = prod.offer_fragments(data, 0, 0)  # FIRST and more, not LAST: the ring is small
    assert 0 < done < len(data)
    cons.poll(64)  # reads the fragments so far
    prod.select(b"s")
    with pytest.raises(RingCorrupted, match="SELECT inside a fragmented message"):
        cons.poll(64)


def test_fragments_keep_their_stream() -> None:
    _buf, prod, cons = make_ring()
    prod.select(b"big")
    data = bytes(range(256)) * 2
    sent = 0
    out: list[tuple[bytes, list[Message]]] = []
    while sent < len(data):
        sent = prod.offer_fragments(data, 7, sent)
        out += read_streams(cons)
    prod.select(b"small")
    prod.write(b"s", 1)
    out += read_streams(cons)
    assert [(t, m) for t, m in out if m] == [(b"big", [(7, data)]), (b"small", [(1, b"s")])]


# -- corruption -------------------------------------------------------------------------


@pytest.mark.parametrize("end", [Producer, Consumer])
@pytest.mark.parametrize(
    ("word", "value", "match"),
    [
        (MAGIC_WORD, 0, "bad magic 0x0"),
        (MAGIC_WORD, int.from_bytes(b"BURING02", "little"), "bad magic"),
        (VERSION_WORD, 0, "layout version 0"),
        (VERSION_WORD, 2, "layout version 2"),  # before SELECT records
        (VERSION_WORD, 4, "layout version 4"),
        (CAPACITY_WORD, 0, "capacity 0 "),
        (CAPACITY_WORD, 64, "capacity 64 "),
        (CAPACITY_WORD, 1000, "capacity 1000 is not a power of two"),
        (CAPACITY_WORD, 2 * CAP, "exceeds"),
        (MAX_RECORD_WORD, 7, "max_record 7 "),
        (MAX_RECORD_WORD, CAP // 2 - 15, f"max_record {CAP // 2 - 15} "),
    ],
)
def test_attach_rejects_a_bad_header(
    end: type[Producer] | type[Consumer], word: int, value: int, match: str
) -> None:
    buf = bytearray(buffer_size(CAP))
    init_ring(buf, CAP)
    words = words_of(buf)
    words[word] = value
    words.release()
    with pytest.raises(RingCorrupted, match=re.escape(match)):
        end(buf)
    buf.extend(b"\0" * 8)  # the failed attach left no view on the buffer


def test_attach_to_a_never_initialised_buffer_is_corruption() -> None:
    with pytest.raises(RingCorrupted, match="bad magic"):
        Consumer(bytearray(buffer_size(CAP)))


@pytest.mark.parametrize("size", [0, 8, HEADER_SIZE, HEADER_SIZE + 63])
@pytest.mark.parametrize("end_name", ["Producer", "Consumer", "Reader"])
def test_attach_to_a_buffer_too_small_for_any_ring_is_corruption(end_name: str, size: int) -> None:
    end = globals()[end_name]
    # Fails on ring.py as written: the error message calls len() on the view it has just
    # released, so a ValueError escapes instead of RingCorrupted.
    with pytest.raises(RingCorrupted, match=f"buffer of {size} bytes cannot hold a ring"):
        end(bytearray(size))


def test_buffer_longer_than_needed_and_not_a_multiple_of_8_is_fine() -> None:
    buf = bytearray(buffer_size(CAP) + 13)
    init_ring(buf, CAP)
    p, c = Producer(buf), Consumer(buf)
    assert p.offer(b"odd", 1)
    assert c.poll() == [(1, b"odd")]


@pytest.mark.parametrize(
    ("record_header", "tail"),
    [
        pytest.param(0, 8, id="zeroed-memory"),
        pytest.param(header(8, 0), 16, id="type-0"),
        pytest.param(header(8, 7), 16, id="unknown-type"),
        pytest.param(header(0, SELECT), 16, id="select-empty"),
        pytest.param(header(2000, SELECT), 16, id="select-too-long"),
        pytest.param(header(8, 0xFF, MAX_META), 16, id="type-255"),
        pytest.param(header(CAP, WHOLE), 16, id="whole-past-buffer-end"),
        pytest.param(header(0xFFFFFFFF, WHOLE), 16, id="whole-huge-length"),
        pytest.param(header(64, WHOLE), 16, id="whole-past-tail"),
        pytest.param(header(16, PAD), 24, id="pad-short-of-the-end"),
        pytest.param(header(CAP, PAD), 16, id="pad-past-the-end"),
        pytest.param(header(8, MIDDLE), 16, id="middle-without-first"),
        pytest.param(header(8, LAST), 16, id="last-without-first"),
        pytest.param(header(4, FIRST), 16, id="first-too-short"),
        pytest.param(header(CAP, FIRST), 16, id="first-past-buffer-end"),
    ],
)
def test_poll_rejects_a_garbage_record_header(record_header: int, tail: int) -> None:
    buf, _p, c = make_ring()
    words = words_of(buf)
    words[DATA_WORD] = record_header
    words[TAIL_WORD] = tail
    with pytest.raises(RingCorrupted):
        c.poll()
    assert words[HEAD_WORD] == 0  # the consumer did not step over what it cannot read
    assert c.stats().messages_read == 0


def test_poll_rejects_garbage_after_a_valid_record_without_publishing_the_head() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    assert p.offer(b"good", 1)
    words[DATA_WORD + 2] = header(8, 9)
    words[TAIL_WORD] = 32
    with pytest.raises(RingCorrupted, match="bad record header"):
        c.poll()
    assert words[HEAD_WORD] == 0


def test_poll_rejects_a_tail_that_moved_backwards() -> None:
    buf, p, c = make_ring()
    words = words_of(buf)
    for i in range(3):
        assert p.offer(message(i, 8), i)
    assert len(c.poll()) == 3
    words[TAIL_WORD] = words[HEAD_WORD] - 8
    with pytest.raises(RingCorrupted):
        c.poll()


def put_raw(buf: bytearray, records: list[tuple[int, bytes, int]]) -> None:
    """Write (type, payload, meta) records from offset 0 and publish them: a rogue producer."""
    words = words_of(buf)
    off = 0
    for rtype, payload, meta in records:
        start = HEADER_SIZE + off + 8
        buf[start : start + len(payload)] = payload
        words[DATA_WORD + off // 8] = header(len(payload), rtype, meta)
        off += record_size(len(payload))
    words[TAIL_WORD] = off
    words.release()


def total(n: int) -> bytes:
    return n.to_bytes(8, "little")


def nxt(first_end: int, offset: int) -> bytes:
    """The identity a MIDDLE or LAST fragment begins with."""
    return first_end.to_bytes(8, "little") + offset.to_bytes(8, "little")


def test_raw_records_follow_the_documented_layout() -> None:
    buf, _p, c = make_ring()
    put_raw(
        buf,
        [
            (WHOLE, b"hello", 3),  # 16 bytes on the ring
            (FIRST, total(12) + b"abcd", 4),  # 24 more: it ends at position 40
            (MIDDLE, nxt(40, 4) + b"efgh", 0),
            (LAST, nxt(40, 8) + b"ijkl", 0),
        ],
    )
    assert c.poll() == [(3, b"hello"), (4, b"abcdefghijkl")]


@pytest.mark.parametrize(
    ("records", "match"),
    [
        pytest.param(
            [(FIRST, total(100) + bytes(8), 0), (LAST, nxt(24, 8) + bytes(8), 0)],
            "LAST fragment before the announced length",
            id="last-too-early",
        ),
        pytest.param(
            [(FIRST, total(10) + bytes(8), 0), (MIDDLE, nxt(24, 8) + bytes(8), 0)],
            "longer than announced",
            id="more-than-announced",
        ),
        pytest.param(
            [(FIRST, total(100) + bytes(8), 0), (MIDDLE, nxt(16, 8) + bytes(8), 0)],
            "fragment of message 16 at 8, expected 24 at 8",
            id="names-another-message",
        ),
        pytest.param(
            [(FIRST, total(100) + bytes(8), 0), (MIDDLE, nxt(24, 0) + bytes(8), 0)],
            "fragment of message 24 at 0, expected 24 at 8",
            id="wrong-offset",
        ),
        pytest.param(
            [(FIRST, total(100) + bytes(8), 0), (MIDDLE, bytes(8), 0)],
            "fragment without a FIRST",
            id="middle-too-short",
        ),
        pytest.param(
            [(FIRST, total(4) + bytes(8), 0)],
            "claims 4 bytes",
            id="first-body-longer-than-total",
        ),
        pytest.param(
            [(FIRST, total(1 << 41) + bytes(8), 0)],
            f"claims {1 << 41} bytes",
            id="first-claims-too-much",
        ),
        pytest.param(
            [(FIRST, total(100) + bytes(8), 0), (FIRST, total(100) + bytes(8), 0)],
            "FIRST fragment inside another message",
            id="first-inside-first",
        ),
    ],
)
def test_poll_rejects_inconsistent_fragments(
    records: list[tuple[int, bytes, int]], match: str
) -> None:
    buf, _p, c = make_ring()
    put_raw(buf, records)
    with pytest.raises(RingCorrupted, match=re.escape(match)):
        c.poll()


# -- init_ring and buffer_size validation -----------------------------------------------


BAD_CAPACITIES = [0, -64, 1, 32, 63, 100, 1000, 3 << 10, 1 << 32]


@pytest.mark.parametrize("capacity", BAD_CAPACITIES)
def test_init_ring_rejects_a_bad_capacity(capacity: int) -> None:
    buf = bytearray(HEADER_SIZE + 4096)
    with pytest.raises(ValueError, match=rf"got {re.escape(repr(capacity))}$"):
        init_ring(buf, capacity)
    assert not any(buf)  # nothing written


@pytest.mark.parametrize("capacity", BAD_CAPACITIES)
def test_buffer_size_rejects_a_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match=rf"got {re.escape(repr(capacity))}$"):
        buffer_size(capacity)


@pytest.mark.parametrize("capacity", [128, 1024, 1 << 21, 1 << 31])
def test_buffer_size_is_header_plus_capacity(capacity: int) -> None:
    assert buffer_size(capacity) == HEADER_SIZE + capacity


@pytest.mark.parametrize("max_record", [-1, 0, 7, CAP // 2 - 15, CAP // 2, CAP])
def test_init_ring_rejects_a_bad_max_record(max_record: int) -> None:
    buf = bytearray(buffer_size(CAP))
    with pytest.raises(ValueError, match=rf"got {re.escape(repr(max_record))}$"):
        init_ring(buf, CAP, max_record=max_record)


@pytest.mark.parametrize(("capacity", "max_record"), [(128, 24), (CAP, 24), (CAP, 496)])
def test_init_ring_accepts_max_record_bounds(capacity: int, max_record: int) -> None:
    _buf, p, c = make_ring(capacity, max_record)
    assert p.max_record == c.max_record == max_record
    data = message(max_record, max_record)
    assert p.offer(data, 1)
    with pytest.raises(ValueError, match="exceeds max_record"):
        p.offer(data + b"!", 2)
    assert stream(p, c, data * 5, 3) == [(1, data), (3, data * 5)]


@pytest.mark.parametrize("capacity", [128, CAP])
@pytest.mark.parametrize("max_record", range(8, 26))
def test_every_max_record_init_ring_accepts_can_stream_fragments(
    capacity: int, max_record: int
) -> None:
    # A MIDDLE fragment spends 16 bytes on its identity: with max_record 16 it would carry
    # no data, `sent` would never grow and offer_fragments would fill the ring with empty
    # fragments. init_ring must refuse every max_record that cannot make progress.
    buf = bytearray(buffer_size(capacity))
    try:
        init_ring(buf, capacity, max_record=max_record)
    except ValueError:
        return  # refusing a max_record too small for fragments is a fine answer too
    p, c = Producer(buf), Consumer(buf)
    data = message(max_record, 3 * capacity)
    assert stream(p, c, data, 6) == [(6, data)]


@pytest.mark.parametrize("capacity", [128, 256, CAP, 1 << 16])
def test_init_ring_default_max_record_is_a_quarter_of_the_capacity(capacity: int) -> None:
    _buf, p, c = make_ring(capacity)
    assert p.capacity == c.capacity == capacity
    assert p.max_record == c.max_record == capacity // 4


def test_init_ring_rejects_a_buffer_too_small() -> None:
    buf = bytearray(buffer_size(CAP) - 1)
    with pytest.raises(
        ValueError, match=f"buffer of {buffer_size(CAP) - 1} bytes is too small for capacity"
    ):
        init_ring(buf, CAP)


def test_init_ring_resets_a_used_ring() -> None:
    buf, p, c = make_ring()
    for i in range(40):
        if not p.offer(message(i, 100), i):
            c.poll()
    p.release()
    c.release()
    init_ring(buf, CAP)
    p, c = Producer(buf), Consumer(buf)
    stats = p.stats()
    assert (stats.used, stats.messages_written, stats.messages_read, stats.full_events) == (
        0,
        0,
        0,
        0,
    )
    assert not c.pending
    assert p.offer(b"again", 1)
    assert c.poll() == [(1, b"again")]


# -- flags shared between the ends ------------------------------------------------------


def test_waiting_flag_is_seen_by_the_producer() -> None:
    _buf, p, c = make_ring()
    assert not p.consumer_waiting
    c.set_waiting(True)
    assert p.consumer_waiting
    c.set_waiting(False)
    assert not p.consumer_waiting


def test_closing_is_seen_by_the_other_end_and_keeps_published_records() -> None:
    _buf, p, c = make_ring()
    assert not c.producer_closed
    assert not p.consumer_closed
    assert p.offer(b"last words", 1)
    p.close()
    assert c.producer_closed
    assert not p.consumer_closed
    assert c.poll() == [(1, b"last words")]
    c.close()
    assert p.consumer_closed


def test_flags_are_seen_by_ends_attached_later() -> None:
    buf, p, c = make_ring()
    c.set_waiting(True)
    assert Producer(buf).consumer_waiting
    c.close()
    assert Producer(buf).consumer_closed
    p.close()
    assert Consumer(buf).producer_closed


def test_closed_consumer_stays_closed_when_it_sets_waiting() -> None:
    _buf, p, c = make_ring()
    c.close()
    c.set_waiting(True)
    c.set_waiting(False)
    assert p.consumer_closed
    assert not p.consumer_waiting


def test_write_returns_the_consumer_signal_or_full() -> None:
    _buf, p, c = make_ring()
    assert p.write(b"a", 1) == RUNNING
    c.set_waiting(True)
    first_sleep = p.write(b"b", 2)
    assert first_sleep & STATE_MASK == WAITING
    assert p.signal() == first_sleep  # the same sleep: a producer rings once for it
    c.set_waiting(False)
    assert p.signal() == RUNNING
    c.set_waiting(True)
    second_sleep = p.signal()
    assert second_sleep & STATE_MASK == WAITING and second_sleep != first_sleep
    c.set_waiting(False)
    n = 2
    while p.write(bytes(200), 3) != FULL:
        n += 1
    assert p.stats().full_events == 1
    assert p.stats().messages_written == n
    got = drain(c)
    assert got[:2] == [(1, b"a"), (2, b"b")]
    assert len(got) == n
    c.close()
    assert p.signal() == CLOSED
    assert p.write(b"c") == CLOSED


def test_unread_and_shared_counters() -> None:
    _buf, p, c = make_ring()
    for i in range(5):
        assert p.write(message(i, 10), i) != FULL
    assert p.unread == 5
    assert p.stats().messages_written == 5  # the producer's own view is exact
    assert len(c.poll(budget=2)) == 2
    assert p.unread == 3
    # Every write publishes them with the tail: a reader that stopped reading (SIGSTOP)
    # still shows what waits for it (`mybus top`), with nobody's sweep.
    stats = c.stats()
    assert (stats.messages_written, stats.bytes_written) == (5, 50)
    assert (stats.messages_read, stats.bytes_read) == (2, 20)
    assert p.write(b"x") != FULL
    assert c.stats().messages_written == 6
    p.close()
    assert c.stats().messages_written == 6
    assert len(drain(c)) == 4
    assert p.unread == 0


def test_header_stats_reads_the_counters_from_a_copy_of_the_header() -> None:
    buf, p, c = make_ring()
    for i in range(3):
        assert p.write(message(i, 10), i) != FULL
    assert len(c.poll(budget=1)) == 1
    got = header_stats(bytes(buf[:HEADER_SIZE]))
    assert got == c.stats()
    assert (got.messages_written, got.messages_read, got.used) == (3, 1, 2 * record_size(10))
    with pytest.raises(RingCorrupted):
        header_stats(bytes(HEADER_SIZE))  # zeroes: no magic
    with pytest.raises(RingCorrupted):
        header_stats(bytes(buf[:100]))


def test_producer_identity_is_seen_by_the_consumer() -> None:
    buf, p, c = make_ring()
    assert c.producer_identity == (0, 0)
    p.set_identity(4242, (1 << 64) - 1)
    assert c.producer_identity == (4242, (1 << 64) - 1)
    assert Consumer(buf).producer_identity == (4242, (1 << 64) - 1)
    assert p.offer(b"still works", 1)
    assert c.poll() == [(1, b"still works")]


def test_release_drops_every_view_on_the_buffer() -> None:
    buf, p, c = make_ring()
    assert p.offer(b"x", 1)
    with pytest.raises(BufferError):
        buf.extend(b"\0" * 8)  # exported views pin the buffer (an mmap could not close)
    p.release()
    c.release()
    buf.extend(b"\0" * 8)
    with pytest.raises(ValueError):
        p.offer(b"y", 2)


# -- a model-based test -----------------------------------------------------------------


SMALL_CAP = 256  # max_record 64: most messages wrap, many need fragments
SMALL_MAX_RECORD = SMALL_CAP // 4
sizes = st.integers(0, 3 * SMALL_CAP) | st.sampled_from(
    [0, 1, SMALL_MAX_RECORD - 8, SMALL_MAX_RECORD - 7, SMALL_MAX_RECORD, SMALL_MAX_RECORD + 1]
)


class RingMachine(RuleBasedStateMachine):
    """The ring against a deque: what comes out is what went in, in order, once."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray(buffer_size(SMALL_CAP))
        init_ring(self.buf, SMALL_CAP)
        self.producer = Producer(self.buf)
        self.consumer = Consumer(self.buf)
        self.words = words_of(self.buf)
        self.model: deque[Message] = deque()
        self.count = 0

    def _poll(self, budget: int) -> list[Message]:
        got = self.consumer.poll(budget)
        assert len(got) <= budget
        for item in got:
            assert self.model, f"polled {item!r}, which was never sent"
            assert item == self.model.popleft()
        return got

    def _assert_refusal_is_honest(self, n: int) -> None:
        tail, head = self.words[TAIL_WORD], self.words[HEAD_WORD]
        assert tail - head + need_with_padding(tail, n, SMALL_CAP) > SMALL_CAP

    @rule(
        n=sizes,
        meta=st.integers(0, MAX_META),
        how=st.sampled_from(["offer", "write", "fragments"]),
        draws=st.data(),
    )
    def offer(self, n: int, meta: int, how: str, draws: st.DataObject) -> None:
        self.count += 1
        data = message(self.count, n)
        if n <= SMALL_MAX_RECORD and (how != "fragments" or n == 0):
            if how == "write":
                accepted = self.producer.write(data, meta) != FULL
            else:
                accepted = self.producer.offer(data, meta)
            if accepted:
                self.model.append((meta, data))
            else:
                self._assert_refusal_is_honest(n)
            return
        sent = 0
        for _ in range(10_000):
            new_sent = self.producer.offer_fragments(data, meta, sent)
            assert sent <= new_sent <= n
            if new_sent == n:
                break
            if new_sent == sent:  # no progress: let the consumer make room
                self._poll(draws.draw(st.integers(1, 8), label="budget"))
            sent = new_sent
        else:
            raise AssertionError(f"offer_fragments stalled at {sent} of {n} bytes")
        self.model.append((meta, data))

    @rule(
        batch=st.lists(st.tuples(st.integers(0, SMALL_MAX_RECORD), st.integers(0, MAX_META))),
    )
    def offer_batch(self, batch: list[tuple[int, int]]) -> None:
        items = []
        for n, meta in batch:
            self.count += 1
            items.append((message(self.count, n), meta))
        written = self.producer.offer_batch(items)
        assert 0 <= written <= len(items)
        self.model.extend((meta, data) for data, meta in items[:written])
        if written < len(items):
            self._assert_refusal_is_honest(len(items[written][0]))

    @rule(budget=st.integers(0, 16))
    def poll(self, budget: int) -> None:
        got = self._poll(budget)
        if len(got) < budget:  # a short read means everything was read
            assert not self.model
            assert not self.consumer.pending

    @invariant()
    def counters_agree_with_the_model(self) -> None:
        stats = self.producer.stats()
        assert 0 <= stats.used <= SMALL_CAP
        assert stats.used == self.words[TAIL_WORD] - self.words[HEAD_WORD]
        assert (stats.used == 0) == (not self.model) == self.producer.empty
        assert self.consumer.pending == bool(self.model)
        if self.consumer.partial:  # fragments were read mid-stream; the rest is unread
            assert self.consumer.pending
        assert stats.messages_written - stats.messages_read == len(self.model)
        assert stats.bytes_written - stats.bytes_read == sum(len(d) for _, d in self.model)
        assert self.producer.unread == len(self.model)

    def teardown(self) -> None:
        rest = drain(self.consumer)
        assert rest == list(self.model)
        self.words.release()
        self.producer.release()
        self.consumer.release()


def run_model(machine: type[RuleBasedStateMachine], examples: int, steps: int) -> None:
    """Run a state machine against the core in force (the `core` fixture's)."""
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_ring_model() -> None:
    run_model(RingMachine, examples=200, steps=40)


# -- the Reader: reading without releasing (the gateway's outbox) -------------------------


def make_reader(capacity: int = CAP) -> tuple[bytearray, Producer, Reader]:
    buf = bytearray(buffer_size(capacity))
    init_ring(buf, capacity)
    return buf, Producer(buf), Reader(buf)


def rtype_of(h: int) -> int:
    return (h >> 32) & 0xFF


def test_a_reader_reads_without_releasing_and_releases_when_told() -> None:
    _buf, p, r = make_reader()
    for i in range(3):
        assert p.offer(message(i, 100), i)
    got = r.peek(budget=2)
    assert [(rtype_of(h), h >> 40, payload) for _, h, payload in got] == [
        (WHOLE, 0, message(0, 100)),
        (WHOLE, 1, message(1, 100)),
    ]
    assert [end for end, _, _ in got] == [record_size(100), 2 * record_size(100)]
    assert r.head == 0 and r.position == got[-1][0]
    assert p.stats().used == 3 * record_size(100)  # nothing freed yet
    assert r.release_to(got[0][0]) == 1
    assert r.head == got[0][0] and p.stats().used == 2 * record_size(100)
    assert p.stats().messages_read == 1
    r.rewind()  # what was read and not released comes again
    again = r.peek()
    assert [payload for _, _, payload in again] == [message(1, 100), message(2, 100)]
    assert r.release_to(again[-1][0]) == 2
    assert not r.unreleased and not r.pending and p.empty


def test_a_successor_reader_starts_at_the_head() -> None:
    buf, p, r = make_reader()
    for i in range(4):
        assert p.offer(message(i, 50), i)
    first = r.peek(budget=3)
    r.release_to(first[0][0])  # then this reader's process dies
    successor = Reader(buf)
    assert successor.head == successor.position == first[0][0]
    assert [h >> 40 for _, h, _ in successor.peek()] == [1, 2, 3]


def test_release_to_a_position_not_read_or_not_a_record_end_is_refused() -> None:
    _buf, p, r = make_reader()
    assert p.offer(b"a" * 40, 1) and p.offer(b"b" * 40, 2)
    (end, _, _), = r.peek(budget=1)
    with pytest.raises(ValueError, match="only read up to"):
        r.release_to(end + record_size(40))
    with pytest.raises(ValueError, match="not the end of a record"):
        r.release_to(end - 8)
    assert r.release_to(0) == 0  # not past the head: nothing
    assert r.release_to(end) == 1


def test_a_reader_sees_fragments_one_by_one_and_each_names_its_message() -> None:
    _buf, p, r = make_reader()
    data = message("big", 3 * CAP)
    sent, records = 0, []
    while sent < len(data):
        sent = p.offer_fragments(data, 9, sent)
        batch = r.peek()
        records += batch
        if batch:
            r.release_to(batch[-1][0])
    types = [rtype_of(h) for _, h, _ in records]
    assert types[0] == FIRST and types[-1] == LAST and set(types[1:-1]) <= {MIDDLE}
    first_end = records[0][0]
    total = int.from_bytes(records[0][2][:8], "little")
    assert total == len(data)
    body, offset = bytearray(records[0][2][8:]), len(records[0][2]) - 8
    for _, _, payload in records[1:]:
        assert int.from_bytes(payload[:8], "little") == first_end
        assert int.from_bytes(payload[8:16], "little") == offset == len(body)
        body += payload[16:]
        offset += len(payload) - 16
    assert bytes(body) == data
    assert p.stats().messages_read == 1  # one message released, whatever its fragments


def test_records_reads_again_between_head_and_position_without_moving() -> None:
    _buf, p, r = make_reader()
    for i in range(3):
        p.offer(message(i, 30), i)
    got = r.peek()
    assert r.records() == got
    assert r.records(got[0][0]) == got[1:]
    assert r.position == got[-1][0] and r.head == 0


def test_offer_message_is_all_or_nothing_and_one_publish() -> None:
    _buf, p, c = make_ring()
    big = message("m", 600)  # more than max_record (256): three fragments
    assert p.offer_message(big, 4)
    assert p.offer_message(b"small", 5)
    assert c.poll() == [(4, big), (5, b"small")]
    for _ in range(4):  # 832 of 1024 bytes used: less room than big needs
        assert p.offer(bytes(200), 1)
    full = p.stats().full_events
    tail = p.stats().messages_written
    assert not p.offer_message(big, 6)  # it does not all fit: nothing of it is written
    assert p.stats().full_events == full + 1 and p.stats().messages_written == tail
    assert c.poll() == [(1, bytes(200))] * 4  # and nothing more: no part of big
    assert p.offer_message(big, 7)
    assert c.poll() == [(7, big)]


class ReaderMachine(RuleBasedStateMachine):
    """A producer and a Reader that releases late, rewinds, and is replaced by a successor
    now and then: from the head on, what any reader sees is what was written, in order,
    and releasing frees exactly what it covered."""

    def __init__(self) -> None:
        super().__init__()
        self.buf, self.producer, self.reader = make_reader(1024)
        self.written: deque[Record] = deque()  # records published and not yet released
        self.sending: tuple[bytes, int, int] | None = None  # a fragmented message, as sent
        self.messages = 0

    @rule(n=st.integers(0, 300), meta=st.integers(0, MAX_META))
    def write(self, n: int, meta: int) -> None:
        if self.sending is not None:
            return
        data = message(self.messages, n)
        if n <= self.producer.max_record:
            if self.producer.offer(data, meta):
                self.messages += 1
                self._expect_new()
        else:
            self.sending = (data, meta, 0)
            self.cont()

    @rule()
    def cont(self) -> None:
        if self.sending is None:
            return
        data, meta, sent = self.sending
        now = self.producer.offer_fragments(data, meta, sent)
        self.sending = None if now == len(data) else (data, meta, now)
        if now == len(data):
            self.messages += 1
        if now != sent:
            self._expect_new()

    def _expect_new(self) -> None:
        # What a fresh reader at the current tail-minus-new would read: re-read it all.
        fresh = Reader(self.buf)
        self.written = deque(fresh.records(fresh.head, fresh.tail))

    @rule(budget=st.integers(1, 8))
    def peek(self, budget: int) -> None:
        before = self.reader.position
        got = self.reader.peek(budget=budget)
        expected = [rec for rec in self.written if rec[0] - before > 0][: len(got)]
        assert got == expected

    @rule(k=st.integers(0, 8))
    def release(self, k: int) -> None:
        read = [rec for rec in self.written if rec[0] - self.reader.position <= 0]
        if not read:
            return
        end = read[min(k, len(read) - 1)][0]
        self.reader.release_to(end)
        while self.written and self.written[0][0] - end <= 0:
            self.written.popleft()

    @rule()
    def rewind(self) -> None:
        self.reader.rewind()

    @rule()
    def successor(self) -> None:
        self.reader = Reader(self.buf)  # the old one's process died

    @invariant()
    def space_is_what_is_unreleased(self) -> None:
        used = self.producer.stats().used
        assert used == self.reader.tail - self.reader.head
        assert self.reader.head - self.reader.position <= 0


def test_reader_model() -> None:
    run_model(ReaderMachine, examples=150, steps=60)


# -- the relay helpers: records packed as the wire carries them ---------------------------

SENDER, CORR, RELAYED_BIT = 1 << 6, 1 << 5, 1 << 23  # codec's and relayed's bits, restated


def packed(*records: tuple[int, int, bytes]) -> bytes:
    return b"".join(struct.pack("<QQ", end, h) + payload for end, h, payload in records)


def envelope(sender: bytes, body: bytes = b"body", corr: bool = False) -> bytes:
    return (b"\x07" * 8 if corr else b"") + bytes((len(sender),)) + sender + body


def test_peek_packed_is_what_peek_reads_packed_and_moves_alike() -> None:
    buf, p, r = make_reader(4096)
    for i in range(5):
        assert p.offer(message(i, 10 + 30 * i), i)
    assert p.offer_fragments(message("big", 700), 9, 0) == 700
    twin = Reader(buf)
    data, count = r.peek_packed(budget=4)
    expected = twin.peek(budget=4)
    assert count == 4 and data == packed(*expected)
    assert r.position == twin.position and r.records() == twin.records()
    data, count = r.peek_packed(max_bytes=100)
    assert data == packed(*twin.peek(max_bytes=100)) and count >= 1
    assert r.release_to(r.position) == twin.release_to(twin.position)
    rest = twin.peek(budget=100)
    assert r.peek_packed(budget=100) == (packed(*rest), len(rest))
    assert r.peek_packed() == (b"", 0)


def test_peek_packed_returns_what_precedes_a_bad_header_then_raises() -> None:
    buf, p, r = make_reader()
    assert p.offer(b"good", 1)
    assert p.offer(b"spoilt", 2)
    words = words_of(buf)
    words[DATA_WORD + 2] = header(6, rtype=9)  # the second record's header
    data, count = r.peek_packed()
    assert count == 1 and data.endswith(b"good")
    with pytest.raises(RingCorrupted, match="bad record header"):
        r.peek_packed()
    words.release()


def relay_args(data: bytes, after: int = 0, prefix: bytes = b"alpha/", kinds: int = 0b11111):
    return (data, 0, 1 << 20, 0xABC, after, prefix, kinds, SENDER, CORR, RELAYED_BIT)


def test_relay_writes_plain_records_behind_their_prefix_in_one_publish() -> None:
    _buf, p, c = make_ring()
    plain, longer, asked = envelope(b"alpha/a"), envelope(b"alpha/bb", b"x" * 30), envelope(
        b"alpha/c", corr=True
    )
    records = [
        (40, header(len(plain), meta=SENDER | 1), plain),
        (80, header(len(longer), meta=SENDER), longer),
        (120, header(len(asked), meta=SENDER | CORR), asked),
    ]
    data = packed(*records)
    c.set_waiting(True)
    taken, offset, last, nbytes, signal = p.relay(*relay_args(data))
    assert (taken, offset, last) == (3, len(data), 120)
    assert nbytes == sum(len(r[2]) for r in records)
    assert signal & STATE_MASK == WAITING  # the doorbell decision is the caller's
    got = c.poll()
    assert got == [
        ((h >> 40) | RELAYED_BIT, struct.pack("<QQ", 0xABC, end) + body) for end, h, body in records
    ]


@pytest.mark.parametrize(
    ("end", "rtype", "meta", "payload", "why"),
    [
        (99, FIRST, SENDER, bytes(12), "a fragment"),
        (40, WHOLE, SENDER, envelope(b"alpha/a"), "not past the record before"),
        (99, WHOLE, SENDER | 5, envelope(b"alpha/a"), "a kind not taken"),
        (99, WHOLE, 1, envelope(b"alpha/a"), "no sender"),
        (99, WHOLE, SENDER, envelope(b"gamma/a"), "another node's sender"),
        (99, WHOLE, SENDER, envelope(b"alph"), "a sender shorter than the prefix"),
        (99, WHOLE, SENDER, b"\x09ab", "a sender past the body"),
        (99, WHOLE, SENDER | CORR, b"\0\0\0\0", "a body shorter than its id"),
        (99, WHOLE, SENDER, envelope(b"alpha/a", bytes(240)), "too long for one record"),
    ],
)
def test_relay_stops_at_the_first_record_that_is_not_plain(
    end: int, rtype: int, meta: int, payload: bytes, why: str
) -> None:
    _buf, p, c = make_ring()  # max_record 256: at most 240 bytes behind a prefix
    first = envelope(b"alpha/a")
    data = packed(
        (40, header(len(first), meta=SENDER), first),
        (end, header(len(payload), rtype, meta), payload),
        (200, header(len(first), meta=SENDER), first),
    )
    taken, offset, last, nbytes, _ = p.relay(*relay_args(data, kinds=0b1111))
    assert (taken, offset, last, nbytes) == (1, 16 + len(first), 40, len(first)), why
    assert len(c.poll()) == 1
    again = p.relay(data, offset, 2, 0xABC, 40, b"alpha/", 0b1111, SENDER, CORR, RELAYED_BIT)
    assert again == (0, offset, 40, 0, -1), why
    assert not c.pending


def test_relay_stops_when_the_ring_is_full_and_publishes_what_fit() -> None:
    _buf, p, c = make_ring()
    body = envelope(b"alpha/a", bytes(200))
    records = [(64 * (i + 1) * 8, header(len(body), meta=SENDER), body) for i in range(10)]
    taken, offset, last, _, signal = p.relay(*relay_args(packed(*records)))
    assert 0 < taken < 10 and last == records[taken - 1][0] and signal >= 0
    assert p.stats().full_events == 1
    got = c.poll(budget=100)
    assert [m for m, _ in got] == [SENDER | RELAYED_BIT] * taken
    while taken < 10:  # room again: it goes on from where it stopped
        more, offset, last, _, _ = p.relay(
            packed(*records), offset, 10 - taken, 0xABC, last, b"alpha/", 0b11111, SENDER,
            CORR, RELAYED_BIT,
        )  # fmt: skip
        assert more > 0
        taken += more
        got += c.poll(budget=100)
    assert [payload[8:16] for _, payload in got] == [
        struct.pack("<Q", end) for end, _, _ in records
    ]


def test_relay_with_nothing_written_says_so() -> None:
    _buf, p, c = make_ring()
    assert p.relay(*relay_args(b"")) == (0, 0, 0, 0, -1)
    assert not c.pending


def test_offer_batch_takes_any_pairs_and_refuses_what_is_not_one() -> None:
    _buf, p, c = make_ring()
    assert p.offer_batch([[b"a", 1], (b"b", 2)]) == 2  # lists unpack as pairs too
    assert c.poll() == [(1, b"a"), (2, b"b")]
    with pytest.raises(ValueError):
        p.offer_batch([(b"a", 1, 2)])
    with pytest.raises(TypeError):
        p.offer_batch([7])
    assert not c.pending
