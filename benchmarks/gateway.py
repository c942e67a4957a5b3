"""Gateway benchmark: mybus across two nodes on loopback against zmq, asyncio and raw TCP.

``python benchmarks/gateway.py [--quick] [--reps N] [--json PATH] [--peers LIST]
[--profile [--profile-dir DIR]]``

Two mybus nodes on this host: gateway "alpha" and gateway "beta" (``mybus-gateway``, each
its own process, runtime directory and loopback port, one shared secret through
``MYBUS_SECRET``). A ``Counter`` and an ``Echo`` actor run on beta (``mb.spawn``); the
benchmark process is a client on alpha (``mb.connect``). Measured, per repetition:

- cross-node ``tell`` throughput, client on alpha -> Counter on beta: 64 B bytes, a small
  dict ``{"i": i, "v": "x" * 40}`` and 1 MiB bytes (also shown as MB/s). Timed from the
  first tell until the reply to ``ask("beta/counter", "count?")``, the barrier, which
  must show the Counter got every message (messages above 256 KiB can be overtaken by
  the barrier on the link, so it is asked again until the count is complete; the header
  says when that happened);
- cross-node ``ask`` round trip, client on alpha -> Echo on beta, 64 B bytes: median, p99;
- alongside, the CPU time (user+sys) each of the four processes on the path spends per
  message: what a message costs, which the throughput alone hides on a loaded host.

Peers, each in its own receiver process ("spawn"), on the same workloads:

- pyzmq over ``tcp://127.0.0.1``: PUSH/PULL throughput (raw frames for bytes, dicts through
  ``pickle.dumps``/``loads``), timed until the receiver confirms the count on a side
  channel; REQ/REP round trip;
- a plain asyncio TCP echo (4-byte length-prefixed frames, asyncio on both ends) and a
  raw TCP echo (blocking sockets, the same frames): round trips only, for scale;
- ``multiprocessing.Queue`` and ``multiprocessing.Pipe`` between two local processes
  (benchmarks/transport.py's peers): throughput (the Queue's small dict is the issue's
  reference point) and round trip (the Pipe's is the other one).

The peers' receivers, side channel, timers and tables are benchmarks/transport.py's,
imported (that module has no side effects at import). Each figure is the median over
``--reps`` repetitions; within a repetition the peers run one right after the other on
each workload, so every ratio is the median of the per-rep ratios. Start-up (gateways,
link handshake, actor processes, receivers) is never timed.

Bounds: every timed span runs under an interval timer; the receivers bound their jobs;
waits for a gateway's log line, for the link and for actors are bounded. Teardown: the
client is closed, the actors stopped (``Ref.stop``), ``mybus_actors.ref.close_clients()``
called, then both gateways get SIGTERM and must exit 0; receivers are stopped by pid;
both runtime directories must hold no file before they are removed. Whatever the targets
say, the exit status is 0 unless something broke.

``--profile``: instead of the table, run the small-dict stream (``--profile-workload``:
another stream, or ``rtt``: the asks) with ``py-spy record`` attached (raw format) to
both gateways, the Counter and this process (the client), and print where each spends
its samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import psutil
import zmq
from _common import (
    JOB_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Cleanup,
    Report,
    Results,
    Target,
    base_parser,
    bounded,
    counts,
    footer,
    header,
    log,
    machine,
    medians,
    parse_args,
    ratios,
    record_rtts,
    start_proc,
    table,
    tell_bytes,
    tell_dicts,
)
from transport import (
    _PING_PAYLOAD,
    PingMode,
    Transport,
    Workload,
    _Calls,
    _measure_ping,
    _measure_stream,
    _open_pipe,
    _open_queue,
    _Peer,
    _serve,
    _serve_zmq,
)

import mybus_actors as mb
import mybus_actors.ref

_ALPHA: Final = "alpha"
_BETA: Final = "beta"
_COUNTER: Final = f"{_BETA}/counter"
_ECHO: Final = f"{_BETA}/echo"
_FRAME: Final = struct.Struct("!I")  # the TCP echoes' length prefix
_GATEWAY_START_TIMEOUT: Final = 30.0
_GATEWAY_STOP_TIMEOUT: Final = 15.0  # a gateway flushes for up to 2 s, then exits
_LINK_TIMEOUT: Final = 30.0
_CONTROL_TIMEOUT: Final = 10.0
_WARMUP_FRACTION: Final = 0.05
_WARMUP_PINGS: Final = 200
_SPY_RATE: Final = 250  # py-spy samples per second
_PROFILE_STREAMS: Final = 3  # streams sampled in --profile
_PROFILE_LINES: Final = 14

WORKLOADS: Final = (
    Workload("b64", "64 B bytes", 64, 100_000),
    Workload("dict", "small dict", 0, 100_000),
    Workload("b1m", "1 MiB bytes", 1 << 20, 300),
)
RTT: Final = PingMode("rtt", "64 B round trip", 5_000, 0.0, 0.0)

MYBUS: Final = "mybus 2 nodes"
PEERS: Final = {
    "zmq": "zmq tcp",
    "asyncio": "asyncio tcp",
    "raw": "raw tcp",
    "queue": "mp.Queue",
    "pipe": "mp.Pipe",
}
TARGETS: Final = (
    Target("cross-node tell small dict >= 1x mp.Queue (two local processes)", "dict",
           PEERS["queue"], 1.0, True),
    Target("cross-node tell small dict >= 0.5x zmq PUSH/PULL pickled dicts over tcp", "dict",
           PEERS["zmq"], 0.5, True),
    Target("cross-node ask round trip median <= 4x mp.Pipe", "rtt.median",
           PEERS["pipe"], 4.0, False),
    # The speed issue's (11) targets across two nodes on loopback.
    Target("speed: cross-node small dict >= 0.6x zmq PUSH/PULL over tcp", "dict",
           PEERS["zmq"], 0.6, True),
    Target("speed: cross-node 1 MiB >= 0.7x zmq's MB/s over tcp", "b1m",
           PEERS["zmq"], 0.7, True),
    Target("speed: cross-node ask round trip median <= 2.5x zmq REQ/REP", "rtt.median",
           PEERS["zmq"], 2.5, False),
)  # fmt: skip
REPORT: Final = Report(MYBUS, "mybus across two nodes / peer", TARGETS)


# -- the actors on beta (sent to their processes by value: keep them self-contained) --------


class Counter(mb.Actor):
    """Counts what it is told; answers "count?" with the count so far."""

    def on_start(self) -> None:
        self.n = 0

    def receive(self, message: Any) -> None:
        if type(message) is str and message == "count?":
            self.reply(self.n)
        else:
            self.n += 1


class Echo(mb.Actor):
    """Replies with what it got."""

    def receive(self, message: Any) -> None:
        self.reply(message)


# -- the two nodes ---------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """Ports the kernel handed out just now (all held at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("mybus-gateway")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mybus_actors.gateway"]


class _Gateway:
    """One ``mybus-gateway`` process, its log file, and its stop by pid (SIGTERM, exit 0)."""

    def __init__(
        self,
        node: str,
        runtime_dir: Path,
        port: int,
        peer: str,
        peer_port: int,
        secret: str,
        log: Path,
    ) -> None:
        self.node = node
        self.log = log
        cmd = [
            *_gateway_command(),
            "--node", node,
            "--runtime-dir", str(runtime_dir),
            "--listen", f"127.0.0.1:{port}",
            "--peer", f"{peer}=127.0.0.1:{peer_port}",
            "--log-level", "info",
        ]  # fmt: skip
        env = dict(os.environ, MYBUS_SECRET=secret)
        env.pop("MYBUS_RUNTIME_DIR", None)
        env.pop("MYBUS_NODE", None)
        with open(log, "wb") as out:
            # Its own session: a Ctrl-C reaches the benchmark only, whose teardown then
            # stops the gateway with SIGTERM and checks its exit status.
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_listening(self, deadline: float) -> None:
        """Wait for its "listening on" log line.

        Raises:
            RuntimeError: it exited first (its log is in the message).
            TimeoutError: no such line before ``deadline``.
        """
        while "listening on" not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway {self.node} (pid {self.pid}) exited with {self.proc.returncode} "
                    f"before listening:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway {self.node} (pid {self.pid}) not listening yet")
            time.sleep(0.01)  # a bounded poll of a log file, not a synchronisation

    def stop(self, problems: list[str]) -> None:
        """SIGTERM; it must exit 0 within the bound, else it is killed and reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(_GATEWAY_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"gateway {self.node} (pid {self.pid}) ignored SIGTERM: killed")
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            return
        if code != 0:
            problems.append(
                f"gateway {self.node} (pid {self.pid}) exited {code} after SIGTERM, not 0; "
                f"log:\n{self.log_text()}"
            )


class _TwoNodes:
    """Gateways alpha and beta, the Counter and Echo on beta, and a client on alpha."""

    name = MYBUS
    figures = frozenset(wl.key for wl in WORKLOADS) | {RTT.key}

    def __init__(self, stack: contextlib.ExitStack, cleanup: Cleanup) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mybus-gw-bench-", dir="/dev/shm"))
        self.dirs = {_ALPHA: self.base / _ALPHA, _BETA: self.base / _BETA}
        for path in self.dirs.values():
            path.mkdir()
        self.log_lines: list[str] = []
        self.overtaken: dict[str, int] = {}  # workload -> most barrier asks answered short
        # figure -> process role (and "wall") -> CPU (wall-clock) us per message, per rep
        self.cpu: dict[str, dict[str, list[float]]] = {}
        self.gateways: dict[str, _Gateway] = {}
        stack.callback(self._remove, cleanup)
        port_a, port_b = _free_ports(2)
        secret = secrets.token_hex(16)
        for node, port, peer, peer_port in (
            (_ALPHA, port_a, _BETA, port_b),
            (_BETA, port_b, _ALPHA, port_a),
        ):
            log = self.base / f"{node}.log"
            gw = _Gateway(node, self.dirs[node], port, peer, peer_port, secret, log)
            self.gateways[node] = gw
            cleanup.pids.append(gw.pid)
            stack.callback(gw.stop, cleanup.problems)
        deadline = time.monotonic() + _GATEWAY_START_TIMEOUT
        for gw in self.gateways.values():
            gw.wait_listening(deadline)
        # Runs after the refs are stopped, before the gateways get SIGTERM.
        stack.callback(mybus_actors.ref.close_clients)
        self.refs: list[mb.Ref] = []
        stack.callback(self._stop_refs, cleanup)
        for cls, name in ((Counter, "counter"), (Echo, "echo")):
            ref = mb.spawn(cls, name, node=_BETA, runtime_dir=self.dirs[_BETA])
            self.refs.append(ref)
            cleanup.pids.append(ref.pid)
        self.client = stack.enter_context(mb.connect(node=_ALPHA, runtime_dir=self.dirs[_ALPHA]))
        self.link_seconds = self._wait_link()

    @property
    def counter_pid(self) -> int:
        return self.refs[0].pid

    def processes(self) -> dict[str, int]:
        """The four processes on the message path, by role."""
        return {
            "client (alpha)": os.getpid(),
            "gateway alpha": self.gateways[_ALPHA].pid,
            "gateway beta": self.gateways[_BETA].pid,
            "Counter/Echo (beta)": self.counter_pid,
        }

    @contextlib.contextmanager
    def _cpu(self, key: str, count: int, echo: bool = False) -> Iterator[None]:
        """Record each path process's CPU time (user+sys) per message over the block."""
        procs = self.processes()
        if echo:
            procs["Counter/Echo (beta)"] = self.refs[1].pid
        handles = {role: psutil.Process(pid) for role, pid in procs.items()}
        before = {role: sum(h.cpu_times()[:2]) for role, h in handles.items()}
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        figures = self.cpu.setdefault(key, {})
        for role, h in handles.items():
            used = sum(h.cpu_times()[:2]) - before[role]
            figures.setdefault(role, []).append(used / count * 1e6)
        figures.setdefault("wall", []).append(elapsed / count * 1e6)

    def _wait_link(self) -> float:
        """Ask beta's Echo until it answers: the link is up and authenticated."""
        start = time.monotonic()
        deadline = start + _LINK_TIMEOUT
        while True:
            try:
                if self.client.ask(_ECHO, "hello", timeout=2.0) != "hello":
                    raise RuntimeError("beta/echo answered something else than 'hello'")
                return time.monotonic() - start
            except (mb.AskTimeout, mb.ActorNotFound) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no answer from {_ECHO} within {_LINK_TIMEOUT:g}s: {exc}\n"
                        + "\n".join(gw.log_text() for gw in self.gateways.values())
                    ) from exc

    def _stop_refs(self, cleanup: Cleanup) -> None:
        for ref in self.refs:
            if not ref.stop(STOP_TIMEOUT):
                cleanup.problems.append(f"{ref} did not stop cleanly: killed")

    def _remove(self, cleanup: Cleanup) -> None:
        for node, path in self.dirs.items():
            cleanup.remove_dir(path, f"runtime dir of node {node}")
        for gw in self.gateways.values():
            self.log_lines += [
                f"{gw.node}: {line}"
                for line in gw.log_text().splitlines()
                if " WARNING " in line or " ERROR " in line or "Traceback" in line
            ]
        shutil.rmtree(self.base, ignore_errors=True)
        if self.base.exists():
            cleanup.problems.append(f"{self.base} could not be removed")

    def stream(self, wl: Workload) -> float:
        """Seconds from the first tell to the first barrier reply that counts them all.

        Messages above the link's ``large`` threshold (256 KiB) travel in chunks that
        later small messages overtake (link.py), so a "count?" asked right after a
        1 MiB stream can come back short: it is asked again until the count is complete.
        """
        client = self.client
        with bounded(JOB_TIMEOUT, f"{self.name}: {wl.count} x {wl.label}"):
            before = client.ask(_COUNTER, "count?", timeout=_CONTROL_TIMEOUT)
            with self._cpu(wl.key, wl.count):
                start = time.perf_counter()
                if wl.is_dict:
                    tell_dicts(client.tell, _COUNTER, wl.count)
                else:
                    tell_bytes(client.tell, _COUNTER, wl.payload(), wl.count)
                barriers = 1
                got = client.ask(_COUNTER, "count?", timeout=JOB_TIMEOUT) - before
                while got < wl.count:
                    barriers += 1
                    got = client.ask(_COUNTER, "count?", timeout=JOB_TIMEOUT) - before
                elapsed = time.perf_counter() - start
        if got != wl.count:
            raise RuntimeError(f"{_COUNTER} counted {got}, expected {wl.count}")
        if barriers > 1:
            self.overtaken[wl.key] = max(self.overtaken.get(wl.key, 0), barriers - 1)
        return elapsed

    def rtts(self, mode: PingMode) -> list[float]:
        with (
            bounded(JOB_TIMEOUT, f"{self.name}: {mode.count} asks"),
            self._cpu(mode.key, mode.count, echo=True),
        ):
            return _ask_loop(self.client.ask, mode.count)


