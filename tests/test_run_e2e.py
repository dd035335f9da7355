"""``mtcolor-batch run`` end to end with the real pipeline and the tiny bundle (CPU, tiny sizes).

One zoo of good and bad inputs is run once per module; later tests re-run it to check skipping,
change detection, --retry-failed, determinism and that the originals are never touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_scan_loading import BOMB_LIMIT_MP, make_input_zoo
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.testing.c2pa_strip import without_manifest
from mtcolor_batch.testing.profiles import write_fast_profile


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run ~50x faster on one thread when other jobs share the CPU (no spin-waiting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fast_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny working size and 2 steps: the pipeline is exercised in full, in a fraction of a second."""
    path = tmp_path_factory.mktemp("profiles") / "fast.yaml"
    write_fast_profile(path, max_megapixels=BOMB_LIMIT_MP)
    return path


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime_ns of every regular file (symlinks not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
    return out


def out_stem(rel: str) -> str:
    """Output stem of a zoo file (gray.webp and gray.bmp share a stem, so both get the extension)."""
    stem, ext = Path(rel).stem, Path(rel).suffix.lower().lstrip(".")
    return f"{stem}_{ext}" if stem == "gray" else stem


def rows(out: Path) -> dict[str, dict]:
    db = sqlite3.connect(out / ".mtcolor" / "journal.sqlite")
    db.row_factory = sqlite3.Row
    return {r["relpath"]: dict(r) for r in db.execute("SELECT * FROM files")}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path, fast_profile: Path):
    base = tmp_path_factory.mktemp("e2e")
    root = base / "scans"
    good, bad = make_input_zoo(root)
    before = snapshot(root)
    code, text = cli(
        root, "--model", tiny_bundle, "--profile", fast_profile, "--seed", "5", "--device", "cpu"
    )
    return root, base / "scans-colorized", good, bad, before, code, text


def test_good_files_done_bad_files_failed_with_reasons(zoo_run) -> None:
    root, out, good, bad, _, code, text = zoo_run
    assert code == 1, text  # some failed
    journal = rows(out)
    assert set(journal) == set(good) | set(bad)
    for rel in good:
        assert journal[rel]["state"] == "done", (rel, journal[rel]["error"])
    for rel, reason in bad.items():
        assert journal[rel]["state"] == "failed", rel
        assert reason in journal[rel]["error"].lower() and "\n" not in journal[rel]["error"]
        assert rel in text  # the summary names every failed file
    assert "Failed files" in text and "done" in text


