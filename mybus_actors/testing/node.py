"""`Node`: one mybus node for a test, a name and a runtime directory of its own.

What a test starts through a Node (`spawn`, `spawn_pool`, `connect`, `probe`) the Node
stops and closes at teardown, latest first, like an actor system shut down at the end of
an Akka TestKit or a ``ray.shutdown()``. What the test starts otherwise (``mb.spawn``
with no arguments, say, on the `mybus_node` fixture's node) is the test's to stop: the
fixture's leftover check fails the test for any process or file it leaves.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mybus_actors.client import Client, DeadLetterHook, connect
from mybus_actors.ref import Ref, spawn, spawn_pool

from .leaks import leftover_files
from .testprobe import Probe

if TYPE_CHECKING:
    from mybus_actors.actor import Actor

    from .gateway_process import GatewayProcess

__all__ = ["STOP_TIMEOUT", "Node", "fresh_node_name", "runtime_base"]

STOP_TIMEOUT = 5.0  # what a Node gives each actor to stop at teardown before killing it
_SHM = Path("/dev/shm")


def runtime_base(fallback: Path) -> Path:
    """Where test runtime directories go: on /dev/shm like the runtime's own default
    (rings are tmpfs files there), in a directory of this user's; else ``fallback``."""
    if _SHM.is_dir() and os.access(_SHM, os.W_OK):
        return _SHM / f"mybus-test-{os.getuid()}"
    return fallback


def fresh_node_name(prefix: str = "t") -> str:
    """A node name no other test uses (node names are at most a path component)."""
    return prefix + uuid.uuid4().hex[:8]


class Node:
    """A node's name and runtime directory, and what the test started on it.

    Attributes:
        name: the node's name (the ``node`` of ``node/actor`` addresses).
        runtime_dir: its runtime directory (``MYBUS_RUNTIME_DIR`` for the node).
        gateway: its ``mybus-gateway`` process in a `Cluster`, else None.
    """

    def __init__(self, name: str, runtime_dir: Path) -> None:
        self.name = name
        self.runtime_dir = runtime_dir
        self.gateway: GatewayProcess | None = None
        self._refs: list[Ref] = []
        self._clients: list[Client] = []
        self._probes: list[Probe] = []

    def __repr__(self) -> str:
        return f"<Node {self.name} at {self.runtime_dir}>"

    def address(self, name: str) -> str:
        """The full address of actor ``name`` on this node, ``node/name``."""
        return f"{self.name}/{name}"

    def spawn(
        self,
        cls: type[Actor],
        name: str,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Ref:
        """`mybus_actors.spawn` on this node; the actor is stopped at teardown."""
        ref = spawn(cls, name, args=args, kwargs=kwargs, node=self.name,
                    runtime_dir=self.runtime_dir)  # fmt: skip
        self._refs.append(ref)
        return ref

    def spawn_pool(
        self,
        cls: type[Actor],
        name: str,
        size: int,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        process: bool = True,
        routing: str = "least-loaded",
    ) -> Ref:
        """`mybus_actors.spawn_pool` on this node; the pool is stopped at teardown."""
        ref = spawn_pool(
            cls, name, size, args=args, kwargs=kwargs, process=process, routing=routing,
            node=self.name, runtime_dir=self.runtime_dir,
        )  # fmt: skip
        self._refs.append(ref)
        return ref

    def connect(
        self, name: str | None = None, *, on_dead_letter: DeadLetterHook | None = None
    ) -> Client:
        """`mybus_actors.connect` on this node; the client is closed at teardown."""
        client = connect(name, node=self.name, runtime_dir=self.runtime_dir,
                         on_dead_letter=on_dead_letter)  # fmt: skip
        self._clients.append(client)
        return client

    def probe(self, name: str | None = None) -> Probe:
        """A `Probe` on this node (a private name unless ``name``); closed at teardown."""
        probe = Probe(connect(name, node=self.name, runtime_dir=self.runtime_dir))
        self._probes.append(probe)
        return probe

    def leftover_files(self) -> list[str]:
        """Files in the runtime directory now, as relative paths."""
        return leftover_files(self.runtime_dir)

    def close(self) -> list[str]:
        """Stop every actor started here (latest first), close every client and probe;
        return what went wrong (an actor that had to be killed, or would not stop)."""
        problems: list[str] = []
        try:
            while self._refs:
                ref = self._refs.pop()
                try:
                    if not ref.stop(timeout=STOP_TIMEOUT):
                        problems.append(f"{ref} did not stop within {STOP_TIMEOUT}s: killed")
                except Exception as exc:
                    problems.append(f"{ref} did not stop: {exc!r}")
                    with contextlib.suppress(Exception):
                        ref.kill()
                finally:
                    with contextlib.suppress(Exception):
                        ref.join(10)
        finally:
            while self._probes:
                self._probes.pop().close()
            while self._clients:
                self._clients.pop().close()
        return problems
