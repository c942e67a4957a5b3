"""How a message for another node leaves this process: through the local gateway.

A runtime or a client writes the encoded record, wrapped with its destination address
(`codec.forward`), into its ordinary ring to the actor ``gateway`` of this node, which
relays it over TCP. Knows the gateway's name and the wrapping; not TCP or actors.
"""

from __future__ import annotations

from typing import Final

from mybus_actors import codec
from mybus_actors.codec import Buffer
from mybus_actors.errors import ActorNotFound
from mybus_actors.mailbox import Endpoint

__all__ = ["GATEWAY", "send_to_node"]

GATEWAY: Final = "gateway"


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

    Raises:
        ActorNotFound: no gateway runs on this node (the message names both nodes).
        MailboxFull: the gateway's mailbox stayed full for ``timeout``.
    """
    fmeta, fbody = codec.forward(f"{node}/{name}", meta, body)
    try:
        endpoint.send(sender, GATEWAY, fbody, fmeta, timeout=timeout, block=block)
    except ActorNotFound as exc:
        raise ActorNotFound(
            f"node {node!r} is not reachable: no gateway runs on node {here!r}"
            " (start one with mybus-gateway)"
        ) from exc
