"""A sidecar's inputs as ``run`` sees them: mask files in the fingerprint, mask errors placed alike
by ``hints check`` and ``run``, and box hints bounded by the drawn box."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_hints_cli import write_scan
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.testing.profiles import write_fast_profile


@pytest.fixture(autouse=True)
def _no_cached_bundle(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path_factory.mktemp("mtcolor-home")))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fast_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "fast.yaml"
    write_fast_profile(path, max_megapixels=50)
    return path


def invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def journal(out: Path) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(out / ".mtcolor" / "journal.sqlite")
    db.row_factory = sqlite3.Row
    return {r["relpath"]: r for r in db.execute("SELECT * FROM files")}


@pytest.mark.slow
def test_mask_error_has_one_place_in_check_and_run(
    tmp_path: Path, tiny_bundle: Path, fast_profile: Path
) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "e10.png")
    write_scan(tmp_path / "outside.png")
    sidecar = scans / "e10.png.yaml"
    sidecar.write_text(
        "version: 1\ninstances:\n  - mask: ../outside.png\n    color: navy\n", encoding="utf-8"
    )
    where = f"{sidecar.name}:3:11:"  # the mask value, not the item's first key (3:5)

    check = invoke("hints", "check", scans)
    assert check.exit_code == 1 and where in check.output, check.output

    out = tmp_path / "out"
    run = invoke(
        "run", scans, "--out", out, "--model", tiny_bundle, "--profile", fast_profile, "--device", "cpu"
    )
    assert run.exit_code == 1, run.output
    error = journal(out)["e10.png"]["error"]
    assert where in error and "instance 1: mask path '../outside.png' uses '..'" in error, error

    # a wrong-size mask: same place in both
    (scans / "masks").mkdir()
    Image.new("L", (10, 10), 255).save(scans / "masks" / "m.png")
    sidecar.write_text("version: 1\ninstances:\n  - color: navy\n    mask: masks/m.png\n", encoding="utf-8")
    where = f"{sidecar.name}:4:11:"
    check = invoke("hints", "check", scans)
    assert check.exit_code == 1 and where in check.output, check.output
    run = invoke(
        "run", scans, "--out", out, "--model", tiny_bundle, "--profile", fast_profile, "--device", "cpu"
    )
    error = journal(out)["e10.png"]["error"]
    assert where in error and "10x10 px but the scan is 96x72" in error, error


@pytest.mark.slow
def test_box_hint_stays_in_its_drawn_box(tmp_path: Path, tiny_bundle: Path, fast_profile: Path) -> None:
    """The tiny bundle's SAM spills past boxes; the record's box must still lie inside the drawn one,
    and `hints show` (the same resolve code) reports the very boxes `run` recorded."""
    import json

    scans = tmp_path / "scans"
    write_scan(scans / "tram.png")
    drawn = [(10, 8, 60, 50), (2, 30, 40, 70), (50, 2, 95, 40)]
    body = "".join(f"  - box: {list(b)}\n    color: navy\n" for b in drawn)
    (scans / "tram.png.yaml").write_text(f"version: 1\ninstances:\n{body}", encoding="utf-8")
    profile = tmp_path / "no-auto.yaml"
    text = fast_profile.read_text().replace("perception:\n", "perception:\n  auto_instances: false\n")
    profile.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    run = invoke("run", scans, "--out", out, "--model", tiny_bundle, "--profile", profile, "--device", "cpu")
    assert run.exit_code == 0, run.output
    record = json.loads((out / "tram.color.json").read_text())
    boxes = [i["box"] for i in record["instances"] if i["source"] == "sidecar"]
    assert len(boxes) == len(drawn)

    def inside(b: list[int], d: tuple[int, int, int, int]) -> bool:
        return d[0] <= b[0] < b[2] <= d[2] and d[1] <= b[1] < b[3] <= d[3]

    assert all(any(inside(b, d) for d in drawn) for b in boxes), (boxes, drawn)

    show = invoke(
        "hints", "show", scans / "tram.png", "-o", tmp_path / "show.png",
        "--model", tiny_bundle, "--profile", profile, "--device", "cpu", "--root", scans,
    )  # fmt: skip
    assert show.exit_code == 0, show.output
    shown = [json.loads(m) for m in re.findall(r"\(sidecar\) box (\[[\d, ]+\])", show.output)]
    assert sorted(shown) == sorted(boxes), (shown, boxes)


def paint(path: Path, x1: int) -> None:
    """A 96x72 mask, white from x=0 to ``x1`` over rows 10..40."""
    mask = np.zeros((72, 96), dtype=np.uint8)
    mask[10:40, :x1] = 255
    Image.fromarray(mask).save(path)


@pytest.mark.slow
def test_repainting_a_mask_redoes_the_file(tmp_path: Path, tiny_bundle: Path, fast_profile: Path) -> None:
    import json
    import os

    scans = tmp_path / "scans"
    write_scan(scans / "p1.png")
    write_scan(scans / "plain.png")  # no sidecar: never redone
    (scans / "masks").mkdir()
    mask = scans / "masks" / "p1_paint.png"
    paint(mask, 20)
    sidecar = scans / "p1.png.yaml"
    sidecar.write_text("version: 1\ninstances:\n  - mask: masks/p1_paint.png\n    color: navy\n")
    out = tmp_path / "out"
    args = ("--out", out, "--model", tiny_bundle, "--profile", fast_profile, "--device", "cpu")

    def run(*extra: str) -> dict[str, sqlite3.Row]:
        result = invoke("run", scans, *args, "--no-auto-instances", *extra)
        assert result.exit_code == 0, result.output
        return journal(out)

    def area() -> int:
        record = json.loads((out / "p1.color.json").read_text())
        return sum(i["area"] for i in record["instances"] if i["source"] == "sidecar")

    def repaint(x1: int) -> None:  # as an editor that keeps the file's mtime might
        before = mask.stat()
        paint(mask, x1)
        os.utime(mask, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert run()["p1.png"]["completions"] == 1 and area() == 30 * 20
    assert run()["p1.png"]["completions"] == 1  # nothing changed: skipped
    repaint(60)
    rows = run()
    assert rows["p1.png"]["completions"] == 2 and rows["plain.png"]["completions"] == 1
    assert area() == 30 * 60
    repaint(40)
    rows = run("--verify-inputs")
    assert rows["p1.png"]["completions"] == 3 and rows["plain.png"]["completions"] == 1
    assert area() == 30 * 40
    sidecar_record = json.loads((out / "p1.color.json").read_text())["sidecar"]
    assert list(sidecar_record["masks"]) == ["masks/p1_paint.png"]

    # the record holds the masks' hashes, so a journal rebuilt from records still skips what is done
    record_before = (out / "p1.color.json").read_bytes()
    (out / ".mtcolor" / "journal.sqlite").unlink()
    assert invoke("journal", "rebuild", out).exit_code == 0
    run()
    assert (out / "p1.color.json").read_bytes() == record_before
