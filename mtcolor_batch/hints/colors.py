"""Colour words and notations an archivist may write in a sidecar, turned into CIELAB (D65).

Why CIELAB: hints are enforced and measured in the same space the engine predicts chroma in (a*, b*)
and CIEDE2000 is defined on it. Why a packaged table instead of a library: the accepted names are a
documented, fixed vocabulary (``data/colors.json``: the 148 CSS named colours, the four X11 values
that differ from CSS, and a small archival vocabulary with sourced values), so a sidecar means the
same thing on every machine. Training texts use a smaller vocabulary on purpose: basic colour terms
with light/dark modifiers (``train/naming.py``).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from skimage.color import deltaE_ciede2000

from mtcolor_batch.core.color import srgb_to_lab
from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.types import ColorHint

__all__ = [
    "NamedColor",
    "color_table",
    "describe",
    "closest_names",
    "nearest_color_name",
    "normalize_name",
    "parse_color",
]

_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))"
_SEP = r"(?:\s*,\s*|\s+)"  # CSS allows commas or spaces between the numbers
_RGB_RE = re.compile(rf"^rgba?\(\s*{_NUM}(%?){_SEP}{_NUM}(%?){_SEP}{_NUM}(%?)\s*\)$", re.IGNORECASE)
_LAB_RE = re.compile(rf"^(?:cie)?lab\(\s*{_NUM}(%?){_SEP}{_NUM}{_SEP}{_NUM}\s*\)$", re.IGNORECASE)
_HEX_RE = re.compile(r"^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_PREFIXES = ("css:", "x11:")
_FORMS = 'write a colour name (navy, brick red), "#rrggbb", rgb(r, g, b) or lab(L, a, b)'


@dataclass(frozen=True)
class NamedColor:
    """One entry of the packaged table."""

    name: str  # display name with spaces, e.g. "dark slate gray"
    hex: str  # "#rrggbb" sRGB
    set: str  # "css" | "x11" | "archival"
    lab: tuple[float, float, float]
    source: str = ""


def normalize_name(text: str) -> str:
    """Key used for matching: lower case without spaces, hyphens, underscores or apostrophes."""
    return re.sub(r"[\s\-_'’]+", "", text.strip().lower())


def _hex_to_rgb(text: str) -> tuple[float, float, float]:
    digits = text.lstrip("#")
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return tuple(int(digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


@dataclass(frozen=True)
class _Table:
    by_key: dict[str, NamedColor]  # every accepted spelling (names and aliases) -> entry
    spelling: dict[str, str]  # key -> the spelling to show in suggestions ("raf blue", not "rafblue")
    css: dict[str, NamedColor]  # plain CSS values, for the "css:" prefix
    x11: dict[str, NamedColor]  # CSS values with the X11 differences, for the "x11:" prefix
    canonical: tuple[NamedColor, ...]  # names nearest_color_name may return
    canonical_lab: np.ndarray  # (N, 3) float64


@lru_cache(maxsize=1)
def _table() -> _Table:
    raw = json.loads((resources.files("mtcolor_batch") / "data" / "colors.json").read_text(encoding="utf-8"))
    by_key: dict[str, NamedColor] = {}
    spelling: dict[str, str] = {}
    css: dict[str, NamedColor] = {}
    x11: dict[str, NamedColor] = {}
    entries: list[NamedColor] = []
    # Archival entries go last so that, on the one deliberate collision ("khaki"), they win.
    for row in sorted(raw["colors"], key=lambda r: {"css": 0, "x11": 1, "archival": 2}[r["set"]]):
        entry = NamedColor(
            name=row["name"],
            hex=row["hex"].lower(),
            set=row["set"],
            lab=srgb_to_lab(_hex_to_rgb(row["hex"])),
            source=row.get("source", ""),
        )
        keys = [row["name"], *row.get("aliases", [])]
        for key in keys:
            by_key[normalize_name(key)] = entry
            spelling[normalize_name(key)] = key
        if entry.set == "css":
            css[normalize_name(entry.name)] = entry
            x11.setdefault(normalize_name(entry.name), entry)
        elif entry.set == "x11":
            x11[normalize_name(entry.name.removeprefix("x11 "))] = entry
        entries.append(entry)
    # nearest_color_name answers with one plain name per colour value: CSS duplicates such as
    # gray/grey or aqua/cyan collapse to the first, names another entry overrides (CSS "khaki") and
    # the "x11 ..." variants are never returned, so every answer parses back to the same value.
    canonical: list[NamedColor] = []
    seen_hex: set[str] = set()
    for entry in entries:
        if entry.set == "x11" or by_key[normalize_name(entry.name)] is not entry or entry.hex in seen_hex:
            continue
        seen_hex.add(entry.hex)
        canonical.append(entry)
    lab = np.array([c.lab for c in canonical], dtype=np.float64)
    return _Table(by_key, spelling, css, x11, tuple(canonical), lab)


def color_table() -> list[NamedColor]:
    """Every accepted name (canonical entries, then aliases), for `hints show`-style listings."""
    table = _table()
    return sorted({id(v): v for v in table.by_key.values()}.values(), key=lambda c: (c.set, c.name))


def closest_names(text: str, n: int = 3) -> list[str]:
    """Known colour names closest in spelling to ``text`` (difflib), for "did you mean" messages."""
    table = _table()
    key = normalize_name(text)
    matches = difflib.get_close_matches(key, list(table.by_key), n=n * 2, cutoff=0.6)
    if not matches:
        matches = difflib.get_close_matches(key, list(table.by_key), n=n * 2, cutoff=0.4)
    out: list[str] = []
    for m in matches:
        if table.spelling[m] not in out:
            out.append(table.spelling[m])
    return out[:n]


def _number(text: str, what: str, raw: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise HintError(f"{what} in colour '{raw}' is not a finite number")
    return value


def _parse_rgb(m: re.Match[str], raw: str) -> tuple[float, float, float]:
    out = []
    for i in range(3):
        value = _number(m.group(2 * i + 1), "a channel", raw)
        scale = 100.0 if m.group(2 * i + 2) else 255.0
        if not 0.0 <= value <= scale:
            raise HintError(
                f"colour '{raw}' has a channel out of range",
                hint="rgb() channels are 0-255 (or 0%-100%)",
            )
        out.append(value / scale)
    return out[0], out[1], out[2]


def _parse_lab(m: re.Match[str], raw: str) -> tuple[float, float, float]:
    lightness = _number(m.group(1), "L", raw)
    a = _number(m.group(3), "a", raw)
    b = _number(m.group(4), "b", raw)
    if not 0.0 <= lightness <= 100.0:
        raise HintError(f"colour '{raw}' has L={lightness:g}", hint="lab(L, a, b) needs L between 0 and 100")
    if not (-128.0 <= a <= 127.0 and -128.0 <= b <= 127.0):
        raise HintError(f"colour '{raw}' has a or b out of range", hint="a and b go from -128 to 127")
    return lightness, a, b


def parse_color(text: str) -> ColorHint:
    """Turn what an archivist wrote into a :class:`ColorHint` (CIELAB D65, name kept as written).

    Accepted: a name from the table (case, space and hyphen insensitive; ``css:`` / ``x11:`` force
    the web value of a name), ``#rgb`` / ``#rrggbb``, ``rgb(r, g, b)`` with 0-255 or percentages,
    and ``lab(L, a, b)``. Anything else raises :class:`HintError` naming the closest known names.
    """
    if not isinstance(text, str):
        raise HintError(
            f"colour must be text, got {type(text).__name__} {text!r}",
            hint='quote it, e.g. color: "#8b0000" or color: navy',
        )
    raw = text.strip()
    if not raw:
        raise HintError("colour is empty", hint=_FORMS)
    if raw.startswith("#"):
        if not _HEX_RE.match(raw):
            raise HintError(f"colour '{raw}' is not valid hex", hint="use #rgb or #rrggbb, e.g. #8b0000")
        return ColorHint(lab=srgb_to_lab(_hex_to_rgb(raw)), name=raw)
    lowered = raw.lower()
    if lowered.startswith(("rgb(", "rgba(")):
        m = _RGB_RE.match(raw)
        if not m:
            raise HintError(f"colour '{raw}' is not a valid rgb() colour", hint="write rgb(139, 0, 0)")
        return ColorHint(lab=srgb_to_lab(_parse_rgb(m, raw)), name=raw)
    if lowered.startswith(("lab(", "cielab(")):
        m = _LAB_RE.match(raw)
        if not m:
            raise HintError(f"colour '{raw}' is not a valid lab() colour", hint="write lab(50, -20, 10)")
        return ColorHint(lab=_parse_lab(m, raw), name=raw)
    table = _table()
    for prefix, lookup in zip(_PREFIXES, (table.css, table.x11), strict=True):
        if lowered.startswith(prefix):
            entry = lookup.get(normalize_name(raw[len(prefix) :]))
            if entry is None:
                raise HintError(
                    f"'{raw}' is not a {prefix[:-1].upper()} colour name",
                    hint=f"drop the '{prefix}' prefix or use a CSS name such as navy",
                )
            return ColorHint(lab=entry.lab, name=raw)
    entry = table.by_key.get(normalize_name(raw))
    if entry is None:
        suggestions = closest_names(raw)
        hint = f"closest known names: {', '.join(suggestions)}" if suggestions else _FORMS
        raise HintError(f"unknown colour '{raw}'", hint=hint)
    return ColorHint(lab=entry.lab, name=" ".join(raw.split()))


def nearest_color_name(lab: tuple[float, float, float] | np.ndarray) -> str:
    """Display name of the named colour nearest to ``lab`` by CIEDE2000.

    Used for default instance texts of hex/rgb/lab hints (the training dataset names colours with
    basic terms instead; see ``train/naming.py``).
    """
    table = _table()
    target = np.broadcast_to(np.asarray(lab, dtype=np.float64).reshape(1, 3), table.canonical_lab.shape)
    dist = deltaE_ciede2000(target, table.canonical_lab)
    return table.canonical[int(np.argmin(dist))].name


def describe(color: ColorHint) -> str:
    """Words for the default instance text: the name as written, or the nearest name for notations."""
    if color.name.lower().startswith(("#", "rgb", "lab", "cielab")):
        return nearest_color_name(color.lab)
    name = color.name.lower()
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return " ".join(name.split())
