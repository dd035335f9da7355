"""``mtcolor-batch models``: pull, list, verify and build model bundles."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.errors import EXIT_FAILED, UserError
from mtcolor_batch.model.bundle import pull_bundle, read_manifest, verify_problems
from mtcolor_batch.model.pull_plan import human_size, plan_pull
from mtcolor_batch.model.registry import COMPONENTS, bundles_dir, default_bundle_dir

app = typer.Typer(
    help="Model bundles: pull from the hub, list, verify, build a tiny offline one.", no_args_is_help=True
)


def _parse_revisions(values: list[str]) -> dict[str, str]:
    """``REV`` pins the SD 1.5 base; ``KEY=REV`` pins one component (base, controlnet, sam, detector)."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, rev = value.partition("=")
        if not sep:
            key, rev = "base", value
        if not key or not rev:
            raise typer.BadParameter(f"'{value}': use REV or KEY=REV")
        out[key.strip()] = rev.strip()
    return out


@app.command("pull")
def pull(
    revision: list[str] = typer.Option(
        [],
        "--revision",
        help="Hub revision: REV for the SD 1.5 base, or KEY=REV (base/controlnet/sam/detector).",
    ),
    dest: Path | None = typer.Option(
        None, "--dest", help="Bundle folder (default: the cache's default bundle)."
    ),
    variant: str = typer.Option("fp16", "--variant", help="Weight variant of the base model: fp16 or none."),
    no_perception: bool = typer.Option(False, "--no-perception", help="Skip SAM and the detector."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="List what would be downloaded (repo, revision, files, sizes), check the configs; no weights.",
    ),
    accelerator: str | None = typer.Option(
        None,
        "--accelerator",
        help="Add a distilled LoRA to the bundle at --dest instead: lcm, hyper-sd-8, pcm-4 or tcd "
        "(pinned revisions; docs/few-step.md).",
    ),
) -> None:
    """Assemble the default bundle (SD 1.5 + brightness ControlNet + SAM + OWLv2) from the hub."""
    from huggingface_hub.utils import enable_progress_bars

    if accelerator is not None:
        _pull_accelerator(accelerator, dest, dry_run)
        return
    revisions = _parse_revisions(revision)
    chosen_variant = None if variant.lower() in ("", "none", "fp32") else variant
    if dry_run:
        _dry_run(revisions, chosen_variant, not no_perception)
        return
    enable_progress_bars()  # main() hides loading bars; a multi-GB download should show its progress
    try:
        bundle = pull_bundle(
            dest,
            revisions=revisions,
            variant=chosen_variant,
            perception=not no_perception,
            log=lambda msg: typer.echo(msg, err=True),
        )
    except UserError as exc:
        raise fail(exc, EXIT_FAILED) from None
    typer.echo(f"{bundle.path}  {bundle.name}  {bundle.revision}  weights {bundle.weights_sha256[:16]}")


def _pull_accelerator(name: str, dest: Path | None, dry_run: bool) -> None:
    """``pull --accelerator``: one pinned LoRA file into an existing bundle (exit 2 on a bad name)."""
    from huggingface_hub.utils import enable_progress_bars

    from mtcolor_batch.model.accelerators import KNOWN, pull_accelerator  # deferred: loads torch

    if name not in KNOWN:
        raise fail(UserError(f"unknown accelerator '{name}'", hint=f"use one of {', '.join(KNOWN)}"))
    known = KNOWN[name]
    folder = dest or default_bundle_dir()
    if dry_run:
        typer.echo(f"dry run: {name}: {known.repo_id} @ {known.revision}  {known.filename}")
        r = known.recipe
        typer.echo(f"  recommended: {r.scheduler}, {r.steps} steps, guidance {r.guidance:g}")
        return
    enable_progress_bars()
    try:
        acc = pull_accelerator(folder, name)
    except UserError as exc:
        raise fail(exc, EXIT_FAILED) from None
    typer.echo(f"{folder}: accelerator {acc.name} ({acc.repo_id}@{acc.revision}) sha256 {acc.sha256[:16]}")


def _dry_run(revisions: dict[str, str], variant: str | None, perception: bool) -> None:
    """Print the pull plan; exit 1 when the configs do not fit together (nothing is written)."""

    unknown = set(revisions) - {c.key for c in COMPONENTS}
    if unknown:
        raise typer.BadParameter(
            f"unknown component {', '.join(sorted(unknown))}; "
            f"use one of {', '.join(c.key for c in COMPONENTS)}",
            param_hint="--revision",
        )
    try:
        plan = plan_pull(revisions, variant=variant, perception=perception)
    except UserError as exc:
        raise fail(exc, EXIT_FAILED) from None
    typer.echo("dry run: hub metadata and small json configs only; no weights downloaded")
    for comp in plan.components:
        commit = f" -> {comp.commit}" if comp.commit and comp.commit != comp.revision else ""
        typer.echo(f"{comp.key}: {comp.repo_id} @ {comp.revision}{commit}")
        for f in comp.files:
            typer.echo(f"  {f.path:<52} {human_size(f.size):>10}")
        known = human_size(comp.size) if comp.unknown_sizes < len(comp.files) else "size not reported"
        more = f" + {comp.unknown_sizes} unreported" if 0 < comp.unknown_sizes < len(comp.files) else ""
        typer.echo(f"  {len(comp.files)} files, {known}{more}")
    files = sum(len(c.files) for c in plan.components)
    unknown_note = (
        f" (+{plan.unknown_sizes} files whose size the hub did not report)" if plan.unknown_sizes else ""
    )
    typer.echo(f"total download: {human_size(plan.download_size)} in {files} files{unknown_note}")
    if plan.modules_size is not None:
        typer.echo(f"written locally: MT-Color modules (zero-initialised) {human_size(plan.modules_size)}")
    for problem in plan.problems:
        typer.echo(f"error: {problem}", err=True)
    if plan.problems:
        typer.echo(
            f"configs: {len(plan.problems)} problem(s) in {plan.configs_checked} fetched configs", err=True
        )
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"configs: ok ({plan.configs_checked} fetched and checked)")


