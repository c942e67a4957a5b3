"""`mybus top`: a live view of a node, refreshed about once a second (``q`` quits).

Three tables from two snapshots a second apart (`snapshot.py`): the actors (pid, CPU
and RSS of their process, messages in and out per second, the mailbox backlog of their
process in bytes and messages, its full events, their own queue, dead letters and
restarts), the rings (rate and backlog), and, with a gateway on the node, its links
(state, round trip, resends, duplicates dropped, frames refused, reconnects). ``--once``
prints one frame and exits, for scripts and tests.

Built on ``rich`` (tables, a live screen); reads the runtime directory only.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mybus_actors.registry import Registry
from mybus_actors.snapshot import Rates, Snapshot, labels, ring_label, sample, take

__all__ = ["render", "run"]

_WIDTH_NOT_A_TERMINAL = 160  # --once into a pipe: wide enough that no column is cut


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _rate(r: float | None) -> str:
    if r is None:
        return "-"
    if r >= 1e6:
        return f"{r / 1e6:.2f}M"
    if r >= 1e4:
        return f"{r / 1e3:.1f}k"
    return f"{r:.0f}" if r >= 10 or r == 0 else f"{r:.1f}"


def _rtt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


def render(snap: Snapshot, rates: Rates | None) -> Group:
    """One frame: the header line and the actors, rings and links tables."""
    names = labels(snap)
    head = Text(
        f"mybus top — node {snap.node}  {snap.runtime_dir}  "
        f"{time.strftime('%H:%M:%S', time.localtime(snap.time))}"
        + (f"  (rates over {rates.seconds:.1f}s)" if rates else ""),
        style="bold",
    )
    actors = Table(title="actors", title_justify="left", expand=False)
    for col, right in (
        ("actor", False), ("pid", True), ("cpu %", True), ("rss", True), ("in/s", True),
        ("out/s", True), ("backlog", True), ("unread", True), ("queued", True),
        ("full", True), ("dead letters", True), ("restarts", True),
    ):  # fmt: skip
        actors.add_column(col, justify="right" if right else "left", no_wrap=True)
    for a in snap.actors:
        p = snap.processes[a.mailbox]
        cpu = rates.cpu_percent.get(a.mailbox) if rates else None
        actors.add_row(
            a.name,
            str(a.pid),
            "-" if cpu is None else f"{cpu:.0f}",
            _size(p.rss_bytes),
            _rate(rates.actor_in.get(a.name) if rates else None),
            _rate(rates.actor_out.get(a.name) if rates else None),
            _size(p.backlog_bytes),
            str(p.backlog_messages),
            str(a.queued),
            str(p.full_events),
            str(a.dead_letters),
            str(a.restarts),
        )
    rings = Table(title="rings", title_justify="left")
    for col in ("ring", "msg/s", "bytes/s", "unread", "unread msgs", "written", "full"):
        rings.add_column(col, justify="left" if col == "ring" else "right", no_wrap=True)
    for r in snap.rings:
        rings.add_row(
            ring_label(r, names) + (" (outbox)" if r.outbox else ""),
            _rate(rates.ring_messages.get(r.file) if rates else None),
            _size(rates.ring_bytes.get(r.file)) + "/s" if rates else "-",
            _size(r.stats.used),
            str(r.unread_messages),
            str(r.stats.messages_written),
            str(r.stats.full_events),
        )
    parts: list[Text | Table] = [head, actors, rings]
    if snap.gateway is not None:
        g = snap.gateway
        links = Table(title=f"gateway (pid {g.pid}): links", title_justify="left")
        for col in (
            "node", "state", "rtt", "in/s", "resends", "resent", "duplicates",
            "frames refused", "refused", "reconnects",
        ):  # fmt: skip
            links.add_column(col, justify="left" if col in ("node", "state") else "right")
        for link in snap.links:
            links.add_row(
                link.node,
                link.state,
                _rtt(link.rtt),
                _rate(rates.link_delivered.get(link.node) if rates else None),
                str(link.resends),
                _size(link.resent_bytes),
                str(link.duplicates),
                str(link.frames_refused),
                str(link.refused),
                str(link.reconnects),
            )
        if not snap.links:
            links.add_row("(no links yet)", "", "", "", "", "", "", "", "", "")
        parts.append(links)
    return Group(*parts)


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[bool]:
    """Single keys from a terminal (cbreak mode, restored after); False if not one."""
    try:
        fd = stream.fileno()
        old = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        yield False
        return
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _quit_pressed(stream: TextIO, timeout: float) -> bool:
    """Wait up to ``timeout`` for a key; True if it was q (or the input closed)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return False
    key = os.read(stream.fileno(), 1)
    return key in (b"q", b"Q", b"")


def run(registry: Registry, node: str, *, once: bool, interval: float) -> int:
    """Show the node until ``q`` (or Ctrl-C); with ``once``, print one frame."""
    if once:
        snap, rates = sample(registry, node, interval)
        width = None if sys.stdout.isatty() else _WIDTH_NOT_A_TERMINAL
        Console(width=width).print(render(snap, rates))
        return 0
    console = Console()
    before = take(registry, node)
    with _keys(sys.stdin) as keys, Live(
        render(before, None), console=console, screen=True, auto_refresh=False
    ) as live:
        try:
            while True:
                if keys:
                    if _quit_pressed(sys.stdin, interval):
                        return 0
                else:
                    time.sleep(interval)
                now = take(registry, node)
                live.update(render(now, Rates.between(before, now)), refresh=True)
                before = now
        except KeyboardInterrupt:
            return 0
