"""A pipeline of three stages, each an actor in its own process.

    python examples/pipeline.py [items]

parse -> enrich -> total: each stage transforms what it receives and tells the next;
the last stage reports to the client once it has seen the end-of-stream marker.
Order is kept end to end because each hop is one (sender, receiver) ring.
"""

from __future__ import annotations

import sys
import time

import mybus_actors as mb

END = "end"


class Parse(mb.Actor):
    def receive(self, message: object) -> None:
        if message == END:
            self.tell("enrich", END)
        else:
            key, value = str(message).split("=")
            self.tell("enrich", {"key": key, "value": int(value)})


class Enrich(mb.Actor):
    def receive(self, message: object) -> None:
        if isinstance(message, dict):
            message["squared"] = message["value"] ** 2
        self.tell("total", message)


class Total(mb.Actor):
    def __init__(self, report_to: str) -> None:
        self.report_to = report_to
        self.count = 0
        self.sum = 0
        self.in_order = True
        self.last = -1

    def receive(self, message: object) -> None:
        if message == END:
            self.tell(self.report_to, (self.count, self.sum, self.in_order))
            return
        assert isinstance(message, dict)
        self.in_order &= message["value"] > self.last
        self.last = message["value"]
        self.count += 1
        self.sum += message["squared"]


def main(items: int = 20_000) -> None:
    with mb.connect("pipeline-client") as me:
        refs = [
            mb.spawn(Total, "total", args=(me.address,)),
            mb.spawn(Enrich, "enrich"),
            mb.spawn(Parse, "parse"),
        ]
        try:
            start = time.perf_counter()
            for i in range(items):
                me.tell("parse", f"k{i}={i}")
            me.tell("parse", END)
            count, total, in_order = me.receive(timeout=120)
            elapsed = time.perf_counter() - start
            assert count == items and in_order
            assert total == sum(i * i for i in range(items))
            print(f"{items} items through 3 stages in {elapsed:.2f} s")
            print(f"{items / elapsed:,.0f} items/s end to end, order kept: {in_order}")
        finally:
            for ref in refs:
                ref.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
