"""Watches: who watches which actor, and the `Terminated` notices when one ends.

An actor watching another gets ``Terminated(address, reason)`` once it ends. How the
end is learnt depends on where the watched actor is:

- in this process: its own end sends the notice (no descriptor, no message);
- in another process of this node: a ("watch",) system message asks it for the notice
  (a clean stop sends it), and a pidfd in the dispatcher's poll set says when its
  process exits: "stopped" if it had closed the channel our request went on, else
  "died";
- on another node: the ("watch",) request goes there, and the gateway is asked to report
  the node unreachable.

A process child's end goes to its supervisor's strategy instead (it is told only if the
child is not restarted). An address that cannot be watched gets its notice at once
("not found", "node unreachable"), queued, never handed over inside the `watch` call.

Knows cells, addresses and pidfds; sends and deliveries are its host's (`WatchHost`), so
it is tested in-process without rings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from mybus_actors.address import format_address, parse_address
from mybus_actors.cell import Cell, Watch
from mybus_actors.errors import ActorNotFound
from mybus_actors.messages import Terminated
from mybus_actors.registry import FORWARD_TO as GATEWAY
from mybus_actors.registry import Entry, is_alive

__all__ = ["WatchHost", "Watches"]


class WatchHost(Protocol):
    """What `Watches` needs of the runtime that hosts it."""

    node: str
    cells: dict[str, Cell]

    def lookup(self, name: str) -> Entry: ...
    def tell_system(self, sender: str, to: str, message: tuple[Any, ...]) -> bool: ...
    def notify_later(self, cell: Cell, message: Terminated) -> None: ...
    def notify(self, cell: Cell, message: Terminated) -> None: ...
    def receiver_closed(self, sender: str, name: str) -> bool: ...
    def supervised(self, cell_name: str, address: str) -> Callable[[str], None] | None: ...
    def poll_fd(self, fd: int, on: bool) -> None: ...


class Watches:
    """The watches of one runtime (see the module's docstring)."""

    def __init__(self, host: WatchHost) -> None:
        self._host = host
        self._by_address: dict[str, Watch] = {}
        self._by_pidfd: dict[int, str] = {}

    @property
    def pidfds(self) -> list[int]:
        """The descriptors to poll: each becomes readable when its process exits."""
        return list(self._by_pidfd)

    def __contains__(self, fd: int) -> bool:
        return fd in self._by_pidfd

    def _parse(self, address: str) -> tuple[str, str, str]:
        """(node, name, the address in full) of what a cell names."""
        node, name = parse_address(address, self._host.node)
        return node, name, format_address(node, name)

    def watch(self, cell: Cell, address: str) -> None:
        host = self._host
        node, name, address = self._parse(address)
        cell.watching.add(address)
        w = self._by_address.get(address)
        if w is not None:
            w.cells.add(cell.name)
            return
        if node != host.node:
            self._watch_remote(cell, address)
            return
        target = host.cells.get(name)
        if target is not None:  # same process: no pidfd, the notice is enough
            w = Watch(address, None)
        else:
            pidfd = self._open_pidfd(name)
            if pidfd is None:
                self._not_watchable(cell, address, "not found")
                return
            w = Watch(address, pidfd)
            self._by_pidfd[pidfd] = address
            host.poll_fd(pidfd, True)
        w.cells.add(cell.name)
        w.registrant = cell.name
        self._by_address[address] = w
        if target is not None:
            target.watchers.add(cell.name)
        else:
            host.tell_system(cell.name, name, ("watch",))

    def _watch_remote(self, cell: Cell, address: str) -> None:
        """Ask the remote actor for its notice; the gateway reports its node unreachable."""
        host = self._host
        w = Watch(address, None)
        w.cells.add(cell.name)
        w.registrant = cell.name
        self._by_address[address] = w
        if not (
            host.tell_system(cell.name, address, ("watch",))
            and host.tell_system(cell.name, GATEWAY, ("watch-remote", address))
        ):
            self._drop(w)
            self._not_watchable(cell, address, "node unreachable")

    def _not_watchable(self, cell: Cell, address: str, reason: str) -> None:
        cell.watching.discard(address)
        # Queued, not handed over: watch() may be running inside receive().
        self._host.notify_later(cell, Terminated(address, reason))

    def _open_pidfd(self, name: str) -> int | None:
        try:
            entry = self._host.lookup(name)
            pidfd = os.pidfd_open(entry.pid)
        except (ActorNotFound, ProcessLookupError):
            return None
        # The pid might have died and been reused between the lookup and the open.
        if not is_alive(entry.pid, entry.create_time):
            os.close(pidfd)
            return None
        return pidfd

    def unwatch(self, cell: Cell, address: str) -> None:
        host = self._host
        node, name, address = self._parse(address)
        cell.watching.discard(address)
        w = self._by_address.get(address)
        if w is None:
            return
        w.cells.discard(cell.name)
        target = host.cells.get(name) if node == host.node else None
        if target is not None:
            target.watchers.discard(cell.name)
        if w.cells:
            return  # the others still watch: the request stands (their notice comes)
        self._drop(w)
        if target is None:
            host.tell_system(w.registrant, address, ("unwatch",))
            if node != host.node:
                host.tell_system(w.registrant, GATEWAY, ("unwatch-remote", address))

    def _drop(self, w: Watch) -> None:
        self._by_address.pop(w.address, None)
        if w.pidfd is not None:
            self._by_pidfd.pop(w.pidfd, None)
            self._host.poll_fd(w.pidfd, False)
            os.close(w.pidfd)

    def process_exited(self, pidfd: int) -> bool:
        """The process behind ``pidfd`` exited (the caller has read what it published
        before it did): its watchers learn why. False if ``pidfd`` is not ours."""
        address = self._by_pidfd.get(pidfd)
        if address is None:
            return False
        self.terminated(address, self._end_reason(address))
        return True

    def _end_reason(self, address: str) -> str:
        """Why a watched process ended without a notice: "stopped" if it closed the
        channel our watch request went on (it stopped cleanly before reading it), else
        "died"."""
        w = self._by_address.get(address)
        name = parse_address(address, self._host.node)[1]
        if w is not None and any(self._host.receiver_closed(c, name) for c in w.cells):
            return "stopped"
        return "died"

    def terminated(self, address: str, reason: str) -> None:
        """``address`` ended for ``reason``: a notice to each watcher, or to the
        supervisor's strategy for a process child."""
        host = self._host
        w = self._by_address.get(address)
        if w is None:
            return
        self._drop(w)
        for name in list(w.cells):
            decide = host.supervised(name, address)
            if decide is not None:  # its supervisor decides; it is told only if it ends
                w.cells.discard(name)
                host.cells[name].watching.discard(address)
                decide(reason)
        for name in w.cells:
            watcher = host.cells.get(name)
            if watcher is not None and not watcher.finished:
                watcher.watching.discard(address)
                host.notify(watcher, Terminated(address, reason))

    def close(self) -> None:
        for w in list(self._by_address.values()):
            self._drop(w)
