"""Pending asks: correlation ids, the futures that wait on them, and error replies.

Knows futures and the shape of an error reply; does not know rings, actors or clocks
(a deadline is a number the owner hands in, and `PendingAsks.expire` compares it with
a ``now`` handed in). A reply that comes after its ask
was given up finds no entry and is discarded: it can never answer a later ask, because
correlation ids are never reused within a table.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import threading
import traceback
from collections.abc import Callable, Generator
from contextvars import Context
from heapq import heapify, heappop, heappush
from typing import Any, Final, Protocol

from mybus_actors.codec import contained
from mybus_actors.errors import ActorError, ActorNotFound, DeadlockError, MyBusError

__all__ = [
    "AskFuture",
    "PendingAsks",
    "RoundTrips",
    "StepsTasks",
    "error_from_reply",
    "error_reply",
]

_UNSET: Any = object()
_WAITERS_LOCK = threading.Lock()


class AskFuture:
    """The answer to an ``ask``: await it in ``async def receive``, or add a callback.

    Resolved by the dispatcher that owns it. Blocking on it with `result` from that
    dispatcher's own thread (inside a plain ``receive``) raises `DeadlockError` at once:
    the reply could never be read while the dispatcher waits.
    """

    __slots__ = (
        "_callbacks", "_done", "_exc", "_owner", "_result", "_waiter", "description", "tag",
    )  # fmt: skip

    def __init__(
        self, description: str, owner_thread: int | None = None, tag: object = None
    ) -> None:
        self.description = description
        self.tag = tag  # the asker's: what it needs to find or explain this ask later
        self._owner = owner_thread
        self._result: object = _UNSET
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[AskFuture], None]] = []
        self._done = False
        # Made only when a thread blocks in result(): most asks are awaited or pumped.
        self._waiter: threading.Event | None = None

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self._exc else "done")
        return f"<AskFuture {self.description} {state}>"

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> object:
        """The reply, waiting up to ``timeout`` from a thread other than the dispatcher's.

        Raises:
            DeadlockError: called on the owning dispatcher's thread before the reply came.
            TimeoutError: no reply within ``timeout``.
            ActorError, ActorNotFound, AskTimeout: the ask failed.
        """
        if not self._done:
            if self._owner == threading.get_ident():
                raise DeadlockError(
                    f"blocking on {self.description} inside a plain receive() would stall"
                    " the dispatcher that must read the reply: declare `async def receive`"
                    " and `await self.ask(...)`, or use add_done_callback()"
                )
            with _WAITERS_LOCK:
                if self._waiter is None:
                    self._waiter = threading.Event()
                waiter = self._waiter
                done = self._done
            if not done and not waiter.wait(timeout):
                raise TimeoutError(f"{self.description} has no reply yet")
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self) -> BaseException | None:
        return self._exc

    def add_done_callback(self, fn: Callable[[AskFuture], None]) -> None:
        """Call ``fn(self)`` once resolved (at once if already), on the resolving thread."""
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def set_result(self, value: object) -> None:
        self._finish(value, None)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(_UNSET, exc)

    def _finish(self, value: object, exc: BaseException | None) -> None:
        if self._done:
            return
        self._result, self._exc = value, exc
        with _WAITERS_LOCK:
            self._done = True
            waiter = self._waiter
        if waiter is not None:
            waiter.set()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def __await__(self) -> Generator[Any, None, object]:
        if not self._done:
            waiter = _Wakeup(asyncio.get_running_loop())
            self.add_done_callback(waiter.wake)
            yield from waiter
        return self.result()


class StepsTasks(Protocol):
    """A loop that runs task wake-ups itself (the dispatcher's: `aio.DispatchLoop`)."""

    def step_soon(
        self, callback: Callable[[Any], object], arg: object, context: Context | None
    ) -> None: ...


_PENDING, _DONE, _CANCELLED = 0, 1, 2


class _Wakeup:
    """What a task waits on while it awaits an `AskFuture`.

    It keeps asyncio's future protocol (a Task parks on it and can cancel it), but not
    the cost of asyncio.Future's wake-up: that schedules the task with ``call_soon``,
    for a pass of the loop to run, and a pass (``run_forever`` until a ``stop``) costs
    more than the rest of an ask between two processes. On the loop of the thread that
    awaited, when that loop offers `StepsTasks.step_soon`, the task's wake-up goes to
    the loop's own queue instead, which its dispatcher runs right after the reply was
    delivered; elsewhere it is scheduled as asyncio would.
    """

    __slots__ = ("_asyncio_future_blocking", "_callbacks", "_loop", "_msg", "_state", "_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False  # the Task protocol: True while yielded
        self._loop = loop
        self._thread = threading.get_ident()
        self._state = _PENDING
        self._msg: object = None
        self._callbacks: list[tuple[Callable[[Any], object], Context | None]] = []

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> None:
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(*(() if self._msg is None else (self._msg,)))
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("the ask has not been answered yet")

    def exception(self) -> BaseException | None:
        self.result()
        return None

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: Context | None = None
    ) -> None:
        if self._state == _PENDING:
            self._callbacks.append((fn, context))
        else:
            self._loop.call_soon(fn, self, context=context)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        kept = [(f, c) for f, c in self._callbacks if f != fn]
        removed = len(self._callbacks) - len(kept)
        self._callbacks = kept
        return removed

    def cancel(self, msg: object = None) -> bool:
        """The awaiting task was cancelled: it wakes at the loop's next pass (the ask
        itself still stands; its reply, if any, is discarded)."""
        if self._state != _PENDING:
            return False
        self._state, self._msg = _CANCELLED, msg
        callbacks, self._callbacks = self._callbacks, []
        for fn, ctx in callbacks:
            self._loop.call_soon(fn, self, context=ctx)
        return True

    def wake(self, _: AskFuture) -> None:
        """The ask was answered (or failed): wake the task that awaits it."""
        if self._state != _PENDING:
            return
        self._state = _DONE
        callbacks, self._callbacks = self._callbacks, []
        loop = self._loop
        step_soon = getattr(loop, "step_soon", None)
        same_thread = threading.get_ident() == self._thread
        for fn, ctx in callbacks:
            if step_soon is not None and same_thread:
                step_soon(fn, self, ctx)
            elif same_thread:
                loop.call_soon(fn, self, context=ctx)
            else:
                loop.call_soon_threadsafe(fn, self, context=ctx)

    def __await__(self) -> Generator[_Wakeup, None, None]:
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            yield self
        self.result()

    __iter__ = __await__


SPIN_CAP: Final = 1e-3  # replies usually back within this long are waited for by spinning
_GAIN: Final = 0.125  # the weight of each new round trip in the estimate (TCP's SRTT's)


class RoundTrips:
    """How long an owner's asks usually take, and so how long to spin for a reply.

    A waiter spins briefly (``spin``) before it sleeps on its doorbell. Across nodes a
    reply takes hundreds of microseconds, longer than that spin, and on a busy machine
    waking from the sleep costs nearly as much again: spinning through the usual round
    trip (and half as much again) meets the reply instead, as long as replies come
    within `SPIN_CAP`. Replies that usually take longer get the plain spin: a spin that
    would rarely meet them only takes a CPU from whoever must answer.

    The estimate is a moving average of answered asks (timed-out ones say nothing about
    how soon replies come); pure: the owner hands in each round trip.
    """

    __slots__ = ("usual",)

    def __init__(self) -> None:
        self.usual: float | None = None  # seconds; None before the first answered ask

    def observe(self, seconds: float) -> None:
        # A reply slower than twice the cap says only "slow": one such (a barrier after
        # a stream, a busy actor) does not outweigh the fast ones around it.
        seconds = min(seconds, 2 * SPIN_CAP)
        usual = self.usual
        self.usual = seconds if usual is None else usual + _GAIN * (seconds - usual)

    def spin(self, plain: float) -> float:
        """How long to spin for the next reply, for a waiter whose own spin is ``plain``."""
        usual = self.usual
        if usual is None:
            return plain
        through = 1.5 * usual
        return through if plain < through <= SPIN_CAP else plain


class PendingAsks:
    """Correlation id → future, for one mailbox's outstanding asks, and when they time
    out. Thread-safe.

    A deadline is a number handed in (`new`) and compared with a ``now`` handed in
    (`expire`): the table reads no clock. Deadlines sit in a heap; an ask answered
    before its deadline leaves its entry behind, dropped when it reaches the top or
    when such entries outnumber the pending asks (cheaper than removing each one: an
    ask costs a push, not a timer to schedule and cancel).
    """

    def __init__(self, owner_thread: int | None = None) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, AskFuture] = {}
        self._lock = threading.Lock()
        self._owner = owner_thread
        self.deadlines: list[tuple[float, int]] = []  # a heap of (deadline, corr)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, corr: object) -> bool:
        return corr in self._pending

    def new(
        self, description: str, *, deadline: float | None = None, tag: object = None
    ) -> tuple[int, AskFuture]:
        """A new ask: its correlation id and future; it fails at `expire` once
        ``deadline`` has passed (never, if None)."""
        fut = AskFuture(description, self._owner, tag)
        with self._lock:
            corr = next(self._ids)
            self._pending[corr] = fut
            if deadline is not None:
                heap = self.deadlines
                heappush(heap, (deadline, corr))
                if len(heap) > 2 * len(self._pending) + 1024:
                    self._prune()
        return corr, fut

    def _prune(self) -> None:
        """Drop the entries of asks no longer pending (lock held)."""
        pending = self._pending
        self.deadlines = [entry for entry in self.deadlines if entry[1] in pending]
        heapify(self.deadlines)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a pending ask."""
        with self._lock:
            heap, pending = self.deadlines, self._pending
            while heap and heap[0][1] not in pending:
                heappop(heap)
            return heap[0][0] if heap else None

    def expire(self, now: float, error: Callable[[AskFuture], BaseException]) -> int:
        """Fail every pending ask whose deadline is ``now`` or earlier with
        ``error(future)``; return how many failed."""
        expired: list[AskFuture] = []
        with self._lock:
            heap, pending = self.deadlines, self._pending
            while heap and heap[0][0] <= now:
                fut = pending.pop(heappop(heap)[1], None)
                if fut is not None:
                    expired.append(fut)
        for fut in expired:
            fut.set_exception(error(fut))
        return len(expired)

    def pop(self, corr: int) -> AskFuture | None:
        with self._lock:
            return self._pending.pop(corr, None)

    def resolve(self, corr: int, value: object) -> bool:
        """Answer an ask; False when nobody waits any more (the reply is discarded)."""
        fut = self.pop(corr)
        if fut is None:
            return False
        fut.set_result(value)
        return True

    def fail(self, corr: int, exc: BaseException) -> bool:
        fut = self.pop(corr)
        if fut is None:
            return False
        fut.set_exception(exc)
        return True

    def fail_where(
        self, which: Callable[[AskFuture], bool], exc_factory: Callable[[AskFuture], BaseException]
    ) -> int:
        """Fail the pending asks ``which`` picks; return how many."""
        with self._lock:
            picked = [corr for corr, fut in self._pending.items() if which(fut)]
            futures = [self._pending.pop(corr) for corr in picked]
        for fut in futures:
            fut.set_exception(exc_factory(fut))
        return len(futures)

    def fail_all(self, exc_factory: Callable[[AskFuture], BaseException]) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self.deadlines = []
        for fut in pending.values():
            fut.set_exception(exc_factory(fut))


def error_reply(exc: BaseException) -> tuple[str, str, str, BaseException | None]:
    """What travels back to an asker when ``receive`` raised: names, text, the exception.

    The exception itself is included only when it survives a pickle round trip.
    """
    tb = "".join(traceback.format_exception(exc))
    original: BaseException | None = exc
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
    except BaseException as err:  # an exception's own unpickling may even sys.exit
        if not contained(err):
            raise
        original = None
    return type(exc).__qualname__, str(exc), tb, original


def error_from_reply(address: str, reply: object) -> MyBusError:
    """Turn an error reply into the `ActorError` an asker raises (cause chained)."""
    if not (isinstance(reply, tuple) and len(reply) == 4):
        return ActorError(f"actor {address} failed with an unreadable error reply: {reply!r}")
    type_name, text, tb, original = reply
    if isinstance(original, ActorNotFound):
        return original  # a gateway's "no such actor there": the same error as locally
    err = ActorError(f"actor {address} raised {type_name}: {text}\n--- remote traceback ---\n{tb}")
    if isinstance(original, BaseException):
        err.__cause__ = original
    return err
