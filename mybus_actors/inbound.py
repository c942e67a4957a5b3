"""Receiving: the rings a process reads, their generations, channels, held names, sleep.

One `Inbound` per endpoint (`mailbox.Endpoint` is the façade over it and `outbound`).

- The rings to this process are announced on its doorbell (and found by a periodic scan
  of ``rings/`` should an announcement be lost); several generations of one writer's
  ring are read in order: a newer one only after the older is closed and drained, so
  FIFO per pair of names holds across generations.
- `poll_batches` drains the active rings round robin, a run of one channel at a time.
- A slow receiver holds back only its own senders: the reader never stops reading a
  ring. What comes for a paused name (an async receive under way, a restart) is held in
  its queue; past ``hold_bytes`` the reader marks that name's channels in the ring's
  channel page, and their senders wait there, then get `MailboxFull`. A name unbound
  here marks its channels gone; what was under way comes out of `poll_batches` for a
  name no longer bound, for the caller to return to its senders.
- No lost wake-up: the receiver sets its waiting flags, fences, re-checks the rings,
  then sleeps on the doorbell; the sender publishes, fences and rings only if the flag
  is set. (The native core's `set_waiting` is a sequentially consistent store; the pure
  one relies on the fence here, a lock's acquire and release.) Sleeps are bounded.
- Rings whose writer closed them or died are drained and unlinked; idle ones are
  swept; records the gateway wrote carry a relay prefix (`relayed`), stripped here,
  dropping what was delivered before.

Knows ring files, the doorbell and the registry; not what is sent, nor actors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from mybus_actors import ring as _ring
from mybus_actors import ringcore
from mybus_actors.doorbell import NEW_RING, WAKE, Doorbell
from mybus_actors.errors import ResourceExhausted, RingCorrupted, SerializationError
from mybus_actors.pressure import OnceLog, exhausted
from mybus_actors.registry import (
    FORWARD_TO,
    Registry,
    is_alive,
    parse_forward_name,
    parse_ring_filename,
)
from mybus_actors.relayed import BLOB, INNER_META, PREFIX, RELAYED, Dedup, map_blob, strip_run
from mybus_actors.ringfile import CHANNEL_ID, GONE, HELD, OPEN, PAGE, RingFile
from mybus_actors.timers import ActivityTable

__all__ = ["Batch", "Delivery", "Inbound", "Payload"]

_log = logging.getLogger(__name__)

_MAX_SLEEP: Final = 0.5  # the doorbell sleep's safety net, should a wake-up ever go astray
_HOT_SPIN: Final = 50e-6  # spin without yielding for this long, then yield each round

# A record's payload: bytes, or a view of a large message's mapped blob file.
Payload = bytes | memoryview
Batch = tuple[str, str, Sequence[tuple[int, Payload]]]


class Delivery(NamedTuple):
    """One message as read from a ring: who sent it, to whom, the meta word, the bytes."""

    sender: str
    receiver: str
    meta: int
    payload: Payload


def _peer_alive(pid: int, token: int) -> bool:
    return is_alive(pid, token / 1000)


class _Fence:
    """A full memory barrier: a lock's acquire and release are lock-prefixed instructions."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self) -> None:
        self._lock.acquire()
        self._lock.release()


class _Held:
    """What was read for a paused name and waits for it: batches, and their bytes."""

    __slots__ = ("batches", "size")

    def __init__(self) -> None:
        self.batches: deque[tuple[str, Sequence[tuple[int, Payload]]]] = deque()
        self.size = 0


class _InRing:
    __slots__ = (
        "chans",
        "consumer",
        "file",
        "key",
        "names",
        "page",
        "pair",
        "plain",
        "sender",
        "used",
    )

    def __init__(
        self, file: RingFile, consumer: _ring.Consumer, sender: str, receiver: str, page: Any
    ):
        self.file = file
        self.consumer = consumer
        self.sender = sender  # the writing process's mailbox
        self.key = (sender, receiver)
        self.page = page
        self.chans: dict[bytes, tuple[str, str]] = {}  # SELECT tag -> (sender, receiver)
        self.names: set[str] = set()  # receivers declared here (for `_routes_to`)
        self.pair: tuple[str, str] | None = None  # the channel being read
        self.plain: tuple[str, str] | None = None  # the same, if not the gateway's
        self.used = True


