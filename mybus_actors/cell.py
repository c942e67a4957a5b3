"""One hosted actor's record in its dispatcher, its timers' handles, and a watch.

Plain state, no behaviour beyond a timer's `cancel`: the dispatcher (`runtime.Runtime`)
reads and writes it. A cell outlives the instances of a restarted actor: its name, its
queue of messages that wait, its watchers and its children's supervision stay with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from mybus_actors.codec import Kind

if TYPE_CHECKING:
    from mybus_actors.actor import Actor
    from mybus_actors.ref import Ref
    from mybus_actors.supervision import Supervisor

__all__ = ["Cell", "TimerHandle", "Watch"]

_USER = int(Kind.USER)


class TimerHandle:
    """What `send_after` and `every` return: `cancel()` it to stop the timer."""

    __slots__ = ("_wheel_handle", "cancelled", "cell", "interval", "message", "to")

    def __init__(self, cell: Cell, interval: float | None, message: Any, to: str | None):
        self.cell = cell
        self.interval = interval
        self.message = message
        self.to = to
        self.cancelled = False
        self._wheel_handle: Any = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._wheel_handle is not None:
            self._wheel_handle.cancel()
        self.cell.timers.discard(self)


class Cell:
    """The runtime's record of one hosted actor."""

    __slots__ = (
        "actor",
        "address",
        "backlog",
        "child_refs",
        "cur_corr",
        "cur_kind",
        "cur_sender",
        "dead_letters",
        "failing",
        "finished",
        "instance",
        "is_async",
        "killing",
        "name",
        "parent",
        "received",
        "restart_timers",
        "restarting",
        "restarts",
        "sent",
        "stopping",
        "supervisor",
        "task",
        "timers",
        "watchers",
        "watching",
    )

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.actor: Actor | None = None
        self.is_async = False
        self.task: asyncio.Task[None] | None = None
        self.backlog: deque[tuple[str | None, int, int, Any]] = deque()
        self.cur_sender: str | None = None
        self.cur_kind = _USER
        self.cur_corr = 0
        self.stopping = False
        self.finished = False
        self.timers: set[TimerHandle] = set()
        self.watchers: set[str] = set()  # addresses to notify when this actor ends
        self.watching: set[str] = set()  # addresses this actor watches
        # Supervision: the parent hosted here (None: a top-level actor, or a child of an
        # actor in another process), this actor's own children, the Refs handed out
        # for them, and their restarts that wait for their backoff.
        self.parent: Cell | None = None
        self.supervisor: Supervisor | None = None
        self.child_refs: dict[str, Ref] = {}
        self.restart_timers: dict[str, Any] = {}
        self.instance = 0  # how many instances have been built (1 after the first start)
        self.restarting = False  # between instances: messages wait in `backlog`
        self.failing = False  # receive raised and the supervisor ends this instance
        self.killing = False  # Ref.kill: end without on_stop
        # Counted for `mybus top` and metrics (published by the runtime, `counters.py`):
        # messages handed to it, messages it sent, its own that came back undelivered,
        # restarts of its children it made.
        self.received = 0
        self.sent = 0
        self.dead_letters = 0
        self.restarts = 0


class Watch:
    __slots__ = ("address", "cells", "pidfd", "registrant")

    def __init__(self, address: str, pidfd: int | None) -> None:
        self.address = address
        self.pidfd = pidfd
        self.cells: set[str] = set()
        # The cell whose name the watch request went under: the notice comes to it,
        # even after it has gone (the runtime passes a notice for a gone cell on).
        self.registrant = ""
