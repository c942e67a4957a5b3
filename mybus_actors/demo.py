"""The main job: two real processes talking through per-pair shared-memory mailboxes.

``python -m mybus_actors.demo`` starts a second process, streams messages to it through
the embedded default (rings under the runtime directory; no gateway, no config), plays
ping-pong, prints what it measured, and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from mybus_actors import codec
from mybus_actors.mailbox import Endpoint
from mybus_actors.registry import Registry

__all__ = ["main"]


def _peer(runtime_dir: str, ready: Connection) -> None:
    """The second process: counts what it receives, answers pings, stops on "stop"."""
    with Endpoint(Registry(runtime_dir)) as ep:
        ep.bind("counter")
        ready.send(os.getpid())
        count = 0
        while True:
            batch = ep.poll()
            if not batch:
                ep.wait(1.0)
                continue
            for d in batch:
                msg = codec.decode_message(d.meta, d.payload)
                if msg == "stop":
                    ep.send("counter", d.sender, *_enc(count))
                    return
                if msg == "ping":
                    ep.send("counter", d.sender, *_enc("pong"))
                elif msg == "count?":
                    ep.send("counter", d.sender, *_enc(count))
                else:
                    count += 1


def _enc(message: object) -> tuple[bytes | bytearray | memoryview, int]:
    meta, body = codec.encode(message)
    return body, meta


def _recv_one(ep: Endpoint, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = ep.poll()
        if batch:
            d = batch[0]
            return codec.decode_message(d.meta, d.payload)
        ep.wait(0.1)
    raise TimeoutError("the peer did not answer")


def _stream(ep: Endpoint, message: object, count: int) -> float:
    """Send ``count`` copies, then ask for the count as a barrier; return messages/s."""
    body, meta = _enc(message)
    before = _ask(ep, "count?")
    start = time.perf_counter()
    for _ in range(count):
        ep.send("main", "counter", body, meta)
    got = _ask(ep, "count?")
    elapsed = time.perf_counter() - start
    assert isinstance(got, int) and isinstance(before, int) and got - before == count
    return count / elapsed


def _ask(ep: Endpoint, message: object) -> object:
    ep.send("main", "counter", *_enc(message))
    return _recv_one(ep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="messages per stream")
    parser.add_argument("--pings", type=int, default=20_000, help="ping-pong round trips")
    args = parser.parse_args(argv)

    runtime_dir = Path(tempfile.mkdtemp(prefix="mybus-demo-", dir="/dev/shm"))
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_peer, args=(str(runtime_dir), child_end), daemon=True)
    try:
        with Endpoint(Registry(runtime_dir), spin=100e-6) as ep:
            ep.bind("main")
            proc.start()
            if not parent_end.poll(30):
                raise TimeoutError("the peer process did not start")
            pid = parent_end.recv()
            print(f"main (pid {os.getpid()}) -> counter (pid {pid}), rings in {runtime_dir}")
            rates = {
                "64 B bytes": _stream(ep, b"x" * 64, args.count),
                "small dict": _stream(ep, {"i": 1, "v": "x" * 40}, args.count),
                "4 KiB bytes": _stream(ep, b"x" * 4096, args.count // 4),
            }
            rtts = []
            for _ in range(args.pings):
                t0 = time.perf_counter()
                assert _ask(ep, "ping") == "pong"
                rtts.append(time.perf_counter() - t0)
            rtts.sort()
            total = _ask(ep, "stop")
            proc.join(10)
            print(f"{'stream':<14}{'messages/s':>14}")
            for name, rate in rates.items():
                print(f"{name:<14}{rate:>14,.0f}")
            med = rtts[len(rtts) // 2] * 1e6
            p99 = rtts[int(len(rtts) * 0.99)] * 1e6
            print(f"ping-pong round trip: median {med:.1f} us, p99 {p99:.1f} us")
            print(f"the peer counted {total} messages; all rings closed")
    finally:
        if proc.is_alive():
            proc.kill()
        if proc.pid is not None:
            proc.join(5)
        left = [str(p) for p in runtime_dir.rglob("*") if p.is_file()]
        shutil.rmtree(runtime_dir, ignore_errors=True)
        if left:
            print(f"warning: files were left behind: {left}")


if __name__ == "__main__":
    main()
