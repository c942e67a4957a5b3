"""Fixtures shared by all tests: a private runtime directory and a leak check.

Every test that uses `runtime_dir` gets its own directory on tmpfs (like the real
default, /dev/shm) and its own node name; at teardown it asserts that no file is left in
it and that no child process of the test runner is left, then removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


def leftover_files(root: Path) -> list[str]:
    """Files (not directories) under ``root``, as relative paths."""
    return sorted(
        str(Path(dirpath, f).relative_to(root))
        for dirpath, _dirs, files in os.walk(root)
        for f in files
    )


def reap_children(timeout: float = 5.0) -> list[str]:
    """Kill and reap any child process still running; return what was found."""
    children = psutil.Process().children(recursive=True)
    found = [f"{c.pid} {c.name()}" for c in children if c.is_running()]
    for c in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            c.kill()
    psutil.wait_procs(children, timeout=timeout)
    return found


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = (SHM / f"mybus-test-{os.getuid()}") if SHM else tmp_path
    root = base / uuid.uuid4().hex[:12]
    root.mkdir(parents=True, mode=0o700)
    node = "t" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("MYBUS_RUNTIME_DIR", str(root))
    monkeypatch.setenv("MYBUS_NODE", node)
    try:
        yield root
        children = reap_children()
        left = leftover_files(root)
        assert not children, f"child processes left behind: {children}"
        assert not left, f"files left in the runtime directory: {left}"
    finally:
        reap_children()
        shutil.rmtree(root, ignore_errors=True)
        if SHM:
            with contextlib.suppress(OSError):
                base.rmdir()
