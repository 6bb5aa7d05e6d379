"""The house has no import circles: every import inside ``medidiff/`` (module level and inside
functions alike) is read from the source, and the graph between modules and between the
top-level rooms (``medidiff.score``, ``medidiff.batch``, ...) must be acyclic. Scoring never
reaches the training package."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medidiff"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(mod: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = mod.split(".")
        if path.name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from .pkg import name` may import a submodule `pkg.name`
    return [target] + [f"{target}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the medidiff modules it imports (anywhere in its source, TYPE_CHECKING included)."""
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for t in _targets(mod, path, node):
                while t and t not in mods:  # the longest prefix that is a module
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t.startswith("medidiff") and t != mod and not mod.startswith(t + "."):
                    edges[mod].add(t)
    return edges


def room(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def room_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        rooms[room(a)].update(room(b) for b in bs if room(b) != room(a))
    return rooms


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(graph) | {b for bs in graph.values() for b in bs})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_walker_sees_function_level_imports_and_finds_a_planted_cycle():
    edges = import_graph()
    # batch/scorer.py loads models inside a function: the edge must be seen
    assert "medidiff.model.store" in edges["medidiff.batch.scorer"]
    planted = {k: set(v) for k, v in edges.items()}
    planted.setdefault("medidiff.model.store", set()).add("medidiff.batch.scorer")
    assert cycles(planted), "a planted model.store -> batch.scorer edge must close a circle"
    assert cycles(room_graph(planted))


def test_no_import_circle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_circle_between_rooms():
    assert cycles(room_graph(import_graph())) == []


@pytest.mark.parametrize("start", ["medidiff.score", "medidiff.batch", "medidiff.commands.score",
                                   "medidiff.evaluate", "medidiff.report"])
def test_scoring_never_reaches_the_training_package(start):
    graph = import_graph()
    starts = [m for m in _modules() if m == start or m.startswith(start + ".")]
    assert starts, f"{start}: no such module"
    reached = set().union(*(reachable(graph, s) for s in starts))
    assert not {m for m in reached if room(m) == "medidiff.train"}, sorted(m for m in reached if "train" in m)


def test_one_model_folder_module():
    """Only model/folder.py reads or writes model.json and safetensors headers itself."""
    writers = [p for p in PACKAGE.rglob("*.py")
               if "def sha256_file" in p.read_text() or "def refuse_pickle" in p.read_text()]
    assert [p.relative_to(PACKAGE).as_posix() for p in writers] == ["model/folder.py"]
