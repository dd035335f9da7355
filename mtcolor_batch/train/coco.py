"""Instances from a COCO-style annotation file (COCO, COCO-Stuff): labels and masks the paper trained on.

Why: GPT-Color was built on COCO-Stuff's labelled masks, not on detector output, so a dataset built
from the same annotations needs no detector and gets the paper's instances. Segmentations may be
polygons, uncompressed RLE or compressed RLE; pycocotools (the reference implementation) decodes all
three. Crowd regions are skipped (one mask over many objects cannot get one object's text), and so is
COCO-Stuff's catch-all "other" class. An annotation may carry its own ``"text"`` ("a red car"):
it is tried before any captioner, through the same filters. Category names lose COCO-Stuff's
"-other"/"-merged" suffixes ("sky-other-merged" -> "sky") so they read as words in a text.

A photo missing from the file, or whose size differs from the annotated one, is a per-photo error
(``UserError`` naming the photo): the build goes on with the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import Instance, Scan

MAX_ANNOTATION_BYTES = 4 << 30
"""Refuse larger annotation files before reading them (COCO-Stuff train2017 is about 1.2 GB)."""

SKIPPED_CATEGORIES = frozenset({"other", "unlabeled", "unlabelled"})


def clean_label(name: str) -> str:
    """COCO-Stuff category name as words: suffixes "-other"/"-merged" dropped, "-"/"_" to spaces."""
    words = name.strip().lower()
    for suffix in ("-merged", "-other", "-stuff"):
        words = words.removesuffix(suffix)
    return " ".join(words.replace("-", " ").replace("_", " ").split())


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> bool HxW (pycocotools' annToMask logic)."""
    from pycocotools import mask as coco_mask  # type: ignore[import-untyped]

    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
            raise ValueError("polygon segmentation needs lists of at least 3 x,y points")
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image's [{height}, {width}]")
        counts = segmentation["counts"]
        rle = coco_mask.frPyObjects(segmentation, height, width) if isinstance(counts, list) else segmentation
        if isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE object")
    return np.asarray(coco_mask.decode(rle), dtype=bool)


class CocoAnnotations:
    """One annotation file, indexed by image file name (relative path, or base name when unique)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise UserError(f"cannot read annotation file: {exc.strerror}", path=self.path) from exc
        if size > MAX_ANNOTATION_BYTES:
            raise UserError(
                f"annotation file is {size / 2**30:.1f} GiB, over the {MAX_ANNOTATION_BYTES >> 30} GiB limit",
                path=self.path,
                hint="split it per image folder",
            )
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot parse annotation file: {exc}", path=self.path) from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise UserError("not a COCO annotation file (no 'images' list)", path=self.path)
        try:
            self.categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
            self.images: dict[str, CocoImage] = {}
            by_base: dict[str, list[CocoImage]] = {}
            for row in data["images"]:
                image = CocoImage(
                    int(row["id"]), str(row["file_name"]), int(row["height"]), int(row["width"])
                )
                key = PurePosixPath(image.file_name.replace("\\", "/")).as_posix()
                self.images[key] = image
                by_base.setdefault(PurePosixPath(key).name, []).append(image)
            self.by_base = {name: found[0] for name, found in by_base.items() if len(found) == 1}
            self.annotations: dict[int, list[dict[str, Any]]] = {}
            for ann in data.get("annotations", []):
                self.annotations.setdefault(int(ann["image_id"]), []).append(ann)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed COCO annotation file: {exc!r}", path=self.path) from exc

    def image_for(self, relpath: str) -> CocoImage | None:
        key = PurePosixPath(relpath.replace("\\", "/")).as_posix()
        return self.images.get(key) or self.by_base.get(PurePosixPath(key).name)

    def instances(self, photo: Path, relpath: str, size: tuple[int, int]) -> list[Instance]:
        """The photo's instances with masks at ``size`` (h, w) of the stored (maybe downscaled) image."""
        image = self.image_for(relpath)
        if image is None:
            raise UserError(f"photo is not in the annotation file {self.path.name}", path=photo)
        with Image.open(photo) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
        if (height, width) != (image.height, image.width):
            raise UserError(
                f"annotation says {image.width}x{image.height}, the photo is {width}x{height}",
                path=photo,
                hint=f"check the entry for {image.file_name} in {self.path.name}",
            )
        if orientation not in (1, None):
            raise UserError(
                "photo has an EXIF rotation; COCO masks refer to unrotated pixels",
                path=photo,
                hint="strip the orientation tag (e.g. exiftool -Orientation=) or rotate the file",
            )
        found: list[Instance] = []
        for ann in self.annotations.get(image.id, []):
            label = clean_label(self.categories.get(int(ann.get("category_id", -1)), ""))
            if ann.get("iscrowd") or not label or label in SKIPPED_CATEGORIES:
                continue
            try:
                full = _decode(ann.get("segmentation"), image.height, image.width)
            except (ValueError, TypeError, KeyError) as exc:
                raise UserError(f"annotation {ann.get('id')}: {exc}", path=self.path) from exc
            mask = full
            if full.shape != size:
                small = Image.fromarray(full.astype(np.uint8) * 255).resize(
                    (size[1], size[0]), Image.Resampling.NEAREST
                )
                mask = np.asarray(small) > 127
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            found.append(
                Instance(
                    len(found) + 1,
                    label,
                    str(ann.get("text") or ""),  # an annotation's own text goes first in the chain
                    mask,
                    box,
                    source="sidecar",
                    score=float(ann.get("score", 1.0)),
                )
            )
        return found


class CocoFinder:
    """``build_dataset``'s instance finder reading an annotation file instead of running a detector."""

    def __init__(self, annotations: CocoAnnotations) -> None:
        self.annotations = annotations

    def __call__(self, scan: Scan) -> list[Instance]:
        return self.annotations.instances(scan.source, scan.relpath, scan.size)
