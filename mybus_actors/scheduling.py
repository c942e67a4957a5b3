"""Scheduling: actors' timers (`send_after`, `every`) and the runtime's own deadlines on
one hashed timer wheel, and asks' timeouts (the deadlines of a `PendingAsks`), with an
injected clock.

A timer belongs to a cell: it stops with the cell (cancelled with it, never fired for an
actor that ended) and with `TimerHandle.cancel`. A repeating timer is re-armed from its
deadline, not from when it fired, so its rate does not drift; one that fell behind (a
long receive) fires once and is re-armed from now, not in a burst. What a timer sends
goes to its own actor (``to`` None, handed over as a message from nobody) or is told to
``to`` as the actor; a send that fails is logged, never raised into the dispatcher.

Knows the wheel, cells' timer sets and a clock; what a message is and how it travels is
the caller's (``offer``, ``send``), so it is tested with a stepped clock and no rings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mybus_actors.asks import AskFuture, PendingAsks
from mybus_actors.cell import Cell, TimerHandle
from mybus_actors.errors import MyBusError
from mybus_actors.timers import TimerHandle as WheelHandle
from mybus_actors.timers import TimerWheel

__all__ = ["Scheduler"]

_log = logging.getLogger(__name__)


class Scheduler:
    """Deadlines of one dispatcher.

    Args:
        clock: a monotonic clock (stepped in tests).
        offer: hands ``message`` to ``cell``'s actor (a timer with no ``to``).
        send: tells ``to`` ``message`` as ``cell``'s actor.
        tick: the wheel's resolution in seconds.
        asks: the pending asks whose deadlines `fire_due` enforces, failing each late
            one with ``ask_error(future)``.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        offer: Callable[[Cell, Any], None],
        send: Callable[[Cell, str, Any], None],
        *,
        tick: float = 0.001,
        asks: PendingAsks | None = None,
        ask_error: Callable[[AskFuture], BaseException] = lambda f: TimeoutError(f.description),
    ) -> None:
        self._clock = clock
        self._offer = offer
        self._send = send
        self.wheel: TimerWheel[Callable[[], None]] = TimerWheel(tick=tick, now=clock())
        self.asks = PendingAsks() if asks is None else asks
        self._ask_error = ask_error

    def __len__(self) -> int:
        return len(self.wheel) + len(self.asks.deadlines)

    def at(self, deadline: float, fire: Callable[[], None]) -> WheelHandle[Callable[[], None]]:
        """Call ``fire`` once the clock has passed ``deadline`` (from `fire_due`)."""
        return self.wheel.schedule(deadline, fire)

    def timer(
        self, cell: Cell, delay: float, interval: float | None, message: Any, to: str | None
    ) -> TimerHandle:
        """An actor's timer: ``message`` after ``delay`` seconds, then every
        ``interval`` seconds if given."""
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        timer = TimerHandle(cell, interval, message, to)
        cell.timers.add(timer)
        self._arm(timer, self._clock() + delay)
        return timer

    def _arm(self, timer: TimerHandle, deadline: float) -> None:
        def fire() -> None:
            if timer.cancelled or timer.cell.finished:
                return
            if timer.interval is not None:
                # From the deadline, not from now: the rate does not drift.
                self._arm(timer, max(deadline + timer.interval, self._clock()))
            else:
                timer.cell.timers.discard(timer)
            if timer.to is None:
                self._offer(timer.cell, timer.message)
            else:
                try:
                    self._send(timer.cell, timer.to, timer.message)
                except (MyBusError, OSError) as err:
                    _log.warning("%s: timer message not sent: %s", timer.cell.address, err)

        timer._wheel_handle = self.wheel.schedule(deadline, fire)

    def fire_due(self) -> int:
        """Fire what is due now, and fail the asks past their deadline; how many."""
        now = self._clock()
        fired = 0
        if len(self.wheel):
            due = self.wheel.advance(now)
            for fire in due:
                fire()
            fired = len(due)
        if self.asks.deadlines:
            fired += self.asks.expire(now, self._ask_error)
        return fired

    def next_deadline(self) -> float | None:
        wheel, asks = self.wheel.next_deadline(), self.asks.next_deadline()
        if wheel is None or asks is None:
            return asks if wheel is None else wheel
        return min(wheel, asks)
