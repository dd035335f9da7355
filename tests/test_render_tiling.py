"""Tile geometry and blending: coverage, flush borders, positive normalised weights, no seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtcolor_batch.render.tiling import (
    TileBlender,
    axis_starts,
    blend_window,
    crop_masks,
    neighbour_overlaps,
    scale_boxes,
    tile_boxes,
)


def _coverage(height: int, width: int, boxes: list) -> np.ndarray:
    cover = np.zeros((height, width), dtype=np.int32)
    for x0, y0, x1, y1 in boxes:
        cover[y0:y1, x0:x1] += 1
    return cover


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "align"),
    [
        (1, 1, 512, 128, 1),
        (7, 3000, 512, 128, 1),
        (513, 513, 512, 128, 1),
        (1024, 1024, 512, 128, 8),
        (768, 1024, 512, 128, 8),
        (96, 96, 64, 32, 8),
        (200, 333, 64, 24, 1),
        (512, 512, 512, 128, 8),
    ],
)
def test_tile_boxes_cover_every_pixel_with_full_tiles(height, width, tile, overlap, align):
    boxes = tile_boxes(height, width, tile, overlap, align)
    assert _coverage(height, width, boxes).min() >= 1
    th, tw = min(tile, height), min(tile, width)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (y1 - y0, x1 - x0) == (th, tw)  # every tile the same, full size when the canvas allows
    assert max(b[2] for b in boxes) == width and max(b[3] for b in boxes) == height  # flush borders
    if height <= tile and width <= tile:
        assert boxes == [(0, 0, width, height)]
    for length in (height, width):
        starts = axis_starts(length, tile, overlap, align)
        ends = [s + min(tile, length) for s in starts]
        for s_next, e_prev in zip(starts[1:], ends[:-1], strict=True):
            assert e_prev - s_next >= overlap  # consecutive tiles overlap at least as asked


def test_aligned_tiles_scale_exactly_to_latents():
    boxes = tile_boxes(1024, 768, 512, 128, align=8)
    assert all(v % 8 == 0 for b in boxes for v in b)
    latent = scale_boxes(boxes, 8)
    assert latent[-1] == (32, 64, 96, 128)
    with pytest.raises(ValueError):
        scale_boxes([(0, 0, 12, 8)], 8)


def test_bad_tile_arguments_are_rejected():
    with pytest.raises(ValueError):
        tile_boxes(100, 100, 64, 64)
    with pytest.raises(ValueError):
        tile_boxes(0, 100, 64, 8)


def test_blend_window_positive_and_partition_of_unity():
    win = blend_window(64, 64, 16)
    assert win.dtype == np.float32 and win.shape == (64, 64)
    assert win.min() > 0 and win.max() == pytest.approx(1.0)
    # Two tiles overlapping by exactly the ramp width: weights sum to 1 across the overlap.
    right_of_a = blend_window(1, 64, (0, 0, 0, 16))[0, -16:]
    left_of_b = blend_window(1, 64, (0, 0, 16, 0))[0, :16]
    np.testing.assert_allclose(right_of_a + left_of_b, 1.0, atol=1e-6)
    # A side on the canvas border keeps full weight up to the edge.
    assert blend_window(8, 8, (0, 0, 0, 0)).min() == 1.0


def test_blender_weights_normalised_and_reconstruct_canvas():
    boxes = tile_boxes(200, 333, 64, 24)
    blender = TileBlender(200, 333, boxes)
    total = np.zeros((200, 333))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert blender.windows[i].min() > 0
        total[y0:y1, x0:x1] += blender.weights(i)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    canvas = np.random.default_rng(0).normal(size=(2, 200, 333)).astype(np.float32)
    np.testing.assert_allclose(blender.blend(blender.crop_all(canvas)), canvas, atol=1e-5)


def test_blender_torch_latents_and_single_tile_identity():
    z = torch.randn(2, 4, 12, 12)
    blender = TileBlender(12, 12, scale_boxes(tile_boxes(96, 96, 64, 32, 8), 8))
    assert len(blender) == 4
    torch.testing.assert_close(blender.blend(blender.crop_all(z)), z, atol=1e-5, rtol=0)
    half = blender.blend([t.half() for t in blender.crop_all(z)])
    assert half.dtype == torch.float16 and half.shape == z.shape
    single = TileBlender(8, 8, [(0, 0, 8, 8)])
    assert single.blend([z[..., :8, :8]]) is not None
    assert torch.equal(single.blend([z[..., :8, :8]]), z[..., :8, :8])  # untiled sampling stays exact


def test_neighbour_overlaps_are_zero_on_canvas_borders():
    boxes = tile_boxes(96, 96, 64, 32, 8)  # 2x2 grid, starts 0 and 32
    assert neighbour_overlaps(boxes, 0) == (0, 32, 0, 32)
    assert neighbour_overlaps(boxes, 3) == (32, 0, 32, 0)


def test_crop_masks_keeps_slots_and_lists_present_instances():
    masks = np.zeros((3, 96, 96), dtype=bool)
    masks[0, :10, :10] = True  # only in the top-left tile
    masks[1, 40:60, 40:60] = True  # cut by every tile border: present in all four tiles
    boxes = tile_boxes(96, 96, 64, 32, 8)
    crop, present = crop_masks(masks, boxes[0])
    assert crop.shape == (3, 64, 64) and present == [0, 1]
    _, present = crop_masks(torch.from_numpy(masks).float()[None], boxes[3])
    assert present == [1]


def _seam_energy(field: np.ndarray, boxes: list) -> tuple[float, float]:
    """Mean squared finite difference across tile borders vs everywhere else.

    The measure: for horizontal neighbours (x, x+1) and vertical neighbours (y, y+1), a pair is a
    "border" pair when a tile edge inside the canvas passes between them; all other pairs are
    "inside". A seam is a step at a tile edge, so it shows as border energy above inside energy.
    """
    h, w = field.shape
    gx = np.diff(field, axis=1) ** 2  # pair (x, x+1) stored at column x
    gy = np.diff(field, axis=0) ** 2
    bx = np.zeros(gx.shape, dtype=bool)
    by = np.zeros(gy.shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        for x in (x0, x1):
            if 0 < x < w:
                bx[y0:y1, x - 1] = True
        for y in (y0, y1):
            if 0 < y < h:
                by[y - 1, x0:x1] = True
    border = np.concatenate([gx[bx], gy[by]]).mean()
    inside = np.concatenate([gx[~bx], gy[~by]]).mean()
    return float(border), float(inside)


def test_blending_smooth_field_leaves_no_seams():
    h, w = 160, 224
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field = 0.3 * np.sin(xx / 37.0) + 0.2 * np.cos(yy / 53.0) + 0.001 * xx
    boxes = tile_boxes(h, w, 64, 24)
    rng = np.random.default_rng(1)
    # Neighbouring tiles disagree (as independently denoised tiles do): a constant offset each.
    offsets = rng.uniform(-0.15, 0.15, len(boxes))
    tiles = [field[y0:y1, x0:x1] + off for (x0, y0, x1, y1), off in zip(boxes, offsets, strict=True)]
    smooth = TileBlender(h, w, boxes).blend(tiles)
    border, inside = _seam_energy(smooth, boxes)
    assert border <= inside, (border, inside)
    # The measure does see seams: uniform averaging (ramps of width 0) fails it clearly.
    uniform = TileBlender(h, w, boxes, ramps=0).blend(tiles)
    u_border, u_inside = _seam_energy(uniform, boxes)
    assert u_border > 3 * u_inside, (u_border, u_inside)
