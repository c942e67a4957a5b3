"""Actor classes and process helpers for test_gateway.py (importable by spawned actors).

`spawn` hands the parent's ``sys.path`` to the child as PYTHONPATH, so a class defined
here travels by reference (``gateway_lib.Echo``). Every wait here is bounded: a log
line awaited with a deadline, a proxy that stops when told, a gateway stopped by pid.

Run as a script, it is the small program test_gateway.py starts inside a network
namespace (``ip netns exec NS python gateway_lib.py ...``): ``host-echo`` spawns an
`Echo` and keeps it until a line arrives on stdin; ``ask`` asks once and prints the reply.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from waiting import wait_for_file

import mybus_actors as mb
from mybus_actors.testing.gateway_process import GATEWAY_COMMAND as GATEWAY_COMMAND
from mybus_actors.testing.gateway_process import GatewayProcess
from mybus_actors.testing.gateway_process import LogReader as LogReader
from mybus_actors.testing.gateway_process import child_pythonpath as child_pythonpath
from mybus_actors.testing.gateway_process import free_port as free_port

LIMIT = 30.0  # the longest any actor here waits on an ask of its own

# The gateway process, its log and the helpers around it are the test kit's
# (mybus_actors.testing): the project's tests run on what its users get.
GatewayProc = GatewayProcess


# -- actors ----------------------------------------------------------------------------


class Echo(mb.Actor):
    """Replies what it gets; a few verbs report what the actor saw.

    ``notify`` (an address) hears ("dead", message, reason) for every dead letter.
    """

    def __init__(self, notify: str | None = None) -> None:
        self.notify = notify

    def on_dead_letter(self, message: Any, reason: str) -> None:
        if self.notify is not None:
            self.tell(self.notify, ("dead", message, reason))

    def receive(self, message: Any) -> None:
        match message:
            case ("whoami",):
                self.reply({"address": self.address, "sender": self.sender, "pid": os.getpid()})
            case ("report_sender", to):
                # Tells a third party who sent this (a reply would go back to the sender).
                self.tell(to, ("sender was", self.sender))
            case ("forward", to, payload):
                self.tell(to, payload)
                self.reply("forwarded")
            case ("size", data):
                self.reply((len(data), zlib.crc32(data)))
            case _:
                self.reply(message)


class Numbered(mb.Actor):
    """On ("go", to, n): tells ``to`` (name, i) for i in range(n), then (name, "end");
    ("go", to, n, "plain") tells them without a timeout (the runtime's plain tell, which
    on the native core is one C call once the address is known)."""

    def receive(self, message: Any) -> None:
        match message:
            case ("go", to, n, *how):
                plain = how == ["plain"]
                for i in range(n):
                    if plain:
                        self.tell(to, (self.name, i))
                    else:
                        self.tell(to, (self.name, i), timeout=LIMIT)
                self.tell(to, (self.name, "end"), timeout=LIMIT)
                self.reply(("done", self.name))
            case _:
                raise ValueError(f"Numbered does not understand {message!r}")


class Journaled(mb.Actor):
    """Tells ``to`` (name, i) for i = 0, 1, ... (from where a journal of an earlier
    incarnation stopped), appending each i that `tell` accepted to ``journal`` and each
    dead letter's i to ``journal + ".dead"``: written with O_APPEND before the next tell,
    so a SIGKILL never loses what was accepted. ("go", to, n, pace) starts it (pace:
    seconds between tells, 0 for flat out); it sends in slices of 50 ms, so that "stop"
    and dead letters get in between; a tell that raises MailboxFull is tried again 10 ms
    later (and counted). "stats?" answers {"sent", "full", "next"}.
    """

    def __init__(self, journal: str, pad: int = 0) -> None:
        self.journal = journal
        self.pad = b"x" * pad
        self.full = 0
        self.sent = 0
        self.to = ""
        self.end = 0
        self.pace = 0.0
        with open(journal, "a+") as f:
            f.seek(0)
            done = [int(x) for x in f.read().split()]
        # An incarnation killed inside a tell may have published its next number without
        # writing it down: a successor skips that one, so no number is sent twice.
        self.next = max(done) + 2 if done else 0
        self.fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.dead_fd = os.open(journal + ".dead", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def on_dead_letter(self, message: Any, reason: str) -> None:
        if isinstance(message, tuple) and len(message) >= 2:
            os.write(self.dead_fd, f"{message[1]}\n".encode())

    def receive(self, message: Any) -> None:
        match message:
            case ("go", to, n, pace):
                self.to, self.end, self.pace = to, self.next + n, pace
                self.reply("going")
                self._slice()
            case "more":
                self._slice()
            case "stats?":
                self.reply({"sent": self.sent, "full": self.full, "next": self.next})
            case _:
                raise ValueError(f"Journaled does not understand {message!r}")

    def _slice(self) -> None:
        until = time.monotonic() + 0.05
        while self.next < self.end and time.monotonic() < until:
            message = (self.name, self.next, self.pad) if self.pad else (self.name, self.next)
            try:
                self.tell(self.to, message, timeout=0.2)
            except mb.MailboxFull:
                self.full += 1
                self.send_after(0.01, "more")
                return
            os.write(self.fd, f"{self.next}\n".encode())
            self.next += 1
            self.sent += 1
            if self.pace:
                self.send_after(self.pace, "more")
                return
        if self.next < self.end:
            self.send_after(0.0, "more")

    def on_stop(self) -> None:
        os.close(self.fd)
        os.close(self.dead_fd)


def tally_journal(path: str) -> dict[str, list[int]]:
    """What a `Tally` with a journal got, per sender address, in arrival order."""
    got: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            sender, i = line.split()
            got.setdefault(sender, []).append(int(i))
    return got


def until(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check()`` until it returns something true (returned), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what} (last: {value!r})")
        time.sleep(0.02)


def journal(path: str) -> tuple[list[int], list[int]]:
    """(accepted, dead-lettered) numbers a `Journaled` sender wrote (all incarnations)."""

    def read(p: str) -> list[int]:
        try:
            with open(p) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    return read(path), read(path + ".dead")


class Tally(mb.Actor):
    """Keeps what arrives as (producer, i) per sender address, in order; reads one
    message per ``delay`` seconds (a slow receiver when > 0). "report" answers them."""

    def __init__(self, delay: float = 0.0, journal: str | None = None) -> None:
        self.delay = delay
        self.got: dict[str, list[int]] = {}
        self.fd = (
            None if journal is None
            else os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        )  # fmt: skip

    def receive(self, message: Any) -> None:
        if message == "report":
            self.reply(self.got)
            return
        if message == "count?":
            self.reply(sum(map(len, self.got.values())))
            return
        i = message[1]
        self.got.setdefault(str(self.sender), []).append(i)
        if self.fd is not None:  # what a SIGKILL would otherwise take with it
            os.write(self.fd, f"{self.sender} {i}\n".encode())
        if self.delay:
            time.sleep(self.delay)


class Collector(mb.Actor):
    """Collects (producer, i) per sender address; tells ``notify`` once all ended.

    "report" answers {sender address: [i, ...]} in arrival order.
    """

    def __init__(self, producers: list[str], notify: str) -> None:
        self.expected = set(producers)
        self.ended: set[str] = set()
        self.notify = notify
        self.got: dict[str, list[int]] = {}
        self.misnamed: list[tuple[str | None, str]] = []

    def receive(self, message: Any) -> None:
        if message == "report":
            self.reply({"got": self.got, "misnamed": self.misnamed})
            return
        producer, i = message
        sender = self.sender
        if sender is None or not sender.endswith("/" + producer):
            self.misnamed.append((sender, producer))
        if i == "end":
            self.ended.add(producer)
            if self.ended == self.expected:
                self.tell(self.notify, ("all ended", sorted(self.ended)))
            return
        self.got.setdefault(str(sender), []).append(i)


class Sink(mb.Actor):
    """Takes bytes: tells ``notify`` ("arrived", monotonic time, length, crc32) for each.

    Logs what it gets in order ("bytes", length) or the message itself; "log?" answers
    the log. ("hold", path) keeps it busy until ``path`` exists (at most `LIMIT` s).
    """

    def __init__(self, notify: str) -> None:
        self.notify = notify
        self.log: list[Any] = []

    def receive(self, message: Any) -> None:
        if isinstance(message, bytes | bytearray | memoryview):
            arrived = time.monotonic()  # first: the crc below takes a while for 100 MiB
            self.log.append(("bytes", len(message)))
            self.tell(self.notify, ("arrived", arrived, len(message), zlib.crc32(message)))
            return
        match message:
            case "log?":
                self.reply(self.log)
            case ("hold", path):
                self.tell(self.notify, ("holding",))
                wait_for_file(path)
            case _:
                self.log.append(message)


class BigSender(mb.Actor):
    """("go", sink, size): tells ``sink`` ``size`` bytes; replies {"start": t, "told": t}
    (monotonic times: before the tell, and once it returned)."""

    def receive(self, message: Any) -> None:
        match message:
            case ("go", sink, size):
                start = time.monotonic()
                self.tell(sink, pattern(size), timeout=LIMIT)
                self.reply({"start": start, "told": time.monotonic()})
            case _:
                raise ValueError(f"BigSender does not understand {message!r}")


class Watcher(mb.Actor):
    """("watch", address) watches it, then has the target (an `Echo`) tell ``forward``
    ("synced", address) once it has read the watch request (same path, FIFO); every
    `Terminated` is forwarded to ``forward``."""

    def __init__(self, forward: str) -> None:
        self.forward = forward

    def receive(self, message: Any) -> None:
        if isinstance(message, mb.Terminated):
            self.tell(self.forward, message)
            return
        match message:
            case ("watch", address):
                self.watch(address)
                self.tell(address, ("forward", self.forward, ("synced", address)))
                self.reply("watching")
            case "forwarded":
                pass  # the target's answer to the forward request above
            case _:
                raise ValueError(f"Watcher does not understand {message!r}")


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike (cheap to make, so a slip shows in a crc)."""
    block = bytes(range(256)) * 4096  # 1 MiB
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


