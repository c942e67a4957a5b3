"""Doorbells: this process's FIFO, and write descriptors on the peers' FIFOs, with owners.

A doorbell is a FIFO under ``bells/``. Its owner reads it (opened read-write, so it never
reads as closed while no writer has it open); a sender writes one byte to wake it, or an
announcement ``n<ring file>\\n``.

Guarantees:

- `Doorbell` creates and removes this process's FIFO; `drain` reads everything pending.
- `Bells` keeps at most one write descriptor per peer doorbell, and only while some ring
  to that peer needs it: each outbound ring `acquire`\\ s its receiver's bell and
  `release`\\ s it when the ring is dropped; the descriptor closes with the last ring. So a
  sender holds descriptors for the peers it writes to now, not for every peer it ever
  rang (a long-running echo answered 1,000 short-lived clients and kept 1,002).
- A descriptor is opened on the first write, not on acquire, and `forget` closes one
  whose reader is gone while its rings stay accounted for.

Knows FIFOs and descriptors; not rings' contents, names or actors.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from mybus_actors.pressure import exhausted

__all__ = ["NEW_RING", "WAKE", "Bells", "Doorbell"]

_READ: Final = 65536  # a pipe's whole buffer: one read drains the doorbell
WAKE: Final = b"w"  # a wake-up
NEW_RING: Final = b"n"  # an announcement: NEW_RING, the ring's file name, a newline


class Doorbell:
    """This process's FIFO, read-write and non-blocking.

    Raises (constructor):
        ResourceExhausted: out of descriptors or space for the FIFO.
        OSError: the FIFO cannot be made.
    """

    __slots__ = ("fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            os.mkfifo(path, 0o600)
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
        except OSError as exc:
            raise (exhausted(exc, f"open doorbell {path.name}") or exc) from exc

    def drain(self) -> list[bytes]:
        """Everything written since the last drain (empty when nothing was)."""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return chunks
            chunks.append(data)
            if len(data) < _READ:
                return chunks

    def close(self) -> None:
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Bells:
    """Write descriptors on other processes' doorbells, owned by the rings that use them."""

    __slots__ = ("_fds", "_users")

    def __init__(self) -> None:
        self._users: dict[str, int] = {}  # doorbell path -> rings that ring it
        self._fds: dict[str, int] = {}  # doorbell path -> our write descriptor

    def __len__(self) -> int:
        """Descriptors held now."""
        return len(self._fds)

    def acquire(self, path: str) -> None:
        """One more ring rings ``path``."""
        self._users[path] = self._users.get(path, 0) + 1

    def release(self, path: str) -> None:
        """One ring less; the descriptor closes with the last."""
        users = self._users.get(path, 0) - 1
        if users > 0:
            self._users[path] = users
            return
        self._users.pop(path, None)
        self.forget(path)

    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` (atomically: it is shorter than a pipe's buffer) to ``path``.

        Raises:
            BlockingIOError: the doorbell is full.
            ResourceExhausted: no descriptor could be opened for it.
            OSError: no such doorbell (FileNotFoundError), nobody reads it (ENXIO, EPIPE).
        """
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise (exhausted(exc, f"open doorbell {Path(path).name}") or exc) from exc
            if path not in self._users:  # a one-off write (no ring owns it): do not keep it
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                return
            self._fds[path] = fd
        os.write(fd, data)

    def forget(self, path: str) -> None:
        """Close our descriptor on ``path`` (reopened by the next write if rings remain)."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for path in list(self._fds):
            self.forget(path)
        self._users.clear()
