"""Spawn an actor whose class is defined in ``__main__``, ask it, print the answer, stop it.

Run by test_actors.py as ``python main_script.py`` with MYBUS_RUNTIME_DIR and MYBUS_NODE
set: the class cannot be imported by name in the child, so it must travel by value.
"""

from __future__ import annotations

import sys
from typing import Any

import mybus_actors as mb


class Doubler(mb.Actor):
    def receive(self, message: Any) -> None:
        self.reply({"double": message * 2, "module": type(self).__module__})


def main() -> int:
    ref = mb.spawn(Doubler, "doubler")
    try:
        with mb.connect() as me:
            answer = me.ask("doubler", 21, timeout=10)
        print(f"answer: {answer['double']} from a class in {answer['module']}", flush=True)
    finally:
        clean = ref.stop(timeout=5)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
