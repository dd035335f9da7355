"""`--profile paper`: the MT-Color paper's setting end to end (tiny bundle, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.config import load_profile
from mtcolor_batch.render.chroma import decoded_to_output
from mtcolor_batch.stages.plan import make_plan


def test_paper_profile_values_and_label() -> None:
    prof = load_profile("paper")
    s = prof.sampling
    assert (s.working_long_side, s.working_square, s.tile_size) == (512, True, 512)
    assert (s.prompt, s.negative_prompt, s.fusion, s.alpha, s.beta) == ("", "", "paper", 0.2, 0.2)
    assert prof.perception.auto_instances is False and prof.output.luminance_lock is False
    assert prof.follows("paper") and not load_profile("default").follows("paper")
    # Knobs the paper does not fix may change; a paper value may not.
    assert load_profile("paper", {"sampling.steps": 3}).follows("paper")
    assert not load_profile("paper", {"sampling.fusion": "paste"}).follows("paper")
    for scan in [(300, 800), (4000, 3000), (64, 64)]:
        plan = make_plan(scan, s, seed=1)
        assert plan.working_size == (512, 512) and len(plan.tiles) == 1 and plan.fusion == "paper"
        assert plan.prompt == ""


def test_decoded_rgb_passes_through_at_the_working_size() -> None:
    rgb = np.random.default_rng(0).random((16, 24, 3))
    out = decoded_to_output(rgb, (16, 24), 8)
    assert np.array_equal(out, np.clip(np.rint(rgb.astype(np.float32) * 255), 0, 255).astype(np.uint8))
    assert decoded_to_output(rgb, (32, 48), 16).shape == (32, 48, 3)


@pytest.mark.slow
def test_run_with_the_paper_profile_writes_the_decoded_rgb(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No luminance lock: the output is the engine's decoded RGB, and provenance says paper profile."""
    from mtcolor_batch.model.engine import MTColorEngine
    from mtcolor_batch.render.chroma import luma_to_lightness

    decoded: list[np.ndarray] = []
    original = MTColorEngine.colorize_rgb

    def recording(self: MTColorEngine, *args: object, **kwargs: object) -> np.ndarray:
        rgb = original(self, *args, **kwargs)  # type: ignore[arg-type]
        decoded.append(rgb)
        return rgb

    monkeypatch.setattr(MTColorEngine, "colorize_rgb", recording)
    scans = tmp_path / "scans"
    scans.mkdir()
    yy, xx = np.mgrid[0:512, 0:512]
    gray = (40 + 160 * (xx / 511) * (yy / 511)).astype(np.uint8)
    Image.fromarray(gray, "L").save(scans / "scan.png")
    (scans / "scan.png.yaml").write_text(
        "version: 1\nseed: 5\ninstances:\n  - polygon: [[100, 100], [400, 120], [250, 400]]\n"
        '    color: red\n    text: "a red kite"\n'
    )
    out = tmp_path / "out"
    args = ["run", str(scans), "--out", str(out), "--model", str(tiny_bundle), "--profile", "paper"]
    result = CliRunner().invoke(app, [*args, "--steps", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "scan.color.json").read_text())
    assert record["paper_profile"] is True and record["profile"]["name"] == "paper"
    params = record["parameters"]
    assert params["fusion"] == "paper" and params["working_size"] == [512, 512] and params["prompt"] == ""
    assert [(i["text"], i["source"]) for i in record["instances"]] == [("a red kite", "sidecar")]

    written = np.asarray(Image.open(out / "scan.color.png").convert("RGB"))
    assert len(decoded) == 1 and decoded[0].shape == (512, 512, 3)
    assert np.array_equal(written, decoded_to_output(decoded[0], (512, 512), 8))
    # ... which is not what the luminance lock would write: the lightness is the model's own.
    from skimage.color import rgb2lab

    lightness = rgb2lab(written / 255.0)[..., 0]
    assert np.abs(lightness - luma_to_lightness(gray / 255.0)).max() > 1.0
