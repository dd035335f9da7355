"""`mtcolor-batch eval` on a run's output folder: table, CSV/JSON, CLIP, optional IQA."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from eval_fixture import DONE, ODD_NAME
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.evaluate.evaluation import evaluate_dir

runner = CliRunner()


@pytest.mark.slow
def test_eval_writes_table_csv_and_json(eval_out, tmp_path) -> None:
    csv_path, json_path = tmp_path / "m.csv", tmp_path / "m.json"
    res = runner.invoke(
        app,
        [
            "eval",
            str(eval_out["out"]),
            "--ref",
            str(eval_out["refs"]),
            "--csv",
            str(csv_path),
            "--json",
            str(json_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "mtcolor-batch eval" in res.output and "a.png" in res.output
    data = json.loads(json_path.read_text())
    files = {f["relpath"]: f for f in data["files"]}
    assert sorted(files) == sorted(DONE)
    # lossless PNG output vs its identical reference
    assert files["a.png"]["psnr"] == "inf" and files["a.png"]["ssim"] == pytest.approx(1.0)
    assert files["a.png"]["psnr_512"] == "inf" and files["a.png"]["ssim_512"] == pytest.approx(1.0)
    assert files[ODD_NAME]["psnr"] == "inf"
    assert "no reference" in files["sub/b.jpg"]["notes"]
    for f in files.values():
        assert f["colorfulness_hs"] > 1.0  # the fixture outputs carry colour
        assert f["colorfulness_ddcolor"] > 1.0
        assert f["hinted"] == 1 and f["hint_de_max"] == pytest.approx(f["hint_de_mean"])
    # luminance lock: within 8-bit quantisation for PNG, JPEG a little more, 16-bit TIFF far less
    assert files["a.png"]["luminance_max_dl"] < 0.6
    assert files["c16.tif"]["luminance_max_dl"] < 0.05
    assert files["sub/b.jpg"]["luminance_max_dl"] < 5.0
    assert files["a.png"]["hint_de_mean"] == pytest.approx(3.5)  # recorded by the run (adherence stats)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["relpath"] for r in rows] == [f["relpath"] for f in data["files"]]
    assert rows[0]["psnr"] == "inf"
    assert data["summary"]["colorfulness_hs"] > 1.0


def test_eval_clip_scores_from_the_bundle_in_provenance(eval_out) -> None:
    # the fixture records model.path = a bundle holding a tiny clip/ component
    result = evaluate_dir(eval_out["out"])
    assert not any("CLIP" in m for m in result.messages)
    for row in result.rows:
        boxed = [i for i in row.instances if "clip_box_x100" in i]
        masked = [i for i in row.instances if "clip_mask_cos" in i]
        assert len(boxed) == 2 and len(masked) == 2  # the records carry each instance's mask
        assert all(0.0 <= i["clip_box_x100"] <= 100.0 for i in boxed)
        assert all(-1.0 <= i["clip_mask_cos"] <= 1.0 for i in masked)  # raw cosine, not x100
        assert row.clip_box_x100 is not None and row.clip_mask_cos is not None


def test_eval_says_why_clip_and_iqa_are_missing(eval_out, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as when the [iqa] extra is not installed
    res = runner.invoke(app, ["eval", str(eval_out["out"]), "--clip", str(tmp_path), "--iqa"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "CLIP score skipped" in flat
    assert "pyiqa is not usable" in flat and "mtcolor-batch[iqa]" in flat


def test_eval_plain_image_folder_and_errors(tmp_path) -> None:
    res = runner.invoke(app, ["eval", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "prediction folder not found" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["eval", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no images" in res.output
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "empty" / "x.color.png")
    (tmp_path / "empty" / "y.png").write_bytes(b"not an image")
    result = evaluate_dir(tmp_path / "empty")
    rows = {r.relpath: r for r in result.rows}
    # pure (200, 30, 30): rg = 170, yb = 0.5 * 230 - 30 = 85, no spread -> M = 0.3 * hypot(170, 85)
    assert rows["x.png"].colorfulness_hs == pytest.approx(0.3 * ((170**2 + 85**2) ** 0.5), rel=1e-6)
    assert rows["y.png"].error and "cannot read image" in rows["y.png"].error


def test_iqa_metrics_without_weights_are_explained(monkeypatch) -> None:
    """pyiqa present but a metric cannot be created (weights not cached offline): say so, keep the rest."""
    import types

    import numpy as np
    import torch

    from mtcolor_batch.evaluate.iqa import IqaScorer

    def create_metric(name: str, device: str):
        if name == "musiq":
            raise OSError("could not download musiq_koniq_ckpt.pth")
        return lambda x: torch.full((x.shape[0],), float(x.mean()))

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    messages: list[str] = []
    scorer = IqaScorer.create(["niqe", "musiq"], "cpu", messages)
    assert scorer is not None and list(scorer.metrics) == ["niqe"]
    assert len(messages) == 1 and "musiq skipped" in messages[0] and "could not download" in messages[0]
    assert scorer.score(np.full((8, 8, 3), 0.25, dtype=np.float32)) == {"niqe": pytest.approx(0.25)}
