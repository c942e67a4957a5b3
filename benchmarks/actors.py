"""Actor benchmark: mybus actors in two processes against mp.Queue/Pipe, Pykka and Ray.

``python benchmarks/actors.py [--quick] [--reps N] [--json PATH] [--peers LIST] [--profile]``

Two actors, A (the source) and B (the sink), each in its own process (``mb.spawn``);
the benchmark process drives them through a client mailbox. Measured, per repetition:

- ``tell`` throughput: the client tells A "go" (a count and a payload kind); A tells B
  that many messages as fast as it can; B counts them and, on the last one, tells the
  client "done". Timed in the client from the "go" to the "done" (two control hops
  included, process start-up not). Payloads: 64 B bytes, a small dict
  ``{"i": i, "v": "x" * 40}`` and 1 MiB bytes (shown also as MB/s);
- ``ask`` round trip: A's ``async def receive`` runs ``await self.ask(B, 64 B bytes)`` in
  a loop (B replies with the message), timing each ask with ``perf_counter``, and
  returns the list; the table shows the median and the p99.

Peers, on the same workloads:

- ``multiprocessing.Queue`` and ``multiprocessing.Pipe`` (a duplex Connection): a source
  and a sink process ("spawn"), driven over side-channel pipes exactly like the actors
  (go to the source, done from the sink); round trips through a second Queue / the same
  Pipe. Bytes travel as ``send_bytes``/``recv_bytes`` on the Pipe, dicts pickled by
  ``send``; the Queue pickles everything;
- Pykka (``pip install pykka``): two ThreadingActors in THIS process (Pykka's actors are
  threads in one process: no copy, no serialization, the GIL shared), A's on_receive
  telling B, or calling ``B.ask(x, block=False).get()`` for the round trip;
- Ray (``pip install ray``): two actors; A calls ``B.take.remote(x)`` N times and waits
  for all refs, or ``ray.get(B.echo.remote(x))`` in a loop. Ray is far slower per
  message, so it runs fewer messages (the counts are printed), after the others, in its
  own phase, and its start-up time is reported on its own line.

Each figure is the median over ``--reps`` repetitions; mybus, Queue, Pipe and Pykka are
interleaved within each repetition (so background load hits them alike) and every ratio
is the median of the per-rep ratios. Targets compare mybus with mp.Queue / mp.Pipe.

Reading the figures: both mybus dispatchers spin (300 us by default, yielding the CPU
after the first 50 us) before they sleep on their doorbells. On the 2-core dev VM with
nothing else running, an ask takes about 55 us; when other processes want the CPUs too,
the spinning pair takes turns with them and the ask jumps to 150-300 us (p99 in ms),
while Pipe and Queue, which sleep in the kernel, degrade less. The header prints the
load average and the CPU pressure at the start and the end: compare runs only alike.
`--profile` has each mybus actor profile itself (cProfile, from one control message to
the next) and prints the top functions by tottime instead of the tables.

Bounds: every timed job runs under an interval timer in the benchmark process and in the
mp children; the actors' tells and asks have their own timeouts. Every process started
here is stopped by pid (asked, joined with a timeout, killed if need be); the mybus
runtime directory (``/dev/shm``, private to this run) is checked empty of files after the
refs are stopped and the clients closed, then removed; so is Ray's temp directory.
Whatever the targets say, the exit status is 0 unless something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import importlib.metadata
import inspect
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol

import attrs
import psutil

import mybus_actors as mb
import mybus_actors.ref
from mybus_actors.ring import DEFAULT_CAPACITY

_DICT_VALUE: Final = "x" * 40
_ASK_PAYLOAD: Final = b"p" * 64
_MB: Final = 1e6  # MB/s is decimal megabytes
_SOURCE: Final = "bench-a"
_SINK: Final = "bench-b"
_START_TIMEOUT: Final = 60.0
_JOB_TIMEOUT: Final = 120.0
_STOP_TIMEOUT: Final = 10.0
_CONTROL_TIMEOUT: Final = 10.0
_IDLE_TIMEOUT: Final = 900.0  # an mp child gives up when the parent stops talking
_WARMUP_FRACTION: Final = 0.05
_PROFILE_LINES: Final = 18
_RAY_OBJECT_STORE: Final = 512 * 1024 * 1024
_RUNTIME_SPIN: Final[float] = inspect.signature(mb.Runtime).parameters["spin"].default


@attrs.frozen
class Workload:
    """One tell-throughput measurement: what each message is and how many are sent."""

    key: str
    label: str
    size: int  # payload bytes; 0 means the small dict {"i": i, "v": "x" * 40}
    count: int
    ray_count: int  # Ray handles a few thousand calls a second: fewer for it

    def scaled(self, factor: float) -> Workload:
        return attrs.evolve(
            self,
            count=max(2, int(self.count * factor)),
            ray_count=max(2, int(self.ray_count * factor)),
        )


@attrs.frozen
class AskMode:
    """The round-trip measurement."""

    key: str
    label: str
    count: int
    ray_count: int

    def scaled(self, factor: float) -> AskMode:
        return attrs.evolve(
            self,
            count=max(20, int(self.count * factor)),
            ray_count=max(20, int(self.ray_count * factor)),
        )


WORKLOADS: Final = (
    Workload("b64", "tell 64 B bytes", 64, 200_000, 3_000),
    Workload("dict", "tell small dict", 0, 200_000, 3_000),
    Workload("b1m", "tell 1 MiB bytes", 1 << 20, 1_500, 100),
)
ASK: Final = AskMode("ask", "ask 64 B round trip", 20_000, 1_000)
PEERS: Final = {
    "mybus": "mybus",
    "queue": "mp.Queue",
    "pipe": "mp.Pipe",
    "pykka": "Pykka",
    "ray": "Ray",
}


# -- bounds ------------------------------------------------------------------------------


@contextlib.contextmanager
def _bounded(seconds: float, what: str) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread if the block outlives ``seconds``.

    A SIGALRM interrupts blocking reads and lock waits alike, so the timed loops need
    no per-message deadline check. Not reentrant.
    """

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"{what}: not finished after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _profile_text(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(_PROFILE_LINES)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line for line in lines[start:] if line.strip())


