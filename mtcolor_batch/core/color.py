"""sRGB and CIELAB (D65) in one place: transfer curves, the XYZ matrix, L* and single-colour Lab.

Why one home: the scan loader, the luminance lock, hint adherence, the hint colour table and the
metrics must agree on what "lightness" means, or a hint held to 1 dE by one module would measure
differently in another. Primaries: sRGB (IEC 61966-2-1) with the standard's 4-digit matrix, whose
Y row is the Rec.709 luma weights (0.2126, 0.7152, 0.0722); the D65 white is the matrix's own row
sums, so a* = b* = 0 maps to exactly equal R, G, B (gray stays gray).
"""

from __future__ import annotations

import numpy as np
from skimage.color import lab2rgb, rgb2lab

RGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=np.float64
)
"""Linear sRGB -> XYZ (rows X, Y, Z)."""
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ)
WHITE = RGB_TO_XYZ.sum(axis=1)
"""(Xn, Yn, Zn) = (0.9505, 1.0, 1.0890): the matrix's own white, so gray maps to gray exactly."""
LUMA_WEIGHTS = RGB_TO_XYZ[1]
"""Relative luminance Y of linear sRGB (Rec.709 weights)."""

_DELTA = 6.0 / 29.0


def srgb_decode(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.maximum(v, 0.0031308) ** (1.0 / 2.4) - 0.055)


def lab_f(t: np.ndarray) -> np.ndarray:
    """CIELAB's companding function f (cube root with the linear toe)."""
    return np.where(t > _DELTA**3, np.cbrt(t), t / (3 * _DELTA**2) + 4.0 / 29.0)


def lab_finv(t: np.ndarray) -> np.ndarray:
    """Inverse of :func:`lab_f`."""
    return np.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4.0 / 29.0))


def lightness(y: np.ndarray) -> np.ndarray:
    """CIELAB L* (0..100) of relative luminance Y (Yn = 1)."""
    return 116.0 * lab_f(np.asarray(y, dtype=np.float64)) - 16.0


def luma_to_lightness(luma: np.ndarray) -> np.ndarray:
    """L* of scan luma (sRGB-encoded gray): the lightness the luminance lock preserves."""
    return lightness(srgb_decode(luma))


def srgb_to_lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """One sRGB colour in [0, 1] -> CIELAB D65 (2 degree observer), via scikit-image."""
    arr = np.asarray(rgb, dtype=np.float64).reshape(1, 1, 3)
    lab = rgb2lab(arr, illuminant="D65", observer="2")[0, 0]
    return float(lab[0]), float(lab[1]), float(lab[2])


def lab_to_srgb(lab: tuple[float, float, float]) -> tuple[float, float, float]:
    """One CIELAB D65 colour -> sRGB in [0, 1] (clipped to the gamut)."""
    arr = np.asarray(lab, dtype=np.float64).reshape(1, 1, 3)
    rgb = np.clip(lab2rgb(arr, illuminant="D65", observer="2")[0, 0], 0.0, 1.0)
    return float(rgb[0]), float(rgb[1]), float(rgb[2])


def image_lightness(rgb_or_gray: np.ndarray) -> np.ndarray:
    """CIELAB L* (0-100) of an sRGB image, or of a gray image given as HxW sRGB values.

    float32 keeps scikit-image on its float32 path (about twice as fast; L* error ~1e-5).
    """
    x = np.asarray(rgb_or_gray, dtype=np.float32)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    lab: np.ndarray = rgb2lab(np.clip(x, 0.0, 1.0))
    return lab[..., 0].astype(np.float64)


def rgb_to_ab(rgb: np.ndarray) -> np.ndarray:
    """Decoded sRGB (H, W, 3) in [0, 1] -> CIELAB a*, b* (2, H, W) float32: a model's colour."""
    return np.ascontiguousarray(rgb2lab(rgb)[..., 1:].transpose(2, 0, 1).astype(np.float32))
