"""Integration tests of mybus_actors.registry with real processes.

Children are `python -c` processes driven line by line over stdin/stdout; every wait is
bounded, every child is killed and reaped in a finally, and each test ends with no child
process and no file left in its runtime directory.
"""

from __future__ import annotations

import os
import pathlib
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import psutil
import pytest

from mybus_actors.errors import NameTaken
from mybus_actors.registry import Entry, Registry, is_alive, ring_filename

TIMEOUT = 20.0

CHILD = textwrap.dedent(
    """
    import os, pathlib, sys
    from mybus_actors.errors import NameTaken
    from mybus_actors.registry import Registry

    root, name, mode = sys.argv[1:4]
    reg = Registry(root)
    bell = reg.doorbell_path()

    def say(line):
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    if mode == "hold":
        reg.register(name, doorbell=bell)
        bell.touch()
        (reg.rings_dir / f"{name}~other.1").touch()
        (reg.rings_dir / f"other~{name}.2").touch()
        say(f"READY {os.getpid()}")
    elif mode == "race":
        say("WAITING")
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)
        try:
            reg.register(name, doorbell=bell)
        except NameTaken:
            say("TAKEN")
            sys.exit(0)
        (reg.rings_dir / f"{name}~winner.1").touch()
        say("WON")
    if sys.stdin.readline().strip() == "exit":
        assert reg.unregister(name)
        bell.unlink(missing_ok=True)
    """
)


class Children:
    """The child processes of one test; `close` kills and reaps them all."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(self.root), name, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=TIMEOUT)
            finally:
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()


def read_line(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> str:
    """Read one line the child prints, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"child {proc.pid} printed nothing within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=TIMEOUT)
        assert proc.stderr is not None
        pytest.fail(f"child {proc.pid} exited ({proc.returncode}): {proc.stderr.read()}")
    return line.strip()


def tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def wait_until_zombie(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait for child `pid` to exit without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"child {pid} did not exit within {timeout}s of SIGKILL")
        time.sleep(0.005)


def files_under(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


@pytest.fixture
def reg(tmp_path: pathlib.Path) -> Registry:
    return Registry(tmp_path / "node")


@pytest.fixture
def children(reg: Registry) -> Iterator[Children]:
    kids = Children(reg.root)
    try:
        yield kids
    finally:
        kids.close()
        assert psutil.Process().children() == []
        assert files_under(reg.root) == []


def hold(children: Children, name: str) -> tuple[subprocess.Popen[str], Entry]:
    proc = children.start(name, "hold")
    assert read_line(proc) == f"READY {proc.pid}"
    return proc, Registry(children.root).lookup(name)


def child_files(reg: Registry, name: str, entry: Entry) -> list[pathlib.Path]:
    return [
        reg.rings_dir / f"{name}~other.1",
        reg.rings_dir / f"other~{name}.2",
        pathlib.Path(entry.doorbell),
    ]


@pytest.mark.timeout(60)
def test_killed_holder_is_reclaimed(reg: Registry, children: Children) -> None:
    proc, entry = hold(children, "worker")
    assert entry.pid == proc.pid
    assert entry.create_time == psutil.Process(proc.pid).create_time()
    assert all(p.exists() for p in child_files(reg, "worker", entry))

    with pytest.raises(NameTaken) as info:
        reg.register("worker", doorbell=reg.doorbell_path())
    assert str(proc.pid) in str(info.value)

    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL

    mine = reg.register("worker", doorbell=reg.doorbell_path())
    assert mine.pid == os.getpid()
    assert reg.lookup("worker") == mine
    assert not any(p.exists() for p in child_files(reg, "worker", entry))
    assert reg.unregister("worker")


@pytest.mark.timeout(60)
def test_unreaped_killed_child_is_dead(reg: Registry, children: Children) -> None:
    proc, entry = hold(children, "zed")
    os.kill(proc.pid, signal.SIGKILL)
    wait_until_zombie(proc.pid)
    assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    assert not is_alive(entry.pid, entry.create_time)

    assert [e.name for e in reg.reclaim()] == ["zed"]
    assert not any(p.exists() for p in child_files(reg, "zed", entry))
    mine = reg.register("zed", doorbell=reg.doorbell_path())
    assert reg.list() == [mine]
    assert reg.unregister("zed")
    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_clean_exit_unregisters(reg: Registry, children: Children) -> None:
    proc, entry = hold(children, "polite")
    assert reg.unregister("polite") is False  # not this process's entry
    assert reg.lookup("polite") == entry
    tell(proc, "exit")
    assert proc.wait(timeout=TIMEOUT) == 0
    assert reg.list() == []
    assert reg.remove_rings_of("polite") == 0  # its own unregister removed them


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stale_first", [False, True], ids=["free", "stale"])
def test_racing_registrants_one_wins(reg: Registry, children: Children, stale_first: bool) -> None:
    if stale_first:
        # A stale entry (this pid, other create time: a reused pid) that every racer
        # must reclaim first; only one may delete it, and nobody the winner's entry.
        ctime = psutil.Process().create_time() - 3600
        stale = Entry("prize", os.getpid(), ctime, str(reg.bells_dir / "gone"), 1)
        (reg.actors_dir / "prize").write_bytes(stale.to_json())
        (reg.rings_dir / ring_filename("prize", "x", 1)).touch()

    racers = [children.start("prize", "race") for _ in range(4)]
    for proc in racers:
        assert read_line(proc) == "WAITING"
    for proc in racers:
        tell(proc, "go")
    results = {proc.pid: read_line(proc) for proc in racers}

    winners = [pid for pid, result in results.items() if result == "WON"]
    assert len(winners) == 1, results
    assert sorted(results.values()) == ["TAKEN", "TAKEN", "TAKEN", "WON"]
    assert reg.lookup("prize").pid == winners[0]
    assert [p.name for p in reg.rings_dir.iterdir()] == ["prize~winner.1"]
    assert [p.name for p in reg.actors_dir.iterdir()] == ["prize"]

    for proc in racers:
        if proc.pid != winners[0]:
            assert proc.wait(timeout=TIMEOUT) == 0
    winner = next(p for p in racers if p.pid == winners[0])
    tell(winner, "exit")
    assert winner.wait(timeout=TIMEOUT) == 0
    assert reg.list() == []
