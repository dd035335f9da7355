"""``mtcolor-batch hints init|check|show`` and the new-user loop through ``run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.hints.schema import check_sidecar

runner = CliRunner()
MAX = 256 * 1024


def write_scan(path: Path, h: int = 72, w: int = 96, orientation: int | None = None) -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    img = Image.fromarray((127 + 90 * np.sin(xx / 8.0) * np.cos(yy / 6.0)).astype(np.uint8), mode="L")
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(path, exif=exif.tobytes())
    return path


@pytest.fixture(autouse=True)
def _no_cached_bundle(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default bundle lookup must never see the user's real cache."""
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path_factory.mktemp("mtcolor-home")))


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def uncomment_first_instance(text: str, color: str) -> tuple[str, str]:
    """What a user does in an editor: un-comment one template block and type a colour."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - label: "))
    label = lines[start].split(": ", 1)[1]
    for i in range(start, start + 3):
        lines[i] = lines[i].replace("  # ", "  ", 1)
    assert lines[start + 2].strip() == "color:"
    lines[start + 2] += f" {color}"
    return "\n".join(lines) + "\n", label


@pytest.mark.slow
def test_init_is_idempotent_and_never_overwrites(tmp_path: Path, tiny_bundle: Path) -> None:
    scans = tmp_path / "scans"
    a = write_scan(scans / "a.png")
    b = write_scan(scans / "sub" / "b.jpg", 64, 48)
    c = write_scan(scans / "c.tif")
    mine = scans / "c.yaml"  # a sidecar the user wrote, in the second accepted form
    mine.write_text("version: 1\ninstances:\n  - box: [1, 1, 5, 5]\n    color: red\n", encoding="utf-8")
    before = mine.read_bytes()

    result = invoke("hints", "init", scans, "--model", tiny_bundle)
    assert result.exit_code == 0, result.output
    assert "2 written, 1 kept, 0 failed" in result.output
    templates = [a.with_name("a.png.yaml"), b.with_name("b.jpg.yaml")]
    assert all(t.is_file() for t in templates)
    assert not c.with_name("c.tif.yaml").exists() and mine.read_bytes() == before
    assert not list(scans.rglob(".*.tmp"))

    text = templates[0].read_text(encoding="utf-8")
    assert "# [1] " in text and "box: [" in text  # detected instances listed with id, label, box
    data = yaml.safe_load(text)
    assert data["version"] == 1 and not data.get("instances")  # valid as written, nothing active
    for t in templates:
        assert check_sidecar(t, max_bytes=MAX, scan_size=(72, 96) if t == templates[0] else (64, 48)) == []

    snapshot = {t: t.read_bytes() for t in templates}
    again = invoke("hints", "init", scans, "--model", tiny_bundle)
    assert again.exit_code == 0 and "0 written, 3 kept" in again.output
    assert {t: t.read_bytes() for t in templates} == snapshot


def test_filled_template_passes_check(tmp_path: Path, tiny_bundle: Path) -> None:
    scan = write_scan(tmp_path / "s" / "photo.png")
    assert invoke("hints", "init", scan, "--model", tiny_bundle).exit_code == 0
    sidecar = scan.with_name("photo.png.yaml")
    filled, label = uncomment_first_instance(sidecar.read_text(encoding="utf-8"), "dark green")
    sidecar.write_text(filled, encoding="utf-8")
    data = yaml.safe_load(filled)
    assert data["instances"][0]["label"] == label and data["instances"][0]["color"] == "dark green"
    result = invoke("hints", "check", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "1 sidecar(s) checked, 0 problem(s)" in result.output


def test_init_without_model_writes_a_usable_template(tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "x.png")
    result = invoke("hints", "init", scan)
    assert result.exit_code == 0, result.output
    text = scan.with_name("x.png.yaml").read_text(encoding="utf-8")
    assert "detection skipped" in text and yaml.safe_load(text)["version"] == 1
    # said on screen too, with the way to get detection, never as "0 detected instance(s)"
    assert "0 detected" not in result.output and "(detection skipped)" in result.output
    assert "--model BUNDLE" in result.output and "models pull" in result.output


SYNTAX = "version: 1\ninstances:\n  - box: [1, 2, 3, 4]\n     color: red\n"
SCHEMA = """version: 1
instances:
  - label: tram
    colour: red
  - box: [0, 0, 500, 10]
    color: navy
  - label: coat
    color: blurple
  - label: hat
