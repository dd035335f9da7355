"""`mtcolor-batch train` usage errors: one line that blames what is actually wrong (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.train.config import load_train_config


def _train(tmp_path: Path, *extra: str) -> tuple[int, str]:
    args = ["train", "--stage", "1", "--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", *extra])
    return result.exit_code, result.output


def test_a_bad_option_value_names_the_option_not_the_shipped_profile(tmp_path: Path) -> None:
    code, out = _train(tmp_path, "--data", str(tmp_path), "--controlnet-init", "bogus")
    assert code == 2 and "--controlnet-init" in out and "train.yaml" not in out, out
    assert "bundle" in out and "unet" in out  # the accepted values
    with pytest.raises(UserError) as err:
        load_train_config(None, {"lr": -1.0})
    assert (
        err.value.one_line().startswith("invalid value for --lr") and "train.yaml" not in err.value.one_line()
    )


def test_a_bad_value_in_the_users_file_still_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("lr: -1\n")
    with pytest.raises(UserError) as err:
        load_train_config(config, {"steps": 3})
    line = err.value.one_line()
    assert "mine.yaml" in line and "invalid training value lr" in line


def test_a_missing_dataset_folder_says_not_found(tmp_path: Path) -> None:
    code, out = _train(tmp_path, "--data", str(tmp_path / "nodata"))
    assert code == 2 and "dataset folder not found" in out and "nodata" in out, out
    assert "dataset build" in out
    (tmp_path / "photos").mkdir()
    code, out = _train(tmp_path, "--data", str(tmp_path / "photos"))
    assert code == 2 and "not a dataset folder (no manifest.jsonl)" in out, out
