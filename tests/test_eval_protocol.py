"""``eval protocol`` and ``eval sweep`` end to end on the tiny bundle over synthetic colour references.

The references carry known colours; a COCO-style annotation file gives instances (polygon and RLE
segmentations) with texts. Bad references (gray, not in the annotation file, wrong declared size)
get their one-line error and the others are colorized and scored.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.output.mask_rle import encode_mask
from mtcolor_batch.testing.profiles import write_fast_profile

SIZE = (40, 56)  # (h, w)
GOOD = ["red_car.png", "street/green_tram.jpg", "blue_boat.png"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _photo(seed: int, color: tuple[int, int, int]) -> np.ndarray:
    h, w = SIZE
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, 120 + 40 * np.sin(xx / 5)], axis=2)
    img[8:28, 10:40] = color  # the instance
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("protocol")
    folder = root / "refs"
    (folder / "street").mkdir(parents=True)
    colors = [(200, 30, 30), (30, 150, 60), (30, 60, 200), (180, 160, 20), (120, 40, 160)]
    names = [*GOOD, "not_annotated.png", "wrong_size.png"]
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        Image.fromarray(_photo(i, color)).save(folder / name, quality=95)
    gray = _photo(9, (90, 90, 90)).mean(axis=2).astype(np.uint8)
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(folder / "gray_print.png")
    box_mask = np.zeros(SIZE, dtype=bool)
    box_mask[8:28, 10:40] = True
    polygon = [[10, 8, 40, 8, 40, 28, 10, 28]]
    images, anns = [], []
    for i, name in enumerate([*GOOD, "wrong_size.png", "gray_print.png"], start=1):
        h, w = SIZE if name != "wrong_size.png" else (SIZE[0] + 4, SIZE[1])
        images.append({"id": i, "file_name": name, "height": h, "width": w, "caption": f"a photo {i}"})
        seg = polygon if i % 2 else encode_mask(box_mask)  # polygons and compressed RLE
        anns.append(
            {"id": i, "image_id": i, "category_id": 3, "segmentation": seg, "text": f"a colourful thing {i}"}
        )
    ann_path = root / "instances.json"
    ann_path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 3, "name": "car"}]})
    )
    profile = root / "fast.yaml"
    write_fast_profile(profile)
    return {"refs": folder, "annotations": ann_path, "profile": profile, "root": root}


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _mtimes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and ".mtcolor" not in p.parts
    }


@pytest.mark.slow
def test_protocol_end_to_end_with_bad_references(
    refs, tiny_bundle, eval_bundle, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))  # no Inception weights here
    out = tmp_path / "out"
    args = [
        "eval",
        "protocol",
        refs["refs"],
        "--out",
        out,
        "--model",
        tiny_bundle,
        "--profile",
        refs["profile"],
        "--annotations",
        refs["annotations"],
        "--clip",
        eval_bundle,
        "--no-iqa",
        "--device",
        "cpu",
    ]
    code, output = _cli(*args)
    flat = " ".join(output.split())
    assert code == 1, output  # bad references named, the others scored
    assert "gray_print.png: reference is not a colour photo (gray)" in flat
    assert "not_annotated.png: no entry in the annotation file" in flat
    assert "wrong_size.png: size mismatch: the annotation file says 56x44, the image is 56x40" in flat
    # gray inputs with sidecars (instances from the annotations) went through the real runner
    side = (out / "inputs" / "street" / "green_tram.png.yaml").read_text()
    assert "a colourful thing 2" in side and "green_tram_masks/1.png" in side and "a photo 2" in side
    assert sorted(p.name for p in (out / "colorized").rglob("*.color.png")) == sorted(
        ["red_car.color.png", "green_tram.color.png", "blue_boat.color.png"]
    )
    rows = {r["relpath"]: r for r in csv.DictReader((out / "per_image.csv").open())}
    assert len(rows) == 6
    for name in GOOD:
        r = rows[name]
        assert r["error"] == "", r
        assert float(r["psnr_512"]) > 5 and 0 < float(r["ssim_512"]) <= 1
        assert float(r["colorfulness_hs"]) >= 0 and float(r["colorfulness_ddcolor"]) >= 0
        assert -1 <= float(r["clip_mask_cos"]) <= 1  # the run recorded the annotation's mask
        assert float(r["luminance_max_dl"]) < 1.0  # luminance lock against the gray input
    assert "not a colour photo" in rows["gray_print.png"]["error"]
    table = (out / "table.md").read_text()
    assert "| Method | FID ↓ | CLIP score ↑ (mask crop, cosine) |" in table
    assert "TINY RANDOM bundle" in table and "profile test-fast" in table
    assert "FID skipped: no Inception weights" in table and "3 of 6 references scored" in table
    (row,) = list(csv.DictReader((out / "table.csv").open()))
    assert row["fid"] == "" and row["images_scored"] == "3" and row["images_failed"] == "3"
    assert float(row["psnr_512"]) > 5

    # resumable: the same command colorizes nothing again and keeps every output byte for byte
    before = _mtimes(out / "colorized")
    code, output = _cli(*args)
    assert code == 1
    assert _mtimes(out / "colorized") == before
    assert "3 skipped" in " ".join(output.split()) or "skipped" in output


@pytest.mark.slow
def test_protocol_fills_fid_with_a_feature_network(refs, tiny_bundle, eval_bundle, tmp_path) -> None:
    from test_eval_fid import ChannelStats

    from mtcolor_batch.evaluate.protocol import ProtocolSettings, run_protocol

    settings = ProtocolSettings(
        model=str(tiny_bundle),
        profile=str(refs["profile"]),
        clip=eval_bundle,
        fid_extractor=ChannelStats(),
        overrides={"device": "cpu"},
    )
    # no annotations: auto instances, every colour reference is usable except the gray one
    result = run_protocol(refs["refs"], tmp_path / "out", settings)
    assert result.exit_code == 1
    assert result.summary["images_scored"] == 5
    assert result.summary["fid"] is not None and result.summary["fid"] > 0
    assert "FID ↓" in (tmp_path / "out" / "table.md").read_text()


def test_protocol_setup_errors_exit_2(refs, tiny_bundle, tmp_path) -> None:
    code, output = _cli(
        "eval",
        "protocol",
        refs["refs"],
        "--out",
        tmp_path / "o",
        "--model",
        tiny_bundle,
        "--annotations",
        tmp_path / "missing.json",
        "--no-iqa",
    )
    assert code == 2 and "annotation file not found" in output and "missing.json" in output
    code, output = _cli("eval", "protocol", tmp_path / "nothing", "--out", tmp_path / "o", "--no-iqa")
    assert code == 2 and "reference folder not found" in output


def test_profile_choice_says_which_was_used() -> None:
    from mtcolor_batch.core.config import builtin_profiles
    from mtcolor_batch.evaluate.protocol import choose_profile

    name, note = choose_profile(None)
    if "paper" in builtin_profiles():
        assert (name, note) == ("paper", "profile paper")
    else:
        assert name == "default" and "no 'paper' profile" in note
    assert choose_profile("fast") == ("fast", "profile fast")


@pytest.mark.slow
def test_sweep_one_row_per_setting_and_resumes(refs, tiny_bundle, eval_bundle, tmp_path) -> None:
    out = tmp_path / "sweep"
    base = [
        "eval",
        "sweep",
        refs["refs"],
        "--out",
        out,
        "--model",
        tiny_bundle,
        "--profile",
        refs["profile"],
        "--annotations",
        refs["annotations"],
        "--clip",
        eval_bundle,
        "--no-iqa",
        "--device",
        "cpu",
    ]
    code, output = _cli(*base, "--alpha", "0,0.5", "--beta", "1")
    assert code == 1, output  # the bad references are named; every setting is scored
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["alpha"], r["beta"]) for r in rows] == [("0", "1"), ("0.5", "1")]
    assert all(r["images_scored"] == "3" and float(r["ssim_512"]) > 0 for r in rows)
    table = (out / "table.md").read_text()
    assert "| α | β | FID ↓ |" in table and table.count("\n| 0") == 2
    rec = json.loads(next((out / "runs" / "alpha=0.5,beta=1").rglob("*.color.json")).read_text())
    assert rec["profile"]["values"]["sampling"]["alpha"] == 0.5  # the setting reached the run
    assert rec["profile"]["values"]["sampling"]["beta"] == 1.0

    before = _mtimes(out / "runs")
    code, output = _cli(*base, "--alpha", "0,0.5,1", "--beta", "1")
    flat = " ".join(output.split())
    assert (
        "alpha=0,beta=1: done earlier, skipped" in flat and "alpha=0.5,beta=1: done earlier, skipped" in flat
    )
    after = _mtimes(out / "runs")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing redone
    assert any(k.startswith("alpha=1,beta=1/") for k in after)
    assert len(list(csv.DictReader((out / "table.csv").open()))) == 3
    import sqlite3

    with sqlite3.connect(out / ".mtcolor" / "sweep.sqlite") as db:
        states = dict(db.execute("SELECT relpath, state FROM files").fetchall())
    assert states == {"alpha=0,beta=1": "done", "alpha=0.5,beta=1": "done", "alpha=1,beta=1": "done"}


def test_sweep_rejects_bad_grid(refs, tmp_path) -> None:
    code, output = _cli("eval", "sweep", refs["refs"], "--out", tmp_path / "o", "--alpha", "0,x", "--no-iqa")
    assert code == 2 and "--alpha: 'x' is not a number" in output
    code, output = _cli("eval", "sweep", refs["refs"], "--out", tmp_path / "o", "--beta", "2", "--no-iqa")
    assert code == 2 and "outside 0..1" in output


def test_no_usable_reference_is_a_setup_error(tmp_path, tiny_bundle) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (24, 24), (128, 128, 128)).save(refs / "flat_gray.png")
    code, output = _cli("eval", "protocol", refs, "--out", tmp_path / "o", "--model", tiny_bundle, "--no-iqa")
    flat = " ".join(output.split())
    assert code == 2 and "none of the 1 reference(s) is usable" in flat and "flat_gray.png" in flat
