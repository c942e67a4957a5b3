"""What a test of actors started, and its undoing: imported by conftest.py and the tests.

`Actors` records the Refs and clients a test makes; its `close` stops every Ref (killing
one that will not stop) and closes every client. The `actors` fixture (conftest.py)
calls it, and the `runtime_dir` fixture then checks that no process and no file is left.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mybus_actors as mb
from mybus_actors.ref import close_clients


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