def test_outputs_decode_and_follow_input_format_and_depth(zoo_run) -> None:
    root, out, good, _, _, _, _ = zoo_run
    expected = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".tif": "TIFF",
        ".webp": "WEBP",
        ".bmp": "BMP",
    }
    for rel in good:
        src = Path(rel)
        img_path = out / src.parent / f"{out_stem(rel)}.color{src.suffix.lower()}"
        data = img_path.read_bytes()
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.format == expected[src.suffix.lower()], rel
        with Image.open(root / rel) as orig:
            w, h = orig.size
        if rel == "sub/rotated.jpg":
            w, h = h, w  # EXIF orientation applied
        assert img.size == (w, h), rel
        record = json.loads((out / src.parent / f"{out_stem(rel)}.color.json").read_text())
        assert record["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    with tifffile.TiffFile(out / "rgb16.color.tif") as tif:
        assert tif.pages[0].asarray().dtype == np.uint16
        assert b"compositeWithTrainedAlgorithmicMedia" in bytes(tif.pages[0].tags[700].value)
    assert (out / "gray16.color.png").read_bytes()[24] == 16  # PNG IHDR bit depth


def test_provenance_record_has_every_field(zoo_run, tiny_bundle: Path) -> None:
    root, out, _, _, _, _, _ = zoo_run
    rec = json.loads((out / "gray8.color.json").read_text())
    for key in (
        "tool",
        "engine",
        "model",
        "profile",
        "parameters",
        "seed",
        "prompts",
        "instances",
        "sidecar",
        "input",
        "output",
        "device",
        "timings",
        "created_utc",
        "warnings",
        "notes",
        "paper_profile",
        "paper_deviations",
    ):
        assert key in rec, key
    # The run's profile (working size 32, luminance lock) departs from the paper's: said, with values.
    departs = {d["key"]: (d["value"], d["paper"]) for d in rec["paper_deviations"]["profile"]}
    assert rec["paper_profile"] is False
    assert departs["sampling.working_long_side"] == (32, 512)
    assert departs["output.luminance_lock"] == (True, False)
    assert {d["id"] for d in rec["paper_deviations"]["built_in"]} >= {"tanh-gate", "cfg-keeps-masks"}
    assert rec["model"]["tiny"] is True and rec["model"]["weights_sha256"] and rec["model"]["revision"]
    assert rec["seed"] == 5 and rec["parameters"]["steps"] == 2
    assert rec["profile"]["values"]["sampling"]["working_long_side"] == 32
    assert rec["input"]["sha256"] == hashlib.sha256((root / "gray8.jpg").read_bytes()).hexdigest()
    assert rec["sidecar"]["sha256"] == hashlib.sha256((root / "gray8.jpg.yaml").read_bytes()).hexdigest()
    hinted = [i for i in rec["instances"] if i["source"] == "sidecar"]
    assert hinted and hinted[0]["hint_color"]["name"] == "navy" and hinted[0]["area"] >= 0
    multi = json.loads((out / "multipage.color.json").read_text())
    assert any("multi-page" in n for n in multi["notes"])
    exif = Image.open(out / "gray8.color.jpg").getexif()
    assert exif[0x0131].startswith("mtcolor-batch")  # Software


def test_originals_untouched(zoo_run) -> None:
    root, _, _, _, before, _, _ = zoo_run
    assert snapshot(root) == before


@pytest.mark.slow
def test_rerun_skips_done_and_redoes_only_changed(zoo_run, tiny_bundle: Path, fast_profile: Path) -> None:
    root, out, good, bad, _, _, _ = zoo_run
    common = ("--model", tiny_bundle, "--profile", fast_profile, "--seed", "5", "--device", "cpu")
    outputs_before = snapshot(out)
    code, text = cli(root, *common)
    assert code == 1  # the bad files are still failed (reported, not retried)

    def visible(snap: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
        return {k: v for k, v in snap.items() if not k.startswith(".mtcolor")}

    assert visible(snapshot(out)) == visible(outputs_before)  # nothing rewritten
    assert all(r["completions"] == 1 for r in rows(out).values() if r["state"] == "done")

    (root / "gray8.jpg.yaml").write_text(
        "version: 1\ninstances:\n  - mask: masks/coat.png\n    color: brown\n"
    )
    code, text = cli(root, *common, "--retry-failed")
    journal = rows(out)
    assert journal["gray8.jpg"]["completions"] == 2  # sidecar changed: redone
    assert all(journal[r]["completions"] == 1 for r in good if r != "gray8.jpg")
    assert all(journal[r]["attempts"] == 2 and journal[r]["state"] == "failed" for r in bad)
    rec = json.loads((out / "gray8.color.json").read_text())
    assert rec["instances"][0]["hint_color"]["name"] == "brown"


@pytest.mark.slow
def test_same_seed_gives_byte_identical_outputs(
    zoo_run, tiny_bundle: Path, fast_profile: Path, tmp_path: Path
):
    """Byte-identical but for the C2PA manifest, whose signature and salts are random by design."""
    root, out, _, _, _, _, _ = zoo_run
    for rel, name in (("gray16.png", "gray16.color.png"), ("Sepia.JPEG", "Sepia.color.jpeg")):
        other = tmp_path / rel
        code, text = cli(
            root / rel,
            "--out",
            other,
            "--model",
            tiny_bundle,
            "--profile",
            fast_profile,
            "--seed",
            "5",
            "--device",
            "cpu",
        )
        assert code == 0, text
        again, first = (other / name).read_bytes(), (out / name).read_bytes()
        assert again != first  # each carries its own signed manifest
        assert without_manifest(again) == without_manifest(first), rel


def test_dry_run_prints_plan_and_touches_nothing(
    zoo_run, tiny_bundle: Path, fast_profile: Path, tmp_path: Path
):
    root, out, _, _, _, _, _ = zoo_run
    code, text = cli(root, "--dry-run", "--model", tiny_bundle, "--profile", fast_profile, "--seed", "5")
    assert code == 0 and "skip (done)" in text and "gray8.jpg.yaml" in text
    fresh = tmp_path / "fresh"
    code, text = cli(root, "--dry-run", "--out", fresh, "--model", tiny_bundle, "--profile", fast_profile)
    assert code == 0 and "new" in text and not fresh.exists()


def test_no_model_stops_before_touching_anything(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path / "empty-cache"))
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.new("L", (32, 32), 100).save(scans / "a.png")
    code, text = cli(scans)
    assert code == 2
    flat = " ".join(text.split())
    for needle in ("models pull", "--model DIR", "models tiny"):
        assert needle in flat, text
    assert not (tmp_path / "scans-colorized").exists()


def test_examples_main_job(tiny_bundle: Path, fast_profile: Path, tmp_path: Path) -> None:
    import shutil

    examples = Path(__file__).resolve().parents[1] / "examples" / "scans"
    scans = tmp_path / "examples"
    shutil.copytree(examples, scans)
    code, text = cli(scans, "--model", tiny_bundle, "--profile", fast_profile)
    assert code == 0, text
    out = tmp_path / "examples-colorized"
    done = rows(out)
    assert len(done) == 3 and all(r["state"] == "done" for r in done.values())
    rec = json.loads((out / "harbour" / "harbour_16bit.color.json").read_text())
    hinted = [i for i in rec["instances"] if i["source"] == "sidecar"]
    assert rec["output"]["bit_depth"] == 16 and hinted[0]["hint_color"]["name"] == "#8b0000"
    street = json.loads((out / "street_1910.color.json").read_text())
    assert any("sepia" in n for n in street["notes"])


@pytest.mark.slow
def test_shards_split_the_work_with_their_own_journals(tiny_bundle: Path, fast_profile: Path, tmp_path: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(5):
        Image.new("L", (40, 32), 40 * i).save(scans / f"s{i}.png")
    out = tmp_path / "out"
    seen: list[str] = []
    for k in (1, 2):
        code, text = cli(
            scans,
            "--out",
            out,
            "--shard",
            f"{k}/2",
            "--model",
            tiny_bundle,
            "--profile",
            fast_profile,
            "--no-auto-instances",
        )
        assert code == 0, text
        db = sqlite3.connect(out / ".mtcolor" / f"journal-shard-{k}-of-2.sqlite")
        seen += [r[0] for r in db.execute("SELECT relpath FROM files WHERE state = 'done'")]
    assert sorted(seen) == [f"s{i}.png" for i in range(5)]  # every file once, across the shards
    assert not (out / ".mtcolor" / "journal.sqlite").exists()
    assert len(list(out.glob("*.color.png"))) == 5
