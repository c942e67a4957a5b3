"""Actor benchmark: mybus actors in two processes against mp.Queue/Pipe, pyzmq, iceoryx2,
Pykka and Ray.

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
- pyzmq over ``ipc://`` (the "benchmark" extra; skipped with a note when it is not
  importable): a source process PUSHes to a sink that PULLs, dicts pickled by the sender
  and unpickled by the receiver, the asks over a PAIR socket pair.
- iceoryx2 (``pip install iceoryx2``; skipped with a note when it is not importable): a
  source and a sink process, driven like the Queue and Pipe pairs. Tells go over a
  publish-subscribe service of ``Slice[c_uint8]`` (safe overflow off, the publisher's
  backpressure ``RetryUntilDelivered``: nothing is dropped), bytes as they are, dicts
  pickled; each payload is copied into a loaned sample and out of the received one, so
  both sides own their bytes. The ask is iceoryx2's own request-response (a client in
  A, a server in B echoing each request, ``Slice[c_uint8]`` both ways, no overflow), a
  request's pending response dropped once its response is read. Wake-ups: after each
  send or response, the sender notifies an event service; a receiver with nothing to
  read spins as long as the mybus Runtime does by default, then sleeps on its
  listener. ``_iceoryx2.py`` has the details;
- Pykka (``pip install pykka``): two ThreadingActors in THIS process (Pykka's actors are
  threads in one process: no copy, no serialization, the GIL shared), A's on_receive
  telling B, or calling ``B.ask(x, block=False).get()`` for the round trip;
- Ray (``pip install ray``): two actors; A calls ``B.take.remote(x)`` N times and waits
  for all refs, or ``ray.get(B.echo.remote(x))`` in a loop. Ray is far slower per
  message, so it runs fewer messages (the counts are printed), after the others, in its
  own phase, and its start-up time is reported on its own line.

In-process figures, beside Pykka (a second set of tables, "In-process"):

- ``tell``: one top-level actor process (``mb.spawn``) hosts a driver whose two children
  A and B (``self.spawn(..., process=False)``) live in that same process, so a tell from
  A to B is a queue append: no ring, no copy, no serialization. The client tells the
  driver "tell"; the driver has B expect the count, then times (``perf_counter``, in the
  hosting process) from its "go" to A until B's "done", and reports the seconds back:
  the client's hops are not counted. Payloads: 64 B bytes and the small dict. Pykka:
  the same two ThreadingActors as above, with the same counts;
- ``ask`` round trip: A's ``async def receive`` runs ``await self.ask(B, 64 B bytes)``
  in a loop and times each (median and p99); Pykka's A calls ``B.ask(x)`` per message;
- ThreadRing (Savina): 1,000 actors in a ring pass a token (an int, decremented at each
  hop) until it reaches 0; hops/s. mybus: all 1,000 are in-process children of one
  actor, in one process of their own (not the driver's); timed there. Pykka: 1,000
  ThreadingActors in this process (1,000 threads; if this machine cannot start that
  many, the largest ring that started is used, and printed). Pykka passes the token
  about ten times slower, so it runs fewer hops (the counts are printed).

Each figure is the median over ``--reps`` repetitions; mybus, Queue, Pipe, iceoryx2 and
Pykka are interleaved within each repetition (so background load hits them alike) and
every ratio is the median of the per-rep ratios. Targets compare mybus with mp.Queue /
mp.Pipe and iceoryx2, and mybus in-process with Pykka. The in-process figures run in the
same repetitions, after the cross-process ones, mybus in-process and Pykka interleaved.

Reading the figures: both mybus dispatchers spin (300 us by default, yielding the CPU
after the first 50 us) before they sleep on their doorbells. On the 2-core dev VM with
nothing else running, an ask takes about 55 us; when other processes want the CPUs too,
the spinning pair takes turns with them and the ask jumps to 150-300 us (p99 in ms),
while Pipe and Queue, which sleep in the kernel, degrade less. iceoryx2's receivers spin
alike (300 us, then its listener), and its ask degrades alike: 6-8 us on a quiet VM,
over 100 us while a test suite ran beside it. The header prints the load average and the
CPU pressure at the start and the end: compare runs only alike.
`--profile` has each mybus actor profile itself (cProfile, from one control message to
the next) and prints the top functions by tottime instead of the tables.

Bounds: every timed job runs under an interval timer in the benchmark process and in the
mp children; the actors' tells and asks have their own timeouts. Every process started
here is stopped by pid (asked, joined with a timeout, killed if need be); the mybus
runtime directory (``/dev/shm``, private to this run) is checked empty of files after the
refs are stopped and the clients closed, then removed; so is Ray's temp directory, and
so are iceoryx2's files (a file prefix in ``/dev/shm`` and a root directory, both private
to this run) once its processes are stopped. The Pykka ring's threads are stopped (and
joined, with a timeout) before the script ends.
Whatever the targets say, the exit status is 0 unless something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.metadata
import inspect
import json
import multiprocessing as mp
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Final, Protocol

import _iceoryx2 as iox
import attrs
from _common import (
    DICT_VALUE,
    IDLE_TIMEOUT,
    JOB_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Cleanup,
    Proc,
    Report,
    Results,
    Target,
    base_parser,
    bounded,
    counts,
    drain,
    echo_back,
    footer,
    header,
    log,
    machine,
    medians,
    parse_args,
    profile_text,
    ratios,
    record_rtts,
    repeat,
    round_trips,
    send_dicts,
    start_proc,
    targets,
    tell_bytes,
    tell_dicts,
)

import mybus_actors as mb
import mybus_actors.ref
from mybus_actors.ring import DEFAULT_CAPACITY
from mybus_actors.ringcore import PURE_ENV, describe

_ASK_PAYLOAD: Final = b"p" * 64
_SOURCE: Final = "bench-a"
_SINK: Final = "bench-b"
_CONTROL_TIMEOUT: Final = 10.0
_WARMUP_FRACTION: Final = 0.05
_PROFILE_LINES: Final = 18
_RAY_OBJECT_STORE: Final = 512 * 1024 * 1024
_RUNTIME_SPIN: Final[float] = inspect.signature(mb.Runtime).parameters["spin"].default
# In-process: a driver with two children in its own process, and a ring host.
_PAIR_HOST: Final = "bench-inproc"
_IN_SOURCE: Final = "bench-inproc-a"
_IN_SINK: Final = "bench-inproc-b"
_RING_HOST: Final = "bench-ring"
_RING_SIZE: Final = 1_000
_RING_HEADROOM: Final = 0.9  # of a ring cut short by the thread limit, what is kept
IN_MYBUS: Final = "mybus in-process"


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


@attrs.frozen
class RingMode:
    """ThreadRing: ``actors`` in a ring pass a token ``hops`` times (Pykka: fewer)."""

    key: str
    label: str
    actors: int
    hops: int
    pykka_hops: int  # Pykka's threads pass the token about ten times slower

    @property
    def size(self) -> int:
        return 0  # the token is a small int: no MB/s column

    def scaled(self, factor: float) -> RingMode:
        return attrs.evolve(
            self,
            hops=max(2 * self.actors, int(self.hops * factor)),
            pykka_hops=max(2 * self.actors, int(self.pykka_hops * factor)),
        )


WORKLOADS: Final = (
    Workload("b64", "tell 64 B bytes", 64, 200_000, 3_000),
    Workload("dict", "tell small dict", 0, 200_000, 3_000),
    Workload("b1m", "tell 1 MiB bytes", 1 << 20, 1_500, 100),
)
ASK: Final = AskMode("ask", "ask 64 B round trip", 20_000, 1_000)
# In-process (no Ray: its ray_count is unused). Sized for about 0.5-2 s a run at most.
IN_WORKLOADS: Final = (
    Workload("b64", "tell 64 B bytes", 64, 500_000, 0),
    Workload("dict", "tell small dict", 0, 500_000, 0),
)
IN_ASK: Final = AskMode("ask", "ask 64 B round trip", 20_000, 0)
RING: Final = RingMode(
    "ring", f"ThreadRing of {_RING_SIZE:,} actors, hops", _RING_SIZE, 200_000, 40_000
)
PEERS: Final = {
    "mybus": "mybus",
    "mybus-pure": "mybus pure core",
    "mybus-client": "mybus client->actor",
    "queue": "mp.Queue",
    "pipe": "mp.Pipe",
    "zmq": "zmq ipc",
    "iceoryx2": "iceoryx2",
    "pykka": "Pykka",
    "ray": "Ray",
}
# iceoryx2's services: a pub/sub one for the tells, a request-response one for the asks.
_IOX_TELLS: Final = "tells"
_IOX_ASKS: Final = "asks"


# -- bounds ------------------------------------------------------------------------------


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
        text, self.profiler = profile_text(self.profiler, _PROFILE_LINES), None
        return text


# -- the loops (kept flat: a call per message would blur the figures) ----------------------


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
                tell_bytes(self.tell, self.peer, b"x" * size, count)
            else:
                tell_dicts(self.tell, self.peer, count)
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


# -- mybus in-process: children hosted in their parent's process ----------------------------


class _Driver(mb.Actor):
    """What both in-process hosts share: the client to answer, and a notice for it if a
    child ends (so it fails fast instead of waiting out its timeout)."""

    def __init__(self) -> None:
        self.client: str | None = None
        self.start = 0.0

    def _child_ended(self, notice: mb.Terminated) -> None:
        if self.client is not None:
            self.tell(self.client, ("ended", notice.address, notice.reason))


class PairHost(_Driver):
    """The driver: hosts A (a `Source`) and B (a `Sink`) as children in this process and
    times, here, A's tells to B from "go" to B's "done"."""

    def on_start(self) -> None:
        self.spawn(Sink, _IN_SINK)
        self.spawn(Source, _IN_SOURCE, args=(_IN_SINK,))
        self.job: tuple[Any, ...] = ()

    def receive(self, message: Any) -> None:
        if message == "ok":  # B expects the count: the clock starts with A's "go"
            self.start = time.perf_counter()
            self.tell(_IN_SOURCE, self.job)
        elif isinstance(message, mb.Terminated):
            self._child_ended(message)
        elif message[0] == "done":  # from B
            elapsed = time.perf_counter() - self.start
            assert self.client is not None
            self.tell(self.client, ("done", message[1], elapsed))
        elif message[0] == "tell":  # from the client
            _, count, size = message
            self.client, self.job = self.sender, ("go", count, size)
            self.tell(_IN_SINK, ("expect", count))
        else:
            raise ValueError(f"unknown message {message!r}")


def _ring_name(k: int) -> str:
    return f"{_RING_HOST}-{k:04d}"


class RingMember(mb.Actor):
    """One actor of the ring: passes the token on, or tells the host that it is 0."""

    def __init__(self, next_name: str, host: str) -> None:
        self.next = next_name
        self.host = host

    def receive(self, token: int) -> None:
        if token:
            self.tell(self.next, token - 1)
        else:
            self.tell(self.host, ("lap",))


class RingHost(_Driver):
    """Hosts the ring's ``size`` actors as children in this process; times a lap here."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.hops = 0

    def on_start(self) -> None:
        for k in range(self.size):
            self.spawn(RingMember, _ring_name(k), args=(_ring_name((k + 1) % self.size), self.name))

    def receive(self, message: Any) -> None:
        if isinstance(message, mb.Terminated):
            self._child_ended(message)
        elif message[0] == "lap":  # the token reached 0
            elapsed = time.perf_counter() - self.start
            assert self.client is not None
            self.tell(self.client, ("ring", self.hops, elapsed))
        elif message[0] == "ring":  # from the client
            self.client, self.hops = self.sender, message[1]
            self.start = time.perf_counter()
            self.tell(_ring_name(0), self.hops)
        else:
            raise ValueError(f"unknown message {message!r}")


