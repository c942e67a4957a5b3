"""Unit tests for `_ringcore.Teller`, `Runtime.tell`'s common call in C.

The Teller's own logic (which calls it takes, which it hands to the Python method) is
held against plain Python callables standing in for the runtime's method, the codec and
the endpoint's send; then two runtimes of one process, each with mailboxes of its own on
real rings in a runtime directory of the test's, show an actor's tell travelling through
it and every other kind of tell still reaching the Python method. A native core that is
not built fails here, it is not skipped.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mybus_actors as mb
from mybus_actors import _ringcore, codec
from mybus_actors.runtime import Runtime


class Calls:
    """What the Teller called, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def slow(self, *args: Any, **kwargs: Any) -> None:
        self.log.append(("slow", args, kwargs))

    def encode(self, message: Any) -> tuple[int, bytes]:
        self.log.append(("encode", message))
        return 7, b"body:" + repr(message).encode()

    def send(self, *args: Any, **kwargs: Any) -> None:
        self.log.append(("send", args, kwargs))

    def encode_named(self, message: Any, **kwargs: Any) -> tuple[int, bytes]:
        self.log.append(("encode", message, kwargs))
        return 9, b"named:" + repr(message).encode()


@pytest.fixture
def calls() -> Calls:
    return Calls()


def teller(
    calls: Calls, routes: dict[str, tuple[str, str]], cells: dict[str, Any]
) -> _ringcore.Teller:
    return _ringcore.Teller(calls.slow, routes, cells, "here", calls.encode, calls.send)


def test_a_known_address_of_another_process_is_encoded_and_sent(calls: Calls) -> None:
    tell = teller(calls, {"b": ("here", "b")}, {"a": object()})
    assert tell("a", "b", {"x": 1}) is None
    assert calls.log == [
        ("encode", {"x": 1}),
        ("send", ("a", "b", b"body:{'x': 1}", 7), {}),
    ]


@pytest.mark.parametrize(
    ("routes", "cells", "to"),
    [
        ({}, {}, "b"),  # not parsed yet: the method parses and caches it
        ({"elsewhere/b": ("elsewhere", "b")}, {}, "elsewhere/b"),  # another node
        ({"b": ("here", "b")}, {"b": object()}, "b"),  # an actor of this process
        ({"b": ("here", "b")}, {}, b"b"),  # not a str: the method says why
    ],
    ids=["unknown", "another-node", "same-process", "not-a-str"],
)
def test_everything_else_goes_to_the_python_method_as_it_came(
    calls: Calls, routes: dict[str, tuple[str, str]], cells: dict[str, Any], to: Any
) -> None:
    teller(calls, routes, cells)("a", to, "m")
    assert calls.log == [("slow", ("a", to, "m"), {})]


def test_keywords_or_other_arities_go_to_the_python_method(calls: Calls) -> None:
    tell = teller(calls, {"b": ("here", "b")}, {})
    tell("a", "b", "m", timeout=1.0)
    tell("a", "b", "m", "extra")
    tell("a", "b")
    assert calls.log == [
        ("slow", ("a", "b", "m"), {"timeout": 1.0}),
        ("slow", ("a", "b", "m", "extra"), {}),
        ("slow", ("a", "b"), {}),
    ]


def test_it_reads_the_runtimes_dicts_at_each_call(calls: Calls) -> None:
    routes: dict[str, tuple[str, str]] = {}
    cells: dict[str, Any] = {}
    tell = teller(calls, routes, cells)
    tell("a", "b", 1)
    routes["b"] = ("here", "b")
    tell("a", "b", 2)
    cells["b"] = object()
    tell("a", "b", 3)
    assert [entry[0] for entry in calls.log] == ["slow", "encode", "send", "slow"]


def test_errors_of_encode_and_send_reach_the_caller(calls: Calls) -> None:
    def refuse(message: Any) -> tuple[int, bytes]:
        raise mb.SerializationError("cannot pickle it")

    def full(*args: Any) -> None:
        raise mb.MailboxFull("b is full")

    routes = {"b": ("here", "b")}
    with pytest.raises(mb.SerializationError, match="cannot pickle it"):
        _ringcore.Teller(calls.slow, routes, {}, "here", refuse, calls.send)("a", "b", 1)
    with pytest.raises(mb.MailboxFull, match="b is full"):
        _ringcore.Teller(calls.slow, routes, {}, "here", calls.encode, full)("a", "b", 1)
    bad = _ringcore.Teller(calls.slow, routes, {}, "here", lambda m: [1, b""], calls.send)
    with pytest.raises(TypeError, match=r"\(meta, body\)"):
        bad("a", "b", 1)
    assert [entry[0] for entry in calls.log] == ["encode"]


FAR = {"far/b": ("far", "b")}


def remote_teller(calls: Calls, forwards: dict[str, Any], send: Any = None) -> _ringcore.Teller:
    return _ringcore.Teller(
        calls.slow, FAR, {}, "here", calls.encode_named, send or calls.send, forwards=forwards
    )


def test_a_known_address_on_another_node_goes_into_its_forward_ring(calls: Calls) -> None:
    tell = remote_teller(calls, {"far/b": "gateway+far+b"})
    tell("a", "far/b", {"x": 1})
    tell("here/a", "far/b", 2)  # a sender named in full is named as it is
    assert calls.log == [
        ("encode", {"x": 1}, {"sender": "here/a"}),
        ("send", ("a", "gateway+far+b", b"named:{'x': 1}", 9), {}),
        ("encode", 2, {"sender": "here/a"}),
        ("send", ("here/a", "gateway+far+b", b"named:2", 9), {}),
    ]


