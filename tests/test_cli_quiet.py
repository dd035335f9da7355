"""The CLI's own progress is what a user reads: library loading/writing bars stay hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_models_tiny_prints_no_library_progress_bars(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    proc = subprocess.run(
        [sys.executable, "-m", "mtcolor_batch", "models", "tiny", str(tmp_path / "tiny")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "wrote tiny random bundle" in out
    # transformers/diffusers bars ("Writing model shards", "Loading weights") are tqdm bars
    assert "it/s]" not in out and "Writing model shards" not in out, out
