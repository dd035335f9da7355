"""Output files: atomic writes, formats and bit depths, embedded metadata."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import piexif
import piexif.helper
import pytest
import tifffile
from PIL import Image

from mtcolor_batch.core.fs import OutputBatch, atomic_write, clean_stale_temps
from mtcolor_batch.output.provenance import DIGITAL_SOURCE_TYPE, build_xmp
from mtcolor_batch.output.writer import (
    EmbeddedMeta,
    encode_image,
    encode_to_bytes,
    output_path,
)
from mtcolor_batch.render.chroma import to_output_array


def _meta(exif: bytes | None = None) -> EmbeddedMeta:
    xmp = build_xmp(
        relpath="a/b.jpg",
        input_sha256="ab" * 32,
        model_name="tiny",
        seed=7,
        steps=2,
        record_name="b.color.json",
    )
    return EmbeddedMeta(
        software="mtcolor-batch 0.1.0",
        description="Colorized by mtcolor-batch from a/b.jpg",
        user_comment=json.dumps({"record": "b.color.json", "name": "caf\u00e9"}),
        xmp=xmp,
        exif=exif,
    )


def _rgb(h: int = 40, w: int = 56) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / w, y / h, (x + y) / (w + h)], -1).astype(np.float32)


def test_atomic_write_leaves_old_file_or_new_never_partial(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.bin"
    atomic_write(target, lambda fh: fh.write(b"old"))

    def boom(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]  # temp removed


def test_stale_temps_are_cleaned(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / "sub" / f".a.color.jpg.{int(dead.stdout)}.mtcolor-tmp"  # a dead writer's temp
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    assert clean_stale_temps(tmp_path) == [stale] and not stale.exists()


def test_output_naming(tmp_path: Path) -> None:
    assert output_path(tmp_path, "a/b/photo.JPG", ".color") == tmp_path / "a/b/photo.color.jpg"
    assert output_path(tmp_path, "photo.tif", ".color", json_record=True) == tmp_path / "photo.color.json"


def test_jpeg_keeps_exif_and_adds_provenance() -> None:
    exif = Image.Exif()
    exif[0x013B] = "A. Photographer"
    exif[0x0112] = 1
    data = encode_to_bytes(_rgb(), "JPEG", 8, _meta(exif.tobytes()))
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB"
    loaded = piexif.load(img.info["exif"])
    assert loaded["0th"][piexif.ImageIFD.Artist] == b"A. Photographer"
    assert loaded["0th"][piexif.ImageIFD.Software].startswith(b"mtcolor-batch")
    comment = piexif.helper.UserComment.load(loaded["Exif"][piexif.ExifIFD.UserComment])
    assert json.loads(comment)["record"] == "b.color.json"
    xmp = img.info["xmp"]
    assert DIGITAL_SOURCE_TYPE.encode() in xmp and b"xmpMM:DerivedFrom" in xmp and b"xmpMM:History" in xmp


def test_sixteen_bit_tiff_stays_sixteen_bit_with_xmp() -> None:
    rgb = _rgb()
    data = encode_to_bytes(rgb, "TIFF", 16, _meta())
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        arr = tif.pages[0].asarray()
        tags = tif.pages[0].tags
        assert arr.dtype == np.uint16 and arr.shape == (*rgb.shape[:2], 3)
        assert np.abs(arr / 65535.0 - rgb).max() < 1e-4
        assert DIGITAL_SOURCE_TYPE.encode() in bytes(tags[700].value)
        assert tags["Software"].value.startswith("mtcolor-batch")


def test_sixteen_bit_png_is_valid_and_carries_xmp() -> None:
    rgb = _rgb()
    data = encode_to_bytes(rgb, "PNG", 16, _meta())
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes (Pillow reduces 16-bit RGB to 8 bits on read)
    assert img.size == (56, 40)
    assert DIGITAL_SOURCE_TYPE in img.info["XML:com.adobe.xmp"]
    assert np.abs(np.asarray(img) / 255.0 - rgb).max() < 1 / 255 + 1e-6
    assert data[24] == 16  # IHDR bit depth


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_eight_bit_formats_decode(fmt: str) -> None:
    data = encode_to_bytes(_rgb(), fmt, 8, _meta())
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == fmt and img.size == (56, 40)
    if fmt == "PNG":
        assert DIGITAL_SOURCE_TYPE in img.info["XML:com.adobe.xmp"]


def test_encoding_is_deterministic() -> None:
    for fmt, depth in (("JPEG", 8), ("TIFF", 16), ("PNG", 16), ("PNG", 8)):
        assert encode_to_bytes(_rgb(), fmt, depth, _meta()) == encode_to_bytes(_rgb(), fmt, depth, _meta())


def test_tiff_follows_input_compression() -> None:
    packed = _meta()
    raw = _meta()
    raw.tiff_compress = False  # the input TIFF was uncompressed
    for meta, expected in ((packed, 8), (raw, 1)):  # 8 = Adobe deflate (zlib), 1 = none
        with tifffile.TiffFile(io.BytesIO(encode_to_bytes(_rgb(), "TIFF", 16, meta))) as tif:
            assert tif.pages[0].compression == expected


def test_streamed_sha256_matches_the_bytes_on_disk(tmp_path: Path) -> None:
    """Hashing while writing must give the file's digest even when a writer seeks back or skips."""
    import hashlib

    def patchy(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"HEADER00" + b"x" * 5000)
        fh.seek(6)
        fh.write(b"99")  # rewrites hashed bytes
        fh.seek(0, 2)
        fh.write(b"tail")

    def gappy(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"ab")
        fh.seek(100)
        fh.write(b"cd")  # ahead of what was hashed: read back at the end
        fh.seek(2)
        fh.write(b"ef")

    writers = {"p.bin": patchy, "g.bin": gappy}
    for name, fmt, depth in (("a.jpg", "JPEG", 8), ("a.png", "PNG", 16), ("a.tif", "TIFF", 16)):
        writers[name] = lambda fh, fmt=fmt, depth=depth: encode_image(fh, _rgb(), fmt, depth, _meta())
    for name, write in writers.items():
        with OutputBatch() as batch:
            digest = batch.add(tmp_path / name, write)
        assert digest == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(), name


def test_quantised_pixels_encode_like_floats() -> None:
    """The pipeline hands over compose_quantized's integers: same bytes as quantising here."""
    for fmt, depth in (("JPEG", 8), ("TIFF", 16), ("PNG", 16), ("PNG", 8), ("TIFF", 8)):
        ints = to_output_array(_rgb(), depth)
        assert encode_to_bytes(ints, fmt, depth, _meta()) == encode_to_bytes(_rgb(), fmt, depth, _meta())
    with pytest.raises(ValueError, match="16-bit"):
        encode_to_bytes(to_output_array(_rgb(), 8), "TIFF", 16, _meta())
