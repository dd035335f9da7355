"""Every command's help shows its bracketed text: Rich markup must not eat ``[default: ...]``."""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.testing import CliRunner

from mtcolor_batch.cli import app


def _commands(group: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, group)]
    if hasattr(group, "commands"):  # a group (typer may ship its own click classes)
        for name, sub in sorted(group.commands.items()):
            found += _commands(sub, [*path, name])
    return found


def _bracketed(text: str | None) -> list[str]:
    """``[...]`` segments a user must see, with Rich's ``\\[`` escape undone."""
    return [m.replace("\\[", "[") for m in re.findall(r"\\?\[[^\]\n]*\]", text or "")]


def test_every_help_text_in_brackets_is_shown() -> None:
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root, []):
        texts = [command.help] + [getattr(p, "help", None) for p in command.params]
        wanted = [seg for text in texts for seg in _bracketed(text)]
        if not wanted:
            continue
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
        assert result.exit_code == 0, result.output
        shown = " ".join(result.output.split())
        for seg in wanted:
            assert " ".join(seg.split()) in shown, (path, seg)
            checked += 1
    assert checked >= 3  # run --out, run --seed, eval --fid-weights at least
