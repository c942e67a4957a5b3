"""Unit tests for `mybus_actors.scheduling`: actors' timers on the wheel and asks'
deadlines, a stepped clock."""

from __future__ import annotations

from typing import Any

import pytest

from mybus_actors.asks import PendingAsks
from mybus_actors.cell import Cell
from mybus_actors.errors import ActorNotFound, AskTimeout
from mybus_actors.scheduling import Scheduler


class Rig:
    def __init__(self) -> None:
        self.now = 100.0
        self.offered: list[tuple[str, Any, float]] = []
        self.sent: list[tuple[str, str, Any, float]] = []
        self.fail_sends = False
        self.s = Scheduler(lambda: self.now, self.offer, self.send)

    def offer(self, cell: Cell, message: Any) -> None:
        self.offered.append((cell.name, message, self.now))

    def send(self, cell: Cell, to: str, message: Any) -> None:
        if self.fail_sends:
            raise ActorNotFound(to)
        self.sent.append((cell.name, to, message, self.now))

    def step(self, seconds: float, by: float = 0.001) -> int:
        fired = 0
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += by
            fired += self.s.fire_due()
        return fired


def test_a_one_shot_fires_once_at_its_deadline_and_leaves_its_cell() -> None:
    rig = Rig()
    cell = Cell("a", "n/a")
    rig.s.timer(cell, 0.05, None, "ping", None)
    assert len(cell.timers) == 1
    rig.step(0.045)
    assert rig.offered == []
    rig.step(0.01)
    assert [(n, m) for n, m, _ in rig.offered] == [("a", "ping")]
    assert rig.offered[0][2] >= 100.05
    rig.step(1.0)
    assert len(rig.offered) == 1 and cell.timers == set()


def test_a_repeating_timer_keeps_its_rate_and_does_not_burst_after_a_stall() -> None:
    rig = Rig()
    cell = Cell("a", "n/a")
    rig.s.timer(cell, 0.01, 0.01, "tick", None)
    rig.step(0.1)
    assert 9 <= len(rig.offered) <= 11
    rig.now += 1.0  # the dispatcher was busy for a second
    assert rig.s.fire_due() == 1  # once, then re-armed from now
    before = len(rig.offered)
    rig.step(0.05)
    assert 4 <= len(rig.offered) - before <= 6


def test_cancel_and_a_finished_cell_stop_timers() -> None:
    rig = Rig()
    a, b = Cell("a", "n/a"), Cell("b", "n/b")
    handle = rig.s.timer(a, 0.01, 0.01, "x", None)
    rig.s.timer(b, 0.01, None, "y", None)
    handle.cancel()
    b.finished = True
    rig.step(0.1)
    assert rig.offered == []


def test_a_timer_to_another_actor_is_told_and_a_failed_send_is_contained() -> None:
    rig = Rig()
    cell = Cell("a", "n/a")
    rig.s.timer(cell, 0.01, None, "hi", "other")
    rig.step(0.02)
    assert [(s, t, m) for s, t, m, _ in rig.sent] == [("a", "other", "hi")]
    rig.fail_sends = True
    rig.s.timer(cell, 0.01, None, "lost", "gone")
    rig.step(0.02)  # logged, not raised
    assert len(rig.sent) == 1


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="delay"):
        Rig().s.timer(Cell("a", "n/a"), -1.0, None, "x", None)


def test_plain_deadlines_share_the_wheel() -> None:
    rig = Rig()
    fired: list[float] = []
    rig.s.at(rig.now + 0.02, lambda: fired.append(rig.now))
    assert len(rig.s) == 1 and rig.s.next_deadline() is not None
    rig.step(0.03)
    assert len(fired) == 1 and fired[0] >= 100.02


def test_asks_fail_at_their_deadlines_and_answered_ones_leave_nothing_due() -> None:
    asks = PendingAsks()
    now = [100.0]
    s = Scheduler(
        lambda: now[0],
        lambda cell, message: None,
        lambda cell, to, message: None,
        asks=asks,
        ask_error=lambda fut: AskTimeout(f"{fut.description} timed out"),
    )
    late, f_late = asks.new("late", deadline=100.5)
    answered, f_answered = asks.new("answered", deadline=100.2)
    _, f_forever = asks.new("forever")  # no deadline: only a reply or a close ends it
    assert s.next_deadline() == 100.2
    assert asks.resolve(answered, "yes")
    assert s.next_deadline() == 100.5  # the answered ask's entry is dropped, not due
    now[0] = 100.49
    assert s.fire_due() == 0 and not f_late.done()
    now[0] = 100.5
    assert s.fire_due() == 1
    with pytest.raises(AskTimeout, match="late timed out"):
        f_late.result()
    assert not asks.resolve(late, "too late")  # a late reply answers nothing
    assert f_answered.result() == "yes" and not f_forever.done()
    assert s.next_deadline() is None and len(asks) == 1


def test_answered_asks_do_not_pile_up_in_the_deadline_heap() -> None:
    asks = PendingAsks()
    for i in range(10_000):
        corr, _ = asks.new("ask", deadline=float(i))
        asks.resolve(corr, None)
    assert len(asks.deadlines) <= 1024 + 2
    _, fut = asks.new("kept", deadline=5.0)
    assert asks.expire(4.9, lambda f: AskTimeout("x")) == 0
    assert asks.expire(5.0, lambda f: AskTimeout("x")) == 1 and fut.done()


def test_fail_where_fails_only_the_picked_asks() -> None:
    asks = PendingAsks()
    _, a = asks.new("a", tag=("cell-a", 1.0))
    _, b = asks.new("b", tag=("cell-b", 1.0))
    assert (
        asks.fail_where(lambda f: f.tag[0] == "cell-a", lambda f: ActorNotFound(f.description)) == 1
    )
    assert a.done() and not b.done() and len(asks) == 1
