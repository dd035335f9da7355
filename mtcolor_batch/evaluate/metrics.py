"""Image metrics for judging a colorized batch: colourfulness, PSNR, SSIM, luminance fidelity.

PSNR, SSIM, resizing and the CIELAB conversion come from scikit-image (maintained, tested
implementations) so our numbers compare with the literature; only the colourfulness formulas, a
few lines no maintained library ships, are written here: Hasler & Suesstrunk's, and the variant
DDColor's evaluation code computes (absolute opponent differences), which the paper's baselines
were measured with.
All functions take float RGB in [0, 1] so 8- and 16-bit files compare on the same scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from mtcolor_batch.core.color import image_lightness
from mtcolor_batch.core.errors import ScanError
from mtcolor_batch.scan.imageio import _orient, _read_tiff_16bit

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})


def load_rgb(path: Path) -> np.ndarray:
    """Read an image as float32 HxWx3 in [0, 1], keeping 16-bit precision.

    EXIF orientation is applied, as a viewer (and the scan loader) would, so a prediction, its
    reference and its scan line up pixel for pixel. 16-bit TIFFs (which Pillow decodes to 8 bits
    or not at all) go through the scan loader's own tifffile reader.
    """
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            bps = im.tag_v2.get(258) if im.format == "TIFF" else None
            if im.format == "TIFF" and (max(bps) if isinstance(bps, tuple) else bps) == 16:
                arr = _orient(_read_tiff_16bit(path.read_bytes(), path), orientation)
                return _as_rgb(arr.astype(np.float32) / 65535.0)
            im = ImageOps.exif_transpose(im)
            if im.mode in {"I;16", "I;16B", "I;16L", "I"}:
                arr = np.asarray(im, dtype=np.float32)
                scale = 65535.0 if im.mode != "I" or arr.max() > 255 else 255.0
                return _as_rgb(np.clip(arr / scale, 0, 1))
            # uint8 first, then one vectorised cast: asarray(dtype=float32) is several times slower
            return np.asarray(im.convert("RGB")).astype(np.float32) * np.float32(1 / 255)
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise ScanError(f"cannot read image: {exc}", path=path) from exc


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M = sigma_rgyb + 0.3 * mu_rgyb on the 0-255 scale.

    The paper and MT-Color report it on 8-bit values, so we scale to 0-255 to stay comparable.
    A gray image (R = G = B) scores exactly 0. Sums are taken strip by strip in float64 so a
    100-megapixel scan does not need gigabytes of temporaries.
    """
    return _opponent_colourfulness(rgb, absolute=False)


def colorfulness_ddcolor(rgb: np.ndarray) -> float:
    """The colourfulness DDColor's metric code reports: opponent channels taken in absolute value.

    ``|R - G|`` and ``|(R + G) / 2 - B|`` fold negative and positive chroma together, so the mean
    term is larger and the spread smaller than Hasler & Suesstrunk's signed form; a gray image still
    scores 0. Same 0-255 scale. Baselines in the paper's tables were measured this way, so a
    comparison with them needs this column, not :func:`colorfulness`.
    """
    return _opponent_colourfulness(rgb, absolute=True)


def _opponent_colourfulness(rgb: np.ndarray, absolute: bool) -> float:
    """sigma_rgyb + 0.3 * mu_rgyb on the 0-255 scale, the opponent channels signed or in absolute
    value (the two published variants differ only there)."""
    n = 0
    sums = np.zeros(4, dtype=np.float64)  # sum rg, sum rg^2, sum yb, sum yb^2
    for strip in _strips(rgb):
        x = strip.astype(np.float64) * 255.0
        rg = x[..., 0] - x[..., 1]
        yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
        if absolute:
            rg, yb = np.abs(rg), np.abs(yb)
        sums += (rg.sum(), np.square(rg).sum(), yb.sum(), np.square(yb).sum())
        n += rg.size
    if n == 0:
        raise ValueError("empty image")
    mean_rg, mean_yb = sums[0] / n, sums[2] / n
    var_rg = max(sums[1] / n - mean_rg**2, 0.0)
    var_yb = max(sums[3] / n - mean_yb**2, 0.0)
    return math.sqrt(var_rg + var_yb) + 0.3 * math.sqrt(mean_rg**2 + mean_yb**2)


def _strips(img: np.ndarray, rows: int = 512):
    """Row strips of an image, to bound float64 temporaries on large scans."""
    for y in range(0, img.shape[0], rows):
        yield img[y : y + rows]


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"size mismatch: prediction {pred.shape[:2]} vs reference {ref.shape[:2]}")


def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB for [0, 1] images; ``inf`` for identical images (no division warning)."""
    _check_pair(pred, ref)
    if np.array_equal(pred, ref):
        return math.inf
    return float(peak_signal_noise_ratio(ref.astype(np.float64), pred.astype(np.float64), data_range=1.0))


def ssim(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean SSIM over the RGB channels (scikit-image, Gaussian-free 7x7 default window)."""
    _check_pair(pred, ref)
    if min(pred.shape[:2]) < 7:
        raise ValueError("SSIM needs images at least 7x7 pixels")
    return float(
        structural_similarity(ref.astype(np.float64), pred.astype(np.float64), data_range=1.0, channel_axis=2)
    )


PAPER_SIZE = 512
"""The paper scores PSNR/SSIM at 512x512: both images are resized there first."""


def at_paper_size(rgb: np.ndarray, size: int = PAPER_SIZE) -> np.ndarray:
    """``rgb`` resized to ``size`` x ``size`` (anti-aliased, bicubic), float32 in [0, 1]."""
    if rgb.shape[:2] == (size, size):
        return rgb
    out = resize(rgb.astype(np.float32), (size, size), order=3, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def psnr_ssim_512(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM after resizing both to 512x512, as the paper's Table 1.

    Sizes must match first (a prediction of another aspect ratio is not comparable pixel for pixel).
    """
    _check_pair(pred, ref)
    p, r = at_paper_size(pred), at_paper_size(ref)
    return psnr(p, r), ssim(p, r)


def luminance_fidelity(pred: np.ndarray, scan: np.ndarray) -> float:
    """max |L*_out - L*_in| over all pixels, in L* units (0-100).

    The product promises the scan's own luminance ("luminance lock"), so this should stay
    near the quantisation step of the output format (about 0.5 L* for 8-bit files).
    ``scan`` is HxW gray or HxWx3 RGB in [0, 1]; sizes must match.
    """
    if scan.shape[:2] != pred.shape[:2]:
        raise ValueError(f"size mismatch: output {pred.shape[:2]} vs scan {scan.shape[:2]}")
    worst = 0.0
    for p_strip, s_strip in zip(_strips(pred), _strips(scan), strict=True):
        worst = max(worst, float(np.abs(image_lightness(p_strip) - image_lightness(s_strip)).max()))
    return worst