# -- the mp children -------------------------------------------------------------------------


def _serve(ctl: Connection, handle: Callable[[tuple[Any, ...]], None]) -> None:
    """Run the parent's commands until it says stop."""
    ctl.send(("ready", os.getpid()))
    while True:
        if not ctl.poll(IDLE_TIMEOUT):
            raise TimeoutError(f"pid {os.getpid()}: no command for {IDLE_TIMEOUT:g}s")
        cmd: tuple[Any, ...] = ctl.recv()
        if cmd[0] == "stop":
            ctl.send(("stopped", None))
            return
        with bounded(JOB_TIMEOUT, f"pid {os.getpid()}: {cmd[0]} {cmd[1]}"):
            handle(cmd)


def _sink_commands(
    ctl: Connection,
    get_bytes: Callable[[], Any],
    get_obj: Callable[[], Any],
    echo: Callable[[int], None],
) -> Callable[[tuple[Any, ...]], None]:
    def take(count: int, is_dict: bool) -> None:
        drain(get_obj if is_dict else get_bytes, count)

    return _sink_handler(ctl, take, echo)


def _sink_handler(
    ctl: Connection, take: Callable[[int, bool], None], echo: Callable[[int], None]
) -> Callable[[tuple[Any, ...]], None]:
    """The sink's side of the commands: ``take(count, is_dict)`` receives a tell stream."""

    def handle(cmd: tuple[Any, ...]) -> None:
        if cmd[0] == "expect":
            _, count, is_dict = cmd
            ctl.send(("ok", None))
            take(count, is_dict)
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
    def give(count: int, size: int) -> None:
        if size:
            repeat(put_bytes, b"x" * size, count)
        else:
            send_dicts(put_obj, count)

    return _source_handler(ctl, give, ping)


