"""How a message for another node leaves this process: through the local gateway.

A runtime or a client writes the encoded record, laid out as the wire's WHOLE item for
its target and prefixed by the target's node, into its ordinary ring to the actor
``gateway`` of this node, which relays the item as it is: the gateway neither parses
nor re-encodes what it forwards, and never unpickles it. The record names its sender
with a full "node/name" address (the sender knows its node), so replies find their way.

Knows the gateway's name and this record layout; not TCP or actors.
"""

from __future__ import annotations

from typing import Final

from mybus_actors import wire
from mybus_actors.codec import Buffer, Kind
from mybus_actors.errors import ActorNotFound, LocalProtocolError, SerializationError
from mybus_actors.mailbox import Endpoint

__all__ = ["FORWARD", "GATEWAY", "parse_forward", "send_to_node"]

GATEWAY: Final = "gateway"
FORWARD: Final = int(Kind.FORWARD)


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
    """Hand an encoded record for ``node/name`` to this node's gateway.

    ``body`` must name its sender as a full address (``codec.encode(..., sender=...)``).

    Raises:
        ActorNotFound: no gateway runs on this node (the message names both nodes).
        MailboxFull: the gateway's mailbox stayed full for ``timeout``.
    """
    try:
        head = wire.whole_head(name, meta, len(body))
    except LocalProtocolError as exc:  # names are validated before: a bug if reached
        raise SerializationError(f"cannot forward to {node}/{name}: {exc}") from exc
    record = b"".join((bytes((len(node),)), node.encode("ascii"), head, body))
    try:
        endpoint.send(sender, GATEWAY, record, FORWARD, timeout=timeout, block=block)
    except ActorNotFound as exc:
        raise ActorNotFound(
            f"node {node!r} is not reachable: no gateway runs on node {here!r}"
            " (start one with mybus-gateway)"
        ) from exc


def parse_forward(body: bytes) -> tuple[str, memoryview]:
    """Split a FORWARD record into (target node, the wire item to relay).

    Raises:
        SerializationError: too short, or a node name that is not ASCII.
    """
    view = memoryview(body)
    if len(view) < 2 or len(view) < 1 + view[0]:
        raise SerializationError("FORWARD record too short for its node name")
    end = 1 + view[0]
    try:
        node = str(view[1:end], "ascii")
    except UnicodeDecodeError as exc:
        raise SerializationError("FORWARD record's node name is not ASCII") from exc
    return node, view[end:]
