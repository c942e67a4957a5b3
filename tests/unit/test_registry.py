"""Unit tests of mybus_actors.registry: one process, runtime dir under tmp_path."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import time

import psutil
import pytest

from mybus_actors.errors import ActorNotFound, InvalidAddress, NameTaken
from mybus_actors.registry import (
    NAME_RE,
    RESERVED_NAMES,
    Entry,
    Registry,
    default_node,
    is_alive,
    parse_ring_filename,
    process_create_time,
    resolve_runtime_dir,
    ring_filename,
    validate_name,
)

NO_SUCH_PID = 2**31 - 2  # above any pid_max Linux allows


@pytest.fixture
def reg(tmp_path: pathlib.Path) -> Registry:
    return Registry(tmp_path / "node-a")


def files_under(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def touch(path: pathlib.Path, age: float = 0.0) -> pathlib.Path:
    path.write_bytes(b"")
    if age:
        old = time.time() - age
        os.utime(path, (old, old))
    return path


def forge_entry(reg: Registry, name: str, *, pid: int, create_time: float) -> None:
    entry = Entry(name, pid, create_time, str(reg.bells_dir / "x"), 1)
    (reg.actors_dir / name).write_bytes(entry.to_json())


# ------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name", ["a", "A-b_c.d", "0", "x" * 64, "_client.1", "gateway", "a.", "-", "_"]
)
def test_validate_name_accepts(name: str) -> None:
    assert validate_name(name) == name
    assert NAME_RE.fullmatch(name)


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a/b", "a~b", "a b", " ", "é", ".", "..", ".hidden", "a\n"]
)
def test_validate_name_refuses(name: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        validate_name(name)
    assert repr(name) in str(info.value)
    assert "A-Za-z0-9_.-" in str(info.value)


@pytest.mark.parametrize("value", [None, 3, b"abc", ["a"]])
def test_validate_name_refuses_non_str(value: object) -> None:
    with pytest.raises(InvalidAddress, match="str"):
        validate_name(value)


def test_invalid_address_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_name("a/b")


def test_reserved_names() -> None:
    assert "gateway" in RESERVED_NAMES
    assert validate_name("gateway") == "gateway"


# ------------------------------------------------------------ node and dir


def test_default_node_env_then_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYBUS_NODE", "node-7")
    assert default_node() == "node-7"
    monkeypatch.delenv("MYBUS_NODE")
    monkeypatch.setattr("socket.gethostname", lambda: "box1.example.org")
    assert default_node() == "box1"


def test_default_node_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYBUS_NODE", "bad/node")
    with pytest.raises(InvalidAddress, match="MYBUS_NODE"):
        default_node()


def test_resolve_runtime_dir_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("MYBUS_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("MYBUS_NODE", "n1")
    uid = os.getuid()
    assert resolve_runtime_dir() == pathlib.Path(f"/dev/shm/mybus-{uid}/n1")
    assert resolve_runtime_dir(node="n2") == pathlib.Path(f"/dev/shm/mybus-{uid}/n2")
    # env is read at call time
    monkeypatch.setenv("MYBUS_RUNTIME_DIR", str(tmp_path / "env"))
    assert resolve_runtime_dir() == tmp_path / "env"
    assert resolve_runtime_dir(node="n2") == tmp_path / "env"
    # an explicit argument beats the env
    assert resolve_runtime_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_runtime_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.delenv("MYBUS_RUNTIME_DIR")
    monkeypatch.setenv("MYBUS_NODE", "n3")
    assert resolve_runtime_dir() == pathlib.Path(f"/dev/shm/mybus-{uid}/n3")


def test_resolve_runtime_dir_bad_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYBUS_RUNTIME_DIR", raising=False)
    with pytest.raises(InvalidAddress):
        resolve_runtime_dir(node="a/b")


# ------------------------------------------------------------------- rings


@pytest.mark.parametrize(
    ("sender", "receiver", "gen"),
    [("a", "b", 0), ("a.b", "c.d", 255), ("_c.1", "gateway", time.time_ns())],
)
def test_ring_filename_round_trip(sender: str, receiver: str, gen: int) -> None:
    fname = ring_filename(sender, receiver, gen)
    assert fname == f"{sender}~{receiver}.{gen:x}"
    assert parse_ring_filename(fname) == (sender, receiver, gen)


@pytest.mark.parametrize(
    "fname",
    ["", "a~b", "a~b.", "a~b.xyz", "a.1", "a~b~c.1", ".a~b.1", "a~.b.1", "~b.1", ".tmp-1-2"],
)
def test_parse_ring_filename_rejects(fname: str) -> None:
    assert parse_ring_filename(fname) is None


def test_ring_filename_refuses_bad_input() -> None:
    with pytest.raises(InvalidAddress):
        ring_filename("a~", "b", 1)
    with pytest.raises(ValueError, match="generation"):
        ring_filename("a", "b", -1)


# ---------------------------------------------------------------- liveness


def test_liveness_of_this_process() -> None:
    ctime = process_create_time(os.getpid())
    assert ctime == psutil.Process().create_time()
    assert is_alive(os.getpid(), ctime)
    assert not is_alive(os.getpid(), ctime - 3600)  # pid reused by another process
    assert process_create_time(NO_SUCH_PID) is None
    assert not is_alive(NO_SUCH_PID, ctime)
    assert process_create_time(0) is None


# -------------------------------------------------------------- directory


def test_dirs_are_private_despite_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        reg = Registry(tmp_path / "deep" / "node")
    finally:
        os.umask(old)
    for d in (reg.root, reg.actors_dir, reg.bells_dir, reg.rings_dir):
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert reg.actors_dir == reg.root / "actors"
    assert reg.bells_dir == reg.root / "bells"
    assert reg.rings_dir == reg.root / "rings"


def test_mybus_uid_parent_is_private(tmp_path: pathlib.Path) -> None:
    reg = Registry(tmp_path / f"mybus-{os.getuid()}" / "node")
    assert stat.S_IMODE(reg.root.parent.stat().st_mode) == 0o700
    (tmp_path / "other").mkdir(mode=0o755)
    os.chmod(tmp_path / "other", 0o755)
    Registry(tmp_path / "other" / "node")
    assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o755  # not ours to change


def test_existing_root_is_made_private(tmp_path: pathlib.Path) -> None:
    (tmp_path / "r").mkdir()
    os.chmod(tmp_path / "r", 0o755)
    Registry(tmp_path / "r")
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o700


def test_doorbell_path(reg: Registry) -> None:
    ctime = psutil.Process().create_time()
    assert reg.doorbell_path() == reg.bells_dir / f"{os.getpid()}-{int(ctime * 1000)}"
    assert reg.doorbell_path(os.getpid()) == reg.doorbell_path()
    with pytest.raises(ProcessLookupError):
        reg.doorbell_path(NO_SUCH_PID)


# ---------------------------------------------------------------- registry


def test_register_lookup_unregister(reg: Registry) -> None:
    bell = reg.doorbell_path()
    entry = reg.register("alpha", doorbell=bell)
    assert entry.name == "alpha"
    assert entry.pid == os.getpid()
    assert entry.create_time == psutil.Process().create_time()
    assert entry.doorbell == str(bell)
    assert reg.lookup("alpha") == entry
    raw = json.loads((reg.actors_dir / "alpha").read_text())
    assert raw == {
        "name": "alpha",
        "pid": entry.pid,
        "create_time": entry.create_time,
        "doorbell": str(bell),
        "generation": entry.generation,
    }
    assert reg.unregister("alpha") is True
    assert reg.unregister("alpha") is False
    with pytest.raises(ActorNotFound) as info:
        reg.lookup("alpha")
    assert "'alpha'" in str(info.value)
    assert str(reg.root) in str(info.value)
    assert files_under(reg.root) == []


def test_generations_are_unique(reg: Registry) -> None:
    gens = []
    for _ in range(20):
        gens.append(reg.register("g", doorbell="d").generation)
        assert reg.unregister("g")
    assert len(set(gens)) == len(gens)
    assert gens == sorted(gens)


def test_lookup_validates(reg: Registry) -> None:
    with pytest.raises(InvalidAddress):
        reg.lookup("../x")
    with pytest.raises(InvalidAddress):
        reg.register("a b", doorbell="d")


def test_live_duplicate_refused(reg: Registry) -> None:
    first = reg.register("dup", doorbell="d1")
    with pytest.raises(NameTaken) as info:
        reg.register("dup", doorbell="d2")
    assert "'dup'" in str(info.value)
    assert str(os.getpid()) in str(info.value)
    assert reg.lookup("dup") == first
    assert [p.name for p in reg.actors_dir.iterdir()] == ["dup"]  # no temp file left
    assert reg.unregister("dup")


def test_register_for_dead_pid_refused(reg: Registry) -> None:
    with pytest.raises(ProcessLookupError):
        reg.register("ghost", doorbell="d", pid=NO_SUCH_PID)
    assert files_under(reg.root) == []


def test_stale_by_pid_reuse_is_reclaimed_on_register(reg: Registry) -> None:
    ctime = psutil.Process().create_time()
    forge_entry(reg, "old", pid=os.getpid(), create_time=ctime - 3600)
    touch(reg.rings_dir / ring_filename("old", "peer", 1))
    touch(reg.rings_dir / ring_filename("peer", "old", 2))
    touch(reg.rings_dir / ring_filename("peer", "other", 3))
    entry = reg.register("old", doorbell="d")
    assert entry.create_time == ctime
    assert reg.lookup("old") == entry
    assert sorted(p.name for p in reg.rings_dir.iterdir()) == ["peer~other.3"]
    assert reg.unregister("old")
    assert reg.remove_rings_of("other") == 1
    assert files_under(reg.root) == []


def test_stale_entry_lookup_and_list_reclaim(reg: Registry) -> None:
    forge_entry(reg, "dead", pid=NO_SUCH_PID, create_time=1.0)
    touch(reg.rings_dir / ring_filename("dead", "x", 1))
    with pytest.raises(ActorNotFound):
        reg.lookup("dead")
    assert files_under(reg.root) == []
    forge_entry(reg, "dead", pid=NO_SUCH_PID, create_time=1.0)
    live = reg.register("live", doorbell="d")
    assert reg.list() == [live]
    assert not (reg.actors_dir / "dead").exists()
    assert reg.unregister("live")


def test_list_sorted(reg: Registry) -> None:
    for name in ["c", "a", "b"]:
        reg.register(name, doorbell="d")
    assert [e.name for e in reg.list()] == ["a", "b", "c"]
    for name in ["c", "a", "b"]:
        assert reg.unregister(name)
    assert reg.list() == []


def test_unregister_by_other_pid_refused(reg: Registry) -> None:
    entry = reg.register("mine", doorbell="d")
    touch(reg.rings_dir / ring_filename("mine", "peer", 1))
    assert reg.unregister("mine", pid=os.getpid() + 1) is False
    assert reg.lookup("mine") == entry
    assert (reg.rings_dir / "mine~peer.1").exists()
    assert reg.unregister("mine", pid=os.getpid()) is True
    assert files_under(reg.root) == []


def test_corrupt_entry(reg: Registry) -> None:
    path = reg.actors_dir / "junk"
    path.write_text('{"name": "ju')  # mid-write by a foreign tool
    with pytest.raises(ActorNotFound):
        reg.lookup("junk")
    assert path.exists()  # too young to delete
    with pytest.raises(NameTaken, match="unreadable"):
        reg.register("junk", doorbell="d")
    assert reg.list() == []
    assert path.exists()
    old = time.time() - 60
    os.utime(path, (old, old))
    with pytest.raises(ActorNotFound):
        reg.lookup("junk")
    assert not path.exists()
    path.write_text(json.dumps({"name": "other", "pid": 1}))
    os.utime(path, (old, old))
    entry = reg.register("junk", doorbell="d")
    assert reg.lookup("junk") == entry
    assert reg.unregister("junk")
    assert files_under(reg.root) == []


def test_entry_name_must_match_file(reg: Registry) -> None:
    entry = reg.register("real", doorbell="d")
    (reg.actors_dir / "alias").write_bytes(entry.to_json())
    with pytest.raises(ActorNotFound):
        reg.lookup("alias")
    (reg.actors_dir / "alias").unlink()
    assert reg.unregister("real")


def test_entry_validation() -> None:
    with pytest.raises(InvalidAddress):
        Entry("a/b", 1, 1.0, "d", 1)
    with pytest.raises(ValueError, match="pid"):
        Entry("a", 0, 1.0, "d", 1)
    with pytest.raises(ValueError):
        Entry.from_json(
            b'{"name": "a", "pid": true, "create_time": 1.0, "doorbell": "d", "generation": 1}'
        )
    entry = Entry("a", 5, 12.25, "d", 7)
    assert Entry.from_json(entry.to_json()) == entry


def test_reclaim(reg: Registry) -> None:
    me = os.getpid()
    ctime = psutil.Process().create_time()
    live = reg.register("live", doorbell=reg.doorbell_path())
    forge_entry(reg, "stale", pid=me, create_time=ctime - 3600)
    bell_live = touch(reg.doorbell_path())
    bell_reused = touch(reg.bells_dir / f"{me}-{int((ctime - 3600) * 1000)}")
    bell_gone = touch(reg.bells_dir / f"{NO_SUCH_PID}-123")
    bell_foreign = touch(reg.bells_dir / "not-ours")
    keep = [
        touch(reg.rings_dir / ring_filename("live", "nobody", 1)),
        touch(reg.rings_dir / ring_filename("nobody", "live", 1)),
        touch(reg.rings_dir / ".tmp-ring"),
    ]
    gone = [
        touch(reg.rings_dir / ring_filename("stale", "live", 1)),
        touch(reg.rings_dir / ring_filename("nobody", "nemo", 0xAB)),
        touch(reg.rings_dir / "nobody~nemo.1"),
    ]
    dead_tmp = touch(reg.actors_dir / f".tmp-{me}-{int((ctime - 3600) * 1000)}-ab", age=60)
    live_tmp = touch(reg.actors_dir / f".tmp-{me}-{int(ctime * 1000)}-cd", age=60)

    reclaimed = reg.reclaim()

    assert [e.name for e in reclaimed] == ["stale"]
    assert reg.list() == [live]
    assert bell_live.exists() and bell_foreign.exists()
    assert not bell_reused.exists() and not bell_gone.exists()
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone)
    assert not dead_tmp.exists() and live_tmp.exists()
    assert reg.reclaim() == []  # idempotent; nothing raises on a second pass

    for p in [bell_live, bell_foreign, live_tmp, *keep]:
        p.unlink()
    assert reg.unregister("live")
    assert files_under(reg.root) == []


def test_two_registries_share_a_dir(tmp_path: pathlib.Path) -> None:
    a = Registry(tmp_path / "n")
    b = Registry(tmp_path / "n")
    entry = a.register("x", doorbell="d")
    assert b.lookup("x") == entry
    with pytest.raises(NameTaken):
        b.register("x", doorbell="d")
    assert b.unregister("x")
    assert a.list() == []
