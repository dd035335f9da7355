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
NO_HINT_RGB = (255, 255, 255)
"""Tag colour of an instance without a colour hint: it gets no fill, only a dashed black-and-white
outline, so it never looks like a hint (a palette colour used to make it look like one)."""


def instance_rgb(inst: Instance, k: int = 0) -> tuple[int, int, int]:
    """The hint colour in sRGB 0-255, or :data:`NO_HINT_RGB` when the instance has no colour hint."""
    del k  # kept for callers that pass the position: the colour no longer depends on it
    if inst.color is None:
        return NO_HINT_RGB

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


def _dashes(shape: tuple[int, int], offset: tuple[int, int], period: int) -> np.ndarray:
    """True on the white dashes of a black-and-white dashed outline (diagonal stripes of ``period``)."""
    ys, xs = np.indices(shape)
    return ((xs + offset[1] + ys + offset[0]) // period) % 2 == 0


def render_overlay(luma: np.ndarray, instances: Sequence[Instance], *, numbered: bool = True) -> Image.Image:
    """RGB image of ``luma``'s size: fills, outlines, then "id label" tags on top.

    An instance with a colour hint is filled and outlined in that colour; one without (detected
    and not coloured by any hint) only gets a dashed black-and-white outline and a white tag.
    ``numbered=False`` leaves the run's ids out of the tags (the editor numbers hints itself, and
    one picture must carry one numbering).
    """
    h, w = luma.shape
    gray = np.round(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    thickness = max(1, min(h, w) // 300)
    colors = [instance_rgb(inst) for inst in instances]
    for inst, color in zip(instances, colors, strict=True):
        check_box_inside(inst, (h, w))
        if inst.color is None:
            continue
        x0, y0, x1, y1 = inst.box
        region = rgb[y0:y1, x0:x1]  # a view: each instance works on its own box only
        fill = FILL_ALPHA * np.asarray(color, np.float32)
        region[inst.mask] = (1.0 - FILL_ALPHA) * region[inst.mask] + fill
    for inst, color in zip(instances, colors, strict=True):
        x0, y0, x1, y1 = inst.box
        inner = ndimage.binary_erosion(inst.mask, iterations=thickness, border_value=0)
        edge = inst.mask & ~inner
        region = rgb[y0:y1, x0:x1]
        if inst.color is None:
            white = _dashes(edge.shape, (y0, x0), 4 * thickness)
            region[edge & white] = NO_HINT_RGB
            region[edge & ~white] = (0, 0, 0)
        else:
            region[edge] = color
    image = Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(h, w) // 40))
    placed: list[tuple[int, int, int, int]] = []
    for inst, color in zip(instances, colors, strict=True):
        text = f"{inst.id} {inst.label}" if numbered else inst.label
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x, y = min(inst.box[0], max(0, w - tw)), min(inst.box[1], max(0, h - th))
        for _ in range(len(placed)):  # tags of neighbours sharing a corner would hide each other
            if not any(_overlaps((x, y, x + tw, y + th), other) for other in placed):
                break
            y = y + th if y + 2 * th <= h else max(0, y - th)
        placed.append((x, y, x + tw, y + th))
        edge = (0, 0, 0) if inst.color is None else None
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=color, outline=edge)
        draw.text((x + 2 - left, y + 2 - top), text, fill=_ink(color), font=font)
    return image


def legend_line(inst: Instance) -> str:
    """What the legend (and ``hints show``'s listing) says about one instance."""
    if inst.color is not None:
        return f"{inst.id} {inst.label} ({inst.source}): colour {inst.color.name}"
    return f"{inst.id} {inst.label} ({inst.source}): no colour hint"


def with_legend(image: Image.Image, instances: Sequence[Instance]) -> Image.Image:
    """``image`` with a legend strip below it: a swatch (filled, or dashed for no colour) and
    :func:`legend_line` per instance. Added below, so the picture keeps its scan-pixel coordinates."""
    w, h = image.size
    font = _font(max(10, min(14, w // 30)))
    probe = ImageDraw.Draw(image)
    line_h = max(int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 6, 12)
    lines = [legend_line(inst) for inst in instances] or ["no instances"]
    out = Image.new("RGB", (w, h + line_h * len(lines) + 4), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    sw = line_h - 4
    for k, (inst, text) in enumerate(zip(instances, lines, strict=False)):
        y = h + 2 + k * line_h
        x0, y0, x1, y1 = 2, y + 2, 2 + sw, y + sw
        if inst.color is None:  # a dashed outline, like the instance's own
            for i in range(0, sw, 4):
                draw.line((x0 + i, y0, min(x0 + i + 1, x1), y0), fill=(0, 0, 0))
                draw.line((x0 + i, y1, min(x0 + i + 1, x1), y1), fill=(0, 0, 0))
                draw.line((x0, y0 + i, x0, min(y0 + i + 1, y1)), fill=(0, 0, 0))
                draw.line((x1, y0 + i, x1, min(y0 + i + 1, y1)), fill=(0, 0, 0))
        else:
            draw.rectangle((x0, y0, x1, y1), fill=instance_rgb(inst), outline=(0, 0, 0))
        draw.text((sw + 8, y + 2), text, fill=(0, 0, 0), font=font)
    if not instances:
        draw.text((4, h + 2), lines[0], fill=(0, 0, 0), font=font)
    return out


def write_png(target: Path, image: Image.Image) -> None:
    """PNG written atomically (temp file, fsync, rename): a crash never leaves half a picture."""

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(Path(target), buffer.getvalue())
