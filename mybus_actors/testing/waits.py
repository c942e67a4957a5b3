"""`wait_for_condition`: poll until something holds, with a deadline (Akka's awaitCond,
Ray's test helper of the same name). A test waits for an outcome, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for_condition"]

T = TypeVar("T")


def wait_for_condition(
    condition: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``condition()`` every ``interval`` seconds until it returns something true;
    return that.

    Raises:
        AssertionError: it did not within ``timeout`` (naming ``what`` and the last value).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            label = what or getattr(condition, "__name__", "condition")
            raise AssertionError(f"not within {timeout}s: {label} (last: {value!r})")
        time.sleep(min(interval, remaining))
