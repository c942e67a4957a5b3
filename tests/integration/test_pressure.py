"""One host under pressure: descriptors, shared memory, and errors that reach the sender.

Real processes throughout: actors are spawned (`actors` fixture), descriptor limits are
the spawned process's own (``prlimit`` on its pid, as ``ulimit -n`` would set them), the
small /dev/shm is a real tmpfs mounted for the test, and a truncation is done by another
process. Every wait is bounded; the fixtures check that no process and no file is left.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import resource
import select
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import mybus_actors as mb
from mybus_actors.ref import close_clients
from mybus_actors.registry import Registry

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import actors_lib as lib  # noqa: E402
import pressure_lib  # noqa: E402
from harness import Actors, stopping_while_held  # noqa: E402
from waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0  # the bound on any single receive or ask that should succeed
PEER = str(HERE / "peer.py")


def descriptors(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def lowest_free_descriptor(pid: int) -> int:
    """The number the process's next descriptor would get: a limit at it allows none."""
    held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return min(set(range(len(held) + 1)) - held)


@contextlib.contextmanager
def nofile_limit(pid: int, soft: int) -> Iterator[None]:
    """Set process ``pid``'s descriptor limit (its ``ulimit -n``) for the block."""
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)


def ask_fresh(echo: str, message: Any, timeout: float) -> Any:
    """Ask from a client made for this one ask (a short-lived peer, as a script is)."""
    with mb.connect() as me:
        return me.ask(echo, message, timeout=timeout)


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
    with stopping_while_held(me, sink, release, runtime_dir, WAIT):
        for i in range(flood):
            pusher.tell("sink", ("n", i))
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


def test_mailbox_full_mid_large_message_never_reads_a_live_receivers_ring(
    actors: Actors, tmp_path: Path
) -> None:
    heard: list[tuple[Any, str]] = []
    me = actors.connect("observer")
    pusher = actors.connect("pusher", on_dead_letter=lambda m, why: heard.append((m, why)))
    sink = actors.spawn(lib.Counter, "sink", notify="observer")
    release = tmp_path / "release-sink"
    me.tell("sink", ("hold", str(release)))
    try:
        assert me.receive(timeout=WAIT) == ("holding", actors.address("sink"))
        for i in range(100):
            pusher.tell("sink", ("n", i))
        # More than the 2 MiB ring holds, to a receiver that reads nothing for now: its
        # fragments fill the ring, then the tell gives up in the middle of the message.
        with pytest.raises(mb.MailboxFull):
            pusher.tell("sink", bytes(5 << 20), timeout=0.5)
    finally:
        release.touch()
    for i in range(100, 110):  # after it: a new ring, read after the old one
        pusher.tell("sink", ("n", i))
    # Asked on the pusher's own ring, so answered after all 110 (FIFO per pair).
    assert pusher.ask("sink", "count?", timeout=WAIT) == (0, 0)  # no part of the big one
    assert sink.stop(timeout=10)
    stopped = me.receive(timeout=WAIT)
    assert stopped[:2] == ("stopped", actors.address("sink"))
    assert stopped[2] == list(range(110))  # every small one, once, in order
    with contextlib.suppress(TimeoutError):
        pusher.receive(timeout=0.3)  # pump: a dead letter would be heard now
    assert heard == [] and pusher.dead_letters == 0  # nothing delivered was returned


# -- 3. descriptors have owners ---------------------------------------------------------


def test_two_thousand_short_lived_clients_leave_an_echo_under_100_descriptors(
    actors: Actors,
) -> None:
    ref = actors.spawn(lib.Echo, "echo", greet=False)
    start = descriptors(ref.pid)
    most = start
    for i in range(2000):
        assert ask_fresh("echo", i, WAIT) == i
        if i % 20 == 0:
            most = max(most, descriptors(ref.pid))
    assert most < 100, f"the echo held {most} descriptors (it started with {start})"
    # Once the last client has gone, the echo is back to what it started with: a ring
    # and a doorbell descriptor live only as long as their peer.
    wait_until(lambda: descriptors(ref.pid) <= start, WAIT,
               f"the echo back to {start} descriptors (has {descriptors(ref.pid)})")  # fmt: skip


