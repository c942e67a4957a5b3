"""The public actor API across real processes: spawn, run, connect, Ref, Actor, errors.

Every actor here runs in a process of its own (`mb.spawn`, or `mb.run` in a script);
the actor classes live in ``actors_lib.py`` next to this file. Every wait is bounded
(asks and receives with a timeout, release files that actors wait for with a limit),
every Ref is stopped (or killed and joined) by the `actors` fixture, and the
`runtime_dir` fixture then checks that no child process and no file is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import mybus_actors as mb
from mybus_actors.ref import close_clients
from mybus_actors.registry import Registry, mailbox_name

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    # spawn() hands sys.path to the children as PYTHONPATH: they import actors_lib too.
    sys.path.insert(0, str(HERE))

import actors_lib as lib  # noqa: E402
import waiting  # noqa: E402
from harness import Actors, stopping_while_held  # noqa: E402

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # the bound on any single receive or ask that should succeed


def receive_until(client: mb.Client, predicate: Any, timeout: float = WAIT) -> Any:
    return waiting.receive_until(client, predicate, timeout)


# -- 1. every method -------------------------------------------------------------------


def test_round_trip_identity_hooks_and_ref(actors: Actors) -> None:
    me = actors.connect("observer")
    ref = actors.spawn(lib.Echo, "echo", notify="observer")
    address = actors.address("echo")

    # on_start ran in the child (after the name was registered: it could be told back).
    assert me.receive(timeout=WAIT) == ("started", address)

    info = me.ask("echo", ("whoami",), timeout=WAIT)
    assert info["name"] == "echo"
    assert info["address"] == address
    assert info["node"] == actors.node
    assert info["sender"] == me.address
    assert info["name_in_init"] == "echo"
    assert info["events"] == ["__init__", "on_start", "receive"]  # on_start came first
    assert info["pid"] == ref.pid

    # tell: the actor's reply to a tell comes back as a message to the client.
    me.tell("echo", b"hi")
    assert me.receive(timeout=WAIT) == b"hi"
    assert me.ask("echo", "hi", timeout=5) == "hi"
    assert me.ask(address, ("a", 1, None), timeout=5) == ("a", 1, None)

    # Ref: address, pid of a live process, tell/ask through the process's own client.
    assert ref.address == address
    assert ref.is_alive()
    proc = psutil.Process(ref.pid)
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    assert "mybus_actors._boot" in " ".join(proc.cmdline())
    assert ref.ask("via ref", timeout=5) == "via ref"
    ref.tell(("forward", "observer", "told via ref"))
    assert me.receive(timeout=WAIT) == "told via ref"
    assert not ref.join(0.05)  # still running

    assert ref.stop(timeout=5) is True
    assert me.receive(timeout=WAIT) == ("stopped", address)  # on_stop ran
    assert not ref.is_alive()
    assert ref.join(1)
    assert not psutil.pid_exists(ref.pid) or psutil.Process(ref.pid).status() == "zombie"
    with pytest.raises(mb.ActorNotFound):
        me.ask("echo", "gone?", timeout=2)


def test_on_stop_tell_on_a_fresh_ring_reaches_the_client(actors: Actors) -> None:
    """The last message an actor sends (here its only one, from on_stop) is not lost."""
    me = actors.connect("observer")
    ref = actors.spawn(lib.Echo, "quiet", notify="observer", greet=False)
    assert ref.ask("ready?", timeout=WAIT) == "ready?"  # through the Ref's own client
    assert ref.stop(timeout=5)
    # The client was not reading while the actor stopped: the ring must still be there.
    assert me.receive(timeout=5) == ("stopped", actors.address("quiet"))


def test_client_is_safe_from_several_threads(actors: Actors) -> None:
    actors.spawn(lib.Echo, "echo")
    me = actors.connect()

    def worker(k: int) -> list[Any]:
        return [me.ask("echo", (k, i), timeout=WAIT) for i in range(200)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    assert results == [[(k, i) for i in range(200)] for k in range(4)]


def test_a_thread_waiting_on_a_client_does_not_slow_another_threads_asks(
    actors: Actors, tmp_path: Path
) -> None:
    # One thread's ask waits (the actor holds it); another thread's asks on the same
    # client must not wait for the first thread's turns on the doorbell.
    actors.spawn(lib.Echo, "echo")
    actors.spawn(lib.Echo, "slow", notify="observer", greet=False)
    observer = actors.connect("observer")
    me = actors.connect()

    def asks() -> float:
        start = time.perf_counter()
        for i in range(50):
            assert me.ask("echo", i, timeout=WAIT) == i
        return time.perf_counter() - start

    alone = asks()
    release = tmp_path / "release"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(me.ask, "slow", ("hold", str(release), "held"), timeout=WAIT)
        assert observer.receive(timeout=WAIT) == ("holding", "held")
        beside = asks()
        release.touch()
        assert held.result(timeout=WAIT) == "held"
    # A ratio within one run: before, each ask beside the waiting one took the 50 ms
    # slice the other thread slept on the doorbell for (over 100 times as long).
    assert beside < 10 * alone, (alone, beside)


# -- 2. many senders -------------------------------------------------------------------


def test_three_producers_into_one_collector_in_order(actors: Actors) -> None:
    per_producer = 5000
    producers = ["p0", "p1", "p2"]
    me = actors.connect("observer")
    actors.spawn(lib.Collector, "collector", producers=producers, notify="observer")
    for name in producers:
        actors.spawn(lib.Producer, name)

    for name in producers:
        me.tell(name, ("go", "collector", per_producer))
    # The collector says when every producer's end marker (sent after its last
    # message, on the same ring) has arrived.
    notice = receive_until(me, lambda m: m[0] == "all ended", timeout=45)
    assert notice == ("all ended", producers)

    got = me.ask("collector", "report", timeout=WAIT)
    assert sorted(got) == [actors.address(p) for p in producers]
    for name in producers:
        items = got[actors.address(name)]
        assert len(items) == per_producer
        assert items == [(name, i) for i in range(per_producer)]  # per-sender order
    assert sum(len(v) for v in got.values()) == 3 * per_producer


# -- 3. a big message ------------------------------------------------------------------


def test_ten_mib_message_through_ask(actors: Actors) -> None:
    actors.spawn(lib.Echo, "echo")
    me = actors.connect()
    payload = os.urandom(10 << 20)
    answer = me.ask("echo", payload, timeout=30)
    assert type(answer) is bytes
    assert len(answer) == len(payload)
    assert answer == payload
    assert me.ask("echo", "after", timeout=WAIT) == "after"


# -- 4. errors -------------------------------------------------------------------------


def test_errors_and_the_actor_still_answers(actors: Actors, tmp_path: Path) -> None:
    actors.spawn(lib.Echo, "echo")
    me = actors.connect()

    def still_answers() -> None:
        assert me.ask("echo", "still there?", timeout=WAIT) == "still there?"

    # Malformed addresses, caught before anything is sent.
    for bad in ("a/b/c", "bad name", ""):
        with pytest.raises(mb.InvalidAddress) as told:
            me.tell(bad, 1)
        with pytest.raises(mb.InvalidAddress) as asked:
            me.ask(bad, 1, timeout=1)
        for err in (told.value, asked.value):
            assert isinstance(err, ValueError) and isinstance(err, mb.MyBusError)
        with pytest.raises(ValueError):
            me.tell(bad, 1)
        still_answers()
    with pytest.raises(ValueError):
        mb.spawn(lib.Echo, "bad name")
    with pytest.raises(mb.InvalidAddress):
        mb.connect("a/b")
    # An actor's own tell checks the address too.
    assert me.ask("echo", ("try_tell", "a/b/c", 1), timeout=WAIT) == "InvalidAddress"

    # Nobody holds the name.
    with pytest.raises(mb.ActorNotFound):
        me.tell("nobody", 1)
    with pytest.raises(mb.ActorNotFound):
        me.ask("nobody", 1, timeout=1)
    assert me.ask("echo", ("try_tell", "nobody", 1), timeout=WAIT) == "ActorNotFound"
    still_answers()

    # Another node: no gateway runs, so the error names the node.
    with pytest.raises(mb.ActorNotFound, match="othernode"):
        me.tell("othernode/echo", 1)
    with pytest.raises(mb.ActorNotFound, match="othernode"):
        me.ask("othernode/echo", 1, timeout=1)
    assert me.ask("echo", ("try_tell", "othernode/echo", 1), timeout=WAIT) == "ActorNotFound"
    still_answers()

    # Unpicklable messages (a lambda is fine: cloudpickle takes it).
    with pytest.raises(mb.SerializationError):
        me.tell("echo", threading.Lock())
    with pytest.raises(mb.SerializationError):
        me.ask("echo", {"lock": threading.Lock()}, timeout=1)
    me.tell("echo", lambda: 1)  # echoed back as a message to this client
    assert me.receive(timeout=WAIT)() == 1
    still_answers()

    # A live actor holds the name: NameTaken in the caller, for actors and clients.
    with pytest.raises(mb.NameTaken):
        mb.spawn(lib.Echo, "echo")
    with pytest.raises(mb.NameTaken):
        mb.connect("echo")
    still_answers()

    # Ask timeout, and the late reply does not answer the next ask.
    with pytest.raises(mb.AskTimeout) as timed_out:
        me.ask("echo", ("ignore",), timeout=0.3)
    assert isinstance(timed_out.value, TimeoutError)
    still_answers()
    release = tmp_path / "release-late"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        me.ask("echo", ("hold", str(release), "late reply"), timeout=0.3)
    assert time.monotonic() - started < 3
    release.touch()  # the actor now replies "late reply" to an ask nobody waits for
    assert me.ask("echo", "next", timeout=WAIT) == "next"
    assert me.ask("echo", "and next", timeout=WAIT) == "and next"

    # receive raised: ActorError with the remote traceback, the original as the cause.
    with pytest.raises(mb.ActorError) as failed:
        me.ask("echo", ("raise", "kaboom"), timeout=WAIT)
    text = str(failed.value)
    assert "Boom" in text and "kaboom" in text
    assert "Traceback (most recent call last)" in text
    assert "actors_lib.py" in text and "raise Boom(text)" in text
    assert isinstance(failed.value.__cause__, lib.Boom)
    assert failed.value.__cause__.args == ("kaboom",)
    still_answers()

    # A reply that cannot be pickled fails the receive: the asker gets an ActorError.
    with pytest.raises(mb.ActorError) as unsent:
        me.ask("echo", ("reply_unpicklable",), timeout=WAIT)
    assert isinstance(unsent.value.__cause__, mb.SerializationError)
    still_answers()


def test_lambda_message_travels_by_cloudpickle(actors: Actors) -> None:
    actors.spawn(lib.Echo, "echo")
    me = actors.connect()
    echoed = me.ask("echo", lambda x: x + 1, timeout=WAIT)
    assert echoed(41) == 42


# -- 5. backpressure -------------------------------------------------------------------


def test_mailbox_full_then_every_accepted_message_arrives(actors: Actors, tmp_path: Path) -> None:
    actors.spawn(lib.Counter, "sink")
    me = actors.connect()
    release = tmp_path / "release-sink"
    me.tell("sink", ("hold", str(release)))
    payload = bytes(256 * 1024)
    accepted = 0
    try:
        with pytest.raises(mb.MailboxFull):
            for _ in range(200):  # 50 MiB: far more than a mailbox holds
                me.tell("sink", payload, timeout=0.5)
                accepted += 1
    finally:
        release.touch()
    assert accepted > 0
    # The count travels behind the accepted messages on the same ring: a barrier.
    assert me.ask("sink", "count?", timeout=30) == (accepted, accepted * len(payload))
    # The mailbox has room again.
    me.tell("sink", payload, timeout=WAIT)
    assert me.ask("sink", "count?", timeout=WAIT) == (accepted + 1, (accepted + 1) * len(payload))


# -- 6. SIGKILL ------------------------------------------------------------------------


def test_sigkill_then_not_found_and_the_name_is_free_again(actors: Actors) -> None:
    me = actors.connect()
    ref = actors.spawn(lib.Echo, "victim")
    assert me.ask("victim", "before", timeout=WAIT) == "before"
    assert ref.ask("before, by ref", timeout=WAIT) == "before, by ref"

    ref.kill()
    assert ref.join(5)
    assert not ref.is_alive()
    started = time.monotonic()
    with pytest.raises((mb.ActorNotFound, mb.AskTimeout)):
        me.ask("victim", "anyone?", timeout=2)
    assert time.monotonic() - started < 5

    again = actors.spawn(lib.Echo, "victim")
    assert again.pid != ref.pid
    assert me.ask("victim", "after", timeout=WAIT) == "after"
    assert again.ask("after, by ref", timeout=WAIT) == "after, by ref"
    assert me.ask("victim", ("whoami",), timeout=WAIT)["pid"] == again.pid


def test_a_client_telling_an_address_again_follows_its_actor(actors: Actors) -> None:
    """Past the first tell, a client remembers where an address's records go (and parses
    it no more): tells by short and full address arrive, those after the actor was killed
    and spawned again reach its new incarnation, and a closed client refuses."""
    me = actors.connect()
    ref = actors.spawn(lib.Counter, "sink")
    for i in range(50):
        me.tell("sink" if i % 2 else actors.address("sink"), b"x" * i)
    assert me.ask("sink", "count?", timeout=WAIT) == (50, sum(range(50)))

    ref.kill()
    assert ref.join(5)
    again = actors.spawn(lib.Counter, "sink")
    assert again.pid != ref.pid
    for address in ("sink", actors.address("sink")):
        me.tell(address, b"again")
    assert me.ask("sink", "count?", timeout=WAIT) == (2, 10)

    me.close()
    with pytest.raises(mb.MailboxClosed):
        me.tell("sink", b"closed")


def test_a_client_times_its_asks_to_choose_how_long_to_spin(actors: Actors) -> None:
    """Each answered ask's round trip goes into the client's estimate, from which it
    chooses how long to spin for the next reply (asks.RoundTrips, tested without
    processes): replies that take milliseconds get the plain spin, and fast replies
    bring the estimate back down."""
    me = actors.connect()
    actors.spawn(lib.Echo, "worker")
    for _ in range(10):
        assert me.ask("worker", ("busy", 3e-3), timeout=WAIT) == 3e-3
    slow = me._round_trips.usual
    assert slow is not None and slow >= 1e-3
    assert me._round_trips.spin(me.spin) == me.spin
    for i in range(40):
        assert me.ask("worker", i, timeout=WAIT) == i
    assert me._round_trips.usual < slow / 4
    with pytest.raises(mb.AskTimeout):
        me.ask("worker", ("ignore",), timeout=0.05)
    assert me._round_trips.usual < slow / 4  # a timed-out ask says nothing


# -- 7. async receive ------------------------------------------------------------------


def test_async_receive_awaits_an_ask_to_another_actor(actors: Actors, tmp_path: Path) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Echo, "slow", notify="observer")
    assert me.receive(timeout=WAIT) == ("started", actors.address("slow"))
    actors.spawn(lib.Echo, "other")
    actors.spawn(lib.Relay, "relay")

    assert me.ask("relay", ("relay", "other", "x"), timeout=WAIT) == "x"
    assert me.ask("relay", ("relay_twice", "other", 1, 2), timeout=WAIT) == (1, 2)
    assert me.ask("relay", "plain", timeout=WAIT) == "plain"

    # While the relay awaits a held actor, others answer; a second ask to the relay
    # waits its turn; nothing deadlocks once the held actor is released.
    release = tmp_path / "release-slow"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(
                me.ask, "relay", ("relay", "slow", ("hold", str(release), "v")), timeout=40
            )
            assert receive_until(me, lambda m: m[0] == "holding") == ("holding", "v")
            second = pool.submit(me.ask, "relay", ("relay", "other", "second"), timeout=40)
            assert me.ask("other", "meanwhile", timeout=WAIT) == "meanwhile"
            assert not first.done()
        finally:
            release.touch()
        assert first.result(timeout=WAIT * 2) == "v"
        assert second.result(timeout=WAIT * 2) == "second"
    assert me.ask("relay", ("relay", "slow", "again"), timeout=WAIT) == "again"


def test_an_awaited_ask_times_out_on_time_and_its_late_reply_answers_nothing(
    actors: Actors, tmp_path: Path
) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Echo, "slow", notify="observer")
    assert me.receive(timeout=WAIT) == ("started", actors.address("slow"))
    actors.spawn(lib.Relay, "relay")

    # Nobody answers: AskTimeout inside the receive, after its timeout and not long after.
    (kind, text), took = me.ask("relay", ("relay_within", "slow", ("ignore",), 0.3), timeout=WAIT)
    assert kind == "AskTimeout" and f"{actors.address('slow')} within 0.3s" in text
    assert 0.3 <= took < 3.0

    # An answer held past the timeout comes late: it answers neither that ask nor the next.
    release = tmp_path / "release-slow"
    outcome, took = me.ask(
        "relay", ("relay_within", "slow", ("hold", str(release), "late"), 0.3), timeout=WAIT
    )
    assert outcome[0] == "AskTimeout" and 0.3 <= took < 3.0
    assert receive_until(me, lambda m: m[0] == "holding") == ("holding", "late")
    release.touch()
    assert me.ask("relay", ("relay_within", "slow", "next", 10.0), timeout=WAIT)[0] == "next"

    # After an answered ask the receive's asyncio timers still run.
    assert me.ask("relay", ("relay_then_sleep", "slow", "s", 0.05), timeout=WAIT) == ("s", True)


# -- 8. timers -------------------------------------------------------------------------


def test_every_fires_at_its_rate_and_cancel_stops_it(actors: Actors) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Ticker, "ticker", notify="observer", milestone=20)

    started = time.monotonic()
    assert me.ask("ticker", "start", timeout=WAIT) == "started"
    # 20 ticks of 0.05 s: about a second of wall time, measured here.
    assert receive_until(me, lambda m: m[0] == "ticks") == ("ticks", 20)
    count = me.ask("ticker", "count?", timeout=WAIT)
    elapsed = time.monotonic() - started
    expected = elapsed / lib.Ticker.INTERVAL
    assert abs(count - expected) <= 0.3 * expected, (count, elapsed)
    assert me.ask("ticker", "tick senders?", timeout=WAIT) == {None}

    at_cancel = me.ask("ticker", "cancel", timeout=WAIT)
    assert at_cancel >= count
    # A send_after of 0.3 s (6 intervals) to this client: proof that time passed.
    assert me.ask("ticker", ("after", 0.3, "ding", me.address), timeout=WAIT) == "scheduled"
    asked = time.monotonic()
    assert receive_until(me, lambda m: m == "ding") == "ding"
    assert time.monotonic() - asked >= 0.25
    assert me.ask("ticker", "count?", timeout=WAIT) == at_cancel  # no tick since cancel


def test_send_after_to_self_and_a_cancelled_one(actors: Actors) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Ticker, "ticker", notify="observer")
    answer = me.ask("ticker", ("after_cancelled", 0.05, "never", me.address), timeout=WAIT)
    assert answer == "cancelled"
    asked = time.monotonic()
    assert me.ask("ticker", ("after_self", 0.3, "fired"), timeout=WAIT) == "scheduled"
    # The cancelled one would have come first (at 0.05 s).
    assert me.receive(timeout=WAIT) == "fired"
    assert time.monotonic() - asked >= 0.25


# -- 9. watch --------------------------------------------------------------------------


def test_watch_delivers_terminated_stopped_and_died(actors: Actors) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Watcher, "watcher", forward="observer")
    calm = actors.address("calm")

    # A clean stop, watched by the full address, once the watch request was read.
    ref = actors.spawn(lib.Echo, "calm")
    assert me.ask("watcher", ("watch_synced", calm), timeout=WAIT) == "watching"
    assert me.receive(timeout=WAIT) == ("synced", calm)
    assert ref.stop(timeout=5)
    assert me.receive(timeout=5) == mb.Terminated(address=calm, reason="stopped")

    # SIGKILL: no notice from the victim; the watcher notices its process's end.
    ref = actors.spawn(lib.Echo, "victim")
    assert me.ask("watcher", ("watch", "victim"), timeout=WAIT) == "watching"
    ref.kill()
    assert ref.join(5)
    assert me.receive(timeout=5) == mb.Terminated(address=actors.address("victim"), reason="died")


def test_watch_a_name_respawned_after_sigkill(actors: Actors) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Watcher, "watcher", forward="observer")
    victim = actors.address("victim")

    ref = actors.spawn(lib.Echo, "victim")
    assert me.ask("watcher", ("watch_synced", victim), timeout=WAIT) == "watching"
    assert me.receive(timeout=WAIT) == ("synced", victim)
    ref.kill()
    assert ref.join(5)
    assert me.receive(timeout=5) == mb.Terminated(address=victim, reason="died")

    # The watcher's messages must reach the new holder of the name, not the ring it
    # still has mapped to the dead one.
    ref = actors.spawn(lib.Echo, "victim")
    assert me.ask("watcher", ("watch_synced", victim), timeout=WAIT) == "watching"
    assert me.receive(timeout=WAIT) == ("synced", victim)
    assert ref.stop(timeout=5)
    assert me.receive(timeout=5) == mb.Terminated(address=victim, reason="stopped")


def test_watch_request_unread_when_the_target_stops_cleanly(actors: Actors, tmp_path: Path) -> None:
    """A clean stop is "stopped" even if the watch request was still in the mailbox."""
    me = actors.connect("observer")
    actors.spawn(lib.Watcher, "watcher", forward="observer")
    ref = actors.spawn(lib.Echo, "victim", notify="observer")
    victim = actors.address("victim")
    assert me.receive(timeout=WAIT) == ("started", victim)

    release = tmp_path / "release-victim"
    me.tell("victim", ("hold_then_stop", str(release)))
    try:
        assert me.receive(timeout=WAIT) == ("holding", victim)
        # The victim is inside receive: the request waits, unread, in its mailbox.
        assert me.ask("watcher", ("watch", "victim"), timeout=WAIT) == "watching"
    finally:
        release.touch()  # receive returns and calls self.stop(): a clean stop
    got = [me.receive(timeout=5), me.receive(timeout=5)]
    assert ("stopped", victim) in got  # on_stop ran
    assert mb.Terminated(address=victim, reason="stopped") in got, got
    assert ref.join(5)


def test_watch_of_a_name_nobody_holds_is_not_found(actors: Actors) -> None:
    me = actors.connect("observer")
    actors.spawn(lib.Watcher, "watcher", forward="observer")
    assert me.ask("watcher", ("watch", "nobody"), timeout=WAIT) == "watching"
    got = me.receive(timeout=5)
    assert got == mb.Terminated(address=actors.address("nobody"), reason="not found")


# -- 10. blocking on an ask inside a plain receive -------------------------------------


def test_result_inside_plain_receive_raises_deadlock_error(actors: Actors) -> None:
    actors.spawn(lib.Echo, "echo")
    actors.spawn(lib.Echo, "other")
    me = actors.connect()
    answer = me.ask("echo", ("ask_result", "other", "ping"), timeout=WAIT)
    assert answer == "DeadlockError"
    assert issubclass(mb.DeadlockError, mb.MyBusError)
    assert me.ask("echo", ("ask_result", None, "self"), timeout=WAIT) == "DeadlockError"
    assert me.ask("echo", "still answering", timeout=WAIT) == "still answering"


# -- 11. a class defined in __main__ ---------------------------------------------------


def test_class_defined_in_main_spawned_from_a_script(actors: Actors) -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "main_script.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert "answer: 42 from a class in __main__" in done.stdout, done.stdout + done.stderr


# -- 12. nothing left behind -----------------------------------------------------------


def test_stop_removes_the_registry_entry_and_rings(actors: Actors, runtime_dir: Path) -> None:
    me = actors.connect()
    ref = actors.spawn(lib.Echo, "tidy")
    assert me.ask("tidy", "hello", timeout=WAIT) == "hello"
    assert ref.ask("hello", timeout=WAIT) == "hello"
    assert "tidy" in os.listdir(runtime_dir / "actors")
    # Rings join processes: they are named by the process mailboxes, not by actors.
    mailbox = mailbox_name(Registry(runtime_dir).lookup("tidy").doorbell)
    assert any(f.startswith(f"{mailbox}~") for f in os.listdir(runtime_dir / "rings"))
    assert any(f"~{mailbox}." in f for f in os.listdir(runtime_dir / "rings"))

    assert ref.stop(timeout=5)
    assert "tidy" not in os.listdir(runtime_dir / "actors")
    # The rings the actor's process read are unlinked by that process itself.
    assert [f for f in os.listdir(runtime_dir / "rings") if f"~{mailbox}." in f] == []

    me.close()
    close_clients()
    assert os.listdir(runtime_dir / "actors") == []
    assert os.listdir(runtime_dir / "rings") == []


# -- 13. mb.run in a worker script -----------------------------------------------------


WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import actors_lib
    import mybus_actors as mb
    mb.run(actors_lib.Echo, "worker", kwargs={"notify": "observer"})
    """
)


