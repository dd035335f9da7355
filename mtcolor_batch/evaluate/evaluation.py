"""``eval``: score every prediction in a folder and collect one row per file.

Reference-free scores (colourfulness, luminance fidelity against the scan, hint adherence from
provenance, CLIP score per instance) always run where their inputs exist; PSNR/SSIM run where a
reference with the same relative path is given. A file that cannot be scored gets a note in its
row instead of stopping the batch, matching how the runner treats files.
"""

from __future__ import annotations

import csv
import glob
import io
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.evaluate import metrics
from mtcolor_batch.evaluate.clip_score import ClipScorer, crop_box, crop_mask, find_clip_dir
from mtcolor_batch.evaluate.iqa import IqaScorer
from mtcolor_batch.evaluate.records import SKIP_DIRS, FileRecord, find_records, read_record
from mtcolor_batch.output.mask_rle import decode_mask

NUMERIC_COLUMNS = (
    "colorfulness_hs",
    "colorfulness_ddcolor",
    "psnr",
    "ssim",
    "psnr_512",
    "ssim_512",
    "luminance_max_dl",
    "hint_de_mean",
    "hint_de_max",
    "clip_mask_cos",
    "clip_box_x100",
)


@dataclass
class FileMetrics:
    """Scores of one output; ``None`` where the metric had no input (no reference, no scan, ...)."""

    relpath: str
    output: str
    colorfulness_hs: float | None = None  # Hasler & Suesstrunk (signed opponents)
    colorfulness_ddcolor: float | None = None  # DDColor's code (absolute opponents)
    psnr: float | None = None  # at the images' own size
    ssim: float | None = None
    psnr_512: float | None = None  # both resized to 512x512, as the paper
    ssim_512: float | None = None
    luminance_max_dl: float | None = None
    hinted: int = 0
    hint_de_mean: float | None = None
    hint_de_max: float | None = None
    clip_mask_cos: float | None = None  # the paper's: mask crop, raw cosine (~0.2 scale)
    clip_box_x100: float | None = None  # box crop, 100 * max(cos, 0)
    instances: list[dict[str, Any]] = field(default_factory=list)
    iqa: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def flat(self) -> dict[str, Any]:
        """One CSV row: scalars only, IQA metrics as ``iqa_<name>`` columns."""
        row = {k: v for k, v in asdict(self).items() if k not in {"instances", "iqa", "notes"}}
        row.update({f"iqa_{k}": v for k, v in self.iqa.items()})
        row["notes"] = "; ".join(self.notes)
        return row


@dataclass
class EvalResult:
    rows: list[FileMetrics]
    messages: list[str]  # run-wide notes: CLIP missing, pyiqa missing, ...

    def summary(self) -> dict[str, float | None]:
        """Mean of each metric over the files that have it."""
        out: dict[str, float | None] = {}
        names = list(NUMERIC_COLUMNS) + sorted({k for r in self.rows for k in r.iqa})
        for name in names:
            values = [r.iqa[name] if name in r.iqa else getattr(r, name, None) for r in self.rows]
            present = [v for v in values if v is not None]
            out[name] = statistics.fmean(present) if present else None
        return out


@dataclass
class Prediction:
    """One output to score, with its provenance record when it has one."""

    path: Path
    relpath: str  # of the source scan when known, else of the prediction (suffix removed)
    record: FileRecord | None
    error: str | None = None  # unreadable record or missing image: reported as that file's row


def _strip_suffix(name: str, suffix: str = ".color") -> str:
    stem, dot, ext = name.rpartition(".")
    if dot and stem.endswith(suffix):
        return stem[: -len(suffix)] + "." + ext
    return name


def find_predictions(pred_dir: Path, records_only: bool = False) -> list[Prediction]:
    """Outputs with provenance when the folder is a run's output; any images otherwise.

    ``records_only`` (the report) returns an empty list for a folder without records instead.
    """
    if not pred_dir.is_dir():
        raise UserError("prediction folder not found", path=pred_dir)
    preds = []
    records = find_records(pred_dir)
    for json_path in records:
        try:
            rec = read_record(json_path, pred_dir)
        except UserError as exc:
            preds.append(Prediction(json_path, json_path.relative_to(pred_dir).as_posix(), None, str(exc)))
            continue
        if rec.output_path is None:
            preds.append(Prediction(json_path, rec.relpath, rec, "record's output image is missing"))
        else:
            preds.append(Prediction(rec.output_path, rec.relpath, rec))
    if records or records_only:
        return preds
    for path in sorted(pred_dir.rglob("*"), key=lambda p: p.relative_to(pred_dir).as_posix()):
        rel = path.relative_to(pred_dir)
        if path.suffix.lower() in metrics.IMAGE_SUFFIXES and rel.parts[0] not in SKIP_DIRS:
            preds.append(Prediction(path, _strip_suffix(rel.as_posix()), None))
    if not preds:
        raise UserError("no images or provenance records found", path=pred_dir)
    return preds


