"""Instance masks in provenance records: COCO run-length encoding, at most 1024 px on the long side.

Why record masks at all: the paper's CLIP score crops each instance by its mask (background filled
neutral), and a box crop mixes in the neighbours' colours. Why COCO RLE through pycocotools: it is
the format every segmentation tool reads, and the compressed string of a blob-like mask is a few
hundred bytes. Masks of very large scans are recorded downscaled (nearest) so a record stays small;
:func:`decode_mask` scales them back to whatever image they are used on.

An instance's mask is recorded over its box (:func:`encode_region`: ``box`` and ``image`` = the
scan's [h, w] ride in the same dict), so encoding costs the box, not the scan; records written
before that hold a full-image RLE without ``box``, and :func:`decode_mask` reads both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

RECORD_LONG_SIDE = 1024
"""Masks larger than this on their long side are recorded downscaled to it."""


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (h, w)."""
    if mask.shape == size:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 127


def encode_mask(mask: np.ndarray, long_side: int = RECORD_LONG_SIDE) -> dict[str, Any]:
    """``{"size": [h, w], "counts": "<compressed COCO RLE>"}`` of a bool HxW mask (JSON-ready)."""
    from pycocotools import mask as coco_mask

    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    scale = min(1.0, long_side / max(h, w))
    if scale < 1.0:
        m = _resize_mask(m, (max(1, round(h * scale)), max(1, round(w * scale))))
    rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = rle["counts"]
    text = counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
    return {"size": [int(v) for v in rle["size"]], "counts": text}


def encode_region(
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    image_size: tuple[int, int],
    long_side: int = RECORD_LONG_SIDE,
) -> dict[str, Any]:
    """:func:`encode_mask` of a mask cropped to ``box`` (x0, y0, x1, y1) of an ``image_size`` (h, w) image."""
    rle = encode_mask(mask, long_side)
    rle["box"] = [int(v) for v in box]
    rle["image"] = [int(v) for v in image_size]
    return rle


def _paste(crop: np.ndarray, rle: dict[str, Any], size: tuple[int, int] | None) -> np.ndarray:
    """A box-recorded crop placed on its image, rescaled to ``size`` (h, w) when given."""
    try:
        x0, y0, x1, y1 = (int(v) for v in rle["box"])
        ih, iw = (int(v) for v in rle["image"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("a box-recorded mask needs 'box' [x0, y0, x1, y1] and 'image' [h, w]") from None
    if not (0 <= x0 <= x1 <= iw and 0 <= y0 <= y1 <= ih):
        raise ValueError(f"mask box {[x0, y0, x1, y1]} is outside its {iw}x{ih} image")
    h, w = size if size is not None else (ih, iw)
    tx0, tx1 = round(x0 * w / iw), round(x1 * w / iw)
    ty0, ty1 = round(y0 * h / ih), round(y1 * h / ih)
    out = np.zeros((h, w), dtype=bool)
    if tx1 > tx0 and ty1 > ty0 and crop.size:
        out[ty0:ty1, tx0:tx1] = _resize_mask(crop, (ty1 - ty0, tx1 - tx0))
    return out


def decode_mask(rle: dict[str, Any], size: tuple[int, int] | None = None) -> np.ndarray:
    """A recorded (or COCO) RLE back to a bool mask, resized (nearest) to ``size`` = (h, w) if given.

    Accepts compressed (string) and uncompressed (list) counts; raises ValueError on anything else.
    A box-recorded mask (:func:`encode_region`) comes back on its whole image (or ``size``).
    """
    from pycocotools import mask as coco_mask

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("not a run-length encoded mask (needs 'size' and 'counts')")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != h * w:
            raise ValueError(f"RLE counts do not add up to {h}x{w}")
        obj = coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        obj = {"size": [h, w], "counts": counts.encode("ascii")}
    else:
        raise ValueError("RLE counts must be a string or a list of integers")
    m = np.asarray(coco_mask.decode(obj), dtype=bool)
    if "box" in rle:
        return _paste(m, rle, size)
    return _resize_mask(m, size) if size is not None else m
