"""What the benchmark scripts share: bounds, loops, child processes, cleanup and reports.

A plain module next to the scripts (``python benchmarks/NAME.py`` puts ``benchmarks/`` on
``sys.path``); importing it has no side effects.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol, TypeVar

import attrs
import psutil

DICT_VALUE: Final = "x" * 40  # the small dict is {"i": i, "v": DICT_VALUE}
MB: Final = 1e6  # MB/s is decimal megabytes
START_TIMEOUT: Final = 60.0
JOB_TIMEOUT: Final = 120.0
STOP_TIMEOUT: Final = 10.0
IDLE_TIMEOUT: Final = 900.0  # a child gives up when the parent stops talking

Results = dict[str, dict[str, list[float]]]  # column -> figure -> one value per rep


# -- bounds ------------------------------------------------------------------------------


@contextlib.contextmanager
def bounded(seconds: float, what: str) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread if the block outlives ``seconds``.

    A SIGALRM interrupts blocking reads, lock waits and zmq calls alike, so the timed
    loops need no per-message deadline check. Not reentrant.
    """

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"{what}: not finished after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pause(seconds: float) -> None:
    """Busy-wait ``seconds``: the peer sees no traffic while this process stays awake."""
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_text(profiler: cProfile.Profile, lines: int) -> str:
    """The top ``lines`` functions by tottime, without pstats' preamble."""
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    text = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(text) if "ncalls" in line), 0)
    return "\n".join(line for line in text[start:] if line.strip())


# -- loops (kept flat: a call per message would blur the figures) ------------------------


def repeat(put: Callable[[bytes], object], payload: bytes, count: int) -> None:
    for _ in range(count):
        put(payload)


def send_dicts(put: Callable[[dict[str, object]], object], count: int) -> None:
    value = DICT_VALUE
    for i in range(count):
        put({"i": i, "v": value})


def tell_bytes(tell: Callable[[str, Any], object], to: str, payload: bytes, count: int) -> None:
    for _ in range(count):
        tell(to, payload)


def tell_dicts(tell: Callable[[str, Any], object], to: str, count: int) -> None:
    value = DICT_VALUE
    for i in range(count):
        tell(to, {"i": i, "v": value})


def drain(get: Callable[[], object], count: int) -> None:
    for _ in range(count):
        get()


def echo_back(get: Callable[[], Any], put: Callable[[Any], object], count: int) -> None:
    for _ in range(count):
        put(get())


def round_trips(
    put: Callable[[bytes], object],
    get: Callable[[], object],
    payload: bytes,
    count: int,
    gap: float = 0.0,
) -> list[float]:
    """Round-trip times; with ``gap``, a busy-wait (not counted) before each."""
    clock = time.perf_counter
    rtts = [0.0] * count
    for k in range(count):
        if gap:
            pause(gap)
        start = clock()
        put(payload)
        get()
        rtts[k] = clock() - start
    return rtts


def p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def record_rtts(
    figures: dict[str, list[float]], key: str, rtts: Sequence[float]
) -> tuple[float, float]:
    """Add the median and the p99 of ``rtts``, in us, to ``figures``; return them."""
    median, tail = statistics.median(rtts) * 1e6, p99(rtts) * 1e6
    figures.setdefault(f"{key}.median", []).append(median)
    figures.setdefault(f"{key}.p99", []).append(tail)
    return median, tail


# -- child processes ---------------------------------------------------------------------


def _child(serve: Callable[..., None], ctl: Connection, *args: Any) -> None:
    """A child process's entry point: run ``serve``, report a failure to the parent."""
    try:
        serve(ctl, *args)
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            ctl.send(("error", traceback.format_exc()))
        raise
    finally:
        ctl.close()


class Proc:
    """A child process running ``serve(ctl, *args)`` and the side channel ``ctl`` to it."""

    stop_message: Any = ("stop",)  # what asks ``serve`` to return
    role: str = ""  # what the messages call the process, after its name

    def __init__(self, ctx: SpawnContext, name: str, serve: Callable[..., None], *args: Any):
        self.name = name
        self.label = f"{name} {self.role}".rstrip()
        self.ctl, child_end = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child, args=(serve, child_end, *args), name=f"bench-{name}", daemon=True
        )
        self.proc.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def expect(self, kind: str, timeout: float) -> Any:
        """Return the value of the next side-channel message, which must be ``kind``.

        Raises:
            TimeoutError: nothing came within ``timeout``.
            RuntimeError: the child failed (its traceback is in the message).
        """
        if not self.ctl.poll(timeout):
            raise TimeoutError(f"{self.label} (pid {self.pid}): no {kind!r} within {timeout:g}s")
        tag, value = self.ctl.recv()
        if tag == "error":
            raise RuntimeError(f"{self.label} (pid {self.pid}) failed:\n{value}")
        if tag != kind:
            raise RuntimeError(f"{self.label}: expected {kind!r}, got {tag!r}")
        return value

    def stop(self, problems: list[str]) -> None:
        """Ask the process to stop, join it with a timeout, kill it (by pid) if it lingers."""
        stopped = False
        if self.proc.is_alive():
            try:
                self.ctl.send(self.stop_message)
                self.expect("stopped", STOP_TIMEOUT)
                stopped = True
            except (OSError, EOFError, TimeoutError, RuntimeError) as exc:
                problems.append(f"{self.label} did not stop cleanly: {exc}")
        # One that did not answer is stuck (or gone): no point waiting long for it.
        self.proc.join(STOP_TIMEOUT if stopped else 0.5)
        if self.proc.is_alive():
            problems.append(f"{self.label} (pid {self.pid}) killed")
            self.proc.kill()
            self.proc.join(STOP_TIMEOUT)
        self.ctl.close()
        if self.proc.exitcode is None:
            problems.append(f"{self.label} (pid {self.pid}) survived SIGKILL")