def _source_handler(
    ctl: Connection,
    give: Callable[[int, int], None],
    ping: Callable[[bytes, int], list[float]],
) -> Callable[[tuple[Any, ...]], None]:
    """The source's side: ``give(count, size)`` tells a stream (size 0: small dicts)."""

    def handle(cmd: tuple[Any, ...]) -> None:
        if cmd[0] == "go":
            _, count, size = cmd
            give(count, size)
            ctl.send(("sent", None))
        elif cmd[0] == "ping":
            _, count, payload = cmd
            ctl.send(("rtts", ping(payload, count)))
        else:
            raise ValueError(f"unknown command {cmd!r}")

    return handle


def _flush(queue: Queue[Any]) -> None:
    queue.close()
    with bounded(STOP_TIMEOUT, "flushing an mp.Queue"):
        queue.join_thread()


def _serve_queue_sink(ctl: Connection, inbox: Queue[Any], outbox: Queue[Any]) -> None:
    try:
        echo = lambda n: echo_back(inbox.get, outbox.put, n)  # noqa: E731
        _serve(ctl, _sink_commands(ctl, inbox.get, inbox.get, echo))
    finally:
        _flush(outbox)


def _serve_queue_source(ctl: Connection, outbox: Queue[Any], inbox: Queue[Any]) -> None:
    try:

        def ping(payload: bytes, n: int) -> list[float]:
            return round_trips(outbox.put, inbox.get, payload, n)

        _serve(ctl, _source_commands(ctl, outbox.put, outbox.put, ping))
    finally:
        _flush(outbox)


def _serve_pipe_sink(ctl: Connection, conn: Connection) -> None:
    with conn:
        echo = lambda n: echo_back(conn.recv_bytes, conn.send_bytes, n)  # noqa: E731
        _serve(ctl, _sink_commands(ctl, conn.recv_bytes, conn.recv, echo))


def _serve_pipe_source(ctl: Connection, conn: Connection) -> None:
    with conn:

        def ping(payload: bytes, n: int) -> list[float]:
            return round_trips(conn.send_bytes, conn.recv_bytes, payload, n)

        _serve(ctl, _source_commands(ctl, conn.send_bytes, conn.send, ping))


@contextlib.contextmanager
def _zmq_sockets(stream: str) -> Iterator[tuple[Any, Any]]:
    """A zmq context with a ``stream`` (PUSH or PULL) and a PAIR socket, closed after."""
    import zmq

    context = zmq.Context()
    sockets = (context.socket(getattr(zmq, stream)), context.socket(zmq.PAIR))
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


def _serve_zmq_sink(ctl: Connection, stream_addr: str, rpc_addr: str) -> None:
    """B: PULLs the tells, echoes the asks on a PAIR socket; binds both (and unlinks them)."""
    with _zmq_sockets("PULL") as (pull, pair):
        try:
            pull.bind(stream_addr)
            pair.bind(rpc_addr)
            get_obj = lambda: pickle.loads(pull.recv())  # noqa: E731
            echo = lambda n: echo_back(pair.recv, pair.send, n)  # noqa: E731
            _serve(ctl, _sink_commands(ctl, pull.recv, get_obj, echo))
        finally:
            # libzmq unlinks only the files of wildcard ("ipc://*") endpoints.
            for addr in (stream_addr, rpc_addr):
                Path(addr.removeprefix("ipc://")).unlink(missing_ok=True)


def _serve_zmq_source(ctl: Connection, stream_addr: str, rpc_addr: str) -> None:
    """A: PUSHes the tells (dicts pickled here), asks over the PAIR socket."""
    with _zmq_sockets("PUSH") as (push, pair):
        push.connect(stream_addr)
        pair.connect(rpc_addr)
        put_obj = lambda obj: push.send(pickle.dumps(obj, protocol=5))  # noqa: E731

        def ping(payload: bytes, n: int) -> list[float]:
            return round_trips(pair.send, pair.recv, payload, n)

        _serve(ctl, _source_commands(ctl, push.send, put_obj, ping))


def _serve_iceoryx2_sink(ctl: Connection, domain: iox.Domain) -> None:
    """B: a subscriber of the tells, a server of the asks (see ``_iceoryx2``)."""
    with iox.ports(domain) as ports:
        tells = ports.reader(_IOX_TELLS, _RUNTIME_SPIN)
        asks = ports.answerer(_IOX_ASKS, _RUNTIME_SPIN)

        def take(count: int, is_dict: bool) -> None:
            iox.drain(tells, count, pickle.loads if is_dict else None)

        _serve(ctl, _sink_handler(ctl, take, asks.answer))


def _serve_iceoryx2_source(ctl: Connection, domain: iox.Domain) -> None:
    """A: a publisher of the tells, a client of the asks."""
    with iox.ports(domain) as ports:
        tells = ports.writer(_IOX_TELLS)
        asker = ports.asker(_IOX_ASKS, _RUNTIME_SPIN)

        def give(count: int, size: int) -> None:
            if size:
                iox.send_bytes(tells, b"x" * size, count)
            else:
                iox.send_pickled_dicts(tells, count)

        def ping(payload: bytes, count: int) -> list[float]:
            return iox.asks(asker, payload, count)

        _serve(ctl, _source_handler(ctl, give, ping))


class _Proc(Proc):
    """An mp child process and the side channel to it."""

    def send(self, cmd: tuple[Any, ...]) -> None:
        self.ctl.send(cmd)


# -- the peers, as the benchmark process sees them -------------------------------------------


