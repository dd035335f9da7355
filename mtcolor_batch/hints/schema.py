"""Sidecar hint files: read safely, validate, and say exactly where and how to fix a mistake.

Why so strict: a sidecar states what colour something really was. A typo that is silently ignored
(``colour:`` for ``color:``) would produce a confidently wrong archival record, so unknown keys are
errors, and every error names file:line:column plus a plain-English fix.

Reading (size cap, regular files only, SafeLoader without aliases, tags or deep nesting) is the
guarded loader of :mod:`mtcolor_batch.core.yaml_guarded`; which sidecar belongs to which scan is
:mod:`mtcolor_batch.scan.sidecars`.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.types import ColorHint
from mtcolor_batch.core.yaml_guarded import Located, decode_utf8, error_at, parse_marked, read_capped
from mtcolor_batch.hints.colors import parse_color
from mtcolor_batch.hints.mask_files import check_mask_file

__all__ = [
    "check_instance_count",
    "InstanceHint",
    "Sidecar",
    "check_sidecar",
    "mask_error",
    "parse_sidecar_text",
    "load_sidecar",
]

REGION_KEYS = ("box", "points", "polygon", "mask")
HELP = {
    "version": "write version: 1",
    "prompt": 'write prompt: "a street in 1910, overcast"',
    "seed": "a whole number from 0 to 2**63-1, e.g. seed: 1234",
    "instances": "instances is a list; start each hint with '- ' on its own line",
    "exclude": "write exclude: [sky, water]",
    "label": "write label: tram (a word the detector uses)",
    "index": "index counts from 1, left to right among the detected instances with that label",
    "box": "write box: [x0, y0, x1, y1] in scan pixels, x1 > x0 and y1 > y0",
    "points": "write points: [[x, y], [x, y]] in scan pixels (clicks inside the thing)",
    "polygon": "write polygon: [[x, y], [x, y], [x, y], ...] with at least 3 corners, in scan pixels",
    "mask": "write mask: masks/photo_coat.png (a path relative to this sidecar)",
    "color": 'write a colour name (navy, brick red), "#rrggbb" in quotes, rgb(r, g, b) or lab(L, a, b)',
    "text": 'write text: "a dark green tram"',
}
SYNONYMS = {
    "colour": "color",
    "col": "color",
    "rgb": "color",
    "hex": "color",
    "name": "label",
    "tag": "label",
    "object": "label",
    "description": "text",
    "caption": "text",
    "bbox": "box",
    "rect": "box",
    "point": "points",
    "clicks": "points",
    "poly": "polygon",
    "excludes": "exclude",
    "ignore": "exclude",
    "hints": "instances",
    "regions": "instances",
    "objects": "instances",
}

Number = float  # strict float also accepts ints; bools are rejected
Point = list[Number]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InstanceHint(_Strict):
    """One hint: a region (``label`` of a detected thing, or box/points/polygon/mask) + colour/text."""

    label: str | None = Field(
        None, min_length=1, description="Detected label to bind to; names a drawn region."
    )
    index: int | None = Field(None, ge=1, description="Which detection of `label`, 1 = leftmost.")
    box: list[Number] | None = Field(None, min_length=4, max_length=4, description="[x0, y0, x1, y1] px.")
    points: list[Point] | None = Field(None, min_length=1, description="Positive clicks [[x, y], ...].")
    polygon: list[Point] | None = Field(None, min_length=3, description="Exact region corners [[x, y], ...].")
    mask: str | None = Field(None, min_length=1, description="Mask image path relative to the sidecar.")
    color: str | None = Field(None, description="CSS/X11/archival name, #rrggbb, rgb(...), lab(L, a, b).")
    text: str | None = Field(
        None,
        min_length=1,
        description="Instance text; default 'a {color} {label}' ('a {label} in {color}' for people).",
    )

    _line: int = PrivateAttr(0)
    _column: int = PrivateAttr(0)
    _position: int = PrivateAttr(0)
    _mask_at: tuple[int, int] = PrivateAttr((0, 0))
    _color_hint: ColorHint | None = PrivateAttr(None)

    @property
    def line(self) -> int:
        """1-based line of the item's first key in the sidecar (for warnings and provenance)."""
        return self._line

    @property
    def column(self) -> int:
        return self._column

    @property
    def position(self) -> int:
        """1-based position in the ``instances`` list."""
        return self._position

    @property
    def mask_at(self) -> tuple[int, int]:
        """(line, column) of the ``mask:`` value: where ``hints check`` and ``run`` point a mask error."""
        return self._mask_at

    @property
    def color_hint(self) -> ColorHint | None:
        """The parsed colour (CIELAB), checked at load time."""
        return self._color_hint

    @property
    def region(self) -> Literal["label", "box", "points", "polygon", "mask"]:
        """Which region form this hint uses (validated to be exactly one)."""
        for key in REGION_KEYS:
            if getattr(self, key) is not None:
                return key  # type: ignore[return-value]
        return "label"


