"""Build a GPT-Color-style training set from colour photos: gray input, instances, texts, manifest.

Layout of a dataset folder::

    manifest.jsonl        one JSON object per photo (see ``build_entry``), appended as photos finish
    dataset.json          how it was built (bundle, instance source, caption chain, filters, split)
    summary.json          counts over the whole manifest: texts per captioner, rejections per reason
    split.json            the seeded train/test split of the entry ids (``split.py``)
    images/<id>.png       the colour target (sRGB, 8 bit), long side capped at ``max_side``
    gray/<id>.png         its luminance, computed exactly as a gray scan is read at run time
    masks/<id>_<k>.png    instance k's mask (0/255)

Why this shape: a line per photo makes the build resumable exactly like ``run`` (a photo whose
relative path and sha256 are already in the manifest is skipped; a torn last line from a crash is
dropped), every file is written atomically before its manifest line, and the loader needs nothing
but the manifest and the split. ``summary.json`` and ``split.json`` are recomputed from the whole
manifest at the end of every build, so an interrupted and resumed build ends with the same files as
an uninterrupted one. Instances come from a COCO-style annotation file (``coco.py``), the bundle's
detector + SAM, or a given finder; their texts from the caption chain (``captioner.py``), whose last
link names the colour from the real pixels. Without instances there are none, with a warning:
instances are never invented.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import atomic_write_bytes
from mtcolor_batch.core.types import Instance, Scan, box_from_mask
from mtcolor_batch.scan.discover import discover
from mtcolor_batch.scan.imageio import rgb_to_gray
from mtcolor_batch.scan.tone import not_colour_reason
from mtcolor_batch.train import naming, text_filters
from mtcolor_batch.train.captioner import CaptionChain, build_chain
from mtcolor_batch.train.coco import CocoAnnotations, CocoFinder
from mtcolor_batch.train.dataset_config import DatasetConfig, load_dataset_config
from mtcolor_batch.train.split import write_split

MANIFEST = "manifest.jsonl"
META = "dataset.json"
SUMMARY = "summary.json"
FORMAT_VERSION = 2

Progress = Callable[[int, int, str], None]
"""progress(done, total, relpath) called after each photo."""


@dataclass
class BuildReport:
    """What one build call did; the CLI prints it and exits 1 when something failed."""

    added: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json of the whole dataset


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def entry_id(relpath: str) -> str:
    """Stable, file-system-safe id: readable stem + hash of the relative path (unique per photo)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(relpath).stem).strip("-")[:40] or "photo"
    return f"{stem}-{hashlib.sha1(relpath.encode('utf-8')).hexdigest()[:10]}"


def read_manifest(folder: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Entries of ``folder/manifest.jsonl``; a torn last line (crash mid-append) is dropped.

    With ``repair`` the file is rewritten without the torn line so the next append starts clean.
    A bad line anywhere else is corruption, not a crash artefact, and raises a UserError.
    """
    path = folder / MANIFEST
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            is_last = all(not rest.strip() for rest in lines[number:])
            if not is_last:
                raise UserError(f"corrupt manifest line: {exc.msg}", path=path, line=number) from exc
            if repair:
                keep = b"".join(x + b"\n" for x in lines[: number - 1] if x.strip())
                atomic_write_bytes(path, keep)
            break
        if not isinstance(entry, dict) or "id" not in entry:
            raise UserError("manifest line is not an entry object", path=path, line=number)
        entries.append(entry)
    return entries


def _append_line(path: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def load_color_photo(path: Path, max_side: int) -> np.ndarray:
    """Oriented sRGB float32 HxWx3 in [0, 1], long side at most ``max_side`` (area resampling)."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            else:
                img = img.convert("RGB")
            scale = max_side / max(img.size)
            if scale < 1:
                size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.BOX)
            return np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read colour photo: {exc}", path=path) from exc


class InstanceFinder:
    """Auto instances of a photo with the bundle's perception components (tagger + SAM).

    ``None`` perception means the bundle has no ``sam/``/``detector/``: every entry then has no
    instances, and ``warning`` says so once.
    """

    def __init__(self, bundle: Path | None, device: str, settings: PerceptionSettings) -> None:
        self.settings = settings
        self.perception: Any = None
        self.warning: str | None = None
        if bundle is None:
            self.warning = "no --model bundle given: entries have no instances (global text only)"
            return
        from mtcolor_batch.perception.models import load_perception  # deferred: loads torch

        self.perception = load_perception(bundle, device)
        if self.perception is None:
            self.warning = (
                f"bundle {bundle} has no perception components (sam/, detector/): entries have no instances"
            )
        elif not self.perception.can_auto_segment:
            self.warning = f"{'; '.join(self.perception.notes)}: entries have no instances"
            self.perception = None

    def __call__(self, scan: Scan) -> list[Instance]:
        if self.perception is None:
            return []
        from mtcolor_batch.perception import perceive  # deferred: loads torch
        from mtcolor_batch.perception.instances import finalize  # deferred: loads torch

        found = perceive(scan, self.perception, self.settings, [])
        return finalize(found, scan.size, self.settings)


