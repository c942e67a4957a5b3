"""A worker pool fed by a dispatcher actor.

    python examples/worker_pool.py [jobs] [workers]

The `Dispatcher` hands each job to the next idle `Worker` (one process each), keeps the
rest queued, and answers the client once every result is in.
"""

from __future__ import annotations

import sys
import time
from collections import deque

import mybus_actors as mb


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


class Worker(mb.Actor):
    def receive(self, message: object) -> None:
        job_id, n = message  # type: ignore[misc]
        self.reply(("done", job_id, collatz_steps(n), self.name))


class Dispatcher(mb.Actor):
    def __init__(self, workers: list[str]) -> None:
        self.idle = deque(workers)
        self.queue: deque[tuple[int, int]] = deque()
        self.results: dict[int, int] = {}
        self.per_worker: dict[str, int] = {}
        self.client: str | None = None
        self.expected = 0

    def receive(self, message: object) -> None:
        if isinstance(message, tuple) and message[0] == "run":
            _, numbers = message
            self.client = self.sender
            self.expected = len(numbers)
            self.queue.extend(enumerate(numbers))
            self.feed()
        elif isinstance(message, tuple) and message[0] == "done":
            _, job_id, steps, worker = message
            self.results[job_id] = steps
            self.per_worker[worker] = self.per_worker.get(worker, 0) + 1
            self.idle.append(worker)
            self.feed()
            if len(self.results) == self.expected and self.client is not None:
                self.tell(self.client, (dict(self.results), dict(self.per_worker)))

    def feed(self) -> None:
        while self.idle and self.queue:
            self.tell(self.idle.popleft(), self.queue.popleft())


def main(jobs: int = 2000, workers: int = 3) -> None:
    names = [f"worker-{i}" for i in range(workers)]
    refs = [mb.spawn(Worker, n) for n in names]
    refs.append(mb.spawn(Dispatcher, "dispatcher", args=(names,)))
    try:
        with mb.connect() as me:
            numbers = list(range(1, jobs + 1))
            start = time.perf_counter()
            me.tell("dispatcher", ("run", numbers))
            results, per_worker = me.receive(timeout=120)
            elapsed = time.perf_counter() - start
        assert all(results[i] == collatz_steps(n) for i, n in enumerate(numbers))
        print(f"{jobs} jobs on {workers} workers in {elapsed:.2f} s: {jobs / elapsed:,.0f} jobs/s")
        for worker, count in sorted(per_worker.items()):
            print(f"  {worker}: {count} jobs")
    finally:
        for ref in refs:
            ref.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
