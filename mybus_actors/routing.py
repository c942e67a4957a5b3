"""How a message for another node leaves this process: through the local gateway.

A runtime or a client writes the encoded record, its sender named in full ("node/name",
so replies find their way back), into a ring of its own to this node's gateway: one
ring per (sender, remote actor), a *forward* ring (`registry.forward_name`), which is the
gateway's outbox. The gateway relays the records as they are (it never parses the
payload, never unpickles it) and frees them from the ring only once the other node has
them; the ring outlives the gateway, so one that dies loses nothing and its successor
sends what it finds.

A gateway that was killed leaves `Registry.gateway_expected` behind: a sender then waits
up to `RESTART_WAIT` (within its own timeout) for the next one, so a restart under a
supervisor is no error for the actors that send meanwhile. One stopped on purpose removes
it, and a sender fails at once.

Knows the gateway's name and the forward ring naming; not TCP or actors.
"""

from __future__ import annotations

import time
from typing import Final

from mybus_actors.codec import Buffer
from mybus_actors.errors import ActorNotFound
from mybus_actors.mailbox import Endpoint
from mybus_actors.registry import FORWARD_TO, forward_name

__all__ = ["GATEWAY", "RESTART_WAIT", "send_to_node"]

GATEWAY: Final = FORWARD_TO
RESTART_WAIT: Final = 5.0  # seconds a sender waits for a killed gateway's successor
_LOOK_AGAIN: Final = 0.02  # how often it looks: a registry lookup, from one waiting sender


def send_to_node(
    endpoint: Endpoint,
    sender: str,
    node: str,
    name: str,
    meta: int,
    body: Buffer,
    *,
    here: str,
    timeout: float,
    block: bool,
) -> None:
    """Write an encoded record for ``node/name`` into the sender's ring to the gateway.

    ``body`` must name its sender as a full address (``codec.encode(..., sender=...)``).

    Raises:
        ActorNotFound: no gateway runs on this node (the message names both nodes); when
            the last one was killed rather than stopped, only after waiting
            ``min(timeout, RESTART_WAIT)`` for the next (``block=False``: at once).
        MailboxFull: the ring stayed full for ``timeout`` (the other node, or the
            gateway, does not keep up, or no gateway runs right now).
    """
    to = forward_name(node, name)
    try:
        endpoint.send(sender, to, body, meta, timeout=timeout, block=block)
        return
    except ActorNotFound as exc:
        if not block or timeout <= 0 or not endpoint.registry.gateway_expected.exists():
            raise _unreachable(node, here) from exc
    # The gateway was killed, not stopped: wait for its successor, within the timeout.
    start = time.monotonic()
    deadline = start + min(timeout, RESTART_WAIT)
    while True:
        # No bell rings when a gateway binds: look again every few ms.
        time.sleep(max(0.0, min(_LOOK_AGAIN, deadline - time.monotonic())))
        try:
            left = max(0.0, timeout - (time.monotonic() - start))
            endpoint.send(sender, to, body, meta, timeout=left, block=block)
            return
        except ActorNotFound as exc:
            if time.monotonic() >= deadline or not endpoint.registry.gateway_expected.exists():
                raise _unreachable(node, here) from exc


def _unreachable(node: str, here: str) -> ActorNotFound:
    return ActorNotFound(
        f"node {node!r} is not reachable: no gateway runs on node {here!r}"
        " (start one with mybus-gateway)"
    )
