"""The main job: actors in several processes talking through shared memory.

``python -m mybus_actors.demo`` runs on the embedded default (no gateway, no config):
it spawns a counter, an echo and a ping-pong pair, each in its own process, streams
messages, asks, lets two actors play ping-pong, prints what happened and how fast, then
stops everything and checks that nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import mybus_actors as mb
from mybus_actors.ref import close_clients
from mybus_actors.ringcore import describe

__all__ = ["main"]


class Counter(mb.Actor):
    """Counts what it is told; answers "count?" with the count."""

    def on_start(self) -> None:
        self.count = 0

    def receive(self, message: object) -> None:
        if message == "count?":
            self.reply(self.count)
        else:
            self.count += 1


class Echo(mb.Actor):
    def receive(self, message: object) -> None:
        self.reply(message)


class Pong(mb.Actor):
    def receive(self, message: object) -> None:
        self.reply(message)


class Ping(mb.Actor):
    """Plays ``rounds`` asks against another actor and reports how long they took."""

    async def receive(self, message: tuple[str, int]) -> None:
        opponent, rounds = message
        start = time.perf_counter()
        for i in range(rounds):
            assert await self.ask(opponent, i) == i
        self.reply(time.perf_counter() - start)


def _stream(me: mb.Client, message: object, count: int) -> float:
    """Tell ``count`` copies to the counter; the final ask is the barrier. Messages/s."""
    before = me.ask("counter", "count?")
    start = time.perf_counter()
    for _ in range(count):
        me.tell("counter", message)
    after = me.ask("counter", "count?", timeout=60)
    elapsed = time.perf_counter() - start
    assert after - before == count, (before, after, count)
    return count / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="messages per stream")
    parser.add_argument("--asks", type=int, default=5_000, help="ask round trips")
    args = parser.parse_args(argv)

    # A private runtime directory, so the demo neither meets nor leaves anything else.
    root = Path(tempfile.mkdtemp(prefix="mybus-demo-", dir="/dev/shm"))
    os.environ["MYBUS_RUNTIME_DIR"] = str(root)
    refs: list[mb.Ref] = []
    try:
        t0 = time.perf_counter()
        refs = [
            mb.spawn(Counter, "counter"),
            mb.spawn(Echo, "echo"),
            mb.spawn(Pong, "pong"),
            mb.spawn(Ping, "ping"),
        ]
        started = time.perf_counter() - t0
        print(f"spawned {len(refs)} actors in {started:.2f} s (runtime dir {root}; {describe()}):")
        for ref in refs:
            print(f"  {ref.address:<20} pid {ref.pid}")
        with mb.connect() as me:
            rates = {
                "64 B bytes": _stream(me, b"x" * 64, args.count),
                "small dict": _stream(me, {"i": 1, "v": "x" * 40}, args.count),
                "4 KiB bytes": _stream(me, b"x" * 4096, args.count // 4),
            }
            rtts = []
            for i in range(args.asks):
                t = time.perf_counter()
                assert me.ask("echo", i) == i
                rtts.append(time.perf_counter() - t)
            played = me.ask("ping", ("pong", args.asks), timeout=120)
        print(f"\n{'client -> counter, tell':<28}{'messages/s':>12}")
        for name, rate in rates.items():
            print(f"  {name:<26}{rate:>12,.0f}")
        print(f"client -> echo, ask:         median {statistics.median(rtts) * 1e6:.0f} us")
        print(f"ping -> pong, actor to actor: {played / args.asks * 1e6:.0f} us per ask")
    finally:
        for ref in refs:
            ref.stop()
        close_clients()
        left = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nstopped {len(refs)} actors; files left behind: {left or 'none'}")


if __name__ == "__main__":
    main()
