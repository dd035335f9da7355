"""What ``run`` prints is the user's text as it is, one line per message, also in a log file.

A scan or sidecar name, or a reason, with square brackets must not be read as rich markup (it was
dropped), and a line must not be wrapped at 80 columns when output goes to a file or pipe (Slurm
logs), where ``grep`` for a file name has to find the whole message on one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.testing.profiles import write_fast_profile


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    root.mkdir()
    Image.new("L", (32, 32), 100).save(root / "photo [red].png")
    (root / "photo [red].png.yaml").write_text(
        "version: 1\ninstances:\n  - box: [0, 0, 8, 8]\n    color: red\n", encoding="utf-8"
    )
    return root


def run(monkeypatch: pytest.MonkeyPatch, columns: int, *args: str | Path) -> tuple[int, str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.mark.slow
def test_names_and_reasons_keep_brackets_and_lines_stay_whole_at_80_columns(
    scans: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = tmp_path / "fast.yaml"
    write_fast_profile(profile)
    broken = "archive_box_17_[bold]_" + "x" * 70 + ".png"
    (scans / broken).write_bytes(b"not an image at all")
    out = tmp_path / "out"
    common = ("--out", out, "--model", tiny_bundle, "--profile", profile)

    code, text = run(monkeypatch, 80, scans, *common)
    assert code == 1, text
    failed = [line for line in text.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and broken in failed[0] and len(failed[0]) > 100, text  # one whole line

    # Dry run: the footer is one line; names, sidecar and the earlier failure's reason keep brackets.
    code, text = run(monkeypatch, 80, scans, "--dry-run", *common)
    assert code == 0, text
    (footer,) = [line for line in text.splitlines() if "to colorize" in line]
    assert f"Model: {tiny_bundle}" in footer, text
    code, text = run(monkeypatch, 1000, scans, "--dry-run", *common)
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") == 4}
    assert "photo [red].png.yaml" in rows["photo [red].png"], text
    assert rows[broken].count(broken) == 2 and "skip (failed before; --retry-failed)" in rows[broken], text
