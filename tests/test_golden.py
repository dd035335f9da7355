"""Golden output: the tiny bundle, a fixed synthetic scan and a fixed seed give known pixels.

Refactors must not change what the pipeline computes. The expected hash is of the decoded RGB
pixels (plus size), not the file bytes, so provenance metadata (paths, times) does not enter it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app

# sha256 of the colorized pixels of the fixed scan below (tiny bundle, seed 5, 2 steps, CPU, float32).
# Recorded on the code before the seams refactor (issue 15). It legitimately changes only when what
# the model computes changes: the tiny bundle's architecture or seeded weights, the sampler, guidance,
# fusion or composition maths. Update it then, in the same commit, and say why in the message.
GOLDEN_TINY_OUTPUT_SHA256 = "2823928f9f0284d8f127e6b9f320b4c8f7bbadb6e4170e4581fb203a07e51582"

# A deliberate copy of mtcolor_batch.testing.profiles.fast_profile_yaml("golden"): pinned with the hash.
PROFILE = """\
name: golden
sampling:
  steps: 2
  working_long_side: 32
  tile_size: 64
  tile_overlap: 0
perception:
  size: 64
"""


def fixed_scan(path: Path) -> None:
    """A 48x40 gray gradient with a bright disc: deterministic, no randomness."""
    yy, xx = np.mgrid[0:40, 0:48]
    gray = (xx * 4 + yy * 2) % 256
    gray[(yy - 20) ** 2 + (xx - 24) ** 2 < 100] = 230
    Image.fromarray(gray.astype(np.uint8), mode="L").save(path)


def pixel_sha256(path: Path) -> str:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        digest = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()


def test_tiny_bundle_output_matches_golden_hash(tmp_path: Path, tiny_bundle: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    fixed_scan(scans / "page.png")
    profile = tmp_path / "golden.yaml"
    profile.write_text(PROFILE)
    out = tmp_path / "out"
    args = ["run", str(scans), "--out", str(out), "--model", str(tiny_bundle), "--profile", str(profile)]
    result = CliRunner().invoke(app, [*args, "--seed", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    got = pixel_sha256(out / "page.color.png")
    assert got == GOLDEN_TINY_OUTPUT_SHA256, f"pipeline output changed: {got}"
