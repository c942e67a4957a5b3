"""Actor classes for test_actors.py, importable by the processes `spawn` starts.

`spawn` passes the parent's ``sys.path`` to the child as PYTHONPATH, so a class defined
here travels by reference (``actors_lib.Echo``) and the child imports this module. Every
wait inside an actor is bounded, so a test that fails half-way never leaves an actor
blocked for ever (its Ref is stopped or killed by the test's fixture anyway).

Messages are tuples whose first item is a verb; anything else is echoed back.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from waiting import wait_for_file

import mybus_actors as mb

HOLD_LIMIT = 30.0  # the longest any actor here waits for a release file


class Boom(Exception):
    """What `Echo` raises on ("raise", text): importable, so it pickles by reference."""


class Echo(mb.Actor):
    """Echoes whatever it gets; a few verbs exercise the rest of the Actor API.

    With ``notify`` (a client's name), on_start tells it ("started", address) unless
    ``greet`` is false, on_stop tells it ("stopped", address), and "hold" tells it
    ("holding", value) before waiting.
    """

    def __init__(self, notify: str | None = None, greet: bool = True) -> None:
        self.notify = notify
        self.greet = greet
        self.events = ["__init__"]
        self.name_in_init = self.name

    def on_start(self) -> None:
        self.events.append("on_start")
        if self.notify is not None and self.greet:
            self.tell(self.notify, ("started", self.address))

    def on_stop(self) -> None:
        if self.notify is not None:
            self.tell(self.notify, ("stopped", self.address))

    def receive(self, message: Any) -> None:
        if len(self.events) < 3:
            self.events.append("receive")
        if not (isinstance(message, tuple) and message):
            self.reply(message)
            return
        match message:
            case ("whoami",):
                self.reply(
                    {
                        "name": self.name,
                        "address": self.address,
                        "node": self.node,
                        "sender": self.sender,
                        "pid": os.getpid(),
                        "events": list(self.events),
                        "name_in_init": self.name_in_init,
                    }
                )
            case ("raise", text):
                raise Boom(text)
            case ("busy", seconds):
                end = time.perf_counter() + seconds  # on the CPU, as a compute step is
                while time.perf_counter() < end:
                    pass
                self.reply(seconds)
            case ("ignore",):
                pass  # never answered: the asker times out
            case ("hold", path, value):
                if self.notify is not None:
                    self.tell(self.notify, ("holding", value))
                wait_for_file(path)
                self.reply(value)
            case ("hold_then_stop", path):
                if self.notify is not None:
                    self.tell(self.notify, ("holding", self.address))
                wait_for_file(path)
                self.stop()
            case ("forward", to, payload):
                self.tell(to, payload)
            case ("try_tell", to, payload):
                try:
                    self.tell(to, payload)
                except Exception as exc:
                    self.reply(type(exc).__name__)
                else:
                    self.reply("sent")
            case ("reply_unpicklable",):
                self.reply(_Unpicklable())
            case ("ask_result", to, payload):
                # A plain receive that blocks on its own dispatcher's future.
                try:
                    answer = self.ask(to or self.address, payload).result()
                except Exception as exc:
                    self.reply(type(exc).__name__)
                else:
                    self.reply(("no error", answer))
            case _:
                self.reply(message)


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


class Counter(mb.Actor):
    """Counts the bytes messages it gets; remembers the ids of ("n", i) messages.

    ("hold", path) blocks until ``path`` exists; "count?" answers (count, total bytes).
    With ``notify``, "hold" first tells it ("holding", address), and on_stop tells it
    ("stopped", address, [ids handled]).
    """

    def __init__(self, notify: str | None = None) -> None:
        self.notify = notify
        self.count = 0
        self.nbytes = 0
        self.handled: list[int] = []

    def on_stop(self) -> None:
        if self.notify is not None:
            self.tell(self.notify, ("stopped", self.address, self.handled))

    def receive(self, message: Any) -> None:
        if isinstance(message, bytes):
            self.count += 1
            self.nbytes += len(message)
        elif message == "count?":
            self.reply((self.count, self.nbytes))
        elif isinstance(message, tuple) and message[0] == "n":
            self.handled.append(message[1])
        elif isinstance(message, tuple) and message[0] == "hold":
            if self.notify is not None:
                self.tell(self.notify, ("holding", self.address))
            wait_for_file(message[1])
        else:
            raise ValueError(f"Counter does not understand {message!r}")


class Pusher(mb.Actor):
    """Tells another actor many messages; forwards its dead letters to ``notify``."""

    def __init__(self, notify: str) -> None:
        self.notify = notify

    def on_dead_letter(self, message: Any, reason: str) -> None:
        self.tell(self.notify, ("dead", message, reason))

    def receive(self, message: Any) -> None:
        match message:
            case ("flood", to, n):
                for i in range(n):
                    self.tell(to, ("n", i))
                self.reply(n)
            case ("try_tell", to, payload):
                try:
                    self.tell(to, payload)
                except Exception as exc:
                    self.reply(type(exc).__name__)
                else:
                    self.reply("sent")
            case _:
                raise ValueError(f"Pusher does not understand {message!r}")


class Producer(mb.Actor):
    """On ("go", to, n): tells ``to`` (name, i) for i in range(n), then (name, "end")."""

    def receive(self, message: Any) -> None:
        match message:
            case ("go", to, n):
                for i in range(n):
                    self.tell(to, (self.name, i))
                self.tell(to, (self.name, "end"))
                self.reply(("done", self.name))
            case _:
                raise ValueError(f"Producer does not understand {message!r}")


class Collector(mb.Actor):
    """Collects (producer, i) per sender; tells ``notify`` once every producer ended.

    "report" answers {sender address: [(producer, i), ...]} in arrival order.
    """

    def __init__(self, producers: list[str], notify: str) -> None:
        self.expected = set(producers)
        self.ended: set[str] = set()
        self.notify = notify
        self.got: dict[str, list[tuple[str, int]]] = {}

    def receive(self, message: Any) -> None:
        if message == "report":
            self.reply(self.got)
            return
        producer, i = message
        if i == "end":
            self.ended.add(producer)
            if self.ended == self.expected:
                self.tell(self.notify, ("all ended", sorted(self.ended)))
            return
        sender = self.sender
        assert sender is not None
        self.got.setdefault(sender, []).append((producer, i))


class Ticker(mb.Actor):
    """Timers: "start" begins ``every(0.05, "tick")``; tells ``notify`` at ``milestone``.

    "count?" answers the tick count, "cancel" cancels the ticks and answers the count.
    ("after", delay, payload, to) schedules ``send_after`` to ``to``; ("after_cancelled",
    ...) schedules one and cancels it at once; ("after_self", delay, payload) schedules
    one to itself, which it forwards to ``notify`` when it fires.
    """

    INTERVAL = 0.05

    def __init__(self, notify: str, milestone: int = 20) -> None:
        self.notify = notify
        self.milestone = milestone
        self.ticks = 0
        self.tick_senders: set[str | None] = set()
        self.handle: mb.TimerHandle | None = None

    def receive(self, message: Any) -> None:
        match message:
            case "start":
                self.handle = self.every(self.INTERVAL, "tick")
                self.reply("started")
            case "tick":
                self.ticks += 1
                self.tick_senders.add(self.sender)
                if self.ticks == self.milestone:
                    self.tell(self.notify, ("ticks", self.ticks))
            case "count?":
                self.reply(self.ticks)
            case "tick senders?":
                self.reply(self.tick_senders)
            case "cancel":
                assert self.handle is not None
                self.handle.cancel()
                self.reply(self.ticks)
            case ("after", delay, payload, to):
                self.send_after(delay, payload, to=to)
                self.reply("scheduled")
            case ("after_cancelled", delay, payload, to):
                self.send_after(delay, payload, to=to).cancel()
                self.reply("cancelled")
            case ("after_self", delay, payload):
                self.send_after(delay, ("fired", payload))
                self.reply("scheduled")
            case ("fired", payload):
                self.tell(self.notify, payload)
            case _:
                raise ValueError(f"Ticker does not understand {message!r}")


class Relay(mb.Actor):
    """``async def receive``: awaits asks to other actors, then replies what they said."""

    async def receive(self, message: Any) -> None:
        match message:
            case ("relay", to, payload):
                answer = await self.ask(to, payload, timeout=HOLD_LIMIT)
                self.reply(answer)
            case ("relay_twice", to, first, second):
                a = await self.ask(to, first, timeout=HOLD_LIMIT)
                b = await self.ask(to, second, timeout=HOLD_LIMIT)
                self.reply((a, b))
            case ("relay_within", to, payload, timeout):
                # How long the ask took, and how it ended (an AskTimeout, by name).
                started = time.monotonic()
                try:
                    outcome: Any = await self.ask(to, payload, timeout=timeout)
                except mb.AskTimeout as exc:
                    outcome = ("AskTimeout", str(exc))
                self.reply((outcome, time.monotonic() - started))
            case ("relay_then_sleep", to, payload, seconds):
                # An asyncio timer after an ask: the loop still runs for the receive.
                answer = await self.ask(to, payload, timeout=HOLD_LIMIT)
                await asyncio.sleep(seconds)
                self.reply((answer, asyncio.current_task() is not None))
            case _:
                self.reply(message)


class Watcher(mb.Actor):
    """("watch", address) watches it; every `Terminated` is forwarded to ``forward``.

    ("watch_synced", address) also has the target (an `Echo`) tell ``forward``
    ("synced", address) once it has read the watch request.
    """

    def __init__(self, forward: str) -> None:
        self.forward = forward

    def receive(self, message: Any) -> None:
        if isinstance(message, mb.Terminated):
            self.tell(self.forward, message)
            return
        match message:
            case ("watch", address):
                self.watch(address)
                self.reply("watching")
            case ("watch_synced", address):
                # A barrier: the target reads this tell after the watch request (same
                # ring, FIFO), then forwards ("synced", address) to ``forward``.
                self.watch(address)
                self.tell(address, ("forward", self.forward, ("synced", address)))
                self.reply("watching")
            case ("unwatch", address):
                self.unwatch(address)
                self.reply("unwatched")
            case _:
                raise ValueError(f"Watcher does not understand {message!r}")
