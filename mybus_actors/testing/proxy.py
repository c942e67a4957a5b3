"""The TCP proxy behind `LinkControl`: every connection between two nodes' gateways.

Each gateway dials its peers (and either side may dial first, or again after a cut), so
one link between nodes ``a`` and ``b`` is two listening ports here: one that ``a`` is
told is ``b`` (forwarding to ``b``'s gateway), one that ``b`` is told is ``a``. Both
are served by one thread running a selector over non-blocking sockets, so that every
verb acts on every connection of the link at once, whichever side opened it:

- normal: bytes are copied as they come, at most `CAP` held per direction of a
  connection (beyond it the proxy stops reading and TCP pushes back on the sender);
- blackhole: nothing is read, written or connected onwards, either way; connections
  stay open. As a network that drops every packet does to TCP, bytes already sent wait
  (in the sender's socket and here) and none is lost or reordered: should the link come
  back before a gateway gives the connection up (its heartbeat: three silent periods),
  they flow on. A connection accepted meanwhile reaches the other side only on restore.
- throttle: each direction (``a`` to ``b``, ``b`` to ``a``, over all connections) is
  a token bucket of the given rate, with a burst of `burst_for` (a fiftieth of a
  second's worth), empty when the throttle starts;
- abort: every connection of the link is reset (RST both ways, as a crashed router
  would); new ones are accepted at once.

Control calls run in the proxy's thread, queued; each returns once it took effect, or
raises after `CONTROL_TIMEOUT`. `close` stops the thread and closes every socket.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar, cast

__all__ = ["CAP", "CONTROL_TIMEOUT", "LinkProxy", "burst_for"]

CHUNK: Final = 64 << 10  # one recv or send
CAP: Final = 256 << 10  # bytes held per direction of a connection before reading stops
CONTROL_TIMEOUT: Final = 5.0  # the longest a control call waits for the proxy's thread
_IDLE: Final = 0.5  # the selector's longest sleep (the stop flag is checked at least this often)
_CONNECT_TIMEOUT: Final = 5.0  # a dial onwards that neither succeeds nor fails: given up
_RST: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset

T = TypeVar("T")


def burst_for(rate: float) -> float:
    """A throttled direction's bucket size: 20 ms worth of ``rate``, at least 1 KiB (so
    that small frames are not cut into single bytes, and the rate holds within 2 %/s)."""
    return max(rate / 50.0, 1024.0)


class _Flow:
    """One direction of the link's bytes (``a`` to ``b`` or back): counter and bucket."""

    def __init__(self) -> None:
        self.forwarded = 0
        self.rate: float | None = None
        self.tokens = 0.0
        self.burst = 0.0
        self.stamp = 0.0

    def throttle(self, rate: float | None, now: float) -> None:
        self.rate = rate
        self.tokens = 0.0
        self.burst = burst_for(rate) if rate is not None else 0.0
        self.stamp = now

    def allowance(self, want: int, now: float) -> tuple[int, float]:
        """(bytes that may go now, seconds until some may if none): ``want`` > 0."""
        if self.rate is None:
            return want, 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(want, int(self.burst))  # wait for a useful amount, not one byte
        if self.tokens < need:
            return 0, (need - self.tokens) / self.rate
        return min(want, int(self.tokens)), 0.0

    def sent(self, n: int) -> None:
        self.forwarded += n
        if self.rate is not None:
            self.tokens -= n


class _Pair:
    """One proxied connection: the dialler's socket and ours onwards to the target."""

    def __init__(self, client: socket.socket, target: str, up: _Flow, down: _Flow) -> None:
        self.client = client
        self.target = target  # the node dialled
        self.upstream: socket.socket | None = None
        self.connecting_since: float | None = None  # a non-blocking connect in progress
        self.to_up = bytearray()  # from the dialler, for the target
        self.to_client = bytearray()
        self.up_flow, self.down_flow = up, down
        self.client_eof = self.up_eof = False  # read EOF from that side
        self.client_shut = self.up_shut = False  # we shut down writing to that side

    @property
    def established(self) -> bool:
        return self.upstream is not None and self.connecting_since is None

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


