"""Mailboxes across real processes: real ring files on tmpfs, real doorbells, real kills.

The peers are ``peer.py`` processes (see its docstring); this test process is often one
end itself. Every wait is bounded; the `runtime_dir` fixture checks that no file and no
child process is left.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mybus_actors.errors import ActorNotFound, MailboxFull
from mybus_actors.mailbox import Endpoint
from mybus_actors.registry import Registry

PEER = str(Path(__file__).with_name("peer.py"))


class Peer:
    """A peer.py child process, read line by line with a bound on every wait."""

    def __init__(self, role: str, *args: str | int | float) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, PEER, role, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            raise AssertionError(f"{self.role} peer said nothing within {timeout}s")
        text = self.proc.stdout.readline()
        if not text:
            raise AssertionError(f"{self.role} peer exited (code {self.proc.poll()})")
        return text.strip()

    def expect(self, word: str, timeout: float = 30.0) -> None:
        got = self.line(timeout)
        assert got == word, f"{self.role} peer said {got!r}, expected {word!r}"

    def result(self, timeout: float) -> dict[str, object]:
        out: dict[str, object] = json.loads(self.line(timeout))
        return out

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def join(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def peers(runtime_dir: Path) -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for p in started:
        p.close()


def start(peers: list[Peer], role: str, *args: str | int | float) -> Peer:
    p = Peer(role, *args)
    peers.append(p)
    p.expect("ready")
    return p


def _stream(seed: int, count: int, max_small: int, big_every: int) -> list[bytes]:
    sys.path.insert(0, str(Path(PEER).parent))
    try:
        import peer
    finally:
        sys.path.pop(0)
    return list(peer.stream(seed, count, max_small, big_every))


@pytest.mark.stress
def test_a_million_random_messages_arrive_in_order(peers: list[Peer]) -> None:
    count = 1_000_000
    common = ("--seed", 7, "--count", count, "--big-every", 100_000, "--deadline", 240)
    recv = start(peers, "recv", "--name", "sink", "--senders", "source", *common)
    send = start(peers, "send", "--name", "source", "--to", "sink", *common)
    sent = send.result(timeout=240)
    got = recv.result(timeout=240)
    assert got["errors"] == []
    assert got["seen"] == {"source": count}
    assert got["crc"] == {"source": sent["crc"]}
    assert sent["sent"] == count
    assert send.join() == 0 and recv.join() == 0


@pytest.mark.stress
def test_eight_senders_one_receiver_fair_and_ordered(peers: list[Peer]) -> None:
    senders = [f"s{i}" for i in range(8)]
    count = 20_000
    recv = start(
        peers,
        "recv",
        "--name",
        "sink",
        "--senders",
        ",".join(senders),
        "--count",
        count,
        "--max-small",
        64,
        "--seed",
        100,
        "--wait-go",
    )
    procs = [
        start(
            peers,
            "send",
            "--name",
            s,
            "--to",
            "sink",
            "--count",
            count,
            "--max-small",
            64,
            "--seed",
            100 + i,
            "--ready-after",
            200,
        )
        for i, s in enumerate(senders)
    ]
    for p in procs:
        p.expect("flowing", timeout=60)
    recv.go()  # every sender has a backlog: only the receiver's fairness decides now
    got = recv.result(timeout=180)
    results = [p.result(timeout=60) for p in procs]
    assert got["errors"] == []
    assert got["seen"] == dict.fromkeys(senders, count)
    assert got["crc"] == {s: r["crc"] for s, r in zip(senders, results, strict=True)}
    first_seen = got["first_seen"]
    assert isinstance(first_seen, dict)
    limit = len(senders) * count // 100
    assert all(first_seen[s] < limit for s in senders), first_seen
    assert [p.join() for p in [recv, *procs]] == [0] * 9


@pytest.mark.stress
def test_ping_pong_without_spinning_loses_no_wakeup(peers: list[Peer], runtime_dir: Path) -> None:
    echo = start(peers, "echo", "--name", "echo", "--spin", 0)
    rounds = 100_000
    worst = 0.0
    with Endpoint(Registry(runtime_dir), spin=0.0) as ep:
        ep.bind("pinger")
        for i in range(rounds):
            msg = i.to_bytes(8, "little")
            t0 = time.perf_counter()
            ep.send("pinger", "echo", msg)
            reply: list[bytes] = []
            while not reply:
                reply = [d.payload for d in ep.poll()]
                if not reply:
                    ep.wait(1.0)
                    assert time.perf_counter() - t0 < 5.0, f"round trip {i} never came back"
            worst = max(worst, time.perf_counter() - t0)
            assert reply == [msg]
        ep.send("pinger", "echo", b"stop")
        assert echo.result(timeout=30) == {"echoed": rounds}
    assert worst < 0.1, f"slowest round trip {worst * 1e3:.1f} ms"
    assert echo.join() == 0


def test_sender_killed_mid_stream_leaves_only_whole_messages(
    peers: list[Peer], runtime_dir: Path
) -> None:
    # Every 3rd message is 4 MiB through a 256 KiB ring: a kill lands mid-fragments often.
    args = ("--seed", 3, "--count", 10_000, "--big-every", 3, "--ring", 1 << 18)
    expected = iter(_stream(3, 60, 4096, 3))
    registry = Registry(runtime_dir)
    received = 0
    kill_after = random.Random().randint(5, 30)
    with Endpoint(registry, channel_idle=0.3) as ep:
        ep.bind("sink")
        send = start(peers, "send", "--name", "source", "--to", "sink", *args)
        deadline = time.monotonic() + 60
        while received < kill_after:
            assert time.monotonic() < deadline, "the sender stalled"
            for d in ep.poll():
                assert d.payload == next(expected), f"message {received} differs"
                received += 1
            ep.wait(0.05)
        os.kill(send.pid, signal.SIGKILL)
        send.join(10)
        # Drain what was published; the dead producer's ring is then retired.
        deadline = time.monotonic() + 10
        while list(registry.rings_dir.iterdir()):
            assert time.monotonic() < deadline, "the dead sender's ring was never reclaimed"
            for d in ep.poll():
                assert d.payload == next(expected), f"message {received} differs"
                received += 1
            ep.wait(0.05)
    assert received >= kill_after
    reclaimed = registry.reclaim()
    assert [e.name for e in reclaimed] == ["source"]


def test_stopped_consumer_makes_sender_raise_mailbox_full_then_loses_nothing(
    peers: list[Peer], runtime_dir: Path
) -> None:
    slow = start(peers, "slow", "--name", "slow")
    os.kill(slow.pid, signal.SIGSTOP)
    accepted = 0
    with Endpoint(Registry(runtime_dir), ring_capacity=1 << 16) as ep:
        ep.bind("sender")
        try:
            with pytest.raises(MailboxFull):
                for i in range(1_000_000):
                    ep.send("sender", "slow", i.to_bytes(8, "little") + b"x" * 56, timeout=0.5)
                    accepted += 1
            t0 = time.monotonic()
            with pytest.raises(MailboxFull):
                ep.send("sender", "slow", b"z" * 64, block=False)
            assert time.monotonic() - t0 < 0.1
        finally:
            os.kill(slow.pid, signal.SIGCONT)
        assert accepted > 100
        # The stop marker: `slow` reports once it sees a number of 2**63 or more.
        ep.send("sender", "slow", (2**63).to_bytes(8, "little"), timeout=30)
        got = slow.result(timeout=60)
    assert got == {"got": accepted, "in_order": True}
    assert slow.join() == 0


def test_receiver_killed_sender_gets_actor_not_found_and_its_unread_messages_back(
    peers: list[Peer], runtime_dir: Path
) -> None:
    slow = start(peers, "slow", "--name", "victim", "--wait-go")  # reads nothing
    lost: list[tuple[str, str, list[tuple[int, bytes]]]] = []
    with Endpoint(
        Registry(runtime_dir), ring_capacity=1 << 16, on_undelivered=lambda *a: lost.append(a)
    ) as ep:
        ep.bind("sender")
        sent = [i.to_bytes(8, "little") for i in range(10)]
        for msg in sent:
            ep.send("sender", "victim", msg)
        os.kill(slow.pid, signal.SIGKILL)
        slow.join(10)
        with pytest.raises(ActorNotFound):
            for i in range(100_000):
                msg = b"y" * 56 + i.to_bytes(8, "little")
                ep.send("sender", "victim", msg, timeout=5)
                sent.append(msg)
        # Every accepted message is handed back, in order; the refused one is not.
        assert [(s, r) for s, r, _ in lost] == [("sender", "victim")]
        assert [payload for _, payload in lost[0][2]] == sent
        assert ep.undelivered == len(sent)
    Registry(runtime_dir).reclaim()


def test_idle_ring_closed_by_both_ends_and_reopened(peers: list[Peer], runtime_dir: Path) -> None:
    echo = start(peers, "echo", "--name", "echo", "--idle", 0.2)
    registry = Registry(runtime_dir)

    def rings() -> list[str]:
        return sorted(p.name for p in registry.rings_dir.iterdir())

    with Endpoint(registry, channel_idle=0.2) as ep:
        ep.bind("me")

        def ask(msg: bytes) -> bytes:
            ep.send("me", "echo", msg)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = ep.poll()
                if got:
                    return got[0].payload
                ep.wait(0.05)
            raise AssertionError("no echo")

        assert ask(b"one") == b"one"
        first = [r for r in rings() if r.startswith(f"{ep.mailbox}~")]  # to echo's process
        assert len(first) == 1
        deadline = time.monotonic() + 10
        while rings():
            assert time.monotonic() < deadline, f"idle rings never reclaimed: {rings()}"
            ep.poll()
            ep.wait(0.05)
        assert ask(b"two") == b"two"
        second = [r for r in rings() if r.startswith(f"{ep.mailbox}~")]
        assert len(second) == 1 and second != first
        ep.send("me", "echo", b"stop")
        assert echo.result(timeout=10) == {"echoed": 2}
    assert echo.join() == 0


def test_relayed_records_seen_before_are_dropped_per_stream(runtime_dir: Path) -> None:
    """What a restarted gateway delivers again is dropped by the receiving endpoint: per
    stream, a record is taken only past the last position taken on that stream, however
    streams interleave within and across batches (the batch fast path included)."""
    from mybus_actors.relayed import PREFIX, RELAYED
    from mybus_actors.routing import GATEWAY

    rng = random.Random(8)
    registry = Registry(runtime_dir)
    with Endpoint(registry, spin=0.0) as gateway, Endpoint(registry, spin=0.0) as sink:
        gateway.bind(GATEWAY)
        sink.bind("sink")
        taken: dict[int, int] = {}
        expected: list[bytes] = []
        got: list[bytes] = []
        offered = 0
        for _ in range(200):
            batch: list[tuple[bytes, int]] = []
            for _ in range(rng.randint(1, 40)):
                stream = rng.choice((11, 22, 33))
                last = taken.get(stream, 0)
                # mostly the next position; sometimes a resend, sometimes a jump ahead
                position = max(1, last + rng.choice((1, 1, 1, 1, 2, 0, -1, -3)))
                body = f"{stream}:{position}:{rng.random()}".encode()
                batch.append((PREFIX.pack(stream, position) + body, RELAYED | 5))
                if position > last:
                    taken[stream] = position
                    expected.append(body)
            assert gateway.offer_batch(GATEWAY, "sink", batch) == len(batch)
            offered += len(batch)
            for delivery in sink.poll(budget=1024):
                assert delivery.meta == 5  # the relay bit is the endpoint's, not the actor's
                got.append(delivery.payload)
        assert got == expected
        assert sink.duplicates == offered - len(expected) > 0


def test_an_endpoints_spin_can_be_changed_and_is_checked(runtime_dir: Path) -> None:
    with Endpoint(Registry(runtime_dir), spin=0.0) as ep:
        ep.spin = 1e-4  # a benchmark's receiver does, between jobs
        assert ep.spin == 1e-4
        with pytest.raises(ValueError, match="spin must be >= 0"):
            ep.spin = -1.0
        assert ep.spin == 1e-4
