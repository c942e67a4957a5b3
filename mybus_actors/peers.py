"""A gateway's links to its peers: TCP connections, handshakes, frames, heartbeats.

One `Link` per peer node outlives its connections. Either side may dial; when both do
at once, the connection the smaller node name opened stays. A connection runs the
`wire` protocol: once authenticated (and, over TLS, once its certificate names the
node), its reader hands DATA and ACK frames to the relay and its writer takes runs and
acknowledgements from it. A refused frame (a bad MAC, a replay, a protocol error)
closes that connection with one line naming the peer's address and the reason; the link
dials again and the relay sends again what was not acknowledged.

Links live in an activity table: idle ones close (``--route-idle``) and past
``--max-links`` the least active goes first. A link that stays down past
``--unreachable-grace`` is given up: the relay returns what waits for it to its senders.
Knows sockets, asyncio and the protocol; not rings or actors (that is the `Relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol, SupportsIndex, cast

from mybus_actors import wire
from mybus_actors.errors import LocalProtocolError, RemoteProtocolError
from mybus_actors.gateway_config import DEFAULT_PORT, GatewayConfig, certificate_names
from mybus_actors.items import Run, StreamAck
from mybus_actors.pressure import OnceLog
from mybus_actors.timers import ActivityTable

__all__ = ["Link", "Peers", "Relay", "quiet_refused_accepts"]

_log = logging.getLogger(__name__)

_READ_SIZE: Final = 256 << 10
_HANDSHAKE_TIMEOUT: Final = 5.0
_CONNECT_TIMEOUT: Final = 5.0
_MAX_BACKOFF: Final = 2.0
_FRAME_BYTES: Final = 256 << 10  # payload bytes per DATA frame
# Bytes written ahead of the socket: what a small message queued now waits behind. Kept
# small so that a large message's fragments cannot hold small ones back for long.
_WRITE_HIGH_WATER: Final = 256 << 10
_SOCKET_BUFFER: Final = 256 << 10
# Acknowledge at most this long after delivering (sooner when much was delivered, see
# `Relay.urgent`): a sparse exchange (asks) then carries one DONE per many messages, and
# each DONE costs both gateways a frame, a write and a wake-up.
_ACK_DELAY: Final = 0.02


class Relay(Protocol):
    """What the links need from the ring side of the gateway."""

    def on_runs(self, node: str, runs: Sequence[Run]) -> None: ...
    def on_entries(self, node: str, entries: Sequence[StreamAck]) -> bool: ...
    def runs_for(self, node: str, budget: int) -> list[Run]: ...
    def acks_for(self, node: str) -> list[StreamAck]: ...
    def urgent(self, node: str) -> bool: ...
    def demand(self, node: str) -> bool: ...
    def link_up(self, node: str) -> None: ...
    def link_down(self, node: str) -> None: ...
    def give_up(self, link: Link) -> None: ...


class _Ended(Exception):
    """The connection's frames ended (the peer closed it cleanly, or we did)."""


class _FramesReader(asyncio.StreamReader):
    """A stream reader that, once given a handler (`deliver_to`), hands each chunk of
    bytes to it in the transport's callback as they are read, instead of buffering them
    for a task's `read` (and waking it, a pass of the event loop later). What the
    handler raises is set as the stream's exception: the reading task's `read` raises
    it, as if it had read and handled the bytes itself; the stream's end reaches the
    task as before."""

    _handler: Callable[[bytes], None] | None = None

    def deliver_to(self, handler: Callable[[bytes], None]) -> bytes:
        """From now on hand arriving bytes to ``handler``; returns what was buffered."""
        # CPython's StreamReader keeps unread bytes in `_buffer` and pauses the transport
        # past twice its limit, resuming in `read` (unchanged since Python 3.7): take
        # them, and resume, since no `read` will take the buffer down again.
        buffer: bytearray = self._buffer  # type: ignore[attr-defined]
        early = bytes(buffer)
        buffer.clear()
        self._handler = handler
        self._maybe_resume_transport()  # type: ignore[attr-defined]
        return early

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        handler = self._handler
        if handler is None:
            super().feed_data(data)
            return
        try:
            handler(cast(bytes, data))  # the transport's bytes, as it read them
        except Exception as exc:
            self._handler = None  # nothing more is handled: the task ends with exc
            self.set_exception(exc)


