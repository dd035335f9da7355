"""Colour words and notations -> CIELAB, and the nearest-name lookup the dataset builder uses."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from PIL import ImageColor
from skimage.color import rgb2lab

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.hints.colors import (
    closest_names,
    color_table,
    describe,
    nearest_color_name,
    normalize_name,
    parse_color,
)


def lab_of_hex(hex_text: str) -> np.ndarray:
    rgb = np.array(ImageColor.getrgb(hex_text), dtype=np.float64) / 255.0
    return rgb2lab(rgb.reshape(1, 1, 3), illuminant="D65")[0, 0]


def test_table_has_every_css_name_with_css_values() -> None:
    raw = json.loads((resources.files("mtcolor_batch") / "data" / "colors.json").read_text())
    css = {normalize_name(c["name"]): c["hex"] for c in raw["colors"] if c["set"] == "css"}
    assert len(css) == 148 == len(ImageColor.colormap)
    for name, value in ImageColor.colormap.items():
        assert css[name] == value, name
        if name != "khaki":  # the one archival override, see test_khaki_means_the_cloth
            np.testing.assert_allclose(parse_color(name).lab, lab_of_hex(value), atol=1e-9)


@pytest.mark.parametrize(
    ("text", "hex_value"),
    [
        ("navy", "#000080"),
        ("Dark Green", "#006400"),
        ("dark-green", "#006400"),
        ("DARK_GREEN", "#006400"),
        ("  darkgreen ", "#006400"),
        ("rebeccapurple", "#663399"),
        ("light goldenrod yellow", "#fafad2"),
        ("grey", "#808080"),
        ("x11:gray", "#bebebe"),
        ("x11 gray", "#bebebe"),
        ("css:khaki", "#f0e68c"),
        ("#8b0000", "#8b0000"),
        ("#8B0000", "#8b0000"),
        ("#f00", "#ff0000"),
        ("rgb(139, 0, 0)", "#8b0000"),
        ("rgb(100%, 0%, 0%)", "#ff0000"),
        ("RGB( 0 , 0 , 128 )", "#000080"),
    ],
)
def test_names_hex_and_rgb(text: str, hex_value: str) -> None:
    np.testing.assert_allclose(parse_color(text).lab, lab_of_hex(hex_value), atol=1e-9)


@pytest.mark.parametrize(
    ("phrase", "hex_value"),
    [
        ("navy blue", "#000080"),
        ("olive drab", "#6b8e23"),
        ("khaki", "#c3b091"),
        ("field grey", "#4d5d53"),
        ("Field Gray", "#4d5d53"),
        ("feldgrau", "#4d5d53"),
        ("brick red", "#cb4154"),
        ("bottle green", "#006a4e"),
        ("sepia", "#704214"),
        ("ivory", "#fffff0"),
        ("prussian blue", "#003153"),
        ("burgundy", "#800020"),
        ("oxblood", "#4a0000"),
        ("british racing green", "#004225"),
    ],
)
def test_archival_phrases(phrase: str, hex_value: str) -> None:
    np.testing.assert_allclose(parse_color(phrase).lab, lab_of_hex(hex_value), atol=1e-9)


def test_khaki_means_the_cloth() -> None:
    """Archivists mean khaki drill (#c3b091), not the pale X11 'khaki' (#f0e68c, 'light khaki')."""
    assert parse_color("khaki").lab == parse_color("khaki drill").lab
    assert parse_color("css:khaki").lab == parse_color("light khaki").lab
    assert parse_color("khaki").lab[0] < parse_color("css:khaki").lab[0] - 10


def test_lab_notation_is_taken_verbatim() -> None:
    assert parse_color("lab(60, 10, 40)").lab == (60.0, 10.0, 40.0)
    assert parse_color("lab(50 -20 10)").lab == (50.0, -20.0, 10.0)
    assert parse_color("LAB(12.5, -3.25, +7)").lab == (12.5, -3.25, 7.0)


def test_name_is_kept_as_written() -> None:
    hint = parse_color("  Dark   Green ")
    assert hint.name == "Dark Green"
    assert describe(hint) == "dark green"
    assert describe(parse_color("#8b0000")) == "dark red"
    assert describe(parse_color("css:khaki")) == "khaki"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("navvy", ["navy"]),
        ("dark gren", ["dark green"]),
        ("purpel", ["purple"]),
        ("feild grey", ["field grey"]),
        ("brik red", ["brick red"]),
    ],
)
def test_unknown_names_suggest_closest(text: str, expected: list[str]) -> None:
    with pytest.raises(HintError) as info:
        parse_color(text)
    assert f"unknown colour '{text}'" in info.value.message
    assert info.value.hint is not None and info.value.hint.startswith("closest known names: ")
    for name in expected:
        assert name in info.value.hint
    assert closest_names(text)[0] == expected[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("#12345", "not valid hex"),
        ("#ggg", "not valid hex"),
        ("rgb(300, 0, 0)", "out of range"),
        ("rgb(1, 2)", "not a valid rgb()"),
        ("lab(120, 0, 0)", "L=120"),
        ("lab(50, 200, 0)", "a or b out of range"),
        ("lab(50, 0)", "not a valid lab()"),
        ("", "empty"),
        ("css:brick red", "not a CSS colour name"),
        ("zzqqxx", "unknown colour"),
    ],
)
def test_bad_notations(text: str, fragment: str) -> None:
    with pytest.raises(HintError) as info:
        parse_color(text)
    assert fragment in info.value.message
    assert info.value.hint  # every error says how to fix it


def test_non_text_colour_is_an_error() -> None:
    with pytest.raises(HintError, match="must be text"):
        parse_color(123)  # type: ignore[arg-type]


def test_nearest_color_name_round_trips_table_values() -> None:
    for entry in color_table():
        if entry.set == "x11":
            continue
        name = nearest_color_name(entry.lab)
        # Same value (duplicates such as gray/grey answer with one of them).
        assert parse_color(name).lab == pytest.approx(entry.lab, abs=1e-9), (entry.name, name)


def test_nearest_color_name_uses_ciede2000() -> None:
    assert nearest_color_name((50.0, 0.0, 0.0)) in {"gray", "grey"}
    assert nearest_color_name(np.array([13.0, 47.0, -64.0])) in {"navy", "navy blue"}
    assert nearest_color_name(parse_color("#8a0101").lab) == "dark red"
