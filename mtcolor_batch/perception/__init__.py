"""Perception: find the things in a scan (auto instances) and segment prompts with SAM.

``perceive`` is the Grounded-SAM recipe: a tagger gives labelled boxes (OWLv2 over the archival
vocabulary, or RAM tags grounded by OWLv2), SAM turns each box into a mask at scan resolution.
Sidecar hints reuse the same :class:`~mtcolor_batch.perception.segmenter.Segmenter` (and its
cached image embedding) through ``hints.resolve``; ``instances.finalize`` then settles overlaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.types import Box, Instance, Scan
from mtcolor_batch.perception.models import Perception, load_perception
from mtcolor_batch.perception.segmenter import Segmenter, luma_to_rgb_image
from mtcolor_batch.perception.tagger import (
    Detection,
    detect,
    find_ram_checkpoint,
    load_ram_tagger,
    load_vocabulary,
    ram_available,
    require_ram,
)

__all__ = ["Perception", "Segmenter", "load_perception", "perceive", "detections_to_scan_boxes"]


def _queries(perception: Perception, settings: PerceptionSettings, image: object) -> list[str]:
    """What to ask the detector for: RAM's tags if chosen (or auto and usable), else the vocabulary."""
    has_ram = find_ram_checkpoint(perception.bundle_dir) is not None
    use_ram = settings.tagger == "ram" or (settings.tagger == "auto" and has_ram and ram_available())
    if not use_ram:
        return load_vocabulary()
    if perception.ram_tagger is None:
        perception.ram_tagger = load_ram_tagger(perception.bundle_dir, perception.device)
    return perception.ram_tagger.tags(image)  # type: ignore[attr-defined]


def detections_to_scan_boxes(
    detections: Sequence[Detection], image_size: tuple[int, int], scan_size: tuple[int, int]
) -> list[Box]:
    """Detector boxes (float, detector-image px; size as (w, h)) -> int scan boxes, grown outward."""
    (iw, ih), (sh, sw) = image_size, scan_size
    fx, fy = sw / iw, sh / ih
    boxes: list[Box] = []
    for d in detections:
        x0, y0, x1, y1 = d.box
        bx0, by0 = max(0, math.floor(x0 * fx)), max(0, math.floor(y0 * fy))
        bx1, by1 = min(sw, math.ceil(x1 * fx)), min(sh, math.ceil(y1 * fy))
        boxes.append((bx0, by0, max(bx0 + 1, bx1), max(by0 + 1, by1)))
    return boxes


def perceive(
    scan: Scan,
    perception: Perception | None,
    settings: PerceptionSettings,
    exclude: Sequence[str] = (),
    extra_queries: Sequence[str] = (),
    room: int | None = None,
) -> list[Instance]:
    """Auto instances of one scan, masks at scan resolution; ``[]`` when switched off or impossible.

    ``room`` is how many auto instances could still be kept (``None``: unknown). At 0 nothing is
    detected: a sidecar whose drawn regions already fill ``max_instances`` leaves no slot an auto
    instance could take, and detection (OWLv2 at 960 px) is about 11 s of a 50 s ``cpu``-profile
    scan on 2 CPU cores (docs/few-step.md).

    ``exclude`` (the hints' ``exclude:`` lists) removes labels before detection, so an excluded
    thing costs nothing. ``extra_queries`` (labels folder rules name) are asked for as well, so a
    rule's "tram" is looked for even where the vocabulary or RAM's tags would not.
    Ids here are provisional: ``instances.finalize`` renumbers.
    A tagger of ``ram`` that cannot load raises :class:`~mtcolor_batch.core.errors.UserError`.
    """
    if settings.auto_instances and settings.tagger == "ram":
        require_ram()  # asked for by name: its absence is an error even when nothing else would run
    if perception is None:
        return []
    if not settings.auto_instances or settings.max_instances == 0 or not perception.can_auto_segment:
        return []
    if room is not None and room <= 0:
        return []
    assert perception.detector is not None and perception.segmenter is not None
    image = luma_to_rgb_image(scan.luma, settings.size)
    excluded = {e.strip().lower() for e in exclude}
    queries = [q for q in _queries(perception, settings, image) if q not in excluded]
    asked = {q.strip().lower() for q in queries}
    for extra in extra_queries:
        key = extra.strip().lower()
        if key and key not in asked and key not in excluded:
            queries.append(extra.strip())
            asked.add(key)
    detections = detect(
        perception.detector,
        image,
        queries,
        threshold=settings.box_threshold,
        max_detections=max(16, 4 * settings.max_instances),
    )
    boxes = detections_to_scan_boxes(detections, image.size, scan.size)
    # one image-sized mask at a time, cropped to its box at once
    masks = perception.segmenter.iter_boxes_scored(scan.luma, boxes, long_side=settings.size)
    instances: list[Instance] = []
    for det, box, (mask, _sam_score) in zip(detections, boxes, masks, strict=True):
        inst = Instance.from_full_mask(
            len(instances) + 1, det.label, det.label, mask, source="auto", score=det.score, prompt_box=box
        )
        if inst.area:
            instances.append(inst)
    return instances
