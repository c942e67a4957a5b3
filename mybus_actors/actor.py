"""The `Actor` base class that user code subclasses, and the `Terminated` notice.

Knows what an actor may do; how bytes move is the runtime's business. Every method
here forwards to the `ActorContext` hosting the actor (the process's dispatcher,
`runtime.Runtime`, which this module does not import), set up before the actor's
``__init__`` runs, so ``__init__`` may already use ``self.name``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mybus_actors.errors import MyBusError
from mybus_actors.messages import Terminated
from mybus_actors.supervision import OneForOne, Strategy

if TYPE_CHECKING:
    from mybus_actors.asks import AskFuture
    from mybus_actors.ref import Ref

__all__ = ["Actor", "ActorContext", "Terminated"]

_TELL_TIMEOUT = 10.0  # Actor.tell's default: a tell with it and block=True is `tell_plain`

_log = logging.getLogger(__name__)


class CellView(Protocol):
    """What an actor reads of its own record in the dispatcher."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def parent(self) -> CellView | None: ...
    sent: int  # messages it sent, counted for `mybus top` and metrics


class Timer(Protocol):
    """What `Actor.send_after` and `Actor.every` return (a `TimerHandle`)."""

    def cancel(self) -> None: ...


class ActorContext(Protocol):
    """What hosts an actor: the calls every `Actor` method turns into (its first
    argument, the actor's cell, is the one the context gave the actor)."""

    node: str

    def sender_of(self, cell: Any) -> str | None: ...
    def tell(
        self, sender: str, to: str, message: Any, *, timeout: float = ..., block: bool = ...
    ) -> None: ...
    def tell_plain(self, sender: str, to: str, message: Any) -> None: ...
    def ask(self, cell: Any, to: str, message: Any, *, timeout: float = ...) -> AskFuture: ...
    def reply(self, cell: Any, message: Any) -> None: ...
    def schedule(
        self, cell: Any, delay: float, interval: float | None, message: Any, to: str | None
    ) -> Timer: ...
    def watch(self, cell: Any, address: str) -> None: ...
    def unwatch(self, cell: Any, address: str) -> None: ...
    def request_stop(self, cell: Any) -> None: ...
    def spawn_child(
        self, parent: Any, cls: type[Actor], name: str, args: tuple[Any, ...],
        kwargs: dict[str, Any] | None, *, process: bool, restart: str,
    ) -> Ref: ...  # fmt: skip
    def spawn_pool(
        self, parent: Any, cls: type[Actor], name: str, size: int, args: tuple[Any, ...],
        kwargs: dict[str, Any] | None, *, process: bool, routing: str,
    ) -> Ref: ...  # fmt: skip
    def children_of(self, cell: Any) -> dict[str, Ref]: ...


