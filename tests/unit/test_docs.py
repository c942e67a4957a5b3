"""The documentation site cannot rot: its Python blocks run, its nav is whole, it builds.

Every fenced ```python block of a page in ``docs/`` runs: the blocks of one page in order,
in one fresh interpreter (``sys.executable``) that shares one namespace between them (a
block may use what an earlier block of its page defined, though the pages keep each
block self-contained). Each page gets a private runtime directory and node name
(``MYBUS_RUNTIME_DIR``, ``MYBUS_NODE``) and a timeout; afterwards no process started by
the page may be alive (found by that private runtime directory in its environment, which
every spawned actor and gateway inherits) and no file may be left in the runtime
directory. So every block stops what it starts.

Blocks in other languages (```console, ```text, ```ini, ```yaml, ```toml) are shown,
not run: commands and files (their command lines are parsed with the real parsers).

`mkdocs build --strict` runs into a temporary directory (the ``test`` extra installs
the ``docs`` one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
PAGE_TIMEOUT = 240.0  # seconds for all the blocks of one page, on a loaded 2-core machine
PYTHON = {"python", "py", "python3"}
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


class Block:
    """A fenced code block: its language, where its code starts, and its code."""

    def __init__(self, page: Path, lang: str, line: int, code: str) -> None:
        self.page, self.lang, self.line, self.code = page, lang, line, code

    def __repr__(self) -> str:
        return f"{self.page.name}:{self.line} ({self.lang})"


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, nested ones (admonitions, lists) included."""
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opened = _OPEN.match(lines[i])
        if opened is None:
            i += 1
            continue
        indent, fence = opened["indent"], opened["fence"]
        info = opened["info"].strip()
        # ```python, ``` python, ```{.python title="x"}, ```python title="x"
        lang = re.sub(r"^[{.\s]+", "", info).split()[0].rstrip("}") if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j])
            j += 1
        else:
            raise AssertionError(f"{page.name}:{i + 1}: a fence that is never closed")
        code = textwrap.dedent("\n".join(line.removeprefix(indent) for line in body))
        blocks.append(Block(page, lang.lower(), i + 2, code + "\n"))
        i = j + 1
    return blocks


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def python_blocks(page: Path) -> list[Block]:
    return [b for b in fenced_blocks(page) if b.lang in PYTHON]


PAGES_WITH_CODE = [p for p in pages() if python_blocks(p)]

# Runs a page's blocks in order in __main__'s namespace (so an actor class a block defines
# is spawned by value, as from a user's script), each compiled under the page's name and
# its own line numbers, so a traceback points into the Markdown.
_RUNNER = """
import json, sys, __main__
for path, line, code in json.load(open(sys.argv[1])):
    print(f"--- {path}:{line}", flush=True)
    exec(compile("\\n" * (line - 1) + code, path, "exec"), __main__.__dict__)
import psutil
left = [f"{c.pid} {' '.join(c.cmdline())}" for c in psutil.Process().children(recursive=True)]
if left:
    sys.exit(f"child processes left running by the page's blocks: {left}")
"""


def _leftover_files(root: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files)


