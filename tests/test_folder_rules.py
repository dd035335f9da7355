"""Folder rules (mtcolor-folder.yaml): schema errors with locations, the nearest-wins chain, the
sidecar winning, drawn hints taking a rule's colour, and the detector asked for a rule's label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_hints_resolve import auto, make_scan

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.types import Instance
from mtcolor_batch.hints.folder_rules import check_folder_file, folder_chain, parse_folder_text
from mtcolor_batch.hints.resolve import resolve_hints
from mtcolor_batch.hints.schema import load_sidecar
from mtcolor_batch.scan.folder_files import FOLDER_RULES_NAME, folder_file_digests, folder_rule_files

MAX = 64 * 1024


def rules(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FOLDER_RULES_NAME
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[int | None, int | None, str, str]]:
    path = rules(tmp_path, text)
    found, errs = check_folder_file(path, max_bytes=MAX, scan_root=tmp_path)
    assert (found is None) == bool(errs)
    return [(e.line, e.column, e.message, e.hint or "") for e in errs]


# -- schema and its error locations -----------------------------------------------------------------


def test_a_valid_file_reads_rules_with_their_lines(tmp_path: Path) -> None:
    path = rules(
        tmp_path / "a",
        'version: 1\nprompt: "a street, 1910"\nnegative_prompt: sepia\nexclude: [sky]\n'
        "instances:\n  - label: tram\n    color: dark green\n  - label: coat\n    index: 2\n"
        '    text: "a navy greatcoat"\n',
    )
    found, errs = check_folder_file(path, max_bytes=MAX, scan_root=tmp_path)
    assert errs == [] and found is not None
    assert found.relpath == "a/mtcolor-folder.yaml" and len(found.sha256) == 64
    assert (found.prompt, found.negative_prompt, found.exclude) == ("a street, 1910", "sepia", ("sky",))
    assert [(r.label, r.index, r.line, r.origin) for r in found.rules] == [
        ("tram", None, 6, "a/mtcolor-folder.yaml:6"),
        ("coat", 2, 8, "a/mtcolor-folder.yaml:8"),
    ]
    assert found.rules[0].color is not None and found.rules[0].color.name == "dark green"


@pytest.mark.parametrize(
    "key", ["box: [0, 0, 4, 4]", "points: [[1, 1]]", "polygon: [[0, 0], [4, 0], [4, 4]]", "mask: m.png"]
)
def test_regions_are_refused_at_their_key(tmp_path: Path, key: str) -> None:
    got = problems(tmp_path, f"instances:\n  - label: tram\n    color: red\n    {key}\n")
    assert len(got) == 1
    line, col, msg, hint = got[0]
    assert (line, col) == (4, 5)
    assert msg == f"instance 1: {key.split(':')[0]} is not allowed in a folder rules file"
    assert "sidecar" in hint


def test_did_you_mean_and_locations(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        "version: 1\nnegativ_prompt: sepia\nseed: 4\ninstances:\n  - label: tram\n    colour: green\n"
        "  - color: red\n  - label: car\n    color: blurple\n",
    )
    assert [(g[0], g[1]) for g in got] == [(2, 1), (3, 1), (6, 5), (7, 5), (9, 12)]
    assert got[0][2] == "unknown key 'negativ_prompt'" and got[0][3] == "did you mean 'negative_prompt'?"
    assert got[1][2] == "seed is not allowed in a folder rules file"
    assert "unknown key 'colour'" in got[2][2] and got[2][3] == "did you mean 'color'?"
    assert got[3][2] == "instance 2 has no label"
    assert "blurple" in got[4][2]


def test_rule_needs_colour_or_text_and_one_rule_per_label(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        "exclude: [car]\ninstances:\n  - label: tram\n  - label: car\n    color: red\n"
        "  - label: bus\n    color: red\n  - label: Bus\n    color: blue\n",
    )
    msgs = [(g[0], g[2]) for g in got]
    assert (1, "'car' is both excluded and given a rule in this file") in msgs
    assert (3, "instance 1 has neither color nor text") in msgs
    assert (8, "instance 4: 'Bus' already has a rule at line 6") in msgs


def test_yaml_syntax_and_aliases_use_the_guarded_loader(tmp_path: Path) -> None:
    got = problems(tmp_path, "instances:\n  - label: tram\n   color: red\n")
    assert got[0][2].startswith("YAML syntax error") and got[0][0] == 3
    got = problems(tmp_path, "prompt: &p hello\ninstances:\n  - label: tram\n    text: *p\n")
    assert "alias" in got[0][2] and got[0][0] == 4


def test_editor_text_is_checked_like_the_file(tmp_path: Path) -> None:
    found, errs = parse_folder_text(
        "instances:\n  - label: tram\n    bbox: [1]\n", tmp_path / FOLDER_RULES_NAME
    )
    assert found is None and errs[0].line == 3 and "unknown key 'bbox'" in errs[0].message
    assert "box" not in (errs[0].hint or "")  # a folder rule's did-you-mean never offers a region


# -- which files apply ----------------------------------------------------------------------------


def test_files_apply_from_the_root_down_to_the_scan(tmp_path: Path) -> None:
    top = rules(tmp_path, "instances: []\n")
    mid = rules(tmp_path / "a", "instances: []\n")
    rules(tmp_path / "b", "instances: []\n")
    scan = tmp_path / "a" / "c" / "photo.png"
    assert folder_rule_files(scan, tmp_path) == [top, mid]
    assert folder_rule_files(scan, tmp_path / "a") == [mid]  # nothing above the run's root
    digests = folder_file_digests(scan, tmp_path)
    assert list(digests) == ["mtcolor-folder.yaml", "a/mtcolor-folder.yaml"]


# -- resolving --------------------------------------------------------------------------------------


def two_level(tmp_path: Path) -> Path:
    """Top: tram green, coat navy, exclude sky; a/: tram red (nearer), car yellow."""
    rules(
        tmp_path,
        "prompt: a town\nexclude: [sky]\ninstances:\n  - label: tram\n    color: green\n"
        "  - label: coat\n    color: navy\n",
    )
    rules(
        tmp_path / "a",
        "negative_prompt: sepia\ninstances:\n  - label: tram\n    color: red\n"
        "  - label: car\n    color: yellow\n",
    )
    return tmp_path / "a"


def autos() -> list[Instance]:
    return [
        auto(1, "tram", (0, 0, 10, 10)),
        auto(2, "tram", (40, 0, 50, 10)),
        auto(3, "coat", (0, 20, 10, 30)),
        auto(4, "car", (20, 20, 30, 30)),
        auto(5, "sky", (0, 40, 80, 60)),
        auto(6, "dog", (60, 20, 70, 30)),
    ]


def by_id(result: object) -> dict[int, Instance]:
    return {i.id: i for i in result.instances}  # type: ignore[attr-defined]


def test_nearest_folder_wins_and_farther_rules_still_apply(tmp_path: Path) -> None:
    folder = two_level(tmp_path)
    scan = make_scan(folder)
    chain = folder_chain(scan.source, tmp_path, MAX)
    result = resolve_hints(None, None, scan, autos(), None, tmp_path, None, chain)
    got = by_id(result)
    assert 5 not in got  # the top file's exclude reaches down
    assert got[1].color is not None and got[1].color.name == "red" and got[2].color.name == "red"  # type: ignore[union-attr]
    assert got[1].hint_from == "a/mtcolor-folder.yaml:3" and got[1].text == "a red tram"
    assert got[3].color.name == "navy" and got[3].hint_from == "mtcolor-folder.yaml:6"  # type: ignore[union-attr]
    assert got[4].hint_from == "a/mtcolor-folder.yaml:5" and got[4].source == "sidecar"
    assert got[6].hint_from is None and got[6].color is None and got[6].source == "auto"
    assert result.prompt == "a town" and result.negative_prompt == "sepia"
    assert list(result.folder_files) == ["mtcolor-folder.yaml", "a/mtcolor-folder.yaml"]
    # the same scan one level up: the top file alone
    top_scan = make_scan(tmp_path, "top.png")
    top = by_id(
        resolve_hints(
            None, None, top_scan, autos(), None, tmp_path, None, folder_chain(top_scan.source, tmp_path, MAX)
        )
    )
    assert top[1].color.name == "green" and 4 not in {i for i, v in top.items() if v.color is not None}  # type: ignore[union-attr]


def test_nearer_exclude_drops_a_farther_rule_and_a_nearer_rule_lifts_an_exclude(tmp_path: Path) -> None:
    rules(tmp_path, "exclude: [sky]\ninstances:\n  - label: tram\n    color: green\n")
    rules(tmp_path / "a", "exclude: [tram]\ninstances:\n  - label: sky\n    color: sky blue\n")
    scan = make_scan(tmp_path / "a")
    chain = folder_chain(scan.source, tmp_path, MAX)
    got = by_id(resolve_hints(None, None, scan, autos(), None, tmp_path, None, chain))
    assert 1 not in got and 2 not in got
    assert got[5].hint_from == "a/mtcolor-folder.yaml:3"
    assert chain.queries() == ["sky"]


def test_the_sidecar_wins_over_every_folder_rule(tmp_path: Path) -> None:
    folder = two_level(tmp_path)
    scan = make_scan(folder)
    side = folder / "photo.png.yaml"
    side.write_text(
        "prompt: my own\ninstances:\n  - label: tram\n    index: 2\n    color: blue\n"
        "  - label: sky\n    color: grey\n",
        encoding="utf-8",
    )
    sidecar = load_sidecar(side, max_bytes=MAX, scan_size=scan.size)
    chain = folder_chain(scan.source, tmp_path, MAX)
    result = resolve_hints(sidecar, side, scan, autos(), None, tmp_path, None, chain)
    got = by_id(result)
    # the sidecar names tram: no folder tram rule applies in this scan, not even to the other tram
    assert got[2].color.name == "blue" and got[2].hint_from == "a/photo.png.yaml:3"  # type: ignore[union-attr]
    assert got[1].color is None and got[1].hint_from is None
    # the sidecar's label hint for sky beats the top file's exclude
    assert got[5].color.name == "grey"  # type: ignore[union-attr]
    assert got[4].color.name == "yellow"  # labels the sidecar does not name keep their rule
    assert result.prompt == "my own"


def test_a_drawn_hint_with_only_a_label_takes_the_rules_colour(tmp_path: Path) -> None:
    folder = two_level(tmp_path)
    scan = make_scan(folder)
    side = folder / "photo.png.yaml"
    side.write_text("instances:\n  - box: [60, 40, 70, 50]\n    label: tram\n", encoding="utf-8")
    sidecar = load_sidecar(side, max_bytes=MAX, scan_size=scan.size)
    chain = folder_chain(scan.source, tmp_path, MAX)
    result = resolve_hints(sidecar, side, scan, [], None, tmp_path, None, chain)
    (drawn,) = result.instances
    assert drawn.box == (60, 40, 70, 50) and drawn.color is not None and drawn.color.name == "red"
    assert drawn.text == "a red tram" and drawn.hint_from == "a/mtcolor-folder.yaml:3"
    # without any rule for its label it is an error at the hint's line, not an uncoloured region
    side.write_text("instances:\n  - box: [60, 40, 70, 50]\n    label: bus\n", encoding="utf-8")
    sidecar = load_sidecar(side, max_bytes=MAX, scan_size=scan.size)
    with pytest.raises(HintError) as err:
        resolve_hints(sidecar, side, scan, [], None, tmp_path, None, chain)
    assert err.value.line == 2 and "no folder rule colours 'bus'" in err.value.message


def test_an_indexed_rule_beats_the_general_one(tmp_path: Path) -> None:
    rules(
        tmp_path,
        "instances:\n  - label: tram\n    color: green\n  - label: tram\n    index: 2\n    color: red\n",
    )
    scan = make_scan(tmp_path)
    got = by_id(
        resolve_hints(
            None, None, scan, autos(), None, tmp_path, None, folder_chain(scan.source, tmp_path, MAX)
        )
    )
    assert (got[1].color.name, got[2].color.name) == ("green", "red")  # type: ignore[union-attr]


def test_a_broken_rules_file_fails_with_its_location(tmp_path: Path) -> None:
    rules(tmp_path / "a", "instances:\n  - label: tram\n    color: red\n    box: [0, 0, 1, 1]\n")
    with pytest.raises(HintError) as err:
        folder_chain(tmp_path / "a" / "x.png", tmp_path, MAX)
    assert err.value.one_line().startswith(f"{tmp_path / 'a' / FOLDER_RULES_NAME}:4:5: instance 1: box")


def test_rule_labels_are_added_to_the_detector_queries(tmp_path: Path) -> None:
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.perception import perceive

    class Detector:
        pass

    class Segmenter:
        def iter_boxes_scored(self, *args: object, **kw: object) -> list[object]:
            return []

    seen: list[list[str]] = []

    class Perception:
        bundle_dir = tmp_path
        detector = Detector()
        segmenter = Segmenter()
        can_auto_segment = True
        ram_tagger = None

    import mtcolor_batch.perception as perception_module

    def fake_detect(detector: object, image: object, queries: list[str], **kw: object) -> list[object]:
        seen.append(list(queries))
        return []

    settings = load_profile(None).perception.model_copy(update={"tagger": "detector"})
    original = perception_module.detect
    perception_module.detect = fake_detect  # type: ignore[assignment]
    try:
        scan = make_scan(tmp_path)
        scan.luma = np.zeros_like(scan.luma)
        perceive(scan, Perception(), settings, ["sky"], ["Tram Livery", "sky"])  # type: ignore[arg-type]
    finally:
        perception_module.detect = original  # type: ignore[assignment]
    assert seen and seen[0][-1] == "Tram Livery" and "sky" not in seen[0]


# -- discovery and names ----------------------------------------------------------------------------


def test_discovery_never_takes_the_rules_file_for_a_scan_or_a_sidecar(tmp_path: Path) -> None:
    from test_hints_cli import write_scan

    from mtcolor_batch.scan.discover import discover_report
    from mtcolor_batch.scan.sidecars import find_sidecar

    write_scan(tmp_path / "a" / "photo.png")
    write_scan(tmp_path / "a" / "mtcolor-folder.png")
    rules(tmp_path / "a", "instances:\n  - label: tram\n    color: red\n")
    found = discover_report(tmp_path)
    assert [f.relpath for f in found.files] == ["a/mtcolor-folder.png", "a/photo.png"]
    assert found.warnings == []
    # the scan named like the rules file has only the long sidecar name
    assert find_sidecar(tmp_path / "a" / "mtcolor-folder.png") is None
    (tmp_path / "a" / "mtcolor-folder.png.yaml").write_text("version: 1\n", encoding="utf-8")
    assert find_sidecar(tmp_path / "a" / "mtcolor-folder.png") == tmp_path / "a" / "mtcolor-folder.png.yaml"


def test_check_reports_the_colliding_scan_and_rules_file_problems(tmp_path: Path) -> None:
    from test_hints_cli import write_scan

    from mtcolor_batch.hints.check import check_folder_files, check_sidecars

    write_scan(tmp_path / "a" / "mtcolor-folder.png")
    write_scan(tmp_path / "a" / "photo.png")
    bad = rules(tmp_path / "a", "instances:\n  - label: tram\n    colour: red\n")
    problems_, warnings, n = check_folder_files(tmp_path, MAX)
    assert n == 1
    assert problems_ == [f"{bad}:3:5: unknown key 'colour' in instance 1 (did you mean 'color'?)"]
    assert len(warnings) == 1 and "mtcolor-folder.png: warning: this scan's short sidecar name" in warnings[0]
    # the rules file is never an orphan sidecar; a drawn label-only hint without a rule is a problem
    rules(tmp_path / "a", "instances:\n  - label: tram\n    color: red\n")
    (tmp_path / "a" / "photo.png.yaml").write_text(
        "instances:\n  - box: [1, 1, 9, 9]\n    label: tram\n  - box: [1, 1, 9, 9]\n    label: bus\n",
        encoding="utf-8",
    )
    side_problems, side_warnings, checked = check_sidecars(tmp_path, MAX)
    assert checked == 1 and side_warnings == []
    assert side_problems == [
        f"{tmp_path / 'a' / 'photo.png.yaml'}:4:5: instance 2: 'bus' has neither color nor text, and no "
        "folder rule colours 'bus' (add color: or text:, or a rule for this label in mtcolor-folder.yaml)"
    ]


def test_a_fifo_named_like_the_rules_file_is_refused_unopened(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / FOLDER_RULES_NAME)
    scan = tmp_path / "photo.png"
    assert folder_file_digests(scan, tmp_path) == {"mtcolor-folder.yaml": "unreadable"}
    with pytest.raises(HintError) as err:
        folder_chain(scan, tmp_path, MAX)
    assert err.value.path == str(tmp_path / FOLDER_RULES_NAME) and "folder rules file" in err.value.message
