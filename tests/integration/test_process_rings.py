"""Rings per pair of processes: many actors of one process telling many of another.

Two processes with 200 actors each share one ring per direction (not 40,000 rings); a
slow actor holds back only its own senders, who get `MailboxFull` after their timeout,
while the other actors of its process answer as before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from pathlib import Path

import pytest
import rings_lib as lib
from harness import Actors

from mybus_actors.registry import Registry, mailbox_name

WAIT = 15.0


def _usage(root: Path) -> int:
    """Bytes of shared memory the runtime directory's files hold (allocated blocks)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(FileNotFoundError):  # unlinked meanwhile
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


class _Sampler:
    """The largest `_usage` and ring count seen, sampled every 20 ms in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peak = 0
        self.rings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _usage(self.root))
            self.rings = max(self.rings, len(os.listdir(self.root / "rings")))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.stress
@pytest.mark.timeout(240)
def test_two_hundred_actors_tell_two_hundred_in_another_process(
    actors: Actors, runtime_dir: Path
) -> None:
    n, count = 200, 1_000
    receivers = actors.spawn(lib.Receivers, "receivers", n=n)
    senders = actors.spawn(lib.Senders, "senders", n=n)
    me = actors.connect()
    with _Sampler(runtime_dir) as shm:
        seconds, sent = me.ask("senders", ("run", count), timeout=180)
        reports = me.ask("receivers", "report", timeout=60)
        deadline = time.monotonic() + 60
        while sum(c for c, _ in reports) < n * count and time.monotonic() < deadline:
            time.sleep(0.1)
            reports = me.ask("receivers", "report", timeout=60)
    boxes = {mailbox_name(Registry(runtime_dir).lookup(a).doorbell) for a in ("r0", "s0")}
    between = [
        f for f in os.listdir(runtime_dir / "rings") if set(f.split(".")[0].split("~")) == boxes
    ]
    print(f"200 x 200 actors, {n * count:,} messages interleaved pair by pair in "
          f"{seconds:.2f}s ({n * count / seconds:,.0f}/s); /dev/shm peak "
          f"{shm.peak / 2**20:.1f} MiB, at most {shm.rings} ring files, "
          f"{len(between)} between the two processes")  # fmt: skip
    assert sent == [count] * n
    assert [c for c, _ in reports] == [count] * n, "every message arrived"
    assert [bad for _, bad in reports] == [0] * n, "in per-pair order"
    assert shm.peak < 256 * 2**20
    assert len(between) <= 2  # one ring each way
    assert senders.stop(timeout=60) and receivers.stop(timeout=60)


@pytest.mark.timeout(120)
def test_a_slow_actor_holds_back_only_its_own_senders(actors: Actors) -> None:
    actors.spawn(lib.SlowAndQuick, "host", seconds=0.02)
    actors.spawn(lib.Flooder, "flooder")
    me = actors.connect("me")
    flooding = actors.connect("flooding")
    assert me.ask("quick", "warm", timeout=WAIT) == "warm"
    size, timeout = 64 * 1024, 1.0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flood = pool.submit(
            flooding.ask, "flooder", ("flood", "slow", size, timeout), timeout=60
        )
        latencies = []
        while not flood.done():
            t0 = time.monotonic()
            assert me.ask("quick", len(latencies), timeout=WAIT) == len(latencies)
            latencies.append(time.monotonic() - t0)
            time.sleep(0.01)
        sent, error, seconds = flood.result()
    print(f"slow actor flooded with {size // 1024} KiB messages: {sent} taken, then {error} "
          f"after {seconds:.2f}s; its neighbour answered {len(latencies)} asks meanwhile, "
          f"slowest {max(latencies) * 1000:.1f} ms")  # fmt: skip
    assert error == "MailboxFull"
    assert sent > 0
    assert latencies and max(latencies) < timeout, "the neighbour was not held back"
    # Nothing taken is lost: the slow actor handles every message it was sent.
    deadline = time.monotonic() + 30
    while (handled := me.ask("slow", "count?", timeout=WAIT)) < sent:
        assert time.monotonic() < deadline, f"{handled} of {sent} handled"
        time.sleep(0.1)
    assert handled == sent
