"""Mailboxes: a ring per pair of processes, channels inside it, doorbells, backpressure.

One `Endpoint` per process (or per client). It owns the process's doorbell (a FIFO
under ``bells/``), its *mailbox* (the name rings to and from it are known by:
`registry.mailbox_name`), the names it receives for, the rings it reads (inbound) and
the rings it writes (outbound). It knows ring files and processes; it does not know
actors' code, envelopes or TCP.

Guarantees:

- One ring per (writing process, reading process) pair, created by the writer on its
  first message (``rings/<from mailbox>~<to mailbox>.<gen>``) and announced on the
  reader's doorbell. Every (sender name, receiver name) pair is a *channel* of it: a
  SELECT record (`ring.Producer.select`) switches the ring to a channel, declaring its
  id and both names the first time, so a run of messages of one pair costs no
  per-message header and a dispatcher reads one channel per poll. `/dev/shm` and
  descriptors grow with pairs of processes, not pairs of actors. The gateway's rings
  are named by its role (``gateway``), so a successor's ring is a newer generation of
  its predecessor's.
- A slow receiver holds back only its own senders: the reader never stops reading a
  ring. What comes for a paused name (an async receive under way, a restart) is held
  in its queue; past ``hold_bytes`` the reader marks that name's channels in the ring's
  channel page (a byte per channel after the ring buffer), and their senders wait
  there, then get `MailboxFull`. A name unbound here marks its channels gone: senders
  look it up again; what was under way comes out of `poll_batches` for a name no longer
  bound, for the caller to return to its senders.
- FIFO per pair, across ring generations too: a newer generation from the same writer is
  read only after the older one is closed and drained.
- Nothing is dropped: a full ring makes `Endpoint.send` wait for the consumer up to a
  timeout, then raise `MailboxFull`. A message is either wholly published or (when the
  sender dies or gives up mid-message) never seen by the receiver.
- No lost wake-up: the receiver sets its waiting flag, fences, re-checks the ring, then
  sleeps on the doorbell; the sender publishes, fences, and rings only if the flag is
  set. The fence is a lock-prefixed instruction (an uncontended lock's acquire and
  release), because x86-64 may move a store after a later load. Sleeps are bounded.
- Rings idle for ``channel_idle`` are closed by the sender (when everything it wrote was
  read) and unlinked by the receiver, through activity tables; rings of a dead peer are
  drained and unlinked. What a dead receiver never read is counted as undelivered, per
  channel (a consumer publishes the channel in force at its head, so a writer reading
  its ring back knows whose each message is).
- A ring into the gateway for another node (a *forward* ring, `registry.forward_name`,
  one per sender and remote actor) is the gateway's outbox: it outlives its reader. A
  sender never salvages it: when the gateway dies it keeps writing (until full: then
  `MailboxFull`) and rings whichever gateway registers next. The gateway reads those
  rings itself (`on_stream_ring`); records the gateway writes carry a relay prefix
  (`relayed`), which the receiving endpoint strips, dropping what it has seen before.
- A sender reads a ring back (salvage) only when its receiver stopped or died, never
  while it lives: a large message cut short by `MailboxFull` is abandoned by closing
  that ring generation, whose receiver drops the partial message; the next message goes
  on a new generation. Nothing is both delivered and returned.
- Descriptors have owners: a drained ring whose writer closed it is unlinked at once,
  with our ring back to that writer if it closed its end too; a doorbell descriptor
  closes with the last ring to its process (`doorbell.Bells`). An endpoint holds
  descriptors for the peers active within ``channel_idle``, not for every peer it met.
- Out of descriptors or shared memory is `ResourceExhausted` at the call that needed
  them (nothing was sent); in the background (announcements, wake-ups, sweeps) it is
  logged once and retried by the next sweep, never taken for a dead peer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from mybus_actors import codec, ringcore
from mybus_actors import ring as _ring
from mybus_actors.doorbell import Bells, Doorbell
from mybus_actors.errors import (
    ActorNotFound,
    MailboxClosed,
    MailboxFull,
    ResourceExhausted,
    RingCorrupted,
    SerializationError,
)
from mybus_actors.pressure import OnceLog, exhausted
from mybus_actors.registry import (
    FORWARD_TO,
    Entry,
    Registry,
    is_alive,
    mailbox_name,
    parse_forward_name,
    parse_ring_filename,
    process_create_time,
    ring_filename,
    validate_name,
)
from mybus_actors.relayed import BLOB, INNER_META, PREFIX, RELAYED, Dedup, map_blob
from mybus_actors.ringfile import RingFile
from mybus_actors.timers import ActivityTable

__all__ = ["Batch", "Delivery", "Endpoint"]

_log = logging.getLogger(__name__)

_WAKE: Final = b"w"
_NEW_RING: Final = b"n"
_MAX_SLEEP: Final = 0.5  # the doorbell sleep's safety net, should a wake-up ever go astray
_ANNOUNCE_TIMEOUT: Final = 5.0
_STATE: Final = _ring.STATE_MASK
_WAITING: Final = _ring.WAITING
_HOT_SPIN: Final = 50e-6  # spin without yielding for this long, then yield each round
_LIVENESS_EVERY: Final = 0.05  # seconds between checks that a ring's receiver lives
# A ring to a process is followed by a page of channel states, one byte per channel id
# (ids 1.._PAGE-1 per ring generation), which its reader writes and its writer reads.
_PAGE: Final = 4096
_OPEN: Final = 0
_HELD: Final = 1  # the receiver's queue for that name is full: wait, then MailboxFull
_GONE: Final = 2  # that name is no longer received there: look it up again
_ID: Final = struct.Struct("<H")  # a channel's id, the head of its SELECT tag
# What `ring.Producer.relay` reads of an envelope's meta, and marks a relayed record with.
_RELAY_BITS: Final = (codec.HAS_SENDER, codec.HAS_CORRELATION, RELAYED)
_NO_PAGE: Final = bytearray(1)  # a forward ring's one channel (id 0) is always open
# Several endpoints may live in one process (a runtime and a client, or tests): each
# gets its own doorbell.
_ENDPOINT_INDEX = itertools.count()


# A record's payload: bytes, or a view of a large message's mapped blob file.
Payload = bytes | memoryview
Batch = tuple[str, str, Sequence[tuple[int, Payload]]]


class Delivery(NamedTuple):
    """One message as read from a ring: who sent it, to whom, the meta word, the bytes."""

    sender: str
    receiver: str
    meta: int
    payload: Payload


def _ms(create_time: float) -> int:
    return int(create_time * 1000)


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


class _Outbound:
    """A ring we write: to one receiving process (every pair of names between the two
    shares it), or, into the gateway, one forward ring per (sender, remote actor)."""

    __slots__ = (
        "chans",
        "closed",
        "cur",
        "file",
        "forward",
        "key",
        "label",
        "max_record",
        "next_id",
        "page",
        "peer",
        "producer",
        "rung",
        "seen",
        "write",
    )

    def __init__(
        self,
        file: RingFile,
        producer: _ring.Producer,
        key: str,
        peer: Entry,
        label: str,
        page: Any,
        *,
        forward: bool,
    ):
        self.closed = False
        self.file = file
        self.producer = producer
        self.write = producer.write
        self.max_record = producer.max_record
        self.key = key  # the receiver's mailbox, or the forward ring's file name head
        self.label = label  # for messages: the name it was opened for
        self.forward = forward  # into the gateway, for another node
        self.peer = peer
        self.page = page  # the receiver's channel states (`_OPEN`, `_HELD`, `_GONE`)
        self.chans: dict[int, _Chan] = {}
        self.next_id = 1
        self.cur: _Chan | None = None  # the channel the last SELECT named
        self.seen = -1  # messages written as of the last sweep: unchanged means idle
        self.rung = 0  # the consumer's signal word we last rang its doorbell for


class _Chan:
    """One (sender name, receiver name) pair on a ring: its id there, and the SELECT tag
    that switches the ring to it (the id, and the names until they were declared)."""

    __slots__ = (
        "current",
        "id",
        "max_record",
        "next_check",
        "page",
        "ring",
        "sender",
        "tag",
        "to",
        "write",
    )

    def __init__(self, ring: _Outbound, cid: int, sender: str, to: str, tag: bytes):
        self.ring = ring
        self.id = cid
        self.page = ring.page
        self.sender = sender
        self.to = to
        self.tag = tag
        # Copied from the ring for the send's hot path (one attribute load each).
        self.write = ring.write
        self.max_record = ring.max_record
        self.next_check = 0.0  # when to re-check that the receiver's process lives
        self.current = False  # the ring's last SELECT named this channel


class _Held:
    """What was read for a paused name and waits for it: batches, and their bytes."""

    __slots__ = ("batches", "size")

    def __init__(self) -> None:
        self.batches: deque[tuple[str, Sequence[tuple[int, Payload]]]] = deque()
        self.size = 0


class _Inbound:
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


def _switch(ch: _Outbound, c: _Chan) -> None:
    """The ring's SELECT now names ``c``."""
    if ch.cur is not None:
        ch.cur.current = False
    ch.cur = c
    c.current = True


