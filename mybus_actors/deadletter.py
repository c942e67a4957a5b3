"""What a gateway sends back to a sender whose message could not be delivered.

A tell comes back as a SYSTEM ("dead-raw", meta, payload, reason) notice, which the
sender's runtime decodes and hands to ``on_dead_letter`` (a client counts it); an ask as
an error reply carrying `ActorNotFound` with the reason, so the asker raises at once.
The notice names the gateway as its sender (``node/gateway``), which a client's mailbox
takes from another node as it takes one from its own. Nothing of the payload is decoded:
the envelope header says who sent it and what it was.

Knows envelopes (`codec`); not rings, sockets or links.
"""

from __future__ import annotations

from typing import NamedTuple

from mybus_actors import codec
from mybus_actors.address import parse_address
from mybus_actors.asks import error_reply
from mybus_actors.codec import Kind
from mybus_actors.errors import ActorNotFound, InvalidAddress, SerializationError

__all__ = ["Notice", "lost_notice", "notice_for"]


class Notice(NamedTuple):
    """A dead letter to send: to actor ``name`` on ``node``, as a record."""

    node: str
    name: str
    meta: int
    body: bytes


def notice_for(
    meta: int,
    payload: bytes,
    reason: str,
    *,
    here: str,
    gateway: str,
    lost: int | None = None,
) -> Notice | None:
    """The notice for an undelivered record, or None when there is nobody to tell (a
    reply, a system message, no sender named).

    ``here`` is this node (a bare sender means it); ``gateway`` the notice's sender.
    ``lost``: the message's content is gone (a large message of which only the start,
    ``payload``, is at hand): a tell's notice then carries empty bytes and says so.
    """
    if lost is not None:
        reason = f"{reason} (a {lost}-byte message; its content could not be returned)"
    try:
        kind, origin, corr = codec.peek(meta, payload)
    except SerializationError:
        return None
    if origin is None:
        return None
    try:
        node, name = parse_address(origin, here)
    except InvalidAddress:
        return None
    if kind == Kind.ASK:
        new_meta, body = codec.encode(
            error_reply(ActorNotFound(reason)),
            kind=Kind.ERROR_REPLY,
            sender=gateway,
            correlation_id=corr,
        )
    elif kind == Kind.USER:
        content = (0, b"") if lost is not None else (meta, bytes(payload))
        new_meta, body = codec.encode(
            ("dead-raw", *content, reason), kind=Kind.SYSTEM, sender=gateway
        )
    else:
        return None
    return Notice(node, name, new_meta, bytes(body))


def lost_notice(name: str, here: str, reason: str, *, gateway: str) -> Notice:
    """A notice to local ``name`` for a message of which nothing is left to read (the
    rest of a large one whose start was already sent): a tell's, with empty bytes."""
    meta, body = codec.encode(
        ("dead-raw", 0, b"", f"{reason} (a large message; its content could not be returned)"),
        kind=Kind.SYSTEM,
        sender=gateway,
    )
    return Notice(here, name, meta, bytes(body))
