"""The layout: the import graph of the three packages has no cycle, the layers point down (``encoders`` and
``datamodules`` never import each other or ``omnimodal``), console scripts live in ``omnimodal/cli/`` and stay
thin, and the packaging lists every package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datamodules", "encoders", "omnimodal")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (every ``import`` statement, at any depth, except under
    ``if TYPE_CHECKING:``; ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        skip: set[int] = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if _is_type_checking(node):
                skip |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    edges.add(name)
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 60 and "omnimodal.cli.train" in graph  # the walk found the packages
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_down() -> None:
    for mod, edges in import_graph().items():
        top = mod.split(".")[0]
        forbidden = {"datamodules": ("encoders", "omnimodal"), "encoders": ("datamodules", "omnimodal")}.get(top, ())
        bad = sorted(e for e in edges if e.split(".")[0] in forbidden)
        assert not bad, f"{mod} imports {bad}"


def test_console_scripts_are_thin_entry_points_in_cli() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module = target.split(":")[0]
        if module.startswith("omnimodal."):
            assert module.startswith("omnimodal.cli."), f"{name} -> {target}: entry points live in omnimodal/cli/"
            lines = (ROOT / (module.replace(".", "/") + ".py")).read_text().splitlines()
            assert len(lines) <= 100, f"{module} has {len(lines)} lines; move the work into the library"
    # a command's name tells its module
    for name in ("train", "finetune", "eval", "forecast", "export", "consolidate", "demo"):
        assert scripts[f"omnimodal-{name}"] == f"omnimodal.cli.{name}:main"


def test_every_package_is_packaged() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
