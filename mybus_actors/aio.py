"""Async receives: the asyncio loop a dispatcher runs ``async def receive`` in.

A runtime whose actors declare ``async def receive`` gets one asyncio loop, made on
first use. Each such receive is a task owned by its cell; the dispatcher runs the loop
for one pass per duty cycle (`run_once`) and, when it would sleep, sleeps *in* the loop
(`sleep`): the descriptors it would poll become readers, so awaiting receives progress
while it waits, and a finished task ends the sleep at once. Tasks that finished are
handed back with their cells (`settle`), for the dispatcher to start their actors' next
messages.

Knows asyncio and which cell a task belongs to; not rings, actors' code or messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from mybus_actors.cell import Cell

__all__ = ["AsyncReceives"]


class AsyncReceives:
    """The asyncio loop of one dispatcher and the receives running in it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        # The receives running, and whose: the dispatcher tests it once per duty cycle
        # (a dict's truth, not a call).
        self.tasks: dict[asyncio.Task[None], Cell] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def __bool__(self) -> bool:
        """Some receive is running."""
        return bool(self.tasks)

    def start(self, cell: Cell, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` (an async receive of ``cell``'s actor) as a task of the loop."""
        task = self.loop.create_task(coro)
        self.tasks[task] = cell
        return task

    def run_once(self) -> list[tuple[asyncio.Task[None], Cell]]:
        """Run the loop's ready callbacks once; return the tasks that finished."""
        loop = self.loop
        loop.call_soon(loop.stop)
        loop.run_forever()
        return self.settle()

    def settle(self) -> list[tuple[asyncio.Task[None], Cell]]:
        done = [t for t in self.tasks if t.done()]
        return [(task, self.tasks.pop(task)) for task in done]

    def sleep(self, fds: Sequence[int], timeout: float) -> list[int]:
        """Run the loop until one of ``fds`` is readable, a task finishes, or ``timeout``
        seconds pass; return the readable descriptors."""
        loop = self.loop
        ready: list[int] = []

        def woke(fd: int) -> None:
            ready.append(fd)
            loop.stop()

        for fd in fds:
            loop.add_reader(fd, woke, fd)
        for task in self.tasks:
            task.add_done_callback(lambda _: loop.stop())
        timer = loop.call_later(max(timeout, 0.0), loop.stop)
        try:
            loop.run_forever()
        finally:
            timer.cancel()
            for fd in fds:
                loop.remove_reader(fd)
        return ready

    def close(self) -> None:
        """Cancel what still runs, let it unwind, close the loop."""
        if self._loop is None:
            return
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            self._loop.run_until_complete(asyncio.gather(*self.tasks, return_exceptions=True))
        self.tasks.clear()
        self._loop.close()
