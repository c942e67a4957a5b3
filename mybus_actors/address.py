"""Actor addresses: ``"node/name"``, or a bare ``"name"`` on the caller's own node.

Knows the textual form only: not the registry, rings or the network. A malformed
address raises `InvalidAddress` (a `ValueError`) here, before anything is sent.
"""

from __future__ import annotations

from functools import lru_cache

from mybus_actors.errors import InvalidAddress
from mybus_actors.registry import NAME_RE

__all__ = ["format_address", "parse_address"]


@lru_cache(maxsize=4096)
def _split(address: str) -> tuple[str | None, str]:
    node, sep, name = address.rpartition("/")
    if not sep:
        node_part: str | None = None
    elif NAME_RE.fullmatch(node) is None:
        raise InvalidAddress(
            f"invalid address {address!r}: the node {node!r} is not a valid name"
            " (1 to 64 characters from [A-Za-z0-9_.-])"
        )
    else:
        node_part = node
    if NAME_RE.fullmatch(name) is None:
        raise InvalidAddress(
            f"invalid address {address!r}: expected 'name' or 'node/name', where each is"
            " 1 to 64 characters from [A-Za-z0-9_.-]"
        )
    return node_part, name


def parse_address(address: object, local_node: str) -> tuple[str, str]:
    """Split an address into (node, name), a bare name meaning ``local_node``.

    Raises:
        InvalidAddress: not a str, empty, or not of the form ``name`` / ``node/name``.
    """
    if not isinstance(address, str):
        raise InvalidAddress(
            f"invalid address {address!r}: expected a str, got {type(address).__name__}"
        )
    if not address:
        raise InvalidAddress("invalid address '': an address names an actor")
    node, name = _split(address)
    return (local_node if node is None else node), name


def format_address(node: str, name: str) -> str:
    return f"{node}/{name}"