def _scan_for(path: Path, relpath: str, gray: np.ndarray, sha: str) -> Scan:
    return Scan(source=path, relpath=relpath, luma=gray, format="PNG", mode="RGB", bit_depth=8, sha256=sha)


def build_entry(
    path: Path,
    relpath: str,
    out: Path,
    *,
    finder: Callable[[Scan], list[Instance]],
    chain: CaptionChain,
    max_side: int,
    gray_tolerance: float,
    duplicate_iou: float = 0.9,
) -> dict[str, Any] | str:
    """Write one photo's files and return its manifest entry, or a reason string when skipped.

    Duplicated instances (same label, mask IoU >= ``duplicate_iou``) are dropped before any
    captioner runs; every rejected text and instance is listed under ``rejected`` so the summary
    can count them and a reader can see what the captioners said.
    """
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rgb = load_color_photo(path, max_side)
    reason = not_colour_reason(rgb, gray_tolerance)
    if reason:
        return reason
    gray = rgb_to_gray(rgb)
    lab = naming.rgb_to_lab(rgb)
    ident = entry_id(relpath)
    h, w = gray.shape
    found = [
        inst
        for inst in finder(_scan_for(path, relpath, gray, sha))
        if inst.box[0] >= 0 and inst.box[1] >= 0 and inst.box[2] <= w and inst.box[3] <= h and inst.area
    ]
    masks = [inst.full((h, w)) for inst in found]  # a training photo is small (max_side): cheap
    twins = text_filters.duplicate_of(masks, [inst.label for inst in found], duplicate_iou)
    rejected: list[dict[str, str]] = []
    instances: list[dict[str, Any]] = []
    for inst, mask, twin in zip(found, masks, twins, strict=True):
        if twin is not None:
            rejected.append(
                {
                    "what": f"instance ({inst.label})",
                    "by": "dedup",
                    "reason": text_filters.DUPLICATE,
                    "text": f"same {inst.label} as instance {twins[:twin].count(None) + 1}",
                }
            )
            continue
        k = len(instances) + 1
        answer = chain.instance_text(rgb, lab, mask, inst.label, given=inst.text)
        rejected.extend({"what": f"instance {k} ({inst.label})", **r} for r in answer.rejected)
        lab_mean = naming.mean_lab(lab, mask)
        mask_rel = f"masks/{ident}_{k}.png"
        atomic_write_bytes(out / mask_rel, _png_bytes(Image.fromarray(mask.astype(np.uint8) * 255, mode="L")))
        box = box_from_mask(mask)
        assert box is not None  # empty masks were skipped above
        instances.append(
            {
                "label": inst.label,
                "color": naming.color_name(lab_mean),
                "lab": [round(v, 3) for v in lab_mean],
                "text": answer.text,
                "text_by": answer.source,
                "mask": mask_rel,
                "box": list(box),
                "score": round(float(inst.score), 4),
            }
        )
    caption = chain.image_caption(rgb) if chain.has_model else None
    if caption is not None:
        rejected.extend({"what": "caption", **r} for r in caption.rejected)
    tone = naming.describe_tone(lab)
    image_rel, gray_rel = f"images/{ident}.png", f"gray/{ident}.png"
    atomic_write_bytes(
        out / image_rel, _png_bytes(Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB"))
    )
    atomic_write_bytes(
        out / gray_rel, _png_bytes(Image.fromarray(np.round(gray * 255).astype(np.uint8), mode="L"))
    )
    caption_text = caption.text if caption is not None else None
    return {
        "id": ident,
        "source": relpath,
        "sha256": sha,
        "image": image_rel,
        "gray": gray_rel,
        "size": [int(rgb.shape[0]), int(rgb.shape[1])],
        "tone": tone,
        "caption": caption_text,
        "caption_by": caption.source if caption is not None else None,
        "text": naming.global_text(tone, [str(i["text"]) for i in instances], caption_text),
        "instances": instances,
        "rejected": rejected,
    }


def latest_entries(folder: Path) -> list[dict[str, Any]]:
    """One entry per id (a photo rebuilt after it changed: its last line wins), sorted by id."""
    by_id: dict[str, dict[str, Any]] = {}
    for entry in read_manifest(folder):
        by_id[entry["id"]] = entry
    return [by_id[k] for k in sorted(by_id)]


def summarize(entries: list[dict[str, Any]], split: dict[str, Any]) -> dict[str, Any]:
    """Counts over the whole dataset: who wrote the texts, and every rejection by reason and captioner."""
    texts_by: Counter[str] = Counter()
    captions_by: Counter[str] = Counter()
    reasons: list[str] = []
    by_captioner: dict[str, list[str]] = {}
    for entry in entries:
        for inst in entry.get("instances", []):
            texts_by[str(inst.get("text_by") or "unknown")] += 1
        captions_by[str(entry.get("caption_by") or "none")] += 1
        for item in entry.get("rejected", []):
            reasons.append(item["reason"])
            by_captioner.setdefault(item["by"], []).append(item["reason"])
    return {
        "photos": len(entries),
        "instances": sum(len(e.get("instances", [])) for e in entries),
        "split": {"train": len(split["train"]), "test": len(split["test"]), "seed": split["seed"]},
        "texts_by": dict(sorted(texts_by.items())),
        "captions_by": dict(sorted(captions_by.items())),
        "rejected": text_filters.count(reasons),
        "rejected_by": {name: text_filters.count(r) for name, r in sorted(by_captioner.items())},
    }


def summary_line(summary: dict[str, Any]) -> str:
    """The summary in one line for the CLI."""
    texts = ", ".join(f"{k} {v}" for k, v in summary["texts_by"].items()) or "none"
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items())
    split = summary["split"]
    return (
        f"{summary['photos']} photos, {summary['instances']} instances; texts by {texts}; "
        f"rejected: {rejected}; split {split['train']} train / {split['test']} test"
    )


