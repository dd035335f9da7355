"""``eval protocol``: the paper's Table 1 on a folder of colour references, in one resumable command.

references -> gray inputs (+ sidecars from COCO annotations) -> ``run`` (the real batch runner, its
journal, its profile) -> every Table 1 column -> ``table.md``, ``table.csv``, ``per_image.csv``.

Layout of ``--out``::

    inputs/              gray inputs (luminance as a gray scan is read), sidecars, instance masks
    colorized/           the run's output folder (journal, outputs, provenance records)
    table.md table.csv   one row: this model under this profile, the paper's columns
    per_image.csv        every per-image score and note

Resuming is the runner's: gray inputs are rewritten only when their bytes would change, so a
re-run finds the same fingerprints and colorizes only what is missing. Scores are recomputed each
time (minutes at most beside hours of sampling). ``eval sweep`` reuses every step per α/β setting.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from rich.console import Console
from rich.markup import escape

from mtcolor_batch.core.config import Profile, load_profile
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError
from mtcolor_batch.core.fs import atomic_write_bytes, atomic_write_text
from mtcolor_batch.evaluate import metrics
from mtcolor_batch.evaluate.annotations import AnnotatedImage, load_annotations
from mtcolor_batch.evaluate.evaluation import (
    FileMetrics,
    find_predictions,
    finite_or_text,
    load_clip,
    rows_csv,
    score_arrays,
)
from mtcolor_batch.evaluate.fid import FidScorer, FidUnavailable
from mtcolor_batch.evaluate.iqa import IqaScorer
from mtcolor_batch.evaluate.records import read_failures
from mtcolor_batch.jobs.runner import RunRequest, run_batch
from mtcolor_batch.model.registry import find_bundle
from mtcolor_batch.scan.discover import discover
from mtcolor_batch.scan.imageio import rgb_to_gray
from mtcolor_batch.scan.tone import not_colour_reason

PAPER_PROFILE = "paper"
INPUTS, COLORIZED = "inputs", "colorized"

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fid", "FID ↓"),
    ("clip_mask_cos", "CLIP score ↑ (mask crop, cosine)"),
    ("colorfulness_hs", "Colourfulness ↑ (Hasler–Süsstrunk)"),
    ("colorfulness_ddcolor", "Colourfulness ↑ (DDColor code, abs. opponents)"),
    ("psnr_512", "PSNR ↑ (512²)"),
    ("ssim_512", "SSIM ↑ (512²)"),
    ("iqa_musiq", "MUSIQ ↑"),
    ("iqa_maniqa", "MANIQA ↑"),
    ("iqa_topiq_nr", "TOPIQ ↑"),
    ("iqa_niqe", "NIQE ↓"),
)
"""The columns of the paper's Table 1 as this tool computes them (key, header)."""


@dataclass
class ProtocolSettings:
    """What the protocol runs with, beside the folders."""

    model: str | None = None
    profile: str | None = None  # None: the paper profile when this version ships one, else default
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted profile keys, as `run` options
    annotations: Path | None = None
    clip: Path | None = None
    fid_weights: Path | None = None
    fid_extractor: Any = None  # an nn.Module used in place of the Inception (another feature net)
    iqa_metrics: Sequence[str] = ()
    device: str = "cpu"  # for the scoring models (CLIP, Inception, IQA)


@dataclass
class Reference:
    """One colour reference and the gray input made from it (None when it was rejected)."""

    relpath: str
    path: Path
    input_rel: str | None = None
    error: str | None = None


@dataclass
class ScoredRun:
    """One colorization of the inputs, scored: the per-image rows and the table row."""

    rows: list[FileMetrics]
    summary: dict[str, float | None]
    messages: list[str]
    profile: Profile
    exit_code: int


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file alone, so a re-run keeps the run's fingerprints."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _input_rel(relpath: str, taken: set[str]) -> str:
    """``photo.jpg`` -> ``photo.png``; ``photo_jpg.png`` when a ``photo.png`` reference took the name."""
    rel = Path(relpath)
    name = rel.with_suffix(".png").as_posix()
    if name in taken:
        name = rel.with_name(f"{rel.stem}_{rel.suffix.lstrip('.').lower()}.png").as_posix()
    taken.add(name)
    return name


def _annotation_for(table: dict[str, AnnotatedImage], relpath: str) -> AnnotatedImage | None:
    return table.get(relpath) or table.get(Path(relpath).name)


