"""`mybus-gateway`: relays actor messages between nodes over TCP (optionally TLS).

One gateway per node registers as the actor ``gateway``. A local actor's message for
another node goes into a ring of the sender's own into the gateway, one per (sender,
remote actor): the gateway's outbox (`outbox`). The gateway sends its records in runs
and releases them only once the other node has them; the other node's gateway writes
them into its rings to the targets, sender address kept, and acknowledges only what is
in a ring (`deliveries`). Either gateway may die at any moment: what it had read is
still in the rings, what it had delivered is known to the receivers (they drop a
record they have seen), and its successor takes up the rings it finds.

This module wires the halves to the links (`peers`) and serves the local requests to
the gateway itself (watching a remote actor). It never unpickles what it relays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from mybus_actors import codec, counters, ringcore
from mybus_actors.address import format_address, parse_address
from mybus_actors.allocator import keep_freed_memory
from mybus_actors.codec import Kind
from mybus_actors.deadletter import Notice, lost_notice, notice_for
from mybus_actors.deliveries import Deliveries
from mybus_actors.errors import (
    ActorNotFound,
    InvalidAddress,
    MailboxClosed,
    MyBusError,
    NameTaken,
    SerializationError,
)
from mybus_actors.gateway_config import DEFAULT_PORT, GatewayConfig, build_config
from mybus_actors.items import FIRST, WHOLE, Record, Run, StreamAck, record_type
from mybus_actors.mailbox import Endpoint, Payload
from mybus_actors.outbox import Outbox, OutStream
from mybus_actors.peers import Link, Peers, quiet_refused_accepts
from mybus_actors.pressure import OnceLog
from mybus_actors.registry import Registry
from mybus_actors.relayed import PREFIX, RELAYED, dead_letter_id
from mybus_actors.routing import GATEWAY

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

__all__ = ["DEFAULT_PORT", "Gateway", "GatewayConfig", "main"]

_log = logging.getLogger(__name__)

_FLUSH_ON_STOP: Final = 2.0
_RETRY: Final = 0.001  # seconds between tries to deliver into a full ring
# A pump that took this many records since it last slept is in a flow: it looks again
# after _LINGER rather than have the writers ring it (a bell is a syscall and a wake-up
# per burst in the writer's tell; on two cores that was a quarter of a sender's time).
_FLOW: Final = 32
_LINGER: Final = 0.001


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Gateway:
    """A node's gateway: the ``gateway`` actor on its rings and a TCP server for peers."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.node = config.node
        self.incarnation = random.getrandbits(63) + 1
        self._stopping = asyncio.Event()
        self.peers = Peers(config, self.incarnation, self, self._stopping)
        self.endpoint: Endpoint | None = None
        self._outbox: Outbox | None = None
        self._deliveries: Deliveries | None = None
        self._local: list[tuple[str, int, bytes]] = []  # notices for local actors, waiting
        # The pump's sleep under way, if any, and whether it looks again soon (_RETRY):
        # deliveries that start waiting for room while it sleeps long must wake it.
        self._sleeping: list[asyncio.Future[None]] = []
        self._retrying = False
        # Out of descriptors: deliveries wait and accepts pause; one line per episode.
        self._short_deliver = OnceLog(_log, "delivering to local actors")
        self._short_counters = OnceLog(_log, "publishing the gateway's counters")
        self.dead_letters = 0
        self.metrics_port: int | None = None  # with --metrics, the port it serves on

    @property
    def bound_port(self) -> int | None:
        return self.peers.bound_port

    @property
    def outbox(self) -> Outbox:
        assert self._outbox is not None, "the gateway is not running"
        return self._outbox

    @property
    def deliveries(self) -> Deliveries:
        assert self._deliveries is not None, "the gateway is not running"
        return self._deliveries

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until `stop`: register, adopt the rings, listen, relay; then flush."""
        registry = Registry(self.config.runtime_dir)
        self._outbox = Outbox(registry.rings_dir, self._dead_letter)
        self.endpoint = Endpoint(
            registry,
            channel_idle=self.config.channel_idle,
            spin=0.0,
            on_undelivered=self._salvaged,
            on_stream_ring=self._stream_ring,
        )
        self._deliveries = Deliveries(
            self.node, self.endpoint, registry.blobs_dir,
            refused=self._refused, max_buffer=self.config.max_buffer,
            short=self._short_deliver,
        )  # fmt: skip
        quiet_refused_accepts(asyncio.get_running_loop(), self.peers.short_accept)
        served: tuple[ThreadingHTTPServer, threading.Thread] | None = None
        try:
            self.endpoint.bind(GATEWAY)
            self.outbox.scan()  # what gateways before us left in the rings
            await self.peers.listen()
            registry.gateway_expected.touch(mode=0o600)  # senders wait while we restart
            host, _ = self.config.listen
            _log.info(
                "gateway of node %s listening on %s:%d%s",
                self.node,
                host,
                self.bound_port,
                " (TLS)" if self.config.server_ssl else "",
            )
            _log.info("gateway of node %s: %s", self.node, ringcore.describe())
            if self.config.metrics is not None:
                from mybus_actors import metrics  # prometheus_client: only when asked

                host, port = self.config.metrics
                try:
                    served = metrics.serve(registry, self.node, host, port)
                except OSError as exc:
                    raise MyBusError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
                self.metrics_port = served[0].server_port
            tasks = [
                asyncio.create_task(self._pump(), name="pump"),
                asyncio.create_task(self._maintain(), name="maintain"),
            ]
            for node in self.outbox.nodes():
                self.peers.wake(node)
            if ready is not None:
                ready.set()
            await self._stopping.wait()
            self.peers.close_server()
            await self._flush()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if served is not None:
                served[0].shutdown()
                served[0].server_close()
            self.peers.close()
            self.deliveries.close()
            counters.remove(registry.stats_path(self.endpoint.bell_path))
            self.endpoint.close()  # closes the rings it wrote: its own outboxes too
            self.outbox.maintain()  # rings drained and done with go; the others stay
            self.outbox.close()
            if self._stopping.is_set():  # stopped on purpose: nobody is to wait for us
                registry.gateway_expected.unlink(missing_ok=True)
            _log.info("gateway of node %s stopped", self.node)

    def stop(self) -> None:
        self._stopping.set()

    async def _flush(self) -> None:
        """Give connected links a moment to send what is queued and hear it acked."""
        deadline = time.monotonic() + _FLUSH_ON_STOP
        while time.monotonic() < deadline and any(
            link.up and (self.outbox.unreleased(node) or self.deliveries.urgent(node))
            for node, link in self.peers.links.items()
        ):
            self.deliveries.retry()
            await asyncio.sleep(0.01)

    # -- the local side --------------------------------------------------------------

    def _stream_ring(self, fname: str) -> None:
        stream = self.outbox.adopt(fname)
        if stream is not None:
            self.peers.wake(stream.node)

    async def _pump(self) -> None:
        """Serve local requests, retry what waits, wake the links that have records to
        send; sleep on the doorbell when there is nothing."""
        ep = self.endpoint
        assert ep is not None
        loop = asyncio.get_running_loop()
        sleeping = self._sleeping

        def rang() -> None:
            # Watched for the pump's whole life (not added and removed around each sleep:
            # two epoll_ctl calls per message on a round trip). The doorbell is level
            # triggered, so it is drained each time it fires, asleep or not.
            ep.read_bell()
            if sleeping and not sleeping[0].done():
                # Asleep, the pump was rung for records in a stream (most often): send
                # them from here, a pass of the event loop before the pump's task runs
                # (a round trip crosses this twice; 301 against 330 us, medians of five
                # interleaved pairs of set-ups). The pump still wakes for the rest.
                self._wake_pending_links()
                sleeping[0].set_result(None)

        loop.add_reader(ep.bell_fd, rang)
        try:
            await self._pump_loop(ep, loop, sleeping)
        finally:
            loop.remove_reader(ep.bell_fd)

    async def _pump_loop(
        self, ep: Endpoint, loop: asyncio.AbstractEventLoop, sleeping: list[asyncio.Future[None]]
    ) -> None:
        taken = self.outbox.taken
        while True:
            batches = ep.poll_batches(256)
            for sender, _receiver, items in batches:
                for meta, body in items:
                    self._local_request(sender, meta, body)
            self._retry()
            up = self._wake_pending_links()
            if batches:
                await asyncio.sleep(0)
                continue
            flowing = self.outbox.taken - taken >= _FLOW
            taken = self.outbox.taken
            if flowing:
                await asyncio.sleep(_LINGER)
                continue
            # Streams whose link is up ring us when written to; the endpoint's own rings
            # likewise. Both flags are set before the endpoint's fence and re-check.
            for node in up:
                self.outbox.set_waiting(node, True)
            try:
                if not ep.prepare_sleep():
                    continue
                # A record written before the flags were seen: its writer takes it while
                # we sleep (the writers wait for acks and sockets, not for us).
                for node in up:
                    if self.outbox.pending(node):
                        self.peers.wake(node)
                woke: asyncio.Future[None] = loop.create_future()
                sleeping.append(woke)
                # Nobody rings us when a full ring drains: while deliveries wait, look
                # again soon (a 1 MiB message through a busy actor's ring waits in ms).
                busy = self.deliveries.waiting() or bool(self._local)
                self._retrying = busy
                timer = loop.call_later(
                    ep.sleep_bound(_RETRY if busy else 0.5), _wake, woke
                )
                try:
                    await woke
                finally:
                    sleeping.clear()
                    timer.cancel()
                    ep.finish_sleep()
            finally:
                for node in up:
                    self.outbox.set_waiting(node, False)

    def _wake_pending_links(self) -> list[str]:
        """Send on every link that is up and has records waiting; returns those up."""
        up = [n for n, link in self.peers.links.items() if link.up]
        for node in up:
            if self.outbox.pending(node):
                self.peers.wake(node)
        return up

    def _retry(self) -> None:
        deliveries = self.deliveries
        if deliveries.retry():
            for node in list(self.peers.links):
                self.peers.ack_soon(node)
        deliveries.send_notices()
        self.outbox.retry_dead_letters()
        if self._local:
            owed, self._local = self._local, []
            for name, meta, body in owed:
                self._to_local(name, meta, body)

    def _local_request(self, sender: str, meta: int, body: Payload) -> None:
        """A system message to the gateway itself, from a local (trusted) runtime."""
        try:
            kind, _origin, _corr, request = codec.decode_fields(meta, body)
        except SerializationError as exc:
            _log.warning("unreadable request from local %r: %s", sender, exc)
            return
        if kind == Kind.SYSTEM and isinstance(request, tuple) and len(request) == 2:
            verb, address = request
            try:
                node, name = parse_address(address, self.node)
            except InvalidAddress:
                return
            link = self.peers.link(node)
            if verb == "watch-remote":
                link.watchers.add((sender, format_address(node, name)))
                if link.unreachable:
                    self._notify_unreachable(link)
                else:
                    self.peers.ensure_connecting(link)
            elif verb == "unwatch-remote":
                link.watchers.discard((sender, format_address(node, name)))
            return
        _log.warning("unexpected message to the gateway from %r: %r", sender, request)

    def _to_local(self, name: str, meta: int, body: bytes) -> bool:
        """Write a notice into the ring to local ``name`` (what does not fit waits)."""
        ep = self.endpoint
        assert ep is not None
        try:
            if ep.offer(GATEWAY, name, body, meta):
                return True
        except (ActorNotFound, InvalidAddress, MailboxClosed) as exc:
            _log.info("a notice for %r is dropped: %s", name, exc)
            return True
        self._local.append((name, meta, body))
        return False

    def _dead_letter(self, stream: OutStream, record: Record, reason: str) -> bool:
        """The notice for a record of ``stream`` that will not be delivered, to its local
        sender, deduplicated by its position (a successor may make it again). True when
        written or when there is nobody to tell."""
        end, header, payload = record
        rtype = record_type(header)
        gateway = format_address(self.node, GATEWAY)
        notice: Notice | None
        if rtype == WHOLE:
            notice = notice_for(header >> 40, payload, reason, here=self.node, gateway=gateway)
        elif rtype == FIRST:
            total = int.from_bytes(payload[:8], "little")
            notice = notice_for(
                header >> 40, payload[8:], reason, here=self.node, gateway=gateway, lost=total
            )
        else:
            notice = lost_notice(stream.origin, self.node, reason, gateway=gateway)
        if notice is None or notice.node != self.node:
            return True
        self.dead_letters += 1
        key = dead_letter_id(stream.node, stream.target, stream.origin, stream.gen)
        ep = self.endpoint
        assert ep is not None
        data = PREFIX.pack(key, end) + notice.body
        try:
            return ep.offer(GATEWAY, notice.name, data, notice.meta | RELAYED)
        except (ActorNotFound, InvalidAddress, MailboxClosed):
            _log.info("a dead letter for %r is dropped: it is gone", notice.name)
            return True

    def _salvaged(self, sender: str, receiver: str, lost: list[tuple[int, bytes]]) -> None:
        self.deliveries.salvaged(receiver, lost)

    def _refused(self, peer: str, kind: str, detail: str) -> None:
        link = self.peers.link(peer)
        link.refused += 1
        if kind not in link.refusals_logged:
            link.refusals_logged.add(kind)
            _log.warning(
                "refusing a message from node %s: %s (logged once per link; counted)",
                peer, detail,
            )  # fmt: skip

    def _notify_unreachable(self, link: Link) -> None:
        for watcher, address in sorted(link.watchers):
            meta, body = codec.encode(("terminated", address, "node unreachable"), kind=Kind.SYSTEM)
            self._to_local(watcher, meta, bytes(body))
        link.watchers.clear()

    # -- what the links ask (the Relay protocol) -------------------------------------

    def on_runs(self, node: str, runs: Sequence[Run]) -> None:
        deliveries = self.deliveries
        for run in runs:
            deliveries.take(node, run)
        deliveries.send_notices()
        if not self._retrying and deliveries.waiting() and self._sleeping:
            # A target ring filled while the pump sleeps its long sleep, and nobody rings
            # when it drains: without this the records waited out that sleep (up to
            # 0.5 s; about one cross-node stream in four stalled so).
            _wake(self._sleeping[0])

    def on_entries(self, node: str, entries: Sequence[StreamAck]) -> bool:
        """Take the other node's acknowledgements; True when records may now go."""
        for entry in entries:
            self.outbox.on_entry(node, entry)
        return self.outbox.pending(node)

    def runs_for(self, node: str, budget: int) -> list[Run]:
        return self.outbox.next_runs(node, budget)

    def acks_for(self, node: str) -> list[StreamAck]:
        return self.deliveries.owed(node)

    def urgent(self, node: str) -> bool:
        return self.deliveries.urgent(node)

    def demand(self, node: str) -> bool:
        return self.outbox.unreleased(node) or self.deliveries.urgent(node)

    def link_up(self, node: str) -> None:
        self.outbox.resume(node)
        self.outbox.rewind(node)

    def link_down(self, node: str) -> None:
        self.deliveries.connection_lost(node)

    def give_up(self, link: Link) -> None:
        """A peer unreachable past the grace: return its messages, tell its watchers."""
        reason = f"node {link.node!r} is unreachable"
        count = self.outbox.give_up(link.node, reason)
        self.deliveries.forget_waiting(link.node)
        _log.warning(
            "node %s unreachable for %ss: %d message(s) returned to their senders",
            link.node,
            self.config.unreachable_grace,
            count,
        )
        self._notify_unreachable(link)

    # -- periodic work -------------------------------------------------------------

    async def _maintain(self) -> None:
        period = min(self.config.heartbeat / 2, 0.25)
        next_publish = 0.0
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self.peers.maintain(now)
            self.outbox.maintain()
            self.outbox.scan()
            if now >= next_publish:
                next_publish = now + counters.PUBLISH_EVERY
                self.publish_counters()

    def link_counters(self) -> counters.ProcessCounters:
        """This gateway's counters: its links, its dead letters (see `counters.py`)."""
        ep = self.endpoint
        assert ep is not None
        outbox, deliveries = self.outbox, self.deliveries
        return counters.ProcessCounters(
            pid=os.getpid(),
            node=self.node,
            core=ringcore.CORE,
            updated=time.time(),
            dead_letters=self.dead_letters,
            duplicates=ep.duplicates,
            links=tuple(
                counters.LinkCounters(
                    node=node,
                    state=_state(link),
                    rtt=link.rtt if link.up else None,
                    resends=outbox.resends.get(node, 0),
                    resent_bytes=outbox.resent_bytes.get(node, 0),
                    duplicates=deliveries.duplicates.get(node, 0),
                    frames_refused=link.frames_refused,
                    refused=link.refused,
                    reconnects=link.reconnects,
                    delivered=deliveries.delivered_from.get(node, 0),
                )
                for node, link in sorted(self.peers.links.items())
            ),
        )

    def publish_counters(self) -> None:
        ep = self.endpoint
        assert ep is not None
        try:
            counters.write(ep.registry.stats_path(ep.bell_path), self.link_counters())
        except OSError as exc:
            self._short_counters.failed(exc)
        else:
            self._short_counters.ok()


def _state(link: Link) -> str:
    if link.up:
        return "up"
    if link.unreachable:
        return "unreachable"
    return "connecting" if link.connecting is not None else "down"


def main(argv: Sequence[str] | None = None) -> None:
    """The ``mybus-gateway`` console script."""
    config = build_config(argv)
    keep_freed_memory()  # a gateway relaying 1 MiB frames spent a third of its CPU faulting

    async def serve() -> None:
        gateway = Gateway(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gateway.stop)
        await gateway.run()

    try:
        asyncio.run(serve())
    except NameTaken as exc:
        sys.exit(f"mybus-gateway: a gateway already runs on node {config.node!r}: {exc}")
    except OSError as exc:
        sys.exit(f"mybus-gateway: cannot listen on {config.listen[0]}:{config.listen[1]}: {exc}")
    except MyBusError as exc:
        sys.exit(f"mybus-gateway: {exc}")
    sys.exit(0)


if __name__ == "__main__":
    # `python -m mybus_actors.gateway`: run the module under its own name, so that its
    # loggers are `mybus_actors.gateway`, not `__main__`.
    from mybus_actors.gateway import main as _main

    _main()
