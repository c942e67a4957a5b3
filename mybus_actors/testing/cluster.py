"""`Cluster`: n nodes on loopback, each with its gateway; `LinkControl` on any pair.

Every node has its own name, runtime directory and gateway (a real ``mybus-gateway``
process, on a port the kernel picks); the cluster has a fresh secret of its own, handed
to its gateways only. Gateways reach each other only through proxies the cluster owns
(`proxy.LinkProxy`, one per pair of nodes, both directions), so that a test can break
the link between two nodes the way Akka's TestConductor does::

    def test_partition_heals(mybus_cluster):
        cluster = mybus_cluster(2, heartbeat=0.2)
        a, b = cluster
        sink = b.spawn(Sink, "sink")
        link = cluster.link(a, b)
        link.blackhole()      # nothing crosses; the gateways' heartbeats notice
        link.restore()        # and the link comes back: nothing lost

`close` (the fixture's teardown) stops every actor and client a node started, closes the
proxies, stops each gateway with SIGTERM (it must exit 0) and reports any file left in a
node's runtime directory; the `mybus_node` fixture under it then checks for processes.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from mybus_actors.ref import close_clients
from mybus_actors.registry import Registry, validate_name

from .gateway_process import GatewayProcess, free_port
from .node import Node
from .proxy import LinkProxy

__all__ = ["Cluster", "ClusterFactory", "Clusters", "LinkControl"]

LOCAL = "127.0.0.1"
START_TIMEOUT = 30.0  # a gateway that does not listen within this is a failed start
_PORT_ATTEMPTS = 3  # ports tried for one gateway start (each free when picked)

NodeRef = Node | int | str  # a node of a cluster: itself, its index or its name


class LinkControl:
    """The link between two nodes of a cluster: every connection either gateway opens
    to the other, whichever dialled. Akka's TestConductor verbs; each takes effect when
    it returns, on the connections open now and on those opened later.

    - `blackhole`: bytes stop flowing, both ways; connections stay open (so the gateways
      find out the way they would on a real network: their heartbeats go unanswered,
      after three ``--heartbeat`` periods they close the link and dial again, reaching
      nobody). Bytes already sent are held, not dropped (TCP would resend them).
    - `throttle`: at most ``bytes_per_s`` each way.
    - `abort`: every connection of the link is reset now; the gateways dial again.
    - `restore`: back to normal (ends a blackhole or a throttle).
    """

    def __init__(self, proxy: LinkProxy, a: Node, b: Node) -> None:
        self._proxy = proxy
        self.a, self.b = a, b
        self._state = "normal"

    def __repr__(self) -> str:
        return f"<LinkControl {self.a.name}~{self.b.name} {self.state}>"

    @property
    def state(self) -> str:
        """"normal", "blackhole" or "throttled"."""
        return self._state

    def blackhole(self) -> None:
        """Nothing crosses the link, either way, until `restore`."""
        self._proxy.blackhole()
        self._state = "blackhole"

    def throttle(self, bytes_per_s: float) -> None:
        """Each way, at most ``bytes_per_s`` cross (over all connections), until `restore`
        (ends a blackhole too)."""
        if not bytes_per_s > 0:
            raise ValueError(f"throttle needs a rate above 0 bytes/s, got {bytes_per_s!r}")
        self._proxy.restore()
        self._proxy.throttle(float(bytes_per_s))
        self._state = "throttled"

    def abort(self) -> int:
        """Reset every connection of the link (a TCP RST to both gateways); returns how
        many there were. The link itself stays as it was (blackholed, throttled or not)."""
        return self._proxy.abort()

    def restore(self) -> None:
        """Back to normal: bytes flow at full speed both ways."""
        self._proxy.restore()
        self._state = "normal"

    @property
    def connections(self) -> int:
        """Connections between the two gateways open now (through this link)."""
        return self._proxy.connections()

    @property
    def accepted(self) -> int:
        """Connections either gateway opened through this link so far."""
        return self._proxy.accepted

    def forwarded(self, src: Node, dst: Node) -> int:
        """Bytes that crossed from ``src``'s gateway to ``dst``'s so far."""
        return self._proxy.forwarded(src.name, dst.name)


class Cluster:
    """n nodes with their gateways, peered through one `LinkControl` per pair.

    Index it (``cluster[0]``, ``cluster["node1"]``), iterate it or unpack it for its
    `Node` objects. Made by the `mybus_cluster` fixture, which closes it.
    """

    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        *,
        heartbeat: float | None = None,
        unreachable_grace: float | None = None,
        gateway_args: Sequence[str] = (),
        node_args: Mapping[int, Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if len(names) < 1 or len(set(names)) != len(names):
            raise ValueError(f"a cluster needs distinct node names, got {list(names)!r}")
        self.root = root
        self.secret = secrets.token_hex(32)  # fresh per cluster, given to its gateways only
        self.nodes = [Node(validate_name(name), root / name) for name in names]
        self._flags: list[list[str]] = []
        for i in range(len(self.nodes)):
            flags: list[str] = []
            if heartbeat is not None:
                flags += ["--heartbeat", str(heartbeat)]
            if unreachable_grace is not None:
                flags += ["--unreachable-grace", str(unreachable_grace)]
            flags += [*gateway_args, *(node_args or {}).get(i, ())]
            self._flags.append(flags)
        self._env = dict(env) if env is not None else None
        self._links: dict[frozenset[str], LinkControl] = {}
        self._retired: list[GatewayProcess] = []  # replaced gateways: stopped, logs kept
        self._closed = False

    # -- nodes ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __getitem__(self, which: NodeRef) -> Node:
        return self.node(which)

    def __repr__(self) -> str:
        return f"<Cluster {[n.name for n in self.nodes]}>"

    def node(self, which: NodeRef) -> Node:
        """The node ``which`` names: a `Node` of this cluster, its index or its name."""
        if isinstance(which, Node):
            if which not in self.nodes:
                raise ValueError(f"{which!r} is not a node of {self!r}")
            return which
        if isinstance(which, int):
            return self.nodes[which]
        for node in self.nodes:
            if node.name == which:
                return node
        raise KeyError(f"no node {which!r} in {self!r}")

    def gateway(self, which: NodeRef) -> GatewayProcess:
        """The node's gateway process now (its `log` to wait on, its `pid`)."""
        gw = self.node(which).gateway
        if gw is None:
            raise RuntimeError(f"{which!r} has no gateway (the cluster is not started)")
        return gw

    def link(self, a: NodeRef, b: NodeRef) -> LinkControl:
        """The link between nodes ``a`` and ``b`` (either order: the same link)."""
        na, nb = self.node(a), self.node(b)
        if na is nb:
            raise ValueError(f"a link joins two nodes, not {na.name} to itself")
        return self._links[frozenset((na.name, nb.name))]

    # -- gateways ------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> Cluster:
        """Make the directories and links, start every gateway and wait until each
        listens (they start together: a gateway takes a while to import)."""
        self.root.mkdir(parents=True, mode=0o700, exist_ok=True)
        for node in self.nodes:
            node.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        for i, a in enumerate(self.nodes):
            for b in self.nodes[i + 1 :]:
                proxy = LinkProxy(a.name, b.name, host=LOCAL)
                self._links[frozenset((a.name, b.name))] = LinkControl(proxy, a, b)
        for node in self.nodes:
            node.gateway = self._launch(node)
        for node in self.nodes:
            self._await(node, timeout)
        return self

    def _launch(self, node: Node) -> GatewayProcess:
        peers = {
            other.name: (LOCAL, self.link(node, other)._proxy.port_for(node.name))
            for other in self.nodes
            if other is not node
        }
        # A port the kernel just had free (the gateway refuses port 0); peers never see
        # it, they dial the link's proxies, so a restarted gateway may take another.
        return GatewayProcess(
            node.name, node.runtime_dir, free_port(LOCAL), peers=peers, secret=self.secret,
            host=LOCAL, extra=self._flags[self.nodes.index(node)], env=self._env,
        )  # fmt: skip

    def _await(self, node: Node, timeout: float) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            gw = self.gateway(node)
            try:
                gw.wait_listening(timeout)
                break
            except AssertionError:
                if not gw.port_taken() or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self._retired.append(gw)  # someone took the port meanwhile: another
                node.gateway = self._launch(node)
        for other in self.nodes:
            if other is not node:
                self.link(node, other)._proxy.set_target(node.name, gw.port)

    def _unroute(self, node: Node) -> None:
        for other in self.nodes:
            if other is not node:
                self.link(node, other)._proxy.set_target(node.name, None)

    def kill_gateway(self, which: NodeRef) -> None:
        """SIGKILL the node's gateway (what it had not sent stays in its senders' rings)."""
        node = self.node(which)
        self._unroute(node)
        self.gateway(node).kill()

    def stop_gateway(self, which: NodeRef) -> int:
        """SIGTERM the node's gateway and wait; its exit code (0: a clean stop)."""
        node = self.node(which)
        self._unroute(node)
        return self.gateway(node).terminate()

    def start_gateway(self, which: NodeRef, timeout: float = START_TIMEOUT) -> GatewayProcess:
        """Start the node's gateway again, as it was (after `kill_gateway` or
        `stop_gateway`); the old one's log stays readable in `retired`."""
        node = self.node(which)
        old = self.gateway(node)
        if old.alive():
            raise RuntimeError(f"the gateway of {node.name} is running (pid {old.pid})")
        self._retired.append(old)
        node.gateway = self._launch(node)
        self._await(node, timeout)
        return node.gateway

    def restart_gateway(self, which: NodeRef, timeout: float = START_TIMEOUT) -> GatewayProcess:
        """SIGKILL the node's gateway, then start it again."""
        self.kill_gateway(which)
        return self.start_gateway(which, timeout)

    @property
    def retired(self) -> list[GatewayProcess]:
        """Gateways stopped or killed and replaced (their logs kept)."""
        return list(self._retired)

    def logs(self) -> dict[str, str]:
        """Every gateway's log so far, by label (a replaced one's too)."""
        out: dict[str, str] = {}
        for k, gw in enumerate(self._retired):
            out[f"{gw.node} (replaced, {k})"] = gw.log.text()
        for node in self.nodes:
            if node.gateway is not None:
                out[node.name] = node.gateway.log.text()
        return out

    # -- teardown ------------------------------------------------------------------

    def close(self) -> list[str]:
        """Undo everything; return what was wrong (empty: clean). Idempotent."""
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []
        try:
            for node in reversed(self.nodes):
                problems += node.close()
        finally:
            close_clients()  # the Refs' own clients: they hold rings in node directories
            for link in self._links.values():
                link._proxy.close()
            for gw in self._retired:
                gw.terminate()
            for node in self.nodes:
                current = node.gateway
                if current is None:
                    continue
                code = current.terminate()
                if current.killed:  # what its SIGKILL left behind, and what waits for it
                    Registry(node.runtime_dir).reclaim(outboxes=True)
                elif code != 0:
                    problems.append(
                        f"gateway {node.name} exited {code}:\n{current.log.text()}"
                    )
        for node in self.nodes:
            if node.runtime_dir.is_dir():
                left = node.leftover_files()
                if left:
                    problems.append(f"files left in {node.name}'s runtime directory: {left}")
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


