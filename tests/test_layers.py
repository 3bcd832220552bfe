"""The house's order: every import (function-local and ``importlib`` ones included) runs down the
layers, no modules import each other in a circle, world ids live only in ``envs/`` and
``worlds/``, and docs/architecture.md's layer table says what this file enforces. A failure names
the file and line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import policylens

PACKAGE = Path(policylens.__file__).parent
ARCHITECTURE = PACKAGE.parent.parent / "docs" / "architecture.md"
LAYERS = [
    ["errors", "artifacts", "lazy"],
    ["envs"],
    ["agents"],
    ["rollout", "runs"],
    ["train", "sweeps"],
    ["lenses"],
    ["worlds"],
    ["studies"],
    ["report"],
    ["cli", "commands", "demo", "explorer", "__main__"],
]
"""Bottom first, as in docs/architecture.md; a module may import its own layer and those below."""
WORLD_IDS = re.compile(r"Maze-v0|Hazards-v0|RookEndgame|LunarLander|procgen-|MiniGrid-")
"""What names a world: its id (or the env's own name), which only envs/ and worlds/ may write."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every policylens import in ``path``, resolved to a module name."""
    return parse_imports(path.read_text(), module_name(path), path.name == "__init__.py")


def parse_imports(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """:func:`imports` of the source of ``module`` (``is_package``: it is an ``__init__``)."""
    me = module.split(".")
    package = me if is_package else me[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join(base + [node.module])] if node.module else [
                    ".".join(base + [a.name]) for a in node.names
                ]  # fmt: skip
            elif node.module == "policylens":
                names = [a.name for a in node.names]
            elif node.module and node.module.startswith("policylens."):
                names = [node.module.removeprefix("policylens.")]
            else:
                continue
            found += [(n, node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            found += [
                (a.name.removeprefix("policylens."), node.lineno)
                for a in node.names
                if a.name.startswith("policylens.")
            ]
        elif (name := imported_by_name(node)) is not None:
            found.append((name, node.lineno))
    return found


def imported_by_name(node: ast.AST) -> str | None:
    """The policylens module an ``importlib.import_module(...)`` call names, when its argument is
    text or an f-string starting with a module path (``f"policylens.commands.{name}"`` counts as
    the ``commands`` package); None for any other node."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
        == "import_module"
        and node.args
    ):
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        text = arg.value
    elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        text = str(arg.values[0].value).rstrip(".")
    else:
        return None
    return text.removeprefix("policylens.") if text.startswith("policylens.") else None


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if module_name(p)}


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_imports_run_only_downward():
    upward = []
    for name, path in modules().items():
        mine = layer_of(name)
        for target, line in imports(path):
            theirs = layer_of(target)
            if theirs is not None and mine is not None and theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def test_no_modules_import_each_other_in_a_circle():
    known = modules()

    def resolve(target: str) -> str | None:
        while target and target not in known:  # `from policylens.x import name`: name is no module
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {t for t, _ in imports(p) if resolve(t) not in (None, m)} for m, p in known.items()}
    graph = {m: {resolve(t) for t in ts} for m, ts in graph.items()}
    # A package's __init__ re-exporting its own modules is no circle: drop parent -> child edges.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state[t] == 1:
                cycles.append(" -> ".join(path[path.index(t) :] + [m, t]))
            elif state[t] == 0:
                visit(t, path + [m])
        state[m] = 2

    for m in graph:
        if state[m] == 0:
            visit(m, [])
    assert cycles == []


def test_the_checker_sees_function_local_and_relative_imports():
    source = "def f():\n    from policylens.report.html import Report\n    from ..runs import Run\n"
    assert parse_imports(source, "lenses.probes", False) == [("report.html", 2), ("runs", 3)]
    assert parse_imports("from . import engine\n", "rollout", True) == [("rollout.engine", 1)]


def test_the_checker_follows_importlib():
    source = (
        "import importlib\n"
        "def f(name):\n"
        "    importlib.import_module(f'policylens.commands.{name}')\n"
        "    importlib.import_module('policylens.report.html')\n"
    )
    assert parse_imports(source, "cli", False) == [("commands", 3), ("report.html", 4)]


def test_world_ids_live_only_in_envs_and_worlds():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for name, path in modules().items()
        if name.split(".")[0] not in ("envs", "worlds")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if WORLD_IDS.search(line)
    ]
    assert found == []


def layer_table() -> dict[str, int]:
    """docs/architecture.md's layer table: each module named in a row -> its layer number."""
    rows: dict[str, int] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for module in re.findall(r"`([\w./]+)`", cells[1]):
                rows[module.strip("/").removesuffix(".py").replace("/", ".")] = int(cells[0])
    return rows


def test_the_architecture_page_has_the_enforced_layers():
    table = layer_table()
    assert table, "docs/architecture.md has no layer table"
    wrong = {m: n for m, n in table.items() if layer_of(m) is None or layer_of(m) + 1 != n}
    assert wrong == {}, "rows whose layer differs from LAYERS (1-based)"
    tops = {m.split(".")[0] for m in modules()} - {"__main__"}
    assert sorted(tops - {m.split(".")[0] for m in table}) == [], "top-level modules with no row"


def test_reports_take_results_and_run_no_study():
    """A report imports from a study only its result types and constants, never a function."""
    import importlib

    ran = []
    for name, path in modules().items():
        if name.split(".")[0] != "report":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "policylens.studies"
            ):
                study = importlib.import_module(node.module)
                for alias in node.names:
                    value = getattr(study, alias.name)
                    if not (isinstance(value, type) or alias.name.isupper()):
                        ran.append(f"{name}:{node.lineno} imports {node.module}.{alias.name}")
    assert ran == []


def test_no_command_imports_another_command():
    found = [
        f"{name} imports {target}"
        for name, path in modules().items()
        if name.startswith("commands.")
        for target, _ in imports(path)
        if target.startswith("commands.") and target != "commands.framework"
    ]
    assert found == []