# -- 4. at the descriptor limit ----------------------------------------------------------


def test_an_echo_at_ulimit_256_stays_up_while_clients_churn(actors: Actors) -> None:
    ref = actors.spawn(lib.Echo, "echo", greet=False)
    registry = Registry(actors.runtime_dir)
    entry = registry.lookup("echo")
    failures: list[BaseException] = []

    def churn(worker: int) -> None:
        for i in range(200):
            try:
                assert ask_fresh("echo", (worker, i), WAIT) == (worker, i)
            except BaseException as exc:
                failures.append(exc)
                return

    with nofile_limit(ref.pid, 256):
        threads = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert failures == []
        assert ref.is_alive()
        assert descriptors(ref.pid) < 100
        assert ask_fresh("echo", "still there?", WAIT) == "still there?"
    assert registry.lookup("echo") == entry  # the very same registration
    with pytest.raises(mb.NameTaken):
        mb.spawn(lib.Echo, "echo")


def test_an_actor_out_of_descriptors_lives_and_answers_once_it_has_some(
    actors: Actors,
) -> None:
    ref = actors.spawn(lib.Echo, "echo", greet=False)
    base = lowest_free_descriptor(ref.pid)
    outcomes = []
    # From no descriptor to spare to a few: each step fails somewhere else (opening the
    # asker's ring, mapping it, creating the reply's ring, mapping that, its doorbell).
    for spare in range(6):
        with nofile_limit(ref.pid, base + spare):
            try:
                outcomes.append(ask_fresh("echo", spare, 0.5))
            except mb.AskTimeout:
                outcomes.append("timeout")
            assert ref.is_alive(), f"the echo died with {spare} descriptor(s) to spare"
    assert outcomes[0] == "timeout", outcomes  # with none, it cannot even read the ask
    assert ref.is_alive()
    assert ask_fresh("echo", "and now?", WAIT) == "and now?"


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