def _finalize(out: Path, config: DatasetConfig) -> dict[str, Any]:
    """Recompute split.json and summary.json from the whole manifest (same result after a resume)."""
    entries = latest_entries(out)
    split = write_split(out, [e["id"] for e in entries], config.split.test_fraction, config.split.seed)
    summary = summarize(entries, split)
    atomic_write_bytes(out / SUMMARY, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


def _texts_settings(config: DatasetConfig, chain: CaptionChain) -> dict[str, Any]:
    return {
        "chain": chain.names,
        "captioner": config.captioner.model_dump(mode="json"),
        "filters": config.filters.model_dump(mode="json"),
    }


def build_dataset(
    images: Path,
    out: Path,
    *,
    bundle: Path | None = None,
    limit: int | None = None,
    device: str = "cpu",
    perception: PerceptionSettings | None = None,
    config: DatasetConfig | None = None,
    annotations: Path | None = None,
    progress: Progress | None = None,
    finder: Callable[[Scan], list[Instance]] | None = None,
) -> BuildReport:
    """Build (or resume building) the dataset of ``images`` into ``out``.

    ``limit`` keeps only the first N photos in sorted relative-path order, so re-running with the
    same limit resumes the same set. A photo already in the manifest with the same sha256 is
    skipped; unreadable photos are reported and the build goes on. Instances come from
    ``annotations`` (a COCO-style file; no detector runs), else ``finder`` (the synthetic shapes
    task passes its ground truth; see ``synthetic.py``), else the bundle's perception.
    """
    images, out = Path(images), Path(out)
    config = config or load_dataset_config()
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    files = discover(images, exclude=[out])
    if limit is not None:
        files = files[:limit]
    report = BuildReport()
    if annotations is not None:
        finder = CocoFinder(CocoAnnotations(Path(annotations)))
    auto = InstanceFinder(bundle, device, perception or PerceptionSettings()) if finder is None else None
    if auto is not None and auto.warning:
        report.warnings.append(auto.warning)
    find = finder if finder is not None else auto
    assert find is not None
    chain = build_chain(config, device)
    out.mkdir(parents=True, exist_ok=True)
    done = {(e.get("source"), e.get("sha256")) for e in read_manifest(out, repair=True)}
    texts = _texts_settings(config, chain)
    previous = _read_meta(out)
    if done and previous is not None and previous.get("texts") != texts:
        report.warnings.append(
            "this dataset was started with other caption/filter settings: new photos use the new ones "
            "(see dataset.json); build into a new folder for uniform texts"
        )
    instances_from = "annotations" if annotations is not None else "given" if auto is None else "auto"
    meta = {
        "format": FORMAT_VERSION,
        "bundle": str(bundle) if bundle else None,
        "instances": instances_from if auto is None or auto.perception else "none",
        "annotations": str(annotations) if annotations is not None else None,
        "texts": texts,
        "split": config.split.model_dump(mode="json"),
        "max_side": config.max_side,
    }
    atomic_write_bytes(out / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    for number, item in enumerate(files, start=1):
        try:
            sha = hashlib.sha256(item.path.read_bytes()).hexdigest()
            if (item.relpath, sha) in done:
                report.skipped += 1
            else:
                result = build_entry(
                    item.path,
                    item.relpath,
                    out,
                    finder=find,
                    chain=chain,
                    max_side=config.max_side,
                    gray_tolerance=config.gray_tolerance,
                    duplicate_iou=config.filters.duplicate_iou,
                )
                if isinstance(result, str):
                    report.warnings.append(f"{item.relpath}: skipped, {result}")
                    report.skipped += 1
                else:
                    _append_line(out / MANIFEST, result)
                    done.add((item.relpath, sha))
                    report.added += 1
        except (UserError, OSError) as exc:
            report.failed.append((item.relpath, str(exc)))
        if progress is not None:
            progress(number, len(files), item.relpath)
    report.summary = _finalize(out, config)
    return report


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
