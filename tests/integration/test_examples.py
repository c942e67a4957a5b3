"""The examples and the main job run as a user would run them, so they cannot rot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import mybus_actors as mb
from mybus_actors import ringcore
from mybus_actors.ref import close_clients

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("ping_pong.py", ["300"], "played 300 rounds"),
        ("worker_pool.py", ["300", "3"], "300 jobs on 3 workers"),
        ("pipeline.py", ["2000"], "order kept: True"),
        ("supervision_tree.py", ["200"], "and its parser restarted: True"),
    ],
)
def test_example_runs(runtime_dir: Path, script: str, args: list[str], expect: str) -> None:
    out = run([str(ROOT / "examples" / script), *args])
    assert expect in out, out


def test_main_job_demo_runs_and_leaves_nothing(runtime_dir: Path) -> None:
    out = run(["-m", "mybus_actors.demo", "--count", "5000", "--asks", "200"])
    assert "spawned 4 actors" in out
    assert ringcore.describe() in out
    assert "files left behind: none" in out, out


class _Echo(mb.Actor):
    def receive(self, message: object) -> None:
        self.reply(message)


def test_mybus_ls_and_clean_show_actors_and_reclaim_the_dead(runtime_dir: Path) -> None:
    ref = mb.spawn(_Echo, "listed")
    try:
        with mb.connect("lister") as me:
            assert me.ask("listed", 1) == 1
            out = run(["-m", "mybus_actors.cli", "ls"])
            assert "listed" in out and "lister" in out and "listed -> lister" in out
            assert ringcore.describe() in out  # which ring core runs: native, when built
        os.kill(ref.pid, signal.SIGKILL)
        psutil.Process(ref.pid).wait(10)  # reaped, so the next registry access sees it dead
        out = run(["-m", "mybus_actors.cli", "clean"])
        assert "reclaimed listed" in out
    finally:
        ref.stop()
        close_clients()