def match_file(root: Path, relpath: str) -> Path | None:
    """``root/relpath``, or an image with the same stem in that folder (a PNG reference for a JPEG scan)."""
    exact = root / relpath
    if exact.is_file():
        return exact
    rel = Path(relpath)
    folder = root / rel.parent
    if folder.is_dir():
        for cand in sorted(folder.glob(f"{glob.escape(rel.stem)}.*")):
            if cand.suffix.lower() in metrics.IMAGE_SUFFIXES:
                return cand
    return None


def _hint_scores(row: FileMetrics, rec: FileRecord) -> None:
    hinted = rec.hinted
    row.hinted = len(hinted)
    des = [i.delta_e for i in hinted if i.delta_e is not None]
    if des:
        row.hint_de_mean = statistics.fmean(des)
        row.hint_de_max = max(des)
    elif hinted:
        row.notes.append("hinted instances have no recorded CIEDE2000")


def locate_scan(pred: Prediction, scans_dir: Path | None) -> Path | None:
    """The original scan: under ``--scans`` by relative path, else the path provenance recorded."""
    if scans_dir is not None:
        return match_file(scans_dir, pred.relpath)
    if pred.record is not None and pred.record.source_path is not None and pred.record.source_path.is_file():
        return pred.record.source_path
    return None


def score_arrays(
    row: FileMetrics,
    rgb: np.ndarray,
    scan: np.ndarray | None,
    ref: np.ndarray | None,
    record: FileRecord | None,
    clip: ClipScorer | None = None,
    iqa: IqaScorer | None = None,
) -> FileMetrics:
    """Fill ``row`` from already-loaded images (the report loads them once for thumbnails too)."""
    row.colorfulness_hs = metrics.colorfulness(rgb)
    row.colorfulness_ddcolor = metrics.colorfulness_ddcolor(rgb)
    if ref is not None:
        if ref.shape != rgb.shape:
            row.notes.append(f"reference size {ref.shape[1]}x{ref.shape[0]} differs; PSNR/SSIM skipped")
        else:
            row.psnr = metrics.psnr(rgb, ref)
            row.ssim = metrics.ssim(rgb, ref)
            row.psnr_512, row.ssim_512 = metrics.psnr_ssim_512(rgb, ref)
    if scan is None:
        row.notes.append("original scan not found (use --scans)")
    elif scan.shape[:2] != rgb.shape[:2]:
        row.notes.append("scan size differs from output; luminance fidelity skipped")
    else:
        row.luminance_max_dl = metrics.luminance_fidelity(rgb, scan)
    if record is not None:
        _hint_scores(row, record)
        row.instances = [
            {"id": i.id, "label": i.label, "text": i.text, "source": i.source, "box": i.box,
             "hint": i.hint_name, "hint_lab": i.hint_lab, "delta_e": i.delta_e,
             "delta_e_before": i.delta_e_before}
            for i in record.instances
        ]
        if clip is not None:
            _clip_scores(row, rgb, record, clip)
    if iqa is not None:
        row.iqa = iqa.score(rgb)
    return row


def score_file(
    pred: Prediction,
    ref_dir: Path | None,
    scans_dir: Path | None,
    clip: ClipScorer | None,
    iqa: IqaScorer | None,
) -> FileMetrics:
    """Every metric that has its inputs, for one prediction."""
    row = FileMetrics(relpath=pred.relpath, output=str(pred.path))
    rgb = metrics.load_rgb(pred.path)
    ref = None
    if ref_dir is not None:
        ref_path = match_file(ref_dir, pred.relpath)
        if ref_path is None:
            row.notes.append("no reference")
        else:
            ref = metrics.load_rgb(ref_path)
    scan_path = locate_scan(pred, scans_dir)
    scan = metrics.load_rgb(scan_path) if scan_path is not None else None
    return score_arrays(row, rgb, scan, ref, pred.record, clip, iqa)