class _SelfProfile:
    """An actor's own profiler: on from one control message to the next (its thread)."""

    def __init__(self) -> None:
        self.profiler: cProfile.Profile | None = None

    def toggle(self, on: bool) -> str:
        if on:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
            return "ok"
        if self.profiler is None:
            return "(not profiling)"
        self.profiler.disable()
        text, self.profiler = _profile_text(self.profiler), None
        return text


# -- the loops (kept flat: a call per message would blur the figures) ----------------------


def _tell_bytes(tell: Callable[[str, Any], object], to: str, size: int, count: int) -> None:
    payload = b"x" * size
    for _ in range(count):
        tell(to, payload)


def _tell_dicts(tell: Callable[[str, Any], object], to: str, count: int) -> None:
    value = _DICT_VALUE
    for i in range(count):
        tell(to, {"i": i, "v": value})


def _put_bytes(put: Callable[[Any], object], size: int, count: int) -> None:
    payload = b"x" * size
    for _ in range(count):
        put(payload)


def _put_dicts(put: Callable[[Any], object], count: int) -> None:
    value = _DICT_VALUE
    for i in range(count):
        put({"i": i, "v": value})


def _drain(get: Callable[[], object], count: int) -> None:
    for _ in range(count):
        get()


def _echo(get: Callable[[], Any], put: Callable[[Any], object], count: int) -> None:
    for _ in range(count):
        put(get())


def _ping(
    put: Callable[[bytes], object], get: Callable[[], object], payload: bytes, count: int
) -> list[float]:
    clock = time.perf_counter
    rtts = [0.0] * count
    for k in range(count):
        start = clock()
        put(payload)
        get()
        rtts[k] = clock() - start
    return rtts


# -- mybus actors ----------------------------------------------------------------------------


class Sink(mb.Actor):
    """B: counts what it is told and reports the last one; in echo mode, replies."""

    def __init__(self) -> None:
        self.expected = 0
        self.got = 0
        self.report_to: str | None = None
        self.echo = False
        self.prof = _SelfProfile()

    def receive(self, message: Any) -> None:
        if type(message) is tuple:
            self._control(message)
        elif self.echo:
            self.reply(message)
        else:
            self.got += 1
            if self.got == self.expected and self.report_to is not None:
                self.tell(self.report_to, ("done", self.got))

    def _control(self, message: tuple[Any, ...]) -> None:
        verb = message[0]
        if verb == "expect":
            self.expected, self.got, self.echo = message[1], 0, False
            self.report_to = self.sender
            self.reply("ok")
        elif verb == "echo":
            self.echo = True
            self.reply("ok")
        elif verb == "profile":
            self.reply(self.prof.toggle(message[1]))
        else:
            raise ValueError(f"unknown control message {message!r}")


class Source(mb.Actor):
    """A: on "go", tells the sink as fast as it can; on "ask", times asks to it."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.prof = _SelfProfile()

    async def receive(self, message: Any) -> None:
        verb = message[0]
        if verb == "go":
            _, count, size = message
            if size:
                _tell_bytes(self.tell, self.peer, size, count)
            else:
                _tell_dicts(self.tell, self.peer, count)
        elif verb == "ask":
            _, count, payload = message
            ask, peer, clock = self.ask, self.peer, time.perf_counter
            rtts = [0.0] * count
            for k in range(count):
                start = clock()
                await ask(peer, payload)
                rtts[k] = clock() - start
            self.reply(rtts)
        elif verb == "profile":
            self.reply(self.prof.toggle(message[1]))
        else:
            raise ValueError(f"unknown message {message!r}")


# -- the mp children -------------------------------------------------------------------------


def _child(serve: Callable[..., None], ctl: Connection, *args: Any) -> None:
    """An mp process's entry point: run ``serve``, report a failure to the parent."""
    try:
        serve(ctl, *args)
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            ctl.send(("error", traceback.format_exc()))
        raise
    finally:
        ctl.close()


