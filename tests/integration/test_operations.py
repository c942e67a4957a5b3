"""Operating a node: `mybus top --once`, `mybus ls --json` and the metrics endpoints,
against real actors, a real gateway linked to a second node, and a receiver stopped
with SIGSTOP.

Node alpha hosts three actors (a pump that keeps a ring busy, the counter it feeds, and
a receiver that is stopped) and a gateway linked to node beta (an echo there brings the
link up; a short heartbeat measures its round trip). Every wait is bounded; the
fixture checks that no process and no file is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import mybus_actors as mb
from mybus_actors.ref import close_clients

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the spawned actors import ops_lib too

import gateway_lib as lib  # noqa: E402
import ops_lib  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0
SECRET = "ops-secret-" + uuid.uuid4().hex
CLI = [sys.executable, "-m", "mybus_actors.cli"]


class Node:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(mode=0o700)
        self.port = lib.free_port()

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        done = subprocess.run(
            [*CLI, *args, "--node", self.name, "--runtime-dir", str(self.dir)],
            capture_output=True, text=True, timeout=timeout, env=_env(),
        )  # fmt: skip
        assert done.returncode == 0, f"mybus {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": lib.child_pythonpath()}


class Scene:
    """alpha (three actors, a gateway) and beta (an echo, a gateway); `close` undoes it."""

    def __init__(self, root: Path) -> None:
        self.alpha, self.beta = Node(root, "alpha"), Node(root, "beta")
        self.refs: list[mb.Ref] = []
        self.gateways: list[lib.GatewayProc] = []
        self.stopped_pid: int | None = None

    def gateway(self, node: Node, peer: Node, *extra: str) -> lib.GatewayProc:
        gw = lib.GatewayProc(
            node.name, node.dir, node.port, peers={peer.name: ("127.0.0.1", peer.port)},
            secret=SECRET, extra=["--heartbeat", "0.2", *extra],
        )  # fmt: skip
        self.gateways.append(gw)
        gw.wait_listening()
        return gw

    def spawn(self, cls: type[mb.Actor], name: str, node: Node) -> mb.Ref:
        ref = mb.spawn(cls, name, node=node.name, runtime_dir=node.dir)
        self.refs.append(ref)
        return ref

    def close(self) -> None:
        if self.stopped_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped_pid, signal.SIGCONT)
        problems = []
        for ref in reversed(self.refs):
            if not ref.stop(timeout=10):
                problems.append(f"{ref} had to be killed")
            ref.join(10)
        close_clients()
        for gw in self.gateways:
            code = gw.terminate()
            if code != 0:
                problems.append(f"gateway {gw.node} exited {code}:\n{gw.log.text()}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def scene(runtime_dir: Path) -> Iterator[Scene]:
    made = Scene(runtime_dir)
    try:
        yield made
    finally:
        made.close()


def _rows(frame: str, title: str) -> list[list[str]]:
    """The body rows of the table titled ``title`` in a `mybus top` frame."""
    rows: list[list[str]] = []
    inside = False
    for line in frame.splitlines():
        stripped = line.strip()
        if stripped == title or stripped.endswith(": " + title):  # "gateway (pid N): links"
            inside, rows = True, []
            continue
        if inside and line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
        elif inside and line.startswith("└"):
            return rows
    return rows


def _until(check: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def _busy_alpha(scene: Scene, me: mb.Client) -> int:
    """Start the three actors on alpha and its link to beta; returns the stopped pid."""
    a, b = scene.alpha, scene.beta
    scene.gateway(a, b)
    scene.gateway(b, a)
    scene.spawn(ops_lib.Echo, "echo", b)
    scene.spawn(ops_lib.Counter, "counter", a)
    scene.spawn(ops_lib.Pump, "pump", a)
    stopped = scene.spawn(ops_lib.Counter, "stopped", a)
    assert me.ask("beta/echo", "hello", timeout=WAIT) == "hello"  # the link is up
    assert me.ask("pump", ("pump", "counter"), timeout=WAIT) == "pumping"
    assert me.ask("stopped", "count?", timeout=WAIT) == 0
    scene.stopped_pid = stopped.pid
    os.kill(stopped.pid, signal.SIGSTOP)
    for i in range(500):
        me.tell("stopped", {"i": i, "pad": "y" * 100})
    return stopped.pid


def test_top_once_shows_actors_rates_backlog_and_link_and_ls_json_agrees(scene: Scene) -> None:
    a = scene.alpha
    with mb.connect("operator", node=a.name, runtime_dir=a.dir) as me:
        _top_and_ls(scene, me)


def _top_and_ls(scene: Scene, me: mb.Client) -> None:
    a = scene.alpha
    stopped_pid = _busy_alpha(scene, me)

    # The gateway publishes the link's round trip after its first PING is answered.
    def rtt_known() -> bool:
        snap = json.loads(a.cli("ls", "--json"))
        return any(link["node"] == "beta" and link["rtt"] for link in snap["links"])

    _until(rtt_known, "the link's round trip in `mybus ls --json`")

    frame = a.cli("top", "--once", "--interval", "1")
    snap = json.loads(a.cli("ls", "--json"))

    actors = {row[0]: row for row in _rows(frame, "actors")}
    for name in ("pump", "counter", "stopped"):
        assert name in actors, f"{name} missing from:\n{frame}"
    header = ["actor", "pid", "cpu %", "rss", "in/s", "out/s", "backlog", "unread", "queued",
              "full", "dead letters", "restarts"]  # fmt: skip
    col = {h: i for i, h in enumerate(header)}
    assert actors["stopped"][col["pid"]] == str(stopped_pid)
    # The stopped receiver's process has a backlog: bytes and messages unread.
    assert actors["stopped"][col["backlog"]] != "0 B", frame
    assert int(actors["stopped"][col["unread"]]) > 0, frame
    assert actors["pump"][col["out/s"]] not in ("0", "-"), frame

    rings = _rows(frame, "rings")
    busy = [r for r in rings if r[0].startswith("pump -> counter")]
    assert busy, f"no ring pump -> counter in:\n{frame}"
    assert busy[0][1] not in ("0", "-"), f"the busy ring shows no rate:\n{frame}"

    links = _rows(frame, "links")
    beta = [r for r in links if r[0] == "beta"]
    assert beta and beta[0][1] == "up", frame
    assert beta[0][2].endswith(("µs", "ms")), f"no round trip for the link:\n{frame}"

    # `mybus ls --json` says the same of the same node.
    by_name = {x["name"]: x for x in snap["actors"]}
    for name in ("pump", "counter", "stopped"):
        assert str(by_name[name]["pid"]) == actors[name][col["pid"]]
    assert set(by_name) == set(actors)
    assert by_name["stopped"]["backlog_bytes"] > 0
    assert by_name["stopped"]["backlog_messages"] > 0
    assert by_name["pump"]["sent"] > 0 and by_name["counter"]["received"] > 0
    assert {x["node"]: x["state"] for x in snap["links"]} == {r[0]: r[1] for r in links}
    assert snap["gateway"]["pid"] == scene.gateways[0].pid
    json_rings = {(x["writer"], x["reader"]) for x in snap["rings"]}
    assert len(json_rings) >= len(rings) - 1  # a ring may come or go between the two


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    found = [
        v for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    ]  # fmt: skip
    assert found, f"no sample {name} {labels}"
    return sum(found)


def test_metrics_of_a_node_without_gateway_rise_during_a_stream(runtime_dir: Path) -> None:
    node = Node(runtime_dir, "solo")
    port = lib.free_port()
    server = subprocess.Popen(
        [*CLI, "metrics", "--listen", f"127.0.0.1:{port}", "--node", node.name,
         "--runtime-dir", str(node.dir)],
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    log = lib.LogReader(server.stderr, "mybus metrics")
    refs = []
    try:
        log.wait_for(r"serving metrics", WAIT)
        refs.append(mb.spawn(ops_lib.Counter, "counter", node=node.name, runtime_dir=node.dir))
        refs.append(mb.spawn(ops_lib.Pump, "pump", node=node.name, runtime_dir=node.dir))
        with mb.connect(node=node.name, runtime_dir=node.dir) as me:
            assert me.ask("pump", ("pump", "counter"), timeout=WAIT) == "pumping"
            url = f"http://127.0.0.1:{port}/metrics"
            first = _until(
                lambda: (s := _scrape(url))
                and _value(s, "mybus_actor_messages_received_total", actor="counter") > 0
                and s,
                "a first scrape with messages received",
            )
            rising = (
                ("mybus_actor_messages_received_total", {"actor": "counter"}),
                ("mybus_actor_messages_sent_total", {"actor": "pump"}),
                ("mybus_ring_messages_read_total", {"writer": "pump", "reader": "counter"}),
                ("mybus_ring_bytes_read_total", {"writer": "pump", "reader": "counter"}),
            )

            def all_rose() -> dict[Any, float] | None:
                s = _scrape(url)
                rose = all(_value(s, n, **ls) > _value(first, n, **ls) for n, ls in rising)
                return s if rose else None

            # The processes publish their counters every 0.5 s: a later scrape shows
            # every one of them higher (bounded: a stream that stalled fails here).
            second = _until(all_rose, "every counter higher in a later scrape")
        assert _value(second, "mybus_process_resident_memory_bytes") > 0
    finally:
        for ref in refs:
            ref.stop(timeout=10)
            ref.join(10)
        close_clients()
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0, log.text()
        log.join(5)


def test_gateway_metrics_show_the_link_and_its_log_is_json(scene: Scene) -> None:
    a, b = scene.alpha, scene.beta
    port = lib.free_port()
    gw = scene.gateway(a, b, "--metrics", f"127.0.0.1:{port}", "--log-format", "json")
    scene.gateway(b, a)
    scene.spawn(ops_lib.Echo, "echo", b)
    with mb.connect(node=a.name, runtime_dir=a.dir) as me:
        assert me.ask("beta/echo", "hello", timeout=WAIT) == "hello"
        url = f"http://127.0.0.1:{port}/metrics"
        samples = _until(
            lambda: (s := _scrape(url)) and ("mybus_link_rtt_seconds", (("node", "alpha"),
                     ("peer", "beta"))) in s and s,
            "the link's round trip among the gateway's metrics",
        )  # fmt: skip
    assert _value(samples, "mybus_link_up", peer="beta") == 1.0
    assert _value(samples, "mybus_link_state", peer="beta", state="up") == 1.0
    assert 0 < _value(samples, "mybus_link_rtt_seconds", peer="beta") < 1.0
    assert _value(samples, "mybus_link_frames_refused_total", peer="beta") == 0
    assert _value(samples, "mybus_link_delivered_messages_total", peer="beta") >= 1
    # --log-format json: every line the gateway wrote is one JSON object.
    lines = [json.loads(line) for line in gw.log.text().splitlines() if line.strip()]
    assert any("listening on" in x["message"] for x in lines)
    assert {x["logger"].split(".")[0] for x in lines} == {"mybus_actors"}


def test_restarts_and_dead_letters_are_counted_per_actor(runtime_dir: Path) -> None:
    node = Node(runtime_dir, "solo")
    refs = [mb.spawn(cls, name, node=node.name, runtime_dir=node.dir)
            for cls, name in ((ops_lib.Parent, "sup"), (ops_lib.Teller, "teller"),
                              (ops_lib.Counter, "victim"))]  # fmt: skip
    victim = refs[2]
    try:
        with mb.connect(node=node.name, runtime_dir=node.dir) as me:
            assert me.ask("sup", "start", timeout=WAIT) == "started"
            for _ in range(2):
                me.tell("flaky", "crash")
                _until(lambda: _try_ask(me, "flaky", "ping") == "ping", "flaky back")
            # Letters the victim never reads: it is stopped, then killed; they come back
            # to the teller as dead letters (`on_dead_letter`), counted for it.
            assert me.ask("victim", "count?", timeout=WAIT) == 0
            os.kill(victim.pid, signal.SIGSTOP)
            assert me.ask("teller", ("tell", "victim", 10), timeout=WAIT) == "told"
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
            _until(lambda: me.ask("teller", "returned?", timeout=WAIT) == 10, "10 returned")

            seen: list[Any] = []

            def counted() -> dict[str, Any] | None:
                snap = json.loads(node.cli("ls", "--json"))
                actors = {a["name"]: a for a in snap["actors"]}
                seen[:] = [actors]
                ok = actors["sup"]["restarts"] == 2 and actors["teller"]["dead_letters"] == 10
                return actors if ok else None

            try:
                actors = _until(counted, "the restarts and dead letters in `mybus ls --json`")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {json.dumps(seen, indent=1)}") from None
        assert actors["flaky"]["instance"] == 3 and actors["flaky"]["parent"] == "sup"
        assert actors["flaky"]["pid"] == actors["sup"]["pid"]  # a child in its process
        top = node.cli("top", "--once", "--interval", "0.2")
        rows = {r[0]: r for r in _rows(top, "actors")}
        assert rows["sup"][-1] == "2" and rows["teller"][-2] == "10", top
    finally:
        for ref in refs[:2]:
            ref.stop(timeout=10)
            ref.join(10)
        close_clients()


def _try_ask(client: mb.Client, to: str, message: Any) -> Any:
    try:
        return client.ask(to, message, timeout=1.0)
    except mb.MyBusError:
        return None
