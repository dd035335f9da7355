"""`run --profile cpu` on examples/ end to end on the tiny bundle, with an accelerator in it; the
few-step flags' one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.model import accelerators as acc
from mtcolor_batch.testing.tiny_lora import random_kohya_lora, write_kohya_lora

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "scans"


@pytest.mark.slow
def test_cpu_profile_on_the_examples_records_the_few_step_sampling(tiny_bundle: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    unet = UNet2DConditionModel.from_pretrained(bundle / "unet")
    lora = write_kohya_lora(tmp_path / "lcm.safetensors", random_kohya_lora(unet, std=0.05))
    added = acc.add_accelerator(bundle, lora, "lcm", acc.KNOWN["lcm"].recipe)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", str(EXAMPLES), "--out", str(out), "--model", str(bundle), "--profile", "cpu"]
    )
    assert result.exit_code == 0, result.output
    records = sorted(out.rglob("*.json"))
    records = [r for r in records if "parameters" in json.loads(r.read_text())]
    assert len(records) == 3  # harbour/harbour_16bit.tif, portrait.png, street_1910.jpg
    for path in records:
        record = json.loads(path.read_text())
        params = record["parameters"]
        assert (params["scheduler"], params["steps"], params["guidance_scale"], params["accelerator"]) == (
            "lcm",
            4,
            1.0,
            "lcm",
        )
        assert (
            params["working_size"][0] <= 512
            and params["working_size"][1] <= 512
            and len(params["tiles"]) == 1
        )
        assert record["model"]["info"]["accelerator"]["sha256"] == added.sha256
        departures = {d["key"]: d["value"] for d in record["paper_deviations"]["profile"]}
        assert departures["sampling.accelerator"] == "lcm" and departures["sampling.scheduler"] == "lcm"


def test_bogus_scheduler_and_missing_accelerator_are_one_line_exit_2(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["run", str(EXAMPLES), "--out", str(tmp_path / "out"), "--model", str(tiny_bundle)]
    for extra, words in (
        (["--scheduler", "bogus"], "sampling.scheduler"),
        (["--accelerator", "missing"], "accelerator 'missing' is not in the bundle"),
        (["--accelerator", "../x"], "sampling.accelerator"),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], result.output
    assert not (tmp_path / "out").exists()
