"""Gray, toned (sepia, cyanotype) or real colour: what an RGB file holds, measured on its pixels.

Why one home: the scan loader notes it (an RGB scan whose colour is discarded), the training set
builder and the evaluation protocol refuse a target or reference that is not a colour photo. All
three decide from :func:`measure_tone`, over the one chroma definition (:func:`cbcr`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["TONED_MAX_CHROMA", "Tone", "cbcr", "describe_tone", "measure_tone", "not_colour_reason"]

CB_WEIGHTS = (-0.168736, -0.331264, 0.5)
CR_WEIGHTS = (0.5, -0.418688, -0.081312)
"""ITU-R BT.601 full-range (JPEG) chroma rows, applied to gamma-encoded RGB in [0, 1]."""

TONED_MAX_CHROMA = 0.12
"""A one-hue photo whose 95th-percentile chroma (CbCr, 0-1) stays below this is a toned print."""

ToneKind = Literal["gray", "toned", "colour"]


@dataclass(frozen=True)
class Tone:
    """What an RGB image holds: ``kind`` and its mean chroma (0-1, on a <= 256x256 sample)."""

    kind: ToneKind
    mean_chroma: float


def cbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Cb, Cr) of (..., 3) RGB in [0, 1]: chroma as JPEG defines it, 0 for every gray."""
    rgb = np.asarray(rgb, dtype=np.float64)
    cb = rgb[..., 0] * CB_WEIGHTS[0] + rgb[..., 1] * CB_WEIGHTS[1] + rgb[..., 2] * CB_WEIGHTS[2]
    cr = rgb[..., 0] * CR_WEIGHTS[0] + rgb[..., 1] * CR_WEIGHTS[1] + rgb[..., 2] * CR_WEIGHTS[2]
    return cb, cr


def measure_tone(rgb: np.ndarray, tolerance: float) -> Tone:
    """Gray when the mean chroma is within ``tolerance``; toned when it has one hue throughout.

    A toned print's chroma vectors (Cb, Cr) lie close to one line through the origin: the spread off
    that line (smallest principal axis) within ``tolerance`` means toned. Measured on a grid of at
    most about 256 x 256 pixels, so a 100-megapixel scan costs no more than a thumbnail.
    """
    sample = rgb[:: max(1, rgb.shape[0] // 256), :: max(1, rgb.shape[1] // 256)].reshape(-1, 3)
    cb, cr = cbcr(sample)
    mean_chroma = float(np.hypot(cb, cr).mean())
    if mean_chroma <= tolerance:
        return Tone("gray", mean_chroma)
    vecs = np.stack([cb, cr], axis=1)
    second_moment = vecs.T @ vecs / len(vecs)
    off_axis = float(np.sqrt(max(np.linalg.eigvalsh(second_moment)[0], 0.0)))
    return Tone("toned" if off_axis <= tolerance else "colour", mean_chroma)


def describe_tone(rgb: np.ndarray, tolerance: float) -> str:
    """The scan loader's note for an RGB file: what it held and that only its luminance is used."""
    tone = measure_tone(rgb, tolerance)
    chroma = f"mean chroma {tone.mean_chroma:.3f}"
    if tone.kind == "gray":
        return f"RGB scan is gray ({chroma}): converted to luminance"
    if tone.kind == "toned":
        return f"RGB scan is toned monochrome/sepia ({chroma}): converted to luminance"
    return f"RGB scan has real colour ({chroma}): its colour was discarded, luminance used"


def not_colour_reason(rgb: np.ndarray, tolerance: float) -> str | None:
    """Why a photo cannot serve as a colour target or reference (gray, or a toned print), or None.

    A one-hue photo is only a toned print when it is also weak in chroma: a red car on a gray street
    is one hue too, and a perfectly good colour photo.
    """
    tone = measure_tone(rgb, tolerance)
    if tone.kind == "colour":
        return None
    if tone.kind == "gray":
        return "not a colour photo (gray)"
    p95 = float(np.percentile(np.hypot(*cbcr(rgb)), 95))
    if p95 < TONED_MAX_CHROMA:
        return f"not a colour photo (toned monochrome, chroma p95 {p95:.3f})"
    return None
