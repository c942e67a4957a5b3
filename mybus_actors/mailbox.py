"""Mailboxes: ring files per (sender, receiver) pair, doorbells, fair draining, backpressure.

One `Endpoint` per process. It owns the process's doorbell (a FIFO under
``bells/``), the names this process receives for, the rings it reads (inbound) and the
rings it writes (outbound). It knows ring files and processes; it does not know actors'
code, envelopes or TCP.

Guarantees:

- One ring per (sender name, receiver name) pair, created by the sender on its first
  message (``rings/<from>~<to>.<gen>``) and announced on the receiver's doorbell, so a
  slow receiver only ever holds back its own senders.
- FIFO per pair, across ring generations too: a newer generation from the same sender is
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
  drained and unlinked. What a dead receiver never read is counted as undelivered.
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
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

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
    __slots__ = (
        "closed",
        "file",
        "forward",
        "max_record",
        "next_check",
        "peer",
        "producer",
        "rung",
        "seen",
        "sender",
        "to",
        "write",
    )

    def __init__(
        self, file: RingFile, producer: _ring.Producer, sender: str, to: str, peer: Entry
    ):
        self.closed = False
        self.file = file
        self.producer = producer
        self.write = producer.write
        self.max_record = producer.max_record
        self.sender = sender
        self.to = to
        self.forward = to != peer.name  # into the gateway, for another node
        self.peer = peer
        self.seen = -1  # messages written as of the last sweep: unchanged means idle
        self.next_check = 0.0  # when to re-check that the receiver's process lives
        self.rung = 0  # the consumer's signal word we last rang its doorbell for


class _Inbound:
    __slots__ = ("consumer", "file", "key", "receiver", "sender", "used")

    def __init__(self, file: RingFile, consumer: _ring.Consumer, sender: str, receiver: str):
        self.file = file
        self.consumer = consumer
        self.sender = sender
        self.receiver = receiver
        self.key = (sender, receiver)
        self.used = True


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
        self._relayed = Dedup()  # what the gateway delivered, per stream: duplicates go
        self._fence = _Fence()
        self.pid = os.getpid()
        ctime = process_create_time(self.pid)
        assert ctime is not None
        self._token = _ms(ctime)
        self._names: set[str] = set()
        self._out: dict[tuple[str, str], _Outbound] = {}
        # Inbound rings: the active generation per pair is first in its list.
        self._in: dict[tuple[str, str], list[_Inbound]] = {}
        self._active: list[_Inbound] = []
        self._rr = 0
        self._by_file: dict[str, _Inbound] = {}
        now = clock()
        self._out_table: ActivityTable[tuple[str, str], _Outbound] = ActivityTable(
            idle=channel_idle, now=now
        )
        self._in_table: ActivityTable[str, _Inbound] = ActivityTable(idle=channel_idle, now=now)
        self._sweep_every = min(1.0, channel_idle / 4)
        self._next_out_sweep = self._next_in_sweep = now + self._sweep_every
        self._sends = 0
        self._polls = 0
        self._paused: set[str] = set()
        self._ignored: set[str] = set()  # files in rings/ that are not rings: not retried
        self.undelivered = 0
        self.bell_path = registry.doorbell_path(self.pid, index=next(_ENDPOINT_INDEX))
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
        self._scan_rings()
        return entry

    def unbind(self, name: str) -> None:
        """Stop receiving for ``name``: close its rings, unlink them, unregister it."""
        if name not in self._names:
            return
        # Open the rings announced but not read yet, so that their consumer end is
        # closed too: their writers then know it stopped (it did not die).
        self._read_bell()
        self._scan_rings()
        self._names.discard(name)
        for key in [k for k in self._in if k[1] == name]:
            for ch in self._in.pop(key):
                self._drop_inbound(ch)
        for key in [k for k in self._out if k[0] == name]:
            # Closing our producer end loses nothing: the receiver drains the file.
            self._drop_outbound(self._out[key])
        self._paused.discard(name)
        try:
            self.registry.unregister(name)
        except ResourceExhausted as exc:
            # The entry stays until this process exits; then it is stale and reclaimed.
            self._short.failed(exc)
        self._rebuild_active()

    def receiver_closed(self, sender: str, to: str) -> bool:
        """Whether the receiver of our ring ``sender``->``to`` closed it (a clean stop)."""
        ch = self._out.get((sender, to))
        return ch is not None and ch.producer.consumer_closed

    def pause(self, name: str) -> None:
        """Stop draining rings to ``name`` (its senders feel backpressure) until `resume`."""
        self._paused.add(name)
        self._rebuild_active()

    def resume(self, name: str) -> None:
        self._paused.discard(name)
        self._rebuild_active()

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
        """Write one message into the ring from ``sender`` to ``to``.

        Args:
            sender: a name bound on this endpoint.
            to: a registered name on this node.
            data: the message bytes (any bytes-like object of format "B", any size).
            meta: an opaque integer below 2**24 delivered with the bytes.
            timeout: how long to wait for room when the ring is full.
            block: False raises `MailboxFull` at once instead of waiting.

        Raises:
            ActorNotFound: no live receiver holds ``to`` (or it died while we waited).
            MailboxFull: the ring stayed full past ``timeout`` (nothing was delivered).
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        # The hot path of every local message: kept to a few attribute loads and calls.
        ch = self._out.get((sender, to))
        if ch is None or self._clock() >= ch.next_check:
            ch = self._channel(sender, to, ch, timeout if block else 0.0)
        if len(data) <= ch.max_record:
            signal = ch.write(data, meta)
        else:
            signal = self._send_fragments(ch, data, meta, timeout, block)
        if signal:
            if signal < 0:
                write = ch.write
                signal = self._wait_for_room(ch, lambda: write(data, meta), timeout, block)
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
                self._consumer_gone(ch, data, meta, timeout, block)
        self._sends += 1
        if not self._sends & 1023:
            self._maintain_outbound()

    def _channel(
        self, sender: str, to: str, ch: _Outbound | None, restart_wait: float | None = None
    ) -> _Outbound:
        """The ring ``sender``->``to``, (re)opened if its receiver's process is gone.

        With ``restart_wait`` (seconds), a receiver that has no holder now but that a
        live supervisor restarts is waited for, up to that long.

        Raises:
            MailboxFull: it was restarting and did not come back within ``restart_wait``.
            RingCorrupted: another process truncated our ring file (what it held is
                lost with it); the next send opens a new one.
        """
        if ch is not None:
            # A receiver killed while busy neither closes its end nor answers a bell:
            # without this check a new holder of the name is never reached.
            ch.next_check = self._clock() + _LIVENESS_EVERY
            if not ch.file.intact():
                self._drop_outbound(ch)
                raise RingCorrupted(
                    f"ring file {ch.file.path.name} was truncated by another process;"
                    " this message was not sent, and what the ring held may be lost"
                )
            if is_alive(ch.peer.pid, ch.peer.create_time):
                return ch
            if ch.forward:
                self._regateway(ch)
                return ch
            self._drop_outbound(ch, salvage=True)
        try:
            ch = self._open(sender, to)
        except ActorNotFound:
            # Not for a restart this very process makes: it cannot happen while we wait.
            if restart_wait is None or self.registry.restarter(to) in (None, os.getpid()):
                raise
            ch = self._open_restarted(sender, to, restart_wait)
        ch.next_check = self._clock() + _LIVENESS_EVERY
        return ch

    def _open_restarted(self, sender: str, to: str, timeout: float) -> _Outbound:
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

    def send_some(self, sender: str, to: str, data: Any, meta: int, sent: int) -> int:
        """Write what fits of a message now, never waiting (for an event loop's sake).

        A message of at most ``max_record`` bytes goes whole or not at all; a longer one
        goes fragment by fragment: call again with the returned count until it is the
        message's length. In between, send nothing else on this pair.

        Returns:
            Bytes of ``data`` written so far; -1 when a short message found no room.

        Raises:
            ActorNotFound: no live receiver holds ``to`` (a half-sent message is dropped
                with its ring: the receiver never sees part of it).
        """
        ch = self._out.get((sender, to))
        if ch is None or self._clock() >= ch.next_check:
            fresh = self._channel(sender, to, ch)
            if sent and fresh is not ch:  # the rest of a message cannot start a new ring
                raise ActorNotFound(f"the ring to {to!r} closed mid-message")
            ch = fresh
        total = len(data)
        if total <= ch.max_record and not sent:
            signal = ch.write(data, meta)
            if signal == _ring.FULL:
                return -1
            done = total
            if signal & _STATE == _WAITING and signal != ch.rung:
                ch.rung = signal
                self._ring_bell(ch)
        else:
            view = data if isinstance(data, bytes) else memoryview(data).cast("B")
            done, signal = self._stream(ch, view, meta, sent)
            if signal == _ring.FULL:
                return sent
        if signal & _STATE == _ring.CLOSED:
            self._check_receiver(ch, pending=1 if done == total else 0)
        return done

    def _consumer_gone(
        self, ch: _Outbound, data: Any, meta: int, timeout: float, block: bool
    ) -> None:
        """The receiver closed its end as we published: was our message read?"""
        unread = ch.producer.unread
        self._drop_outbound(ch, salvage=True, keep_last=1 if unread > 0 else 0)
        if unread > 0:
            # Ours was not read. A new incarnation of the name may take it; if there is
            # none, the lookup raises ActorNotFound.
            self.send(ch.sender, ch.to, data, meta, timeout=timeout, block=block)

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

    def _open(self, sender: str, to: str) -> _Outbound:
        """Create, allocate and announce a new ring ``sender``->``to``.

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            ResourceExhausted: out of descriptors or shared memory (nothing was sent).
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        self._check_open()
        if sender not in self._names:
            raise MailboxClosed(f"sender {sender!r} is not bound on this endpoint")
        peer = self.registry.lookup(FORWARD_TO if parse_forward_name(to) else to)
        for _ in range(100):
            gen = time.time_ns()
            path = self.registry.rings_dir / ring_filename(sender, to, gen)
            try:
                file = RingFile.create(path, self.ring_capacity)
            except FileExistsError:
                continue
            except OSError as exc:
                raise (exhausted(exc, f"create a ring to {to!r}") or exc) from exc
            break
        else:  # pragma: no cover - a clock that never moves
            raise RuntimeError(f"could not create a ring file for {sender}->{to}")
        producer = _ring.Producer(file.map)
        producer.set_identity(self.pid, self._token)
        ch = _Outbound(file, producer, sender, to, peer)
        self._bells.acquire(peer.doorbell)
        self._out[(sender, to)] = ch
        self._out_table.put((sender, to), ch, self._clock())
        try:
            self._announce(peer, path.name)
        except ActorNotFound:
            file.unlink()
            self._drop_outbound(ch)
            raise
        return ch

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

    def _check_receiver(self, ch: _Outbound, *, pending: int) -> None:
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
            raise ActorNotFound(f"actor {ch.to!r} stopped before reading its mailbox")

    def _wait_for_room(
        self, ch: _Outbound, attempt: Callable[[], int], timeout: float, block: bool
    ) -> int:
        """Retry ``attempt`` until it stops returning FULL; return its last result."""
        if not block:
            raise MailboxFull(f"mailbox of {ch.to!r} is full")
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
                self._check_receiver(ch, pending=0)
            if now >= deadline:
                raise MailboxFull(
                    f"mailbox of {ch.to!r} stayed full for {timeout}s; message not sent"
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
        self, ch: _Outbound, data: Any, meta: int, timeout: float, block: bool
    ) -> int:
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
                signal = self._wait_for_room(ch, step, timeout, block)
            while sent < total:
                if signal & _STATE == _ring.CLOSED:
                    self._check_receiver(ch, pending=0)
                signal = step()
                if signal == _ring.FULL:
                    signal = self._wait_for_room(ch, step, timeout, True)
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

    def _drop_outbound(self, ch: _Outbound, *, salvage: bool = False, keep_last: int = 0) -> None:
        """Forget a ring we write; with ``salvage``, hand its unread messages back.

        Salvage is only for a receiver that stopped or died: nobody else reads the ring
        then, so we may read what it left (whole messages only; a half-sent fragmented
        one is dropped, as its sender was told by an exception). The last ``keep_last``
        messages are the current send's, reported by its exception instead.
        """
        key = (ch.sender, ch.to)
        if self._out.get(key) is ch:
            del self._out[key]
            with contextlib.suppress(KeyError):
                self._out_table.pop(key)
        if ch.closed:
            return
        ch.closed = True
        self._bells.release(ch.peer.doorbell)
        lost: list[tuple[int, bytes]] = []
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
        ch.producer.close()
        ch.file.close(ch.producer)
        if drained and not self._gateway_live():
            # An outbox with nothing left to send and no gateway to remove it (the last
            # one was stopped, or is yet to come): ours to tidy away.
            with contextlib.suppress(FileNotFoundError):
                ch.file.path.unlink()
        if lost:
            self.undelivered += len(lost)
            if self._on_undelivered is not None:
                self._on_undelivered(ch.sender, ch.to, lost)
            else:
                _log.warning(
                    "%d message(s) from %r to %r were never read: the receiver is gone",
                    len(lost),
                    ch.sender,
                    ch.to,
                )

    # -- receiving -----------------------------------------------------------------

    def poll(self, budget: int = 64) -> list[Delivery]:
        """Drain inbound rings round robin, at most ``budget`` messages from each.

        Returns:
            Deliveries in ring order per pair; pairs interleave fairly.
        """
        return [Delivery(s, r, m, p) for s, r, items in self.poll_batches(budget) for m, p in items]

    def poll_batches(self, budget: int = 64) -> list[Batch]:
        """Like `poll`, grouped per ring: (sender, receiver, [(meta, payload), ...]).

        The dispatcher's hot path: no object per message beyond the ring's own pair.
        """
        self._polls += 1
        if not self._polls & 7:
            self._read_bell()
        out: list[Batch] = []
        active = self._active
        n = len(active)
        if n:
            start = self._rr % n
            self._rr = start + 1
            for i in range(n):
                ch = active[(start + i) % n]
                try:
                    items = ch.consumer.poll(budget)
                except RingCorrupted:
                    self._discard_corrupt(ch)
                    continue
                if items:
                    ch.used = True
                    if ch.sender == FORWARD_TO:
                        out.append((ch.sender, ch.receiver, self._unrelay(items)))
                    else:
                        out.append((ch.sender, ch.receiver, items))
                elif ch.consumer.producer_closed and not ch.consumer.pending:
                    # Its writer closed it and we have read it all (closed is read
                    # before the tail: nothing is published after the close). Unlinked
                    # now, not at the idle sweep: a peer that comes and goes (a
                    # short-lived client) must not cost us a descriptor for 30 s.
                    self._retire(ch)
                    self._peer_left(ch.receiver, ch.sender)
                elif len(self._in[ch.key]) > 1 and not _peer_alive(
                    # A SIGKILLed writer never closes its ring: a new incarnation of
                    # the name must not wait behind it until the idle sweep.
                    *ch.consumer.producer_identity
                ):
                    self._retire(ch)
        if not out:
            self.maintain()
        return out

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

    def offer_batch(self, sender: str, to: str, items: list[tuple[bytes, int]]) -> int:
        """Write as many whole messages (each at most the ring's record size) as fit now,
        publish them at once, ring at most once; never wait. Returns how many went.

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        ch = self._out.get((sender, to))
        if ch is None or self._clock() >= ch.next_check:
            ch = self._channel(sender, to, ch)
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
                    self._check_receiver(ch, pending=0)
            self._sends += written
        elif ch.producer.consumer_closed:
            self._check_receiver(ch, pending=0)
        return written

    def load(self, sender: str, to: str) -> tuple[int, int]:
        """How busy ``to`` looks from our ring to it: (0 if it sleeps waiting for
        messages or we have no ring to it, else 1; bytes we wrote it has not read yet).

        Both come from the ring's shared words: no message asks. A receiver asleep
        with bytes unread is about to read them; one awake with bytes unread is busy.
        """
        ch = self._out.get((sender, to))
        if ch is None or ch.closed:
            return (0, 0)
        producer = ch.producer
        return (0 if producer.consumer_waiting else 1, producer.unread_bytes)

    def max_record(self, sender: str, to: str) -> int:
        """The largest message the ring ``sender``->``to`` takes as one record (the
        default ring's when there is none yet)."""
        ch = self._out.get((sender, to))
        return ch.max_record if ch is not None else self.ring_capacity // 4

    def offer(self, sender: str, to: str, data: Any, meta: int = 0) -> bool:
        """Write one whole message now or not at all, never waiting; the gateway's way
        into local rings (a reader never sees part of it, even if the gateway dies).

        Returns:
            True when written, False when the ring has no room for it now.

        Raises:
            ActorNotFound: no live receiver holds ``to``.
            MailboxClosed: the endpoint is closed, or ``sender`` is not bound here.
        """
        ch = self._out.get((sender, to))
        if ch is None or self._clock() >= ch.next_check:
            ch = self._channel(sender, to, ch)
        if not ch.producer.offer_message(data, meta):
            if ch.producer.consumer_closed:
                self._check_receiver(ch, pending=0)
            return False
        signal = ch.producer.signal()
        if signal & _STATE == _WAITING and signal != ch.rung:
            ch.rung = signal
            self._ring_bell(ch)
        elif signal & _STATE == _ring.CLOSED:
            # As in offer_batch: unread, it is salvaged and returned; written either way.
            with contextlib.suppress(ActorNotFound):
                self._check_receiver(ch, pending=0)
        self._sends += 1
        return True

    def _peer_left(self, name: str, peer: str) -> None:
        """``peer`` closed its ring to ``name``: drop ours to it too if it closed that end."""
        ch = self._out.get((name, peer))
        if ch is not None and ch.producer.consumer_closed:
            with contextlib.suppress(ActorNotFound):
                self._check_receiver(ch, pending=0)

    def pending(self) -> bool:
        """Some inbound ring has unread records."""
        return any(ch.consumer.pending for ch in self._active)

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
        if parsed[1] not in self._names:
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
            consumer = _ring.Consumer(file.map)
        except RingCorrupted as exc:
            self._ignore(fname, exc)
            file.close(None)
            return
        self._short.ok()
        ch = _Inbound(file, consumer, sender, receiver)
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
        paused = self._paused
        self._active = [g[0] for key, g in self._in.items() if g and key[1] not in paused]

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
        ch.consumer.discard_partial()
        if ch.file.intact():  # a truncated page is SIGBUS: then tell the writer nothing
            ch.consumer.close()
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
                    parsed[1] in self._names or (streams and parse_forward_name(parsed[1]))
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
        for key, out in list(self._out.items()):
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

    # -- shutdown ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MailboxClosed("this endpoint is closed")

    def close(self) -> None:
        """Close every ring (unlinking inbound ones), unregister names, remove the doorbell."""
        if self._closed:
            return
        self._closed = True
        # Consumer ends first: a peer that sees our producer end closed then finds our
        # consumer end closed too, and drops its ring to us at once (`_peer_left`).
        for name in list(self._names):
            self.unbind(name)
        for out in list(self._out.values()):
            self._drop_outbound(out)
        self._poller.unregister(self._bell_fd)
        self._doorbell.close()
        self._bells.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _salvage(file: RingFile) -> list[tuple[int, bytes]]:
    """Read what a gone consumer left in a ring (we are its only reader now)."""
    consumer = _ring.Consumer(file.map)
    try:
        out: list[tuple[int, bytes]] = []
        while True:
            batch = consumer.poll(1024)
            if not batch:
                return out
            out.extend(batch)
    except RingCorrupted:
        return out
    finally:
        consumer.release()
