"""Where `eval protocol` / `eval sweep` get instances without --annotations, and what the table says.

The paper profile switches automatic detection off; without an annotation file the protocol turns
it on for that run when the bundle can detect (recorded in every output), and the table says where
the instances came from, and when no output has any (then α/β cannot change anything).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtcolor_batch.evaluate.protocol import ProtocolSettings, run_protocol
from mtcolor_batch.evaluate.sweep import run_sweep
from mtcolor_batch.model.bundle import save_bundle

TINY = {
    "device": "cpu",
    "sampling.steps": 2,
    "sampling.working_long_side": 32,
    "sampling.tile_size": 64,
    "sampling.tile_overlap": 0,
    "perception.size": 64,
}


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("instance-refs")
    for i, color in enumerate([(200, 30, 30), (30, 60, 200)]):
        rng = np.random.default_rng(i)
        img = rng.integers(40, 200, (40, 56, 3)).astype(np.uint8)
        img[8:28, 10:40] = color
        Image.fromarray(img).save(folder / f"ref{i}.png")
    return folder


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.rglob("*.color.json"))]


@pytest.mark.slow
def test_protocol_without_annotations_detects_instances_as_a_normal_run(refs, tiny_bundle, tmp_path) -> None:
    settings = ProtocolSettings(model=str(tiny_bundle), overrides=dict(TINY))  # the paper profile
    result = run_protocol(refs, tmp_path / "out", settings)
    assert result.profile.name == "paper" and result.exit_code == 0
    recs = _records(tmp_path / "out" / "colorized")
    assert len(recs) == 2
    assert all(r["profile"]["values"]["perception"]["auto_instances"] is True for r in recs)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "the bundle's detector + SAM found them as in a normal run" in table
    assert "perception.auto_instances set true for this run" in table
    found = any(r["instances"] for r in recs)
    assert ("no output has any instance" in table) == (not found)


@pytest.mark.slow
def test_sweep_says_when_no_instance_can_be_found(refs, tiny_bundle, tmp_path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("sam", "detector", "mtcolor.json"))
    save_bundle(bundle, name="tiny-random", revision="seed-0", tiny=True)
    settings = ProtocolSettings(model=str(bundle), overrides=dict(TINY))
    result = run_sweep(refs, tmp_path / "sweep", settings, [0.0, 0.5], [0.2])
    assert result.exit_code == 0 and len(result.rows) == 2
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "instances: none can be found: no --annotations and the bundle has no detector + SAM" in table
    assert "no output has any instance" in table and "α/β change nothing" in table
    recs = _records(tmp_path / "sweep" / "runs")
    assert recs and all(not r["instances"] for r in recs)


def test_a_named_profile_is_taken_as_it_is(tiny_bundle, tmp_path) -> None:
    """Only the protocol's own choice (paper) gets detection; a user's `--profile paper` does not."""
    from mtcolor_batch.evaluate.protocol import instance_source

    assert instance_source(ProtocolSettings(model=str(tiny_bundle)))[0] == {"perception.auto_instances": True}
    overrides, note = instance_source(ProtocolSettings(model=str(tiny_bundle), profile="paper"))
    assert overrides == {} and "profile paper switches automatic detection off" in note
    overrides, note = instance_source(ProtocolSettings(model=str(tiny_bundle), profile="default"))
    assert overrides == {} and "found them as in a normal run" in note
    ann = ProtocolSettings(model=str(tiny_bundle), annotations=tmp_path / "a.json")
    assert instance_source(ann)[0] == {"perception.auto_instances": False}
