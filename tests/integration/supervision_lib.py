"""Actors for the supervision tests: workers with state and an identity per instance, and
supervisors (one class per strategy) driven by the test through asks."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import mybus_actors as mb


class Crash(Exception):
    pass


class Worker(mb.Actor):
    """Counts; ("crash",) raises; ("whoami",) names this instance, process and parent.

    With ``notify`` (a client's name), on_stop tells it ("stopped", name).
    """

    def __init__(
        self, notify: str | None = None, fail_start: str | None = None,
        slow_start: str | None = None,
    ) -> None:  # fmt: skip
        self.count = 0
        self.instance = uuid.uuid4().hex
        self.notify = notify
        if fail_start is not None and os.path.exists(fail_start):
            raise Crash("refusing to start")
        if slow_start is not None and os.path.exists(slow_start):
            time.sleep(0.5)  # a successor that takes its time: senders wait for it

    def on_stop(self) -> None:
        if self.notify is not None:
            self.tell(self.notify, ("stopped", self.name))

    def receive(self, message: Any) -> None:
        match message:
            case "inc":
                self.count += 1
                self.reply(self.count)
            case "crash":
                raise Crash(f"{self.name} told to crash")
            case "whoami":
                self.reply({"instance": self.instance, "pid": os.getpid(),
                            "parent": self.parent, "count": self.count})  # fmt: skip
            case "stop":
                self.stop()
            case ("hold", path, holding):
                open(holding, "w").close()
                deadline = time.monotonic() + 30
                while not os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.005)
                self.reply("held")
            case _:
                self.reply(message)


class Supervisor(mb.Actor):
    """Spawns and manages children on request; remembers the `Terminated` it got.

    ("spawn", name, restart, process, kwargs) -> the child's address
    ("children",) -> the names of its live children, in start order
    ("kill"|"stop", name) -> "ok" (through the child's Ref)
    ("terminated",) -> [(address, reason), ...]
    """

    def __init__(self, notify: str | None = None) -> None:
        self.terminated: list[tuple[str, str]] = []
        self.notify = notify

    def on_stop(self) -> None:
        if self.notify is not None:
            self.tell(self.notify, ("stopped", self.name))

    def receive(self, message: Any) -> None:
        if isinstance(message, mb.Terminated):
            self.terminated.append((message.address, message.reason))
            if self.notify is not None:
                self.tell(self.notify, ("terminated", message.address, message.reason))
            return
        match message:
            case ("spawn", name, restart, process, kwargs):
                ref = self.spawn(Worker, name, kwargs=kwargs, restart=restart, process=process)
                self.reply(ref.address)
            case ("spawn_supervisor", cls_name, name, restart):
                ref = self.spawn(globals()[cls_name], name, kwargs={"notify": self.notify},
                                 restart=restart)  # fmt: skip
                self.reply(ref.address)
            case ("spawn_pool", name, size, process, routing):
                ref = self.spawn_pool(Worker, name, size, process=process, routing=routing)
                self.reply(ref.address)
            case ("broadcast", name, payload):
                self.children[name].broadcast(payload)
                self.reply("ok")
            case ("children",):
                self.reply(list(self.children))
            case ("refs",):
                self.reply({n: (r.address, r.pid, r.is_alive()) for n, r in self.children.items()})
            case ("kill", name):
                self.children[name].kill()
                self.reply("ok")
            case ("stop", name):
                self.reply(self.children[name].stop())
            case ("terminated",):
                self.reply(list(self.terminated))
            case _:
                raise ValueError(f"Supervisor does not understand {message!r}")


class OneForOneRestart(Supervisor):
    supervision = mb.OneForOne(on_error="restart", max_restarts=3, within=5.0)


class OneForOneStop(Supervisor):
    supervision = mb.OneForOne(on_error="stop")


class OneForAllRestart(Supervisor):
    supervision = mb.OneForAll(on_error="restart")


class RestForOneRestart(Supervisor):
    supervision = mb.RestForOne(on_error="restart")


class UnderFire(Supervisor):
    """For SIGKILL in a row: a small window, so kills spaced out stay within budget."""

    supervision = mb.OneForOne(max_restarts=3, within=1.0, backoff=(0.01, 0.1))


class GivesUp(Supervisor):
    """For kills in a row past the budget: a window far longer than four restarts take,
    however slow the machine is at starting a process."""

    supervision = mb.OneForOne(max_restarts=3, within=30.0, backoff=(0.01, 0.1))


class Many(mb.Actor):
    """("start", n) spawns n in-process children and asks each; replies the timings."""

    async def receive(self, message: Any) -> None:
        match message:
            case ("start", n):
                t0 = time.perf_counter()
                for i in range(n):
                    self.spawn(Worker, f"m{i}")
                started = time.perf_counter() - t0
                futures = [self.ask(f"m{i}", i, timeout=60) for i in range(n)]
                answers = [await f for f in futures]
                self.reply({"started": started, "asked": time.perf_counter() - t0,
                            "answers_ok": answers == list(range(n)),
                            "children": len(self.children)})  # fmt: skip
            case _:
                raise ValueError(f"Many does not understand {message!r}")


class RingNode(mb.Actor):
    """One actor of a ThreadRing: passes the token (hops left) to ``next``; the one that
    sees 0 tells ``done``."""

    def __init__(self, next_name: str, done: str) -> None:
        self.next_name = next_name
        self.done = done

    def receive(self, message: Any) -> None:
        if message == 0:
            self.tell(self.done, "done")
        else:
            self.tell(self.next_name, message - 1)


class ThreadRing(mb.Actor):
    """("run", actors, hops) builds a ring of in-process children, sends the token round
    ``hops`` times, replies the seconds it took."""

    def __init__(self) -> None:
        self.asker: str | None = None
        self.t0 = 0.0

    def receive(self, message: Any) -> None:
        match message:
            case ("run", n, hops):
                for i in range(n):
                    self.spawn(RingNode, f"r{i}", args=(f"r{(i + 1) % n}", self.name))
                self.asker = self.sender
                self.t0 = time.perf_counter()
                self.tell("r0", hops)
            case "done":
                assert self.asker is not None
                self.tell(self.asker, ("ring done", time.perf_counter() - self.t0))
            case _:
                raise ValueError(f"ThreadRing does not understand {message!r}")
