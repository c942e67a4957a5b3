"""`mybus-gateway`: relays actor messages between nodes over TCP (optionally TLS).

One gateway per node registers as the actor ``gateway``. Local actors hand it records
for other nodes through their ordinary rings (`routing.send_to_node`); it relays them
over one authenticated link per pair of gateways, and the peer gateway writes them into
its rings to the target, the sender's address kept so replies find their way back.

This module is the shell: it moves bytes between sockets, rings and the pure cores
(`wire.Connection` for the protocol, `link.Outbox`/`link.Inbox` for numbering, resends
and fragments, `timers.ActivityTable` for the route table). It never unpickles what it
relays: local senders hand it ready wire items (`routing.send_to_node`), and to bounce
an undeliverable message it reads only the envelope header (`codec.peek`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import ssl
import sys
import time
import tomllib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from mybus_actors import codec, wire
from mybus_actors.address import format_address, parse_address
from mybus_actors.asks import error_reply
from mybus_actors.codec import Kind
from mybus_actors.errors import (
    ActorNotFound,
    InvalidAddress,
    LocalProtocolError,
    MyBusError,
    NameTaken,
    RemoteProtocolError,
    ResourceExhausted,
    RingCorrupted,
    SerializationError,
)
from mybus_actors.link import Inbox, Message, Outbox
from mybus_actors.mailbox import Endpoint
from mybus_actors.pressure import OnceLog
from mybus_actors.registry import Registry, default_node, resolve_runtime_dir, validate_name
from mybus_actors.routing import FORWARD, GATEWAY, parse_forward
from mybus_actors.timers import ActivityTable

__all__ = ["DEFAULT_PORT", "Gateway", "GatewayConfig", "main"]

_log = logging.getLogger("mybus_actors.gateway")

DEFAULT_PORT: Final = 4096
_READ_SIZE: Final = 256 << 10
_HANDSHAKE_TIMEOUT: Final = 5.0
_CONNECT_TIMEOUT: Final = 5.0
_MAX_BACKOFF: Final = 2.0
# Bytes written ahead of the socket: what a small message queued now waits behind. Kept
# small so that a large message's chunks cannot hold small ones back for long.
_WRITE_HIGH_WATER: Final = 128 << 10
_SOCKET_BUFFER: Final = 256 << 10
_UNACKED_LIMIT: Final = 64 << 20  # stop framing for a link past this many unacked bytes
_QUEUED_LIMIT: Final = 256 << 20  # stop draining local rings past this many queued bytes
_FLUSH_ON_STOP: Final = 2.0
_STALL_RETRY: Final = 0.001  # seconds between tries to deliver into a full ring
_ACK_EVERY: Final = 32  # DATA frames received before an ack goes out on its own
_ACK_DELAY: Final = 0.005  # or this long after the first of them, whichever comes first


@attrs.frozen
class GatewayConfig:
    """Everything a gateway needs; `main` builds it from the command line."""

    node: str
    runtime_dir: Path
    secret: bytes
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    peers: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    route_idle: float = 60.0
    max_links: int = 64
    heartbeat: float = 1.0
    unreachable_grace: float = 10.0
    channel_idle: float = 30.0


class _Conn:
    """One TCP connection to a peer gateway, authenticated or not yet."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        proto: wire.Connection,
        initiator: str,
        label: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.proto = proto
        self.initiator = initiator  # the node that opened it: decides duplicate links
        self.label = label
        self.last_rx = time.monotonic()
        self.last_tx = time.monotonic()
        self.closed = False

    def send(self, data: bytes) -> None:
        if data and not self.closed:
            self.writer.write(data)
            self.last_tx = time.monotonic()

    def close(self, reason: str | None = None) -> None:
        if self.closed:
            return
        if reason is not None:
            with contextlib.suppress(LocalProtocolError, OSError, RuntimeError):
                self.writer.write(self.proto.send_bye(reason))
        self.closed = True
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.close()


