"""``mtcolor-batch hints``: write, check and visualise sidecar hint files.

The loop a user follows: ``hints init`` writes a template next to each scan listing what the
detector found (so they only fill colours in), ``hints check`` says file:line:col what is wrong,
``hints show`` draws the instances the run will use. ``init`` and ``show`` find instances with
``stages.instances``, the chain ``run`` uses, and ``check`` validates with ``hints.schema``, so
what they show is what the run does.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mtcolor_batch.cli._common import fail, print_error
from mtcolor_batch.core.errors import EXIT_FAILED, UserError

if TYPE_CHECKING:  # heavy imports (torch, transformers) wait until a command needs them
    from mtcolor_batch.core.config import Profile
    from mtcolor_batch.core.types import Instance
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
    """``--model DIR|ID`` -> folder; no option -> the pulled default bundle if there is one."""
    from mtcolor_batch.model.registry import bundles_dir, default_bundle_dir

    if model is None:
        candidate = default_bundle_dir()
        return candidate if candidate.is_dir() else None
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if "/" not in model and (bundles_dir() / model).is_dir():
        return bundles_dir() / model
    raise UserError(
        "model bundle folder not found", path=path, hint="give a bundle folder or a cached bundle id"
    )


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


def upright_size(path: Path) -> tuple[int, int]:
    """(height, width) of the scan as the run sees it (EXIF orientation applied), from the header only."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image header: {exc}", path=path) from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


# -- init ---------------------------------------------------------------------------------------


