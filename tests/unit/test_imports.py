"""The package's import graph follows the house (DESIGN.md): no module imports one below it.

Walks every module's imports with `ast` (imports under ``if TYPE_CHECKING:`` are only
for annotations and do not count) and checks them against `ORDER`, bottom first. A new
module must be placed in `ORDER`: where it goes is a design decision, made here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mybus_actors"

# Bottom first. Where this differs from DESIGN.md's table it says so, so that the table
# and the code are compared in one place: `address` reads name syntax from `registry`
# (the table puts it above); `items` (runs of ring records) sits below `wire`, which
# frames them, and `link` (a receiving stream's state) reads them; the gateway's halves
# (`outbox`, `deliveries`) and its links (`peers`) sit above the mailbox, its
# configuration between them, as the table's `relay`, `peers`, `gateway_config` rows.
# `_ringcore` is C (it imports `errors` and `ring`); `ringcore` picks it or `ring`.
ORDER = [
    "errors",
    "logs",
    "allocator",
    "timers",
    "pressure",
    "ring",
    "_ringcore",
    "ringcore",
    "codec",
    "asks",
    "items",
    "wire",
    "link",
    "registry",
    "address",
    "messages",
    "deadletter",
    "relayed",
    "counters",
    "ringfile",
    "doorbell",
    "outbound",
    "inbound",
    "mailbox",
    "routing",
    "snapshot",
    "outbox",
    "deliveries",
    "gateway_config",
    "peers",
    "supervision",
    "actor",
    "pool",
    "client",
    "ref",
    "cell",
    "scheduling",
    "watches",
    "aio",
    "dispatcher",
    "children",
    "runtime",
    "demo",
    "top",
    "metrics",
    "cli",
    "gateway",
    "_boot",
    "__init__",
]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    if path.suffix == ".c":  # a C extension imports by PyImport_ImportModule("mybus_actors.x")
        return set(re.findall(r'PyImport_ImportModule\("mybus_actors\.(\w+)"\)', path.read_text()))

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            module = node.module or ""
            if module == "mybus_actors":
                found.update(alias.name for alias in node.names)
            elif module.startswith("mybus_actors."):
                found.add(module.split(".")[1])

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.startswith("mybus_actors."):
                    found.add(alias.name.split(".")[1])

    Visitor().visit(ast.parse(path.read_text()))
    return found - {path.stem}


def test_every_module_is_placed_in_the_house() -> None:
    modules = {p.stem for p in (*PACKAGE.glob("*.py"), *PACKAGE.glob("*.c"))}
    assert sorted(modules - set(ORDER)) == [], "place the new module(s) in ORDER"
    assert sorted(set(ORDER) - modules) == [], "ORDER names modules that do not exist"


def test_no_module_imports_one_above_it() -> None:
    rank = {name: i for i, name in enumerate(ORDER)}
    backward = [
        f"{path.stem} imports {dep}"
        for path in sorted((*PACKAGE.glob("*.py"), *PACKAGE.glob("*.c")))
        for dep in sorted(_imports(path))
        if dep in rank and rank[dep] >= rank[path.stem]
    ]
    assert backward == []


def test_the_mailbox_halves_do_not_know_each_other() -> None:
    # DESIGN.md's house: the Endpoint façade joins them; neither imports the other.
    assert "outbound" not in _imports(PACKAGE / "inbound.py")
    assert "inbound" not in _imports(PACKAGE / "outbound.py")
