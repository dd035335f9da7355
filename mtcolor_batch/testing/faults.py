"""Fault injection for the executor tests: lose a worker in the middle of a file, once.

Executors accept a ``fault`` hook called at every stage of every file as
``fault(stage, files_started, worker)``; production runs pass none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CrashOnce:
    """The first worker to reach its ``nth`` file while ``flag`` does not exist creates it and dies.

    It dies with ``os._exit`` during ``colorize`` (mid-file, nothing written yet), exactly as a lost
    node would; the flag file (holding the worker's name) makes it happen once per run.
    """

    flag: str
    nth: int

    def __call__(self, stage: str, files_started: int, worker: str) -> None:
        if stage != "colorize" or files_started < self.nth:
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, worker.encode())
        os.close(fd)
        os._exit(1)
