"""``eval`` (``eval OUT``, ``eval protocol``, ``eval sweep``) and ``report``: look at what a run produced.

Thin: options are parsed here, the work is in :mod:`mtcolor_batch.evaluate`. ``eval`` is a group
whose default command scores an output folder, so ``mtcolor-batch eval OUT`` keeps working beside
the protocol and sweep subcommands.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, UserError
from mtcolor_batch.core.fs import atomic_write_text
from mtcolor_batch.evaluate.evaluation import (
    NUMERIC_COLUMNS,
    EvalResult,
    evaluate_dir,
    finite_or_text,
    rows_csv,
)
from mtcolor_batch.evaluate.iqa import DEFAULT_IQA
from mtcolor_batch.evaluate.protocol import ProtocolSettings, run_protocol
from mtcolor_batch.evaluate.report import build_report
from mtcolor_batch.evaluate.sweep import parse_grid, run_sweep

_HEADERS = {
    "colorfulness_hs": "Colorful. H&S",
    "colorfulness_ddcolor": "Colorful. DDColor",
    "psnr": "PSNR dB",
    "ssim": "SSIM",
    "psnr_512": "PSNR@512",
    "ssim_512": "SSIM@512",
    "luminance_max_dl": "max ΔL*",
    "hint_de_mean": "hint ΔE00 mean",
    "hint_de_max": "hint ΔE00 max",
    "clip_mask_cos": "CLIP mask cos",
    "clip_box_x100": "CLIP box×100",
}


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _table(result: EvalResult) -> Table:
    # only metrics some file has (no --ref: no PSNR/SSIM columns), so the table fits a terminal
    columns = [n for n in NUMERIC_COLUMNS if any(getattr(r, n) is not None for r in result.rows)]
    iqa_names = sorted({k for r in result.rows for k in r.iqa})
    table = Table(title="mtcolor-batch eval", show_lines=False)
    table.add_column("file", overflow="fold", min_width=20)
    for name in columns:
        table.add_column(_HEADERS[name], justify="right")
    for name in iqa_names:
        table.add_column(name.upper(), justify="right")
    table.add_column("notes", overflow="fold")
    for r in result.rows:
        cells = [_fmt(getattr(r, n)) for n in columns] + [_fmt(r.iqa.get(n)) for n in iqa_names]
        # Text, not markup: file names and messages may contain [brackets]
        note = Text(r.error, style="red") if r.error else Text("; ".join(r.notes))
        table.add_row(Text(r.relpath), *cells, note)
    summary = result.summary()
    table.add_section()
    table.add_row(
        f"mean of {len(result.rows)}",
        *[_fmt(summary.get(n)) for n in columns],
        *[_fmt(summary.get(n)) for n in iqa_names],
        "",
    )
    return table


def _json_text(result: EvalResult) -> str:
    def clean(obj: object) -> object:
        if isinstance(obj, float):
            return finite_or_text(obj)
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    files = []
    for r in result.rows:
        d = r.flat()
        d.pop("notes")
        d.update(notes=r.notes, iqa=r.iqa, instances=r.instances)
        files.append(d)
    data = {"files": files, "summary": result.summary(), "messages": result.messages}
    return json.dumps(clean(data), indent=2, ensure_ascii=False) + "\n"


class _EvalGroup(TyperGroup):
    """Arguments that do not start with a subcommand name go to ``eval outputs`` (``eval OUT``)."""

    default = "outputs"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored click Context
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_EvalGroup,
    no_args_is_help=True,
    help="Score outputs (eval OUT), or run the paper's evaluation protocol / α-β sweep.",
)


def eval_cmd(
    pred_dir: Path = typer.Argument(
        ..., metavar="PRED_DIR", help="A run's output folder (or any folder of colour images)."
    ),
    ref: Path | None = typer.Option(
        None, "--ref", help="Ground-truth colour images at the same relative paths."
    ),
    scans: Path | None = typer.Option(
        None, "--scans", help="Original scans (default: the source path recorded in provenance)."
    ),
    clip: Path | None = typer.Option(
        None, "--clip", help="Bundle with a clip/ component or a CLIP folder (default: bundle in provenance)."
    ),
    iqa: bool = typer.Option(False, "--iqa", help="Also run pyiqa no-reference metrics (pip extra: iqa)."),
    iqa_metric: list[str] = typer.Option(list(DEFAULT_IQA), "--iqa-metric", help="pyiqa metric names."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write one row per file to this CSV."),
    json_path: Path | None = typer.Option(None, "--json", help="Write rows, per-instance scores and means."),
    device: str = typer.Option("cpu", "--device", help="Device for CLIP and IQA models."),
) -> None:
    """Score a run's outputs (also `eval OUT`): colourfulness, PSNR/SSIM, ΔL*, hint ΔE00, CLIP, IQA."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        with console.status("scoring…") as status:
            result = evaluate_dir(
                pred_dir, ref, scans, clip, iqa_metric if iqa else (), device,
                progress=lambda rel: status.update(f"scoring {rel}"),
            )
    except UserError as exc:
        raise fail(exc) from None
    Console().print(_table(result))
    for message in result.messages:
        console.print(Text("note: ", style="yellow") + Text(message), highlight=False)
    if csv_path is not None:
        atomic_write_text(csv_path, rows_csv(result.rows))
        console.print(f"wrote {escape(str(csv_path))}", highlight=False)
    if json_path is not None:
        atomic_write_text(json_path, _json_text(result))
        console.print(f"wrote {escape(str(json_path))}", highlight=False)
    if any(r.error for r in result.rows):
        raise typer.Exit(EXIT_FAILED)


