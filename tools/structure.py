"""The structure cnnbench promises (docs/architecture.md), checked over the ast of cnnbench/:
no import cycle, no torch in the modules the command line needs, models that import only
torch. It also prints the length of train() and of the longest functions: a figure to read,
not a limit (a function is split where a name explains a part, never packed to fit). Prints a
short report; exits 1 when a promise is broken.

    python tools/structure.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cnnbench"
LONG = 60  # lines: the functions past this are listed, to read again
# the command line and what it needs before training starts; the report reads files only
TORCH_FREE = {
    "cnnbench.cli",
    "cnnbench.hooks",
    "cnnbench.ending",
    "cnnbench.config",
    "cnnbench.schema",
    "cnnbench.rundir",
    "cnnbench.runs",
    "cnnbench.errors",
    "cnnbench.atomic",
    "cnnbench.datasets",
    "cnnbench.report",
    "cnnbench.toolargs",
    "cnnbench.images",
    "cnnbench.stats",
    "cnnbench.recipes",
    "cnnbench.cores",
    "cnnbench.startup",
    "cnnbench.records",
}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported when this one is (imports inside functions are lazy)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                found.append([*path[path.index(dep) :], dep])
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(node)

    for node in graph:
        visit(node, [node])
    return found


def check() -> list[str]:
    trees = modules()
    problems, lengths = [], {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    print(f"train(): {lengths['cnnbench.train.train']} lines")
    long = {f: n for f, n in sorted(lengths.items(), key=lambda item: -item[1]) if n > LONG}
    print(f"functions over {LONG} lines: {long or 'none'}")
    imports = {name: top_level_imports(tree) for name, tree in trees.items()}
    graph = {m: {d for d in deps if d in trees and d != m} for m, deps in imports.items()}
    found = cycles(graph)
    print(f"import cycles: {found or 'none'} ({len(trees)} modules)")
    problems += [" -> ".join(c) for c in found]

    # torch reached through any chain of top-level imports
    def reaches_torch(module: str, seen: set[str]) -> bool:
        if any(d == "torch" or d.startswith("torch.") for d in imports[module]):
            return True
        return any(reaches_torch(d, seen | {d}) for d in graph[module] - seen)

    heavy = sorted(m for m in TORCH_FREE if reaches_torch(m, {m}))
    print(f"modules that must not import torch but do: {heavy or 'none'}")
    problems += [f"{m} imports torch" for m in heavy]
    models = [m for m in trees if m.startswith("cnnbench.models")]
    leaks = sorted(
        m
        for m in models
        if any(d.startswith("cnnbench") and not d.startswith("cnnbench.models") for d in imports[m])
    )
    print(f"models importing the rest of cnnbench: {leaks or 'none'}")
    problems += [f"{m} imports cnnbench" for m in leaks]
    return problems


if __name__ == "__main__":
    broken = check()
    for p in broken:
        print(f"broken: {p}")
    sys.exit(1 if broken else 0)
