"""Instances as a box plus the mask cropped to it: memory follows the boxes, results follow the full masks.

A sidecar may hold hundreds of hints and a scan 100 MP: a full-image bool array per hint was N x the
scan (8,000 boxes on a 600x450 scan peaked at 6.7 GB). Every check here compares the cropped path
with the full-canvas computation written out independently in the test.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import PerceptionSettings, Profile
from mtcolor_batch.core.types import Instance, Scan, stack_masks
from mtcolor_batch.model.regions import RegionBatch
from mtcolor_batch.output.mask_rle import decode_mask, encode_mask
from mtcolor_batch.output.provenance import instance_record
from mtcolor_batch.perception.instances import finalize, resize_instances
from mtcolor_batch.stages.instances import find_instances, read_sidecar

H, W = 97, 131


def blobs(seed: int, n: int, size: tuple[int, int] = (H, W)) -> list[np.ndarray]:
    """Random full-image masks: ellipses with holes, some at the image's edges."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)
        ry, rx = rng.uniform(3, h / 2), rng.uniform(3, w / 2)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        m &= rng.random((h, w)) > 0.1
        if m.any():
            out.append(m)
    return out


def nearest_full(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The full-canvas nearest resample the pipeline used before masks were cropped."""
    (sh, sw), (h, w) = mask.shape, size
    rows = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int64), sh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * sw / w).astype(np.int64), sw - 1)
    return mask[rows][:, cols]


def test_from_full_mask_crops_to_the_tight_box_and_round_trips() -> None:
    for k, full in enumerate(blobs(0, 12)):
        inst = Instance.from_full_mask(k + 1, "x", "x", full)
        x0, y0, x1, y1 = inst.box
        assert inst.mask.shape == (y1 - y0, x1 - x0)
        assert inst.mask[0].any() and inst.mask[-1].any() and inst.mask[:, 0].any() and inst.mask[:, -1].any()
        np.testing.assert_array_equal(inst.full((H, W)), full)
        assert inst.area == int(full.sum())
    with pytest.raises(ValueError, match="not the size of its box"):
        Instance(1, "x", "x", np.ones((H, W), bool), (10, 10, 20, 20))


@pytest.mark.parametrize("dst", [(30, 40), (97, 131), (200, 300), (64, 48), (13, 7), (333, 101)])
def test_resized_equals_resizing_the_full_mask(dst: tuple[int, int]) -> None:
    for k, full in enumerate(blobs(1, 10)):
        inst = Instance.from_full_mask(k + 1, "x", "x", full)
        small = inst.resized((H, W), dst)
        x0, y0, x1, y1 = small.box
        assert 0 <= x0 < x1 <= dst[1] and 0 <= y0 < y1 <= dst[0]
        assert small.mask.shape == (y1 - y0, x1 - x0)
        np.testing.assert_array_equal(small.full(dst), nearest_full(full, dst))


def test_windows_and_stacks_equal_the_full_canvas() -> None:
    fulls = blobs(2, 8)
    insts = [Instance.from_full_mask(k + 1, "x", "x", m) for k, m in enumerate(fulls)]
    np.testing.assert_array_equal(stack_masks(insts, (H, W)), np.stack(fulls).astype(np.float32))
    padded = np.pad(np.stack(fulls), ((0, 0), (10, 10), (10, 10)))
    for window in [
        (0, 0, W, H),
        (17, 5, 60, 90),
        (-10, -10, 20, 30),
        (100, 80, W + 10, H + 10),
        (5, 5, 5, 9),
    ]:
        x0, y0, x1, y1 = window
        for inst, ref in zip(insts, padded, strict=True):
            np.testing.assert_array_equal(inst.in_window(window), ref[y0 + 10 : y1 + 10, x0 + 10 : x1 + 10])
    with pytest.raises(ValueError, match="outside"):
        stack_masks(insts, (H - 20, W))


def test_finalize_exclusivity_equals_a_full_canvas_owner_map() -> None:
    """Sidecar regions claim pixels smaller-first; the box-by-box result equals painting one owner map."""
    fulls = blobs(3, 14)
    insts = [
        Instance.from_full_mask(k + 1, f"thing {k}", "t", m, source="sidecar") for k, m in enumerate(fulls)
    ]
    out = finalize(insts, (H, W), PerceptionSettings(min_area=0.0, max_instances=4))
    owner = np.zeros((H, W), dtype=np.int32)
    order = sorted(range(len(insts)), key=lambda i: (insts[i].area, insts[i].box, insts[i].label, i))
    for i in order:
        owner[fulls[i] & (owner == 0)] = i + 1
    by_label = {inst.label: inst for inst in out}
    for i, inst in enumerate(insts):
        want = owner == i + 1
        if not want.any():
            assert inst.label not in by_label
            continue
        got = by_label[inst.label]
        np.testing.assert_array_equal(got.full((H, W)), want)
        assert got.mask.shape == (got.box[3] - got.box[1], got.box[2] - got.box[0])


def test_latent_regions_equal_the_full_mask_path() -> None:
    """Scan -> working resize -> sampler masks -> latent label map: the same tensors as full masks gave."""
    fulls = blobs(4, 9)
    scan_insts = [
        Instance.from_full_mask(k + 1, f"t{k}", "t", m, source="sidecar") for k, m in enumerate(fulls)
    ]
    final = finalize(scan_insts, (H, W), PerceptionSettings(min_area=0.0))
    working, latent = (48, 64), (6, 8)
    texts = torch.zeros(len(final), 4)
    cropped = RegionBatch.from_masks(
        torch.from_numpy(stack_masks(resize_instances(final, (H, W), working), working)), texts, latent
    )
    full_masks = [nearest_full(inst.full((H, W)), working) for inst in final]
    reference = RegionBatch.from_masks(
        torch.from_numpy(np.stack(full_masks).astype(np.float32)), texts, latent
    )
    assert torch.equal(cropped.label_map, reference.label_map)
    assert torch.equal(cropped.inst_masks, reference.inst_masks)


def test_provenance_records_the_box_and_reads_both_forms() -> None:
    for k, full in enumerate(blobs(5, 6)):
        inst = Instance.from_full_mask(k + 1, "x", "x", full)
        rle = instance_record(inst, None, (H, W))["mask_rle"]
        assert rle["box"] == list(inst.box) and rle["image"] == [H, W]
        assert rle["size"] == list(inst.mask.shape)  # the RLE covers the box, not the scan
        np.testing.assert_array_equal(decode_mask(rle), full)
        np.testing.assert_array_equal(decode_mask(rle, (H * 2, W * 2)), nearest_full(full, (H * 2, W * 2)))
        np.testing.assert_array_equal(decode_mask(encode_mask(full)), full)  # records before boxes
    big = np.zeros((3000, 2000), dtype=bool)
    big[100:2900, 50:1500] = True  # a crop past the recorded long side: stored downscaled
    inst = Instance.from_full_mask(1, "x", "x", big)
    rle = instance_record(inst, None, big.shape)["mask_rle"]
    assert max(rle["size"]) == 1024
    back = decode_mask(rle)
    assert back.shape == big.shape and (back ^ big).sum() <= 0.002 * big.sum()


def test_many_hints_on_a_large_canvas_cost_their_boxes_not_the_canvas(tmp_path: Path) -> None:
    """The real chain (stages.instances: read the sidecar, resolve, finalize) on a 1500x1000 scan.

    With image-sized masks 120 boxes held 120 x 1.5 MB per copy; as box + crop they hold their own
    pixels. The scan's luminance is a broadcast constant, so the scan itself costs nothing here.
    """
    h, w, n = 1000, 1500, 120
    source = tmp_path / "big.png"
    lines = ["version: 1", "instances:"]
    rng = np.random.default_rng(6)
    boxes = []
    for _ in range(n):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 30))
        box = (x0, y0, x0 + int(rng.integers(5, 40)), y0 + int(rng.integers(5, 30)))
        boxes.append(box)
        lines.append(f"  - box: [{box[0]}, {box[1]}, {box[2]}, {box[3]}]\n    color: red")
    (tmp_path / "big.png.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    luma = np.broadcast_to(np.float32(0.5), (h, w))
    scan = Scan(
        source=source, relpath="big.png", luma=luma, format="PNG", mode="L", bit_depth=8, sha256="0" * 64
    )
    profile = Profile()
    tracemalloc.start()
    try:
        sidecar = read_sidecar(scan, profile.hints)
        found = find_instances(scan, sidecar, None, profile, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.instances, found.warnings
    box_px = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    assert sum(inst.mask.size for inst in found.instances) <= box_px
    for inst in found.instances:
        x0, y0, x1, y1 = inst.box
        assert inst.mask.shape == (y1 - y0, x1 - x0)
    assert peak < h * w, f"peak {peak / 1e6:.1f} MB: one image-sized array per hint is back"


@pytest.mark.slow
def test_strict_adherence_memory_follows_the_boxes() -> None:
    """Many small hinted regions in strict mode: per-hint arrays are box-sized, not working-image-sized.

    With image-sized masks, feather weights and filter responses (float64), 80 hints on a 400x400
    working image held 80 x 2.7 MB; as patches over their boxes they hold a few KB each.
    """
    from mtcolor_batch.core.config import HintSettings
    from mtcolor_batch.hints.adherence import enforce
    from mtcolor_batch.hints.colors import parse_color

    h = w = 400
    rng = np.random.default_rng(7)
    ab = rng.normal(0.0, 20.0, (2, h, w)).astype(np.float32)
    luma = np.full((h, w), 0.5, dtype=np.float32)
    insts = []
    for k in range(80):
        row, col = divmod(k, 10)
        x0, y0 = 10 + 38 * col, 10 + 48 * row
        mask = np.ones((12, 12), dtype=bool)
        insts.append(
            Instance(k + 1, "t", "t", mask, (x0, y0, x0 + 12, y0 + 12), "sidecar", 1.0, parse_color("red"))
        )
    tracemalloc.start()
    try:
        out, stats = enforce(ab, luma, insts, HintSettings(strict=True, feather_px=3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(s["delta_e_chroma"] < 5.0 for s in stats)
    # Once per image the guided filter needs ~20 image-sized float64 arrays (25 MB here); the
    # image-sized per-hint arrays came on top (196 MB before).
    assert peak < 40 * h * w * 8, f"peak {peak / 1e6:.1f} MB: per-hint arrays are image-sized again"