def _size(items: Sequence[tuple[int, Payload]]) -> int:
    return sum(len(p) for _, p in items) + 16 * len(items)


class Endpoint:
    """A process's mailboxes: the rings it reads and writes, and its doorbell.

    Not thread-safe: a caller that shares an endpoint between threads holds one lock
    around each call. Only the sleep itself (on `bell_fd`, between `prepare_sleep` and
    `finish_sleep`) may happen outside that lock.

    Args:
        registry: the runtime directory's registry.
        ring_capacity: data bytes of each ring this endpoint creates (a power of two).
        channel_idle: seconds after which an unused ring is closed and unlinked.
        spin: seconds `wait` polls before it sleeps on the doorbell (0: sleep at once).
        clock: a monotonic clock.
        on_undelivered: called with (sender, receiver, [(meta, payload), ...]) for the
            messages this endpoint published to a receiver that stopped or died
            without reading them (salvaged from the ring, so none vanishes unseen).
        on_stream_ring: for the gateway: called with the file name of each forward ring
            to a name bound here, which this endpoint does not read itself.
        hold_bytes: bytes read for a paused name (`pause`) beyond which its senders are
            held back (they wait, then `MailboxFull`); default: ``ring_capacity``.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        ring_capacity: int = _ring.DEFAULT_CAPACITY,
        channel_idle: float = 30.0,
        spin: float = 200e-6,
        clock: Callable[[], float] = time.monotonic,
        on_undelivered: Callable[[str, str, list[tuple[int, bytes]]], None] | None = None,
        on_stream_ring: Callable[[str], None] | None = None,
        hold_bytes: int | None = None,
    ) -> None:
        _ring.buffer_size(ring_capacity)  # validates
        if channel_idle <= 0:
            raise ValueError(f"channel_idle must be positive, got {channel_idle!r}")
        if spin < 0:
            raise ValueError(f"spin must be >= 0, got {spin!r}")
        self.registry = registry
        self.ring_capacity = ring_capacity
        self.channel_idle = channel_idle
        self.spin = spin
        self._clock = clock
        self._on_undelivered = on_undelivered
        self._on_stream_ring = on_stream_ring
        self._hold_bytes = ring_capacity if hold_bytes is None else hold_bytes
        self._relayed = Dedup()  # what the gateway delivered, per stream: duplicates go
        self._fence = _Fence()
        self.pid = os.getpid()
        ctime = process_create_time(self.pid)
        assert ctime is not None
        self._token = _ms(ctime)
        self._names: set[str] = set()
        # Sending: a channel per (sender, receiver) pair, on a ring per receiving process
        # (keyed by its mailbox) or, into the gateway, on a forward ring of its own.
        self._out: dict[tuple[str, str], _Chan] = {}
        self._rings: dict[str, _Outbound] = {}
        # Receiving: rings per writing process; the active generation is first in its list.
        self._in: dict[tuple[str, str], list[_Inbound]] = {}
        self._active: list[_Inbound] = []
        self._rr = 0
        self._by_file: dict[str, _Inbound] = {}
        self._routes_to: dict[str, list[tuple[_Inbound, int]]] = {}  # name -> channels
        self._paused: set[str] = set()
        self._holding: set[str] = set()  # paused, or with held records still to hand out
        self._held: dict[str, _Held] = {}
        self._ready: set[str] = set()  # resumed names whose held records go out first
        self._flagged: set[str] = set()  # names whose senders are held back
        now = clock()
        self._out_table: ActivityTable[str, _Outbound] = ActivityTable(idle=channel_idle, now=now)
        self._in_table: ActivityTable[str, _Inbound] = ActivityTable(idle=channel_idle, now=now)
        self._sweep_every = min(1.0, channel_idle / 4)
        self._next_out_sweep = self._next_in_sweep = now + self._sweep_every
        self._sends = 0
        self._polls = 0
        self._ignored: set[str] = set()  # files in rings/ that are not rings: not retried
        self.undelivered = 0
        self.bell_path = registry.doorbell_path(self.pid, index=next(_ENDPOINT_INDEX))
        self.mailbox = mailbox_name(self.bell_path)  # what rings to and from us are named by
        # The doorbell is a FIFO: a wake-up is one byte written on a descriptor the
        # sender keeps open while it has a ring to us (no path lookup per ring), and
        # one read drains them all.
        self._doorbell = Doorbell(self.bell_path)
        self._bell_fd = self._doorbell.fd
        self._bells = Bells()  # receivers' doorbells, held by our rings to them
        self._short = OnceLog(_log, f"endpoint {self.pid}")
        self._poller = select.poll()
        self._poller.register(self._bell_fd, select.POLLIN)
        self._closed = False

    # -- names ---------------------------------------------------------------------

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def bind(self, name: str) -> Entry:
        """Register ``name`` in the runtime directory as received here.

        Raises:
            InvalidAddress: a malformed name.
            NameTaken: a live process holds it.
            MailboxClosed: the endpoint is closed.
        """
        self._check_open()
        entry = self.registry.register(validate_name(name), doorbell=self.bell_path)
        self._names.add(name)
        if name == FORWARD_TO:
            # The gateway's rings are named by its role, not its process: a successor's
            # ring to an actor is then a newer generation of the same pair, read after
            # what its predecessor wrote (the relay positions' order depends on it).
            self.mailbox = FORWARD_TO
        self._scan_rings()
        return entry

    def unbind(self, name: str) -> list[Batch]:
        """Stop receiving for ``name``: unregister it, and tell its senders it is gone
        (they look it up again, or get `ActorNotFound`).

        Returns:
            What was read for ``name`` and not handed out yet (it was paused): the
            caller returns it to its senders. Records for it that are still in rings
            come out of `poll_batches` with a receiver no longer bound: the same.
        """
        if name not in self._names:
            return []
        # Open the rings announced but not read yet: their channels to it are marked too.
        self._read_bell()
        self._scan_rings()
        self._names.discard(name)
        try:
            self.registry.unregister(name)
        except ResourceExhausted as exc:
            # The entry stays until this process exits; then it is stale and reclaimed.
            self._short.failed(exc)
        for inb, cid in self._routes_to.pop(name, ()):
            inb.page[cid] = _GONE
            inb.names.discard(name)
        for key in [k for k in self._out if k[0] == name]:
            self._forget(self._out[key])
        self._paused.discard(name)
        self._holding.discard(name)
        self._ready.discard(name)
        self._flagged.discard(name)
        held = self._held.pop(name, None)
        return [] if held is None else [(s, name, items) for s, items in held.batches]

    def receiver_closed(self, sender: str, to: str) -> bool:
        """Whether the receiver of our channel ``sender``->``to`` stopped receiving for
        it (a clean stop)."""
        c = self._out.get((sender, to))
        return c is not None and (c.page[c.id] == _GONE or c.ring.producer.consumer_closed)

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

    # -- sending -------------------------------------------------------------------

    def send(
        self,
        sender: str,
        to: str,
        data: Any,
        meta: int = 0,
        *,
        timeout: float = 10.0,
        block: bool = True,
    ) -> None:
        """Write one message on the channel from ``sender`` to ``to``.

        Args:
            sender: a name bound on this endpoint.
            to: a registered name on this node.
            data: the message bytes (any bytes-like object of format "B", any size).
            meta: an opaque integer below 2**24 delivered with the bytes.
            timeout: how long to wait for room when the ring is full, or while the
                receiver holds its senders back.
            block: False raises `MailboxFull` at once instead of waiting.

        Raises:
            ActorNotFound: no live receiver holds ``to`` (or it died while we waited).
            MailboxFull: the ring stayed full past ``timeout`` (nothing was delivered).
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        # The hot path of every local message: kept to a few attribute loads and calls.
        c = self._out.get((sender, to))
        # The clock first: a due check finds a ring another process truncated before
        # anything of it (the channel page too) is touched.
        if c is None or self._clock() >= c.next_check or not c.current or c.page[c.id]:
            c = self._prepare(sender, to, c, timeout, block)
        if len(data) <= c.max_record:
            signal = c.write(data, meta)
        else:
            signal = self._send_fragments(c, data, meta, timeout, block)
        if signal:
            ch = c.ring
            if signal < 0:
                write = c.write
                signal = self._wait_for_room(c, lambda: write(data, meta), timeout, block)
            if signal & _STATE == _WAITING:
                if signal != ch.rung:  # once per sleep of the receiver
                    ch.rung = signal
                    try:
                        self._ring_bell(ch)
                    except ActorNotFound:
                        # The process this ring was opened for is dead and did not read
                        # ours: a new holder of the name may take it; with none, the
                        # lookup raises ActorNotFound again.
                        self.send(sender, to, data, meta, timeout=timeout, block=block)
                        return
            elif signal:
                self._consumer_gone(c, data, meta, timeout, block)
        self._sends += 1
        if not self._sends & 1023:
            self._maintain_outbound()

    def _prepare(
        self, sender: str, to: str, c: _Chan | None, timeout: float, block: bool
    ) -> _Chan:
        """The channel ``sender``->``to``, ready for a write: its receiver checked when
        due, waited for while it holds us back, the ring switched to it."""
        if c is None or self._clock() >= c.next_check:
            c = self._channel(sender, to, c, timeout if block else 0.0)
        if c.page[c.id]:
            c = self._held_back(c, timeout, block)
        if not c.current:
            self._select(c, timeout, block)
        return c

    def _select(self, c: _Chan, timeout: float, block: bool) -> None:
        """Switch the ring to channel ``c`` (declaring it, the first time)."""
        ch = c.ring
        select_ = ch.producer.select
        tag = c.tag
        if not select_(tag):
            self._wait_for_room(c, lambda: 0 if select_(tag) else _ring.FULL, timeout, block)
        _switch(ch, c)
        c.tag = tag[:2]  # declared: from now on its id names it

    def _held_back(self, c: _Chan, timeout: float, block: bool) -> _Chan:
        """The receiver marked channel ``c``: wait while it holds its senders back (then
        MailboxFull); look the name up again when it is gone from that process."""
        deadline = self._clock() + timeout
        pause = 1e-5
        lookups = 0
        while True:
            state = c.page[c.id]
            if state == _OPEN:
                return c
            if state == _GONE:
                if lookups:
                    raise ActorNotFound(f"actor {c.to!r} stopped before reading its mailbox")
                lookups += 1
                self._forget(c)
                if c.ring.producer.consumer_closed:  # its whole endpoint closed: salvage
                    self._drop_outbound(c.ring, salvage=True)
                c = self._channel(c.sender, c.to, None, max(0.0, deadline - self._clock()))
                continue
            if not block:
                raise MailboxFull(f"mailbox of {c.to!r} is full")
            now = self._clock()
            if now >= deadline:
                raise MailboxFull(
                    f"{c.to!r} was held back (its queue full) for {timeout}s; message not sent"
                )
            if now >= c.next_check:
                c = self._channel(c.sender, c.to, c, max(0.0, deadline - now))
                continue
            time.sleep(pause)  # nothing wakes us when the mark goes
            pause = min(pause * 2, 1e-3)

    def _channel(
        self, sender: str, to: str, c: _Chan | None, restart_wait: float | None = None
    ) -> _Chan:
        """The channel ``sender``->``to``, reopened if its receiver's process is gone.

        With ``restart_wait`` (seconds), a receiver that has no holder now but that a
        live supervisor restarts is waited for, up to that long.

        Raises:
            MailboxFull: it was restarting and did not come back within ``restart_wait``.
            RingCorrupted: another process truncated our ring file (what it held is
                lost with it); the next send opens a new one.
        """
        if c is not None:
            ch = c.ring
            # A receiver killed while busy neither closes its end nor answers a bell:
            # without this check a new holder of the name is never reached.
            c.next_check = self._clock() + _LIVENESS_EVERY
            if not ch.file.intact():
                self._drop_outbound(ch)
                raise RingCorrupted(
                    f"ring file {ch.file.path.name} was truncated by another process;"
                    " this message was not sent, and what the ring held may be lost"
                )
            if is_alive(ch.peer.pid, ch.peer.create_time):
                return c
            if ch.forward:
                self._regateway(ch)
                return c
            self._drop_outbound(ch, salvage=True)
        try:
            c = self._open(sender, to)
        except ActorNotFound:
            # Not for a restart this very process makes: it cannot happen while we wait.
            if restart_wait is None or self.registry.restarter(to) in (None, os.getpid()):
                raise
            c = self._open_restarted(sender, to, restart_wait)
        c.next_check = self._clock() + _LIVENESS_EVERY
        return c

    def _open_restarted(self, sender: str, to: str, timeout: float) -> _Chan:
        """Wait for the next holder of ``to``, whose supervisor is restarting it: what
        is sent meanwhile waits with its sender, as for a full ring, then MailboxFull."""
        deadline = self._clock() + timeout
        pause = 0.001
        while True:
            if self._clock() >= deadline:
                raise MailboxFull(
                    f"{to!r} is restarting and had not come back within {timeout}s;"
                    " message not sent"
                )
            time.sleep(pause)  # nothing wakes us when a name is registered
            pause = min(pause * 2, 0.02)
            try:
                return self._open(sender, to)
            except ActorNotFound:
                if not self.registry.restart_pending(to):
                    raise

    def _consumer_gone(self, c: _Chan, data: Any, meta: int, timeout: float, block: bool) -> None:
        """The receiver closed its end as we published: was our message read?"""
        ch = c.ring
        unread = ch.producer.unread
        self._drop_outbound(ch, salvage=True, keep_last=1 if unread > 0 else 0)
        if unread > 0:
            # Ours was not read. A new incarnation of the name may take it; if there is
            # none, the lookup raises ActorNotFound.
            self.send(c.sender, c.to, data, meta, timeout=timeout, block=block)

    def _open(self, sender: str, to: str) -> _Chan:
        """A new channel ``sender``->``to``: on our ring to the process that holds ``to``
        (created, allocated and announced if we have none), or on a forward ring of its
        own into the gateway.

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            ResourceExhausted: out of descriptors or shared memory (nothing was sent).
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        self._check_open()
        if sender not in self._names:
            raise MailboxClosed(f"sender {sender!r} is not bound on this endpoint")
        if parse_forward_name(to):
            peer = self.registry.lookup(FORWARD_TO)
            ch = self._new_ring(f"{sender}~{to}", sender, to, peer, to, forward=True)
            c = _Chan(ch, 0, sender, to, b"")
            _switch(ch, c)  # its one channel: no SELECT
        else:
            peer = self.registry.lookup(to)
            mailbox = FORWARD_TO if to == FORWARD_TO else mailbox_name(peer.doorbell)
            found = self._rings.get(mailbox)
            if found is not None and found.next_id >= _PAGE:
                self._drop_outbound(found)  # its channel table is full: the next generation
                found = None
            if found is None:
                found = self._new_ring(mailbox, self.mailbox, mailbox, peer, to, forward=False)
            ch = found
            cid = ch.next_id
            ch.next_id = cid + 1
            c = _Chan(ch, cid, sender, to, _ID.pack(cid) + f"{sender}\0{to}".encode("ascii"))
        ch.chans[c.id] = c
        self._out[(sender, to)] = c
        return c

    def _new_ring(
        self, key: str, writer: str, reader: str, peer: Entry, label: str, *, forward: bool
    ) -> _Outbound:
        """Create, allocate and announce the ring ``writer``->``reader``."""
        for _ in range(100):
            gen = time.time_ns()
            path = self.registry.rings_dir / ring_filename(writer, reader, gen)
            try:
                file = RingFile.create(path, self.ring_capacity, 0 if forward else _PAGE)
            except FileExistsError:
                continue
            except OSError as exc:
                raise (exhausted(exc, f"create a ring to {label!r}") or exc) from exc
            break
        else:  # pragma: no cover - a clock that never moves
            raise RuntimeError(f"could not create a ring file for {writer}->{reader}")
        producer = ringcore.Producer(file.map)
        producer.set_identity(self.pid, self._token)
        if forward:
            page: Any = _NO_PAGE
        else:
            end = _ring.buffer_size(self.ring_capacity)
            page = memoryview(file.map)[end : end + _PAGE]
        ch = _Outbound(file, producer, key, peer, label, page, forward=forward)
        self._bells.acquire(peer.doorbell)
        self._rings[key] = ch
        self._out_table.put(key, ch, self._clock())
        try:
            self._announce(peer, path.name)
        except ActorNotFound:
            file.unlink()
            self._drop_outbound(ch)
            raise
        return ch

    def _gateway_live(self) -> bool:
        try:
            self.registry.lookup(FORWARD_TO)
        except ActorNotFound:
            return False
        except ResourceExhausted:
            return True  # unknown: leave the ring where it is
        return True

    def _regateway(self, ch: _Outbound) -> None:
        """The gateway a forward ring was made for is gone: ring its successor, if one
        registered (it adopts the ring, and what is in it), else go on writing."""
        with contextlib.suppress(ActorNotFound, ResourceExhausted):
            peer = self.registry.lookup(FORWARD_TO)
            if peer.pid != ch.peer.pid or peer.create_time != ch.peer.create_time:
                self._bells.release(ch.peer.doorbell)
                self._bells.acquire(peer.doorbell)
                ch.peer = peer
                ch.rung = 0
                with contextlib.suppress(ActorNotFound):
                    self._announce(peer, ch.file.path.name)

    def _announce(self, peer: Entry, fname: str) -> None:
        # Unlike a wake-up, an announcement must not be lost: retried for a while
        # (a write this short is atomic), then left to the receiver's scan of rings/.
        message = _NEW_RING + fname.encode() + b"\n"
        deadline = self._clock() + _ANNOUNCE_TIMEOUT
        while True:
            try:
                self._bells.write(peer.doorbell, message)
                return
            except BlockingIOError:
                if self._clock() > deadline:
                    return
                time.sleep(0.001)
            except ResourceExhausted as exc:
                # No descriptor for its doorbell now: the receiver's periodic scan of
                # rings/ finds the ring anyway (within a sweep), so the send goes on.
                self._short.failed(exc)
                return
            except OSError as exc:  # FileNotFoundError, ENXIO, EPIPE: nobody reads it
                self._bells.forget(peer.doorbell)
                raise ActorNotFound(f"actor {peer.name!r} has no doorbell (it exited)") from exc

    def _ring_bell(self, ch: _Outbound) -> None:
        try:
            self._bells.write(ch.peer.doorbell, _WAKE)
        except BlockingIOError:
            pass  # its doorbell is full of wake-ups already
        except ResourceExhausted as exc:
            # The message is published: its receiver's bounded sleep finds it. Raising
            # would tell our caller it was not sent.
            self._short.failed(exc)
        except OSError:
            # Nobody reads that doorbell any more: the receiver is probably dead.
            self._bells.forget(ch.peer.doorbell)
            if ch.forward:
                self._regateway(ch)  # the outbox waits for the next gateway
            else:
                self._check_receiver(ch, pending=1)

    def _check_receiver(self, ch: _Outbound, *, pending: int, to: str = "") -> None:
        """Raise ActorNotFound (dropping the ring) when the receiver is gone.

        The last ``pending`` unread messages belong to the caller's current send, which
        reports them through the exception; the rest are salvaged as undelivered. A
        forward ring never is: its reader may die, the next gateway reads on.
        """
        if ch.forward:
            if not is_alive(ch.peer.pid, ch.peer.create_time):
                self._regateway(ch)
            return
        if ch.producer.consumer_closed or not is_alive(ch.peer.pid, ch.peer.create_time):
            self._drop_outbound(ch, salvage=True, keep_last=pending)
            raise ActorNotFound(f"actor {to or ch.label!r} stopped before reading its mailbox")

    def _wait_for_room(
        self, c: _Chan, attempt: Callable[[], int], timeout: float, block: bool
    ) -> int:
        """Retry ``attempt`` until it stops returning FULL; return its last result."""
        if not block:
            raise MailboxFull(f"mailbox of {c.to!r} is full")
        ch = c.ring
        clock = self._clock
        start = clock()
        deadline = start + timeout
        next_check = start + 0.05
        pause = 0.0
        while True:
            result = attempt()
            if result != _ring.FULL:
                return result
            now = clock()
            if now >= next_check:
                next_check = now + 0.05
                self._check_receiver(ch, pending=0, to=c.to)
            if now >= deadline:
                raise MailboxFull(
                    f"mailbox of {c.to!r} stayed full for {timeout}s; message not sent"
                )
            if ch.producer.consumer_waiting:
                self._ring_bell(ch)
            # Yield first (the consumer may be about to free room), then back off.
            if pause == 0.0:
                os.sched_yield()
                pause = 1e-5
            else:
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)

    def _stream(self, ch: _Outbound, view: Any, meta: int, sent: int) -> tuple[int, int]:
        """Write the fragments that fit now: (bytes sent so far, FULL or the signal).

        The consumer must drain while we stream, so a sleeping one is woken after each
        stretch (once per sleep, as for a whole message).
        """
        done = ch.producer.offer_fragments(view, meta, sent)
        if done == sent:
            return sent, _ring.FULL
        signal = ch.producer.signal()
        if signal & _STATE == _WAITING and signal != ch.rung:
            ch.rung = signal
            self._ring_bell(ch)
        return done, signal

    def _send_fragments(
        self, c: _Chan, data: Any, meta: int, timeout: float, block: bool
    ) -> int:
        ch = c.ring
        view = data if isinstance(data, bytes) else memoryview(data).cast("B")
        total = len(view)
        sent = 0

        def step() -> int:
            nonlocal sent
            sent, signal = self._stream(ch, view, meta, sent)
            return signal

        try:
            signal = step()
            if signal == _ring.FULL:
                signal = self._wait_for_room(c, step, timeout, block)
            while sent < total:
                if signal & _STATE == _ring.CLOSED:
                    self._check_receiver(ch, pending=0, to=c.to)
                signal = step()
                if signal == _ring.FULL:
                    signal = self._wait_for_room(c, step, timeout, True)
        except MailboxFull:
            if sent and not ch.closed:
                # Part of the message sits in the ring of a receiver that is alive and
                # reading: we must not read it back. Closing this generation abandons
                # the part (the receiver drops a partial message from a closed ring);
                # what came before it is delivered, and the next message starts on a
                # new generation, read after this one.
                self._drop_outbound(ch)
            raise
        except ActorNotFound:
            # The receiver is gone (its ring was dropped and salvaged on the way): the
            # half-sent message is reported by this exception.
            if not ch.closed:
                self._drop_outbound(ch, salvage=True)
            raise
        return signal

    def _forget(self, c: _Chan) -> None:
        """Stop using channel ``c`` (its receiver is gone from that process); the ring
        stays for the other channels on it, and keeps ``c``'s id for salvage."""
        key = (c.sender, c.to)
        if self._out.get(key) is c:
            del self._out[key]

    def _drop_outbound(self, ch: _Outbound, *, salvage: bool = False, keep_last: int = 0) -> None:
        """Forget a ring we write; with ``salvage``, hand its unread messages back.

        Salvage is only for a receiver that stopped or died: nobody else reads the ring
        then, so we may read what it left (whole messages only; a half-sent fragmented
        one is dropped, as its sender was told by an exception). The last ``keep_last``
        messages are the current send's, reported by its exception instead.
        """
        if self._rings.get(ch.key) is ch:
            del self._rings[ch.key]
            with contextlib.suppress(KeyError):
                self._out_table.pop(ch.key)
        for c in ch.chans.values():
            self._forget(c)
        if ch.closed:
            return
        ch.closed = True
        self._bells.release(ch.peer.doorbell)
        if isinstance(ch.page, memoryview):
            ch.page.release()
        lost: list[tuple[bytes, int, bytes]] = []
        if not ch.file.intact():
            # Truncated under us: touching its pages is SIGBUS. What it held is lost.
            _log.error("ring file %s was truncated by another process", ch.file.path.name)
            ch.file.close(ch.producer)
            return
        if salvage and ch.producer.unread > 0 and not ch.forward:
            lost = _salvage(ch.file)
            if keep_last:
                del lost[-keep_last:]
        drained = ch.forward and ch.producer.empty
        gone = not ch.forward and not is_alive(ch.peer.pid, ch.peer.create_time)
        ch.producer.close()
        ch.file.close(ch.producer)
        if gone or (drained and not self._gateway_live()):
            # A dead reader never unlinks what it read. And an outbox with nothing left
            # to send and no gateway to remove it (the last one was stopped, or is yet
            # to come) is ours to tidy away.
            with contextlib.suppress(FileNotFoundError):
                ch.file.path.unlink()
        if lost:
            self.undelivered += len(lost)
            for (sender, to), items in _by_channel(ch, lost):
                if self._on_undelivered is not None:
                    self._on_undelivered(sender, to, items)
                else:
                    _log.warning(
                        "%d message(s) from %r to %r were never read: the receiver is gone",
                        len(items),
                        sender,
                        to,
                    )

    # -- receiving -----------------------------------------------------------------

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
            self.maintain()
        return out

    def _read(
        self,
        ch: _Inbound,
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

    def _selected(self, ch: _Inbound, tag: bytes) -> tuple[str, str] | None:
        """The channel a SELECT names; one it declares (its id and names) is learned,
        and its state set: open, held back, or gone (no such name here)."""
        pair = ch.chans.get(tag)
        if pair is not None or len(tag) <= _ID.size:
            return pair
        cid = _ID.unpack_from(tag)[0]
        try:
            sender, receiver = tag[_ID.size :].decode("ascii").split("\0")
        except ValueError:  # UnicodeDecodeError too
            _log.error("a malformed channel declaration in %s", ch.file.path.name)
            return None
        if not 0 < cid < _PAGE:
            _log.error("channel id %d in %s is out of range", cid, ch.file.path.name)
            return None
        pair = (sender, receiver)
        ch.chans[tag[: _ID.size]] = pair
        if receiver in self._names:
            self._routes_to.setdefault(receiver, []).append((ch, cid))
            ch.names.add(receiver)
            ch.page[cid] = _HELD if receiver in self._flagged else _OPEN
        else:
            ch.page[cid] = _GONE
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
            self._mark(name, _HELD)

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
                self._mark(name, _OPEN)

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
        for meta, payload in items:
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

    def _ready_to_offer(self, sender: str, to: str) -> _Chan | None:
        """The channel for an offer, switched to; None when it cannot take one now."""
        c = self._out.get((sender, to))
        if c is None or self._clock() >= c.next_check:
            c = self._channel(sender, to, c)
        if c.page[c.id]:
            try:
                c = self._held_back(c, 0.0, False)
            except MailboxFull:
                return None
        ch = c.ring
        if not c.current:
            if not ch.producer.select(c.tag):
                if ch.producer.consumer_closed:
                    self._check_receiver(ch, pending=0, to=to)
                return None
            _switch(ch, c)
            c.tag = c.tag[: _ID.size]
        return c

    def offer_batch(self, sender: str, to: str, items: list[tuple[bytes, int]]) -> int:
        """Write as many whole messages (each at most the ring's record size) as fit now,
        publish them at once, ring at most once; never wait. Returns how many went.

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        c = self._ready_to_offer(sender, to)
        if c is None:
            return 0
        ch = c.ring
        written = ch.producer.offer_batch(items)
        if written:
            signal = ch.producer.signal()
            if signal & _STATE == _WAITING and signal != ch.rung:
                ch.rung = signal
                self._ring_bell(ch)
            elif signal & _STATE == _ring.CLOSED:
                # Published as it closed: what it did not read is salvaged and returned
                # (on_undelivered), so these count as written either way.
                with contextlib.suppress(ActorNotFound):
                    self._check_receiver(ch, pending=0, to=to)
            self._sends += written
        elif ch.producer.consumer_closed:
            self._check_receiver(ch, pending=0, to=to)
        return written

    def offer_relayed(
        self,
        sender: str,
        to: str,
        packed: bytes,
        offset: int,
        count: int,
        key: int,
        after: int,
        prefix: bytes,
        kinds: int,
    ) -> tuple[int, int, int, int]:
        """The gateway's inbound hot path: write the plain records of a packed run
        (`items.PackedRecords`) into the ring to ``to`` in one core call, each behind its
        relay prefix (``key``, its end), publishing once and ringing at most once; never
        wait. What stops it (see `ring.Producer.relay`: a record not plain, not past
        ``after``, of a kind outside ``kinds``, a sender not under ``prefix``, no room)
        is left for the caller's per-record path.

        Returns:
            (records written, the offset after them, the end of the last (``after`` when
            none), their payload bytes).

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        c = self._ready_to_offer(sender, to)
        if c is None:
            return 0, offset, after, 0
        ch = c.ring
        written, offset, last, nbytes, signal = ch.producer.relay(
            packed, offset, count, key, after, prefix, kinds, *_RELAY_BITS
        )
        if written:
            if signal & _STATE == _WAITING and signal != ch.rung:
                ch.rung = signal
                self._ring_bell(ch)
            elif signal & _STATE == _ring.CLOSED:
                with contextlib.suppress(ActorNotFound):  # as in offer_batch
                    self._check_receiver(ch, pending=0, to=to)
            self._sends += written
        elif ch.producer.consumer_closed:
            self._check_receiver(ch, pending=0, to=to)
        return written, offset, last, nbytes

    def load(self, sender: str, to: str) -> tuple[int, int]:
        """How busy ``to`` looks from our ring to it: (0 if it sleeps waiting for
        messages or we have no ring to it, else 1; bytes we wrote it has not read yet).

        Both come from the ring's shared words: no message asks. A receiver asleep
        with bytes unread is about to read them; one awake with bytes unread is busy.
        One that holds its senders back counts as fuller than any ring.
        """
        c = self._out.get((sender, to))
        if c is None or c.ring.closed:
            return (0, 0)
        producer = c.ring.producer
        if c.page[c.id] == _HELD:
            return (1, 1 << 62)
        return (0 if producer.consumer_waiting else 1, producer.unread_bytes)

    def max_record(self, sender: str, to: str) -> int:
        """The largest message the ring ``sender``->``to`` takes as one record (the
        default ring's when there is none yet)."""
        c = self._out.get((sender, to))
        return c.ring.max_record if c is not None else self.ring_capacity // 4

    def offer(self, sender: str, to: str, data: Any, meta: int = 0) -> bool:
        """Write one whole message now or not at all, never waiting; the gateway's way
        into local rings (a reader never sees part of it, even if the gateway dies).

        Returns:
            True when written, False when the ring has no room for it now (or its
            receiver holds its senders back).

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        c = self._ready_to_offer(sender, to)
        if c is None:
            return False
        ch = c.ring
        if not ch.producer.offer_message(data, meta):
            if ch.producer.consumer_closed:
                self._check_receiver(ch, pending=0, to=to)
            return False
        signal = ch.producer.signal()
        if signal & _STATE == _WAITING and signal != ch.rung:
            ch.rung = signal
            self._ring_bell(ch)
        elif signal & _STATE == _ring.CLOSED:
            # As in offer_batch: unread, it is salvaged and returned; written either way.
            with contextlib.suppress(ActorNotFound):
                self._check_receiver(ch, pending=0, to=to)
        self._sends += 1
        return True

    def _peer_left(self, mailbox: str) -> None:
        """Process ``mailbox`` closed its ring to us: drop ours to it too if it closed
        that end."""
        ch = self._rings.get(mailbox)
        if ch is not None and ch.producer.consumer_closed:
            with contextlib.suppress(ActorNotFound):
                self._check_receiver(ch, pending=0)

    def pending(self) -> bool:
        """Some inbound ring has unread records, or held ones are ready."""
        # On every round of a spin: a plain loop (a generator costs more than the check).
        if self._ready:
            return True
        for ch in self._active:  # noqa: SIM110 - any() and a generator cost more here
            if ch.consumer.pending:
                return True
        return False

    @property
    def bell_fd(self) -> int:
        """The doorbell's descriptor, for a caller that sleeps in its own poller."""
        return self._bell_fd

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
            if _NEW_RING in data:
                # Announcements are written whole and end in a newline; what follows
                # the last newline can only be wake-ups.
                for piece in data.split(b"\n")[:-1]:
                    piece = piece.lstrip(_WAKE)
                    if piece.startswith(_NEW_RING):
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
            if file.size < end + _PAGE:
                raise RingCorrupted(f"{file.size} bytes leave no room for channel states")
        except RingCorrupted as exc:
            self._ignore(fname, exc)
            file.close(None)
            return
        self._short.ok()
        ch = _Inbound(file, consumer, sender, receiver, memoryview(file.map)[end : end + _PAGE])
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

    def _retire(self, ch: _Inbound) -> None:
        """Close a drained (or dead) generation; the next one of its pair becomes active."""
        gens = self._in.get(ch.key, [])
        if ch in gens:
            gens.remove(ch)
            if not gens:
                del self._in[ch.key]
        self._drop_inbound(ch)
        self._rebuild_active()

    def _drop_inbound(self, ch: _Inbound) -> None:
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

    def _discard_corrupt(self, ch: _Inbound) -> None:
        _log.error("ring %s is corrupted; closing it", ch.file.path.name, exc_info=True)
        self._retire(ch)

    def _scan_rings(self) -> None:
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

    # -- maintenance ---------------------------------------------------------------

    def maintain(self) -> None:
        """Run the periodic sweeps that are due: idle rings, gone peers, lost announcements."""
        self._maintain_outbound()
        self._maintain_inbound()

    def _maintain_outbound(self) -> None:
        """Close rings we no longer write to; notice receivers that stopped or died."""
        now = self._clock()
        if now < self._next_out_sweep:
            return
        self._next_out_sweep = now + self._sweep_every
        for key, out in list(self._rings.items()):
            written = out.producer.written
            out.producer.publish_counters()  # for `mybus ls`: write() skips them
            if written != out.seen:
                out.seen = written
                self._out_table.touch(key, now)
            else:
                with contextlib.suppress(ActorNotFound):
                    self._check_receiver(out, pending=0)
        for key, out in self._out_table.expire(now):
            if out.producer.empty:
                self._drop_outbound(out)
            else:  # the receiver is slow, not gone: keep the ring until it has read it
                self._out_table.put(key, out, now)

    def _maintain_inbound(self) -> None:
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
        self._scan_rings()

    def _check_open(self) -> None:
        if self._closed:
            raise MailboxClosed("this endpoint is closed")

    # -- shutdown ------------------------------------------------------------------

    def close(self) -> None:
        """Close every ring (unlinking inbound ones), unregister names, remove the doorbell.

        What was held for a paused name is dropped with a warning: a caller that cares
        unbinds its names first (`unbind` returns it).
        """
        if self._closed:
            return
        self._closed = True
        for name in list(self._names):
            held = self.unbind(name)
            if held:
                _log.warning(
                    "%d message(s) held for %r dropped as its endpoint closed",
                    sum(len(b[2]) for b in held),
                    name,
                )
        # Consumer ends first: a peer that sees our producer end closed then finds our
        # consumer end closed too, and drops its ring to us at once (`_peer_left`).
        for gens in list(self._in.values()):
            for inb in gens:
                self._drop_inbound(inb)
        self._in.clear()
        self._rebuild_active()
        for out in list(self._rings.values()):
            self._drop_outbound(out)
        self._poller.unregister(self._bell_fd)
        self._doorbell.close()
        self._bells.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _salvage(file: RingFile) -> list[tuple[bytes, int, bytes]]:
    """Read what a gone consumer left in a ring (we are its only reader now): (the
    SELECT tag in force, meta, payload) per message."""
    consumer = ringcore.Consumer(file.map)
    try:
        out: list[tuple[bytes, int, bytes]] = []
        while True:
            selects = consumer.selects
            batch = consumer.poll(1024)
            if not batch:
                if consumer.selects == selects:
                    return out
                continue
            tag = consumer.selected
            out.extend((tag, meta, payload) for meta, payload in batch)
    except RingCorrupted:
        return out
    finally:
        consumer.release()


def _by_channel(
    ch: _Outbound, lost: list[tuple[bytes, int, bytes]]
) -> list[tuple[tuple[str, str], list[tuple[int, bytes]]]]:
    """Salvaged messages grouped by their (sender, receiver) pair, each in order."""
    groups: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
    for tag, meta, payload in lost:
        cid = _ID.unpack_from(tag)[0] if len(tag) >= _ID.size else 0
        c = ch.chans.get(cid)
        if c is not None:
            groups.setdefault((c.sender, c.to), []).append((meta, payload))
    return list(groups.items())
