"""Robust scan loading: every odd file an archive holds becomes either a clean Scan or one ScanError.

Archives hold 8- and 16-bit gray scans, RGB files that are really gray or sepia, palette and alpha
images, CMYK from print workflows, ICC-tagged files, rotated camera scans and multi-page TIFFs.
Colorization only needs the luminance, so everything is reduced to a float32 luminance in [0, 1]
that keeps 16-bit precision, plus the metadata the output must carry forward. The file is opened
read-only ('rb') exactly once, and only if it is a regular file whose header is an image within the
size limit: then its bytes are hashed and decoded from memory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from mtcolor_batch.core.color import srgb_decode, srgb_encode
from mtcolor_batch.core.config import ScanSettings
from mtcolor_batch.core.errors import ScanError, path_text
from mtcolor_batch.core.regular import NotRegularFileError, open_regular
from mtcolor_batch.core.types import Scan
from mtcolor_batch.scan.tone import describe_tone

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def srgb_icc_bytes() -> bytes:
    """The sRGB profile outputs embed when the input carried a (converted) ICC profile."""
    return _SRGB_PROFILE.tobytes()


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """The gray value with the same CIE luminance as each sRGB pixel.

    Why not Pillow's ``convert("L")``: its Rec.601 weights on gamma-encoded values change the
    lightness of toned prints; the luminance lock later keeps exactly this lightness.
    """
    lin = srgb_decode(rgb.astype(np.float64))
    y = lin[..., 0] * 0.2126 + lin[..., 1] * 0.7152 + lin[..., 2] * 0.0722
    return np.clip(srgb_encode(y), 0.0, 1.0).astype(np.float32)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an array read without Pillow (16-bit TIFF via tifffile)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1, :],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _read_tiff_16bit(data: bytes, path: Path) -> np.ndarray:
    """First page of a 16-bit TIFF as uint16 (H, W) or (H, W, C): Pillow cannot decode 16-bit RGB."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            arr = tif.pages[0].asarray()
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ScanError(f"corrupt or truncated TIFF: {exc}", path=path) from exc
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar storage
    return arr


_PNG16_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}
"""Pillow raw modes of 16-bit PNGs it narrows to 8 bits -> the raw mode that yields the low bytes
(read as little-endian, the "high" byte Pillow keeps is the big-endian low one; a 16-bit gray+alpha
pixel is as wide as an 8-bit RGBA one, so plain RGBA yields all four bytes)."""


def _png16_rawmode(img: Image.Image) -> str | None:
    """The raw mode of a 16-bit multi-channel PNG that Pillow would narrow to 8 bits, else None."""
    tile = getattr(img, "tile", [])  # an ImageFile's, before load()
    if img.format != "PNG" or len(tile) != 1:
        return None
    rawmode = tile[0].args
    return rawmode if isinstance(rawmode, str) and rawmode in _PNG16_LOW_BYTES else None


def _read_png_16bit(data: bytes, rawmode: str) -> np.ndarray:
    """All 16 bits of a 16-bit RGB, RGBA or gray+alpha PNG as uint16 (H, W, C).

    Why: Pillow has no 16-bit multi-channel mode and keeps only the high byte. Its PNG decoder is
    still the one to use (inflate, unfiltering, interlacing in C): decoding twice, once for the high
    and once for the low bytes, gives the exact values without a second PNG decoder.
    """
    with Image.open(io.BytesIO(data)) as img:
        hi = np.asarray(img, dtype=np.uint16)
    with Image.open(io.BytesIO(data)) as low:
        low.tile = [low.tile[0]._replace(args=_PNG16_LOW_BYTES[rawmode])]
        lo = np.asarray(low, dtype=np.uint16)
    if rawmode == "LA;16B":  # hi: (L, L, L, A) high bytes; lo: the raw bytes (L hi, L lo, A hi, A lo)
        return np.stack([lo[..., 0] << 8 | lo[..., 1], lo[..., 2] << 8 | lo[..., 3]], axis=-1)
    return hi << 8 | lo


