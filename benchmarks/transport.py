"""Transport benchmark: mybus rings against multiprocessing Queue and Pipe, and pyzmq ipc.

``python benchmarks/transport.py [--quick] [--reps N] [--json PATH]`` starts one receiver
process per transport ("spawn"), warms every transport up, then measures, repetition by
repetition and transport by transport (interleaved, so background load hits every
transport alike):

- one-way throughput of 64 B bytes, a small dict, 4 KiB and 1 MiB bytes: from the sender's
  first send until the receiver says, on a side channel (a Pipe), that it has received
  and decoded the last message. Each transport serializes the way it naturally would:
  mybus through ``codec.encode`` / ``codec.decode_message``, Queue and Pipe through their
  built-in pickling (``send_bytes`` / ``recv_bytes`` for bytes), zmq raw frames for
  bytes and ``pickle`` for dicts;
- 64 B ping-pong round trips, back to back, and with the pinger busy-waiting 200 us
  before each (the pause is not counted). mybus runs the first with both endpoints
  spinning and the second with ``spin=0``, both ends sleeping on their doorbells.

Each figure is the median over ``--reps`` repetitions. Process start-up, ring creation
and zmq connection set-up happen before the timed spans.

Choices, measured on the 2-core dev VM: the mybus ring capacity is 1<<21 (max record
512 KiB, so 1 MiB travels as 3 fragments): 1 MiB throughput was about twice that of
1<<22 or 1<<23, where 1 MiB is one whole record and sender and receiver take turns on the
ring instead of overlapping; 64 B to 4 KiB showed no difference beyond noise. The stream
receiver spins as long as an Endpoint does by default (200 us when this was written; at
50 us, a spin that never yields, the receiver often fell asleep and the sender spent half
its time ringing the doorbell, for a quarter of the throughput).
Reading the figures: round trips through sleeping processes (mybus with spin=0, Pipe,
Queue, zmq) cost several times more when the scheduler puts the two processes on
different CPUs than on one; that placement varies from run to run.

Bounds: every timed job runs, in the sender and in the receiver, under an interval timer
that raises TimeoutError naming the job; waits on the side channel have their own
timeouts. Every process started here is stopped by pid (asked, joined with a timeout,
killed if need be); the mybus runtime directory and the zmq socket directory are checked
empty and removed. Whatever the targets say, the exit status is 0 unless something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import inspect
import io
import json
import multiprocessing as mp
import os
import pickle
import platform
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol

import attrs
import psutil

from mybus_actors import codec
from mybus_actors.mailbox import Endpoint
from mybus_actors.registry import Registry

try:
    import zmq
except ImportError as _exc:  # pyzmq is the optional "benchmark" extra
    zmq = None  # type: ignore[assignment]
    _ZMQ_MISSING: str | None = f"{type(_exc).__name__}: {_exc}"
else:
    _ZMQ_MISSING = None

_TX: Final = "tx"
_RX: Final = "rx"
_DICT_VALUE: Final = "x" * 40
_PING_PAYLOAD: Final = b"p" * 64
_MB: Final = 1e6  # MB/s is decimal megabytes
_RING_CAPACITY: Final = 1 << 21  # see "Choices" above
# A stream receiver spins as an Endpoint does by default.
_STREAM_SPIN: Final[float] = inspect.signature(Endpoint).parameters["spin"].default
_POLL_BUDGET: Final = 256
_WAIT_SLICE: Final = 1.0  # one Endpoint.wait; the job timer bounds the loop around it
_START_TIMEOUT: Final = 60.0
_JOB_TIMEOUT: Final = 120.0
_STOP_TIMEOUT: Final = 10.0
_IDLE_TIMEOUT: Final = 900.0  # a receiver gives up when the parent stops talking
_WARMUP_FRACTION: Final = 0.02
_PROFILE_LINES: Final = 14


@attrs.frozen
class Workload:
    """One throughput measurement: what each message is and how many are sent."""

    key: str
    label: str
    size: int  # payload bytes; 0 means the small dict {"i": i, "v": "x" * 40}
    count: int

    @property
    def is_dict(self) -> bool:
        return self.size == 0

    def payload(self) -> bytes:
        return b"x" * self.size

    def scaled(self, factor: float) -> Workload:
        return attrs.evolve(self, count=max(2, int(self.count * factor)))


@attrs.frozen
class PingMode:
    """One round-trip measurement."""

    key: str
    label: str
    count: int
    gap: float  # seconds the pinger busy-waits before each round trip (not counted)
    spin: float  # mybus endpoints' spin (both ends)

    def scaled(self, factor: float) -> PingMode:
        return attrs.evolve(self, count=max(20, int(self.count * factor)))


WORKLOADS: Final = (
    Workload("b64", "64 B bytes", 64, 200_000),
    Workload("dict", "small dict", 0, 200_000),
    Workload("b4k", "4 KiB bytes", 4096, 20_000),
    Workload("b1m", "1 MiB bytes", 1 << 20, 500),
)
PING_MODES: Final = (
    PingMode("rtt", "64 B RTT, back to back", 20_000, 0.0, 200e-6),
    PingMode("rtt_gap", "64 B RTT, 200 us pause before each", 5_000, 200e-6, 0.0),
)
TRANSPORTS: Final = {"mybus": "mybus", "queue": "mp.Queue", "pipe": "mp.Pipe", "zmq": "zmq ipc"}


@attrs.frozen
class Job:
    """A command on the side channel: receive a stream, echo pings, or stop."""

    kind: str  # "stream", "echo" or "stop"
    count: int = 0
    workload: Workload | None = None
    spin: float = _STREAM_SPIN
    profile: bool = False

    def describe(self) -> str:
        if self.workload is not None:
            return f"{self.kind} of {self.count} x {self.workload.label}"
        return f"{self.kind} of {self.count}"


# -- bounds ------------------------------------------------------------------------------


@contextlib.contextmanager
def _bounded(seconds: float, what: str) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread if the block outlives ``seconds``.

    A SIGALRM interrupts blocking reads, lock waits and zmq calls alike, so the timed
    loops need no per-message deadline check. Not reentrant.
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


def _pause(seconds: float) -> None:
    """Busy-wait ``seconds``: the peer sees no traffic while this process stays awake."""
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        pass


# -- loops shared by the peers (kept flat: a call per message would blur the figures) ------


def _repeat(put: Callable[[bytes], object], payload: bytes, count: int) -> None:
    for _ in range(count):
        put(payload)


def _send_dicts(put: Callable[[dict[str, object]], object], count: int) -> None:
    value = _DICT_VALUE
    for i in range(count):
        put({"i": i, "v": value})


def _send_pickled_dicts(put: Callable[[bytes], object], count: int) -> None:
    dumps, protocol, value = pickle.dumps, pickle.HIGHEST_PROTOCOL, _DICT_VALUE
    for i in range(count):
        put(dumps({"i": i, "v": value}, protocol))


def _drain(get: Callable[[], object], count: int) -> None:
    for _ in range(count):
        get()


def _drain_pickled(get: Callable[[], bytes], count: int) -> None:
    loads = pickle.loads
    for _ in range(count):
        loads(get())


def _echo(get: Callable[[], Any], put: Callable[[Any], object], count: int) -> None:
    for _ in range(count):
        put(get())


def _ping(
    put: Callable[[bytes], object], get: Callable[[], object], count: int, gap: float
) -> list[float]:
    clock = time.perf_counter
    rtts = [0.0] * count
    for k in range(count):
        if gap:
            _pause(gap)
        start = clock()
        put(_PING_PAYLOAD)
        get()
        rtts[k] = clock() - start
    return rtts


# -- mybus loops -------------------------------------------------------------------------


def _mybus_send_bytes(ep: Endpoint, payload: bytes, count: int) -> None:
    send, encode = ep.send, codec.encode
    for _ in range(count):
        meta, body = encode(payload)
        send(_TX, _RX, body, meta)


def _mybus_send_dicts(ep: Endpoint, count: int) -> None:
    send, encode, value = ep.send, codec.encode, _DICT_VALUE
    for i in range(count):
        meta, body = encode({"i": i, "v": value})
        send(_TX, _RX, body, meta)


def _mybus_drain(ep: Endpoint, count: int) -> None:
    poll, wait, decode = ep.poll_batches, ep.wait, codec.decode_message
    got = 0
    while got < count:
        batches = poll(_POLL_BUDGET)
        if not batches:
            wait(_WAIT_SLICE)
            continue
        for _sender, _receiver, items in batches:
            for meta, body in items:
                decode(meta, body)
            got += len(items)
    if got != count:
        raise RuntimeError(f"mybus receiver: expected {count} messages, got {got}")


def _mybus_echo(ep: Endpoint, count: int) -> None:
    poll, wait, send = ep.poll_batches, ep.wait, ep.send
    encode, decode = codec.encode, codec.decode_message
    done = 0
    while done < count:
        batches = poll(_POLL_BUDGET)
        if not batches:
            wait(_WAIT_SLICE)
            continue
        for sender, receiver, items in batches:
            for meta, body in items:
                reply_meta, reply = encode(decode(meta, body))
                send(receiver, sender, reply, reply_meta)
            done += len(items)


def _mybus_ping(ep: Endpoint, count: int, gap: float) -> list[float]:
    poll, wait, send = ep.poll_batches, ep.wait, ep.send
    encode, decode = codec.encode, codec.decode_message
    clock = time.perf_counter
    rtts = [0.0] * count
    for k in range(count):
        if gap:
            _pause(gap)
        start = clock()
        meta, body = encode(_PING_PAYLOAD)
        send(_TX, _RX, body, meta)
        batches = poll(1)
        while not batches:
            wait(_WAIT_SLICE)
            batches = poll(1)
        decode(*batches[0][2][0])
        rtts[k] = clock() - start
    return rtts


# -- the receiver processes ----------------------------------------------------------------

Receive = Callable[[Workload, int], None]
Echo = Callable[[int], None]


def _child(serve: Callable[..., None], ctl: Connection, *args: Any) -> None:
    """A receiver process's entry point: run ``serve``, report a failure to the parent."""
    try:
        serve(ctl, *args)
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            ctl.send(("error", traceback.format_exc()))
        raise
    finally:
        ctl.close()


