"""Locks on an output folder, so two runs never write the same outputs or journal.

``fcntl.flock`` on ``<out>/.mtcolor/lock``: the kernel drops it when the process dies (even on
kill -9), so a crashed run never leaves a stale lock behind. Local filesystems only, like the
SQLite WAL journal (on NFS, flock may be local to each client: run one host per folder, or one
shard per host). Shards share the folder lock and each hold their own shard lock (:class:`RunLock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.jobs.journal import lock_path


class LockedError(UserError):
    """Another run holds the output folder."""


class OutputLock:
    """Context manager holding ``fcntl.flock(LOCK_EX | LOCK_NB)`` (or ``LOCK_SH``) on a lock file."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only filesystem, no permission, disk full
            raise UserError(
                f"cannot create the lock file: {exc.strerror or exc}",
                path=self.path,
                hint="choose a writable --out",
            ) from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            message = self._who_holds(fd)
            os.close(fd)
            raise LockedError(
                message, path=self.path.parent.parent, hint="wait for it to finish, or use another --out"
            ) from exc
        if not self.shared:  # many hold a shared lock at once: only an exclusive holder names itself
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def _who_holds(self, fd: int) -> str:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        pid = f" (pid {holder})" if holder else ""
        if self.path.name.startswith("lock-shard-"):
            shard = self.path.name[len("lock-shard-") :].replace("-of-", "/")
            return f"shard {shard} is already running on this output folder{pid}"
        if self.shared:
            return (
                f"a plain run (without --shard) is using this output folder{pid}; plain and --shard runs "
                "on one folder exclude each other"
            )
        try:  # shared holders only (shards) let a shared probe through
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"another mtcolor-batch run is using this output folder{pid}"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return (
            "--shard runs are using this output folder; a plain run (or journal merge/rebuild) waits until "
            "they finish"
        )

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


class RunLock:
    """The locks one run holds on its output folder.

    A plain run holds ``.mtcolor/lock`` exclusively. A ``--shard K/N`` run holds it shared plus
    ``.mtcolor/lock-shard-K-of-N`` exclusively: shards of a job array run side by side, each shard
    excludes only itself, and plain runs and shard runs on one folder exclude each other.
    """

    def __init__(self, out_dir: Path, shard: tuple[int, int] | None) -> None:

        self.locks = [OutputLock(lock_path(out_dir, None), shared=shard is not None)]
        if shard is not None:
            self.locks.append(OutputLock(lock_path(out_dir, shard)))

    def __enter__(self) -> RunLock:
        taken: list[OutputLock] = []
        try:
            for lock in self.locks:
                lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()
