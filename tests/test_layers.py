"""The package's layer order and no import cycles, checked on every ``import`` in its source.

Layers, lowest first (a module may import its own layer and the ones below, never one above):

    core < scan/render/perception < hints/model < output < stages < jobs/editor < evaluate/train
         < testing < cli

``testing`` (tiny random models in the real on-disk layout) builds them with model, perception and
evaluate code and is imported by ``cli`` (``models tiny``) and the tests, so it sits just below cli.
``mtcolor_batch/__init__`` is core; ``__main__`` is above cli.

Counted: every ``import``/``from ... import`` anywhere in a module (bench/import_graph.py's walk),
including those inside functions and under ``if TYPE_CHECKING:``: a deferred or type-only import
upward still ties a lower layer to a higher one, and is where a real one creeps in. Not counted:
``importlib.import_module`` with a computed name (the package has none).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from import_graph import cycles, import_graph  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "mtcolor_batch"
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("scan", "render", "perception"),
    ("hints", "model"),
    ("output",),
    ("stages",),
    ("jobs", "editor"),
    ("evaluate", "train"),
    ("testing",),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT_RANK = {"": 0, "__main__": len(LAYERS)}  # the package's __init__ (core) and ``python -m``


def part_of(module: str) -> str:
    """``mtcolor_batch.model.sampler`` -> ``model``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank_of(module: str) -> int | None:
    part = part_of(module)
    return ROOT_RANK[part] if part in ROOT_RANK else RANK.get(part)


def layer_problems(root: Path) -> list[str]:
    """Every import that climbs a layer, every module outside the table, every cycle (of modules or
    of packages), as one line each."""
    graph = import_graph(root.resolve())
    problems = [f"{m}: its package is in no layer (add it to LAYERS)" for m in graph if rank_of(m) is None]
    parts: dict[str, set[str]] = {}
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = rank_of(module), rank_of(target)
            if low is not None and high is not None and high > low:
                problems.append(f"{module} imports {target}, a higher layer")
            if part_of(module) != part_of(target):
                parts.setdefault(part_of(module), set()).add(part_of(target))
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    package_graph = {p: parts.get(p, set()) for p in {*parts, *(t for ts in parts.values() for t in ts)}}
    problems += [f"package cycle: {' <-> '.join(c)}" for c in cycles(package_graph)]
    return problems


def test_every_import_follows_the_layer_order_without_cycles() -> None:
    assert layer_problems(PACKAGE) == []


def test_the_check_sees_a_deferred_climb_a_type_only_climb_and_a_package_cycle(tmp_path: Path) -> None:
    """The checker itself: an upward import inside a function, one under TYPE_CHECKING, and two
    packages of one layer importing each other are each reported."""
    pkg = tmp_path / "mtcolor_batch"
    for sub in ("core", "model", "hints"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from mtcolor_batch.model.b import g\n")
    (pkg / "core" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mtcolor_batch.hints import d\n"
    )
    (pkg / "model" / "b.py").write_text("from mtcolor_batch.hints.d import x\ng = 1\n")
    (pkg / "hints" / "d.py").write_text("from mtcolor_batch.model import e\nx = 1\n")
    (pkg / "model" / "e.py").write_text("")
    problems = layer_problems(pkg)
    assert "mtcolor_batch.core.a imports mtcolor_batch.model.b, a higher layer" in problems
    assert "mtcolor_batch.core.c imports mtcolor_batch.hints.d, a higher layer" in problems
    assert "package cycle: hints <-> model" in problems
