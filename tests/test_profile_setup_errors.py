"""Profile values that no file could be colorized with are setup errors: one line, exit 2, before
any output folder or journal row exists (not the same failure repeated for every file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_hints_cli import write_scan
from test_sidecar_inputs import invoke

from mtcolor_batch.testing.profiles import fast_profile_yaml


@pytest.fixture(autouse=True)
def _no_cached_bundle(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path_factory.mktemp("mtcolor-home")))


@pytest.mark.parametrize(
    ("tiles", "extra", "words"),
    [
        ((64, 0), ("--tile-size", "100"), "sampling.tile_size must be a multiple of 8 (got 100)"),
        ((256, 256), (), "sampling.tile_overlap must be a multiple of 8 below tile_size (got 256"),
        ((64, 12), (), "sampling.tile_overlap must be a multiple of 8 below tile_size (got 12"),
    ],
)
def test_bad_tiles_are_a_setup_error_before_any_file(
    tmp_path: Path, tiny_bundle: Path, tiles: tuple[int, int], extra: tuple[str, ...], words: str
) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "a.png")
    profile = tmp_path / "tiles.yaml"
    text = fast_profile_yaml(max_megapixels=50).replace("tile_size: 64", f"tile_size: {tiles[0]}")
    profile.write_text(text.replace("tile_overlap: 0", f"tile_overlap: {tiles[1]}"), encoding="utf-8")
    out = tmp_path / "out"
    args = ("--out", out, "--model", tiny_bundle, "--profile", profile, "--device", "cpu", *extra)
    run = invoke("run", scans, *args)
    assert run.exit_code == 2, run.output
    assert words in run.output and len(run.output.strip().splitlines()) == 1, run.output
    assert not out.exists()  # nothing journaled, no folder made


def test_bad_tiles_in_a_profile_file_are_refused_when_loaded(tmp_path: Path) -> None:
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.core.errors import UserError

    prof = tmp_path / "p.yaml"
    prof.write_text("sampling:\n  tile_size: 256\n  tile_overlap: 256\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"tile_overlap must be a multiple of 8 below tile_size \(got 256"):
        load_profile(prof)


def test_a_missing_ram_package_is_a_setup_error(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ram", None)  # `import ram` fails, whatever is installed
    scans = tmp_path / "scans"
    write_scan(scans / "a.png")
    profile = tmp_path / "ram.yaml"
    text = fast_profile_yaml(max_megapixels=50)
    profile.write_text(text.replace("perception:\n", "perception:\n  tagger: ram\n"))
    out = tmp_path / "out"
    run = invoke("run", scans, "--out", out, "--model", tiny_bundle, "--profile", profile, "--device", "cpu")
    assert run.exit_code == 2, run.output
    assert "perception.tagger=ram needs the 'ram' package" in run.output, run.output
    assert len(run.output.strip().splitlines()) == 1 and not out.exists()


def test_an_output_suffix_with_a_path_is_a_setup_error(tmp_path: Path, tiny_bundle: Path) -> None:
    """`output.suffix: /../../x` used to write every output outside --out."""
    scans = tmp_path / "scans"
    write_scan(scans / "a.png")
    profile = tmp_path / "suffix.yaml"
    text = fast_profile_yaml(max_megapixels=50) + "output:\n  suffix: /../../escaped\n"
    profile.write_text(text, encoding="utf-8")
    out = tmp_path / "deep" / "out"
    run = invoke("run", scans, "--out", out, "--model", tiny_bundle, "--profile", profile, "--device", "cpu")
    assert run.exit_code == 2, run.output
    assert (
        "output.suffix must be part of a file name" in run.output
        and len(run.output.strip().splitlines()) == 1
    )
    assert not out.exists() and not list(tmp_path.rglob("*escaped*"))
