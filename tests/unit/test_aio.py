"""Unit tests for `mybus_actors.aio`: async receives as tasks of one loop, run a pass at
a time or slept in, handed back with their cells when done; a task awaiting an
`AskFuture` stepped straight from the answer, without a pass. In-process: a socketpair
stands in for the doorbell's descriptor only where readiness is the point."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from mybus_actors.aio import AsyncReceives
from mybus_actors.asks import PendingAsks
from mybus_actors.cell import Cell
from mybus_actors.errors import AskTimeout


def test_a_pass_runs_ready_receives_and_hands_back_the_finished() -> None:
    aio = AsyncReceives()
    a, b = Cell("a", "n/a"), Cell("b", "n/b")
    gate = aio.loop.create_future()
    log: list[str] = []

    async def quick() -> None:
        log.append("quick")

    async def waits() -> None:
        await gate
        log.append("waited")

    ta = aio.start(a, quick())
    tb = aio.start(b, waits())
    assert aio
    assert aio.run_due() == (0, [(ta, a)])
    assert log == ["quick"] and aio
    gate.set_result(None)
    done: list[tuple[asyncio.Task[None], Cell]] = []
    for _ in range(3):  # the wake-up of an awaiting task may take a pass more
        done += aio.run_due()[1]
    assert done == [(tb, b)] and log == ["quick", "waited"]
    assert not aio
    aio.close()


def test_sleep_ends_when_a_descriptor_is_readable() -> None:
    aio = AsyncReceives()
    r, w = socket.socketpair()
    try:
        gate = aio.loop.create_future()

        async def waits() -> None:
            await gate

        aio.start(Cell("a", "n/a"), waits())
        w.send(b"x")
        t0 = time.monotonic()
        assert aio.sleep([r.fileno()], 5.0) == [r.fileno()]
        assert time.monotonic() - t0 < 2.0
        assert aio.settle() == []
    finally:
        aio.close()
        r.close()
        w.close()


def test_sleep_ends_when_a_receive_finishes_or_the_timeout_passes() -> None:
    aio = AsyncReceives()
    r, w = socket.socketpair()
    try:
        cell = Cell("a", "n/a")

        async def short() -> None:
            await asyncio.sleep(0.01)

        task = aio.start(cell, short())
        t0 = time.monotonic()
        assert aio.sleep([r.fileno()], 5.0) == []
        assert time.monotonic() - t0 < 2.0
        assert aio.settle() == [(task, cell)]
        t0 = time.monotonic()
        assert aio.sleep([r.fileno()], 0.05) == []  # nothing running: the timeout
        assert time.monotonic() - t0 >= 0.04
    finally:
        aio.close()
        r.close()
        w.close()


def test_close_cancels_what_still_runs() -> None:
    aio = AsyncReceives()
    cancelled: list[bool] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    aio.start(Cell("a", "n/a"), forever())
    aio.run_due()
    aio.close()
    assert cancelled == [True]
    assert aio.loop.is_closed()


def test_an_answered_ask_steps_its_task_without_a_pass_of_the_loop() -> None:
    aio = AsyncReceives()
    asks = PendingAsks()
    log: list[object] = []
    corrs: list[int] = []

    async def asker() -> None:
        for i in range(3):
            corr, fut = asks.new(f"ask {i}")
            corrs.append(corr)
            log.append(await fut)
            log.append(asyncio.get_running_loop() is aio.loop)

    cell = Cell("a", "n/a")
    task = aio.start(cell, asker())
    assert aio.run_due() == (0, [])  # the first step: a pass (the task was just made)
    for i in range(3):
        assert not aio.loop.has_work()  # parked on the ask: nothing for a pass to do
        assert asks.resolve(corrs[-1], f"reply {i}")
        steps, done = aio.run_due()
        assert steps == 1
        assert log[-2:] == [f"reply {i}", True]
    assert done == [(task, cell)] and not aio
    aio.close()


def test_an_ask_failing_raises_in_the_task_that_awaits_it() -> None:
    aio = AsyncReceives()
    asks = PendingAsks()
    seen: list[BaseException] = []

    async def asker() -> None:
        corr, fut = asks.new("ask")
        asks.fail(corr, AskTimeout("no reply"))  # before the await: done already
        try:
            await fut
        except AskTimeout as exc:
            seen.append(exc)
        corr, fut = asks.new("ask")
        asyncio.get_running_loop().call_soon(asks.fail, corr, AskTimeout("later"))
        try:
            await fut
        except AskTimeout as exc:
            seen.append(exc)

    aio.start(Cell("a", "n/a"), asker())
    for _ in range(4):
        aio.run_due()
    assert [str(e) for e in seen] == ["no reply", "later"] and not aio
    aio.close()


def test_a_task_awaiting_an_ask_can_be_cancelled_and_the_late_reply_is_dropped() -> None:
    aio = AsyncReceives()
    asks = PendingAsks()
    outcome: list[str] = []
    corrs: list[int] = []

    async def asker() -> None:
        corr, fut = asks.new("ask")
        corrs.append(corr)
        try:
            await fut
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    cell = Cell("a", "n/a")
    task = aio.start(cell, asker())
    aio.run_due()
    task.cancel()
    assert aio.loop.has_work()
    done: list[tuple[asyncio.Task[None], Cell]] = []
    for _ in range(3):
        done += aio.run_due()[1]
    assert outcome == ["cancelled"] and done == [(task, cell)] and task.cancelled()
    assert asks.resolve(corrs[0], "late")  # the ask itself stood; its answer wakes no one
    assert aio.run_due() == (0, []) and not aio.loop.steps
    aio.close()


def test_a_receive_that_sleeps_after_an_ask_gets_its_pass_when_the_timer_is_due() -> None:
    aio = AsyncReceives()
    asks = PendingAsks()
    corrs: list[int] = []

    async def asker() -> None:
        corr, fut = asks.new("ask")
        corrs.append(corr)
        await fut
        await asyncio.sleep(0.02)

    cell = Cell("a", "n/a")
    task = aio.start(cell, asker())
    aio.run_due()
    asks.resolve(corrs[0], None)
    assert aio.run_due() == (1, [])
    assert not aio.loop.has_work()  # the timer is not due yet
    deadline = time.monotonic() + 5.0
    while not aio.loop.has_work() and time.monotonic() < deadline:
        time.sleep(0.005)
    done: list[tuple[asyncio.Task[None], Cell]] = []
    for _ in range(3):  # the timer's pass, then the task's
        done += aio.run_due()[1]
    assert done == [(task, cell)]
    aio.close()


def test_a_receive_awaiting_io_gets_a_pass_every_cycle() -> None:
    aio = AsyncReceives()
    r, w = socket.socketpair()
    try:

        async def reads() -> bytes:
            loop = asyncio.get_running_loop()
            got: asyncio.Future[bytes] = loop.create_future()
            loop.add_reader(r.fileno(), lambda: got.set_result(r.recv(1)))
            try:
                return await got
            finally:
                loop.remove_reader(r.fileno())

        cell = Cell("a", "n/a")
        task = aio.loop.create_task(reads())
        aio.tasks[task] = cell
        aio.run_due()
        assert aio.loop.has_work()  # a watched descriptor: only a pass's select sees it
        w.send(b"x")
        done: list[tuple[asyncio.Task[None], Cell]] = []
        for _ in range(3):
            done += aio.run_due()[1]
        assert done == [(task, cell)] and task.result() == b"x"
        assert not aio.loop.has_work()
    finally:
        aio.close()
        r.close()
        w.close()


def test_asks_awaited_on_any_other_loop_behave_as_asyncio_futures() -> None:
    asks = PendingAsks()

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        (c1, f1), (c2, f2), (c3, f3) = asks.new("1"), asks.new("2"), asks.new("3")
        loop.call_soon(asks.resolve, c1, "one")
        loop.call_later(0.01, asks.resolve, c2, "two")
        both = await asyncio.gather(f1, f2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(f3, 0.01)
        assert asks.resolve(c3, "late")
        return [*both, f3.result()]

    assert asyncio.run(main()) == ["one", "two", "late"]
