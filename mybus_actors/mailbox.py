"""Mailboxes: a ring per pair of processes, channels inside it, doorbells, backpressure.

One `Endpoint` per process (or per client): the façade over its two halves, `outbound`
(the rings it writes: channels, fragments, waiting for room, receivers' liveness,
salvage) and `inbound` (the rings it reads: generations, round robin, held names,
sleep flags). It owns what they share: the process's doorbell (a FIFO under
``bells/``), its *mailbox* (the name rings to and from it are known by:
`registry.mailbox_name`) and the names it receives for. It knows ring files and
processes; it does not know actors' code, envelopes or TCP.

Guarantees (each half's docstring has its own):

- One ring per (writing process, reading process) pair; every (sender name, receiver
  name) pair is a channel of it. `/dev/shm` and descriptors grow with pairs of
  processes, not pairs of actors. The gateway's rings are named by its role
  (``gateway``), so a successor's ring is a newer generation of its predecessor's.
- FIFO per pair of names, across ring generations too. Nothing is dropped: a full ring
  makes `send` wait, then raise `MailboxFull`; a message is wholly published or never
  seen. A slow receiver holds back only its own senders.
- No lost wake-up; sleeps are bounded.
- What a receiver that stopped or died never read comes back (``on_undelivered``);
  a forward ring into the gateway outlives its reader (the gateway's outbox).
- Descriptors have owners, and out of descriptors or shared memory is
  `ResourceExhausted` at the call that needed them.

The hot paths (`send`, `poll_batches`, the offers, the sleep handshake) are the halves'
own bound methods, set on the façade: no call in between. On the native core `send` is
`Outbound.fast_send`'s C callable: a channel in use, one record, nothing due, and the
whole send is C; anything else is `Outbound.send`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable

from mybus_actors import ring as _ring
from mybus_actors.doorbell import Bells, Doorbell
from mybus_actors.errors import MailboxClosed, ResourceExhausted
from mybus_actors.inbound import Batch, Delivery, Inbound, Payload
from mybus_actors.outbound import Outbound
from mybus_actors.pressure import OnceLog
from mybus_actors.registry import (
    FORWARD_TO,
    Entry,
    Registry,
    mailbox_name,
    process_create_time,
    validate_name,
)

__all__ = ["Batch", "Delivery", "Endpoint", "Payload"]

_log = logging.getLogger(__name__)

# Several endpoints may live in one process (a runtime and a client, or tests): each
# gets its own doorbell.
_ENDPOINT_INDEX = itertools.count()


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
        self.pid = os.getpid()
        ctime = process_create_time(self.pid)
        assert ctime is not None
        self._names: set[str] = set()
        self.bell_path = registry.doorbell_path(self.pid, index=next(_ENDPOINT_INDEX))
        # The doorbell is a FIFO: a wake-up is one byte written on a descriptor the
        # sender keeps open while it has a ring to us (no path lookup per ring), and
        # one read drains them all.
        self._doorbell = Doorbell(self.bell_path)
        self._bells = Bells()  # receivers' doorbells, held by our rings to them
        self._short = OnceLog(_log, f"endpoint {self.pid}")
        self._closed = False
        out = self._outbound = Outbound(
            registry,
            names=self._names,
            bells=self._bells,
            pid=self.pid,
            token=int(ctime * 1000),
            ring_capacity=ring_capacity,
            channel_idle=channel_idle,
            clock=clock,
            on_undelivered=on_undelivered,
            short=self._short,
        )
        inb = self._inbound = Inbound(
            registry,
            names=self._names,
            doorbell=self._doorbell,
            spin=spin,
            channel_idle=channel_idle,
            clock=clock,
            on_stream_ring=on_stream_ring,
            hold_bytes=ring_capacity if hold_bytes is None else hold_bytes,
            peer_left=out.peer_left,
            sweep=self.maintain,
            short=self._short,
        )
        self.mailbox = mailbox_name(self.bell_path)
        # Sending (see `Outbound`'s methods).
        self.send = out.fast_send()
        self.offer = out.offer
        self.offer_batch = out.offer_batch
        self.offer_relayed = out.offer_relayed
        self.load = out.load
        self.max_record = out.max_record
        self.receiver_closed = out.receiver_closed
        # Receiving and sleeping (see `Inbound`'s methods).
        self.poll = inb.poll
        self.poll_batches = inb.poll_batches
        self.pending = inb.pending
        self.pause = inb.pause
        self.resume = inb.resume
        self.prepare_sleep = inb.prepare_sleep
        self.finish_sleep = inb.finish_sleep
        self.sleep_bound = inb.sleep_bound
        self.spin_for = inb.spin_for
        self.wait = inb.wait
        self.read_bell = inb.read_bell

    @property
    def mailbox(self) -> str:
        """What rings to and from this endpoint are named by."""
        return self._mailbox

    @mailbox.setter
    def mailbox(self, value: str) -> None:
        self._mailbox = self._outbound.mailbox = self._inbound.mailbox = value

    @property
    def spin(self) -> float:
        """Seconds `wait` polls before it sleeps on the doorbell (0: sleep at once)."""
        return self._inbound.spin

    @spin.setter
    def spin(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"spin must be >= 0, got {seconds!r}")
        self._inbound.spin = seconds

    @property
    def bell_fd(self) -> int:
        """The doorbell's descriptor, for a caller that sleeps in its own poller."""
        return self._doorbell.fd

    @property
    def undelivered(self) -> int:
        """Messages counted lost: published to a receiver that never read them, or
        read and not deliverable (a record no channel names, a relayed one unreadable)."""
        return self._outbound.undelivered + self._inbound.undelivered

    @property
    def duplicates(self) -> int:
        """Records from the gateway dropped because they had been delivered before."""
        return self._inbound.duplicates

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
        if self._closed:
            raise MailboxClosed("this endpoint is closed")
        entry = self.registry.register(validate_name(name), doorbell=self.bell_path)
        self._names.add(name)
        if name == FORWARD_TO:
            # The gateway's rings are named by its role, not its process: a successor's
            # ring to an actor is then a newer generation of the same pair, read after
            # what its predecessor wrote (the relay positions' order depends on it).
            self.mailbox = FORWARD_TO
        self._inbound.scan_rings()
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
        self._inbound.read_bell()
        self._inbound.scan_rings()
        self._names.discard(name)
        try:
            self.registry.unregister(name)
        except ResourceExhausted as exc:
            # The entry stays until this process exits; then it is stale and reclaimed.
            self._short.failed(exc)
        self._outbound.forget_sender(name)
        return self._inbound.unbound(name)

    # -- maintenance ---------------------------------------------------------------

    def maintain(self) -> None:
        """Run the periodic sweeps that are due: idle rings, gone peers, lost announcements."""
        self._outbound.maintain()
        self._inbound.maintain()

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
        # consumer end closed too, and drops its ring to us at once.
        self._inbound.close()
        self._outbound.close()
        self._doorbell.close()
        self._bells.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
