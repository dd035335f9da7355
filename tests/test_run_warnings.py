"""A file's warnings (``FileResult.warnings``) reach its record and the run's summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.jobs.batch import Outcome
from mtcolor_batch.jobs.runner import MAX_FILE_WARNINGS, _summary
from mtcolor_batch.testing.profiles import write_fast_profile


@pytest.mark.slow
def test_a_scans_warning_is_in_its_record_and_under_its_name_in_the_summary(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    colour = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(colour, "RGB").save(scans / "colour.png")  # loading notes: its colour is discarded
    profile = tmp_path / "fast.yaml"
    write_fast_profile(profile)
    out = tmp_path / "out"
    monkeypatch.setenv("COLUMNS", "1000")
    result = CliRunner().invoke(
        app, ["run", str(scans), "--out", str(out), "--model", str(tiny_bundle), "--profile", str(profile)]
    )
    assert result.exit_code == 0, result.output
    (record_path,) = out.glob("colour*.json")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    said = record["warnings"] + record["notes"]
    assert any("real colour" in w for w in said), record
    lines = [line for line in result.output.splitlines() if line.startswith("warning: colour.png: ")]
    assert [line.removeprefix("warning: colour.png: ") for line in lines] == said, result.output


def test_the_summary_lists_the_first_file_warnings_and_counts_the_rest(tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=1000)
    outcomes = [Outcome(f"f{i}.png", "done", warnings=[f"note {i}"]) for i in range(MAX_FILE_WARNINGS + 3)]
    _summary(console, outcomes, tmp_path)
    text = console.export_text()
    assert "warning: f0.png: note 0" in text
    assert f"f{MAX_FILE_WARNINGS}.png" not in text
    assert "3 more file warning(s)" in text
