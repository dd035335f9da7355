"""The batch's shared vocabulary: planned files, outcomes, the stop controller, an executor's context.

The runner plans; an executor (``jobs.executors.local`` or ``jobs.executors.ray``) processes the
planned files with :func:`mtcolor_batch.stages.pipeline.process_one` and records each result through
:func:`record_result`, so the journal rows and the summary are the same whoever did the work.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import is_out_of_space
from mtcolor_batch.jobs.inflight import in_flight
from mtcolor_batch.jobs.journal import Journal
from mtcolor_batch.scan.discover import ScanFile
from mtcolor_batch.stages.pipeline import (
    FileProcessor,
    Interrupted,
    StageCallback,
    WorkResult,
    process_one,
)


@dataclass
class PlannedFile:
    """One discovered file and what this run will do with it."""

    item: ScanFile
    fingerprint: str
    action: str  # new | changed | retry-crashed | retry-failed | forced | pending | done | failed-before
    sidecar: Path | None
    sha256: str | None
    size: int | None
    mtime: int | None
    previous_error: str | None = None

    @property
    def todo(self) -> bool:
        return self.action not in ("done", "failed-before", "other-scan")


@dataclass
class Outcome:
    relpath: str
    state: str  # done | skipped | failed | pending (not reached / rolled back)
    reason: str = ""
    seconds: float = 0.0
    engine_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # a done file's, as its record says them


@dataclass
class ExecContext:
    """What an executor (``jobs.executors.local`` or ``.ray``) gets: it owns no journal logic of its
    own beyond recording results through ``journal`` (the driver alone writes it)."""

    journal: Journal
    stop: StopController
    console: Console
    outcomes: list[Outcome]
    profile: Profile
    bundle_dir: Path
    scan_root: Path
    out_dir: Path
    halted: str | None = None  # why the run stopped short, no file's fault (the disk is full)


class StopController:
    """First Ctrl-C (or SIGTERM): stop at the next safe point. Second Ctrl-C: stop at once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            if _in_finalizer(frame):
                # Python runs a signal handler wherever the main thread is, and a garbage
                # collector's ``__del__`` swallows what it raises ("Exception ignored in ...",
                # a traceback on screen, the hard stop lost). Ask again once it has returned.
                threading.Timer(0.005, self._ask_again).start()
                return
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third Ctrl-C must not break the cleanup
            raise KeyboardInterrupt
        self.requested = True
        self.console.print(
            "[yellow]Stopping after the current file's write (or rolling it back); "
            "press Ctrl-C again to stop at once.[/yellow]"
        )

    def _ask_again(self) -> None:
        if signal.getsignal(signal.SIGINT) == self._handle:  # still inside the run
            signal.raise_signal(signal.SIGINT)

    def checkpoint(self, stage: str) -> None:
        """Abandon the file at any stage before ``write``; once writing, finish it."""
        if self.requested and stage != "write":
            raise Interrupted

    def __enter__(self) -> StopController:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _in_finalizer(frame: FrameType | None) -> bool:
    """True when the interrupted code runs inside an object's ``__del__``, where an exception is lost."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


Executor = Callable[[list[PlannedFile], ExecContext], bool]
"""Processes the planned files, records each through :func:`record_result`; True when interrupted."""


def record_result(res: WorkResult, ctx: ExecContext) -> Outcome:
    """Write one file's result into the journal and the outcomes; print a failure's reason."""
    rel = res.relpath
    if res.state == "no-space":  # not this file's fault: to do again once there is space
        ctx.journal.mark_pending(rel)
        ctx.halted = ctx.halted or res.error
        outcome = Outcome(rel, "pending", "not done (the disk is full)")
        ctx.outcomes.append(outcome)
        return outcome
    if res.state == "done":
        stats = output_stats(ctx.out_dir, res.outputs, res.output_sha256)
        ctx.journal.mark_done(
            rel, res.outputs, res.timings, fingerprint=res.fingerprint or None, output_stats=stats
        )
        outcome = Outcome(rel, "done", "", res.seconds, res.engine_seconds, list(res.warnings))
    else:
        ctx.journal.mark_failed(rel, res.error, res.timings)
        outcome = Outcome(rel, "failed", res.error, res.seconds)
        ctx.console.print("[red]failed[/red] " + escape(res.error), soft_wrap=True, highlight=False)
    ctx.outcomes.append(outcome)
    return outcome


def run_one(pipeline: FileProcessor, item: ScanFile, stage: StageCallback, out_dir: Path) -> WorkResult:
    """:func:`process_one` with the file's in-flight marker held (``jobs.inflight``): what every
    executor (this process or a Ray worker) runs for one file."""
    try:
        with in_flight(out_dir, item.relpath):
            return process_one(pipeline, item, stage)
    except OSError as exc:  # the marker itself could not be written
        if not is_out_of_space(exc):
            raise
        return WorkResult(item.relpath, "no-space", f"{item.relpath}: {exc.strerror or exc}")


def output_stats(out_dir: Path, outputs: list[str], hashes: dict[str, str]) -> dict[str, list[Any]]:
    """{output: [size, mtime_ns, sha256 or None]} as the outputs are now: what a done row vouches for.

    Size and mtime are the cheap check a later run makes (as for inputs); the hash is for
    ``--verify-outputs``. An output that cannot be stat'ed is left out: the next run redoes the file.
    """
    stats: dict[str, list[Any]] = {}
    for rel in outputs:
        try:
            st = (Path(out_dir) / rel).stat()
        except OSError:
            continue
        stats[rel] = [st.st_size, st.st_mtime_ns, hashes.get(rel)]
    return stats


def stale_output(
    out_dir: Path, outputs: list[str], stats: dict[str, list[Any]], *, rehash: bool
) -> str | None:
    """Why a done file's outputs no longer are what was written (None: they are).

    Missing, or a size or mtime other than recorded (truncated, replaced, edited); with ``rehash``
    also a sha256 other than recorded. Rows written before outputs were recorded have no stats:
    only their presence is checked.
    """
    from mtcolor_batch.core.fs import sha256_file

    for rel in outputs:
        path = Path(out_dir) / rel
        try:
            st = path.stat()
        except OSError:
            return f"output {rel} is missing"
        if not path.is_file():
            return f"output {rel} is not a file"
        want = stats.get(rel)
        if not want:
            continue
        size, mtime, sha = want
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            return f"output {rel} changed since it was written"
        if rehash and sha and sha256_file(path) != sha:
            return f"output {rel} does not match its sha256"
    return None


def file_progress(console: Console) -> Progress:
    """The per-file progress bar of a run, the same whichever executor processes the files."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
