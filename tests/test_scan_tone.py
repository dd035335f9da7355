"""The one colour-or-not decision (scan/tone.py) the loader, the training set and the protocol share."""

from __future__ import annotations

import numpy as np

from mtcolor_batch.scan.tone import TONED_MAX_CHROMA, cbcr, measure_tone, not_colour_reason

TOL = 0.03


def _ramp() -> np.ndarray:
    return np.linspace(0.05, 0.95, 64 * 64).reshape(64, 64, 1)


def test_gray_toned_and_colour_are_told_apart_on_pixels() -> None:
    gray = np.repeat(_ramp(), 3, axis=2)
    sepia = _ramp() * np.array([1.0, 0.92, 0.8])
    colour = np.random.default_rng(0).random((64, 64, 3))
    assert measure_tone(gray, TOL).kind == "gray"
    assert measure_tone(sepia, TOL).kind == "toned"
    assert measure_tone(colour, TOL).kind == "colour"
    assert not_colour_reason(gray, TOL) == "not a colour photo (gray)"
    assert (not_colour_reason(sepia, TOL) or "").startswith("not a colour photo (toned monochrome")
    assert not_colour_reason(colour, TOL) is None


def test_one_strong_hue_is_a_colour_photo_not_a_toned_print() -> None:
    """A red car on a gray street has one hue, but chroma far above a toned print's."""
    street = np.full((64, 64, 3), 0.5)
    street[20:44, 10:54] = (0.9, 0.05, 0.05)
    assert measure_tone(street, TOL).kind == "toned"
    p95 = float(np.percentile(np.hypot(*cbcr(street)), 95))
    assert p95 >= TONED_MAX_CHROMA
    assert not_colour_reason(street, TOL) is None


def test_chroma_is_zero_for_every_gray() -> None:
    cb, cr = cbcr(np.repeat(_ramp(), 3, axis=2))
    assert np.abs(cb).max() < 1e-12 and np.abs(cr).max() < 1e-12