def _sidecar(
    ann: AnnotatedImage, rgb_size: tuple[int, int], input_path: Path
) -> tuple[bytes, dict[str, bytes]]:
    """Sidecar YAML and its mask PNGs (relative names) for one annotated reference."""
    masks: dict[str, bytes] = {}
    instances = []
    folder = f"{input_path.stem}_masks"
    for k, inst in enumerate(ann.instances, start=1):
        try:
            mask = inst.mask(rgb_size)
        except ValueError as exc:
            raise ValueError(f"instance {k} ({inst.label}): {exc}") from exc
        if not mask.any():
            continue
        name = f"{folder}/{k}.png"
        masks[name] = _png_bytes(mask.astype(np.uint8) * 255)
        instances.append({"label": inst.label, "mask": name, "text": inst.text})
    doc: dict[str, Any] = {"version": 1}
    if ann.caption:
        doc["prompt"] = ann.caption
    doc["instances"] = instances
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8"), masks


def prepare_inputs(
    refs_dir: Path, out_dir: Path, annotations: Path | None, gray_tolerance: float
) -> list[Reference]:
    """Gray inputs (and sidecars) under ``out/inputs`` for every usable reference; the rest get an error.

    An unreadable annotation file is a setup error (UserError); problems of one image (not colour, no
    annotation entry, declared size differs, bad segmentation) are that image's error only.
    """
    if not refs_dir.is_dir():
        raise UserError("reference folder not found", path=refs_dir)
    table = load_annotations(annotations) if annotations is not None else None
    inputs = out_dir / INPUTS
    taken: set[str] = set()
    refs: list[Reference] = []
    for item in discover(refs_dir, exclude=[out_dir]):
        ref = Reference(item.relpath, item.path)
        refs.append(ref)
        try:
            rgb = metrics.load_rgb(item.path)
        except UserError as exc:
            ref.error = exc.one_line()
            continue
        reason = not_colour_reason(rgb, gray_tolerance)
        if reason is not None:
            ref.error = f"{item.relpath}: reference is {reason}; it cannot serve as ground truth"
            continue
        sidecar: tuple[bytes, dict[str, bytes]] | None = None
        rel = _input_rel(item.relpath, taken)
        if table is not None:
            ann = _annotation_for(table, item.relpath)
            if ann is None:
                ref.error = f"{item.relpath}: no entry in the annotation file {annotations}"
                continue
            h, w = rgb.shape[:2]
            if ann.size is not None and ann.size != (h, w):
                ref.error = (
                    f"{item.relpath}: size mismatch: the annotation file says {ann.size[1]}x{ann.size[0]}, "
                    f"the image is {w}x{h}"
                )
                continue
            try:
                sidecar = _sidecar(ann, (h, w), inputs / rel)
            except ValueError as exc:
                ref.error = f"{item.relpath}: bad annotation: {exc}"
                continue
        gray = np.rint(rgb_to_gray(rgb) * 255.0).astype(np.uint8)
        target = inputs / rel
        _write_if_changed(target, _png_bytes(gray))
        if sidecar is not None:
            text, masks = sidecar
            for name, data in masks.items():
                _write_if_changed(target.parent / name, data)
            _write_if_changed(target.with_name(target.name + ".yaml"), text)
        ref.input_rel = rel
    if not refs:
        raise UserError("no reference images found", path=refs_dir)
    if not any(r.input_rel for r in refs):
        first = refs[0].error
        raise UserError(f"none of the {len(refs)} reference(s) is usable; first: {first}", path=refs_dir)
    return refs


def choose_profile(name: str | None) -> tuple[str, str]:
    """(profile to use, note for the table): the one given, else the paper's setting."""
    if name is not None:
        return name, f"profile {name}"
    return PAPER_PROFILE, f"profile {PAPER_PROFILE}"


AUTO_INSTANCES = "perception.auto_instances"


def instance_source(settings: ProtocolSettings) -> tuple[dict[str, Any], str]:
    """(profile overrides, table note): where the inputs' instances come from in this run.

    Why an override: the paper profile, which the protocol picks by itself, switches automatic
    detection off (the paper's instances are its annotations). Without an annotation file nothing
    would then give any instance and every α/β row would be the same image; so, as in a normal run,
    the bundle's detector + SAM find them, and each output's provenance shows it (profile values,
    paper deviations). A profile the user names is taken as it is.
    """
    from mtcolor_batch.perception.models import bundle_can_auto_segment  # deferred: loads torch

    if settings.annotations is not None:
        if AUTO_INSTANCES in settings.overrides:
            return {}, f"instances: from the annotation file ({AUTO_INSTANCES} as asked)"
        return {AUTO_INSTANCES: False}, "instances: from the annotation file (automatic detection off)"
    if not bundle_can_auto_segment(find_bundle(settings.model)):
        return {}, "instances: none can be found: no --annotations and the bundle has no detector + SAM"
    name, _ = choose_profile(settings.profile)
    if load_profile(name, settings.overrides).perception.auto_instances:
        return {}, "instances: no --annotations, so the bundle's detector + SAM found them as in a normal run"
    if settings.profile is None and AUTO_INSTANCES not in settings.overrides:
        return {AUTO_INSTANCES: True}, (
            "instances: no --annotations, so the bundle's detector + SAM found them as in a normal run "
            f"({AUTO_INSTANCES} set true for this run; each output's provenance records it in its "
            "profile values and paper_deviations)"
        )
    return {}, f"instances: none: no --annotations and profile {name} switches automatic detection off"


