"""``bench/step_profile.py`` measures what the product runs: its defaults come from the profile, and
library progress bars are off as in the CLI (checked in a fresh interpreter: the switch works only
before huggingface_hub is first imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtcolor_batch.core.config import load_profile

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_defaults_follow_the_profile_and_library_bars_are_off() -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import step_profile\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "print(step_profile.parse_args([]).branch_crop, step_profile.parse_args(['--branch-crop', '0'])"
        ".branch_crop, are_progress_bars_disabled())\n"
    )
    quiet = ("HF_HUB_", "DIFFUSERS_", "TRANSFORMERS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(quiet)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    default_crop = load_profile(None).sampling.branch_crop
    assert out.stdout.split() == [str(default_crop), "0", "True"], out.stdout
