"""Output files in the input's format and bit depth, with the metadata carried forward.

Files are written through :mod:`mtcolor_batch.core.fs` (temp, fsync, rename), so a reader only
ever sees the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import piexif
import piexif.helper
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mtcolor_batch.core.errors import UserError, path_text
from mtcolor_batch.core.fs import HashingFile
from mtcolor_batch.render.chroma import to_output_array

_EXT_FORMAT = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
}
_TIFF_TEXT_TAGS = (271, 272, 306, 315, 33432)  # Make, Model, DateTime, Artist, Copyright: kept from the input


@dataclass
class EmbeddedMeta:
    """What goes inside the output file (all deterministic: no clock, so reruns are byte-identical)."""

    software: str
    description: str
    user_comment: str
    xmp: bytes
    exif: bytes | None = None  # the original's EXIF (orientation already reset to 1)
    icc_profile: bytes | None = None
    tiff_compress: bool = True  # False when the input TIFF was uncompressed: archives chose that for speed


def output_path(out_dir: Path, relpath: str, suffix: str, json_record: bool = False, stem: str = "") -> Path:
    """``<out>/<rel dir>/<stem><suffix>.<ext>`` (or ``.json`` for the provenance record)."""
    rel = Path(relpath)
    ext = ".json" if json_record else rel.suffix.lower()
    return Path(out_dir) / rel.parent / f"{stem or rel.stem}{suffix}{ext}"


NAME_MAX_BYTES = 255
"""Longest file name (in bytes) ext4, XFS, APFS and NTFS accept."""


def check_output_names(out_dir: Path, relpath: str, suffix: str, stem: str = "") -> None:
    """Refuse a scan whose output or record name would be over 255 bytes, before any work on it.

    Why before: the file system refuses such a name only at the final rename, after the whole
    colorization; and the file should fail with its reason, not an internal OSError.
    """
    for path in (
        output_path(out_dir, relpath, suffix, stem=stem),
        output_path(out_dir, relpath, suffix, True, stem),
    ):
        size = len(os.fsencode(path.name))
        if size > NAME_MAX_BYTES:
            raise UserError(
                f"its output name {path_text(path.name)[:40]}... would be {size} bytes, over the "
                f"{NAME_MAX_BYTES}-byte limit of file names",
                path=Path(relpath),
                hint="rename the scan shorter",
            )


def _ascii(text: str) -> str:
    """piexif's text tags are ASCII: keep it readable, never crash on a non-ASCII file name."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def build_exif(meta: EmbeddedMeta) -> bytes:
    """Original EXIF plus Software, ImageDescription and UserComment; the stale thumbnail is dropped."""
    exif: dict = {"0th": {}, "Exif": {}, "GPS": {}, "Interop": {}, "1st": {}, "thumbnail": None}
    if meta.exif:
        # piexif raises bare ValueError/struct.error on odd makers' notes: then start fresh.
        with contextlib.suppress(Exception):
            exif = piexif.load(meta.exif)
    exif["thumbnail"] = None
    exif["1st"] = {}
    exif["0th"][piexif.ImageIFD.Software] = _ascii(meta.software).encode()
    exif["0th"][piexif.ImageIFD.ImageDescription] = _ascii(meta.description).encode()
    exif["0th"][piexif.ImageIFD.Orientation] = 1
    exif["Exif"][piexif.ExifIFD.UserComment] = piexif.helper.UserComment.dump(
        _ascii(meta.user_comment), encoding="ascii"
    )
    try:
        return piexif.dump(exif)
    except Exception:  # an original tag piexif cannot re-encode: keep ours, drop theirs
        fresh = {
            "0th": {
                k: exif["0th"][k]
                for k in (
                    piexif.ImageIFD.Software,
                    piexif.ImageIFD.ImageDescription,
                    piexif.ImageIFD.Orientation,
                )
            },
            "Exif": {piexif.ExifIFD.UserComment: exif["Exif"][piexif.ExifIFD.UserComment]},
        }
        return piexif.dump(fresh)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _write_png16(fh: BinaryIO, arr: np.ndarray, meta: EmbeddedMeta, exif: bytes) -> None:
    """16-bit RGB PNG (Pillow cannot write one): IHDR, iCCP-free sRGB note, eXIf, iTXt XMP, IDAT."""
    h, w, _ = arr.shape
    raw = np.empty((h, 1 + w * 6), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None per row
    raw[:, 1:].view(">u2").reshape(h, w, 3)[...] = arr  # big-endian in place, no extra copy
    fh.write(b"\x89PNG\r\n\x1a\n")
    fh.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
    fh.write(_png_chunk(b"sRGB", b"\x00"))
    fh.write(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    fh.write(_png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp))
    fh.write(_png_chunk(b"tEXt", b"Software\x00" + _ascii(meta.software).encode()))
    fh.write(_png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
    fh.write(_png_chunk(b"IEND", b""))


def _write_tiff(fh: BinaryIO, arr: np.ndarray, meta: EmbeddedMeta) -> None:
    """TIFF via tifffile (8 or 16 bit RGB), XMP in tag 700, ICC in 34675, the input's text tags kept."""
    import tifffile

    extratags: list[tuple] = [(700, "B", len(meta.xmp), meta.xmp, True)]
    if meta.icc_profile:
        extratags.append((34675, "B", len(meta.icc_profile), meta.icc_profile, True))
    if meta.exif:
        try:
            zeroth = piexif.load(meta.exif).get("0th", {})
        except Exception:
            zeroth = {}
        for tag in _TIFF_TEXT_TAGS:
            value = zeroth.get(tag)
            if isinstance(value, bytes) and value.strip(b"\x00"):
                text = value.split(b"\x00", 1)[0].decode("latin-1")
                extratags.append((tag, "s", 0, _ascii(text), True))
    if isinstance(fh, HashingFile):
        # tifffile writes the IFD after the pixels (out of order) and hands big uncompressed
        # arrays to numpy's tofile, which needs a real descriptor (else a full bytes copy):
        # write to the real file and hash by reading back.
        fh.rehash_all()
        fh = fh.raw
    tifffile.imwrite(
        fh,
        arr,
        photometric="rgb",
        compression="zlib" if meta.tiff_compress else None,
        metadata=None,
        software=_ascii(meta.software),
        description=_ascii(meta.description),
        extratags=extratags,
    )


def output_array(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """The integer pixels to write: ``rgb`` as is when already uint8/uint16 for ``bit_depth``
    (``render.chroma.compose_quantized``: no float copy of a 100 MP scan), else quantised."""
    want = np.uint16 if bit_depth == 16 else np.uint8
    if rgb.dtype.kind in "ui":
        if rgb.dtype != want:
            raise ValueError(f"{rgb.dtype} pixels given for a {bit_depth}-bit output")
        return rgb
    return to_output_array(rgb, bit_depth)


def encode_image(
    fh: BinaryIO, rgb: np.ndarray, fmt: str, bit_depth: int, meta: EmbeddedMeta, jpeg_quality: int = 95
) -> None:
    """Encode ``rgb`` as ``fmt`` with the metadata each format can hold.

    ``rgb``: float HxWx3 in [0, 1] (quantised here), or the already quantised uint8/uint16 array
    of the output's bit depth (16 only for 16-bit TIFF/PNG, 8 otherwise).
    """
    exif = build_exif(meta)
    if fmt == "TIFF":
        _write_tiff(fh, output_array(rgb, 16 if bit_depth == 16 else 8), meta)
        return
    if fmt == "PNG" and bit_depth == 16:
        _write_png16(fh, output_array(rgb, 16), meta, exif)
        return
    img = Image.fromarray(output_array(rgb, 8), mode="RGB")
    icc = {"icc_profile": meta.icc_profile} if meta.icc_profile else {}
    if fmt == "JPEG":
        img.save(fh, "JPEG", quality=jpeg_quality, exif=exif, xmp=meta.xmp, subsampling=0, **icc)
    elif fmt == "PNG":
        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8"))
        info.add_text("Software", _ascii(meta.software))
        img.save(fh, "PNG", pnginfo=info, exif=exif, **icc)
    elif fmt == "WEBP":
        img.save(fh, "WEBP", quality=jpeg_quality, exif=exif, xmp=meta.xmp, **icc)
    elif fmt == "BMP":
        img.save(fh, "BMP")  # BMP holds no metadata: the .color.json record carries it all
    else:
        raise ValueError(f"unsupported output format {fmt}")


def format_for(relpath: str, input_format: str) -> str:
    """The output format: the input's own (by extension, which also names the output file)."""
    return _EXT_FORMAT.get(Path(relpath).suffix.lower(), input_format)


def encode_to_bytes(
    rgb: np.ndarray, fmt: str, bit_depth: int, meta: EmbeddedMeta, jpeg_quality: int = 95
) -> bytes:
    """In-memory encoding (tests and the benchmark)."""
    buf = io.BytesIO()
    encode_image(buf, rgb, fmt, bit_depth, meta, jpeg_quality)
    return buf.getvalue()


def iter_outputs(out_dir: Path) -> Iterator[Path]:
    """Every finished output image under ``out_dir`` (hidden folders and temps excluded)."""
    for path in sorted(Path(out_dir).rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(out_dir).parts):
            yield path
