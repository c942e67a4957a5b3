"""Ping-pong across processes: two actors, each in its own process, bounce a ball.

    python examples/ping_pong.py [rounds]

`Ping` serves the ball to `Pong` and counts returns; the script asks Ping to play a
match and prints how long each exchange took.
"""

from __future__ import annotations

import sys
import time

import mybus_actors as mb


class Pong(mb.Actor):
    def receive(self, message: object) -> None:
        if message == "ping":
            self.reply("pong")


class Ping(mb.Actor):
    async def receive(self, message: object) -> None:
        if isinstance(message, tuple) and message[0] == "play":
            _, opponent, rounds = message
            start = time.perf_counter()
            for _ in range(rounds):
                assert await self.ask(opponent, "ping") == "pong"
            self.reply((rounds, time.perf_counter() - start))


def main(rounds: int = 2000) -> None:
    pong = mb.spawn(Pong, "pong")
    ping = mb.spawn(Ping, "ping")
    try:
        with mb.connect() as me:
            played, seconds = me.ask("ping", ("play", "pong", rounds), timeout=60)
        print(f"ping (pid {ping.pid}) and pong (pid {pong.pid}) played {played} rounds")
        print(f"{seconds / played * 1e6:.1f} us per exchange, actor to actor")
    finally:
        ping.stop()
        pong.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
