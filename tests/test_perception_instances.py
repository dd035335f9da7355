"""instances.finalize / label_map / resize_instances: the rules that make instances usable."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.types import ColorHint, Instance, box_from_mask
from mtcolor_batch.perception.instances import (
    finalize,
    label_map,
    mask_iou,
    resize_instances,
)

H, W = 60, 80


def rect(x0: int, y0: int, x1: int, y1: int, label: str = "thing", **kw) -> Instance:
    mask = np.ones((y1 - y0, x1 - x0), dtype=bool)  # the region over its box
    return Instance(id=0, label=label, text=label, mask=mask, box=(x0, y0, x1, y1), **kw)


def settings(**kw) -> PerceptionSettings:
    base = {"min_area": 0.0, "merge_iou": 0.7, "max_instances": 8}
    base.update(kw)
    return PerceptionSettings(**base)


def test_exclusive_and_label_map_matches_ids() -> None:
    person = rect(10, 10, 50, 55, "person", score=0.9)
    hat = rect(20, 10, 40, 20, "hat", score=0.5)  # inside the person
    out = finalize([person, hat], (H, W), settings())
    assert [i.id for i in out] == [1, 2]
    stack = np.stack([i.full((H, W)) for i in out])
    assert stack.sum(axis=0).max() == 1  # each pixel in at most one instance
    by_label = {i.label: i for i in out}
    assert by_label["hat"].area == 20 * 10  # the smaller thing keeps its pixels
    assert by_label["person"].area == 40 * 45 - 200
    lm = label_map(out, (H, W))
    assert lm.dtype == np.int32 and lm.shape == (H, W)
    for inst in out:
        assert np.array_equal(lm == inst.id, inst.full((H, W)))
    assert (lm == 0).sum() == H * W - sum(i.area for i in out)


def test_label_map_settles_overlaps_of_raw_instances() -> None:
    a, b = rect(0, 0, 40, 40, "a"), rect(20, 20, 60, 60, "b")
    lm = label_map([a, b], (H, W))
    assert set(np.unique(lm)) == {0, 1, 2}
    assert ((lm == 1) & (lm == 2)).sum() == 0


def test_duplicates_merge_into_higher_score() -> None:
    a = rect(10, 10, 50, 50, "man", score=0.4)
    b = rect(11, 10, 51, 50, "person", score=0.8)  # IoU ~0.95
    far = rect(60, 0, 80, 20, "sign", score=0.3)
    out = finalize([a, b, far], (H, W), settings())
    labels = sorted(i.label for i in out)
    assert labels == ["person", "sign"]
    person = next(i for i in out if i.label == "person")
    assert person.area == 41 * 40  # union of both masks
    assert person.box == (10, 10, 51, 50)


def test_below_merge_iou_are_kept_apart() -> None:
    a, b = rect(0, 0, 40, 40, "a"), rect(20, 0, 60, 40, "b")  # IoU 1/3
    assert len(finalize([a, b], (H, W), settings(merge_iou=0.7))) == 2
    assert len(finalize([a, b], (H, W), settings(merge_iou=0.3))) == 1


def test_min_area_drops_small_autos_not_sidecar() -> None:
    tiny_auto = rect(0, 0, 3, 3, "speck")
    tiny_hint = rect(70, 50, 73, 53, "button", source="sidecar")
    big = rect(20, 20, 60, 50, "coat")
    out = finalize([tiny_auto, tiny_hint, big], (H, W), settings(min_area=0.01))  # 48 px
    assert sorted(i.label for i in out) == ["button", "coat"]


def test_min_area_applies_after_exclusivity() -> None:
    person = rect(10, 10, 50, 50, "person", score=0.9)
    hat = rect(10, 10, 50, 48, "hat", score=0.9)  # IoU 0.95: merge_iou=1.0 keeps them apart
    out = finalize([person, hat], (H, W), settings(merge_iou=1.0, min_area=0.02))  # 96 px
    # the person keeps only a 40x2 strip (80 px) once the hat claims its pixels -> dropped
    assert [i.label for i in out] == ["hat"]


def test_cap_keeps_highest_scores_and_all_sidecar() -> None:
    autos = [rect(8 * k, 0, 8 * k + 6, 10, f"a{k}", score=s) for k, s in enumerate([0.1, 0.9, 0.5, 0.7])]
    hint = rect(0, 40, 20, 60, "tram", source="sidecar")
    out = finalize([*autos, hint], (H, W), settings(max_instances=3))
    assert sorted(i.label for i in out) == ["a1", "a3", "tram"]
    out0 = finalize([*autos, hint], (H, W), settings(max_instances=0))
    assert [i.label for i in out0] == ["tram"]


def test_sidecar_overrides_overlapping_auto() -> None:
    auto_same = rect(10, 10, 40, 40, "tram", score=0.99)
    auto_partial = rect(30, 10, 70, 40, "building", score=0.8)
    hint = rect(10, 10, 40, 40, "tram", source="sidecar", color=ColorHint((40.0, -30.0, 10.0), "dark green"))
    out = finalize([auto_same, auto_partial, hint], (H, W), settings())
    assert sorted((i.label, i.source) for i in out) == [("building", "auto"), ("tram", "sidecar")]
    tram = next(i for i in out if i.label == "tram")
    building = next(i for i in out if i.label == "building")
    assert tram.color is not None and tram.area == 30 * 30  # the hint keeps all of its pixels
    assert building.area == 30 * 30  # only the part outside the hint
    assert building.box == (40, 10, 70, 40)


def test_sidecar_fully_covered_by_another_sidecar_warns() -> None:
    big = rect(0, 0, 40, 40, "coat", source="sidecar")
    same = rect(0, 0, 40, 40, "jacket", source="sidecar")
    warnings: list[str] = []
    out = finalize([big, same], (H, W), settings(), warnings)
    assert len(out) == 1 and len(warnings) == 1 and "no pixels" in warnings[0]


def test_ids_are_stable_and_in_reading_order() -> None:
    items = [
        rect(50, 30, 70, 50, "c", score=0.2),
        rect(0, 0, 10, 10, "a", score=0.3),
        rect(40, 0, 60, 10, "b", score=0.9),
    ]
    first = finalize(items, (H, W), settings())
    second = finalize(list(reversed(items)), (H, W), settings())
    assert [(i.id, i.label) for i in first] == [(1, "a"), (2, "b"), (3, "c")]
    assert [(i.id, i.label, i.box) for i in first] == [(i.id, i.label, i.box) for i in second]


def test_inputs_not_modified_and_boxes_checked() -> None:
    a = rect(0, 0, 40, 40, "a")
    b = rect(20, 20, 60, 60, "b", source="sidecar")
    before = a.mask.copy()
    finalize([a, b], (H, W), settings())
    assert np.array_equal(a.mask, before) and a.id == 0
    with pytest.raises(ValueError, match="outside"):
        finalize([a], (H, 30), settings())  # a's box reaches x = 40: it belongs to another image


def test_empty_autos_dropped() -> None:
    empty = Instance.from_full_mask(0, "x", "x", np.zeros((H, W), bool))
    assert empty.box == (0, 0, 0, 0) and empty.mask.shape == (0, 0)
    assert finalize([empty], (H, W), settings()) == []


def test_resize_instances_nearest_keeps_exclusivity() -> None:
    out = finalize([rect(10, 10, 50, 55, "p"), rect(20, 10, 40, 20, "h")], (H, W), settings())
    small = resize_instances(out, (H, W), (30, 40))
    assert [i.id for i in small] == [i.id for i in out]
    assert all(i.mask.dtype == bool for i in small)
    assert np.stack([i.full((30, 40)) for i in small]).sum(axis=0).max() == 1
    hat = next(i for i in small if i.label == "h")
    assert hat.box == (10, 5, 20, 10)
    assert box_from_mask(hat.full((30, 40))) == (10, 5, 20, 10)
    big = resize_instances(out, (H, W), (120, 160))
    assert next(i for i in big if i.label == "h").area == 4 * 200
    assert resize_instances([], (H, W), (10, 10)) == []


def test_mask_iou_and_box_from_mask() -> None:
    a, b = rect(0, 0, 10, 10).full((H, W)), rect(5, 0, 15, 10).full((H, W))
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    assert box_from_mask(np.zeros((3, 3), bool)) is None


def test_sidecar_with_same_label_replaces_the_detection_it_overlaps() -> None:
    auto_man = rect(0, 20, 30, 60, "man", score=0.9)
    auto_coat = rect(5, 30, 25, 50, "coat", score=0.9)  # other label: keeps what the hint leaves
    hint = rect(0, 25, 32, 60, "man", source="sidecar", color=ColorHint((30.0, 5.0, -40.0), "navy"))
    out = finalize([auto_man, auto_coat, hint], (H, W), settings(merge_iou=0.99))
    assert sorted((i.label, i.source) for i in out) == [("man", "sidecar")]
    away = rect(50, 0, 80, 30, "man", score=0.9)  # another man elsewhere stays
    out = finalize([auto_man, away, hint], (H, W), settings(merge_iou=0.99))
    assert sorted((i.label, i.source, i.box) for i in out) == [
        ("man", "auto", (50, 0, 80, 30)),
        ("man", "sidecar", (0, 25, 32, 60)),
    ]


def test_same_label_hint_with_the_detection_box_replaces_it_even_if_masks_differ() -> None:
    # the auto mask is the left half of its box, the hint's mask the right half: little shared
    auto = rect(10, 10, 20, 50, "man", score=0.9)  # 400 px, 80 of them shared with the hint
    hint = rect(18, 10, 50, 50, "man", source="sidecar", color=ColorHint((30.0, 5.0, -40.0), "navy"))
    auto = replace(auto, prompt_box=(10, 10, 50, 50))  # detection box = the hint's
    out = finalize([auto, hint], (H, W), settings())
    assert [(i.label, i.source) for i in out] == [("man", "sidecar")]