def instance_notes(run_dir: Path, source: str) -> list[str]:
    """The instance-source note, and a warning when no scored output has any instance.

    Without instances the instance branch and multi-instance sampling have nothing to act on: the
    numbers are those of the global branch alone, and α/β settings give the same image.
    """
    preds = find_predictions(run_dir, records_only=True) if run_dir.is_dir() else []
    recs = [p.record for p in preds if p.record is not None and p.error is None]
    notes = [source]
    if recs and not any(r.instances for r in recs):
        notes.append(
            "no output has any instance: the instance branch and multi-instance sampling had nothing "
            "to act on, so α/β change nothing; pass --annotations FILE or a bundle with detector/ + sam/"
        )
    return notes


def colorize(
    out_dir: Path, run_dir: Path, settings: ProtocolSettings, extra: dict[str, Any], console: Console
) -> tuple[int, Profile]:
    """The gray inputs through the batch runner (journal, lock, resume) into ``run_dir``."""
    name, _ = choose_profile(settings.profile)
    overrides = dict(settings.overrides)
    overrides.update(instance_source(settings)[0])
    overrides.update(extra)
    profile = load_profile(name, overrides)
    request = RunRequest(scans=out_dir / INPUTS, profile=profile, out=run_dir, model=settings.model)
    return run_batch(request, console), profile


def _fid_scorer(settings: ProtocolSettings, messages: list[str]) -> FidScorer | None:
    try:
        if settings.fid_extractor is not None:
            return FidScorer.with_extractor(settings.fid_extractor, settings.device)
        return FidScorer.inception(settings.fid_weights, settings.device)
    except FidUnavailable as exc:
        messages.append(str(exc))
        return None


def score_run(
    out_dir: Path,
    run_dir: Path,
    refs: list[Reference],
    settings: ProtocolSettings,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[FileMetrics], dict[str, float | None], list[str]]:
    """Every Table 1 column for one colorized run: per-image rows, the table row, run-wide notes."""
    messages: list[str] = []
    preds = {p.relpath: p for p in find_predictions(run_dir, records_only=True)} if run_dir.is_dir() else {}
    failures = {f.relpath: f.error for f in read_failures(run_dir)} if run_dir.is_dir() else {}
    clip = load_clip(settings.clip, list(preds.values()), messages, settings.device)
    iqa = IqaScorer.create(settings.iqa_metrics, settings.device, messages) if settings.iqa_metrics else None
    if not settings.iqa_metrics:
        messages.append("NR-IQA columns not computed (--no-iqa)")
    fid = _fid_scorer(settings, messages)
    rows: list[FileMetrics] = []
    for ref in refs:
        if progress:
            progress(ref.relpath)
        row = FileMetrics(relpath=ref.relpath, output="")
        rows.append(row)
        if ref.error is not None or ref.input_rel is None:
            row.error = ref.error or "no gray input"
            continue
        pred = preds.get(ref.input_rel)
        if pred is None or pred.error is not None:
            why = failures.get(ref.input_rel) or (pred.error if pred else None) or "no output yet"
            row.error = f"{ref.relpath}: not colorized: {why}"
            continue
        row.output = str(pred.path)
        try:
            rgb = metrics.load_rgb(pred.path)
            ref_rgb = metrics.load_rgb(ref.path)
            gray = metrics.load_rgb(out_dir / INPUTS / ref.input_rel)
            score_arrays(row, rgb, gray, ref_rgb, pred.record, clip, iqa)
        except (UserError, ValueError) as exc:
            row.error = f"{ref.relpath}: {exc}"
            continue
        if fid is not None:
            fid.add(ref_rgb, real=True)
            fid.add(rgb, real=False)
    summary = summarize(rows)
    if fid is not None:
        try:
            summary["fid"] = fid.compute()
        except FidUnavailable as exc:
            messages.append(str(exc))
    return rows, summary, messages


