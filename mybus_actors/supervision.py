"""Supervision: restart strategies and the decisions a supervisor makes about its children.

Pure: no actors, rings or processes, and the clock is passed in. The runtime asks a
`Supervisor` what to do when a child ends and carries the answer out (restart these
children after this delay, forget this one and tell the parent, or give up).

The meanings are Erlang's. ``restart`` is per child: "permanent" is always restarted,
"transient" only after an abnormal end, "temporary" never. The strategy is per
supervisor: `OneForOne` restarts the child that ended; `OneForAll` restarts every child;
`RestForOne` restarts the child that ended and every child started after it. More than
``max_restarts`` restarts within ``within`` seconds and the supervisor gives up. Between
consecutive restarts of one child there is a delay: ``backoff[0]``, doubling with each
restart of that child in the window, at most ``backoff[1]``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

__all__ = [
    "ON_ERROR",
    "RESTART_TYPES",
    "ChildSpec",
    "Forget",
    "GiveUp",
    "OneForAll",
    "OneForOne",
    "RestForOne",
    "Restart",
    "Strategy",
    "Supervisor",
    "should_restart",
]

RestartType = Literal["permanent", "transient", "temporary"]
OnError = Literal["resume", "restart", "stop"]
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")
ON_ERROR: tuple[str, ...] = ("resume", "restart", "stop")


def _pair(value: Sequence[float]) -> tuple[float, float]:
    first, largest = value
    return float(first), float(largest)


def _check_backoff(_: object, __: object, value: tuple[float, float]) -> None:
    first, largest = value
    if not (0 <= first <= largest):
        raise ValueError(f"backoff must be (first, largest), 0 <= first <= largest: {value!r}")


def _check_on_error(_: object, __: object, value: str) -> None:
    if value not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}; got {value!r}")


def _non_negative(_: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")


def _positive(_: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value!r}")


@attrs.frozen
class Strategy:
    """What a supervisor does when a child ends: see `OneForOne`, `OneForAll`, `RestForOne`.

    Args:
        max_restarts: restarts allowed within ``within`` seconds; one more and the
            supervisor stops all its children and ends with reason "max restarts".
        within: the window, in seconds.
        backoff: (first, largest) delay in seconds before a restart of one child,
            doubling with each restart of that child within the window.
        on_error: what an exception escaping a child's ``receive`` does: "resume" (it
            is logged, the asker gets `ActorError`, the child goes on), "restart" (an
            abnormal end: a restartable child comes back as a fresh instance), "stop"
            (an abnormal end: the child's ``restart`` type decides whether it returns).
    """

    max_restarts: int = attrs.field(default=3, validator=_non_negative)
    within: float = attrs.field(default=5.0, validator=_positive)
    backoff: tuple[float, float] = attrs.field(
        default=(0.01, 1.0), converter=_pair, validator=_check_backoff
    )
    on_error: OnError = attrs.field(default="resume", validator=_check_on_error)

    def affected(self, order: Sequence[str], failed: str) -> list[str]:
        """The children to restart, in start order, when ``failed`` is to be restarted."""
        raise NotImplementedError  # each strategy below says


@attrs.frozen
class OneForOne(Strategy):
    """Restart only the child that ended (the default for every actor)."""

    def affected(self, order: Sequence[str], failed: str) -> list[str]:
        return [failed]


@attrs.frozen
class OneForAll(Strategy):
    """Restart every child when one ends (they depend on each other)."""

    def affected(self, order: Sequence[str], failed: str) -> list[str]:
        return list(order)


@attrs.frozen
class RestForOne(Strategy):
    """Restart the child that ended and every child started after it."""

    def affected(self, order: Sequence[str], failed: str) -> list[str]:
        return list(order[order.index(failed) :])


def should_restart(restart: str, abnormal: bool) -> bool:
    return restart == "permanent" or (restart == "transient" and abnormal)


@attrs.define(eq=False)
class ChildSpec:
    """How to start one child again, and its own restart history."""

    name: str
    cls: type
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.Factory(dict)
    restart: RestartType = "temporary"
    process: bool = False
    restarts: deque[float] = attrs.Factory(deque)  # this child's, within the window


@attrs.frozen
class Restart:
    """Restart ``names`` (in start order; those still running are stopped first, latest
    started first) after ``delay`` seconds. ``dropped``: temporary siblings the strategy
    stops with them, never to return (no longer children: the parent hears of them)."""

    names: list[str]
    delay: float
    dropped: list[str] = attrs.Factory(list)


@attrs.frozen
class Forget:
    """The child is not restarted: it is no longer a child; the parent hears of it
    (`Terminated`)."""

    name: str


@attrs.frozen
class GiveUp:
    """Too many restarts: stop every child, then end the supervisor ("max restarts")."""


Decision = Restart | Forget | GiveUp


class Supervisor:
    """One actor's children, in start order, and the restarts it has made."""

    def __init__(self, strategy: Strategy, clock: Callable[[], float]) -> None:
        self.strategy = strategy
        self._clock = clock
        self.children: dict[str, ChildSpec] = {}
        self._restarts: deque[float] = deque()

    def add(self, spec: ChildSpec) -> None:
        if spec.name in self.children:
            raise ValueError(f"{spec.name!r} is already a child")
        self.children[spec.name] = spec

    def remove(self, name: str) -> ChildSpec | None:
        return self.children.pop(name, None)

    def order(self) -> list[str]:
        return list(self.children)

    def decide(self, name: str, abnormal: bool) -> Decision:
        """Child ``name`` ended (``abnormal``: it died, failed or was killed)."""
        spec = self.children.get(name)
        if spec is None or not should_restart(spec.restart, abnormal):
            self.children.pop(name, None)
            return Forget(name)
        now = self._clock()
        window = self.strategy.within
        _trim(self._restarts, now - window)
        self._restarts.append(now)
        if len(self._restarts) > self.strategy.max_restarts:
            return GiveUp()
        _trim(spec.restarts, now - window)
        first, largest = self.strategy.backoff
        delay = min(first * (2 ** len(spec.restarts)), largest)
        spec.restarts.append(now)
        names = self.strategy.affected(self.order(), name)
        # A temporary sibling is stopped with the others but not started again.
        kept = [n for n in names if n == name or self.children[n].restart != "temporary"]
        dropped = [n for n in names if n not in kept]
        for n in dropped:
            del self.children[n]
        return Restart(kept, delay, dropped)


def _trim(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()