class _Link:
    """Everything about one peer node; outlives its connections."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.outbox = Outbox()
        self.inbox = Inbox()
        self.peer_incarnation: int | None = None
        self.conn: _Conn | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.ack_due: int | None = None  # the last DATA seq received, not yet acked
        self.ack_now = False  # ack without waiting for data to carry it along
        self.ack_frames = 0  # DATA frames received since our last ack
        self.ack_timer: asyncio.TimerHandle | None = None
        self.down_since: float | None = None
        self.unreachable = False
        self.watchers: set[tuple[str, str]] = set()  # (local watcher name, remote address)

    def demand(self) -> bool:
        """Something needs this link up: traffic to send or acknowledge, or a watch."""
        return bool(self.outbox.pending() or self.outbox.unacked or self.watchers)


class Gateway:
    """A node's gateway: the ``gateway`` actor on its rings and a TCP server for peers."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.node = config.node
        self.incarnation = random.getrandbits(63) + 1
        self._links: dict[str, _Link] = {}
        self._routes: ActivityTable[str, _Link] = ActivityTable(
            idle=config.route_idle, capacity=config.max_links, now=time.monotonic()
        )
        self._stalled: dict[str, deque[list[Any]]] = {}  # [meta, payload, sent] per actor
        self._stopping = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.endpoint: Endpoint | None = None
        self.bound_port: int | None = None
        self.bounced = 0
        self._paused = False
        # Out of descriptors: deliveries wait and accepts pause; one line per episode.
        self._short_deliver = OnceLog(_log, "delivering to local actors")
        self._short_accept = OnceLog(_log, "accepting connections")

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until `stop`: register, listen, relay; then flush and unregister."""
        registry = Registry(self.config.runtime_dir)
        self.endpoint = Endpoint(registry, channel_idle=self.config.channel_idle, spin=0.0)
        _quiet_refused_accepts(asyncio.get_running_loop(), self._short_accept)
        try:
            self.endpoint.bind(GATEWAY)
            host, port = self.config.listen
            # TLS is started per connection in _accept, so a failed handshake is ours to log.
            self._server = await asyncio.start_server(
                self._accept, host, port, reuse_address=True
            )
            self.bound_port = self._server.sockets[0].getsockname()[1]
            _log.info(
                "gateway of node %s listening on %s:%d%s",
                self.node,
                host,
                self.bound_port,
                " (TLS)" if self.config.server_ssl else "",
            )
            tasks = [
                asyncio.create_task(self._pump_local(), name="pump"),
                asyncio.create_task(self._maintain(), name="maintain"),
            ]
            if ready is not None:
                ready.set()
            await self._stopping.wait()
            self._server.close()
            await self._flush_links()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for link in self._links.values():
                for pending in (link.connecting, link.writer_task):
                    if pending is not None:
                        pending.cancel()
                if link.conn is not None:
                    link.conn.close("gateway stopping")
            self.endpoint.close()
            _log.info("gateway of node %s stopped", self.node)

    def stop(self) -> None:
        self._stopping.set()

    async def _flush_links(self) -> None:
        """Give connected links a moment to send what is queued and hear it acked."""
        deadline = time.monotonic() + _FLUSH_ON_STOP
        while time.monotonic() < deadline and any(
            link.conn is not None and (link.outbox.pending() or link.outbox.unacked)
            for link in self._links.values()
        ):
            await asyncio.sleep(0.01)

    # -- from local actors ---------------------------------------------------------

    async def _pump_local(self) -> None:
        """Drain the rings to ``gateway``; sleep on the doorbell when there is nothing."""
        ep = self.endpoint
        assert ep is not None
        loop = asyncio.get_running_loop()
        while True:
            batches = ep.poll_batches(256)
            if batches:
                for sender, _receiver, items in batches:
                    for meta, body in items:
                        self._from_local(sender, meta, body)
                self._retry_stalled()
                self._apply_backpressure()
                await asyncio.sleep(0)
                continue
            self._retry_stalled()
            # No spin here: on two cores a gateway polling an empty mailbox steals the CPU
            # from the very processes it waits for (measured: slower asks, no faster
            # streams); a doorbell write is cheap now that it is a FIFO byte.
            if not ep.prepare_sleep():
                continue
            woke = loop.create_future()

            def wake(fut: asyncio.Future[None] = woke) -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(ep.bell_fd, wake)
            # Nobody rings us when a full ring drains: while deliveries wait, look again
            # soon (a 1 MiB message through a busy actor's ring waits in ms, not 50 ms).
            timer = loop.call_later(ep.sleep_bound(_STALL_RETRY if self._stalled else 0.5), wake)
            try:
                await woke
            finally:
                timer.cancel()
                loop.remove_reader(ep.bell_fd)
                ep.finish_sleep()

    def _from_local(self, sender: str, meta: int, body: bytes) -> None:
        if meta != FORWARD:
            self._local_request(sender, meta, body)
            return
        try:
            node, item = parse_forward(body)
            link = self._links.get(node)
            if link is not None and not link.unreachable and len(item) <= link.outbox.large:
                # The common case, relayed as it came: no parsing, no re-encoding.
                link.outbox.put_encoded(bytes(item))
                link.wake.set()
                if link.conn is None:
                    self._ensure_connecting(link)
                return
            whole = wire.decode_item(item)
            validate_name(node)
            if not isinstance(whole, wire.Whole):  # routing.send_to_node writes only those
                raise SerializationError(f"a {type(whole).__name__} item, not a WHOLE one")
        except (SerializationError, RemoteProtocolError, InvalidAddress) as exc:
            _log.warning("dropping a malformed record from local %r: %s", sender, exc)
            return
        self._route(node, Message(whole.to, whole.meta, whole.payload))

    def _route(self, node: str, msg: Message) -> None:
        if node == self.node:
            self._deliver_local(msg)
            return
        link = self._link(node)
        if link.unreachable:
            self._bounce(msg, f"node {node!r} is unreachable")
            self._ensure_connecting(link)
            return
        link.outbox.put(msg.to, msg.meta, msg.payload)
        link.wake.set()
        self._ensure_connecting(link)

    def _local_request(self, sender: str, meta: int, body: bytes) -> None:
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
            link = self._link(node)
            if verb == "watch-remote":
                link.watchers.add((sender, format_address(node, name)))
                if link.unreachable:
                    self._notify_unreachable(link)
                else:
                    self._ensure_connecting(link)
            elif verb == "unwatch-remote":
                link.watchers.discard((sender, format_address(node, name)))
            return
        _log.warning("unexpected message to the gateway from %r: %r", sender, request)

    def _apply_backpressure(self) -> None:
        """Stop draining local rings while the links hold too much (senders then wait)."""
        ep = self.endpoint
        assert ep is not None
        queued = sum(
            link.outbox.queued_bytes + link.outbox.unacked_bytes for link in self._links.values()
        )
        if not self._paused and queued > _QUEUED_LIMIT:
            self._paused = True
            ep.pause(GATEWAY)
        elif self._paused and queued < _QUEUED_LIMIT // 2:
            self._paused = False
            ep.resume(GATEWAY)

    # -- to local actors -----------------------------------------------------------

    def _deliver_local(self, msg: Message) -> None:
        """Write into the ring to ``msg.to``, keeping order behind anything stalled."""
        queue = self._stalled.get(msg.to)
        entry = [msg.meta, msg.payload, 0]
        if queue is not None:
            queue.append(entry)
        elif not self._try_deliver(msg.to, entry):
            self._stalled[msg.to] = deque([entry])

    def _try_deliver(self, to: str, entry: list[Any]) -> bool:
        """Write what fits now, never waiting (this is the event loop); True when done.

        ``entry`` is [meta, payload, bytes sent]: a large message to a busy receiver goes
        in as many calls as its ring needs, while other traffic keeps flowing.
        """
        ep = self.endpoint
        assert ep is not None
        meta, payload, sent = entry
        try:
            written = ep.send_some(GATEWAY, to, payload, meta, sent)
        except (ActorNotFound, InvalidAddress) as exc:
            self._bounce(Message(to, meta, payload), f"no actor {to!r} on node {self.node!r}")
            _log.debug("bounced a message for %s: %s", to, exc)
            return True
        except (ResourceExhausted, RingCorrupted) as exc:
            # Out of descriptors is not "no such actor": the delivery waits in order
            # with the stalled ones and is retried (every ms) until it goes through.
            self._short_deliver.failed(exc)
            return False
        self._short_deliver.ok()
        if written < 0:  # a short message and no room yet
            return False
        entry[2] = written
        return bool(written == len(payload))

    def _retry_stalled(self) -> None:
        for to in list(self._stalled):
            queue = self._stalled[to]
            while queue and self._try_deliver(to, queue[0]):
                queue.popleft()
            if not queue:
                del self._stalled[to]

    def _bounce(self, msg: Message, reason: str) -> None:
        """Tell the sender its message could not be delivered (never a silent drop)."""
        self.bounced += 1
        try:
            kind, origin, corr = codec.peek(msg.meta, msg.payload)
        except SerializationError:
            origin = None
            kind = corr = 0
        if origin is None:
            _log.warning("undeliverable message for %s with no sender: %s", msg.to, reason)
            return
        here = format_address(self.node, msg.to)
        if kind == Kind.ASK:
            meta, body = codec.encode(
                error_reply(ActorNotFound(reason)),
                kind=Kind.ERROR_REPLY,
                sender=here,
                correlation_id=corr,
            )
        elif kind == Kind.USER:
            meta, body = codec.encode(
                ("dead-raw", msg.meta, bytes(msg.payload), reason), kind=Kind.SYSTEM, sender=here
            )
        else:
            _log.warning("undeliverable %s from %s: %s", Kind(kind).name, origin, reason)
            return
        try:
            node, name = parse_address(origin, self.node)
        except InvalidAddress:
            return
        if node == self.node:
            self._deliver_local(Message(name, meta, bytes(body)))
        else:
            link = self._link(node)
            if link.unreachable:
                _log.warning("dropping a bounce for %s: its node is unreachable too", origin)
                return
            link.outbox.put(name, meta, bytes(body))
            link.wake.set()
            self._ensure_connecting(link)

    # -- links ---------------------------------------------------------------------

    def _link(self, node: str) -> _Link:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(node)
        return link

    def _address_of(self, node: str) -> tuple[str, int]:
        # A peer named nowhere is looked up as a DNS name at the default port.
        return self.config.peers.get(node, (node, DEFAULT_PORT))

    def _ensure_connecting(self, link: _Link) -> None:
        if link.conn is None and link.connecting is None and not self._stopping.is_set():
            link.connecting = asyncio.create_task(self._connect_loop(link))

    async def _connect_loop(self, link: _Link) -> None:
        delay = 0.02
        try:
            while link.conn is None and link.demand() and not self._stopping.is_set():
                host, port = self._address_of(link.node)
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            host,
                            port,
                            ssl=self.config.client_ssl,
                            server_hostname=host if self.config.client_ssl else None,
                        ),
                        _CONNECT_TIMEOUT,
                    )
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    if link.down_since is None:
                        link.down_since = time.monotonic()
                        _log.warning(
                            "link to %s: cannot connect to %s:%d: %s", link.node, host, port, exc
                        )
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, _MAX_BACKOFF)
                    continue
                _set_nodelay(writer)
                task = asyncio.create_task(
                    self._serve(reader, writer, initiator=self.node, expect=link.node)
                )
                # Wait for the handshake's outcome, not the connection's whole life.
                while link.conn is None and not task.done():
                    await asyncio.sleep(0.005)
                if link.conn is None:
                    if link.down_since is None:
                        link.down_since = time.monotonic()
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, _MAX_BACKOFF)
        finally:
            link.connecting = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._short_accept.ok()
        _set_nodelay(writer)
        # The server's own task: cancelled at shutdown, which is not worth a traceback.
        with contextlib.suppress(asyncio.CancelledError):
            if self.config.server_ssl is not None:
                try:
                    # Awaited directly, not through asyncio.wait_for: on Python 3.11 that
                    # runs it in a new task, and a ClientHello that arrives meanwhile is
                    # read into the plain stream and lost (the handshake then times out).
                    await writer.start_tls(
                        self.config.server_ssl, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT
                    )
                except (ssl.SSLError, OSError, TimeoutError) as exc:
                    peer = writer.get_extra_info("peername")
                    _log.warning("rejected peer %s: TLS handshake failed: %s", peer, exc)
                    writer.close()
                    return
            await self._serve(reader, writer, initiator="", expect=None)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        initiator: str,
        expect: str | None,
    ) -> None:
        """Run one connection: handshake, then frames until it ends."""
        peername = writer.get_extra_info("peername")
        label = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        proto = wire.Connection(
            node=self.node,
            secret=self.config.secret,
            incarnation=self.incarnation,
            expect_peer=expect,
        )
        conn = _Conn(reader, writer, proto, initiator, label)
        link: _Link | None = None
        reason = "connection closed"
        try:
            conn.send(proto.hello())
            link = await asyncio.wait_for(self._handshake(conn), _HANDSHAKE_TIMEOUT)
            if link is None:
                return
            await self._read_frames(conn, link)
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            if link is None:
                _log.warning("rejected peer %s: %s", label, exc)
            conn.close()
        except TimeoutError:
            reason = "handshake timed out"
            if link is None:
                _log.warning("rejected peer %s: no handshake within %ss", label, _HANDSHAKE_TIMEOUT)
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            reason = f"connection error: {exc}"
            if link is None:
                _log.warning("rejected peer %s: %s", label, exc)
        finally:
            conn.close()
            if link is not None and link.conn is conn:
                self._link_down(link, reason)

    async def _handshake(self, conn: _Conn) -> _Link | None:
        proto = conn.proto
        while True:
            event = proto.next_event()
            if event is wire.NEED_DATA:
                data = await conn.reader.read(_READ_SIZE)
                proto.receive_data(data)
                continue
            conn.send(proto.data_to_send())
            if isinstance(event, wire.Authenticated):
                if not conn.initiator:
                    conn.initiator = event.peer_node
                return self._link_up(conn, event)
            if isinstance(event, wire.ConnectionClosed):
                return None

    def _link_up(self, conn: _Conn, auth: wire.Authenticated) -> _Link | None:
        link = self._link(auth.peer_node)
        old = link.conn
        if old is not None and not old.closed:
            # Both sides dialled at once: keep the connection the smaller node opened.
            keep_new = conn.initiator == min(self.node, link.node)
            if not keep_new and old.initiator == conn.initiator:
                keep_new = True  # a reconnect from the same side: the newer one wins
            if not keep_new:
                conn.close("duplicate link")
                return None
            old.close("replaced by a newer connection")
            if link.writer_task is not None:
                link.writer_task.cancel()
        if link.peer_incarnation != auth.peer_incarnation:
            if link.peer_incarnation is not None:
                _log.info("node %s restarted: its link numbering starts over", link.node)
            link.inbox.reset()
            link.peer_incarnation = auth.peer_incarnation
        link.conn = conn
        link.down_since = None
        link.unreachable = False
        link.wake.set()
        evicted = self._routes.put(link.node, link, time.monotonic())
        for _node, other in evicted:
            if other.conn is not None:
                _log.info("link to %s closed: least active beyond --max-links", other.node)
                other.conn.close("max links")
        link.writer_task = asyncio.create_task(self._write_frames(conn, link))
        side = "dialled" if conn.initiator == self.node else "accepted"
        _log.info("link up: %s (%s, %s)", link.node, side, conn.label)
        return link

    def _touch(self, link: _Link) -> None:
        """Traffic on the link (not heartbeats): it is active, so it stays open."""
        if link.node in self._routes:
            self._routes.touch(link.node, time.monotonic())

    def _link_down(self, link: _Link, reason: str) -> None:
        link.conn = None
        if link.writer_task is not None:
            link.writer_task.cancel()
            link.writer_task = None
        with contextlib.suppress(KeyError):
            self._routes.pop(link.node)
        _log.info("link down: %s (%s)", link.node, reason)
        if link.demand() and not self._stopping.is_set():
            link.down_since = time.monotonic()
            self._ensure_connecting(link)

    async def _read_frames(self, conn: _Conn, link: _Link) -> None:
        proto = conn.proto
        while not conn.closed:
            event = proto.next_event()
            if event is wire.NEED_DATA:
                data = await conn.reader.read(_READ_SIZE)
                conn.last_rx = time.monotonic()
                proto.receive_data(data)
                continue
            if isinstance(event, wire.Data):
                self._touch(link)
                for msg in link.inbox.accept(event.seq, event.items) or ():
                    self._deliver_local(msg)
                self._ack_later(link, event.seq)
            elif isinstance(event, wire.Ack):
                link.outbox.ack(event.seq)
                link.wake.set()
            elif isinstance(event, wire.Ping):
                conn.send(proto.send_pong(event.token))
            elif isinstance(event, wire.Bye):
                _log.info("link to %s: peer said goodbye (%s)", link.node, event.reason)
            elif isinstance(event, wire.ConnectionClosed):
                return

    def _ack_later(self, link: _Link, seq: int) -> None:
        """Acks are cumulative: send one per burst, not per frame. Each ack is a write and
        a wake-up of the peer's loop; data we send anyway carries one along for free."""
        link.ack_due = seq
        link.ack_frames += 1
        if link.ack_frames >= _ACK_EVERY:
            link.ack_now = True
            link.wake.set()
        elif link.ack_timer is None:
            link.ack_timer = asyncio.get_running_loop().call_later(
                _ACK_DELAY, self._ack_due_now, link
            )

    @staticmethod
    def _ack_due_now(link: _Link) -> None:
        link.ack_timer = None
        link.ack_now = True
        link.wake.set()

    @staticmethod
    def _send_ack(conn: _Conn, link: _Link) -> None:
        if link.ack_due is None:
            return
        conn.send(conn.proto.send_ack(link.ack_due))
        link.ack_due = None
        link.ack_now = False
        link.ack_frames = 0
        if link.ack_timer is not None:
            link.ack_timer.cancel()
            link.ack_timer = None

    async def _write_frames(self, conn: _Conn, link: _Link) -> None:
        """Replay what is unacked, then send frames and acks as they come."""
        proto = conn.proto
        try:
            for old in link.outbox.resend():
                conn.send(proto.send_encoded(old.seq, len(old.items), old.items))
            while not conn.closed:
                link.wake.clear()
                sent_data = False
                while link.outbox.unacked_bytes < _UNACKED_LIMIT:
                    frame = link.outbox.next_frame()
                    if frame is None:
                        break
                    conn.send(proto.send_encoded(frame.seq, len(frame.items), frame.items))
                    sent_data = True
                    self._touch(link)
                    if conn.writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                        self._send_ack(conn, link)
                        await conn.writer.drain()
                if link.ack_now or sent_data:
                    self._send_ack(conn, link)
                await conn.writer.drain()
                if not (link.ack_now or link.outbox.pending()) or (
                    link.outbox.unacked_bytes >= _UNACKED_LIMIT and not link.ack_now
                ):
                    await link.wake.wait()
        except (ConnectionError, OSError, LocalProtocolError, RuntimeError) as exc:
            conn.close()
            _log.debug("writer for %s ended: %s", link.node, exc)

    # -- periodic work -------------------------------------------------------------

    async def _maintain(self) -> None:
        period = min(self.config.heartbeat / 2, 0.25)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self._heartbeats(now)
            for _node, link in self._routes.expire(now):
                if link.conn is not None and not link.demand():
                    _log.info("link to %s closed: idle for %ss", link.node, self.config.route_idle)
                    link.conn.close("idle")
                else:
                    self._routes.put(link.node, link, now)
            grace = self.config.unreachable_grace
            for link in self._links.values():
                down = link.down_since
                idle_since = now - down if down is not None else 0.0
                if link.conn is None and not link.unreachable and idle_since >= grace > 0:
                    self._give_up(link)

    def _heartbeats(self, now: float) -> None:
        beat = self.config.heartbeat
        for link in self._links.values():
            conn = link.conn
            if conn is None or conn.closed:
                continue
            if now - conn.last_rx > 3 * beat:
                _log.warning(
                    "link to %s: no word for %.1fs, closing", link.node, now - conn.last_rx
                )
                conn.close()
                self._link_down(link, "heartbeat lost")
            elif now - conn.last_tx > beat:
                with contextlib.suppress(LocalProtocolError):
                    conn.send(conn.proto.send_ping(int(now * 1000)))

    def _give_up(self, link: _Link) -> None:
        """A peer unreachable past the grace: bounce its queue, tell its watchers."""
        link.unreachable = True
        lost = link.outbox.give_up()
        _log.warning(
            "node %s unreachable for %ss: %d message(s) returned to their senders",
            link.node,
            self.config.unreachable_grace,
            len(lost),
        )
        for msg in lost:
            self._bounce(msg, f"node {link.node!r} is unreachable")
        self._notify_unreachable(link)

    def _notify_unreachable(self, link: _Link) -> None:
        for watcher, address in sorted(link.watchers):
            meta, body = codec.encode(("terminated", address, "node unreachable"), kind=Kind.SYSTEM)
            self._deliver_local(Message(watcher, meta, bytes(body)))
        link.watchers.clear()