@attrs.define
class Cleanup:
    """What the teardown found: every entry is a problem; none means nothing was left."""

    problems: list[str] = attrs.Factory(list)
    pids: list[int] = attrs.Factory(list)

    def remove_dir(self, path: Path, what: str) -> None:
        left = sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())
        if left:
            self.problems.append(f"{what} {path}: files left behind: {left}")
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            self.problems.append(f"{what} {path}: could not be removed")

    def check_processes(self) -> None:
        """Report every process started here (``pids``) that still runs."""
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        self.problems.extend(
            f"process {pid} is still running" for pid in self.pids if pid in children
        )

    def reap_children(self, timeout: float) -> None:
        """Wait for every child process to be gone; kill (by pid) and report the rest."""
        deadline = time.monotonic() + timeout
        # multiprocessing's resource tracker lives as long as this process: not ours to end.
        tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
        children = [c for c in psutil.Process().children(recursive=True) if c.pid != tracker]
        while children and time.monotonic() < deadline:
            time.sleep(0.05)  # not a synchronisation: a bounded poll of process exits
            children = [c for c in children if _running(c)]
        for child in children:
            with contextlib.suppress(psutil.Error):
                self.problems.append(f"process {child.pid} ({child.name()}) left; killed")
                child.kill()

    def report(self, done: str) -> int:
        """Print the problems (exit status 1) or ``done`` (exit status 0)."""
        if self.problems:
            print("cleanup FAILED:\n  " + "\n  ".join(self.problems))
            return 1
        print(done)
        return 0


def write_raw(path: Path | None, results: Results, cleanup: Cleanup, **fields: Any) -> None:
    """With ``--json PATH``: the raw numbers, ``fields`` first, then every rep, the
    medians and what the cleanup found."""
    if path is None:
        return
    raw = {**fields, "reps": results, "medians": medians(results)}
    raw["cleanup_problems"] = cleanup.problems
    path.write_text(json.dumps(raw, indent=2) + "\n")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


P = TypeVar("P", bound=Proc)


def start_proc(
    stack: contextlib.ExitStack,
    cleanup: Cleanup,
    kind: type[P],
    ctx: SpawnContext,
    name: str,
    serve: Callable[..., None],
    *args: Any,
) -> P:
    """Start a ``kind`` process; ``stack`` stops it, ``cleanup`` records its pid."""
    proc = kind(ctx, name, serve, *args)
    cleanup.pids.append(proc.pid)
    stack.callback(proc.stop, cleanup.problems)
    return proc


# -- command line ------------------------------------------------------------------------


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every script has: --reps, --quick, --json."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    parser.add_argument("--quick", action="store_true", help="1/5 of the counts, 3 reps")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    return parser


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    choice: str,
    known: Sequence[str],
) -> argparse.Namespace:
    """Parse; default --reps; split option ``choice`` into a list of names from ``known``."""
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    chosen = [name.strip() for name in getattr(args, choice).split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown {choice} {unknown}; choose from {list(known)}")
    setattr(args, choice, chosen)
    return args


# -- machine -----------------------------------------------------------------------------


def cpu_pressure() -> str:
    """The kernel's CPU pressure line ("some avg10=..."): how often tasks waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            return " ".join(f.readline().split()[1:3])
    except OSError:
        return "n/a"


def machine(**versions: Any) -> dict[str, Any]:
    """Date, CPUs, platform, Python, then ``versions``, then the load at the start."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
        )
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "loadavg_start": os.getloadavg(),
        "cpu_pressure_start": cpu_pressure(),
    }


