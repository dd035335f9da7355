"""Metric values against cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import lab2rgb

from mtcolor_batch.core.color import image_lightness
from mtcolor_batch.evaluate import metrics


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)


def test_identical_images_psnr_inf_ssim_one(rgb: np.ndarray) -> None:
    assert metrics.psnr(rgb, rgb.copy()) == math.inf
    assert metrics.ssim(rgb, rgb.copy()) == pytest.approx(1.0, abs=1e-12)


def test_known_psnr_from_constructed_error() -> None:
    ref = np.full((32, 32, 3), 0.5)
    pred = ref.copy()
    pred[:, ::2] += 0.1  # half the pixels off by 0.1 -> MSE 0.005 -> 10*log10(1/0.005) dB
    assert metrics.psnr(pred, ref) == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-9)
    pred_all = ref + 0.1  # MSE 0.01 -> exactly 20 dB
    assert metrics.psnr(pred_all, ref) == pytest.approx(20.0, abs=1e-9)


def test_ssim_drops_with_noise(rgb: np.ndarray) -> None:
    noisy = np.clip(rgb + np.random.default_rng(1).normal(0, 0.2, rgb.shape), 0, 1)
    assert 0 < metrics.ssim(noisy, rgb) < 0.9


def test_pure_gray_has_zero_colorfulness() -> None:
    gray = np.random.default_rng(2).random((40, 50))
    assert metrics.colorfulness(np.repeat(gray[..., None], 3, axis=2)) == pytest.approx(0.0, abs=1e-9)


def test_colorfulness_known_value_for_pure_red() -> None:
    # rg = 255, yb = 127.5 everywhere: sigma 0, mu = sqrt(255^2 + 127.5^2) -> M = 0.3 * mu
    red = np.zeros((10, 10, 3))
    red[..., 0] = 1.0
    assert metrics.colorfulness(red) == pytest.approx(0.3 * math.hypot(255.0, 127.5), rel=1e-9)


def test_colorfulness_is_strip_invariant() -> None:
    """Large images are summed in strips: the result must equal the one-pass formula."""
    x = np.random.default_rng(3).random((1100, 7, 3))
    r, g, b = (x[..., i] * 255 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    expected = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    assert metrics.colorfulness(x) == pytest.approx(expected, rel=1e-9)


def test_luminance_fidelity_known_cases() -> None:
    h, w = 600, 20  # taller than one strip
    gray = np.linspace(0.25, 0.75, h * w).reshape(h, w)
    lab = np.zeros((h, w, 3))
    lab[..., 0] = image_lightness(gray)
    lab[..., 1], lab[..., 2] = 8.0, -6.0  # same L*, some colour
    colored = lab2rgb(lab)
    assert colored.min() > 0 and colored.max() < 1  # in gamut, so no clipping moved L*
    assert metrics.luminance_fidelity(colored, gray) < 1e-3
    assert metrics.luminance_fidelity(np.ones((4, 4, 3)), np.zeros((4, 4))) == pytest.approx(100.0, abs=1e-6)
    with pytest.raises(ValueError):
        metrics.luminance_fidelity(np.ones((4, 4, 3)), np.zeros((5, 4)))


def test_size_mismatch_is_an_error(rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="size mismatch"):
        metrics.psnr(rgb, rgb[:-1])


def test_load_rgb_keeps_16_bit(tmp_path) -> None:
    gray16 = np.array([[0, 1, 65535]], dtype=np.uint16).repeat(3, axis=0)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    rgb16 = np.zeros((3, 3, 3), dtype=np.uint16)
    rgb16[..., 0] = 1
    tifffile.imwrite(tmp_path / "c.tif", rgb16, photometric="rgb")
    g = metrics.load_rgb(tmp_path / "g.png")
    assert g.shape == (3, 3, 3) and g[0, 1, 0] == pytest.approx(1 / 65535)
    c = metrics.load_rgb(tmp_path / "c.tif")
    assert c.shape == (3, 3, 3) and c[0, 0, 0] == pytest.approx(1 / 65535) and c[0, 0, 1] == 0
