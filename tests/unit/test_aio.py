"""Unit tests for `mybus_actors.aio`: async receives as tasks of one loop, run a pass at
a time or slept in, handed back with their cells when done. In-process: a socketpair
stands in for the doorbell's descriptor only where readiness is the point."""

from __future__ import annotations

import asyncio
import socket
import time

from mybus_actors.aio import AsyncReceives
from mybus_actors.cell import Cell


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
    assert aio.run_once() == [(ta, a)]
    assert log == ["quick"] and aio
    gate.set_result(None)
    done: list[tuple[asyncio.Task[None], Cell]] = []
    for _ in range(3):  # the wake-up of an awaiting task may take a pass more
        done += aio.run_once()
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
    aio.run_once()
    aio.close()
    assert cancelled == [True]
    assert aio.loop.is_closed()