def test_spawned_actor_stops_cleanly_when_its_parent_exits(runtime_dir: Path) -> None:
    # A parent that dies without stopping what it spawned must not leave orphans.
    script = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import mybus_actors as mb
        import actors_lib as lib
        ref = mb.spawn(lib.Echo, "orphan")
        print(ref.pid, flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    child = int(done.stdout.split()[0])
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(child).wait(timeout=10)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    assert "orphan" not in [e.name for e in mb.registry.Registry(runtime_dir).list()]


def test_run_hosts_an_actor_until_sigterm(actors: Actors, runtime_dir: Path) -> None:
    me = actors.connect("observer")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(HERE)], env=dict(os.environ))
    try:
        address = actors.address("worker")
        assert me.receive(timeout=30) == ("started", address)
        assert me.ask("worker", "working?", timeout=WAIT) == "working?"
        info = me.ask("worker", ("whoami",), timeout=WAIT)
        assert info["pid"] == proc.pid and info["address"] == address

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert me.receive(timeout=5) == ("stopped", address)  # on_stop ran
        assert "worker" not in os.listdir(runtime_dir / "actors")
        with pytest.raises(mb.ActorNotFound):
            me.tell("worker", "anyone?")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# -- 14. dead letters ------------------------------------------------------------------


