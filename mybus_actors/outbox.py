"""The sending half of a gateway: forward rings read without releasing, runs out, acks in.

Each forward ring (`registry.forward_name`: one per local sender and remote actor) is a
stream. The gateway reads its records with a `ring.Reader`, sends them in runs, and
releases them only when the other node acknowledges them (DONE): what it has read and
not released is still in shared memory, so a gateway that dies loses nothing and its
successor, adopting the rings it finds, sends it again from the head. Generations of one
(sender, remote actor) pair are read in order, the older drained and retired first.

A stream sends at most `WINDOW` bytes beyond what is acknowledged: the receiving side,
which holds what it cannot deliver yet, never holds more than that per stream, and a
slow remote actor holds back its own senders only (their rings fill, then `MailboxFull`).

Records the other node could not deliver come back as BOUNCED entries; the record is
still here (it is released only after the bounce), so the sender gets a dead letter with
its message, made here and delivered before the record is released. Knows rings, files
and the wire's runs; not sockets or links.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from mybus_actors import ringcore
from mybus_actors.errors import RingCorrupted
from mybus_actors.items import (
    FIRST,
    WHOLE,
    Control,
    PackedRecords,
    Record,
    Run,
    StreamAck,
    record_type,
)
from mybus_actors.registry import is_alive, parse_forward_name, parse_ring_filename

__all__ = ["WINDOW", "OutStream", "Outbox"]

_log = logging.getLogger(__name__)

WINDOW: Final = 1 << 20  # bytes a stream may have sent and not acknowledged
# On a new connection a stream starts with a small window that doubles with every
# acknowledgement (TCP's slow start): on a link cut every few hundred kilobytes, a full
# window resent at once would be cut again before any of it was acknowledged.
FIRST_WINDOW: Final = 64 << 10
_RUN_BYTES: Final = 128 << 10  # a stream's share of one frame before the next one's turn


def _peer_alive(pid: int, token: int) -> bool:
    return is_alive(pid, token / 1000)


class OutStream:
    """One forward ring being read: what ``origin`` wrote for ``target`` on ``node``."""

    def __init__(self, path: Path, origin: str, node: str, target: str, gen: int) -> None:
        self.path = path
        self.origin, self.node, self.target, self.gen = origin, node, target, gen
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        try:
            self.reader = ringcore.Reader(self._map)
        except RingCorrupted:
            self._map.close()
            raise
        self.acked = self.reader.head  # the last DONE position
        self.hold: int | None = None  # release nothing past here (a dead letter waits)
        self.given_up = False  # its node is unreachable: what comes is returned at once

    @property
    def key(self) -> tuple[str, str, int]:
        return self.origin, self.target, self.gen

    def in_flight(self) -> int:
        return self.reader.position - self.reader.head

    def retirable(self) -> bool:
        """Everything written is released, and its writer is done (closed it or died)."""
        r = self.reader
        return not r.unreleased and (r.producer_closed or not _peer_alive(*r.producer_identity))

    def release(self) -> None:
        """Release up to the last acknowledgement, but not past a waiting dead letter."""
        pos = self.acked if self.hold is None else min(self.acked, self.hold)
        if pos - self.reader.head > 0:
            if pos - self.reader.position > 0:
                self._read_up_to(pos)
            self.reader.release_to(pos)

    def _read_up_to(self, pos: int) -> None:
        # The other side has records this reader has not read (it was adopted after the
        # gateway that sent them died, or rewound for a new connection and the other
        # side acknowledges again what the old one carried): read past them, they are
        # not sent again. Exactly up to `pos`: what a peek reads beyond it was never
        # sent, and counted as in flight it would hold the window shut for good.
        reader = self.reader
        while reader.position - pos < 0:
            if not reader.peek(budget=256, max_bytes=1 << 30):
                raise ValueError(f"acknowledged {pos}, beyond the tail {reader.tail}")
        if reader.position != pos:
            reader.rewind_to(pos)

    def record_ending_at(self, end: int) -> Record | None:
        for record in self.reader.records():
            if record[0] == end:
                return record
        return None

    def close(self) -> None:
        self.reader.release()
        with contextlib.suppress(BufferError):
            self._map.close()


class Outbox:
    """The forward rings of this node, grouped by the node they are for.

    ``dead_letter(stream, record, reason) -> bool`` makes the notice for a record that
    will not be delivered and returns whether it is written (False: try again later).
    """

    def __init__(
        self,
        rings_dir: Path,
        dead_letter: Callable[[OutStream, Record, str], bool],
    ) -> None:
        self._dir = rings_dir
        self._dead_letter = dead_letter
        self._by_file: dict[str, OutStream] = {}
        # Generations of one (origin, node, target), oldest first: only the first is read.
        self._pairs: dict[tuple[str, str, str], list[OutStream]] = {}
        self._turn: dict[str, int] = {}  # round robin per node
        self._window: dict[str, int] = {}  # per node: what each stream may have in flight
        self._owed: list[tuple[OutStream, Record, str]] = []  # dead letters not written yet
        self.taken = 0  # records handed to the links so far (the pump's measure of a flow)
        # Per node, for `mybus top` and metrics: times records went again, and their bytes.
        self.resends: dict[str, int] = {}
        self.resent_bytes: dict[str, int] = {}

    # -- finding rings ---------------------------------------------------------------

    def adopt(self, fname: str) -> OutStream | None:
        """Start reading a forward ring (announced, or found); None if it is not one."""
        stream = self._by_file.get(fname)
        if stream is not None:
            return stream
        parsed = parse_ring_filename(fname)
        forward = parse_forward_name(parsed[1]) if parsed else None
        if parsed is None or forward is None:
            return None
        try:
            stream = OutStream(self._dir / fname, parsed[0], *forward, parsed[2])
        except (OSError, ValueError, RingCorrupted):
            return None  # gone already, or not a ring
        self._by_file[fname] = stream
        gens = self._pairs.setdefault((stream.origin, stream.node, stream.target), [])
        gens.append(stream)
        gens.sort(key=lambda s: s.gen)
        return stream

    def scan(self) -> None:
        """Adopt every forward ring in the directory (a gateway starting, or a lost
        announcement)."""
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            return
        for fname in names:
            if fname not in self._by_file:
                self.adopt(fname)

    # -- what to send ----------------------------------------------------------------

    def active(self, node: str) -> Iterator[OutStream]:
        """The streams for ``node`` being read (the oldest generation of each pair)."""
        for (_, n, _), gens in self._pairs.items():
            if n == node and gens:
                yield gens[0]

    def nodes(self) -> set[str]:
        return {n for (_, n, _), gens in self._pairs.items() if gens}

    def pending(self, node: str) -> bool:
        """Some stream for ``node`` has records to send now (within its window)."""
        window = self._window.get(node, FIRST_WINDOW)
        return any(
            s.reader.pending and s.in_flight() < window and not s.given_up
            for s in self.active(node)
        )

    def unreleased(self, node: str) -> bool:
        """Some stream for ``node`` holds records not yet acknowledged."""
        return any(s.reader.unreleased for gens in self._pairs_of(node) for s in gens)

    def _pairs_of(self, node: str) -> Iterator[list[OutStream]]:
        return (gens for (_, n, _), gens in self._pairs.items() if n == node)

    def rewind(self, node: str) -> None:
        """A new connection to ``node``: everything not acknowledged goes again, in a
        window that grows with the acknowledgements."""
        self._window[node] = FIRST_WINDOW
        for stream in self.active(node):
            self._count_resend(node, stream.reader.position - stream.reader.head)
            stream.reader.rewind()

    def _count_resend(self, node: str, nbytes: int) -> None:
        if nbytes > 0:
            self.resends[node] = self.resends.get(node, 0) + 1
            self.resent_bytes[node] = self.resent_bytes.get(node, 0) + nbytes

    def next_runs(self, node: str, budget: int) -> list[Run]:
        """Runs for a DATA frame of about ``budget`` payload bytes, round robin."""
        streams = [s for s in self.active(node) if s.reader.pending and not s.given_up]
        if not streams:
            return []
        start = self._turn.get(node, 0) % len(streams)
        self._turn[node] = start + 1
        runs: list[Run] = []
        window = self._window.get(node, FIRST_WINDOW)
        for i in range(len(streams)):
            stream = streams[(start + i) % len(streams)]
            room = window - stream.in_flight()
            if room <= 0 or budget <= 0:
                continue
            r = stream.reader
            begin, released = r.position, r.head
            try:
                # One bytes object per run, packed as the wire carries it: no Python
                # object per record on the way out.
                data, count = r.peek_packed(budget=1024, max_bytes=min(room, budget, _RUN_BYTES))
            except RingCorrupted:
                _log.error("forward ring %s is corrupted; its records stay", stream.path.name)
                continue
            if count:
                records = PackedRecords(data, count)
                budget -= records.payload_bytes
                self.taken += count
                runs.append(Run(stream.origin, stream.target, stream.gen, begin, released, records))
        return runs

    # -- what the other node said ------------------------------------------------------

    def on_entry(self, node: str, entry: StreamAck) -> None:
        """Apply one ACK entry from ``node``.

        Raises:
            ValueError: it names a position that is not a record end of the stream.
        """
        stream = self._find(node, entry.origin, entry.target, entry.gen)
        if stream is None:
            return  # retired already: an old acknowledgement
        if entry.kind is Control.DONE:
            if entry.position - stream.acked > 0:
                stream.acked = entry.position
                stream.release()
                self._window[node] = min(2 * self._window.get(node, FIRST_WINDOW), WINDOW)
        elif entry.kind is Control.REWIND:
            before = stream.reader.position
            stream.reader.rewind_to(entry.position)
            self._count_resend(node, before - stream.reader.position)
        else:
            record = stream.record_ending_at(entry.position)
            if record is not None:  # else released already, or not read again yet
                self._bounced(stream, record, entry.reason)

    def _find(self, node: str, origin: str, target: str, gen: int) -> OutStream | None:
        for stream in self._pairs.get((origin, node, target), ()):
            if stream.gen == gen:
                return stream
        return None

    def _bounced(self, stream: OutStream, record: Record, reason: str) -> None:
        if self._dead_letter(stream, record, reason):
            return
        start = self._start_of(stream, record)
        stream.hold = start if stream.hold is None else min(stream.hold, start)
        self._owed.append((stream, record, reason))

    @staticmethod
    def _start_of(stream: OutStream, record: Record) -> int:
        before = stream.reader.head
        for end, _, _ in stream.reader.records():
            if end == record[0]:
                return before
            before = end
        return before

    # -- maintenance -----------------------------------------------------------------

    def retry_dead_letters(self) -> None:
        if not self._owed:
            return
        owed, self._owed = self._owed, []
        held: dict[OutStream, int] = {}
        for stream, record, reason in owed:
            if not self._dead_letter(stream, record, reason):
                self._owed.append((stream, record, reason))
                start = self._start_of(stream, record)
                held[stream] = min(held.get(stream, start), start)
        for stream in {s for s, _, _ in owed}:
            stream.hold = held.get(stream)
            stream.release()

    def give_up(self, node: str, reason: str) -> int:
        """``node`` is unreachable: every record for it comes back to its sender (as a
        dead letter) and is released, and so will every record written from now on,
        until `resume`. Returns how many messages went back."""
        count = 0
        for gens in list(self._pairs_of(node)):
            for stream in gens:
                stream.given_up = True
                count += self._return_all(stream, reason)
        return count

    def resume(self, node: str) -> None:
        for gens in self._pairs_of(node):
            for stream in gens:
                stream.given_up = False

    def _return_all(self, stream: OutStream, reason: str) -> int:
        """Every record from the head on goes back to its sender (one notice per
        message: a large one's FIRST, or the first fragment of one begun before)."""
        r = stream.reader
        r.rewind()
        count = 0
        first = True
        while r.pending:
            records = r.peek(budget=1024, max_bytes=1 << 24)
            for record in records:
                if first or record_type(record[1]) in (WHOLE, FIRST):
                    count += 1
                    self._bounced(stream, record, reason)
                first = False
            stream.acked = records[-1][0]
        stream.release()
        return count

    def maintain(self) -> list[OutStream]:
        """Return to their senders what was written for a node given up; retire the
        rings that are drained and done with (unlinked); return those."""
        retired: list[OutStream] = []
        for pair, gens in list(self._pairs.items()):
            for stream in list(gens):
                if stream.given_up and stream.reader.pending:
                    self._return_all(stream, f"node {stream.node!r} is unreachable")
                if stream.retirable():
                    gens.remove(stream)
                    retired.append(stream)
            if not gens:
                del self._pairs[pair]
        for stream in retired:
            self._by_file.pop(stream.path.name, None)
            stream.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stream.path)
        return retired

    def set_waiting(self, node: str, waiting: bool) -> None:
        for stream in self.active(node):
            stream.reader.set_waiting(waiting)

    def close(self) -> None:
        for stream in self._by_file.values():
            stream.close()
        self._by_file.clear()
        self._pairs.clear()
