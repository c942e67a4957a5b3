"""One end of a ring in its own process, on a chosen core: the cross-core test's peer.

    python ring_core_peer.py produce|consume python|native PATH COUNT SEED

Both ends derive the same messages from SEED (random sizes, mostly small, some larger
than max_record and so sent as fragments), cut from one random block. Each prints
"count crc" of what it wrote or read; the test compares the two lines. Waits are
bounded: past DEADLINE seconds a peer exits with status 3.
"""

from __future__ import annotations

import mmap
import os
import random
import sys
import time
import zlib

from mybus_actors import _ringcore
from mybus_actors import ring as pure

DEADLINE = 120.0
MAX_META = (1 << 24) - 1


def messages(seed: int, count: int, max_record: int) -> tuple[bytes, random.Random]:
    rng = random.Random(seed)
    return rng.randbytes(4 * max_record + 4096), rng


def size_of(rng: random.Random, max_record: int) -> int:
    pick = rng.random()
    if pick < 0.90:
        return rng.randrange(0, 200)
    if pick < 0.999:
        return rng.randrange(200, max_record + 1)
    return rng.randrange(max_record + 1, 4 * max_record)  # fragments


def main() -> int:
    role, core, path, count_s, seed_s = sys.argv[1:6]
    count, seed = int(count_s), int(seed_s)
    module = _ringcore if core == "native" else pure
    fd = os.open(path, os.O_RDWR)
    try:
        buf = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    deadline = time.monotonic() + DEADLINE
    crc = 0
    if role == "produce":
        p = module.Producer(buf)
        block, rng = messages(seed, count, p.max_record)
        for i in range(count):
            n = size_of(rng, p.max_record)
            off = rng.randrange(0, len(block) - n + 1)
            data = block[off : off + n]
            meta = i & MAX_META
            crc = zlib.crc32(data, zlib.crc32(meta.to_bytes(3, "little"), crc))
            if n <= p.max_record:
                while not p.offer(data, meta):
                    if time.monotonic() > deadline:
                        return 3
                    time.sleep(0)
            else:
                sent = 0
                while sent < n:
                    sent = p.offer_fragments(data, meta, sent)
                    if sent < n and time.monotonic() > deadline:
                        return 3
        p.close()
        p.release()
    else:
        c = module.Consumer(buf)
        got = 0
        while True:
            batch = c.poll(256)
            for meta, data in batch:
                if meta != got & MAX_META:
                    print(f"message {got} came with meta {meta}", file=sys.stderr)
                    return 4
                crc = zlib.crc32(data, zlib.crc32(meta.to_bytes(3, "little"), crc))
                got += 1
            if not batch:
                if c.producer_closed and not c.pending:
                    break
                if time.monotonic() > deadline:
                    return 3
                time.sleep(0)
        count = got
        c.release()
    buf.close()
    print(count, crc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
