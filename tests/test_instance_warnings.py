"""The instances stage's warnings: a note that repeats per hint is said once, with a count."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.types import Scan
from mtcolor_batch.stages.instances import find_instances, read_sidecar


def _scan(tmp_path: Path, sidecar: str) -> Scan:
    (tmp_path / "photo.png.yaml").write_text(sidecar, encoding="utf-8")
    luma = np.full((64, 96), 0.5, dtype=np.float32)
    return Scan(
        source=tmp_path / "photo.png",
        relpath="photo.png",
        luma=luma,
        format="PNG",
        mode="L",
        bit_depth=8,
        sha256="0" * 64,
    )


def test_many_boxes_without_a_segmenter_are_one_warning_with_a_count(tmp_path: Path) -> None:
    boxes = "".join(f"  - box: [{4 * k}, 2, {4 * k + 3}, 9]\n    color: red\n" for k in range(1, 8))
    scan = _scan(tmp_path, f"version: 1\ninstances:\n{boxes}  - label: cart\n    color: blue\n")
    profile = Profile()
    found = find_instances(scan, read_sidecar(scan, profile.hints), None, profile, tmp_path)
    assert len(found.instances) == 7
    box_lines = [w for w in found.warnings if "no segmentation model" in w]
    assert box_lines == [
        "7 box hints (photo.png.yaml:3 (instance 1) and 6 more): no segmentation model, "
        "so each whole box is used as its region"
    ], found.warnings
    assert any("no 'cart' was detected" in w for w in found.warnings)  # other notes are kept


def test_a_single_box_keeps_its_own_note(tmp_path: Path) -> None:
    scan = _scan(tmp_path, "version: 1\ninstances:\n  - box: [4, 2, 20, 9]\n    color: red\n")
    profile = Profile()
    found = find_instances(scan, read_sidecar(scan, profile.hints), None, profile, tmp_path)
    assert found.warnings == [
        "photo.png.yaml:3 (instance 1): no segmentation model, so the whole box is used as the region"
    ]