def _clip_scores(row: FileMetrics, rgb: np.ndarray, rec: FileRecord, clip: ClipScorer) -> None:
    """Both CLIP scores per instance; the mask score only where the record carries the mask."""
    box_crops, box_texts, box_slots = [], [], []
    mask_crops, mask_texts, mask_slots = [], [], []
    unreadable = 0
    for inst, out in zip(rec.instances, row.instances, strict=True):
        if not inst.text:
            continue
        crop = crop_box(rgb, inst.box) if inst.box is not None else None
        if crop is not None:
            box_crops.append(crop)
            box_texts.append(inst.text)
            box_slots.append(out)
        if inst.mask_rle is not None:
            try:
                mask = decode_mask(inst.mask_rle, rgb.shape[:2])
            except ValueError:
                unreadable += 1
                continue
            mcrop = crop_mask(rgb, mask)
            if mcrop is not None:
                mask_crops.append(mcrop)
                mask_texts.append(inst.text)
                mask_slots.append(out)
    for out, value in zip(box_slots, clip.score(box_crops, box_texts), strict=True):
        out["clip_box_x100"] = value
    for out, value in zip(mask_slots, clip.cosine(mask_crops, mask_texts), strict=True):
        out["clip_mask_cos"] = value
    if box_slots:
        row.clip_box_x100 = statistics.fmean(o["clip_box_x100"] for o in box_slots)
    if mask_slots:
        row.clip_mask_cos = statistics.fmean(o["clip_mask_cos"] for o in mask_slots)
    if unreadable:
        row.notes.append(f"{unreadable} instance mask(s) in the record unreadable: no mask CLIP for them")
    elif box_slots and not mask_slots:
        row.notes.append("record has no instance masks (made before masks were recorded): no mask CLIP")


def evaluate_dir(
    pred_dir: Path,
    ref_dir: Path | None = None,
    scans_dir: Path | None = None,
    clip_path: Path | None = None,
    iqa_metrics: Sequence[str] = (),
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score every prediction under ``pred_dir``.

    ``clip_path`` is a bundle (with ``clip/``) or a CLIP folder; when not given, the bundle named
    in provenance (``model.path``) is tried. ``iqa_metrics`` are pyiqa names (niqe, musiq, ...).
    """
    for label, folder in (("reference", ref_dir), ("scans", scans_dir)):
        if folder is not None and not folder.is_dir():
            raise UserError(f"{label} folder not found", path=folder)
    preds = find_predictions(pred_dir)
    messages: list[str] = []
    clip = load_clip(clip_path, preds, messages, device)
    iqa = IqaScorer.create(iqa_metrics, device, messages) if iqa_metrics else None
    rows = []
    for pred in preds:
        if progress:
            progress(pred.relpath)
        if pred.error is not None:
            rows.append(FileMetrics(relpath=pred.relpath, output=str(pred.path), error=pred.error))
            continue
        try:
            rows.append(score_file(pred, ref_dir, scans_dir, clip, iqa))
        except (UserError, ValueError) as exc:
            rows.append(FileMetrics(relpath=pred.relpath, output=str(pred.path), error=str(exc)))
    return EvalResult(rows, messages)


def load_clip(
    clip_path: Path | None, preds: list[Prediction], messages: list[str], device: str
) -> ClipScorer | None:
    """``--clip`` (a bundle with ``clip/`` or a CLIP folder), else the bundle provenance names."""
    candidates = [clip_path] if clip_path is not None else []
    if clip_path is None:
        named = {str(p.record.model.get("path") or "") for p in preds if p.record is not None}
        candidates = [Path(n) for n in sorted(named - {""})]
    for cand in candidates:
        found = find_clip_dir(cand)
        if found is not None:
            return ClipScorer(found, device)
    where = str(clip_path) if clip_path is not None else "the model bundle"
    messages.append(
        f"CLIP score skipped: no CLIP weights in {where} "
        "(give --clip DIR: a bundle with a clip/ component, or a CLIP folder)"
    )
    return None


def rows_csv(rows: Sequence[FileMetrics]) -> str:
    """One CSV row per file (the union of every row's columns; ``inf`` written as text)."""
    flat = [r.flat() for r in rows]
    fields: list[str] = []
    for row in flat:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in flat:
        writer.writerow({k: finite_or_text(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def finite_or_text(value: float | None) -> float | str | None:
    """JSON has no infinity: PSNR of identical images is written as the string "inf"."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