@app.command("list")
def list_bundles(
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip hashing (fast; shows '-' for verified)."),
) -> None:
    """Bundles in the cache ($MTCOLOR_HOME/bundles): name, revision, tiny flag, verified."""

    root = bundles_dir()
    folders = (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )
    if not folders:
        typer.echo(f"no bundles in {root} (run `mtcolor-batch models pull` or `models tiny DIR`)")
        return
    bad = 0
    typer.echo(f"{'folder':<24} {'name':<18} {'tiny':<5} {'verified':<9} revision")
    for folder in folders:
        try:
            bundle = read_manifest(folder)
        except UserError as exc:
            bad += 1
            typer.echo(f"{folder.name:<24} {'?':<18} {'?':<5} {'no':<9} {exc.message}")
            continue
        if no_verify:
            verified = "-"
        else:
            ok = not verify_problems(bundle)
            bad += not ok
            verified = "yes" if ok else "NO"
        tiny = "yes" if bundle.tiny else "no"
        typer.echo(f"{folder.name:<24} {bundle.name:<18} {tiny:<5} {verified:<9} {bundle.revision}")
    if bad:
        raise typer.Exit(EXIT_FAILED)


@app.command("verify")
def verify(
    directory: Path | None = typer.Argument(
        None, metavar="DIRECTORY", help="Bundle folder (default: the cache's default bundle)."
    ),
) -> None:
    """Check every file of a bundle against the sha256 in its mtcolor.json."""

    folder = directory or default_bundle_dir()
    try:
        bundle = read_manifest(folder)
    except UserError as exc:  # no readable manifest: nothing to verify against (setup error)
        raise fail(exc) from None
    t0 = time.perf_counter()
    problems = verify_problems(bundle)
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    if problems:
        raise typer.Exit(EXIT_FAILED)
    typer.echo(
        f"ok: {bundle.path} ({bundle.name} {bundle.revision}{', tiny' if bundle.tiny else ''}): "
        f"{len(bundle.files)} files verified in {time.perf_counter() - t0:.1f} s, "
        f"weights {bundle.weights_sha256[:16]}"
    )


@app.command("tiny")
def tiny(
    directory: Path = typer.Argument(
        ..., metavar="DIRECTORY", help="New (or empty) folder to write the tiny bundle into."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights (same seed, same bytes)."),
) -> None:
    """Write a tiny random bundle (real layout, meaningless colours) for tests and offline demos."""
    from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle  # deferred: loads torch

    t0 = time.perf_counter()
    try:
        path = write_tiny_bundle(directory, seed=seed)
    except UserError as exc:  # a folder that is not empty is a setup error, like any other (exit 2)
        raise fail(exc) from None
    typer.echo(
        f"wrote tiny random bundle {path} in {time.perf_counter() - t0:.1f} s (colours are meaningless)"
    )


accelerator_app = typer.Typer(help="Accelerators (distilled LoRAs) inside a bundle.", no_args_is_help=True)
app.add_typer(accelerator_app, name="accelerator")


@accelerator_app.command("add")
def accelerator_add(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle folder to add the LoRA to."),
    file: Path = typer.Argument(..., metavar="FILE", help="A local .safetensors LoRA for SD 1.5."),
    name: str = typer.Option(..., "--name", help="Name `run --accelerator` will use (e.g. lcm)."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Recommended scheduler (default: the known one's)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Recommended steps."),
    guidance: float | None = typer.Option(None, "--guidance", help="Recommended guidance scale."),
) -> None:
    """Copy a local LoRA into the bundle (keys checked against its UNet) and record it in the manifest."""
    from mtcolor_batch.model.accelerators import add_accelerator, recipe_of  # deferred: loads torch

    try:
        SamplingSettings(accelerator=name)
        acc = add_accelerator(bundle, file, name, recipe_of(name, scheduler, steps, guidance))
    except UserError as exc:
        raise fail(exc) from None
    except ValueError as exc:  # the name pattern (pydantic): letters, digits, . _ -
        raise fail(
            UserError(f"invalid accelerator name '{name}': use letters, digits, '.', '_' or '-'")
        ) from exc
    r = acc.recipe
    typer.echo(
        f"{bundle}: accelerator {acc.name} sha256 {acc.sha256[:16]} "
        f"({r.scheduler}, {r.steps} steps, guidance {r.guidance:g})"
    )


@accelerator_app.command("list")
def accelerator_list(
    bundle: Path | None = typer.Argument(
        None, metavar="BUNDLE", help="Bundle folder (default: the cache's)."
    ),
) -> None:
    """The bundle's accelerators and what each recommends."""
    from mtcolor_batch.model.accelerators import bundle_accelerators  # deferred: loads torch

    try:
        found = bundle_accelerators(read_manifest(bundle or default_bundle_dir()))
    except UserError as exc:
        raise fail(exc) from None
    if not found:
        typer.echo("no accelerators (add one with `models pull --accelerator NAME`)")
    for acc in found.values():
        r = acc.recipe
        source = f"{acc.repo_id}@{acc.revision}" if acc.repo_id else "local file"
        typer.echo(f"{acc.name:<12} {r.scheduler:<14} {r.steps:>3} steps  guidance {r.guidance:<4g} {source}")
