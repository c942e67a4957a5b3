"""Actors for the process-ring tests: many actors of one process telling many of
another, a checker of per-pair order, and an async actor that is slow on purpose."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import mybus_actors as mb


class OrderCheck(mb.Actor):
    """Takes ("n", sender, i): counts per sender and notes any i out of sequence."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        self.count = 0
        self.out_of_order = 0

    def receive(self, message: Any) -> None:
        match message:
            case ("n", sender, i):
                if i != self.next.get(sender, 0):
                    self.out_of_order += 1
                self.next[sender] = i + 1
                self.count += 1
            case "report":
                self.reply((self.count, self.out_of_order))
            case _:
                raise ValueError(f"OrderCheck does not understand {message!r}")


class Teller(mb.Actor):
    """On "tick" tells ``to`` the next numbered message, up to ``total``; replies
    ("done", name, sent) to "sent?"."""

    def __init__(self, to: str) -> None:
        self.to = to
        self.sent = 0

    def receive(self, message: Any) -> None:
        if message == "tick":
            self.tell(self.to, ("n", self.name, self.sent), timeout=30.0)
            self.sent += 1
        elif message == "sent?":
            self.reply(self.sent)
        else:
            raise ValueError(f"Teller does not understand {message!r}")


class Receivers(mb.Actor):
    """Hosts ``n`` OrderCheck children r0..r<n-1> in this process; "report" gathers theirs."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_start(self) -> None:
        for i in range(self.n):
            self.spawn(OrderCheck, f"r{i}")

    async def receive(self, message: Any) -> None:
        if message == "report":
            futures = [self.ask(f"r{i}", "report", timeout=60) for i in range(self.n)]
            self.reply([await f for f in futures])
        else:
            raise ValueError(f"Receivers does not understand {message!r}")


class Senders(mb.Actor):
    """Hosts ``n`` Teller children s0..s<n-1>, child i telling r<i>. ("run", count) has
    each tell ``count`` numbered messages, interleaved one by one across the children
    (every message switches the ring to another pair); replies the seconds taken."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_start(self) -> None:
        for i in range(self.n):
            self.spawn(Teller, f"s{i}", kwargs={"to": f"r{i}"})

    async def receive(self, message: Any) -> None:
        match message:
            case ("run", count):
                t0 = time.perf_counter()
                for _ in range(count):
                    for i in range(self.n):
                        self.tell(f"s{i}", "tick")
                    await asyncio.sleep(0)  # let the ticks run: the queue stays short
                futures = [self.ask(f"s{i}", "sent?", timeout=60) for i in range(self.n)]
                sent = [await f for f in futures]
                self.reply((time.perf_counter() - t0, sent))
            case _:
                raise ValueError(f"Senders does not understand {message!r}")


class Slow(mb.Actor):
    """An async actor that takes ``seconds`` per message (awaiting, so its process's
    other actors go on); counts what it handled."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.count = 0

    async def receive(self, message: Any) -> None:
        if message == "count?":
            self.reply(self.count)
            return
        await asyncio.sleep(self.seconds)
        self.count += 1


class Quick(mb.Actor):
    def receive(self, message: Any) -> None:
        self.reply(message)


class SlowAndQuick(mb.Actor):
    """Hosts a Slow child "slow" and a Quick child "quick" in this process."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_start(self) -> None:
        self.spawn(Slow, "slow", kwargs={"seconds": self.seconds})
        self.spawn(Quick, "quick")

    def receive(self, message: Any) -> None:
        raise ValueError(f"SlowAndQuick does not understand {message!r}")


class Flooder(mb.Actor):
    """("flood", to, size, timeout): tells ``to`` messages of ``size`` bytes until a
    tell raises; replies (messages sent, the exception's class name, seconds it took)."""

    def receive(self, message: Any) -> None:
        match message:
            case ("flood", to, size, timeout):
                sent = 0
                payload = b"x" * size
                t0 = time.monotonic()
                while time.monotonic() - t0 < 60:
                    try:
                        self.tell(to, payload, timeout=timeout)
                    except mb.MyBusError as exc:
                        self.reply((sent, type(exc).__name__, time.monotonic() - t0))
                        return
                    sent += 1
                self.reply((sent, "none", time.monotonic() - t0))
            case _:
                raise ValueError(f"Flooder does not understand {message!r}")