def report_cmd(
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="A run's output folder."),
    scans: Path | None = typer.Option(
        None, "--scans", help="Original scans (default: the source path recorded in provenance)."
    ),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Compute per-file metrics (slower)."),
) -> None:
    """Write OUT_DIR/report.html: before/after, instances, hints, seed, model, metrics, failures."""
    try:
        path = build_report(out_dir, scans_dir=scans, with_metrics=metrics)
    except UserError as exc:
        raise fail(exc) from None
    typer.echo(f"wrote {path}")


def _settings(
    model: str | None, profile: str | None, annotations: Path | None, clip: Path | None,
    fid_weights: Path | None, iqa: bool, iqa_metric: list[str], device: str, steps: int | None,
    seed: int | None,
) -> ProtocolSettings:
    from mtcolor_batch.core.device import resolve_device  # deferred: loads torch

    overrides = {"device": device, "sampling.steps": steps, "seed": seed}
    return ProtocolSettings(
        model=model,
        profile=profile,
        overrides={k: v for k, v in overrides.items() if v is not None},
        annotations=annotations,
        clip=clip,
        fid_weights=fid_weights,
        iqa_metrics=tuple(iqa_metric) if iqa else (),
        device=str(resolve_device(device)),
    )


_REFS = typer.Argument(..., metavar="REFS", help="Folder of colour reference images (searched recursively).")
_OUT = typer.Option(..., "--out", "-o", help="Output folder: inputs, colorized run(s), tables.")
_MODEL = typer.Option(None, "--model", "-m", help="Bundle folder or cached bundle id.")
_PROFILE = typer.Option(
    None, "--profile", "-p", help="Profile (default: paper when shipped, else default; the table says which)."
)
_ANN = typer.Option(
    None, "--annotations", help="COCO-style JSON: instances (masks), texts, captions for the references."
)
_CLIP = typer.Option(None, "--clip", help="Bundle with clip/ or a CLIP folder (default: the model bundle).")
_FID = typer.Option(
    None,
    "--fid-weights",
    help="Inception weights for FID (.pth or .safetensors) \\[default: torch hub cache].",
)
_IQA = typer.Option(True, "--iqa/--no-iqa", help="NR-IQA columns through pyiqa (pip extra: iqa).")
_IQA_METRIC = typer.Option(list(DEFAULT_IQA), "--iqa-metric", help="pyiqa metric names.")
_DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps (sampling and scoring).")
_STEPS = typer.Option(None, "--steps", help="Sampling steps (default: the profile's sampling.steps).")
_SEED = typer.Option(None, "--seed", help="Fixed seed (default: from each input's sha256).")


