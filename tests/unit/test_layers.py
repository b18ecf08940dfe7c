"""Imports point one way: app → workers → tasks → core → storage → errors, and never in a circle.

Function-level imports count too: hiding a back-edge inside a function still couples the
layers (and still makes a cycle at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Higher imports lower, never the reverse. bench/ is an entry point like app/.
RANK = {"bench": 5, "app": 5, "workers": 4, "tasks": 3, "core": 2, "storage": 1, "errors": 0}


def modules() -> dict[str, Path]:
    out = {}
    for top in RANK:
        if (ROOT / f"{top}.py").exists():
            out[top] = ROOT / f"{top}.py"
        for f in (ROOT / top).rglob("*.py") if (ROOT / top).is_dir() else []:
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from core import live` imports the module core.live
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_import_points_down_the_layers():
    wrong = [
        f"{m} imports {dep}"
        for m, deps in graph().items()
        for dep in deps
        if RANK[dep.split(".")[0]] > RANK[m.split(".")[0]]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if d.count(".") == 0 and m.startswith(d + "."):
                continue  # a module importing its own package's __init__
            if state.get(d) == 1:
                cycles.append(" → ".join([*path[path.index(d) :], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
