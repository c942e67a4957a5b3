"""One host under pressure: descriptors, shared memory, and errors that reach the sender.

Real processes throughout: actors are spawned (`actors` fixture), descriptor limits are
the spawned process's own (``prlimit`` on its pid, as ``ulimit -n`` would set them), the
small /dev/shm is a real tmpfs mounted for the test, and a truncation is done by another
process. Every wait is bounded; the fixtures check that no process and no file is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mybus_actors.registry import Registry

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


pytestmark = pytest.mark.timeout(120)

WAIT = 10.0  # the bound on any single receive or ask that should succeed
PEER = str(HERE / "peer.py")


# -- 1. a client hears what an actor would ---------------------------------------------


# -- 2. a large message cut short by MailboxFull ---------------------------------------


# -- 3. descriptors have owners ---------------------------------------------------------


# -- 4. at the descriptor limit ----------------------------------------------------------


# -- 5. the registry near its descriptor limit -------------------------------------------

LOOKUP_AT_THE_LIMIT = textwrap.dedent(
    """
    import os, resource, sys, threading
    from mybus_actors.errors import ActorNotFound, ResourceExhausted
    from mybus_actors.registry import Registry

    reg = Registry(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    seen = set()

    def look():
        for _ in range(200):
            try:
                reg.lookup("held")
                seen.add("found")
            except ResourceExhausted:
                seen.add("ResourceExhausted")
            except ActorNotFound:
                seen.add("ActorNotFound")
            except Exception as exc:
                seen.add(type(exc).__name__)

    threads = [threading.Thread(target=look) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fd in held:
        os.close(fd)
    print(",".join(sorted(seen)))
    """
)


def test_lookup_out_of_descriptors_never_deletes_a_live_entry(runtime_dir: Path) -> None:
    registry = Registry(runtime_dir)
    bell = registry.doorbell_path()
    entry = registry.register("held", doorbell=bell)
    # Old enough that an entry judged unreadable would be reclaimed at once.
    old = time.time() - 60
    os.utime(runtime_dir / "actors" / "held", (old, old))
    try:
        done = subprocess.run(
            [sys.executable, "-c", LOOKUP_AT_THE_LIMIT, str(runtime_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ResourceExhausted", done.stdout
        assert registry.lookup("held") == entry  # still there, still ours
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from mybus_actors.registry import Registry;"
             " r = Registry(sys.argv[1]); r.register('held', doorbell=r.doorbell_path())",
             str(runtime_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert other.returncode != 0 and "NameTaken" in other.stderr, other.stderr
    finally:
        registry.unregister("held")


# -- 7, 9. payloads the receiver cannot decode ------------------------------------------


# -- 8. a small /dev/shm, and a ring truncated by another process ----------------------


# -- 10. a Ref's own client ------------------------------------------------------------


