"""A supervision tree: a supervisor with a pool of parsers and a cache, and a parser that
crashes on bad input and comes back.

    python examples/supervision_tree.py [jobs]

    app (OneForOne, on_error="restart")
    ├── cache            in app's process, permanent: remembers results
    └── parsers          a pool of 3 worker processes (parsers.0 .. parsers.2)

Every 10th job is bad input: the parser that gets it raises, the asker gets ActorError,
and the pool's supervisor (its router) starts that parser again in a new process. The
cache, a sibling, keeps its state; the app never notices.
"""

from __future__ import annotations

import os
import sys

import mybus_actors as mb


class Parser(mb.Actor):
    def receive(self, text: str) -> None:
        if not text.isdigit():
            raise ValueError(f"not a number: {text!r}")
        self.reply((int(text), os.getpid()))


class Cache(mb.Actor):
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def receive(self, message: tuple[str, ...]) -> None:
        match message:
            case ("put", key, value):
                self.values[key] = int(value)
            case ("size",):
                self.reply(len(self.values))


class App(mb.Actor):
    supervision = mb.OneForOne(max_restarts=10, within=5.0, on_error="restart")

    def on_start(self) -> None:
        self.spawn(Cache, "cache", restart="permanent")
        self.spawn_pool(Parser, "parsers", 3)

    async def receive(self, message: tuple[str, int]) -> None:
        _, jobs = message
        parsed, failed, pids = 0, 0, set()
        for i in range(jobs):
            text = "oops" if i % 10 == 9 else str(i)
            try:
                value, pid = await self.ask("parsers", text, timeout=10)
            except mb.ActorError:
                failed += 1
                continue
            self.tell("cache", ("put", text, value))
            parsed += 1
            pids.add(pid)
        size = await self.ask("cache", ("size",))
        self.reply({"parsed": parsed, "failed": failed, "cached": size, "processes": len(pids)})


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    app = mb.spawn(App, "app")
    try:
        with mb.connect() as me:
            report = me.ask("app", ("run", jobs), timeout=120)
    finally:
        app.stop()
    print(f"parsed {report['parsed']}, bad input {report['failed']}, "
          f"cached {report['cached']}, on {report['processes']} parser processes")  # fmt: skip
    print(f"every bad input answered with ActorError and its parser restarted: "
          f"{report['parsed'] + report['failed'] == jobs and report['cached'] == report['parsed']}")


if __name__ == "__main__":
    main()