def test_an_undecodable_ask_gets_an_error_naming_why_at_once(
    actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A class only this process has: its module does not exist in the actor's process.
    module = types.ModuleType("only_in_the_asking_process")

    class Secret:
        pass

    Secret.__module__ = module.__name__
    Secret.__qualname__ = "Secret"
    module.Secret = Secret  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    pickle.dumps(Secret())  # it pickles here (by reference)

    actors.spawn(lib.Echo, "echo", greet=False)
    me = actors.connect()
    started = time.monotonic()
    with pytest.raises(mb.ActorError, match="only_in_the_asking_process"):
        me.ask("echo", Secret(), timeout=30)
    assert time.monotonic() - started < WAIT  # an answer, not the ask's timeout
    assert me.ask("echo", "still answering", timeout=WAIT) == "still answering"


def test_a_payload_that_calls_sys_exit_while_loading_does_not_stop_the_actor(
    actors: Actors,
) -> None:
    ref = actors.spawn(lib.Echo, "echo", greet=False)
    me = actors.connect()
    me.tell("echo", pressure_lib.ExitsWhenLoaded())
    with pytest.raises(mb.ActorError, match="SystemExit"):
        me.ask("echo", pressure_lib.ExitsWhenLoaded(), timeout=WAIT)
    assert me.ask("echo", "still here?", timeout=WAIT) == "still here?"
    assert ref.is_alive()


# -- 8. a small /dev/shm, and a ring truncated by another process ----------------------


def _mount_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if not Path("/proc/self/mountinfo").exists():
        return "no /proc/self/mountinfo"
    return None


@pytest.fixture
def small_shm(tmp_path: Path, runtime_dir: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs, room for five 2 MiB rings; unmounted (and checked empty) after."""
    reason = _mount_unavailable()
    if reason is not None:
        pytest.skip(reason)
    mount = tmp_path / "small-shm"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, timeout=30)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
        left = [str(p.relative_to(mount)) for p in mount.rglob("*") if not p.is_dir()]
        assert not left, f"files left on the small tmpfs: {left}"
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_small_shm_is_resource_exhausted_at_the_send_and_nobody_dies(
    small_shm: Path, tmp_path: Path
) -> None:
    node = "small"
    root = small_shm / node
    refs: list[mb.Ref] = []
    try:
        sink = mb.spawn(lib.Counter, "sink", node=node, runtime_dir=root)
        refs.append(sink)
        outcomes = []
        for i in range(8):  # each tells 1.5 MiB on a ring of its own: 2 MiB, allocated
            report = tmp_path / f"filler-{i}"
            job = {"to": "sink", "size": 3 << 19, "report": str(report)}
            refs.append(
                mb.spawn(pressure_lib.Filler, f"filler{i}", node=node, runtime_dir=root, kwargs=job)
            )
            outcomes.append(report.read_text())
        assert set(outcomes) <= {"sent", "ResourceExhausted", "MailboxFull"}, outcomes
        assert "ResourceExhausted" in outcomes, outcomes
        assert all(ref.is_alive() for ref in refs), "a process died"
        sent = outcomes.count("sent")
        # Room comes back as the fillers stop (the sink unlinks their drained rings).
        for ref in refs[1:]:
            assert ref.stop(timeout=10)  # by SIGTERM when even the stop finds no room
        # Rings are named by the writing process's mailbox ("_<pid>-..."), not by actor.
        heads = tuple(f"_{ref.pid}-" for ref in refs[1:])
        wait_until(lambda: not any(f.startswith(heads) for f in os.listdir(root / "rings")),
                   WAIT, "the sink unlinked the stopped fillers' rings")  # fmt: skip
        with mb.connect(node=node, runtime_dir=root) as me:
            assert me.ask("sink", "count?", timeout=WAIT) == (sent, sent * (3 << 19))
        assert sink.stop(timeout=10)
    finally:
        for ref in refs:
            if ref.is_alive():
                ref.kill()
            ref.join(10)
        close_clients()


TRUNCATED_SENDER = textwrap.dedent(
    """
    import sys
    from mybus_actors.errors import RingCorrupted
    from mybus_actors.mailbox import Endpoint
    from mybus_actors.registry import Registry

    now = [0.0]
    with Endpoint(Registry(sys.argv[1]), clock=lambda: now[0]) as ep:
        ep.bind("me")
        ep.send("me", "quiet", b"first")
        print("sent", flush=True)
        sys.stdin.readline()  # the test truncates our ring meanwhile
        now[0] += 1.0  # our next check of the ring is due
        try:
            ep.send("me", "quiet", b"second")
            print("no error", flush=True)
        except RingCorrupted as exc:
            print("RingCorrupted", exc, flush=True)
        ep.send("me", "quiet", b"third")  # on a new ring
        print("sent again", flush=True)
    """
)


def test_a_truncated_ring_file_is_an_error_to_its_sender_who_lives(
    runtime_dir: Path,
) -> None:
    registry = Registry(runtime_dir)
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        started.append(proc)
        return proc

    def first_line(proc: subprocess.Popen[str]) -> str:
        """The line a child prints before it waits for us (so nothing follows it yet)."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT)
        assert ready, f"{proc.args!r} said nothing within {WAIT}s"
        return proc.stdout.readline().strip()  # "" at EOF: it died

    try:
        # A receiver that reads nothing: the truncation would be its SIGBUS (DESIGN.md).
        quiet = start(PEER, "slow", "--name", "quiet", "--wait-go")
        assert first_line(quiet) == "ready"
        sender = start("-c", TRUNCATED_SENDER, str(runtime_dir))
        assert first_line(sender) == "sent"
        # Rings are named by process mailboxes (_<pid>-<start ms>): the sender's is ours.
        mine = f"_{sender.pid}-"
        (ring,) = [p for p in registry.rings_dir.iterdir() if p.name.startswith(mine)]
        os.truncate(ring, 0)  # by this process: not the sender's
        out, _ = sender.communicate("go\n", timeout=WAIT)
        lines = out.splitlines()  # none at all had it died of SIGBUS (exit -7)
        assert len(lines) == 2, (lines, sender.returncode)
        assert lines[0].startswith("RingCorrupted") and "truncated" in lines[0], lines
        assert lines[1] == "sent again"
        assert sender.returncode == 0  # it lived, and closed cleanly
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
        registry.reclaim()


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
