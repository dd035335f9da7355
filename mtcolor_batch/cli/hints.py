"""``mtcolor-batch hints``: write, check and visualise sidecar hint files.

The loop a user follows: ``hints init`` writes a template next to each scan listing what the
detector found (so they only fill colours in), ``hints check`` says file:line:col what is wrong,
``hints show`` draws the instances the run will use. ``init`` and ``show`` find instances with
``stages.instances``, the chain ``run`` uses, and ``check`` validates with ``hints.schema``, so
what they show is what the run does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mtcolor_batch.cli._common import fail, print_error
from mtcolor_batch.core.errors import EXIT_FAILED, UserError
from mtcolor_batch.core.fs import write_new_file
from mtcolor_batch.hints.template import fmt_box, template_text

if TYPE_CHECKING:  # heavy imports (torch, transformers) wait until a command needs them
    from mtcolor_batch.core.config import Profile
    from mtcolor_batch.perception.models import Perception

hints_app = typer.Typer(
    name="hints",
    help="Write template sidecars, check them, and preview the instances of a scan.",
    no_args_is_help=True,
)

_MODEL_HELP = (
    "Bundle folder or cached bundle id (its sam/ + detector/ find instances); default: the pulled one."
)


@dataclass
class _Context:
    """What init/show load once per invocation."""

    profile: Profile
    perception: Perception | None
    bundle_dir: Path | None


def _bundle_folder(model: str | None) -> Path | None:
    """``--model DIR|ID`` -> its bundle; no option -> the pulled default bundle, or None (no perception)."""
    from mtcolor_batch.model.registry import MANIFEST_FILE, default_bundle_dir, find_bundle

    if model is None and not (default_bundle_dir() / MANIFEST_FILE).is_file():
        return None
    return find_bundle(model)


def _load_context(model: str | None, profile_name: str | None, device: str | None) -> _Context:
    """Profile + perception models; no bundle (or one without sam/detector) means no auto instances."""
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.perception.models import load_perception

    profile = load_profile(profile_name)
    bundle_dir = _bundle_folder(model)
    perception = None
    if bundle_dir is not None:
        _quiet_transformers()
        perception = load_perception(bundle_dir, device or profile.device, long_side=profile.perception.size)
    return _Context(profile=profile, perception=perception, bundle_dir=bundle_dir)


def _quiet_transformers() -> None:
    """Weight-loading progress bars are noise on a command that prints one line per file."""
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _scan_files(scans: Path) -> list[tuple[Path, Path]]:
    """(scan path, scan root) pairs: a folder is walked like ``run`` walks it; a file is itself."""
    from mtcolor_batch.scan.discover import discover

    root = scans if scans.is_dir() else scans.parent
    return [(f.path, root) for f in discover(scans)]


# -- init ---------------------------------------------------------------------------------------


@hints_app.command("init")
def init_command(
    scans: Path = typer.Argument(..., help="A scan or a folder of scans."),
    model: str | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (default: profile)."),
) -> None:
    """Write a template sidecar next to every scan that has none (existing sidecars are left alone)."""
    from mtcolor_batch.hints.schema import find_sidecar, sidecar_candidates
    from mtcolor_batch.scan.imageio import load_scan
    from mtcolor_batch.stages.instances import NO_SIDECAR, find_instances

    try:
        files = _scan_files(scans)
        ctx = _load_context(model, profile, device)
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
    scans: Path = typer.Argument(..., help="A folder of scans, one scan, or one sidecar file."),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file (size limit)."),
) -> None:
    """Validate every sidecar; print file:line:col: problem for each; exit 1 if there is any."""
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.hints.check import check_sidecars

    try:
        settings = load_profile(profile)
        problems, warnings, checked = check_sidecars(scans, settings.hints.max_sidecar_bytes)
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
    photo: Path = typer.Argument(..., help="The scan to preview."),
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
        ctx = _load_context(model, profile, device)
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
