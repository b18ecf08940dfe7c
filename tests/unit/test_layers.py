"""Imports point one way: app → workers → tasks → core → storage → errors, and never in a circle.

Inside core/ the rooms rank too: stages and create (what tasks call) → export, report, control
→ teacher, student → job → targets → maths, runtime, faults. A room imports only rooms below
it (or itself): two rooms of one rank stay strangers.

Function-level imports count too: hiding a back-edge inside a function still couples the
layers (and still makes a cycle at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Higher imports lower, never the reverse. bench/ is an entry point like app/.
RANK = {"bench": 5, "app": 5, "workers": 4, "tasks": 3, "core": 2, "storage": 1, "errors": 0}
# The distillq package's own modules: leaves (errors, typed), but for the doors.
# The package's root is the API's door (`from distillq import Client`): it ranks with app/.
RANK |= {"distillq": 5, "typed": 0, "__main__": 5}
CORE_RANK = {
    "stages": 6,
    "create": 6,
    "onpolicy": 5,
    "export": 4,
    "report": 4,
    "control": 4,
    "teacher": 3,
    "student": 3,
    "job": 2,
    "targets": 1,
    "align": 1,
    "maths": 0,
    "runtime": 0,
    "track": 0,
    "faults": 0,
}
# Folders mapped into the distillq namespace (setup.py); bench/ runs from the repository.
PACKAGE = {"app", "workers", "tasks", "core", "storage"}


def name_of(f: Path) -> str:
    parts = f.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "distillq":
        parts = parts[1:]
    name = ".".join(parts).removesuffix(".__init__")
    if f.parent == ROOT / "distillq":
        return "distillq" if name == "__init__" else f"distillq.{name}"
    return f"distillq.{name}" if parts[0] in PACKAGE else name


def modules() -> dict[str, Path]:
    out = {name_of(f): f for f in (ROOT / "distillq").glob("*.py")}
    for top in RANK:
        for f in (ROOT / top).rglob("*.py") if (ROOT / top).is_dir() else []:
            out[name_of(f)] = f
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from distillq.core.runtime import live` imports the module ...runtime.live;
            # `from distillq.core.runtime.live import progress`, the module itself.
            full = [f"{node.module}.{a.name}" for a in node.names]
            names = [f if f in known else node.module for f in full]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def layer(m: str) -> str:
    return m.removeprefix("distillq.").split(".")[0]


def room(m: str) -> str | None:
    parts = m.split(".")
    return parts[2] if parts[:2] == ["distillq", "core"] and len(parts) > 2 else None


def test_every_import_points_down_the_layers():
    wrong = [
        f"{m} imports {dep}"
        for m, deps in graph().items()
        for dep in deps
        if RANK[layer(dep)] > RANK[layer(m)]
    ]
    assert not wrong, "\n".join(wrong)


def test_every_room_of_core_imports_only_rooms_below_it():
    assert {p.stem for p in (ROOT / "core").iterdir() if p.name != "__init__.py"} <= set(
        CORE_RANK
    ) | {"__pycache__"}, "a new room or module at core/'s top needs a rank here"
    wrong = [
        f"{m} imports {dep}"
        for m, deps in graph().items()
        if (a := room(m))
        for dep in deps
        if (b := room(dep)) and a != b and CORE_RANK[b] >= CORE_RANK[a]
    ]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_old_top_level_names():
    """Everything is under distillq: a stray `import core.x` would load a second copy."""
    old = {"app", "workers", "tasks", "core", "storage", "errors"}
    wrong = []
    for f in [*ROOT.glob("*/**/*.py"), *ROOT.glob("*.py")]:
        if ".venv" in f.parts or "build" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            wrong += [f"{f.relative_to(ROOT)}: {m}" for m in mods if m.split(".")[0] in old]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if m.startswith(d + "."):
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
