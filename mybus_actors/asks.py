"""Pending asks: correlation ids, the futures that wait on them, and error replies.

Knows futures and the shape of an error reply; does not know rings, actors or clocks
(timeouts are scheduled by whoever owns the table). A reply that comes after its ask
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
from typing import Any

from mybus_actors.codec import contained
from mybus_actors.errors import ActorError, ActorNotFound, DeadlockError, MyBusError

__all__ = ["AskFuture", "PendingAsks", "error_from_reply", "error_reply"]

_UNSET: Any = object()
_WAITERS_LOCK = threading.Lock()


class AskFuture:
    """The answer to an ``ask``: await it in ``async def receive``, or add a callback.

    Resolved by the dispatcher that owns it. Blocking on it with `result` from that
    dispatcher's own thread (inside a plain ``receive``) raises `DeadlockError` at once:
    the reply could never be read while the dispatcher waits.
    """

    __slots__ = ("_callbacks", "_done", "_exc", "_owner", "_result", "_waiter", "description")

    def __init__(self, description: str, owner_thread: int | None = None) -> None:
        self.description = description
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
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()

            def wake(_: AskFuture) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.add_done_callback(wake)
            yield from waiter.__await__()
        return self.result()


class PendingAsks:
    """Correlation id → future, for one mailbox's outstanding asks. Thread-safe."""

    def __init__(self, owner_thread: int | None = None) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, AskFuture] = {}
        self._lock = threading.Lock()
        self._owner = owner_thread

    def __len__(self) -> int:
        return len(self._pending)

    def new(self, description: str) -> tuple[int, AskFuture]:
        fut = AskFuture(description, self._owner)
        with self._lock:
            corr = next(self._ids)
            self._pending[corr] = fut
        return corr, fut

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

    def fail_all(self, exc_factory: Callable[[AskFuture], BaseException]) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
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
