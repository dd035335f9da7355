"""Folder rules through ``run`` on the tiny bundle: records name each colour's file and line, list the
applying rules files with sha256, an edited rule redoes exactly the scans below it, and a broken rules
file fails only the scans it covers, with its file:line:column."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_hints_cli import write_scan
from test_sidecar_inputs import _no_cached_bundle, fast_profile, invoke, journal, one_torch_thread

# the same setup as the other run tests: no cached bundle, one torch thread, the fast profile
__all__ = ["_no_cached_bundle", "fast_profile", "one_torch_thread"]


TOP = "version: 1\ninstances:\n  - label: tram\n    color: dark green\n  - label: coat\n    color: navy\n"
NEAR = "version: 1\ninstances:\n  - label: tram\n    color: brick red\n"


def tree(root: Path) -> Path:
    """scans/: top.png and a rules file; street/: one.png (its sidecar), two.png and a nearer rules
    file; album/: three.png."""
    scans = root / "scans"
    for rel in ("top.png", "street/one.png", "street/two.png", "album/three.png"):
        write_scan(scans / rel)
    (scans / "mtcolor-folder.yaml").write_text(TOP, encoding="utf-8")
    (scans / "street" / "mtcolor-folder.yaml").write_text(NEAR, encoding="utf-8")
    (scans / "street" / "one.png.yaml").write_text(
        "version: 1\ninstances:\n  - box: [4, 4, 40, 30]\n    label: tram\n"
        "  - box: [50, 40, 90, 70]\n    label: coat\n  - box: [50, 2, 90, 20]\n    label: sky\n"
        "    color: sky blue\n",
        encoding="utf-8",
    )
    return scans


def run(scans: Path, out: Path, bundle: Path, profile: Path):
    return invoke("run", scans, "--out", out, "--model", bundle, "--profile", profile, "--device", "cpu")


@pytest.mark.slow
def test_records_name_each_colours_file_and_line_and_a_rule_edit_redoes_only_its_scans(
    tmp_path: Path, tiny_bundle: Path, fast_profile: Path
) -> None:
    scans = tree(tmp_path)
    out = tmp_path / "out"
    first = run(scans, out, tiny_bundle, fast_profile)
    assert first.exit_code == 0, first.output
    record = json.loads((out / "street" / "one.color.json").read_text(encoding="utf-8"))
    hinted = {
        i["label"]: (i["hint_color"]["name"], i["hint_from"]) for i in record["instances"] if i["hint_from"]
    }
    assert hinted["tram"] == ("brick red", "street/mtcolor-folder.yaml:3")  # the nearest file wins
    assert hinted["coat"] == ("navy", "mtcolor-folder.yaml:5")  # the farther file still speaks for coat
    assert hinted["sky"] == ("sky blue", "street/one.png.yaml:7")  # the sidecar's own colour
    sha = {
        rel: hashlib.sha256((scans / rel).read_bytes()).hexdigest()
        for rel in ("mtcolor-folder.yaml", "street/mtcolor-folder.yaml")
    }
    assert record["folder_rules"] == [{"path": rel, "sha256": digest} for rel, digest in sha.items()]
    album = json.loads((out / "album" / "three.color.json").read_text(encoding="utf-8"))
    assert album["folder_rules"] == [{"path": "mtcolor-folder.yaml", "sha256": sha["mtcolor-folder.yaml"]}]
    before = {k: r["completions"] for k, r in journal(out).items()}
    assert before == {"top.png": 1, "street/one.png": 1, "street/two.png": 1, "album/three.png": 1}

    unchanged = run(scans, out, tiny_bundle, fast_profile)
    assert unchanged.exit_code == 0 and {k: r["completions"] for k, r in journal(out).items()} == before

    (scans / "street" / "mtcolor-folder.yaml").write_text(
        NEAR.replace("brick red", "maroon"), encoding="utf-8"
    )
    again = run(scans, out, tiny_bundle, fast_profile)
    assert again.exit_code == 0, again.output
    after = {k: r["completions"] for k, r in journal(out).items()}
    assert after == {"top.png": 1, "street/one.png": 2, "street/two.png": 2, "album/three.png": 1}
    record = json.loads((out / "street" / "one.color.json").read_text(encoding="utf-8"))
    tram = next(i for i in record["instances"] if i["label"] == "tram" and i["hint_from"])
    assert tram["hint_color"]["name"] == "maroon"

    # the top file covers everything: editing it redoes every scan
    (scans / "mtcolor-folder.yaml").write_text(TOP.replace("navy", "black"), encoding="utf-8")
    assert run(scans, out, tiny_bundle, fast_profile).exit_code == 0
    assert {k: r["completions"] for k, r in journal(out).items()} == {
        "top.png": 2,
        "street/one.png": 3,
        "street/two.png": 3,
        "album/three.png": 2,
    }

    # journal rebuild gets the same fingerprints back from the records (rules files included)
    rows = {k: r["fingerprint"] for k, r in journal(out).items()}
    (out / ".mtcolor" / "journal.sqlite").unlink()
    assert invoke("journal", "rebuild", out).exit_code == 0
    assert {k: r["fingerprint"] for k, r in journal(out).items()} == rows


@pytest.mark.slow
def test_a_broken_rules_file_fails_only_its_scans_with_its_location(
    tmp_path: Path, tiny_bundle: Path, fast_profile: Path
) -> None:
    scans = tree(tmp_path)
    bad = scans / "street" / "mtcolor-folder.yaml"
    bad.write_text("version: 1\ninstances:\n  - label: tram\n    colour: red\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run(scans, out, tiny_bundle, fast_profile)
    assert result.exit_code == 1, result.output
    rows = journal(out)
    assert {k: r["state"] for k, r in rows.items()} == {
        "top.png": "done",
        "street/one.png": "failed",
        "street/two.png": "failed",
        "album/three.png": "done",
    }
    assert (
        f"{bad}:4:5: unknown key 'colour' in instance 1 (did you mean 'color'?)"
        in rows["street/two.png"]["error"]
    )

    check = invoke("hints", "check", scans)
    assert check.exit_code == 1
    assert f"{bad}:4:5: unknown key 'colour'" in check.output
    assert "1 sidecar(s) and 2 folder rules file(s) checked, 1 problem(s)" in check.output
    assert "mtcolor-folder.yaml: warning: no scan uses this sidecar" not in check.output
