"""Channels: every (sender, receiver) pair of names rides the one ring between two
endpoints. Real ring files and doorbells, two endpoints in this process (each is what a
process has), a stepped clock where time matters.

Every test runs twice (the `send_path` fixture): with `Endpoint.send` as the package
sets it (on the native core, the C `Sender` in front of `Outbound.send`) and with the
Python method alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mybus_actors import _ringcore
from mybus_actors.errors import ActorNotFound, MailboxFull
from mybus_actors.mailbox import Batch, Endpoint
from mybus_actors.outbound import Outbound, Send
from mybus_actors.registry import Registry

SMALL = 1 << 16  # ring capacity: 64 KiB


def drain(ep: Endpoint, rounds: int = 10_000) -> list[Batch]:
    """Poll until nothing comes (three times running), at most ``rounds`` polls."""
    ep.read_bell()  # announcements of new rings
    out: list[Batch] = []
    empty = 0
    for _ in range(rounds):
        got = ep.poll_batches()
        out += got
        empty = 0 if got else empty + 1
        if empty == 3:
            break
    return out


def messages(batches: list[Batch]) -> list[tuple[str, str, bytes]]:
    return [(s, r, bytes(p)) for s, r, items in batches for _, p in items]


def rings(registry: Registry) -> list[str]:
    return sorted(os.listdir(registry.rings_dir))


@pytest.fixture(autouse=True, params=["native", "python"])
def send_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which `send` endpoints get: the package's, or the Python method alone."""
    if request.param == "python":

        def python_send(self: Outbound) -> Send:
            return self.send

        monkeypatch.setattr(Outbound, "fast_send", python_send)
    return str(request.param)


def test_send_is_the_native_sender_on_the_real_clock_only(
    runtime_dir: Path, send_path: str
) -> None:
    registry = Registry(runtime_dir)
    now = [0.0]
    with Endpoint(registry) as real, Endpoint(registry, clock=lambda: now[0]) as stepped:
        assert isinstance(real.send, _ringcore.Sender) == (send_path == "native")
        assert not isinstance(stepped.send, _ringcore.Sender)


