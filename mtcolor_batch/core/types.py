"""The typed records that flow one way through a run.

scan -> instances -> plan -> sample -> compose -> write. Each stage takes and returns these plain
dataclasses, so a stage can be tested, replaced or run on another machine (Ray) on its own.
Arrays are numpy so the records pickle cheaply and never hold a GPU tensor between stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """One thing in a scan that gets its own text and attention region."""

    id: int  # stable within a file
    label: str
    text: str
    mask: np.ndarray  # bool HxW at the resolution of the image it belongs to
    box: Box
    source: Literal["auto", "sidecar"] = "auto"
    score: float = 1.0
    color: ColorHint | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


LATENT_FACTOR = 8
"""Pixels per latent cell of the Stable Diffusion VAE: working sizes and tiles are multiples of it."""


@dataclass
class Plan:
    """Everything the sampler needs to know besides the pixels; recorded in provenance."""

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
    max_batch: int = 8  # UNet batch cap; larger batches are chunked
    fusion: str = "paste"  # multi-instance fusion after step K: paper | paste | blend (sampling.fusion)
    branch_crop: int = 0  # px of context around an instance its branch runs on; 0 = whole tile


@dataclass
class Result:
    """The colorized picture at full resolution plus what provenance needs to say about it."""

    rgb: np.ndarray  # float32 HxWx3 in [0, 1], sRGB, full resolution
    chroma: np.ndarray  # float32 2xhxw CIELAB a*, b* at working resolution
    instance_stats: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Tight (x0, y0, x1, y1) box, exclusive ends; ``None`` for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
