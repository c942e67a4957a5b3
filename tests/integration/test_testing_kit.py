"""A sample user test suite on the test kit (`mybus_actors.testing`) alone.

What a user of the package writes: actors of their own, and tests that take the kit's
fixtures (``mybus_node``, ``probe``, ``mybus_cluster``) with no conftest of their own.
Gateways, proxies and actors are real processes and sockets; every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import mybus_actors as mb
from mybus_actors.testing import ClusterFactory, Node, Probe, wait_for_condition

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0  # the bound on any one thing that should happen


class Echo(mb.Actor):
    """Replies what it gets; ("size", data) is answered with len(data)."""

    def receive(self, message: Any) -> None:
        match message:
            case ("size", data):
                self.reply(len(data))
            case _:
                self.reply(message)


class Streamer(mb.Actor):
    """("go", to, n, pad): tells ``to`` (i, pad bytes) for i in range(n), then replies
    ("done", n). A tell that finds no room waits (up to 60 s) rather than give up."""

    def receive(self, message: Any) -> None:
        _, to, n, pad = message
        padding = b"p" * pad
        for i in range(n):
            self.tell(to, (i, padding), timeout=60)
        self.reply(("done", n))


class Tally(mb.Actor):
    """Keeps the numbers it is told, in arrival order; "count?" and "report" answer."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def receive(self, message: Any) -> None:
        if message == "count?":
            self.reply(len(self.got))
        elif message == "report":
            self.reply(self.got)
        else:
            self.got.append(message[0])


def count(client: mb.Client, tally: str) -> int:
    return int(client.ask(tally, "count?", timeout=WAIT))


# -- a node and a probe ---------------------------------------------------------------


def test_probe_expect_and_expect_no_message_pass_and_fail(mybus_node: Node, probe: Probe) -> None:
    # The environment is the node's: a bare spawn lands there (and is the test's to stop).
    echo = mb.spawn(Echo, "echo")
    try:
        assert echo.address == mybus_node.address("echo")
        probe.tell("echo", "hi")
        assert probe.expect("hi", timeout=WAIT, sender=echo.address) == "hi"

        probe.tell("echo", "something else")
        with pytest.raises(AssertionError, match=r"expected 'hi', received 'something else'"):
            probe.expect("hi", timeout=WAIT)

        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"expected 'late' within 0.3s, received nothing"):
            probe.expect("late", timeout=0.3)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 0.3 + WAIT / 3, waited  # the timeout, not more

        probe.expect_no_message(0.3)
        probe.tell("echo", ("unwanted", 1))
        with pytest.raises(AssertionError, match=r"expected no message for 5.0s, received "
                                                 r"\('unwanted', 1\) from "):  # fmt: skip
            probe.expect_no_message(5.0)  # fails as the message arrives, not after 5 s

        for m in (5, 6, 7):
            probe.tell("echo", m)
        assert probe.fish_for(lambda m: m == 7, timeout=WAIT) == 7  # 5 and 6 skipped
        with pytest.raises(AssertionError, match=r"nothing matching within 0.2s; skipped \[8\]"):
            probe.tell("echo", 8)
            probe.fish_for(lambda m: m == 9, timeout=0.2)
    finally:
        assert echo.stop(timeout=5)


def test_actors_a_node_started_are_stopped_by_it(mybus_node: Node) -> None:
    ref = mybus_node.spawn(Echo, "kept")  # no stop: the node's teardown stops it
    with mybus_node.connect() as me:
        assert me.ask("kept", "there?", timeout=WAIT) == "there?"
    assert ref.is_alive()


# -- two nodes and the link between them -----------------------------------------------


def test_a_stream_through_a_blackhole_and_restore_loses_nothing(
    mybus_cluster: ClusterFactory,
) -> None:
    # 60 MB: far more than a sender's ring to its gateway (2 MiB) and what the gateways
    # keep in flight unacknowledged (1 MiB) hold, and than the stream moves between its
    # start being seen and the blackhole (10 MB, at 100-200 MB/s across nodes, could be
    # all written by then), so most of it waits out the blackhole.
    total, pad = 60_000, 1000
    cluster = mybus_cluster(2, heartbeat=0.2)
    a, b = cluster
    link = cluster.link(a, b)
    tally = b.spawn(Tally, "tally").address
    streamer = a.spawn(Streamer, "streamer").address
    local = b.connect()  # asks on b itself: they need no link
    me = a.probe()
    assert me.ask(tally, "count?", timeout=WAIT) == 0  # the link is up

    me.tell(streamer, ("go", tally, total, pad))
    wait_for_condition(lambda: count(local, tally) >= 500, WAIT, what="the stream begun")
    link.blackhole()  # in the middle of the stream
    # Both gateways find the link silent (three heartbeats) and close it.
    cluster.gateway(a).log.wait_for(rf"link to {b.name}: no word for", WAIT)
    cluster.gateway(b).log.wait_for(rf"link to {a.name}: no word for", WAIT)
    crossed = link.forwarded(a, b)
    held = count(local, tally)
    assert held < total, "the stream ended before the blackhole: nothing was held"
    me.expect_no_message(0.5)  # the streamer is still at it: the rest waits on a
    assert link.forwarded(a, b) == crossed  # not one byte crossed meanwhile

    link.restore()
    me.expect(("done", total), timeout=60)
    wait_for_condition(lambda: count(local, tally) >= total, 60, what="the whole stream")
    got = local.ask(tally, "report", timeout=WAIT)
    assert got == list(range(total))  # none lost, none twice, in order
    assert cluster.gateway(a).log.count(rf"link up: {b.name}") >= 2  # it came back