def _serve(
    ctl: Connection, receive: Receive, echo: Echo, set_spin: Callable[[float], None] | None = None
) -> None:
    """Run the parent's jobs until it says stop."""
    ctl.send(("ready", os.getpid()))
    while True:
        if not ctl.poll(_IDLE_TIMEOUT):
            raise TimeoutError(f"receiver {os.getpid()}: no command for {_IDLE_TIMEOUT:g}s")
        job: Job = ctl.recv()
        if job.kind == "stop":
            ctl.send(("stopped", None))
            return
        if set_spin is not None:
            set_spin(job.spin)
        profiler = cProfile.Profile() if job.profile else None
        ctl.send(("go", None))
        with (
            _bounded(_JOB_TIMEOUT, f"receiver {os.getpid()}: {job.describe()}"),
            profiler or contextlib.nullcontext(),
        ):
            if job.kind == "stream":
                assert job.workload is not None
                receive(job.workload, job.count)
            else:
                echo(job.count)
        ctl.send(("done", _profile_text(profiler) if profiler else None))


def _serve_mybus(ctl: Connection, runtime_dir: str, capacity: int) -> None:
    with Endpoint(Registry(runtime_dir), ring_capacity=capacity) as ep:
        ep.bind(_RX)

        def set_spin(spin: float) -> None:
            ep.spin = spin

        _serve(ctl, lambda wl, n: _mybus_drain(ep, n), lambda n: _mybus_echo(ep, n), set_spin)


