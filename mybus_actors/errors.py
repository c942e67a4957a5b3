"""The exception hierarchy of mybus_actors, rooted at `MyBusError`.

Errors are named by who is at fault: the caller (`InvalidAddress`, `MailboxClosed`,
`LocalProtocolError`), the situation (`MailboxFull`, `ActorNotFound`, `NameTaken`,
`ResourceExhausted`), or the peer (`RemoteProtocolError`). Every module raises from here
and chains causes.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorNotFound",
    "AskTimeout",
    "DeadlockError",
    "InvalidAddress",
    "LocalProtocolError",
    "MailboxClosed",
    "MailboxFull",
    "MyBusError",
    "NameTaken",
    "RemoteProtocolError",
    "ResourceExhausted",
    "RingCorrupted",
    "SerializationError",
]


class MyBusError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidAddress(MyBusError, ValueError):
    """An actor address or name is malformed (caught before anything is sent)."""


class ActorNotFound(MyBusError):
    """No live actor holds that name (or its node cannot be reached)."""


class NameTaken(MyBusError):
    """A live actor already holds the name being registered."""


class MailboxFull(MyBusError):
    """The receiver's ring stayed full past the timeout; the message was not sent."""


class ResourceExhausted(MyBusError, OSError):
    """The host ran out of something the call needs: descriptors, shared memory, memory.

    An `OSError` too (``errno`` is EMFILE, ENFILE, ENOSPC, ENOMEM...), so code that
    already catches `OSError` keeps working. Nothing was sent or registered; the same
    call may succeed once the resource is freed (retry later, with a bound).
    """


class MailboxClosed(MyBusError):
    """The mailbox or endpoint was closed by its owner; it accepts nothing more."""


class SerializationError(MyBusError):
    """A message could not be serialized (or deserialized); nothing reached a ring."""


class AskTimeout(MyBusError, TimeoutError):
    """No reply arrived within the ask's timeout."""


class ActorError(MyBusError):
    """The receiver's `receive` raised while handling an ask."""


class DeadlockError(MyBusError, RuntimeError):
    """Blocking here would stall the dispatcher that must make progress for it."""


class RingCorrupted(MyBusError):
    """A ring's header or a record in it is not what this layout version writes."""


class LocalProtocolError(MyBusError):
    """This side misused the wire protocol (a bug in the caller)."""


class RemoteProtocolError(MyBusError):
    """The peer sent something the wire protocol does not allow."""
