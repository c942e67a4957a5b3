"""The pure parts of operating a node: the counters file, rates between snapshots, JSON
log lines, and the registry's reclaim of a dead process's counters."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mybus_actors import counters, logs
from mybus_actors.counters import ActorCounters, LinkCounters, ProcessCounters
from mybus_actors.registry import Registry
from mybus_actors.ring import RingStats
from mybus_actors.snapshot import ActorView, ProcessView, Rates, RingView, Snapshot, to_dict


def _process(**kw: object) -> ProcessCounters:
    base: dict[str, object] = dict(
        pid=os.getpid(), node="n1", core="native", updated=1.0, dead_letters=2,
        actors=(ActorCounters("a", received=5, sent=3, dead_letters=1, parent="sup"),),
        links=(LinkCounters("beta", "up", 0.0005, 1, 100, 2, 0, 0, 1, 10),),
    )  # fmt: skip
    base.update(kw)
    return ProcessCounters(**base)  # type: ignore[arg-type]


def test_counters_round_trip_through_their_file(tmp_path: Path) -> None:
    path = tmp_path / "123-456"
    counters.write(path, _process())
    assert counters.read(path) == _process()
    counters.write(path, _process(dead_letters=7))  # replaced whole, never appended
    got = counters.read(path)
    assert got is not None and got.dead_letters == 7
    assert sorted(os.listdir(tmp_path)) == ["123-456"]  # the temp file was renamed over
    counters.remove(path)
    assert os.listdir(tmp_path) == []
    counters.remove(path)  # twice is fine


@pytest.mark.parametrize("junk", [b"", b"{", b"[]", b'{"pid": 1}', b'{"nonsense": 1}'])
def test_a_file_that_is_not_counters_reads_as_none(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "x"
    path.write_bytes(junk)
    assert counters.read(path) is None
    assert counters.read(tmp_path / "missing") is None


def test_reclaim_removes_the_counters_of_a_dead_process(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "rt")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    mine = reg.stats_path(reg.doorbell_path())
    gone = reg.stats_dir / f"{pid}-123456"
    temp = reg.stats_dir / f".tmp-{pid}-123456"
    for p in (mine, gone, temp):
        counters.write(p, _process())
    reg.reclaim()
    assert sorted(os.listdir(reg.stats_dir)) == [mine.name]  # the live one stays
    counters.remove(mine)


def _snap(at: float, received: int, written: int, read: int, cpu: float) -> Snapshot:
    stats = RingStats(capacity=1024, used=written - read, messages_written=written,
                      bytes_written=10 * written, full_events=0, messages_read=read,
                      bytes_read=10 * read)  # fmt: skip
    pc = _process(actors=(ActorCounters("a", received=received),))
    proc = ProcessView(pid=1, mailbox="_1-2", alive=True, cpu_seconds=cpu, rss_bytes=1 << 20,
                       counters=pc, backlog_bytes=stats.used,
                       backlog_messages=written - read, full_events=0)  # fmt: skip
    actor = ActorView(name="a", pid=1, mailbox="_1-2", received=received, sent=0,
                      dead_letters=0, restarts=0, queued=0, instance=1, parent=None)  # fmt: skip
    ring = RingView(file="_3-4~_1-2.5", writer="_3-4", reader="_1-2", outbox=False, stats=stats)
    return Snapshot(node="n1", runtime_dir="/x", monotonic=at, time=at, processes={"_1-2": proc},
                    actors=(actor,), rings=(ring,), gateway=None)  # fmt: skip


def test_rates_between_two_snapshots() -> None:
    before = _snap(10.0, received=100, written=100, read=100, cpu=1.0)
    after = _snap(12.0, received=300, written=500, read=300, cpu=1.5)
    r = Rates.between(before, after)
    assert r.seconds == pytest.approx(2.0)
    assert r.actor_in["a"] == pytest.approx(100.0)
    # The ring's rate is whichever end moved more (the writer here: its reader lags).
    assert r.ring_messages["_3-4~_1-2.5"] == pytest.approx(200.0)
    assert r.ring_bytes["_3-4~_1-2.5"] == pytest.approx(2000.0)
    assert r.cpu_percent["_1-2"] == pytest.approx(25.0)
    out = to_dict(after, r)
    json.dumps(out)  # plain JSON types
    (actor,) = out["actors"]
    assert (actor["name"], actor["in_per_s"], actor["backlog_messages"]) == ("a", 100.0, 200)
    assert out["rings"][0]["unread_messages"] == 200
    # A counter that went backwards (a process restarted under the same name) is no
    # negative rate.
    assert Rates.between(after, before).actor_in["a"] == 0.0


def test_json_log_lines_parse_and_carry_the_logger() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("mybus-gateway", "info", "json", stream=stream)
    try:
        log = logging.getLogger("mybus_actors.peers")
        log.info("link to %s up", "beta")
        log.debug("not shown")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["link to beta up", "it failed"]
    assert lines[0]["logger"] == "mybus_actors.peers" and lines[0]["level"] == "INFO"
    assert lines[0]["program"] == "mybus-gateway" and lines[0]["pid"] == os.getpid()
    assert lines[0]["time"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exception"]
    with pytest.raises(ValueError):
        logs.configure("x", "info", "yaml")


def test_the_library_logs_under_its_module_names_and_prints_nothing() -> None:
    package = Path(__file__).resolve().parents[2] / "mybus_actors"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "getLogger":
                named = [ast.unparse(a) for a in node.args]
                if named != ["__name__"]:
                    offenders.append(f"{path.name}: getLogger({', '.join(named)})")
            # The commands print what they are asked for; the library never does.
            printing = isinstance(func, ast.Name) and func.id == "print"
            if printing and path.stem not in ("cli", "demo", "top"):
                offenders.append(f"{path.name}: print() at line {node.lineno}")
    assert offenders == []
