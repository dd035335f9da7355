"""Turn a validated sidecar into instances: regions at scan resolution with colour and text.

Why every form ends as a plain bool mask: the sampler, the adherence step and provenance only ever
see :class:`~mtcolor_batch.core.types.Instance`, so a label hint, a SAM box prompt, a polygon and a
hand-painted mask file are treated identically downstream. Why warnings instead of silent drops: an
archivist must be able to see, in the run summary and the provenance record, that a hint did not
apply (no tram was detected, no segmenter for clicks) rather than find an uncoloured tram later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from skimage.draw import polygon as draw_polygon

from mtcolor_batch.core.config import HintSettings
from mtcolor_batch.core.errors import HintError, path_text
from mtcolor_batch.core.types import Box, ColorHint, Instance, Scan, box_from_mask
from mtcolor_batch.hints.colors import describe
from mtcolor_batch.hints.folder_rules import (
    NO_FOLDER_RULES,
    FolderChain,
    label_colour,
    needs_colour,
    no_colour_error,
    norm_label,
)
from mtcolor_batch.hints.mask_files import load_mask_file, resolve_mask_path
from mtcolor_batch.hints.schema import InstanceHint, Sidecar, mask_error
from mtcolor_batch.scan.sidecars import shadowed_sidecar

__all__ = [
    "effective_exclude",
    "PromptSegmenter",
    "ResolvedHints",
    "resolve_hints",
]

DEFAULT_LABEL = "object"
"""Label of a drawn region (box/points/polygon/mask) when the hint names none."""


@runtime_checkable
class PromptSegmenter(Protocol):
    """What resolve needs from a segmenter (perception.segmenter.Segmenter satisfies it).

    Coordinates are (x, y) pixels of ``luma``; masks come back bool at ``luma``'s shape.
    """

    def segment_boxes(self, luma: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]: ...

    def segment_points(
        self, luma: np.ndarray, points: Sequence[tuple[float, float]], labels: Sequence[int] | None = None
    ) -> tuple[np.ndarray, float]: ...


@dataclass
class ResolvedHints:
    """Auto instances (minus excluded, label hints applied) + drawn regions, and what went unmatched."""

    instances: list[Instance]
    prompt: str | None
    seed: int | None
    warnings: list[str] = field(default_factory=list)
    sidecar_sha256: str | None = None
    exclude: list[str] = field(default_factory=list)
    negative_prompt: str | None = None  # the nearest folder rules file's, if any
    folder_files: dict[str, str] = field(default_factory=dict)  # applying rules files: {relpath: sha256}


NO_SEGMENTER_NOTE = "no segmentation model, so the whole box is used as the region"
"""The note of a box hint drawn without a segmenter (one per hint; the instances stage counts them)."""


def _where(sidecar_path: Path | None, hint: InstanceHint) -> str:
    name = sidecar_path.name if sidecar_path is not None else "sidecar"
    return f"{name}:{hint.line} (instance {hint.position})"


def _fail(sidecar_path: Path | None, hint: InstanceHint, message: str, fix: str) -> HintError:
    return HintError(
        f"instance {hint.position}: {message}",
        path=sidecar_path,
        line=hint.line,
        column=hint.column,
        hint=fix,
    )


# -- regions ----------------------------------------------------------------------------------------------


def _box_pixels(box: Sequence[float], size: tuple[int, int]) -> Box:
    """Float box -> integer pixel box covering it, clipped to the image."""
    h, w = size
    x0, y0, x1, y1 = box
    return (
        max(0, math.floor(x0)),
        max(0, math.floor(y0)),
        min(w, math.ceil(x1)),
        min(h, math.ceil(y1)),
    )


def _box_region(box: Box) -> tuple[np.ndarray, Box]:
    x0, y0, x1, y1 = box
    return np.ones((y1 - y0, x1 - x0), dtype=bool), box


def _tight(mask: np.ndarray) -> tuple[np.ndarray, Box] | None:
    """An image-sized mask from a segmenter or a mask file, cropped to its tight box (None if empty)."""
    box = box_from_mask(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return np.array(mask[y0:y1, x0:x1], dtype=bool), box


def _tight_in_box(mask: np.ndarray, box: Box) -> tuple[np.ndarray, Box] | None:
    """The part of an image-sized mask inside ``box``, cropped to its tight box (None if empty)."""
    x0, y0, x1, y1 = box
    found = _tight(mask[y0:y1, x0:x1])
    if found is None:
        return None
    crop, (cx0, cy0, cx1, cy1) = found
    return crop, (x0 + cx0, y0 + cy0, x0 + cx1, y0 + cy1)


def _polygon_region(
    points: Sequence[Sequence[float]], size: tuple[int, int]
) -> tuple[np.ndarray, Box] | None:
    """Pixels whose centres lie inside the polygon (skimage.draw.polygon), clipped to the image.

    skimage gives the covered pixels' coordinates, so the region is built at its own box's size.
    """
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    rr, cc = draw_polygon(ys, xs, shape=size)
    if rr.size == 0:
        return None
    x0, y0, x1, y1 = int(cc.min()), int(rr.min()), int(cc.max()) + 1, int(rr.max()) + 1
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    mask[rr - y0, cc - x0] = True
    return mask, (x0, y0, x1, y1)


def _check_bounds(hint: InstanceHint, size: tuple[int, int], sidecar_path: Path | None) -> None:
    h, w = size
    fix = f"the upright scan is {w} px wide and {h} px high; x runs 0..{w}, y runs 0..{h}"
    if hint.box is not None:
        x0, y0, x1, y1 = hint.box
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise _fail(sidecar_path, hint, f"box {list(hint.box)} goes outside the {w}x{h} scan", fix)
    for x, y in hint.points or []:
        if not (0 <= x < w and 0 <= y < h):
            raise _fail(sidecar_path, hint, f"point [{x:g}, {y:g}] is outside the {w}x{h} scan", fix)
    for x, y in hint.polygon or []:
        if not (0 <= x <= w and 0 <= y <= h):
            raise _fail(sidecar_path, hint, f"polygon corner [{x:g}, {y:g}] is outside the {w}x{h} scan", fix)


def _region(
    hint: InstanceHint,
    scan: Scan,
    segmenter: PromptSegmenter | None,
    sidecar_path: Path | None,
    scan_root: Path,
    notes: list[str],
) -> tuple[tuple[np.ndarray, Box] | None, float]:
    """(mask cropped to its box, box) and score of a drawn region; None (with a note) when it cannot apply.

    Segmenter and mask-file results are image-sized for a moment, one hint at a time; what is kept
    is the crop.
    """
    size = scan.luma.shape
    where = _where(sidecar_path, hint)
    if hint.box is not None:
        box = _box_pixels(hint.box, size)
        if segmenter is None:
            notes.append(f"{where}: {NO_SEGMENTER_NOTE}")
            return _box_region(box), 1.0
        # The drawn box is the user's bound: SAM's mask may spill past it (a tram's shadow, the kerb),
        # so only the part inside the box is kept.
        found = _tight_in_box(np.asarray(segmenter.segment_boxes(scan.luma, [box])[0], dtype=bool), box)
        if found is None:
            notes.append(f"{where}: the segmenter found nothing in the box; the whole box is used")
            return _box_region(box), 1.0
        return found, 1.0
    if hint.points is not None:
        if segmenter is None:
            notes.append(
                f"{where}: points need the segmentation model (the model bundle has none); hint not applied "
                "- use a box, polygon or mask instead"
            )
            return None, 0.0
        pts = [(float(x), float(y)) for x, y in hint.points]
        mask, score = segmenter.segment_points(scan.luma, pts)
        found = _tight(np.asarray(mask, dtype=bool))
        if found is None:
            notes.append(f"{where}: the segmenter found nothing at the clicked points; hint not applied")
            return None, 0.0
        return found, float(score)
    if hint.polygon is not None:
        found = _polygon_region(hint.polygon, size)
        if found is None:
            notes.append(f"{where}: the polygon covers no pixel centre; hint not applied")
            return None, 0.0
        return found, 1.0
    if hint.mask is not None:
        if sidecar_path is None:
            raise _fail(
                sidecar_path, hint, "a mask file needs the sidecar's location", "pass the sidecar path"
            )
        try:
            real = resolve_mask_path(hint.mask, sidecar_path, scan_root)
            found = _tight(load_mask_file(real, size, sidecar_path, hint.mask))
        except HintError as exc:
            raise mask_error(hint, sidecar_path, exc) from None
        if found is None:
            notes.append(f"{where}: mask '{hint.mask}' is empty (no white pixels); hint not applied")
            return None, 0.0
        return found, 1.0
    raise AssertionError("label hints are bound, not drawn")  # pragma: no cover


WORN_BY = frozenset(
    {
        "man", "woman", "person", "boy", "girl", "child", "baby", "kid", "lady", "gentleman",
        "soldier", "sailor", "officer", "policeman", "worker", "nurse", "bride", "groom", "priest",
        "nun", "student", "teacher", "player", "rider", "farmer", "fisherman",
    }
)  # fmt: skip
"""Labels whose colour is what they wear: "a navy man" reads wrong, "a man in navy" right."""
WORN_BY_PLURAL = frozenset(
    {"people", "men", "women", "children", "boys", "girls", "soldiers", "sailors", "workers", "crowd"}
)


def hint_text(color: ColorHint | None, text: str | None, label: str) -> str:
    """The archivist's own text, else the colour and label as one phrase (docs/hints-texts.md):
    'a {color} {label}' as in the MT-Color paper ("a navy coat"), but for people, whose colour is
    their clothes, '{label} in {color}' ("a man in navy", "people in red")."""
    if text:
        return text
    assert color is not None  # schema: color and/or text
    words = describe(color)
    head = label.lower().split()[-1] if label.split() else ""
    if head in WORN_BY_PLURAL:
        return f"{label} in {words}"
    if head in WORN_BY:
        article = "an" if label[:1].lower() in "aeiou" else "a"
        return f"{article} {label} in {words}"
    return f"a {words} {label}"


def default_text(hint: InstanceHint, label: str) -> str:
    """A hint's instance text (:func:`hint_text` of its colour and text)."""
    return hint_text(hint.color_hint, hint.text, label)


