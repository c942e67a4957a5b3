"""Transport benchmark: mybus rings against mp Queue and Pipe, pyzmq ipc and iceoryx2.

``python benchmarks/transport.py [--quick] [--reps N] [--json PATH]`` starts one receiver
process per transport ("spawn"), warms every transport up, then measures, repetition by
repetition and transport by transport (interleaved, so background load hits every
transport alike):

- one-way throughput of 64 B bytes, a small dict, 4 KiB and 1 MiB bytes: from the sender's
  first send until the receiver says, on a side channel (a Pipe), that it has received
  and decoded the last message. Each transport serializes the way it naturally would:
  mybus through ``codec.encode`` / ``codec.decode_message``, Queue and Pipe through their
  built-in pickling (``send_bytes`` / ``recv_bytes`` for bytes), zmq and iceoryx2 raw
  bytes and ``pickle`` for dicts;
- 64 B ping-pong round trips, back to back, and with the pinger busy-waiting 200 us
  before each (the pause is not counted). mybus runs the first with both endpoints
  spinning and the second with ``spin=0``, both ends sleeping on their doorbells;
  iceoryx2 likewise (both ends spin 200 us on their subscribers, then sleep on their
  listeners; with the pause, both sleep at once).

The iceoryx2 peer (the optional ``iceoryx2`` package, pip install iceoryx2; skipped with
a note when it is not importable): publish-subscribe over ``Slice[c_uint8]`` services,
safe overflow disabled and the publisher's backpressure strategy ``RetryUntilDelivered``
(a full subscriber buffer holds the publisher back: nothing is dropped); each payload is
copied into a loaned sample and, on the other side, out of the received sample into
``bytes``, so both sides own their bytes; after each send the publisher notifies an
event service of the same name, and a receiver with nothing to read spins (as a mybus
endpoint does: the stream receiver 200 us) and then sleeps on its listener. One channel
(a pub/sub service and an event service) carries the streams and the pings, another the
pongs. ``_iceoryx2.py`` has the details.

Each figure is the median over ``--reps`` repetitions. Process start-up, ring creation
and zmq connection set-up (iceoryx2 service and port creation) happen before the timed
spans.

Choices, measured on the 2-core dev VM: the mybus ring capacity is 1<<21 (max record
512 KiB, so 1 MiB travels as 3 fragments): 1 MiB throughput was about twice that of
1<<22 or 1<<23, where 1 MiB is one whole record and sender and receiver take turns on the
ring instead of overlapping; 64 B to 4 KiB showed no difference beyond noise. The stream
receiver spins as long as an Endpoint does by default (200 us when this was written; at
50 us, a spin that never yields, the receiver often fell asleep and the sender spent half
its time ringing the doorbell, for a quarter of the throughput). iceoryx2's subscriber
buffer is 64 samples (``_iceoryx2.BUFFER``): with 8, 4 KiB and 1 MiB streams ran 1.3 to
1.7x slower, and 256 was no faster than 64 beyond noise (two runs each); its publisher
starts with 64-byte slots and grows them (power of two) to 1 MiB during the warm-up,
which did not slow the 64 B stream (it ran faster on the grown slots), so one channel
carries every stream.
Reading the figures: round trips through sleeping processes (mybus with spin=0, Pipe,
Queue, zmq, iceoryx2 with the pause) cost several times more when the scheduler puts the
two processes on different CPUs than on one; that placement varies from run to run.

Bounds: every timed job runs, in the sender and in the receiver, under an interval timer
that raises TimeoutError naming the job; waits on the side channel have their own
timeouts. Every process started here is stopped by pid (asked, joined with a timeout,
killed if need be); the mybus runtime directory and the zmq socket directory are checked
empty and removed; so are iceoryx2's files: this run's own prefix in ``/dev/shm`` and its
own root directory (instead of ``/tmp/iceoryx2``), after its ports and nodes are gone.
An iceoryx2 sender held back by a full buffer waits inside ``send``; the interval timer
still ends it (checked: a receiver killed mid-stream leaves the sender a TimeoutError).
Whatever the targets say, the exit status is 0 unless something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import json
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
    pause,
    profile_text,
    ratios,
    record_rtts,
    repeat,
    round_trips,
    send_dicts,
    start_proc,
)

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
_PING_PAYLOAD: Final = b"p" * 64
_RING_CAPACITY: Final = 1 << 21  # see "Choices" above
# A stream receiver spins as an Endpoint does by default.
_STREAM_SPIN: Final[float] = inspect.signature(Endpoint).parameters["spin"].default
_POLL_BUDGET: Final = 256
_WAIT_SLICE: Final = 1.0  # one Endpoint.wait; the job timer bounds the loop around it
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
TRANSPORTS: Final = {
    "mybus": "mybus",
    "queue": "mp.Queue",
    "pipe": "mp.Pipe",
    "zmq": "zmq ipc",
    "iceoryx2": "iceoryx2",
}
# iceoryx2's channels: the streams and the pings go one way, the pongs the other.
_IOX_FORTH: Final = "forth"
_IOX_BACK: Final = "back"


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


# -- loops shared by the peers (kept flat: a call per message would blur the figures) ------


def _send_pickled_dicts(put: Callable[[bytes], object], count: int) -> None:
    dumps, protocol, value = pickle.dumps, pickle.HIGHEST_PROTOCOL, DICT_VALUE
    for i in range(count):
        put(dumps({"i": i, "v": value}, protocol))


def _drain_pickled(get: Callable[[], bytes], count: int) -> None:
    loads = pickle.loads
    for _ in range(count):
        loads(get())


# -- mybus loops -------------------------------------------------------------------------


def _mybus_send_bytes(ep: Endpoint, payload: bytes, count: int) -> None:
    send, encode = ep.send, codec.encode
    for _ in range(count):
        meta, body = encode(payload)
        send(_TX, _RX, body, meta)


def _mybus_send_dicts(ep: Endpoint, count: int) -> None:
    send, encode, value = ep.send, codec.encode, DICT_VALUE
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
            pause(gap)
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


def _serve(
    ctl: Connection, receive: Receive, echo: Echo, set_spin: Callable[[float], None] | None = None
) -> None:
    """Run the parent's jobs until it says stop."""
    ctl.send(("ready", os.getpid()))
    while True:
        if not ctl.poll(IDLE_TIMEOUT):
            raise TimeoutError(f"receiver {os.getpid()}: no command for {IDLE_TIMEOUT:g}s")
        job: Job = ctl.recv()
        if job.kind == "stop":
            ctl.send(("stopped", None))
            return
        if set_spin is not None:
            set_spin(job.spin)
        profiler = cProfile.Profile() if job.profile else None
        ctl.send(("go", None))
        with (
            bounded(JOB_TIMEOUT, f"receiver {os.getpid()}: {job.describe()}"),
            profiler or contextlib.nullcontext(),
        ):
            if job.kind == "stream":
                assert job.workload is not None
                receive(job.workload, job.count)
            else:
                echo(job.count)
        ctl.send(("done", profile_text(profiler, _PROFILE_LINES) if profiler else None))