@pytest.mark.parametrize(
    "forwards", [{}, {"far/b": b"gateway+far+b"}], ids=["ring-unknown", "ring-not-a-str"]
)
def test_another_node_without_a_known_ring_goes_to_the_python_method(
    calls: Calls, forwards: dict[str, Any]
) -> None:
    remote_teller(calls, forwards)("a", "far/b", "m")
    assert calls.log == [("slow", ("a", "far/b", "m"), {})]


def test_no_gateway_is_the_python_methods_to_handle_and_other_errors_reach_the_caller(
    calls: Calls,
) -> None:
    def no_gateway(*args: Any) -> None:
        calls.log.append(("send", args, {}))
        raise mb.ActorNotFound("no gateway")

    remote_teller(calls, {"far/b": "gateway+far+b"}, no_gateway)("a", "far/b", "m")
    assert [entry[0] for entry in calls.log] == ["encode", "send", "slow"]
    assert calls.log[-1] == ("slow", ("a", "far/b", "m"), {})

    def full(*args: Any) -> None:
        raise mb.MailboxFull("the outbox is full")

    with pytest.raises(mb.MailboxFull, match="outbox is full"):
        remote_teller(calls, {"far/b": "gateway+far+b"}, full)("a", "far/b", "m")


def test_the_default_tell_is_the_default_send() -> None:
    """`Actor.tell` takes the Teller for a tell at its default timeout, and the Teller
    calls the send without one: the three defaults must be the same number."""
    from mybus_actors.outbound import Outbound

    tell_default = (mb.Actor.tell.__kwdefaults__ or {})["timeout"]
    assert tell_default == (Runtime.tell.__kwdefaults__ or {})["timeout"]
    assert tell_default == (Outbound.send.__kwdefaults__ or {})["timeout"]


# -- in a runtime ----------------------------------------------------------------------------


class Sink(mb.Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def receive(self, message: Any) -> None:
        self.seen.append((self.sender, message))


class Teller(mb.Actor):
    """Tells what it is told to: (to, message, keywords)."""

    def receive(self, order: tuple[str, Any, dict[str, Any]]) -> None:
        to, message, keywords = order
        self.tell(to, message, **keywords)


@pytest.fixture
def pair() -> Iterator[tuple[Runtime, Runtime]]:
    """Two runtimes of one node in this process: to each, the other's actors are another
    process's (their cells are not its own), so their tells travel on rings."""
    root = Path(tempfile.mkdtemp(prefix="mybus-teller-", dir="/dev/shm"))
    a = Runtime(node="tell", runtime_dir=root)
    b = Runtime(node="tell", runtime_dir=root)
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        left = [p for p in root.rglob("*") if p.is_file()]
        shutil.rmtree(root)
        assert left == []


def run_until(runtimes: tuple[Runtime, ...], done: Any, cycles: int = 200) -> None:
    for _ in range(cycles):
        if done():
            return
        for rt in runtimes:
            rt.do_work()
    assert done()


def test_a_runtime_on_the_native_core_tells_through_the_teller(
    pair: tuple[Runtime, Runtime],
) -> None:
    a, b = pair
    assert isinstance(a.tell_plain, _ringcore.Teller)
    assert codec.encode is not codec.encode_python
    seen: list[Any] = []
    b.host(Sink, "sink", args=(seen,))
    b.host(Sink, "near", args=(seen,))  # in b's own process: handed over without a ring
    a.host(Teller, "teller")
    orders: list[tuple[str, Any, dict[str, Any]]] = [
        ("sink", {"n": 1}, {}),  # first sight of the address: the method parses it
        ("sink", {"n": 2}, {}),  # then the Teller
        ("tell/sink", b"raw", {}),  # the same actor by its full address
        ("sink", "with a timeout", {"timeout": 2.0}),  # keywords: the method
        ("sink", "non-blocking", {"block": False}),
    ]
    for order in orders:
        a.tell("test", "teller", order)
    b.host(Teller, "neighbour")
    b.tell("test", "neighbour", ("near", "local", {}))
    run_until((a, b), lambda: len(seen) == len(orders) + 1)
    assert sorted(seen, key=repr) == sorted(
        [("tell/teller", message) for _to, message, _kw in orders] + [("tell/neighbour", "local")],
        key=repr,
    )
    assert [m for s, m in seen if s == "tell/teller"] == [m for _t, m, _k in orders]
    assert a.cells["teller"].sent == len(orders)


def test_a_tell_through_the_teller_raises_as_the_method_does(
    pair: tuple[Runtime, Runtime],
) -> None:
    a, b = pair
    seen: list[Any] = []
    b.host(Sink, "sink", args=(seen,))
    a.host(Sink, "source", args=([],))
    a.tell_plain("source", "sink", "warm")  # its route is cached now
    gen = (i for i in range(1))
    with pytest.raises(mb.SerializationError):
        a.tell_plain("source", "sink", gen)  # a generator cannot be pickled
    with pytest.raises(mb.InvalidAddress):
        a.tell_plain("source", "no such//address", 1)
    with pytest.raises(mb.ActorNotFound):
        a.tell_plain("source", "nobody", 1)
    a.tell_plain("source", "sink", "after")
    run_until((a, b), lambda: len(seen) == 2)
    assert seen == [("tell/source", "warm"), ("tell/source", "after")]
