"""``mtcolor-batch hints``: write, check and visualise sidecar hint files.

The loop a user follows: ``hints init`` writes a template next to each scan listing what the
detector found (so they only fill colours in), ``hints check`` says file:line:col what is wrong,
``hints show`` draws the instances the run will use. ``init`` and ``show`` find instances with
``stages.instances``, the chain ``run`` uses, and ``check`` validates with ``hints.schema``, so
what they show is what the run does.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mtcolor_batch.cli._common import fail, print_error
from mtcolor_batch.cli._hints_context import load_hints_context, scan_files
from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.errors import EXIT_FAILED, UserError
from mtcolor_batch.core.fs import write_new_file
from mtcolor_batch.hints.check import check_folder_files, check_sidecars
from mtcolor_batch.hints.template import fmt_box, folder_template_text, template_text
from mtcolor_batch.jobs.batch import file_progress
from mtcolor_batch.scan.folder_files import FOLDER_RULES_NAME
from mtcolor_batch.scan.imageio import load_scan
from mtcolor_batch.scan.sidecars import find_sidecar, sidecar_candidates

hints_app = typer.Typer(
    name="hints",
    help="Write template sidecars, check them, and preview the instances of a scan.",
    no_args_is_help=True,
)

_MODEL_HELP = (
    "Bundle folder or cached bundle id (its sam/ + detector/ find instances); default: the pulled one."
)


# -- init ---------------------------------------------------------------------------------------


@hints_app.command("init")
def init_command(
    scans: Path = typer.Argument(..., metavar="SCANS", help="A scan or a folder of scans."),
    model: str | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (default: profile)."),
) -> None:
    """Write a template sidecar next to every scan that has none (existing sidecars are left alone)."""
    from mtcolor_batch.stages.instances import NO_SIDECAR, find_instances  # deferred: loads torch

    try:
        files = scan_files(scans)
        ctx = load_hints_context(model, profile, device)
    except UserError as exc:
        raise fail(exc) from None
    note = None
    how = "pass --model BUNDLE (`mtcolor-batch models pull` fetches one) to list what it finds"
    if ctx.bundle_dir is None:
        note = f"detection skipped: no model bundle; add regions by hand, or {how}"
    elif ctx.perception is None or not ctx.perception.can_auto_segment:
        note = f"detection skipped: no detector/SAM in the model bundle; add regions by hand, or {how}"
    elif not ctx.profile.perception.auto_instances:
        note = "detection skipped: perception.auto_instances is off in this profile"
    if note is not None:
        typer.echo(f"note: {note}", err=True)
    written = skipped = failed = 0
    for path, root in files:
        existing = find_sidecar(path)
        if existing is not None:
            typer.echo(f"kept {existing} (already exists)")
            skipped += 1
            continue
        try:
            scan = load_scan(path, root, ctx.profile.scan)
            instances = (
                find_instances(scan, NO_SIDECAR, ctx.perception, ctx.profile, root).instances
                if note is None
                else []
            )
        except UserError as exc:
            print_error(exc)
            failed += 1
            continue
        target = sidecar_candidates(path)[0]
        try:
            created = write_new_file(target, template_text(path.name, scan.size, instances, note))
        except OSError as exc:
            typer.echo(f"error: {target}: cannot write: {exc.strerror or exc}", err=True)
            failed += 1
            continue
        if created:
            found = "detection skipped" if note else f"{len(instances)} detected instance(s)"
            typer.echo(f"wrote {target} ({found})")
            written += 1
        else:
            typer.echo(f"kept {target} (already exists)")
            skipped += 1
    typer.echo(f"{written} written, {skipped} kept, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_FAILED)


# -- check --------------------------------------------------------------------------------------


@hints_app.command("check")
def check_command(
    scans: Path = typer.Argument(
        ..., metavar="SCANS", help="A folder of scans, one scan, or one sidecar file."
    ),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file (size limit)."),
) -> None:
    """Validate every sidecar and mtcolor-folder.yaml; print file:line:col: problem; exit 1 if any."""

    try:
        settings = load_profile(profile)
        rule_problems, rule_warnings, rule_files = check_folder_files(scans, settings.hints.max_sidecar_bytes)
        problems, warnings, checked = check_sidecars(
            scans, settings.hints.max_sidecar_bytes, settings.hints.max_sidecar_instances
        )
    except UserError as exc:
        raise fail(exc) from None
    problems, warnings = rule_problems + problems, rule_warnings + warnings
    for line in [*warnings, *problems]:
        typer.echo(line)
    also = f" and {rule_files} folder rules file(s)" if rule_files else ""
    typer.echo(f"{checked} sidecar(s){also} checked, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(EXIT_FAILED)


# -- survey -------------------------------------------------------------------------------------


@hints_app.command("survey")
def survey_command(
    folder: Path = typer.Argument(..., metavar="FOLDER", help="The folder of scans to survey."),
    model: str | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (default: profile)."),
    top: int = typer.Option(
        20, "--top", min=1, help="How many of the most frequent labels the template lists."
    ),
) -> None:
    """Detect over every scan (resumable), print scans and instances per label, and write a template
    mtcolor-folder.yaml listing the most frequent labels (an existing one is never touched)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mtcolor_batch.stages.survey import STATE_NAME, survey  # deferred: loads torch

    if not folder.is_dir():
        raise fail(UserError("not a folder", path=folder, hint="survey a folder of scans"))
    try:
        files = scan_files(folder)
        if not files:
            raise UserError("no scans found", path=folder, hint="point survey at a folder of scans")
        ctx = load_hints_context(model, profile, device)
        if ctx.perception is None or not ctx.perception.can_auto_segment:
            raise UserError(
                "a survey needs the detector and SAM of a model bundle",
                hint="pull one with `mtcolor-batch models pull`, or pass --model",
            )
        if not ctx.profile.perception.auto_instances:
            raise UserError(
                "perception.auto_instances is off in this profile", hint="use a profile with it on"
            )
    except UserError as exc:
        raise fail(exc) from None
    console = Console()
    state = folder / STATE_NAME
    with file_progress(console) as progress:
        task = progress.add_task("surveying", total=len(files))
        result = survey(
            files,
            state,
            ctx.perception,
            ctx.profile,
            ctx.bundle_dir,
            advance=lambda _: progress.advance(task),
        )
    for line in result.failed:
        typer.echo(f"error: {line}", err=True)
    typer.echo(f"{result.scanned} scan(s) surveyed ({result.reused} counted earlier, kept in {state})")
    table = Table()
    table.add_column("label")
    table.add_column("scans", justify="right")
    table.add_column("instances", justify="right")
    for row in result.labels:
        table.add_row(escape(row.label), str(row.scans), str(row.instances))
    console.print(table)
    target = folder / FOLDER_RULES_NAME
    rows = [(r.label, r.scans, r.instances) for r in result.labels]
    try:
        created = write_new_file(target, folder_template_text(folder.name, rows, result.scanned, top))
    except OSError as exc:
        typer.echo(f"error: {target}: cannot write: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    if created:
        typer.echo(f"wrote {target} ({min(top, len(rows))} label(s), commented out: give each a colour)")
    else:
        typer.echo(f"kept {target} (already exists; not touched)")
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


# -- show ---------------------------------------------------------------------------------------


@hints_app.command("show")
def show_command(
    photo: Path = typer.Argument(..., metavar="PHOTO", help="The scan to preview."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="PNG to write (default: <photo>.hints.png in the current folder)."
    ),
    model: str | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (default: profile)."),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="Scan folder mask paths must stay inside (the run's SCANS; default: the photo's).",
    ),
) -> None:
    """Draw each instance of a scan (auto + sidecar), numbered and labelled, with a legend below:
    hinted ones filled with their colour, the rest outlined in black-and-white dashes."""
    from mtcolor_batch.perception.overlay import (  # deferred: loads torch
        render_overlay,
        with_legend,
        write_png,
    )
    from mtcolor_batch.stages.instances import scan_instances  # deferred: loads torch

    target = output or Path.cwd() / f"{photo.name}.hints.png"
    try:
        ctx = load_hints_context(model, profile, device)
        scan, found = scan_instances(photo, root or photo.parent, ctx.profile, ctx.perception)
        instances, warnings = found.instances, found.warnings
        image = with_legend(render_overlay(scan.luma, instances), instances)
        write_png(target, image)
    except UserError as exc:
        raise fail(exc) from None
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    for inst in instances:
        color = f"colour {inst.color.name}" if inst.color is not None else "no colour hint"
        origin = f" from {inst.hint_from}" if inst.hint_from else ""
        typer.echo(f"[{inst.id}] {inst.label} ({inst.source}) box {fmt_box(inst.box)} {color}{origin}")
    typer.echo(f"wrote {target} ({len(instances)} instance(s))")


from mtcolor_batch.cli.hints_edit import edit_command  # noqa: E402

hints_app.command("edit")(edit_command)
