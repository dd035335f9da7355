"""Run the planned files here, one after another: the default executor.

Each file goes through :func:`mtcolor_batch.stages.pipeline.process_one`, the same unit of work the
Ray workers run, and is recorded with :func:`mtcolor_batch.jobs.batch.record_result`. What is local
is only the interrupt handling: a first Ctrl-C rolls the current file back at its next stage
boundary (or lets its write finish); a second one stops at once and removes any half-written temp.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import Progress

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.fs import remove_live_temps
from mtcolor_batch.jobs.batch import (
    ExecContext,
    Outcome,
    PlannedFile,
    file_progress,
    record_result,
    run_one,
)
from mtcolor_batch.stages.pipeline import FileProcessor, Interrupted, Pipeline

PipelineFactory = Callable[[Profile, Path, Path, Path], FileProcessor]
"""(profile, bundle folder, scan root, output folder) -> a loaded pipeline (``Pipeline.load``)."""


class LocalExecutor:
    """Load the pipeline once in this process, then process the files in order."""

    def __init__(self, pipeline_factory: PipelineFactory | None = None) -> None:
        self.pipeline_factory = pipeline_factory or Pipeline.load

    def __call__(self, todo: list[PlannedFile], ctx: ExecContext) -> bool:
        """Return True when stopped by an interrupt."""
        ctx.console.print(f"Loading model {escape(str(ctx.bundle_dir))} ...", highlight=False)
        try:
            pipeline = self.pipeline_factory(ctx.profile, ctx.bundle_dir, ctx.scan_root, ctx.out_dir)
        except KeyboardInterrupt:  # second Ctrl-C while loading: nothing was started
            ctx.stop.requested = True
            ctx.outcomes.extend(Outcome(p.item.relpath, "pending", "not started (interrupted)") for p in todo)
            return True
        return _loop(todo, pipeline, ctx)


def _loop(todo: list[PlannedFile], pipeline: FileProcessor, ctx: ExecContext) -> bool:
    """Process files in order; return True when stopped by an interrupt."""
    journal, stop, outcomes = ctx.journal, ctx.stop, ctx.outcomes
    current: str | None = None
    with file_progress(ctx.console) as progress:
        task = progress.add_task("starting", total=len(todo))
        try:
            for p in todo:
                rel = p.item.relpath
                if stop.requested or ctx.halted:
                    why = "the disk is full" if ctx.halted else "interrupted"
                    outcomes.append(Outcome(rel, "pending", f"not started ({why})"))
                    continue
                current = rel
                journal.mark_running(rel)
                outcome = _process(p, pipeline, ctx, progress, task)
                current = None
                if outcome.state != "pending":  # a rolled-back file is not progress
                    progress.advance(task)
        except KeyboardInterrupt:  # second Ctrl-C: stop at once, leave nothing half-written
            remove_live_temps()
            stop.requested = True
            if current is not None:
                row = journal.get(current)
                if row is not None and row.state == "running":
                    journal.mark_pending(current)
                outcomes.append(Outcome(current, "pending", "stopped at once (second Ctrl-C)"))
            seen = {o.relpath for o in outcomes}
            outcomes.extend(
                Outcome(p.item.relpath, "pending", "not started (interrupted)")
                for p in todo
                if p.item.relpath not in seen
            )
        progress.update(task, description="finished" if not stop.requested else "interrupted")
    return stop.requested


def _process(
    p: PlannedFile, pipeline: FileProcessor, ctx: ExecContext, progress: Progress, task: Any
) -> Outcome:
    """One file; its journal row ends done, failed, or pending (rolled back)."""
    rel = p.item.relpath

    def on_stage(name: str) -> None:
        progress.update(task, description=f"{escape(rel)} [dim]{name}[/dim]")
        ctx.stop.checkpoint(name)

    try:
        result = run_one(pipeline, p.item, on_stage, ctx.out_dir)
    except Interrupted:
        ctx.journal.mark_pending(rel)
        outcome = Outcome(rel, "pending", "rolled back (interrupted)")
        ctx.outcomes.append(outcome)
        return outcome
    return record_result(result, ctx)
