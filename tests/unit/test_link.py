"""Unit tests for mybus_actors.link: `InStream`, the receiving side of one stream, pure.

No sockets, rings or clocks: a "sender" is a list of records with their positions, as
its ring would hold them; runs are slices of it, resent from the sender's head after a
cut or a restart. The property at the end lets hypothesis cut the link, lose
acknowledgements, stall the target and restart the receiving gateway at random points;
the target (which drops what it has seen, as the endpoint's `relayed.Dedup` does) must
get every record once, in order.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mybus_actors.errors import RemoteProtocolError
from mybus_actors.items import FIRST, LAST, MIDDLE, WHOLE, Record
from mybus_actors.link import InStream

# Hypothesis imports this module to report a failing example, and it imports libcst when
# that is installed, which warns (DeprecationWarning, from mypy_extensions): under
# filterwarnings = error the report of a failure would become an INTERNALERROR.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ring(*payloads: bytes, start: int = 0) -> list[Record]:
    """WHOLE records as a ring lays them out from ``start``."""
    out, pos = [], start
    for payload in payloads:
        pos += 8 + (len(payload) + 7) // 8 * 8
        out.append((pos, len(payload) | WHOLE << 32, payload))
    return out


def fragments(total: bytes, chunk: int, start: int = 0) -> list[Record]:
    """A large message as FIRST, MIDDLE..., LAST records (ring.py's layout)."""
    body = total[: chunk - 8]
    first = len(total).to_bytes(8, "little") + body
    first_end = start + 8 + (len(first) + 7) // 8 * 8
    out: list[Record] = [(first_end, len(first) | FIRST << 32, first)]
    pos, offset = first_end, len(body)
    while offset < len(total):
        piece = total[offset : offset + chunk - 16]
        rtype = LAST if offset + len(piece) == len(total) else MIDDLE
        payload = first_end.to_bytes(8, "little") + offset.to_bytes(8, "little") + piece
        pos += 8 + (len(payload) + 7) // 8 * 8
        out.append((pos, len(payload) | rtype << 32, payload))
        offset += len(piece)
    return out


def test_a_record_is_new_once_and_done_moves_forward() -> None:
    s = InStream()
    recs = ring(b"a", b"b", b"c")
    assert s.admit(0, 0)
    for end, _, _ in recs[:2]:
        assert s.fresh(end)
        s.done(end)
    assert not s.fresh(recs[0][0]) and not s.fresh(recs[1][0])
    assert s.fresh(recs[2][0])
    assert s.ack_due() == recs[1][0]
    s.acked_to(recs[1][0])
    assert s.ack_due() is None


def test_a_new_receiver_takes_the_stream_from_wherever_it_stands() -> None:
    s = InStream()
    assert s.hwm is None and not s.fresh(100)
    assert s.admit(4096, 4096)  # a restarted gateway: the sender resends from its head
    assert s.hwm == 4096 and s.fresh(4112) and not s.fresh(4096)


def test_a_gap_this_side_made_is_refused_and_asked_for_again() -> None:
    s = InStream()
    recs = ring(b"a", b"b", b"c", b"d")
    assert s.admit(0, 0)
    s.done(recs[0][0])
    # Records 1.. were dropped; a run starting at record 2, the sender not released
    # there, is refused and a rewind to the last record done is owed.
    assert not s.admit(recs[1][0], 0)
    assert s.rewind_due() == recs[0][0]
    assert s.rewind_due() is None  # once
    assert not s.admit(recs[2][0], 0)  # what followed still comes: still refused
    assert s.admit(recs[0][0], 0)  # the resend
    assert not s.dropping


def test_a_gap_the_sender_made_is_jumped() -> None:
    s = InStream()
    recs = ring(b"a", b"b", b"c")
    assert s.admit(0, 0)
    s.done(recs[0][0])
    s.begin_large(recs[0][0], 100, 0, 10)
    # The sender released up to record 2's start without our word: it gave those up.
    assert s.admit(recs[1][0], recs[1][0])
    assert s.hwm == recs[1][0] and s.large is None


def test_a_stall_drops_what_follows_until_the_resend() -> None:
    s = InStream()
    recs = ring(b"a", b"b", b"c")
    assert s.admit(0, 0)
    s.done(recs[0][0])
    s.stall()  # record 1 found its target full
    assert s.dropping and s.hwm == recs[0][0]
    assert not s.admit(recs[1][0], 0)
    assert s.rewind_due() == recs[0][0]
    assert s.admit(0, 0)  # resent from the head: records up to hwm are not new
    assert not s.fresh(recs[0][0]) and s.fresh(recs[1][0])


def test_a_bounced_record_is_done_and_bounced_again_until_released() -> None:
    s = InStream()
    recs = ring(b"a", b"b")
    assert s.admit(0, 0)
    s.bounce(recs[0][0], "no actor 'x'")
    assert not s.fresh(recs[0][0])
    assert s.rebounce(recs[0][0]) == "no actor 'x'"  # sent again: bounced again
    assert s.admit(0, 0)
    assert s.rebounce(recs[0][0]) == "no actor 'x'"
    assert s.admit(recs[0][0], recs[0][0])  # the sender released it: it saw the bounce
    assert s.rebounce(recs[0][0]) is None


def test_fragments_of_a_large_message_are_followed() -> None:
    s = InStream()
    recs = fragments(bytes(range(200)), 64)
    assert s.admit(0, 0)
    assert s.fragment(recs[0]) == "first"
    s.begin_large(recs[0][0], 200, 3, 56)
    s.done(recs[0][0])
    for rec in recs[1:]:
        assert s.fragment(rec) == "next"
        assert s.large is not None
        s.large.received += len(rec[2]) - 16
        s.done(rec[0])
    assert s.large is not None and s.large.received == 200


def test_a_fragment_that_does_not_continue_the_message_is_an_error() -> None:
    s = InStream()
    recs = fragments(bytes(300), 64)
    assert s.admit(0, 0)
    s.begin_large(recs[0][0], 300, 0, 56)
    with pytest.raises(RemoteProtocolError, match="offset 104, expected 56"):
        s.fragment(recs[2])  # the one before it is missing
    with pytest.raises(RemoteProtocolError, match="inside the one begun"):
        s.fragment(fragments(bytes(300), 64, start=recs[-1][0])[0])


def test_fragments_of_a_message_this_side_never_saw_are_unknown_or_skipped() -> None:
    s = InStream()
    recs = fragments(bytes(300), 64)
    assert s.admit(recs[1][0], recs[1][0])
    assert s.fragment(recs[2]) == "unknown"  # a restart: the caller looks for its file
    s.skip(recs[0][0], last=False)
    assert s.fragment(recs[3]) == "skip"
    assert s.fragment(recs[-1]) == "skip"  # the LAST ends the skipping
    assert s.skipping is None


# -- a round trip through cuts, lost acks, stalls and restarts ---------------------------


@st.composite
def scripts(draw: Any) -> list[tuple[Any, ...]]:
    ops = st.one_of(
        st.tuples(st.just("write"), st.integers(0, 40)),
        st.tuples(st.just("write"), st.integers(0, 40)),
        st.tuples(st.just("send"), st.integers(1, 5)),
        st.tuples(st.just("send"), st.integers(1, 5)),
        st.tuples(st.just("deliver"), st.integers(1, 3)),
        st.tuples(st.just("deliver"), st.integers(1, 3)),
        st.tuples(st.just("ack"), st.booleans()),  # True: the ack is lost
        st.tuples(st.just("full"), st.booleans()),  # the target's ring fills / drains
        st.just(("cut",)),
        st.just(("restart",)),  # the receiving gateway dies and comes back
    )
    return list(draw(st.lists(ops, min_size=5, max_size=120)))


@PROPS
@given(script=scripts())
def test_every_record_reaches_the_target_once_in_order(script: list[tuple[Any, ...]]) -> None:
    written: list[Record] = []  # the sender's ring
    head = 0  # released: the sender frees what is acknowledged
    sent_to = 0  # index of the next record to send on this connection
    wire: list[tuple[int, int, list[Record]]] = []  # runs in flight: start, released, records
    stream = InStream()
    target_full = False
    seen: dict[int, int] = {}  # the target endpoint's dedup: last position taken
    got: list[int] = []  # what the target got, by position

    def pos_of(i: int) -> int:
        return written[i - 1][0] if i else 0

    def reconnect() -> None:
        nonlocal sent_to
        wire.clear()
        sent_to = next(i for i in range(len(written) + 1) if pos_of(i) == head)

    for op in script:
        match op:
            case ("write", n):
                written.extend(ring(bytes(n), start=written[-1][0] if written else 0))
            case ("send", n):
                batch = written[sent_to : sent_to + n]
                if batch:
                    wire.append((pos_of(sent_to), head, batch))
                    sent_to += len(batch)
            case ("deliver", n):
                for _ in range(min(n, len(wire))):
                    start, released, batch = wire.pop(0)
                    if not stream.admit(start, released):
                        continue
                    for end, _, _ in batch:
                        if not stream.fresh(end):
                            continue
                        if stream.dropping:
                            break
                        if target_full:
                            stream.stall()
                            break
                        if seen.get(0, -1) < end:  # the endpoint's dedup
                            seen[0] = end
                            got.append(end)
                        stream.done(end)
            case ("ack", lost):  # a lost ack is one a cut took with it: a cut follows
                pos = stream.ack_due()
                if pos is not None:
                    stream.acked_to(pos)
                    if not lost:
                        head = max(head, pos)
            case ("full", full):
                target_full = full
                if not full and (pos := stream.rewind_due()) is not None:
                    # The sender rewinds to there (it has not released it).
                    sent_to = next(i for i in range(len(written) + 1) if pos_of(i) == pos)
                    wire.clear()
            case ("cut",):
                stream.acked = None  # what was not sent goes with the connection
                reconnect()
            case ("restart",):
                stream = InStream()  # nothing survives but the sender's ring and the target
                reconnect()
    # Then the link heals: the target drains, everything goes, everything is acked.
    target_full = False
    for _ in range(3 * len(written) + 3):
        stream.acked = None  # a new connection: acknowledgements not heard go again
        reconnect()
        while sent_to < len(written):
            wire.append((pos_of(sent_to), head, written[sent_to : sent_to + 4]))
            sent_to += 4
        for start, released, batch in wire:
            if stream.admit(start, released):
                for end, _, _ in batch:
                    if stream.fresh(end):
                        if seen.get(0, -1) < end:
                            seen[0] = end
                            got.append(end)
                        stream.done(end)
        if (pos := stream.ack_due()) is not None:
            head = max(head, pos)
        if head == pos_of(len(written)):
            break
    assert got == [end for end, _, _ in written]  # every one, once, in order
    assert head == pos_of(len(written))
