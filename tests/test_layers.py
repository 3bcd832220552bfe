"""The house's order: every import (function-local ones included) runs down the layers, and no
modules import each other in a circle. A failure names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import policylens

PACKAGE = Path(policylens.__file__).parent
LAYERS = [
    ["errors", "artifacts", "lazy"],
    ["envs"],
    ["agents"],
    ["rollout", "runs"],
    ["train", "sweeps"],
    ["lenses"],
    ["studies"],
    ["report"],
    ["cli", "commands", "demo", "explorer", "__main__"],
]
"""Bottom first, as in docs/architecture.md; a module may import its own layer and those below."""


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
    return found


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