class ClusterFactory(Protocol):
    """The `mybus_cluster` fixture's value: call it for a started `Cluster`."""

    def __call__(
        self,
        n: int = 2,
        *,
        names: Sequence[str] | None = None,
        heartbeat: float | None = None,
        unreachable_grace: float | None = None,
        gateway_args: Sequence[str] = (),
        node_args: Mapping[int, Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Cluster: ...


class Clusters:
    """The clusters one test made (a `ClusterFactory`); `close` closes them all."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[Cluster] = []  # every one, closed or not (their logs stay)
        self._open: list[Cluster] = []

    def __call__(
        self,
        n: int = 2,
        *,
        names: Sequence[str] | None = None,
        heartbeat: float | None = None,
        unreachable_grace: float | None = None,
        gateway_args: Sequence[str] = (),
        node_args: Mapping[int, Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Cluster:
        """A started cluster of ``n`` nodes (named ``names``, else node0, node1, ...),
        each gateway with ``--heartbeat heartbeat``, ``--unreachable-grace`` and the
        other flags in ``gateway_args`` (all nodes) and ``node_args[i]`` (node i), in
        ``env`` (default: the test's environment)."""
        if names is None:
            if n < 1:
                raise ValueError(f"a cluster needs at least one node, got n={n}")
            names = [f"node{i}" for i in range(n)]
        elif len(names) != n:
            raise ValueError(f"{n} nodes but {len(names)} names: {list(names)!r}")
        cluster = Cluster(
            self.base / uuid.uuid4().hex[:12], names, heartbeat=heartbeat,
            unreachable_grace=unreachable_grace, gateway_args=gateway_args,
            node_args=node_args, env=env,
        )  # fmt: skip
        self.made.append(cluster)
        self._open.append(cluster)
        try:
            cluster.start()
        except BaseException:
            with contextlib.suppress(Exception):
                cluster.close()
            raise
        return cluster

    def close(self) -> list[str]:
        problems: list[str] = []
        while self._open:
            problems += self._open.pop().close()
        return problems
