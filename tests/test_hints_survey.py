"""``hints survey``: a per-label table over every scan, resumable, and a template mtcolor-folder.yaml
that is valid as written, becomes a rule by uncommenting, and is never written over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_hints_cli import write_scan
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.hints.folder_rules import check_folder_file
from mtcolor_batch.stages.survey import STATE_NAME

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "scans"


@pytest.fixture(autouse=True)
def _no_cached_bundle(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path_factory.mktemp("mtcolor-home")))


def invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.mark.slow
def test_survey_of_the_examples_writes_a_template_and_resumes(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder)  # never write into the repository's examples/
    result = invoke("hints", "survey", folder, "--model", tiny_bundle, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "3 scan(s) surveyed (0 counted earlier" in result.output
    state = [json.loads(line) for line in (folder / STATE_NAME).read_text(encoding="utf-8").splitlines()]
    assert sorted(r["relpath"] for r in state) == [
        "harbour/harbour_16bit.tif",
        "portrait.png",
        "street_1910.jpg",
    ]
    scans_by_label: dict[str, int] = {}
    for row in state:
        for label in row["labels"]:
            scans_by_label[label] = scans_by_label.get(label, 0) + 1
    template = folder / "mtcolor-folder.yaml"
    text = template.read_text(encoding="utf-8")
    assert "wrote" in result.output and str(template) in result.output
    found, problems = check_folder_file(template, max_bytes=64 * 1024, scan_root=folder)
    assert problems == [] and found is not None and found.rules == ()  # valid as written, no active rule
    listed = [ln.split("label: ", 1)[1] for ln in text.splitlines() if ln.startswith("  # - label: ")]
    assert listed and [scans_by_label[x] for x in listed] == sorted(scans_by_label.values(), reverse=True)
    table = {
        cells[0]: int(cells[1])
        for cells in ([c.strip() for c in ln.split("│")[1:-1]] for ln in result.output.splitlines())
        if len(cells) == 3 and cells[1].isdigit()
    }
    assert table == scans_by_label  # one row per label: the scans it was found in

    # uncommenting one rule and giving it a colour makes a rule
    first = listed[0]
    ruled = text.replace(
        f"  # - label: {first}\n  #   color: \n", f"  - label: {first}\n    color: navy\n", 1
    )
    template.write_text(ruled, encoding="utf-8")
    found, problems = check_folder_file(template, max_bytes=64 * 1024, scan_root=folder)
    assert problems == [] and found is not None and [r.label for r in found.rules] == [first]

    again = invoke("hints", "survey", folder, "--model", tiny_bundle, "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert "3 scan(s) surveyed (3 counted earlier" in again.output  # resumed: nothing detected again
    assert "kept" in again.output and template.read_text(encoding="utf-8") == ruled  # never touched

    # a changed scan is surveyed again; the others are reused
    write_scan(folder / "portrait.png")
    third = invoke("hints", "survey", folder, "--model", tiny_bundle, "--device", "cpu")
    assert "3 scan(s) surveyed (2 counted earlier" in third.output, third.output


def test_survey_needs_a_detector(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.png")
    result = invoke("hints", "survey", tmp_path)
    assert result.exit_code == 2 and "needs the detector" in result.output
    assert not (tmp_path / "mtcolor-folder.yaml").exists()
