"""Actors for the operations tests (`test_operations.py`): a pump that keeps a ring busy,
a counter it feeds, a sink to stop with SIGSTOP, and an echo on the other node."""

from __future__ import annotations

import os
from typing import Any

import mybus_actors as mb

BURST = 200  # messages per turn of the pump; then it yields to its own mailbox


class Counter(mb.Actor):
    """Counts what it gets; "count?" answers the count."""

    def __init__(self) -> None:
        self.count = 0

    def receive(self, message: Any) -> None:
        if message == "count?":
            self.reply(self.count)
        else:
            self.count += 1


class Pump(mb.Actor):
    """("pump", to): sends small dicts to ``to`` until stopped, a burst per turn (its
    own stop and asks get through between turns). "pid?" answers its pid."""

    def __init__(self) -> None:
        self.to: str | None = None
        self.sent = 0

    def receive(self, message: Any) -> None:
        match message:
            case ("pump", to):
                self.to = to
                self.tell(self.name, "turn")
                self.reply("pumping")
            case "turn" if self.to is not None:
                for _ in range(BURST):
                    self.tell(self.to, {"n": self.sent, "pad": "x" * 16}, timeout=30)
                    self.sent += 1
                self.tell(self.name, "turn")
            case "pid?":
                self.reply(os.getpid())
            case _:
                pass


class Echo(mb.Actor):
    def receive(self, message: Any) -> None:
        self.reply(message)


class Flaky(mb.Actor):
    """Raises on "crash" (its supervisor restarts it); answers "instance?"."""

    def receive(self, message: Any) -> None:
        if message == "crash":
            raise RuntimeError("crash on purpose")
        self.reply(message)


class Parent(mb.Actor):
    """"start": spawns ``flaky`` here, restarted whenever it crashes (OneForOne)."""

    supervision = mb.OneForOne(on_error="restart", max_restarts=10)

    def receive(self, message: Any) -> None:
        if message == "start":
            self.spawn(Flaky, "flaky", restart="permanent")
            self.reply("started")


class Teller(mb.Actor):
    """("tell", to, n): tells ``to`` n messages; counts what comes back undelivered."""

    def __init__(self) -> None:
        self.returned = 0

    def on_dead_letter(self, message: Any, reason: str) -> None:
        self.returned += 1

    def receive(self, message: Any) -> None:
        match message:
            case ("tell", to, n):
                for i in range(n):
                    self.tell(to, ("letter", i))
                self.reply("told")
            case "returned?":
                self.reply(self.returned)
