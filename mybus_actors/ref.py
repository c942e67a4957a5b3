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
import time
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
    DeadlockError,
    InvalidAddress,
    MailboxFull,
    MyBusError,
    NameTaken,
    ResourceExhausted,
    SerializationError,
)
from mybus_actors.messages import KILL, STOP, Broadcast
from mybus_actors.pool import PoolRouter, check_pool
from mybus_actors.registry import (
    RESERVED_NAMES,
    Registry,
    default_node,
    resolve_runtime_dir,
    validate_name,
)

__all__ = ["Ref", "spawn", "spawn_pool"]

_log = logging.getLogger(__name__)
_START_TIMEOUT: Final = 60.0
_ERRORS: Final[dict[str, type[MyBusError]]] = {
    "NameTaken": NameTaken,
    "InvalidAddress": InvalidAddress,
}


class Ref:
    """A handle to a spawned actor: its address and the process that hosts it.

    For an actor hosted in another actor's process (`Actor.spawn` with
    ``process=False``), `stop`, `kill`, `join` and `is_alive` follow that actor, not
    the process, and `pid` is the hosting process.
    """

    def __init__(
        self,
        address: str,
        pid: int,
        runtime_dir: Path,
        node: str,
        process: subprocess.Popen[bytes] | None = None,
        *,
        hosted: object = None,
    ) -> None:
        self._address = address
        self._pid = pid
        self._runtime_dir = runtime_dir
        self._node = node
        self._process = process
        self._lease: weakref.finalize[Any, Any] | None = None  # our share of the private client
        # Hosted: the Runtime hosting it when this is that process (True elsewhere).
        self._hosted = hosted is not None
        self._runtime: Any = weakref.ref(hosted) if hosted not in (None, True) else None
        self._detach: Any = None  # set by a supervisor: `stop` ends supervision first
        self._pool = False  # the router of a pool: `broadcast` reaches every worker

    def __repr__(self) -> str:
        return f"<Ref {self._address} pid={self._pid}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A Ref sent to another process keeps its address and pid, not our Popen.
        return (_unpickled_ref, (self._address, self._pid, self._runtime_dir, self._node,
                                 self._hosted, self._pool))  # fmt: skip

    def _local(self) -> Any:
        """The Runtime hosting this actor, when we are in its dispatcher's thread."""
        rt = self._runtime() if self._runtime is not None else None
        if rt is None or rt._thread != threading.get_ident() or rt._closed:
            return None
        return rt

    def _cell(self, rt: Any) -> Any:
        cell = rt.cells.get(self._address.rpartition("/")[2])
        return cell if cell is not None and cell.address == self._address else None

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

    def broadcast(self, message: Any, *, timeout: float = 10.0) -> None:
        """Tell ``message`` to every worker of the pool this Ref names.

        Raises:
            MyBusError: this Ref is not a pool's.
            ActorNotFound, MailboxFull, SerializationError, ResourceExhausted: as `tell`.
        """
        if not self._pool:
            raise MyBusError(f"{self._address} is not a pool: broadcast() needs spawn_pool's Ref")
        self.tell(Broadcast(message), timeout=timeout)

    def ask(self, message: Any, *, timeout: float = 5.0) -> Any:
        """Send ``message`` and wait for the reply (see `Client.ask`).

        Raises:
            AskTimeout, ActorError, ActorNotFound, MailboxFull, SerializationError,
                ResourceExhausted: as `Client.ask`.
        """
        if self._local() is not None:
            raise DeadlockError(
                f"Ref.ask of {self._address} inside the dispatcher that hosts it would wait "
                "for itself; inside an actor, use self.ask(ref.address, ...) and await it"
            )
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
        detach, self._detach = self._detach, None
        if detach is not None:
            detach()
        rt = self._local()
        if rt is not None:  # inside the dispatcher: it stops after the current message
            cell = self._cell(rt)
            if cell is not None:
                rt.request_stop(cell)
            return True
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
        """End the actor abruptly: no on_stop; for its supervisor, an abnormal end.

        An actor in a process of its own: SIGKILL (its name and rings are reclaimed
        afterwards). One hosted in another's process: that actor only.
        """
        if self._hosted:
            rt = self._local()
            if rt is not None:
                cell = self._cell(rt)
                if cell is not None:
                    rt.kill(cell)
                return
            with contextlib.suppress(ActorNotFound, MailboxFull, ResourceExhausted):
                _client(self)._send(self._address, KILL, 5.0, True, Kind.SYSTEM, 0)
            return
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the actor's end (its process's exit); True if it has ended.

        Reclaims what a process left behind.

        Raises:
            DeadlockError: waiting, inside the dispatcher that hosts the actor.
        """
        if self._hosted:
            return self._join_hosted(timeout)
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

    def _join_hosted(self, timeout: float | None) -> bool:
        if self._local() is not None:
            if self.is_alive() and timeout != 0:
                raise DeadlockError(
                    f"join() of {self._address} inside the dispatcher that hosts it would "
                    "wait for itself; watch it and wait for Terminated instead"
                )
            return not self.is_alive()
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause)  # nothing to wake us: an actor's end publishes no event here
            pause = min(pause * 2, 0.05)
        return True

    def is_alive(self) -> bool:
        """Whether the actor runs (a restarting one does); for one in its own process,
        whether that process does."""
        if self._hosted:
            rt = self._runtime() if self._runtime is not None else None
            if rt is not None and os.getpid() == self._pid and not rt._closed:
                cell = self._cell(rt)
                return cell is not None and not cell.finished
            try:
                entry = Registry(self._runtime_dir).lookup(self._address.rpartition("/")[2])
            except (ActorNotFound, ResourceExhausted):
                return False
            return bool(entry.pid == self._pid)
        if self._process is not None:
            return self._process.poll() is None
        try:
            return psutil.Process(self._pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def _unpickled_ref(
    address: str, pid: int, runtime_dir: Path, node: str, hosted: bool, pool: bool
) -> Ref:
    ref = Ref(address, pid, runtime_dir, node, hosted=True if hosted else None)
    ref._pool = pool
    return ref


def spawn(
    cls: type[Actor],
    name: str,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    node: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    _on_error: str = "resume",
) -> Ref:
    """Start ``cls`` as actor ``name`` in a new process; return once it is registered.

    (``_on_error``: what its supervisor's strategy says an exception in ``receive`` does,
    for a child in a process of its own; "restart" and "stop" end the process's actor
    abnormally, and the supervisor starts a new process if its restart type says so.)

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
        payload = cloudpickle.dumps(
            (cls, name, args, kwargs or {}, node, str(root), _on_error), protocol=5
        )
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


def spawn_pool(
    cls: type[Actor],
    name: str,
    size: int,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    process: bool = True,
    routing: str = "least-loaded",
    node: str | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
) -> Ref:
    """``size`` workers ``name.0`` … ``name.<size-1>`` behind the address ``name``.

    The pool's router runs in a new process (as `spawn` starts an actor), its workers in
    processes of their own (``process=True``) or in the router's; each is restarted
    permanently. Each tell or ask to ``name`` goes to one worker: the one with the
    fewest unread bytes in its mailbox (``routing="least-loaded"``) or the next in turn
    ("round-robin"); a restarting worker is skipped. `Ref.broadcast` tells them all.

    Raises:
        NameTaken, InvalidAddress: as `spawn`, for the pool or a worker.
        ValueError: ``size`` below 1, or an unknown ``routing``.
        ActorError, SerializationError: as `spawn`.
    """
    check_pool(size, routing)
    pool_args = {"cls": cls, "size": size, "args": tuple(args), "kwargs": kwargs,
                 "process": process, "routing": routing}  # fmt: skip
    ref = spawn(PoolRouter, name, kwargs=pool_args, node=node, runtime_dir=runtime_dir)
    ref._pool = True
    return ref


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
