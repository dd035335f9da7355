"""The small run profile the CLI tests use: every stage of the pipeline runs, in a fraction of a second.

One home for it, so that a test of resuming, of output lines or of eval runs the same settings as
the end-to-end tests. The golden test keeps its own copy on purpose: its pinned hash must not move
when this profile does.
"""

from __future__ import annotations

from pathlib import Path


def fast_profile_yaml(
    name: str | None = "test-fast",
    *,
    steps: int = 2,
    max_megapixels: float | None = None,
    auto_instances: bool | None = None,
) -> str:
    """Profile YAML: ``steps`` DDIM steps at a 32 px working size in one 64 px tile, 64 px perception."""
    lines = [f"name: {name}"] if name else []
    lines += [
        "sampling:",
        f"  steps: {steps}",
        "  working_long_side: 32",
        "  tile_size: 64",
        "  tile_overlap: 0",
        "perception:",
        "  size: 64",
    ]
    if auto_instances is not None:
        lines.append(f"  auto_instances: {str(auto_instances).lower()}")
    if max_megapixels is not None:
        lines += ["scan:", f"  max_megapixels: {max_megapixels}"]
    return "\n".join(lines) + "\n"


def write_fast_profile(path: Path, **settings: object) -> Path:
    """Write :func:`fast_profile_yaml` (same keywords) to ``path`` and return it."""
    path.write_text(fast_profile_yaml(**settings), encoding="utf-8")  # type: ignore[arg-type]
    return path
