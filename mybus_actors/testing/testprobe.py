"""`Probe`: a mailbox in the test that actors tell, with expectations (Akka's TestProbe).

(Not `probe.py`: a submodule of that name would shadow the `probe` fixture, an
attribute of the same name on this package.)

A probe is a client (`mybus_actors.connect`) on one node: hand its `address` to an
actor (or let it be the ``sender`` of what the probe tells), then assert on what comes
back. Every expectation is bounded by its timeout; none sleeps longer than it must::

    def test_echo(mybus_node, probe):
        echo = mybus_node.spawn(Echo, "echo")
        probe.tell(echo.address, "hi")
        assert probe.expect("hi", timeout=5) == "hi"
        probe.expect_no_message(0.2)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from mybus_actors.client import Client

__all__ = ["DEFAULT_TIMEOUT", "NO_MESSAGE_WINDOW", "Probe"]

DEFAULT_TIMEOUT: Final = 3.0  # as Akka's single-expect default
NO_MESSAGE_WINDOW: Final = 0.5  # expect_no_message's default quiet window


class _Nothing:
    """What `_next` returns when nothing came (a message may be None)."""


_NOTHING: Final = _Nothing()


class Probe:
    """A test's mailbox with expectations; wraps (and owns) a `Client`.

    Dead letters of what the probe told (tells that came back undelivered) are kept in
    `dead_letters`, as (message, reason).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.dead_letters: list[tuple[Any, str]] = []
        self._dead_seen = 0  # how many of them expect_dead_letter has returned
        earlier = client.on_dead_letter

        def heard(message: Any, reason: str) -> None:
            self.dead_letters.append((message, reason))
            if earlier is not None:
                earlier(message, reason)

        client.on_dead_letter = heard

    def __repr__(self) -> str:
        return f"<Probe {self.address}>"

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def address(self) -> str:
        """The probe's full address, ``node/name``: what an actor tells."""
        return self.client.address

    @property
    def node(self) -> str:
        return self.client.node

    @property
    def last_sender(self) -> str | None:
        """Who sent the message the probe received last, as a full address (``node/name``,
        also for a sender on this node); None: the runtime, or nobody yet."""
        return self._qualified(self.client.last_sender)

    def _qualified(self, address: str | None) -> str | None:
        if address is None or "/" in address:
            return address
        return f"{self.node}/{address}"

    def tell(self, to: str, message: Any, *, timeout: float = 10.0) -> None:
        """Tell ``to`` (the probe is the sender: a reply comes back to the probe)."""
        self.client.tell(to, message, timeout=timeout)

    def ask(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Ask ``to`` and return the reply (as `Client.ask`; not a received message)."""
        return self.client.ask(to, message, timeout=timeout)

    def _next(self, timeout: float) -> Any:
        try:
            return self.client.receive(timeout=max(timeout, 0.0))
        except TimeoutError:
            return _NOTHING

    def _from(self) -> str:
        return f" from {self.last_sender}" if self.last_sender else ""

    def receive(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next message, whatever it is.

        Raises:
            AssertionError: nothing came within ``timeout``.
        """
        got = self._next(timeout)
        if got is _NOTHING:
            raise AssertionError(f"{self.address}: no message within {timeout}s")
        return got

    def expect(
        self, message: Any, timeout: float = DEFAULT_TIMEOUT, *, sender: str | None = None
    ) -> Any:
        """The next message, which must equal ``message`` (and come from ``sender``, a
        bare name on this node or a full address, when given); returns it.

        Raises:
            AssertionError: nothing came within ``timeout``, or something else came
                (named in the error; it is consumed).
        """
        got = self._next(timeout)
        if got is _NOTHING:
            raise AssertionError(
                f"{self.address}: expected {message!r} within {timeout}s, received nothing"
            )
        if got != message:
            raise AssertionError(
                f"{self.address}: expected {message!r}, received {got!r}{self._from()}"
            )
        if sender is not None and self.last_sender != self._qualified(sender):
            raise AssertionError(
                f"{self.address}: expected {message!r} from {sender}, it came from "
                f"{self.last_sender}"
            )
        return got

    def expect_type(self, cls: type[Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next message, which must be an instance of ``cls``; returns it."""
        got = self.receive(timeout)
        if not isinstance(got, cls):
            raise AssertionError(
                f"{self.address}: expected a {cls.__name__}, received {got!r}{self._from()}"
            )
        return got

    def fish_for(
        self, predicate: Callable[[Any], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """The first message that satisfies ``predicate``; those before it are skipped
        (Akka's fishForMessage). AssertionError after ``timeout`` names the skipped."""
        deadline = time.monotonic() + timeout
        skipped: list[Any] = []
        while True:
            got = self._next(deadline - time.monotonic())
            if got is _NOTHING:
                raise AssertionError(
                    f"{self.address}: nothing matching within {timeout}s; skipped {skipped!r}"
                )
            if predicate(got):
                return got
            skipped.append(got)

    def expect_no_message(self, duration: float = NO_MESSAGE_WINDOW) -> None:
        """Nothing arrives for ``duration`` seconds.

        Raises:
            AssertionError: something did (named in the error; it is consumed).
        """
        got = self._next(duration)
        if got is not _NOTHING:
            raise AssertionError(
                f"{self.address}: expected no message for {duration}s, received "
                f"{got!r}{self._from()}"
            )

    def expect_dead_letter(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, str]:
        """The next tell of the probe's that came back undelivered, as (message, reason).

        Dead letters are heard while the probe waits for messages; this waits so.

        Raises:
            AssertionError: none within ``timeout``, or a message came first (named).
        """
        deadline = time.monotonic() + timeout
        while len(self.dead_letters) <= self._dead_seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.address}: no dead letter within {timeout}s")
            got = self._next(min(remaining, 0.05))
            if got is not _NOTHING:
                raise AssertionError(
                    f"{self.address}: expected a dead letter, received {got!r}{self._from()}"
                )
        self._dead_seen += 1
        return self.dead_letters[self._dead_seen - 1]

    def close(self) -> None:
        """Release the probe's name and rings. Idempotent."""
        self.client.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
