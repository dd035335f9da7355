"""sampling.branch_crop: instance branches on their box + margin; off is today's sampling, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.model.canvas import crop_boxes
from mtcolor_batch.model.engine import MTColorEngine
from mtcolor_batch.stages.plan import make_plan

TRAINED_LIKE_SEED = 11
"""The shared ``engine`` fixture (conftest) fills the MT-Color modules with this seed."""


def _scene(size: int) -> tuple[np.ndarray, list[Instance]]:
    yy, xx = np.mgrid[0:size, 0:size]
    luma = (0.15 + 0.7 * (xx + yy) / (2 * size)).astype(np.float32)
    insts = []
    for i, (x0, y0) in enumerate([(16, 24), (size - 80, size - 72)]):
        m = np.zeros((size, size), dtype=bool)
        m[y0 : y0 + 56, x0 : x0 + 48] = True
        insts.append(Instance.from_full_mask(i + 1, f"thing {i}", f"a red thing {i}", m))
    return luma, insts


def _plan(size: int, **changes: object) -> Plan:
    settings = SamplingSettings(
        steps=3,
        working_long_side=size,
        tile_size=256,
        tile_overlap=64,
        alpha=1.0,
        branch_crop=0,
        branch_refresh=1,
    )
    return dataclasses.replace(make_plan((size, size), settings, seed=4, prompt="a street"), **changes)


def test_default_crops_the_paper_profile_does_not() -> None:
    """64 px is the default (its measured effect is in docs/speed.md); the paper's sampling has none."""
    from mtcolor_batch.core.config import load_profile

    assert load_profile("default").sampling.branch_crop == 64
    assert load_profile("paper").sampling.branch_crop == 0
    assert not load_profile("paper", {"sampling.branch_crop": 64}).follows("paper")


def test_crop_boxes_are_box_plus_margin_in_64px_steps() -> None:
    fusion = torch.zeros(3, 40, 48)
    fusion[0, 10:14, 20:23] = 1  # 3 x 4 cells
    fusion[1, 0:2, 46:48] = 1  # in a corner
    boxes = crop_boxes(fusion, margin_px=64)
    x0, y0, x1, y1 = boxes[0]
    assert (x1 - x0) % 8 == 0 and (y1 - y0) % 8 == 0  # 64 px = 8 latent cells
    assert x0 <= 20 - 8 and x1 >= 23 + 8 and y0 <= 10 - 8 and y1 >= 14 + 8  # box + margin inside
    assert (x1 - x0, y1 - y0) == (24, 24)  # 3 + 16 -> 24 cells, 4 + 16 -> 24 cells
    cx0, cy0, cx1, cy1 = boxes[1]
    assert 0 <= cx0 < cx1 == 48 and cy0 == 0 < cy1 <= 40  # clipped into the canvas
    assert boxes[2] == (0, 0, 0, 0)  # an empty region gets no crop
    assert all(v % 8 == 0 for v in boxes[0])  # on the 64 px grid: downsamples like the whole canvas


def test_crop_spans_keep_the_margin_on_the_tile_grid() -> None:
    """A crop inside a tile starts on that tile's 64 px grid and still holds box + margin."""
    from mtcolor_batch.model.canvas import grid_span

    for lo, hi, start, end in [
        (12, 31, 0, 48),
        (13, 30, 5, 69),
        (40, 64, 5, 69),
        (0, 3, 0, 64),
        (7, 60, 3, 67),
    ]:
        a, b = grid_span(lo, hi, start, end)
        assert start <= a <= lo and hi <= b <= end
        assert (b - a) % 8 == 0 and (a - start) % 8 == 0
        assert b - a <= -(-(hi - lo) // 8) * 8 + 8  # at most one cell of 64 px more than needed
    assert grid_span(2, 5, 0, 6) == (0, 6)  # a tile smaller than the grid: the whole tile


@pytest.mark.parametrize("size", [256, 384])  # one tile, and tiles with overlap
@pytest.mark.slow
def test_crop_covering_everything_is_off_bit_for_bit(engine: MTColorEngine, size: int) -> None:
    """The crop machinery itself is exact: a crop as large as the canvas changes no bit."""
    luma, insts = _scene(size)
    off = engine.colorize(luma, insts, _plan(size))
    huge = engine.colorize(luma, insts, _plan(size, branch_crop=4096))
    assert np.array_equal(off, huge)


def _fused(engine: MTColorEngine, size: int, crop: int, shapes: list[tuple[int, ...]]) -> torch.Tensor:
    """The latent right after the multi-instance fusion (alpha = 1: K = T), recording call shapes."""
    sampler = engine.sampler
    plan = _plan(size, branch_crop=crop)
    luma, insts = _scene(size)
    texts = sampler.texts(plan, insts)
    canvas = sampler.canvas(luma, insts, texts, plan, tiled=False)
    z0 = sampler.initial_noise(torch.Generator().manual_seed(0), canvas.latent_size)
    inner = sampler.denoiser

    def spy(latents: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        shapes.append(tuple(latents.shape))
        return inner(latents, *args, **kwargs)

    sampler.denoiser = spy
    try:
        with torch.no_grad():
            return sampler.denoise(canvas, texts, plan, z0)
    finally:
        sampler.denoiser = inner


@pytest.mark.slow
def test_crop_runs_less_and_stays_close(engine: MTColorEngine) -> None:
    """Branches see their box + 64 px instead of the whole image; the fused latents stay close."""
    off_shapes: list[tuple[int, ...]] = []
    on_shapes: list[tuple[int, ...]] = []
    off = _fused(engine, 256, 0, off_shapes)
    on = _fused(engine, 256, 64, on_shapes)
    pixels = [sum(s[0] * s[2] * s[3] for s in shapes) for shapes in (off_shapes, on_shapes)]
    rel = float((on - off).norm() / off.norm())
    print(
        f"branch_crop=64: {pixels[1] / pixels[0]:.2f} of the latent pixels, fused latent rel. diff {rel:.4f}"
    )
    assert pixels[1] < 0.75 * pixels[0]
    assert 0 < rel < 0.05
