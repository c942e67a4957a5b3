"""`mybus`: the operator's command for a node's runtime directory.

    mybus ls [--node N] [--runtime-dir DIR]      actors, their processes, their rings
    mybus clean [--node N] [--runtime-dir DIR]   reclaim what dead processes left behind
    mybus demo                                   the main job (see mybus_actors.demo)

Reads the runtime directory; never writes a ring or talks to an actor.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import sys
from collections.abc import Sequence

from mybus_actors import ring, ringcore
from mybus_actors.errors import RingCorrupted
from mybus_actors.registry import (
    Registry,
    mailbox_name,
    parse_ring_filename,
    resolve_runtime_dir,
)

__all__ = ["main"]


def _ring_stats(path: str) -> ring.RingStats | None:
    """A snapshot of a ring's counters, read from a private copy (nothing is published)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            snapshot = bytearray(m)
        view = ring.Consumer(snapshot)
        try:
            return view.stats()
        finally:
            view.release()
    except (OSError, ValueError, RingCorrupted):
        return None


def _ls(registry: Registry) -> int:
    entries = registry.list()
    print(f"runtime directory {registry.root}")
    print(f"{ringcore.describe()} (in this process; each process says in its own)")
    print(f"{'actor':<32}{'pid':>8}")
    for e in entries:
        print(f"{e.name:<32}{e.pid:>8}")
    # A ring joins two processes' mailboxes: shown as the actors each one hosts.
    hosted: dict[str, list[str]] = {}
    for e in entries:
        hosted.setdefault(mailbox_name(e.doorbell), []).append(e.name)

    def end(mailbox: str) -> str:
        names = hosted.get(mailbox)
        if not names:
            return mailbox
        public = [n for n in names if not n.startswith("_")] or names
        shown = ",".join(public[:3])
        return shown + (f",+{len(public) - 3}" if len(public) > 3 else "")

    rings = sorted(os.listdir(registry.rings_dir))
    if rings:
        print(f"\n{'ring':<48}{'written':>10}{'read':>10}{'unread B':>10}{'full':>6}")
    for fname in rings:
        parsed = parse_ring_filename(fname)
        if parsed is None:
            continue
        label = f"{end(parsed[0])} -> {end(parsed[1])}"
        stats = _ring_stats(str(registry.rings_dir / fname))
        if stats is None:
            print(f"{label:<48}  (unreadable)")
            continue
        print(
            f"{label:<48}{stats.messages_written:>10}"
            f"{stats.messages_read:>10}{stats.used:>10}{stats.full_events:>6}"
        )
    return 0


def _clean(registry: Registry, outboxes: bool) -> int:
    reclaimed = registry.reclaim(outboxes=outboxes)
    for e in reclaimed:
        print(f"reclaimed {e.name} (pid {e.pid} is gone)")
    print(f"{len(reclaimed)} stale entr{'y' if len(reclaimed) == 1 else 'ies'} reclaimed")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mybus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ls", "list actors and rings"), ("clean", "reclaim dead leftovers")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--node", help="default: MYBUS_NODE, else the host name")
        p.add_argument("--runtime-dir", help="default: MYBUS_RUNTIME_DIR, else /dev/shm/...")
        if name == "clean":
            p.add_argument(
                "--outboxes", action="store_true",
                help="also give up the messages queued for other nodes by senders that are"
                " gone, when no gateway runs (they are kept for the next gateway otherwise)",
            )  # fmt: skip
    sub.add_parser("demo", help="run the demo: actors in several processes")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from mybus_actors.demo import main as demo

        demo(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    registry = Registry(resolve_runtime_dir(args.runtime_dir, args.node))
    code = _ls(registry) if args.command == "ls" else _clean(registry, args.outboxes)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
