"""Unit tests for messages between actors of one process (`Runtime.run_local`): a
runtime in this process, its duty cycles stepped by hand. Its mailbox rings are real
(a runtime directory of the test's own), though no message here travels on one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mybus_actors as mb
from mybus_actors.runtime import _LOCAL_BUDGET, Runtime


class Echo(mb.Actor):
    def receive(self, message: Any) -> None:
        self.reply(message)


class Asker(mb.Actor):
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    async def receive(self, count: int) -> None:
        for i in range(count):
            self.answers.append(await self.ask("echo", i))


class Chatty(mb.Actor):
    """Tells itself the next number, forever: only the budget ends a cycle."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    def receive(self, n: int) -> None:
        self.seen.append(n)
        self.tell(self.address, n + 1)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    root = Path(tempfile.mkdtemp(prefix="mybus-local-", dir="/dev/shm"))
    runtime = Runtime(node="local", runtime_dir=root)
    try:
        yield runtime
    finally:
        runtime.close()
        left = [p for p in root.rglob("*") if p.is_file()]
        shutil.rmtree(root)
        assert left == []


def test_a_local_ask_is_answered_in_the_cycle_its_reply_is_told(rt: Runtime) -> None:
    answers: list[Any] = []
    rt.host(Echo, "echo")
    rt.host(Asker, "asker", args=(answers,))
    rt.tell("test", "asker", 5)
    cycles = 0
    while len(answers) < 5 and cycles < 50:
        rt.do_work()
        cycles += 1
    assert answers == [0, 1, 2, 3, 4]
    # One cycle starts the receive (its first step asks), then one per ask: the echo's
    # reply is handed to the asker by the same run of the local queue.
    assert cycles == 1 + 5


def test_a_cycle_hands_out_at_most_the_budget_of_local_messages(rt: Runtime) -> None:
    seen: list[int] = []
    rt.host(Chatty, "chatty", args=(seen,))
    rt.tell("test", "chatty", 0)
    rt.do_work()
    assert len(seen) == _LOCAL_BUDGET
    rt.do_work()
    assert seen == list(range(2 * _LOCAL_BUDGET))
