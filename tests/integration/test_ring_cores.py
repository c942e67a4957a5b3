"""The two ring cores share one layout: a C producer and a pure-Python consumer (and the
other way round) in two processes move 1,000,000 random-size messages, fragments among
them, and agree on every byte (CRC32 over metas and payloads, and the count)."""

from __future__ import annotations

import mmap
import subprocess
import sys
from pathlib import Path

import pytest

from mybus_actors.ring import buffer_size, init_ring

PEER = Path(__file__).with_name("ring_core_peer.py")
COUNT = 1_000_000
CAPACITY = 1 << 20
MAX_RECORD = 16 << 10  # 1 in 1,000 messages is longer: fragments


@pytest.mark.parametrize(("producer", "consumer"), [("native", "python"), ("python", "native")])
def test_a_million_messages_cross_cores_and_processes(
    runtime_dir: Path, producer: str, consumer: str
) -> None:
    path = runtime_dir / f"cores-{producer}-{consumer}"
    with open(path, "w+b") as f:
        f.truncate(buffer_size(CAPACITY))
        with mmap.mmap(f.fileno(), 0) as m:
            init_ring(m, CAPACITY, max_record=MAX_RECORD)
    args = [str(path), str(COUNT), "20261202"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(PEER), role, core, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role, core in (("consume", consumer), ("produce", producer))
    ]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        path.unlink()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    received, sent = (out.split() for out, _ in outs)
    assert sent[0] == str(COUNT)
    assert received == sent
