"""The batch loop: plan against the journal, process each file, survive interrupts, summarise.

Order of operations matters for safety: the model is resolved before anything is created (a missing
model never leaves a half-started output folder), then the output folder is locked, stale temp
files from a killed run are removed, every file is planned against the journal (done + same
fingerprint -> skipped; changed -> redone; ``running`` from a crash -> retried), and only then is
the model loaded and the loop started. Each state change is committed before the next file starts.
"""

from __future__ import annotations

import shlex
import shutil
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError, is_out_of_space
from mtcolor_batch.core.fs import clean_stale_temps, sha256_file
from mtcolor_batch.core.regular import not_regular_reason
from mtcolor_batch.hints.mask_files import mask_digests
from mtcolor_batch.jobs.batch import (
    ExecContext,
    Executor,
    Outcome,
    PlannedFile,
    StopController,
    output_stats,
    stale_output,
)
from mtcolor_batch.jobs.executors.local import LocalExecutor, PipelineFactory
from mtcolor_batch.jobs.inflight import clear as clear_in_flight
from mtcolor_batch.jobs.inflight import was_in_flight
from mtcolor_batch.jobs.journal import Journal, Row, journal_path
from mtcolor_batch.jobs.lock import RunLock
from mtcolor_batch.jobs.owner import JournalOwner, check_scan_root, folder_key, settings_fingerprint
from mtcolor_batch.jobs.preflight import (
    check_journal,
    check_out_folder,
    check_profile_packages,
    check_seed,
    make_out_folder,
)
from mtcolor_batch.model.bundle import read_manifest
from mtcolor_batch.model.registry import find_bundle
from mtcolor_batch.output.writer import output_path
from mtcolor_batch.scan.discover import ScanFile, discover_report
from mtcolor_batch.scan.folder_files import folder_file_digests
from mtcolor_batch.scan.imageio import looks_like_image
from mtcolor_batch.scan.sidecars import find_sidecar, sidecar_mask_paths
from mtcolor_batch.stages.pipeline import fingerprint, model_hash


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
    verify_inputs: bool = False  # rehash every input instead of trusting size + mtime
    verify_outputs: bool = False  # rehash every done output instead of trusting size + mtime
    allow_other_scans: bool = False  # add another scan folder's files to an output folder
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
    verify_inputs: bool = False,
    scan_root: Path | None = None,
    max_sidecar_bytes: int = 256 * 1024,
    verify_outputs: bool = False,
) -> list[PlannedFile]:
    """Decide, per file, whether this run does it.

    Fast path: a journal row's input hash is reused when size and mtime (ns) match, so an unchanged
    archive is re-planned without reading it; ``verify_inputs`` always rehashes (a same-size edit
    with its mtime restored is then caught). Sidecars and the mask files they name (inside
    ``scan_root``) are small and always hashed, so a repainted mask redoes its file. FIFOs, devices
    and non-images are never hashed: loading fails them with their reason. A done file is done
    only while its outputs keep the size and mtime they were written with (``verify_outputs``:
    and their sha256); a row another scan folder wrote is never taken over (``other-scan``).
    """

    here = folder_key(scan_root) if scan_root is not None else None
    planned: list[PlannedFile] = []
    rules_seen: dict[Path, str] = {}  # each mtcolor-folder.yaml hashed once per planning pass
    for item in files:
        row: Row | None = journal.get(item.relpath) if journal else None
        if row is not None and here is not None and row.scan_root not in (None, here):
            reason = (
                f"{item.relpath}: the output folder holds a file of this name from {row.scan_root}; "
                "not replaced (rename one, or give this archive its own --out)"
            )
            planned.append(PlannedFile(item, row.fingerprint, "other-scan", None, None, None, None, reason))
            continue
        size, mtime = _stat(item.path)
        sha: str | None
        if (
            not verify_inputs
            and row
            and row.input_sha256
            and size is not None
            and (row.input_size, row.input_mtime) == (size, mtime)
        ):
            sha = row.input_sha256
        elif not looks_like_image(item.path):
            sha = None  # not a regular file or not an image: loading says which, as a failed row
        else:
            try:
                sha = sha256_file(item.path)
            except OSError:
                sha = None  # unreadable: loading reports why, as a failed row
        masks: dict[str, str] = {}
        try:
            sidecar = find_sidecar(item.path)
            if sidecar is not None and not_regular_reason(sidecar) is not None:
                sidecar_sha: str | None = "unreadable"  # never opened; the hints stage says why
            else:
                sidecar_sha = sha256_file(sidecar) if sidecar else None
                if sidecar is not None:
                    root = scan_root if scan_root is not None else item.path.parent
                    masks = mask_digests(sidecar_mask_paths(sidecar, max_sidecar_bytes), sidecar, root)
        except (OSError, UserError):
            sidecar, sidecar_sha = None, "unreadable"
        # The folder rules files above the scan: editing one redoes exactly the scans it covers.
        rules = folder_file_digests(item.path, scan_root or item.path.parent, rules_seen)
        fp = fingerprint(sha or f"unreadable:{size}", sidecar_sha, profile_fp, model_fp or "?", masks, rules)
        if row is None:
            action = "new"
        elif force:
            action = "forced"
        elif model_fp is not None and row.fingerprint != fp:
            action = "changed"
        elif row.state == "done":
            stale = stale_output(out_dir, row.outputs, row.output_stats, rehash=verify_outputs)
            action = "changed" if stale else "done"
        elif row.state == "failed":
            action = "retry-failed" if retry_failed else "failed-before"
        elif row.state == "running":
            action = "retry-crashed"
        else:
            action = "pending"
        planned.append(PlannedFile(item, fp, action, sidecar, sha, size, mtime, row.error if row else None))
    return planned


