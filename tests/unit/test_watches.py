"""Unit tests for `mybus_actors.watches`: who is told what when a watched actor ends.

In-process: the host is a small recorder of what `Watches` asks of the runtime (sends,
notices, descriptors); watching another process's actor through a pidfd is tested with
real processes in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mybus_actors.cell import Cell
from mybus_actors.errors import ActorNotFound
from mybus_actors.messages import Terminated
from mybus_actors.registry import Entry
from mybus_actors.watches import Watches

NODE = "here"


class Host:
    """Records what the watches ask of their runtime."""

    def __init__(self, *, reachable: bool = True) -> None:
        self.node = NODE
        self.cells: dict[str, Cell] = {}
        self.sent: list[tuple[str, str, tuple[Any, ...]]] = []
        self.later: list[tuple[str, Terminated]] = []
        self.now: list[tuple[str, Terminated]] = []
        self.decided: list[tuple[str, str, str]] = []
        self.children: dict[tuple[str, str], str] = {}  # (supervisor, address) -> child
        self.closed: set[tuple[str, str]] = set()
        self.reachable = reachable

    def add(self, name: str) -> Cell:
        cell = self.cells[name] = Cell(name, f"{NODE}/{name}")
        return cell

    def lookup(self, name: str) -> Entry:
        raise ActorNotFound(name)

    def tell_system(self, sender: str, to: str, message: tuple[Any, ...]) -> bool:
        self.sent.append((sender, to, message))
        return self.reachable

    def notify_later(self, cell: Cell, message: Terminated) -> None:
        self.later.append((cell.name, message))

    def notify(self, cell: Cell, message: Terminated) -> None:
        self.now.append((cell.name, message))

    def receiver_closed(self, sender: str, name: str) -> bool:
        return (sender, name) in self.closed

    def supervised(self, cell_name: str, address: str) -> Callable[[str], None] | None:
        child = self.children.get((cell_name, address))
        if child is None:
            return None
        return lambda reason: self.decided.append((cell_name, child, reason))

    def poll_fd(self, fd: int, on: bool) -> None:
        raise AssertionError("no pidfd in these tests")


def test_a_local_actor_is_watched_by_its_cell_alone() -> None:
    host = Host()
    watches = Watches(host)
    a, b = host.add("a"), host.add("b")
    watches.watch(a, "b")
    assert b.watchers == {"a"} and a.watching == {f"{NODE}/b"}
    assert host.sent == []  # same process: no message, no descriptor
    watches.terminated(f"{NODE}/b", "stopped")
    assert host.now == [("a", Terminated(f"{NODE}/b", "stopped"))]
    assert a.watching == set()
    watches.terminated(f"{NODE}/b", "stopped")  # once only
    assert len(host.now) == 1


def test_an_actor_that_cannot_be_found_is_reported_later_not_inside_watch() -> None:
    host = Host()
    watches = Watches(host)
    a = host.add("a")
    watches.watch(a, "ghost")
    assert host.now == []
    assert host.later == [("a", Terminated(f"{NODE}/ghost", "not found"))]
    assert a.watching == set()


def test_a_remote_actor_is_asked_and_the_gateway_told() -> None:
    host = Host()
    watches = Watches(host)
    a = host.add("a")
    watches.watch(a, "there/b")
    assert host.sent == [
        ("a", "there/b", ("watch",)),
        ("a", "gateway", ("watch-remote", "there/b")),
    ]
    watches.unwatch(a, "there/b")
    assert host.sent[2:] == [
        ("a", "there/b", ("unwatch",)),
        ("a", "gateway", ("unwatch-remote", "there/b")),
    ]
    watches.terminated("there/b", "stopped")  # after unwatch: nobody is told
    assert host.now == []


def test_an_unreachable_node_is_reported() -> None:
    host = Host(reachable=False)
    watches = Watches(host)
    a = host.add("a")
    watches.watch(a, "there/b")
    assert host.later == [("a", Terminated("there/b", "node unreachable"))]


def test_a_supervisor_decides_on_its_process_child_and_others_are_told() -> None:
    host = Host()
    watches = Watches(host)
    sup, other = host.add("sup"), host.add("other")
    host.children[("sup", "there/w")] = "w"
    watches.watch(sup, "there/w")
    watches.watch(other, "there/w")
    watches.terminated("there/w", "died")
    assert host.decided == [("sup", "w", "died")]  # no Terminated for a restartable child
    assert host.now == [("other", Terminated("there/w", "died"))]
    assert sup.watching == set() and other.watching == set()


def test_two_watchers_share_one_request_and_the_last_unwatch_withdraws_it() -> None:
    host = Host()
    watches = Watches(host)
    a, b = host.add("a"), host.add("b")
    watches.watch(a, "there/x")
    watches.watch(b, "there/x")
    assert len(host.sent) == 2  # one request (and one to the gateway) for both
    watches.unwatch(a, "there/x")
    assert len(host.sent) == 2  # b still watches: the request, made as a, stands
    watches.terminated("there/x", "stopped")
    assert host.now == [("b", Terminated("there/x", "stopped"))]
    watches.watch(a, "there/y")
    watches.watch(b, "there/y")
    watches.unwatch(b, "there/y")
    watches.unwatch(a, "there/y")
    assert host.sent[-2:] == [
        ("a", "there/y", ("unwatch",)),  # withdrawn by the name it was made under
        ("a", "gateway", ("unwatch-remote", "there/y")),
    ]