def _serve(ctl: Connection, handle: Callable[[tuple[Any, ...]], None]) -> None:
    """Run the parent's commands until it says stop."""
    ctl.send(("ready", os.getpid()))
    while True:
        if not ctl.poll(_IDLE_TIMEOUT):
            raise TimeoutError(f"pid {os.getpid()}: no command for {_IDLE_TIMEOUT:g}s")
        cmd: tuple[Any, ...] = ctl.recv()
        if cmd[0] == "stop":
            ctl.send(("stopped", None))
            return
        with _bounded(_JOB_TIMEOUT, f"pid {os.getpid()}: {cmd[0]} {cmd[1]}"):
            handle(cmd)


def _sink_commands(
    ctl: Connection,
    get_bytes: Callable[[], Any],
    get_obj: Callable[[], Any],
    echo: Callable[[int], None],
) -> Callable[[tuple[Any, ...]], None]:
    def handle(cmd: tuple[Any, ...]) -> None:
        if cmd[0] == "expect":
            _, count, is_dict = cmd
            ctl.send(("ok", None))
            _drain(get_obj if is_dict else get_bytes, count)
        elif cmd[0] == "echo":
            ctl.send(("ok", None))
            echo(cmd[1])
        else:
            raise ValueError(f"unknown command {cmd!r}")
        ctl.send(("done", None))

    return handle


def _source_commands(
    ctl: Connection,
    put_bytes: Callable[[Any], object],
    put_obj: Callable[[Any], object],
    ping: Callable[[bytes, int], list[float]],
) -> Callable[[tuple[Any, ...]], None]:
    def handle(cmd: tuple[Any, ...]) -> None:
        if cmd[0] == "go":
            _, count, size = cmd
            if size:
                _put_bytes(put_bytes, size, count)
            else:
                _put_dicts(put_obj, count)
            ctl.send(("sent", None))
        elif cmd[0] == "ping":
            _, count, payload = cmd
            ctl.send(("rtts", ping(payload, count)))
        else:
            raise ValueError(f"unknown command {cmd!r}")

    return handle


def _flush(queue: Queue[Any]) -> None:
    queue.close()
    with _bounded(_STOP_TIMEOUT, "flushing an mp.Queue"):
        queue.join_thread()


def _serve_queue_sink(ctl: Connection, inbox: Queue[Any], outbox: Queue[Any]) -> None:
    try:
        echo = lambda n: _echo(inbox.get, outbox.put, n)  # noqa: E731
        _serve(ctl, _sink_commands(ctl, inbox.get, inbox.get, echo))
    finally:
        _flush(outbox)


def _serve_queue_source(ctl: Connection, outbox: Queue[Any], inbox: Queue[Any]) -> None:
    try:

        def ping(payload: bytes, n: int) -> list[float]:
            return _ping(outbox.put, inbox.get, payload, n)

        _serve(ctl, _source_commands(ctl, outbox.put, outbox.put, ping))
    finally:
        _flush(outbox)


def _serve_pipe_sink(ctl: Connection, conn: Connection) -> None:
    with conn:
        echo = lambda n: _echo(conn.recv_bytes, conn.send_bytes, n)  # noqa: E731
        _serve(ctl, _sink_commands(ctl, conn.recv_bytes, conn.recv, echo))


def _serve_pipe_source(ctl: Connection, conn: Connection) -> None:
    with conn:

        def ping(payload: bytes, n: int) -> list[float]:
            return _ping(conn.send_bytes, conn.recv_bytes, payload, n)

        _serve(ctl, _source_commands(ctl, conn.send_bytes, conn.send, ping))


class _Proc:
    """An mp child process and the side channel to it."""

    def __init__(self, ctx: SpawnContext, name: str, serve: Callable[..., None], *args: Any):
        self.name = name
        self.ctl, child_end = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child, args=(serve, child_end, *args), name=f"bench-{name}", daemon=True
        )
        self.proc.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, cmd: tuple[Any, ...]) -> None:
        self.ctl.send(cmd)

    def expect(self, kind: str, timeout: float) -> Any:
        """Return the value of the next side-channel message, which must be ``kind``.

        Raises:
            TimeoutError: nothing came within ``timeout``.
            RuntimeError: the child failed (its traceback is in the message).
        """
        if not self.ctl.poll(timeout):
            raise TimeoutError(f"{self.name} (pid {self.pid}): no {kind!r} within {timeout:g}s")
        tag, value = self.ctl.recv()
        if tag == "error":
            raise RuntimeError(f"{self.name} (pid {self.pid}) failed:\n{value}")
        if tag != kind:
            raise RuntimeError(f"{self.name}: expected {kind!r}, got {tag!r}")
        return value

    def stop(self, problems: list[str]) -> None:
        """Ask the process to stop, join it with a timeout, kill it (by pid) if it lingers."""
        stopped = False
        if self.proc.is_alive():
            try:
                self.ctl.send(("stop",))
                self.expect("stopped", _STOP_TIMEOUT)
                stopped = True
            except (OSError, EOFError, TimeoutError, RuntimeError) as exc:
                problems.append(f"{self.name} did not stop cleanly: {exc}")
        self.proc.join(_STOP_TIMEOUT if stopped else 0.5)
        if self.proc.is_alive():
            problems.append(f"{self.name} (pid {self.pid}) killed")
            self.proc.kill()
            self.proc.join(_STOP_TIMEOUT)
        self.ctl.close()
        if self.proc.exitcode is None:
            problems.append(f"{self.name} (pid {self.pid}) survived SIGKILL")


