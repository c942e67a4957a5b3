"""Bounded waits shared by the integration tests and the actors they spawn.

Spawned actors import this module too (the tests' directory is on their PYTHONPATH).
"""

from __future__ import annotations

import os
import time
from typing import Any

import mybus_actors as mb

HOLD_LIMIT = 30.0  # the longest any test actor waits for a release file


def wait_for_file(path: str, limit: float = HOLD_LIMIT) -> bool:
    """Keep the caller busy until ``path`` exists (True) or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.005)


def receive_until(client: mb.Client, predicate: Any, timeout: float) -> Any:
    """The first message that satisfies ``predicate``; others are skipped (bounded)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{client.address}: nothing matching within {timeout}s: {seen}")
        message = client.receive(timeout=remaining)
        if predicate(message):
            return message
        seen.append(message)
