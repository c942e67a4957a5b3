"""`mybus`: the operator's command for a node's runtime directory.

    mybus ls [--json [--interval S]]             actors, their processes, their rings
    mybus top [--once] [--interval S]            a live view (`top.py`); q quits
    mybus metrics --listen HOST:PORT             Prometheus metrics (`metrics.py`)
    mybus clean [--outboxes]                     reclaim what dead processes left behind
    mybus demo                                   the main job (see mybus_actors.demo)

Each but demo takes [--node N] [--runtime-dir DIR]. Reads the runtime directory; never
writes a ring or talks to an actor (clean removes what the dead left).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Sequence

from mybus_actors import logs, ringcore, snapshot
from mybus_actors.registry import Registry, default_node, resolve_runtime_dir, validate_name

__all__ = ["main"]


def _ls(registry: Registry, node: str) -> int:
    snap = snapshot.take(registry, node)
    print(f"runtime directory {registry.root}")
    print(f"{ringcore.describe()} (in this process; each process says in its own)")
    print(f"{'actor':<32}{'pid':>8}")
    for a in snap.actors:
        print(f"{a.name:<32}{a.pid:>8}")
    if snap.gateway is not None:
        print(f"{'gateway':<32}{snap.gateway.pid:>8}")
    names = snapshot.labels(snap)  # a ring joins two processes: shown as their actors
    if snap.rings:
        print(f"\n{'ring':<48}{'written':>10}{'read':>10}{'unread B':>10}{'full':>6}")
    for r in snap.rings:
        stats = r.stats
        print(
            f"{snapshot.ring_label(r, names):<48}{stats.messages_written:>10}"
            f"{stats.messages_read:>10}{stats.used:>10}{stats.full_events:>6}"
        )
    return 0


def _clean(registry: Registry, outboxes: bool) -> int:
    reclaimed = registry.reclaim(outboxes=outboxes)
    for e in reclaimed:
        print(f"reclaimed {e.name} (pid {e.pid} is gone)")
    print(f"{len(reclaimed)} stale entr{'y' if len(reclaimed) == 1 else 'ies'} reclaimed")
    return 0


def _ls_json(registry: Registry, node: str, interval: float | None) -> int:
    snap, rates = snapshot.sample(registry, node, interval)
    json.dump(snapshot.to_dict(snap, rates), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def _metrics(registry: Registry, node: str, listen: tuple[str, int]) -> int:
    from mybus_actors import metrics  # prometheus_client: only for this command

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server, thread = metrics.serve(registry, node, *listen)
    except OSError as exc:
        sys.exit(f"mybus metrics: cannot listen on {listen[0]}:{listen[1]}: {exc}")
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mybus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("ls", "list actors and rings"),
        ("top", "a live view of the node: rates, backlogs, links (q quits)"),
        ("metrics", "serve Prometheus metrics of the node"),
        ("clean", "reclaim dead leftovers"),
    )
    for name, text in commands:
        p = sub.add_parser(name, help=text)
        p.add_argument("--node", help="default: MYBUS_NODE, else the host name")
        p.add_argument("--runtime-dir", help="default: MYBUS_RUNTIME_DIR, else /dev/shm/...")
        if name == "ls":
            p.add_argument("--json", action="store_true", help="the snapshot as JSON")
            p.add_argument(
                "--interval", type=float, default=None, metavar="SECONDS",
                help="with --json: take two snapshots this far apart and add the rates",
            )  # fmt: skip
        elif name == "top":
            p.add_argument("--once", action="store_true", help="print one frame and exit")
            p.add_argument(
                "--interval", type=float, default=1.0, metavar="SECONDS",
                help="refresh period, and what --once measures rates over (default 1)",
            )  # fmt: skip
        elif name == "metrics":
            p.add_argument(
                "--listen", type=_host_port, required=True, metavar="HOST:PORT",
                help="serve http://HOST:PORT/metrics (port 0: any free port, logged)",
            )  # fmt: skip
            p.add_argument("--log-level", default="info",
                           choices=["debug", "info", "warning", "error"])  # fmt: skip
            p.add_argument("--log-format", default="text", choices=list(logs.FORMATS))
        elif name == "clean":
            p.add_argument(
                "--outboxes", action="store_true",
                help="also give up the messages queued for other nodes by senders that are"
                " gone, when no gateway runs (they are kept for the next gateway otherwise)",
            )  # fmt: skip
    sub.add_parser("demo", help="run the demo: actors in several processes")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from mybus_actors.demo import main as demo

        demo(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    node = validate_name(args.node) if args.node else default_node()
    registry = Registry(resolve_runtime_dir(args.runtime_dir, args.node))
    if args.command == "ls":
        code = _ls_json(registry, node, args.interval) if args.json else _ls(registry, node)
    elif args.command == "top":
        from mybus_actors import top  # rich: only for this command

        code = top.run(registry, node, once=args.once, interval=args.interval)
    elif args.command == "metrics":
        logs.configure("mybus metrics", args.log_level, args.log_format)
        code = _metrics(registry, node, args.listen)
    else:
        code = _clean(registry, args.outboxes)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