def _serve_queue(ctl: Connection, inbox: Queue[Any], outbox: Queue[Any]) -> None:
    try:
        _serve(ctl, lambda wl, n: _drain(inbox.get, n), lambda n: _echo(inbox.get, outbox.put, n))
    finally:
        outbox.close()
        with _bounded(_STOP_TIMEOUT, "receiver: flushing mp.Queue"):
            outbox.join_thread()


def _serve_pipe(ctl: Connection, conn: Connection) -> None:
    def receive(wl: Workload, count: int) -> None:
        _drain(conn.recv if wl.is_dict else conn.recv_bytes, count)

    with conn:
        _serve(ctl, receive, lambda n: _echo(conn.recv_bytes, conn.send_bytes, n))


def _serve_zmq(ctl: Connection, stream_addr: str, rpc_addr: str) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pair = context.socket(zmq.PAIR)
    try:
        pull.bind(stream_addr)
        pair.bind(rpc_addr)

        def receive(wl: Workload, count: int) -> None:
            if wl.is_dict:
                _drain_pickled(pull.recv, count)
            else:
                _drain(pull.recv, count)

        _serve(ctl, receive, lambda n: _echo(pair.recv, pair.send, n))
    finally:
        pull.close(linger=0)
        pair.close(linger=0)
        context.term()
        # libzmq unlinks only the files of wildcard ("ipc://*") endpoints: ours are ours.
        for addr in (stream_addr, rpc_addr):
            Path(addr.removeprefix("ipc://")).unlink(missing_ok=True)


