"""Instances for the dataset builder from a COCO-style annotation file (COCO, COCO-Stuff).

Why: GPT-Color was built on COCO-Stuff's labelled masks, not on detector output, so a dataset built
from the same annotations needs no detector and gets the paper's instances. The file is read and
its segmentations decoded by the evaluation protocol's reader (``evaluate/annotations.py``: polygons
and RLE through pycocotools), so both commands accept the same files. What is particular to
training lives here: crowd regions are skipped (one mask over many objects cannot get one object's
text), and so is COCO-Stuff's catch-all "other" class; category names lose COCO-Stuff's
"-other"/"-merged" suffixes ("sky-other-merged" -> "sky") so they read as words in a text; an
annotation's own ``text`` is tried before any captioner (through the same filters).

A photo missing from the file, or whose size differs from the annotated one, is a per-photo error
(``UserError`` naming the photo): the build goes on with the others.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import Instance, Scan
from mtcolor_batch.evaluate.annotations import AnnotatedImage, load_annotations

SKIPPED_CATEGORIES = frozenset({"other", "unlabeled", "unlabelled"})


def clean_label(name: str) -> str:
    """COCO-Stuff category name as words: suffixes "-other"/"-merged" dropped, "-"/"_" to spaces."""
    words = name.strip().lower()
    for suffix in ("-merged", "-other", "-stuff"):
        words = words.removesuffix(suffix)
    return " ".join(words.replace("-", " ").replace("_", " ").split())


class CocoAnnotations:
    """One annotation file, indexed by image file name (relative path, or base name when unique)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.images = {
            PurePosixPath(k.replace("\\", "/")).as_posix(): v for k, v in load_annotations(self.path).items()
        }
        by_base: dict[str, list[AnnotatedImage]] = {}
        for key, image in self.images.items():
            by_base.setdefault(PurePosixPath(key).name, []).append(image)
        self.by_base = {name: found[0] for name, found in by_base.items() if len(found) == 1}

    def image_for(self, relpath: str) -> AnnotatedImage | None:
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
        if image.size is not None and image.size != (height, width):
            raise UserError(
                f"annotation says {image.size[1]}x{image.size[0]}, the photo is {width}x{height}",
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
        for number, ann in enumerate(image.instances, start=1):
            label = clean_label(ann.label)
            if ann.crowd or not label or label in SKIPPED_CATEGORIES:
                continue
            try:
                full = ann.mask((height, width))
            except (ValueError, TypeError, KeyError) as exc:
                raise UserError(f"{image.file_name}, annotation {number}: {exc}", path=self.path) from exc
            mask = full
            if full.shape != size:
                small = Image.fromarray(full.astype(np.uint8) * 255).resize(
                    (size[1], size[0]), Image.Resampling.NEAREST
                )
                mask = np.asarray(small) > 127
            given = "" if ann.text == f"a {ann.label}" else ann.text  # the reader's stand-in is no text
            inst = Instance.from_full_mask(len(found) + 1, label, given, mask, source="sidecar")
            if inst.area:
                found.append(inst)
        return found


class CocoFinder:
    """``build_dataset``'s instance finder reading an annotation file instead of running a detector."""

    def __init__(self, annotations: CocoAnnotations) -> None:
        self.annotations = annotations

    def __call__(self, scan: Scan) -> list[Instance]:
        return self.annotations.instances(scan.source, scan.relpath, scan.size)
