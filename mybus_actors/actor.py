"""The `Actor` base class that user code subclasses, and the `Terminated` notice.

Knows what an actor may do; how bytes move is the runtime's business. Every method
here forwards to the dispatcher hosting the actor (`runtime.Runtime`), which sets the
actor up before its ``__init__`` runs, so ``__init__`` may already use ``self.name``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs

from mybus_actors.errors import MyBusError

if TYPE_CHECKING:
    from mybus_actors.asks import AskFuture
    from mybus_actors.runtime import Runtime, TimerHandle, _Cell

__all__ = ["Actor", "Terminated"]

_log = logging.getLogger("mybus_actors.actor")


@attrs.frozen
class Terminated:
    """Delivered to ``receive`` of every watcher when a watched actor ends.

    ``reason`` is "stopped" (a clean stop), "died" (its process ended without one),
    "not found" (nothing held the name when the watch began) or, across nodes,
    "node unreachable".
    """

    address: str
    reason: str


class Actor:
    """Subclass this and implement `receive` (plain or ``async def``).

    Messages arrive one at a time: the next ``receive`` starts only when the previous one
    has returned (or, for ``async def receive``, finished awaiting).
    """

    _mb_rt: Runtime
    _mb_cell: _Cell

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

    def tell(self, to: str, message: Any, *, timeout: float = 10.0, block: bool = True) -> None:
        """Send ``message`` to the actor at ``to``; returns once it is in the mailbox.

        Raises:
            InvalidAddress: ``to`` is malformed.
            ActorNotFound: no such actor (or its node is unreachable).
            MailboxFull: its mailbox stayed full for ``timeout`` (``block=False``: at once).
            SerializationError: ``message`` cannot be serialized.
        """
        self._mb_rt.tell(self._mb_cell.name, to, message, timeout=timeout, block=block)

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

    def send_after(self, delay: float, message: Any, *, to: str | None = None) -> TimerHandle:
        """Deliver ``message`` to ``to`` (default: this actor) after ``delay`` seconds."""
        return self._mb_rt.schedule(self._mb_cell, delay, None, message, to)

    def every(self, interval: float, message: Any, *, to: str | None = None) -> TimerHandle:
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
        """Stop after the current message: on_stop runs, the name is released."""
        self._mb_rt.request_stop(self._mb_cell)

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.address}>"
        except (AttributeError, MyBusError):
            return f"<{type(self).__name__} (not started)>"
