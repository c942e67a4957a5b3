"""Log output of our commands (`mybus-gateway`, `mybus metrics`): text for people, JSON
lines for log shippers.

The library itself only logs, under one logger per module (``mybus_actors.<module>``),
and never configures logging or prints: that is the application's choice. Our own
commands configure the root handler here, once, from ``--log-level`` and
``--log-format``.

Knows `logging`; nothing of ours.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Final, TextIO

__all__ = ["FORMATS", "JsonFormatter", "configure"]

FORMATS: Final = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with milliseconds), level, logger,
    message, pid, the program's name, and the traceback when there is one."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self._program = program

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "program": self._program,
            "pid": record.process if record.process is not None else os.getpid(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure(
    program: str, level: str = "info", fmt: str = "text", stream: TextIO | None = None
) -> None:
    """Send every log record to ``stream`` (default stderr) as ``fmt`` ("text" or
    "json") at ``level`` and above.

    Raises:
        ValueError: an unknown format or level.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(program))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {program} %(levelname)s %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