def test_messages_to_a_stopped_actor_come_back_as_dead_letters(
    actors: Actors, tmp_path: Path, runtime_dir: Path
) -> None:
    me = actors.connect("observer")
    sink = actors.spawn(lib.Counter, "sink", notify="observer")
    actors.spawn(lib.Pusher, "pusher", notify="observer")
    flood = 2000
    release = tmp_path / "release-sink"
    # The sink is held (it reads nothing) while Ref.stop's stop and the flood go in.
    with stopping_while_held(me, sink, release, runtime_dir, WAIT):
        assert me.ask("pusher", ("flood", "sink", flood), timeout=WAIT) == flood

    handled: list[int] | None = None
    dead: list[int] = []
    reasons: set[str] = set()
    deadline = time.monotonic() + 30
    while handled is None or len(handled) + len(dead) < flood:
        remaining = deadline - time.monotonic()
        assert remaining > 0, (handled and len(handled), len(dead))
        message = me.receive(timeout=remaining)
        if message[0] == "stopped":
            handled = message[2]
        elif message[0] == "dead":
            assert message[1][0] == "n"
            dead.append(message[1][1])
            reasons.add(message[2])
    assert handled is not None
    # Every message the pusher's tell accepted was either handled or handed back.
    assert sorted(handled + dead) == list(range(flood))
    assert dead, "the sink was stopped before reading the flood: some must come back"
    assert all("sink" in r and "stopped" in r for r in reasons), reasons
    # Telling it now fails at once.
    assert me.ask("pusher", ("try_tell", "sink", "late"), timeout=WAIT) == "ActorNotFound"


# -- 15. the public surface ------------------------------------------------------------


def test_public_names_are_pinned() -> None:
    assert sorted(mb.__all__) == [
        "Actor",
        "ActorError",
        "ActorNotFound",
        "AskFuture",
        "AskTimeout",
        "Client",
        "DeadlockError",
        "InvalidAddress",
        "MailboxClosed",
        "MailboxFull",
        "MyBusError",
        "NameTaken",
        "OneForAll",
        "OneForOne",
        "Ref",
        "ResourceExhausted",
        "RestForOne",
        "Runtime",
        "SerializationError",
        "Terminated",
        "TimerHandle",
        "connect",
        "run",
        "spawn",
        "spawn_pool",
    ]
    assert all(hasattr(mb, name) for name in mb.__all__)
    assert issubclass(mb.AskTimeout, TimeoutError)
    assert issubclass(mb.InvalidAddress, ValueError)
    assert issubclass(mb.ResourceExhausted, OSError)
    for name in mb.__all__:
        obj = getattr(mb, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, mb.MyBusError), name
