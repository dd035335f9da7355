"""Sampling memory per instance follows its box or the latent grid, never the working image.

The sampler keeps instances as box + crop: its label map is built box by box, the low-resolution
pass resizes crops, and the mask encoder's input is resized from each crop per window. Each of
these is checked against the full-canvas computation it replaces (bit for bit: they sum 0/1 values,
which is exact in any order), then a many-instance run on a large canvas is checked structurally:
what reaches the model is 64 x 64 per slot, and the traced allocations grow by far less than a
canvas-sized plane per instance.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.types import Instance, stack_masks
from mtcolor_batch.model.canvas import area_resized, build_canvas, crop_boxes, resize_plane, whole_canvas
from mtcolor_batch.model.instance_guidance import MaskEncoder
from mtcolor_batch.model.regions import MASK_INPUT_SIZE, RegionBatch, label_map, mask_input
from mtcolor_batch.stages.plan import make_plan


def _blobs(h: int, w: int, n: int, seed: int) -> list[Instance]:
    """Overlapping ellipses (some with holes, one empty, one touching the corner): ties and edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for k in range(n):
        cx, cy = rng.uniform(-5, w + 5), rng.uniform(-5, h + 5)
        rx, ry = rng.uniform(1, w / 3), rng.uniform(1, h / 3)
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        if k % 3 == 1:
            m &= (xx + 2 * yy) % 3 != 0
        if k == 2:
            m[:] = False
        if k == 3:
            m[:, :] = False
            m[: h // 2 + 3, : w // 2 + 4] = True  # a cell half covered: stays background
        out.append(Instance.from_full_mask(k + 1, f"t{k}", "t", m))
    return out


def _padded(insts: list[Instance], h: int, w: int) -> torch.Tensor:
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    full = np.zeros((len(insts), hp, wp), np.float32)
    full[:, :h, :w] = stack_masks(insts, (h, w))
    return torch.from_numpy(full)


@pytest.mark.parametrize(("h", "w", "seed"), [(64, 64, 0), (70, 90, 1), (123, 77, 2), (200, 152, 3)])
def test_canvas_regions_equal_the_full_canvas_reference(h: int, w: int, seed: int) -> None:
    """Labels, fusion masks and crop boxes built box by box are the full-mask path's, bit for bit."""
    insts = _blobs(h, w, 9, seed)
    full = _padded(insts, h, w)
    latent = (full.shape[1] // 8, full.shape[2] // 8)
    reference = RegionBatch.from_masks(full, torch.zeros(len(insts), 4), latent)
    canvas = build_canvas(
        np.full((h, w), 0.5, np.float32),
        insts,
        torch.zeros(len(insts), 4),
        whole_canvas,
        torch.device("cpu"),
        torch.float32,
        branch_crop=16,
    )
    assert torch.equal(canvas.label_map, reference.label_map)
    assert torch.equal(canvas.label_map[0], label_map(full, latent))
    fusion = torch.stack([(reference.label_map[0] == k + 1).float() for k in range(len(insts))])
    assert torch.equal(canvas.fusion_masks, fusion)
    assert canvas.crops == crop_boxes(fusion, 16)
    assert (canvas.label_map == 4).sum() < (reference.label_map == 0).sum()  # the test has background


@pytest.mark.parametrize(("h", "w", "seed"), [(64, 64, 0), (70, 90, 1), (123, 77, 2), (200, 152, 3)])
def test_window_mask_input_equals_resizing_the_window(h: int, w: int, seed: int) -> None:
    """The encoder's input per window (whole canvas, tiles, crops, 1-cell windows) from the crops
    equals area-resizing the full canvas's masks inside that window; and the encoder then reads
    exactly what it would have computed from the window-sized masks itself."""
    insts = _blobs(h, w, 9, seed)
    full = _padded(insts, h, w)
    lh, lw = full.shape[1] // 8, full.shape[2] // 8
    canvas = build_canvas(
        np.full((h, w), 0.5, np.float32),
        insts,
        torch.zeros(len(insts), 4),
        whole_canvas,
        torch.device("cpu"),
        torch.float32,
    )
    rng = np.random.default_rng(seed)
    windows = [(0, 0, lw, lh), (0, 0, min(8, lw), min(8, lh)), (lw // 3, lh // 4, lw, lh), (1, 2, 2, 3)]
    for _ in range(6):
        x0, y0 = int(rng.integers(0, lw)), int(rng.integers(0, lh))
        windows.append((x0, y0, int(rng.integers(x0 + 1, lw + 1)), int(rng.integers(y0 + 1, lh + 1))))
    encoder = MaskEncoder()
    for x0, y0, x1, y1 in windows:
        window = full[:, y0 * 8 : y1 * 8, x0 * 8 : x1 * 8]
        got = canvas.mask_input((x0, y0, x1, y1))
        assert got.shape == (1, len(insts), MASK_INPUT_SIZE, MASK_INPUT_SIZE)
        assert torch.equal(got[0], mask_input(window)), (x0, y0, x1, y1)
        with torch.no_grad():
            assert torch.equal(encoder(got[0]), encoder(window))
    assert canvas.mask_input((0, 0, lw, lh)).sum() > 0
    cached = sum(values.numel() for _, values in canvas.window_masks.values())
    assert cached < len(windows) * len(insts) * MASK_INPUT_SIZE**2  # not a dense S x S per slot


@pytest.mark.parametrize(
    ("src", "dst"), [((96, 96), (64, 64)), ((100, 130), (49, 64)), ((123, 77), (40, 25)), ((60, 61), (59, 7))]
)
def test_low_resolution_instances_equal_resizing_the_full_mask(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    """The tiled path's low-resolution pass: crops resized by integer bins = area-resize + 0.5 threshold."""
    for seed in range(4):
        for inst in _blobs(*src, 8, seed):
            want = resize_plane(inst.full(src).astype(np.float32), dst) >= 0.5
            got = area_resized(inst, src, dst)
            assert np.array_equal(got.full(dst), want), (seed, inst.id)
            assert got.mask.size <= (inst.mask.shape[0] + 2 * src[0] // dst[0] + 2) * (
                inst.mask.shape[1] + 2 * src[1] // dst[1] + 2
            )
    up = area_resized(_blobs(*src, 2, 0)[0], src, (src[0] * 2, src[1]))  # upsampling: bilinear, full mask
    want = resize_plane(_blobs(*src, 2, 0)[0].full(src).astype(np.float32), (src[0] * 2, src[1])) >= 0.5
    assert np.array_equal(up.full((src[0] * 2, src[1])), want)


def _many(h: int, w: int, n: int) -> list[Instance]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        bw, bh = int(rng.integers(6, 24)), int(rng.integers(6, 24))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        out.append(
            Instance(k + 1, "x", ["red", "navy"][k % 2], np.ones((bh, bw), bool), (x0, y0, x0 + bw, y0 + bh))
        )
    return out


@pytest.mark.slow
def test_many_instances_on_a_large_canvas_stay_box_sized(tiny_bundle: Path) -> None:
    """24 then 72 hints on a 480x360 working image: every mask handed to the model is 64x64 per slot,
    and the traced peak grows by far less than one canvas-sized plane per added instance (it used to
    hold two float32 canvases per instance before the model ran, and the model got them). Both
    counts exceed ``WINDOW_CHUNK``, the few window-sized planes that exist at once."""
    from mtcolor_batch.model.canvas import WINDOW_CHUNK
    from mtcolor_batch.model.engine import MTColorEngine

    assert WINDOW_CHUNK < 24

    engine = MTColorEngine.load(tiny_bundle, device="cpu")
    h, w = 360, 480
    settings = SamplingSettings(steps=1, working_long_side=w, alpha=1.0, branch_crop=64)
    plan = dataclasses.replace(make_plan((h, w), settings, seed=3, prompt="a street"), max_batch=16)
    luma = np.full((h, w), 0.5, np.float32)
    sampler, inner = engine.sampler, engine.sampler.denoiser
    handed: list[tuple[int, ...]] = []

    def spy(
        latents: torch.Tensor, t: object, text: object, control: object, regions: RegionBatch, **kw: object
    ):
        handed.append(tuple(regions.inst_masks.shape))
        return inner(latents, t, text, control, regions, **kw)

    peaks = {}
    sampler.denoiser = spy
    try:
        for n in (24, 72):
            handed.clear()
            tracemalloc.start()
            sampler.sample(luma, _many(h, w, n), plan)
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert handed and all(s[1] == n and s[2:] == (MASK_INPUT_SIZE, MASK_INPUT_SIZE) for s in handed)
    finally:
        sampler.denoiser = inner
    per_instance = (peaks[72] - peaks[24]) / 48
    print(
        f"traced peak per instance: {per_instance / 1024:.1f} KB (float32 canvas: {h * w * 4 / 1024:.0f} KB)"
    )
    assert per_instance < h * w / 8  # bytes: 32x less than one float32 canvas-sized mask