async def _open_connection(
    host: str, port: int, **kwds: Any
) -> tuple[_FramesReader, asyncio.StreamWriter]:
    """`asyncio.open_connection`, with a `_FramesReader`."""
    loop = asyncio.get_running_loop()
    reader = _FramesReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kwds)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


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

    def send_all(self, frames: list[bytes]) -> None:
        """Several frames in one write (one system call for a burst of small ones); a
        large frame is written as it is, never copied into a join."""
        if not frames or self.closed:
            return
        write = self.writer.write
        if len(frames) == 1:
            write(frames[0])
        else:
            small: list[bytes] = []
            for frame in frames:
                if len(frame) < wire.BIG_FRAME:
                    small.append(frame)
                    continue
                if small:
                    write(b"".join(small))
                    small = []
                write(frame)
            if small:
                write(b"".join(small))
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


class Link:
    """Everything about one peer node; outlives its connections."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.peer_incarnation: int | None = None
        self.conn: _Conn | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.ack_timer: asyncio.TimerHandle | None = None
        self.ack_now = False  # acknowledgements go without data to carry them
        self.sending = False  # frames are being made and written (`Peers._send_now`)
        self.down_since: float | None = None
        self.unreachable = False
        self.watchers: set[tuple[str, str]] = set()  # (local watcher name, remote address)
        self.refused = 0  # messages refused (a foreign sender, a reserved target)
        self.refusals_logged: set[str] = set()  # kinds of refusal already logged
        self.frames_refused = 0  # connections closed on a bad frame
        self.reconnects = 0
        # Round-trip time: a PING goes every heartbeat while the link is up, busy or not
        # (`mybus top`, metrics); its token is when it went, in microseconds.
        self.rtt: float | None = None
        self.ping_token = 0

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.closed


class Peers:
    """The links of one gateway, and its TCP server."""

    def __init__(
        self, config: GatewayConfig, incarnation: int, relay: Relay, stopping: asyncio.Event
    ) -> None:
        self.config = config
        self.node = config.node
        self.incarnation = incarnation
        self.relay = relay
        self._stopping = stopping
        self.links: dict[str, Link] = {}
        self._routes: ActivityTable[str, Link] = ActivityTable(
            idle=config.route_idle, capacity=config.max_links, now=time.monotonic()
        )
        self._server: asyncio.Server | None = None
        self.bound_port: int | None = None
        self.short_accept = OnceLog(_log, "accepting connections")

    # -- the server ----------------------------------------------------------------

    async def listen(self) -> None:
        """Listen; with TLS, each connection starts TLS in `_accept`, so that a failed
        handshake is ours to log (asyncio's own TLS server drops it silently)."""
        loop = asyncio.get_running_loop()
        tls = self.config.server_ssl is not None

        class Protocol(asyncio.StreamReaderProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # A TLS client speaks first: read nothing until start_tls takes over,
                # or its hello would land in the stream reader and the handshake hang.
                if tls and isinstance(transport, asyncio.ReadTransport):
                    transport.pause_reading()
                super().connection_made(transport)

        def factory() -> asyncio.StreamReaderProtocol:
            return Protocol(_FramesReader(loop=loop), self._accept, loop=loop)

        host, port = self.config.listen
        self._server = await loop.create_server(factory, host, port, reuse_address=True)
        self.bound_port = self._server.sockets[0].getsockname()[1]

    def close_server(self) -> None:
        if self._server is not None:
            self._server.close()

    def close(self) -> None:
        for link in self.links.values():
            for pending in (link.connecting, link.writer_task):
                if pending is not None:
                    pending.cancel()
            if link.conn is not None:
                link.conn.close("gateway stopping")

    # -- links ---------------------------------------------------------------------

    def link(self, node: str) -> Link:
        link = self.links.get(node)
        if link is None:
            link = self.links[node] = Link(node)
        return link

    def wake(self, node: str) -> None:
        """There is something to send to ``node``: it goes now if the link is up and its
        socket takes it, else the link's writer takes it (the link is dialled if down)."""
        link = self.link(node)
        conn = link.conn
        if conn is None:
            link.wake.set()
            self.ensure_connecting(link)
            return
        transport = conn.writer.transport
        if conn.closed or transport.is_closing():
            link.wake.set()
            return
        if link.sending or transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            link.wake.set()  # the writer (or the send under way) goes on
            return
        # Written here rather than by waking the writer task: on a round trip that is a
        # pass of the event loop saved at each gateway, each way.
        try:
            self._send_now(conn, link)
        except (ConnectionError, OSError, LocalProtocolError, RuntimeError) as exc:
            conn.close()
            _log.debug("sending to %s failed: %s", link.node, exc)
            link.wake.set()
            return
        if transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            link.wake.set()

    def ack_soon(self, node: str) -> None:
        """Deliveries moved for ``node``: acknowledge now if it matters, else shortly."""
        link = self.links.get(node)
        if link is None:
            return
        if self.relay.urgent(node):
            link.ack_now = True
            link.wake.set()
        elif link.ack_timer is None:
            link.ack_timer = asyncio.get_running_loop().call_later(
                _ACK_DELAY, self._ack_due, link
            )

    @staticmethod
    def _ack_due(link: Link) -> None:
        link.ack_timer = None
        link.ack_now = True
        link.wake.set()

    def _address_of(self, node: str) -> tuple[str, int]:
        # A peer named nowhere is looked up as a DNS name at the default port.
        return self.config.peers.get(node, (node, DEFAULT_PORT))

    def ensure_connecting(self, link: Link) -> None:
        if (
            link.conn is None
            and link.connecting is None
            and not self._stopping.is_set()
            and (self.relay.demand(link.node) or bool(link.watchers))
        ):
            link.connecting = asyncio.create_task(self._connect_loop(link))

    async def _connect_loop(self, link: Link) -> None:
        delay = 0.02
        try:
            while (
                link.conn is None
                and (self.relay.demand(link.node) or link.watchers)
                and not self._stopping.is_set()
            ):
                host, port = self._address_of(link.node)
                try:
                    reader, writer = await asyncio.wait_for(
                        _open_connection(
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
        self.short_accept.ok()
        _set_nodelay(writer)
        # The server's own task: cancelled at shutdown, which is not worth a traceback.
        with contextlib.suppress(asyncio.CancelledError):
            if self.config.server_ssl is not None:
                try:
                    # Awaited directly, not through asyncio.wait_for: on Python 3.11 that
                    # runs it in a new task, and a ClientHello read meanwhile would be
                    # lost to the plain stream (reading is paused until here, too).
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
        link: Link | None = None
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
            else:
                link.frames_refused += 1
            conn.close(reason)
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
                self._link_down(link, reason, conn.label)

    async def _handshake(self, conn: _Conn) -> Link | None:
        proto = conn.proto
        while True:
            event = proto.next_event()
            if event is wire.NEED_DATA:
                data = await conn.reader.read(_READ_SIZE)
                proto.receive_data(data)
                continue
            conn.send(proto.data_to_send())
            if isinstance(event, wire.Authenticated):
                self._check_certificate(conn, event.peer_node)
                if not conn.initiator:
                    conn.initiator = event.peer_node
                return self._link_up(conn, event)
            if isinstance(event, wire.ConnectionClosed):
                return None

    def _check_certificate(self, conn: _Conn, node: str) -> None:
        """Over TLS, the peer's certificate must name the node it proved to be (its
        subject alternative names hold the node name or the host we know it by).

        Raises:
            RemoteProtocolError: it names neither.
        """
        if self.config.server_ssl is None or not self.config.tls_verify_name:
            return
        cert = conn.writer.get_extra_info("peercert")
        names = certificate_names(cert) if isinstance(cert, dict) else set()
        host = self.config.peers.get(node, (node, 0))[0]
        if node not in names and host not in names:
            raise RemoteProtocolError(
                f"its certificate names {sorted(names) or 'nothing'}, not node {node!r}"
                f"{f' or its host {host!r}' if host != node else ''}"
                " (--tls-no-verify-name relaxes this)"
            )

    def _link_up(self, conn: _Conn, auth: wire.Authenticated) -> Link | None:
        link = self.link(auth.peer_node)
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
            self.relay.link_down(link.node)
        if link.peer_incarnation != auth.peer_incarnation:
            if link.peer_incarnation is not None:
                _log.info("node %s restarted", link.node)
            link.peer_incarnation = auth.peer_incarnation
        if link.down_since is not None or link.unreachable:
            link.reconnects += 1
        link.conn = conn
        link.down_since = None
        link.unreachable = False
        self.relay.link_up(link.node)  # what was not acknowledged goes again
        link.ack_now = True  # and so do our acknowledgements, lost with the old one
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

    def touch(self, link: Link) -> None:
        """Traffic on the link (not heartbeats): it is active, so it stays open."""
        if link.node in self._routes:
            self._routes.touch(link.node, time.monotonic())

    def _link_down(self, link: Link, reason: str, label: str = "") -> None:
        link.conn = None
        if link.writer_task is not None:
            link.writer_task.cancel()
            link.writer_task = None
        with contextlib.suppress(KeyError):
            self._routes.pop(link.node)
        self.relay.link_down(link.node)
        # One line per connection lost; a refused frame (tampering, a broken peer) is
        # worth a warning, naming where it came from.
        level = logging.WARNING if reason.startswith("protocol error") else logging.INFO
        at = f" at {label}" if label else ""
        _log.log(level, "link down: %s%s (%s)", link.node, at, reason)
        if (self.relay.demand(link.node) or link.watchers) and not self._stopping.is_set():
            link.down_since = time.monotonic()
            self.ensure_connecting(link)

    # -- frames ----------------------------------------------------------------------

    async def _read_frames(self, conn: _Conn, link: Link) -> None:
        """Handle the connection's frames until it ends.

        Past the handshake, bytes are handled as the transport reads them, in its
        callback (`_FramesReader`), not by this task after a wake-up: one pass of the
        event loop saved per read, at each gateway on every hop of a round trip. This
        task waits for the end: the stream's (its last bytes are checked here) or what
        handling raised (`read` raises it).
        """
        reader = conn.reader
        assert isinstance(reader, _FramesReader)
        try:
            if not self._on_frames(conn, link):  # what came with the handshake's reads
                return
            early = reader.deliver_to(lambda data: self._on_bytes(conn, link, data))
            if early:
                self._on_bytes(conn, link, early)
            # Nothing is buffered any more: `read` returns b"" at the stream's end, or
            # raises what handling raised (the reader's exception comes first).
            await reader.read(_READ_SIZE)
            if not conn.closed:
                conn.proto.receive_data(b"")
                self._on_frames(conn, link)
        except _Ended:
            return

    def _on_bytes(self, conn: _Conn, link: Link, data: bytes) -> None:
        if conn.closed:
            return
        conn.last_rx = time.monotonic()
        conn.proto.receive_data(data)
        if not self._on_frames(conn, link):
            raise _Ended

    def _on_frames(self, conn: _Conn, link: Link) -> bool:
        """Handle the frames parsed so far; False once the connection ended."""
        proto = conn.proto
        while not conn.closed:
            event = proto.next_event()
            if event is wire.NEED_DATA:
                return True
            if isinstance(event, wire.Data):
                self.touch(link)
                self.relay.on_runs(link.node, event.runs)
                self.ack_soon(link.node)
            elif isinstance(event, wire.Ack):
                try:
                    sendable = self.relay.on_entries(link.node, event.entries)
                except ValueError as exc:  # a position that is no record end of ours
                    raise RemoteProtocolError(f"acknowledgement out of place: {exc}") from exc
                if sendable:  # the window opened on records that wait, or a rewind
                    self.wake(link.node)
            elif isinstance(event, wire.Ping):
                conn.send(proto.send_pong(event.token))
            elif isinstance(event, wire.Pong):
                if event.token == link.ping_token:
                    link.rtt = time.monotonic() - event.token / 1e6
            elif isinstance(event, wire.Bye):
                _log.info("link to %s: peer said goodbye (%s)", link.node, event.reason)
            elif isinstance(event, wire.ConnectionClosed):
                return False
        return False

    def _send_now(self, conn: _Conn, link: Link) -> None:
        """Write what may go now: runs within the windows, up to the socket's high water,
        and the acknowledgements that are due (one write for them all)."""
        proto = conn.proto
        relay = self.relay
        frames: list[bytes] = []
        # Frames are numbered as they are made, so they must be written in that order:
        # a send reached again from inside this one (a dead letter, say) is left to the
        # writer task.
        link.sending = True
        try:
            queued = conn.writer.transport.get_write_buffer_size()
            while queued <= _WRITE_HIGH_WATER:
                runs = relay.runs_for(link.node, _FRAME_BYTES)
                if not runs:
                    break
                frames.append(proto.send_data(runs))
                queued += len(frames[-1])
            if frames:
                self.touch(link)
            # Acknowledgements ride with data; alone, only when due (much delivered, a
            # bounce or a rewind, or the delay passed): each frame costs a write.
            acks = relay.acks_for(link.node) if frames or link.ack_now else []
            link.ack_now = False
            if acks:
                frames.append(proto.send_ack(acks))
                if link.ack_timer is not None:
                    link.ack_timer.cancel()
                    link.ack_timer = None
            conn.send_all(frames)
        finally:
            link.sending = False

    async def _write_frames(self, conn: _Conn, link: Link) -> None:
        """Send runs and acknowledgements as they come, until the connection ends."""
        try:
            transport = conn.writer.transport
            while not conn.closed and not transport.is_closing():
                link.wake.clear()
                self._send_now(conn, link)
                await conn.writer.drain()
                # Everything that could go has gone: what is still queued waits for an
                # ack, for room in the socket or for new records, and each sets `wake`.
                if transport.get_write_buffer_size() <= _WRITE_HIGH_WATER:
                    await link.wake.wait()
        except (ConnectionError, OSError, LocalProtocolError, RuntimeError) as exc:
            conn.close()
            _log.debug("writer for %s ended: %s", link.node, exc)

    # -- periodic work -------------------------------------------------------------

    def maintain(self, now: float) -> None:
        self._heartbeats(now)
        for _node, link in self._routes.expire(now):
            if link.conn is not None and not (self.relay.demand(link.node) or link.watchers):
                _log.info("link to %s closed: idle for %ss", link.node, self.config.route_idle)
                link.conn.close("idle")
            else:
                self._routes.put(link.node, link, now)
        grace = self.config.unreachable_grace
        for link in self.links.values():
            down = link.down_since
            idle_since = now - down if down is not None else 0.0
            if link.conn is None and not link.unreachable and idle_since >= grace > 0:
                link.unreachable = True
                self.relay.give_up(link)
            if link.conn is None and link.connecting is None and self.relay.demand(link.node):
                self.ensure_connecting(link)

    def _heartbeats(self, now: float) -> None:
        beat = self.config.heartbeat
        for link in self.links.values():
            conn = link.conn
            if conn is None or conn.closed:
                continue
            if now - conn.last_rx > 3 * beat:
                _log.warning(
                    "link to %s: no word for %.1fs, closing", link.node, now - conn.last_rx
                )
                conn.close()
                self._link_down(link, "heartbeat lost", conn.label)
            elif now - conn.last_tx > beat or now - link.ping_token / 1e6 > beat:
                # Idle, it keeps the link alive; busy, it measures the round trip.
                link.ping_token = int(now * 1e6)
                with contextlib.suppress(LocalProtocolError):
                    conn.send(conn.proto.send_ping(link.ping_token))


def quiet_refused_accepts(loop: asyncio.AbstractEventLoop, short: OnceLog) -> None:
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
            # The kernel's buffers are queues small messages wait in, too: the receive
            # buffer grows to megabytes by itself, and an ask behind 4 MiB of a large
            # message waits as long as that takes to be read (25 ms at 170 MB/s).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)