def _fmt_box(box: tuple[int, int, int, int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


def template_text(scan_name: str, size: tuple[int, int], instances: list[Instance], note: str | None) -> str:
    """The template sidecar: valid as written (no active hints), one commented block per instance.

    Each block becomes an active hint by removing the leading ``# `` of its lines and filling in
    ``color:``; the box is the detected one, so the hint is the same region the run would find.
    """
    h, w = size
    lines = [
        f"# Hints for {scan_name} ({w}x{h} px), written by `mtcolor-batch hints init`.",
        "# To pin a colour: uncomment an instance below (remove '# ' from its lines) and fill in color:",
        '#   a colour name (navy, brick red), "#rrggbb" in quotes, rgb(r, g, b) or lab(L, a, b).',
        "# Add regions of your own with box: [x0, y0, x1, y1], points: [[x, y]], polygon: or mask:.",
        "# Then run `mtcolor-batch hints check` on this folder.",
        "version: 1",
        '# prompt: "a street in 1910, overcast"',
        "# seed: 1234",
        "instances:",
    ]
    if note:
        lines.append(f"  # ({note})")
    for inst in instances:
        lines += [
            f"  # [{inst.id}] {inst.label}: box {_fmt_box(inst.box)}, {inst.area} px, score {inst.score:.2f}",
            f"  # - label: {inst.label}",
            f"  #   box: {_fmt_box(inst.box)}",
            "  #   color: ",
        ]
    lines.append("# exclude: [sky]   # detected labels not to treat as instances")
    return "\n".join(lines) + "\n"


def write_new_file(target: Path, text: str) -> bool:
    """Create ``target`` atomically, never replacing an existing file; False if it exists.

    Written to a temp file, fsynced, then hard-linked into place: ``link`` fails if the name
    exists, so a sidecar a user created meanwhile is never overwritten, and a crash never leaves
    a half-written sidecar under the real name.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:  # filesystems without hard links: exclusive create is still no-overwrite
            try:
                with open(target, "x", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


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


def _image_for(sidecar: Path) -> Path | None:
    """The scan a sidecar file belongs to (``photo.jpg.yaml`` or ``photo.yaml`` -> ``photo.jpg``)."""
    from mtcolor_batch.hints.schema import sidecar_candidates
    from mtcolor_batch.scan.discover import IMAGE_EXTENSIONS

    for candidate in (sidecar.with_suffix(""), *sorted(sidecar.parent.glob(sidecar.stem + ".*"))):
        if (
            candidate.suffix.lower() in IMAGE_EXTENSIONS
            and candidate.is_file()
            and sidecar in sidecar_candidates(candidate)
        ):
            return candidate
    return None


def _sidecars_to_check(scans: Path) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """((sidecar, its scan or None) pairs, orphan sidecars) for a folder, a scan or a sidecar file.

    An orphan is a ``.yaml``/``.yml`` in the tree that no scan picks up (``photo.jpeg.yaml`` for
    ``photo.jpg``, ``photo.jpg.yml``): its hints would be silently unused, so check says so.
    """
    from mtcolor_batch.hints.schema import find_sidecar
    from mtcolor_batch.scan.discover import SIDECAR_EXTENSIONS, discover

    if scans.is_file() and scans.suffix.lower() in SIDECAR_EXTENSIONS:
        image = _image_for(scans)
        return [(scans, image)], ([] if image is not None else [scans])
    pairs = []
    for f in discover(scans):
        sidecar = find_sidecar(f.path)
        if sidecar is not None:
            pairs.append((sidecar, f.path))
    orphans: list[Path] = []
    if scans.is_dir():
        used = {sc.resolve() for sc, _ in pairs}
        for ext in SIDECAR_EXTENSIONS:
            for path in sorted(scans.rglob(f"*{ext}")):
                rel = path.relative_to(scans).parts
                if any(part.startswith(".") for part in rel):
                    continue
                if path.resolve() not in used and _image_for(path) is None:
                    orphans.append(path)
    return pairs, orphans


def _mask_problems(sidecar_path: Path, scan_root: Path, max_bytes: int) -> list[str]:
    """Mask files that are missing or leave the scan folder, with the line of their hint."""
    from mtcolor_batch.core.errors import HintError
    from mtcolor_batch.hints.resolve import resolve_mask_path
    from mtcolor_batch.hints.schema import load_sidecar

    out = []
    sidecar = load_sidecar(sidecar_path, max_bytes=max_bytes)
    for hint in sidecar.instances:
        if hint.mask is None:
            continue
        try:
            resolve_mask_path(hint.mask, sidecar_path, scan_root)
        except HintError as exc:
            err = HintError(
                f"instance {hint.position}: {exc.message}",
                path=sidecar_path,
                line=hint.line,
                column=hint.column,
                hint=exc.hint,
            )
            out.append(err.one_line())
    return out


def check_sidecars(scans: Path, max_bytes: int) -> tuple[list[str], list[str], int]:
    """(problem lines, warning lines, sidecars checked) for everything under ``scans``."""
    from mtcolor_batch.hints.schema import check_sidecar, shadowed_sidecar

    pairs, orphans = _sidecars_to_check(scans)
    scan_root = scans if scans.is_dir() else scans.parent
    problems: list[str] = []
    warnings = [f"{o}: warning: no scan uses this sidecar (name it <scan file>.yaml)" for o in orphans]
    for sidecar, image in pairs:
        size = None
        if image is not None:
            try:
                size = upright_size(image)
            except UserError as exc:
                problems.append(exc.one_line())
            shadow = shadowed_sidecar(image)
            if shadow is not None:
                warnings.append(f"{shadow}: warning: ignored because {sidecar.name} exists for the same scan")
        found = [err.one_line() for err in check_sidecar(sidecar, max_bytes=max_bytes, scan_size=size)]
        if not found:
            found = _mask_problems(sidecar, scan_root, max_bytes)
        problems.extend(found)
    return problems, warnings, len(pairs)


@hints_app.command("check")
def check_command(
    scans: Path = typer.Argument(..., help="A folder of scans, one scan, or one sidecar file."),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file (size limit)."),
) -> None:
    """Validate every sidecar; print file:line:col: problem for each; exit 1 if there is any."""
    from mtcolor_batch.core.config import load_profile

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
        typer.echo(f"[{inst.id}] {inst.label} ({inst.source}) box {_fmt_box(inst.box)} colour {color}")
    typer.echo(f"wrote {target} ({len(instances)} instance(s))")


from mtcolor_batch.cli.hints_edit import edit_command  # noqa: E402

hints_app.command("edit")(edit_command)
