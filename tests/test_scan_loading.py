"""Robust loading: every awkward input becomes a Scan or a one-line ScanError (and nothing crashes).

``make_input_zoo`` builds the tree of good and bad inputs; the end-to-end run tests reuse it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from mtcolor_batch.core.config import ScanSettings
from mtcolor_batch.core.errors import ScanError
from mtcolor_batch.scan.imageio import load_scan, rgb_to_gray
from mtcolor_batch.scan.tone import describe_tone

BOMB_LIMIT_MP = 0.5  # the zoo's bomb is 1 MP; every good file is far below


def _gray(h: int = 72, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    return np.clip(0.2 + 0.6 * x / w + 0.1 * np.sin(y / 5) + rng.normal(0, 0.02, (h, w)), 0, 1)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_input_zoo(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Write every kind of input under ``root``; return (good relpath -> mode note, bad relpath -> reason)."""
    root.mkdir(parents=True, exist_ok=True)
    g = _gray()
    g8 = Image.fromarray(np.rint(g * 255).astype(np.uint8), "L")
    good: dict[str, str] = {}
    bad: dict[str, str] = {}

    g8.save(root / "gray8.jpg", quality=90)
    good["gray8.jpg"] = ""
    Image.fromarray(np.rint(g * 65535).astype(np.uint16)).save(root / "gray16.png")
    good["gray16.png"] = ""
    tifffile.imwrite(
        root / "rgb16.tif",
        np.rint(np.stack([g, g * 0.9, g * 0.8], -1) * 65535).astype(np.uint16),
        photometric="rgb",
        metadata=None,
    )
    good["rgb16.tif"] = "sepia"
    sepia = np.stack([g, g * 0.88, g * 0.7], -1)
    Image.fromarray(np.rint(sepia * 255).astype(np.uint8), "RGB").save(root / "Sepia.JPEG", quality=92)
    good["Sepia.JPEG"] = "sepia"
    g8.convert("CMYK").save(root / "cmyk.jpg", quality=90)
    good["cmyk.jpg"] = "CMYK"
    g8.convert("RGB").quantize(16).save(root / "palette.png")
    good["palette.png"] = "palette"
    rgba = g8.convert("RGBA")
    alpha = np.full(g.shape, 255, np.uint8)
    alpha[:, :10] = 0
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(root / "alpha.png")
    good["alpha.png"] = "alpha"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    g8.convert("RGB").save(root / "icc.jpg", quality=90, icc_profile=srgb)
    good["icc.jpg"] = "ICC"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    exif[0x013B] = "A. Photographer"
    (root / "sub").mkdir()
    g8.save(root / "sub" / "rotated.jpg", quality=90, exif=exif.tobytes())
    good["sub/rotated.jpg"] = ""
    pages = [g8, g8.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    pages[0].save(root / "multipage.tif", save_all=True, append_images=pages[1:])
    good["multipage.tif"] = "multi-page"
    g8.save(root / "gray.webp", quality=90)
    good["gray.webp"] = ""
    g8.save(root / "gray.bmp")
    good["gray.bmp"] = ""

    png = bytearray(_png_bytes(g8))
    idat = png.index(b"IDAT")
    for i in range(idat + 20, idat + 60):
        png[i] ^= 0x5A
    (root / "corrupt.png").write_bytes(bytes(png))
    bad["corrupt.png"] = "corrupt"
    (root / "truncated.png").write_bytes(_png_bytes(g8)[: len(png) // 2])
    bad["truncated.png"] = "truncated"
    (root / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty"
    (root / "notes.jpg").write_text("this is a text file, not a photo\n")
    bad["notes.jpg"] = "not an image"
    Image.new("L", (1024, 1024), 128).save(root / "bomb.png")
    bad["bomb.png"] = "too large"
    os.symlink("selfloop.jpg", root / "selfloop.jpg")
    bad["selfloop.jpg"] = "cannot read"
    os.symlink("..", root / "sub" / "loop")  # a directory loop: discovery must not follow it forever
    # Things discovery must skip: hidden folders, sidecar masks, sidecars.
    (root / ".thumbs").mkdir()
    g8.save(root / ".thumbs" / "hidden.jpg")
    (root / "masks").mkdir()
    coat = np.zeros(g.shape, np.uint8)
    coat[20:60, 30:70] = 255
    Image.fromarray(coat, "L").save(root / "masks" / "coat.png")
    (root / "gray8.jpg.yaml").write_text(
        "version: 1\ninstances:\n  - mask: masks/coat.png\n    color: navy\n"
    )
    return good, bad


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, str]]:
    root = tmp_path_factory.mktemp("zoo")
    good, bad = make_input_zoo(root)
    return root, good, bad


SETTINGS = ScanSettings(max_megapixels=BOMB_LIMIT_MP)


def test_good_inputs_load_as_luminance(zoo: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, good, _ = zoo
    for rel, note in good.items():
        scan = load_scan(root / rel, root, SETTINGS)
        assert scan.luma.dtype == np.float32 and scan.luma.ndim == 2, rel
        assert scan.luma.min() >= 0.0 and scan.luma.max() <= 1.0, rel
        assert scan.relpath == rel
        if note:
            assert any(note.lower() in n.lower() for n in scan.notes), (rel, scan.notes)


def test_sixteen_bit_precision_kept(zoo: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, _, _ = zoo
    for rel in ("gray16.png", "rgb16.tif"):
        scan = load_scan(root / rel, root, SETTINGS)
        assert scan.bit_depth == 16, rel
        levels = np.unique(np.rint(scan.luma * 65535)).size
        assert levels > 256, f"{rel}: only {levels} levels, 16-bit precision lost"
    ref = _gray()
    scan = load_scan(root / "gray16.png", root, SETTINGS)
    assert np.abs(scan.luma - ref).max() < 1e-4


def test_exif_orientation_applied_and_reset(zoo: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, _, _ = zoo
    scan = load_scan(root / "sub" / "rotated.jpg", root, SETTINGS)
    assert scan.size == (96, 72)  # 72x96 (h x w) stored, rotated 90 degrees on load
    exif = Image.Exif()
    exif.load(scan.exif)
    assert exif.get(0x0112) == 1 and exif.get(0x013B) == "A. Photographer"


def test_icc_and_cmyk_are_converted(zoo: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, _, _ = zoo
    icc = load_scan(root / "icc.jpg", root, SETTINGS)
    plain = load_scan(root / "gray8.jpg", root, SETTINGS)
    assert icc.icc_profile and np.abs(icc.luma - plain.luma).mean() < 0.02
    cmyk = load_scan(root / "cmyk.jpg", root, SETTINGS)
    assert cmyk.mode == "CMYK" and np.abs(cmyk.luma - plain.luma).mean() < 0.05


@pytest.mark.parametrize(
    "rel", ["corrupt.png", "truncated.png", "empty.jpg", "notes.jpg", "bomb.png", "selfloop.jpg"]
)
def test_bad_inputs_raise_one_line_scan_errors(
    zoo: tuple[Path, dict[str, str], dict[str, str]], rel: str
) -> None:
    root, _, bad = zoo
    with pytest.raises(ScanError) as info:
        load_scan(root / rel, root, SETTINGS)
    text = info.value.one_line()
    assert "\n" not in text and rel in text
    assert bad[rel] in text.lower(), text


def test_bomb_limit_is_a_profile_setting(zoo: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, _, _ = zoo
    before = Image.MAX_IMAGE_PIXELS
    scan = load_scan(root / "bomb.png", root, ScanSettings(max_megapixels=2.0))
    assert scan.size == (1024, 1024)
    assert before == Image.MAX_IMAGE_PIXELS  # the global limit is restored after each load


def test_originals_opened_read_only(zoo: tuple[Path, dict[str, str], dict[str, str]], monkeypatch) -> None:
    import builtins
    import os

    root, good, _ = zoo
    real_open, real_os_open = builtins.open, os.open
    modes: list[str] = []

    def spy(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    def os_spy(file, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        modes.append("rb" if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_CREAT else str(flags))
        return real_os_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(os, "open", os_spy)
    for rel in good:
        load_scan(root / rel, root, SETTINGS)
    assert modes and set(modes) == {"rb"}


def test_tone_detection() -> None:
    g = _gray()
    gray_rgb = np.stack([g, g, g], -1)
    sepia = np.stack([g, g * 0.88, g * 0.7], -1)
    rng = np.random.default_rng(0)
    colour = rng.uniform(0, 1, (64, 64, 3))
    assert "gray" in describe_tone(gray_rgb, 0.03)
    assert "sepia" in describe_tone(sepia, 0.03)
    assert "real colour" in describe_tone(colour, 0.03)
    assert np.allclose(rgb_to_gray(gray_rgb), g, atol=1e-5)  # gray stays exactly gray
