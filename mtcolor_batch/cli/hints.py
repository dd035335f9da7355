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
from mtcolor_batch.core.errors import EXIT_FAILED, UserError
from mtcolor_batch.core.fs import write_new_file
from mtcolor_batch.hints.template import fmt_box, template_text

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
    from mtcolor_batch.scan.imageio import load_scan
    from mtcolor_batch.scan.sidecars import find_sidecar, sidecar_candidates
    from mtcolor_batch.stages.instances import NO_SIDECAR, find_instances

    try:
        files = scan_files(scans)
        ctx = load_hints_context(model, profile, device)
    except UserError as exc:
        raise fail(exc) from None
    note = None
    if ctx.perception is None or not ctx.perception.can_auto_segment:
        note = "no detector/SAM in the model bundle: nothing detected; add regions by hand"
    elif not ctx.profile.perception.auto_instances:
        note = "perception.auto_instances is off in this profile: nothing detected"
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
            typer.echo(f"wrote {target} ({len(instances)} detected instance(s))")
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
    """Validate every sidecar; print file:line:col: problem for each; exit 1 if there is any."""
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.hints.check import check_sidecars

    try:
        settings = load_profile(profile)
        problems, warnings, checked = check_sidecars(
            scans, settings.hints.max_sidecar_bytes, settings.hints.max_sidecar_instances
        )
    except UserError as exc:
        raise fail(exc) from None
    for line in [*warnings, *problems]:
        typer.echo(line)
    typer.echo(f"{checked} sidecar(s) checked, {len(problems)} problem(s)")
    if problems:
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
    """Draw each instance of a scan (auto + sidecar): outlined, numbered, labelled, filled with its colour."""
    from mtcolor_batch.perception.overlay import render_overlay, write_png
    from mtcolor_batch.stages.instances import scan_instances

    target = output or Path.cwd() / f"{photo.name}.hints.png"
    try:
        ctx = load_hints_context(model, profile, device)
        scan, found = scan_instances(photo, root or photo.parent, ctx.profile, ctx.perception)
        instances, warnings = found.instances, found.warnings
        image = render_overlay(scan.luma, instances)
        write_png(target, image)
    except UserError as exc:
        raise fail(exc) from None
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    for inst in instances:
        color = inst.color.name if inst.color is not None else "-"
        typer.echo(f"[{inst.id}] {inst.label} ({inst.source}) box {fmt_box(inst.box)} colour {color}")
    typer.echo(f"wrote {target} ({len(instances)} instance(s))")


from mtcolor_batch.cli.hints_edit import edit_command  # noqa: E402

hints_app.command("edit")(edit_command)
