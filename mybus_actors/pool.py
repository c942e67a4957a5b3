"""Worker pools: ``size`` workers behind one address, each message to one of them.

A pool is a router actor named ``name`` whose children are the workers ``name.0`` …
``name.<size-1>``, each restarted permanently (in processes of their own by default).
The router forwards what it gets to one worker without answering itself: a tell keeps
its sender, an ask its sender and correlation id, so the worker's reply goes straight
back to the asker. ``routing="round-robin"`` cycles; ``"least-loaded"`` picks the
worker with the fewest bytes unread in its mailbox, read from the counters of the
router's own ring to it (no message asks), a worker asleep on its doorbell (idle)
before one that is awake with bytes unread (busy). A worker that is restarting is skipped.
`Broadcast` (what `Ref.broadcast` sends) goes to every worker.
"""

from __future__ import annotations

import logging
from typing import Any

from mybus_actors.actor import Actor
from mybus_actors.messages import Broadcast, Terminated
from mybus_actors.supervision import OneForOne

__all__ = ["ROUTINGS", "PoolRouter"]

_log = logging.getLogger("mybus_actors.pool")
ROUTINGS = ("least-loaded", "round-robin")


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
    ) -> None:
        check_pool(size, routing)
        self._cls = cls
        self._args = args
        self._kwargs = kwargs
        self._process = process
        self._least_loaded = routing == "least-loaded"
        self._workers = [f"{self.name}.{i}" for i in range(size)]
        self._next = 0

    def on_start(self) -> None:
        for worker in self._workers:
            self.spawn(self._cls, worker, args=self._args, kwargs=self._kwargs,
                       process=self._process, restart="permanent")  # fmt: skip

    def receive(self, message: Any) -> None:
        rt = self._mb_rt
        if isinstance(message, Terminated) and self.sender is None:
            _log.warning("%s: worker %s ended for good (%s)", self.address, message.address,
                         message.reason)  # fmt: skip
            return
        if isinstance(message, Broadcast):
            for worker in self._workers:
                rt.forward(self._mb_cell, worker, message.message)
            return
        rt.forward(self._mb_cell, self._pick(), message)

    def _pick(self) -> str:
        rt = self._mb_rt
        n = len(self._workers)
        start = self._next
        self._next = (start + 1) % n
        best: str | None = None
        best_load = (2, 0)
        for i in range(n):
            worker = self._workers[(start + i) % n]
            if rt.restarting(self._mb_cell, worker):
                continue
            if not self._least_loaded:
                return worker
            # Fewest unread bytes, an idle (asleep) worker before a busy one: in a burst
            # the idle ones have bytes unread too, until they wake.
            load = rt.load(self._mb_cell, worker)
            if best is None or load < best_load:
                best, best_load = worker, load
                if load == (0, 0):
                    break
        return best if best is not None else self._workers[start]
