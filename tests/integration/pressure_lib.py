"""Actors and payloads for test_pressure.py (spawned actors import this module too).

Each payload here unpickles badly on purpose in a process that receives it: one calls
``sys.exit`` while it loads. The classes are importable, so the sender can pickle them;
what runs at load time is the receiver's problem, and must stay contained there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mybus_actors as mb


class ExitsWhenLoaded:
    """Unpickling this calls ``sys.exit(3)`` in the receiver."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (3,))


class Filler(mb.Actor):
    """In on_start, tells ``to`` ``size`` bytes once; writes what happened to ``report``.

    The outcome is "sent" or the name of the exception the tell raised; then it echoes.
    """

    def __init__(self, to: str, size: int, report: str) -> None:
        self.to = to
        self.size = size
        self.report = report

    def on_start(self) -> None:
        try:
            self.tell(self.to, bytes(self.size), timeout=2.0)
        except Exception as exc:
            outcome = type(exc).__name__
        else:
            outcome = "sent"
        Path(self.report).write_text(outcome)

    def receive(self, message: Any) -> None:
        self.reply(message)