def _serve_mybus(ctl: Connection, runtime_dir: str, capacity: int) -> None:
    with Endpoint(Registry(runtime_dir), ring_capacity=capacity) as ep:
        ep.bind(_RX)

        def set_spin(spin: float) -> None:
            ep.spin = spin

        _serve(ctl, lambda wl, n: _mybus_drain(ep, n), lambda n: _mybus_echo(ep, n), set_spin)


def _serve_queue(ctl: Connection, inbox: Queue[Any], outbox: Queue[Any]) -> None:
    try:
        _serve(
            ctl, lambda wl, n: drain(inbox.get, n), lambda n: echo_back(inbox.get, outbox.put, n)
        )
    finally:
        outbox.close()
        with bounded(STOP_TIMEOUT, "receiver: flushing mp.Queue"):
            outbox.join_thread()


def _serve_pipe(ctl: Connection, conn: Connection) -> None:
    def receive(wl: Workload, count: int) -> None:
        drain(conn.recv if wl.is_dict else conn.recv_bytes, count)

    with conn:
        _serve(ctl, receive, lambda n: echo_back(conn.recv_bytes, conn.send_bytes, n))


def _serve_zmq(
    ctl: Connection, stream_addr: str, rpc_addr: str, rpc: str = "PAIR", connect: bool = False
) -> None:
    """PULL a stream from ``stream_addr``, echo on a ``rpc`` socket (PAIR, REP) at ``rpc_addr``.

    The receiver binds both addresses, or connects to them if ``connect``.
    """
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    echo = context.socket(getattr(zmq, rpc))
    try:
        attach = "connect" if connect else "bind"
        getattr(pull, attach)(stream_addr)
        getattr(echo, attach)(rpc_addr)

        def receive(wl: Workload, count: int) -> None:
            if wl.is_dict:
                _drain_pickled(pull.recv, count)
            else:
                drain(pull.recv, count)

        _serve(ctl, receive, lambda n: echo_back(echo.recv, echo.send, n))
    finally:
        pull.close(linger=0)
        echo.close(linger=0)
        context.term()
        # libzmq unlinks only the files of wildcard ("ipc://*") endpoints: ours are ours.
        for addr in (stream_addr, rpc_addr):
            if addr.startswith("ipc://") and not connect:
                Path(addr.removeprefix("ipc://")).unlink(missing_ok=True)


