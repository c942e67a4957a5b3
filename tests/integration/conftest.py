"""The `actors` fixture: what a test spawned and connected, stopped and closed after it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    # spawn() hands sys.path to the children as PYTHONPATH: they import the *_lib modules.
    sys.path.insert(0, str(HERE))

from harness import Actors  # noqa: E402


@pytest.fixture
def actors(runtime_dir: Path) -> Iterator[Actors]:
    started = Actors(runtime_dir)
    try:
        yield started
    finally:
        started.close()
