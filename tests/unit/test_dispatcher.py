"""Unit tests for `mybus_actors.dispatcher`: the order of a duty cycle and idling, with a
stepped clock. The rings are real (two endpoints of this process, on a runtime
directory under /dev/shm); the host is a recorder of what the dispatcher asks of it."""

from __future__ import annotations

import asyncio
import select
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mybus_actors.aio import AsyncReceives
from mybus_actors.cell import Cell
from mybus_actors.dispatcher import Dispatcher
from mybus_actors.mailbox import Endpoint, Payload
from mybus_actors.registry import Registry
from mybus_actors.scheduling import Scheduler


class Host:
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.local: list[str] = []
        self.stops = 0
        self.woke: list[int] = []

    def run_local(self) -> int:
        n = len(self.local)
        self.log += [("local", m) for m in self.local]
        self.local.clear()
        return n

    def has_local(self) -> bool:
        return bool(self.local)

    def deliver(self, sender: str, receiver: str, items: Sequence[tuple[int, Payload]]) -> None:
        self.log += [("ring", sender, receiver, bytes(p)) for _, p in items]

    def settle(self, done: list[tuple[asyncio.Task[None], Cell]]) -> int:
        self.log += [("settled", cell.name) for _, cell in done]
        return len(done)

    def stop_pass(self) -> None:
        self.stops += 1

    def sleep_fds(self) -> list[int]:
        return []

    def woken(self, fd: int) -> None:
        self.woke.append(fd)


@pytest.fixture
def rig() -> Iterator[tuple[Dispatcher, Host, Endpoint, Endpoint, list[float]]]:
    root = Path(tempfile.mkdtemp(prefix="mybus-unit-", dir="/dev/shm"))
    registry = Registry(root)
    now = [100.0]
    host = Host()
    here, peer = Endpoint(registry, spin=0), Endpoint(registry, spin=0)
    here.bind("me")
    peer.bind("peer")
    scheduler = Scheduler(lambda: now[0], lambda c, m: host.log.append(("timer", m)),
                          lambda c, to, m: None)  # fmt: skip
    aio = AsyncReceives()
    poller = select.poll()
    poller.register(here.bell_fd, select.POLLIN)
    d = Dispatcher(host, here, scheduler, aio, poller, lambda: now[0], spin=0.0)
    try:
        yield d, host, here, peer, now
    finally:
        aio.close()
        here.close()
        peer.close()
        assert [p for p in root.rglob("*") if p.is_file()] == []
        shutil.rmtree(root)


def test_a_cycle_runs_timers_then_local_then_rings_then_the_stop_pass(rig: Any) -> None:
    d, host, here, peer, now = rig
    d._scheduler.timer(Cell("a", "n/a"), 0.01, None, "tick", None)
    host.local.append("hello")
    peer.send("peer", "me", b"from the ring")
    here.read_bell()
    now[0] += 0.02
    assert d.do_work() == 3
    assert host.log == [
        ("timer", "tick"),
        ("local", "hello"),
        ("ring", "peer", "me", b"from the ring"),
    ]
    assert host.stops == 1
    assert d.do_work() == 0


def test_a_finished_async_receive_is_settled_in_the_cycle(rig: Any) -> None:
    d, host, *_ = rig

    async def receive() -> None:
        pass

    d._aio.start(Cell("x", "n/x"), receive())
    assert d.do_work() == 1
    assert host.log == [("settled", "x")]


def test_a_sleep_lasts_until_the_next_deadline(rig: Any) -> None:
    d, _host, _here, _peer, now = rig
    d._scheduler.timer(Cell("a", "n/a"), 0.2, None, "later", None)
    assert d.sleep_timeout() == pytest.approx(0.2, abs=0.01)
    now[0] += 0.15
    assert d.sleep_timeout() == pytest.approx(0.05, abs=0.01)
    now[0] += 1.0
    assert d.sleep_timeout() == 0.0  # due: no sleep


def test_idle_returns_when_a_message_comes(rig: Any) -> None:
    d, host, _here, peer, _now = rig
    d._scheduler.timer(Cell("a", "n/a"), 30.0, None, "far", None)  # a long sleep allowed
    peer.send("peer", "me", b"wake")
    t0 = time.monotonic()
    d.idle()  # the ring has something: it does not sleep
    assert time.monotonic() - t0 < 1.0
    assert d.do_work() >= 1
    assert ("ring", "peer", "me", b"wake") in host.log
