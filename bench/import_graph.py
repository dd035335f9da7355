"""Import graph of the package: modules, internal import edges and cycles (strongly connected parts).

Run ``python bench/import_graph.py [PACKAGE_DIR]``. Counts every ``import``/``from`` of a package
module at any depth (function-level imports included: they are dependencies too); an import of a
package ``__init__`` counts as an edge to it. A cycle is a strongly connected set of 2+ modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and (target in files):
                    # "from pkg import mod" names the module; "from pkg.mod import x" names pkg.mod
                    graph[name].add(target)
            # a "from a.b import c" where c is a module also counts a.b (its __init__) as imported
    for name in graph:  # drop the implicit parent-package edge when a submodule edge exists
        graph[name] = {t for t in graph[name] if not any(o.startswith(t + ".") for o in graph[name])}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "mtcolor_batch")
    graph = import_graph(root.resolve())
    found = cycles(graph)
    print(f"modules: {len(graph)}")
    print(f"import edges: {sum(len(v) for v in graph.values())}")
    print(f"cycles: {len(found)}")
    for part in found:
        print("  " + " <-> ".join(part))


if __name__ == "__main__":
    main()