class Actor:
    """Subclass this and implement `receive` (plain or ``async def``).

    Messages arrive one at a time: the next ``receive`` starts only when the previous one
    has returned (or, for ``async def receive``, finished awaiting).
    """

    _mb_rt: ActorContext
    _mb_cell: CellView

    #: How this actor supervises its children (`OneForOne`, `OneForAll`, `RestForOne`).
    supervision: ClassVar[Strategy] = OneForOne()

    # -- hooks ---------------------------------------------------------------------

    def on_start(self) -> None:
        """Called once, after the name is registered and before the first message."""

    def receive(self, message: Any) -> Any:
        """Handle one message. Override it; ``async def receive`` is fine too."""
        raise NotImplementedError(f"{type(self).__name__} does not implement receive()")

    def on_stop(self) -> None:
        """Called once when the actor stops cleanly (stop(), Ref.stop, SIGTERM)."""

    def on_dead_letter(self, message: Any, reason: str) -> None:
        """A message this actor told could not be delivered (its receiver went away)."""
        _log.warning("%s: dead letter %r (%s)", self.address, message, reason)

    # -- who am I --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._mb_cell.name

    @property
    def node(self) -> str:
        return self._mb_rt.node

    @property
    def address(self) -> str:
        return self._mb_cell.address

    @property
    def sender(self) -> str | None:
        """The address of the current message's sender, or None (timers, notices)."""
        return self._mb_rt.sender_of(self._mb_cell)

    # -- what I can do -------------------------------------------------------------

    def tell(
        self, to: str, message: Any, *, timeout: float = _TELL_TIMEOUT, block: bool = True
    ) -> None:
        """Send ``message`` to the actor at ``to``; returns once it is in the mailbox.

        Raises:
            InvalidAddress: ``to`` is malformed.
            ActorNotFound: no such actor (or its node is unreachable).
            MailboxFull: its mailbox stayed full for ``timeout`` (``block=False``: at once).
            SerializationError: ``message`` cannot be serialized.
        """
        cell = self._mb_cell
        if block and timeout == _TELL_TIMEOUT:
            self._mb_rt.tell_plain(cell.name, to, message)  # one C call on the native core
        else:
            self._mb_rt.tell(cell.name, to, message, timeout=timeout, block=block)
        cell.sent += 1

    def ask(self, to: str, message: Any, *, timeout: float = 5.0) -> AskFuture:
        """Send ``message`` and return a future of the reply: ``await`` it.

        Raises:
            InvalidAddress, ActorNotFound, MailboxFull, SerializationError: as `tell`,
                at the call. The future fails with `AskTimeout`, `ActorError` (the
                receiver raised) or `ActorNotFound` (it went away first).
        """
        return self._mb_rt.ask(self._mb_cell, to, message, timeout=timeout)

    def reply(self, message: Any) -> None:
        """Answer the current message (an ask gets its reply; a tell, a message back).

        Raises:
            MyBusError: there is no current message with a sender to answer.
        """
        self._mb_rt.reply(self._mb_cell, message)

    def send_after(self, delay: float, message: Any, *, to: str | None = None) -> Timer:
        """Deliver ``message`` to ``to`` (default: this actor) after ``delay`` seconds."""
        return self._mb_rt.schedule(self._mb_cell, delay, None, message, to)

    def every(self, interval: float, message: Any, *, to: str | None = None) -> Timer:
        """Deliver ``message`` every ``interval`` seconds until the handle is cancelled."""
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        return self._mb_rt.schedule(self._mb_cell, interval, interval, message, to)

    def watch(self, address: str) -> None:
        """Receive `Terminated` when the actor at ``address`` stops or its process dies."""
        self._mb_rt.watch(self._mb_cell, address)

    def unwatch(self, address: str) -> None:
        self._mb_rt.unwatch(self._mb_cell, address)

    def stop(self) -> None:
        """Stop after the current message: on_stop runs, the name is released.

        Its children are stopped first, latest started first, wherever they run.
        """
        self._mb_rt.request_stop(self._mb_cell)

    # -- children ------------------------------------------------------------------

    def spawn(
        self,
        cls: type[Actor],
        name: str,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        process: bool = False,
        restart: str = "temporary",
    ) -> Ref:
        """Start a child actor ``name`` (address ``node/name``), supervised by this one.

        ``process=False`` hosts it in this process (no new OS process, no ring between
        the two: a tell between them is a queue append); ``process=True`` starts it in a
        new process, as `mybus_actors.spawn` does. ``restart`` is "permanent" (always
        restarted), "transient" (restarted after an abnormal end) or "temporary" (never);
        how is this actor's `supervision`. A child that ends and is not restarted is
        reported to `receive` as `Terminated`.

        Raises:
            NameTaken: a live actor already holds ``name`` on this node.
            InvalidAddress: ``name`` is malformed or reserved.
            ValueError: ``restart`` is not one of the three.
            Exception: what the child's ``__init__`` or ``on_start`` raised (in-process),
                or `ActorError` (in its own process).
        """
        return self._mb_rt.spawn_child(
            self._mb_cell, cls, name, args, kwargs, process=process, restart=restart
        )

    def spawn_pool(
        self,
        cls: type[Actor],
        name: str,
        size: int,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        process: bool = True,
        routing: str = "least-loaded",
    ) -> Ref:
        """``size`` workers ``name.0`` … ``name.<size-1>`` (restarted permanently) behind
        the address ``name``: each tell or ask to ``name`` goes to one of them.

        ``routing``: "least-loaded" (the worker with the fewest unread bytes in its
        mailbox) or "round-robin"; a restarting worker is skipped. The returned Ref's
        `Ref.broadcast` tells every worker.

        Raises:
            NameTaken, InvalidAddress: as `spawn`, for the pool or a worker.
            ValueError: ``size`` below 1, or an unknown ``routing``.
        """
        return self._mb_rt.spawn_pool(
            self._mb_cell, cls, name, size, args, kwargs, process=process, routing=routing
        )

    @property
    def children(self) -> dict[str, Ref]:
        """The live children by name (a restarting child is still one)."""
        return self._mb_rt.children_of(self._mb_cell)

    @property
    def parent(self) -> str | None:
        """The address of the actor that spawned this one, or None (a top-level actor)."""
        parent = self._mb_cell.parent
        return parent.address if parent is not None else None

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.address}>"
        except (AttributeError, MyBusError):
            return f"<{type(self).__name__} (not started)>"