# -- the sending side ------------------------------------------------------------------------


class _Peer:
    """A receiver process and the side channel to it."""

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

    def expect(self, kind: str, timeout: float) -> Any:
        """Return the value of the next side-channel message, which must be ``kind``.

        Raises:
            TimeoutError: nothing came within ``timeout``.
            RuntimeError: the receiver failed (its traceback is in the message).
        """
        if not self.ctl.poll(timeout):
            raise TimeoutError(
                f"{self.name} receiver (pid {self.pid}): no {kind!r} within {timeout:g}s"
            )
        tag, value = self.ctl.recv()
        if tag == "error":
            raise RuntimeError(f"{self.name} receiver (pid {self.pid}) failed:\n{value}")
        if tag != kind:
            raise RuntimeError(f"{self.name} receiver: expected {kind!r}, got {tag!r}")
        return value

    def start_job(self, job: Job) -> None:
        self.ctl.send(job)
        self.expect("go", _START_TIMEOUT)

    def stop(self, problems: list[str]) -> None:
        """Ask the process to stop, join it with a timeout, kill it (by pid) if it lingers."""
        stopped = False
        if self.proc.is_alive():
            try:
                self.ctl.send(Job("stop"))
                self.expect("stopped", _STOP_TIMEOUT)
                stopped = True
            except (OSError, EOFError, TimeoutError, RuntimeError) as exc:
                problems.append(f"{self.name} receiver did not stop cleanly: {exc}")
        # One that did not answer is stuck (or gone): no point waiting long for it.
        self.proc.join(_STOP_TIMEOUT if stopped else 0.5)
        if self.proc.is_alive():
            problems.append(f"{self.name} receiver (pid {self.pid}) killed")
            self.proc.kill()
            self.proc.join(_STOP_TIMEOUT)
        self.ctl.close()
        if self.proc.exitcode is None:
            problems.append(f"{self.name} receiver (pid {self.pid}) survived SIGKILL")


class Transport(Protocol):
    name: str
    peer: _Peer

    def send_stream(self, wl: Workload, count: int) -> None: ...

    def ping(self, count: int, gap: float, spin: float) -> list[float]: ...


@attrs.define
class _MyBus:
    ep: Endpoint
    peer: _Peer
    name: str = TRANSPORTS["mybus"]

    def send_stream(self, wl: Workload, count: int) -> None:
        if wl.is_dict:
            _mybus_send_dicts(self.ep, count)
        else:
            _mybus_send_bytes(self.ep, wl.payload(), count)

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        self.ep.spin = spin
        return _mybus_ping(self.ep, count, gap)


@attrs.define
class _MpQueue:
    outbox: Queue[Any]
    inbox: Queue[Any]
    peer: _Peer
    name: str = TRANSPORTS["queue"]

    def send_stream(self, wl: Workload, count: int) -> None:
        if wl.is_dict:
            _send_dicts(self.outbox.put, count)
        else:
            _repeat(self.outbox.put, wl.payload(), count)

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        return _ping(self.outbox.put, self.inbox.get, count, gap)