def summarize(rows: list[FileMetrics]) -> dict[str, float | None]:
    """Mean of every per-image column over the images that have it (FID is added by the caller)."""
    scored = [r for r in rows if r.error is None]
    out: dict[str, float | None] = {"fid": None}
    for key, _ in TABLE_COLUMNS:
        if key == "fid":
            continue
        if key.startswith("iqa_"):
            values = [r.iqa[key[4:]] for r in scored if key[4:] in r.iqa]
        else:
            values = [v for r in scored if (v := getattr(r, key)) is not None]
        finite = [v for v in values if np.isfinite(v)]
        out[key] = statistics.fmean(finite) if finite else None
    out["images_scored"] = float(len(scored))
    out["images_failed"] = float(len(rows) - len(scored))
    return out


def fmt(value: float | None) -> str:
    """Table cell: '–' for a column that could not be computed."""
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def table_markdown(
    title: str, lead: Sequence[str], rows: Sequence[tuple[Sequence[str], dict[str, float | None]]],
    lead_cells: Sequence[str], notes: Sequence[str],
) -> str:
    """A Markdown table in the paper's layout: one row per method/setting, the Table 1 columns."""
    heads = [*lead, *(h for _, h in TABLE_COLUMNS)]
    lines = [f"# {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for cells, summary in rows:
        lines.append("| " + " | ".join([*cells, *(fmt(summary.get(k)) for k, _ in TABLE_COLUMNS)]) + " |")
    lines.append("")
    lines.extend(lead_cells)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def table_csv(lead: Sequence[str], rows: Sequence[tuple[Sequence[str], dict[str, float | None]]]) -> str:
    """The same rows for a spreadsheet: raw values, empty where a column could not be computed."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*lead, *(k for k, _ in TABLE_COLUMNS), "images_scored", "images_failed"])
    for cells, summary in rows:
        values = [finite_or_text(summary.get(k)) for k, _ in TABLE_COLUMNS]
        counts = [int(summary.get("images_scored") or 0), int(summary.get("images_failed") or 0)]
        writer.writerow([*cells, *("" if v is None else v for v in values), *counts])
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def model_note(run_dir: Path, rows: list[FileMetrics]) -> str:
    """Which bundle made the outputs, and a warning when it is the tiny random one."""
    preds = find_predictions(run_dir, records_only=True) if run_dir.is_dir() else []
    recs = [p.record for p in preds if p.record is not None]
    if not recs:
        return "model: (no outputs)"
    bundle = recs[0].model.get("bundle") or recs[0].model.get("path") or "?"
    if any(r.tiny for r in recs):
        return f"model: {bundle}: TINY RANDOM bundle: these numbers check the pipeline, not the method"
    return f"model: {bundle}"


def run_protocol(
    refs_dir: Path, out_dir: Path, settings: ProtocolSettings, console: Console | None = None
) -> ScoredRun:
    """The whole protocol; the exit code says 0 all scored, 1 some failed, 130 interrupted."""
    console = console or Console(stderr=True)
    out_dir = out_dir.resolve()
    base = load_profile(choose_profile(settings.profile)[0], settings.overrides)
    refs = prepare_inputs(refs_dir, out_dir, settings.annotations, base.scan.gray_tolerance)
    for ref in refs:
        if ref.error:
            console.print(f"[red]error:[/red] {escape(ref.error)}", highlight=False, markup=True)
    run_dir = out_dir / COLORIZED
    code, profile = colorize(out_dir, run_dir, settings, {}, console)
    if code == EXIT_INTERRUPTED:
        return ScoredRun([], {}, [], profile, code)
    rows, summary, messages = score_run(out_dir, run_dir, refs, settings)
    profile_note = choose_profile(settings.profile)[1]
    if settings.profile is not None:  # a YAML path: name it as the profile calls itself
        profile_note = f"profile {profile.name}"
    lead_cells = [
        f"{model_note(run_dir, rows)}; {profile_note}; "
        f"{int(summary['images_scored'] or 0)} of {len(refs)} references scored.",
        "Columns: FID between the colorized set and the references; CLIP score = raw cosine of each "
        "instance's mask crop (outside filled gray) with its text, mean over instances then images; "
        "PSNR/SSIM after resizing both to 512x512.",
    ]
    errors = [r.error for r in rows if r.error]
    method = [f"MT-Color ({profile.name})"]
    notes = instance_notes(run_dir, instance_source(settings)[1])
    write_text(
        out_dir / "table.md",
        table_markdown("Evaluation protocol (paper Table 1 columns)", ["Method"], [(method, summary)],
                       lead_cells, notes + messages + [e for e in errors if e]),
    )
    write_text(out_dir / "table.csv", table_csv(["method"], [(method, summary)]))
    write_text(out_dir / "per_image.csv", rows_csv(rows))
    failed = any(r.error for r in rows) or code == EXIT_FAILED
    return ScoredRun(rows, summary, messages, profile, EXIT_FAILED if failed else EXIT_OK)
