"""What a test left behind: files in a runtime directory, child processes still running.

The kit's fixtures check both at teardown and fail the test when either is found; they
clean up regardless (the processes killed and reaped, the directory removed), so that
one leaky test does not break the next. Usable on their own too::

    watch = ChildWatch()          # before the code under test starts anything
    ...
    assert watch.reap() == []     # what it started and left running, now killed
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

__all__ = ["ChildWatch", "leftover_files", "reap_children"]


def leftover_files(root: Path) -> list[str]:
    """Files (not directories) under ``root``, as sorted relative paths.

    Directories do not count: the runtime makes ``actors/``, ``rings/`` and the like once
    and keeps them; a file in them is an actor's entry, a ring or a doorbell that nobody
    removed.
    """
    return sorted(
        str(Path(dirpath, f).relative_to(root))
        for dirpath, _dirs, files in os.walk(root)
        for f in files
    )


def _describe(proc: psutil.Process) -> str:
    try:
        cmdline = " ".join(proc.cmdline())[:120] or proc.name()
    except (psutil.Error, OSError):
        cmdline = "?"
    return f"pid {proc.pid} ({cmdline})"


def _kill_and_reap(procs: list[psutil.Process], timeout: float) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    # wait_procs waits (and so reaps) our own children; a grandchild whose parent we just
    # killed is reaped by init, and only needs to be gone.
    psutil.wait_procs(procs, timeout=timeout)


class ChildWatch:
    """The child processes of this process that were not there when it was made.

    A process the test runner had before the test (a session fixture's server, say) is
    not the test's leak, and neither are its descendants: they are left alone. A process
    is known by its pid and its create time, so a pid reused meanwhile is a new process.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._before = {self._key(p) for p in self._me.children()}

    @staticmethod
    def _key(proc: psutil.Process) -> tuple[int, float]:
        try:
            return proc.pid, proc.create_time()
        except psutil.Error:
            return proc.pid, 0.0

    def new(self) -> list[psutil.Process]:
        """Children (and their descendants) started since, still running or unreaped."""
        found: list[psutil.Process] = []
        for child in self._me.children():
            if self._key(child) in self._before:
                continue
            found.append(child)
            with contextlib.suppress(psutil.Error):
                found.extend(child.children(recursive=True))
        # A zombie counts: it is a child nobody waited for (a Popen dropped unreaped).
        return [p for p in found if p.is_running()]

    def reap(self, timeout: float = 5.0) -> list[str]:
        """Kill and reap what `new` finds; return a description of each (empty: clean)."""
        procs = self.new()
        found = [_describe(p) for p in procs]
        _kill_and_reap(procs, timeout)
        return found


def reap_children(timeout: float = 5.0) -> list[str]:
    """Kill and reap every child process of this one (whenever it started); return what
    was found. `ChildWatch` spares what was there before a test; this does not."""
    children = psutil.Process().children(recursive=True)
    found = [_describe(c) for c in children if c.is_running()]
    _kill_and_reap(children, timeout)
    return found
