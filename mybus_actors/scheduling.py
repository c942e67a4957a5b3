"""Scheduling: actors' timers (`send_after`, `every`) and the runtime's own deadlines on
one hashed timer wheel, with an injected clock.

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
    """

    def __init__(
        self,
        clock: Callable[[], float],
        offer: Callable[[Cell, Any], None],
        send: Callable[[Cell, str, Any], None],
        *,
        tick: float = 0.001,
    ) -> None:
        self._clock = clock
        self._offer = offer
        self._send = send
        self.wheel: TimerWheel[Callable[[], None]] = TimerWheel(tick=tick, now=clock())

    def __len__(self) -> int:
        return len(self.wheel)

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
        """Fire what is due now; return how many fired."""
        if not len(self.wheel):
            return 0
        due = self.wheel.advance(self._clock())
        for fire in due:
            fire()
        return len(due)

    def next_deadline(self) -> float | None:
        return self.wheel.next_deadline()
