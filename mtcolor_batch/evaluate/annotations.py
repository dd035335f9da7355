"""COCO-style annotations for the evaluation protocol: instances (label, mask, text) per image.

The paper evaluates on COCO-Stuff instances with GPT-Color texts. Here an annotation file is plain
COCO JSON (``images``, ``annotations``, ``categories``) with two optional additions the GPT-Color
texts need: an annotation's ``text`` (or ``caption``) is that instance's text, and an image's
``caption`` is its global text. Segmentations are polygons or RLE (compressed or not), decoded by
pycocotools. Problems with one image are reported for that image; only an unreadable file is fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.output.mask_rle import decode_mask

MAX_ANNOTATION_BYTES = 2 * 1024**3
"""Largest annotation file read (COCO-Stuff's train file is about 1 GB)."""


@dataclass
class AnnotatedInstance:
    label: str
    text: str
    segmentation: Any  # polygons or RLE, decoded at the image's size by :meth:`mask`
    crowd: bool = False  # COCO ``iscrowd``: one region over many objects (the dataset builder skips it)

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """Bool (h, w) mask; ValueError on a malformed segmentation."""
        from pycocotools import mask as coco_mask

        h, w = size
        seg = self.segmentation
        if isinstance(seg, dict):
            return decode_mask(seg, size)
        if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 for p in seg):
            rles = coco_mask.frPyObjects([[float(v) for v in p] for p in seg], h, w)
            return np.asarray(coco_mask.decode(coco_mask.merge(rles)), dtype=bool)
        raise ValueError("segmentation must be polygons ([[x, y, ...], ...], 3+ points) or RLE")


@dataclass
class AnnotatedImage:
    file_name: str
    size: tuple[int, int] | None  # (h, w) the file declares
    caption: str | None
    instances: list[AnnotatedInstance] = field(default_factory=list)


def load_annotations(path: Path) -> dict[str, AnnotatedImage]:
    """Images by ``file_name`` (a relative path under the references folder)."""
    if not path.is_file():
        raise UserError("annotation file not found", path=path, hint="give a COCO-style JSON file")
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise UserError(f"annotation file larger than {MAX_ANNOTATION_BYTES >> 30} GiB", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read annotation file: {exc}", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError("not a COCO-style annotation file (no 'images' list)", path=path)
    names = {c.get("id"): str(c.get("name", "")) for c in data.get("categories") or [] if isinstance(c, dict)}
    by_id: dict[Any, AnnotatedImage] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or not img.get("file_name"):
            continue
        h, w = img.get("height"), img.get("width")
        size = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None
        caption = img.get("caption") if isinstance(img.get("caption"), str) else None
        by_id[img.get("id")] = AnnotatedImage(str(img["file_name"]), size, caption)
    for ann in data.get("annotations") or []:
        if not isinstance(ann, dict) or ann.get("image_id") not in by_id or ann.get("segmentation") is None:
            continue
        label = names.get(ann.get("category_id")) or str(ann.get("label") or "object")
        text = ann.get("text") or ann.get("caption")
        by_id[ann["image_id"]].instances.append(
            AnnotatedInstance(
                label, str(text) if text else f"a {label}", ann["segmentation"], bool(ann.get("iscrowd"))
            )
        )
    return {img.file_name: img for img in by_id.values()}
