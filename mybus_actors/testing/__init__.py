"""The user's test kit: a pytest plugin (entry point ``pytest11``, loaded by installing).

Fixtures (function scope):

- ``mybus_node`` -> `Node`: a private node name and runtime directory (on /dev/shm like
  the runtime's default, else under the test's tmp_path), with ``MYBUS_NODE`` and
  ``MYBUS_RUNTIME_DIR`` set for the test, so that ``mb.spawn`` and ``mb.connect`` work
  with no arguments. At teardown it stops what was started through the Node, then
  *fails the test* (an error at teardown) when a child process the test started is
  still running, or a file is left in the runtime directory; either way it kills and
  reaps those processes and removes the directory.
- ``mybus_cluster`` -> `ClusterFactory`: ``mybus_cluster(n=2, *, heartbeat=None, ...)``
  starts a `Cluster` of n nodes on loopback, each a `Node` with its own gateway, port and
  runtime directory, one fresh secret per cluster. ``cluster.link(a, b)`` is the
  `LinkControl` between two nodes (``blackhole()``, ``throttle(bytes_per_s)``,
  ``abort()``, ``restore()``). Teardown stops everything, requires every gateway to exit
  0 on SIGTERM and no file to be left; gateway logs are shown for a failed test.
- ``probe`` -> `Probe`: a client on ``mybus_node`` with ``expect(message, timeout)``,
  ``expect_no_message(duration)`` (Akka's TestProbe); ``node.probe()`` makes one on any
  node, cluster nodes included.

Example (a test module of your own; the classes must be importable by the actor
processes, as for any ``mb.spawn``: a module on ``sys.path`` is)::

    import mybus_actors as mb

    class Echo(mb.Actor):
        def receive(self, message):
            self.reply(message)

    def test_echo(mybus_node, probe):
        echo = mybus_node.spawn(Echo, "echo")
        probe.tell(echo.address, "hi")
        probe.expect("hi", timeout=5)

    def test_partition(mybus_cluster):
        cluster = mybus_cluster(2, heartbeat=0.2)
        a, b = cluster
        echo = b.spawn(Echo, "echo")
        p = a.probe()
        cluster.link(a, b).blackhole()
        p.tell(echo.address, "held")
        p.expect_no_message(1.0)            # it waits in a's outbox
        cluster.link(a, b).restore()
        p.expect("held", timeout=15)        # and arrives once the link is back

This module imports nothing of the kit until a fixture runs (the names below load on
first use), so a pytest run that does not use it pays for nothing but this file.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .cluster import Cluster, ClusterFactory, Clusters, LinkControl
    from .gateway_process import GatewayProcess, LogReader
    from .leaks import ChildWatch, leftover_files, reap_children
    from .node import Node
    from .proxy import LinkProxy
    from .testprobe import Probe
    from .waits import wait_for_condition

__all__ = [
    "ChildWatch",
    "Cluster",
    "ClusterFactory",
    "GatewayProcess",
    "LinkControl",
    "LinkProxy",
    "LogReader",
    "Node",
    "Probe",
    "leftover_files",
    "mybus_cluster",
    "mybus_node",
    "probe",
    "reap_children",
    "wait_for_condition",
]

_LAZY = {
    "ChildWatch": "leaks",
    "leftover_files": "leaks",
    "reap_children": "leaks",
    "Cluster": "cluster",
    "ClusterFactory": "cluster",
    "LinkControl": "cluster",
    "GatewayProcess": "gateway_process",
    "LogReader": "gateway_process",
    "Node": "node",
    "Probe": "testprobe",
    "LinkProxy": "proxy",
    "wait_for_condition": "waits",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the kit's classes load when first named, not when pytest loads the plugin.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


_LOG_TAIL = 200  # lines of each gateway's log shown under a failed test
_clusters_key: pytest.StashKey[Clusters] = pytest.StashKey()


def _fail(what: str, problems: list[str]) -> None:
    if problems:
        pytest.fail(f"{what}:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def mybus_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A private node: name, runtime directory, environment; a leftover check after."""
    from mybus_actors.ref import close_clients

    from .leaks import ChildWatch, leftover_files
    from .node import Node, fresh_node_name, runtime_base

    base = runtime_base(tmp_path)
    root = base / uuid.uuid4().hex[:12]
    root.mkdir(parents=True, mode=0o700)
    node = Node(fresh_node_name(), root)
    monkeypatch.setenv("MYBUS_RUNTIME_DIR", str(root))
    monkeypatch.setenv("MYBUS_NODE", node.name)
    watch = ChildWatch()  # after the runner's own children: only the test's count
    try:
        yield node
        problems = node.close()
        close_clients()  # the Refs' own clients (the runtime's, not the test's to close)
        children = watch.reap()
        if children:
            problems.append(f"child processes left behind: {children}")
        left = leftover_files(root)
        if left:
            problems.append(f"files left in the runtime directory {root}: {left}")
        _fail(f"mybus_node {node.name}", problems)
    finally:
        with contextlib.suppress(Exception):
            node.close()
            close_clients()
        watch.reap()
        shutil.rmtree(root, ignore_errors=True)
        if base != tmp_path:
            with contextlib.suppress(OSError):
                base.rmdir()  # shared by concurrent runs: only when it is empty


@pytest.fixture
def mybus_cluster(mybus_node: Node, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """``mybus_cluster(n=2, **options)``: a started `Cluster` (see `Clusters.__call__`)."""
    from .cluster import Clusters

    base = mybus_node.runtime_dir.with_name(mybus_node.runtime_dir.name + "-clusters")
    clusters = Clusters(base)
    request.node.stash[_clusters_key] = clusters
    try:
        yield clusters
        _fail("mybus_cluster", clusters.close())
    finally:
        with contextlib.suppress(Exception):
            clusters.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def probe(mybus_node: Node) -> Probe:
    """A `Probe` on ``mybus_node`` (closed at teardown)."""
    return mybus_node.probe()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test that made clusters shows their gateways' logs (as captured output)."""
    outcome: Any = yield
    clusters = item.stash.get(_clusters_key, None)
    if clusters is None:
        return
    report = outcome.get_result()
    if not report.failed:
        return
    for cluster in clusters.made:
        for label, text in cluster.logs().items():
            tail = "\n".join(text.splitlines()[-_LOG_TAIL:])
            report.sections.append((f"mybus gateway {label}", tail))
