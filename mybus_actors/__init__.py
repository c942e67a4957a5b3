"""mybus_actors: an actor runtime for Python processes on one host or many."""

from mybus_actors.errors import (
    ActorError,
    ActorNotFound,
    AskTimeout,
    InvalidAddress,
    MailboxClosed,
    MailboxFull,
    MyBusError,
    NameTaken,
    SerializationError,
)

__all__ = [
    "ActorError",
    "ActorNotFound",
    "AskTimeout",
    "InvalidAddress",
    "MailboxClosed",
    "MailboxFull",
    "MyBusError",
    "NameTaken",
    "SerializationError",
]
__version__ = "0.1.0"
