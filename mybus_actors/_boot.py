"""The entry point of a spawned actor's process: ``python -m mybus_actors._boot FD``.

Reads (cls, name, args, kwargs, node, runtime_dir, on_error) pickled on stdin, hosts the actor
with `runtime.run`, and writes one status line to FD: "ok" once the name is registered
and ``on_start`` has returned, else "<ErrorType> <message>". The actor stops cleanly
when the process that spawned it exits.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import traceback

from mybus_actors.allocator import keep_freed_memory
from mybus_actors.runtime import run


def main() -> int:
    status_fd = int(sys.argv[1])

    def report(line: str) -> None:
        nonlocal status_fd
        if status_fd >= 0:
            os.write(status_fd, line.encode("utf-8", "replace") + b"\n")
            os.close(status_fd)
            status_fd = -1

    keep_freed_memory()
    logging.basicConfig(
        level=os.environ.get("MYBUS_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        cls, name, args, kwargs, node, runtime_dir, on_error = pickle.loads(
            sys.stdin.buffer.read()
        )
        run(
            cls,
            name,
            args=args,
            kwargs=kwargs,
            node=node,
            runtime_dir=runtime_dir,
            _on_ready=lambda: report("ok"),
            _parent=os.getppid(),
            _on_error=on_error,
        )
    except BaseException as exc:
        if status_fd < 0:  # it had started: a crash after that is the process's own news
            raise
        detail = "".join(traceback.format_exception(exc)) if not _expected(exc) else str(exc)
        report(f"{type(exc).__name__} {detail}")
        return 1
    return 0


def _expected(exc: BaseException) -> bool:
    return type(exc).__name__ in ("NameTaken", "InvalidAddress")


if __name__ == "__main__":
    sys.exit(main())
