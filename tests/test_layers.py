"""The house's import rules, read from the source (every import counts: module level, inside functions and under
``TYPE_CHECKING``): no cycle among the project's modules, and the detector's layers import downward only.

Layers of ``detector``, lowest first (docs/ARCHITECTURE.md): the base (``errors`` and ``method.choices``, the
method's vocabulary, torch-free), the settings (``config``, ``recipes``), ``method`` (the paper), ``eval``,
``store``, ``run``, ``deploy``, and on top the CLI and the package's public face. ``fsad_data`` is below both
halves; ``detector`` and ``mfsc_builder`` never import each other (the dataset schema is their contract).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "mfsc_builder", "fsad_data")
DETECTOR_LAYERS = ("base", "settings", "method", "eval", "store", "run", "deploy", "integrations", "top")
BASE = {"detector.errors", "detector.method.choices"}
SETTINGS = {"detector.config", "detector.recipes"}
TOP = {"detector", "detector.cli"}  # the public face: `from detector import Detector` and the commands


def module_files() -> dict[str, Path]:
    """Every module of the three packages by dotted name (a package by its own name)."""
    mods = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = module_files()


def imported_modules(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from pkg import mod`` counts as ``pkg.mod``)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a name inside a module: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def detector_layer(name: str) -> int:
    if name in BASE:
        return DETECTOR_LAYERS.index("base")
    if name in SETTINGS:
        return DETECTOR_LAYERS.index("settings")
    if name in TOP:
        return DETECTOR_LAYERS.index("top")
    sub = name.split(".")[1]
    assert sub in DETECTOR_LAYERS, f"{name} is in no layer: put it in one of {DETECTOR_LAYERS[2:-1]} or the settings"
    return DETECTOR_LAYERS.index(sub)


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_cycle_finder_finds_a_cycle():
    """The finder itself: a three-module loop and a two-module loop beside a chain."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "f"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("detector")))
def test_detector_imports_point_down(name):
    """A module imports only its own layer or those below it (the method imports no eval/store/run/deploy)."""
    up = sorted(t for t in GRAPH[name] if t.startswith("detector") and detector_layer(t) > detector_layer(name))
    assert up == [], f"{name} (layer {DETECTOR_LAYERS[detector_layer(name)]}) imports a layer above it: {up}"


def test_halves_apart():
    """fsad_data imports neither half; the detector and the builder never import each other."""
    for name, targets in GRAPH.items():
        top = name.split(".")[0]
        others = {t.split(".")[0] for t in targets} - {top}
        allowed = set() if top == "fsad_data" else {"fsad_data"}
        assert others <= allowed, f"{name} imports {sorted(others - allowed)}"


def test_layer_check_catches_an_upward_import():
    assert detector_layer("detector.method.fit") < detector_layer("detector.run.outputs")
    assert detector_layer("detector.config") < detector_layer("detector.method.model")
    assert detector_layer("detector.method.choices") < detector_layer("detector.config")