def _origin(sidecar_path: Path | None, scan_root: Path, hint: InstanceHint) -> str:
    """``<sidecar path relative to the scan root>:<line>``: the record's answer to "whose colour"."""
    if sidecar_path is None:
        return f"sidecar:{hint.line}"
    try:
        name = sidecar_path.relative_to(scan_root).as_posix()
    except ValueError:
        name = sidecar_path.name
    return f"{path_text(name)}:{hint.line}"


def _bind(kept: list[Instance], key: str, index: int | None) -> list[int]:
    """Positions in ``kept`` of the detected instances with this label (``index``: the k-th from the
    left, ties top first); [] when there are none or fewer than ``index``."""
    matches = sorted(
        (k for k, a in enumerate(kept) if norm_label(a.label) == key),
        key=lambda k: (kept[k].match_box[0], kept[k].match_box[1], kept[k].id),
    )
    if index is not None:
        return [matches[index - 1]] if index <= len(matches) else []
    return matches


def effective_exclude(sidecar: Sidecar | None, chain: FolderChain) -> set[str]:
    """Labels not used as instances: the folder chain's, less those the sidecar gives a label hint
    (the sidecar wins), plus the sidecar's own ``exclude`` (normalised labels)."""
    hints = sidecar.instances if sidecar is not None else []
    own_labels = {norm_label(h.label or "") for h in hints if h.region == "label"}
    own_exclude = {norm_label(x) for x in (sidecar.exclude if sidecar is not None else [])}
    return (chain.exclude - own_labels) | own_exclude


