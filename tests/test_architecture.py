"""The house rules of DESIGN.md, checked on the source: lower layers never import higher
ones, technique packages do not import each other, and there is no cycle between
packages."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import edgetrain

ROOT = Path(edgetrain.__file__).parent

# Rank of each package: a module may import only packages of a lower rank (and its own).
# Root modules (errors, registry, configs, plugins, ...) and the shipped recipes are the
# foundation; the package's own __init__/__main__ and the CLI are the roof.
LAYERS: dict[str, int] = {
    "recipes": 0,
    "cost": 1,
    "data": 1,
    "models": 1,
    "engine": 2,
    "finetune": 3,
    "prune": 3,
    "diagnostics": 3,
    "analysis": 3,
    "runs": 4,
    "compress": 5,
    "search": 6,
    "report": 7,
    "cli": 8,
}
ROOF = {"__init__", "__main__"}


def _unit(path: Path) -> str:
    """The package a file belongs to, or the root module's name."""
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _rank(unit: str) -> int:
    if unit in LAYERS:
        return LAYERS[unit]
    return 99 if unit in ROOF else -1  # root modules sit below every package


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported unit)`` for every absolute import of edgetrain in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "edgetrain" and len(parts) > 1:
                target = parts[1]
                if (ROOT / target).is_dir() or (ROOT / f"{target}.py").is_file():
                    found.append((node.lineno, target))
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for line, target in _imports(path):
            if target == unit or _rank(target) == _rank(unit) == -1:
                continue  # root modules may use one another (the cycle test still applies)
            if _rank(target) >= _rank(unit) or target in ROOF:
                where = path.relative_to(ROOT.parent)
                bad.append(f"{where}:{line} ({unit}) imports {target}")
    return sorted(set(bad))


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), "add the new package to LAYERS with its rank"


def test_no_upward_or_sideways_import_between_packages() -> None:
    assert _violations() == []


def test_the_engine_imports_nothing_above_the_cost_model() -> None:
    imported = {t for p in (ROOT / "engine").rglob("*.py") for _, t in _imports(p)}
    assert imported & set(LAYERS) <= {"engine", "cost"}


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        graph.setdefault(unit, set()).update(t for _, t in _imports(path) if t != unit)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_check_finds_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule itself can fail: a copy of the tree with one upward import is caught."""
    fake = tmp_path / "edgetrain"
    for sub in ("engine", "runs"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "engine" / "bad.py").write_text("from edgetrain.runs import build_model\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert _violations() == ["edgetrain/engine/bad.py:1 (engine) imports runs"]