class Peer(Protocol):
    name: str

    def tell(self, wl: Workload) -> float:
        """Seconds from "go" to "done" for ``wl.count`` messages."""
        ...

    def ask(self, count: int) -> list[float]:
        """Round-trip times, in seconds."""
        ...


class _MyBus:
    """A and B in two processes on the ring core this process has (native when built)."""

    name = PEERS["mybus"]
    source, sink = _SOURCE, _SINK

    def __init__(self, stack: contextlib.ExitStack, cleanup: Cleanup) -> None:
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mybus-actors-bench-", dir="/dev/shm"))
        stack.callback(cleanup.remove_dir, self.runtime_dir, "mybus runtime dir")
        os.environ["MYBUS_RUNTIME_DIR"] = str(self.runtime_dir)
        stack.callback(os.environ.pop, "MYBUS_RUNTIME_DIR", None)
        stack.callback(mybus_actors.ref.close_clients)
        self.client = stack.enter_context(mb.connect(runtime_dir=self.runtime_dir))
        self.refs: list[mb.Ref] = []
        stack.callback(_stop_refs, self.refs, cleanup)
        self._spawn(cleanup)

    def _spawn(self, cleanup: Cleanup) -> None:
        self.refs.append(mb.spawn(Sink, self.sink, runtime_dir=self.runtime_dir))
        self.refs.append(
            mb.spawn(Source, self.source, args=(self.sink,), runtime_dir=self.runtime_dir)
        )
        cleanup.pids.extend(ref.pid for ref in self.refs[-2:])

    def tell(self, wl: Workload) -> float:
        client = self.client
        assert client.ask(self.sink, ("expect", wl.count), timeout=_CONTROL_TIMEOUT) == "ok"
        start = time.perf_counter()
        client.tell(self.source, ("go", wl.count, wl.size))
        done = client.receive(timeout=JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
        if done != ("done", wl.count):
            raise RuntimeError(f"mybus: expected ('done', {wl.count}), got {done!r}")
        return elapsed

    def ask(self, count: int) -> list[float]:
        assert self.client.ask(self.sink, ("echo",), timeout=_CONTROL_TIMEOUT) == "ok"
        rtts: list[float] = self.client.ask(
            self.source, ("ask", count, _ASK_PAYLOAD), timeout=JOB_TIMEOUT
        )
        return rtts

    def profile(self, on: bool) -> tuple[str, str]:
        """Turn both actors' own profilers on (or off: their top functions)."""
        msg = ("profile", on)
        a = self.client.ask(self.source, msg, timeout=_CONTROL_TIMEOUT)
        b = self.client.ask(self.sink, msg, timeout=_CONTROL_TIMEOUT)
        return a, b


class _MyBusClient:
    """The benchmark process's own client (``mb.connect``) as the source: tells from it
    to B, and ``client.ask(B, 64 B)`` round trips timed in it; the figure an issue calls
    "client->actor", beside the actor->actor ``await self.ask`` of `_MyBus`."""

    name = PEERS["mybus-client"]

    def __init__(self, bus: _MyBus) -> None:
        self.client = bus.client
        self.sink = bus.sink

    def tell(self, wl: Workload) -> float:
        client = self.client
        assert client.ask(self.sink, ("expect", wl.count), timeout=_CONTROL_TIMEOUT) == "ok"
        start = time.perf_counter()
        if wl.size:
            tell_bytes(client.tell, self.sink, b"x" * wl.size, wl.count)
        else:
            tell_dicts(client.tell, self.sink, wl.count)
        done = client.receive(timeout=JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
        if done != ("done", wl.count):
            raise RuntimeError(f"mybus client: expected ('done', {wl.count}), got {done!r}")
        return elapsed

    def ask(self, count: int) -> list[float]:
        client, sink, clock = self.client, self.sink, time.perf_counter
        assert client.ask(sink, ("echo",), timeout=_CONTROL_TIMEOUT) == "ok"
        rtts = [0.0] * count
        for k in range(count):
            start = clock()
            client.ask(sink, _ASK_PAYLOAD, timeout=_CONTROL_TIMEOUT)
            rtts[k] = clock() - start
        return rtts


class _MyBusPure(_MyBus):
    """The same pair in two processes started with MYBUS_PURE_PYTHON=1: the pure-Python
    ring core (the client's end stays native; it only sends the control messages)."""

    name = PEERS["mybus-pure"]
    source, sink = _SOURCE + "-pure", _SINK + "-pure"

    def __init__(self, stack: contextlib.ExitStack, cleanup: Cleanup, bus: _MyBus) -> None:
        self.runtime_dir = bus.runtime_dir
        self.client = bus.client
        self.refs = []
        stack.callback(_stop_refs, self.refs, cleanup)
        previous = os.environ.get(PURE_ENV)
        os.environ[PURE_ENV] = "1"
        try:
            self._spawn(cleanup)
        finally:
            if previous is None:
                del os.environ[PURE_ENV]
            else:
                os.environ[PURE_ENV] = previous


def _stop_refs(refs: list[mb.Ref], cleanup: Cleanup) -> None:
    for ref in reversed(refs):  # the latest first: the source talks to the sink
        if not ref.stop(STOP_TIMEOUT):
            cleanup.problems.append(f"{ref} did not stop cleanly: killed")


class InPeer(Peer, Protocol):
    """A peer of the in-process figures: also a ThreadRing of ``ring_actors``."""

    ring_actors: int

    def ring(self, hops: int) -> float:
        """Seconds for the token's ``hops`` hops around the ring."""
        ...


class _MyBusInProc:
    """Two mybus processes: the driver with A and B, and the ring host with its ring.

    The client is `_MyBus`'s; every figure is timed in the process hosting the actors.
    """

    name = IN_MYBUS

    def __init__(self, stack: contextlib.ExitStack, cleanup: Cleanup, bus: _MyBus) -> None:
        self.client = bus.client
        self.ring_actors = _RING_SIZE
        self.refs: list[mb.Ref] = []
        stack.callback(_stop_refs, self.refs, cleanup)
        for cls, name, args in ((PairHost, _PAIR_HOST, ()), (RingHost, _RING_HOST, (_RING_SIZE,))):
            ref = mb.spawn(cls, name, args=args, runtime_dir=bus.runtime_dir)
            self.refs.append(ref)
            cleanup.pids.append(ref.pid)

    def _result(self, kind: str, count: int) -> float:
        reply = self.client.receive(timeout=JOB_TIMEOUT)
        if not (type(reply) is tuple and reply[:2] == (kind, count) and len(reply) == 3):
            raise RuntimeError(f"{self.name}: expected ({kind!r}, {count}, seconds), got {reply!r}")
        seconds: float = reply[2]
        return seconds

    def tell(self, wl: Workload) -> float:
        self.client.tell(_PAIR_HOST, ("tell", wl.count, wl.size))
        return self._result("done", wl.count)

    def ask(self, count: int) -> list[float]:
        assert self.client.ask(_IN_SINK, ("echo",), timeout=_CONTROL_TIMEOUT) == "ok"
        rtts: list[float] = self.client.ask(
            _IN_SOURCE, ("ask", count, _ASK_PAYLOAD), timeout=JOB_TIMEOUT
        )
        return rtts

    def ring(self, hops: int) -> float:
        self.client.tell(_RING_HOST, ("ring", hops))
        return self._result("ring", hops)


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
        self.sink.expect("done", JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
        self.source.expect("sent", JOB_TIMEOUT)
        return elapsed

    def ask(self, count: int) -> list[float]:
        self.sink.send(("echo", count))
        self.sink.expect("ok", _CONTROL_TIMEOUT)
        self.source.send(("ping", count, _ASK_PAYLOAD))
        rtts: list[float] = self.source.expect("rtts", JOB_TIMEOUT)
        self.sink.expect("done", JOB_TIMEOUT)
        return rtts


def _open_queue(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _MpPair:
    a_to_b: Queue[Any] = ctx.Queue()
    b_to_a: Queue[Any] = ctx.Queue()
    # Registered first, so run last: after both processes stopped.
    stack.callback(a_to_b.close)
    stack.callback(b_to_a.close)
    name = PEERS["queue"]
    sink = start_proc(stack, cleanup, _Proc, ctx, f"{name} sink", _serve_queue_sink, a_to_b, b_to_a)
    source = start_proc(
        stack, cleanup, _Proc, ctx, f"{name} source", _serve_queue_source, a_to_b, b_to_a
    )
    return _MpPair(name, source, sink)


def _open_zmq(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _MpPair:
    """A source and a sink process over pyzmq ``ipc://`` sockets in a private directory."""
    import zmq  # noqa: F401  (ImportError: skipped with a note)

    sock_dir = Path(tempfile.mkdtemp(prefix="mybus-actors-bench-zmq-"))
    stack.callback(cleanup.remove_dir, sock_dir, "zmq ipc socket dir")  # registered first
    stream_addr, rpc_addr = f"ipc://{sock_dir}/stream", f"ipc://{sock_dir}/rpc"
    name = PEERS["zmq"]
    sink = start_proc(
        stack, cleanup, _Proc, ctx, f"{name} sink", _serve_zmq_sink, stream_addr, rpc_addr
    )
    source = start_proc(
        stack, cleanup, _Proc, ctx, f"{name} source", _serve_zmq_source, stream_addr, rpc_addr
    )
    sink.expect("ready", START_TIMEOUT)
    source.expect("ready", START_TIMEOUT)
    return _MpPair(name, source, sink)


def _open_iceoryx2(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _MpPair:
    """A source and a sink process on a private iceoryx2 domain (its files removed last)."""
    if iox.MISSING is not None:
        raise ImportError(iox.MISSING)
    domain = iox.Domain.create()
    stack.callback(domain.remove, cleanup)  # registered first, so run last
    name = PEERS["iceoryx2"]
    sink = start_proc(stack, cleanup, _Proc, ctx, f"{name} sink", _serve_iceoryx2_sink, domain)
    source = start_proc(
        stack, cleanup, _Proc, ctx, f"{name} source", _serve_iceoryx2_source, domain
    )
    # Here, not with the other pairs: a process that fails to start skips iceoryx2.
    source.expect("ready", START_TIMEOUT)
    sink.expect("ready", START_TIMEOUT)
    return _MpPair(name, source, sink)


def _open_pipe(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _MpPair:
    a_end, b_end = ctx.Pipe(duplex=True)
    name = PEERS["pipe"]
    try:
        sink = start_proc(stack, cleanup, _Proc, ctx, f"{name} sink", _serve_pipe_sink, b_end)
        source = start_proc(stack, cleanup, _Proc, ctx, f"{name} source", _serve_pipe_source, a_end)
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
                    repeat(self.sink.tell, b"x" * size, count)
                else:
                    send_dicts(self.sink.tell, count)
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

    def __init__(self, stack: contextlib.ExitStack, cleanup: Cleanup) -> None:
        source_cls, sink_cls = _pykka_classes()
        self.sink = sink_cls.start()
        stack.callback(self._stop, self.sink, cleanup)
        self.source = source_cls.start(self.sink)
        stack.callback(self._stop, self.source, cleanup)

    @staticmethod
    def _stop(ref: Any, cleanup: Cleanup) -> None:
        try:
            ref.stop(block=True, timeout=STOP_TIMEOUT)
        except Exception as exc:
            cleanup.problems.append(f"Pykka actor {ref} did not stop: {exc!r}")

    def tell(self, wl: Workload) -> float:
        done = threading.Event()
        reply = self.sink.ask(("expect", wl.count, done), timeout=_CONTROL_TIMEOUT)
        assert reply == "ok"
        start = time.perf_counter()
        self.source.tell(("go", wl.count, wl.size))
        if not done.wait(JOB_TIMEOUT):
            raise TimeoutError(f"Pykka: {wl.label} not done within {JOB_TIMEOUT:g}s")
        return time.perf_counter() - start

    def ask(self, count: int) -> list[float]:
        rtts: list[float] = self.source.ask(("ask", count, _ASK_PAYLOAD), timeout=JOB_TIMEOUT)
        return rtts


class _Lap:
    """What the Pykka ring's member that gets the token at 0 sets."""

    def __init__(self) -> None:
        self.done = threading.Event()


def _pykka_ring_class() -> type[Any]:
    import pykka

    class PykkaRingMember(pykka.ThreadingActor):  # type: ignore[misc]
        def __init__(self, lap: _Lap) -> None:
            super().__init__()
            self.lap = lap
            self.next: Any = None

        def on_receive(self, message: Any) -> Any:
            if type(message) is int:  # the token
                if message:
                    self.next.tell(message - 1)
                else:
                    self.lap.done.set()
                return None
            _, self.next = message  # ("link", the next member's ref)
            return "ok"

    return PykkaRingMember


class _PykkaInProc:
    """Pykka's in-process figures: `_Pykka`'s pair for tell and ask, and a ring."""

    name = PEERS["pykka"]

    def __init__(
        self, stack: contextlib.ExitStack, cleanup: Cleanup, pair: _Pykka, notes: list[str]
    ) -> None:
        self.pair = pair
        self.lap = _Lap()
        self.members: list[Any] = []
        stack.callback(self._stop_ring, cleanup)
        member = _pykka_ring_class()
        try:
            for _ in range(_RING_SIZE):
                self.members.append(member.start(self.lap))
        except RuntimeError as exc:  # "can't start new thread"
            started = len(self.members)
            keep = int(started * _RING_HEADROOM)  # room for the threads the run still needs
            self._stop_ring(cleanup, self.members[keep:])
            del self.members[keep:]
            notes.append(
                f"Pykka: this machine started only {started:,} of {_RING_SIZE:,} ring threads "
                f"({exc}); its ThreadRing has {keep:,} actors"
            )
            log(f"note: {notes[-1]}")
        if len(self.members) < 2:
            raise RuntimeError(f"Pykka: a ring needs 2 actors, {len(self.members)} started")
        self.ring_actors = len(self.members)
        for k, ref in enumerate(self.members):
            nxt = self.members[(k + 1) % len(self.members)]
            assert ref.ask(("link", nxt), timeout=_CONTROL_TIMEOUT) == "ok"

    def _stop_ring(self, cleanup: Cleanup, members: Sequence[Any] | None = None) -> None:
        """Stop the members (all at once, then wait for each, within one deadline)."""
        members = list(self.members if members is None else members)
        futures = [ref.stop(block=False) for ref in members]
        deadline = time.monotonic() + STOP_TIMEOUT
        stuck = 0
        for future in futures:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                stuck += 1
        if stuck:
            cleanup.problems.append(f"Pykka ring: {stuck} of {len(members)} actors did not stop")

    def tell(self, wl: Workload) -> float:
        return self.pair.tell(wl)

    def ask(self, count: int) -> list[float]:
        return self.pair.ask(count)

    def ring(self, hops: int) -> float:
        done = self.lap.done
        done.clear()  # the previous lap is over: its member set it before we returned
        start = time.perf_counter()
        self.members[0].tell(hops)
        if not done.wait(JOB_TIMEOUT):
            raise TimeoutError(f"Pykka: {hops:,} ThreadRing hops not done in {JOB_TIMEOUT:g}s")
        return time.perf_counter() - start


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
            value = DICT_VALUE
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

    def __init__(self, stack: contextlib.ExitStack, cleanup: Cleanup) -> None:
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
        ray.get([sink.echo.remote(0), self.source.ask.remote(1, b"")], timeout=START_TIMEOUT)
        self.ready_seconds = time.perf_counter() - start

    def tell(self, wl: Workload) -> float:
        start = time.perf_counter()
        self.ray.get(self.source.tell.remote(wl.ray_count, wl.size), timeout=JOB_TIMEOUT)
        return time.perf_counter() - start

    def ask(self, count: int) -> list[float]:
        rtts: list[float] = self.ray.get(
            self.source.ask.remote(count, _ASK_PAYLOAD), timeout=JOB_TIMEOUT
        )
        return rtts


# -- measuring -------------------------------------------------------------------------------


@attrs.frozen
class Plan:
    workloads: tuple[Workload, ...]
    ask: AskMode
    reps: int
    in_workloads: tuple[Workload, ...]
    in_ask: AskMode
    ring: RingMode

    def config(self) -> dict[str, Any]:
        counts = {wl.key: wl.count for wl in self.workloads}
        counts[self.ask.key] = self.ask.count
        ray_counts = {wl.key: wl.ray_count for wl in self.workloads}
        ray_counts[self.ask.key] = self.ask.ray_count
        in_counts = {wl.key: wl.count for wl in self.in_workloads}
        in_counts[self.in_ask.key] = self.in_ask.count
        in_counts[f"{self.ring.key} hops"] = self.ring.hops
        return {
            "reps": self.reps,
            "counts": counts,
            "ray_counts": ray_counts,
            "inproc_counts": in_counts,
            "inproc_pykka_ring_hops": self.ring.pykka_hops,
        }


def _count(peer: Peer, wl: Workload) -> int:
    return wl.ray_count if peer.name == PEERS["ray"] else wl.count


def _ask_count(peer: Peer, mode: AskMode) -> int:
    return mode.ray_count if peer.name == PEERS["ray"] else mode.count


def _measure_tell(peer: Peer, wl: Workload) -> float:
    """Messages per second."""
    with bounded(JOB_TIMEOUT + 10, f"{peer.name}: {wl.label}"):
        return _count(peer, wl) / peer.tell(wl)


def _measure_ask(peer: Peer, count: int) -> list[float]:
    with bounded(JOB_TIMEOUT + 10, f"{peer.name}: {count} asks"):
        rtts = peer.ask(count)
    if len(rtts) != count:
        raise RuntimeError(f"{peer.name}: {len(rtts)} round trips, expected {count}")
    return rtts


def _ring_hops(peer: InPeer, mode: RingMode) -> int:
    return mode.pykka_hops if peer.name == PEERS["pykka"] else mode.hops


def _measure_ring(peer: InPeer, mode: RingMode) -> float:
    """Hops per second."""
    hops = _ring_hops(peer, mode)
    with bounded(JOB_TIMEOUT + 10, f"{peer.name}: ThreadRing, {hops:,} hops"):
        return hops / peer.ring(hops)


def _run_inproc(peers: Sequence[InPeer], plan: Plan, tag: str, results: Results) -> None:
    """One rep of the in-process figures, peers interleaved."""
    for wl in plan.in_workloads:
        for peer in peers:
            rate = _measure_tell(peer, wl)
            results.setdefault(peer.name, {}).setdefault(wl.key, []).append(rate)
            log(f"{tag} in-process {wl.label:<18} {peer.name:<16} {rate:>12,.0f} msg/s")
    for peer in peers:
        rtts = _measure_ask(peer, plan.in_ask.count)
        median, tail = record_rtts(results.setdefault(peer.name, {}), plan.in_ask.key, rtts)
        log(
            f"{tag} in-process {plan.in_ask.label:<18} {peer.name:<16} median {median:8.1f} us"
            f"  p99 {tail:8.1f} us"
        )
    for peer in peers:
        rate = _measure_ring(peer, plan.ring)
        results.setdefault(peer.name, {}).setdefault(plan.ring.key, []).append(rate)
        log(
            f"{tag} in-process ThreadRing {peer.ring_actors:,} actors {peer.name:<16} "
            f"{rate:>12,.0f} hops/s"
        )


def _run(
    peers: Sequence[Peer],
    plan: Plan,
    results: Results,
    inproc: Sequence[InPeer] = (),
    in_results: Results | None = None,
) -> None:
    """Warm every peer up, then measure, interleaving peers within each rep; the
    in-process peers (if any) after the others in each rep, into ``in_results``."""
    for peer in peers:
        log(f"warming up {peer.name}")
        for wl in plan.workloads:
            _measure_tell(peer, wl.scaled(_WARMUP_FRACTION))
        _measure_ask(peer, _ask_count(peer, plan.ask.scaled(_WARMUP_FRACTION)))
    for in_peer in inproc:
        log(f"warming up {in_peer.name} (in-process)")
        for wl in plan.in_workloads:
            _measure_tell(in_peer, wl.scaled(_WARMUP_FRACTION))
        _measure_ask(in_peer, plan.in_ask.scaled(_WARMUP_FRACTION).count)
        _measure_ring(in_peer, plan.ring.scaled(_WARMUP_FRACTION))
    for rep in range(plan.reps):
        tag = f"rep {rep + 1}/{plan.reps}"
        for wl in plan.workloads:
            for peer in peers:
                rate = _measure_tell(peer, wl)
                results.setdefault(peer.name, {}).setdefault(wl.key, []).append(rate)
                log(f"{tag} {wl.label:<18} {peer.name:<9} {rate:>12,.0f} msg/s")
        for peer in peers:
            rtts = _measure_ask(peer, _ask_count(peer, plan.ask))
            median, tail = record_rtts(results.setdefault(peer.name, {}), plan.ask.key, rtts)
            log(
                f"{tag} {plan.ask.label:<18} {peer.name:<9} median {median:8.1f} us"
                f"  p99 {tail:8.1f} us"
            )
        if inproc:
            assert in_results is not None
            _run_inproc(inproc, plan, tag, in_results)


# -- reporting -------------------------------------------------------------------------------


TARGETS: Final = (
    Target("tell small dict >= 3x mp.Queue", "dict", PEERS["queue"], 3.0, True),
    Target("tell 64 B >= 4x mp.Queue", "b64", PEERS["queue"], 4.0, True),
    Target("tell 1 MiB MB/s >= 2x mp.Queue", "b1m", PEERS["queue"], 2.0, True),
    Target("ask round trip median <= 0.5x mp.Pipe", "ask.median", PEERS["pipe"], 0.5, False),
    Target("tell small dict >= 1.3x iceoryx2", "dict", PEERS["iceoryx2"], 1.3, True),
    Target("tell small dict >= 1.3x zmq ipc", "dict", PEERS["zmq"], 1.3, True),
    Target("tell 64 B >= 1x zmq ipc", "b64", PEERS["zmq"], 1.0, True),
    Target("tell 1 MiB MB/s >= 2x zmq ipc", "b1m", PEERS["zmq"], 2.0, True),
    Target(
        "ask round trip median <= 1.5x iceoryx2's request-response round trip",
        "ask.median",
        PEERS["iceoryx2"],
        1.5,
        False,
    ),
    Target(
        "actor->actor await ask median <= 1.5x client->actor ask",
        "ask.median",
        PEERS["mybus-client"],
        1.5,
        False,
    ),
)
# The client->actor figures against their own targets (mybus-client, not mybus, divides).
CLIENT_TARGETS: Final = (
    Target("client->actor ask median <= 0.3x mp.Pipe", "ask.median", PEERS["pipe"], 0.3, False),
    Target(
        "client->actor ask median <= 1.5x iceoryx2's request-response round trip",
        "ask.median",
        PEERS["iceoryx2"],
        1.5,
        False,
    ),
)
# Ray runs in its own phase: its ratios pair reps measured minutes apart.
REPORT: Final = Report(PEERS["mybus"], "mybus / peer", TARGETS)
IN_TARGETS: Final = (
    Target("in-process tell 64 B >= 3x Pykka", "b64", PEERS["pykka"], 3.0, True),
    Target("in-process tell small dict >= 3x Pykka", "dict", PEERS["pykka"], 3.0, True),
    Target(
        "in-process ask round trip median <= 0.5x Pykka", "ask.median", PEERS["pykka"], 0.5, False
    ),
)
IN_REPORT: Final = Report(IN_MYBUS, f"{IN_MYBUS} / peer", IN_TARGETS)


def _render_inproc(results: Results, names: Sequence[str], plan: Plan) -> str:
    """The in-process tables: as the others, each title marked "In-process"."""
    text = IN_REPORT.render(results, names, [*plan.in_workloads, plan.ring], [plan.in_ask])
    return "\n".join(
        f"## In-process: {line[3:]}" if line.startswith("## ") else line
        for line in text.splitlines()
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _header(
    info: dict[str, Any],
    config: dict[str, Any],
    notes: Sequence[str],
    pykka_ring: int,
    names: Sequence[str],
) -> str:
    lines = [
        *header(
            "mybus actor benchmark",
            info,
            f"mybus_actors {info['mybus_actors']}, "
            f"pyzmq {info['pyzmq'] or 'not installed'}, "
            f"iceoryx2 {info['iceoryx2'] or 'not installed'}, "
            f"pykka {info['pykka'] or 'not installed'}, ray {info['ray'] or 'not installed'}",
            config,
            f"messages per rep: {counts(config['counts'])}; Ray: {counts(config['ray_counts'])}",
        ),
        f"- mybus: A and B each in its own process (mb.spawn), default Runtime (spin "
        f"{_RUNTIME_SPIN * 1e6:g} us, rings of {DEFAULT_CAPACITY:,} B); timed in the client "
        'from its tell of "go" to B\'s "done"',
        "- Pykka: ThreadingActors, both in the benchmark process (threads: no copy, no "
        "serialization, one GIL); Queue/Pipe: a source and a sink process; zmq ipc: a "
        "source PUSHes to a sink that PULLs (dicts pickled by the source, unpickled by the "
        "sink), asks over a PAIR pair",
        *(
            [
                "- iceoryx2: a source and a sink process; tells over Slice[c_uint8] pub/sub "
                f"(safe overflow off, RetryUntilDelivered, subscriber buffer {iox.BUFFER}), "
                "asks over request-response; copy in, copy out, dicts pickled; a notify after "
                f"each send, and a receiver spins {_RUNTIME_SPIN * 1e6:g} us (as the mybus "
                "Runtime) before it sleeps on its event listener"
            ]
            if PEERS["iceoryx2"] in names
            else []
        ),
        f"- in-process per rep: {counts(config['inproc_counts'])}; Pykka's ring: "
        f"{config['inproc_pykka_ring_hops']:,} hops",
        f"- {IN_MYBUS}: A and B are children (self.spawn, process=False) of a driver in "
        'one process of their own, timed there from the driver\'s "go" to B\'s "done" '
        f"(client hops not counted); the ThreadRing's {_RING_SIZE:,} actors are children "
        "of one actor in another process; a hop is one tell, so its msg/s are hops/s",
        (
            f"- Pykka in-process: the same pair as above, and a ring of {pykka_ring:,} "
            "ThreadingActors (threads) in the benchmark process"
            if pykka_ring
            else "- Pykka in-process: not run"
        ),
        *(f"- note: {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__)
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
    args = parse_args(parser, argv, "peers", list(PEERS))
    args.peers = ["mybus", *(name for name in args.peers if name != "mybus")]
    return args


def _open_optional(key: str, opener: Callable[[], Peer], notes: list[str]) -> Peer | None:
    """Open iceoryx2, Pykka or Ray; skip it with a note when it is not installed or cannot
    start."""
    try:
        return opener()
    except ImportError as exc:
        notes.append(f"{PEERS[key]} skipped: not installed ({exc}); pip install {key}")
    except Exception as exc:
        notes.append(f"{PEERS[key]} skipped: it could not start here: {exc!r}")
        log(traceback.format_exc())
    log(f"note: {notes[-1]}")
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
        in_workloads=tuple(wl.scaled(factor) for wl in IN_WORKLOADS),
        in_ask=IN_ASK.scaled(factor),
        ring=RING.scaled(factor),
    )
    info = machine(
        mybus_actors=mb.__version__,
        ring_core=describe(),
        pyzmq=_version("pyzmq"),
        iceoryx2=_version("iceoryx2"),
        pykka=_version("pykka"),
        ray=_version("ray"),
    )
    config = {**plan.config(), "quick": args.quick}
    cleanup = Cleanup()
    notes: list[str] = []
    results: Results = {}
    names: list[str] = []
    in_results: Results = {}
    in_names: list[str] = []
    pykka_ring = 0
    ray_start: tuple[float, float] | None = None
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            log("starting mybus actors and the mp processes")
            bus = _MyBus(stack, cleanup)
            if args.profile:
                _profile(bus, plan)
            else:
                ctx = mp.get_context("spawn")
                peers: list[Peer] = [bus]
                if "mybus-pure" in args.peers:
                    peers.append(_MyBusPure(stack, cleanup, bus))
                if "mybus-client" in args.peers:
                    peers.append(_MyBusClient(bus))
                pairs = []
                if "queue" in args.peers:
                    pairs.append(_open_queue(stack, cleanup, ctx))
                if "pipe" in args.peers:
                    pairs.append(_open_pipe(stack, cleanup, ctx))
                for pair in pairs:
                    pair.source.expect("ready", START_TIMEOUT)
                    pair.sink.expect("ready", START_TIMEOUT)
                peers += pairs
                if "zmq" in args.peers:
                    zmq_pair = _open_optional("zmq", lambda: _open_zmq(stack, cleanup, ctx), notes)
                    if isinstance(zmq_pair, _MpPair):
                        peers.append(zmq_pair)
                if "iceoryx2" in args.peers:
                    iox_pair = _open_optional(
                        "iceoryx2", lambda: _open_iceoryx2(stack, cleanup, ctx), notes
                    )
                    if isinstance(iox_pair, _MpPair):
                        peers.append(iox_pair)
                log("starting the in-process mybus hosts")
                inproc: list[InPeer] = [_MyBusInProc(stack, cleanup, bus)]
                if "pykka" in args.peers:
                    pykka_peer = _open_optional("pykka", lambda: _Pykka(stack, cleanup), notes)
                    if isinstance(pykka_peer, _Pykka):
                        peers.append(pykka_peer)
                        pykka_pair = pykka_peer
                        in_pykka = _open_optional(
                            "pykka", lambda: _PykkaInProc(stack, cleanup, pykka_pair, notes), notes
                        )
                        if isinstance(in_pykka, _PykkaInProc):
                            inproc.append(in_pykka)
                            pykka_ring = in_pykka.ring_actors
                names = [p.name for p in peers]
                in_names = [p.name for p in inproc]
                _run(peers, plan, results, inproc, in_results)
        if "ray" in args.peers and not args.profile:
            with contextlib.ExitStack() as stack:
                log("starting Ray")
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
        cleanup.reap_children(STOP_TIMEOUT)
    elapsed = time.perf_counter() - started
    if not args.profile:
        print(_header(info, config, notes, pykka_ring, names))
        print(REPORT.render(results, names, plan.workloads, [plan.ask]))
        if PEERS["mybus-client"] in names:
            print(f"\n## Targets of {PEERS['mybus-client']} (its ratios, as above)\n")
            print("\n".join(targets(results, PEERS["mybus-client"], CLIENT_TARGETS)))
        print()
        print(_render_inproc(in_results, in_names, plan))
    print(footer(elapsed))
    if args.json is not None:
        raw = {
            "machine": info,
            "config": config,
            "notes": notes,
            "run_seconds": elapsed,
            "ray_start_seconds": ray_start,
            "units": "throughput keys (b64, dict, b1m): messages/s; ask keys: us",
            "reps": results,
            "medians": medians(results),
            "ratios_mybus_over_peer": ratios(results, names, PEERS["mybus"]),
            "inproc": {
                "units": "b64, dict: messages/s; ring: hops/s; ask keys: us",
                "pykka_ring_actors": pykka_ring,
                "reps": in_results,
                "medians": medians(in_results),
                "ratios_mybus_over_peer": ratios(in_results, in_names, IN_MYBUS),
            },
            "cleanup_problems": cleanup.problems,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return cleanup.report(
        f"cleanup: {len(cleanup.pids)} processes stopped by pid, every child process gone; "
        "mybus runtime dir empty of files and removed; iceoryx2's files removed"
    )


if __name__ == "__main__":
    sys.exit(main())