def resolve_hints(
    sidecar: Sidecar | None,
    sidecar_path: Path | None,
    scan: Scan,
    autos: Sequence[Instance],
    segmenter: PromptSegmenter | None,
    scan_root: Path,
    settings: HintSettings | None = None,
    folder: FolderChain | None = None,
) -> ResolvedHints:
    """Apply the folder rules and then the sidecar to one scan's auto instances.

    - ``exclude`` removes auto instances with those labels (case-insensitive): the folder chain's
      (minus labels the sidecar gives a label hint: the sidecar wins) plus the sidecar's own;
    - a label hint binds to every auto instance of that label, or with ``index: k`` to the k-th
      from the left (ties: top first); the bound instance keeps its mask and id, becomes
      ``source="sidecar"`` and takes the hint's colour and text;
    - a folder rule binds the same way, for labels the sidecar gives no label hint, to instances no
      sidecar hint coloured; a rule that finds nothing is silent (it speaks for many scans, most of
      which hold no tram);
    - box/points go to ``segmenter`` (box alone without one: the box itself, with a warning); a box's
      mask is clipped to the box, which is the user's bound;
      polygon and mask file give exact regions; a drawn region with a ``label`` and no colour or
      text takes the folder rule's for that label (no rule: :class:`HintError` at its line);
    - each hinted instance's ``hint_from`` says where its colour is written (file:line);
    - a sidecar hint that applies to nothing adds a warning (it is never dropped silently);
    - coordinates outside the scan and unsafe or mis-sized mask files raise :class:`HintError`
      with the sidecar line, which fails this file only.

    ``settings`` is accepted for symmetry with the other stages; resolution has no knobs yet.
    """
    del settings
    autos = list(autos)
    chain = folder or NO_FOLDER_RULES
    if sidecar is None and not chain.files:
        return ResolvedHints(instances=autos, prompt=None, seed=None)
    hints = sidecar.instances if sidecar is not None else []
    notes: list[str] = []
    source = getattr(scan, "source", None)
    if sidecar is not None and source is not None:
        other = shadowed_sidecar(Path(source))
        if other is not None:
            used = sidecar_path.name if sidecar_path is not None else "the first sidecar"
            notes.append(f"both {used} and {other.name} exist; using {used} ({other.name} is ignored)")
    size = scan.luma.shape
    own_labels = {norm_label(h.label or "") for h in hints if h.region == "label"}
    own_exclude = [] if sidecar is None else list(sidecar.exclude)
    excluded = effective_exclude(sidecar, chain)
    kept = [a for a in autos if norm_label(a.label) not in excluded]
    next_id = max((a.id for a in autos), default=0) + 1
    bound_by: dict[int, int] = {}  # auto id -> hint position that coloured it
    drawn: list[Instance] = []
    for hint in hints:
        _check_bounds(hint, size, sidecar_path)
        where = _where(sidecar_path, hint)
        origin = _origin(sidecar_path, scan_root, hint)
        if hint.region == "label":
            label = hint.label or ""
            key = norm_label(label)
            if key in excluded:
                notes.append(f"{where}: label '{label}' is also listed under exclude; hint not applied")
                continue
            matches = _bind(kept, key, None)
            if not matches:
                seen = sorted({a.label for a in kept})
                notes.append(
                    f"{where}: no '{label}' was detected"
                    + (f" (detected: {', '.join(seen)})" if seen else " (nothing was detected)")
                    + "; hint not applied - draw it with box:, polygon: or mask: instead"
                )
                continue
            if hint.index is not None:
                if hint.index > len(matches):
                    notes.append(
                        f"{where}: index {hint.index} but {len(matches)} '{label}' detected; hint not applied"
                    )
                    continue
                matches = [matches[hint.index - 1]]
            for k in matches:
                auto = kept[k]
                if auto.id in bound_by:
                    notes.append(
                        f"{where}: '{label}' #{auto.id} already coloured by instance {bound_by[auto.id]}; "
                        "this later hint wins"
                    )
                bound_by[auto.id] = hint.position
                kept[k] = replace(
                    auto,
                    source="sidecar",
                    color=hint.color_hint,
                    text=default_text(hint, auto.label),
                    score=1.0,
                    hint_from=origin,
                )
            continue
        label = hint.label.strip() if hint.label else DEFAULT_LABEL
        color, text = hint.color_hint, hint.text
        if needs_colour(hint):  # drawn with a label only: its label hint or the folder rule colours it
            source_of = label_colour(hint, hints, chain)
            if source_of is None:
                raise no_colour_error(hint, sidecar_path)
            if isinstance(source_of, InstanceHint):
                color, text = source_of.color_hint, source_of.text
                origin = _origin(sidecar_path, scan_root, source_of)
            else:
                color, text, origin = source_of.color, source_of.text, source_of.origin
        region, score = _region(hint, scan, segmenter, sidecar_path, scan_root, notes)
        if region is None:
            continue
        mask, box = region
        drawn.append(
            Instance(
                id=next_id,
                label=label,
                text=hint_text(color, text, label),
                mask=mask,
                box=box,
                source="sidecar",
                score=score,
                color=color,
                hint_from=origin,
            )
        )
        next_id += 1
    for key, rules in chain.rules.items():
        if key in own_labels or key in excluded:
            continue  # the sidecar speaks for this label in this scan
        for rule in sorted(rules, key=lambda r: r.index is None):  # an indexed rule before the general one
            for k in _bind(kept, key, rule.index):
                auto = kept[k]
                if auto.id in bound_by or auto.hint_from is not None:
                    continue  # a sidecar hint, or a rule with an index, already coloured it
                kept[k] = replace(
                    auto,
                    source="sidecar",
                    color=rule.color,
                    text=hint_text(rule.color, rule.text, auto.label),
                    score=1.0,
                    hint_from=rule.origin,
                )
    return ResolvedHints(
        instances=kept + drawn,
        prompt=sidecar.prompt if sidecar is not None and sidecar.prompt else chain.prompt,
        seed=sidecar.seed if sidecar is not None else None,
        warnings=notes,
        sidecar_sha256=(sidecar.sha256 or None) if sidecar is not None else None,
        exclude=sorted(excluded) if chain.files else own_exclude,
        negative_prompt=chain.negative_prompt,
        folder_files=chain.digests,
    )
