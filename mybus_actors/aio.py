"""Async receives: the asyncio loop a dispatcher runs ``async def receive`` in.

A runtime whose actors declare ``async def receive`` gets one asyncio loop, made on
first use. Each such receive is a task owned by its cell. Once per duty cycle the
dispatcher calls `run_due`: it runs the wake-ups of tasks whose asks were answered
(`DispatchLoop.step_soon`: the task steps at once, without a pass of the loop), then a
pass of the loop only if the loop has something to do (a callback ready, a timer due,
a descriptor of its own to watch): a pass, ``run_forever`` until a ``stop``, costs
several microseconds, more than the rest of an ask between two processes. When the
dispatcher would sleep, it sleeps *in* the loop (`sleep`): the descriptors it would poll
become readers, so awaiting receives progress while it waits, and a finished task ends
the sleep at once. Tasks that finished are handed back with their cells (`settle`), for
the dispatcher to start their actors' next messages.

Knows asyncio and which cell a task belongs to; not rings, actors' code or messages.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from contextvars import Context
from typing import Any

from mybus_actors.cell import Cell

__all__ = ["AsyncReceives", "DispatchLoop"]


class DispatchLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, plus a queue of task wake-ups its dispatcher runs itself
    (the `asks.StepsTasks` an awaited `AskFuture` looks for)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: deque[tuple[Callable[[Any], object], object, Context | None]] = deque()

    def step_soon(
        self, callback: Callable[[Any], object], arg: object, context: Context | None
    ) -> None:
        if self.is_running():  # inside a pass (a task's own code answered an ask)
            self.call_soon(callback, arg, context=context)
        else:
            self.steps.append((callback, arg, context))

    def run_steps(self) -> int:
        """Run the queued wake-ups, as the loop's own callbacks would run; how many.

        The loop counts as running meanwhile (``get_running_loop`` works in the task),
        as it does for ``run_forever``'s callbacks.
        """
        steps = self.steps
        ran = 0
        asyncio._set_running_loop(self)
        try:
            while steps:
                callback, arg, context = steps.popleft()
                if context is None:
                    callback(arg)
                else:
                    context.run(callback, arg)
                ran += 1
        finally:
            asyncio._set_running_loop(None)
        return ran

    def has_work(self) -> bool:
        """A pass of the loop would do something: a callback is ready, a timer is due,
        or a descriptor besides the loop's own wake-up pipe is watched (a receive awaits
        I/O, which only a pass's ``select`` notices).

        Reads `BaseEventLoop`'s ``_ready``, ``_scheduled`` and ``_selector``, the same
        in every CPython 3 (3.4-3.13): asyncio offers no public "anything to do?".
        """
        inner: Any = self  # typeshed leaves these attributes out
        if inner._ready:
            return True
        scheduled = inner._scheduled
        if scheduled and scheduled[0].when() <= self.time():
            return True
        return len(inner._selector.get_map()) > 1


class AsyncReceives:
    """The asyncio loop of one dispatcher and the receives running in it."""

    def __init__(self) -> None:
        self._loop: DispatchLoop | None = None
        # The receives running, and whose: the dispatcher tests it once per duty cycle
        # (a dict's truth, not a call).
        self.tasks: dict[asyncio.Task[None], Cell] = {}

    @property
    def loop(self) -> DispatchLoop:
        if self._loop is None:
            self._loop = DispatchLoop()
        return self._loop

    def __bool__(self) -> bool:
        """Some receive is running."""
        return bool(self.tasks)

    def start(self, cell: Cell, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` (an async receive of ``cell``'s actor) as a task of the loop."""
        task = self.loop.create_task(coro)
        self.tasks[task] = cell
        return task

    def run_due(self) -> tuple[int, list[tuple[asyncio.Task[None], Cell]]]:
        """Step the tasks whose asks were answered, then run one pass of the loop if it
        has something to do; return how many wake-ups ran, and the tasks that finished.

        A pass is not counted as work: a receive awaiting I/O would have the loop pass
        every cycle, and the dispatcher would never sleep.
        """
        loop = self.loop
        steps = loop.run_steps() if loop.steps else 0
        if loop.has_work():
            loop.call_soon(loop.stop)
            loop.run_forever()
        return steps, self.settle()

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
