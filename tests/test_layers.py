"""The import graph runs one way: each folder imports only folders of lower layers (docs/design.md, the map), and no
module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bearrec"
# bottom to top; a folder (or top-level module) may import its own layer's members only if it is the same one
LAYERS = [
    {"checks", "distributed"},
    {"yamlfiles", "io"},
    {"data", "lm"},
    {"items"},
    {"decoding"},
    {"objectives", "evaluation"},
    {"baselines"},
    {"config"},
    {"training"},
    {"runs"},
    {"serving"},
    {"experiments"},
    {"cli"},
    {"api"},
    {"bearrec"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bearrec"


def _imports(path: Path) -> set[str]:
    """bearrec modules imported by ``path`` at run time (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "bearrec":  # from bearrec import distributed
            found.update(f"bearrec.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bearrec"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bearrec"))
    return found


GRAPH = {_module(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_every_folder_has_a_layer():
    assert {_group(m) for m in GRAPH} <= set(RANK), {_group(m) for m in GRAPH} - set(RANK)


def test_imports_point_down():
    upward = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets
                    if _group(target) != _group(module) and RANK[_group(target)] >= RANK[_group(module)])
    assert not upward, upward


def test_no_import_cycles():
    known = set(GRAPH)

    def resolve(target: str) -> str | None:  # `from bearrec.x import y` where y is a submodule counts as bearrec.x
        return target if target in known else None

    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(filter(None, map(resolve, GRAPH[module]))):
            if target == module or target == "bearrec":
                continue
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
