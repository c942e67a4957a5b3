"""The notices the runtime delivers to actors, and its own system messages.

`Terminated` reaches ``receive`` of every watcher (and of a parent, for a child that
ended and is not restarted). The system messages travel as `Kind.SYSTEM` records: small
tuples whose first item is the verb, the same vocabulary on every node (gateways make
some of them too).
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["KILL", "STOP", "Broadcast", "Terminated"]


@attrs.frozen
class Terminated:
    """Delivered to ``receive`` of every watcher when a watched actor ends, and to a
    parent when one of its children ends and is not restarted.

    ``reason`` is "stopped" (a clean stop), "died" (its process ended without one),
    "killed" (`Ref.kill` of an actor hosted in another's process), "failed" (its
    ``receive`` or ``on_start`` raised and its supervisor stopped it), "max restarts"
    (a supervisor that gave up), "not found" (nothing held the name when the watch
    began) or, across nodes, "node unreachable".
    """

    address: str
    reason: str


STOP: Final = ("stop",)  # stop cleanly after the current message
KILL: Final = ("kill",)  # end now: no on_stop (an actor hosted in another's process)


@attrs.frozen
class Broadcast:
    """`Ref.broadcast` of a pool: its router tells ``message`` to every worker."""

    message: object