@attrs.define
class _MpPipe:
    conn: Connection
    peer: _Peer
    name: str = TRANSPORTS["pipe"]

    def send_stream(self, wl: Workload, count: int) -> None:
        if wl.is_dict:
            _send_dicts(self.conn.send, count)
        else:
            _repeat(self.conn.send_bytes, wl.payload(), count)

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        return _ping(self.conn.send_bytes, self.conn.recv_bytes, count, gap)


@attrs.define
class _Zmq:
    push: Any  # zmq.Socket
    pair: Any
    peer: _Peer
    name: str = TRANSPORTS["zmq"]

    def send_stream(self, wl: Workload, count: int) -> None:
        if wl.is_dict:
            _send_pickled_dicts(self.push.send, count)
        else:
            _repeat(self.push.send, wl.payload(), count)

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        return _ping(self.pair.send, self.pair.recv, count, gap)


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

    def check_processes(self) -> None:
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        self.problems.extend(
            f"process {pid} is still running" for pid in self.pids if pid in children
        )


def _start_peer(
    stack: contextlib.ExitStack,
    cleanup: _Cleanup,
    ctx: SpawnContext,
    name: str,
    serve: Callable[..., None],
    *args: Any,
) -> _Peer:
    peer = _Peer(ctx, name, serve, *args)
    cleanup.pids.append(peer.pid)
    stack.callback(peer.stop, cleanup.problems)
    return peer


def _open_mybus(
    stack: contextlib.ExitStack, cleanup: _Cleanup, ctx: SpawnContext, capacity: int
) -> _MyBus:
    runtime_dir = Path(tempfile.mkdtemp(prefix="mybus-bench-", dir="/dev/shm"))
    stack.callback(cleanup.remove_dir, runtime_dir, "mybus runtime dir")
    ep = stack.enter_context(Endpoint(Registry(runtime_dir), ring_capacity=capacity))
    ep.bind(_TX)
    peer = _start_peer(
        stack, cleanup, ctx, TRANSPORTS["mybus"], _serve_mybus, str(runtime_dir), capacity
    )
    return _MyBus(ep, peer)


def _close_queue(queue: Queue[Any]) -> None:
    queue.close()
    with _bounded(_STOP_TIMEOUT, "flushing an mp.Queue"):
        queue.join_thread()


def _open_queue(stack: contextlib.ExitStack, cleanup: _Cleanup, ctx: SpawnContext) -> _MpQueue:
    outbox: Queue[Any] = ctx.Queue()
    inbox: Queue[Any] = ctx.Queue()
    stack.callback(_close_queue, outbox)
    stack.callback(_close_queue, inbox)
    peer = _start_peer(stack, cleanup, ctx, TRANSPORTS["queue"], _serve_queue, outbox, inbox)
    return _MpQueue(outbox, inbox, peer)


def _open_pipe(stack: contextlib.ExitStack, cleanup: _Cleanup, ctx: SpawnContext) -> _MpPipe:
    mine, theirs = ctx.Pipe(duplex=True)
    stack.callback(mine.close)
    try:
        peer = _start_peer(stack, cleanup, ctx, TRANSPORTS["pipe"], _serve_pipe, theirs)
    finally:
        theirs.close()
    return _MpPipe(mine, peer)


def _open_zmq(stack: contextlib.ExitStack, cleanup: _Cleanup, ctx: SpawnContext) -> _Zmq:
    sock_dir = Path(tempfile.mkdtemp(prefix="mybus-bench-zmq-"))
    stack.callback(cleanup.remove_dir, sock_dir, "zmq ipc socket dir")
    stream_addr, rpc_addr = f"ipc://{sock_dir}/stream", f"ipc://{sock_dir}/rpc"
    peer = _start_peer(stack, cleanup, ctx, TRANSPORTS["zmq"], _serve_zmq, stream_addr, rpc_addr)
    context = zmq.Context()
    stack.callback(context.term)
    push = context.socket(zmq.PUSH)
    stack.callback(push.close, 0)
    pair = context.socket(zmq.PAIR)
    stack.callback(pair.close, 0)
    push.connect(stream_addr)
    pair.connect(rpc_addr)
    return _Zmq(push, pair, peer)


# -- measuring -------------------------------------------------------------------------------


