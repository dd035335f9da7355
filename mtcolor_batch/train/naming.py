"""Deterministic words for training texts: the colour of a masked region and the tone of a photo.

Why deterministic and pixel-based: the namer is the last link of the caption chain (see
``captioner.py``), the one that always answers, so its word must come from the very pixels it
describes (mean CIELAB inside the mask, then the nearest basic colour term by CIEDE2000), never from
a guess. Why basic terms with light/dark modifiers instead of the 185 CSS/X11/archival names: the
paper blames rare words ("fawn", "olive drab", "white smoke") for weak text-to-colour binding; a
small vocabulary that people actually use gives every word many training examples. The full table
stays the sidecar vocabulary (``hints/colors.py``).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from mtcolor_batch.core.color import srgb_to_lab

BASIC_COLOURS: dict[str, tuple[int, int, int]] = {
    # Berlin & Kay's 11 basic terms (focal sRGB values) ...
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "red": (200, 30, 30),
    "green": (40, 140, 50),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "orange": (240, 130, 30),
    "brown": (120, 70, 35),
    "pink": (240, 150, 180),
    "purple": (120, 50, 150),
    # ... and the common extensions people use for large, frequent colour categories.
    "beige": (220, 200, 160),
    "navy": (20, 30, 90),
    "olive": (110, 110, 30),
    "teal": (20, 120, 120),
    "maroon": (110, 20, 35),
    "tan": (195, 155, 105),
    "turquoise": (60, 200, 190),
    "cream": (245, 235, 200),
}
"""Prototype of each basic term (sRGB 0-255); named in CIELAB by CIEDE2000 to the nearest prototype."""

NO_MODIFIER = frozenset({"black", "white", "navy", "maroon", "beige", "cream", "tan"})
"""Terms whose name already fixes the lightness: no "light black" or "dark cream"."""

MODIFIER_STEP = 22.0
"""L* shift of the "light"/"dark" variants of a term (chroma scaled down with it, hue kept)."""

COLOUR_WORDS = frozenset(
    {
        *BASIC_COLOURS,
        "grey", "silver", "gold", "golden", "crimson", "scarlet", "burgundy", "magenta", "cyan",
        "violet", "lavender", "indigo", "lilac", "khaki", "ivory", "amber", "bronze", "copper",
        "coral", "salmon", "peach", "lime", "mint", "aqua", "azure", "blond", "blonde", "auburn",
        "charcoal", "rust", "mustard", "ochre", "sepia", "emerald", "jade", "ruby", "plum", "mauve",
        "fuchsia", "taupe", "chestnut", "brunette", "off-white", "multicolored", "multicoloured",
    }
)  # fmt: skip
"""Words that make a text say a colour (the dataset filter); "-ish" forms count too (reddish)."""

_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)?")


def has_colour_word(text: str) -> bool:
    """Whether ``text`` names a colour: a word of ``COLOUR_WORDS``, or its "-ish" form ("bluish")."""
    for word in _WORD_RE.findall(text.lower()):
        if word in COLOUR_WORDS:
            return True
        stem = word.removesuffix("ish")
        if stem != word and (stem in COLOUR_WORDS or stem[:-1] in COLOUR_WORDS or stem + "e" in COLOUR_WORDS):
            return True  # reddish (red+d), bluish (blue-e), greenish, yellowish
    return False


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB float HxWx3 in [0, 1] -> CIELAB (D65) float64 HxWx3."""
    return rgb2lab(np.clip(rgb, 0.0, 1.0).astype(np.float64), illuminant="D65", observer="2")


def mean_lab(lab: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Mean CIELAB of the pixels under ``mask`` (bool HxW); raises ValueError on an empty mask."""
    pixels = lab[mask]
    if pixels.size == 0:
        raise ValueError("empty mask has no colour")
    mean = pixels.mean(axis=0)
    return float(mean[0]), float(mean[1]), float(mean[2])


@lru_cache(maxsize=1)
def _prototypes() -> tuple[tuple[str, ...], np.ndarray]:
    names: list[str] = []
    labs: list[tuple[float, float, float]] = []
    for name, rgb in BASIC_COLOURS.items():
        lab = srgb_to_lab((rgb[0] / 255, rgb[1] / 255, rgb[2] / 255))
        names.append(name)
        labs.append(lab)
        if name in NO_MODIFIER:
            continue
        for word, shift, chroma in (("light", MODIFIER_STEP, 0.7), ("dark", -MODIFIER_STEP, 0.8)):
            lightness = min(97.0, max(8.0, lab[0] + shift))
            names.append(f"{word} {name}")
            labs.append((lightness, lab[1] * chroma, lab[2] * chroma))
    return tuple(names), np.array(labs, dtype=np.float64)


def color_name(lab: tuple[float, float, float] | np.ndarray) -> str:
    """Basic colour term (with "light"/"dark" where it applies) nearest to ``lab`` by CIEDE2000."""
    names, table = _prototypes()
    target = np.broadcast_to(np.asarray(lab, dtype=np.float64).reshape(1, 3), table.shape)
    return names[int(np.argmin(deltaE_ciede2000(target, table)))]


def basic_colour_names() -> tuple[str, ...]:
    """Every answer ``color_name`` can give (basic terms and their light/dark variants)."""
    return _prototypes()[0]


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
    """Global text: the photo's caption plus each instance's text (paper Sec. 3.5) when a captioner
    gave one; otherwise a generic subject, the tone, then the instances."""
    tail = ", with " + ", ".join(instance_texts) if instance_texts else ""
    if caption:
        return caption.strip().rstrip(".") + tail
    return f"a colour photograph, {tone} tones{tail}"
