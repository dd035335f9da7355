"""One image prepared for sampling: its padded control image, region labels, fusion masks, tile and
crop boxes, and the mask encoder's input per window (cached).

Why apart from the loop (``model/sampler.py``): all of this is geometry fixed before the first step;
it is built and tested without a scheduler or a denoiser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from mtcolor_batch.core.types import LATENT_FACTOR, Box, Instance, Plan, box_from_mask, check_box_inside
from mtcolor_batch.model.regions import (
    MASK_INPUT_SIZE,
    RegionBatch,
    cell_coverage,
    label_map_of_boxes,
    mask_input,
    one_hot,
)
from mtcolor_batch.render.tiling import TileBlender, canvas_tiles, crop_masks, scale_boxes

__all__ = [
    "CROP_CELL",
    "WINDOW_CHUNK",
    "Canvas",
    "area_resized",
    "build_canvas",
    "ceil8",
    "crop_boxes",
    "grid_span",
    "plan_latent_tiles",
    "resize_plane",
    "whole_canvas",
]


@dataclass
class Canvas:
    """One image prepared for sampling at one resolution (padded to a multiple of 8).

    Instances stay box + crop (their boxes in this canvas's pixels): per instance the canvas holds
    latent-resolution planes only (``fusion_masks``), and the mask encoder's input of a window
    (:meth:`mask_input`) is built from the crops, one window at a time.
    """

    height: int  # unpadded pixels
    width: int
    control: torch.Tensor  # (1, 3, Hp, Wp) in [0, 1]
    label_map: torch.Tensor  # (1, h, w) long: the canvas's regions (regions.label_map rule)
    inst_text: torch.Tensor  # (1, N, D_text) pooled instance texts
    instances: list[Instance]  # in this canvas's pixels
    fusion_masks: torch.Tensor  # (N, h, w) float exclusive one-hot of the label map
    boxes: list[Box]  # latent tile boxes
    blender: TileBlender
    present: list[list[int]] = field(default_factory=list)  # per tile: instance slots (0-based) inside
    crops: list[Box] = field(default_factory=list)  # per instance: latent box its branch runs on
    box_present: dict[Box, list[int]] = field(default_factory=dict)  # cache of instances per crop box
    window_masks: dict[Box, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # mask_input

    @property
    def latent_size(self) -> tuple[int, int]:
        return tuple(self.label_map.shape[-2:])  # type: ignore[return-value]

    @property
    def n_instances(self) -> int:
        return len(self.instances)

    def mask_input(self, box: Box) -> torch.Tensor:
        """(1, N, S, S) float32: the mask encoder's input for latent window ``box``.

        Each instance's mask inside the window, area-resized (``regions.mask_input``) exactly as
        the encoder would resize the window-sized mask itself; slots whose box misses the window
        are zero. Only the instances meeting the window are resized, a few at a time, and the
        cache keeps the non-zero part of each result (the S x S cells over the instance's box, as
        flat indices and values: one scatter per call), never a window-sized plane: a canvas with
        hundreds of instances and as many crop windows holds about a box's worth per (window,
        instance met).
        """
        if box not in self.window_masks:
            x0, y0, x1, y1 = (v * LATENT_FACTOR for v in box)
            meets = [
                k
                for k, inst in enumerate(self.instances)
                if inst.box[0] < x1 and inst.box[2] > x0 and inst.box[1] < y1 and inst.box[3] > y0
            ]
            size = MASK_INPUT_SIZE
            index, values = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0)]
            for start in range(0, len(meets), WINDOW_CHUNK):
                chunk = meets[start : start + WINDOW_CHUNK]
                planes = np.stack([self.instances[k].in_window((x0, y0, x1, y1)) for k in chunk])
                resized = mask_input(torch.from_numpy(planes).to(self.control.device)).cpu()
                for k, m in zip(chunk, resized, strict=True):
                    rows = torch.nonzero(m.any(1)).flatten()
                    if rows.numel():
                        cols = torch.nonzero(m.any(0)).flatten()
                        r = torch.arange(int(rows[0]), int(rows[-1]) + 1)
                        c = torch.arange(int(cols[0]), int(cols[-1]) + 1)
                        index.append((k * size * size + r[:, None] * size + c[None, :]).flatten())
                        values.append(m[r[0] : r[-1] + 1, c[0] : c[-1] + 1].flatten())
            device = self.control.device
            self.window_masks[box] = (torch.cat(index).to(device), torch.cat(values).to(device))
        flat, cells = self.window_masks[box]
        out = torch.zeros(self.n_instances * MASK_INPUT_SIZE**2, device=self.control.device)
        out[flat] = cells
        return out.view(1, self.n_instances, MASK_INPUT_SIZE, MASK_INPUT_SIZE)

    def regions(self, box: Box, present: Sequence[int], cond: bool) -> RegionBatch:
        """The regions of latent window ``box``: its labels, its mask encoder input, the instance
        texts valid for the slots in ``present`` (none for the unconditional half)."""
        n = self.n_instances
        valid = torch.zeros(1, n, dtype=torch.bool, device=self.label_map.device)
        if cond:
            valid[0, list(present)] = True
        x0, y0, x1, y1 = box
        return RegionBatch(self.label_map[:, y0:y1, x0:x1], self.mask_input(box), self.inst_text, valid)


WINDOW_CHUNK = 8
"""Instances whose window-sized masks exist at once while :meth:`Canvas.mask_input` resizes them."""


def ceil8(v: int) -> int:
    """``v`` pixels rounded up to whole latent cells (at least one): a canvas's padded side."""
    return max(LATENT_FACTOR, -(-v // LATENT_FACTOR) * LATENT_FACTOR)


def resize_plane(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-downsample / bilinear-upsample a (..., H, W) float array to ``size`` (h, w)."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    lead = t.shape[:-2]
    t = t.reshape(1, -1, *t.shape[-2:])
    if size[0] <= t.shape[-2] and size[1] <= t.shape[-1]:
        out = F.interpolate(t, size=size, mode="area")
    else:
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).numpy()


def plan_latent_tiles(plan: Plan, height: int, width: int) -> list[Box]:
    """Latent tile boxes for a padded canvas of ``height`` x ``width`` pixels.

    The plan's own tiles when they fit this canvas exactly (aligned to 8, inside, covering it), so
    provenance describes what ran; otherwise the plan's tiling rule (``render.tiling.canvas_tiles``)
    applied to this canvas, e.g. a caller's luma at another size.
    """
    tiles: list[Box] = [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in plan.tiles]
    fits_one = height <= plan.tile_size and width <= plan.tile_size
    if fits_one or not _tiles_cover(tiles, height, width):
        tiles = canvas_tiles(height, width, plan.tile_size, plan.tile_overlap)
    return scale_boxes(tiles, LATENT_FACTOR)


def whole_canvas(height: int, width: int) -> list[Box]:
    """One latent box over a padded canvas of ``height`` x ``width`` pixels: sampling without tiles."""
    return [(0, 0, width // LATENT_FACTOR, height // LATENT_FACTOR)]


def _tiles_cover(tiles: list[Box], height: int, width: int) -> bool:
    """Several 8-aligned boxes inside the canvas that together cover every pixel of it."""
    ok = len(tiles) > 1 and all(
        all(v % LATENT_FACTOR == 0 for v in b) and 0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height
        for b in tiles
    )
    if ok:
        cover = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in tiles:
            cover[y0:y1, x0:x1] = True
        ok = bool(cover.all())
    return ok


CROP_CELL = 64 // LATENT_FACTOR
"""Crops are multiples of 64 px (8 latent cells) placed on the UNet's 64 px grid: SD 1.5 halves the
latent three times, so a crop whose origin is on that grid downsamples exactly like the whole tile
(measured at full size: a crop off the grid moved the fused latents 2.5x more than one on it)."""


def grid_span(lo: int, hi: int, start: int, end: int, cell: int = CROP_CELL) -> tuple[int, int]:
    """The smallest span covering [lo, hi) inside [start, end), a multiple of ``cell`` long and
    beginning a multiple of ``cell`` after ``start`` (where [start, end) leaves room for both)."""
    size = min(end - start, -(-(hi - lo) // cell) * cell)
    first = start + (lo - start) // cell * cell  # on the grid, at or before lo
    if first + size < hi:  # no grid origin keeps this size: one cell more
        size = min(end - start, size + cell)
    first = min(first, end - size)
    return first, first + size


def crop_boxes(fusion: torch.Tensor, margin_px: int) -> list[Box]:
    """Per instance, the latent box its branch runs on: its region's bounding box + ``margin_px``,
    grown to a multiple of 64 px on the canvas's 64 px grid (:func:`grid_span`) and kept inside the
    canvas; empty for an empty region."""
    n, lh, lw = fusion.shape
    margin = -(-margin_px // LATENT_FACTOR)
    boxes: list[Box] = []
    for k in range(n):
        ys, xs = torch.nonzero(fusion[k], as_tuple=True)
        if ys.numel() == 0:
            boxes.append((0, 0, 0, 0))
            continue
        x0, x1 = grid_span(max(0, int(xs.min()) - margin), min(lw, int(xs.max()) + 1 + margin), 0, lw)
        y0, y1 = grid_span(max(0, int(ys.min()) - margin), min(lh, int(ys.max()) + 1 + margin), 0, lh)
        boxes.append((x0, y0, x1, y1))
    return boxes


def build_canvas(
    luma: np.ndarray,
    instances: Sequence[Instance],
    inst_text: torch.Tensor,
    boxes_fn: Callable[[int, int], list[Box]],
    device: torch.device,
    dtype: torch.dtype,
    branch_crop: int = 0,
) -> Canvas:
    """Pad luma (edge-replicated) to a multiple of 8 and derive every map from the instances (boxes
    in the luma's pixels; the padding is background).

    The labels follow :func:`regions.label_map` (the rule training uses), computed box by box
    (:func:`regions.label_map_of_boxes`): no instance is ever drawn over the whole canvas.
    ``branch_crop`` > 0 gives every instance branch a crop box (:func:`crop_boxes`).
    """
    h, w = luma.shape
    hp, wp = ceil8(h), ceil8(w)
    n = len(instances)
    for inst in instances:
        check_box_inside(inst, (h, w))
    lum = np.pad(luma.astype(np.float32), ((0, hp - h), (0, wp - w)), mode="edge")
    control = torch.from_numpy(lum)[None, None].expand(1, 3, hp, wp).contiguous()
    lh, lw = hp // LATENT_FACTOR, wp // LATENT_FACTOR
    labels = label_map_of_boxes((_cell_coverage(inst) for inst in instances), (lh, lw))[None]
    fusion = one_hot(labels[0], n)
    boxes = boxes_fn(hp, wp)
    blender = TileBlender(lh, lw, boxes)
    present = [crop_masks(fusion[None], box)[1] for box in boxes] if n else [[] for _ in boxes]
    return Canvas(
        height=h,
        width=w,
        control=control.to(device=device, dtype=dtype),
        label_map=labels.to(device=device),
        inst_text=inst_text.float()[None].to(device=device, dtype=dtype),
        instances=list(instances),
        fusion_masks=fusion.to(device=device, dtype=torch.float32),
        boxes=boxes,
        blender=blender,
        present=present,
        crops=crop_boxes(fusion, branch_crop) if branch_crop > 0 and n else [],
    )


def _cell_coverage(inst: Instance) -> tuple[Box, torch.Tensor]:
    """The instance's latent box (its box grown to whole 8 px cells) and its coverage of each cell."""
    x0, y0, x1, y1 = inst.box
    if x1 <= x0 or y1 <= y0:
        return (0, 0, 0, 0), torch.zeros(0, 0)
    s = LATENT_FACTOR
    cx0, cy0, cx1, cy1 = x0 // s, y0 // s, -(-x1 // s), -(-y1 // s)
    crop = torch.from_numpy(inst.in_window((cx0 * s, cy0 * s, cx1 * s, cy1 * s)))
    return (cx0, cy0, cx1, cy1), cell_coverage(crop)


def area_resized(inst: Instance, src: tuple[int, int], dst: tuple[int, int]) -> Instance:
    """``inst`` on a ``dst`` (h, w) image as ``resize_plane(full mask, dst) >= 0.5`` (area) gives it.

    Computed on the crop: an area resize averages each output pixel's bin (PyTorch's adaptive bins:
    [floor(i*H/h), ceil((i+1)*H/h))), so a pixel is in when twice its covered count reaches its bin's
    size, an integer test the float average decides the same way at these sizes (the average is
    never within rounding of 1/2 unless it is 1/2). Upsampling (bilinear) is done on the full mask.
    """
    (sh, sw), (h, w) = src, dst
    if h > sh or w > sw:
        full = resize_plane(inst.full(src).astype(np.float32), dst) >= 0.5
        x0, y0, x1, y1 = box_from_mask(full) or (0, 0, 0, 0)
        return replace(inst, mask=full[y0:y1, x0:x1].copy(), box=(x0, y0, x1, y1), prompt_box=None)
    x0, y0, x1, y1 = inst.box

    def bins(n_out: int, n_in: int, lo: int, hi: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        i = np.arange(n_out)
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        hit = np.flatnonzero((start < hi) & (end > lo)) if hi > lo else np.zeros(0, np.int64)
        first = int(hit[0]) if hit.size else 0
        a, b = np.clip(start[hit] - lo, 0, hi - lo), np.clip(end[hit] - lo, 0, hi - lo)
        return first, a, b, end[hit] - start[hit]

    r0, ra, rb, kh = bins(h, sh, y0, y1)
    c0, ca, cb, kw = bins(w, sw, x0, x1)
    table = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.int64)
    table[1:, 1:] = inst.mask.astype(np.int64).cumsum(0).cumsum(1)
    counts = table[np.ix_(rb, cb)] - table[np.ix_(ra, cb)] - table[np.ix_(rb, ca)] + table[np.ix_(ra, ca)]
    mask = 2 * counts >= kh[:, None] * kw[None, :]
    if mask.size == 0:
        return replace(inst, mask=np.zeros((0, 0), bool), box=(0, 0, 0, 0), prompt_box=None)
    return replace(inst, mask=mask, box=(c0, r0, c0 + mask.shape[1], r0 + mask.shape[0]), prompt_box=None)
