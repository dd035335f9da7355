"""The ``hints show`` picture: the scan with every instance the run would use drawn on it.

A user fixing hints needs to see exactly which pixels each hint claims (after overlaps are
settled), which number it has, and what colour it asks for, at the scan's own size so boxes can
be read off in scan pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mtcolor_batch.core.color import lab_to_srgb
from mtcolor_batch.core.fs import atomic_write_bytes
from mtcolor_batch.core.types import Instance, check_box_inside

FILL_ALPHA = 0.45
# Instances without a colour hint get a distinct, colour-blind-friendly marker colour (Okabe-Ito).
PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
]


def instance_rgb(inst: Instance, k: int) -> tuple[int, int, int]:
    """The hint colour in sRGB 0-255, or a palette colour when the instance has no hint."""
    if inst.color is None:
        return PALETTE[k % len(PALETTE)]

    r, g, b = lab_to_srgb(inst.color.lab)
    return round(r * 255), round(g * 255), round(b * 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads on a tag filled with ``color`` (Rec. 709 luma)."""
    r, g, b = color
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b >= 128 else (255, 255, 255)


def render_overlay(luma: np.ndarray, instances: Sequence[Instance]) -> Image.Image:
    """RGB image of ``luma``'s size: fills, outlines, then "id label" tags in the instance colour on top."""
    h, w = luma.shape
    gray = np.round(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    thickness = max(1, min(h, w) // 300)
    colors = [instance_rgb(inst, k) for k, inst in enumerate(instances)]
    for inst, color in zip(instances, colors, strict=True):
        check_box_inside(inst, (h, w))
        x0, y0, x1, y1 = inst.box
        region = rgb[y0:y1, x0:x1]  # a view: each instance works on its own box only
        fill = FILL_ALPHA * np.asarray(color, np.float32)
        region[inst.mask] = (1.0 - FILL_ALPHA) * region[inst.mask] + fill
    for inst, color in zip(instances, colors, strict=True):
        x0, y0, x1, y1 = inst.box
        inner = ndimage.binary_erosion(inst.mask, iterations=thickness, border_value=0)
        rgb[y0:y1, x0:x1][inst.mask & ~inner] = color
    image = Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(h, w) // 40))
    placed: list[tuple[int, int, int, int]] = []
    for inst, color in zip(instances, colors, strict=True):
        text = f"{inst.id} {inst.label}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x, y = min(inst.box[0], max(0, w - tw)), min(inst.box[1], max(0, h - th))
        for _ in range(len(placed)):  # tags of neighbours sharing a corner would hide each other
            if not any(_overlaps((x, y, x + tw, y + th), other) for other in placed):
                break
            y = y + th if y + 2 * th <= h else max(0, y - th)
        placed.append((x, y, x + tw, y + th))
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=color)
        draw.text((x + 2 - left, y + 2 - top), text, fill=_ink(color), font=font)
    return image


def write_png(target: Path, image: Image.Image) -> None:
    """PNG written atomically (temp file, fsync, rename): a crash never leaves half a picture."""

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(Path(target), buffer.getvalue())