def _serve_iceoryx2(ctl: Connection, domain: iox.Domain) -> None:
    """Read streams and pings from the "forth" channel, echo pongs on the "back" one."""
    with iox.ports(domain) as ports:
        forth = ports.reader(_IOX_FORTH, _STREAM_SPIN)
        back = ports.writer(_IOX_BACK)

        def set_spin(spin: float) -> None:
            forth.spin = spin

        def receive(wl: Workload, count: int) -> None:
            iox.drain(forth, count, pickle.loads if wl.is_dict else None)

        _serve(ctl, receive, lambda n: echo_back(forth.get, back.put, n), set_spin)


# -- the sending side ------------------------------------------------------------------------


class _Peer(Proc):
    """A receiver process and the side channel to it."""

    role = "receiver"
    stop_message = Job("stop")

    def start_job(self, job: Job) -> None:
        self.ctl.send(job)
        self.expect("go", START_TIMEOUT)


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
class _Calls:
    """A peer driven by plain calls (mp.Queue, mp.Pipe, zmq): what sends, what echoes."""

    name: str
    peer: _Peer
    put: Callable[[bytes], object]  # a bytes message
    put_dict: Callable[[Any], object]  # a dict, or its pickle if ``pickle_dicts``
    ping_put: Callable[[bytes], object]
    ping_get: Callable[[], object]
    pickle_dicts: bool = False

    def send_stream(self, wl: Workload, count: int) -> None:
        if not wl.is_dict:
            repeat(self.put, wl.payload(), count)
        elif self.pickle_dicts:
            _send_pickled_dicts(self.put_dict, count)
        else:
            send_dicts(self.put_dict, count)

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        return round_trips(self.ping_put, self.ping_get, _PING_PAYLOAD, count, gap)


@attrs.define
class _Iceoryx2:
    """The sending end: a writer to the receiver's "forth" reader, a reader of "back"."""

    forth: iox.Writer
    back: iox.Reader
    peer: _Peer
    name: str = TRANSPORTS["iceoryx2"]

    def send_stream(self, wl: Workload, count: int) -> None:
        if wl.is_dict:
            iox.send_pickled_dicts(self.forth, count)
        else:
            iox.send_bytes(self.forth, wl.payload(), count)

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        self.back.spin = spin
        return round_trips(self.forth.put, self.back.get, _PING_PAYLOAD, count, gap)


def _open_mybus(
    stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext, capacity: int
) -> _MyBus:
    runtime_dir = Path(tempfile.mkdtemp(prefix="mybus-bench-", dir="/dev/shm"))
    stack.callback(cleanup.remove_dir, runtime_dir, "mybus runtime dir")
    ep = stack.enter_context(Endpoint(Registry(runtime_dir), ring_capacity=capacity))
    ep.bind(_TX)
    peer = start_proc(
        stack, cleanup, _Peer, ctx, TRANSPORTS["mybus"], _serve_mybus, str(runtime_dir), capacity
    )
    return _MyBus(ep, peer)


def _close_queue(queue: Queue[Any]) -> None:
    queue.close()
    with bounded(STOP_TIMEOUT, "flushing an mp.Queue"):
        queue.join_thread()


