"""Which files were being worked on when the process died: one empty marker file per file in flight.

Why markers and not the journal alone: the Ray driver marks every dispatched file ``running`` before
the workers start (one transaction), so after the driver is killed the journal cannot tell the file
a worker was colorizing from the hundreds still queued. Only a file whose marker is left (created
when its work starts, removed when it ends, whatever the outcome) counts a crash toward
``jobs.crash_retries``. Markers live in ``<out>/.mtcolor/inflight/``, named by a hash of the file's
relative path, so shards writing into one output folder never touch each other's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mtcolor_batch.core.errors import path_text


def marker(out_dir: Path, relpath: str) -> Path:
    name = hashlib.sha256(path_text(relpath).encode("utf-8")).hexdigest()[:32]
    return Path(out_dir) / ".mtcolor" / "inflight" / name


@contextmanager
def in_flight(out_dir: Path, relpath: str) -> Iterator[None]:
    """Hold ``relpath``'s marker while its work runs (a kill -9 leaves it behind, nothing else does)."""
    path = marker(out_dir, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def was_in_flight(out_dir: Path, relpath: str) -> bool:
    return marker(out_dir, relpath).exists()


def clear(out_dir: Path, relpaths: Iterable[str]) -> None:
    """Forget the markers of these files once a new run has counted them."""
    for rel in relpaths:
        marker(out_dir, rel).unlink(missing_ok=True)
