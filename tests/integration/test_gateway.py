"""`mybus-gateway` across real processes: two (or three) nodes on loopback.

Each node has its own name, its own runtime directory (``<per-test dir>/<node>``, on
/dev/shm through the `runtime_dir` fixture) and its own port (picked free by binding
port 0). Gateways are real ``mybus-gateway`` processes whose stderr a thread reads;
every wait is bounded (a log line awaited with a deadline, asks and receives with a
timeout). The `cluster` fixture stops every actor, closes every client, stops each
gateway with SIGTERM and asserts it exited 0, then asserts that no file is left in any
node's directory; `runtime_dir` then asserts that no child process is left. Tests that
move many messages, or 100 MiB, are marked ``stress``.

Tests that need nothing but two (or three) plain nodes take the user's test kit's
`mybus_cluster` instead (``mybus_actors.testing``: the same checks at teardown, and
its gateways reach each other through the kit's link proxies).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mybus_actors as mb
from mybus_actors import snapshot
from mybus_actors.ref import close_clients
from mybus_actors.registry import Registry
from mybus_actors.testing import ClusterFactory

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    # spawn() hands sys.path to the children as PYTHONPATH: they import gateway_lib too.
    sys.path.insert(0, str(HERE))

import gateway_lib as lib  # noqa: E402
import waiting  # noqa: E402

pytestmark = pytest.mark.timeout(90)

WAIT = 10.0  # the bound on any single receive, ask or log line that should come
SECRET = "the-shared-secret-" + uuid.uuid4().hex
LOCAL = "127.0.0.1"

FLAGS = [
    "--node", "--listen", "--peer", "--peers-file", "--runtime-dir", "--secret-file",
    "--tls-cert", "--tls-key", "--tls-ca", "--route-idle", "--max-links", "--heartbeat",
    "--unreachable-grace", "--channel-idle", "--log-level",
]  # fmt: skip


def leftover_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


class Cluster:
    """Gateways, actors, clients and proxies one test started; `close` undoes them all."""

    def __init__(self, root: Path, private: Path) -> None:
        self.root = root  # node directories live here (tmpfs)
        self.private = private  # secret files live here, outside the node directories
        self.ports: dict[str, int] = {}
        self.gateways: dict[str, lib.GatewayProc] = {}
        self.refs: list[mb.Ref] = []
        self.clients: list[mb.Client] = []
        self.proxies: list[lib.CuttingProxy] = []
        self.nodes: set[str] = set()
        self.undeliverable: set[str] = set()  # nodes whose outboxes a test leaves full
        self._started: dict[str, list[lib.GatewayProc]] = {}
        self._retired: list[lib.GatewayProc] = []  # killed and replaced: logs kept

    def dir(self, node: str) -> Path:
        self.nodes.add(node)
        path = self.root / node
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def port(self, node: str) -> int:
        if node not in self.ports:
            self.ports[node] = lib.free_port()
        return self.ports[node]

    def gateway(
        self,
        node: str,
        peers: Iterable[str] = (),
        *,
        via: dict[str, int] | None = None,
        secret: str | None = SECRET,
        secret_file: Path | None = None,
        extra: Iterable[str] = (),
        host: str = LOCAL,
        peer_hosts: dict[str, str] | None = None,
        prefix: Iterable[str] = (),
    ) -> lib.GatewayProc:
        """Start ``node``'s gateway, peered to ``peers`` (``via`` overrides a peer's port)."""
        addresses = {
            p: ((peer_hosts or {}).get(p, LOCAL), (via or {}).get(p, self.port(p))) for p in peers
        }
        gw = lib.GatewayProc(
            node, self.dir(node), self.port(node), peers=addresses, secret=secret,
            secret_file=secret_file, host=host, extra=extra, prefix=prefix,
        )  # fmt: skip
        self.gateways[node] = gw
        self._retired.extend(self._started.pop(node, ()))
        self._started[node] = [gw]
        gw.wait_listening()
        return gw

    def restart_gateway(self, node: str) -> lib.GatewayProc:
        """SIGKILL ``node``'s gateway, then start it again as it was (same port, flags)."""
        self.gateways[node].kill()
        return self.start_again(node)

    def start_again(self, node: str) -> lib.GatewayProc:
        """Start ``node``'s gateway as it was (same port, flags) after it was killed."""
        old = self.gateways[node]
        gw = lib.GatewayProc(
            node, self.dir(node), self.port(node), peers=old.peers, secret=old.secret,
            secret_file=old.secret_file, host=old.host, extra=old.extra, prefix=old.prefix,
        )  # fmt: skip
        self.gateways[node] = gw
        self._retired.append(old)
        gw.wait_listening()
        return gw

    def spawn(self, cls: type[mb.Actor], name: str, node: str, **kwargs: Any) -> mb.Ref:
        ref = mb.spawn(cls, name, kwargs=kwargs or None, node=node, runtime_dir=self.dir(node))
        self.refs.append(ref)
        return ref

    def connect(self, node: str, name: str | None = None, **options: Any) -> mb.Client:
        client = mb.connect(name, node=node, runtime_dir=self.dir(node), **options)
        self.clients.append(client)
        return client

    def proxy(
        self, to_node: str, period: float, every_bytes: int | None = None
    ) -> lib.CuttingProxy:
        proxy = lib.CuttingProxy((LOCAL, self.port(to_node)), period, every_bytes)
        self.proxies.append(proxy)
        return proxy

    def stop_gateway(self, node: str) -> int:
        return self.gateways[node].terminate()

    def close(self) -> None:
        problems: list[str] = []
        try:
            for ref in reversed(self.refs):
                try:
                    if not ref.stop(timeout=5):
                        problems.append(f"{ref} had to be killed")
                except Exception as exc:
                    problems.append(f"{ref} did not stop: {exc!r}")
                    ref.kill()
                finally:
                    ref.join(10)
        finally:
            for client in self.clients:
                client.close()
            close_clients()
            for proxy in self.proxies:
                proxy.close()
            for node, gw in self.gateways.items():
                code = gw.terminate()
                if gw.killed:  # what its SIGKILL left behind, and what waits for it
                    Registry(self.dir(node)).reclaim(outboxes=True)
                elif code != 0:
                    problems.append(f"gateway {node} exited {code}:\n{gw.log.text()}")
            for node in self.undeliverable:  # kept for a gateway that will never come
                Registry(self.dir(node)).reclaim(outboxes=True)
        for node in sorted(self.nodes):
            left = leftover_files(self.root / node)
            if left:
                problems.append(f"files left in {node}'s runtime directory: {left}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def cluster(runtime_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(runtime_dir, tmp_path)
    try:
        yield started
    finally:
        started.close()


def receive_until(client: mb.Client, predicate: Any, timeout: float = WAIT) -> Any:
    return waiting.receive_until(client, predicate, timeout)


def two_nodes(cluster: Cluster, *extra: str) -> tuple[lib.GatewayProc, lib.GatewayProc]:
    """alpha and beta, each peered to the other, both with ``extra`` flags."""
    alpha = cluster.gateway("alpha", ["beta"], extra=extra)
    beta = cluster.gateway("beta", ["alpha"], extra=extra)
    return alpha, beta


# -- 1. ask and tell, both directions --------------------------------------------------


def test_ask_and_tell_across_two_nodes_both_ways(mybus_cluster: ClusterFactory) -> None:
    alpha, beta = mybus_cluster(2, names=["alpha", "beta"])
    beta.spawn(lib.Echo, "echo")
    alpha.spawn(lib.Echo, "echo")
    alpha.spawn(lib.Echo, "relay", kwargs={"notify": "observer"})
    on_alpha = alpha.connect("asker")
    observer = alpha.connect("observer")
    on_beta = beta.connect("asker")

    # alpha -> beta and beta -> alpha; the remote actor sees the sender qualified.
    seen = on_alpha.ask("beta/echo", ("whoami",), timeout=WAIT)
    assert seen["address"] == "beta/echo"
    assert seen["sender"] == "alpha/asker"
    seen = on_beta.ask("alpha/echo", ("whoami",), timeout=WAIT)
    assert seen["address"] == "alpha/echo"
    assert seen["sender"] == "beta/asker"

    # tell: the echo's reply to a tell comes back to the client, across the link.
    on_alpha.tell("beta/echo", ("hello", 1))
    assert on_alpha.receive(timeout=WAIT) == ("hello", 1)
    assert on_alpha.last_sender == "beta/echo"
    on_beta.tell("alpha/echo", ("hello", 2))
    assert on_beta.receive(timeout=WAIT) == ("hello", 2)

    # An actor's tell: the remote actor sees "alpha/relay" (reported to a third party).
    assert on_alpha.ask("relay", ("forward", "beta/echo", ("report_sender", "alpha/observer")),
                        timeout=WAIT) == "forwarded"  # fmt: skip
    assert observer.receive(timeout=WAIT) == ("sender was", "alpha/relay")

    # 8 MiB each way, and the replies.
    big = os.urandom(8 << 20)
    assert on_alpha.ask("beta/echo", big, timeout=30) == big
    assert on_beta.ask("alpha/echo", big, timeout=30) == big
    assert on_alpha.ask("beta/echo", ("size", big), timeout=30) == (len(big), zlib.crc32(big))
    on_beta.tell("alpha/echo", big)
    assert on_beta.receive(timeout=30) == big

    # Nobody is called that on beta: the ask fails, and an actor's tell comes back to it
    # as a dead letter (which it forwards to the observer).
    with pytest.raises(mb.ActorNotFound, match="nobody"):
        on_alpha.ask("beta/nobody", "anyone?", timeout=WAIT)
    assert on_alpha.ask("relay", ("forward", "beta/nobody", ("lost", 7)),
                        timeout=WAIT) == "forwarded"  # fmt: skip
    dead = receive_until(observer, lambda m: m[0] == "dead")
    assert dead[1] == ("lost", 7)
    assert "nobody" in dead[2]
    assert on_alpha.ask("beta/echo", "still there?", timeout=WAIT) == "still there?"


# -- 2. many senders, one collector ----------------------------------------------------


# The gateways and actors on the pure-Python ring core (the test's own clients stay on
# the native one, so the two cores share rings too): the relay's pure twins at work.
CORES = [
    pytest.param({}, id="native-core"),
    pytest.param({"MYBUS_PURE_PYTHON": "1"}, id="pure-core"),
]


def core_of(gateway: lib.GatewayProcess) -> str:
    """The ring core a gateway says it runs (its log's line at start)."""
    return "python" if gateway.log.count(r"ring core: pure Python") else "native"


@pytest.mark.stress
@pytest.mark.parametrize("core_env", CORES)
def test_three_senders_on_alpha_into_one_collector_on_beta(
    cluster: Cluster, core_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in core_env.items():
        monkeypatch.setenv(key, value)  # inherited by the gateways and spawned actors
    per_sender = 5000
    senders = ["s0", "s1", "s2"]
    two_nodes(cluster)
    observer = cluster.connect("beta", "observer")
    cluster.spawn(lib.Collector, "collector", "beta", producers=senders, notify="observer")
    for name in senders:
        cluster.spawn(lib.Numbered, name, "alpha")
    starter = cluster.connect("alpha")
    for name in senders:  # s1 by plain tells: past the first, into the forward ring in C
        how = ("plain",) if name == "s1" else ()
        starter.tell(name, ("go", "beta/collector", per_sender, *how))
    for _ in senders:
        assert starter.receive(timeout=60)[0] == "done"
    # Each sender's end marker travels behind its last message: a barrier per sender.
    assert receive_until(observer, lambda m: m[0] == "all ended", timeout=60) == (
        "all ended",
        senders,
    )
    report = observer.ask("collector", "report", timeout=WAIT)
    assert report["misnamed"] == []
    got = report["got"]
    assert sorted(got) == [f"alpha/{s}" for s in senders]
    for name in senders:
        assert got[f"alpha/{name}"] == list(range(per_sender))  # in order, none lost or twice
    expected = "python" if core_env else "native"
    assert [core_of(cluster.gateways[n]) for n in ("alpha", "beta")] == [expected] * 2


@pytest.mark.parametrize("core_env", CORES)
def test_per_pair_order_holds_for_a_large_message_then_small_ones(
    mybus_cluster: ClusterFactory, core_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in core_env.items():
        monkeypatch.setenv(key, value)  # inherited by the gateways and spawned actors
    size = 4 << 20  # cut into fragments on the link
    cluster = mybus_cluster(2, names=["alpha", "beta"])
    alpha, beta = cluster
    observer = beta.connect("observer")
    beta.spawn(lib.Sink, "sink", kwargs={"notify": "observer"})
    me = alpha.connect()
    me.tell("beta/sink", ("before", 0))
    me.tell("beta/sink", lib.pattern(size))
    for i in range(3):
        me.tell("beta/sink", ("after", i))
    assert receive_until(observer, lambda m: m[0] == "arrived", timeout=30)[2] == size
    # One sender, one receiver: FIFO end to end, whatever the sizes (DESIGN: "Per-pair
    # order holds end to end"), as it does on one node.
    assert me.ask("beta/sink", "log?", timeout=WAIT) == [
        ("before", 0),
        ("bytes", size),
        ("after", 0),
        ("after", 1),
        ("after", 2),
    ]
    expected = "python" if core_env else "native"
    assert [core_of(cluster.gateway(n)) for n in ("alpha", "beta")] == [expected] * 2


# -- 3. connections cut every few hundred ms -------------------------------------------


@pytest.mark.stress
def test_exactly_once_in_order_through_a_proxy_that_cuts_connections(cluster: Cluster) -> None:
    total = 20_000
    beat = ["--heartbeat", "0.2"]
    proxy = cluster.proxy("beta", period=0.2, every_bytes=200_000)
    # Beta dials alpha too (for replies, or first after a cut): through a cutting proxy
    # of its own, or the link could bypass the cuts for the rest of the stream.
    back = cluster.proxy("alpha", period=0.2, every_bytes=200_000)
    alpha = cluster.gateway("alpha", ["beta"], via={"beta": proxy.port}, extra=beat)
    cluster.gateway("beta", ["alpha"], via={"alpha": back.port}, extra=beat)
    observer = cluster.connect("beta", "observer")
    cluster.spawn(lib.Collector, "collector", "beta", producers=["s0"], notify="observer")
    cluster.spawn(lib.Numbered, "s0", "alpha")
    starter = cluster.connect("alpha")
    assert starter.ask("beta/collector", "report", timeout=WAIT)["got"] == {}  # link up

    downs = alpha.log.count(r"link down: beta")
    cuts = proxy.cuts + back.cuts
    assert starter.ask("s0", ("go", "beta/collector", total), timeout=60) == ("done", "s0")
    assert receive_until(observer, lambda m: m[0] == "all ended", timeout=60) == (
        "all ended",
        ["s0"],
    )
    # The proxy did cut the link while the messages flowed (every 200 kB of them), and
    # alpha dialled again (the line is another process's: waited for, with a bound).
    assert proxy.cuts + back.cuts >= cuts + 3, (proxy.cuts, back.cuts, cuts)
    alpha.log.wait_for(r"link down: beta", WAIT, count=downs + 3)
    report = observer.ask("collector", "report", timeout=WAIT)
    assert report["misnamed"] == []
    got = report["got"]["alpha/s0"]
    assert len(got) == total and len(set(got)) == total  # none lost, none duplicated
    assert got == list(range(total))  # in order
    assert alpha.log.count(r"link up: beta") >= 2, alpha.log.text()
    # And the link still works both ways (through whatever connection is up now).
    assert starter.ask("beta/collector", "report", timeout=WAIT)["misnamed"] == []


# -- 4. who may not talk to beta -------------------------------------------------------


def _refused(port: int, data: bytes) -> bytes:
    """Connect to a gateway, read its HELLO, send ``data``; return what came before EOF."""
    got = b""
    with socket.create_connection((LOCAL, port), timeout=WAIT) as s:
        s.settimeout(WAIT)
        deadline = time.monotonic() + WAIT
        while len(got) < 8:  # its HELLO comes first, unasked
            chunk = s.recv(4096)
            assert chunk, "the gateway closed before sending its HELLO"
            got += chunk
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        while True:  # then it must hang up on us (bounded by the socket timeout)
            assert time.monotonic() < deadline, "the gateway kept the connection open"
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got


def test_wrong_secret_and_garbage_are_refused_and_traffic_goes_on(cluster: Cluster) -> None:
    alpha, beta = two_nodes(cluster)
    secret_file = cluster.private / "gamma-secret"
    secret_file.write_text("not-the-shared-secret\n")
    gamma = cluster.gateway("gamma", ["beta"], secret=None, secret_file=secret_file)
    cluster.spawn(lib.Echo, "echo", "beta")
    me = cluster.connect("alpha")

    def traffic_goes_on(tag: str) -> None:
        assert me.ask("beta/echo", tag, timeout=WAIT) == tag
        assert alpha.alive() and beta.alive() and gamma.alive()

    traffic_goes_on("before")
    rejected = beta.log.count(r"rejected peer")

    # gamma knows another secret: beta refuses it (and gamma refuses beta's proof).
    outsider = cluster.connect("gamma")
    outsider.tell("beta/echo", "let me in")
    beta.log.wait_for(r"rejected peer .*bad signature", WAIT)
    gamma.log.wait_for(r"rejected peer .*bad signature in AUTH from 'beta'", WAIT)
    with pytest.raises(mb.AskTimeout):
        outsider.ask("beta/echo", "still no?", timeout=1)
    assert beta.log.count(r"link up: gamma") == 0
    assert gamma.log.count(r"link up") == 0
    traffic_goes_on("after the wrong secret")
    cluster.undeliverable.add("gamma")  # its two messages wait in its outbox for ever

    header = struct.Struct("<2sBBI")
    attempts = [
        # random bytes (never starting with the magic)
        (b"\x00" + os.urandom(200), r"bad magic"),
        # a valid HELLO header, then a body whose node-name length runs past its end
        (header.pack(b"MB", 2, 1, 44) + bytes([200]) + os.urandom(43), r"HELLO frame truncated"),
        # a HELLO announcing 4 GiB
        (header.pack(b"MB", 2, 1, 0xFFFF_FFF0), r"HELLO frame length \d+ over max_frame"),
        # a DATA frame before any handshake
        (header.pack(b"MB", 2, 3, 1 << 20) + bytes(64), r"DATA frame during the handshake"),
    ]
    for data, why in attempts:
        before = beta.log.count(r"rejected peer")
        got = _refused(beta.port, data)
        assert got[:4] == b"MB\x02\x01", got[:16]  # beta's HELLO, and nothing else it owes
        beta.log.wait_for(r"rejected peer 127\.0\.0\.1:\d+: .*" + why, WAIT)
        assert beta.log.count(r"rejected peer") > before
        traffic_goes_on(f"after {why}")
    assert beta.log.count(r"rejected peer") > rejected
    assert "Traceback" not in beta.log.text()


# -- 5. idle links and --max-links -----------------------------------------------------


@pytest.mark.parametrize("heartbeat", ["1.0", "0.2"], ids=["heartbeat-1s", "heartbeat-0.2s"])
def test_idle_link_closes_and_reopens_on_the_next_message(cluster: Cluster, heartbeat: str) -> None:
    # With heartbeat 0.2 s (as with the defaults, 1 s and 60 s) PINGs cross the link more
    # often than --route-idle: an idle link is still one that carries no messages.
    flags = ["--heartbeat", heartbeat]
    alpha = cluster.gateway("alpha", ["beta"], extra=[*flags, "--route-idle", "0.5"])
    cluster.gateway("beta", ["alpha"], extra=flags)
    cluster.spawn(lib.Echo, "echo", "beta")
    me = cluster.connect("alpha")

    assert me.ask("beta/echo", "first", timeout=WAIT) == "first"
    alpha.log.wait_for(r"link up: beta", WAIT)
    alpha.log.wait_for(r"link to beta closed: idle", WAIT)
    alpha.log.wait_for(r"link down: beta", WAIT)
    assert me.ask("beta/echo", "again", timeout=WAIT) == "again"
    alpha.log.wait_for(r"link up: beta", WAIT, count=2)
    alpha.log.wait_for(r"link to beta closed: idle", WAIT, count=2)


def test_max_links_closes_the_least_active_and_it_reopens(cluster: Cluster) -> None:
    alpha = cluster.gateway("alpha", ["beta", "gamma"], extra=["--max-links", "1"])
    cluster.gateway("beta", ["alpha"])
    cluster.gateway("gamma", ["alpha"])
    cluster.spawn(lib.Echo, "echo", "beta")
    cluster.spawn(lib.Echo, "echo", "gamma")
    me = cluster.connect("alpha")

    assert me.ask("beta/echo", "to beta", timeout=WAIT) == "to beta"
    alpha.log.wait_for(r"link up: beta", WAIT)
    assert me.ask("gamma/echo", "to gamma", timeout=WAIT) == "to gamma"
    alpha.log.wait_for(r"link up: gamma", WAIT)
    alpha.log.wait_for(r"link to beta closed: least active beyond --max-links", WAIT)
    alpha.log.wait_for(r"link down: beta", WAIT)

    assert me.ask("beta/echo", "beta again", timeout=WAIT) == "beta again"
    alpha.log.wait_for(r"link up: beta", WAIT, count=2)
    alpha.log.wait_for(r"link to gamma closed: least active beyond --max-links", WAIT)
    assert me.ask("gamma/echo", "gamma again", timeout=WAIT) == "gamma again"
    assert me.ask("beta/echo", "and beta", timeout=WAIT) == "and beta"


# -- 6. a large message does not hold small ones back ----------------------------------


@pytest.mark.stress
@pytest.mark.timeout(120)
def test_small_messages_overtake_a_100_mib_one_on_the_same_link(cluster: Cluster) -> None:
    # One process on alpha tells a 100 MiB message (its tell returns once the last
    # fragment is in its ring to the gateway: the ring is the outbox, so most of the
    # transfer is over by then); meanwhile another asks 20 times over the same link.
    size = 100 << 20
    two_nodes(cluster)
    observer = cluster.connect("beta", "observer")
    cluster.spawn(lib.Sink, "sink", "beta", notify="observer")
    cluster.spawn(lib.Echo, "echo", "beta")
    cluster.spawn(lib.BigSender, "big", "alpha")
    me = cluster.connect("alpha")
    assert me.ask("beta/echo", "link up", timeout=WAIT) == "link up"

    blobs = cluster.dir("beta") / "blobs"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(me.ask, "big", ("go", "beta/sink", size), timeout=90)
        lib.until(lambda: any(blobs.iterdir()), 30, "beta's gateway began the large message")
        asked = time.monotonic()
        answers = [me.ask("beta/echo", ("small", k), timeout=WAIT) for k in range(20)]
        done = time.monotonic()
        arrival = receive_until(observer, lambda m: m[0] == "arrived", timeout=90)
        times = big.result(timeout=90)
    _, arrived, length, crc = arrival
    assert (length, crc) == (size, zlib.crc32(lib.pattern(size)))
    assert answers == [("small", k) for k in range(20)]
    # All monotonic times on this host. Had the asks waited behind the large message,
    # they would have finished after it; they finished before it was whole on beta,
    # taking a small part of its transfer.
    transfer = arrived - times["start"]
    assert asked < done < arrived, (times, asked, done, arrived)
    assert done - asked < 0.5 * transfer, (
        f"20 asks took {done - asked:.3f}s of a {transfer:.3f}s transfer"
    )


def test_a_busy_receiver_of_a_large_message_does_not_stall_other_traffic(
    cluster: Cluster,
) -> None:
    size = 8 << 20  # more than a ring holds: its delivery waits for the receiver
    alpha, beta = two_nodes(cluster, "--heartbeat", "0.2")
    observer = cluster.connect("beta", "observer")
    cluster.spawn(lib.Sink, "sink", "beta", notify="observer")
    cluster.spawn(lib.Echo, "echo", "beta")
    me = cluster.connect("alpha")
    assert me.ask("beta/echo", "up", timeout=WAIT) == "up"
    release = cluster.private / "release-sink"
    observer.tell("sink", ("hold", str(release)))
    assert observer.receive(timeout=WAIT) == ("holding",)
    try:
        me.tell("beta/sink", lib.pattern(size), timeout=WAIT)
        # For two seconds while the sink is busy, beta's gateway relays other traffic:
        # every ask through it is answered promptly (and the link keeps its heartbeat).
        window = time.monotonic() + 2.0
        asks = 0
        while time.monotonic() < window:
            assert me.ask("beta/echo", asks, timeout=1.0) == asks
            asks += 1
    finally:
        release.touch()
    arrival = receive_until(observer, lambda m: m[0] == "arrived", timeout=30)
    assert arrival[2:] == (size, zlib.crc32(lib.pattern(size)))
    assert alpha.log.count(r"no word for") == 0, alpha.log.text()
    assert beta.log.count(r"no word for") == 0, beta.log.text()


def _sink_ring_full(cluster: Cluster) -> int:
    """Times a sender (here only beta's gateway) found a ring into the sink's process full."""
    snap = snapshot.take(Registry(cluster.dir("beta")), "beta")
    sink = next(a for a in snap.actors if a.name == "sink")
    return snap.processes[sink.mailbox].full_events


def test_what_waits_for_a_full_ring_follows_as_soon_as_it_drains(cluster: Cluster) -> None:
    """Beta's gateway fills a held receiver's ring; the rest waits in the gateway. Once
    the receiver reads again the rest follows within milliseconds (the gateway looks
    again every millisecond while deliveries wait), not after its long idle sleep:
    nobody rings a gateway when a ring drains, so a gateway asleep when the ring filled
    must have woken to look again. (One that slept its idle sleep out, 0.5 s from the
    tells, showed gaps of 0.45-0.49 s here; one that looks again, under 1 ms.)"""
    two_nodes(cluster)
    observer = cluster.connect("beta", "observer")
    cluster.spawn(lib.Sink, "sink", "beta", notify="observer")
    me = cluster.connect("alpha")
    chunk = lib.pattern(64 << 10)
    count = 48  # 3 MiB: more than the sink's ring holds, less than it and the outbox
    gaps = []
    for rnd in range(4):
        release = cluster.private / f"release-{rnd}"
        observer.tell("sink", ("hold", str(release)))
        assert observer.receive(timeout=WAIT) == ("holding",)
        full = _sink_ring_full(cluster)
        for _ in range(count):
            me.tell("beta/sink", chunk, timeout=WAIT)
        # Beta's gateway found the sink's ring full: what is left waits there.
        waiting.wait_until(
            lambda before=full: _sink_ring_full(cluster) > before, WAIT, "sink's ring full"
        )
        release.touch()
        arrivals = [
            receive_until(observer, lambda m: m[0] == "arrived", timeout=WAIT)
            for _ in range(count)
        ]
        assert all(a[2:] == (len(chunk), zlib.crc32(chunk)) for a in arrivals)
        times = [a[1] for a in arrivals]
        gaps.append(max(b - a for a, b in itertools.pairwise(times)))
    assert max(gaps) < 0.2, f"longest gap between arrivals in each round: {gaps}"


# -- 7. two network namespaces ---------------------------------------------------------


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "no `ip` command"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mbtest-probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          timeout=WAIT)  # fmt: skip
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=WAIT)
    return None


def test_ask_between_two_network_namespaces(cluster: Cluster) -> None:
    reason = _netns_unavailable()
    if reason is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:4]}"
    ns_a, ns_b = f"mbtest-a-{tag}", f"mbtest-b-{tag}"
    ip_a, ip_b = "192.0.2.1", "192.0.2.2"
    made: list[str] = []
    host: subprocess.Popen[bytes] | None = None
    try:
        for ns in (ns_a, ns_b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", ns_a, "link", "add", "mb0", "type", "veth", "peer", "name", "mb1", "netns", ns_b)
        for ns, dev, addr in ((ns_a, "mb0", ip_a), (ns_b, "mb1", ip_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

        alpha = cluster.gateway(
            "alpha", ["beta"], host=ip_a, peer_hosts={"beta": ip_b},
            prefix=["ip", "netns", "exec", ns_a],
        )  # fmt: skip
        beta = cluster.gateway(
            "beta", ["alpha"], host=ip_b, peer_hosts={"alpha": ip_a},
            prefix=["ip", "netns", "exec", ns_b],
        )  # fmt: skip
        script = str(HERE / "gateway_lib.py")
        host = subprocess.Popen(
            ["ip", "netns", "exec", ns_b, sys.executable, script, "host-echo", "beta",
             str(cluster.dir("beta"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        out = lib.LogReader(host.stdout, "host-echo in " + ns_b)
        out.wait_for(r"^ready beta/echo$", 60)
        asked = subprocess.run(
            ["ip", "netns", "exec", ns_a, sys.executable, script, "ask", "alpha",
             str(cluster.dir("alpha")), "beta/echo", "across the veth"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip() == "sender=alpha/asker reply=across the veth"
        alpha.log.wait_for(rf"link up: beta \(dialled, {ip_b}:{beta.port}\)", WAIT)
        beta.log.wait_for(rf"link up: alpha \(accepted, {ip_a}:\d+\)", WAIT)
    finally:
        try:
            if host is not None:
                assert host.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    host.stdin.write(b"stop\n")
                    host.stdin.close()
                try:
                    assert host.wait(30) == 0
                finally:
                    if host.poll() is None:
                        host.kill()
                        host.wait(10)
            for node in ("alpha", "beta"):
                if node in cluster.gateways:
                    assert cluster.stop_gateway(node) == 0, cluster.gateways[node].log.text()
        finally:
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=WAIT)


# -- 8. the command line ---------------------------------------------------------------


def test_no_secret_refuses_to_start_and_help_documents_every_flag(cluster: Cluster) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MYBUS_SECRET"}
    node_dir = cluster.dir("lonely")
    env["PYTHONPATH"] = lib.child_pythonpath()
    argv = [*lib.GATEWAY_COMMAND, "--node", "lonely", "--runtime-dir", str(node_dir),
            "--listen", f"{LOCAL}:{cluster.port('lonely')}"]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "MYBUS_SECRET" in done.stderr and "--secret-file" in done.stderr, done.stderr
    # An empty secret file is no secret either.
    empty = cluster.private / "empty-secret"
    empty.write_text("\n")
    done = subprocess.run([*argv, "--secret-file", str(empty)], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode != 0
    assert "MYBUS_SECRET" in done.stderr, done.stderr

    helped = subprocess.run([*lib.GATEWAY_COMMAND, "--help"], env=env, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    from mybus_actors import gateway_config

    actions = gateway_config.parser()._actions
    parsed = {o for a in actions for o in a.option_strings if o[:2] == "--"}
    assert set(FLAGS) <= parsed, (
        f"flags the issue names but the command lacks: {set(FLAGS) - parsed}"
    )
    missing = sorted(flag for flag in set(FLAGS) | parsed if flag not in helped.stdout)
    assert not missing, f"--help does not mention {missing}:\n{helped.stdout}"
    assert "MYBUS_SECRET" in helped.stdout


# -- 9. watching across nodes ----------------------------------------------------------


def test_watch_across_nodes_stopped_and_node_unreachable(mybus_cluster: ClusterFactory) -> None:
    cluster = mybus_cluster(2, names=["alpha", "beta"],
                            node_args={0: ["--unreachable-grace", "1"]})  # fmt: skip
    alpha, beta = cluster
    x = beta.spawn(lib.Echo, "x")
    beta.spawn(lib.Echo, "y")
    alpha.spawn(lib.Watcher, "watcher", kwargs={"forward": "alpha/observer"})
    observer = alpha.connect("observer")
    me = alpha.connect()

    assert me.ask("watcher", ("watch", "beta/x"), timeout=WAIT) == "watching"
    assert observer.receive(timeout=WAIT) == ("synced", "beta/x")  # x has read the watch
    assert x.stop(timeout=5)
    assert observer.receive(timeout=WAIT) == mb.Terminated("beta/x", "stopped")

    assert me.ask("watcher", ("watch", "beta/y"), timeout=WAIT) == "watching"
    assert observer.receive(timeout=WAIT) == ("synced", "beta/y")
    cluster.kill_gateway(beta)
    assert observer.receive(timeout=WAIT) == mb.Terminated("beta/y", "node unreachable")


# -- 10. what comes back, and a gateway out of descriptors ------------------------------


def test_a_client_hears_remote_bounces_and_a_bounced_ask_fails_at_once(
    mybus_cluster: ClusterFactory,
) -> None:
    alpha, beta = mybus_cluster(2, names=["alpha", "beta"])
    beta.spawn(lib.Echo, "echo")
    heard: list[tuple[Any, str]] = []
    me = alpha.connect(on_dead_letter=lambda m, why: heard.append((m, why)))
    assert me.ask("beta/echo", "up", timeout=WAIT) == "up"

    for i in range(10):
        me.tell("beta/nosuch", ("lost", i))
    deadline = time.monotonic() + WAIT
    while len(heard) < 10:  # the client hears them whenever it pumps its mailbox
        assert time.monotonic() < deadline, heard
        with contextlib.suppress(TimeoutError):
            me.receive(timeout=0.1)
    assert sorted(m for m, _ in heard) == [("lost", i) for i in range(10)]
    assert all("nosuch" in why for _, why in heard), heard
    assert me.dead_letters == 10

    started = time.monotonic()
    with pytest.raises(mb.ActorNotFound, match="nosuch"):
        me.ask("beta/nosuch", "anyone?", timeout=30)
    assert time.monotonic() - started < WAIT  # the bounce, not the ask's timeout


def test_a_gateway_out_of_descriptors_delays_deliveries_and_says_so_once(
    cluster: Cluster,
) -> None:
    _alpha, beta = two_nodes(cluster)
    cluster.spawn(lib.Echo, "echo", "beta")
    cluster.spawn(lib.Echo, "late", "beta")  # no ring from beta's gateway to it yet
    heard: list[tuple[Any, str]] = []
    me = cluster.connect("alpha", on_dead_letter=lambda m, why: heard.append((m, why)))
    assert me.ask("beta/echo", "up", timeout=WAIT) == "up"

    soft, hard = resource.prlimit(beta.pid, resource.RLIMIT_NOFILE)
    knocks: list[socket.socket] = []
    try:
        # Not one descriptor to spare: its `ulimit -n` lowered to the number its next
        # descriptor would get.
        held = {int(fd) for fd in os.listdir(f"/proc/{beta.pid}/fd")}
        lowest_free = min(set(range(len(held) + 1)) - held)
        resource.prlimit(beta.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        for i in range(10):
            me.tell("beta/late", ("n", i))
        for _ in range(3):  # connections beta cannot accept now
            knocks.append(socket.create_connection((LOCAL, beta.port), timeout=WAIT))
        beta.log.wait_for(r"delivering to local actors: .*out of file descriptors", WAIT)
        beta.log.wait_for(r"accepting connections: .*", WAIT)
    finally:
        resource.prlimit(beta.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for knock in knocks:
            knock.close()
    # Delivered once beta has descriptors again: in order, and none bounced.
    assert [me.receive(timeout=WAIT) for _ in range(10)] == [("n", i) for i in range(10)]
    assert heard == [] and me.dead_letters == 0
    assert me.ask("beta/late", "and now?", timeout=WAIT) == "and now?"
    log = beta.log.text()
    assert "Traceback" not in log and "out of system resource" not in log, log
    assert "no actor" not in log, log
    # A line when it starts, not one per attempt (it retried every millisecond; asyncio
    # retries accepting every second).
    assert beta.log.count(r"WARNING delivering to local actors: ") == 1, log
    assert 1 <= beta.log.count(r"WARNING accepting connections: ") <= 3, log
