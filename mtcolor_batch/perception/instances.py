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

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.types import Box, Instance, box_from_mask, check_box_inside


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


def _intersection(a: Box, b: Box) -> Box | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _part(inst: Instance, window: Box) -> np.ndarray:
    """A view of ``inst.mask`` over ``window``, which must lie inside ``inst.box``."""
    x0, y0 = inst.box[0], inst.box[1]
    return inst.mask[window[1] - y0 : window[3] - y0, window[0] - x0 : window[2] - x0]


@dataclass
class _Item:
    """An instance cropped to its mask's tight box (``inst.box``), with its area.

    Every pair test looks only at the overlap of two tight boxes, so cleanup costs the instances'
    boxes, never the scan's size per instance. The box that matching and ordering compare (a
    detection's prompt box, which need not bound the mask) rides along as ``inst.prompt_box``.
    """

    inst: Instance
    area: int

    @property
    def tight(self) -> Box:
        return self.inst.box

    @classmethod
    def of(cls, inst: Instance) -> _Item | None:
        local = box_from_mask(inst.mask)
        if local is None:
            return None
        lx0, ly0, lx1, ly1 = local
        x0, y0 = inst.box[0], inst.box[1]
        crop = inst.mask[ly0:ly1, lx0:lx1]
        tight = (x0 + lx0, y0 + ly0, x0 + lx1, y0 + ly1)
        item = replace(inst, mask=crop, box=tight, prompt_box=inst.match_box)
        return cls(item, int(np.count_nonzero(crop)))


def _overlap(a: _Item, b: _Item) -> int:
    """Pixels two items share, counted only inside the intersection of their tight boxes."""
    both = _intersection(a.tight, b.tight)
    if both is None:
        return 0
    return int(np.count_nonzero(_part(a.inst, both) & _part(b.inst, both)))


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
        return _paint_key(inst.source, inst.area, inst.match_box, inst.label, i)

    return sorted(range(len(instances)), key=key)


def _ref(item: _Item) -> Box:
    return item.inst.match_box


def _overridden(auto: _Item, hint: _Item, merge_iou: float) -> bool:
    """True when a sidecar instance speaks for this auto instance (see rule 1)."""
    inter = _overlap(auto, hint)
    if inter == 0:
        return False
    if auto.inst.label.strip().lower() == hint.inst.label.strip().lower():
        # A hint copied from `hints init` carries the detection's box: SAM's mask for it can differ
        # from the detection's own, but the boxes still say it is the same thing.
        return inter >= 0.5 * min(auto.area, hint.area) or box_iou(_ref(auto), _ref(hint)) >= 0.5
    return _iou(auto, hint, inter) >= merge_iou


def _union(a: _Item, b: _Item) -> _Item:
    """``a`` grown by ``b``'s pixels (a merged duplicate); the reference boxes are united too."""
    box = _union_box(a.tight, b.tight)
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for part in (a.inst, b.inst):
        px0, py0, px1, py1 = part.box
        mask[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] |= part.mask
    merged = _Item.of(replace(a.inst, mask=mask, box=box, prompt_box=_union_box(_ref(a), _ref(b))))
    assert merged is not None
    return merged


def _merge_autos(autos: list[_Item], merge_iou: float) -> list[_Item]:
    autos = sorted(autos, key=lambda x: (-x.inst.score, _ref(x), x.inst.label))
    kept: list[_Item] = []
    for item in autos:
        for j, other in enumerate(kept):
            if _iou(item, other) >= merge_iou:
                kept[j] = _union(other, item)
                break
        else:
            kept.append(item)
    return kept


def _exclusive(pool: Sequence[_Item], order: Sequence[int]) -> list[np.ndarray]:
    """Each item's crop minus the pixels of every item before it in ``order`` (claim order).

    What a scan-sized owner map would give, computed box against box: only pairs whose tight
    boxes meet touch any pixel.
    """
    boxes = np.array([item.tight for item in pool], dtype=np.int64).reshape(-1, 4)
    claimed: list[np.ndarray] = [np.zeros((0, 0), dtype=bool)] * len(pool)
    done = np.zeros(len(pool), dtype=bool)
    for i in order:
        a = pool[i]
        x0, y0, x1, y1 = a.tight
        meets = done & (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
        mask = a.inst.mask.copy() if meets.any() else a.inst.mask  # the input is never written to
        for j in np.flatnonzero(meets).tolist():
            both = _intersection(a.tight, pool[j].tight)
            assert both is not None
            bx0, by0, bx1, by1 = both
            mask[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] &= ~_part(pool[j].inst, both)
        claimed[i] = mask
        done[i] = True
    return claimed


def finalize(
    instances: Sequence[Instance],
    scan_size: tuple[int, int],
    settings: PerceptionSettings,
    warnings: list[str] | None = None,
) -> list[Instance]:
    """Merge, drop, cap, make exclusive and number ``instances`` (see the module doc for the rules).

    Boxes must lie inside ``scan_size`` (h, w). Inputs are not modified. When ``warnings`` is a
    list, a line is appended for each sidecar instance that ends up with no pixels. The results
    hold their tight box and the mask cropped to it.
    """
    h, w = scan_size
    for inst in instances:
        check_box_inside(inst, scan_size)
    min_px = max(settings.min_area * h * w, 1)
    sidecar: list[_Item] = []
    autos: list[_Item] = []
    for inst in instances:
        item = _Item.of(inst)
        if item is None:
            if inst.source == "sidecar" and warnings is not None:
                warnings.append(f"hint '{inst.label}' has no pixels; ignored")
            continue
        (sidecar if inst.source == "sidecar" else autos).append(item)

    autos = [a for a in autos if not any(_overridden(a, s, settings.merge_iou) for s in sidecar)]
    autos = _merge_autos(autos, settings.merge_iou)
    autos = [a for a in autos if a.area >= min_px]
    room = max(0, settings.max_instances - len(sidecar))
    autos = sorted(autos, key=lambda x: (-x.inst.score, _ref(x), x.inst.label))[:room]

    pool = sidecar + autos
    order = sorted(
        range(len(pool)),
        key=lambda i: _paint_key(pool[i].inst.source, pool[i].area, _ref(pool[i]), pool[i].inst.label, i),
    )
    claimed = _exclusive(pool, order)
    final: list[Instance] = []
    for item, mask in zip(pool, claimed, strict=True):
        kept = _Item.of(replace(item.inst, mask=mask))
        if kept is None or (item.inst.source != "sidecar" and kept.area < min_px):
            if kept is None and item.inst.source == "sidecar" and warnings is not None:
                warnings.append(f"hint '{item.inst.label}' has no pixels left after overlaps; ignored")
            continue
        final.append(replace(kept.inst, prompt_box=None))

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
        inst = instances[i]
        check_box_inside(inst, size)
        x0, y0, x1, y1 = inst.box
        region = out[y0:y1, x0:x1]  # a view: writes land in out
        region[inst.mask & (region == 0)] = i + 1
    return out


def resize_instances(
    instances: Sequence[Instance], src_size: tuple[int, int], size: tuple[int, int]
) -> list[Instance]:
    """Instances of an ``src_size`` image resampled nearest to ``size`` (h, w); same order, same ids.

    One sampling grid for every mask keeps exclusive masks exclusive (see
    :meth:`~mtcolor_batch.core.types.Instance.resized`). An instance smaller than a working pixel
    may come out empty; it is kept so ids and per-instance stats still line up.
    """
    return [inst.resized(src_size, size) for inst in instances]
