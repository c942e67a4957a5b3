"""What a node looks like now: its actors, their processes, its rings and its links.

One read of the runtime directory, shared by `mybus ls --json`, `mybus top` and the
metrics endpoint: the registry's entries (who is where), each process's published
counters (`counters.py`), each ring's header (one ``pread`` of 256 bytes, never a
mapping), and ``psutil`` for CPU and memory. Nothing is written and no actor is asked:
reading costs the actors nothing. Rates are differences between two snapshots
(`Rates`), as ``top`` computes them.

Backlog is a process's: rings join processes, so an actor's "mailbox backlog" is what
waits in the rings into its process (every actor of a process shares it), plus its own
queue (`queued`: taken from the rings, waiting for its receive).

Knows the registry's layout, ring headers and counters files; not the rings' contents.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import attrs
import psutil

from mybus_actors import counters
from mybus_actors.counters import LinkCounters, ProcessCounters
from mybus_actors.errors import RingCorrupted
from mybus_actors.registry import (
    Registry,
    is_forward_ring,
    mailbox_name,
    parse_forward_name,
    parse_ring_filename,
)
from mybus_actors.ring import HEADER_SIZE, RingStats, header_stats
from mybus_actors.routing import GATEWAY

__all__ = [
    "ActorView",
    "ProcessView",
    "Rates",
    "RingView",
    "Snapshot",
    "labels",
    "ring_label",
    "sample",
    "take",
    "to_dict",
]


@attrs.frozen
class ProcessView:
    """One process that hosts actors (or the gateway)."""

    pid: int
    mailbox: str
    alive: bool
    cpu_seconds: float | None  # user + system since it started; None: not readable
    rss_bytes: int | None
    counters: ProcessCounters | None  # None: it has published none (yet)
    backlog_bytes: int  # unread in the rings into it
    backlog_messages: int
    full_events: int  # times a sender found a ring into it full


@attrs.frozen
class ActorView:
    name: str
    pid: int
    mailbox: str
    received: int
    sent: int
    dead_letters: int
    restarts: int
    queued: int
    instance: int
    parent: str | None


@attrs.frozen
class RingView:
    file: str
    writer: str  # the writing end's mailbox
    reader: str  # the reading end's mailbox, or "node/actor" for an outbox
    outbox: bool  # a ring into the gateway for another node
    stats: RingStats

    @property
    def unread_messages(self) -> int:
        # Both counts are published with their positions; the two words are read a
        # moment apart, so a copy may catch the reader's count ahead of the writer's.
        return max(0, self.stats.messages_written - self.stats.messages_read)


@attrs.frozen
class Snapshot:
    node: str
    runtime_dir: str
    monotonic: float
    time: float
    processes: dict[str, ProcessView]  # by mailbox
    actors: tuple[ActorView, ...]
    rings: tuple[RingView, ...]
    gateway: ProcessView | None

    @property
    def links(self) -> tuple[LinkCounters, ...]:
        g = self.gateway
        return g.counters.links if g is not None and g.counters is not None else ()

    def names(self) -> dict[str, list[str]]:
        """Per mailbox, the public names its process hosts (for labels)."""
        hosted: dict[str, list[str]] = {}
        for a in self.actors:
            hosted.setdefault(a.mailbox, []).append(a.name)
        if self.gateway is not None:
            hosted.setdefault(self.gateway.mailbox, []).append(GATEWAY)
        return hosted


def _ring_stats(path: Path) -> RingStats | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return header_stats(os.pread(fd, HEADER_SIZE, 0))
    except (OSError, RingCorrupted):
        return None
    finally:
        os.close(fd)


def _usage(pid: int) -> tuple[bool, float | None, int | None]:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            return True, cpu.user + cpu.system, proc.memory_info().rss
    except psutil.AccessDenied:
        return True, None, None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False, None, None


def take(registry: Registry, node: str) -> Snapshot:
    """Read ``registry``'s directory once (see the module's docstring)."""
    entries = registry.list()
    rings: list[RingView] = []
    for fname in _listdir(registry.rings_dir):
        parsed = parse_ring_filename(fname)
        if parsed is None:
            continue
        stats = _ring_stats(registry.rings_dir / fname)
        if stats is None:
            continue
        writer, reader, _gen = parsed
        forward = parse_forward_name(reader) if is_forward_ring(fname) else None
        rings.append(
            RingView(
                file=fname,
                writer=writer,
                reader="/".join(forward) if forward else reader,
                outbox=forward is not None,
                stats=stats,
            )
        )
    into: dict[str, list[RingView]] = {}
    for r in rings:
        into.setdefault(r.reader, []).append(r)
    processes: dict[str, ProcessView] = {}
    actors: list[ActorView] = []
    gateway: ProcessView | None = None
    for e in entries:
        mailbox = mailbox_name(e.doorbell)
        proc = processes.get(mailbox)
        if proc is None:
            alive, cpu, rss = _usage(e.pid)
            mine = into.get(mailbox, [])
            proc = processes[mailbox] = ProcessView(
                pid=e.pid,
                mailbox=mailbox,
                alive=alive,
                cpu_seconds=cpu,
                rss_bytes=rss,
                counters=counters.read(registry.stats_path(e.doorbell)),
                backlog_bytes=sum(r.stats.used for r in mine),
                backlog_messages=sum(r.unread_messages for r in mine),
                full_events=sum(r.stats.full_events for r in mine),
            )
        if e.name == GATEWAY:
            gateway = proc
            continue
        published = _published(proc.counters, e.name)
        actors.append(
            ActorView(
                name=e.name,
                pid=e.pid,
                mailbox=mailbox,
                received=published.received,
                sent=published.sent,
                dead_letters=published.dead_letters,
                restarts=published.restarts,
                queued=published.queued,
                instance=published.instance,
                parent=published.parent,
            )
        )
    return Snapshot(
        node=node,
        runtime_dir=str(registry.root),
        monotonic=time.monotonic(),
        time=time.time(),
        processes=processes,
        actors=tuple(actors),
        rings=tuple(rings),
        gateway=gateway,
    )


def _published(pc: ProcessCounters | None, name: str) -> counters.ActorCounters:
    if pc is not None:
        for a in pc.actors:
            if a.name == name:
                return a
    return counters.ActorCounters(name=name)  # not published yet: all zero


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


@attrs.frozen
class Rates:
    """Per second, between two snapshots of one node."""

    seconds: float
    actor_in: dict[str, float]
    actor_out: dict[str, float]
    ring_messages: dict[str, float]  # by file
    ring_bytes: dict[str, float]
    cpu_percent: dict[str, float]  # by mailbox
    link_delivered: dict[str, float]  # by node

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Rates:
        dt = max(after.monotonic - before.monotonic, 1e-6)

        def per_s(new: float, old: float | None) -> float:
            return max(0.0, new - old) / dt if old is not None else 0.0

        old_actors = {a.name: a for a in before.actors}
        old_rings = {r.file: r.stats for r in before.rings}
        old_links = {link.node: link for link in before.links}
        cpu: dict[str, float] = {}
        for mb, p in after.processes.items():
            q = before.processes.get(mb)
            if p.cpu_seconds is not None and q is not None and q.pid == p.pid:
                cpu[mb] = per_s(p.cpu_seconds, q.cpu_seconds) * 100.0
        ring_messages: dict[str, float] = {}
        ring_bytes: dict[str, float] = {}
        for r in after.rings:
            o = old_rings.get(r.file)
            s = r.stats
            if o is None:
                ring_messages[r.file] = ring_bytes[r.file] = 0.0
                continue
            # The reader publishes its counts as it reads, the writer at its sweeps:
            # whichever moved more is the better measure of this interval.
            ring_messages[r.file] = max(
                per_s(s.messages_written, o.messages_written),
                per_s(s.messages_read, o.messages_read),
            )
            ring_bytes[r.file] = max(
                per_s(s.bytes_written, o.bytes_written), per_s(s.bytes_read, o.bytes_read)
            )
        return cls(
            seconds=dt,
            actor_in={
                a.name: per_s(a.received, _get(old_actors, a.name, "received"))
                for a in after.actors
            },
            actor_out={
                a.name: per_s(a.sent, _get(old_actors, a.name, "sent")) for a in after.actors
            },
            ring_messages=ring_messages,
            ring_bytes=ring_bytes,
            cpu_percent=cpu,
            link_delivered={
                link.node: per_s(link.delivered, _get(old_links, link.node, "delivered"))
                for link in after.links
            },
        )


def _get(table: dict[str, Any], key: str, attr: str) -> float | None:
    item = table.get(key)
    return None if item is None else float(getattr(item, attr))


def to_dict(snap: Snapshot, rates: Rates | None = None) -> dict[str, Any]:
    """The snapshot as plain JSON types: what `mybus ls --json` prints."""
    r = rates

    def process(p: ProcessView) -> dict[str, Any]:
        return {
            "pid": p.pid,
            "alive": p.alive,
            "cpu_seconds": p.cpu_seconds,
            "cpu_percent": r.cpu_percent.get(p.mailbox) if r else None,
            "rss_bytes": p.rss_bytes,
            "core": p.counters.core if p.counters else None,
            "dead_letters": p.counters.dead_letters if p.counters else 0,
            "backlog_bytes": p.backlog_bytes,
            "backlog_messages": p.backlog_messages,
            "full_events": p.full_events,
        }

    actors = []
    for a in snap.actors:
        p = snap.processes[a.mailbox]
        actors.append(
            {
                **attrs.asdict(a),
                **{k: v for k, v in process(p).items() if k not in ("pid", "dead_letters")},
                "in_per_s": r.actor_in.get(a.name) if r else None,
                "out_per_s": r.actor_out.get(a.name) if r else None,
            }
        )
    rings = [
        {
            "file": ring.file,
            "writer": ring.writer,
            "reader": ring.reader,
            "outbox": ring.outbox,
            **attrs.asdict(ring.stats),
            "unread_bytes": ring.stats.used,
            "unread_messages": ring.unread_messages,
            "messages_per_s": r.ring_messages.get(ring.file) if r else None,
            "bytes_per_s": r.ring_bytes.get(ring.file) if r else None,
        }
        for ring in snap.rings
    ]
    gateway = None
    if snap.gateway is not None:
        gateway = {**process(snap.gateway), "mailbox": snap.gateway.mailbox}
    return {
        "node": snap.node,
        "runtime_dir": snap.runtime_dir,
        "time": snap.time,
        "interval": r.seconds if r else None,
        "actors": actors,
        "rings": rings,
        "gateway": gateway,
        "links": [
            {
                **attrs.asdict(link),
                "delivered_per_s": r.link_delivered.get(link.node) if r else None,
            }
            for link in snap.links
        ],
    }


def sample(registry: Registry, node: str, interval: float | None) -> tuple[Snapshot, Rates | None]:
    """One snapshot, or two ``interval`` seconds apart and the rates between them."""
    first = take(registry, node)
    if not interval:
        return first, None
    time.sleep(interval)
    second = take(registry, node)
    return second, Rates.between(first, second)


def labels(snap: Snapshot) -> dict[str, str]:
    """A short label per mailbox: the names it hosts (a ring joins two of them)."""
    out: dict[str, str] = {}
    for mailbox, names in snap.names().items():
        public = [n for n in names if not n.startswith("_")] or names
        shown = ",".join(public[:3])
        out[mailbox] = shown + (f",+{len(public) - 3}" if len(public) > 3 else "")
    return out


def ring_label(ring: RingView, names: dict[str, str]) -> str:
    return f"{names.get(ring.writer, ring.writer)} -> {names.get(ring.reader, ring.reader)}"
