"""The batch loop: plan against the journal, process each file, survive interrupts, summarise.

Order of operations matters for safety: the model is resolved before anything is created (a missing
model never leaves a half-started output folder), then the output folder is locked, stale temp
files from a killed run are removed, every file is planned against the journal (done + same
fingerprint -> skipped; changed -> redone; ``running`` from a crash -> retried), and only then is
the model loaded and the loop started. Each state change is committed before the next file starts.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError
from mtcolor_batch.core.fs import clean_stale_temps, sha256_file
from mtcolor_batch.jobs.batch import ExecContext, Executor, Outcome, PlannedFile, StopController
from mtcolor_batch.jobs.executors.local import LocalExecutor, PipelineFactory
from mtcolor_batch.jobs.journal import Journal, Row, journal_path, lock_path
from mtcolor_batch.jobs.lock import OutputLock
from mtcolor_batch.scan.discover import ScanFile, discover


@dataclass
class RunRequest:
    """Everything ``mtcolor-batch run`` was asked to do (profile already has CLI overrides applied)."""

    scans: Path
    profile: Profile
    out: Path | None = None
    model: str | None = None
    shard: tuple[int, int] | None = None
    dry_run: bool = False
    retry_failed: bool = False
    force: bool = False
    argv: list[str] = field(default_factory=list)  # for the "resume with" line


def default_out_dir(scans: Path) -> Path:
    """``<SCANS>-colorized`` beside the scan folder: never inside the originals unless asked."""
    scans = Path(scans).resolve()
    base = scans if scans.is_dir() else scans.parent
    return base.with_name(f"{base.name}-colorized")


def _stat(path: Path) -> tuple[int | None, int | None]:
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def plan_files(
    files: list[ScanFile],
    journal: Journal | None,
    *,
    profile_fp: str,
    model_fp: str | None,
    out_dir: Path,
    force: bool = False,
    retry_failed: bool = False,
) -> list[PlannedFile]:
    """Decide, per file, whether this run does it; hashes are reused when size and mtime match."""
    from mtcolor_batch.hints.schema import find_sidecar
    from mtcolor_batch.stages.pipeline import fingerprint

    planned: list[PlannedFile] = []
    for item in files:
        row: Row | None = journal.get(item.relpath) if journal else None
        size, mtime = _stat(item.path)
        sha: str | None
        if (
            row
            and row.input_sha256
            and size is not None
            and (row.input_size, row.input_mtime) == (size, mtime)
        ):
            sha = row.input_sha256
        else:
            try:
                sha = sha256_file(item.path)
            except OSError:
                sha = None  # unreadable: loading reports why, as a failed row
        try:
            sidecar = find_sidecar(item.path)
            sidecar_sha = sha256_file(sidecar) if sidecar else None
        except (OSError, UserError):
            sidecar, sidecar_sha = None, "unreadable"
        fp = fingerprint(sha or f"unreadable:{size}", sidecar_sha, profile_fp, model_fp or "?")
        if row is None:
            action = "new"
        elif force:
            action = "forced"
        elif model_fp is not None and row.fingerprint != fp:
            action = "changed"
        elif row.state == "done":
            missing = [o for o in row.outputs if not (out_dir / o).is_file()]
            action = "changed" if missing else "done"
        elif row.state == "failed":
            action = "retry-failed" if retry_failed else "failed-before"
        elif row.state == "running":
            action = "retry-crashed"
        else:
            action = "pending"
        planned.append(PlannedFile(item, fp, action, sidecar, sha, size, mtime, row.error if row else None))
    return planned


def print_plan(console: Console, planned: list[PlannedFile], out_dir: Path, model_note: str) -> None:
    """The ``--dry-run`` report: every file, its sidecar, and what a real run would do."""
    console.print(
        f"Dry run: plan for output folder {escape(str(out_dir))} (nothing is written)", highlight=False
    )
    table = Table(show_lines=False)
    table.add_column("file")
    table.add_column("sidecar")
    table.add_column("action")
    for p in planned:
        label = {"done": "skip (done)", "failed-before": "skip (failed before; --retry-failed)"}.get(
            p.action, p.action
        )
        if p.action == "failed-before" and p.previous_error:
            label += f": {p.previous_error}"
        table.add_row(p.item.relpath, p.sidecar.name if p.sidecar else "-", label)
    console.print(table)
    todo = sum(p.todo for p in planned)
    console.print(
        f"{len(planned)} files: {todo} to colorize, {sum(p.action == 'done' for p in planned)} already done, "
        f"{sum(p.action == 'failed-before' for p in planned)} failed before. {model_note}"
    )


def _summary(console: Console, outcomes: list[Outcome], out_dir: Path) -> None:
    counts = {s: sum(o.state == s for o in outcomes) for s in ("done", "skipped", "failed", "pending")}
    console.print(f"Output folder: {escape(str(out_dir))}", highlight=False)
    table = Table(title="Summary")
    table.add_column("state")
    table.add_column("files", justify="right")
    for state, n in counts.items():
        if n or state != "pending":
            table.add_row(state if state != "pending" else "not done (interrupted)", str(n))
    console.print(table)
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        ft = Table(title="Failed files")
        ft.add_column("file")
        ft.add_column("reason", overflow="fold")
        for o in failed:
            ft.add_row(escape(o.relpath), escape(o.reason))
        console.print(ft)


def run_batch(
    req: RunRequest,
    console: Console | None = None,
    pipeline_factory: PipelineFactory | None = None,
    executor: Executor | None = None,
) -> int:
    """Run (or dry-run) a batch: lock, plan, hand the work to an executor, summarise; return the exit code.

    ``executor`` defaults to :class:`~mtcolor_batch.jobs.executors.local.LocalExecutor` (this process,
    loading the pipeline with ``pipeline_factory``). UserErrors propagate to the CLI (exit 2).
    """
    from mtcolor_batch.model.bundle import read_manifest
    from mtcolor_batch.stages.pipeline import model_hash, resolve_model

    console = console or Console(stderr=True)
    scans = Path(req.scans)
    if not scans.exists():
        raise UserError("scan folder not found", path=scans)
    root = scans if scans.is_dir() else scans.parent
    out_dir = Path(req.out).resolve() if req.out else default_out_dir(scans)
    if out_dir == root.resolve():
        raise UserError(
            "--out must not be the scan folder itself", path=out_dir, hint="use a sub- or sibling folder"
        )
    files = discover(scans, exclude=[out_dir], shard=req.shard)
    profile_fp = req.profile.fingerprint()
    jpath = journal_path(out_dir, req.shard)

    if req.dry_run:
        try:
            bundle_dir = resolve_model(req.model)
            model_fp: str | None = model_hash(bundle_dir)
            note = f"Model: {bundle_dir}."
        except UserError as exc:
            model_fp, note = None, f"[yellow]Model: {exc.one_line()}[/yellow]"
        journal = Journal.open_existing(jpath)
        try:
            planned = plan_files(
                files,
                journal,
                profile_fp=profile_fp,
                model_fp=model_fp,
                out_dir=out_dir,
                force=req.force,
                retry_failed=req.retry_failed,
            )
        finally:
            if journal:
                journal.close()
        print_plan(console, planned, out_dir, note)
        return EXIT_OK

    bundle_dir = resolve_model(req.model)  # before anything is created
    model_fp = model_hash(bundle_dir)
    if read_manifest(bundle_dir).tiny:
        console.print(
            "[yellow]Model is a tiny random bundle: a pipeline check, its colours are meaningless.[/yellow]"
        )
    if not files:
        console.print(f"No scans found under {scans} (extensions: jpg jpeg png tif tiff webp bmp).")
        return EXIT_OK
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        OutputLock(lock_path(out_dir, req.shard)),
        Journal(jpath) as journal,
        StopController(console) as stop,
    ):
        removed = clean_stale_temps(out_dir)
        if removed:
            console.print(f"Removed {len(removed)} temp file(s) left by an interrupted run.")
        planned = plan_files(
            files,
            journal,
            profile_fp=profile_fp,
            model_fp=model_fp,
            out_dir=out_dir,
            force=req.force,
            retry_failed=req.retry_failed,
        )
        for p in planned:
            if p.todo:  # new, changed, crashed (`running`), retried or forced: (re)queued as pending
                journal.upsert_pending(
                    p.item.relpath, p.fingerprint, size=p.size, mtime=p.mtime, sha256=p.sha256
                )
        journal.set_meta("profile", req.profile.model_dump_json())
        journal.set_meta("model", str(bundle_dir))
        outcomes: list[Outcome] = []
        for p in planned:
            if p.action == "done":
                outcomes.append(Outcome(p.item.relpath, "skipped", "done earlier with the same fingerprint"))
            elif p.action == "failed-before":
                outcomes.append(Outcome(p.item.relpath, "failed", f"{p.previous_error} (use --retry-failed)"))
        todo = [p for p in planned if p.todo]
        interrupted = False
        if todo:  # same planning and journal whoever does the work (this process or Ray)
            ctx = ExecContext(journal, stop, console, outcomes, req.profile, bundle_dir, root, out_dir)
            interrupted = (executor or LocalExecutor(pipeline_factory))(todo, ctx)
        journal_problems = journal.check()
    _summary(console, outcomes, out_dir)
    if journal_problems:
        console.print(f"[red]journal check: {'; '.join(journal_problems)}[/red]")
    if interrupted:
        left = len(files) - sum(o.state in ("done", "skipped") for o in outcomes)
        cmd = shlex.join(["mtcolor-batch", *req.argv]) if req.argv else "the same `mtcolor-batch run` command"
        console.print(
            f"[yellow]Interrupted: {left} file(s) not done; the journal is consistent. "
            f"Resume with: {cmd}[/yellow]"
        )
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(o.state == "failed" for o in outcomes) else EXIT_OK


def console_for_run() -> Console:
    """Progress and tables on stderr so stdout stays clean for scripts."""
    return Console(stderr=True, highlight=False, soft_wrap=False, file=sys.stderr)
