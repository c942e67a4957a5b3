"""The examples and the main job run as a user would run them, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
    ],
)
def test_example_runs(runtime_dir: Path, script: str, args: list[str], expect: str) -> None:
    out = run([str(ROOT / "examples" / script), *args])
    assert expect in out, out


def test_main_job_demo_runs_and_leaves_nothing(runtime_dir: Path) -> None:
    out = run(["-m", "mybus_actors.demo", "--count", "5000", "--asks", "200"])
    assert "spawned 4 actors" in out
    assert "files left behind: none" in out, out