def _checked_journal(
    jpath: Path, files: list[ScanFile], out_dir: Path, suffix: str, req: RunRequest
) -> Journal:
    """Open the run's journal once the folder is locked, refusing a lost, empty or damaged one
    while outputs exist (:func:`mtcolor_batch.jobs.preflight.check_journal`)."""
    check_journal(jpath, files, out_dir, suffix, shard=req.shard, force=req.force)
    return Journal(jpath)


def out_of_space_error(out_dir: Path, journal: Journal, left: list[PlannedFile]) -> UserError:
    """The one line a full disk ends the run with: how much the files left need, and how to go on.

    The need is the files left times the mean size of this folder's outputs so far (their inputs'
    size before any output exists): an estimate, said to be one.
    """
    sizes = [sum(int(s[0]) for s in r.output_stats.values()) for r in journal.all() if r.output_stats]
    if sizes:
        need = len(left) * sum(sizes) / len(sizes)
        basis = f"{len(sizes)} output(s) so far"
    else:
        need = float(sum(p.size or 0 for p in left))
        basis = "their inputs' size"
    try:
        free = f"{_mb(shutil.disk_usage(out_dir).free)} free"
    except OSError:
        free = "free space unknown"
    return UserError(
        f"the disk is full ({free}); the {len(left)} file(s) left need about {_mb(need)} more "
        f"(from {basis}); no file was failed",
        path=out_dir,
        hint="free some space (or move --out) and run the same command again: it resumes",
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _claim(journal: Journal, root: Path, out_dir: Path, settings: str, allow_other: bool) -> None:
    """Check (and record, the first time) which scan folder this output folder's journal serves.

    The first scan folder stays the journal's own; with ``allow_other`` another one adds its files
    beside it, each row naming its folder. The output folder and settings are the latest run's, for
    ``journal merge`` to compare.
    """
    owner = JournalOwner.from_meta(journal.meta())
    check_scan_root(owner.scan_root, root, out_dir, allow_other=allow_other)
    home = owner.scan_root or folder_key(root)
    journal.claim_rows(home)
    for key, value in JournalOwner(home, folder_key(out_dir), settings).meta().items():
        journal.set_meta(key, value)


def _cap_crashes(planned: list[PlannedFile], journal: Journal, cap: int, out_dir: Path) -> None:
    """Count one more crash for each file that was in flight when the process died; at ``cap``
    crashes it fails for good.

    A file that kills the process (an OOM on one huge scan) would otherwise be retried on every
    resume, forever. ``--retry-failed`` gives it another ``cap`` tries. A row left ``running``
    without its in-flight marker (``jobs.inflight``: queued for a Ray worker but never started, or
    stopped by a full disk) was not what killed the process: it is simply to do again.
    """
    for p in planned:
        if p.action != "retry-crashed":
            continue
        if not was_in_flight(out_dir, p.item.relpath):
            p.action = "pending"
            continue
        n = journal.note_crash(p.item.relpath)
        if n >= cap:
            reason = (
                f"{p.item.relpath}: crashed the process {n} times (killed, or out of memory?); not retried "
                "again (jobs.crash_retries in the profile)"
            )
            journal.mark_failed(p.item.relpath, reason)
            p.action, p.previous_error = "failed-before", reason


def _avoid_recorded_outputs(
    planned: list[PlannedFile], journal: Journal, taken: set[tuple[str, str]], out_dir: Path, suffix: str
) -> list[str]:
    """Rename (``stem~N``) any file to do whose output the journal records for another file.

    Discovery already makes names unique across the tree; this catches outputs of files that
    have left the tree (or were named differently before), so no output ever replaces another
    file's. Deterministic for a given tree and journal; the note goes into the file's provenance.
    """
    from dataclasses import replace

    claimed = journal.recorded_outputs()
    notes: list[str] = []

    def names(rel: str, stem: str) -> list[str]:
        return [
            output_path(out_dir, rel, suffix, json_record=j, stem=stem)
            .relative_to(out_dir)
            .as_posix()
            .lower()
            for j in (False, True)
        ]

    for p in planned:
        if not p.todo:
            continue
        rel, stem = p.item.relpath, p.item.stem
        holders = {claimed[n] for n in names(rel, stem) if n in claimed} - {rel}
        if not holders:
            continue
        folder = Path(rel).parent.as_posix()
        n = 2
        while (folder, f"{stem}~{n}".lower()) in taken or any(
            x in claimed for x in names(rel, f"{stem}~{n}")
        ):
            n += 1
        new = f"{stem}~{n}"
        taken.add((folder, new.lower()))
        note = (
            f"output named '{new}' because the journal records '{stem}' as the output of {sorted(holders)[0]}"
        )
        if p.item.name_note:
            note = f"{p.item.name_note}; {note}"
        p.item = replace(p.item, out_stem=new, name_note=note)
        notes.append(f"{rel}: {note}")
    return notes


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
        label = {
            "done": "skip (done)",
            "failed-before": "skip (failed before; --retry-failed)",
            "other-scan": "fail (another archive's file)",
        }.get(p.action, p.action)
        if p.action in ("failed-before", "other-scan") and p.previous_error:
            label += f": {p.previous_error}"
        table.add_row(escape(p.item.relpath), escape(p.sidecar.name) if p.sidecar else "-", escape(label))
    console.print(table)
    todo = sum(p.todo for p in planned)
    console.print(
        f"{len(planned)} files: {todo} to colorize, {sum(p.action == 'done' for p in planned)} already done, "
        f"{sum(p.action in ('failed-before', 'other-scan') for p in planned)} failed before or "
        f"another archive's. {model_note}",
        highlight=False,
    )


MAX_FILE_WARNINGS = 50
"""Per-file warnings the run's summary lists; the rest are counted (every record keeps its own)."""


def _summary(
    console: Console, outcomes: list[Outcome], out_dir: Path, warnings: list[str] | None = None
) -> None:
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
    for warning in warnings or []:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    per_file = [f"{o.relpath}: {w}" for o in outcomes for w in o.warnings]
    for warning in per_file[:MAX_FILE_WARNINGS]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if len(per_file) > MAX_FILE_WARNINGS:
        console.print(
            f"[yellow]warning:[/yellow] {len(per_file) - MAX_FILE_WARNINGS} more file warning(s): "
            "each file's record (.json) lists its own",
            highlight=False,
        )


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

    console = console or console_for_run()
    scans = Path(req.scans)
    if not scans.exists():
        raise UserError("scan folder not found", path=scans)
    root = scans if scans.is_dir() else scans.parent
    out_dir = Path(req.out).resolve() if req.out else default_out_dir(scans)
    if out_dir == root.resolve():
        raise UserError(
            "--out must not be the scan folder itself", path=out_dir, hint="use a sub- or sibling folder"
        )
    check_seed(req.profile.seed)
    check_profile_packages(req.profile)
    check_out_folder(out_dir)
    found = discover_report(
        scans, exclude=[out_dir], shard=req.shard, max_sidecar_bytes=req.profile.hints.max_sidecar_bytes
    )
    files = found.files
    for warning in found.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    profile_fp = req.profile.fingerprint()
    jpath = journal_path(out_dir, req.shard)
    suffix = req.profile.output.suffix

    def plan(journal: Journal | None, model_fp: str | None) -> list[PlannedFile]:
        """The dry run and the run plan alike; only the journal and the model's hash differ."""
        return plan_files(
            files,
            journal,
            profile_fp=profile_fp,
            model_fp=model_fp,
            out_dir=out_dir,
            force=req.force,
            retry_failed=req.retry_failed,
            verify_inputs=req.verify_inputs,
            scan_root=root,
            max_sidecar_bytes=req.profile.hints.max_sidecar_bytes,
            verify_outputs=req.verify_outputs,
        )

    if req.dry_run:
        check_journal(jpath, files, out_dir, suffix, shard=req.shard, force=req.force)
        try:
            bundle_dir = find_bundle(req.model)
            model_fp: str | None = model_hash(bundle_dir)
            note = f"Model: {escape(str(bundle_dir))}."
        except UserError as exc:
            model_fp, note = None, f"[yellow]Model: {escape(exc.one_line())}[/yellow]"
        journal = Journal.open_existing(jpath)
        try:
            if journal is not None:
                owner = JournalOwner.from_meta(journal.meta())
                check_scan_root(owner.scan_root, root, out_dir, allow_other=req.allow_other_scans)
            planned = plan(journal, model_fp)
        finally:
            if journal:
                journal.close()
        print_plan(console, planned, out_dir, note)
        return EXIT_OK

    bundle_dir = find_bundle(req.model)  # before anything is created
    model_fp = model_hash(bundle_dir)
    if read_manifest(bundle_dir).tiny:
        console.print(
            "[yellow]Model is a tiny random bundle: a pipeline check, its colours are meaningless.[/yellow]"
        )
    if not files:
        console.print(
            f"No scans found under {escape(str(scans))} (extensions: jpg jpeg png tif tiff webp bmp).",
            highlight=False,
        )
        return EXIT_OK
    make_out_folder(out_dir)
    with (
        RunLock(out_dir, req.shard),
        _checked_journal(jpath, files, out_dir, suffix, req) as journal,
        StopController(console) as stop,
    ):
        _claim(journal, root, out_dir, settings_fingerprint(profile_fp, model_fp), req.allow_other_scans)
        removed = clean_stale_temps(out_dir)
        if removed:
            console.print(f"Removed {len(removed)} temp file(s) left by an interrupted run.")
        planned = plan(journal, model_fp)
        _cap_crashes(planned, journal, req.profile.jobs.crash_retries, out_dir)
        clear_in_flight(out_dir, (p.item.relpath for p in planned))
        renamed = _avoid_recorded_outputs(planned, journal, found.taken, out_dir, req.profile.output.suffix)
        for note in renamed:
            console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
        for p in planned:
            if p.action == "done" and p.sha256 and p.size is not None:
                row = journal.get(p.item.relpath)  # e.g. rebuilt from records: size/mtime were unknown
                if row is not None and (row.input_size, row.input_mtime) != (p.size, p.mtime):
                    journal.set_input_stat(p.item.relpath, p.size, p.mtime, p.sha256)
                if row is not None and not row.output_stats:  # written before outputs were recorded
                    journal.set_output_stats(p.item.relpath, output_stats(out_dir, row.outputs, {}))
            if p.todo:  # new, changed, crashed (`running`), retried or forced: (re)queued as pending
                journal.upsert_pending(
                    p.item.relpath,
                    p.fingerprint,
                    size=p.size,
                    mtime=p.mtime,
                    sha256=p.sha256,
                    keep_crashes=p.action == "retry-crashed",
                    scan_root=folder_key(root),
                )
        journal.set_meta("profile", req.profile.model_dump_json())
        journal.set_meta("model", str(bundle_dir))
        outcomes: list[Outcome] = []
        for p in planned:
            if p.action == "done":
                outcomes.append(Outcome(p.item.relpath, "skipped", "done earlier with the same fingerprint"))
            elif p.action == "failed-before":
                outcomes.append(Outcome(p.item.relpath, "failed", f"{p.previous_error} (use --retry-failed)"))
            elif p.action == "other-scan":
                outcomes.append(Outcome(p.item.relpath, "failed", p.previous_error or ""))
        # Files the process died on last time go last: a file that kills the process every time
        # must not keep the rest of the archive from being reached.
        todo = [p for p in planned if p.todo and p.action != "retry-crashed"]
        todo += [p for p in planned if p.todo and p.action == "retry-crashed"]
        interrupted = False
        no_space: UserError | None = None
        if todo:  # same planning and journal whoever does the work (this process or Ray)
            ctx = ExecContext(journal, stop, console, outcomes, req.profile, bundle_dir, root, out_dir)
            try:
                interrupted = (executor or LocalExecutor(pipeline_factory))(todo, ctx)
            except sqlite3.OperationalError as exc:  # the journal's own write found the disk full
                if not is_out_of_space(exc):
                    raise
                ctx.halted = str(exc)
            # Writers that died during this run (a Ray worker killed mid-write, or one orphaned by a
            # killed earlier driver and still alive when the run started) leave temps behind.
            clean_stale_temps(out_dir)
            if ctx.halted:
                done = {o.relpath for o in outcomes if o.state in ("done", "skipped", "failed")}
                unfinished = [p for p in todo if p.item.relpath not in done]
                no_space = out_of_space_error(out_dir, journal, unfinished)
        journal_problems = journal.check()
    _summary(console, outcomes, out_dir, found.warnings)
    if no_space is not None:
        raise no_space
    if journal_problems:
        console.print(f"[red]journal check: {escape('; '.join(journal_problems))}[/red]")
    if interrupted:
        left = len(files) - sum(o.state in ("done", "skipped") for o in outcomes)
        cmd = shlex.join(["mtcolor-batch", *req.argv]) if req.argv else "the same `mtcolor-batch run` command"
        console.print(
            f"[yellow]Interrupted: {left} file(s) not done; the journal is consistent. "
            f"Resume with: {escape(cmd)}[/yellow]"
        )
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(o.state == "failed" for o in outcomes) else EXIT_OK


def console_for_run() -> Console:
    """Progress and tables on stderr so stdout stays clean for scripts.

    ``soft_wrap``: a line (``failed <file>: <reason>``, a warning, the dry-run footer) stays one line
    in a log file or pipe, where rich would otherwise wrap it at 80 columns and break ``grep``."""
    return Console(stderr=True, highlight=False, soft_wrap=True, file=sys.stderr)