# -- the peers, as the benchmark process sees them -------------------------------------------


class Peer(Protocol):
    name: str

    def tell(self, wl: Workload) -> float:
        """Seconds from "go" to "done" for ``wl.count`` messages."""
        ...

    def ask(self, count: int) -> list[float]:
        """Round-trip times, in seconds."""
        ...


@attrs.define
class _Cleanup:
    """What the teardown found: every entry is a problem; none means nothing was left."""

    problems: list[str] = attrs.Factory(list)
    pids: list[int] = attrs.Factory(list)

    def remove_dir(self, path: Path, what: str) -> None:
        left = sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())
        if left:
            self.problems.append(f"{what} {path}: files left behind: {left}")
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            self.problems.append(f"{what} {path}: could not be removed")

    def reap_children(self, timeout: float) -> None:
        """Wait for every child process to be gone; kill (by pid) and report the rest."""
        deadline = time.monotonic() + timeout
        # multiprocessing's resource tracker lives as long as this process: not ours to end.
        tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
        children = [c for c in psutil.Process().children(recursive=True) if c.pid != tracker]
        while children and time.monotonic() < deadline:
            time.sleep(0.05)  # not a synchronisation: a bounded poll of process exits
            children = [c for c in children if _running(c)]
        for child in children:
            with contextlib.suppress(psutil.Error):
                self.problems.append(f"process {child.pid} ({child.name()}) left; killed")
                child.kill()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _MyBus:
    name = PEERS["mybus"]

    def __init__(self, stack: contextlib.ExitStack, cleanup: _Cleanup) -> None:
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mybus-actors-bench-", dir="/dev/shm"))
        stack.callback(cleanup.remove_dir, self.runtime_dir, "mybus runtime dir")
        os.environ["MYBUS_RUNTIME_DIR"] = str(self.runtime_dir)
        stack.callback(os.environ.pop, "MYBUS_RUNTIME_DIR", None)
        stack.callback(mybus_actors.ref.close_clients)
        self.client = stack.enter_context(mb.connect(runtime_dir=self.runtime_dir))
        self.refs: list[mb.Ref] = []
        stack.callback(self._stop_refs, cleanup)
        self.refs.append(mb.spawn(Sink, _SINK, runtime_dir=self.runtime_dir))
        self.refs.append(mb.spawn(Source, _SOURCE, args=(_SINK,), runtime_dir=self.runtime_dir))
        cleanup.pids.extend(ref.pid for ref in self.refs)

    def _stop_refs(self, cleanup: _Cleanup) -> None:
        for ref in reversed(self.refs):  # the source first: it talks to the sink
            if not ref.stop(_STOP_TIMEOUT):
                cleanup.problems.append(f"{ref} did not stop cleanly: killed")

    def tell(self, wl: Workload) -> float:
        client = self.client
        assert client.ask(_SINK, ("expect", wl.count), timeout=_CONTROL_TIMEOUT) == "ok"
        start = time.perf_counter()
        client.tell(_SOURCE, ("go", wl.count, wl.size))
        done = client.receive(timeout=_JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
        if done != ("done", wl.count):
            raise RuntimeError(f"mybus: expected ('done', {wl.count}), got {done!r}")
        return elapsed

    def ask(self, count: int) -> list[float]:
        assert self.client.ask(_SINK, ("echo",), timeout=_CONTROL_TIMEOUT) == "ok"
        rtts: list[float] = self.client.ask(
            _SOURCE, ("ask", count, _ASK_PAYLOAD), timeout=_JOB_TIMEOUT
        )
        return rtts

    def profile(self, on: bool) -> tuple[str, str]:
        """Turn both actors' own profilers on (or off: their top functions)."""
        msg = ("profile", on)
        a = self.client.ask(_SOURCE, msg, timeout=_CONTROL_TIMEOUT)
        b = self.client.ask(_SINK, msg, timeout=_CONTROL_TIMEOUT)
        return a, b


class _MpPair:
    """A source and a sink process joined by Queues or a Pipe."""

    def __init__(self, name: str, source: _Proc, sink: _Proc) -> None:
        self.name = name
        self.source = source
        self.sink = sink

    def tell(self, wl: Workload) -> float:
        self.sink.send(("expect", wl.count, wl.size == 0))
        self.sink.expect("ok", _CONTROL_TIMEOUT)
        start = time.perf_counter()
        self.source.send(("go", wl.count, wl.size))
        self.sink.expect("done", _JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
        self.source.expect("sent", _JOB_TIMEOUT)
        return elapsed

    def ask(self, count: int) -> list[float]:
        self.sink.send(("echo", count))
        self.sink.expect("ok", _CONTROL_TIMEOUT)
        self.source.send(("ping", count, _ASK_PAYLOAD))
        rtts: list[float] = self.source.expect("rtts", _JOB_TIMEOUT)
        self.sink.expect("done", _JOB_TIMEOUT)
        return rtts


def _start_proc(
    stack: contextlib.ExitStack,
    cleanup: _Cleanup,
    ctx: SpawnContext,
    name: str,
    serve: Callable[..., None],
    *args: Any,
) -> _Proc:
    proc = _Proc(ctx, name, serve, *args)
    cleanup.pids.append(proc.pid)
    stack.callback(proc.stop, cleanup.problems)
    return proc


def _open_queue(stack: contextlib.ExitStack, cleanup: _Cleanup, ctx: SpawnContext) -> _MpPair:
    a_to_b: Queue[Any] = ctx.Queue()
    b_to_a: Queue[Any] = ctx.Queue()
    # Registered first, so run last: after both processes stopped.
    stack.callback(a_to_b.close)
    stack.callback(b_to_a.close)
    name = PEERS["queue"]
    sink = _start_proc(stack, cleanup, ctx, f"{name} sink", _serve_queue_sink, a_to_b, b_to_a)
    source = _start_proc(stack, cleanup, ctx, f"{name} source", _serve_queue_source, a_to_b, b_to_a)
    return _MpPair(name, source, sink)


def _open_pipe(stack: contextlib.ExitStack, cleanup: _Cleanup, ctx: SpawnContext) -> _MpPair:
    a_end, b_end = ctx.Pipe(duplex=True)
    name = PEERS["pipe"]
    try:
        sink = _start_proc(stack, cleanup, ctx, f"{name} sink", _serve_pipe_sink, b_end)
        source = _start_proc(stack, cleanup, ctx, f"{name} source", _serve_pipe_source, a_end)
    finally:
        a_end.close()
        b_end.close()
    return _MpPair(name, source, sink)


# -- Pykka: two threads in this process ------------------------------------------------------


def _pykka_classes() -> tuple[type[Any], type[Any]]:
    import pykka

    class PykkaSink(pykka.ThreadingActor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.expected = 0
            self.got = 0
            self.done: threading.Event | None = None

        def on_receive(self, message: Any) -> Any:
            if type(message) is tuple:  # ("expect", count, event)
                _, self.expected, self.done = message
                self.got = 0
                return "ok"
            self.got += 1
            if self.got == self.expected and self.done is not None:
                self.done.set()
            return message  # an ask's reply; a tell's return value is dropped

    class PykkaSource(pykka.ThreadingActor):  # type: ignore[misc]
        def __init__(self, sink: Any) -> None:
            super().__init__()
            self.sink = sink

        def on_receive(self, message: Any) -> Any:
            verb = message[0]
            if verb == "go":
                _, count, size = message
                if size:
                    _put_bytes(self.sink.tell, size, count)
                else:
                    _put_dicts(self.sink.tell, count)
                return None
            if verb == "ask":
                _, count, payload = message
                ask, clock = self.sink.ask, time.perf_counter
                rtts = [0.0] * count
                for k in range(count):
                    start = clock()
                    ask(payload, block=False).get(timeout=_CONTROL_TIMEOUT)
                    rtts[k] = clock() - start
                return rtts
            raise ValueError(f"unknown message {message!r}")

    return PykkaSource, PykkaSink


class _Pykka:
    name = PEERS["pykka"]

    def __init__(self, stack: contextlib.ExitStack, cleanup: _Cleanup) -> None:
        source_cls, sink_cls = _pykka_classes()
        self.sink = sink_cls.start()
        stack.callback(self._stop, self.sink, cleanup)
        self.source = source_cls.start(self.sink)
        stack.callback(self._stop, self.source, cleanup)

    @staticmethod
    def _stop(ref: Any, cleanup: _Cleanup) -> None:
        try:
            ref.stop(block=True, timeout=_STOP_TIMEOUT)
        except Exception as exc:
            cleanup.problems.append(f"Pykka actor {ref} did not stop: {exc!r}")

    def tell(self, wl: Workload) -> float:
        done = threading.Event()
        reply = self.sink.ask(("expect", wl.count, done), timeout=_CONTROL_TIMEOUT)
        assert reply == "ok"
        start = time.perf_counter()
        self.source.tell(("go", wl.count, wl.size))
        if not done.wait(_JOB_TIMEOUT):
            raise TimeoutError(f"Pykka: {wl.label} not done within {_JOB_TIMEOUT:g}s")
        return time.perf_counter() - start

    def ask(self, count: int) -> list[float]:
        rtts: list[float] = self.source.ask(("ask", count, _ASK_PAYLOAD), timeout=_JOB_TIMEOUT)
        return rtts


# -- Ray: in its own phase -------------------------------------------------------------------


class RaySink:
    def __init__(self) -> None:
        self.got = 0

    def take(self, message: Any) -> None:
        self.got += 1

    def echo(self, message: Any) -> Any:
        return message


class RaySource:
    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def tell(self, count: int, size: int) -> int:
        import ray

        take = self.sink.take.remote
        if size:
            payload = b"x" * size
            refs = [take(payload) for _ in range(count)]
        else:
            value = _DICT_VALUE
            refs = [take({"i": i, "v": value}) for i in range(count)]
        ray.get(refs)
        return count

    def ask(self, count: int, payload: bytes) -> list[float]:
        import ray

        echo, clock = self.sink.echo.remote, time.perf_counter
        rtts = [0.0] * count
        for k in range(count):
            start = clock()
            ray.get(echo(payload))
            rtts[k] = clock() - start
        return rtts


class _Ray:
    name = PEERS["ray"]

    def __init__(self, stack: contextlib.ExitStack, cleanup: _Cleanup) -> None:
        import ray

        self.ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        temp_dir = Path(tempfile.mkdtemp(prefix="rb-"))  # short: socket paths live there
        stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)
        stack.callback(cleanup.reap_children, 15.0)
        stack.callback(ray.shutdown)
        start = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="warning",
            object_store_memory=_RAY_OBJECT_STORE,
            _temp_dir=str(temp_dir),
        )
        self.init_seconds = time.perf_counter() - start
        sink = ray.remote(RaySink).remote()
        self.source = ray.remote(RaySource).remote(sink)
        self.sink = sink
        ray.get([sink.echo.remote(0), self.source.ask.remote(1, b"")], timeout=_START_TIMEOUT)
        self.ready_seconds = time.perf_counter() - start

    def tell(self, wl: Workload) -> float:
        start = time.perf_counter()
        self.ray.get(self.source.tell.remote(wl.ray_count, wl.size), timeout=_JOB_TIMEOUT)
        return time.perf_counter() - start

    def ask(self, count: int) -> list[float]:
        rtts: list[float] = self.ray.get(
            self.source.ask.remote(count, _ASK_PAYLOAD), timeout=_JOB_TIMEOUT
        )
        return rtts


# -- measuring -------------------------------------------------------------------------------

Results = dict[str, dict[str, list[float]]]  # peer -> figure -> one value per rep


@attrs.frozen
class Plan:
    workloads: tuple[Workload, ...]
    ask: AskMode
    reps: int

    def config(self) -> dict[str, Any]:
        counts = {wl.key: wl.count for wl in self.workloads}
        counts[self.ask.key] = self.ask.count
        ray_counts = {wl.key: wl.ray_count for wl in self.workloads}
        ray_counts[self.ask.key] = self.ask.ray_count
        return {"reps": self.reps, "counts": counts, "ray_counts": ray_counts}


def _count(peer: Peer, wl: Workload) -> int:
    return wl.ray_count if peer.name == PEERS["ray"] else wl.count


def _ask_count(peer: Peer, mode: AskMode) -> int:
    return mode.ray_count if peer.name == PEERS["ray"] else mode.count


def _measure_tell(peer: Peer, wl: Workload) -> float:
    """Messages per second."""
    with _bounded(_JOB_TIMEOUT + 10, f"{peer.name}: {wl.label}"):
        return _count(peer, wl) / peer.tell(wl)


def _measure_ask(peer: Peer, count: int) -> list[float]:
    with _bounded(_JOB_TIMEOUT + 10, f"{peer.name}: {count} asks"):
        rtts = peer.ask(count)
    if len(rtts) != count:
        raise RuntimeError(f"{peer.name}: {len(rtts)} round trips, expected {count}")
    return rtts


def _p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _run(peers: Sequence[Peer], plan: Plan, results: Results) -> None:
    """Warm every peer up, then measure, interleaving peers within each rep."""
    for peer in peers:
        _log(f"warming up {peer.name}")
        for wl in plan.workloads:
            _measure_tell(peer, wl.scaled(_WARMUP_FRACTION))
        _measure_ask(peer, _ask_count(peer, plan.ask.scaled(_WARMUP_FRACTION)))
    for rep in range(plan.reps):
        tag = f"rep {rep + 1}/{plan.reps}"
        for wl in plan.workloads:
            for peer in peers:
                rate = _measure_tell(peer, wl)
                results.setdefault(peer.name, {}).setdefault(wl.key, []).append(rate)
                _log(f"{tag} {wl.label:<18} {peer.name:<9} {rate:>12,.0f} msg/s")
        for peer in peers:
            rtts = _measure_ask(peer, _ask_count(peer, plan.ask))
            median, p99 = statistics.median(rtts) * 1e6, _p99(rtts) * 1e6
            figures = results.setdefault(peer.name, {})
            figures.setdefault(f"{plan.ask.key}.median", []).append(median)
            figures.setdefault(f"{plan.ask.key}.p99", []).append(p99)
            _log(
                f"{tag} {plan.ask.label:<18} {peer.name:<9} median {median:8.1f} us"
                f"  p99 {p99:8.1f} us"
            )


# -- reporting -------------------------------------------------------------------------------


@attrs.frozen
class Target:
    label: str
    figure: str
    peer: str
    bound: float
    at_least: bool  # throughput: mybus/peer >= bound; round trip: mybus/peer <= bound


TARGETS: Final = (
    Target("tell small dict >= 3x mp.Queue", "dict", PEERS["queue"], 3.0, True),
    Target("tell 64 B >= 4x mp.Queue", "b64", PEERS["queue"], 4.0, True),
    Target("tell 1 MiB MB/s >= 2x mp.Queue", "b1m", PEERS["queue"], 2.0, True),
    Target("ask round trip median <= 0.5x mp.Pipe", "ask.median", PEERS["pipe"], 0.5, False),
)


def _rows(plan: Plan) -> list[tuple[str, str]]:
    """(figure key, row label) in table order."""
    rows = [
        (wl.key, f"{wl.label}, msg/s" + (" (MB/s)" if wl.size >= 4096 else ""))
        for wl in plan.workloads
    ]
    rows.append((f"{plan.ask.key}.median", f"{plan.ask.label}: median, us"))
    rows.append((f"{plan.ask.key}.p99", f"{plan.ask.label}: p99, us"))
    return rows


def _cell(key: str, value: float | None, sizes: dict[str, int]) -> str:
    if value is None:
        return "n/a"
    if "." in key:  # a round-trip figure, in microseconds
        return f"{value:,.1f}"
    size = sizes.get(key, 0)
    if size >= 4096:
        return f"{value:,.0f} ({value * size / _MB:,.0f})"
    return f"{value:,.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _medians(results: Results) -> dict[str, dict[str, float]]:
    return {p: {k: statistics.median(v) for k, v in figs.items()} for p, figs in results.items()}


def _ratio(results: Results, key: str, peer: str) -> float | None:
    """mybus / peer for figure ``key``: the median of the per-rep ratios.

    Rep by rep the two were measured one right after the other, so a ratio within a rep
    cancels most of the background load that drifts from one rep to the next. (Ray runs
    in its own phase: its ratios pair reps measured minutes apart.)
    """
    mine = results.get(PEERS["mybus"], {}).get(key)
    theirs = results.get(peer, {}).get(key)
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    return statistics.median(m / t for m, t in zip(mine, theirs, strict=True) if t)


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _spread(values: Sequence[float] | None) -> float | None:
    if not values or min(values) <= 0:
        return None
    return max(values) / min(values)


def _targets(results: Results) -> list[str]:
    lines = []
    for target in TARGETS:
        value = _ratio(results, target.figure, target.peer)
        if value is None:
            lines.append(f"- n/a  {target.label}: not measured in this run")
            continue
        ok = value >= target.bound if target.at_least else value <= target.bound
        lines.append(f"- {'PASS' if ok else 'MISS'} {target.label}: {value:.2f}x")
    return lines


def _report(results: Results, names: Sequence[str], plan: Plan) -> str:
    med = _medians(results)
    sizes = {wl.key: wl.size for wl in plan.workloads}
    rows = _rows(plan)
    figures = [
        [label, *(_cell(key, med.get(n, {}).get(key), sizes) for n in names)] for key, label in rows
    ]
    out = ["## Figures (median over reps)", "", _table(["workload", *names], figures), ""]
    peers = [n for n in names if n != PEERS["mybus"]]
    if PEERS["mybus"] in results and peers:
        ratios = [
            [
                f"{label} ({'lower' if '.' in key else 'higher'} is better)",
                *(_fmt_ratio(_ratio(results, key, p)) for p in peers),
            ]
            for key, label in rows
        ]
        header = ["workload", *(f"mybus / {p}" for p in peers)]
        out += [
            "## Ratios: mybus / peer (median over reps of each rep's ratio)",
            "",
            _table(header, ratios),
            "",
        ]
    spread = [
        [label, *(_fmt_ratio(_spread(results.get(n, {}).get(key))) for n in names)]
        for key, label in rows
    ]
    out += ["## Noise: max / min over reps", "", _table(["workload", *names], spread), ""]
    return "\n".join([*out, "## Targets (ratios as above)", "", *_targets(results)])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_pressure() -> str:
    """The kernel's CPU pressure line ("some avg10=..."): how often tasks waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            return " ".join(f.readline().split()[1:3])
    except OSError:
        return "n/a"


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
        )
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mybus_actors": mb.__version__,
        "pykka": _version("pykka"),
        "ray": _version("ray"),
        "loadavg_start": os.getloadavg(),
        "cpu_pressure_start": _cpu_pressure(),
    }


def _header(info: dict[str, Any], config: dict[str, Any], notes: Sequence[str]) -> str:
    counts = ", ".join(f"{k} {v:,}" for k, v in config["counts"].items())
    ray_counts = ", ".join(f"{k} {v:,}" for k, v in config["ray_counts"].items())
    lines = [
        "# mybus actor benchmark",
        "",
        f"- date: {info['date']}",
        f"- machine: nproc {info['nproc']} (affinity {info['affinity']}), {info['cpu']}, "
        f"{info['platform']}",
        f"- python {info['python']}, mybus_actors {info['mybus_actors']}, "
        f"pykka {info['pykka'] or 'not installed'}, ray {info['ray'] or 'not installed'}",
        f"- load average at start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}; "
        f"cpu pressure {info['cpu_pressure_start']}",
        f"- reps: {config['reps']} (each figure is the median); messages per rep: {counts}; "
        f"Ray: {ray_counts}",
        f"- mybus: A and B each in its own process (mb.spawn), default Runtime (spin "
        f"{_RUNTIME_SPIN * 1e6:g} us, rings of {DEFAULT_CAPACITY:,} B); timed in the client "
        'from its tell of "go" to B\'s "done"',
        "- Pykka: ThreadingActors, both in the benchmark process (threads: no copy, no "
        "serialization, one GIL); Queue/Pipe: a source and a sink process",
        *(f"- note: {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    parser.add_argument("--quick", action="store_true", help="1/5 of the counts, 3 reps")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated subset of {','.join(PEERS)} (mybus is always run)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the table: each mybus actor profiles itself (cProfile) during "
        "the 64 B and small-dict tells and the asks; prints the top functions by tottime",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    chosen = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    args.peers = ["mybus", *(name for name in chosen if name != "mybus")]
    return args


def _open_optional(key: str, opener: Callable[[], Peer], notes: list[str]) -> Peer | None:
    """Open Pykka or Ray; skip it with a note when it is not installed or cannot start."""
    try:
        return opener()
    except ImportError as exc:
        notes.append(f"{PEERS[key]} skipped: not installed ({exc}); pip install {key}")
    except Exception as exc:
        notes.append(f"{PEERS[key]} skipped: it could not start here: {exc!r}")
        _log(traceback.format_exc())
    _log(f"note: {notes[-1]}")
    return None


def _profile(bus: _MyBus, plan: Plan) -> None:
    """Each actor profiles itself from one control message to the next."""
    for wl in plan.workloads[:2]:
        bus.tell(wl.scaled(_WARMUP_FRACTION))
        bus.profile(True)
        seconds = bus.tell(wl)
        a, b = bus.profile(False)
        print(
            f"## mybus, {wl.label}: {wl.count:,} messages in {seconds:.2f}s under cProfile "
            f"({wl.count / seconds:,.0f} msg/s), top {_PROFILE_LINES} by tottime\n\n"
            f"A (source, the telling actor):\n{a}\n\nB (sink, the receiving actor):\n{b}\n"
        )
    bus.ask(plan.ask.scaled(_WARMUP_FRACTION).count)
    bus.profile(True)
    rtts = bus.ask(plan.ask.count)
    a, b = bus.profile(False)
    print(
        f"## mybus, {plan.ask.label}: {plan.ask.count:,} asks under cProfile, median "
        f"{statistics.median(rtts) * 1e6:.1f} us, top {_PROFILE_LINES} by tottime\n\n"
        f"A (the asking actor, async receive):\n{a}\n\nB (the replying actor):\n{b}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    factor = 0.2 if args.quick else 1.0
    plan = Plan(
        workloads=tuple(wl.scaled(factor) for wl in WORKLOADS),
        ask=ASK.scaled(factor),
        reps=args.reps,
    )
    info = _machine()
    config = {**plan.config(), "quick": args.quick}
    cleanup = _Cleanup()
    notes: list[str] = []
    results: Results = {}
    names: list[str] = []
    ray_start: tuple[float, float] | None = None
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            _log("starting mybus actors and the mp processes")
            bus = _MyBus(stack, cleanup)
            if args.profile:
                _profile(bus, plan)
            else:
                ctx = mp.get_context("spawn")
                peers: list[Peer] = [bus]
                pairs = []
                if "queue" in args.peers:
                    pairs.append(_open_queue(stack, cleanup, ctx))
                if "pipe" in args.peers:
                    pairs.append(_open_pipe(stack, cleanup, ctx))
                for pair in pairs:
                    pair.source.expect("ready", _START_TIMEOUT)
                    pair.sink.expect("ready", _START_TIMEOUT)
                peers += pairs
                if "pykka" in args.peers:
                    pykka_peer = _open_optional("pykka", lambda: _Pykka(stack, cleanup), notes)
                    if pykka_peer is not None:
                        peers.append(pykka_peer)
                names = [p.name for p in peers]
                _run(peers, plan, results)
        if "ray" in args.peers and not args.profile:
            with contextlib.ExitStack() as stack:
                _log("starting Ray")
                ray_peer = _open_optional("ray", lambda: _Ray(stack, cleanup), notes)
                if isinstance(ray_peer, _Ray):
                    ray_start = (ray_peer.init_seconds, ray_peer.ready_seconds)
                    notes.append(
                        f"Ray start-up (not in any figure): ray.init {ray_start[0]:.1f} s, "
                        f"two actors ready {ray_start[1]:.1f} s after the start of ray.init; "
                        "Ray ran in its own phase after the others, with its own counts"
                    )
                    names.append(ray_peer.name)
                    _run([ray_peer], plan, results)
    finally:
        cleanup.reap_children(_STOP_TIMEOUT)
    elapsed = time.perf_counter() - started
    if not args.profile:
        print(_header(info, config, notes))
        print(_report(results, names, plan))
    print(
        f"\nrun time {elapsed:.0f}s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; cpu pressure {_cpu_pressure()}"
    )
    if args.json is not None:
        raw = {
            "machine": info,
            "config": config,
            "notes": notes,
            "run_seconds": elapsed,
            "ray_start_seconds": ray_start,
            "units": "throughput keys (b64, dict, b1m): messages/s; ask keys: us",
            "reps": results,
            "medians": _medians(results),
            "ratios_mybus_over_peer": {
                peer: {key: _ratio(results, key, peer) for key in results[peer]}
                for peer in names
                if peer != PEERS["mybus"] and peer in results
            },
            "cleanup_problems": cleanup.problems,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    if cleanup.problems:
        print("cleanup FAILED:\n  " + "\n  ".join(cleanup.problems))
        return 1
    print(
        f"cleanup: {len(cleanup.pids)} processes stopped by pid, every child process gone; "
        "mybus runtime dir empty of files and removed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
