"""Tile geometry and seam-free blending for the tiled sampler.

The sampler works on 512x512 pixel tiles (64x64 latents). A working image larger than one tile is
covered by a grid of overlapping, equally sized tiles; at every denoising step each tile is
denoised and the overlapping results are averaged with smooth weights (MultiDiffusion style, one
scheduler over the whole canvas). Uniform averaging leaves visible seams on smooth areas because
neighbouring tiles disagree slightly; a raised-cosine ramp across each overlap makes the hand-over
from one tile to the next C1-smooth, so no step appears at a tile edge.

This module owns only the geometry and the blending arithmetic; the denoising loop lives in
``model/engine.py``. Everything works in any unit (working pixels or latents): the plan's tiles are
in working pixels and aligned to 8, so ``scale_boxes(plan.tiles, 8)`` gives the exact latent boxes.

Typical use in a sampler step (latents ``z`` of shape (B, C, h, w))::

    boxes = scale_boxes(plan.tiles, 8)
    blender = TileBlender(h, w, boxes)
    preds = [denoise(blender.crop(z, i)) for i in range(len(boxes))]   # batch these in practice
    z_pred = blender.blend(preds)                                       # (B, C, h, w)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from mtcolor_batch.core.config import tile_problem
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import LATENT_FACTOR, Box

__all__ = [
    "Box",
    "axis_starts",
    "blend_window",
    "canvas_tiles",
    "crop_masks",
    "neighbour_overlaps",
    "scale_boxes",
    "tile_boxes",
    "TileBlender",
]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def axis_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles along one axis.

    Tiles are ``tile`` long, consecutive tiles overlap by at least ``overlap``, the first starts at
    0 and the last ends exactly at ``length``. The fewest tiles that satisfy this are used and
    spread evenly, so every overlap is about the same (an uneven last overlap would make the last
    seam blend differently). Starts are rounded to multiples of ``align`` (8 keeps pixel tiles on the
    latent grid); that never shrinks an overlap when ``tile - overlap`` and ``length - tile`` are
    multiples of ``align``. When ``length <= tile`` there is one start, 0 (the tile is the canvas).
    """
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be >= 1 (got {length}, {tile})")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) (got {overlap} for tile {tile})")
    if length <= tile:
        return [0]
    stride = tile - overlap
    span = length - tile
    n = math.ceil(span / stride) + 1
    starts = []
    for i in range(n):
        exact = i * span / (n - 1)
        start = int(round(exact / align)) * align
        starts.append(min(max(start, 0), span))
    starts[-1] = span
    # Rounding can only merge neighbours in degenerate cases; keep starts strictly increasing.
    return sorted(set(starts))


