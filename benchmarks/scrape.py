"""Scrape benchmark: does serving Prometheus metrics slow a stream? (issue: "scraping 100
times a second for 10 s does not slow the stream by more than 10%").

``python benchmarks/scrape.py [--seconds S] [--rounds N] [--rate R] [--json PATH]``

On a private node: a ``Pump`` actor (its own process) tells a ``Counter`` (its own
process) small dicts as fast as the ring takes them; ``mybus metrics --listen`` serves
the node's metrics (its own process, running throughout). Each round measures the
stream for ``--seconds`` (default 10) twice: once unscraped, once while a scraper
process GETs ``/metrics`` ``--rate`` times a second (default 100), in alternating
order. The stream's rate is the Counter's count difference over the window (asked at
both ends, so the figure is what was received). Printed: each round's two rates, the
medians, their ratio (scraped / unscraped; the target is >= 0.90), and the scrapes
served with their latency. Every process is stopped by pid; the runtime directory is
removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

import mybus_actors as mb

_SCRAPER = r"""
import http.client, json, sys, time
url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
host, port = url.split("/")[2].split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=5)  # kept alive, as Prometheus
latencies, failures = [], 0
start = time.monotonic()
i = 0
while True:
    due = start + i / rate
    now = time.monotonic()
    if due - start >= seconds:
        break
    if due > now:
        time.sleep(due - now)
    t = time.perf_counter()
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise OSError(response.status)
        latencies.append(time.perf_counter() - t)
    except (OSError, http.client.HTTPException):
        failures += 1
        conn.close()
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
    i += 1
import os
cpu = sum(os.times()[:2])
print(json.dumps({"scrapes": len(latencies), "failures": failures, "latencies": latencies,
                  "cpu": cpu}))
"""


class Counter(mb.Actor):
    def __init__(self) -> None:
        self.count = 0

    def receive(self, message: Any) -> None:
        if message == "count?":
            self.reply(self.count)
        else:
            self.count += 1


class Pump(mb.Actor):
    """("pump", to): tells ``to`` small dicts until stopped, 200 per turn."""

    def __init__(self) -> None:
        self.to: str | None = None

    def receive(self, message: Any) -> None:
        if isinstance(message, tuple) and message[0] == "pump":
            self.to = message[1]
            self.tell(self.name, "turn")
            self.reply("pumping")
        elif message == "turn" and self.to is not None:
            for i in range(200):
                self.tell(self.to, {"i": i, "v": "x" * 40}, timeout=30)
            self.tell(self.name, "turn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _window(
    me: mb.Client, seconds: float, scraper: list[str] | None, server: psutil.Process
) -> tuple[float, Any]:
    """The Counter's receive rate over ``seconds``, with the scraper running if given;
    and the scraper's report, with the CPU seconds the server spent in the window."""
    proc = None
    if scraper is not None:
        proc = subprocess.Popen(scraper, stdout=subprocess.PIPE, text=True)
    try:
        first = me.ask("counter", "count?", timeout=30)
        t0 = time.monotonic()
        served_cpu = sum(server.cpu_times()[:2])
        time.sleep(seconds)
        served_cpu = sum(server.cpu_times()[:2]) - served_cpu
        last = me.ask("counter", "count?", timeout=30)
        rate = (last - first) / (time.monotonic() - t0)
        report = None
        if proc is not None:
            out, _ = proc.communicate(timeout=seconds + 30)
            report = json.loads(out)
            report["server_cpu"] = served_cpu
        return rate, report
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="scrapes per second")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args()

    node = "scrape" + uuid.uuid4().hex[:6]
    root = Path("/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") / f"mybus-bench-{node}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    server = subprocess.Popen(
        [sys.executable, "-m", "mybus_actors.cli", "metrics", "--listen", f"127.0.0.1:{port}",
         "--node", node, "--runtime-dir", str(root), "--log-level", "warning"],
        env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    refs: list[mb.Ref] = []
    rows: list[dict[str, Any]] = []
    try:
        refs.append(mb.spawn(Counter, "counter", node=node, runtime_dir=root))
        refs.append(mb.spawn(Pump, "pump", node=node, runtime_dir=root))
        scraper = [sys.executable, "-c", _SCRAPER, url, str(args.rate), str(args.seconds)]
        watched = psutil.Process(server.pid)
        with mb.connect(node=node, runtime_dir=root) as me:
            assert me.ask("pump", ("pump", "counter"), timeout=30) == "pumping"
            time.sleep(1.0)  # the stream settles; the server is up by now
            for r in range(args.rounds):
                order = ("off", "on") if r % 2 == 0 else ("on", "off")
                row: dict[str, Any] = {"round": r + 1}
                for mode in order:
                    rate, report = _window(
                        me, args.seconds, scraper if mode == "on" else None, watched
                    )
                    row[mode] = rate
                    if report is not None:
                        row["scrapes"] = report["scrapes"]
                        row["failures"] = report["failures"]
                        row["server_cpu_ms"] = report["server_cpu"] * 1e3 / report["scrapes"]
                        row["scraper_cpu_ms"] = report["cpu"] * 1e3 / report["scrapes"]
                        row["latency_ms"] = statistics.median(report["latencies"]) * 1e3
                        row["latency_p99_ms"] = (
                            sorted(report["latencies"])[int(0.99 * len(report["latencies"]))]
                            * 1e3
                        )
                    print(f"round {r + 1} {mode:>3}: {rate:,.0f} msg/s", flush=True)
                rows.append(row)
    finally:
        for ref in reversed(refs):  # the pump first: it tells the counter
            ref.stop(timeout=10)
            ref.join(10)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    off = statistics.median(r["off"] for r in rows)
    on = statistics.median(r["on"] for r in rows)
    ratio = statistics.median(r["on"] / r["off"] for r in rows)
    print()
    print("# scrape benchmark: a stream (Pump -> Counter, small dicts) with and without")
    print(f"# {args.rate:.0f} scrapes/s of `mybus metrics`, {args.seconds:.0f} s windows;"
          f" nproc {os.cpu_count()}")  # fmt: skip
    print()
    print("| round | unscraped msg/s | scraped msg/s | scraped/unscraped | scrapes served |"
          " failed | scrape median ms | p99 ms | server CPU ms/scrape |"
          " scraper CPU ms/scrape |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['round']} | {r['off']:,.0f} | {r['on']:,.0f} | {r['on'] / r['off']:.3f} |"
            f" {r['scrapes']} | {r['failures']} | {r['latency_ms']:.2f} |"
            f" {r['latency_p99_ms']:.2f} | {r['server_cpu_ms']:.3f} | {r['scraper_cpu_ms']:.3f} |"
        )
    print(f"| median | {off:,.0f} | {on:,.0f} | {ratio:.3f} | | | | | | |")
    verdict = "PASS" if ratio >= 0.9 else "MISS"
    print(f"\n{verdict} scraped stream >= 0.90x unscraped: {ratio:.3f}x (median of rounds)")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
