"""Sidecar schema: every error class with its exact line and column, safety limits, discovery."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.yaml_guarded import MAX_DEPTH
from mtcolor_batch.hints.schema import Sidecar, check_sidecar, load_sidecar
from mtcolor_batch.scan.sidecars import find_sidecar, shadowed_sidecar

MAX = 256 * 1024

GOOD = """\
version: 1
prompt: "a street in 1910, overcast"
seed: 1234
instances:
  - label: tram
    color: "dark green"
    text: "a dark green tram"
  - box: [120, 40, 480, 300]
    color: "#8b0000"
  - points: [[300, 200]]
    color: navy
  - polygon: [[10,10],[50,10],[50,60]]
    color: "lab(60, 10, 40)"
  - mask: masks/photo_coat.png
    color: brown
  - label: person
    index: 2
    text: "a woman in a field grey coat"
exclude: [sky]
"""


def write(tmp_path: Path, text: str | bytes, name: str = "photo.jpg.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str | bytes, **kwargs) -> list[tuple[int | None, int | None, str, str]]:
    path = write(tmp_path, text)
    found = check_sidecar(path, max_bytes=kwargs.pop("max_bytes", MAX), **kwargs)
    for err in found:
        assert err.path == str(path)
        assert err.hint, f"no fix given for: {err}"
    return [(e.line, e.column, e.message, e.hint or "") for e in found]


def only(tmp_path: Path, text: str | bytes, **kwargs) -> tuple[int | None, int | None, str, str]:
    found = problems(tmp_path, text, **kwargs)
    assert len(found) == 1, found
    return found[0]


# -- the valid example ---------------------------------------------------------------------------


def test_design_example_loads(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    sidecar = load_sidecar(path, max_bytes=MAX)
    assert isinstance(sidecar, Sidecar)
    assert check_sidecar(path, max_bytes=MAX, scan_size=(400, 600)) == []
    assert sidecar.version == 1 and sidecar.seed == 1234 and sidecar.exclude == ["sky"]
    assert sidecar.prompt == "a street in 1910, overcast"
    assert [h.region for h in sidecar.instances] == ["label", "box", "points", "polygon", "mask", "label"]
    assert [h.line for h in sidecar.instances] == [5, 8, 10, 12, 14, 16]
    assert [h.position for h in sidecar.instances] == [1, 2, 3, 4, 5, 6]
    assert sidecar.instances[3].color_hint is not None
    assert sidecar.instances[3].color_hint.lab == (60.0, 10.0, 40.0)
    assert sidecar.instances[5].color_hint is None and sidecar.instances[5].index == 2
    assert sidecar.sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
    assert sidecar.path == path


def test_empty_file_is_a_sidecar_without_hints(tmp_path: Path) -> None:
    sidecar = load_sidecar(write(tmp_path, ""), max_bytes=MAX)
    assert sidecar.instances == [] and sidecar.prompt is None and sidecar.version == 1
    assert load_sidecar(write(tmp_path, "version: 1\ninstances:\n"), max_bytes=MAX).instances == []


def test_json_schema_is_available_for_docs() -> None:
    schema = Sidecar.model_json_schema()
    assert set(schema["properties"]) == {"version", "prompt", "seed", "instances", "exclude"}


# -- every error class, with line and column ------------------------------------------------------------


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, 'version: 1\npromt: "x"\n')
    assert (line, col) == (2, 1)
    assert msg == "unknown key 'promt'" and hint == "did you mean 'prompt'?"


def test_unknown_instance_key_suggests_synonym(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, "instances:\n  - label: tram\n    colour: navy\n")
    assert (line, col) == (3, 5)
    assert msg == "unknown key 'colour' in instance 1" and hint == "did you mean 'color'?"


def test_unknown_key_without_close_match_lists_allowed(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, "instances:\n  - label: tram\n    color: red\n    zzz: 1\n")
    assert (line, col) == (4, 5)
    assert hint == "allowed keys here: label, index, box, points, polygon, mask, color, text"


def test_bad_colour_points_at_value_with_suggestions(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, "instances:\n  - label: tram\n    color:   navvy\n")
    assert (line, col) == (3, 14)
    assert msg == "instance 1: unknown colour 'navvy'"
    assert hint.startswith("closest known names: navy")


def test_unquoted_hex_colour_is_explained(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, "instances:\n  - label: tram\n    color: #8b0000\n")
    assert (line, col) == (3, 5)
    assert "unquoted '#' starts a YAML comment" in msg
    assert hint == 'put hex colours in quotes: color: "#8b0000"'


def test_box_with_wrong_count(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, "instances:\n  - box: [1, 2, 3]\n    color: red\n")
    assert (line, col) == (2, 10)
    assert msg == "instance 1 'box' needs exactly 4 items, has 3"
    assert "[x0, y0, x1, y1]" in hint


def test_box_with_text_coordinate(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - box: [1, 2, three, 4]\n    color: red\n")
    assert (line, col) == (2, 17)
    assert "must contain numbers" in msg


def test_empty_box(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - box: [10, 10, 5, 20]\n    color: red\n")
    assert (line, col) == (2, 10)
    assert msg == "instance 1: box [10, 10, 5, 20] is empty"


def test_two_regions_in_one_instance(tmp_path: Path) -> None:
    text = "instances:\n  - box: [0, 0, 10, 10]\n    polygon: [[1,1],[2,2],[3,1]]\n    color: red\n"
    line, col, msg, hint = only(tmp_path, text)
    assert (line, col) == (3, 5)
    assert msg == "instance 1 has more than one region (box, polygon)"
    assert "split it into two instances" in hint


def test_no_region(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - color: red\n    text: a red thing\n")
    assert (line, col) == (2, 5)
    assert msg == "instance 1 does not say where the thing is"


def test_neither_colour_nor_text(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - color: red\n    label: a\n  - label: tram\n")
    assert (line, col) == (4, 5)
    assert msg == "instance 2 has neither color nor text"


def test_index_rules(tmp_path: Path) -> None:
    text = (
        "instances:\n  - label: bus\n    index: 0\n    color: red\n"
        "  - box: [0,0,5,5]\n    index: 1\n    color: red\n"
    )
    found = problems(tmp_path, text)
    assert [(f[0], f[1]) for f in found] == [(3, 12), (6, 5)]
    assert found[0][2] == "instance 1 'index' must be at least 1"
    assert found[1][2] == "instance 2: index only applies to a label hint"


def test_point_not_a_pair_and_polygon_without_area(tmp_path: Path) -> None:
    text = (
        "instances:\n  - points: [[1, 2, 3]]\n    color: red\n"
        "  - polygon: [[0,0],[5,5],[10,10]]\n    color: red\n"
    )
    found = problems(tmp_path, text)
    assert [(f[0], f[1], f[2]) for f in found] == [
        (2, 14, "instance 1: points item 1 must be [x, y]"),
        (4, 14, "instance 2: polygon has no area"),
    ]


def test_polygon_needs_three_corners(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - polygon: [[0,0],[5,5]]\n    color: red\n")
    assert (line, col) == (2, 14)
    assert msg == "instance 1 'polygon' needs at least 3 items, has 2"


def test_duplicate_key(tmp_path: Path) -> None:
    line, col, msg, hint = only(tmp_path, "instances:\n  - label: tram\n    color: red\n    color: blue\n")
    assert (line, col) == (4, 5)
    assert msg == "key 'color' appears twice in the same block"
    assert "silently" in hint


def test_absolute_mask_path(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - mask: /etc/passwd\n    color: red\n")
    assert (line, col) == (2, 11)
    assert msg == "instance 1: mask path '/etc/passwd' is absolute"


def test_instance_not_a_mapping(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "instances:\n  - 7\n")
    assert (line, col) == (2, 5)
    assert msg == "instance 1 must be a block of 'key: value' lines"


def test_instances_and_exclude_must_be_lists(tmp_path: Path) -> None:
    found = problems(tmp_path, "instances: tram\nexclude: sky\n")
    assert [(f[0], f[1], f[2]) for f in found] == [
        (1, 12, "'instances' must be a list"),
        (2, 10, "'exclude' must be a list"),
    ]


def test_version_seed_and_tags(tmp_path: Path) -> None:
    found = problems(tmp_path, "version: 2\nseed: -1\nprompt: !!python/object:os.system x\n")
    assert [(f[0], f[1], f[2]) for f in found] == [
        (1, 10, "unsupported sidecar version 2"),
        (2, 7, "'seed' must be at least 0"),
        (
            3,
            9,
            "cannot read value: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object:os.system'",
        ),
    ]


def test_seed_must_be_a_whole_number(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "seed: 12.5\n")
    assert (line, col, msg) == (1, 7, "'seed' must be a whole number")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, "- label: tram\n")
    assert (line, col, msg) == (1, 1, "a sidecar must be a block of 'key: value' lines")


def test_syntax_errors(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, 'version: 1\ninstances:\n  - label: "tram\n')
    assert (line, col) == (4, 1)
    assert "quoted scalar that starts at line 3, column 12" in msg
    line, col, msg, hint = only(tmp_path, "version: 1\ninstances:\n\t- label: tram\n")
    assert (line, col) == (3, 1) and hint == "indent with spaces, not tabs"


def test_not_utf8(tmp_path: Path) -> None:
    line, col, msg, _ = only(tmp_path, b"version: 1\nprompt: caf\xe9\n")
    assert (line, col, msg) == (2, 12, "sidecar is not UTF-8 text")


def test_all_problems_reported_in_line_order(tmp_path: Path) -> None:
    text = (
        "version: 1\n"  # 1
        "promt: x\n"  # 2
        "instances:\n"  # 3
        "  - label: tram\n"  # 4
        "    colour: navy\n"  # 5
        "  - box: [0, 0, 10, 10]\n"  # 6
        "    color: navvy\n"  # 7
    )
    found = problems(tmp_path, text)
    assert [(f[0], f[1]) for f in found] == [(2, 1), (5, 5), (7, 12)]
    with pytest.raises(HintError) as info:
        load_sidecar(tmp_path / "photo.jpg.yaml", max_bytes=MAX)
    assert info.value.line == 2 and info.value.column == 1
    assert "2 more problem(s)" in (info.value.hint or "")
    assert len(info.value.problems) == 3  # type: ignore[attr-defined]
    assert str(info.value).startswith(f"{tmp_path / 'photo.jpg.yaml'}:2:1: unknown key 'promt'")


# -- coordinates against the scan -------------------------------------------------------------------------


def test_out_of_image_coordinates_need_scan_size(tmp_path: Path) -> None:
    text = (
        "instances:\n"
        "  - box: [120, 40, 480, 300]\n"  # 2
        "    color: red\n"
        "  - points: [[10, 10], [300, 20]]\n"  # 4
        "    color: red\n"
        "  - polygon: [[0, 0], [200, 0], [200, 101]]\n"  # 6
        "    color: red\n"
    )
    assert problems(tmp_path, text) == []
    found = problems(tmp_path, text, scan_size=(100, 200))
    assert [(f[0], f[1]) for f in found] == [(2, 10), (4, 24), (6, 33)]
    assert found[0][2] == "instance 1: box [120, 40, 480, 300] goes outside the 200x100 scan"
    assert found[1][2] == "instance 2: points point [300, 20] is outside the 200x100 scan"
    assert found[2][2] == "instance 3: polygon point [200, 101] is outside the 200x100 scan"
    assert "200 px wide and 100 px high" in found[0][3]


# -- safety ------------------------------------------------------------


def test_size_cap_checked_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    found = check_sidecar(path, max_bytes=100)
    assert len(found) == 1 and found[0].line is None
    assert f"{len(GOOD.encode())} bytes, over the 100-byte limit" in found[0].message
    with pytest.raises(HintError, match="over the 100-byte limit"):
        load_sidecar(path, max_bytes=100)


def test_alias_bomb_rejected_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.perf_counter()
    line, col, msg, hint = only(tmp_path, "\n".join(lines) + "\n")
    assert time.perf_counter() - start < 1.0
    assert (line, col) == (2, 8)
    assert msg == "YAML alias '*a' is not allowed in sidecars"
    assert "cannot expand" in hint


def test_any_alias_rejected(tmp_path: Path) -> None:
    text = "instances:\n  - &t {label: tram, color: red}\n  - *t\n"
    line, col, msg, _ = only(tmp_path, text)
    assert (line, col, msg) == (3, 5, "YAML alias '*t' is not allowed in sidecars")


def test_merge_key_rejected(tmp_path: Path) -> None:
    line, col, msg, _ = problems(tmp_path, "instances:\n  - <<: {label: tram}\n    color: red\n")[0]
    assert (line, col) == (2, 5) and msg == "YAML merge keys ('<<') are not allowed"


def test_deep_nesting_rejected(tmp_path: Path) -> None:
    depth = MAX_DEPTH + 5
    line, col, msg, _ = only(tmp_path, "prompt: " + "[" * depth + "]" * depth + "\n")
    assert line == 1 and msg == f"nesting deeper than {MAX_DEPTH} levels"
    very_deep = "prompt: " + "[" * 100_000 + "]" * 100_000 + "\n"
    found = check_sidecar(write(tmp_path, very_deep), max_bytes=1_000_000)
    assert len(found) == 1 and "nesting deeper" in found[0].message


def test_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    found = check_sidecar(tmp_path / "dir.yaml", max_bytes=MAX)
    assert found[0].message.startswith("sidecar is a directory, not a regular file")


# -- discovery ------------------------------------------------------------


def test_find_sidecar_both_forms_first_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"")
    assert find_sidecar(image) is None
    (tmp_path / "photo.yaml").write_text("version: 1\n")
    assert find_sidecar(image) == tmp_path / "photo.yaml"
    assert shadowed_sidecar(image) is None
    (tmp_path / "photo.jpg.yaml").write_text("version: 1\n")
    with caplog.at_level(logging.WARNING, logger="mtcolor_batch.hints.schema"):
        assert find_sidecar(image) == tmp_path / "photo.jpg.yaml"
    assert caplog.text == ""  # said once per file by the run's discovery, not at every lookup
    assert shadowed_sidecar(image) == tmp_path / "photo.yaml"
