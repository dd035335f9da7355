"""Deterministic words for training texts: the colour of a masked region and the tone of a photo.

Why deterministic and pixel-based: the instance texts teach the model which colour word goes with
which pixels, so the word must come from the very pixels it describes (mean CIELAB inside the mask,
then the nearest named colour), never from a guess. The same photo always yields the same words, so
a rebuilt dataset is byte-identical and a resumed build matches a fresh one.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.color import rgb2lab


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB float HxWx3 in [0, 1] -> CIELAB (D65) float64 HxWx3."""
    return rgb2lab(np.clip(rgb, 0.0, 1.0).astype(np.float64), illuminant="D65")


def mean_lab(lab: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Mean CIELAB of the pixels under ``mask`` (bool HxW); raises ValueError on an empty mask."""
    pixels = lab[mask]
    if pixels.size == 0:
        raise ValueError("empty mask has no colour")
    mean = pixels.mean(axis=0)
    return float(mean[0]), float(mean[1]), float(mean[2])


def color_name(lab: tuple[float, float, float]) -> str:
    """Nearest named colour (the hints module's CIELAB table, so sidecar words and training words agree)."""
    from mtcolor_batch.hints.colors import nearest_color_name

    return nearest_color_name(lab)


def describe_tone(lab: np.ndarray) -> str:
    """Overall tone of a photo in words: lightness, colourfulness and warmth of the mean colour.

    Thresholds are on CIELAB: L* 35/70 for dark/bright, mean chroma 12/35 for muted/vivid, and the
    hue angle of the mean (a*, b*) for warm (red-yellow half) versus cool (green-blue half).
    """
    flat = lab.reshape(-1, 3)
    lightness = float(flat[:, 0].mean())
    chroma = float(np.hypot(flat[:, 1], flat[:, 2]).mean())
    words: list[str] = []
    if lightness < 35:
        words.append("dark")
    elif lightness > 70:
        words.append("bright")
    if chroma < 12:
        words.append("muted")
    elif chroma > 35:
        words.append("vivid")
    mean_a, mean_b = float(flat[:, 1].mean()), float(flat[:, 2].mean())
    if math.hypot(mean_a, mean_b) < 3:
        words.append("neutral")
    else:
        hue = math.degrees(math.atan2(mean_b, mean_a)) % 360
        words.append("warm" if hue < 100 or hue >= 330 else "cool")
    return ", ".join(words)


def article(word: str) -> str:
    """'a' or 'an' for the word that follows (by its first letter, which is right for colour names)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def instance_text(colour: str, label: str) -> str:
    """The paper's instance text: 'a {colour} {object}'."""
    return f"{article(colour)} {colour} {label}"


def global_text(tone: str, instance_texts: list[str], caption: str | None = None) -> str:
    """Global text: caption (when a captioner ran) or a generic subject, the tone, then the instances."""
    head = caption.strip().rstrip(".") if caption else "a colour photograph"
    text = f"{head}, {tone} tones"
    if instance_texts:
        text += ", with " + ", ".join(instance_texts)
    return text
