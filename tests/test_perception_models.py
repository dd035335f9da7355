"""Tiny random SAM + OWLv2: prompts -> masks at scan size, one embedding per scan, perceive, taggers."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from mtcolor_batch.core.config import PerceptionSettings
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import Scan
from mtcolor_batch.perception import detections_to_scan_boxes, perceive
from mtcolor_batch.perception.models import load_perception
from mtcolor_batch.perception.segmenter import clip_to_box, luma_to_rgb_image
from mtcolor_batch.perception.tagger import Detection, detect, load_vocabulary, nms

H, W = 96, 128


def make_scan(seed: int = 0, h: int = H, w: int = W) -> Scan:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    luma = (0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + 0.05 * rng.standard_normal((h, w))).astype(
        np.float32
    )
    return Scan(
        source=Path(f"s{seed}.png"),
        relpath=f"s{seed}.png",
        luma=np.clip(luma, 0, 1).astype(np.float32),
        format="PNG",
        mode="L",
        bit_depth=8,
        sha256=str(seed),
    )


def test_box_prompts_give_scan_size_masks_clipped_to_box(tiny_perception) -> None:
    seg = tiny_perception.segmenter
    scan = make_scan(1)
    boxes = [(10, 10, 50, 40), (60, 20, 120, 90), (0, 0, W, H)]
    raw = seg.segment_boxes(scan.luma, boxes, clip=False)
    clipped = seg.segment_boxes_scored(scan.luma, boxes)
    assert len(clipped) == 3
    for box, r, (m, score) in zip(boxes, raw, clipped, strict=True):
        assert m.shape == (H, W) and m.dtype == bool
        assert isinstance(score, float)
        hood = clip_to_box(np.ones((H, W), bool), box, seg.box_margin)
        assert not (m & ~hood).any()  # nothing outside the box's neighbourhood
        assert np.array_equal(m, r & hood)
    assert raw[0].any(), "the tiny model should give some pixels for a box"


def test_embedding_computed_once_per_scan(tiny_perception) -> None:
    seg = tiny_perception.segmenter
    scan, other = make_scan(2), make_scan(3)
    start = seg.embed_count
    seg.segment_boxes(scan.luma, [(0, 0, 20, 20)])
    seg.segment_boxes(scan.luma, [(5, 5, 60, 60), (1, 1, 9, 9)])
    mask, score = seg.segment_points(scan.luma, [(30, 30)])
    seg.segment_points(scan.luma, [(30, 30), (40, 35)], labels=[1, 0])
    assert seg.embed_count == start + 1
    assert mask.shape == (H, W) and mask.dtype == bool and isinstance(score, float)
    seg.segment_boxes(other.luma, [(0, 0, 20, 20)])
    assert seg.embed_count == start + 2
    seg.segment_boxes(other.luma.copy(), [(0, 0, 20, 20)])  # same pixels, new array: still cached
    assert seg.embed_count == start + 2
    with pytest.raises(ValueError):
        seg.segment_points(scan.luma, [])


@pytest.mark.slow
def test_large_scan_is_shrunk_for_sam_and_masks_come_back_full_size(tiny_perception_dir) -> None:
    perception = load_perception(tiny_perception_dir, "cpu", long_side=64)
    scan = make_scan(4, h=150, w=300)
    masks = perception.segmenter.segment_boxes(scan.luma, [(100, 30, 200, 120)])
    assert masks[0].shape == (150, 300)
    assert luma_to_rgb_image(scan.luma, 64).size == (64, 32)


def test_perceive_gives_auto_instances_at_scan_resolution(tiny_perception) -> None:
    scan = make_scan(5)
    vocabulary = load_vocabulary()
    settings = PerceptionSettings(size=128, box_threshold=0.0, max_instances=4)
    start = tiny_perception.segmenter.embed_count
    found = perceive(scan, tiny_perception, settings, exclude=[])
    tiny_perception.segmenter.segment_boxes(scan.luma, [(5, 5, 50, 50)])  # a sidecar box afterwards
    assert tiny_perception.segmenter.embed_count == start + 1  # shares perceive's embedding
    assert found, "threshold 0 must let the random detector through"
    for inst in found:
        assert inst.source == "auto" and inst.label in vocabulary
        x0, y0, x1, y1 = inst.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert inst.mask.shape == (y1 - y0, x1 - x0) and inst.mask.dtype == bool and inst.mask.any()
        assert inst.prompt_box is not None  # the detector's box, kept for matching hints to it
    again = perceive(scan, tiny_perception, settings, exclude=[])
    assert [(i.label, i.box) for i in again] == [(i.label, i.box) for i in found]  # deterministic
    keep = {found[0].label}
    only = perceive(scan, tiny_perception, settings, exclude=[v for v in vocabulary if v not in keep])
    assert {i.label for i in only} <= keep


def test_perceive_switches(tiny_perception) -> None:
    scan = make_scan(6)
    assert perceive(scan, None, PerceptionSettings(), []) == []
    assert perceive(scan, tiny_perception, PerceptionSettings(auto_instances=False), []) == []
    assert perceive(scan, tiny_perception, PerceptionSettings(max_instances=0), []) == []
    high = PerceptionSettings(size=128, box_threshold=1.0)
    assert perceive(scan, tiny_perception, high, []) == []


def test_detect_boxes_inside_image_sorted(tiny_perception) -> None:
    image = luma_to_rgb_image(make_scan(7).luma, 128)
    dets = detect(
        tiny_perception.detector, image, ["tram", "sky", "horse carriage"], threshold=0.0, max_detections=5
    )
    assert 0 < len(dets) <= 5
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for d in dets:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
    boxes = detections_to_scan_boxes(dets, image.size, (H, W))
    assert all(0 <= b[0] < b[2] <= W and 0 <= b[1] < b[3] <= H for b in boxes)
    assert detect(tiny_perception.detector, image, [], threshold=0.0, max_detections=5) == []


def test_detections_to_scan_boxes_scale_outward() -> None:
    boxes = detections_to_scan_boxes([Detection("a", (1.5, 2.5, 10.2, 20.0), 0.5)], (32, 24), (48, 64))
    assert boxes == [(3, 5, 21, 40)]


def test_nms_keeps_best_of_overlaps() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=float)
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.5) == [1, 2]


def test_vocabulary_is_curated_and_clean() -> None:
    vocab = load_vocabulary()
    for word in ("person", "tram", "horse carriage", "sky", "window", "boat", "hat", "bicycle"):
        assert word in vocab
    assert len(vocab) == len(set(vocab)) and all(v == v.strip().lower() and "#" not in v for v in vocab)


def test_ram_missing_says_how_to_install(tiny_perception, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ram", None)  # import ram -> ImportError, installed or not
    settings = PerceptionSettings(tagger="ram", size=128)
    for perception in (tiny_perception, None):
        with pytest.raises(UserError) as info:
            perceive(make_scan(8), perception, settings, [])
        line = info.value.one_line()
        assert "\n" not in line
        assert "pip install git+https://github.com/xinyu1205/recognize-anything" in line
    # auto falls back to the vocabulary quietly when RAM is not there
    assert (
        perceive(make_scan(8), tiny_perception, PerceptionSettings(tagger="auto", size=128), []) is not None
    )


def test_load_perception_components(tmp_path: Path, tiny_perception_dir: Path) -> None:
    assert load_perception(tmp_path, "cpu") is None
    shutil.copytree(tiny_perception_dir / "sam", tmp_path / "sam")
    only_sam = load_perception(tmp_path, "cpu")
    assert only_sam is not None and only_sam.detector is None and not only_sam.can_auto_segment
    assert any("detector" in n for n in only_sam.notes)
    assert perceive(make_scan(9), only_sam, PerceptionSettings(box_threshold=0.0), []) == []


def test_tiny_perception_is_reproducible_safetensors(tmp_path: Path, tiny_perception_dir: Path) -> None:
    from mtcolor_batch.testing.tiny_perception import write_tiny_perception

    write_tiny_perception(tmp_path)
    for comp in ("sam", "detector"):
        files = sorted(p.name for p in (tmp_path / comp).iterdir())
        assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
        assert (tmp_path / comp / "model.safetensors").read_bytes() == (
            tiny_perception_dir / comp / "model.safetensors"
        ).read_bytes()


def _sidecar_scan(tmp_path: Path, boxes: int, label_hint: bool = False) -> Scan:
    lines = ["version: 1", "instances:"]
    for k in range(boxes):
        lines += [f"  - box: [{4 + 30 * k}, 10, {28 + 30 * k}, 60]", "    color: red"]
    if label_hint:
        lines += ["  - label: person", "    color: blue"]
    (tmp_path / "s7.png.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    scan = make_scan(7)
    return Scan(**{**scan.__dict__, "source": tmp_path / "s7.png"})


@pytest.mark.parametrize(
    ("boxes", "label_hint", "detects"),
    [(3, False, False), (4, False, False), (2, False, True), (3, True, True)],
)
def test_detection_is_skipped_only_where_no_auto_instance_could_be_kept(
    tiny_perception,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    boxes: int,
    label_hint: bool,
    detects: bool,
) -> None:
    """Drawn sidecar regions that fill max_instances leave finalize no slot for an auto instance, so
    the detector is not run, and the instances are exactly those a run with detection gives. A label
    hint binds to a detection, and fewer drawn regions leave room: there it runs."""
    import mtcolor_batch.perception as perception_module
    import mtcolor_batch.stages.instances as stage
    from mtcolor_batch.core.config import Profile

    scan = _sidecar_scan(tmp_path, boxes, label_hint)
    profile = Profile(perception=PerceptionSettings(size=128, box_threshold=0.0, max_instances=3))
    calls: list[int] = []
    real_detect = perception_module.detect

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(perception_module, "detect", counting)
    sidecar = stage.read_sidecar(scan, profile.hints)
    found = stage.find_instances(scan, sidecar, tiny_perception, profile, tmp_path)
    assert bool(calls) is detects
    monkeypatch.setattr(stage, "_drawn_may_fill", lambda *_: False)  # always detect: the reference
    reference = stage.find_instances(scan, sidecar, tiny_perception, profile, tmp_path)
    assert calls  # the reference did detect
    assert [(i.id, i.label, i.box, i.source, i.text) for i in found.instances] == [
        (i.id, i.label, i.box, i.source, i.text) for i in reference.instances
    ]
    pairs = zip(found.instances, reference.instances, strict=True)
    assert all(np.array_equal(a.mask, b.mask) for a, b in pairs)
    if not detects or label_hint:
        return
    assert any(i.source == "auto" for i in reference.instances)  # the room was really used


@pytest.mark.slow  # two fresh Python processes
def test_loading_perception_flushes_denormals_in_every_cpu_thread(tiny_perception_dir: Path) -> None:
    """Random SAM weights underflowed into denormal floats and ran about 12x slower on 2 CPU threads
    (core/device.flush_cpu_denormals). In a fresh process, as `run` starts, loading perception sets the
    flag before any model loads, so torch's worker threads inherit it: a denormal times one is zero in
    a parallel op over 2 threads. Before, it is not (the check can fail)."""
    import subprocess

    setup = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "x = lambda: torch.full((1 << 22,), 1e-39, dtype=torch.float32)\n"
        "flushed = lambda: bool(((x() * 1.0) == 0).all())\n"
    )
    control = setup + "print(flushed())"
    script = (
        setup
        + "from mtcolor_batch.perception.models import load_perception\n"
        + f"load_perception({str(tiny_perception_dir)!r}, 'cpu')\n"
        + "print(flushed())"
    )
    runs = [
        subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, check=True)
        for c in (control, script)
    ]
    out = [run.stdout.split()[-1] for run in runs]
    assert out == ["False", "True"]
