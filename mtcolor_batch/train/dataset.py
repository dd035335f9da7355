"""Build a GPT-Color-style training set from colour photos: gray input, instances, texts, manifest.

Layout of a dataset folder::

    manifest.jsonl        one JSON object per photo (see ``Entry``), appended as photos finish
    dataset.json          how it was built (bundle, perception on/off, captioner)
    images/<id>.png       the colour target (sRGB, 8 bit), long side capped at ``max_side``
    gray/<id>.png         its luminance, computed exactly as a gray scan is read at run time
    masks/<id>_<k>.png    instance k's mask (0/255)

Why this shape: a line per photo makes the build resumable exactly like ``run`` (a photo whose
relative path and sha256 are already in the manifest is skipped; a torn last line from a crash is
dropped), every file is written atomically before its manifest line, and the loader needs nothing
but the manifest. Instance colours are named from the real pixels under each mask (see
``naming.py``). Without perception components in the bundle there are no instances, with a
warning: instances are never invented.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import atomic_write_bytes
from mtcolor_batch.core.types import Instance, Scan
from mtcolor_batch.scan.discover import discover
from mtcolor_batch.scan.imageio import describe_tone as describe_scan_tone
from mtcolor_batch.scan.imageio import rgb_to_gray
from mtcolor_batch.train import naming

MANIFEST = "manifest.jsonl"
META = "dataset.json"
FORMAT_VERSION = 1

Progress = Callable[[int, int, str], None]
"""progress(done, total, relpath) called after each photo."""


@dataclass
class BuildReport:
    """What one build call did; the CLI prints it and exits 1 when something failed."""

    added: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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


class Captioner:
    """Optional BLIP-2-class captioner (``transformers``), loaded only from a local folder.

    Why optional and local-only: the global text is useful without it (tone + instances), and a
    dataset build must never download weights behind the user's back.
    """

    def __init__(self, folder: Path, device: str) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not (folder / "config.json").is_file():
            raise UserError("captioner folder has no config.json", path=folder)
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.model = (
            AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).to(device).eval()
        )
        self.device = device
        self.name = folder.name

    def __call__(self, rgb: np.ndarray) -> str:
        import torch

        image = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=30, do_sample=False)
        return self.processor.batch_decode(out, skip_special_tokens=True)[0].strip()


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
        from mtcolor_batch.perception.models import load_perception

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
        from mtcolor_batch.perception import perceive
        from mtcolor_batch.perception.instances import finalize

        found = perceive(scan, self.perception, self.settings, [])
        return finalize(found, scan.size, self.settings)


TONED_MAX_CHROMA = 0.12
"""A one-hue photo whose 95th-percentile chroma (CbCr, 0-1) stays below this is a toned print."""


def not_colour_reason(rgb: np.ndarray, tolerance: float) -> str | None:
    """Why a photo must not be a training target (gray or sepia/cyanotype toned), or None.

    A one-hue photo is only a toned print when it is also weak in chroma: a red car on a gray street
    is one hue too, and a perfectly good colour target.
    """
    note = describe_scan_tone(rgb, tolerance)
    if "real colour" in note:
        return None
    if "is gray" in note:
        return "not a colour photo (gray)"
    cb = -0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    p95 = float(np.percentile(np.hypot(cb, cr), 95))
    if p95 < TONED_MAX_CHROMA:
        return f"not a colour photo (toned monochrome, chroma p95 {p95:.3f})"
    return None


def _scan_for(path: Path, relpath: str, gray: np.ndarray, sha: str) -> Scan:
    return Scan(source=path, relpath=relpath, luma=gray, format="PNG", mode="RGB", bit_depth=8, sha256=sha)


def build_entry(
    path: Path,
    relpath: str,
    out: Path,
    *,
    finder: Callable[[Scan], list[Instance]],
    captioner: Callable[[np.ndarray], str] | None,
    max_side: int,
    gray_tolerance: float,
) -> dict[str, Any] | str:
    """Write one photo's files and return its manifest entry, or a reason string when skipped."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rgb = load_color_photo(path, max_side)
    reason = not_colour_reason(rgb, gray_tolerance)
    if reason:
        return reason
    gray = rgb_to_gray(rgb)
    lab = naming.rgb_to_lab(rgb)
    ident = entry_id(relpath)
    instances = []
    for k, inst in enumerate(finder(_scan_for(path, relpath, gray, sha)), start=1):
        mask = np.asarray(inst.mask, dtype=bool)
        if mask.shape != gray.shape or not mask.any():
            continue
        lab_mean = naming.mean_lab(lab, mask)
        colour = naming.color_name(lab_mean)
        mask_rel = f"masks/{ident}_{k}.png"
        atomic_write_bytes(out / mask_rel, _png_bytes(Image.fromarray(mask.astype(np.uint8) * 255, mode="L")))
        ys, xs = np.nonzero(mask)
        instances.append(
            {
                "label": inst.label,
                "color": colour,
                "lab": [round(v, 3) for v in lab_mean],
                "text": naming.instance_text(colour, inst.label),
                "mask": mask_rel,
                "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "score": round(float(inst.score), 4),
            }
        )
    caption = captioner(rgb) if captioner is not None else None
    tone = naming.describe_tone(lab)
    image_rel, gray_rel = f"images/{ident}.png", f"gray/{ident}.png"
    atomic_write_bytes(
        out / image_rel, _png_bytes(Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB"))
    )
    atomic_write_bytes(
        out / gray_rel, _png_bytes(Image.fromarray(np.round(gray * 255).astype(np.uint8), mode="L"))
    )
    return {
        "id": ident,
        "source": relpath,
        "sha256": sha,
        "image": image_rel,
        "gray": gray_rel,
        "size": [int(rgb.shape[0]), int(rgb.shape[1])],
        "tone": tone,
        "caption": caption,
        "text": naming.global_text(tone, [str(i["text"]) for i in instances], caption),
        "instances": instances,
    }


def build_dataset(
    images: Path,
    out: Path,
    *,
    bundle: Path | None = None,
    limit: int | None = None,
    device: str = "cpu",
    perception: PerceptionSettings | None = None,
    captioner_dir: Path | None = None,
    max_side: int = 1024,
    gray_tolerance: float = 0.03,
    progress: Progress | None = None,
    finder: Callable[[Scan], list[Instance]] | None = None,
) -> BuildReport:
    """Build (or resume building) the dataset of ``images`` into ``out``.

    ``limit`` keeps only the first N photos in sorted relative-path order, so re-running with the
    same limit resumes the same set. A photo already in the manifest with the same sha256 is
    skipped; unreadable photos are reported and the build goes on. ``finder`` replaces perception
    (the synthetic shapes task passes its ground truth; see ``synthetic.py``).
    """
    images, out = Path(images), Path(out)
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    files = discover(images, exclude=[out])
    if limit is not None:
        files = files[:limit]
    out.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    done = {(e.get("source"), e.get("sha256")) for e in read_manifest(out, repair=True)}
    auto = InstanceFinder(bundle, device, perception or PerceptionSettings()) if finder is None else None
    if auto is not None and auto.warning:
        report.warnings.append(auto.warning)
    find = finder if finder is not None else auto
    assert find is not None
    if captioner_dir is None and bundle is not None and (bundle / "captioner" / "config.json").is_file():
        captioner_dir = bundle / "captioner"
    captioner = Captioner(Path(captioner_dir), device) if captioner_dir is not None else None
    meta = {
        "format": FORMAT_VERSION,
        "bundle": str(bundle) if bundle else None,
        "instances": "given" if finder is not None else ("auto" if auto and auto.perception else "none"),
        "captioner": captioner.name if captioner else None,
        "max_side": max_side,
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
                    captioner=captioner,
                    max_side=max_side,
                    gray_tolerance=gray_tolerance,
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
    return report
