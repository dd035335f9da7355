"""The dataset's seeded train/test split (default 80/20, like the paper's 12k/3k).

Why a rank by hash instead of a shuffle of the build order: the split is then a pure function of
(the set of entry ids, seed, fraction), so a resumed build, a rebuild and a build in another order
all give the same split, and it never depends on which photos happened to finish first. The test
share is exact (``round(n * fraction)``, keeping at least one training entry).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import atomic_write_bytes

SPLIT = "split.json"


def _rank(seed: int, ident: str) -> str:
    return hashlib.sha256(f"{seed}:{ident}".encode()).hexdigest()


def assign(ids: Iterable[str], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}``, each sorted; the ``round(n * fraction)`` lowest ranks test."""
    unique = sorted(set(ids))
    n_test = min(round(len(unique) * test_fraction), max(0, len(unique) - 1))
    ranked = sorted(unique, key=lambda i: _rank(seed, i))
    test = set(ranked[:n_test])
    return {"train": [i for i in unique if i not in test], "test": sorted(test)}


def write_split(folder: Path, ids: Iterable[str], test_fraction: float, seed: int) -> dict[str, Any]:
    """Write ``split.json`` for these entries (atomically) and return what was written."""
    parts = assign(ids, test_fraction, seed)
    doc = {"seed": seed, "test_fraction": test_fraction, **parts}
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")
    atomic_write_bytes(Path(folder) / SPLIT, data)
    return doc


def read_split(folder: Path) -> dict[str, list[str]] | None:
    """The dataset's split, or None for a dataset built before splits existed (all entries train)."""
    path = Path(folder) / SPLIT
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {"train": list(doc["train"]), "test": list(doc["test"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"unreadable split file: {exc}", path=path, hint="rerun `dataset build`") from exc
