"""The typed records that flow one way through a run.

scan -> instances -> plan -> sample -> compose -> write. Each stage takes and returns these plain
dataclasses, so a stage can be tested, replaced or run on another machine (Ray) on its own.
Arrays are numpy so the records pickle cheaply and never hold a GPU tensor between stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, x1/y1 exclusive, in the oriented scan."""


@dataclass
class Scan:
    """A loaded, oriented scan reduced to what colorization needs.

    ``luma`` keeps 16-bit precision (float32 in [0, 1]); the original's metadata rides along so
    the output can carry it forward.
    """

    source: Path
    relpath: str
    luma: np.ndarray  # float32 HxW in [0, 1]
    format: str  # Pillow format name of the input: JPEG, PNG, TIFF, WEBP, BMP
    mode: str  # original Pillow mode, e.g. "L", "I;16", "RGB", "CMYK", "P"
    bit_depth: int  # 8 or 16: the output keeps it
    sha256: str
    icc_profile: bytes | None = None
    exif: bytes | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "RGB scan converted to luminance"
    compression: str | None = None  # TIFF only, Pillow's name ("raw", "tiff_lzw"...): outputs follow it

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        h, w = self.luma.shape
        return h, w


@dataclass(frozen=True)
class ColorHint:
    """A colour a user said something really was, as CIELAB (D65)."""

    lab: tuple[float, float, float]
    name: str  # as the user wrote it, for provenance and the default text


@dataclass
class Instance:
    """One thing in a scan that gets its own text and attention region.

    The region is ``box`` plus ``mask`` cropped to it (``mask.shape == (y1 - y0, x1 - x0)``), never
    a full-image array: a sidecar may hold hundreds of hints and a scan 100 MP, and a full bool
    array per hint would be N x the scan. Whatever needs the region in another frame (a tile, the
    working or latent grid, a training canvas) asks for it through :meth:`in_window` /
    :meth:`resized`, which touch only the box. The image size is the caller's: every consumer
    already holds the scan or canvas the instance belongs to.
    """

    id: int  # stable within a file
    label: str
    text: str
    mask: np.ndarray  # bool (y1 - y0, x1 - x0): the region's pixels inside ``box``
    box: Box  # where ``mask`` sits in the image it belongs to
    source: Literal["auto", "sidecar"] = "auto"
    score: float = 1.0
    color: ColorHint | None = None
    prompt_box: Box | None = None  # a detection's box from the detector; it need not bound the mask
    hint_from: str | None = None  # where its colour/text is written: "a/photo.png.yaml:4" (file:line)

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if self.mask.ndim != 2 or self.mask.shape != (y1 - y0, x1 - x0):
            raise ValueError(
                f"instance '{self.label}': mask {self.mask.shape} is not the size of its box {self.box}"
            )
        if self.mask.dtype != np.bool_:
            self.mask = self.mask.astype(bool)

    @classmethod
    def from_full_mask(cls, id: int, label: str, text: str, mask: np.ndarray, **kw: Any) -> Instance:
        """An instance from an image-sized mask: cropped to its tight box (an empty mask: a 0x0 box)."""
        full = np.asarray(mask, dtype=bool)
        box = box_from_mask(full) or (0, 0, 0, 0)
        x0, y0, x1, y1 = box
        return cls(id, label, text, full[y0:y1, x0:x1].copy(), box, **kw)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def match_box(self) -> Box:
        """The box matching and ordering compare: a detection's prompt box, else the region's box."""
        return self.prompt_box if self.prompt_box is not None else self.box

    def in_window(self, window: Box) -> np.ndarray:
        """The region inside ``window`` (x0, y0, x1, y1, same image) as a window-sized bool array.

        Only the overlap is copied, so a tile, a working canvas or a crop costs the window's size
        whatever the image's. ``in_window((0, 0, w, h))`` is the full-image mask.
        """
        wx0, wy0, wx1, wy1 = window
        out = np.zeros((max(0, wy1 - wy0), max(0, wx1 - wx0)), dtype=bool)
        x0, y0, x1, y1 = self.box
        ix0, iy0, ix1, iy1 = max(x0, wx0), max(y0, wy0), min(x1, wx1), min(y1, wy1)
        if ix0 < ix1 and iy0 < iy1:
            part = self.mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            out[iy0 - wy0 : iy1 - wy0, ix0 - wx0 : ix1 - wx0] = part
        return out

    def full(self, size: tuple[int, int]) -> np.ndarray:
        """The image-sized (h, w) bool mask: for small canvases only (training, tests, overlays)."""
        return self.in_window((0, 0, size[1], size[0]))

    def resized(self, src_size: tuple[int, int], dst_size: tuple[int, int]) -> Instance:
        """The instance in an image of ``dst_size`` (h, w) resampled from ``src_size``: nearest, on the crop.

        Each destination pixel takes the source pixel under its centre, the same grid for every
        instance, so exclusive regions stay exclusive; the box is scaled outward. Identical to
        resampling the full-image mask, at the cost of the box only.
        """
        (sh, sw), (h, w) = src_size, dst_size
        sx, sy = w / sw, h / sh
        x0, y0, x1, y1 = self.box
        nx0, ny0 = min(w - 1, max(0, math.floor(x0 * sx))), min(h - 1, max(0, math.floor(y0 * sy)))
        nx1, ny1 = max(nx0 + 1, min(w, math.ceil(x1 * sx))), max(ny0 + 1, min(h, math.ceil(y1 * sy)))
        cols, rows = nearest_index(sw, w), nearest_index(sh, h)
        # Grow to every destination pixel whose source lies in the box (guards float edge cases).
        c0, c1 = np.searchsorted(cols, [x0, x1]) if x1 > x0 else (nx0, nx0)
        r0, r1 = np.searchsorted(rows, [y0, y1]) if y1 > y0 else (ny0, ny0)
        if c1 > c0 and r1 > r0:
            nx0, nx1 = min(nx0, int(c0)), max(nx1, int(c1))
            ny0, ny1 = min(ny0, int(r0)), max(ny1, int(r1))
        sub_r, sub_c = rows[ny0:ny1] - y0, cols[nx0:nx1] - x0
        in_r = (sub_r >= 0) & (sub_r < y1 - y0)
        in_c = (sub_c >= 0) & (sub_c < x1 - x0)
        mask = np.zeros((ny1 - ny0, nx1 - nx0), dtype=bool)
        if in_r.any() and in_c.any():
            mask[np.ix_(in_r, in_c)] = self.mask[np.ix_(sub_r[in_r], sub_c[in_c])]
        return replace(self, mask=mask, box=(nx0, ny0, nx1, ny1), prompt_box=None)


def nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index under each destination pixel's centre (nearest resampling of ``src`` -> ``dst``)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def stack_masks(instances: Sequence[Instance], size: tuple[int, ...]) -> np.ndarray:
    """float32 (N, h, w) 0/1 masks of ``instances`` on an (h, w) canvas: N canvas-sized planes.

    For small canvases only (references in tests, training crops): the sampler never stacks
    instances, it works box by box (``model.canvas.build_canvas``).
    """
    h, w = size
    out = np.zeros((len(instances), h, w), dtype=np.float32)
    for k, inst in enumerate(instances):
        check_box_inside(inst, size)
        x0, y0, x1, y1 = inst.box
        out[k, y0:y1, x0:x1] = inst.mask
    return out


def check_box_inside(inst: Instance, size: tuple[int, ...]) -> None:
    """Refuse an instance whose box leaves an (h, w) image: it belongs to another resolution."""
    h, w = size
    x0, y0, x1, y1 = inst.box
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ValueError(f"instance {inst.id} '{inst.label}' box {inst.box} is outside the {w}x{h} image")


LATENT_FACTOR = 8
"""Pixels per latent cell of the Stable Diffusion VAE: working sizes and tiles are multiples of it."""


@dataclass
class Plan:
    """Everything the sampler needs to know besides the pixels; recorded in provenance.

    No field has a default of its own: the sampling values come from the profile
    (``core.config.SamplingSettings``, through ``stages.plan.make_plan``), the one table of defaults.
    """

    scan_size: tuple[int, int]  # (h, w) of the full-resolution scan
    working_size: tuple[int, int]  # (h, w) the engine runs at (multiple of 8 after padding)
    tile_size: int  # pixels, square
    tile_overlap: int  # pixels
    tiles: list[Box]  # tile boxes in working pixels; one box covering everything when untiled
    seed: int
    steps: int
    guidance_scale: float
    controlnet_scale: float
    alpha: float
    beta: float
    prompt: str
    negative_prompt: str
    max_batch: int  # UNet batch cap; larger batches are chunked
    fusion: str  # multi-instance fusion after step K: paper | paste | blend (sampling.fusion)
    branch_crop: int  # px of context around an instance its branch runs on; 0 = whole tile
    branch_uncond: str  # own | global: whose unconditional half guides an instance branch
    branch_refresh: int  # instance branches run at every Nth of the first K steps; 1 = every one
    scheduler: str  # sampling.scheduler: the denoising scheduler (model/schedulers.py)
    tcd_gamma: float  # sampling.tcd_gamma: TCD's stochasticity (diffusers' eta of TCDScheduler.step)
    accelerator: str  # sampling.accelerator: the distilled LoRA fused into the UNet (recorded)


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Tight (x0, y0, x1, y1) box, exclusive ends; ``None`` for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
