"""Discovery: which files are scans, in what order, and how shards split them."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scan_loading import make_input_zoo

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.scan.discover import discover, parse_shard, shard_of


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, str]]:
    root = tmp_path_factory.mktemp("tree")
    good, bad = make_input_zoo(root)
    out = root / "colorized"  # an output folder inside the tree (user asked for it) is never scanned
    out.mkdir()
    (out / "gray8.color.jpg").write_bytes((root / "gray8.jpg").read_bytes())
    (root / "readme.txt").write_text("not a scan")
    (root / "coat_mask.png").write_bytes((root / "palette.png").read_bytes())
    return root, good, bad


def test_discovers_exactly_the_scans_in_sorted_order(
    tree: tuple[Path, dict[str, str], dict[str, str]],
) -> None:
    root, good, bad = tree
    found = [f.relpath for f in discover(root, exclude=[root / "colorized"])]
    assert found == sorted(found)
    assert set(found) == set(good) | set(bad)  # hidden, masks, sidecars, txt, out dir, loops: skipped
    assert len(found) == len(set(found))  # the directory symlink loop added no duplicates


def test_single_file_and_missing_root(
    tmp_path: Path, tree: tuple[Path, dict[str, str], dict[str, str]]
) -> None:
    root, _, _ = tree
    assert [f.relpath for f in discover(root / "gray8.jpg")] == ["gray8.jpg"]
    with pytest.raises(UserError):
        discover(tmp_path / "nope")
    with pytest.raises(UserError):
        discover(root / "readme.txt")


def test_shards_partition_every_file_once(tree: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, _, _ = tree
    everything = [f.relpath for f in discover(root, exclude=[root / "colorized"])]
    for n in (1, 3, 7):
        parts = [
            [f.relpath for f in discover(root, exclude=[root / "colorized"], shard=(k, n))]
            for k in range(1, n + 1)
        ]
        merged = sorted(r for part in parts for r in part)
        assert merged == sorted(everything), n
    assert shard_of("a/b.jpg", 8) == shard_of("a/b.jpg", 8)  # stable (sha1, not Python's salted hash)


@pytest.mark.parametrize("spec", ["0/3", "4/3", "x", "1/0", "1-3"])
def test_bad_shard_specs(spec: str) -> None:
    with pytest.raises(UserError):
        parse_shard(spec)
    assert parse_shard("2/8") == (2, 8) and parse_shard(None) is None


def test_same_stem_files_get_distinct_output_stems(tree: tuple[Path, dict[str, str], dict[str, str]]) -> None:
    root, _, _ = tree
    stems = {f.relpath: f.stem for f in discover(root, exclude=[root / "colorized"])}
    assert stems["gray.webp"] == "gray_webp" and stems["gray.bmp"] == "gray_bmp"
    assert stems["gray8.jpg"] == "gray8"


def test_sidecar_surprises_are_warned_once_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Both sidecar forms, and a ``*_mask`` image with a sidecar of its own: one warning line each in
    the run's warnings; the sidecar lookups themselves (asked several times per file) log nothing."""
    import logging

    from mtcolor_batch.scan.discover import discover_report
    from mtcolor_batch.scan.sidecars import find_sidecar

    for name in ("street.jpg", "e4_mask.jpg", "coat_mask.png"):
        (tmp_path / name).write_bytes(b"")
    for name in ("street.jpg.yaml", "street.yaml", "e4_mask.jpg.yaml"):
        (tmp_path / name).write_text("version: 1\n")
    with caplog.at_level(logging.WARNING):
        found = discover_report(tmp_path)
        for _ in range(3):
            assert find_sidecar(tmp_path / "street.jpg") == tmp_path / "street.jpg.yaml"
    assert [f.relpath for f in found.files] == ["street.jpg"]
    assert found.warnings == [
        "street.jpg: both street.jpg.yaml and street.yaml exist; using street.jpg.yaml "
        "(street.yaml is ignored)",
        "e4_mask.jpg: not colorized: its name ends in _mask/.mask, which marks a hint mask, but it has its "
        "own sidecar e4_mask.jpg.yaml (rename it without the _mask ending to colorize it)",
    ]
    assert caplog.text == ""
    single = discover_report(tmp_path / "street.jpg")
    assert len(single.warnings) == 1 and "street.yaml is ignored" in single.warnings[0]