class LinkProxy:
    """Both listening ports of the link between nodes ``a`` and ``b``, and its thread.

    `port_for(dialler)` is where ``dialler``'s gateway is told the other node listens;
    `set_target(node, port)` says where ``node``'s gateway really listens (until then,
    and after a restart until it is set again, connections to it wait).
    """

    def __init__(self, a: str, b: str, *, host: str = "127.0.0.1") -> None:
        if a == b:
            raise ValueError(f"a link joins two nodes, not {a!r} to itself")
        self.a, self.b, self.host = a, b, host
        self._flows = {(a, b): _Flow(), (b, a): _Flow()}
        self._targets: dict[str, int | None] = {a: None, b: None}
        self._listeners: dict[socket.socket, tuple[str, str]] = {}  # -> (dialler, target)
        self._ports: dict[str, int] = {}
        self._pairs: list[_Pair] = []
        self._blackholed = False
        self.accepted = 0
        self.resets = 0
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], _Reply]] = queue.SimpleQueue()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._registered: dict[socket.socket, int] = {}
        for dialler, target in ((a, b), (b, a)):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, 0))
            listener.listen(64)
            listener.setblocking(False)
            self._listeners[listener] = (dialler, target)
            self._ports[dialler] = int(listener.getsockname()[1])
            self._sel.register(listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"link {a}~{b}")
        self._thread.start()

    # -- control (any thread) --------------------------------------------------------

    def port_for(self, dialler: str) -> int:
        """The port ``dialler``'s gateway dials to reach the other node of the link."""
        return self._ports[dialler]

    def set_target(self, node: str, port: int | None) -> None:
        """Where ``node``'s gateway listens now (None: not listening; connections wait)."""
        if node not in self._targets:
            raise ValueError(f"{node!r} is not a node of link {self.a}~{self.b}")

        def apply() -> None:
            self._targets[node] = port

        self._call(apply)

    def blackhole(self) -> None:
        self._call(lambda: setattr(self, "_blackholed", True))

    def throttle(self, rate: float | None) -> None:
        def apply() -> None:
            now = time.monotonic()
            for flow in self._flows.values():
                flow.throttle(rate, now)

        self._call(apply)

    def restore(self) -> None:
        def apply() -> None:
            self._blackholed = False
            now = time.monotonic()
            for flow in self._flows.values():
                flow.throttle(None, now)

        self._call(apply)

    def abort(self) -> int:
        """Reset every connection of the link now; how many there were."""

        def apply() -> int:
            pairs = list(self._pairs)
            for pair in pairs:
                self._drop(pair, reset=True)
            self.resets += len(pairs)
            return len(pairs)

        return self._call(apply)

    def connections(self) -> int:
        """Connections open now (waiting ones included)."""
        return self._call(lambda: len(self._pairs))

    def forwarded(self, src: str, dst: str) -> int:
        """Bytes that went from ``src``'s gateway to ``dst``'s, over all connections."""
        return self._flows[(src, dst)].forwarded

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def close(self) -> None:
        """Stop the thread; close every connection and both listeners. Idempotent."""
        self._stop.set()
        self._wake()
        self._thread.join(CONTROL_TIMEOUT)
        if self._thread.is_alive():  # pragma: no cover - a selector cannot sleep this long
            raise RuntimeError(f"the proxy thread of link {self.a}~{self.b} did not stop")
        for pair in list(self._pairs):
            self._drop(pair, reset=False)
        for listener in list(self._listeners):
            self._unwatch(listener)
            listener.close()
        self._listeners.clear()
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._wake_r)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _call(self, fn: Callable[[], T]) -> T:
        if self._stop.is_set() or not self._thread.is_alive():
            raise RuntimeError(
                f"the proxy of link {self.a}~{self.b} is closed"
                + (f" (it failed: {self._failure!r})" if self._failure else "")
            )
        reply: _Reply = _Reply()
        self._calls.put((fn, reply))
        self._wake()
        if not reply.done.wait(CONTROL_TIMEOUT):
            raise RuntimeError(
                f"the proxy of link {self.a}~{self.b} did not answer within {CONTROL_TIMEOUT}s"
            )
        if reply.error is not None:
            raise reply.error
        return cast(T, reply.value)

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._serve_calls()
                timeout = self._arm(time.monotonic())
                for key, events in self._sel.select(timeout):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    self._on_event(sock, events)
        except BaseException as exc:  # a bug here must not hang the test: calls say so
            self._failure = exc
        finally:
            self._serve_calls()  # callers waiting get their answer (or the failure)

    def _serve_calls(self) -> None:
        while True:
            try:
                fn, reply = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                reply.value = fn()
            except Exception as exc:
                reply.error = exc
            reply.done.set()

    def _watch(self, sock: socket.socket, events: int) -> None:
        """Register ``sock`` for exactly ``events`` (0: not at all)."""
        old = self._registered.get(sock, 0)
        if events == old:
            return
        if not events:
            self._unwatch(sock)
        elif not old:
            self._sel.register(sock, events)
            self._registered[sock] = events
        else:
            self._sel.modify(sock, events)
            self._registered[sock] = events

    def _unwatch(self, sock: socket.socket) -> None:
        if self._registered.pop(sock, None) is not None or sock in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)

    def _arm(self, now: float) -> float:
        """Register what each socket waits for now; the selector's timeout."""
        timeout = _IDLE
        for pair in list(self._pairs):
            if self._blackholed:
                for sock in pair.sockets():
                    self._watch(sock, 0)
                continue
            if pair.upstream is None:
                port = self._targets[pair.target]
                if port is None:
                    continue
                self._dial(pair, port, now)
                if pair.upstream is None:
                    continue
            assert pair.upstream is not None
            if pair.connecting_since is not None:
                if now - pair.connecting_since > _CONNECT_TIMEOUT:
                    self._drop(pair, reset=True)
                    continue
                self._watch(pair.client, 0)
                self._watch(pair.upstream, selectors.EVENT_WRITE)
                continue
            want = {pair.client: 0, pair.upstream: 0}
            for src, dst, buf, flow, eof in (
                (pair.client, pair.upstream, pair.to_up, pair.up_flow, pair.client_eof),
                (pair.upstream, pair.client, pair.to_client, pair.down_flow, pair.up_eof),
            ):
                if not eof and len(buf) < CAP:
                    want[src] |= selectors.EVENT_READ
                if buf:
                    allowed, wait = flow.allowance(len(buf), now)
                    if allowed:
                        want[dst] |= selectors.EVENT_WRITE
                    else:
                        timeout = min(timeout, wait)
            for sock, events in want.items():
                self._watch(sock, events)
        return max(timeout, 0.0)

    def _dial(self, pair: _Pair, port: int, now: float) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = up.connect_ex((self.host, port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            up.close()
            self._drop(pair, reset=True)  # the target is down: the dialler sees a reset
            return
        pair.upstream = up
        pair.connecting_since = now if code else None

    def _on_event(self, sock: socket.socket, events: int) -> None:
        if sock is self._wake_r:
            with contextlib.suppress(BlockingIOError, OSError):
                sock.recv(4096)
            return
        if sock in self._listeners:
            self._accept(sock)
            return
        pair = next((p for p in self._pairs if sock in (p.client, p.upstream)), None)
        if pair is None:
            return
        if pair.connecting_since is not None and sock is pair.upstream:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._drop(pair, reset=True)
            else:
                pair.connecting_since = None
            return
        try:
            if events & selectors.EVENT_READ:
                self._read(pair, sock)
            if events & selectors.EVENT_WRITE and pair in self._pairs:
                self._write(pair, sock)
        except OSError:  # reset or broken on one side: the other side is reset too
            self._drop(pair, reset=True)
            return
        if pair in self._pairs and self._finished(pair):
            self._drop(pair, reset=False)

    def _accept(self, listener: socket.socket) -> None:
        dialler, target = self._listeners[listener]
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: the dialler retries
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up, down = self._flows[(dialler, target)], self._flows[(target, dialler)]
            self._pairs.append(_Pair(client, target, up, down))
            self.accepted += 1

    def _read(self, pair: _Pair, sock: socket.socket) -> None:
        from_client = sock is pair.client
        buf = pair.to_up if from_client else pair.to_client
        try:
            data = sock.recv(min(CHUNK, CAP - len(buf)) or 1)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            buf += data
            return
        if from_client:
            pair.client_eof = True
        else:
            pair.up_eof = True
        self._pass_eof(pair)

    def _write(self, pair: _Pair, sock: socket.socket) -> None:
        to_client = sock is pair.client
        buf = pair.to_client if to_client else pair.to_up
        flow = pair.down_flow if to_client else pair.up_flow
        if not buf:
            return
        allowed, _ = flow.allowance(len(buf), time.monotonic())
        if not allowed:
            return
        try:
            sent = sock.send(memoryview(buf)[:allowed])
        except (BlockingIOError, InterruptedError):
            return
        del buf[:sent]
        flow.sent(sent)
        self._pass_eof(pair)

    def _pass_eof(self, pair: _Pair) -> None:
        """A side that ended, once what it sent is through: end writing to the other."""
        if pair.client_eof and not pair.to_up and not pair.up_shut and pair.upstream is not None:
            pair.up_shut = True
            with contextlib.suppress(OSError):
                pair.upstream.shutdown(socket.SHUT_WR)
        if pair.up_eof and not pair.to_client and not pair.client_shut:
            pair.client_shut = True
            with contextlib.suppress(OSError):
                pair.client.shutdown(socket.SHUT_WR)

    @staticmethod
    def _finished(pair: _Pair) -> bool:
        return pair.client_shut and pair.up_shut

    def _drop(self, pair: _Pair, *, reset: bool) -> None:
        with contextlib.suppress(ValueError):
            self._pairs.remove(pair)
        for sock in pair.sockets():
            self._unwatch(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
            sock.close()


class _Reply:
    """A control call's outcome, handed from the proxy's thread to the caller."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: Exception | None = None
