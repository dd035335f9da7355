"""``eval`` and ``report``: look at what a run produced.

Thin: options are parsed here, the work is in :mod:`mtcolor_batch.evaluate`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.errors import EXIT_FAILED, UserError
from mtcolor_batch.core.fs import atomic_write_text
from mtcolor_batch.evaluate.evaluation import NUMERIC_COLUMNS, EvalResult, evaluate_dir, finite_or_text
from mtcolor_batch.evaluate.iqa import DEFAULT_IQA
from mtcolor_batch.evaluate.report import build_report

_HEADERS = {
    "colorfulness": "Colorful.",
    "psnr": "PSNR dB",
    "ssim": "SSIM",
    "luminance_max_dl": "max ΔL*",
    "hint_de_mean": "hint ΔE00 mean",
    "hint_de_max": "hint ΔE00 max",
    "clip_mean": "CLIP",
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


def _csv_text(result: EvalResult) -> str:
    rows = [r.flat() for r in result.rows]
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: finite_or_text(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


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


def eval_cmd(
    pred_dir: Path = typer.Argument(..., help="A run's output folder (or any folder of colour images)."),
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
    """Score outputs: colourfulness, PSNR/SSIM, luminance fidelity, hint ΔE00, CLIP, optional IQA."""
    console = Console(stderr=True)
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
        atomic_write_text(csv_path, _csv_text(result))
        console.print(f"wrote {csv_path}", highlight=False)
    if json_path is not None:
        atomic_write_text(json_path, _json_text(result))
        console.print(f"wrote {json_path}", highlight=False)
    if any(r.error for r in result.rows):
        raise typer.Exit(EXIT_FAILED)


def report_cmd(
    out_dir: Path = typer.Argument(..., help="A run's output folder."),
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


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``report`` to the top-level app."""
    app.command("eval")(eval_cmd)
    app.command("report")(report_cmd)
