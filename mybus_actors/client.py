"""`connect()`: a mailbox of its own for a script or a notebook, safe across threads.

A `Client` is not an actor: it has no dispatcher. It tells, asks (blocking until the
reply or the timeout) and may `receive` what actors tell it. Whichever thread waits
pumps the mailbox for all of them; only one thread sleeps on the doorbell at a time.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
import time
from collections import deque
from typing import Any, Final

from mybus_actors import codec
from mybus_actors.address import format_address, parse_address
from mybus_actors.asks import AskFuture, PendingAsks, error_from_reply
from mybus_actors.codec import Kind
from mybus_actors.errors import ActorNotFound, AskTimeout, MailboxClosed, SerializationError
from mybus_actors.mailbox import Endpoint
from mybus_actors.registry import Registry, default_node, resolve_runtime_dir, validate_name
from mybus_actors.routing import send_to_node

__all__ = ["Client", "connect"]

_CLIENT_IDS = itertools.count()
_SLICE: Final = 0.05  # a waiter re-checks at least this often whether its reply came


class Client:
    """A mailbox for code that is not an actor. Use `connect()` to make one."""

    def __init__(
        self,
        name: str | None = None,
        *,
        node: str | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        spin: float = 200e-6,
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
        self._asks = PendingAsks()
        self._inbox: deque[tuple[str, Any]] = deque()
        self.dead_letters = 0
        self.last_sender: str | None = None  # who sent what `receive` returned last
        self._closed = False

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
            MailboxClosed: this client is closed.
        """
        self._send(to, message, timeout, block, Kind.USER, 0)

    def ask(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Send ``message`` and wait for the reply.

        Raises:
            AskTimeout: no reply within ``timeout`` (a later reply is discarded).
            ActorError: the actor's receive raised (its traceback in the message).
            InvalidAddress, ActorNotFound, MailboxFull, SerializationError: as `tell`.
        """
        deadline = time.monotonic() + timeout
        corr, fut = self._asks.new(f"ask to {to}")
        try:
            self._send(to, message, timeout, True, Kind.ASK, corr)
            self._wait_for(fut, deadline)
        finally:
            self._asks.pop(corr)
        if not fut.done():
            raise AskTimeout(f"no reply from {to} within {timeout}s")
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
            else:
                send_to_node(
                    self._endpoint, self.name, node, name, meta, body,
                    here=self.node, timeout=timeout, block=block,
                )  # fmt: skip

    # -- receiving -----------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Any:
        """The next message an actor told (or replied by tell to) this client.

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._check_open()
                if not self._inbox:
                    self._drain()
                if self._inbox:
                    sender, message = self._inbox.popleft()
                    self.last_sender = sender
                    return message
            remaining = _SLICE * 20 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.address} received nothing within {timeout}s")
            self._sleep(remaining)

    def _wait_for(self, fut: AskFuture, deadline: float) -> None:
        while not fut.done():
            with self._lock:
                self._check_open()
                self._drain()
            if fut.done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._sleep(remaining)

    def _sleep(self, remaining: float) -> None:
        """Spin briefly, then sleep on the doorbell (one thread at a time)."""
        if self._endpoint.spin_for(min(self.spin, remaining)):
            return
        if not self._pump.acquire(timeout=min(remaining, _SLICE)):
            return  # another thread sleeps for us; re-check our own reply
        try:
            with self._lock:
                if self._closed or not self._endpoint.prepare_sleep():
                    return
                bound = self._endpoint.sleep_bound(min(remaining, _SLICE))
            try:
                select.select([self._endpoint.bell_fd], [], [], bound)
            finally:
                with self._lock:
                    if not self._closed:
                        self._endpoint.finish_sleep()
        finally:
            self._pump.release()

    def _drain(self) -> int:
        """Read the rings (lock held): replies to their asks, the rest to the inbox."""
        count = 0
        for sender, _receiver, items in self._endpoint.poll_batches():
            for meta, payload in items:
                count += 1
                try:
                    kind, origin, corr, message = codec.decode_fields(meta, payload)
                except SerializationError as exc:
                    self._inbox.append((sender, exc))
                    continue
                if kind == Kind.REPLY:
                    self._asks.resolve(corr, message)
                elif kind == Kind.ERROR_REPLY:
                    address = format_address(*parse_address(origin or sender, self.node))
                    self._asks.fail(corr, error_from_reply(address, message))
                elif kind == Kind.USER:
                    self._inbox.append((origin or sender, message))
                # SYSTEM messages (watch requests, dead-letter returns) mean nothing here.
        return count

    def _undelivered(self, sender: str, receiver: str, lost: list[tuple[int, bytes]]) -> None:
        self.dead_letters += len(lost)
        for meta, payload in lost:
            if meta & 7 == Kind.ASK:
                try:
                    env, _ = codec.decode(meta, payload)
                except SerializationError:
                    continue
                self._asks.fail(env.correlation_id, ActorNotFound(f"{receiver} stopped"))

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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    name: str | None = None,
    *,
    node: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
) -> Client:
    """A `Client` (a context manager): a mailbox for a script or a notebook.

    Raises:
        InvalidAddress: ``name`` is malformed.
        NameTaken: a live actor or client holds ``name``.
    """
    return Client(name, node=node, runtime_dir=runtime_dir)