def test_abort_resets_the_link_mid_stream_and_nothing_is_lost(
    mybus_cluster: ClusterFactory,
) -> None:
    # Several times what the sender's ring holds (2 MiB): at the abort, records are in
    # flight and more wait to be written, so the link is wanted again at once.
    total = 60_000
    cluster = mybus_cluster(2, heartbeat=0.2)
    a, b = cluster
    link = cluster.link(a, b)
    tally = b.spawn(Tally, "tally").address
    streamer = a.spawn(Streamer, "streamer").address
    local = b.connect()
    me = a.probe()
    assert me.ask(tally, "count?", timeout=WAIT) == 0
    gw_a = cluster.gateway(a)
    downs = gw_a.log.count(rf"link down: {b.name}")
    ups = gw_a.log.count(rf"link up: {b.name}")
    accepted = link.accepted
    assert link.connections >= 1

    me.tell(streamer, ("go", tally, total, 100))
    wait_for_condition(lambda: count(local, tally) >= total // 10, WAIT, what="a tenth")
    assert link.abort() >= 1
    assert count(local, tally) < total, "the stream ended before the abort"
    gw_a.log.wait_for(rf"link down: {b.name}", WAIT, count=downs + 1)
    gw_a.log.wait_for(rf"link up: {b.name}", WAIT, count=ups + 1)  # dialled again
    assert link.accepted > accepted

    me.expect(("done", total), timeout=60)
    wait_for_condition(lambda: count(local, tally) >= total, 60, what="the whole stream")
    assert local.ask(tally, "report", timeout=WAIT) == list(range(total))


def test_throttle_holds_throughput_near_the_bound_and_restore_lifts_it(
    mybus_cluster: ClusterFactory,
) -> None:
    rate, size = 256 << 10, 512 << 10  # 2 s of the link's time, at the bound
    cluster = mybus_cluster(2)
    a, b = cluster
    link = cluster.link(a, b)
    echo = b.spawn(Echo, "echo").address
    me = a.probe()
    data = bytes(size)
    assert me.ask(echo, ("size", data), timeout=WAIT) == size  # link up, nothing throttled

    link.throttle(rate)
    before = link.forwarded(a, b)
    started = time.monotonic()
    assert me.ask(echo, ("size", data), timeout=60) == size
    throttled = time.monotonic() - started
    crossed = link.forwarded(a, b) - before
    assert crossed >= size
    # The bucket starts empty and holds 20 ms worth: over the transfer the bound holds
    # within a few percent. It is a throttle, not a stall: the rate is not far below.
    assert crossed / throttled <= rate * 1.1, (crossed, throttled)
    assert crossed / throttled >= rate * 0.3, (crossed, throttled)

    link.restore()
    started = time.monotonic()
    assert me.ask(echo, ("size", data), timeout=WAIT) == size
    assert time.monotonic() - started < throttled / 2


def test_a_blackhole_between_two_nodes_leaves_a_third_alone(
    mybus_cluster: ClusterFactory,
) -> None:
    cluster = mybus_cluster(3, names=["alpha", "beta", "gamma"])
    alpha, beta, gamma = cluster
    beta.spawn(Echo, "echo")
    gamma.spawn(Echo, "echo")
    me = alpha.probe()
    assert me.ask(beta.address("echo"), "up", timeout=WAIT) == "up"
    assert me.ask(gamma.address("echo"), "up", timeout=WAIT) == "up"

    cluster.link("alpha", "beta").blackhole()
    assert cluster.link(beta, alpha).state == "blackhole"  # one link, either order
    me.tell(beta.address("echo"), "through the blackhole")
    assert me.ask(gamma.address("echo"), "gamma still", timeout=WAIT) == "gamma still"
    me.expect_no_message(0.5)  # beta's echo has not had it
    cluster.link(alpha, beta).restore()
    me.expect("through the blackhole", timeout=WAIT, sender=beta.address("echo"))

    me.tell(beta.address("nosuch"), "lost")  # beta's gateway sends it back
    message, reason = me.expect_dead_letter(WAIT)
    assert message == "lost" and "nosuch" in reason
