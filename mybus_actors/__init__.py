"""mybus_actors: an actor runtime for Python processes on one host or many.

```python
import mybus_actors as mb

class Echo(mb.Actor):
    def receive(self, message):
        self.reply(message)

ref = mb.spawn(Echo, "echo")
with mb.connect() as me:
    assert me.ask("echo", "hi", timeout=5) == "hi"
ref.stop()
```
"""

from mybus_actors.actor import Actor, Terminated
from mybus_actors.asks import AskFuture
from mybus_actors.client import Client, connect
from mybus_actors.errors import (
    ActorError,
    ActorNotFound,
    AskTimeout,
    DeadlockError,
    InvalidAddress,
    MailboxClosed,
    MailboxFull,
    MyBusError,
    NameTaken,
    ResourceExhausted,
    SerializationError,
)
from mybus_actors.ref import Ref, spawn, spawn_pool
from mybus_actors.runtime import Runtime, TimerHandle, run
from mybus_actors.supervision import OneForAll, OneForOne, RestForOne

__all__ = [
    "Actor",
    "ActorError",
    "ActorNotFound",
    "AskFuture",
    "AskTimeout",
    "Client",
    "DeadlockError",
    "InvalidAddress",
    "MailboxClosed",
    "MailboxFull",
    "MyBusError",
    "NameTaken",
    "OneForAll",
    "OneForOne",
    "Ref",
    "ResourceExhausted",
    "RestForOne",
    "Runtime",
    "SerializationError",
    "Terminated",
    "TimerHandle",
    "connect",
    "run",
    "spawn",
    "spawn_pool",
]
__version__ = "0.1.0"
