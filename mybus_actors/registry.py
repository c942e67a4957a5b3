"""Names ↔ processes in one node's runtime directory; liveness by psutil.

What it guarantees:

- A name is held by at most one live process. `Registry.register` is create-exclusive
  (write a hidden temp file, then `os.link` it to `actors/<name>`), so no reader ever sees
  a half-written entry and, of several racing registrants, exactly one wins.
- Liveness is never by heartbeat: an entry is live while its pid exists, is not a zombie,
  and has the create time recorded at registration. A dead pid, a zombie, or a pid reused
  by another process (different create time) makes the entry stale; stale entries are
  reclaimed, with the dead holder's ring files and doorbell, by whichever call meets them.
- Only a stale entry (or its holder itself, through `unregister`) is ever deleted. Deletions
  of entries are serialised by an advisory `flock` on the `actors/` directory and checked
  against the inode that was judged stale, so a reclaimer never deletes the entry a racing
  registrant has just created. The lock dies with its holder; it leaves no file behind.
- Files another reclaimer deleted first are not an error.
- Running out is not corruption: an ``open()`` (or a process probe) that fails for lack
  of descriptors or memory raises `ResourceExhausted` to the caller, and liveness that
  cannot be probed is presumed alive. So exhaustion never deletes a live entry, never
  lets a second process take a held name, and never reads as "no such actor".

What it does not know: ring layouts and doorbell FIFOs. It knows only how their files are
named (`rings/<from>~<to>.<gen>`, `bells/<pid>-<create_time_ms>`), so that it can delete a
dead process's files; `mailbox.py` creates and opens them. A ring between two processes
is named by their *mailboxes* (`mailbox_name`: "_" and the doorbell's file name), whose
liveness is the doorbell's: its pid and create time.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import functools
import json
import os
import pathlib
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from typing import Final

import attrs
import psutil

from mybus_actors.errors import ActorNotFound, InvalidAddress, NameTaken, ResourceExhausted
from mybus_actors.pressure import exhausted

__all__ = [
    "FORWARD_TO",
    "NAME_RE",
    "RESERVED_NAMES",
    "Entry",
    "Registry",
    "default_node",
    "forward_name",
    "is_alive",
    "is_forward_ring",
    "mailbox_name",
    "parse_forward_name",
    "parse_ring_filename",
    "process_create_time",
    "resolve_runtime_dir",
    "ring_filename",
    "validate_name",
]

# The charset and length of the design ([A-Za-z0-9_.-]{1,64}), except that a name may not
# begin with ".": ".", ".." and hidden files (our temp files) can then never be names.
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
RESERVED_NAMES = frozenset({"gateway"})

_NAME_FORM = "1 to 64 characters from [A-Za-z0-9_.-], not starting with '.'"
_GEN_RE = re.compile(r"[0-9A-Fa-f]{1,32}")
_BELL_RE = re.compile(r"([1-9][0-9]{0,9})-([0-9]{1,16})(?:\.[0-9]{1,9})?")
_TMP_RE = re.compile(r"\.tmp-([1-9][0-9]{0,9})-([0-9]{1,16})-[0-9a-f]+")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
# /proc/stat's btime (which psutil adds to a process's start ticks) is whole seconds and
# can flip by one as the wall clock is slewed, so the same process can read one second
# apart from two processes. A pid reused within that window would need the whole pid
# space to wrap in about a second; treating a live holder as dead would delete its rings.
_CTIME_TOLERANCE = 1.1
# A corrupt entry or a temp file younger than this may be a foreign writer mid-write.
_CORRUPT_GRACE = 5.0
_MAX_ATTEMPTS = 16


def validate_name(name: object) -> str:
    """Return `name` if it is a valid actor (or node) name.

    Reserved names (`RESERVED_NAMES`) and runtime-private names (leading "_") are valid
    here; refusing them is the caller's policy.

    Args:
        name: the value to check.

    Returns:
        The name, unchanged.

    Raises:
        InvalidAddress: `name` is not a str, or not of the allowed form.
    """
    if not isinstance(name, str):
        raise InvalidAddress(
            f"invalid name {name!r}: expected a str of {_NAME_FORM}, got {type(name).__name__}"
        )
    if NAME_RE.fullmatch(name) is None:
        raise InvalidAddress(f"invalid name {name!r}: a name is {_NAME_FORM}")
    return name


def default_node() -> str:
    """Return this host's node name: `MYBUS_NODE`, else the short host name.

    The environment is read at each call.

    Raises:
        InvalidAddress: the node name so found is not a valid name.
    """
    env = os.environ.get("MYBUS_NODE")
    if env:
        source, node = "MYBUS_NODE", env
    else:
        source, node = "the host name", socket.gethostname().split(".")[0]
    try:
        return validate_name(node)
    except InvalidAddress as exc:
        raise InvalidAddress(f"node name from {source}: {exc}") from exc


def resolve_runtime_dir(
    runtime_dir: str | os.PathLike[str] | None = None, node: str | None = None
) -> pathlib.Path:
    """Return the runtime directory to use (it is not created here).

    Precedence: `runtime_dir` if given, else `MYBUS_RUNTIME_DIR`, else
    `/dev/shm/mybus-<uid>/<node>` where `node` defaults to `default_node()`. `node` is
    ignored when a directory is given either way. The environment is read at each call.

    Args:
        runtime_dir: an explicit directory.
        node: the node name for the default directory.

    Raises:
        InvalidAddress: the node name is not a valid name.
    """
    if runtime_dir is not None:
        return pathlib.Path(runtime_dir)
    env = os.environ.get("MYBUS_RUNTIME_DIR")
    if env:
        return pathlib.Path(env)
    node = default_node() if node is None else validate_name(node)
    return pathlib.Path("/dev/shm") / f"mybus-{os.getuid()}" / node


def ring_filename(sender: str, receiver: str, gen: int) -> str:
    """Return the file name of the ring from `sender` to `receiver`: `<from>~<to>.<gen:x>`.

    ``receiver`` is a name or a `forward_name`.

    Raises:
        InvalidAddress: a name is invalid.
        ValueError: `gen` is not a non-negative int.
    """
    validate_name(sender)
    if parse_forward_name(receiver) is None:
        validate_name(receiver)
    if isinstance(gen, bool) or not isinstance(gen, int) or gen < 0:
        raise ValueError(f"invalid ring generation {gen!r}: expected an int >= 0")
    return f"{sender}~{receiver}.{gen:x}"


def parse_ring_filename(fname: str) -> tuple[str, str, int] | None:
    """Parse a ring file name into `(sender, receiver, gen)`.

    The receiver is a name, or a forward name (`forward_name`) for a ring into the
    gateway. The generation token is read as hexadecimal, as `ring_filename` writes it (a
    decimal token of one digit reads the same). Anything else, such as a hidden temp
    file, gives None.
    """
    if not isinstance(fname, str) or fname.count("~") != 1:
        return None
    sender, rest = fname.split("~")
    receiver, dot, token = rest.rpartition(".")
    if not dot or _GEN_RE.fullmatch(token) is None:
        return None
    if NAME_RE.fullmatch(sender) is None:
        return None
    if NAME_RE.fullmatch(receiver) is None and parse_forward_name(receiver) is None:
        return None
    return sender, receiver, int(token, 16)


FORWARD_TO: Final = "gateway"
_FORWARD_SEP: Final = "+"  # not a name character: a forward name is never an actor's


@functools.lru_cache(maxsize=4096)  # on every message to another node; names repeat
def forward_name(node: str, name: str) -> str:
    """The receiver part of a ring into this node's gateway for actor ``name`` on
    ``node``: one such ring per (sender, remote actor), the gateway's outbox.

    Raises:
        InvalidAddress: ``node`` or ``name`` is invalid.
    """
    validate_name(node)
    validate_name(name)
    return f"{FORWARD_TO}{_FORWARD_SEP}{node}{_FORWARD_SEP}{name}"


def parse_forward_name(receiver: str) -> tuple[str, str] | None:
    """(node, name) of a forward name; None for anything else (an actor's name)."""
    parts = receiver.split(_FORWARD_SEP)
    if len(parts) != 3 or parts[0] != FORWARD_TO:
        return None
    if NAME_RE.fullmatch(parts[1]) is None or NAME_RE.fullmatch(parts[2]) is None:
        return None
    return parts[1], parts[2]


def is_forward_ring(fname: str) -> bool:
    """A ring into the gateway for another node: its outbox, which outlives both its
    writer and its reader, and which only a gateway retires."""
    parsed = parse_ring_filename(fname)
    return parsed is not None and parse_forward_name(parsed[1]) is not None


def mailbox_name(doorbell: str | os.PathLike[str]) -> str:
    """The name of the process mailbox whose doorbell is ``doorbell``: "_" and the
    doorbell's file name (``_<pid>-<create_time_ms>[.<index>]``). Rings between two
    processes are named by their mailboxes, not by the actors they carry messages for."""
    return "_" + pathlib.Path(doorbell).name


def _mailbox_alive(name: str) -> bool | None:
    """Whether the process of mailbox ``name`` lives; None if ``name`` is no mailbox."""
    match = _BELL_RE.fullmatch(name[1:]) if name.startswith("_") else None
    if match is None:
        return None
    return is_alive(int(match[1]), int(match[2]) / 1000)


def _valid_name(_inst: object, _attr: object, value: str) -> None:
    validate_name(value)


def _positive_int(_inst: object, attr: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"invalid {attr.name} {value!r}: expected an int > 0")


@attrs.frozen
class Entry:
    """One registry entry: who holds a name, and how to wake it.

    Attributes:
        name: the actor name.
        pid: the holder's process id.
        create_time: the holder's psutil create time, to tell a reused pid apart.
        doorbell: path of the holder process's doorbell (a FIFO).
        generation: `time.time_ns()` at registration; unique per registration.
    """

    name: str = attrs.field(validator=_valid_name)
    pid: int = attrs.field(validator=_positive_int)
    create_time: float = attrs.field(converter=float)
    doorbell: str = attrs.field(validator=attrs.validators.instance_of(str))
    generation: int = attrs.field(validator=_positive_int)

    def to_json(self) -> bytes:
        """Serialize for an entry file."""
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Entry:
        """Parse an entry file's bytes.

        Raises:
            ValueError: not a well-formed entry (including JSON errors).
        """
        raw = json.loads(data)
        if not isinstance(raw, dict) or set(raw) != {f.name for f in attrs.fields(cls)}:
            raise ValueError(f"not a registry entry: {data[:200]!r}")
        if isinstance(raw["create_time"], bool) or not isinstance(raw["create_time"], int | float):
            raise ValueError(f"bad create_time in entry: {raw['create_time']!r}")
        return cls(**raw)


def _probe(pid: int) -> float | bool | None:
    """Return the create time of `pid`; None if gone or a zombie; True if it exists but
    cannot be inspected (so must be presumed alive).

    Raises:
        ResourceExhausted: /proc could not be read for lack of descriptors or memory.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc.create_time()
    except psutil.NoSuchProcess:  # includes ZombieProcess
        return None
    except psutil.AccessDenied:
        return True
    except OSError as exc:  # psutil lets EMFILE through as it came
        raise (exhausted(exc, f"inspect process {pid}") or exc) from exc


def process_create_time(pid: int) -> float | None:
    """Return the psutil create time of process `pid`.

    Returns:
        The create time (seconds since the epoch), or None if there is no such process,
        it is a zombie (killed but not yet reaped: dead), or it cannot be inspected.

    Raises:
        ResourceExhausted: out of descriptors or memory to read /proc.
    """
    probed = _probe(pid)
    return None if isinstance(probed, bool) else probed


def is_alive(pid: int, create_time: float) -> bool:
    """Tell whether the process registered as `(pid, create_time)` still runs.

    Alive means: the pid exists, is not a zombie, and its create time is the recorded one
    (within a second: see `_CTIME_TOLERANCE`), so a reused pid reads as dead. A process
    that exists but cannot be inspected, or that we lack the descriptors to inspect, is
    presumed alive: the safe side for every caller that would delete what is dead.
    """
    try:
        probed = _probe(pid)
    except ResourceExhausted:
        return True
    if probed is None:
        return False
    if isinstance(probed, bool):
        return True
    return abs(probed - create_time) <= _CTIME_TOLERANCE


def _unlink(path: pathlib.Path) -> bool:
    """Unlink `path`; False if someone else already did."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _make_private_dir(path: pathlib.Path) -> None:
    """Create `path` (if needed) as a directory of ours with mode 0700."""
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise (exhausted(exc, f"create {str(path)!r}") or exc) from exc
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"runtime path {str(path)!r} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"runtime directory {str(path)!r} belongs to uid {st.st_uid}, not {os.getuid()}"
        )
    # mkdir's mode is filtered by the umask; the directory must be private regardless.
    if stat.S_IMODE(st.st_mode) != _DIR_MODE:
        path.chmod(_DIR_MODE)


