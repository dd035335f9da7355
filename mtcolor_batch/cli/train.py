"""`mtcolor-batch dataset build` and `mtcolor-batch train`: thin shells over mtcolor_batch.train.

Exit codes: 0 all good, 1 some photos failed (dataset build), 2 a usage/input error (one line).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.errors import EXIT_FAILED, UserError
from mtcolor_batch.train.config import load_train_config
from mtcolor_batch.train.dataset import build_dataset, summary_line
from mtcolor_batch.train.dataset_config import load_dataset_config

dataset_app = typer.Typer(help="Build training datasets from colour photos.", no_args_is_help=True)
_err = Console(stderr=True)


@dataset_app.command("build")
def dataset_build(
    color_images: Path = typer.Argument(..., metavar="PHOTOS", help="Folder (or file) of colour photos."),
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Dataset folder (created; resumed when it has a manifest)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N photos (sorted paths)."),
    model: Path | None = typer.Option(
        None, "--model", help="Bundle whose sam/ + detector/ find the instances (none: no instances)."
    ),
    annotations: Path | None = typer.Option(
        None, "--annotations", help="COCO-style annotation file (COCO, COCO-Stuff): its masks, no detector."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Dataset YAML (keys of profiles/dataset.yaml): caption chain, filters, split."
    ),
    vlm: str | None = typer.Option(
        None, "--vlm", help="Primary captioner: image-text-to-text model folder or hub id (cached)."
    ),
    blip2: str | None = typer.Option(None, "--blip2", help="BLIP-2 fallback captioner: folder or hub id."),
    test_fraction: float | None = typer.Option(
        None, "--test-fraction", min=0.0, max=0.99, help="Share of photos in the test split (default 0.2)."
    ),
    split_seed: int | None = typer.Option(None, "--split-seed", help="Seed of the train/test split."),
    max_side: int | None = typer.Option(None, "--max-side", min=64, help="Long side of the stored images."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Turn colour photos into a training set: gray inputs, instance masks, instance and global texts."""
    from mtcolor_batch.core.device import resolve_device  # deferred: loads torch

    try:
        settings = load_dataset_config(
            config,
            {
                "captioner": {"vlm": vlm, "blip2": blip2},
                "split": {"test_fraction": test_fraction, "seed": split_seed},
                "max_side": max_side,
            },
        )
        with Progress(
            TextColumn("[bold]dataset[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=_err,
            transient=False,
        ) as bar:
            task = bar.add_task("", total=None)

            def progress(done: int, total: int, relpath: str) -> None:
                bar.update(task, completed=done, total=total, description=relpath)

            report = build_dataset(
                color_images,
                out,
                bundle=model,
                limit=limit,
                device=str(resolve_device(device)),
                config=settings,
                annotations=annotations,
                progress=progress,
            )
    except UserError as exc:
        raise fail(exc) from None
    for warning in report.warnings:
        _err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    for relpath, message in report.failed:
        _err.print(f"[red]failed:[/red] {relpath}: {message}", highlight=False, soft_wrap=True)
    typer.echo(f"{report.added} added, {report.skipped} skipped, {len(report.failed)} failed -> {out}")
    typer.echo(f"dataset: {summary_line(report.summary)} (summary.json)")
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def train_command(
    stage: int = typer.Option(
        ...,
        "--stage",
        min=1,
        max=2,
        help="1: instance guidance (default 25,000 steps); 2: ControlNet + PMAM (default 20,000).",
    ),
    data: Path = typer.Option(..., "--data", help="Dataset folder from `dataset build`."),
    bundle: Path = typer.Option(..., "--bundle", help="Bundle to start from (stage 2: stage 1's output)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints/, loss.jsonl and the new bundle/."),
    config: Path | None = typer.Option(None, "--config", help="Training YAML (keys of profiles/train.yaml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in OUT."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Override the config's steps."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    controlnet_init: str | None = typer.Option(
        None,
        "--controlnet-init",
        help="Stage 2's starting ControlNet: bundle (default) or unet (ControlNetModel.from_unet).",
    ),
) -> None:
    """Train MT-Color's modules (paper's two stages) and write a new bundle `run --model` loads."""
    from mtcolor_batch.train.trainer import train  # deferred: loads torch

    try:
        cfg = load_train_config(config, {"steps": steps, "controlnet_init": controlnet_init})
        result = train(
            stage=stage,
            data=data,
            bundle=bundle,
            out=out,
            config=cfg,
            resume=resume,
            device=device,
            log=lambda line: _err.print(line, highlight=False, soft_wrap=True),
        )
    except UserError as exc:
        raise fail(exc) from None
    skipped = f", {result.skipped} instance-free steps skipped" if result.skipped else ""
    typer.echo(
        f"stage {stage}: {result.steps} steps, final loss {result.final_loss:.5f}{skipped} -> {result.bundle}"
    )
