"""Sending: the rings a process writes, a channel per pair of names in each.

One `Outbound` per endpoint (`mailbox.Endpoint` is the façade over it and `inbound`).

- One ring per (writing process, reading process) pair, created by the writer on its
  first message (``rings/<from mailbox>~<to mailbox>.<gen>``) and announced on the
  reader's doorbell. Every (sender name, receiver name) pair is a *channel* of it: a
  SELECT record (`ring.Producer.select`) switches the ring to a channel, declaring its
  id and both names the first time, so a run of messages of one pair costs no
  per-message header. Into the gateway, for another node, a *forward* ring per (sender,
  remote actor): the gateway's outbox, which outlives its reader.
- A full ring makes `Outbound.send` wait for the consumer up to a timeout, then raise
  `MailboxFull`; a receiver that holds its senders back (the channel page, `ringfile`)
  is waited for the same way. A message is either wholly published or, when the sender
  gives up mid-message, abandoned with its ring generation (never read back while the
  receiver lives).
- The receiver's liveness is checked every `_LIVENESS_EVERY` per channel; what a
  receiver that stopped or died never read is read back (salvaged) and handed to
  ``on_undelivered`` per channel (the consumer publishes the channel in force at its
  head). A forward ring is never salvaged: the next gateway reads on.
- Rings idle for ``channel_idle`` are closed once everything written was read.
- Out of descriptors or shared memory is `ResourceExhausted` at the call that needed
  them (nothing was sent); wake-ups and announcements that meet it are logged once.

Knows ring files, doorbells and the registry; not what is received, nor actors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from mybus_actors import codec, ringcore
from mybus_actors import ring as _ring
from mybus_actors.doorbell import NEW_RING, WAKE, Bells
from mybus_actors.errors import (
    ActorNotFound,
    MailboxClosed,
    MailboxFull,
    ResourceExhausted,
    RingCorrupted,
)
from mybus_actors.pressure import OnceLog, exhausted
from mybus_actors.registry import (
    FORWARD_TO,
    Entry,
    Registry,
    is_alive,
    mailbox_name,
    parse_forward_name,
    ring_filename,
)
from mybus_actors.relayed import RELAYED
from mybus_actors.ringfile import CHANNEL_ID, GONE, HELD, OPEN, PAGE, RingFile
from mybus_actors.timers import ActivityTable

__all__ = ["Outbound"]

_log = logging.getLogger(__name__)

_ANNOUNCE_TIMEOUT: Final = 5.0
_STATE: Final = _ring.STATE_MASK
_WAITING: Final = _ring.WAITING
_LIVENESS_EVERY: Final = 0.05  # seconds between checks that a ring's receiver lives
# What `ring.Producer.relay` reads of an envelope's meta, and marks a relayed record with.
_RELAY_BITS: Final = (codec.HAS_SENDER, codec.HAS_CORRELATION, RELAYED)
_NO_PAGE: Final = bytearray(1)  # a forward ring's one channel (id 0) is always open


class _OutRing:
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
        self.page = page  # the receiver's channel states (`OPEN`, `HELD`, `GONE`)
        self.chans: dict[int, _Chan] = {}
        self.next_id = 1
        self.cur: _Chan | None = None  # the channel the last SELECT named
        self.seen = -1  # messages written as of the last sweep: unchanged means idle
        self.rung = 0  # the consumer's signal word we last rang its doorbell for


class Send(Protocol):
    """`Outbound.send`'s signature: what `Outbound.fast_send` returns."""

    def __call__(
        self,
        sender: str,
        to: str,
        data: Any,
        meta: int = 0,
        *,
        timeout: float = 10.0,
        block: bool = True,
    ) -> None: ...


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

    def __init__(self, ring: _OutRing, cid: int, sender: str, to: str, tag: bytes):
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


def _switch(ch: _OutRing, c: _Chan) -> None:
    """The ring's SELECT now names ``c``."""
    if ch.cur is not None:
        ch.cur.current = False
    ch.cur = c
    c.current = True


