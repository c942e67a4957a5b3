"""The dispatcher: one process's duty cycle, and how it idles between cycles.

A duty cycle (`Dispatcher.do_work`) is, in this order: the timers that are due, the
local queue (messages between actors of this process), one poll of the rings, the
wake-ups of async receives whose asks were answered and a pass of their asyncio loop
if it has something to do, and the stop pass (cells marked to end). It
returns how much it did; with nothing done the dispatcher idles (`idle`): it spins for
``spin`` seconds (a peer usually answers within tens of microseconds), then announces
that it may sleep, re-checks, and sleeps on its descriptors (the doorbell, the wake-up
socket, watched processes' pidfds, its parent's) until the next timer is due, in the
asyncio loop when receives await.

Knows the order of a cycle and the idle strategy; what each step means (delivering,
ending cells, what a readable descriptor says) is its host's (`DispatchHost`).
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable, Sequence
from typing import Protocol

from mybus_actors.aio import AsyncReceives
from mybus_actors.cell import Cell
from mybus_actors.mailbox import Endpoint, Payload
from mybus_actors.scheduling import Scheduler

__all__ = ["BUDGET", "DispatchHost", "Dispatcher"]

BUDGET = 64  # messages per ring per poll: a chatty sender cannot starve others


class DispatchHost(Protocol):
    """What a `Dispatcher` needs of the runtime that hosts it."""

    def run_local(self) -> int: ...
    def has_local(self) -> bool: ...
    def deliver(self, sender: str, receiver: str, items: Sequence[tuple[int, Payload]]) -> None: ...
    def settle(self, done: list[tuple[asyncio.Task[None], Cell]]) -> int: ...
    def stop_pass(self) -> None: ...
    def sleep_fds(self) -> list[int]: ...
    def woken(self, fd: int) -> None: ...


class Dispatcher:
    """The duty cycle and idling of one runtime.

    Args:
        host: the runtime (see `DispatchHost`).
        endpoint, scheduler, aio: its mailboxes, deadlines and async receives.
        poller: its poll set (the doorbell and the other descriptors it sleeps on).
        clock: the scheduler's clock.
        spin: seconds to poll before sleeping.
    """

    def __init__(
        self,
        host: DispatchHost,
        endpoint: Endpoint,
        scheduler: Scheduler,
        aio: AsyncReceives,
        poller: select.poll,
        clock: Callable[[], float],
        spin: float,
    ) -> None:
        self._host = host
        self._endpoint = endpoint
        self._scheduler = scheduler
        self._wheel = scheduler.wheel  # its length is read each cycle: a call less
        self._asks = scheduler.asks  # and whether asks have deadlines
        self._aio = aio
        self._poller = poller
        self._clock = clock
        self.spin = spin

    def do_work(self) -> int:
        """One duty cycle (see the module's docstring); returns the work done."""
        host = self._host
        work = 0
        if len(self._wheel) or self._asks.deadlines:
            work += self._scheduler.fire_due()
        work += host.run_local()
        for sender, receiver, items in self._endpoint.poll_batches(BUDGET):
            work += len(items)
            host.deliver(sender, receiver, items)
        if self._aio.tasks:
            steps, done = self._aio.run_due()
            work += steps + host.settle(done)
        host.stop_pass()
        return work

    def sleep_timeout(self) -> float:
        """How long a sleep may last: until the next deadline, within the endpoint's bound."""
        deadline = self._scheduler.next_deadline()
        timeout = 3600.0 if deadline is None else deadline - self._clock()
        return self._endpoint.sleep_bound(timeout)

    def idle(self) -> None:
        """Spin, then sleep until something may be due; then tell the host which of its
        descriptors woke it."""
        endpoint = self._endpoint
        host = self._host
        if endpoint.spin_for(self.spin, host.has_local):
            return
        if not endpoint.prepare_sleep():
            return
        ready: list[int] = []
        try:
            timeout = self.sleep_timeout()
            if self._aio.tasks:
                ready = self._aio.sleep([endpoint.bell_fd, *host.sleep_fds()], timeout)
                host.settle(self._aio.settle())
            elif timeout > 0:
                ready = [fd for fd, _ in self._poller.poll(timeout * 1000.0)]
        finally:
            endpoint.finish_sleep()
        for fd in ready:
            host.woken(fd)