def _measure_stream(
    t: Transport, wl: Workload, spin: float = _STREAM_SPIN, profile: bool = False
) -> tuple[float, str]:
    """Return (seconds from the first send to the receiver's confirmation, profiles)."""
    t.peer.start_job(Job("stream", wl.count, wl, spin=spin, profile=profile))
    profiler = cProfile.Profile() if profile else None
    with _bounded(_JOB_TIMEOUT, f"{t.name} sender: stream of {wl.count} x {wl.label}"):
        start = time.perf_counter()
        with profiler or contextlib.nullcontext():
            t.send_stream(wl, wl.count)
        receiver_profile = t.peer.expect("done", _JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
    if profiler is None:
        return elapsed, ""
    return elapsed, f"sender:\n{_profile_text(profiler)}\nreceiver:\n{receiver_profile}"


def _measure_ping(t: Transport, mode: PingMode) -> list[float]:
    """Return the round-trip times in seconds (the pauses between them excluded)."""
    t.peer.start_job(Job("echo", mode.count, spin=mode.spin))
    with _bounded(_JOB_TIMEOUT, f"{t.name} pinger: {mode.count} x {mode.label}"):
        rtts = t.ping(mode.count, mode.gap, mode.spin)
        t.peer.expect("done", _JOB_TIMEOUT)
    return rtts


def _profile_text(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(_PROFILE_LINES)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line for line in lines[start:] if line.strip())


def _p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


Results = dict[str, dict[str, list[float]]]  # transport -> figure -> one value per rep


@attrs.frozen
class Plan:
    """What one run measures, and how mybus is configured for it."""

    workloads: tuple[Workload, ...]
    modes: tuple[PingMode, ...]
    reps: int
    ring_capacity: int
    stream_spin: float

    def config(self) -> dict[str, Any]:
        counts = {wl.key: wl.count for wl in self.workloads}
        counts.update({mode.key: mode.count for mode in self.modes})
        return {
            "reps": self.reps,
            "ring_capacity": self.ring_capacity,
            "stream_spin": self.stream_spin,
            "counts": counts,
        }


def _run(transports: Sequence[Transport], plan: Plan) -> Results:
    """Warm every transport up, then measure, interleaving transports within each rep."""
    results: Results = {t.name: {} for t in transports}
    for t in transports:
        _log(f"warming up {t.name}")
        for wl in plan.workloads:
            _measure_stream(t, wl.scaled(_WARMUP_FRACTION), plan.stream_spin)
        _measure_ping(t, attrs.evolve(plan.modes[0], count=200))
    reps = plan.reps
    for rep in range(reps):
        for wl in plan.workloads:
            for t in transports:
                rate = wl.count / _measure_stream(t, wl, plan.stream_spin)[0]
                results[t.name].setdefault(wl.key, []).append(rate)
                _log(f"rep {rep + 1}/{reps} {wl.label:<12} {t.name:<9} {rate:>12,.0f} msg/s")
        for mode in plan.modes:
            for t in transports:
                rtts = _measure_ping(t, mode)
                median, p99 = statistics.median(rtts) * 1e6, _p99(rtts) * 1e6
                results[t.name].setdefault(f"{mode.key}.median", []).append(median)
                results[t.name].setdefault(f"{mode.key}.p99", []).append(p99)
                _log(
                    f"rep {rep + 1}/{reps} {mode.key:<12} {t.name:<9} median {median:7.1f} us"
                    f"  p99 {p99:7.1f} us"
                )
    return results


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- reporting -------------------------------------------------------------------------------


@attrs.frozen
class Target:
    label: str
    figure: str
    peer: str
    bound: float
    at_least: bool  # throughput: mybus/peer >= bound; RTT: mybus/peer <= bound


TARGETS: Final = (
    Target("small dict throughput >= 4x mp.Queue", "dict", "mp.Queue", 4.0, True),
    Target("64 B throughput >= 6x mp.Queue", "b64", "mp.Queue", 6.0, True),
    Target("1 MiB MB/s >= 3x mp.Queue", "b1m", "mp.Queue", 3.0, True),
    Target(
        "RTT median, busy (back to back) <= 0.25x mp.Pipe", "rtt.median", "mp.Pipe", 0.25, False
    ),
    Target(
        "RTT median, idle wake (200 us pause) <= 1x mp.Pipe",
        "rtt_gap.median",
        "mp.Pipe",
        1.0,
        False,
    ),
)


def _rows(workloads: Sequence[Workload], modes: Sequence[PingMode]) -> list[tuple[str, str]]:
    """(figure key, row label) in table order."""
    rows = [
        (wl.key, f"{wl.label}, msg/s" + (" (MB/s)" if wl.size >= 4096 else "")) for wl in workloads
    ]
    for mode in modes:
        rows.append((f"{mode.key}.median", f"{mode.label}: median, us"))
        rows.append((f"{mode.key}.p99", f"{mode.label}: p99, us"))
    return rows


def _medians(results: Results) -> dict[str, dict[str, float]]:
    return {t: {k: statistics.median(v) for k, v in figs.items()} for t, figs in results.items()}


def _cell(key: str, value: float | None, sizes: dict[str, int]) -> str:
    if value is None:
        return "n/a"
    if "." in key:  # an RTT figure, in microseconds
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


def _ratio(results: Results, key: str, peer: str) -> float | None:
    """mybus / peer for figure ``key``: the median of the per-rep ratios.

    Rep by rep the two were measured one right after the other, so a ratio within a rep
    cancels most of the background load that drifts from one rep to the next.
    """
    mine = results.get(TRANSPORTS["mybus"], {}).get(key)
    theirs = results.get(peer, {}).get(key)
    if not mine or not theirs:
        return None
    return statistics.median(m / t for m, t in zip(mine, theirs, strict=True) if t)


def _report(
    results: Results, names: Sequence[str], workloads: Sequence[Workload], modes: Sequence[PingMode]
) -> str:
    med = _medians(results)
    sizes = {wl.key: wl.size for wl in workloads}
    rows = _rows(workloads, modes)
    figures = [
        [label, *(_cell(key, med.get(n, {}).get(key), sizes) for n in names)] for key, label in rows
    ]
    out = ["## Figures (median over reps)", "", _table(["workload", *names], figures), ""]
    mine = results.get(TRANSPORTS["mybus"], {})
    peers = [n for n in names if n != TRANSPORTS["mybus"]]
    if mine and peers:
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


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
        )
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "cpu_pressure_start": _cpu_pressure(),
    }
    if zmq is not None:
        info["pyzmq"] = zmq.pyzmq_version()
        info["libzmq"] = zmq.zmq_version()
    return info


