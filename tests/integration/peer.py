"""A real peer process for the mailbox tests: ``python peer.py ROLE --opt ...``.

Each role binds a name in the runtime directory given by MYBUS_RUNTIME_DIR, talks
through real rings and doorbells, prints ``ready`` when bound, and prints one JSON line
of results before it exits. Roles read "go" on stdin where a test needs a barrier.

Streams are generated from a seed on both sides, so the receiver checks every message
byte for byte against what the sender must have sent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import zlib
from collections.abc import Iterator

from mybus_actors.errors import MailboxFull
from mybus_actors.mailbox import Endpoint
from mybus_actors.registry import Registry, resolve_runtime_dir

BIG = 4 << 20


def stream(seed: int, count: int, max_small: int, big_every: int) -> Iterator[bytes]:
    """The messages a sender sends: random sizes 0..max_small, one of BIG every so often."""
    rng = random.Random(seed)
    pool = rng.randbytes(2 * BIG)
    for i in range(count):
        size = BIG if big_every and i % big_every == big_every // 2 else rng.randint(0, max_small)
        off = rng.randrange(0, len(pool) - size + 1)
        yield pool[off : off + size]


def say(obj: object) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


def endpoint(args: argparse.Namespace) -> Endpoint:
    return Endpoint(
        Registry(resolve_runtime_dir()),
        ring_capacity=args.ring,
        channel_idle=args.idle,
        spin=args.spin,
    )


def role_recv(args: argparse.Namespace) -> None:
    """Receive ``count`` messages per sender and check them against the seeded streams."""
    senders = args.senders.split(",")
    expected = {
        s: stream(args.seed + i, args.count, args.max_small, args.big_every)
        for i, s in enumerate(senders)
    }
    seen = dict.fromkeys(senders, 0)
    crc = dict.fromkeys(senders, 0)
    first_seen: dict[str, int] = {}
    errors: list[str] = []
    total = 0
    want = args.count * len(senders)
    with endpoint(args) as ep:
        ep.bind(args.name)
        say("ready")
        if args.wait_go:
            sys.stdin.readline()
        deadline = time.monotonic() + args.deadline
        while total < want and time.monotonic() < deadline:
            batch = ep.poll()
            if not batch:
                ep.wait(0.05)
                continue
            for d in batch:
                s = d.sender
                first_seen.setdefault(s, total)
                total += 1
                if s not in expected:
                    errors.append(f"unexpected sender {s}")
                    continue
                want_msg = next(expected[s], None)
                if d.payload != want_msg:
                    errors.append(f"{s} message {seen[s]}: {len(d.payload)} bytes differ")
                crc[s] = zlib.crc32(d.payload, crc[s])
                seen[s] += 1
        say({"seen": seen, "crc": crc, "first_seen": first_seen, "errors": errors[:20]})


def role_send(args: argparse.Namespace) -> None:
    """Send the seeded stream to ``--to``; report the running checksum of what was sent."""
    crc = sent = full = 0
    with endpoint(args) as ep:
        ep.bind(args.name)
        say("ready")
        if args.wait_go:
            sys.stdin.readline()
        for msg in stream(args.seed, args.count, args.max_small, args.big_every):
            ep.send(args.name, args.to, msg, timeout=args.timeout)
            crc = zlib.crc32(msg, crc)
            sent += 1
            if sent == args.ready_after:
                say("flowing")
        # Wait until everything is read before closing (the receiver unlinks the rings).
        deadline = time.monotonic() + args.deadline
        while not ep._outbound.drained:
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
        say({"sent": sent, "crc": crc, "full": full})


def role_echo(args: argparse.Namespace) -> None:
    """Answer every message with the same bytes to its sender until b"stop"."""
    with endpoint(args) as ep:
        ep.bind(args.name)
        say("ready")
        count = 0
        while True:
            batch = ep.poll()
            if not batch:
                ep.wait(1.0)
                continue
            for d in batch:
                if d.payload == b"stop":
                    say({"echoed": count})
                    return
                ep.send(args.name, d.sender, d.payload)
                count += 1


def role_slow(args: argparse.Namespace) -> None:
    """Receive 8-byte-numbered messages until one numbered 2**63 or more; report them."""
    with endpoint(args) as ep:
        ep.bind(args.name)
        say("ready")
        if args.wait_go:
            sys.stdin.readline()
        got: list[int] = []
        deadline = time.monotonic() + args.deadline
        while time.monotonic() < deadline:
            batch = ep.poll()
            if not batch:
                ep.wait(0.05)
            numbers = [int.from_bytes(d.payload[:8], "little") for d in batch]
            if numbers and numbers[-1] >= 2**63:
                got.extend(numbers[:-1])
                break
            got.extend(numbers)
        say({"got": len(got), "in_order": got == list(range(len(got)))})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["recv", "send", "echo", "slow"])
    p.add_argument("--name", required=True)
    p.add_argument("--to", default="")
    p.add_argument("--senders", default="")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--max-small", type=int, default=4096)
    p.add_argument("--big-every", type=int, default=0)
    p.add_argument("--ring", type=int, default=1 << 20)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--spin", type=float, default=50e-6)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--wait-go", action="store_true")
    p.add_argument("--ready-after", type=int, default=0)
    args = p.parse_args()
    try:
        {"recv": role_recv, "send": role_send, "echo": role_echo, "slow": role_slow}[args.role](
            args
        )
    except MailboxFull as exc:
        say({"error": f"MailboxFull: {exc}"})
        sys.exit(3)
    sys.exit(0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
