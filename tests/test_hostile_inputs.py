"""Hostile inputs of issue 22, at the level of the module that now stops each one (fast).

The same cases run end to end through the CLI in ``tests/test_adversarial.py`` (section "hostile",
slow); these name the one function responsible, so a regression points at its home.
"""

from __future__ import annotations

import json
import shutil
import struct
import xml.dom.minidom
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.errors import HintError, ScanError, UserError, visible_text
from mtcolor_batch.core.yaml_guarded import read_yaml
from mtcolor_batch.jobs.preflight import check_journal
from mtcolor_batch.output.provenance import build_xmp
from mtcolor_batch.output.writer import EmbeddedMeta, check_output_names, encode_to_bytes
from mtcolor_batch.scan.discover import OUTPUT_XMP_MARK, ScanFile, discover_report
from mtcolor_batch.scan.imageio import load_scan, upright_size

SETTINGS = load_profile(None).scan


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (gray+alpha, RGB or RGBA), which Pillow cannot write."""
    h, w, c = arr.shape
    raw = np.zeros((h, 1 + w * c * 2), np.uint8)
    raw[:, 1:].view(">u2").reshape(h, w, c)[...] = arr

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes())) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_png_with_alpha_or_colour_keeps_16_bits(tmp_path: Path, channels: int) -> None:
    gray = np.random.default_rng(channels).integers(0, 65536, (24, 30), dtype=np.uint16)
    planes = [gray] * (1 if channels == 2 else 3)
    if channels in (2, 4):
        planes.append(np.full_like(gray, 65535))
    path = tmp_path / "s.png"
    path.write_bytes(png16(np.stack(planes, axis=-1)))
    scan = load_scan(path, tmp_path, SETTINGS)
    assert scan.bit_depth == 16
    assert len(np.unique(scan.luma)) > 256  # Pillow alone keeps 256 levels at most
    if channels == 2:  # gray + opaque alpha: exactly the gray
        assert np.abs(scan.luma - gray / 65535.0).max() < 1e-6


@pytest.mark.slow
def test_a_decompression_bomb_header_is_a_scan_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    with pytest.raises(ScanError, match="image too large"):
        upright_size(path)


def test_an_output_name_over_255_bytes_fails_its_file_and_not_the_preflight(tmp_path: Path) -> None:
    long = "n" * 246 + ".png"
    with pytest.raises(UserError, match="over the 255-byte limit"):
        check_output_names(tmp_path, long, ".color")
    check_output_names(tmp_path, "n" * 200 + ".png", ".color")  # fits: no error
    files = [ScanFile(tmp_path / long, long)]
    check_journal(tmp_path / "journal.sqlite", files, tmp_path, ".color", shard=None, force=False)


def test_control_characters_keep_the_xmp_valid_xml() -> None:
    name = "ctl\x01\x1b[31m\ufffe.png"
    packet = build_xmp(relpath=name, input_sha256="0", model_name="m\x07", seed=1, steps=2, record_name="r")
    dom = xml.dom.minidom.parseString(packet)
    assert dom.getElementsByTagName("stRef:filePath")[0].firstChild.data == "ctl\\x01\\x1b[31m\\ufffe.png"


def test_visible_text_escapes_bidi_overrides_and_leaves_names_alone() -> None:
    assert visible_text("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert visible_text("café Ölbild 写真.png") == "café Ölbild 写真.png"


def test_earlier_outputs_are_skipped_with_a_note(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(root / "scan.png")
    meta = EmbeddedMeta(
        software="s",
        description="d",
        user_comment="u",
        xmp=build_xmp(relpath="a.png", input_sha256="0", model_name="m", seed=1, steps=2, record_name="r"),
    )
    assert OUTPUT_XMP_MARK in meta.xmp
    rgb = np.random.default_rng(0).random((16, 20, 3))
    for fmt, ext, depth in (("JPEG", "jpg", 8), ("PNG", "png", 8), ("PNG", "png", 16), ("TIFF", "tif", 16)):
        (root / f"out{depth}.color.{ext}").write_bytes(encode_to_bytes(rgb, fmt, depth, meta))
    found = discover_report(root)
    assert [f.relpath for f in found.files] == ["scan.png"]
    assert any("4 file(s) are outputs of mtcolor-batch" in w for w in found.warnings), found.warnings


def test_an_output_folder_given_as_scans_skips_its_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".mtcolor").mkdir(parents=True)
    (out / "report_files" / "thumbs").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(out / "report_files" / "thumbs" / "0001-after.jpg")
    found = discover_report(out)
    assert found.files == [] and any("report_files" in w for w in found.warnings)


def test_discovery_survives_a_nul_mask_path_and_a_5000_digit_number(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((16, 20), np.uint8)).save(root / name)
    (root / "a.png.yaml").write_text('instances:\n  - mask: "x\\0y.png"\n    color: red\n')
    (root / "b.png.yaml").write_text("seed: " + "9" * 5000 + "\ninstances: []\n")
    assert [f.relpath for f in discover_report(root).files] == ["a.png", "b.png", "c.png"]
    with pytest.raises(HintError, match=r"b.png.yaml:1:7: number too long"):
        read_yaml(root / "b.png.yaml", max_bytes=1 << 20)


@pytest.mark.parametrize(
    "body",
    [
        "sampling: !!python/object/apply:collections.OrderedDict\n  steps: 2\n",
        "perception: !!set {auto_instances}\n",
        "sampling: !!omap [{steps: 2}]\n",
    ],
)
def test_tags_on_collections_are_refused_like_tags_on_values(tmp_path: Path, body: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(HintError, match=r"p.yaml:1:\d+: YAML tag .* is not allowed"):
        read_yaml(path, max_bytes=1 << 20, what="profile")


def test_a_hand_edited_record_of_the_wrong_type_is_skipped_with_a_note(eval_out, tmp_path: Path) -> None:
    from mtcolor_batch.evaluate.report import build_report

    before = tmp_path / "before"
    shutil.copytree(eval_out["out"], before)
    shown = build_report(before, with_metrics=False).read_text(encoding="utf-8").count("wrong type")
    out = tmp_path / "out"
    shutil.copytree(eval_out["out"], out)
    records = sorted(out.rglob("*.color.json"))
    edits = (("seed", "abc"), ("instances", [{"box": ["x", 1, 2, 3]}]))
    for record, (key, value) in zip(records, edits, strict=False):
        data = json.loads(record.read_text(encoding="utf-8"))
        data[key] = value
        record.write_text(json.dumps(data), encoding="utf-8")
    page = build_report(out, with_metrics=False).read_text(encoding="utf-8")
    assert shown == 0 and page.count("wrong type") == 2  # both skipped with their note
    untouched = json.loads(records[2].read_text(encoding="utf-8"))["input"]["relpath"]
    assert '<article class="entry done"' in page and untouched in page  # still shown
