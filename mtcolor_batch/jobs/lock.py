"""Exclusive lock on an output folder, so two runs never write the same outputs or journal.

``fcntl.flock`` on ``<out>/.mtcolor/lock``: the kernel drops it when the process dies (even on
kill -9), so a crashed run never leaves a stale lock behind. Local filesystems only, like the
SQLite WAL journal; shards on a cluster each take their own lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mtcolor_batch.core.errors import UserError


class LockedError(UserError):
    """Another run holds the output folder."""


class OutputLock:
    """Context manager holding ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a lock file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise LockedError(
                "another mtcolor-batch run is using this output folder"
                + (f" (pid {holder})" if holder else ""),
                path=self.path.parent.parent,
                hint="wait for it to finish, or use another --out",
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
