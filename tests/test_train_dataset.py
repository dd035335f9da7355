"""Dataset builder: gray inputs, instances, pixel-named colours, resumable manifest, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.scan.imageio import rgb_to_gray
from mtcolor_batch.testing.synthetic import BLUE, RED, TruthFinder, write_shapes_folder
from mtcolor_batch.train import naming
from mtcolor_batch.train.data import ManifestDataset, OrderedBatches, collate, epoch_order
from mtcolor_batch.train.dataset import MANIFEST, build_dataset, read_manifest


@pytest.fixture()
def shapes(tmp_path: Path):
    truth = write_shapes_folder(tmp_path / "photos", 6, size=64, seed=3)
    return tmp_path / "photos", truth


def _lines(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / MANIFEST).read_text().splitlines()]


def test_entries_name_colours_from_the_pixels(shapes, tmp_path: Path) -> None:
    photos, truth = shapes
    out = tmp_path / "data"
    report = build_dataset(photos, out, finder=TruthFinder(truth))
    entries = _lines(out)
    # Photos whose two shapes share one colour are one-hue but strongly coloured: still kept.
    assert report.added == len(truth) == len(entries) and not report.failed
    for entry in entries:
        image = truth[entry["source"]]
        rgb = np.asarray(Image.open(out / entry["image"]), dtype=np.float32) / 255
        assert np.array_equal(np.round(rgb * 255), image.rgb)
        gray = np.asarray(Image.open(out / entry["gray"]), dtype=np.float32)
        assert np.abs(gray - np.round(rgb_to_gray(rgb) * 255)).max() == 0  # the run-time luminance
        by_label = {i["label"]: i for i in entry["instances"]}
        for label, mask, red in (
            ("square", image.square, image.square_red),
            ("circle", image.circle, image.circle_red),
        ):
            inst = by_label[label]
            assert np.array_equal(np.asarray(Image.open(out / inst["mask"])) > 127, mask)
            assert inst["color"] == ("red" if red else "blue")  # basic terms, not CSS "royal blue"
            assert inst["text"] == f"a {inst['color']} {label}" and inst["text_by"] == "namer"
            assert inst["text"] in entry["text"]
    # The shapes have the same gray value, so only the texts can tell the colours apart.
    assert np.ptp(rgb_to_gray(np.array([[RED, BLUE]], np.float32) / 255)) < 1e-3


def test_colour_naming_is_mean_cielab_nearest_basic_term() -> None:
    rgb = np.zeros((4, 4, 3))
    rgb[:2] = (1.0, 0.0, 0.0)
    rgb[2:] = (0.0, 0.0, 1.0)
    lab = naming.rgb_to_lab(rgb)
    top = np.zeros((4, 4), bool)
    top[:2] = True
    assert naming.color_name(naming.mean_lab(lab, top)) == "red"
    assert naming.color_name(naming.mean_lab(lab, ~top)) == "blue"
    assert naming.color_name(naming.mean_lab(lab, top)) == naming.color_name(lab[top].mean(0))
    assert naming.instance_text("orange", "car") == "an orange car"
    with pytest.raises(ValueError):
        naming.mean_lab(lab, np.zeros((4, 4), bool))


def test_resume_skips_done_and_repairs_a_torn_line(shapes, tmp_path: Path) -> None:
    photos, truth = shapes
    out = tmp_path / "data"
    first = build_dataset(photos, out, finder=TruthFinder(truth), limit=4)
    assert first.added == 4
    fresh = (out / MANIFEST).read_bytes()
    # A crash mid-append leaves half a line: it is dropped and that photo is built again.
    lines = fresh.splitlines(keepends=True)
    (out / MANIFEST).write_bytes(b"".join(lines[:3]) + lines[3][:25])
    again = build_dataset(photos, out, finder=TruthFinder(truth), limit=4)
    assert (again.added, again.skipped) == (1, 3)
    assert (out / MANIFEST).read_bytes() == fresh  # deterministic: same bytes as the first build
    rest = build_dataset(photos, out, finder=TruthFinder(truth))
    assert (rest.added, rest.skipped) == (2, 4)
    assert len(read_manifest(out)) == 6


def test_gray_photos_skipped_and_no_perception_warns(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).convert("RGB").save(photos / "gray.png")
    sepia = np.stack([np.linspace(60, 200, 32)] * 3, -1)[None].repeat(32, 0) * (1.0, 0.85, 0.65)
    Image.fromarray(sepia.astype(np.uint8)).save(photos / "sepia.png")
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:] = (30, 160, 60)
    Image.fromarray(rgb).save(photos / "colour.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    report = build_dataset(photos, tmp_path / "data")
    assert report.added == 1 and report.skipped == 2
    assert [f[0] for f in report.failed] == ["broken.jpg"]
    assert any("no instances" in w for w in report.warnings)
    (entry,) = read_manifest(tmp_path / "data")
    assert entry["instances"] == [] and entry["text"].startswith("a colour photograph, ")


def test_auto_instances_with_the_bundle_perception(tiny_bundle: Path, shapes, tmp_path: Path) -> None:
    """Real perception path (tiny random SAM + detector): whatever it finds gets pixel-named texts."""
    photos, _ = shapes
    report = build_dataset(photos, tmp_path / "data", bundle=tiny_bundle, limit=2, device="cpu")
    assert report.added == 2 and not report.failed and not report.warnings
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert meta["instances"] == "auto"
    for entry in read_manifest(tmp_path / "data"):
        rgb = np.asarray(Image.open(tmp_path / "data" / entry["image"]), dtype=np.float64) / 255
        lab = naming.rgb_to_lab(rgb)
        for inst in entry["instances"]:
            mask = np.asarray(Image.open(tmp_path / "data" / inst["mask"])) > 127
            assert inst["color"] == naming.color_name(naming.mean_lab(lab, mask))
            assert inst["text"] == naming.instance_text(inst["color"], inst["label"])


def test_loader_tensors_and_resumable_order(shapes, tmp_path: Path) -> None:
    photos, truth = shapes
    build_dataset(photos, tmp_path / "data", finder=TruthFinder(truth))
    ds = ManifestDataset(tmp_path / "data", resolution=32, max_instances=3)
    batch = collate([ds[0], ds[1]])
    assert batch.pixels.shape == (2, 3, 32, 32) and batch.pixels.min() >= -1 and batch.pixels.max() <= 1
    assert batch.control.shape == (2, 3, 32, 32) and bool((batch.control[:, 0] == batch.control[:, 1]).all())
    assert batch.masks.shape == (2, 3, 32, 32)
    assert batch.valid.tolist() == [[True, True, False]] * 2 and batch.inst_texts[0][2] == ""
    # The order is a pure function of (seed, epoch, cursor): restarting mid-way continues identically.
    whole = OrderedBatches(6, 4, seed=1)
    seq = [whole.next() for _ in range(5)]
    part = OrderedBatches(6, 4, seed=1)
    part.next(), part.next()
    resumed = OrderedBatches(6, 4, seed=1, **part.state())
    assert [resumed.next() for _ in range(3)] == seq[2:]
    assert sorted(seq[0] + seq[1][:2]) == list(range(6)) and epoch_order(6, 1, 0) != epoch_order(6, 1, 1)


def test_cli_dataset_build(shapes, tmp_path: Path) -> None:
    photos, _ = shapes
    runner = CliRunner()
    result = runner.invoke(app, ["dataset", "build", str(photos), str(tmp_path / "data"), "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "2 added, 0 skipped, 0 failed" in result.output
    again = runner.invoke(app, ["dataset", "build", str(photos), str(tmp_path / "data"), "--limit", "2"])
    assert "0 added, 2 skipped" in again.output
    missing = runner.invoke(app, ["dataset", "build", str(tmp_path / "nope"), str(tmp_path / "d2")])
    assert missing.exit_code == 2 and "scan folder not found" in missing.output
