"""Keeping the memory a process frees, for the processes that move large messages.

A process that receives 1 MiB messages allocates and frees a message's worth a few
times per message (fragments joined, then the message's bytes). By default glibc hands
such blocks back to the kernel (a fresh mmap, or a heap trimmed once 2 MiB lie free at
its top), so each message is built in pages the kernel must fault in and zero again.
Whether it does depends on the order of allocations and frees, so a change elsewhere in
the path could swing 1 MiB throughput by a third (measured: a spawned actor's 1 MiB
tells went from 4.1k to 2.9k msg/s, and a gateway spent a third of its CPU faulting).

Knows glibc's `mallopt`; nothing of rings or actors. Only our own processes (spawned
actors, the gateway) call it: a user's program keeps its own allocator settings.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Final

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3


def keep_freed_memory() -> None:
    """Blocks up to 8 MiB come from the heap, which keeps up to 32 MiB free before it
    shrinks: a bounded price in RSS. A no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 8 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 32 << 20)