def _cpu_pressure() -> str:
    """The kernel's CPU pressure line ("some avg10=..."): how often tasks waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            return " ".join(f.readline().split()[1:3])
    except OSError:
        return "n/a"


def _header(info: dict[str, Any], config: dict[str, Any]) -> str:
    zmq_text = (
        f"pyzmq {info['pyzmq']} (libzmq {info['libzmq']})"
        if "pyzmq" in info
        else f"pyzmq not available ({_ZMQ_MISSING}): zmq skipped"
    )
    counts = ", ".join(f"{k} {v:,}" for k, v in config["counts"].items())
    return "\n".join(
        [
            "# mybus transport benchmark",
            "",
            f"- date: {info['date']}",
            f"- machine: nproc {info['nproc']} (affinity {info['affinity']}), {info['cpu']}, "
            f"{info['platform']}",
            f"- python {info['python']}, {zmq_text}",
            f"- load average at start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}; "
            f"cpu pressure {info['cpu_pressure_start']}",
            f"- reps: {config['reps']} (each figure is the median); counts per rep: {counts}",
            f"- mybus: ring capacity {config['ring_capacity']:,} B (max record "
            f"{config['ring_capacity'] // 4:,} B), poll budget {_POLL_BUDGET}, receiver spin "
            f"{config['stream_spin'] * 1e6:g} us for streams; RTT back to back: both ends spin "
            f"{PING_MODES[0].spin * 1e6:g} us; RTT with pause: both ends spin=0 (doorbell sleep)",
            "",
        ]
    )


# -- main ------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    parser.add_argument("--quick", action="store_true", help="1/5 of the counts, 3 reps")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    parser.add_argument(
        "--ring-capacity",
        type=int,
        default=_RING_CAPACITY,
        help=f"mybus ring data bytes, a power of two (default {_RING_CAPACITY})",
    )
    parser.add_argument(
        "--stream-spin",
        type=float,
        default=_STREAM_SPIN,
        help=f"mybus receiver's spin (s) during streams (default {_STREAM_SPIN:g})",
    )
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"comma-separated subset of {','.join(TRANSPORTS)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the table: cProfile mybus's sender and receiver loops "
        "on the 64 B and small-dict streams",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    chosen = [name.strip() for name in args.transports.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in TRANSPORTS]
    if unknown:
        parser.error(f"unknown transports {unknown}; choose from {list(TRANSPORTS)}")
    args.transports = chosen
    return args


def _open(
    stack: contextlib.ExitStack, cleanup: _Cleanup, keys: Sequence[str], capacity: int
) -> list[Transport]:
    ctx = mp.get_context("spawn")
    opened: list[Transport] = []
    for key in keys:
        if key == "mybus":
            opened.append(_open_mybus(stack, cleanup, ctx, capacity))
        elif key == "queue":
            opened.append(_open_queue(stack, cleanup, ctx))
        elif key == "pipe":
            opened.append(_open_pipe(stack, cleanup, ctx))
        elif zmq is None:
            _log(f"note: zmq skipped: {_ZMQ_MISSING}")
        else:
            opened.append(_open_zmq(stack, cleanup, ctx))
    for t in opened:
        t.peer.expect("ready", _START_TIMEOUT)
    return opened


def _profile(stack: contextlib.ExitStack, cleanup: _Cleanup, plan: Plan) -> None:
    """Print cProfile's top functions of mybus's sender and receiver, 64 B and small dict."""
    (bus,) = _open(stack, cleanup, ["mybus"], plan.ring_capacity)
    for wl in plan.workloads[:2]:
        _measure_stream(bus, wl.scaled(_WARMUP_FRACTION), plan.stream_spin)
        seconds, text = _measure_stream(bus, wl, plan.stream_spin, profile=True)
        print(
            f"## mybus, {wl.label}: {wl.count:,} messages in {seconds:.2f}s under cProfile, "
            f"top {_PROFILE_LINES} by tottime\n\n{text}\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    factor = 0.2 if args.quick else 1.0
    plan = Plan(
        workloads=tuple(wl.scaled(factor) for wl in WORKLOADS),
        modes=tuple(mode.scaled(factor) for mode in PING_MODES),
        reps=args.reps,
        ring_capacity=args.ring_capacity,
        stream_spin=args.stream_spin,
    )
    info = _machine()
    config = {**plan.config(), "quick": args.quick}
    cleanup = _Cleanup()
    started = time.perf_counter()
    results: Results = {}
    names: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.profile:
            _profile(stack, cleanup, plan)
        else:
            transports = _open(stack, cleanup, args.transports, plan.ring_capacity)
            names = [t.name for t in transports]
            results = _run(transports, plan)
    cleanup.check_processes()
    elapsed = time.perf_counter() - started
    if not args.profile:
        print(_header(info, config))
        print(_report(results, names, plan.workloads, plan.modes))
    print(
        f"\nrun time {elapsed:.0f}s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; cpu pressure {_cpu_pressure()}"
    )
    if args.json is not None:
        raw = {
            "machine": info,
            "config": config,
            "run_seconds": elapsed,
            "units": "throughput keys (b64, dict, b4k, b1m): messages/s; RTT keys: us",
            "reps": results,
            "medians": _medians(results),
            "ratios_mybus_over_peer": {
                peer: {key: _ratio(results, key, peer) for key in results[peer]}
                for peer in names
                if peer != TRANSPORTS["mybus"]
            },
            "cleanup_problems": cleanup.problems,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    if cleanup.problems:
        print("cleanup FAILED:\n  " + "\n  ".join(cleanup.problems))
        return 1
    print(
        f"cleanup: {len(cleanup.pids)} receiver processes stopped by pid; "
        "runtime and socket dirs removed, nothing left"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
