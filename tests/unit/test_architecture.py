"""The shape of the code: which package may import which, no import cycles, modules kept small.

Every import statement counts, at module level or inside a function (a lazy import still ties
two modules together); only imports under ``if TYPE_CHECKING:`` are left out, since they never
run. The checks read the source with :mod:`ast`, so they see exactly what a reader sees.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_node", "central", "fleetd_demo")
#: what central may use from edge_node: the wire protocol, the model it carries, how rollup
#: outputs are named, and the few shared utilities (metrics registry, sd_notify, process
#: helpers, errors, durations and timestamps, the clock seam, the TLS listener and contexts)
CENTRAL_MAY_IMPORT = frozenset({
    "edge_node", "edge_node.wire", "edge_node.model", "edge_node.metrics", "edge_node.sdnotify",
    "edge_node.process", "edge_node.errors", "edge_node.runtime", "edge_node.durations",
    "edge_node.rollup_names", "edge_node.tls",
})
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            for other in node.orelse:  # the else branch does run
                if isinstance(other, ast.Import | ast.ImportFrom):
                    yield other
                yield from _import_nodes(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a ``from pkg import sub`` of a submodule counts
    as importing the submodule, not the package)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                mod = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
            # importing a.b.c runs a/__init__ and a/b/__init__ first (unless inside a.b)
            while "." in t:
                t = t.rpartition(".")[0]
                if t in known and t != name and not name.startswith(t + "."):
                    out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """The graph and the cycle finder catch a lazy import, a relative import and a cycle;
    TYPE_CHECKING imports stay out."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\nx = 1\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg import c\nimport pkg.a\n")
    (pkg / "c.py").write_text("")
    global ROOT
    saved = ROOT
    ROOT = tmp_path
    try:
        known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
        g = {m: imports_of(m, tmp_path / (m.replace(".", "/") + ".py") if m != "pkg"
                           else pkg / "__init__.py", known) for m in known}
    finally:
        ROOT = saved
    assert g == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": set()}
    assert cycles(g) == [["pkg.a", "pkg.b"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_edge_node_never_imports_central() -> None:
    bad = {m: sorted(t for t in deps if t.split(".")[0] in ("central", "fleetd_demo"))
           for m, deps in graph().items() if m.split(".")[0] == "edge_node"}
    assert {m: d for m, d in bad.items() if d} == {}


def test_central_uses_only_the_wire_protocol_and_shared_utilities() -> None:
    bad = {m: sorted(t for t in deps if t.split(".")[0] == "edge_node"
                     and t not in CENTRAL_MAY_IMPORT)
           for m, deps in graph().items() if m.split(".")[0] == "central"}
    assert {m: d for m, d in bad.items() if d} == {}


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name: str) -> None:
    path = modules()[name]
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept"