def _ask_loop(ask: Callable[[str, Any], Any], count: int) -> list[float]:
    to, payload, clock = _ECHO, _PING_PAYLOAD, time.perf_counter
    rtts = [0.0] * count
    for k in range(count):
        start = clock()
        ask(to, payload)
        rtts[k] = clock() - start
    return rtts


# -- peers: receiver processes ---------------------------------------------------------------


def _no_stream(wl: Workload, count: int) -> None:
    raise RuntimeError(f"this receiver only echoes; it was sent a stream of {wl.label}")


def _listen() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener


def _serve_echo(ctl: Connection, kind: str) -> None:
    """A TCP echo server (asyncio or blocking sockets); one connection per echo job."""
    with _listen() as listener:
        ctl.send(("listening", listener.getsockname()[1]))
        if kind == "asyncio":
            listener.setblocking(False)
            echo = lambda n: asyncio.run(_asyncio_echo(listener, n))  # noqa: E731
        else:
            echo = lambda n: _raw_echo(listener, n)  # noqa: E731
        _serve(ctl, _no_stream, echo)


async def _asyncio_echo(listener: socket.socket, count: int) -> None:
    conn, _ = await asyncio.get_running_loop().sock_accept(listener)
    reader, writer = await asyncio.open_connection(sock=conn)
    try:
        unpack = _FRAME.unpack
        for _ in range(count):
            head = await reader.readexactly(_FRAME.size)
            body = await reader.readexactly(unpack(head)[0])
            writer.write(head + body)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def _asyncio_ping(port: int, count: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frame = _FRAME.pack(len(_PING_PAYLOAD)) + _PING_PAYLOAD
    unpack, clock = _FRAME.unpack, time.perf_counter
    rtts = [0.0] * count
    try:
        for k in range(count):
            start = clock()
            writer.write(frame)
            await writer.drain()
            head = await reader.readexactly(_FRAME.size)
            await reader.readexactly(unpack(head)[0])
            rtts[k] = clock() - start
    finally:
        writer.close()
        await writer.wait_closed()
    return rtts


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError(f"peer closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


def _raw_echo(listener: socket.socket, count: int) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        unpack = _FRAME.unpack
        for _ in range(count):
            head = _recv_exact(conn, _FRAME.size)
            conn.sendall(head + _recv_exact(conn, unpack(head)[0]))


def _raw_ping(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frame = _FRAME.pack(len(_PING_PAYLOAD)) + _PING_PAYLOAD
        unpack, clock = _FRAME.unpack, time.perf_counter
        rtts = [0.0] * count
        for k in range(count):
            start = clock()
            sock.sendall(frame)
            _recv_exact(sock, unpack(_recv_exact(sock, _FRAME.size))[0])
            rtts[k] = clock() - start
    return rtts


# -- peers: the sending side (transport.py's Transport protocol) ------------------------------


@attrs.define
class _TcpEcho:
    port: int
    peer: _Peer
    name: str
    pinger: Callable[[int, int], list[float]]  # (port, count) -> round-trip times

    def send_stream(self, wl: Workload, count: int) -> None:
        raise RuntimeError(f"{self.name} is measured for round trips only")

    def ping(self, count: int, gap: float, spin: float) -> list[float]:
        return self.pinger(self.port, count)


def _asyncio_pinger(port: int, count: int) -> list[float]:
    return asyncio.run(_asyncio_ping(port, count))


class Subject(Protocol):
    """What a measured column offers: stream seconds and round-trip times."""

    name: str
    figures: frozenset[str]

    def stream(self, wl: Workload) -> float: ...

    def rtts(self, mode: PingMode) -> list[float]: ...


@attrs.define
class _Via:
    """A transport.py-style peer (receiver process + side channel) as a `Subject`."""

    t: Transport
    figures: frozenset[str]

    @property
    def name(self) -> str:
        return self.t.name

    def stream(self, wl: Workload) -> float:
        return _measure_stream(self.t, wl)[0]

    def rtts(self, mode: PingMode) -> list[float]:
        return _measure_ping(self.t, mode)


def _open_zmq_tcp(stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext) -> _Calls:
    context = zmq.Context()
    stack.callback(context.term)
    push = context.socket(zmq.PUSH)
    stack.callback(push.close, 0)
    req = context.socket(zmq.REQ)
    stack.callback(req.close, 0)
    # Bound here on a port the kernel picks; the receiver connects.
    push.bind("tcp://127.0.0.1:*")
    req.bind("tcp://127.0.0.1:*")
    push_addr = push.getsockopt(zmq.LAST_ENDPOINT).decode()
    req_addr = req.getsockopt(zmq.LAST_ENDPOINT).decode()
    peer = start_proc(
        stack, cleanup, _Peer, ctx, PEERS["zmq"], _serve_zmq, push_addr, req_addr, "REP", True
    )
    return _Calls(PEERS["zmq"], peer, push.send, push.send, req.send, req.recv, True)


def _open_echo(
    stack: contextlib.ExitStack, cleanup: Cleanup, ctx: SpawnContext, key: str
) -> _TcpEcho:
    peer = start_proc(stack, cleanup, _Peer, ctx, PEERS[key], _serve_echo, key)
    port = peer.expect("listening", START_TIMEOUT)
    return _TcpEcho(port, peer, PEERS[key], _asyncio_pinger if key == "asyncio" else _raw_ping)


def _open_peers(
    stack: contextlib.ExitStack, cleanup: Cleanup, keys: Sequence[str]
) -> list[Subject]:
    ctx = mp.get_context("spawn")
    everything = frozenset(wl.key for wl in WORKLOADS) | {RTT.key}
    opened: list[_Via] = []
    for key in keys:
        if key == "zmq":
            opened.append(_Via(_open_zmq_tcp(stack, cleanup, ctx), everything))
        elif key in ("asyncio", "raw"):
            opened.append(_Via(_open_echo(stack, cleanup, ctx, key), frozenset({RTT.key})))
        elif key == "queue":
            opened.append(_Via(_open_queue(stack, cleanup, ctx), everything))
        else:
            opened.append(_Via(_open_pipe(stack, cleanup, ctx), everything))
    for via in opened:  # all started before any is waited for: they boot in parallel
        via.t.peer.expect("ready", START_TIMEOUT)
    return list(opened)


# -- measuring -------------------------------------------------------------------------------


@attrs.frozen
class Plan:
    workloads: tuple[Workload, ...]
    rtt: PingMode
    reps: int

    def config(self) -> dict[str, Any]:
        counts = {wl.key: wl.count for wl in self.workloads}
        counts[self.rtt.key] = self.rtt.count
        return {"reps": self.reps, "counts": counts}


def _warm_up(subjects: Sequence[Subject], plan: Plan) -> None:
    for s in subjects:
        log(f"warming up {s.name}")
        for wl in plan.workloads:
            if wl.key in s.figures:
                s.stream(wl.scaled(_WARMUP_FRACTION))
        s.rtts(attrs.evolve(plan.rtt, count=_WARMUP_PINGS))


def _run(subjects: Sequence[Subject], plan: Plan) -> Results:
    """Measure rep by rep, interleaving the columns within each rep."""
    results: Results = {s.name: {} for s in subjects}
    for rep in range(plan.reps):
        tag = f"rep {rep + 1}/{plan.reps}"
        for wl in plan.workloads:
            for s in subjects:
                if wl.key not in s.figures:
                    continue
                rate = wl.count / s.stream(wl)
                results[s.name].setdefault(wl.key, []).append(rate)
                log(f"{tag} {wl.label:<12} {s.name:<14} {rate:>12,.0f} msg/s")
        for s in subjects:
            rtts = s.rtts(plan.rtt)
            median, tail = record_rtts(results[s.name], plan.rtt.key, rtts)
            log(
                f"{tag} {plan.rtt.key:<12} {s.name:<14} median {median:8.1f} us  p99 {tail:8.1f} us"
            )
    return results


# -- reporting -------------------------------------------------------------------------------


def _cpu_report(cpu: dict[str, dict[str, list[float]]], plan: Plan) -> str:
    """CPU per message of each process on the mybus path: what a message costs in all."""
    rows = [(wl.key, wl.label) for wl in plan.workloads]
    rows.append((plan.rtt.key, f"{plan.rtt.label} (Echo in the 4th column)"))
    roles = [r for r in next(iter(cpu.values()), {}) if r != "wall"]
    if not roles:
        return ""
    med = {key: {r: statistics.median(v) for r, v in figs.items()} for key, figs in cpu.items()}
    lines = [
        [
            label,
            *(f"{med[key][r]:,.1f}" for r in roles),
            f"{sum(med[key][r] for r in roles):,.1f}",
            f"{med[key]['wall']:,.1f}",
        ]
        for key, label in rows
        if key in med
    ]
    return "\n".join(
        [
            "",
            "## mybus: CPU time per message (per round trip for asks), us, user+sys, "
            "median over reps",
            "",
            table(["workload", *roles, "sum", "wall clock"], lines),
            "",
            "(sum > wall clock: the processes overlap; sum / wall clock = cores kept busy)",
        ]
    )


def _header(
    info: dict[str, Any],
    config: dict[str, Any],
    link_seconds: float | None,
    overtaken: dict[str, int],
) -> str:
    link = f"{link_seconds:.2f} s" if link_seconds is not None else "n/a"
    reorder = [
        f'- note: on {key}, the barrier\'s "count?" overtook tells still in flight (up to '
        f"{n} short answer(s) before the full count): order across nodes is not kept for "
        "messages above 256 KiB"
        for key, n in overtaken.items()
    ]
    return "\n".join(
        [
            *header(
                "mybus gateway benchmark (two nodes on loopback)",
                info,
                f"mybus_actors {info['mybus_actors']}, "
                f"pyzmq {info['pyzmq']} (libzmq {info['libzmq']})",
                config,
                f"counts per rep: {counts(config['counts'])}",
            ),
            "- mybus: client on alpha (benchmark process) -> gateway alpha -> TCP 127.0.0.1 -> "
            "gateway beta -> Counter/Echo on beta (own processes): four processes per message "
            "path, gateways at their defaults; tells timed to the reply of the barrier ask",
            f"- link up and first ask answered {link} after the client connected (not timed)",
            "- peers: zmq PUSH/PULL + REQ/REP over tcp://127.0.0.1; asyncio and raw TCP echo "
            "(4-byte length prefix, TCP_NODELAY); mp.Queue/mp.Pipe between two local processes",
            *reorder,
            "",
        ]
    )


# -- profile (py-spy) ------------------------------------------------------------------------


class _Spy:
    """``py-spy record -f raw`` attached to one pid; stopped by its own pid with SIGINT."""

    def __init__(self, label: str, pid: int, out: Path) -> None:
        self.label = label
        self.out = out
        self.err = out.with_suffix(".log")
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                 "--rate", str(_SPY_RATE), "--nonblocking"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_sampling(self, deadline: float) -> None:
        while "Sampling process" not in self.err.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"py-spy on {self.label} did not start: {self.log()}")
            time.sleep(0.01)  # a bounded poll of a log file

    def log(self) -> str:
        return self.err.read_text(errors="replace").strip()

    def stop(self, problems: list[str]) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"py-spy on {self.label} (pid {self.proc.pid}) killed")
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


_LINE_NO = re.compile(r":\d+\)$")


def _summarize(raw: str, cpu: float, share: float) -> str:
    """Top functions by own samples and lines; mybus_actors functions by inclusive ones."""
    own: Tally[str] = Tally()
    inclusive: Tally[str] = Tally()
    lines: Tally[str] = Tally()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        lines[frames[-1]] += count
        funcs = [_LINE_NO.sub(")", frame) for frame in frames]
        own[funcs[-1]] += count
        for func in set(funcs):
            inclusive[func] += count
    if not total:
        return "(no samples)"
    out = [
        f"CPU {cpu:.1f} us per message, {share:.0f}% of one core (user+sys); {total:,} samples "
        "of a thread py-spy saw running or runnable (waiting for a CPU counts)",
        "",
        "own samples (the function itself, not its callees):",
    ]
    out += [f"  {n / total:6.1%}  {func}" for func, n in own.most_common(_PROFILE_LINES)]
    out += ["", "hottest lines:"]
    out += [f"  {n / total:6.1%}  {frame}" for frame, n in lines.most_common(8)]
    out += ["", "inclusive, mybus_actors functions (the entry points above 97% left out):"]
    shown = [
        (func, n)
        for func, n in inclusive.most_common()
        if "mybus_actors/" in func and n < 0.97 * total
    ]
    out += [f"  {n / total:6.1%}  {func}" for func, n in shown[:_PROFILE_LINES]]
    return "\n".join(out)


def _profile(
    stack: contextlib.ExitStack,
    cleanup: Cleanup,
    nodes: _TwoNodes,
    plan: Plan,
    keep: Path | None,
    workload: str,
) -> None:
    """Sample the four processes on the path with py-spy during one workload's streams."""
    if shutil.which("py-spy") is None:
        raise RuntimeError("--profile needs py-spy on PATH (pip install py-spy)")
    if workload == RTT.key:
        nodes.rtts(RTT.scaled(_WARMUP_FRACTION))
    else:
        wl = next(w for w in plan.workloads if w.key == workload)
        nodes.stream(wl.scaled(_WARMUP_FRACTION))
    nodes.cpu.clear()
    out_dir = keep or Path(tempfile.mkdtemp(prefix="mybus-gw-spy-"))
    if keep is None:
        stack.callback(shutil.rmtree, out_dir, True)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    with contextlib.ExitStack() as spying:
        for role, pid in nodes.processes().items():
            slug = re.sub(r"\W+", "-", role).strip("-")
            spy = _Spy(role, pid, out_dir / f"{slug}.txt")
            cleanup.pids.append(spy.proc.pid)
            spying.callback(spy.stop, cleanup.problems)
            spies.append(spy)
        deadline = time.monotonic() + START_TIMEOUT
        for spy in spies:
            spy.wait_sampling(deadline)
        if workload == RTT.key:
            medians_us = [statistics.median(nodes.rtts(RTT)) * 1e6 for _ in range(_PROFILE_STREAMS)]
            what = (
                f"{_PROFILE_STREAMS} runs of {RTT.count:,} asks, alpha client -> beta Echo: "
                + ", ".join(f"median {m:,.0f} us" for m in medians_us)
            )
        else:
            spent = [nodes.stream(wl) for _ in range(_PROFILE_STREAMS)]
            rates = ", ".join(f"{wl.count / t:,.0f}" for t in spent)
            what = f"{_PROFILE_STREAMS} streams of {wl.count:,} x {wl.label}, alpha client -> "
            what += f"beta Counter: {rates} msg/s"
    print(
        "# mybus gateway benchmark: py-spy profile of cross-node traffic\n\n"
        f"{what}, sampled by py-spy --nonblocking at {_SPY_RATE}/s; raw "
        f"files in {out_dir}" + (" (removed at exit)" if keep is None else "") + "\n"
    )
    for spy in spies:
        raw = spy.out.read_text(errors="replace") if spy.out.exists() else ""
        figures = nodes.cpu[workload]
        cpu = statistics.median(figures[spy.label])
        share = 100 * cpu / statistics.median(figures["wall"])
        print(f"## {spy.label}\n\n{_summarize(raw, cpu, share)}\n")


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
        help="instead of the table: py-spy both gateways, the Counter and the client "
        "during the cross-node small-dict stream",
    )
    parser.add_argument(
        "--profile-workload",
        choices=[*(w.key for w in WORKLOADS), RTT.key],
        default="dict",
        help="the stream (or, with rtt, the asks) --profile samples (default: the small dicts)",
    )
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="keep py-spy's raw files here"
    )
    return parse_args(parser, argv, "peers", list(PEERS))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    factor = 0.2 if args.quick else 1.0
    plan = Plan(
        workloads=tuple(wl.scaled(factor) for wl in WORKLOADS),
        rtt=RTT.scaled(factor),
        reps=args.reps,
    )
    info = machine(mybus_actors=mb.__version__, pyzmq=zmq.pyzmq_version(), libzmq=zmq.zmq_version())
    config = {**plan.config(), "quick": args.quick}
    cleanup = Cleanup()
    results: Results = {}
    names: list[str] = []
    link_seconds: float | None = None
    overtaken: dict[str, int] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        log("starting gateways alpha and beta, the actors on beta, the receivers")
        nodes = _TwoNodes(stack, cleanup)
        link_seconds = nodes.link_seconds
        overtaken = nodes.overtaken
        if args.profile:
            _profile(stack, cleanup, nodes, plan, args.profile_dir, args.profile_workload)
        else:
            subjects: list[Subject] = [nodes, *_open_peers(stack, cleanup, args.peers)]
            names = [s.name for s in subjects]
            _warm_up(subjects, plan)
            nodes.cpu.clear()
            results = _run(subjects, plan)
            cpu = nodes.cpu
    log_lines = nodes.log_lines  # filled in by the teardown
    cleanup.check_processes()
    elapsed = time.perf_counter() - started
    if not args.profile:
        print(_header(info, config, link_seconds, overtaken))
        print(REPORT.render(results, names, plan.workloads, [plan.rtt]))
        print(_cpu_report(cpu, plan))
    if log_lines:
        print("\ngateway log lines at WARNING or above:\n  " + "\n  ".join(log_lines))
    print(footer(elapsed))
    if args.json is not None:
        raw = {
            "machine": info,
            "config": config,
            "run_seconds": elapsed,
            "link_seconds": link_seconds,
            "barrier_asks_answered_short": overtaken,
            "mybus_cpu_us_per_message": cpu,
            "units": "throughput keys (b64, dict, b1m): messages/s; rtt keys: us",
            "reps": results,
            "medians": medians(results),
            "ratios_mybus_over_peer": ratios(results, names, MYBUS),
            "gateway_log_warnings": log_lines,
            "cleanup_problems": cleanup.problems,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return cleanup.report(
        f"cleanup: {len(cleanup.pids)} processes stopped by pid (both gateways exited 0 on "
        "SIGTERM); both runtime dirs empty of files and removed"
    )


if __name__ == "__main__":
    sys.exit(main())