class _Slot:
    """What one read of `actors/<name>` found: an entry (None if corrupt) and the file's
    identity, so a later delete can check that it deletes the very file it judged."""

    __slots__ = ("entry", "ident", "mtime")

    def __init__(self, entry: Entry | None, ident: tuple[int, int, int], mtime: float) -> None:
        self.entry = entry
        self.ident = ident
        self.mtime = mtime


def _ident(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


class Registry:
    """The registry of one node's runtime directory.

    Several `Registry` values, in one process or many, may share a directory; they
    coordinate through the file system only.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Open (creating if needed) the runtime directory `root`.

        `root`, its parent when that is named `mybus-<uid>`, and the `actors/`, `bells/`,
        `rings/`, `blobs/`, `restarts/` and `stats/` subdirectories are created with mode
        0700 whatever the umask.

        Raises:
            PermissionError: a runtime directory exists but belongs to another user.
            NotADirectoryError: a runtime path exists and is not a directory.
            ResourceExhausted: no space (or inodes) left to create them.
            OSError: the directories cannot be created.
        """
        self._root = pathlib.Path(os.path.abspath(os.fspath(root)))
        parent = self._root.parent
        if parent.name == f"mybus-{os.getuid()}":
            parent.parent.mkdir(parents=True, exist_ok=True)
            _make_private_dir(parent)
        else:
            parent.mkdir(parents=True, exist_ok=True)
        _make_private_dir(self._root)
        for sub in (
            self.actors_dir, self.bells_dir, self.rings_dir, self.blobs_dir, self.restarts_dir,
            self.stats_dir,
        ):
            _make_private_dir(sub)
        self._gen_lock = threading.Lock()
        self._last_gen = 0

    def __repr__(self) -> str:
        return f"Registry({str(self._root)!r})"

    @property
    def root(self) -> pathlib.Path:
        """The runtime directory."""
        return self._root

    @property
    def actors_dir(self) -> pathlib.Path:
        """`<root>/actors`: one entry file per registered name."""
        return self._root / "actors"

    @property
    def bells_dir(self) -> pathlib.Path:
        """`<root>/bells`: one doorbell FIFO per endpoint of a process."""
        return self._root / "bells"

    @property
    def rings_dir(self) -> pathlib.Path:
        """`<root>/rings`: one ring file per (sender, receiver) pair."""
        return self._root / "rings"

    @property
    def blobs_dir(self) -> pathlib.Path:
        """`<root>/blobs`: large messages a gateway assembles from another node."""
        return self._root / "blobs"

    @property
    def restarts_dir(self) -> pathlib.Path:
        """`<root>/restarts/<name>`: a live supervisor restarts ``name`` when it ends."""
        return self._root / "restarts"

    @property
    def stats_dir(self) -> pathlib.Path:
        """`<root>/stats/<doorbell>`: a process's published counters (`counters.py`)."""
        return self._root / "stats"

    def stats_path(self, doorbell: str | os.PathLike[str]) -> pathlib.Path:
        """Where the process with doorbell ``doorbell`` publishes its counters: named as
        the doorbell, so `reclaim` judges it the same way."""
        return self.stats_dir / pathlib.Path(doorbell).name

    def expect_restart(self, name: str) -> None:
        """Mark ``name`` as one this process (its supervisor) starts again whenever it
        ends: a sender that finds no holder waits for the next one (`restart_pending`).

        Raises:
            ResourceExhausted: no room for the marker (senders then get ActorNotFound
                while it restarts, as without supervision).
        """
        ctime = process_create_time(os.getpid()) or 0.0
        tmp = self.restarts_dir / f".tmp-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            tmp.write_text(f"{os.getpid()} {ctime!r}\n")
            os.replace(tmp, self.restarts_dir / name)
        except OSError as exc:
            _unlink(tmp)
            raise (exhausted(exc, f"mark {name!r} as restarting") or exc) from exc

    def end_restart(self, name: str) -> None:
        """``name`` will not be restarted (any more): senders stop waiting for it."""
        _unlink(self.restarts_dir / name)

    def restart_pending(self, name: str) -> bool:
        """Whether a live supervisor will start ``name`` again (a dead one's mark goes)."""
        return self.restarter(name) is not None

    def restarter(self, name: str) -> int | None:
        """The pid of the live supervisor that will start ``name`` again, or None."""
        path = self.restarts_dir / name
        try:
            pid_text, ctime_text = path.read_text().split()
            pid = int(pid_text)
            alive = is_alive(pid, float(ctime_text))
        except (OSError, ValueError):
            return None
        if not alive:
            _unlink(path)
            return None
        return pid

    @property
    def gateway_expected(self) -> pathlib.Path:
        """`<root>/gateway.expected`: a gateway serves this directory and did not stop.

        Its gateway creates it once bound and removes it when it stops; when a gateway
        is killed, it stays, and a sender to another node waits a moment for the next
        one (`routing.send_to_node`) rather than failing while the gateway restarts.
        """
        return self._root / "gateway.expected"

    # ----------------------------------------------------------------- public API

    def doorbell_path(self, pid: int | None = None, *, index: int = 0) -> pathlib.Path:
        """Return `bells/<pid>-<create_time_ms>[.<index>]` for process `pid` (default: this one).

        ``index`` tells apart several endpoints of one process (0: no suffix).

        Raises:
            ProcessLookupError: no such live process.
        """
        pid = os.getpid() if pid is None else pid
        ctime = process_create_time(pid)
        if ctime is None:
            raise ProcessLookupError(f"no live process with pid {pid!r}")
        suffix = f".{index}" if index else ""
        return self.bells_dir / f"{pid}-{int(ctime * 1000)}{suffix}"

    def register(
        self, name: str, *, doorbell: str | os.PathLike[str], pid: int | None = None
    ) -> Entry:
        """Register `name` for process `pid` (default: this one).

        A stale holder (dead, zombie, or pid reused) is reclaimed first, with its rings.

        Args:
            name: the actor name.
            doorbell: the holder process's doorbell path (see `doorbell_path`).
            pid: the holder process; it must be alive.

        Returns:
            The new entry.

        Raises:
            InvalidAddress: `name` is invalid.
            NameTaken: a live process holds the name, or its entry is unreadable and too
                young to be judged abandoned.
            ProcessLookupError: `pid` is not a live process.
            ResourceExhausted: out of descriptors, memory or space to write the entry.
        """
        validate_name(name)
        pid = os.getpid() if pid is None else pid
        ctime = process_create_time(pid)
        if ctime is None:
            raise ProcessLookupError(f"cannot register {name!r}: no live process {pid!r}")
        entry = Entry(
            name=name,
            pid=pid,
            create_time=ctime,
            doorbell=os.fspath(doorbell),
            generation=self._next_generation(),
        )
        final = self.actors_dir / name
        tmp = self._write_temp(entry.to_json())
        try:
            for _ in range(_MAX_ATTEMPTS):
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise (exhausted(exc, f"register {name!r}") or exc) from exc
                else:
                    return entry
                slot = self._read(name)
                if slot is None:
                    continue  # its holder left between our link and our read
                held = slot.entry
                if held is None:
                    if time.time() - slot.mtime < _CORRUPT_GRACE:
                        raise NameTaken(
                            f"name {name!r} is held by an unreadable entry in "
                            f"{str(self.actors_dir)!r} (written less than "
                            f"{_CORRUPT_GRACE:g}s ago; it may be mid-write)"
                        )
                    self._delete_if_same(name, slot, None)
                    continue
                if is_alive(held.pid, held.create_time):
                    raise NameTaken(
                        f"name {name!r} is taken by live process {held.pid} "
                        f"(runtime dir {str(self._root)!r})"
                    )
                self._delete_if_same(name, slot, held)
            raise NameTaken(
                f"could not register {name!r}: still contended after {_MAX_ATTEMPTS} attempts"
            )
        finally:
            _unlink(tmp)

    def lookup(self, name: str) -> Entry:
        """Return the live entry of `name`.

        Raises:
            InvalidAddress: `name` is invalid.
            ActorNotFound: no entry, an unreadable one, or a stale one (then reclaimed).
            ResourceExhausted: no descriptor to read the entry with (it is left alone).
        """
        validate_name(name)
        slot = self._read(name)
        if slot is not None:
            held = self._judge(name, slot)
            if held is not None:
                return held
        raise ActorNotFound(f"no actor named {name!r} in runtime dir {str(self._root)!r}")

    def unregister(self, name: str, *, pid: int | None = None) -> bool:
        """Remove `name`'s entry and rings if the entry belongs to `pid` (default: this
        process). Someone else's entry is never touched.

        Returns:
            Whether anything was removed.

        Raises:
            InvalidAddress: `name` is invalid.
            ResourceExhausted: no descriptor to read the entry with (it is left alone).
        """
        validate_name(name)
        pid = os.getpid() if pid is None else pid
        slot = self._read(name)
        if slot is None or slot.entry is None or slot.entry.pid != pid:
            return False
        return self._delete_if_same(name, slot, slot.entry, doorbell=False, unread=True)

    def list(self) -> builtins.list[Entry]:
        """Return the live entries, sorted by name; stale ones are reclaimed on the way."""
        live: builtins.list[Entry] = []
        alive: dict[tuple[int, float], bool] = {}  # one probe per process, not per actor
        for name in self._entry_names():
            slot = self._read(name)
            if slot is not None:
                held = self._judge(name, slot, alive)
                if held is not None:
                    live.append(held)
        return sorted(live, key=lambda e: e.name)

    def reclaim(self, *, outboxes: bool = False) -> builtins.list[Entry]:
        """Remove what dead processes left behind.

        That is: every stale entry with its rings; abandoned unreadable entries and temp
        files; every doorbell whose process (pid and create time) is dead, with its
        counters; and every ring file neither of whose ends has a live entry. Rings into
        the gateway for other nodes are outboxes, kept for the next gateway to send;
        with ``outboxes`` (an operator's decision: those messages are given up) they go
        too when no gateway is live and their writer is not, and so do the gateway's
        blob files and `gateway_expected`.

        Returns:
            The stale entries reclaimed.
        """
        # Rings are listed before entries are read: a ring is created only between names
        # that were registered before it, so one created after this listing is never
        # judged against a stale view of who is live.
        rings = self._listdir(self.rings_dir)
        reclaimed: builtins.list[Entry] = []
        live: set[str] = set()
        for name in self._entry_names():
            slot = self._read(name)
            if slot is None:
                continue
            held = slot.entry
            if held is None:
                self._judge(name, slot)
            elif is_alive(held.pid, held.create_time):
                live.add(name)
            elif self._delete_if_same(name, slot, held):
                reclaimed.append(held)
        self._sweep_temp_files()
        for fname in self._listdir(self.bells_dir):
            if self._bell_is_dead(fname):
                _unlink(self.bells_dir / fname)
        for fname in self._listdir(self.stats_dir):  # named as doorbells, or their temps
            if self._bell_is_dead(fname.removeprefix(".tmp-")):
                _unlink(self.stats_dir / fname)
        for fname in self._listdir(self.restarts_dir):
            if fname.startswith(".tmp-"):  # a mark half written by a process now dead
                pid = fname.split("-")[1]
                if pid.isdigit() and _probe(int(pid)) is None:
                    _unlink(self.restarts_dir / fname)
            else:
                self.restart_pending(fname)  # a dead supervisor's mark goes
        drop_outboxes = outboxes and FORWARD_TO not in live
        for fname in rings:
            parsed = parse_ring_filename(fname)
            if parsed is None:
                continue
            if is_forward_ring(fname):  # an outbox: the next gateway sends what is in it
                if drop_outboxes and parsed[0] not in live:
                    _unlink(self.rings_dir / fname)
            elif not any(end in live or _mailbox_alive(end) for end in parsed[:2]):
                _unlink(self.rings_dir / fname)
        if drop_outboxes:
            for fname in self._listdir(self.blobs_dir):
                _unlink(self.blobs_dir / fname)
            _unlink(self.gateway_expected)  # nobody is to wait for a gateway now
        return reclaimed

    def remove_rings_of(self, name: str, *, keep_to_live: bool = False) -> int:
        """Unlink `rings/<name>~*.*` and `rings/*~<name>.*`.

        With ``keep_to_live`` (a clean unregister), a ring `<name>~<to>` whose receiver
        is live stays: what the holder wrote last is that receiver's to read, and it
        unlinks the ring when done (as it does every ring it reads).

        Returns:
            How many files this call removed.

        Raises:
            InvalidAddress: `name` is invalid.
        """
        validate_name(name)
        count = 0
        for fname in self._listdir(self.rings_dir):
            parsed = parse_ring_filename(fname)
            if parsed is None or name not in parsed[:2] or is_forward_ring(fname):
                continue
            if keep_to_live and parsed[1] != name and self._is_live(parsed[1]):
                continue
            count += _unlink(self.rings_dir / fname)
        return count

    # ----------------------------------------------------------------- internals

    def _is_live(self, name: str) -> bool:
        slot = self._read(name)
        held = None if slot is None else slot.entry
        return held is not None and is_alive(held.pid, held.create_time)

    def _next_generation(self) -> int:
        with self._gen_lock:
            self._last_gen = max(time.time_ns(), self._last_gen + 1)
            return self._last_gen

    def _write_temp(self, data: bytes) -> pathlib.Path:
        # The name starts with "." (never a valid name) and carries the writer's identity,
        # so `reclaim` can delete it if the writer dies before unlinking it.
        me = os.getpid()
        ctime = process_create_time(me) or 0.0
        tmp = self.actors_dir / f".tmp-{me}-{int(ctime * 1000)}-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except OSError as exc:
            raise (exhausted(exc, "write a registry entry") or exc) from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException as exc:
            os.close(fd)
            _unlink(tmp)
            if isinstance(exc, OSError) and (short := exhausted(exc, "write a registry entry")):
                raise short from exc
            raise
        os.close(fd)
        return tmp

    def _read(self, name: str) -> _Slot | None:
        """Read `actors/<name>`: None if missing; a slot whose entry is None if corrupt.

        Raises:
            ResourceExhausted: out of descriptors or memory: that says nothing about the
                entry, which must not be judged (a live holder's entry was deleted so).
        """
        path = self.actors_dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            short = exhausted(exc, f"read the registry entry of {name!r}")
            if short is not None:
                raise short from exc
            # e.g. a symlink planted there: unreadable, judged like corruption
            try:
                st = path.lstat()
            except FileNotFoundError:
                return None
            return _Slot(None, _ident(st), st.st_mtime)
        try:
            st = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        try:
            entry: Entry | None = Entry.from_json(b"".join(chunks))
        except (ValueError, TypeError):
            entry = None
        if entry is not None and entry.name != name:
            entry = None
        return _Slot(entry, _ident(st), st.st_mtime)

    def _judge(
        self, name: str, slot: _Slot, alive: dict[tuple[int, float], bool] | None = None
    ) -> Entry | None:
        """Return the slot's entry if it is live; otherwise reclaim it (a corrupt one only
        once it is old enough) and return None. ``alive`` memoises the liveness of the
        processes seen so far in one pass over the entries."""
        held = slot.entry
        if held is None:
            if time.time() - slot.mtime >= _CORRUPT_GRACE:
                self._delete_if_same(name, slot, None)
            return None
        key = (held.pid, held.create_time)
        known = None if alive is None else alive.get(key)
        if known is None:
            known = is_alive(*key)
            if alive is not None:
                alive[key] = known
        if known:
            return held
        self._delete_if_same(name, slot, held)
        return None

    @contextlib.contextmanager
    def _entries_locked(self) -> Iterator[None]:
        """Serialise deletions of entries across processes and threads.

        flock on the directory itself: released when its holder dies, and no lock file
        is left behind. Registration (`os.link`) needs no lock: it cannot replace a file.
        """
        try:
            fd = os.open(self.actors_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise (exhausted(exc, "lock the registry") or exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _delete_if_same(
        self,
        name: str,
        slot: _Slot,
        held: Entry | None,
        *,
        doorbell: bool = True,
        unread: bool = False,
    ) -> bool:
        """Delete `actors/<name>` (and its holder's rings) if it is still the file `slot`
        describes; return whether this call deleted it.

        Rings go first, while the entry still keeps the name from a new registrant whose
        fresh rings would otherwise be deleted with the old ones. Rings into the gateway
        for other nodes stay (`is_forward_ring`): they outlive writer and reader.
        """
        path = self.actors_dir / name
        with self._entries_locked():
            try:
                if _ident(path.lstat()) != slot.ident:
                    return False  # already deleted, or replaced by a new registration
            except FileNotFoundError:
                return False
            if held is not None:
                self.remove_rings_of(name, keep_to_live=unread)
                if doorbell:
                    self._unlink_dead_doorbell(held.doorbell)
                    self._remove_rings_of_dead_mailbox(mailbox_name(held.doorbell))
            return _unlink(path)

    def _remove_rings_of_dead_mailbox(self, mailbox: str) -> None:
        """A dead process's rings to and from other processes (its mailbox's)."""
        if _mailbox_alive(mailbox) is not False:
            return
        for fname in self._listdir(self.rings_dir):
            parsed = parse_ring_filename(fname)
            if parsed is not None and mailbox in parsed[:2]:
                _unlink(self.rings_dir / fname)

    def _unlink_dead_doorbell(self, doorbell: str) -> None:
        bell = pathlib.Path(doorbell)
        if bell.parent == self.bells_dir and self._bell_is_dead(bell.name):
            _unlink(bell)

    def _bell_is_dead(self, fname: str) -> bool:
        match = _BELL_RE.fullmatch(fname)
        if match is None:
            return False  # not named by our convention: not ours to judge
        return not is_alive(int(match[1]), int(match[2]) / 1000)

    def _sweep_temp_files(self) -> None:
        for fname in self._listdir(self.actors_dir):
            match = _TMP_RE.fullmatch(fname)
            if match is None or is_alive(int(match[1]), int(match[2]) / 1000):
                continue
            path = self.actors_dir / fname
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.lstat().st_mtime >= _CORRUPT_GRACE:
                    _unlink(path)

    def _entry_names(self) -> builtins.list[str]:
        return [f for f in self._listdir(self.actors_dir) if NAME_RE.fullmatch(f)]

    @staticmethod
    def _listdir(path: pathlib.Path) -> builtins.list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise (exhausted(exc, f"list {str(path)!r}") or exc) from exc
