"""One process's node: the dispatcher that hosts actors, and `run`.

A `Runtime` owns one mailbox `Endpoint`, a timer wheel and (when an actor declares
``async def receive``) an asyncio loop. Its dispatcher drains the rings of every actor
hosted here, fires due timers, runs ``receive`` for one message at a time per actor, and
idles on the doorbell (plus watched processes' pidfds and a signal wake-up) until the
next timer is due. It knows actors and envelopes, not TCP: other nodes are reached
through a gateway (a later layer); until one runs, telling another node raises
`ActorNotFound` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from mybus_actors import codec, counters, ringcore
from mybus_actors.actor import Actor
from mybus_actors.address import format_address, parse_address
from mybus_actors.aio import AsyncReceives
from mybus_actors.asks import AskFuture, PendingAsks, error_from_reply, error_reply
from mybus_actors.cell import Cell as _Cell
from mybus_actors.cell import TimerHandle
from mybus_actors.children import Children
from mybus_actors.codec import Kind
from mybus_actors.dispatcher import Dispatcher
from mybus_actors.errors import (
    ActorNotFound,
    AskTimeout,
    InvalidAddress,
    MailboxClosed,
    MyBusError,
    ResourceExhausted,
    SerializationError,
)
from mybus_actors.mailbox import Endpoint, Payload
from mybus_actors.messages import STOP, Terminated
from mybus_actors.pool import PoolRouter
from mybus_actors.pressure import OnceLog, is_exhaustion
from mybus_actors.registry import (
    RESERVED_NAMES,
    Entry,
    Registry,
    default_node,
    forward_name,
    resolve_runtime_dir,
    validate_name,
)
from mybus_actors.ring import DEFAULT_CAPACITY
from mybus_actors.routing import send_to_node
from mybus_actors.scheduling import Scheduler
from mybus_actors.watches import Watches

__all__ = ["STOP", "Runtime", "TimerHandle", "run"]

_log = logging.getLogger(__name__)
# Local messages handed out per duty cycle before the rings are polled again.
_LOCAL_BUDGET: Final = 256

_USER: Final = int(Kind.USER)
_ASK: Final = int(Kind.ASK)
_REPLY: Final = int(Kind.REPLY)
_SYSTEM: Final = int(Kind.SYSTEM)
_ERROR_REPLY: Final = int(Kind.ERROR_REPLY)
_DEAD: Final = -1  # a local-queue entry: a dead letter for the sending actor
_REROUTE: Final = -2  # a local-queue entry: a record a pool's worker never read
_KIND_MASK: Final = 7
_PLAIN_MASK: Final = 0x67  # kind bits and the sender/correlation flags of a record's meta
_ROUTES: Final = 4096  # parsed addresses remembered

_REPLY_IDS = itertools.count()



class Runtime(Children):
    """A node's presence in this process: hosts actors and dispatches their messages.

    Args:
        node: this node's name (default `MYBUS_NODE`, else the short host name).
        runtime_dir: the runtime directory (default `MYBUS_RUNTIME_DIR`, else
            ``/dev/shm/mybus-<uid>/<node>``).
        spin: seconds the dispatcher polls before it sleeps on its doorbell.
        ring_capacity: bytes of each ring this process creates.
        channel_idle: seconds after which an idle ring is closed.
    """

    def __init__(
        self,
        *,
        node: str | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        spin: float = 300e-6,
        ring_capacity: int = DEFAULT_CAPACITY,
        channel_idle: float = 30.0,
    ) -> None:
        self.node = validate_name(node) if node is not None else default_node()
        self.registry = Registry(resolve_runtime_dir(runtime_dir, self.node))
        self.spin = spin
        self._clock = time.monotonic
        self.endpoint = Endpoint(
            self.registry,
            ring_capacity=ring_capacity,
            channel_idle=channel_idle,
            spin=spin,
            on_undelivered=self._undelivered,
        )
        self._thread = threading.get_ident()
        self.asks = PendingAsks(self._thread)
        self.scheduler = Scheduler(
            self._clock,
            lambda cell, message: self._offer(cell, None, _USER, 0, message),
            lambda cell, to, message: self.tell(cell.name, to, message),
            asks=self.asks,
            ask_error=_ask_timeout,
        )
        self._wheel = self.scheduler.wheel
        self.cells: dict[str, _Cell] = {}
        self._local: deque[tuple[str | None, str, int, int, Any]] = deque()
        self.watches = Watches(self)
        self.aio = AsyncReceives()  # the loop of async receives, made on first use
        self._routes: dict[str, tuple[str, str]] = {}  # parsed addresses (see `_route`)
        self._forwards: dict[str, str] = {}  # address on another node -> its forward ring
        # `tell(sender, to, message)` with nothing else: an actor's plain tell. On the native
        # core its common cases (an actor of another process here, or of another node whose
        # forward ring is known, its address seen before) go from the route cache through
        # encode to the endpoint's send in one C call; everything else, and everything
        # without the core, is `tell` itself.
        native = ringcore.NATIVE
        self.tell_plain: Callable[[str, str, Any], None] = (
            native.Teller(
                self.tell,
                self._routes,
                self.cells,
                self.node,
                codec.encode,
                self.endpoint.send,
                forwards=self._forwards,
            )
            if native is not None
            else self.tell
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller = select.poll()
        self._poller.register(self.endpoint.bell_fd, select.POLLIN)
        self._poller.register(self._wake_r.fileno(), select.POLLIN)
        self.dispatcher = Dispatcher(
            self, self.endpoint, self.scheduler, self.aio, self._poller, self._clock, spin
        )
        self._stop_all = threading.Event()
        self.dead_letters = 0
        self._stopping = False  # some cell has a stop pending
        # A process child's supervisor is in another process: its on_error comes with
        # the spawn, for the actor `run` hosts (the names below).
        self.top_on_error = "resume"
        self._top_names: set[str] = set()
        self._reply_name: str | None = None
        self._parent_fd: int | None = None
        self._closed = False
        # Replies and notices that could not be sent for lack of descriptors or memory:
        # one warning per episode, not one per message.
        self._short = OnceLog(_log, f"runtime of node {self.node} (pid {os.getpid()})")
        # Published for `mybus top` and metrics while the dispatcher runs (`counters`).
        self._counters_path = self.registry.stats_path(self.endpoint.bell_path)
        self._next_publish = 0.0
        self._counters_short = OnceLog(_log, f"counters of pid {os.getpid()}")

    # -- hosting -------------------------------------------------------------------

    def host(
        self,
        cls: type[Actor],
        name: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        parent: _Cell | None = None,
    ) -> _Cell:
        """Register ``name`` here, build the actor and run its on_start.

        Raises:
            InvalidAddress: a malformed or reserved name.
            NameTaken: a live actor holds the name.
            TypeError: ``cls`` is not an Actor subclass.
            Exception: whatever the actor's ``__init__`` or ``on_start`` raised (the
                name is released again).
        """
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise TypeError(f"expected a subclass of mybus_actors.Actor, got {cls!r}")
        validate_name(name)
        if name in RESERVED_NAMES or name.startswith("_"):
            raise InvalidAddress(f"the name {name!r} is reserved for the runtime")
        self.endpoint.bind(name)
        cell = _Cell(name, format_address(self.node, name))
        cell.parent = parent
        self.cells[name] = cell
        try:
            self._construct(cell, cls, args, kwargs)
        except BaseException:
            self._stop_children(cell)
            cell.finished = True
            del self.cells[name]
            self.endpoint.unbind(name)
            raise
        return cell

    def _construct(
        self, cell: _Cell, cls: type[Actor], args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> None:
        """A new instance in ``cell``: ``__init__``, then ``on_start`` (which may spawn)."""
        actor = cls.__new__(cls)
        actor._mb_rt = self
        actor._mb_cell = cell
        cell.actor = actor
        cell.instance += 1
        cell.is_async = inspect.iscoroutinefunction(type(actor).receive)
        actor.__init__(*args, **(kwargs or {}))  # type: ignore[misc]
        actor.on_start()

    def stop_with(self, pid: int) -> None:
        """Stop every actor cleanly when process ``pid`` exits (a spawned actor's parent:
        as with Ray's actors and a driver, none outlives the program that spawned it)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.stop_all()
            return
        self._parent_fd = fd
        self._poller.register(fd, select.POLLIN)

    def sender_of(self, cell: _Cell) -> str | None:
        s = cell.cur_sender
        if s is None or "/" in s:
            return s
        return format_address(self.node, s)

    # -- sending -------------------------------------------------------------------

    def tell(
        self,
        sender: str,
        to: str,
        message: Any,
        *,
        timeout: float = 10.0,
        block: bool = True,
        kind: int = _USER,
        corr: int = 0,
        reply_to: str | None = None,
    ) -> None:
        route = self._routes.get(to) if type(to) is str else None
        if route is None:
            route = self._route(to)
        node, name = route
        if node == self.node and name in self.cells:
            # Same process: no ring, no copy (as Pykka and Akka do within one process).
            self._local.append((reply_to or sender, name, kind, corr, message))
            return
        if node == self.node:
            if kind == _USER and reply_to is None:
                meta, body = codec.encode(message)
            else:
                meta, body = codec.encode(message, kind=kind, sender=reply_to, correlation_id=corr)
            self.endpoint.send(sender, name, body, meta, timeout=timeout, block=block)
            return
        # Another node: the record names its sender in full, for replies to come back.
        origin = reply_to or sender
        if "/" not in origin:
            origin = format_address(self.node, origin)
        meta, body = codec.encode(message, kind=kind, sender=origin, correlation_id=corr)
        send_to_node(
            self.endpoint, sender, node, name, meta, body,
            here=self.node, timeout=timeout, block=block,
        )  # fmt: skip
        # The Teller's next plain tell to ``to`` goes straight into the same ring.
        if len(self._forwards) >= _ROUTES:
            self._forwards.clear()
        self._forwards[to] = forward_name(node, name)

    def _route(self, to: str) -> tuple[str, str]:
        """(node, name) of ``to``, remembered: a tell parses its address once, not each
        time (half the cost of a tell between actors of one process).

        Raises:
            InvalidAddress: as `parse_address` (nothing is remembered).
        """
        route = parse_address(to, self.node)
        if len(self._routes) >= _ROUTES:
            self._routes.clear()
        self._routes[to] = route
        return route

    def _reply_mailbox(self) -> str:
        """This process's reply mailbox, bound on the first ask.

        An ask travels on the asker's own ring (so it stays in order with its tells),
        naming this mailbox as the reply-to: replies then never wait behind an actor
        whose rings are held back while its async receive runs.
        """
        if self._reply_name is None:
            name = f"_reply-{os.getpid()}-{next(_REPLY_IDS)}"
            self.endpoint.bind(name)
            self._reply_name = name
        return self._reply_name

    def ask(self, cell: _Cell, to: str, message: Any, *, timeout: float = 5.0) -> AskFuture:
        route = self._routes.get(to) if type(to) is str else None
        if route is None:
            route = self._route(to)
        node, name = route
        address = f"{node}/{name}"
        # The tag names the asking cell (its asks fail when it ends) and what an
        # AskTimeout says; the deadline is the table's (the scheduler fails it), not a timer.
        corr, fut = self.asks.new(
            f"ask to {address}", deadline=self._clock() + timeout, tag=(cell.name, timeout)
        )
        try:
            local = node == self.node and name in self.cells
            reply_to = None if local else self._reply_mailbox()
            self.tell(
                cell.name, to, message, timeout=timeout, kind=_ASK, corr=corr, reply_to=reply_to
            )
            cell.sent += 1
        except BaseException:
            self.asks.pop(corr)
            raise
        return fut

    def reply(self, cell: _Cell, message: Any) -> None:
        to = self.sender_of(cell)
        if to is None:
            raise MyBusError(f"{cell.address}: reply() has no current message with a sender")
        if cell.cur_kind == _ASK:
            self.tell(cell.name, to, message, kind=_REPLY, corr=cell.cur_corr)
        else:
            self.tell(cell.name, to, message)
        cell.sent += 1

    def _reply_error(self, cell: _Cell, to: str, corr: int, exc: BaseException) -> None:
        """Tell an asker its ask failed; a failure to do so is logged, never raised.

        Runs inside the dispatcher: an error escaping here would end every actor of
        this process (out of descriptors, the reply's ring cannot be created).
        """
        try:
            self.tell(cell.name, to, error_reply(exc), kind=_ERROR_REPLY, corr=corr)
        except (MyBusError, OSError) as err:
            if is_exhaustion(err):
                self._short.failed(err)
            else:
                _log.warning("%s: could not send the error reply to %s: %s", cell.address, to, err)

    def _tell_system(self, sender: str, to: str, message: tuple[Any, ...]) -> bool:
        try:
            self.tell(sender, to, message, kind=_SYSTEM, timeout=1.0)
        except (MyBusError, OSError) as err:
            if is_exhaustion(err):
                self._short.failed(err)
            else:
                _log.debug("system message %r to %s not sent: %s", message[0], to, err)
            return False
        return True

    # -- timers --------------------------------------------------------------------

    def schedule(
        self, cell: _Cell, delay: float, interval: float | None, message: Any, to: str | None
    ) -> TimerHandle:
        if to is not None:
            parse_address(to, self.node)  # a malformed target fails now, not later
        return self.scheduler.timer(cell, delay, interval, message, to)

    # -- watching (watches.py; what it needs of us: `WatchHost`) ---------------------

    def watch(self, cell: _Cell, address: str) -> None:
        self.watches.watch(cell, address)

    def unwatch(self, cell: _Cell, address: str) -> None:
        self.watches.unwatch(cell, address)

    def lookup(self, name: str) -> Entry:
        return self.registry.lookup(name)

    def tell_system(self, sender: str, to: str, message: tuple[Any, ...]) -> bool:
        return self._tell_system(sender, to, message)

    def notify_later(self, cell: _Cell, message: Terminated) -> None:
        self._local.append((None, cell.name, _USER, 0, message))

    def notify(self, cell: _Cell, message: Terminated) -> None:
        self._offer(cell, None, _USER, 0, message)

    def receiver_closed(self, sender: str, name: str) -> bool:
        return self.endpoint.receiver_closed(sender, name)

    def supervised(self, cell_name: str, address: str) -> Callable[[str], None] | None:
        child = self._process_child_of(cell_name, address)
        if child is None:
            return None
        parent, name = child
        return lambda reason: self._process_child_ended(parent, name, reason)

    def poll_fd(self, fd: int, on: bool) -> None:
        if on:
            self._poller.register(fd, select.POLLIN)
        else:
            self._poller.unregister(fd)

    # -- receiving -----------------------------------------------------------------

    def _offer(self, cell: _Cell, sender: str | None, kind: int, corr: int, message: Any) -> None:
        """Hand one message to an actor, or queue it while its async receive runs."""
        if cell.task is not None or cell.backlog or cell.restarting or cell.failing:
            cell.backlog.append((sender, kind, corr, message))
            return
        self._handle(cell, sender, kind, corr, message)

    def _handle(self, cell: _Cell, sender: str | None, kind: int, corr: int, msg: Any) -> None:
        actor = cell.actor
        if actor is None or cell.finished:
            return
        cell.cur_sender = sender
        cell.cur_kind = kind
        cell.cur_corr = corr
        if cell.is_async:
            coro = self._run_async(cell, actor.receive(msg), sender, kind, corr)
            cell.task = self.aio.start(cell, coro)
            self.endpoint.pause(cell.name)
            return
        try:
            actor.receive(msg)
        except Exception as exc:
            self._receive_failed(cell, exc, sender, kind, corr)

    async def _run_async(
        self, cell: _Cell, coro: Any, sender: str | None, kind: int, corr: int
    ) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._receive_failed(cell, exc, sender, kind, corr)

    def _receive_failed(
        self, cell: _Cell, exc: Exception, sender: str | None, kind: int, corr: int
    ) -> None:
        if is_exhaustion(exc):  # e.g. reply() found no descriptor for the reply's ring
            self._short.failed(exc)
        else:
            _log.error("%s: receive() raised", cell.address, exc_info=exc)
        if kind == _ASK and sender is not None:
            self._reply_error(cell, sender, corr, exc)
        parent = cell.parent
        if parent is None:
            on_error = self.top_on_error if cell.name in self._top_names else "resume"
        elif parent.finished:
            on_error = "resume"
        else:
            on_error = self._supervisor(parent).strategy.on_error
        if on_error != "resume":
            # Not here, inside the failed handling: in the stop pass of do_work.
            cell.failing = True
            self._stopping = True

    def _task_done(self, cell: _Cell) -> None:
        """An async receive finished: start the next queued message, or resume draining."""
        cell.task = None
        if cell.stopping or cell.failing or cell.killing:
            self._stopping = True  # the stop pass ends it
            return
        while cell.backlog and cell.task is None and not cell.finished and not cell.failing:
            self._handle(cell, *cell.backlog.popleft())
        if cell.task is None and not cell.finished:
            self.endpoint.resume(cell.name)

    def _deliver(self, sender: str, receiver: str, items: Sequence[tuple[int, Payload]]) -> None:
        cell = self.cells.get(receiver)
        if cell is None:
            if receiver == self._reply_name:
                self._deliver_replies(sender, items)
            else:
                self._bounce(sender, receiver, items)
            return
        cell.received += len(items)
        decode = codec.decode_message
        decode_fields = codec.decode_fields
        for meta, payload in items:
            kind = meta & _KIND_MASK
            try:
                if not meta & _PLAIN_MASK:  # a plain tell from a local sender: no prefix
                    msg = decode(meta, payload)
                    origin = sender
                    corr = 0
                else:
                    _, named, corr, msg = decode_fields(meta, payload)
                    origin = named or sender
                    if kind != _USER and kind != _ASK:
                        self._dispatch(cell, origin, kind, corr, msg)
                        continue
            except SerializationError as exc:
                self._undecodable(cell, sender, meta, payload, exc)
                continue
            actor = cell.actor
            if (
                actor is None
                or cell.is_async
                or cell.task is not None
                or cell.backlog
                or cell.restarting
                or cell.failing
                or cell.finished
            ):
                self._offer(cell, origin, kind, corr, msg)
                continue
            # `_offer` and `_handle` inline for the common case, a tell or an ask to a
            # sync actor that is free: two calls a message fewer.
            cell.cur_sender = origin
            cell.cur_kind = kind
            cell.cur_corr = corr
            try:
                actor.receive(msg)
            except Exception as exc:
                self._receive_failed(cell, exc, origin, kind, corr)

    def _undecodable(
        self, cell: _Cell, sender: str, meta: int, payload: Payload, exc: SerializationError
    ) -> None:
        """A message we cannot decode: an asker hears why (its ActorError names it)."""
        try:
            kind, origin, corr = codec.peek(meta, payload)
        except SerializationError:
            kind, origin, corr = -1, None, 0
        if kind == _ASK:
            _log.warning("%s: an ask from %s could not be decoded: %s", cell.address,
                         origin or sender, exc)  # fmt: skip
            self._reply_error(cell, origin or sender, corr, exc)
        else:
            _log.error("%s: a message from %s could not be decoded: %s", cell.address,
                       origin or sender, exc)  # fmt: skip

    def _bounce(self, sender: str, receiver: str, items: Sequence[tuple[int, Payload]]) -> None:
        """Records for an actor that was no longer here when they were read (it stopped
        as they came): an asker gets `ActorNotFound`, a teller its dead letter."""
        reason = f"{format_address(self.node, receiver)} stopped before reading it"
        via = self._reply_mailbox()  # a name of ours that outlives the actor
        for meta, payload in items:
            try:
                kind, origin, corr = codec.peek(meta, payload)
            except SerializationError:
                kind, origin, corr = -1, None, 0
            if kind == _SYSTEM and self._notice_for_gone_watcher(meta, payload):
                continue  # not a dead letter: it was for every watcher of that actor
            self.dead_letters += 1
            to = origin or sender
            try:
                if kind == _ASK:
                    self.tell(via, to, error_reply(ActorNotFound(reason)), kind=_ERROR_REPLY,
                              corr=corr, timeout=1.0)  # fmt: skip
                elif kind == _USER:
                    notice = ("dead-raw", meta, bytes(payload), reason)
                    self.tell(via, to, notice, kind=_SYSTEM, timeout=1.0)
                else:
                    _log.warning("a message from %s is lost: %s", to, reason)
            except (MyBusError, OSError) as err:
                if is_exhaustion(err):
                    self._short.failed(err)
                else:
                    _log.warning("a dead letter for %s could not be returned: %s", to, err)

    def _notice_for_gone_watcher(self, meta: int, payload: Payload) -> bool:
        """A ("terminated", ...) notice for a watcher that has gone: the others that
        watch the same actor under its request still learn of it."""
        try:
            msg = codec.decode_fields(meta, payload)[3]
        except SerializationError:
            return False
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "terminated":
            self.watches.terminated(str(msg[1]), str(msg[2]))
            return True
        return False

    def _deliver_replies(self, sender: str, items: Sequence[tuple[int, Payload]]) -> None:
        for meta, payload in items:
            try:
                kind, _, corr, msg = codec.decode_fields(meta, payload)
            except SerializationError as exc:
                # The asker learns why, now, instead of waiting for its timeout.
                try:
                    corr = codec.peek(meta, payload)[2]
                except SerializationError:
                    corr = 0
                if not self.asks.fail(corr, exc):
                    _log.error("a reply from %s could not be decoded: %s", sender, exc)
                continue
            if kind == _REPLY:
                self.asks.resolve(corr, msg)
            elif kind == _ERROR_REPLY:
                self.asks.fail(corr, error_from_reply(self._address_of(sender), msg))
            else:
                _log.warning("a non-reply %r reached the reply mailbox from %s", msg, sender)

    def _dispatch(self, cell: _Cell, sender: str | None, kind: int, corr: int, msg: Any) -> None:
        if sender is None:
            self._offer(cell, None, kind, corr, msg)
        elif kind == _REPLY:
            self.asks.resolve(corr, msg)
        elif kind == _ERROR_REPLY:
            self.asks.fail(corr, error_from_reply(self._address_of(sender), msg))
        elif kind == _SYSTEM:
            self._system(cell, sender, msg)
        elif kind == _REROUTE:
            self._reroute(cell, sender, corr, msg)
        elif kind == _DEAD:
            cell.dead_letters += 1
            message, reason = msg
            if cell.actor is not None and not cell.finished:
                try:
                    cell.actor.on_dead_letter(message, reason)
                except Exception:
                    _log.exception("%s: on_dead_letter() raised", cell.address)
        else:
            self._offer(cell, sender, kind, corr, msg)

    def _reroute(self, router: _Cell, dead: str, meta: int, payload: bytes) -> None:
        """A record worker ``dead`` never read goes to another worker of the pool, as it
        was (its sender and correlation id are in it), or waits for one."""
        actor = router.actor
        if isinstance(actor, PoolRouter):
            actor.take_raw(dead, meta, payload)
        else:
            self.bounce_raw(router, meta, payload, f"{dead} stopped before reading it")

    def _address_of(self, sender: str) -> str:
        return sender if "/" in sender else format_address(self.node, sender)

    def _system(self, cell: _Cell, sender: str, msg: Any) -> None:
        verb = msg[0] if isinstance(msg, tuple) and msg else None
        if verb == "stop":  # Ref.stop from elsewhere: for good, as Ref.stop here is
            if cell.parent is not None:
                self._detach_child(cell.parent, cell.name)
            self.request_stop(cell)
        elif verb == "kill":
            self.kill(cell)
        elif verb == "watch":
            cell.watchers.add(sender)
        elif verb == "unwatch":
            cell.watchers.discard(sender)
        elif verb == "terminated" and len(msg) == 3:
            self.watches.terminated(str(msg[1]), str(msg[2]))
        elif verb == "dead" and len(msg) == 3:
            self.dead_letters += 1
            self._dispatch(cell, sender, _DEAD, 0, (msg[1], str(msg[2])))
        elif verb == "dead-raw" and len(msg) == 4:
            self.dead_letters += 1
            # From a gateway, which never unpickles what it relays: decode it here.
            try:
                original = codec.decode_message(int(msg[1]), bytes(msg[2]))
            except SerializationError:
                original = msg[2]
            self._dispatch(cell, sender, _DEAD, 0, (original, str(msg[3])))
        else:
            _log.warning("%s: unknown system message %r from %s", cell.address, msg, sender)

    def _undelivered(self, sender: str, receiver: str, lost: list[tuple[int, bytes]]) -> None:
        """The endpoint salvaged messages a gone receiver never read."""
        reason = f"{format_address(self.node, receiver)} stopped before reading it"
        router = self.cells.get(sender)
        if router is not None and isinstance(router.actor, PoolRouter) and not router.finished:
            # A pool's worker ended before reading these: another worker takes them
            # (from the local queue: this runs inside a send).
            for meta, payload in lost:
                self._local.append((receiver, sender, _REROUTE, meta, payload))
            return
        for meta, payload in lost:
            self.dead_letters += 1
            kind = meta & _KIND_MASK
            try:
                env, msg = codec.decode(meta, payload)
            except SerializationError:
                continue
            if kind == _ASK:
                self.asks.fail(env.correlation_id, ActorNotFound(reason))
            elif kind == _USER and sender in self.cells:
                # Through the local queue: the hook must not run inside someone's tell().
                self._local.append((receiver, sender, _DEAD, 0, (msg, reason)))
            else:
                _log.warning("dead letter from %s: %r (%s)", sender, msg, reason)

    # -- stopping ------------------------------------------------------------------

    def request_stop(self, cell: _Cell) -> None:
        """Stop ``cell`` once the messages already taken from its rings are handled.

        What is still in its rings stays there: its senders get it back as dead
        letters when the rings close.
        """
        if cell.finished:
            return
        cell.stopping = True
        self._to_stop_pass()

    def _to_stop_pass(self) -> None:
        """Some cell is to end (stop, kill, failure): the next duty cycle's stop pass
        ends it, woken from another thread if need be."""
        self._stopping = True
        if threading.get_ident() != self._thread:
            self._wake()

    def stop_all(self) -> None:
        """Ask every hosted actor to stop (thread- and signal-safe)."""
        self._stop_all.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _end(self, cell: _Cell, reason: str, *, clean: bool = True) -> None:
        """The actor in ``cell`` ends for good: children first (latest started first),
        then on_stop (if ``clean``), its watchers' notices, the name released."""
        if cell.finished:
            return
        self._stop_children(cell)
        cell.finished = True
        for timer in list(cell.timers):
            timer.cancel()
        if cell.task is not None:
            cell.task.cancel()
        self._return_backlog(cell)
        if clean and cell.actor is not None and not cell.restarting:
            try:
                cell.actor.on_stop()
            except Exception:
                _log.exception("%s: on_stop() raised", cell.address)
        for watcher in list(cell.watchers):
            node, name = parse_address(watcher, self.node)
            if name in self.cells and node == self.node:
                self._local.append(
                    (cell.name, name, _SYSTEM, 0, ("terminated", cell.address, reason))
                )
            else:
                self._tell_system(cell.name, watcher, ("terminated", cell.address, reason))
        for address in list(cell.watching):
            self.unwatch(cell, address)
        self._fail_asks_of(cell, "stopped while asking")
        del self.cells[cell.name]
        for sender, receiver, items in self.endpoint.unbind(cell.name):
            self._bounce(sender, receiver, items)

    def _return_backlog(self, cell: _Cell) -> None:
        """Messages taken from the rings but never handled go back as dead letters."""
        reason = f"{cell.address} stopped before handling it"
        while cell.backlog:
            sender, kind, corr, msg = cell.backlog.popleft()
            self.dead_letters += 1
            if sender is None:
                continue
            if kind == _ASK:
                self._reply_error(cell, sender, corr, ActorNotFound(reason))
            elif kind == _USER:
                self._tell_system(cell.name, sender, ("dead", msg, reason))

    # -- the dispatcher ------------------------------------------------------------

    def run_until_stopped(self) -> None:
        """Dispatch until every hosted actor has stopped.

        Running out of descriptors or memory is contained here as a last resort (each
        message's own handling contains it first): the actors stay up, logged once.
        """
        clock = self._clock
        while self.cells:
            if self._stop_all.is_set():
                self._end_all()
                break
            try:
                work = self.do_work()
                if clock() >= self._next_publish:
                    self.publish_counters()
                if not work:
                    self._idle()
            except ResourceExhausted as exc:
                self._short.failed(exc)
                self._idle()

    def do_work(self) -> int:
        """One duty cycle (dispatcher.py): due timers, local messages, one poll of the
        rings, a pass of async receives, the stop pass."""
        return self.dispatcher.do_work()

    def publish_counters(self) -> None:
        """Write this process's counters for `mybus top` and metrics (`counters.py`);
        `run_until_stopped` does it every `counters.PUBLISH_EVERY` seconds. A full
        runtime directory is logged once, never raised: the counters are only a view."""
        self._next_publish = self._clock() + counters.PUBLISH_EVERY
        snapshot = counters.ProcessCounters(
            pid=os.getpid(),
            node=self.node,
            core=ringcore.CORE,
            updated=time.time(),
            dead_letters=self.dead_letters,
            duplicates=self.endpoint.duplicates,
            actors=tuple(_counters_of(c) for c in self.cells.values() if c.name[0] != "_"),
        )
        try:
            counters.write(self._counters_path, snapshot)
        except OSError as exc:
            self._counters_short.failed(exc)
        else:
            self._counters_short.ok()

    # -- what the dispatcher needs of us (`DispatchHost`) ---------------------------

    def run_local(self) -> int:
        """Hand out what actors of this process told each other, including what they
        tell while it runs (an ask's reply is handed to the asker in the same cycle),
        up to `_LOCAL_BUDGET` messages: a chatty pair cannot keep the rings unread."""
        local = self._local
        done = 0
        while local and done < _LOCAL_BUDGET:
            done += 1
            sender, receiver, kind, corr, msg = local.popleft()
            cell = self.cells.get(receiver)
            if cell is not None:
                cell.received += 1
                self._dispatch(cell, sender, kind, corr, msg)
            else:
                _log.warning("dead letter for %s (stopped): %r", receiver, msg)
        return done

    def has_local(self) -> bool:
        return bool(self._local)

    def deliver(self, sender: str, receiver: str, items: Sequence[tuple[int, Payload]]) -> None:
        self._deliver(sender, receiver, items)

    def settle(self, done: list[tuple[asyncio.Task[None], _Cell]]) -> int:
        return self._settle(done)

    def stop_pass(self) -> None:
        """End the cells marked to end (a stop, a kill, a failure to restart or stop on)."""
        if not self._stopping:
            return
        self._stopping = False
        for cell in [c for c in self.cells.values() if c.stopping or c.failing or c.killing]:
            if cell.finished:
                continue
            if cell.killing:
                self._ended(cell, "killed", abnormal=True, clean=False)
            elif cell.task is not None:
                self._stopping = True  # after its async receive ends
            elif cell.failing:
                cell.failing = False
                self._ended(cell, "failed", abnormal=True, clean=True)
            else:
                self._ended(cell, "stopped", abnormal=False, clean=True)

    def sleep_fds(self) -> list[int]:
        """What a sleep in the asyncio loop watches besides the doorbell."""
        fds = [self._wake_r.fileno(), *self.watches.pidfds]
        if self._parent_fd is not None:
            fds.append(self._parent_fd)
        return fds

    def woken(self, fd: int) -> None:
        """Descriptor ``fd`` woke the dispatcher."""
        if fd == self._wake_r.fileno():
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(512):
                    pass
        elif fd == self._parent_fd:
            _log.warning("the process that spawned this one exited: stopping")
            self.stop_all()
        elif fd in self.watches:
            # Read what the process published before it ended (a clean stop's notice)
            # before deciding that it died.
            self.do_work()
            if self.watches.process_exited(fd):
                try:
                    self.registry.reclaim()
                except ResourceExhausted as exc:  # the next reclaim does it
                    self._short.failed(exc)

    def _end_all(self) -> None:
        """Every actor ends cleanly: top-level ones first take their children with them."""
        for cell in [c for c in self.cells.values() if c.parent is None]:
            self._end(cell, "stopped")
        for cell in list(self.cells.values()):
            self._end(cell, "stopped")

    def _settle(self, done: list[tuple[asyncio.Task[None], _Cell]]) -> int:
        """Finished async receives: their actors' next messages start."""
        for task, cell in done:
            if cell.task is task:  # not a task of an instance that was reset meanwhile
                self._task_done(cell)
        return len(done)

    def _idle(self) -> None:
        self.dispatcher.idle()

    def close(self) -> None:
        """Stop every actor still hosted and release the mailbox, loop and descriptors."""
        if self._closed:
            return
        self._end_all()
        self._closed = True
        self.watches.close()
        self.asks.fail_all(lambda f: MailboxClosed(f"{f.description}: the runtime closed"))
        self.aio.close()
        counters.remove(self._counters_path)
        self.endpoint.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._parent_fd is not None:
            os.close(self._parent_fd)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ask_timeout(fut: AskFuture) -> AskTimeout:
    tag: tuple[str, float] = fut.tag  # type: ignore[assignment]  # Runtime.ask's
    timeout = tag[1]
    address = fut.description.removeprefix("ask to ")
    return AskTimeout(f"no reply from {address} within {timeout}s")


def _counters_of(cell: _Cell) -> counters.ActorCounters:
    return counters.ActorCounters(
        name=cell.name,
        received=cell.received,
        sent=cell.sent,
        dead_letters=cell.dead_letters,
        restarts=cell.restarts,
        queued=len(cell.backlog),
        instance=cell.instance,
        parent=cell.parent.name if cell.parent is not None else None,
    )


def run(
    cls: type[Actor],
    name: str,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    node: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    _on_ready: Callable[[], None] | None = None,
    _parent: int | None = None,
    _on_error: str = "resume",
) -> None:
    """Host an actor in this process until it stops (the entry point of a worker script).

    SIGTERM and Ctrl-C stop it cleanly: on_stop runs, the name is released and its rings
    are unlinked.

    Raises:
        NameTaken: a live actor already holds ``name``.
        InvalidAddress: ``name`` is malformed or reserved.
    """
    with Runtime(node=node, runtime_dir=runtime_dir) as rt:
        rt.top_on_error = _on_error
        rt._top_names.add(name)
        rt.host(cls, name, args, kwargs)
        if _parent is not None:
            rt.stop_with(_parent)
        if _on_ready is not None:
            _on_ready()
        with _stop_on_signals(rt):
            rt.run_until_stopped()


@contextlib.contextmanager
def _stop_on_signals(rt: Runtime) -> Any:
    """In the main thread, turn SIGTERM and SIGINT into a clean stop of every actor."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        rt.stop_all()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