def tile_boxes(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[Box]:
    """Boxes ``(x0, y0, x1, y1)`` (exclusive ends) covering a ``height`` x ``width`` canvas.

    Row-major order (top row first). Along an axis longer than ``tile`` every box is exactly
    ``tile`` long and the last is flush with the border; along an axis not longer than ``tile`` the
    box spans the whole axis, so a canvas that fits one tile gives exactly one box equal to the
    canvas. Together the boxes cover every pixel.
    """
    ys = axis_starts(height, tile, overlap, align)
    xs = axis_starts(width, tile, overlap, align)
    th, tw = min(tile, height), min(tile, width)
    return [(x, y, x + tw, y + th) for y in ys for x in xs]


def canvas_tiles(height: int, width: int, tile_size: int, tile_overlap: int) -> list[Box]:
    """The tile grid (working pixels) of a ``height`` x ``width`` canvas: the one tiling rule.

    ``stages.plan.make_plan`` records it in the Plan; the sampler applies it again only to a canvas
    the plan was not made for. Raises UserError for tile settings the latent grid cannot honour.
    """
    problem = tile_problem(tile_size, tile_overlap)
    if problem is not None:
        raise UserError(problem)
    return tile_boxes(height, width, tile_size, tile_overlap, align=LATENT_FACTOR)


def scale_boxes(boxes: Sequence[Box], factor: int) -> list[Box]:
    """Divide pixel boxes by ``factor`` (8: working pixels -> latents); every edge must divide."""
    out = []
    for box in boxes:
        if any(v % factor for v in box):
            raise ValueError(f"box {box} is not aligned to {factor}")
        out.append(tuple(v // factor for v in box))
    return out  # type: ignore[return-value]


def _ramp(n: int, ramp: int) -> np.ndarray:
    """1-D weights of length n rising over ``ramp`` samples at the start (raised cosine, never 0)."""
    w = np.ones(n, dtype=np.float64)
    if ramp > 0:
        t = (np.arange(ramp, dtype=np.float64) + 0.5) / ramp
        w[:ramp] = np.sin(0.5 * np.pi * t) ** 2
    return w


def blend_window(th: int, tw: int, ramps: int | tuple[int, int, int, int]) -> np.ndarray:
    """Blending weights (th, tw) float32 for one tile.

    ``ramps`` is the ramp width on each side, as one int or ``(top, bottom, left, right)``; a side
    on the canvas border gets 0 (full weight up to the edge, so border pixels are never down-
    weighted). Over a ramp the weight follows sin^2 from near 0 to 1, sampled at pixel centres:
    two tiles overlapping by exactly the ramp width have weights summing to 1 (a partition of
    unity) with zero slope at both ends of the overlap, which is what removes seams. Weights are
    strictly positive, so normalising by the summed weights is always safe. Ramps are capped at
    half the tile so opposite ramps never overlap.
    """
    top, bottom, left, right = (ramps,) * 4 if isinstance(ramps, int) else ramps
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"ramp widths must be >= 0 (got {ramps})")
    top, bottom = min(top, th // 2), min(bottom, th // 2)
    left, right = min(left, tw // 2), min(right, tw // 2)
    wy = _ramp(th, top) * _ramp(th, bottom)[::-1]
    wx = _ramp(tw, left) * _ramp(tw, right)[::-1]
    return np.outer(wy, wx).astype(np.float32)


def neighbour_overlaps(boxes: Sequence[Box], index: int) -> tuple[int, int, int, int]:
    """How far each side of tile ``index`` is overlapped by other tiles: (top, bottom, left, right).

    A side that no other tile crosses (a canvas border) gives 0. Used as the ramp widths, so the
    ramp spans the real overlap even when even spacing made it wider than the profile's minimum.
    """
    x0, y0, x1, y1 = boxes[index]
    top = bottom = left = right = 0
    for j, (a0, b0, a1, b1) in enumerate(boxes):
        if j == index:
            continue
        rows = b0 < y1 and y0 < b1
        cols = a0 < x1 and x0 < a1
        if rows and a0 < x0 < a1:
            left = max(left, min(a1, x1) - x0)
        if rows and a0 < x1 < a1:
            right = max(right, x1 - max(a0, x0))
        if cols and b0 < y0 < b1:
            top = max(top, min(b1, y1) - y0)
        if cols and b0 < y1 < b1:
            bottom = max(bottom, y1 - max(b0, y0))
    return top, bottom, left, right


def _crop(arr: ArrayT, box: Box) -> ArrayT:
    x0, y0, x1, y1 = box
    return arr[..., y0:y1, x0:x1]


def crop_masks(masks: ArrayT, box: Box, min_pixels: int = 1) -> tuple[ArrayT, list[int]]:
    """Crop per-instance masks (..., N, H, W) to a tile and list the instances present in it.

    Returns the cropped masks (all N slots kept, so slot k still means instance k and an instance
    cut by a tile border keeps one text and one colour everywhere) and the slot indices with at
    least ``min_pixels`` pixels inside the tile (the sampler can skip absent instances' text).
    Works on numpy arrays and torch tensors; masks must be at the same scale as ``box``.
    """
    crop = _crop(masks, box)
    if crop.ndim < 3:
        raise ValueError("masks must have shape (..., N, H, W)")
    if isinstance(crop, torch.Tensor):
        counts = (crop != 0).flatten(-2).sum(-1)
        while counts.ndim > 1:
            counts = counts.amax(0)
        present = [int(i) for i in torch.nonzero(counts >= min_pixels).flatten().tolist()]
    else:
        counts = (crop != 0).reshape(*crop.shape[:-2], -1).sum(-1)
        while counts.ndim > 1:
            counts = counts.max(0)
        present = [int(i) for i in np.nonzero(counts >= min_pixels)[0]]
    return crop, present


class TileBlender:
    """Crops a canvas into tiles and blends per-tile results back with normalised smooth weights.

    Built once per canvas size (weights and their per-pixel sum are precomputed); ``blend`` then
    costs one multiply-add per tile pixel. Works for torch tensors (latents (B, C, h, w), any device;
    fp16/bf16 are accumulated in float32) and numpy arrays (..., h, w). With a single tile covering
    the canvas ``blend`` returns the tile unchanged (bit-identical), so untiled sampling is exact.
    """

    def __init__(self, height: int, width: int, boxes: Sequence[Box], ramps: int | None = None) -> None:
        """``ramps``: fixed ramp width for every overlapped side; default: each side's real overlap."""
        if not boxes:
            raise ValueError("no tiles")
        self.height, self.width = height, width
        self.boxes: list[Box] = [tuple(int(v) for v in b) for b in boxes]  # type: ignore[misc]
        for x0, y0, x1, y1 in self.boxes:
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(f"tile {(x0, y0, x1, y1)} outside the {width}x{height} canvas")
        self.windows: list[np.ndarray] = []
        for i, (x0, y0, x1, y1) in enumerate(self.boxes):
            sides = neighbour_overlaps(self.boxes, i)
            if ramps is not None:
                sides = tuple(ramps if s > 0 else 0 for s in sides)  # type: ignore[assignment]
            self.windows.append(blend_window(y1 - y0, x1 - x0, sides))
        total = np.zeros((height, width), dtype=np.float64)
        for (x0, y0, x1, y1), win in zip(self.boxes, self.windows, strict=True):
            total[y0:y1, x0:x1] += win
        if (total <= 0).any():
            raise ValueError("tiles do not cover the canvas")
        self.total = total.astype(np.float32)
        # Per-tile weights already divided by the per-pixel sum: blend = sum(tile * norm_window).
        self.norm_windows = [
            (win / total[y0:y1, x0:x1]).astype(np.float32)
            for (x0, y0, x1, y1), win in zip(self.boxes, self.windows, strict=True)
        ]
        self._torch_cache: dict[tuple[Any, Any], list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.boxes)

    def crop(self, canvas: ArrayT, index: int) -> ArrayT:
        """The part of ``canvas`` (..., h, w) under tile ``index`` (a view, no copy)."""
        return _crop(canvas, self.boxes[index])

    def crop_all(self, canvas: ArrayT) -> list[ArrayT]:
        """Every tile's view of ``canvas``, in tile order."""
        return [_crop(canvas, b) for b in self.boxes]

    def weights(self, index: int) -> np.ndarray:
        """Normalised weights of tile ``index`` (th, tw): summed over tiles they are 1 everywhere."""
        return self.norm_windows[index]

    def _torch_windows(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        key = (device, dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = [
                torch.from_numpy(w).to(device=device, dtype=dtype) for w in self.norm_windows
            ]
        return self._torch_cache[key]

    def blend(self, tiles: Sequence[ArrayT]) -> ArrayT:
        """Weighted average of per-tile results (..., th, tw) into the canvas (..., h, w).

        Every tile must have the same leading shape. The result has the tiles' dtype (and device).
        """
        if len(tiles) != len(self.boxes):
            raise ValueError(f"expected {len(self.boxes)} tiles, got {len(tiles)}")
        if len(self.boxes) == 1 and tuple(tiles[0].shape[-2:]) == (self.height, self.width):
            return tiles[0]
        first = tiles[0]
        lead: tuple[int, ...] = tuple(first.shape[:-2])
        if isinstance(first, torch.Tensor):
            acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
            out = torch.zeros(*lead, self.height, self.width, device=first.device, dtype=acc_dtype)
            wins = self._torch_windows(first.device, acc_dtype)
            for (x0, y0, x1, y1), win, tile in zip(self.boxes, wins, tiles, strict=True):
                out[..., y0:y1, x0:x1] += tile.to(acc_dtype) * win
            return out.to(first.dtype)
        acc = np.float64 if first.dtype == np.float64 else np.float32
        out_np = np.zeros((*lead, self.height, self.width), dtype=acc)
        for (x0, y0, x1, y1), win, tile in zip(self.boxes, self.norm_windows, tiles, strict=True):
            out_np[..., y0:y1, x0:x1] += tile.astype(acc, copy=False) * win
        return out_np.astype(first.dtype, copy=False)