exclude: [sky]
"""
HEX = "version: 1\ninstances:\n  - label: door\n    color: #8b0000\n"


def test_check_reports_each_problem_with_its_line(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    files = {}
    for name, text in (("syntax", SYNTAX), ("schema", SCHEMA), ("hex", HEX), ("good", "version: 1\n")):
        write_scan(scans / f"{name}.png")
        files[name] = scans / f"{name}.png.yaml"
        files[name].write_text(text, encoding="utf-8")
    result = invoke("hints", "check", scans)
    assert result.exit_code == 1
    lines = result.output.splitlines()

    def line_for(name: str, lineno: int, *words: str) -> None:
        prefix = f"{files[name]}:{lineno}:"
        hits = [ln for ln in lines if ln.startswith(prefix)]
        assert hits, f"no problem reported at {prefix} in:\n{result.output}"
        assert any(all(w in h for w in words) for h in hits), hits

    line_for("syntax", 4, "YAML syntax")
    line_for("schema", 4, "unknown key 'colour'", "did you mean 'color'")
    line_for("schema", 5, "outside the 96x72 scan")
    line_for("schema", 8, "blurple")
    line_for("schema", 9, "neither color nor text")
    line_for("hex", 4, "quotes")
    assert not any(ln.startswith(str(files["good"])) for ln in lines)
    assert "4 sidecar(s) checked, 6 problem(s)" in result.output

    one = invoke("hints", "check", files["good"])
    assert one.exit_code == 0 and "1 sidecar(s) checked, 0 problem(s)" in one.output


def test_check_uses_the_upright_size(tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "r.jpg", 40, 100, orientation=6)  # stored 100x40, shown 40x100
    scan.with_name("r.jpg.yaml").write_text(
        "version: 1\ninstances:\n  - box: [0, 0, 40, 100]\n    color: red\n", encoding="utf-8"
    )
    assert invoke("hints", "check", scan).exit_code == 0
    scan.with_name("r.jpg.yaml").write_text(
        "version: 1\ninstances:\n  - box: [0, 0, 100, 40]\n    color: red\n", encoding="utf-8"
    )
    bad = invoke("hints", "check", scan)
    assert bad.exit_code == 1 and "r.jpg.yaml:3:" in bad.output


def test_show_writes_png_of_scan_size(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = write_scan(tmp_path / "scans" / "street.png", 60, 90)
    scan.with_name("street.png.yaml").write_text(
        "version: 1\ninstances:\n  - polygon: [[5, 5], [40, 5], [40, 30], [5, 30]]\n    color: red\n"
        "    label: sign\n",
        encoding="utf-8",
    )
    out = tmp_path / "o" / "overlay.png"
    result = invoke("hints", "show", scan, "-o", out, "--model", tiny_bundle)
    assert result.exit_code == 0, result.output
    assert "sign (sidecar)" in result.output and "colour red" in result.output
    with Image.open(out) as img:  # the scan at its own pixels, a legend strip below
        assert img.size[0] == 90 and img.size[1] > 60 and img.mode == "RGB"
        pixels = np.asarray(img).astype(int)
    inside = pixels[20, 20]  # red fill over gray: red well above green/blue
    assert inside[0] > inside[1] + 40 and inside[0] > inside[2] + 40
    monkeypatch.chdir(tmp_path)
    default = invoke("hints", "show", scan)  # no model: sidecar regions only, default name in cwd
    assert default.exit_code == 0, default.output
    assert (tmp_path / "street.png.hints.png").is_file()


def test_show_bad_sidecar_is_one_line_error(tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "b.png")
    scan.with_name("b.png.yaml").write_text(SCHEMA, encoding="utf-8")
    result = invoke("hints", "show", scan, "-o", tmp_path / "x.png")
    assert result.exit_code == 2  # a user error, as for `hints init` and `hints check`
    assert "b.png.yaml:4:5: unknown key 'colour'" in result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_new_user_init_edit_check_run(tmp_path: Path, tiny_bundle: Path) -> None:
    """scans -> hints init -> fill one colour -> hints check -> run -> the hint is in provenance."""
    scans = tmp_path / "scans"
    scan = write_scan(scans / "street.png", 64, 80)
    write_scan(scans / "other.png", 48, 64)
    assert invoke("hints", "init", scans, "--model", tiny_bundle).exit_code == 0
    sidecar = scan.with_name("street.png.yaml")
    filled, label = uncomment_first_instance(sidecar.read_text(encoding="utf-8"), "navy")
    sidecar.write_text(filled, encoding="utf-8")
    check = invoke("hints", "check", scans)
    assert check.exit_code == 0, check.output

    out = tmp_path / "out"
    run = invoke("run", scans, "--model", tiny_bundle, "--out", out, "--steps", "2", "--working-size", "64")
    assert run.exit_code == 0, run.output
    record = json.loads((out / "street.color.json").read_text(encoding="utf-8"))
    hinted = [i for i in record["instances"] if i.get("source") == "sidecar"]
    assert [i["label"] for i in hinted] == [label]
    assert hinted[0]["hint_color"] is not None and "navy" in json.dumps(hinted[0]["hint_color"])
    assert record["sidecar"]["path"].endswith("street.png.yaml")


def test_check_flags_missing_masks_and_orphan_sidecars(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scan = write_scan(scans / "coat.png")
    sidecar = scans / "coat.yaml"  # second accepted form
    sidecar.write_text(
        "version: 1\ninstances:\n  - box: [1, 1, 9, 9]\n    color: red\n"
        "  - mask: masks/coat.png\n    color: brown\n",
        encoding="utf-8",
    )
    (scans / "coat.jpeg.yaml").write_text("version: 1\n", encoding="utf-8")  # typo: no such scan
    result = invoke("hints", "check", scans)
    assert result.exit_code == 1
    assert f"{sidecar}:5:11: instance 2: mask file 'masks/coat.png' not found" in result.output
    assert "coat.jpeg.yaml: warning: no scan uses this sidecar" in result.output
    (scans / "masks").mkdir()
    Image.new("L", (96, 72), 255).save(scans / "masks" / "coat.png")
    ok = invoke("hints", "check", sidecar)  # a sidecar file on its own finds its scan
    assert ok.exit_code == 0, ok.output
    assert scan.is_file()


def test_init_reports_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtcolor_batch.cli.hints as hints_cli

    scan = write_scan(tmp_path / "ro" / "a.png")

    def refuse(target: Path, text: str) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hints_cli, "write_new_file", refuse)
    result = invoke("hints", "init", scan)
    assert result.exit_code == 1
    assert "a.png.yaml: cannot write: Permission denied" in result.output
    assert "0 written, 0 kept, 1 failed" in result.output


def test_overlay_tells_uncoloured_instances_from_hints_and_has_a_legend() -> None:
    """A detected instance no hint colours is not filled with a made-up colour (it looked like a
    hint); it gets a dashed outline, and the legend below says which is which."""
    from mtcolor_batch.core.types import ColorHint, Instance
    from mtcolor_batch.perception.overlay import legend_line, render_overlay, with_legend

    luma = np.full((60, 90), 0.5, np.float32)
    mask = np.zeros((60, 90), bool)
    mask[10:40, 10:40] = True
    auto = Instance.from_full_mask(1, "person", "a person", mask, source="auto")
    other = np.zeros((60, 90), bool)
    other[10:40, 50:85] = True
    hinted = Instance.from_full_mask(
        2, "coat", "a coat", other, source="sidecar", color=ColorHint((53.2, 80.1, 67.2), "red")
    )
    picture = np.asarray(render_overlay(luma, [auto, hinted])).astype(int)
    assert (picture[25, 25] == 128).all()  # inside the uncoloured instance: the scan, unfilled
    red = picture[25, 70]
    assert red[0] > red[1] + 40  # the hint's own colour fills its region
    edge = picture[10:40, 10]  # its outline: black and white dashes, not a palette colour
    assert {tuple(p) for p in edge} <= {(0, 0, 0), (255, 255, 255)} and len({tuple(p) for p in edge}) == 2
    assert "no colour hint" in legend_line(auto) and "colour red" in legend_line(hinted)
    with_key = with_legend(render_overlay(luma, [auto, hinted]), [auto, hinted])
    assert with_key.size[0] == 90 and with_key.size[1] > 60
    assert (np.asarray(with_key)[:60] == np.asarray(render_overlay(luma, [auto, hinted]))).all()