def _processes_of(runtime_dir: Path) -> list[psutil.Process]:
    """Live processes whose environment names this runtime directory: the page's."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            mine = proc.environ().get("MYBUS_RUNTIME_DIR") == str(runtime_dir)
            if mine and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


@pytest.fixture
def page_runtime(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    base = (SHM / f"mybus-docs-{os.getuid()}") if SHM else tmp_path / "shm"
    root = base / uuid.uuid4().hex[:12]
    root.mkdir(parents=True, mode=0o700)
    try:
        yield root, "docs" + uuid.uuid4().hex[:8]
    finally:
        for proc in _processes_of(root):  # only when the check below already failed
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            base.rmdir()


def test_the_pages_have_python_blocks_to_run() -> None:
    names = {p.name for p in PAGES_WITH_CODE}
    assert {"index.md", "getting-started.md", "concepts.md"} <= names, names


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.name)
def test_every_python_block_of_the_page_runs_and_leaves_nothing(
    page: Path, page_runtime: tuple[Path, str], tmp_path: Path
) -> None:
    root, node = page_runtime
    blocks = python_blocks(page)
    script, listing = tmp_path / "run_blocks.py", tmp_path / "blocks.json"
    script.write_text(_RUNNER)
    rel = str(page.relative_to(ROOT))
    listing.write_text(json.dumps([(rel, b.line, b.code) for b in blocks]))
    env = dict(os.environ, MYBUS_RUNTIME_DIR=str(root), MYBUS_NODE=node)
    env.pop("MYBUS_SECRET", None)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(listing)],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=PAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{rel}: the blocks did not finish within {PAGE_TIMEOUT}s\n{out}\n{err}")
    assert proc.returncode == 0, f"{rel}: a block failed (exit {proc.returncode})\n{out}\n{err}"
    left_running = [f"{p.pid} {' '.join(p.cmdline())}" for p in _processes_of(root)]
    assert not left_running, f"{rel}: processes left running: {left_running}"
    left = _leftover_files(root)
    assert not left, f"{rel}: files left in the runtime directory: {left}"


def _nav_pages(nav: object) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


def test_the_nav_lists_every_page_and_every_page_it_lists_exists() -> None:
    config = yaml.safe_load(MKDOCS_YML.read_text())
    assert config["site_dir"] == "site"
    assert config["theme"]["name"] == "material"
    listed = [p for p in _nav_pages(config["nav"]) if not re.match(r"^[a-z]+://", p)]
    assert len(listed) == len(set(listed)), f"a page is listed twice: {listed}"
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert set(listed) == on_disk, (
        f"in the nav, not in docs/: {sorted(set(listed) - on_disk)}; "
        f"in docs/, not in the nav: {sorted(on_disk - set(listed))}"
    )
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/site/" in ignored or "site/" in ignored, "mkdocs' site/ must be git-ignored"


def test_the_api_page_covers_the_public_api() -> None:
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: mybus_actors\.(\w+)", text, re.M))
    import mybus_actors

    wanted = {n for n in mybus_actors.__all__ if n not in {"Runtime", "TimerHandle"}}
    assert wanted <= documented, f"not in docs/api.md: {sorted(wanted - documented)}"
    assert "testing" in documented


def test_the_gateway_commands_in_the_docs_use_real_flags() -> None:
    """Every `mybus-gateway ...` line of a console block parses with the gateway's own
    parser."""
    import shlex

    from mybus_actors.gateway_config import parser

    known = {opt for action in parser()._actions for opt in action.option_strings}
    checked = 0
    for page in pages():
        for block in fenced_blocks(page):
            if block.lang not in {"console", "bash", "sh", "shell"}:
                continue
            text = block.code.replace("\\\n", " ")
            for line in text.splitlines():
                if not line.startswith(("$ ", "mybus-gateway ")):
                    continue  # a command's output
                words = shlex.split(line.removeprefix("$ "), comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value mybus-gateway
                    words.pop(0)
                if not words or words[0] != "mybus-gateway":
                    continue
                flags = [w.split("=")[0] for w in words[1:] if w.startswith("--")]
                unknown = [f for f in flags if f not in known]  # prefixes are not spelled out
                assert not unknown, f"{block}: mybus-gateway has no flag {unknown}: {line!r}"
                errors = io.StringIO()
                with contextlib.redirect_stderr(errors):
                    try:
                        parser().parse_args(words[1:])
                    except SystemExit:
                        pytest.fail(f"{block}: {line!r} does not parse: {errors.getvalue()}")
                checked += 1
    assert checked >= 3, checked


def test_the_mybus_commands_in_the_docs_use_real_subcommands_and_flags() -> None:
    """Every ``mybus SUBCOMMAND --flag ...`` in a console or text block names a subcommand
    and flags that ``mybus SUBCOMMAND --help`` lists."""
    import shlex

    from mybus_actors import cli

    def help_of(sub: str) -> str | None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main([sub, "--help"])
            except SystemExit as exc:
                return out.getvalue() if exc.code == 0 else None
        return out.getvalue()

    checked = 0
    for page in pages():
        for block in fenced_blocks(page):
            if block.lang not in {"console", "bash", "sh", "shell", "text"}:
                continue
            for line in block.code.replace("\\\n", " ").splitlines():
                line = line.removeprefix("$ ")
                if not line.startswith("mybus "):
                    continue
                words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", line), comments=True)
                sub = words[1]
                text = help_of(sub)
                assert text is not None, f"{block}: mybus has no subcommand {sub!r}: {line!r}"
                for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                    assert flag in text.split() or f"{flag}," in text or f"[{flag}" in text, (
                        f"{block}: mybus {sub} has no flag {flag}: {line!r}"
                    )
                checked += 1
    assert checked >= 5, checked


def test_the_config_blocks_parse() -> None:
    """TOML and YAML shown inline parse (deploy/'s files, included at build time, are
    checked by test_deploy.py); a [peers] table's entries are peers the gateway takes."""
    import tomllib

    from mybus_actors.gateway_config import parser

    checked = 0
    for page in pages():
        for block in fenced_blocks(page):
            if "--8<--" in block.code:
                continue
            if block.lang == "toml":
                table = tomllib.loads(block.code)
                for node, where in table.get("peers", {}).items():
                    parser().parse_args(["--peer", f"{node}={where}"])
                checked += 1
            elif block.lang in {"yaml", "yml"}:
                assert list(yaml.safe_load_all(block.code)), block
                checked += 1
    assert checked >= 1


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )  # fmt: skip
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