# -- processes -------------------------------------------------------------------------


def wait_released(runtime_dir: Path, timeout: float = 10.0) -> None:
    """Until every ring into the gateway for another node is released (the other node
    acknowledged all of it): what a test waits for before it cuts a link for good."""
    from mybus_actors import ring
    from mybus_actors.registry import is_forward_ring

    deadline = time.monotonic() + timeout
    while True:
        unreleased = []
        for path in (runtime_dir / "rings").iterdir():
            if is_forward_ring(path.name):
                with contextlib.suppress(FileNotFoundError, ValueError):
                    reader = ring.Reader(bytearray(path.read_bytes()))
                    if reader.unreleased:
                        unreleased.append(path.name)
        if not unreleased:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"not acknowledged within {timeout}s: {unreleased}")
        time.sleep(0.005)


class _Pair:
    """Both sockets of one forwarded connection; the second copier to finish closes them."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.socks = (a, b)
        self._done = 0
        self._lock = threading.Lock()

    def shut(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def finished(self) -> bool:
        with self._lock:
            self._done += 1
            last = self._done == 2
        if last:
            for s in self.socks:
                s.close()
        return last


class CuttingProxy:
    """A TCP forwarder to ``target`` that cuts every connection every ``period`` seconds,
    and (with ``every_bytes``) each time that many more bytes went through it, either
    way: cuts that land while traffic flows, however fast it flows and whichever side
    dialled the connection it flows on (a stream from the target's side rides a
    connection the other side may have opened).

    Threads: one accepts, two per connection copy bytes, one cuts. `close` stops them all.
    """

    def __init__(
        self, target: tuple[str, int], period: float, every_bytes: int | None = None
    ) -> None:
        self.target = target
        self.period = period
        self.every_bytes = every_bytes
        self.forwarded = 0  # bytes through it, both ways, over all connections
        self._stalled_until = 0.0  # `stall`: nothing is forwarded before then
        self.accepted = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._copiers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._threads = [
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._cutter, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self.accepted += 1
                self._pairs.add(pair)
                for src, dst in ((client, upstream), (upstream, client)):
                    t = threading.Thread(target=self._copy, args=(pair, src, dst), daemon=True)
                    t.start()
                    self._copiers.append(t)

    def _copy(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(256 << 10)
                if not data:
                    break
                while time.monotonic() < self._stalled_until and not self._stop.is_set():
                    time.sleep(0.01)  # a stalled path: the bytes wait, TCP pushes back
                dst.sendall(data)
                if self.every_bytes:
                    with self._lock:
                        before = self.forwarded
                        self.forwarded += len(data)
                        crossed = before // self.every_bytes != self.forwarded // self.every_bytes
                    if crossed:
                        self.cut()
        except OSError:
            pass
        finally:
            pair.shut()
            if pair.finished():
                with self._lock:
                    self._pairs.discard(pair)

    def _cutter(self) -> None:
        while not self._stop.wait(self.period):
            self.cut()

    def stall(self, seconds: float) -> None:
        """Forward nothing, either way, for ``seconds`` (connections stay open)."""
        self._stalled_until = time.monotonic() + seconds

    def cut(self) -> None:
        """Shut every forwarded connection down now (both ends see it end)."""
        with self._lock:
            pairs = list(self._pairs)
            if pairs:
                self.cuts += 1
        for pair in pairs:
            pair.shut()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._listener.close()
        self.cut()
        with self._lock:
            copiers = list(self._copiers)
        for t in copiers:
            t.join(5)


# -- run inside a network namespace ----------------------------------------------------


def _host_echo(node: str, runtime_dir: str) -> int:
    """Spawn Echo as ``echo``; keep it until a line (or EOF) on stdin; stop it."""
    from gateway_lib import Echo  # by reference in the child, like the tests' actors

    ref = mb.spawn(Echo, "echo", node=node, runtime_dir=runtime_dir)
    try:
        print("ready", ref.address, flush=True)
        sys.stdin.readline()
    finally:
        clean = ref.stop(timeout=5)
        from mybus_actors.ref import close_clients

        close_clients()
    return 0 if clean else 1


def _ask(node: str, runtime_dir: str, to: str, message: str) -> int:
    with mb.connect("asker", node=node, runtime_dir=runtime_dir) as me:
        answer = me.ask(to, ("whoami",), timeout=10)
        echoed = me.ask(to, message, timeout=10)
    print(f"sender={answer['sender']} reply={echoed}", flush=True)
    return 0


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    if verb == "host-echo":
        sys.exit(_host_echo(*rest))
    if verb == "ask":
        sys.exit(_ask(*rest))
    sys.exit(f"unknown verb {verb!r}")
