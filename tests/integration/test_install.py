"""Installing without a C compiler still succeeds, and the pure-Python ring core runs.

The project is copied (without any built extension) and installed with pip into a
private directory while ``CC=/bin/false`` stands in for the compiler, so building
`_ringcore` fails; the extension is optional, so the install must not. Then a Python
that sees only that directory (``-S``: not this environment's site-packages, where the
editable install would supply the native core) imports the package: one warning line,
the pure core in use, a message through a ring.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import mybus_actors
from mybus_actors import ring, ringcore
assert ringcore.CORE == "python", ringcore.CORE
assert ringcore.Producer is ring.Producer
try:
    import mybus_actors._ringcore
except ImportError:
    pass
else:
    raise AssertionError("a native core was built with CC=/bin/false")
buf = bytearray(ring.buffer_size(1024))
ring.init_ring(buf, 1024)
p, c = ringcore.Producer(buf), ringcore.Consumer(buf)
assert p.offer(b"hello", 7)
assert c.poll() == [(7, b"hello")]
print(ringcore.describe())
"""


def test_install_without_a_compiler_runs_the_pure_core(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "mybus_actors",
        src / "mybus_actors",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    site = tmp_path / "site"
    env = {**os.environ, "CC": "/bin/false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(site), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert not list((site / "mybus_actors").glob("_ringcore*.so"))
    env = {k: v for k, v in os.environ.items() if k != "MYBUS_PURE_PYTHON"}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run(
        [sys.executable, "-S", "-c", CHECK],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ring core: pure Python (the C extension")
    warning_lines = run.stderr.splitlines()
    assert len(warning_lines) == 1, run.stderr
    assert "NativeCoreMissing" in warning_lines[0]
