"""Turn raw instances (auto + sidecar) into the final, exclusive, stably numbered set.

The model's attention masks need every pixel to belong to at most one instance, the instance
count bounds attention cost, and ids must be the same on every run of the same file (they appear
in provenance, ``hints show`` and the template sidecar), so all of that is settled here, once,
with deterministic rules:

1. a sidecar instance beats an auto one: an auto instance goes when it duplicates a sidecar
   instance (mask IoU >= ``merge_iou``) or is the same kind of thing as one it overlaps (same
   label, and half of the smaller mask shared or box IoU >= 0.5: the hint is about that
   detection); sidecar pixels are never given to an auto instance;
2. auto duplicates (mask IoU >= ``merge_iou``) merge into the higher-scoring one;
3. autos under ``min_area`` (fraction of the image) go; sidecar instances are never dropped
   for size or count (a user asked for them), only when nothing of them is left;
4. autos are capped to ``max_instances`` minus the sidecar count, highest scores kept;
5. exclusive pixels: sidecar before auto, then smaller before larger (a hat inside a person
   keeps its pixels; the person keeps the rest);
6. ids 1..N in reading order (top, left, then label), and ``id`` == slot in :func:`label_map`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.types import Box, Instance, box_from_mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def box_iou(a: Box, b: Box) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive ends."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _union_box(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


@dataclass
class _Item:
    """An instance with its mask's tight box and area, so pair tests only look at the overlap.

    On a 100 MP scan a full-image test per pair of instances is what makes cleanup slow; the tight
    box (not ``inst.box``, which for a detection is the prompt box and need not bound the mask)
    limits every comparison to the pixels that can overlap.
    """

    inst: Instance
    tight: Box
    area: int

    @classmethod
    def of(cls, inst: Instance, mask: np.ndarray) -> _Item | None:
        tight = box_from_mask(mask)
        if tight is None:
            return None
        x0, y0, x1, y1 = tight
        area = int(np.count_nonzero(mask[y0:y1, x0:x1]))
        return cls(replace(inst, mask=mask), tight, area)


def _overlap(a: _Item, b: _Item) -> int:
    """Pixels two items share, counted only inside the intersection of their tight boxes."""
    x0, y0 = max(a.tight[0], b.tight[0]), max(a.tight[1], b.tight[1])
    x1, y1 = min(a.tight[2], b.tight[2]), min(a.tight[3], b.tight[3])
    if x0 >= x1 or y0 >= y1:
        return 0
    return int(np.count_nonzero(a.inst.mask[y0:y1, x0:x1] & b.inst.mask[y0:y1, x0:x1]))


def _iou(a: _Item, b: _Item, inter: int | None = None) -> float:
    inter = _overlap(a, b) if inter is None else inter
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def _paint_key(source: str, area: int, box: Box, label: str, i: int) -> tuple:
    """Claim order: sidecar first, then smaller first; ties by position and label."""
    return (0 if source == "sidecar" else 1, area, box, label, i)


def _paint_order(instances: Sequence[Instance]) -> list[int]:
    def key(i: int) -> tuple:
        inst = instances[i]
        return _paint_key(inst.source, inst.area, inst.box, inst.label, i)

    return sorted(range(len(instances)), key=key)


def _overridden(auto: _Item, hint: _Item, merge_iou: float) -> bool:
    """True when a sidecar instance speaks for this auto instance (see rule 1)."""
    inter = _overlap(auto, hint)
    if inter == 0:
        return False
    if auto.inst.label.strip().lower() == hint.inst.label.strip().lower():
        # A hint copied from `hints init` carries the detection's box: SAM's mask for it can differ
        # from the detection's own, but the boxes still say it is the same thing.
        return inter >= 0.5 * min(auto.area, hint.area) or box_iou(auto.inst.box, hint.inst.box) >= 0.5
    return _iou(auto, hint, inter) >= merge_iou


def _merge_autos(autos: list[_Item], merge_iou: float) -> list[_Item]:
    autos = sorted(autos, key=lambda x: (-x.inst.score, x.inst.box, x.inst.label))
    kept: list[_Item] = []
    for item in autos:
        for j, other in enumerate(kept):
            if _iou(item, other) >= merge_iou:
                merged = replace(other.inst, box=_union_box(other.inst.box, item.inst.box))
                union = _Item.of(merged, other.inst.mask | item.inst.mask)
                assert union is not None
                kept[j] = union
                break
        else:
            kept.append(item)
    return kept


def finalize(
    instances: Sequence[Instance],
    scan_size: tuple[int, int],
    settings: PerceptionSettings,
    warnings: list[str] | None = None,
) -> list[Instance]:
    """Merge, drop, cap, make exclusive and number ``instances`` (see the module doc for the rules).

    Masks must be bool at ``scan_size`` (h, w). Inputs are not modified. When ``warnings`` is a
    list, a line is appended for each sidecar instance that ends up with no pixels.
    """
    h, w = scan_size
    for inst in instances:
        if inst.mask.shape != (h, w):
            raise ValueError(f"instance '{inst.label}' mask is {inst.mask.shape}, scan is {(h, w)}")
    min_px = max(settings.min_area * h * w, 1)
    sidecar: list[_Item] = []
    autos: list[_Item] = []
    for inst in instances:
        item = _Item.of(inst, inst.mask.astype(bool, copy=True))
        if item is None:
            if inst.source == "sidecar" and warnings is not None:
                warnings.append(f"hint '{inst.label}' has no pixels; ignored")
            continue
        (sidecar if inst.source == "sidecar" else autos).append(item)

    autos = [a for a in autos if not any(_overridden(a, s, settings.merge_iou) for s in sidecar)]
    autos = _merge_autos(autos, settings.merge_iou)
    autos = [a for a in autos if a.area >= min_px]
    room = max(0, settings.max_instances - len(sidecar))
    autos = sorted(autos, key=lambda x: (-x.inst.score, x.inst.box, x.inst.label))[:room]

    pool = sidecar + autos
    order = sorted(
        range(len(pool)),
        key=lambda i: _paint_key(pool[i].inst.source, pool[i].area, pool[i].inst.box, pool[i].inst.label, i),
    )
    owner = np.zeros((h, w), dtype=np.int32)  # 0 = free, k = pool index + 1
    for i in order:
        x0, y0, x1, y1 = pool[i].tight
        region = owner[y0:y1, x0:x1]  # a view: writes land in owner
        region[pool[i].inst.mask[y0:y1, x0:x1] & (region == 0)] = i + 1
    final: list[Instance] = []
    for i, item in enumerate(pool):
        x0, y0, x1, y1 = item.tight
        mask = np.zeros((h, w), dtype=bool)
        mask[y0:y1, x0:x1] = owner[y0:y1, x0:x1] == i + 1
        kept = _Item.of(item.inst, mask)
        if kept is None or (item.inst.source != "sidecar" and kept.area < min_px):
            if kept is None and item.inst.source == "sidecar" and warnings is not None:
                warnings.append(f"hint '{item.inst.label}' has no pixels left after overlaps; ignored")
            continue
        final.append(replace(kept.inst, box=kept.tight))

    final.sort(key=lambda x: (x.box[1], x.box[0], x.box[3], x.box[2], x.label, x.source, x.text))
    return [replace(inst, id=k) for k, inst in enumerate(final, start=1)]


def label_map(instances: Sequence[Instance], size: tuple[int, int]) -> np.ndarray:
    """int32 (h, w): 0 = background, k = the k-th instance (1-based list position).

    After :func:`finalize` the masks are already exclusive and ``id`` equals the position; for
    other inputs overlaps are settled with the same claim order as ``finalize``.
    """
    h, w = size
    out = np.zeros((h, w), dtype=np.int32)
    for i in _paint_order(instances):
        mask = instances[i].mask
        if mask.shape != (h, w):
            raise ValueError(f"instance '{instances[i].label}' mask is {mask.shape}, expected {(h, w)}")
        out[mask & (out == 0)] = i + 1
    return out


def _nearest_index(src: int, dst: int) -> np.ndarray:
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def resize_instances(instances: Sequence[Instance], size: tuple[int, int]) -> list[Instance]:
    """Masks resampled nearest to ``size`` (h, w), boxes scaled outward; same order, same ids.

    One sampling grid for every mask keeps exclusive masks exclusive. An instance smaller than a
    working pixel may come out empty; it is kept so ids and per-instance stats still line up.
    """
    if not instances:
        return []
    h, w = size
    src_h, src_w = instances[0].mask.shape
    rows, cols = _nearest_index(src_h, h), _nearest_index(src_w, w)
    sx, sy = w / src_w, h / src_h
    out: list[Instance] = []
    for inst in instances:
        if inst.mask.shape != (src_h, src_w):
            raise ValueError("all instances must share one mask size")
        x0, y0, x1, y1 = inst.box
        nx0, ny0 = min(w - 1, max(0, math.floor(x0 * sx))), min(h - 1, max(0, math.floor(y0 * sy)))
        nx1, ny1 = max(nx0 + 1, min(w, math.ceil(x1 * sx))), max(ny0 + 1, min(h, math.ceil(y1 * sy)))
        out.append(replace(inst, mask=inst.mask[rows][:, cols], box=(nx0, ny0, nx1, ny1)))
    return out