def _open_queue(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _Calls:
    outbox: Queue[Any] = ctx.Queue()
    inbox: Queue[Any] = ctx.Queue()
    stack.callback(_close_queue, outbox)
    stack.callback(_close_queue, inbox)
    peer = start_proc(stack, cleanup, _Peer, ctx, TRANSPORTS["queue"], _serve_queue, outbox, inbox)
    return _Calls(TRANSPORTS["queue"], peer, outbox.put, outbox.put, outbox.put, inbox.get)


def _open_pipe(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _Calls:
    mine, theirs = ctx.Pipe(duplex=True)
    stack.callback(mine.close)
    try:
        peer = start_proc(stack, cleanup, _Peer, ctx, TRANSPORTS["pipe"], _serve_pipe, theirs)
    finally:
        theirs.close()
    return _Calls(
        TRANSPORTS["pipe"], peer, mine.send_bytes, mine.send, mine.send_bytes, mine.recv_bytes
    )


def _open_zmq(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _Calls:
    sock_dir = Path(tempfile.mkdtemp(prefix="mybus-bench-zmq-"))
    stack.callback(cleanup.remove_dir, sock_dir, "zmq ipc socket dir")
    stream_addr, rpc_addr = f"ipc://{sock_dir}/stream", f"ipc://{sock_dir}/rpc"
    peer = start_proc(
        stack, cleanup, _Peer, ctx, TRANSPORTS["zmq"], _serve_zmq, stream_addr, rpc_addr
    )
    context = zmq.Context()
    stack.callback(context.term)
    push = context.socket(zmq.PUSH)
    stack.callback(push.close, 0)
    pair = context.socket(zmq.PAIR)
    stack.callback(pair.close, 0)
    push.connect(stream_addr)
    pair.connect(rpc_addr)
    return _Calls(TRANSPORTS["zmq"], peer, push.send, push.send, pair.send, pair.recv, True)


def _open_iceoryx2(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _Iceoryx2:
    domain = iox.Domain.create()
    stack.callback(domain.remove, cleanup)  # last: after the receiver and our ports are gone
    ports = stack.enter_context(iox.ports(domain))
    # The services are opened (or created) by whichever side comes first, alike.
    forth = ports.writer(_IOX_FORTH)
    back = ports.reader(_IOX_BACK, PING_MODES[0].spin)
    peer = start_proc(stack, cleanup, _Peer, ctx, TRANSPORTS["iceoryx2"], _serve_iceoryx2, domain)
    return _Iceoryx2(forth, back, peer)


# -- measuring -------------------------------------------------------------------------------


def _measure_stream(
    t: Transport, wl: Workload, spin: float = _STREAM_SPIN, profile: bool = False
) -> tuple[float, str]:
    """Return (seconds from the first send to the receiver's confirmation, profiles)."""
    t.peer.start_job(Job("stream", wl.count, wl, spin=spin, profile=profile))
    profiler = cProfile.Profile() if profile else None
    with bounded(JOB_TIMEOUT, f"{t.name} sender: stream of {wl.count} x {wl.label}"):
        start = time.perf_counter()
        with profiler or contextlib.nullcontext():
            t.send_stream(wl, wl.count)
        receiver_profile = t.peer.expect("done", JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
    if profiler is None:
        return elapsed, ""
    return (
        elapsed,
        f"sender:\n{profile_text(profiler, _PROFILE_LINES)}\nreceiver:\n{receiver_profile}",
    )


def _measure_ping(t: Transport, mode: PingMode) -> list[float]:
    """Return the round-trip times in seconds (the pauses between them excluded)."""
    t.peer.start_job(Job("echo", mode.count, spin=mode.spin))
    with bounded(JOB_TIMEOUT, f"{t.name} pinger: {mode.count} x {mode.label}"):
        rtts = t.ping(mode.count, mode.gap, mode.spin)
        t.peer.expect("done", JOB_TIMEOUT)
    return rtts


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
        log(f"warming up {t.name}")
        for wl in plan.workloads:
            _measure_stream(t, wl.scaled(_WARMUP_FRACTION), plan.stream_spin)
        _measure_ping(t, attrs.evolve(plan.modes[0], count=200))
    reps = plan.reps
    for rep in range(reps):
        for wl in plan.workloads:
            for t in transports:
                rate = wl.count / _measure_stream(t, wl, plan.stream_spin)[0]
                results[t.name].setdefault(wl.key, []).append(rate)
                log(f"rep {rep + 1}/{reps} {wl.label:<12} {t.name:<9} {rate:>12,.0f} msg/s")
        for mode in plan.modes:
            for t in transports:
                rtts = _measure_ping(t, mode)
                median, tail = record_rtts(results[t.name], mode.key, rtts)
                log(
                    f"rep {rep + 1}/{reps} {mode.key:<12} {t.name:<9} median {median:7.1f} us"
                    f"  p99 {tail:7.1f} us"
                )
    return results


# -- reporting -------------------------------------------------------------------------------


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


REPORT: Final = Report(TRANSPORTS["mybus"], "mybus / peer", TARGETS)


def _header(info: dict[str, Any], config: dict[str, Any], names: Sequence[str]) -> str:
    zmq_text = (
        f"pyzmq {info['pyzmq']} (libzmq {info['libzmq']})"
        if "pyzmq" in info
        else f"pyzmq not available ({_ZMQ_MISSING}): zmq skipped"
    )
    iox_text = (
        f"iceoryx2 {info['iceoryx2']}"
        if info.get("iceoryx2")
        else f"iceoryx2 not available ({iox.MISSING}): iceoryx2 skipped"
    )
    return "\n".join(
        [
            *header(
                "mybus transport benchmark",
                info,
                f"{zmq_text}, {iox_text}",
                config,
                f"counts per rep: {counts(config['counts'])}",
            ),
            f"- mybus: ring capacity {config['ring_capacity']:,} B (max record "
            f"{config['ring_capacity'] // 4:,} B), poll budget {_POLL_BUDGET}, receiver spin "
            f"{config['stream_spin'] * 1e6:g} us for streams; RTT back to back: both ends spin "
            f"{PING_MODES[0].spin * 1e6:g} us; RTT with pause: both ends spin=0 (doorbell sleep)",
            *(
                [
                    f"- iceoryx2: Slice[c_uint8] pub/sub, safe overflow off, RetryUntilDelivered, "
                    f"subscriber buffer {iox.BUFFER} samples; copy in, copy out; a notify after "
                    "each send; a receiver spins as mybus's does (streams, RTT back to back), "
                    "then sleeps on its event listener"
                ]
                if TRANSPORTS["iceoryx2"] in names
                else []
            ),
            "",
        ]
    )


# -- main ------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__)
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
    return parse_args(parser, argv, "transports", list(TRANSPORTS))


def _open(
    stack: contextlib.ExitStack, cleanup: Cleanup, keys: Sequence[str], capacity: int
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
        elif key == "iceoryx2":
            if iox.MISSING is not None:
                log(f"note: iceoryx2 skipped: {iox.MISSING}; pip install iceoryx2")
            else:
                opened.append(_open_iceoryx2(stack, cleanup, ctx))
        elif zmq is None:
            log(f"note: zmq skipped: {_ZMQ_MISSING}")
        else:
            opened.append(_open_zmq(stack, cleanup, ctx))
    for t in opened:
        t.peer.expect("ready", START_TIMEOUT)
    return opened


def _profile(stack: contextlib.ExitStack, cleanup: Cleanup, plan: Plan) -> None:
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
    info = machine()
    if zmq is not None:
        info["pyzmq"] = zmq.pyzmq_version()
        info["libzmq"] = zmq.zmq_version()
    if iox.MISSING is None:
        info["iceoryx2"] = iox.version()
    config = {**plan.config(), "quick": args.quick}
    cleanup = Cleanup()
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
        print(_header(info, config, names))
        print(REPORT.render(results, names, plan.workloads, plan.modes))
    print(footer(elapsed))
    if args.json is not None:
        raw = {
            "machine": info,
            "config": config,
            "run_seconds": elapsed,
            "units": "throughput keys (b64, dict, b4k, b1m): messages/s; RTT keys: us",
            "reps": results,
            "medians": medians(results),
            "ratios_mybus_over_peer": ratios(results, names, TRANSPORTS["mybus"]),
            "cleanup_problems": cleanup.problems,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return cleanup.report(
        f"cleanup: {len(cleanup.pids)} receiver processes stopped by pid; "
        "runtime, socket and iceoryx2 dirs and files removed, nothing left"
    )


if __name__ == "__main__":
    sys.exit(main())
