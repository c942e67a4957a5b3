"""`connect()`: a mailbox of its own for a script or a notebook, safe across threads.

A `Client` is not an actor: it has no dispatcher. It tells, asks (blocking until the
reply or the timeout) and may `receive` what actors tell it. Whichever thread waits
pumps the mailbox for all of them; only one thread sleeps on the doorbell at a time.

It hears what an actor would about its messages: a tell that comes back undelivered
(its receiver stopped or died before reading it, or a gateway found no such actor or
node) counts in `Client.dead_letters` and reaches ``on_dead_letter(message, reason)``,
called outside the client's lock (it may tell again); an ask that comes back fails at
once with `ActorNotFound`. Dead letters are noticed whenever the client pumps its
mailbox (a tell, an ask, a receive).

A waiting thread spins for ``spin`` seconds before it sleeps on the doorbell. For an
ask's reply it spins longer when this client's replies usually come within a
millisecond but after the plain spin (another node's, through two gateways): through
1.5x the usual round trip (`asks.RoundTrips`), which on a busy host meets the reply
sooner than a sleep and a wake-up would.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from mybus_actors import codec
from mybus_actors.address import format_address, parse_address
from mybus_actors.asks import AskFuture, PendingAsks, RoundTrips, error_from_reply
from mybus_actors.codec import Kind
from mybus_actors.errors import (
    ActorNotFound,
    AskTimeout,
    MailboxClosed,
    SerializationError,
)
from mybus_actors.mailbox import Endpoint, Payload
from mybus_actors.registry import (
    Registry,
    default_node,
    forward_name,
    resolve_runtime_dir,
    validate_name,
)
from mybus_actors.routing import send_to_node

__all__ = ["Client", "DeadLetterHook", "connect"]

_log = logging.getLogger(__name__)
_CLIENT_IDS = itertools.count()
DeadLetterHook = Callable[[Any, str], object]
_RINGS: Final = 4096  # addresses a client remembers the ring of (then it starts over)
_SLICE: Final = 0.05  # a waiter re-checks at least this often whether its reply came


class Client:
    """A mailbox for code that is not an actor. Use `connect()` to make one.

    Attributes:
        dead_letters: messages of ours that came back undelivered: tells (each also
            passed to ``on_dead_letter``) and asks (each failed with `ActorNotFound`),
            whether the receiver was on this node or another.
        on_dead_letter: ``fn(message, reason)`` for every tell that came back, or None
            (then each is logged as a warning, as an actor's default hook does).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        node: str | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        spin: float = 200e-6,
        on_dead_letter: DeadLetterHook | None = None,
    ) -> None:
        self.node = validate_name(node) if node is not None else default_node()
        registry = Registry(resolve_runtime_dir(runtime_dir, self.node))
        if name is None:
            name = f"_client-{os.getpid()}-{next(_CLIENT_IDS)}"
        self._endpoint = Endpoint(registry, spin=spin, on_undelivered=self._undelivered)
        try:
            self._endpoint.bind(validate_name(name))
        except BaseException:
            self._endpoint.close()
            raise
        self.name = name
        self.address = format_address(self.node, name)
        self.spin = spin
        self._lock = threading.Lock()  # every call into the endpoint
        self._pump = threading.Lock()  # the one thread that sleeps on the doorbell
        self._woken = threading.Condition()  # ...tells the others each time it wakes
        self._wakeups = 0
        # How another thread wakes the sleeper: a drain of its own may have taken the
        # records (and the bell's byte) that the sleeper waits for. Without a descriptor
        # to spare, the sleeper wakes within _SLICE anyway.
        try:
            self._nudge: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            self._nudge = None
        self._asks = PendingAsks()
        self._round_trips = RoundTrips()  # how long our asks take: how long to spin for one
        self._inbox: deque[tuple[str, Any]] = deque()
        self._dead: deque[tuple[Any, str]] = deque()  # for on_dead_letter, outside the lock
        self.on_dead_letter = on_dead_letter
        self.dead_letters = 0
        self.last_sender: str | None = None  # who sent what `receive` returned last
        self._closed = False
        # address -> (the name its records go to, on another node): see `tell`.
        self._rings: dict[str, tuple[str, bool]] = {}

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    # -- sending -------------------------------------------------------------------

    def tell(self, to: str, message: Any, *, timeout: float = 10.0, block: bool = True) -> None:
        """Send ``message`` to the actor at ``to``.

        Raises:
            InvalidAddress: ``to`` is malformed.
            ActorNotFound: no such actor, or its node is not reachable.
            MailboxFull: its mailbox stayed full for ``timeout`` (``block=False``: at once).
            SerializationError: ``message`` cannot be serialized.
            ResourceExhausted: out of descriptors or shared memory (nothing was sent).
            MailboxClosed: this client is closed.
        """
        # The common case, an address told before, in one frame: its ring's name is
        # remembered (no parse, no routing call), and the record goes to the endpoint.
        ring = self._rings.get(to) if type(to) is str else None
        if ring is None:
            try:
                self._send(to, message, timeout, block, Kind.USER, 0)
            finally:
                self._hand_dead_letters()
            return
        name, remote = ring
        meta, body = codec.encode(message, sender=self.address) if remote else codec.encode(message)
        try:
            with self._lock:
                if self._closed:
                    raise MailboxClosed(f"client {self.address} is closed")
                try:
                    self._endpoint.send(self.name, name, body, meta, timeout=timeout, block=block)
                except ActorNotFound:
                    if not remote:
                        raise
                    # No gateway: `send_to_node` waits for a restarted one, or says why.
                    node, actor = parse_address(to, self.node)
                    send_to_node(
                        self._endpoint, self.name, node, actor, meta, body,
                        here=self.node, timeout=timeout, block=block,
                    )  # fmt: skip
        finally:
            if self._dead:
                self._hand_dead_letters()

    def ask(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Send ``message`` and wait for the reply.

        Raises:
            AskTimeout: no reply within ``timeout`` (a later reply is discarded).
            ActorError: the actor's receive raised, or it could not decode the ask (the
                message names why, e.g. the class that failed to load there).
            ActorNotFound: no such actor, or the ask came back undelivered (at once).
            InvalidAddress, MailboxFull, SerializationError, ResourceExhausted: as `tell`.
        """
        start = time.monotonic()
        deadline = start + timeout
        corr, fut = self._asks.new(f"ask to {to}")
        try:
            self._send(to, message, timeout, True, Kind.ASK, corr)
            self._wait_for(fut, deadline, self._round_trips.spin(self.spin))
        finally:
            self._asks.pop(corr)
            self._hand_dead_letters()
        if not fut.done():
            raise AskTimeout(f"no reply from {to} within {timeout}s")
        self._round_trips.observe(time.monotonic() - start)
        return fut.result()

    def _send(
        self, to: str, message: Any, timeout: float, block: bool, kind: int, corr: int
    ) -> None:
        node, name = parse_address(to, self.node)
        if node == self.node:
            meta, body = codec.encode(message, kind=kind, correlation_id=corr)
        else:  # the record names us in full, for replies to come back through gateways
            meta, body = codec.encode(
                message, kind=kind, sender=self.address, correlation_id=corr
            )
        with self._lock:
            self._check_open()
            if node == self.node:
                self._endpoint.send(self.name, name, body, meta, timeout=timeout, block=block)
                ring = (name, False)
            else:
                send_to_node(
                    self._endpoint, self.name, node, name, meta, body,
                    here=self.node, timeout=timeout, block=block,
                )  # fmt: skip
                ring = (forward_name(node, name), True)
        if len(self._rings) >= _RINGS:
            self._rings.clear()
        self._rings[to] = ring

    # -- receiving -----------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Any:
        """The next message an actor told (or replied by tell to) this client.

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            drained = 0
            with self._lock:
                self._check_open()
                if not self._inbox:
                    drained = self._drain()
                got = self._inbox.popleft() if self._inbox else None
                if got is not None:
                    self.last_sender = got[0]
            if drained:
                self._wake_waiters()
            self._hand_dead_letters()
            if got is not None:
                return got[1]
            remaining = _SLICE * 20 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.address} received nothing within {timeout}s")
            self._sleep(remaining, lambda: bool(self._inbox))

    def _wait_for(self, fut: AskFuture, deadline: float, spin: float) -> None:
        while not fut.done():
            with self._lock:
                self._check_open()
                drained = self._drain()
            if drained:
                self._wake_waiters()  # the replies may be other threads'
            self._hand_dead_letters()
            if fut.done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._sleep(remaining, fut.done, spin)

    def _wake_waiters(self) -> None:
        """Something was read: every waiting thread looks whether it was its own."""
        with self._woken:
            self._wakeups += 1
            self._woken.notify_all()
        if self._nudge is not None and self._pump.locked():
            with contextlib.suppress(OSError):  # full (already nudged) or closed
                os.eventfd_write(self._nudge, 1)

    def _sleep(
        self, remaining: float, done: Callable[[], bool] = lambda: False, spin: float | None = None
    ) -> None:
        """Spin briefly (``spin``, else the client's), then sleep on the doorbell (one
        thread at a time).

        A thread that finds another on the doorbell waits until that one wakes or a
        drain anywhere read something (it may be our reply), whichever comes first,
        not for a lock the other may take again at once; ``done`` says whether what we
        wait for came meanwhile.
        """
        if self._endpoint.spin_for(min(self.spin if spin is None else spin, remaining)):
            return
        with self._woken:
            seen = self._wakeups
        if not self._pump.acquire(blocking=False):
            with self._woken:
                if self._wakeups == seen and not done():
                    self._woken.wait(min(remaining, _SLICE))
            return
        try:
            if self._wakeups != seen or done():
                return  # another thread read something since we looked: look again
            with self._lock:
                if self._closed or not self._endpoint.prepare_sleep():
                    return
                bound = self._endpoint.sleep_bound(min(remaining, _SLICE))
            fds = [self._endpoint.bell_fd]
            if self._nudge is not None:
                fds.append(self._nudge)
            try:
                ready, _, _ = select.select(fds, [], [], bound)
                if self._nudge is not None and self._nudge in ready:
                    with contextlib.suppress(OSError):
                        os.eventfd_read(self._nudge)
            finally:
                with self._lock:
                    if not self._closed:
                        self._endpoint.finish_sleep()
        finally:
            self._pump.release()
            self._wake_waiters()

    def _drain(self) -> int:
        """Read the rings (lock held): replies to their asks, the rest to the inbox."""
        count = 0
        for sender, _receiver, items in self._endpoint.poll_batches():
            for meta, payload in items:
                count += 1
                try:
                    kind, origin, corr, message = codec.decode_fields(meta, payload)
                except SerializationError as exc:
                    self._undecodable(sender, meta, payload, exc)
                    continue
                if kind == Kind.REPLY:
                    self._asks.resolve(corr, message)
                elif kind == Kind.ERROR_REPLY:
                    address = format_address(*parse_address(origin or sender, self.node))
                    error = error_from_reply(address, message)
                    if self._asks.fail(corr, error) and isinstance(error, ActorNotFound):
                        self.dead_letters += 1  # a gateway or a stopping actor bounced it
                elif kind == Kind.USER:
                    self._inbox.append((origin or sender, message))
                elif kind == Kind.SYSTEM:
                    self._system(message)
        return count

    def _undecodable(self, sender: str, meta: int, payload: Payload, exc: Exception) -> None:
        """A reply fails its ask with the reason; anything else is handed to `receive`."""
        try:
            kind, _origin, corr = codec.peek(meta, payload)
        except SerializationError:
            kind, corr = -1, 0
        if kind in (Kind.REPLY, Kind.ERROR_REPLY) and self._asks.fail(corr, exc):
            return
        self._inbox.append((sender, exc))

    def _system(self, message: Any) -> None:
        """Dead-letter returns; the rest (watch requests) mean nothing to a client."""
        verb = message[0] if isinstance(message, tuple) and message else None
        if verb == "dead" and len(message) == 3:  # from a runtime: the message itself
            self._dead_letter(message[1], str(message[2]))
        elif verb == "dead-raw" and len(message) == 4:
            # From a gateway, which never unpickles what it relays: decode it here.
            try:
                original = codec.decode_message(int(message[1]), bytes(message[2]))
            except SerializationError:
                original = message[2]
            self._dead_letter(original, str(message[3]))

    def _dead_letter(self, message: Any, reason: str) -> None:
        self.dead_letters += 1
        self._dead.append((message, reason))

    def _hand_dead_letters(self) -> None:
        """Run ``on_dead_letter`` for what came back (outside the lock: it may tell)."""
        while self._dead:
            try:
                message, reason = self._dead.popleft()
            except IndexError:  # another thread took the last one
                return
            hook = self.on_dead_letter
            if hook is None:
                _log.warning("%s: dead letter %r (%s)", self.address, message, reason)
                continue
            try:
                hook(message, reason)
            except Exception:
                _log.exception("%s: on_dead_letter raised", self.address)

    def _undelivered(self, sender: str, receiver: str, lost: list[tuple[int, bytes]]) -> None:
        """Our endpoint took back what a receiver that stopped or died never read."""
        reason = f"{format_address(self.node, receiver)} stopped before reading it"
        for meta, payload in lost:
            try:
                env, message = codec.decode(meta, payload)
            except SerializationError:
                continue
            if env.kind == Kind.ASK:
                self.dead_letters += 1
                self._asks.fail(env.correlation_id, ActorNotFound(reason))
            elif env.kind == Kind.USER:
                self._dead_letter(message, reason)

    # -- lifetime ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MailboxClosed(f"client {self.address} is closed")

    def close(self) -> None:
        """Release the name, the rings and the doorbell. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._endpoint.close()
        if self._nudge is not None:
            self._wake_waiters()
            with self._pump:  # no thread sleeps on it any more
                os.close(self._nudge)
                self._nudge = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    name: str | None = None,
    *,
    node: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    on_dead_letter: DeadLetterHook | None = None,
) -> Client:
    """A `Client` (a context manager): a mailbox for a script or a notebook.

    Args:
        name: the client's name (default: a private ``_client-<pid>-<n>``).
        node: this node (default `MYBUS_NODE`, else the short host name).
        runtime_dir: the runtime directory (default `MYBUS_RUNTIME_DIR`, else /dev/shm).
        on_dead_letter: called as ``fn(message, reason)`` for every tell that comes
            back undelivered, from this node or another (see `Client.dead_letters`).

    Example::

        seen = []
        with mb.connect(on_dead_letter=lambda m, why: seen.append((m, why))) as me:
            me.tell("beta/nosuch", "hello")  # beta's gateway sends it back: seen, counted

    Raises:
        InvalidAddress: ``name`` is malformed.
        NameTaken: a live actor or client holds ``name``.
        ResourceExhausted: out of descriptors or shared memory for its mailbox.
    """
    return Client(name, node=node, runtime_dir=runtime_dir, on_dead_letter=on_dead_letter)