def _flatten_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite on white: transparent areas of scans are margins, and margins are paper."""
    a = alpha[..., None] if rgb.ndim == 3 else alpha
    return rgb * a + (1.0 - a)


def _exif_bytes(img: Image.Image) -> bytes | None:
    src = img.getexif()  # Pillow caches this object and exif_transpose reads it: never mutate it
    if not len(src):
        return None
    exif = Image.Exif()
    exif.load(src.tobytes())
    exif[0x0112] = 1  # orientation is applied to the pixels now
    return exif.tobytes()


@contextmanager
def _decode_errors(path: Path, max_megapixels: float) -> Iterator[None]:
    """Pillow's failures to open or decode ``path`` as one-line ScanErrors naming the file."""
    try:
        yield
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ScanError(
            f"image too large (over the {max_megapixels:g} MP limit)",
            path=path,
            hint="raise scan.max_megapixels in the profile if the file is trusted",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ScanError("not an image (unrecognised format)", path=path) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ScanError(f"corrupt or truncated image: {exc}", path=path) from exc


def _sniff(fh: BinaryIO, path: Path, limit: int, max_megapixels: float) -> None:
    """Refuse a non-image or an over-limit image from its header alone, before the file is read.

    Why: a 2 GB file named ``.tif`` that is not an image, or a small file declaring a gigapixel
    canvas, must fail in milliseconds, not after being read (and hashed) whole. Pillow's own format
    detection reads only the header here; decoding waits until the bytes are in memory.
    """
    first = fh.read(1)
    if not first:
        raise ScanError("empty file (0 bytes)", path=path)
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _decode_errors(path, max_megapixels), Image.open(fh) as img:
            w, h = img.size
    if w * h > limit:
        raise ScanError(
            f"image too large ({w}x{h} px, over the {max_megapixels:g} MP limit)",
            path=path,
            hint="raise scan.max_megapixels in the profile if the file is trusted",
        )


def looks_like_image(path: Path) -> bool:
    """A regular file whose header Pillow recognises (nothing past the header is read)."""
    try:
        with open_regular(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh):
                return True
    except Exception:  # any failure means "not something to hash": loading gives the reason
        return False


def load_scan(path: Path, root: Path, settings: ScanSettings) -> Scan:
    """Load one scan as luminance; raise ScanError with a one-line reason for anything unreadable."""
    path = Path(path)
    limit = int(settings.max_megapixels * 1_000_000)
    try:
        with open_regular(path) as fh:
            _sniff(fh, path, limit, settings.max_megapixels)
            fh.seek(0)
            data = fh.read()
    except NotRegularFileError as exc:
        raise ScanError(exc.strerror or "not a regular file", path=path) from exc
    except OSError as exc:
        raise ScanError(f"cannot read: {exc.strerror or exc}", path=path) from exc
    try:
        relpath = path_text(path.relative_to(root).as_posix())
    except ValueError:
        relpath = path_text(path.name)
    sha = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _decode_errors(path, settings.max_megapixels):
                img = Image.open(io.BytesIO(data))
                fmt = img.format or "UNKNOWN"
                n_frames = getattr(img, "n_frames", 1)
                png16 = _png16_rawmode(img)
                img.load()
                wide = _read_png_16bit(data, png16) if png16 else None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if n_frames > 1:
        notes.append(f"multi-page file ({n_frames} pages): only the first page was colorized")
    mode = img.mode
    orientation = int(img.getexif().get(0x0112, 1) or 1)
    exif = _exif_bytes(img)
    icc = img.info.get("icc_profile") or None
    bits_per_sample = None
    if fmt == "TIFF":
        bps = img.tag_v2.get(258) if hasattr(img, "tag_v2") else None
        bits_per_sample = max(bps) if isinstance(bps, tuple) else bps
    try:
        if wide is not None:  # 16-bit RGB/RGBA/gray+alpha PNG: Pillow's own decode keeps 8 bits
            luma, bit_depth = _luma_16bit(_orient(wide, orientation), settings, notes)
        elif fmt == "TIFF" and (bits_per_sample == 16 or mode in _SIXTEEN_BIT_MODES):
            luma, bit_depth = _luma_16bit(_orient(_read_tiff_16bit(data, path), orientation), settings, notes)
        elif mode in _SIXTEEN_BIT_MODES:
            raw = np.asarray(ImageOps.exif_transpose(img))
            bit_depth = 16 if mode != "I" or raw.max() > 255 else 8
            if raw.dtype == np.uint16:
                luma = _levels(bit_depth)[raw]
            else:
                arr = raw.astype(np.float64)
                luma = np.clip(arr / (65535.0 if bit_depth == 16 else 255.0), 0, 1).astype(np.float32)
        else:
            luma, bit_depth = _luma_8bit(ImageOps.exif_transpose(img), icc, settings, notes, path)
    except (OSError, ValueError) as exc:
        raise ScanError(f"corrupt or truncated image: {exc}", path=path) from exc
    if luma.ndim != 2 or min(luma.shape) < 8:
        raise ScanError(f"image too small ({luma.shape[1]}x{luma.shape[0]} px)", path=path)
    return Scan(
        source=path,
        relpath=relpath,
        luma=np.ascontiguousarray(luma, dtype=np.float32),
        format=fmt,
        mode=mode,
        bit_depth=bit_depth,
        compression=img.info.get("compression") if fmt == "TIFF" else None,
        sha256=sha,
        icc_profile=icc,
        exif=exif,
        notes=notes,
    )


@functools.cache
def _levels(bit_depth: int) -> np.ndarray:
    """float32 luma of every 8- or 16-bit code value, computed as ``float64(v) / top`` rounded to
    float32: a table lookup gives bit-identical luma to dividing the whole image in float64 without
    its 8 B/px (plus temporaries) on a 100 MP scan."""
    top = 65535 if bit_depth == 16 else 255
    table = (np.arange(top + 1, dtype=np.float64) / float(top)).astype(np.float32)
    table.setflags(write=False)
    return table


def _luma_16bit(arr: np.ndarray, settings: ScanSettings, notes: list[str]) -> tuple[np.ndarray, int]:
    scale = (
        65535.0
        if arr.dtype == np.uint16
        else float(np.iinfo(arr.dtype).max)
        if arr.dtype.kind == "u"
        else 1.0
    )
    if arr.ndim == 2 and arr.dtype == np.uint16:
        return _levels(16)[arr], 16  # same values as the float64 path below, 4 B/px instead of 28
    f = arr.astype(np.float64) / scale
    if f.ndim == 3:
        if f.shape[-1] in (2, 4):
            f = (
                _flatten_alpha(f[..., :-1], f[..., -1])
                if f.shape[-1] == 4
                else _flatten_alpha(f[..., 0], f[..., 1])
            )
            notes.append("alpha channel flattened onto white")
        if f.ndim == 3:
            notes.append(describe_tone(f[..., :3], settings.gray_tolerance))
            return rgb_to_gray(f[..., :3]), 16
    return np.clip(f, 0, 1).astype(np.float32), 16


def _luma_8bit(
    img: Image.Image, icc: bytes | None, settings: ScanSettings, notes: list[str], path: Path
) -> tuple[np.ndarray, int]:
    mode = img.mode
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0, 8
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        notes.append("palette image expanded")
        mode = "RGBA"
    alpha = None
    if mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float64) / 255.0
        img = img.convert("L" if mode in ("LA", "La") else "RGB")
        mode = img.mode
        if alpha.min() < 1.0:
            notes.append("alpha channel flattened onto white")
        else:
            alpha = None
    if icc and mode in ("RGB", "CMYK", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(img, src, _SRGB_PROFILE, outputMode="RGB")
            assert converted is not None  # not in place: the converted copy
            img = converted
            notes.append("ICC profile converted to sRGB")
            mode = "RGB"
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            notes.append(f"ICC profile not usable ({exc}); pixel values used as sRGB")
    if mode == "L":
        if alpha is None:
            return _levels(8)[np.asarray(img)], 8
        f = np.asarray(img, dtype=np.float64) / 255.0
        return _flatten_alpha(f, alpha).astype(np.float32), 8
    if mode != "RGB":
        if mode == "CMYK":
            notes.append("CMYK converted to RGB")
        try:
            img = img.convert("RGB")
        except ValueError as exc:
            raise ScanError(f"unsupported image mode {mode}", path=path) from exc
    rgb = np.asarray(img, dtype=np.float64) / 255.0
    if alpha is not None:
        rgb = _flatten_alpha(rgb, alpha)
    notes.append(describe_tone(rgb, settings.gray_tolerance))
    return rgb_to_gray(rgb), 8


def upright_size(path: Path) -> tuple[int, int]:
    """(height, width) of the scan as the run sees it (EXIF orientation applied), from the header only."""
    try:
        with open_regular(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as exc:  # not an OSError: it would abort `hints check` and the editor
        raise ScanError("image too large to open: over the decompression-bomb limit", path=path) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ScanError(f"cannot read image header: {exc}", path=path) from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