def test_what_the_fast_path_hands_on_behaves_as_the_method_does(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    with (
        Endpoint(registry, spin=0, ring_capacity=SMALL) as a,
        Endpoint(registry, spin=0, ring_capacity=SMALL) as b,
    ):
        a.bind("r")
        b.bind("s")
        b.send("s", "r", b"first")  # opens the ring and declares the channel
        with pytest.raises(ValueError, match="meta"):
            b.send("s", "r", b"bad meta", 1 << 24)
        with pytest.raises(TypeError):
            b.send("s", "r", "not bytes")
        with pytest.raises(TypeError):
            b.send("s", "r", b"x", 0, 1.0)  # timeout is keyword-only
        with pytest.raises(TypeError):
            b.send("s", "r", b"x", colour="red")
        big = bytes(range(256)) * 128  # 32 KiB: fragments, half the ring
        assert len(big) > b.max_record("s", "r")
        sent = [b"first", bytearray(b"second"), memoryview(b"third"), big, b"last"]
        for data in sent[1:]:
            b.send("s", "r", data, 7, timeout=1.0, block=True)
        assert messages(drain(a)) == [("s", "r", bytes(m)) for m in sent]
        # A full ring: block=False raises at once, and nothing half-written is read.
        with pytest.raises(MailboxFull):
            while True:
                b.send("s", "r", b"y" * 1000, block=False)
        filled = messages(drain(a))
        assert filled and all(m == ("s", "r", b"y" * 1000) for m in filled)
        b.send("s", "r", b"after", block=False)
        assert messages(drain(a)) == [("s", "r", b"after")]


def test_many_pairs_share_one_ring_and_keep_their_order(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    with Endpoint(registry, spin=0) as a, Endpoint(registry, spin=0) as b:
        senders = [f"s{i}" for i in range(20)]
        receivers = [f"r{i}" for i in range(20)]
        for name in senders:
            a.bind(name)
        for name in receivers:
            b.bind(name)
        sent = []
        for k in range(30):  # every message switches the ring to another pair
            for s in senders:
                for r in receivers[:3]:
                    a.send(s, r, f"{s}>{r}:{k}".encode())
                    sent.append((s, r, f"{s}>{r}:{k}".encode()))
        assert rings(registry) == [f"{a.mailbox}~{b.mailbox}.{rings(registry)[0].split('.')[-1]}"]
        got = messages(drain(b))
        assert sorted(got) == sorted(sent)
        for s in senders:
            for r in receivers[:3]:
                pair = [m for m in got if m[:2] == (s, r)]
                assert pair == [m for m in sent if m[:2] == (s, r)]


def test_a_paused_name_holds_back_its_senders_only(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    with (
        Endpoint(registry, spin=0, ring_capacity=SMALL, hold_bytes=4096) as a,
        Endpoint(registry, spin=0, ring_capacity=SMALL) as b,
    ):
        a.bind("slow")
        a.bind("quick")
        b.bind("sender")
        a.pause("slow")
        sent = 0
        with pytest.raises(MailboxFull):
            while True:  # each poll moves what arrived into slow's queue
                b.send("sender", "slow", b"x" * 1000, block=False)
                sent += 1
                assert a.poll_batches() == []  # nothing for slow is handed out while paused
        assert 4 <= sent < 20  # the hold (4 KiB) and what was in the ring then
        t0 = time.monotonic()
        with pytest.raises(MailboxFull, match="held back"):
            b.send("sender", "slow", b"late", timeout=0.2)
        assert time.monotonic() - t0 >= 0.2
        # Its neighbour on the same ring is not held back.
        b.send("sender", "quick", b"hello")
        assert messages(drain(a)) == [("sender", "quick", b"hello")]
        # Resumed: what waited comes out first, in order, and the mark goes.
        a.resume("slow")
        got = messages(drain(a))
        assert got == [("sender", "slow", b"x" * 1000)] * sent
        b.send("sender", "slow", b"again", timeout=1.0)
        assert messages(drain(a)) == [("sender", "slow", b"again")]


def test_an_unbound_name_sends_back_what_was_under_way(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    with Endpoint(registry, spin=0) as a, Endpoint(registry, spin=0) as b:
        a.bind("leaving")
        a.bind("staying")
        b.bind("sender")
        b.send("sender", "leaving", b"held")
        a.pause("leaving")
        assert drain(a) == []
        b.send("sender", "leaving", b"in the ring")
        held = a.unbind("leaving")
        assert messages(held) == [("sender", "leaving", b"held")]
        # Read after it left: handed out for a name no longer bound, for its sender.
        assert messages(drain(a)) == [("sender", "leaving", b"in the ring")]
        assert "leaving" not in a.names
        assert b.receiver_closed("sender", "leaving")
        with pytest.raises(ActorNotFound):
            b.send("sender", "leaving", b"too late")
        b.send("sender", "staying", b"fine")
        assert messages(drain(a)) == [("sender", "staying", b"fine")]


def test_a_closed_receiver_returns_unread_messages_to_their_pairs(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    lost: list[tuple[str, str, list[bytes]]] = []
    with Endpoint(
        registry, spin=0, on_undelivered=lambda s, r, items: lost.append(
            (s, r, [p for _, p in items])
        ),
    ) as b:  # fmt: skip
        b.bind("s1")
        b.bind("s2")
        a = Endpoint(registry, spin=0)
        a.bind("r1")
        a.bind("r2")
        b.send("s1", "r1", b"read")
        assert messages(drain(a)) == [("s1", "r1", b"read")]
        b.send("s1", "r1", b"a")  # after this, the SELECT naming s1->r1 was read and freed
        b.send("s2", "r2", b"b")
        b.send("s1", "r1", b"c")
        a.close()
        with pytest.raises(ActorNotFound):
            b.send("s2", "r2", b"nobody")
    assert lost == [("s1", "r1", [b"a", b"c"]), ("s2", "r2", [b"b"])]


def test_used_up_channel_ids_start_a_new_generation_in_order(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    with Endpoint(registry, spin=0) as a, Endpoint(registry, spin=0) as b:
        a.bind("r")
        names = [f"s{i}" for i in range(4200)]  # more pairs than one ring's 4095 ids
        for name in names:
            b.bind(name)
        got: list[tuple[str, str, bytes]] = []
        for name in names:
            b.send(name, "r", name.encode())
            got += messages(a.poll_batches(1024))
        got += messages(drain(a))
        assert [p for _, _, p in got] == [n.encode() for n in names]
