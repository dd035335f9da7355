"""The help's usage line names each argument as the command's description does (SCANS, OUT, ...)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mtcolor_batch.cli import app


@pytest.mark.parametrize(
    ("command", "metavar"),
    [
        (["run"], "SCANS"),
        (["hints", "check"], "SCANS"),
        (["hints", "init"], "SCANS"),
        (["hints", "show"], "PHOTO"),
        (["hints", "edit"], "SCANS"),
        (["journal", "rebuild"], "OUT"),
        (["report"], "OUT_DIR"),
        (["models", "tiny"], "DIRECTORY"),
        (["dataset", "build"], "PHOTOS"),
    ],
)
def test_usage_line_shows_the_argument_in_capitals(command: list[str], metavar: str) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    (usage,) = [line for line in result.output.splitlines() if "Usage:" in line]
    assert metavar in usage and metavar.lower() not in usage, usage
