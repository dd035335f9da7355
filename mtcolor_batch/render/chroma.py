"""The luminance lock: put the scan's own full-resolution lightness under the predicted colour.

The engine predicts only chroma (CIELAB a*, b*) at the working resolution. ``compose`` upsamples
that chroma to the scan's full resolution guided by the full-resolution luminance, then builds
each pixel in CIELAB with L* taken from the scan, so archival detail is never re-drawn and the
output's lightness is the scan's, within quantisation.

Definition of L (why this one): ``Scan.luma`` holds sRGB-encoded gray values in [0, 1], exactly
what a gray image displays as (``scan.imageio.rgb_to_gray`` produces it for colour inputs). The
scan's relative luminance is therefore ``Y = srgb_decode(luma)`` and its lightness is the CIELAB
(D65) ``L* = 116 f(Y) - 16``. Under this definition a gray pixel composed with a* = b* = 0 comes
out as R = G = B = luma (gray stays gray, the output equals the input), and L* of any output pixel
converts back to the input's gray value. Treating luma as linear Y instead would darken every
gray output, so it was rejected.

Colour primaries: sRGB (IEC 61966-2-1) with the standard's 4-digit matrix, whose Y row is the
Rec.709 weights (0.2126, 0.7152, 0.0722) the scan loader uses; the D65 white is the matrix's own
row sums, so a* = b* = 0 maps to exactly equal R, G, B. Out-of-gamut colours keep their L* and hue
and lose chroma: a*, b* are scaled by the largest factor in [0, 1] that fits the sRGB cube (found
by bisection; factor 0 is the gray of the same L*, always inside), so L* is never touched.

Memory: full-resolution work runs in horizontal strips of ``max(1, STRIP_PIXELS // width)`` rows
(STRIP_PIXELS = 2**18, about 0.26 MP: 22 rows of an 11547 px wide 100 MP scan; ~60 MB of float64
temporaries per strip being computed; up to ``MAX_WORKERS`` = 4 strips at once on a thread pool).
Beyond the input luma and the output array (12 bytes/pixel as float32, or 6/3 bytes/pixel from
``compose_quantized``) the peak memory therefore does not grow with the scan. Only the
working-resolution maps are held whole.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.ndimage import uniform_filter

from mtcolor_batch.core.color import (
    LUMA_WEIGHTS,
    WHITE,
    XYZ_TO_RGB,
    lab_f,
    lab_finv,
    lightness,
    luma_to_lightness,
    srgb_decode,
    srgb_encode,
)

STRIP_PIXELS = 1 << 18
"""Pixels per horizontal strip of full-resolution work (rows = max(1, STRIP_PIXELS // width))."""

MAX_WORKERS = 4
"""Threads composing strips in parallel (capped by the CPU count); each holds one strip's temporaries."""

_GAMUT_STEPS = 12  # bisection steps for the chroma factor: 2**-12 ~ 2.4e-4 of the chroma (< 0.05 dE)


# --------------------------------------------------------------------------- resampling


def _area_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) matrix averaging the input span under each output pixel (exact box filter).

    Downsampling by any real factor is the mean over the footprint (fractional edge pixels
    weighted by their covered fraction), i.e. antialiased with no ringing; upsampling degrades
    to nearest/linear-at-edges, which is all the small-scan case needs.
    """
    scale = n_in / n_out
    starts = np.arange(n_out, dtype=np.float64) * scale
    ends = starts + scale
    first = np.floor(starts).astype(np.int64)
    k = int(np.ceil(scale)) + 1
    cols = first[:, None] + np.arange(k)[None, :]
    lo = np.maximum(cols, starts[:, None])
    hi = np.minimum(cols + 1, ends[:, None])
    w = np.clip(hi - lo, 0.0, None) / scale
    keep = (w > 0) & (cols < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    mat = sparse.csr_matrix((w[keep], (rows[keep], cols[keep])), shape=(n_out, n_in))
    # Renormalise rows (float rounding at the far edge) so a constant stays exactly constant.
    sums = np.asarray(mat.sum(axis=1)).ravel()
    return sparse.diags(1.0 / sums) @ mat


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resample a 2-D array to ``size`` (h, w) as float32, reading it in row strips."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {image.shape}")
    h_in, w_in = image.shape
    h_out, w_out = int(size[0]), int(size[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"target size must be positive, got {size}")
    if (h_in, w_in) == (h_out, w_out):
        return np.array(image, dtype=np.float32)
    rx_t = _area_matrix(w_in, w_out).T.tocsr()  # (w_in, w_out)
    ry = _area_matrix(h_in, h_out).tocsc()  # (h_out, h_in)
    rows = max(1, STRIP_PIXELS // max(w_in, 1))
    out = np.zeros((h_out, w_out), dtype=np.float64)
    for r0 in range(0, h_in, rows):
        r1 = min(h_in, r0 + rows)
        strip = np.asarray(image[r0:r1], dtype=np.float64)
        cols = np.asarray(rx_t.T @ strip.T).T  # (r1 - r0, w_out)
        out += ry[:, r0:r1] @ cols
    return out.astype(np.float32)


def resize_luma(luma: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scan luma (H, W) -> working luma of ``size`` (h, w), float32 in [0, 1], area-averaged.

    Averaging encoded values (not linear light) matches what a downscaled gray photo looks like
    and what the engine's ControlNet was trained on.
    """
    return np.clip(area_resize(luma, size), 0.0, 1.0)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for pixel-centre-aligned linear interpolation along one axis."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0)


# --------------------------------------------------------------------------- guided upsampling


def guided_coefficients(guide: np.ndarray, ab: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter (He et al.) coefficients at working resolution: (4, h, w) = A_a, B_a, A_b, B_b.

    Within each (2r+1)^2 window the chroma is modelled as ``A * luma + B``; the averaged A and B,
    upsampled and applied to the full-resolution luma, give chroma whose edges follow the scan's
    own edges (the "fast guided filter" of He & Sun 2015). ``eps`` (luma^2 units) is the contrast
    below which a window is treated as flat, so noise and grain do not modulate colour.
    """
    size = 2 * radius + 1

    def box(x: np.ndarray) -> np.ndarray:
        return uniform_filter(x, size=size, mode="reflect")

    g = guide.astype(np.float64)
    mean_g = box(g)
    var_g = np.maximum(box(g * g) - mean_g * mean_g, 0.0)
    coeffs = []
    for c in range(2):
        p = ab[c].astype(np.float64)
        mean_p = box(p)
        cov = box(g * p) - mean_g * mean_p
        a = cov / (var_g + eps)
        b = mean_p - a * mean_g
        coeffs += [box(a), box(b)]
    return np.stack(coeffs).astype(np.float32)


# --------------------------------------------------------------------------- CIELAB -> sRGB


def _lab_to_linear(fy: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = WHITE[0] * lab_finv(fy + a / 500.0)
    z = WHITE[2] * lab_finv(fy - b / 200.0)
    m = XYZ_TO_RGB
    return np.stack([m[i, 0] * x + m[i, 1] * y + m[i, 2] * z for i in range(3)], axis=-1)


def _in_gamut(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(((rgb >= 0.0) & (rgb <= 1.0)).all(axis=-1))


def _fits(fy: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether L*a*b* (given as f(Y), Y, a*, b*) lies inside the sRGB cube; no (n, 3) temporaries."""
    x = WHITE[0] * lab_finv(fy + a / 500.0)
    z = WHITE[2] * lab_finv(fy - b / 200.0)
    m = XYZ_TO_RGB
    ok = np.ones(fy.shape, dtype=bool)
    for i in range(3):
        ch = m[i, 0] * x + m[i, 1] * y + m[i, 2] * z
        ok &= (ch >= 0.0) & (ch <= 1.0)
    return ok


def lab_to_srgb_locked(luma: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) float64 in [0, 1] with L* from ``luma`` and chroma a*, b* reduced into gamut.

    L* (equivalently Y) comes from the scan and is never changed; a colour outside the sRGB cube
    keeps its hue and is desaturated by the largest factor that fits.
    """
    y = srgb_decode(np.clip(luma, 0.0, 1.0))
    fy = lab_f(y)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rgb = _lab_to_linear(fy, y, a, b)
    bad = ~_in_gamut(rgb)
    if bad.any():
        fyb, yb, ab_, bb = fy[bad], y[bad], a[bad], b[bad]
        lo = np.zeros(fyb.shape)
        hi = np.ones(fyb.shape)
        for _ in range(_GAMUT_STEPS):
            mid = 0.5 * (lo + hi)
            ok = _fits(fyb, yb, ab_ * mid, bb * mid)
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        rgb[bad] = _lab_to_linear(fyb, yb, ab_ * lo, bb * lo)
    return srgb_encode(np.clip(rgb, 0.0, 1.0))


# --------------------------------------------------------------------------- compose


def _workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def _strips(
    luma: np.ndarray, ab: np.ndarray, radius: int, eps: float, strip_pixels: int, workers: int | None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (r0, r1, sRGB float64 strip) in order; strips are computed by a small thread pool.

    numpy releases the GIL inside its array loops, so threads give a real speed-up; at most
    ``2 * workers`` strips are in flight, which keeps the memory bound. Every strip is computed by
    the same code whatever the thread count, so the output does not depend on it.
    """
    if luma.ndim != 2:
        raise ValueError(f"luma must be (H, W), got shape {luma.shape}")
    if ab.ndim != 3 or ab.shape[0] != 2:
        raise ValueError(f"ab must be (2, h, w), got shape {ab.shape}")
    if not np.isfinite(ab).all():
        raise ValueError("ab contains NaN or infinite values (engine failure); refusing to compose")
    big_h, big_w = luma.shape
    h, w = ab.shape[1:]
    guide = resize_luma(luma, (h, w))
    coeffs = guided_coefficients(guide, ab, radius, eps)
    r_i0, r_i1, r_w = _bilinear_axis(h, big_h)
    c_i0, c_i1, c_w = _bilinear_axis(w, big_w)
    c_w32 = c_w.astype(np.float32)
    rows = max(1, strip_pixels // big_w)

    def one(r0: int) -> tuple[int, int, np.ndarray]:
        r1 = min(big_h, r0 + rows)
        wr = r_w[r0:r1, None].astype(np.float32)
        by_rows = coeffs[:, r_i0[r0:r1]] * (1 - wr) + coeffs[:, r_i1[r0:r1]] * wr  # (4, s, w)
        full = by_rows[..., c_i0] * (1 - c_w32) + by_rows[..., c_i1] * c_w32  # (4, s, W)
        lum = luma[r0:r1].astype(np.float64)
        a = full[0] * lum + full[1]
        b = full[2] * lum + full[3]
        return r0, r1, lab_to_srgb_locked(lum, a, b)

    starts = list(range(0, big_h, rows))
    n_workers = workers or _workers()
    if n_workers == 1 or len(starts) == 1:
        yield from map(one, starts)
        return
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        pending: deque[Future[tuple[int, int, np.ndarray]]] = deque()
        for r0 in starts:
            pending.append(pool.submit(one, r0))
            if len(pending) >= 2 * n_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def compose(
    luma: np.ndarray,
    ab: np.ndarray,
    *,
    radius: int = 2,
    eps: float = 1e-3,
    strip_pixels: int = STRIP_PIXELS,
    workers: int | None = None,
) -> np.ndarray:
    """Full-resolution sRGB (H, W, 3) float32 in [0, 1] with the scan's own lightness.

    ``luma``: scan luma (H, W) float32 in [0, 1] (sRGB-encoded gray). ``ab``: CIELAB a*, b*
    (2, h, w) at any working size; the working canvas is mapped onto the whole scan. ``radius``
    (working pixels) and ``eps`` set the guided upsampling (see ``guided_coefficients``);
    ``workers`` threads (default min(4, CPUs)) compose strips in parallel, same pixels either way.
    """
    out = np.empty((*luma.shape, 3), dtype=np.float32)
    for r0, r1, rgb in _strips(luma, ab, radius, eps, strip_pixels, workers):
        out[r0:r1] = rgb
    return out


def compose_quantized(
    luma: np.ndarray,
    ab: np.ndarray,
    bit_depth: int,
    *,
    radius: int = 2,
    eps: float = 1e-3,
    strip_pixels: int = STRIP_PIXELS,
    workers: int | None = None,
) -> np.ndarray:
    """``compose`` straight to uint8/uint16 (H, W, 3): the same pixels as
    ``to_output_array(compose(...), bit_depth)`` without the 12 bytes/pixel float buffer."""
    dtype, top = _depth(bit_depth)
    out = np.empty((*luma.shape, 3), dtype=dtype)
    for r0, r1, rgb in _strips(luma, ab, radius, eps, strip_pixels, workers):
        out[r0:r1] = _quantize(rgb.astype(np.float32), top, dtype)
    return out


def _depth(bit_depth: int) -> tuple[type[np.unsignedinteger], int]:
    if bit_depth == 8:
        return np.uint8, 255
    if bit_depth == 16:
        return np.uint16, 65535
    raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def _quantize(rgb: np.ndarray, top: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    return np.clip(np.rint(rgb * np.float32(top)), 0, top).astype(dtype)


def decoded_to_output(rgb_w: np.ndarray, size: tuple[int, int], bit_depth: int) -> np.ndarray:
    """The model's decoded RGB (h, w, 3) written as is (no luminance lock), area-resized to ``size``.

    The paper profile's compose: pixels pass through unchanged when the scan is the working size.
    """
    rgb = np.stack([area_resize(rgb_w[..., c], size) for c in range(3)], axis=-1)
    return to_output_array(np.clip(rgb, 0.0, 1.0), bit_depth)


def to_output_array(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float sRGB in [0, 1] -> uint8 (bit_depth 8) or uint16 (16), rounded to nearest, in strips."""
    dtype, top = _depth(bit_depth)
    out = np.empty(rgb.shape, dtype=dtype)
    width = rgb.shape[1] if rgb.ndim >= 2 else 1
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for r0 in range(0, rgb.shape[0], rows):
        out[r0 : r0 + rows] = _quantize(rgb[r0 : r0 + rows].astype(np.float32, copy=False), top, dtype)
    return out


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class LightnessError:
    """How far an output's lightness is from the scan's.

    ``max_levels`` / ``mean_levels``: the output's luminance re-encoded as an sRGB gray value,
    compared with the scan luma, in code values at ``bit_depth`` (the lock's acceptance measure:
    at most 1). ``max_delta_l``: the same comparison as CIELAB L* difference.
    """

    max_levels: float
    mean_levels: float
    max_delta_l: float
    bit_depth: int


def lightness_error(rgb: np.ndarray, luma: np.ndarray, bit_depth: int | None = None) -> LightnessError:
    """Compare the lightness of ``rgb`` (float in [0, 1], or uint8/uint16) with scan ``luma``.

    ``bit_depth`` defaults to the integer dtype's depth, or 16 for float input.
    """
    if np.issubdtype(rgb.dtype, np.integer):
        top = float(np.iinfo(rgb.dtype).max)
        bit_depth = bit_depth or (8 if rgb.dtype == np.uint8 else 16)
    else:
        top = 1.0
        bit_depth = bit_depth or 16
    levels = float(2**bit_depth - 1)
    rows = max(1, STRIP_PIXELS // max(luma.shape[1], 1))
    max_lv = max_dl = 0.0
    total = 0.0
    for r0 in range(0, luma.shape[0], rows):
        part = rgb[r0 : r0 + rows].astype(np.float64) / top
        y_out = srgb_decode(part) @ LUMA_WEIGHTS
        lum = luma[r0 : r0 + rows].astype(np.float64)
        d_lv = np.abs(srgb_encode(np.clip(y_out, 0.0, 1.0)) - lum) * levels
        d_l = np.abs(lightness(y_out) - luma_to_lightness(lum))
        max_lv = max(max_lv, float(d_lv.max()))
        max_dl = max(max_dl, float(d_l.max()))
        total += float(d_lv.sum())
    return LightnessError(max_lv, total / luma.size, max_dl, bit_depth)
