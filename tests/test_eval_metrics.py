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


def _ddcolor_reference(rgb: np.ndarray) -> float:
    """DDColor's formula written the way its metric code does it, on 0-255 values."""
    x = rgb.astype(np.float64) * 255.0
    rg = np.absolute(x[..., 0] - x[..., 1])
    yb = np.absolute(0.5 * (x[..., 0] + x[..., 1]) - x[..., 2])
    return float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def test_ddcolor_colourfulness_matches_its_formula_and_differs_from_hasler(rgb: np.ndarray) -> None:
    assert metrics.colorfulness_ddcolor(rgb) == pytest.approx(_ddcolor_reference(rgb), rel=1e-9)
    gray = np.repeat(rgb[..., :1], 3, axis=2)
    assert metrics.colorfulness_ddcolor(gray) == pytest.approx(0.0, abs=1e-9)
    # half red, half green: the signed opponents cancel in the mean, the absolute ones do not
    x = np.zeros((8, 8, 3), dtype=np.float32)
    x[:, :4] = (0.8, 0.1, 0.1)
    x[:, 4:] = (0.1, 0.8, 0.1)
    hs, dd = metrics.colorfulness(x), metrics.colorfulness_ddcolor(x)
    assert dd == pytest.approx(_ddcolor_reference(x), rel=1e-9)
    assert dd != pytest.approx(hs, rel=0.05)


@pytest.mark.slow
def test_psnr_ssim_at_512_resizes_both_and_refuses_other_sizes(rgb: np.ndarray) -> None:
    assert metrics.at_paper_size(rgb).shape == (512, 512, 3)
    p, s = metrics.psnr_ssim_512(rgb, rgb.copy())
    assert p == math.inf and s == pytest.approx(1.0)
    noisy = np.clip(rgb + 0.05, 0, 1)
    p, s = metrics.psnr_ssim_512(noisy, rgb)
    assert 15 < p < 40 and s < 1.0
    with pytest.raises(ValueError, match="size mismatch"):
        metrics.psnr_ssim_512(rgb[:40], rgb)


def test_mask_crop_fills_outside_neutral() -> None:
    from mtcolor_batch.evaluate.clip_score import NEUTRAL_FILL, crop_mask

    img = np.zeros((20, 30, 3), dtype=np.float32)
    img[..., 0] = 1.0
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 8:20] = True
    mask[5, 8] = False  # a corner outside the mask inside the box
    crop = crop_mask(img, mask)
    assert crop is not None and crop.shape == (5, 12, 3)
    assert np.all(crop[0, 0] == NEUTRAL_FILL) and np.all(crop[1, 1] == (1.0, 0.0, 0.0))
    assert crop_mask(img, np.zeros_like(mask)) is None
