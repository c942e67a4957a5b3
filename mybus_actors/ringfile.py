"""A ring file: created allocated, mapped, and checked for size whenever it is opened.

Guarantees:

- `RingFile.create` allocates every byte (``os.posix_fallocate``) before mapping: a full
  tmpfs (Docker's 64 MiB ``/dev/shm``) is `ResourceExhausted` here, at creation, never a
  SIGBUS at the first write into a page tmpfs cannot back. Out of descriptors or memory
  is `ResourceExhausted` too. A file that could not be made whole is unlinked.
- `RingFile.open` maps an existing ring only if it is a regular file at least as large as
  a ring can be; the ring's own header check (`ring.Consumer`) then compares the
  capacity it announces with the mapped size. A truncated or foreign file is
  `RingCorrupted`, never a mapping that faults later.
- `RingFile.intact` tells (one ``fstat``) whether the file still has the size mapped:
  another process of the same user can truncate a mapped file, and touching a page past
  the new end is SIGBUS in any language. Callers check it at their periodic sweeps and
  before reading a whole ring; a truncation between two checks is the remaining risk
  (DESIGN.md, "Ring files under pressure").
- A ring to a process is followed by its *channel page* (`PAGE` bytes, the ``extra`` of
  `RingFile.create`): one state byte per channel id (ids 1..PAGE-1 per generation),
  which the reader writes and the writer reads: `OPEN`, `HELD` (wait, then
  `MailboxFull`) or `GONE` (look the name up again). A channel's SELECT tag begins with
  its id (`CHANNEL_ID`).

Knows files, mmap and the ring's header size; not names, doorbells or actors.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from pathlib import Path
from typing import Final

from mybus_actors import ring as _ring
from mybus_actors.errors import RingCorrupted
from mybus_actors.pressure import exhausted

__all__ = ["CHANNEL_ID", "GONE", "HELD", "OPEN", "PAGE", "RingFile"]

PAGE: Final = 4096
OPEN: Final = 0
HELD: Final = 1  # the receiver's queue for that name is full: wait, then MailboxFull
GONE: Final = 2  # that name is no longer received there: look it up again
CHANNEL_ID: Final = struct.Struct("<H")  # a channel's id, the head of its SELECT tag

_MIN_SIZE = _ring.HEADER_SIZE + _ring.MIN_CAPACITY


class RingFile:
    """A ring file mapped into this process (either end). Make one with `create` or `open`."""

    __slots__ = ("map", "path", "size")

    def __init__(self, path: Path, mapped: mmap.mmap, size: int) -> None:
        self.path = path
        self.map = mapped
        self.size = size

    @classmethod
    def create(cls, path: Path, capacity: int, extra: int = 0) -> RingFile:
        """Create ``path`` (exclusively), allocate it, map it and write a fresh header.

        ``extra`` bytes (zeroed) follow the ring, at ``ring.buffer_size(capacity)``: the
        caller's.

        Raises:
            FileExistsError: ``path`` exists (the caller picks another generation).
            ResourceExhausted: out of descriptors, shared memory or memory.
            OSError: any other failure of the file system.
        """
        size = _ring.buffer_size(capacity) + extra
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise (exhausted(exc, f"create ring file {path.name}") or exc) from exc
        try:
            try:
                os.posix_fallocate(fd, 0, size)
                mapped = mmap.mmap(fd, size)
            except OSError as exc:
                doing = f"allocate and map {size} bytes for ring {path.name}"
                raise (exhausted(exc, doing) or exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        finally:
            os.close(fd)
        _ring.init_ring(mapped, capacity)
        return cls(path, mapped, size)

    @classmethod
    def open(cls, path: Path) -> RingFile:
        """Map an existing ring file, after checking that it can hold a ring.

        Raises:
            FileNotFoundError: it is gone.
            RingCorrupted: not a regular file, or smaller than any ring (truncated).
            ResourceExhausted: out of descriptors or memory.
            OSError: any other failure of the file system.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise (exhausted(exc, f"open ring file {path.name}") or exc) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingCorrupted(f"ring file {path.name} is not a regular file")
            if st.st_size < _MIN_SIZE:
                raise RingCorrupted(
                    f"ring file {path.name} has {st.st_size} bytes, fewer than any ring"
                    " (truncated?)"
                )
            try:
                mapped = mmap.mmap(fd, st.st_size)
            except OSError as exc:
                raise (exhausted(exc, f"map ring file {path.name}") or exc) from exc
        finally:
            os.close(fd)
        return cls(path, mapped, st.st_size)

    def intact(self) -> bool:
        """The file still has the size we mapped (no other process truncated it)."""
        try:
            return self.map.size() >= self.size
        except (OSError, ValueError):  # closed already
            return False

    def close(self, end: _ring.Producer | _ring.Consumer | None) -> None:
        """Release ``end``'s views and unmap (a view still exported elsewhere keeps it)."""
        if end is not None:
            end.release()
        with contextlib.suppress(BufferError):
            self.map.close()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