class Outbound:
    """The rings this endpoint writes, and its channels on them.

    Args:
        registry: the runtime directory's registry.
        names: the names bound on the endpoint (shared with it: a sender must be one).
        bells: the receivers' doorbells, held by our rings to them.
        pid, token: this process and its start time (ms), written into every ring.
        ring_capacity, channel_idle, clock, on_undelivered: as `mailbox.Endpoint`'s.
        short: where an episode of exhaustion is logged once.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        names: set[str],
        bells: Bells,
        pid: int,
        token: int,
        ring_capacity: int,
        channel_idle: float,
        clock: Callable[[], float],
        on_undelivered: Callable[[str, str, list[tuple[int, bytes]]], None] | None,
        short: OnceLog,
    ) -> None:
        self.registry = registry
        self._names = names
        self._bells = bells
        self.pid = pid
        self._token = token
        self.ring_capacity = ring_capacity
        self._clock = clock
        self._on_undelivered = on_undelivered
        self._short = short
        self.mailbox = ""  # ours, what rings from us are named by: the endpoint sets it
        # A channel per (sender, receiver) pair, on a ring per receiving process (keyed
        # by its mailbox) or, into the gateway, on a forward ring of its own.
        self._out: dict[tuple[str, str], _Chan] = {}
        self._rings: dict[str, _OutRing] = {}
        now = clock()
        self._out_table: ActivityTable[str, _OutRing] = ActivityTable(idle=channel_idle, now=now)
        self._sweep_every = min(1.0, channel_idle / 4)
        self._next_out_sweep = now + self._sweep_every
        self._sends = 0
        self.undelivered = 0
        self._closed = False

    def forget_sender(self, name: str) -> None:
        """``name`` is no longer bound here: its channels are not used again."""
        for key in [k for k in self._out if k[0] == name]:
            self._forget(self._out[key])

    @property
    def drained(self) -> bool:
        """Everything written on every ring was read."""
        return all(o.producer.empty for o in self._rings.values())

    def close(self) -> None:
        """Close every ring we write (the receivers unlink them once read)."""
        self._closed = True
        for out in list(self._rings.values()):
            self._drop_outbound(out)

    def receiver_closed(self, sender: str, to: str) -> bool:
        """Whether the receiver of our channel ``sender``->``to`` stopped receiving for
        it (a clean stop)."""
        c = self._out.get((sender, to))
        return c is not None and (c.page[c.id] == GONE or c.ring.producer.consumer_closed)

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
            self._after_write(c, signal, sender, to, data, meta, timeout, block)
        self._sends += 1
        if not self._sends & 1023:
            self.maintain()

    def _after_write(
        self,
        c: _Chan,
        signal: int,
        sender: str,
        to: str,
        data: Any,
        meta: int,
        timeout: float,
        block: bool,
    ) -> None:
        """What follows a write whose signal word was not zero: no room (wait for it),
        a receiver asleep (ring its bell, once per sleep), or one that closed."""
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
        elif signal:
            self._consumer_gone(c, data, meta, timeout, block)

    def fast_send(self) -> Send:
        """`send`, or on the native core a callable with its signature that does its
        common case (a channel in use, nothing due, one record) in C and calls `send`
        for everything else. The C side keeps the liveness deadline on CLOCK_MONOTONIC,
        so only an endpoint on `time.monotonic` gets it."""
        native = ringcore.NATIVE
        if native is None or self._clock is not time.monotonic:
            return self.send
        defaults = Outbound.send.__kwdefaults__
        assert defaults is not None  # send's timeout and block
        sender: Send = native.Sender(
            _Chan,
            self._out,
            self.send,
            self._after_write,
            self.maintain,
            defaults["timeout"],
        )
        return sender

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
            if state == OPEN:
                return c
            if state == GONE:
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
            if found is not None and found.next_id >= PAGE:
                self._drop_outbound(found)  # its channel table is full: the next generation
                found = None
            if found is None:
                found = self._new_ring(mailbox, self.mailbox, mailbox, peer, to, forward=False)
            ch = found
            cid = ch.next_id
            ch.next_id = cid + 1
            c = _Chan(ch, cid, sender, to, CHANNEL_ID.pack(cid) + f"{sender}\0{to}".encode("ascii"))
        ch.chans[c.id] = c
        self._out[(sender, to)] = c
        return c

    def _new_ring(
        self, key: str, writer: str, reader: str, peer: Entry, label: str, *, forward: bool
    ) -> _OutRing:
        """Create, allocate and announce the ring ``writer``->``reader``."""
        for _ in range(100):
            gen = time.time_ns()
            path = self.registry.rings_dir / ring_filename(writer, reader, gen)
            try:
                file = RingFile.create(path, self.ring_capacity, 0 if forward else PAGE)
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
            page = memoryview(file.map)[end : end + PAGE]
        ch = _OutRing(file, producer, key, peer, label, page, forward=forward)
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

    def _regateway(self, ch: _OutRing) -> None:
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
        message = NEW_RING + fname.encode() + b"\n"
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

    def _ring_bell(self, ch: _OutRing) -> None:
        try:
            self._bells.write(ch.peer.doorbell, WAKE)
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

    def _check_receiver(self, ch: _OutRing, *, pending: int, to: str = "") -> None:
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

    def _stream(self, ch: _OutRing, view: Any, meta: int, sent: int) -> tuple[int, int]:
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

    def _drop_outbound(self, ch: _OutRing, *, salvage: bool = False, keep_last: int = 0) -> None:
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
            c.tag = c.tag[: CHANNEL_ID.size]
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
        self._offered(ch, written, ch.producer.signal() if written else -1, to)
        return written

    def _offered(self, ch: _OutRing, written: int, signal: int, to: str) -> None:
        """After an offer (which never waits) of ``written`` messages, ``signal`` being
        the consumer's word read after them: ring it once per sleep, or see whether it
        stopped."""
        if not written:
            if ch.producer.consumer_closed:
                self._check_receiver(ch, pending=0, to=to)
            return
        if signal & _STATE == _WAITING and signal != ch.rung:
            ch.rung = signal
            self._ring_bell(ch)
        elif signal & _STATE == _ring.CLOSED:
            # Published as it closed: what it did not read is salvaged and returned
            # (on_undelivered), so these count as written either way.
            with contextlib.suppress(ActorNotFound):
                self._check_receiver(ch, pending=0, to=to)
        self._sends += written

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
        self._offered(ch, written, signal, to)
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
        if c.page[c.id] == HELD:
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
        written = 1 if ch.producer.offer_message(data, meta) else 0
        self._offered(ch, written, ch.producer.signal() if written else -1, to)
        return written == 1

    def peer_left(self, mailbox: str) -> None:
        """Process ``mailbox`` closed its ring to us: drop ours to it too if it closed
        that end."""
        ch = self._rings.get(mailbox)
        if ch is not None and ch.producer.consumer_closed:
            with contextlib.suppress(ActorNotFound):
                self._check_receiver(ch, pending=0)

    def maintain(self) -> None:
        """Close rings we no longer write to; notice receivers that stopped or died."""
        now = self._clock()
        if now < self._next_out_sweep:
            return
        self._next_out_sweep = now + self._sweep_every
        for key, out in list(self._rings.items()):
            written = out.producer.written
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

    def _check_open(self) -> None:
        if self._closed:
            raise MailboxClosed("this endpoint is closed")


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
    ch: _OutRing, lost: list[tuple[bytes, int, bytes]]
) -> list[tuple[tuple[str, str], list[tuple[int, bytes]]]]:
    """Salvaged messages grouped by their (sender, receiver) pair, each in order."""
    groups: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
    for tag, meta, payload in lost:
        cid = CHANNEL_ID.unpack_from(tag)[0] if len(tag) >= CHANNEL_ID.size else 0
        c = ch.chans.get(cid)
        if c is not None:
            groups.setdefault((c.sender, c.to), []).append((meta, payload))
    return list(groups.items())
