"""Luminance lock: L of the output is the scan's, gray stays gray, colour edges follow luma edges."""

from __future__ import annotations

import numpy as np
import pytest

from mtcolor_batch.core import color
from mtcolor_batch.core.color import srgb_decode
from mtcolor_batch.render import chroma
from mtcolor_batch.render.chroma import (
    area_resize,
    compose,
    compose_quantized,
    lightness_error,
    resize_luma,
    to_output_array,
)


def _scan(rng: np.random.Generator, shape: tuple[int, int], bit_depth: int) -> np.ndarray:
    """Luma exactly on the code values of a ``bit_depth`` scan, covering black and white too."""
    top = 2**bit_depth - 1
    levels = rng.integers(0, top + 1, size=shape)
    levels.flat[: min(2, levels.size)] = (0, top)[: levels.size]
    return (levels / top).astype(np.float32)


def _a_star(rgb: np.ndarray) -> np.ndarray:
    """CIELAB a* of sRGB pixels (same primaries and white as the lock)."""
    lin = srgb_decode(rgb.astype(np.float64))
    x = lin @ color.RGB_TO_XYZ[0] / color.WHITE[0]
    y = lin @ color.RGB_TO_XYZ[1]
    return 500.0 * (color.lab_f(x) - color.lab_f(y))


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("chroma_range", [40.0, 160.0])  # 160: far outside the sRGB gamut
def test_output_lightness_equals_scan_lightness(bit_depth, chroma_range):
    rng = np.random.default_rng(bit_depth)
    luma = _scan(rng, (96, 128), bit_depth)
    ab = rng.uniform(-chroma_range, chroma_range, size=(2, 12, 16)).astype(np.float32)
    rgb = compose(luma, ab)
    assert rgb.dtype == np.float32 and rgb.shape == (96, 128, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    out = to_output_array(rgb, bit_depth)
    assert out.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    err = lightness_error(out, luma)
    assert err.bit_depth == bit_depth
    assert err.max_levels <= 1.0, err  # within 1 code value after quantisation
    assert lightness_error(rgb, luma, bit_depth).max_levels < 0.01  # before quantisation: exact
    # The image really is coloured (the lock did not simply return gray).
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 0.02
    np.testing.assert_array_equal(compose_quantized(luma, ab, bit_depth), out)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_gray_input_stays_neutral_and_unchanged(bit_depth):
    luma = _scan(np.random.default_rng(3), (40, 56), bit_depth)
    out = compose_quantized(luma, np.zeros((2, 5, 7), dtype=np.float32), bit_depth)
    top = 2**bit_depth - 1
    expected = np.rint(luma * top).astype(out.dtype)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_chroma_edge_snaps_to_the_full_resolution_luma_edge():
    """A colour edge blurred across a low-res pixel lands on the sharp luma edge at full res.

    Measure: the a* profile across the edge; its 10%-90% transition width in full-res pixels and
    where it crosses zero. Plain bilinear upsampling is the baseline (about 8 px wide at 8x).
    """
    h, w, edge = 64, 256, 101  # luma edge in the middle of low-res pixel 12 (full-res 96..103)
    luma = np.full((h, w), 0.25, dtype=np.float32)
    luma[:, edge:] = 0.75
    a_full = np.where(np.arange(w) < edge, 40.0, -40.0)[None, :].repeat(h, axis=0)
    ab = np.stack([area_resize(a_full, (8, 32)), np.zeros((8, 32), dtype=np.float32)])
    profile = _a_star(compose(luma, ab))[h // 2]

    def width_and_crossing(p: np.ndarray) -> tuple[int, int]:
        hi, lo = p.max(), p.min()
        inside = (p < lo + 0.9 * (hi - lo)) & (p > lo + 0.1 * (hi - lo))
        return int(inside.sum()), int(np.argmax(p < 0))

    width, crossing = width_and_crossing(profile)
    assert width <= 1 and crossing == edge, (width, crossing)
    assert abs(profile[20] - 40) < 2 and abs(profile[-20] + 40) < 2  # flat areas keep their colour
    i0, i1, t = chroma._bilinear_axis(32, w)
    bilinear = ab[0, 4][i0] * (1 - t) + ab[0, 4][i1] * t
    assert width_and_crossing(bilinear)[0] >= 6  # the baseline really is blurred


@pytest.mark.parametrize(
    ("shape", "working"), [((1, 1), (8, 8)), ((7, 3000), (8, 1024)), ((513, 513), (512, 512))]
)
def test_odd_sizes_compose_and_keep_lightness(shape, working):
    rng = np.random.default_rng(5)
    luma = _scan(rng, shape, 8)
    small = resize_luma(luma, working)
    assert small.shape == working and small.dtype == np.float32
    ab = rng.uniform(-60, 60, size=(2, *working)).astype(np.float32)
    out = compose_quantized(luma, ab, 8)
    assert out.shape == (*shape, 3)
    assert lightness_error(out, luma).max_levels <= 1.0


def test_resize_luma_is_an_area_average():
    rng = np.random.default_rng(2)
    luma = rng.random((90, 120)).astype(np.float32)
    small = resize_luma(luma, (30, 40))
    np.testing.assert_allclose(small, luma.reshape(30, 3, 40, 3).mean(axis=(1, 3)), atol=1e-6)
    odd = resize_luma(luma, (17, 23))  # non-integer factors keep the mean and constants
    assert abs(float(odd.mean()) - float(luma.mean())) < 2e-3
    np.testing.assert_allclose(resize_luma(np.full((91, 77), 0.3, np.float32), (13, 9)), 0.3, atol=1e-6)


def test_strips_give_the_same_pixels_as_one_pass():
    rng = np.random.default_rng(4)
    luma = _scan(rng, (50, 70), 16)
    ab = rng.uniform(-80, 80, size=(2, 9, 11)).astype(np.float32)
    one = compose(luma, ab, strip_pixels=10**9, workers=1)
    many = compose(luma, ab, strip_pixels=70 * 3, workers=1)  # 3-row strips
    threaded = compose(luma, ab, strip_pixels=70 * 3, workers=3)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(one, threaded)


def test_bad_arguments():
    with pytest.raises(ValueError):
        compose(np.zeros((4, 4, 3), np.float32), np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError):
        to_output_array(np.zeros((2, 2, 3), np.float32), 12)
    with pytest.raises(ValueError, match="NaN"):
        compose(np.zeros((4, 4), np.float32), np.full((2, 2, 2), np.nan, np.float32))