class Sidecar(_Strict):
    """A validated sidecar file (``photo.jpg.yaml`` or ``photo.yaml``)."""

    version: Literal[1] = Field(1, description="Format version; only 1 exists.")
    prompt: str | None = Field(None, description="Global text for the whole photo.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Fixed seed for this photo.")
    instances: list[InstanceHint] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list, description="Detected labels not to treat as instances.")

    _path: Path | None = PrivateAttr(None)
    _sha256: str = PrivateAttr("")

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def sha256(self) -> str:
        """sha256 of the file's bytes: goes into provenance and the job fingerprint."""
        return self._sha256


# -- validating ------------------------------------------------------------------------------------


def _where(loc: tuple) -> str:
    if len(loc) >= 2 and loc[0] == "instances" and isinstance(loc[1], int):
        rest = ".".join(str(p) for p in loc[2:3])
        return f"instance {loc[1] + 1}" + (f" '{rest}'" if rest else "")
    if len(loc) >= 1:
        return f"'{loc[0]}'"
    return "sidecar"


def _field_of(loc: tuple) -> str:
    names = [p for p in loc if isinstance(p, str)]
    return names[-1] if names else ""


def _suggest_key(key: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if key.lower() in SYNONYMS and SYNONYMS[key.lower()] in allowed:
        return f"did you mean '{SYNONYMS[key.lower()]}'?"
    close = difflib.get_close_matches(key.lower(), allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"allowed keys here: {', '.join(allowed)}"


def _translate(exc: ValidationError, prefix: tuple, located: Located, path: Path, model: type[BaseModel]):
    """Pydantic errors -> HintErrors with the mark of the offending key or value and a fix."""
    out: list[HintError] = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        kind = err["type"]
        field = _field_of(err["loc"]) if err["loc"] else ""
        where = _where(loc)
        help_text = HELP.get(field)
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            out.append(
                error_at(
                    path,
                    located.mark_for(loc, key=True),
                    f"unknown key '{key}'" + (f" in {_where(loc[:-1])}" if len(loc) > 2 else ""),
                    _suggest_key(key, model.model_fields),
                )
            )
            continue
        mark = located.mark_for(loc)
        if kind == "literal_error" and field == "version":
            message = f"unsupported sidecar version {err['input']!r}"
        elif kind in {"string_type", "string_too_short"}:
            message = f"{where} must be non-empty text"
        elif kind in {"int_type", "int_parsing"}:
            message = f"{where} must be a whole number"
        elif kind in {"float_type", "float_parsing"}:
            message = f"{where} must contain numbers (pixel coordinates)"
        elif kind == "list_type":
            message = f"{where} must be a list"
        elif kind in {"too_short", "too_long"}:
            ctx = err.get("ctx", {})
            want = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
            more = "at least" if kind == "too_short" else "at most"
            got = ctx.get("actual_length")
            if field == "box":
                more = "exactly"
            message = f"{where} needs {more} {want} items, has {got}"
        elif kind in {"greater_than_equal", "less_than_equal"}:
            ctx = err.get("ctx", {})
            bound = ctx.get("ge", ctx.get("le"))
            message = f"{where} must be {'at least' if kind == 'greater_than_equal' else 'at most'} {bound}"
        elif kind in {"dict_type", "model_type", "model_attributes_type"}:
            message = f"{where} must be a block of 'key: value' lines"
            help_text = HELP["instances"] if loc[:1] == ("instances",) else "see the example in the README"
        else:
            message = f"{where}: {err['msg']}"
        out.append(error_at(path, mark, message, help_text))
    return out


def _check_instance(
    hint: InstanceHint, i: int, located: Located, path: Path, scan_size: tuple[int, int] | None
) -> list[HintError]:
    """Rules across fields that pydantic alone cannot phrase well."""
    problems: list[HintError] = []
    base = ("instances", i)
    item_mark = located.mark_for(base)
    for key in InstanceHint.model_fields:
        if (*base, key) in located.null_scalars:
            eaten = key == "color" and located.comment_eaten_hex((*base, key))
            problems.append(
                error_at(
                    path,
                    located.key_marks.get((*base, key)),
                    f"instance {i + 1}: '{key}' has no value"
                    + (" (an unquoted '#' starts a YAML comment)" if eaten else ""),
                    'put hex colours in quotes: color: "#8b0000"' if eaten else HELP[key],
                )
            )
    regions = [k for k in REGION_KEYS if getattr(hint, k) is not None]
    if len(regions) > 1:
        problems.append(
            error_at(
                path,
                located.mark_for((*base, regions[1]), key=True),
                f"instance {i + 1} has more than one region ({', '.join(regions)})",
                "give exactly one of box, points, polygon or mask per instance (or label alone); "
                "split it into two instances",
            )
        )
    if not regions and hint.label is None:
        problems.append(
            error_at(
                path,
                item_mark,
                f"instance {i + 1} does not say where the thing is",
                "add label: (a detected thing), box:, points:, polygon: or mask:",
            )
        )
    if hint.index is not None and (regions or hint.label is None):
        problems.append(
            error_at(
                path,
                located.mark_for((*base, "index"), key=True),
                f"instance {i + 1}: index only applies to a label hint",
                "remove index: or the box/points/polygon/mask",
            )
        )
    # A drawn region with a label and no colour takes the folder rule's for that label (resolve and
    # `hints check` fail it, at this line, when no rule applies).
    colour_from_rule = bool(regions) and hint.label is not None
    if (
        hint.color is None
        and hint.text is None
        and not colour_from_rule
        and (*base, "color") not in located.null_scalars
    ):
        problems.append(
            error_at(
                path,
                item_mark,
                f"instance {i + 1} has neither color nor text",
                "add color: (e.g. color: navy) and/or text: (e.g. text: a navy coat)",
            )
        )
    if hint.color is not None:
        try:
            hint._color_hint = parse_color(hint.color)
        except HintError as exc:
            problems.append(
                error_at(
                    path, located.mark_for((*base, "color")), f"instance {i + 1}: {exc.message}", exc.hint
                )
            )
    if hint.box is not None:
        x0, y0, x1, y1 = hint.box
        if not (x1 > x0 and y1 > y0):
            problems.append(
                error_at(
                    path,
                    located.mark_for((*base, "box")),
                    f"instance {i + 1}: box {_fmt(hint.box)} is empty",
                    HELP["box"],
                )
            )
    for key, size in (("points", 2), ("polygon", 2)):
        for j, point in enumerate(getattr(hint, key) or []):
            if len(point) != size:
                problems.append(
                    error_at(
                        path,
                        located.mark_for((*base, key, j)),
                        f"instance {i + 1}: {key} item {j + 1} must be [x, y]",
                        HELP[key],
                    )
                )
    if (
        hint.polygon is not None
        and all(len(p) == 2 for p in hint.polygon)
        and _polygon_area(hint.polygon) <= 0.0
    ):
        problems.append(
            error_at(
                path,
                located.mark_for((*base, "polygon")),
                f"instance {i + 1}: polygon has no area",
                HELP["polygon"],
            )
        )
    if hint.mask is not None and _is_absolute(hint.mask):
        problems.append(
            error_at(
                path,
                located.mark_for((*base, "mask")),
                f"instance {i + 1}: mask path '{hint.mask}' is absolute",
                "write the path relative to the sidecar, inside the scan folder (e.g. masks/coat.png)",
            )
        )
    if scan_size is not None:
        problems.extend(_check_bounds(hint, i, located, path, scan_size))
    return problems


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _polygon_area(points: list[list[float]]) -> float:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    n = len(points)
    return abs(sum(xs[k] * ys[(k + 1) % n] - xs[(k + 1) % n] * ys[k] for k in range(n))) / 2.0


def _is_absolute(text: str) -> bool:
    return (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or text.startswith(("~", "\\"))
    )


def _check_bounds(
    hint: InstanceHint, i: int, located: Located, path: Path, scan_size: tuple[int, int]
) -> list[HintError]:
    """Coordinates outside the (oriented) scan are mistakes, not something to clip silently."""
    h, w = scan_size
    fix = f"the upright scan is {w} px wide and {h} px high; x runs 0..{w}, y runs 0..{h}"
    base = ("instances", i)
    problems = []
    if hint.box is not None:
        x0, y0, x1, y1 = hint.box
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            problems.append(
                error_at(
                    path,
                    located.mark_for((*base, "box")),
                    f"instance {i + 1}: box {_fmt(hint.box)} goes outside the {w}x{h} scan",
                    fix,
                )
            )
    for key, limit_inclusive in (("points", False), ("polygon", True)):
        for j, point in enumerate(getattr(hint, key) or []):
            if len(point) != 2:
                continue
            x, y = point
            inside = (0 <= x <= w and 0 <= y <= h) if limit_inclusive else (0 <= x < w and 0 <= y < h)
            if not inside:
                problems.append(
                    error_at(
                        path,
                        located.mark_for((*base, key, j)),
                        f"instance {i + 1}: {key} point {_fmt(point)} is outside the {w}x{h} scan",
                        fix,
                    )
                )
    return problems


def top_mapping(path: Path, data: Any, located: Located, what: str) -> tuple[dict | None, list[HintError]]:
    """The file's top-level mapping (an empty file is an empty one) and the loader's own problems;
    None when the file is not a block of ``key: value`` lines. Sidecars and folder rules files alike."""
    problems = [error_at(path, mark, msg, hint) for mark, msg, hint in located.problems]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(
            error_at(
                path,
                located.mark_for(()),
                f"a {what} must be a block of 'key: value' lines",
                "start with version: 1",
            )
        )
        return None, problems
    return data, problems


def _validate(
    path: Path,
    data: Any,
    located: Located,
    scan_size: tuple[int, int] | None,
    scan_root: Path | None = None,
) -> tuple[Sidecar | None, list[HintError]]:
    data, problems = top_mapping(path, data, located, "sidecar")
    if data is None:
        return None, problems
    top = {k: v for k, v in data.items() if k != "instances"}
    raw_instances = data.get("instances")
    if raw_instances is None and "instances" in data:
        raw_instances = []  # "instances:" with nothing under it: no hints, not an error
    if raw_instances is not None and not isinstance(raw_instances, list):
        problems.append(
            error_at(path, located.mark_for(("instances",)), "'instances' must be a list", HELP["instances"])
        )
        raw_instances = []
    try:
        header = Sidecar.model_validate(top)
    except ValidationError as exc:
        problems.extend(_translate(exc, (), located, path, Sidecar))
        header = None
    hints: list[InstanceHint] = []
    for i, item in enumerate(raw_instances or []):
        try:
            hint = InstanceHint.model_validate(item)
        except ValidationError as exc:
            problems.extend(_translate(exc, ("instances", i), located, path, InstanceHint))
            continue
        mark = located.mark_for(("instances", i))
        hint._line = mark.line + 1 if mark else 0
        hint._column = mark.column + 1 if mark else 0
        hint._position = i + 1
        mask_mark = located.mark_for(("instances", i, "mask")) if hint.mask is not None else None
        if mask_mark is not None:
            hint._mask_at = (mask_mark.line + 1, mask_mark.column + 1)
        problems.extend(_check_instance(hint, i, located, path, scan_size))
        if scan_root is not None and hint.mask is not None and not _is_absolute(hint.mask):
            problems.extend(_check_mask_file(hint, i, located, path, scan_root, scan_size))
        hints.append(hint)
    for j, label in enumerate(header.exclude if header else []):
        if not label.strip():
            problems.append(
                error_at(
                    path, located.mark_for(("exclude", j)), "exclude has an empty label", HELP["exclude"]
                )
            )
    if problems or header is None:
        return None, problems
    sidecar = Sidecar.model_construct(
        version=header.version,
        prompt=header.prompt,
        seed=header.seed,
        instances=hints,
        exclude=header.exclude,
    )
    return sidecar, []


def _check_mask_file(
    hint: InstanceHint,
    i: int,
    located: Located,
    path: Path,
    scan_root: Path,
    scan_size: tuple[int, int] | None,
) -> list[HintError]:
    """The resolve-time mask rules (inside the tree, readable, scan-sized), reported with the line."""
    try:
        check_mask_file(hint.mask or "", path, scan_root, scan_size)
    except HintError as exc:
        return [mask_error(hint, path, exc)]
    return []


def mask_error(hint: InstanceHint, path: Path | None, exc: HintError) -> HintError:
    """A mask file's problem at the hint's ``mask:`` value: the one form ``hints check`` and ``run`` give."""
    line, column = hint.mask_at if hint.mask_at != (0, 0) else (hint.line, hint.column)
    return HintError(
        f"instance {hint.position}: {exc.message}",
        path=path,
        line=line or None,
        column=column or None,
        hint=exc.hint or HELP["mask"],
    )


def _load(
    path: Path, max_bytes: int, scan_size: tuple[int, int] | None, scan_root: Path | None = None
) -> tuple[Sidecar | None, list[HintError]]:
    path = Path(path)
    try:
        data_bytes = read_capped(path, max_bytes)
        text = decode_utf8(path, data_bytes)
        data, located = parse_marked(path, text)
    except HintError as exc:
        return None, [exc]
    sidecar, problems = _validate(path, data, located, scan_size, scan_root)
    if sidecar is not None:
        sidecar._path = path
        sidecar._sha256 = hashlib.sha256(data_bytes).hexdigest()
    problems.sort(key=lambda e: (e.line or 0, e.column or 0))
    return sidecar, problems


def check_sidecar(
    path: Path,
    *,
    max_bytes: int,
    scan_size: tuple[int, int] | None = None,
    scan_root: Path | None = None,
) -> list[HintError]:
    """Every problem in the file, in line order (empty list: the sidecar is valid).

    ``scan_size`` is (height, width) of the upright scan; when given, boxes, points and polygons
    outside it are reported too. ``scan_root`` (the folder a run is given) turns on the mask-file
    rules ``run`` applies: the file exists, stays inside that folder (no '..' escape, no symlink
    out) and, with ``scan_size``, has the scan's size.
    """
    return _load(Path(path), max_bytes, scan_size, None if scan_root is None else Path(scan_root))[1]


def check_instance_count(sidecar: Sidecar, path: Path, cap: int) -> None:
    """Refuse a sidecar with more hints than ``hints.max_sidecar_instances``, before any region is drawn.

    Why: every drawn hint becomes a scan-sized mask; 8,000 boxes on one scan took gigabytes.
    """
    n = len(sidecar.instances)
    if n > cap:
        raise HintError(
            f"{n} instances, over the limit of {cap} per sidecar",
            path=path,
            hint="split the hints over fewer, larger regions, or raise hints.max_sidecar_instances",
        )


def parse_sidecar_text(
    text: str,
    path: Path,
    *,
    scan_size: tuple[int, int] | None = None,
    scan_root: Path | None = None,
) -> tuple[Sidecar | None, list[HintError]]:
    """(sidecar or None, problems) for text not yet on disk, reported as if it were the file ``path``.

    The browser editor validates what it is about to write with exactly the rules of
    :func:`check_sidecar`, so a save can never put a sidecar on disk that ``run`` would refuse.
    """
    path = Path(path)
    try:
        data, located = parse_marked(path, text)
    except HintError as exc:
        return None, [exc]
    root = None if scan_root is None else Path(scan_root)
    sidecar, problems = _validate(path, data, located, scan_size, root)
    if sidecar is not None:
        sidecar._path = path
        sidecar._sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    problems.sort(key=lambda e: (e.line or 0, e.column or 0))
    return sidecar, problems


def load_sidecar(path: Path, *, max_bytes: int, scan_size: tuple[int, int] | None = None) -> Sidecar:
    """Read and validate a sidecar; raise the first problem as :class:`HintError` (all on ``.problems``).

    Colours are parsed here (``InstanceHint.color_hint``) so a bad colour fails with its line number.
    """
    sidecar, problems = _load(Path(path), max_bytes, scan_size)
    if problems:
        raise first_problem(problems, path)
    assert sidecar is not None
    return sidecar


def first_problem(problems: list[HintError], path: Path) -> HintError:
    """The first of a file's problems, pointing at ``hints check`` for the rest (all on ``.problems``):
    what ``run`` fails a scan with for a bad sidecar or folder rules file."""
    first = problems[0]
    if len(problems) > 1:
        more = f"{len(problems) - 1} more problem(s) in this file: run `mtcolor-batch hints check {path}`"
        first = HintError(
            first.message,
            path=first.path,
            line=first.line,
            column=first.column,
            hint=f"{first.hint}; {more}" if first.hint else more,
        )
    first.problems = problems  # type: ignore[attr-defined]
    return first
