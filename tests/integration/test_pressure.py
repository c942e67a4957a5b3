"""One host under pressure: descriptors, shared memory, and errors that reach the sender.

Real processes throughout: actors are spawned (`actors` fixture), descriptor limits are
the spawned process's own (``prlimit`` on its pid, as ``ulimit -n`` would set them), the
small /dev/shm is a real tmpfs mounted for the test, and a truncation is done by another
process. Every wait is bounded; the fixtures check that no process and no file is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import mybus_actors as mb
from mybus_actors.ref import close_clients
from mybus_actors.registry import Registry

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import actors_lib as lib  # noqa: E402
from harness import Actors  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0  # the bound on any single receive or ask that should succeed
PEER = str(HERE / "peer.py")


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.005)


# -- 1. a client hears what an actor would ---------------------------------------------


def test_a_client_hears_its_tells_returned_by_a_stopped_actor(
    actors: Actors, runtime_dir: Path, tmp_path: Path
) -> None:
    flood = 2000
    heard: list[tuple[Any, str]] = []
    me = actors.connect("observer")
    pusher = actors.connect("pusher", on_dead_letter=lambda m, why: heard.append((m, why)))
    sink = actors.spawn(lib.Counter, "sink", notify="observer")
    release = tmp_path / "release-sink"

    def stop_ring(fname: str) -> bool:  # the Ref client's ring to the sink
        return fname.startswith("_client-") and fname.split(".")[0].endswith("~sink")

    me.tell("sink", ("hold", str(release)))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            assert me.receive(timeout=WAIT) == ("holding", actors.address("sink"))
            stopping = pool.submit(sink.stop, 30)
            wait_until(lambda: any(stop_ring(f) for f in os.listdir(runtime_dir / "rings")),
                       WAIT, "Ref.stop sent its stop")  # fmt: skip
            for i in range(flood):
                pusher.tell("sink", ("n", i))
        finally:
            release.touch()
        assert stopping.result(timeout=40) is True
    stopped = me.receive(timeout=WAIT)
    assert stopped[0] == "stopped"
    handled: list[int] = stopped[2]
    # What the sink never read comes back to the client (its endpoint reads the closed
    # ring back on its next sweep, which any call of the client runs).
    deadline = time.monotonic() + WAIT
    while len(handled) + len(heard) < flood:
        assert time.monotonic() < deadline, (len(handled), len(heard))
        with contextlib.suppress(TimeoutError):
            pusher.receive(timeout=0.1)
    dead = [m[1] for m, _ in heard]
    assert sorted(handled + dead) == list(range(flood))  # each once: handled or returned
    assert dead, "the sink stopped before reading the flood: some must come back"
    assert pusher.dead_letters == len(dead)
    assert all("sink" in why and "stopped" in why for _, why in heard)
    with pytest.raises(mb.ActorNotFound):
        pusher.ask("sink", "anyone?", timeout=WAIT)


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


def test_the_runtime_directory_is_empty_once_every_ref_is_stopped(runtime_dir: Path) -> None:
    first = mb.spawn(lib.Echo, "one")
    second = mb.spawn(lib.Echo, "two")
    try:
        assert first.ask("a", timeout=WAIT) == "a"
        assert second.ask("b", timeout=WAIT) == "b"
        copy = pickle.loads(pickle.dumps(second))  # another Ref to "two", using the client
        assert copy.ask("c", timeout=WAIT) == "c"
        del copy
        gc.collect()
        assert first.stop(timeout=10)
        clients = [n for n in os.listdir(runtime_dir / "actors") if n.startswith("_client-")]
        assert len(clients) == 1  # still used by the second Ref
        assert second.stop(timeout=10)
        left = sorted(str(p.relative_to(runtime_dir)) for p in runtime_dir.rglob("*")
                      if not p.is_dir())  # fmt: skip
        assert left == [], left  # no close_clients() needed
    finally:
        for ref in (first, second):
            if ref.is_alive():
                ref.kill()
            ref.join(10)
        close_clients()
