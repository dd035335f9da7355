"""Stage 1 on instance-free samples: null samples train nothing and never crash a run.

A sample without instances (or whose masks vanish at the training size) is a legitimate null sample:
the instance branch adds exactly zero there. Batches made only of them must not kill a long run; a
stage-1 dataset without any instance is a setup error (exit 2), not 25,000 steps of nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.model.bundle import save_bundle
from mtcolor_batch.testing.synthetic import TruthFinder, write_shapes_folder
from mtcolor_batch.train.config import TrainConfig, load_train_config
from mtcolor_batch.train.dataset import MANIFEST, build_dataset
from mtcolor_batch.train.trainer import LOSS_LOG, train


@pytest.fixture(scope="module")
def setup(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundle without perception; datasets: with instances, without any, and half instance-free."""
    root = tmp_path_factory.mktemp("train-null")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("sam", "detector", "mtcolor.json"))
    save_bundle(bundle, name="tiny-random", revision="seed-0", tiny=True)
    truth = write_shapes_folder(root / "photos", 6, size=32, seed=5)
    build_dataset(root / "photos", root / "with", finder=TruthFinder(truth))
    build_dataset(root / "photos", root / "none")  # no --model: no instances at all
    mixed = root / "mixed"
    shutil.copytree(root / "with", mixed)
    lines = (mixed / MANIFEST).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows[::2]:
        row["instances"] = []
    (mixed / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"bundle": bundle, "with": root / "with", "none": root / "none", "mixed": mixed}


def _cfg(**kw: object) -> TrainConfig:
    base = dict(
        steps=4,
        batch_size=1,
        grad_accum=1,
        lr=1e-3,
        warmup_steps=1,
        resolution=32,
        checkpoint_every=2,
        max_instances=2,
        log_every=1,
        seed=3,
    )
    base.update(kw)
    return load_train_config(None, base)


def test_stage_1_on_a_dataset_without_instances_is_a_setup_error(setup, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--stage",
            "1",
            "--data",
            str(setup["none"]),
            "--bundle",
            str(setup["bundle"]),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no instances" in lines[0] and "--model" in lines[0], result.output
    assert str(setup["none"]) in lines[0] or setup["none"].name in lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_instance_free_batches_skip_the_optimizer_step_and_are_counted(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the photos have no instance, batch size 1: their steps are skipped, not taken with zeros.

    AdamW only ever steps on a batch that reached the branch, so its state counts the real steps.
    """
    taken = {"n": 0}
    step = torch.optim.AdamW.step

    def counting(self: torch.optim.Optimizer, *a: object, **k: object) -> object:
        taken["n"] += 1
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    lines: list[str] = []
    cfg = _cfg()
    result = train(
        stage=1,
        data=setup["mixed"],
        bundle=setup["bundle"],
        out=tmp_path,
        config=cfg,
        device="cpu",
        log=lines.append,
    )
    assert result.steps == 4 and result.skipped > 0 and taken["n"] == 4
    assert (tmp_path / "bundle").is_dir()
    assert any("instance-free steps skipped" in line for line in lines), lines
    rows = [json.loads(x) for x in (tmp_path / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    state = json.loads((tmp_path / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["skipped_steps"] == result.skipped
    monkeypatch.undo()
    # Resume is still exact across skipped steps (data position and RNG include them).
    cut = tmp_path / "cut"
    train(
        stage=1, data=setup["mixed"], bundle=setup["bundle"], out=cut, config=cfg, device="cpu", stop_after=3
    )
    resumed = train(
        stage=1, data=setup["mixed"], bundle=setup["bundle"], out=cut, config=cfg, device="cpu", resume=True
    )
    assert resumed.losses == result.losses and resumed.skipped == result.skipped


def test_cli_stage_1_reports_skipped_steps(setup, tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(_cfg(steps=2).model_dump(mode="json")))  # JSON is YAML
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--stage",
            "1",
            "--data",
            str(setup["mixed"]),
            "--bundle",
            str(setup["bundle"]),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(config),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stage 1: 2 steps" in result.output and "instance-free steps skipped" in result.output


@pytest.mark.slow
def test_masks_that_vanish_at_the_training_size_end_in_a_setup_error(setup, tmp_path: Path) -> None:
    """Every mask is 3x3 pixels: kept by the loader, but no latent cell is mostly inside one."""
    data = tmp_path / "small-masks"
    shutil.copytree(setup["with"], data)
    for line in (data / MANIFEST).read_text().splitlines():
        for inst in json.loads(line)["instances"]:
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[10:13, 10:13] = 255
            Image.fromarray(mask).save(data / inst["mask"])
    with pytest.raises(UserError, match="no instance reaches the instance branch"):
        train(stage=1, data=data, bundle=setup["bundle"], out=tmp_path / "out", config=_cfg(), device="cpu")
