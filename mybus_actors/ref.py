"""`spawn()` and `Ref`: an actor in a new OS process, and the handle to it.

The child is a fresh interpreter (``python -m mybus_actors._boot``), not a fork: the
actor class travels to it by cloudpickle, so a class defined in ``__main__`` or a
notebook works, and the parent's threads and locks never leak into it. `spawn` returns
once the child has registered the name and run ``on_start``.

`Ref.tell`, `ask` and `stop` go through a client this process keeps for its Refs (one
per runtime directory and node). The client belongs to the Refs that used it: it is
closed, its name, doorbell and rings released, when the last of them is stopped or
collected, so once every Ref is stopped the runtime directory holds nothing of ours.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Final

import cloudpickle
import psutil

from mybus_actors.actor import Actor
from mybus_actors.address import format_address
from mybus_actors.client import Client
from mybus_actors.codec import Kind
from mybus_actors.errors import (
    ActorError,
    ActorNotFound,
    InvalidAddress,
    MailboxFull,
    MyBusError,
    NameTaken,
    ResourceExhausted,
    SerializationError,
)
from mybus_actors.registry import (
    RESERVED_NAMES,
    Registry,
    default_node,
    resolve_runtime_dir,
    validate_name,
)
from mybus_actors.runtime import STOP

__all__ = ["Ref", "spawn"]

_log = logging.getLogger("mybus_actors.ref")
_START_TIMEOUT: Final = 60.0
_ERRORS: Final[dict[str, type[MyBusError]]] = {
    "NameTaken": NameTaken,
    "InvalidAddress": InvalidAddress,
}


class Ref:
    """A handle to a spawned actor: its address and its process."""

    def __init__(
        self,
        address: str,
        pid: int,
        runtime_dir: Path,
        node: str,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._address = address
        self._pid = pid
        self._runtime_dir = runtime_dir
        self._node = node
        self._process = process
        self._lease: weakref.finalize[Any, Any] | None = None  # our share of the private client

    def __repr__(self) -> str:
        return f"<Ref {self._address} pid={self._pid}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A Ref sent to another process keeps its address and pid, not our Popen.
        return (Ref, (self._address, self._pid, self._runtime_dir, self._node))

    @property
    def address(self) -> str:
        return self._address

    @property
    def pid(self) -> int:
        return self._pid

    def tell(self, message: Any, *, timeout: float = 10.0, block: bool = True) -> None:
        """Send ``message`` to the actor (from this process's own client mailbox).

        Raises:
            ActorNotFound, MailboxFull, SerializationError, ResourceExhausted: as
                `Client.tell`.
        """
        _client(self).tell(self._address, message, timeout=timeout, block=block)

    def ask(self, message: Any, *, timeout: float = 5.0) -> Any:
        """Send ``message`` and wait for the reply (see `Client.ask`).

        Raises:
            AskTimeout, ActorError, ActorNotFound, MailboxFull, SerializationError,
                ResourceExhausted: as `Client.ask`.
        """
        return _client(self).ask(self._address, message, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the actor cleanly and wait for its process to exit.

        on_stop runs, the name is released, the rings are unlinked. If the process has
        not exited within ``timeout`` it is killed.

        This Ref's share of the process's private client is released: the client
        closes with the last Ref that used it.

        Returns:
            True for a clean stop, False when it had to be killed.
        """
        try:
            return self._stop(timeout)
        finally:
            self._release_client()

    def _stop(self, timeout: float) -> bool:
        if not self.is_alive():
            self.join(0)
            return True
        try:
            client = _client(self)
            client._send(self._address, STOP, timeout, True, Kind.SYSTEM, 0)
        except ActorNotFound:
            pass  # already gone, or never got as far as registering
        except (ResourceExhausted, MailboxFull) as exc:
            # No room for the stop request (a full /dev/shm, a full mailbox): SIGTERM is
            # a clean stop too (the runtime turns it into one: on_stop runs).
            _log.warning("%s: stop request not sent (%s); sending SIGTERM", self, exc)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGTERM)
        if self.join(timeout):
            return True
        _log.warning("%s did not stop within %ss; killing pid %d", self, timeout, self._pid)
        self.kill()
        self.join(10)
        return False

    def _release_client(self) -> None:
        lease, self._lease = self._lease, None
        held = lease.detach() if lease is not None else None  # not again at collection
        if held is not None:
            _release(*held[2], wait=True)

    def kill(self) -> None:
        """SIGKILL the actor's process (its name and rings are reclaimed afterwards)."""
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the process to exit; True if it has. Reclaims what it left behind."""
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        else:
            try:
                psutil.Process(self._pid).wait(timeout)
            except psutil.TimeoutExpired:
                return False
            except psutil.NoSuchProcess:
                pass
        Registry(self._runtime_dir).reclaim()
        return True

    def is_alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        try:
            return psutil.Process(self._pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def spawn(
    cls: type[Actor],
    name: str,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    node: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
) -> Ref:
    """Start ``cls`` as actor ``name`` in a new process; return once it is registered.

    Raises:
        NameTaken: a live actor already holds ``name``.
        InvalidAddress: ``name`` is malformed or reserved.
        ActorError: the actor's ``__init__`` or ``on_start`` raised, or the process
            could not start (the message says why).
        SerializationError: ``cls`` or its arguments cannot be pickled.
    """
    validate_name(name)
    if name in RESERVED_NAMES or name.startswith("_"):
        raise InvalidAddress(f"the name {name!r} is reserved for the runtime")
    node = validate_name(node) if node is not None else default_node()
    root = resolve_runtime_dir(runtime_dir, node)
    registry = Registry(root)
    with contextlib.suppress(ActorNotFound):
        holder = registry.lookup(name)
        raise NameTaken(f"actor {name!r} is already held by live pid {holder.pid}")
    try:
        payload = cloudpickle.dumps((cls, name, args, kwargs or {}, node, str(root)), protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"cannot send {cls!r} and its arguments to a new process: {exc}"
        ) from exc
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mybus_actors._boot", str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
        )
    finally:
        os.close(write_fd)
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        status = _read_status(read_fd, proc)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    finally:
        os.close(read_fd)
    if status == "ok":
        return Ref(format_address(node, name), proc.pid, root, node, proc)
    proc.wait(10)
    kind, _, text = status.partition(" ")
    raise _ERRORS.get(kind, ActorError)(text or f"actor {name!r} failed to start")


def _read_status(fd: int, proc: subprocess.Popen[bytes]) -> str:
    """The child's one line: "ok", or "<ErrorType> <message>"; EOF means it died."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], _START_TIMEOUT)
        if not ready:
            raise ActorError(f"the actor process (pid {proc.pid}) did not start within 60s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    if not text:
        code = proc.wait(10)
        return f"ActorError the actor process exited with code {code} before registering"
    return text


# One client per (process, runtime directory, node) serves Ref.tell/ask/stop, held by the
# Refs that used it (their ids); it closes when the last lets go.
_Key = tuple[int, Path, str]


class _Shared:
    __slots__ = ("client", "users")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.users: set[int] = set()


_clients: dict[_Key, _Shared] = {}
_clients_lock = threading.Lock()
# Releases that could not run when they came (a collection inside a locked section of
# this very thread): done at the next call that takes the lock. A deque's append is
# atomic, so a finalizer may add to it from anywhere.
_late: collections.deque[tuple[_Key, int]] = collections.deque()


def _client(ref: Ref) -> Client:
    """The process's client for ``ref``'s node, leased to ``ref`` until it lets go."""
    key = (os.getpid(), ref._runtime_dir, ref._node)
    with _clients_lock:
        _release_late()
        shared = _clients.get(key)
        if shared is None or shared.client._closed:
            shared = _clients[key] = _Shared(Client(node=ref._node, runtime_dir=ref._runtime_dir))
        if ref._lease is None or not ref._lease.alive:
            shared.users.add(id(ref))
            ref._lease = weakref.finalize(ref, _release, key, id(ref))
        return shared.client


def _release(key: _Key, user: int, *, wait: bool = False) -> None:
    """A Ref let go (stopped: ``wait``; or collected): close the client if it was the last.

    At a collection this may run inside any code of this thread, even code holding the
    locks it needs: then it never blocks, and what it cannot do now is done by the next
    call that takes them.
    """
    if key[0] != os.getpid():  # a forked child's copy: the parent's client, not ours
        return
    _late.append((key, user))
    if wait:
        _clients_lock.acquire()
    elif not _clients_lock.acquire(blocking=False):
        return
    try:
        _release_late(wait=wait)
    finally:
        _clients_lock.release()


_unused: list[Client] = []  # no Ref left, still to close (its lock was busy)


def _release_late(*, wait: bool = False) -> None:
    """Apply the pending releases (the caller holds `_clients_lock`)."""
    while _late:
        key, user = _late.popleft()
        shared = _clients.get(key)
        if shared is None:
            continue
        shared.users.discard(user)
        if not shared.users:
            del _clients[key]
            _unused.append(shared.client)
    for client in list(_unused):
        if not wait:
            if not client._lock.acquire(blocking=False):
                continue  # busy, perhaps in this very thread: the next call closes it
            client._lock.release()
        _unused.remove(client)
        _close_client(client)


def _close_client(client: Client) -> None:
    with contextlib.suppress(Exception):  # closing must not fail a stop or a collection
        client.close()


@atexit.register
def close_clients() -> None:
    """Close this process's Ref clients (also at exit), releasing their names and rings."""
    with _clients_lock:
        _release_late(wait=True)
        mine = [k for k in _clients if k[0] == os.getpid()]
        for key in mine:
            _close_client(_clients.pop(key).client)
