"""Worker pools: ``size`` workers behind one address, each message to one of them.

A pool is a router actor named ``name`` whose children are the workers ``name.0`` …
``name.<size-1>``, each restarted permanently (in processes of their own by default).
An exception in a worker does what the pool's parent's ``on_error`` says (resume, for
a top-level pool). The router forwards what it gets to one worker without answering
itself: a tell keeps its sender, an ask its sender and correlation id, so the worker's
reply goes straight back to the asker. ``routing="round-robin"`` cycles;
``"least-loaded"`` picks the worker with the fewest bytes unread in its mailbox, read
from the counters of the router's own ring to it (no message asks), a worker asleep on
its doorbell (idle) before one that is awake with bytes unread (busy). A worker that is
restarting is skipped; what a worker never read because it ended goes to another
(the runtime re-sends the records as they were); while no worker takes anything (all
restarting), messages wait in the router, up to 10,000 and 10 s, then their senders
get `MailboxFull` (a tell's sender as a dead letter). `Broadcast` (what `Ref.broadcast`
sends) goes to every worker.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, NamedTuple, Protocol, cast

import attrs

from mybus_actors.actor import Actor
from mybus_actors.errors import ActorNotFound, MailboxFull, MyBusError, ResourceExhausted
from mybus_actors.messages import Broadcast, Terminated
from mybus_actors.supervision import OneForOne

__all__ = ["ROUTINGS", "PoolRouter"]

_log = logging.getLogger(__name__)
ROUTINGS = ("least-loaded", "round-robin")
_HOLD_MAX = 10_000  # messages a pool keeps while no worker takes them
_HOLD_FOR = 10.0  # seconds it keeps one (a tell's default timeout), then MailboxFull
_RETRY_EVERY = 0.01
_RETRY = "_mb-pool-retry"  # from itself (sender None): time to send what waits


Envelope = tuple[str | None, int, int]  # a received message's sender, kind, correlation id


class RouterHost(Protocol):
    """What a router needs of the dispatcher hosting it, besides `ActorContext`
    (`runtime.Runtime` is one; ``cell`` is the router's own)."""

    def envelope(self, cell: Any) -> Envelope: ...
    def forward(
        self, cell: Any, to: str, message: Any, envelope: Envelope | None = ...
    ) -> None: ...
    def forward_failed(
        self, cell: Any, exc: MyBusError, envelope: Envelope | None = ...
    ) -> None: ...
    def send_raw(self, cell: Any, to: str, meta: int, payload: bytes) -> None: ...
    def bounce_raw(self, cell: Any, meta: int, payload: bytes, reason: str) -> None: ...
    def restarting(self, parent: Any, name: str) -> bool: ...
    def load(self, cell: Any, to: str) -> tuple[int, int]: ...


class _Held(NamedTuple):
    envelope: Envelope | None  # a message received (sender, kind, corr)
    message: Any
    meta: int | None  # or a record as it was read from a ring
    payload: bytes | None
    deadline: float


def check_pool(size: int, routing: str) -> None:
    """Raises: ValueError for a size below 1 or an unknown routing."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"a pool needs at least one worker, got size={size!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}; got {routing!r}")


class PoolRouter(Actor):
    """The actor behind a pool's address (see the module's docstring)."""

    # Workers are restarted permanently; a pool gives up only on a burst of crashes.
    supervision = OneForOne(max_restarts=30, within=5.0)

    def __init__(
        self,
        cls: type[Actor],
        size: int,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        process: bool = True,
        routing: str = "least-loaded",
        on_error: str = "resume",
    ) -> None:
        check_pool(size, routing)
        # The pool's parent's on_error holds for its workers too: a pool is part of it.
        self.supervision = attrs.evolve(PoolRouter.supervision, on_error=on_error)  # type: ignore[misc,arg-type]
        self._cls = cls
        self._args = args
        self._kwargs = kwargs
        self._process = process
        self._least_loaded = routing == "least-loaded"
        self._workers = [f"{self.name}.{i}" for i in range(size)]
        self._next = 0
        # What no worker could take (all restarting, say): sent as workers come back.
        self._held: deque[_Held] = deque()
        self._retry_pending = False

    def on_start(self) -> None:
        for worker in self._workers:
            self.spawn(self._cls, worker, args=self._args, kwargs=self._kwargs,
                       process=self._process, restart="permanent")  # fmt: skip

    def receive(self, message: Any) -> None:
        rt = self._rt
        if self.sender is None:
            if message == _RETRY:
                self._retry_pending = False
                self._flush()
                return
            if isinstance(message, Terminated):
                _log.warning("%s: worker %s ended for good (%s)", self.address,
                             message.address, message.reason)  # fmt: skip
                return
        if isinstance(message, Broadcast):
            envelope = rt.envelope(self._cell)
            for worker in self._workers:
                try:
                    rt.forward(self._cell, worker, message.message, envelope)
                except (ActorNotFound, MailboxFull, ResourceExhausted) as exc:
                    _log.warning("%s: broadcast to %s not sent: %s", self.address, worker, exc)
            return
        self._take(_Held(rt.envelope(self._cell), message, None, None, self._deadline()))

    @property
    def _rt(self) -> RouterHost:
        # A router is the runtime's own: it uses more of it than ActorContext declares.
        return cast(RouterHost, self._mb_rt)

    @property
    def _cell(self) -> Any:
        return self._mb_cell

    def take_raw(self, dead: str, meta: int, payload: bytes) -> None:
        """A record worker ``dead`` never read (it ended first): another worker takes it."""
        self._take(_Held(None, None, meta, payload, self._deadline()), avoid={dead})

    def _deadline(self) -> float:
        return time.monotonic() + _HOLD_FOR

    def _take(self, held: _Held, avoid: set[str] | None = None) -> None:
        # Behind what waits already, if anything does: the order of one sender is kept.
        if self._held or not self._send(held, set(avoid or ())):
            self._hold(held)

    def _send(self, held: _Held, tried: set[str]) -> bool:
        """Pass ``held`` to a worker; False when none took it (all restarting or full)."""
        rt = self._rt
        while True:
            worker = self._pick(tried)
            if worker in tried:
                return False
            tried.add(worker)
            try:
                if held.payload is not None:
                    assert held.meta is not None
                    rt.send_raw(self._cell, worker, held.meta, held.payload)
                else:
                    rt.forward(self._cell, worker, held.message, held.envelope)
                return True
            except (ActorNotFound, MailboxFull, ResourceExhausted) as exc:
                # Ended before we heard of it, restarting, or full: try another.
                _log.debug("%s: %s did not take a message: %s", self.address, worker, exc)

    def _hold(self, held: _Held) -> None:
        if len(self._held) >= _HOLD_MAX:
            self._give_back(held, f"the workers of {self.address} are all unavailable and "
                                  f"{_HOLD_MAX} messages wait already")  # fmt: skip
            return
        self._held.append(held)
        self._retry_soon()

    def _retry_soon(self) -> None:
        if not self._retry_pending:
            self._retry_pending = True
            self.send_after(_RETRY_EVERY, _RETRY)

    def _flush(self) -> None:
        """Send what waits, oldest first, while workers take it; give back the expired."""
        now = time.monotonic()
        while self._held:
            held = self._held[0]
            if not self._send(held, set()):
                if held.deadline <= now:
                    self._held.popleft()
                    self._give_back(held, f"no worker of {self.address} came back within "
                                          f"{_HOLD_FOR}s")  # fmt: skip
                    continue
                self._retry_soon()
                return
            self._held.popleft()

    def _give_back(self, held: _Held, reason: str) -> None:
        rt = self._rt
        if held.payload is not None:
            assert held.meta is not None
            rt.bounce_raw(self._cell, held.meta, held.payload, reason)
        else:
            rt.forward_failed(self._cell, MailboxFull(reason), held.envelope)

    def pick_other(self, avoid: set[str]) -> str | None:
        """A worker not in ``avoid`` (for what one of them never read); None if none."""
        worker = self._pick(avoid)
        return worker if worker not in avoid else None

    def _pick(self, avoid: set[str] | frozenset[str] = frozenset()) -> str:
        rt = self._rt
        n = len(self._workers)
        start = self._next
        self._next = (start + 1) % n
        best: str | None = None
        best_load = (2, 0)
        for i in range(n):
            worker = self._workers[(start + i) % n]
            if worker in avoid or rt.restarting(self._cell, worker):
                continue
            if not self._least_loaded:
                return worker
            # Fewest unread bytes, an idle (asleep) worker before a busy one: in a burst
            # the idle ones have bytes unread too, until they wake.
            load = rt.load(self._cell, worker)
            if best is None or load < best_load:
                best, best_load = worker, load
                if load == (0, 0):
                    break
        return best if best is not None else self._workers[start]
