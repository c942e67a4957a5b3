"""What a test of actors started, and its undoing: imported by conftest.py and the tests.

`Actors` records the Refs and clients a test makes; its `close` stops every Ref (killing
one that will not stop) and closes every client. The `actors` fixture (conftest.py)
calls it, and the `runtime_dir` fixture then checks that no process and no file is left.
`stopping_while_held` stops an actor while the test floods it (dead-letter tests).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mybus_actors as mb
from mybus_actors.ref import close_clients
from mybus_actors.registry import Registry, mailbox_name


class Actors:
    """What a test started: Refs to stop and clients to close, in the fixture teardown."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.node = os.environ["MYBUS_NODE"]
        self.refs: list[mb.Ref] = []
        self.clients: list[mb.Client] = []

    def spawn(self, cls: type[mb.Actor], name: str, **kwargs: Any) -> mb.Ref:
        ref = mb.spawn(cls, name, kwargs=kwargs or None)
        self.refs.append(ref)
        return ref

    def connect(self, name: str | None = None, **options: Any) -> mb.Client:
        client = mb.connect(name, **options)
        self.clients.append(client)
        return client

    def address(self, name: str) -> str:
        return f"{self.node}/{name}"

    def close(self) -> None:
        try:
            for ref in reversed(self.refs):
                try:
                    ref.stop(timeout=5)
                except Exception:
                    ref.kill()
                finally:
                    ref.join(10)
        finally:
            for client in self.clients:
                client.close()
            close_clients()


@contextlib.contextmanager
def stopping_while_held(
    me: mb.Client, sink: mb.Ref, release: Path, runtime_dir: Path, timeout: float
) -> Iterator[None]:
    """Hold ``sink`` (an actors_lib.Counter), stop it, and run the block meanwhile.

    The sink reads nothing until ``release`` exists: it is held in a receive that waits
    for that file. `Ref.stop` (in a thread: it waits for the process) sends the stop on
    the Ref client's own ring; the block runs once that ring exists, so whatever the
    block sends is in the sink's rings beside the stop. Then the sink is released, and
    the stop must have been clean.
    """

    # rings/<writer>~<reader>.<generation>, named by process mailboxes: the stop goes on
    # a ring from this process's other endpoint (the Ref's client) to the sink's process.
    sink_box = mailbox_name(Registry(runtime_dir).lookup("sink").doorbell)
    here = f"_{os.getpid()}-"
    mine = me._endpoint.mailbox

    def stop_ring(fname: str) -> bool:
        writer, _, rest = fname.partition("~")
        return writer.startswith(here) and writer != mine and rest.startswith(f"{sink_box}.")

    me.tell("sink", ("hold", str(release)))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            held = me.receive(timeout=timeout)
            assert held[0] == "holding", held
            stopping = pool.submit(sink.stop, 30)
            deadline = time.monotonic() + timeout
            while not [f for f in os.listdir(runtime_dir / "rings") if stop_ring(f)]:
                assert time.monotonic() < deadline, "Ref.stop sent nothing"
                time.sleep(0.001)
            yield
        finally:
            release.touch()
        assert stopping.result(timeout=40) is True
