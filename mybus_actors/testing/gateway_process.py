"""A ``mybus-gateway`` process for a test: started through this interpreter, its log read.

The gateway runs as ``sys.executable -m mybus_actors.gateway``, never a PATH lookup, so
``venv/bin/python -m pytest`` works without an activated venv. Its stderr (the log) is
read by a thread into `LogReader`, which a test waits on with a deadline (``link up``,
``link down`` ...). It is stopped by pid: SIGTERM, then SIGKILL if it hangs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

__all__ = ["GATEWAY_COMMAND", "GatewayProcess", "LogReader", "child_pythonpath", "free_port"]

GATEWAY_COMMAND = [sys.executable, "-m", "mybus_actors.gateway"]

_LISTENING = re.compile(r"listening on \S*:(\d+)")


def child_pythonpath() -> str:
    """This process's import path, for a child that must import what we import."""
    return os.pathsep.join(p for p in sys.path if p)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0).

    Another process may take it before it is used: a `Cluster` starting a gateway on
    it tries another port if so.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LogReader:
    """Collects a process's stderr lines in a thread; `wait_for` waits with a deadline."""

    def __init__(self, stream: IO[bytes], label: str) -> None:
        self.label = label
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._read, args=(stream,), daemon=True, name=f"log {label}"
        )
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        finally:
            stream.close()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def count(self, regex: str) -> int:
        """How many lines so far match ``regex`` (`re.search`)."""
        with self._cond:
            return sum(1 for line in self.lines if re.search(regex, line))

    def wait_for(self, regex: str, timeout: float = 10.0, *, count: int = 1) -> str:
        """The ``count``-th line matching ``regex``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [line for line in self.lines if re.search(regex, line)]
                if len(hits) >= count:
                    return hits[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.label}: no {count} line(s) matching {regex!r} within "
                        f"{timeout}s; log so far:\n" + "\n".join(self.lines[-60:])
                    )
                self._cond.wait(min(remaining, 0.5))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class GatewayProcess:
    """One ``mybus-gateway`` process, its stderr read by a thread (`log`).

    `wait_listening` reads the port the gateway bound from its log. ``env`` is the
    environment to start it in (default this process's); ``MYBUS_SECRET`` in it is
    replaced by ``secret`` (or removed).
    """

    def __init__(
        self,
        node: str,
        runtime_dir: Path,
        port: int,
        *,
        peers: Mapping[str, tuple[str, int]] | None = None,
        secret: str | None = None,
        secret_file: Path | None = None,
        host: str = "127.0.0.1",
        extra: Iterable[str] = (),
        prefix: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.runtime_dir = runtime_dir
        self.port = port
        self.peers = dict(peers or {})
        self.secret, self.secret_file = secret, secret_file
        self.host, self.extra, self.prefix = host, list(extra), list(prefix)
        argv = [
            *self.prefix,
            *GATEWAY_COMMAND,
            "--node", node,
            "--runtime-dir", str(runtime_dir),
            "--listen", f"{host}:{port}",
        ]  # fmt: skip
        for peer, (phost, pport) in self.peers.items():
            argv += ["--peer", f"{peer}={phost}:{pport}"]
        if secret_file is not None:
            argv += ["--secret-file", str(secret_file)]
        argv += self.extra
        base = os.environ if env is None else env
        self.env = {k: v for k, v in base.items() if k != "MYBUS_SECRET"}
        self.env["PYTHONPATH"] = child_pythonpath()
        if secret is not None:
            self.env["MYBUS_SECRET"] = secret
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        self.log = LogReader(self.proc.stderr, f"gateway {node}")
        self.killed = False

    def __repr__(self) -> str:
        return f"<GatewayProcess {self.node} pid={self.pid} port={self.port}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout: float = 15.0) -> None:
        """Until the gateway logs that it listens (then `port` is the port it bound).

        Raises:
            AssertionError: it did not within ``timeout``, or it exited (its log said why).
        """
        deadline = time.monotonic() + timeout
        while True:
            # In slices: a gateway that exits at once (a bad flag, a port taken) is
            # reported at once, not after the whole timeout.
            remaining = deadline - time.monotonic()
            try:
                line = self.log.wait_for(r"listening on", max(min(remaining, 0.2), 0.0))
                break
            except AssertionError:
                if self.proc.poll() is not None:
                    self.log.join(5)
                    raise AssertionError(
                        f"gateway {self.node} exited {self.proc.returncode}:\n{self.log.text()}"
                    ) from None
                if remaining <= 0:
                    raise
        found = _LISTENING.search(line)
        if found is not None:
            self.port = int(found.group(1))

    def port_taken(self) -> bool:
        """It exited because its port was taken (another process got it first)."""
        return self.proc.poll() is not None and "in use" in self.log.text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait (SIGKILL if it hangs); the exit code (or -9 after a kill)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.join(5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL, and reap it (`killed` is then True)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.killed = True
        self.proc.wait(10)