def _quiet_refused_accepts(loop: asyncio.AbstractEventLoop, short: OnceLog) -> None:
    """Out of descriptors, asyncio's server stops accepting for a second and retries (its
    own back-off), logging a traceback each time: make that one line per episode."""
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            short.failed(exc)
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The kernel's send buffer is a queue small messages wait in, too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)


# -- the command ----------------------------------------------------------------------


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def _peer(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, where = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--peer must be NODE=HOST:PORT, got {text!r}")
    try:
        validate_name(name)
    except InvalidAddress as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return name, _host_port(where, f"--peer {name}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mybus-gateway",
        description="Relay mybus_actors messages between this node and other nodes over TCP.",
        epilog="The shared secret comes from --secret-file or the MYBUS_SECRET environment "
        "variable, and must be the same on every gateway. SIGTERM or Ctrl-C stops "
        "accepting, flushes what can be flushed, unregisters and exits 0.",
    )
    p.add_argument("--node", help="this node's name (default: MYBUS_NODE, else the host name)")
    p.add_argument(
        "--listen",
        type=lambda t: _host_port(t, "--listen"),
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"where peers connect (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--peer",
        type=_peer,
        action="append",
        default=[],
        metavar="NODE=HOST:PORT",
        help="a peer gateway's address (repeatable); a node named nowhere is looked up "
        f"as a DNS name at port {DEFAULT_PORT}",
    )
    p.add_argument("--peers-file", type=Path, help='a TOML file: [peers] NODE = "HOST:PORT"')
    p.add_argument(
        "--runtime-dir", help="default: MYBUS_RUNTIME_DIR, else /dev/shm/mybus-<uid>/<node>"
    )
    p.add_argument("--secret-file", type=Path, help="a file holding the shared secret")
    p.add_argument("--tls-cert", type=Path, help="this gateway's certificate (PEM) for TLS")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument(
        "--tls-ca", type=Path, help="CA bundle to verify peers; given, certificates are mutual"
    )
    p.add_argument(
        "--route-idle", type=float, default=60.0, metavar="SECONDS",
        help="close a link idle this long; it reopens on the next message (default 60)",
    )  # fmt: skip
    p.add_argument(
        "--max-links", type=int, default=64,
        help="open links at most; beyond it the least active closes first (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--heartbeat", type=float, default=1.0, metavar="SECONDS",
        help="PING an idle link this often; 3 silent periods close it (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--unreachable-grace", type=float, default=10.0, metavar="SECONDS",
        help="after this long unreachable, a node's queued messages go back to their "
        "senders and its watchers get Terminated(reason='node unreachable') (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--channel-idle", type=float, default=30.0, metavar="SECONDS",
        help="close the gateway's rings to local actors idle this long (default 30)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="default info: a line per link up/down and per rejected peer",
    )  # fmt: skip
    return p


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_file is not None:
        return args.secret_file.read_bytes().strip() or None
    env = os.environ.get("MYBUS_SECRET", "")
    return env.encode() if env else None


def _tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    if args.tls_cert is None and args.tls_key is None and args.tls_ca is None:
        return None, None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("mybus-gateway: TLS needs both --tls-cert and --tls-key")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(args.tls_cert, args.tls_key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(args.tls_cert, args.tls_key)
    # Peers are dialled by address; who they are is proven by the certificate chain and
    # by the shared secret's handshake, not by a host name.
    client.check_hostname = False
    if args.tls_ca is not None:
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(args.tls_ca)
        client.load_verify_locations(args.tls_ca)
    else:
        client.load_default_certs()
    return server, client


def build_config(argv: Sequence[str] | None = None) -> GatewayConfig:
    """Parse the command line into a config; exit with a message on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s mybus-gateway %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    secret = _secret(args)
    if not secret:
        parser.exit(
            2,
            "mybus-gateway: no shared secret. Set MYBUS_SECRET or pass --secret-file FILE;"
            " every gateway must use the same secret.\n",
        )
    try:
        node = validate_name(args.node) if args.node else default_node()
    except InvalidAddress as exc:
        parser.exit(2, f"mybus-gateway: {exc}\n")
    peers: dict[str, tuple[str, int]] = {}
    if args.peers_file is not None:
        table = tomllib.loads(args.peers_file.read_text()).get("peers", {})
        for name, where in table.items():
            peers[_peer(f"{name}={where}")[0]] = _host_port(str(where), f"peer {name}")
    peers.update(dict(args.peer))
    server_ssl, client_ssl = _tls(args)
    return GatewayConfig(
        node=node,
        runtime_dir=resolve_runtime_dir(args.runtime_dir, node),
        secret=secret,
        listen=args.listen,
        peers=peers,
        server_ssl=server_ssl,
        client_ssl=client_ssl,
        route_idle=args.route_idle,
        max_links=args.max_links,
        heartbeat=args.heartbeat,
        unreachable_grace=args.unreachable_grace,
        channel_idle=args.channel_idle,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The ``mybus-gateway`` console script."""
    config = build_config(argv)

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
    main()