def _run_scored(out: Path, run: Callable[[Console], tuple[int, list[str]]]) -> None:
    """What `eval protocol` and `eval sweep` share around their run: the one-line error (exit 2),
    the resume hint on Ctrl-C (exit 130), the notes, the tables written and the exit code."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        code, messages = run(console)
    except UserError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted: run the same command again to resume.[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for message in messages:
        console.print(Text("note: ", style="yellow") + Text(message), highlight=False)
    _finish(console, out, code)


def _finish(console: Console, out: Path, code: int) -> None:
    if code == EXIT_INTERRUPTED:
        raise typer.Exit(code)
    for name in ("table.md", "table.csv", "per_image.csv"):
        if (out / name).is_file():
            console.print(f"wrote {escape(str(out / name))}", highlight=False)
    if (out / "table.md").is_file():
        typer.echo((out / "table.md").read_text(encoding="utf-8"))
    raise typer.Exit(code)


def protocol_cmd(
    refs: Path = _REFS,
    out: Path = _OUT,
    model: str | None = _MODEL,
    profile: str | None = _PROFILE,
    annotations: Path | None = _ANN,
    clip: Path | None = _CLIP,
    fid_weights: Path | None = _FID,
    iqa: bool = _IQA,
    iqa_metric: list[str] = _IQA_METRIC,
    device: str = _DEVICE,
    steps: int | None = _STEPS,
    seed: int | None = _SEED,
) -> None:
    """The paper's Table 1 on colour references: gray inputs, colorize, score; table.md/csv, per_image.csv.

    Resumable: run the same command again after an interruption. Exit codes: 0 all references
    scored, 1 some failed (each named), 2 usage/setup error, 130 interrupted.
    """

    def protocol(console: Console) -> tuple[int, list[str]]:
        settings = _settings(
            model, profile, annotations, clip, fid_weights, iqa, iqa_metric, device, steps, seed
        )
        result = run_protocol(refs, out, settings, console)
        return result.exit_code, result.messages

    _run_scored(out, protocol)


def sweep_cmd(
    refs: Path = _REFS,
    out: Path = _OUT,
    alpha: str = typer.Option("0,0.1,0.2,0.3", "--alpha", help="α values (fraction of steps per instance)."),
    beta: str = typer.Option("0,0.2,0.5,1", "--beta", help="β values (weight of the global branch)."),
    model: str | None = _MODEL,
    profile: str | None = _PROFILE,
    annotations: Path | None = _ANN,
    clip: Path | None = _CLIP,
    fid_weights: Path | None = _FID,
    iqa: bool = _IQA,
    iqa_metric: list[str] = _IQA_METRIC,
    device: str = _DEVICE,
    steps: int | None = _STEPS,
    seed: int | None = _SEED,
) -> None:
    """The α/β grid: every setting colorized and scored like `eval protocol`, one table row each.

    One sweep journal (OUT/.mtcolor/sweep.sqlite): a re-run skips settings already scored.
    Exit codes as `eval protocol`.
    """

    def sweep(console: Console) -> tuple[int, list[str]]:
        alphas, betas = parse_grid(alpha, "alpha"), parse_grid(beta, "beta")
        settings = _settings(
            model, profile, annotations, clip, fid_weights, iqa, iqa_metric, device, steps, seed
        )
        return run_sweep(refs, out, settings, alphas, betas, console).exit_code, []

    _run_scored(out, sweep)


eval_app.command("outputs")(eval_cmd)
eval_app.command("protocol")(protocol_cmd)
eval_app.command("sweep")(sweep_cmd)


def register(app: typer.Typer) -> None:
    """Add ``eval`` (group; ``eval OUT`` still scores a folder) and ``report`` to the top-level app."""
    app.add_typer(eval_app, name="eval")
    app.command("report")(report_cmd)
