"""Running out: which `OSError` means "the host is out of something", and saying so once.

Guarantees:

- `exhausted` turns an `OSError` whose errno means exhaustion (descriptors: EMFILE,
  ENFILE; space: ENOSPC, EDQUOT; memory: ENOMEM, ENOBUFS) into `ResourceExhausted`,
  naming what the caller was doing; any other error is not exhaustion (None), and the
  caller keeps treating it as before. Exhaustion is never "corrupt", "dead" or "not found".
- `OnceLog` logs the first exhaustion of an episode as one warning line (no traceback),
  the rest at debug level, and logs again once the episode has ended (a success was
  reported with `ok`) and a new one begins: a process at its limit does not write a
  line per attempt.

Knows errno and logging; not files, rings or actors.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Final

from mybus_actors.errors import ResourceExhausted

__all__ = ["EXHAUSTION_ERRNOS", "OnceLog", "exhausted", "is_exhaustion"]

EXHAUSTION_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.ENOBUFS}
)


def is_exhaustion(exc: BaseException) -> bool:
    """Whether ``exc`` says the host (or this process) is out of a resource."""
    return isinstance(exc, ResourceExhausted) or (
        isinstance(exc, OSError) and exc.errno in EXHAUSTION_ERRNOS
    )


def exhausted(exc: OSError, doing: str) -> ResourceExhausted | None:
    """The `ResourceExhausted` to raise (``from exc``) for ``exc``, or None if it is not.

    Args:
        exc: what the system call raised.
        doing: what the caller was doing, for the message ("create ring file X").
    """
    if isinstance(exc, ResourceExhausted):
        return exc
    if exc.errno not in EXHAUSTION_ERRNOS:
        return None
    code = exc.errno
    what = {
        errno.EMFILE: "this process is out of file descriptors (ulimit -n)",
        errno.ENFILE: "the system is out of file descriptors",
        errno.ENOSPC: "no space left on the runtime directory's file system (/dev/shm?)",
        errno.EDQUOT: "disk quota exceeded on the runtime directory's file system",
        errno.ENOMEM: "out of memory",
        errno.ENOBUFS: "out of kernel buffers",
    }[code]
    return ResourceExhausted(code, f"cannot {doing}: {what}")


class OnceLog:
    """One warning per episode of exhaustion, for one kind of operation.

    Thread-safe. ``ok()`` ends an episode; the next failure warns again.
    """

    __slots__ = ("_in_episode", "_lock", "_logger", "_what", "count")

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self._lock = threading.Lock()
        self._in_episode = False
        self.count = 0  # failures seen, all episodes: for tests and `mybus ls`

    def failed(self, exc: BaseException) -> None:
        """Report one failure: a warning if it starts an episode, else a debug line."""
        with self._lock:
            self.count += 1
            first = not self._in_episode
            self._in_episode = True
        if first:
            self._logger.warning(
                "%s: %s (retrying; further failures are logged at debug level until it works)",
                self._what,
                exc,
            )
        else:
            self._logger.debug("%s: %s", self._what, exc)

    def ok(self) -> None:
        """The operation worked: the episode, if any, is over."""
        if self._in_episode:
            with self._lock:
                was, self._in_episode = self._in_episode, False
            if was:
                self._logger.info("%s: works again", self._what)
