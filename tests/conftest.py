"""Fixtures shared by all tests: the project's own tests run on the user's test kit.

`runtime_dir` is `mybus_node` (``mybus_actors.testing``, loaded as a pytest plugin by
its ``pytest11`` entry point) seen as a path: each test gets its own directory on tmpfs
(like the real default, /dev/shm) and its own node name, set in the environment; at
teardown the kit fails the test if a child process the test started or a file in the
directory is left, then kills, reaps and removes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mybus_actors.testing import Node, leftover_files, reap_children

__all__ = ["leftover_files", "reap_children"]  # as before, for tests that import them


@pytest.fixture
def runtime_dir(mybus_node: Node) -> Path:
    return mybus_node.runtime_dir
