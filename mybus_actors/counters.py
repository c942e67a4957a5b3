"""A process's published counters: one small JSON file per mailbox, ``stats/<bell>``.

What the rings' headers cannot say (they count a pair of processes, not an actor): per
hosted actor the messages it received and sent, its dead letters, the restarts it made
as a supervisor, what waits in its queue. A process's runtime rewrites its file at
most every `PUBLISH_EVERY` seconds while it works (a temp file renamed over the old
one: a reader never sees half a file), so counting costs the actors an integer
increment and serving them (`mybus ls --json`, `mybus top`, the metrics endpoint) costs
them nothing. The file lives in the runtime directory (tmpfs, like the rings) where any
process of the user can read it; its process removes it when it closes,
`Registry.reclaim` when the process died (its name is the process's doorbell's).

Knows JSON and files; not rings, registries or actors.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Final

import attrs

__all__ = [
    "PUBLISH_EVERY",
    "ActorCounters",
    "LinkCounters",
    "ProcessCounters",
    "read",
    "remove",
    "write",
]

PUBLISH_EVERY: Final = 0.5  # seconds: `mybus top` refreshes once a second
TEMP_PREFIX: Final = ".tmp-"  # then the doorbell's name: reclaimed with it


@attrs.frozen
class ActorCounters:
    """One hosted actor's counters since its cell was made (restarts keep counting)."""

    name: str
    received: int = 0
    sent: int = 0
    dead_letters: int = 0  # its own messages that came back undelivered
    restarts: int = 0  # restarts of its children it made, as their supervisor
    queued: int = 0  # taken from the rings, waiting for its receive (async, restarting)
    instance: int = 1  # 1 for the first instance, then one more per restart
    parent: str | None = None


@attrs.frozen
class LinkCounters:
    """A gateway's link to one other node."""

    node: str
    state: str  # "up", "connecting", "down" or "unreachable" (past the grace)
    rtt: float | None  # seconds: the last PING's answer; None before the first
    resends: int  # times unacknowledged records went again (a reconnect, a rewind)
    resent_bytes: int
    duplicates: int  # records the peer sent again that this side had taken: dropped
    frames_refused: int  # connections closed on a bad frame (MAC, replay, protocol)
    refused: int  # messages refused (a foreign sender, a reserved target)
    reconnects: int
    delivered: int  # messages from that node written into local rings


@attrs.frozen
class ProcessCounters:
    """What one process publishes: itself and the actors it hosts."""

    pid: int
    node: str
    core: str  # the ring core it runs ("native" or "pure")
    updated: float  # time.time() of the snapshot
    dead_letters: int  # all of the process's, attributed to an actor or not
    duplicates: int = 0  # records a gateway delivered twice, dropped here
    actors: tuple[ActorCounters, ...] = ()
    links: tuple[LinkCounters, ...] = ()  # a gateway's

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProcessCounters:
        raw: dict[str, Any] = json.loads(data)
        actors = tuple(ActorCounters(**a) for a in raw.pop("actors", ()))
        links = tuple(LinkCounters(**a) for a in raw.pop("links", ()))
        return cls(**raw, actors=actors, links=links)


def write(path: Path, counters: ProcessCounters) -> None:
    """Replace ``path`` with ``counters`` (atomically: temp file, then rename).

    Raises:
        OSError: the runtime directory is full or gone (the caller logs it once; the
            counters are only a view, never a reason to stop an actor).
    """
    tmp = path.with_name(TEMP_PREFIX + path.name)
    data = counters.to_json()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(path: Path) -> ProcessCounters | None:
    """The counters at ``path``; None when it is missing or not ours (never raises for
    a file a dying process left half-written: renames make that impossible, but a
    foreign file in the directory is possible)."""
    try:
        return ProcessCounters.from_json(path.read_bytes())
    except (OSError, ValueError, TypeError):
        return None


def remove(path: Path) -> None:
    """Unlink ``path`` and its temp file, if they are there."""
    for p in (path, path.with_name(TEMP_PREFIX + path.name)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