def _size(items: Sequence[tuple[int, Payload]]) -> int:
    return sum(len(p) for _, p in items) + 16 * len(items)


class Inbound:
    """The rings this endpoint reads, the names it holds back, and its sleep.

    Args:
        registry: the runtime directory's registry.
        names: the names bound on the endpoint (shared with it).
        doorbell: this endpoint's doorbell.
        spin, channel_idle, clock, on_stream_ring, hold_bytes: as `mailbox.Endpoint`'s.
        peer_left: told the mailbox of a process that closed its ring to us (we may
            drop ours to it).
        sweep: the endpoint's periodic sweeps, run when a poll finds nothing.
        short: where an episode of exhaustion is logged once.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        names: set[str],
        doorbell: Doorbell,
        spin: float,
        channel_idle: float,
        clock: Callable[[], float],
        on_stream_ring: Callable[[str], None] | None,
        hold_bytes: int,
        peer_left: Callable[[str], None],
        sweep: Callable[[], None],
        short: OnceLog,
    ) -> None:
        self.registry = registry
        self._names = names
        self._doorbell = doorbell
        self._bell_fd = doorbell.fd
        self.spin = spin
        self._clock = clock
        self._on_stream_ring = on_stream_ring
        self._hold_bytes = hold_bytes
        self._peer_left = peer_left
        self._sweep = sweep
        self._short = short
        self.mailbox = ""  # ours, what rings to us are named by: the endpoint sets it
        self._relayed = Dedup()  # what the gateway delivered, per stream: duplicates go
        self._fence = _Fence()
        # Rings per writing process; the active generation is first in its list.
        self._in: dict[tuple[str, str], list[_InRing]] = {}
        self._active: list[_InRing] = []
        self._rr = 0
        self._by_file: dict[str, _InRing] = {}
        self._routes_to: dict[str, list[tuple[_InRing, int]]] = {}  # name -> channels
        self._paused: set[str] = set()
        self._holding: set[str] = set()  # paused, or with held records still to hand out
        self._held: dict[str, _Held] = {}
        self._ready: set[str] = set()  # resumed names whose held records go out first
        self._flagged: set[str] = set()  # names whose senders are held back
        now = clock()
        self._in_table: ActivityTable[str, _InRing] = ActivityTable(idle=channel_idle, now=now)
        self._sweep_every = min(1.0, channel_idle / 4)
        self._next_in_sweep = now + self._sweep_every
        self._polls = 0
        self._ignored: set[str] = set()  # files in rings/ that are not rings: not retried
        self.undelivered = 0
        self._poller = select.poll()
        self._poller.register(self._bell_fd, select.POLLIN)

    def unbound(self, name: str) -> list[Batch]:
        """``name`` is no longer received here: mark its channels gone (its senders
        look it up again) and return what was held for it."""
        for inb, cid in self._routes_to.pop(name, ()):
            inb.page[cid] = GONE
            inb.names.discard(name)
        self._paused.discard(name)
        self._holding.discard(name)
        self._ready.discard(name)
        self._flagged.discard(name)
        held = self._held.pop(name, None)
        return [] if held is None else [(s, name, items) for s, items in held.batches]

    def close(self) -> None:
        """Close and unlink every ring we read (consumer ends first: a peer that sees
        our producer end closed then finds these closed too, and drops its ring to us)."""
        for gens in list(self._in.values()):
            for inb in gens:
                self._drop_inbound(inb)
        self._in.clear()
        self._rebuild_active()
        self._poller.unregister(self._bell_fd)

    def pause(self, name: str) -> None:
        """Hold back what comes for ``name`` until `resume`; past ``hold_bytes`` of it,
        its senders wait (then `MailboxFull`). Other names' messages go on."""
        self._paused.add(name)
        self._holding.add(name)
        self._ready.discard(name)

    def resume(self, name: str) -> None:
        self._paused.discard(name)
        if name in self._held:
            self._ready.add(name)  # handed out before anything newer for it
        else:
            self._holding.discard(name)

    def poll(self, budget: int = 64) -> list[Delivery]:
        """Drain inbound rings round robin, at most ``budget`` messages from each.

        Returns:
            Deliveries in ring order per pair; pairs interleave fairly.
        """
        return [Delivery(s, r, m, p) for s, r, items in self.poll_batches(budget) for m, p in items]

    def poll_batches(self, budget: int = 64) -> list[Batch]:
        """Like `poll`, grouped per run of one channel: (sender, receiver, [(meta,
        payload), ...]). A receiver that is no longer bound here (it was unbound while
        messages to it were under way) is the caller's to return to their senders.

        The dispatcher's hot path: no object per message beyond the ring's own pair.
        """
        self._polls += 1
        if not self._polls & 7:
            self._read_bell()
        out: list[Batch] = []
        if self._ready:
            self._release_held(out, budget)
        active = self._active
        n = len(active)
        if n:
            start = self._rr % n
            self._rr = start + 1
            holding = self._holding
            for i in range(n):
                ch = active[(start + i) % n]
                consumer = ch.consumer
                selects = consumer.selects
                try:
                    items = consumer.poll(budget)
                    if consumer.selects == selects and not consumer.at_select:
                        # The common cases, inline: nothing, or one channel's run.
                        if not items:
                            got = 0
                        elif (pair := ch.plain) is not None and pair[1] not in holding:
                            out.append((pair[0], pair[1], items))
                            ch.used = True
                            continue
                        else:
                            got = self._read(ch, budget, out, items, selects)
                    else:
                        got = self._read(ch, budget, out, items, selects)
                except RingCorrupted:
                    self._discard_corrupt(ch)
                    continue
                if got:
                    ch.used = True
                elif ch.consumer.producer_closed and not ch.consumer.pending:
                    # Its writer closed it and we have read it all (closed is read
                    # before the tail: nothing is published after the close). Unlinked
                    # now, not at the idle sweep: a peer that comes and goes (a
                    # short-lived client) must not cost us a descriptor for 30 s.
                    self._retire(ch)
                    self._peer_left(ch.sender)
                elif len(self._in[ch.key]) > 1 and not _peer_alive(
                    # A SIGKILLed writer never closes its ring: a new incarnation of
                    # the process must not wait behind it until the idle sweep.
                    *ch.consumer.producer_identity
                ):
                    self._retire(ch)
        if not out:
            self._sweep()
        return out

    def _read(
        self,
        ch: _InRing,
        budget: int,
        out: list[Batch],
        items: list[tuple[int, bytes]],
        selects: int,
    ) -> int:
        """Hand out ``items`` (what a poll of ``ch`` just returned, ``selects`` being
        its SELECT count before) and read on, a run of one channel per poll, up to
        ``budget`` records in all."""
        consumer = ch.consumer
        got = 0
        first = True
        while got < budget:
            if not first:
                selects = consumer.selects
                items = consumer.poll(budget - got)
            first = False
            if consumer.selects != selects:
                pair = ch.pair = self._selected(ch, consumer.selected)
                ch.plain = pair if pair is not None and pair[0] != FORWARD_TO else None
            if not items:
                if consumer.selects == selects:
                    break
                continue
            got += len(items)
            pair = ch.pair
            if pair is None:
                _log.error("%d record(s) in %s name no channel", len(items), ch.file.path.name)
                self.undelivered += len(items)
                continue
            sender, receiver = pair
            batch: Sequence[tuple[int, Payload]] = items
            if sender == FORWARD_TO:
                batch = self._unrelay(items)
                if not batch:
                    continue
            if receiver in self._holding:
                self._hold(receiver, sender, batch)
            else:
                out.append((sender, receiver, batch))
            if not consumer.at_select:
                break  # all read, or the budget: no second look at an empty ring
        return got

    def _selected(self, ch: _InRing, tag: bytes) -> tuple[str, str] | None:
        """The channel a SELECT names; one it declares (its id and names) is learned,
        and its state set: open, held back, or gone (no such name here)."""
        pair = ch.chans.get(tag)
        if pair is not None or len(tag) <= CHANNEL_ID.size:
            return pair
        cid = CHANNEL_ID.unpack_from(tag)[0]
        try:
            sender, receiver = tag[CHANNEL_ID.size :].decode("ascii").split("\0")
        except ValueError:  # UnicodeDecodeError too
            _log.error("a malformed channel declaration in %s", ch.file.path.name)
            return None
        if not 0 < cid < PAGE:
            _log.error("channel id %d in %s is out of range", cid, ch.file.path.name)
            return None
        pair = (sender, receiver)
        ch.chans[tag[: CHANNEL_ID.size]] = pair
        if receiver in self._names:
            self._routes_to.setdefault(receiver, []).append((ch, cid))
            ch.names.add(receiver)
            ch.page[cid] = HELD if receiver in self._flagged else OPEN
        else:
            ch.page[cid] = GONE
        return pair

    def _hold(self, name: str, sender: str, items: Sequence[tuple[int, Payload]]) -> None:
        held = self._held.get(name)
        if held is None:
            held = self._held[name] = _Held()
        held.batches.append((sender, items))
        held.size += _size(items)
        if held.size > self._hold_bytes and name not in self._flagged:
            # Its queue is full: its senders wait at the source (the channels' marks),
            # and what is already in the rings is still taken, so no ring stalls.
            self._flagged.add(name)
            self._mark(name, HELD)

    def _release_held(self, out: list[Batch], budget: int) -> None:
        """Hand out what waited for resumed names, before anything newer for them."""
        for name in list(self._ready):
            held = self._held.get(name)
            taken = 0
            while held is not None and held.batches and taken < budget:
                sender, items = held.batches.popleft()
                held.size -= _size(items)
                out.append((sender, name, items))
                taken += len(items)
            if held is None or not held.batches:
                self._held.pop(name, None)
                self._ready.discard(name)
                self._holding.discard(name)
            if name in self._flagged and (held is None or held.size <= self._hold_bytes // 2):
                self._flagged.discard(name)
                self._mark(name, OPEN)

    def _mark(self, name: str, state: int) -> None:
        for inb, cid in self._routes_to.get(name, ()):
            inb.page[cid] = state

    def _unrelay(self, items: list[tuple[int, bytes]]) -> list[tuple[int, Payload]]:
        """Strip the gateway's relay prefixes, drop what was delivered before, read blobs."""
        out: list[tuple[int, Payload]] = []
        append = out.append
        dedup = self._relayed
        unpack = PREFIX.unpack_from
        # A batch is mostly one stream in order: past its first record, the next is fresh
        # when its position is past the last, and the table learns the last one once.
        run_stream = run_last = run_first = -1
        index, n = 0, len(items)
        while index < n:
            meta, payload = items[index]
            index += 1
            if not meta & RELAYED:
                append((meta, payload))
                continue
            try:
                stream, position = unpack(payload)
                if not meta & BLOB:
                    if stream == run_stream and position > run_last:
                        run_last = position
                    else:
                        if run_last != run_first:
                            dedup.seen(run_stream, run_last)
                        if not dedup.fresh(stream, position):
                            run_stream = run_first = run_last = -1
                            continue
                        run_stream = stream
                        run_first = run_last = position
                    append((meta & INNER_META, payload[16:]))
                    # The rest of the run in one call (no Python per record natively).
                    index, run_last = strip_run(items, index, run_stream, run_last, out)
                    continue
                if run_last != run_first:
                    dedup.seen(run_stream, run_last)
                run_stream = run_first = run_last = -1
                path = self.registry.blobs_dir / payload[16:].decode("ascii")
                if not dedup.fresh(stream, position):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    continue
                append(map_blob(path))
            except (SerializationError, UnicodeDecodeError, struct.error) as exc:
                # The gateway wrote it: a bug or a lost file, never silently.
                _log.error("a record from the gateway could not be read: %s", exc)
                self.undelivered += 1
        if run_last != run_first:
            dedup.seen(run_stream, run_last)
        return out

    @property
    def duplicates(self) -> int:
        """Records from the gateway dropped because they had been delivered before."""
        return self._relayed.duplicates

    def pending(self) -> bool:
        """Some inbound ring has unread records, or held ones are ready."""
        # On every round of a spin: a plain loop (a generator costs more than the check).
        if self._ready:
            return True
        for ch in self._active:  # noqa: SIM110 - any() and a generator cost more here
            if ch.consumer.pending:
                return True
        return False

    def prepare_sleep(self) -> bool:
        """Announce that we may sleep; False (and nothing to undo) if work is pending.

        Sets every active ring's waiting flag, fences, then re-checks the rings: a
        producer that published before our flag was visible is seen here, and one that
        publishes after it sees the flag and rings the doorbell. On True the caller
        sleeps on `bell_fd` (bounded), then calls `finish_sleep`.
        """
        active = self._active
        for ch in active:
            ch.consumer.set_waiting(True)
        self._fence()
        if self.pending():
            self._clear_waiting()
            return False
        return True

    def finish_sleep(self) -> None:
        """Withdraw the waiting flags and drain the doorbell."""
        self._clear_waiting()
        self._read_bell()

    def _clear_waiting(self) -> None:
        for ch in self._active:
            ch.consumer.set_waiting(False)

    def sleep_bound(self, timeout: float) -> float:
        """How long a sleep may last: ``timeout`` capped by the safety net and the sweep."""
        return max(0.0, min(timeout, _MAX_SLEEP, self._next_in_sweep - self._clock()))

    def spin_for(self, seconds: float, other_work: Callable[[], bool] | None = None) -> bool:
        """Poll the rings (and ``other_work``) for up to ``seconds``; True if work came.

        A request-response peer usually answers within tens of microseconds, far less
        than a sleep and a wake-up cost; past the first stretch the spin yields the CPU
        each round, so on a busy two-core machine it does not starve the peer it waits for.
        """
        clock = self._clock
        now = clock()
        hot_until = now + min(seconds, _HOT_SPIN)
        until = now + seconds
        while now < until:
            if self.pending() or (other_work is not None and other_work()):
                return True
            if now > hot_until:
                os.sched_yield()
            now = clock()
        return False

    def wait(self, timeout: float) -> None:
        """Idle until a message may be pending, the doorbell rings, or ``timeout`` passes.

        Spins for ``spin`` seconds first, then sleeps on the doorbell (`prepare_sleep`).
        """
        now = self._clock()
        if self.spin_for(min(self.spin, timeout)):
            return
        if self.prepare_sleep():
            try:
                remaining = self.sleep_bound(timeout - (self._clock() - now))
                if remaining > 0:
                    self._poller.poll(remaining * 1000.0)
            finally:
                self.finish_sleep()

    def read_bell(self) -> None:
        """Drain the doorbell now (an event loop watching `bell_fd` does, whenever it
        fires: it is level triggered); ring announcements in it are taken."""
        self._read_bell()

    def _read_bell(self) -> None:
        """Drain the doorbell: wake-ups ("w") and ring announcements ("n<file>\\n")."""
        for data in self._doorbell.drain():
            if NEW_RING in data:
                # Announcements are written whole and end in a newline; what follows
                # the last newline can only be wake-ups.
                for piece in data.split(b"\n")[:-1]:
                    piece = piece.lstrip(WAKE)
                    if piece.startswith(NEW_RING):
                        self._open_inbound(piece[1:].decode("ascii", "replace"))

    def _open_inbound(self, fname: str) -> None:
        parsed = parse_ring_filename(fname)
        if parsed is None or fname in self._by_file:
            return
        if parsed[1] != self.mailbox:
            streams = self._on_stream_ring is not None and FORWARD_TO in self._names
            if streams and parse_forward_name(parsed[1]) is not None:
                assert self._on_stream_ring is not None
                self._on_stream_ring(fname)
            return
        sender, receiver, _gen = parsed
        path = self.registry.rings_dir / fname
        try:
            file = RingFile.open(path)
        except ResourceExhausted as exc:
            self._short.failed(exc)  # the next scan of rings/ opens it
            return
        except (OSError, RingCorrupted) as exc:
            if not isinstance(exc, FileNotFoundError):
                self._ignore(fname, exc)
            return  # gone already, or not a ring: a periodic scan reclaims litter
        try:
            consumer = ringcore.Consumer(file.map)
            end = _ring.buffer_size(consumer.capacity)
            if file.size < end + PAGE:
                raise RingCorrupted(f"{file.size} bytes leave no room for channel states")
        except RingCorrupted as exc:
            self._ignore(fname, exc)
            file.close(None)
            return
        self._short.ok()
        ch = _InRing(file, consumer, sender, receiver, memoryview(file.map)[end : end + PAGE])
        gens = self._in.setdefault(ch.key, [])
        gens.append(ch)
        gens.sort(key=lambda c: parse_ring_filename(c.file.path.name) or ("", "", 0))
        self._by_file[fname] = ch
        self._in_table.put(fname, ch, self._clock())
        self._rebuild_active()

    def _ignore(self, fname: str, exc: Exception) -> None:
        """A file named like a ring to us that is none (or truncated): once, then never."""
        _log.warning("ignoring ring file %s: %s", fname, exc)
        self._ignored.add(fname)

    def _rebuild_active(self) -> None:
        self._active = [g[0] for g in self._in.values() if g]

    def _retire(self, ch: _InRing) -> None:
        """Close a drained (or dead) generation; the next one of its pair becomes active."""
        gens = self._in.get(ch.key, [])
        if ch in gens:
            gens.remove(ch)
            if not gens:
                del self._in[ch.key]
        self._drop_inbound(ch)
        self._rebuild_active()

    def _drop_inbound(self, ch: _InRing) -> None:
        fname = ch.file.path.name
        self._by_file.pop(fname, None)
        with contextlib.suppress(KeyError):
            self._in_table.pop(fname)
        for name in ch.names:
            routes = self._routes_to.get(name)
            if routes is not None:
                routes[:] = [r for r in routes if r[0] is not ch]
        ch.names.clear()
        ch.consumer.discard_partial()
        if ch.file.intact():  # a truncated page is SIGBUS: then tell the writer nothing
            ch.consumer.close()
        ch.page.release()
        ch.file.unlink()
        ch.file.close(ch.consumer)
        if ch in self._active:
            self._rebuild_active()

    def _discard_corrupt(self, ch: _InRing) -> None:
        _log.error("ring %s is corrupted; closing it", ch.file.path.name, exc_info=True)
        self._retire(ch)

    def scan_rings(self) -> None:
        """Find rings addressed to us whose announcement never arrived."""
        try:
            names = os.listdir(self.registry.rings_dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            short = exhausted(exc, "list rings/")
            if short is None:
                raise
            self._short.failed(short)
            return
        self._ignored.intersection_update(names)
        streams = self._on_stream_ring is not None and FORWARD_TO in self._names
        for fname in sorted(names):
            if fname not in self._by_file and fname not in self._ignored:
                parsed = parse_ring_filename(fname)
                if parsed is not None and (
                    parsed[1] == self.mailbox or (streams and parse_forward_name(parsed[1]))
                ):
                    self._open_inbound(fname)

    def maintain(self) -> None:
        """Unlink rings whose writer closed them or died; find unannounced rings."""
        now = self._clock()
        if now < self._next_in_sweep:
            return
        self._next_in_sweep = now + self._sweep_every
        self._read_bell()
        for fname, inb in list(self._by_file.items()):
            if not inb.file.intact():
                _log.error("ring file %s was truncated by another process", fname)
                self._retire(inb)
                continue
            if inb.used:
                inb.used = False
                self._in_table.touch(fname, now)
        for fname, inb in self._in_table.expire(now):
            self._in_table.put(fname, inb, now)
            if inb.consumer.pending:
                continue
            if inb.consumer.producer_closed or not _peer_alive(*inb.consumer.producer_identity):
                self._retire(inb)
        self.scan_rings()
