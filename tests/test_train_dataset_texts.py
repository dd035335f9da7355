"""Dataset build with the caption chain, COCO annotations, the seeded split, summary counts and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.testing.synthetic import TruthFinder, write_shapes_folder
from mtcolor_batch.testing.tiny_captioners import write_tiny_blip2, write_tiny_vlm
from mtcolor_batch.train.coco import clean_label
from mtcolor_batch.train.data import ManifestDataset
from mtcolor_batch.train.dataset import MANIFEST, SUMMARY, build_dataset, read_manifest
from mtcolor_batch.train.dataset_config import load_dataset_config
from mtcolor_batch.train.split import SPLIT, assign


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dataset-captioners")
    return {
        "vlm": write_tiny_vlm(root / "vlm", "i'm unable to describe this"),
        "blip2": write_tiny_blip2(root / "blip2", "a red square"),
    }


@pytest.fixture()
def shapes(tmp_path: Path):
    truth = write_shapes_folder(tmp_path / "photos", 5, size=48, seed=7)
    return tmp_path / "photos", truth


class DoublingFinder(TruthFinder):
    """Ground truth with every square listed twice: what an overlapping detector or file gives."""

    def __call__(self, scan: object) -> list:
        found = super().__call__(scan)
        return found + [i for i in found if i.label == "square"]


def _config(models: dict[str, Path], **split: object):
    return load_dataset_config(
        None, {"captioner": {"vlm": str(models["vlm"]), "blip2": str(models["blip2"])}, "split": split}
    )


@pytest.mark.slow
def test_chain_end_to_end_with_counted_rejections(models: dict[str, Path], shapes, tmp_path: Path) -> None:
    photos, truth = shapes
    out = tmp_path / "data"
    report = build_dataset(photos, out, finder=DoublingFinder(truth), config=_config(models))
    assert report.added == 5 and not report.failed
    entries = read_manifest(out)
    n_inst = sum(len(e["instances"]) for e in entries)
    n_squares = sum(1 for e in entries for i in e["instances"] if i["label"] == "square")
    assert n_inst == sum(int(t.square.any()) + int(t.circle.any()) for t in truth.values())
    for entry in entries:
        # The VLM refused every crop and the photo; BLIP-2 ("a red square") was accepted for all.
        assert entry["caption"] == "a red square" and entry["caption_by"] == "blip2"
        assert all(i["text"] == "a red square" and i["text_by"] == "blip2" for i in entry["instances"])
        assert entry["text"] == "a red square, with " + ", ".join(i["text"] for i in entry["instances"])
        assert {r["reason"] for r in entry["rejected"]} <= {"refusal", "duplicate"}
    summary = json.loads((out / SUMMARY).read_text())
    assert summary == report.summary
    assert summary["texts_by"] == {"blip2": n_inst}
    assert summary["captions_by"] == {"blip2": 5}
    assert summary["rejected"]["refusal"] == n_inst + 5  # every instance and every caption, by the VLM
    assert summary["rejected"]["duplicate"] == n_squares
    assert summary["rejected_by"]["vlm"]["refusal"] == n_inst + 5
    assert summary["split"] == {"train": 4, "test": 1, "seed": 0}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["texts"]["chain"] == ["vlm", "blip2", "namer"]


def test_without_captioner_the_global_text_is_the_tone_sentence(shapes, tmp_path: Path) -> None:
    photos, truth = shapes
    build_dataset(photos, tmp_path / "data", finder=TruthFinder(truth), limit=1)
    (entry,) = read_manifest(tmp_path / "data")
    assert entry["caption"] is None and entry["text"].startswith("a colour photograph, ")
    assert entry["text"].endswith(", with " + ", ".join(i["text"] for i in entry["instances"]))


def _interrupt_after(n: int):
    def progress(done: int, total: int, relpath: str) -> None:
        if done == n:
            raise KeyboardInterrupt

    return progress


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_build(
    models: dict[str, Path], shapes, tmp_path: Path
) -> None:
    photos, truth = shapes
    config = _config(models)
    whole = tmp_path / "whole"
    build_dataset(photos, whole, finder=TruthFinder(truth), config=config)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        build_dataset(photos, cut, finder=TruthFinder(truth), config=config, progress=_interrupt_after(2))
    assert len(read_manifest(cut)) == 2 and not (cut / SPLIT).exists()
    again = build_dataset(photos, cut, finder=TruthFinder(truth), config=config)
    assert (again.added, again.skipped) == (3, 2)
    for name in (MANIFEST, SPLIT, SUMMARY):
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name


def test_split_is_seeded_exact_and_order_free(shapes, tmp_path: Path) -> None:
    ids = [f"photo-{i}" for i in range(50)]
    parts = assign(ids, 0.2, seed=0)
    assert len(parts["test"]) == 10 and len(parts["train"]) == 40
    assert not set(parts["test"]) & set(parts["train"])
    assert assign(list(reversed(ids)), 0.2, seed=0) == parts  # a pure function of the set
    assert assign(ids, 0.2, seed=1)["test"] != parts["test"]
    assert assign(["a"], 0.5, 0) == {"train": ["a"], "test": []}  # never an empty training set
    photos, truth = shapes
    out = tmp_path / "data"
    build_dataset(
        photos, out, finder=TruthFinder(truth), config=load_dataset_config(None, {"split": {"seed": 3}})
    )
    split = json.loads((out / SPLIT).read_text())
    assert split["seed"] == 3 and len(split["test"]) == 1 and len(split["train"]) == 4
    train = ManifestDataset(out, resolution=16, max_instances=2)
    test = ManifestDataset(out, resolution=16, max_instances=2, split="test")
    assert sorted(e["id"] for e in train.entries) == split["train"]
    assert [e["id"] for e in test.entries] == split["test"]


def _coco_photos(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    from pycocotools import mask as coco_mask

    photos = tmp_path / "coco"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png", "nope.png"):
        rgb = np.zeros((80, 120, 3), np.uint8)
        rgb[:] = (40, 140, 50)
        rgb[10:50, 20:60] = (200, 30, 30)
        rgb += rng.integers(0, 4, rgb.shape, dtype=np.uint8)
        Image.fromarray(rgb).save(photos / name)
    square = np.zeros((80, 120), bool)
    square[10:50, 20:60] = True
    sky = np.zeros((80, 120), bool)
    sky[60:, :] = True
    rle = coco_mask.encode(np.asfortranarray(sky.astype(np.uint8)))
    sky_rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    polygon = [[20, 10, 60, 10, 60, 50, 20, 50]]
    uncompressed = {"size": [80, 120], "counts": [0, 80 * 120]}  # whole image, column-major runs
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 80, "width": 120},
            {"id": 2, "file_name": "train2017/b.png", "height": 80, "width": 120},  # matched by base name
            {"id": 3, "file_name": "c.png", "height": 90, "width": 120},  # wrong size
        ],
        "categories": [
            {"id": 1, "name": "car"},
            {"id": 2, "name": "sky-other-merged"},
            {"id": 3, "name": "person"},
            {"id": 183, "name": "other"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": polygon},
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": sky_rle},
            {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": uncompressed},
            {"id": 13, "image_id": 1, "category_id": 183, "iscrowd": 0, "segmentation": uncompressed},
            {"id": 14, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": uncompressed,
             "text": "I'm unable to describe this person"},  # an annotation's text, refused -> namer
            {"id": 15, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": polygon,
             "text": "a shiny dark red car."},  # an annotation's own text, kept
        ],
    }  # fmt: skip
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    return photos, ann, {"square": square, "sky": sky}


def test_coco_annotations_give_the_instances(tmp_path: Path) -> None:
    photos, ann, masks = _coco_photos(tmp_path)
    out = tmp_path / "data"
    report = build_dataset(photos, out, annotations=ann)
    assert report.added == 2 and not report.warnings  # no detector asked for, none missed
    failed = dict(report.failed)
    assert set(failed) == {"c.png", "nope.png"}
    assert "annotation says 120x90, the photo is 120x80" in failed["c.png"] and "c.png" in failed["c.png"]
    assert "not in the annotation file instances.json" in failed["nope.png"]
    by_source = {e["source"]: e for e in read_manifest(out)}
    a = by_source["a.png"]
    assert [i["label"] for i in a["instances"]] == ["car", "sky"]  # crowd and "other" skipped
    car, sky = a["instances"]
    # The polygon's rasterisation follows COCO's pixel-corner convention: the red square, edges included.
    got = np.asarray(Image.open(out / car["mask"])) > 127
    assert (got & masks["square"]).sum() / (got | masks["square"]).sum() > 0.85
    assert np.array_equal(np.asarray(Image.open(out / sky["mask"])) > 127, masks["sky"])  # compressed RLE
    assert car["text"] == "a red car" and sky["text"] == "a green sky"
    person, car_b = by_source["b.png"]["instances"]
    assert person["label"] == "person" and person["box"] == [0, 0, 120, 80]  # uncompressed RLE
    assert (person["text"], person["text_by"]) == ("a green person", "namer")
    assert by_source["b.png"]["rejected"][0]["by"] == "given"
    assert by_source["b.png"]["rejected"][0]["reason"] == "refusal"
    assert (car_b["text"], car_b["text_by"]) == ("a shiny dark red car", "given")
    assert json.loads((out / "dataset.json").read_text())["instances"] == "annotations"
    # Downscaled photos get their masks resized with them (nearest), at the stored image's size.
    config = load_dataset_config(None, {"max_side": 64})
    assert build_dataset(photos, tmp_path / "small", annotations=ann, config=config).added == 2
    (small,) = [e for e in read_manifest(tmp_path / "small") if e["source"] == "a.png"]
    sky_small = np.asarray(Image.open(tmp_path / "small" / small["instances"][1]["mask"])) > 127
    assert sky_small.shape == tuple(small["size"]) == (43, 64)
    assert sky_small[-5:].all() and not sky_small[:30].any()


def test_coco_file_errors(tmp_path: Path) -> None:
    photos, ann, _ = _coco_photos(tmp_path)
    with pytest.raises(UserError, match="annotation file not found"):
        build_dataset(photos, tmp_path / "d1", annotations=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotations": []}')
    with pytest.raises(UserError, match="no 'images' list"):
        build_dataset(photos, tmp_path / "d2", annotations=bad)
    assert clean_label("sky-other-merged") == "sky" and clean_label("playingfield") == "playingfield"
    assert clean_label("wall-other-merged") == "wall" and clean_label("traffic light") == "traffic light"


def test_cli_build_prints_the_summary(models: dict[str, Path], tmp_path: Path) -> None:
    photos, ann, _ = _coco_photos(tmp_path)
    runner = CliRunner()
    args = ["dataset", "build", str(photos), str(tmp_path / "data"), "--annotations", str(ann)]
    result = runner.invoke(app, [*args, "--vlm", str(models["vlm"]), "--blip2", str(models["blip2"])])
    assert result.exit_code == 1, result.output  # two photos failed, the others were built
    assert "2 added, 0 skipped, 2 failed" in result.output
    assert "texts by blip2 3, given 1" in result.output and "refusal 6" in result.output
    assert "split 2 train / 0 test" in result.output
    config = tmp_path / "dataset.yaml"
    config.write_text("filters:\n  max_wordz: 3\n")
    bad = runner.invoke(app, [*args, "--config", str(config)])
    assert bad.exit_code == 2 and "dataset.yaml" in bad.output and "max_wordz" in bad.output
    gone = runner.invoke(app, [*args, "--blip2", str(tmp_path / "no-such-model")])
    assert gone.exit_code == 2 and "cannot load the blip2 captioner" in gone.output