def _loadavg(values: Sequence[float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def header(
    title: str, info: dict[str, Any], versions: str, config: dict[str, Any], per_rep: str
) -> list[str]:
    """A header's first lines, down to the reps line; each script adds its own after them."""
    return [
        f"# {title}",
        "",
        f"- date: {info['date']}",
        f"- machine: nproc {info['nproc']} (affinity {info['affinity']}), {info['cpu']}, "
        f"{info['platform']}",
        f"- python {info['python']}, {versions}",
        f"- load average at start: {_loadavg(info['loadavg_start'])}; "
        f"cpu pressure {info['cpu_pressure_start']}",
        f"- reps: {config['reps']} (each figure is the median); {per_rep}",
    ]


def counts(per_key: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in per_key.items())


def footer(elapsed: float) -> str:
    return (
        f"\nrun time {elapsed:.0f}s; load average at end {_loadavg(os.getloadavg())}; "
        f"cpu pressure {cpu_pressure()}"
    )


# -- reporting ---------------------------------------------------------------------------


class Figure(Protocol):
    """A workload or a round-trip mode: what a table row is labelled by."""

    @property
    def key(self) -> str: ...

    @property
    def label(self) -> str: ...


class Sized(Figure, Protocol):
    @property
    def size(self) -> int: ...


@attrs.frozen
class Target:
    label: str
    figure: str
    peer: str
    bound: float
    at_least: bool  # throughput: mybus/peer >= bound; round trip: mybus/peer <= bound


def rows(workloads: Sequence[Sized], modes: Sequence[Figure]) -> list[tuple[str, str]]:
    """(figure key, row label) in table order."""
    out = [
        (wl.key, f"{wl.label}, msg/s" + (" (MB/s)" if wl.size >= 4096 else "")) for wl in workloads
    ]
    for mode in modes:
        out.append((f"{mode.key}.median", f"{mode.label}: median, us"))
        out.append((f"{mode.key}.p99", f"{mode.label}: p99, us"))
    return out


def medians(results: Results) -> dict[str, dict[str, float]]:
    return {c: {k: statistics.median(v) for k, v in figs.items()} for c, figs in results.items()}


def cell(key: str, value: float | None, sizes: dict[str, int]) -> str:
    if value is None:
        return "n/a"
    if "." in key:  # a round-trip figure, in microseconds
        return f"{value:,.1f}"
    size = sizes.get(key, 0)
    if size >= 4096:
        return f"{value:,.0f} ({value * size / MB:,.0f})"
    return f"{value:,.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(results: Results, key: str, mine: str, peer: str) -> float | None:
    """``mine`` / ``peer`` for figure ``key``: the median of the per-rep ratios.

    Rep by rep the two were measured one right after the other, so a ratio within a rep
    cancels most of the background load that drifts from one rep to the next.
    """
    ours = results.get(mine, {}).get(key)
    theirs = results.get(peer, {}).get(key)
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    return statistics.median(m / t for m, t in zip(ours, theirs, strict=True) if t)


def ratios(results: Results, names: Sequence[str], mine: str) -> dict[str, Any]:
    """Every figure's ratio ``mine`` / peer, by peer: for the JSON file."""
    return {
        peer: {key: ratio(results, key, mine, peer) for key in results[peer]}
        for peer in names
        if peer != mine and peer in results
    }


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def spread(values: Sequence[float] | None) -> float | None:
    if not values or min(values) <= 0:
        return None
    return max(values) / min(values)


def targets(results: Results, mine: str, wanted: Sequence[Target]) -> list[str]:
    lines = []
    for target in wanted:
        value = ratio(results, target.figure, mine, target.peer)
        if value is None:
            lines.append(f"- n/a  {target.label}: not measured in this run")
            continue
        ok = value >= target.bound if target.at_least else value <= target.bound
        lines.append(f"- {'PASS' if ok else 'MISS'} {target.label}: {value:.2f}x")
    return lines


@attrs.frozen
class Report:
    """How a script lays out its tables: the column compared, its rows and targets."""

    mine: str  # the column every ratio divides (mybus)
    ratios_title: str  # what the ratios are, in their section's title
    targets: Sequence[Target]

    def render(
        self,
        results: Results,
        names: Sequence[str],
        workloads: Sequence[Sized],
        modes: Sequence[Figure],
    ) -> str:
        """Figures, ratios, noise and targets, as Markdown."""
        med = medians(results)
        sizes = {wl.key: wl.size for wl in workloads}
        order = rows(workloads, modes)
        figures = [
            [label, *(cell(key, med.get(n, {}).get(key), sizes) for n in names)]
            for key, label in order
        ]
        out = ["## Figures (median over reps)", "", table(["workload", *names], figures), ""]
        peers = [n for n in names if n != self.mine]
        if results.get(self.mine) and peers:
            lines = [
                [
                    f"{label} ({'lower' if '.' in key else 'higher'} is better)",
                    *(fmt_ratio(ratio(results, key, self.mine, p)) for p in peers),
                ]
                for key, label in order
            ]
            head = ["workload", *(f"mybus / {p}" for p in peers)]
            out += [
                f"## Ratios: {self.ratios_title} (median over reps of each rep's ratio)",
                "",
                table(head, lines),
                "",
            ]
        noise = [
            [label, *(fmt_ratio(spread(results.get(n, {}).get(key))) for n in names)]
            for key, label in order
        ]
        out += ["## Noise: max / min over reps", "", table(["workload", *names], noise), ""]
        targets_lines = targets(results, self.mine, self.targets)
        return "\n".join([*out, "## Targets (ratios as above)", "", *targets_lines])
