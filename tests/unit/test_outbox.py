"""The gateway's sending half over a real forward ring file, without sockets: what it
sends, what a new connection sends again, and what acknowledgements release.

The regression here: after a link was lost with frames in flight, the new connection
rewound the stream, and the other side's repeated acknowledgement (of records the lost
connection had carried) made the outbox read past the acknowledged position. Those
records counted as in flight though never sent, the window stayed shut, and the link
was up but sent nothing, for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mybus_actors import ringcore
from mybus_actors.items import Control, StreamAck
from mybus_actors.outbox import FIRST_WINDOW, Outbox
from mybus_actors.registry import forward_name, ring_filename
from mybus_actors.ringfile import RingFile

NODE, ORIGIN, TARGET, GEN = "beta", "sender", "sink", 7
CAPACITY = 1 << 21
PAYLOAD = b"x" * 1000


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[tuple[Outbox, ringcore.Producer]]:
    fname = ring_filename(ORIGIN, forward_name(NODE, TARGET), GEN)
    made = RingFile.create(tmp_path / fname, CAPACITY)
    producer = ringcore.Producer(made.map)
    outbox = Outbox(tmp_path, lambda stream, record, reason: True)
    assert outbox.adopt(fname) is not None
    try:
        yield outbox, producer
    finally:
        outbox.close()
        made.close(producer)


def _sent(outbox: Outbox) -> list[tuple[int, int]]:
    """(start, end) of each run `next_runs` hands out now, until it has none."""
    spans = []
    while runs := outbox.next_runs(NODE, 256 << 10):
        spans += [(run.start, run.records[-1][0]) for run in runs]
    return spans


def _done(position: int) -> StreamAck:
    return StreamAck(Control.DONE, ORIGIN, TARGET, GEN, position)


def test_a_repeated_ack_after_a_rewind_does_not_shut_the_window(
    ring: tuple[Outbox, ringcore.Producer],
) -> None:
    outbox, producer = ring
    for _ in range(1500):  # 1.5 MB: more than any window
        assert producer.offer(PAYLOAD)
    # The window grows with acknowledgements: 64 KiB, then 128, then 256.
    for _ in range(2):
        outbox.on_entry(NODE, _done(_sent(outbox)[-1][1]))
    (stream,) = outbox.active(NODE)
    head = stream.reader.head
    lost = _sent(outbox)  # 256 KiB on the connection about to be lost
    assert lost[-1][1] - head > 4 * FIRST_WINDOW - 2 * len(PAYLOAD)
    delivered = lost[-2][1]  # the other side had nearly all; its acknowledgement was lost

    # A new connection rewinds and resends from the head (one first window), and the
    # other side repeats its acknowledgement of what it had, far past what was resent.
    outbox.rewind(NODE)
    again = _sent(outbox)
    assert again[0][0] == head and again[-1][1] < delivered
    outbox.on_entry(NODE, _done(delivered))
    assert stream.reader.head == delivered
    assert stream.reader.position == delivered, "read past what was acknowledged"
    assert stream.in_flight() == 0
    # So the window is open: what follows the acknowledged position goes out.
    more = _sent(outbox)
    assert more, "the window stayed shut: the link would send nothing, for good"
    assert more[0][0] == delivered
    outbox.on_entry(NODE, _done(more[-1][1]))
    assert _sent(outbox), "still sending after the next acknowledgement"
