"""Folder rules (``mtcolor-folder.yaml``): colour facts for every scan in a folder and below.

Why: archives are kept in series, and the same tram, uniform or car recurs in hundreds of scans.
One rules file says its colour once; the chain here says, for one scan, which rule wins:

- a rules file applies to every scan in its folder and below (from the run's scan root down);
- the nearest folder's rules for a label replace a farther folder's rules for that label, and a
  nearer ``exclude`` drops a farther rule (and a nearer rule lifts a farther ``exclude``);
- the scan's own sidecar wins over every folder rule (``hints.resolve`` applies that last step).

A rules file is a sidecar restricted to what makes sense for many scans: ``prompt``,
``negative_prompt``, ``exclude`` and label ``instances`` (``color`` and/or ``text``, optional
``index``). Regions (box, points, polygon, mask) and ``seed`` belong to one scan and are refused
with a clear error. It is read with the sidecar's guarded loader and validated with the sidecar's
own messages (file:line:column, did-you-mean), so ``hints check``, ``run`` and the editor agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.types import ColorHint
from mtcolor_batch.core.yaml_guarded import Located, decode_utf8, error_at, parse_marked, read_capped
from mtcolor_batch.hints.schema import (
    REGION_KEYS,
    InstanceHint,
    _check_instance,
    _Strict,
    _translate,
    first_problem,
    top_mapping,
)
from mtcolor_batch.scan.folder_files import FOLDER_RULES_NAME, folder_rule_files, rules_relpath

__all__ = [
    "FolderChain",
    "FolderFile",
    "Rule",
    "check_folder_file",
    "folder_chain",
    "label_colour",
    "load_folder_file",
    "missing_colour_errors",
    "needs_colour",
    "no_colour_error",
    "norm_label",
    "parse_folder_text",
]

WHAT = "folder rules file"
SCAN_ONLY_HINT = "regions belong to one scan: draw them in its sidecar, where label: alone takes this colour"


def norm_label(text: str) -> str:
    """Labels compare case- and spacing-insensitively (``Tram_Car`` is ``tram car``), as hints do."""
    return " ".join(text.strip().lower().replace("_", " ").split())


class _Header(_Strict):
    """The top-level keys a rules file may hold (its did-you-mean vocabulary)."""

    version: Literal[1] = Field(1, description="Format version; only 1 exists.")
    prompt: str | None = Field(None, min_length=1, description="Global text for every scan below.")
    negative_prompt: str | None = Field(None, min_length=1, description="Negative text for every scan below.")
    exclude: list[str] = Field(default_factory=list, description="Detected labels not to use as instances.")
    instances: list[Any] = Field(default_factory=list, description="Label rules (validated one by one).")


_RuleItem = create_model(  # an instance hint without regions: did-you-mean never offers box:
    "_RuleItem",
    __base__=_Strict,
    **{
        k: (InstanceHint.model_fields[k].annotation, InstanceHint.model_fields[k])
        for k in ("label", "index", "color", "text")
    },  # type: ignore[call-overload]
)


@dataclass(frozen=True)
class Rule:
    """One label rule of one rules file, and where it is written (for provenance and warnings)."""

    label: str
    index: int | None
    color: ColorHint | None
    text: str | None
    line: int
    origin: str  # "<path relative to the scan root>:<line>"


@dataclass(frozen=True)
class FolderFile:
    """One validated ``mtcolor-folder.yaml``."""

    path: Path
    relpath: str  # posix, relative to the scan root: how provenance names it
    sha256: str
    prompt: str | None = None
    negative_prompt: str | None = None
    exclude: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


@dataclass
class FolderChain:
    """What the folder files above one scan say, merged nearest-wins (before its sidecar)."""

    files: list[FolderFile] = field(default_factory=list)  # farthest first
    rules: dict[str, list[Rule]] = field(default_factory=dict)  # normalised label -> nearest file's rules
    exclude: set[str] = field(default_factory=set)  # normalised labels
    prompt: str | None = None
    negative_prompt: str | None = None

    @property
    def digests(self) -> dict[str, str]:
        """{relpath: sha256} of every applying file: the fingerprint's and the record's part."""
        return {f.relpath: f.sha256 for f in self.files}

    def queries(self) -> list[str]:
        """Labels the detector should look for in this scan because a rule names them."""
        return [rules[0].label for key, rules in self.rules.items() if key not in self.exclude]

    def colour_rule(self, label: str) -> Rule | None:
        """The rule that colours a drawn sidecar region with this label and no colour of its own.

        A rule without ``index`` (it speaks for every such thing) is preferred; else the first.
        """
        rules = self.rules.get(norm_label(label)) or []
        plain = [r for r in rules if r.index is None]
        return (plain or rules)[0] if rules else None


NO_FOLDER_RULES = FolderChain()


def label_colour(
    hint: InstanceHint, hints: Sequence[InstanceHint], chain: FolderChain
) -> InstanceHint | Rule | None:
    """Where a drawn hint with only a ``label`` takes its colour and text from: the same sidecar's
    label hint for that label (without ``index``: the sidecar wins), else the folder rule; None
    when neither exists (:func:`no_colour_error`)."""
    key = norm_label(hint.label or "")
    for other in hints:
        if other.region == "label" and other.index is None and norm_label(other.label or "") == key:
            return other
    return chain.colour_rule(hint.label or "")


def needs_colour(hint: InstanceHint) -> bool:
    """A drawn region with a label and no colour or text: the folder rule (or label hint) colours it."""
    return hint.region != "label" and hint.color is None and hint.text is None


def no_colour_error(hint: InstanceHint, path: Path | None) -> HintError:
    """The one message ``run``, ``hints check`` and the editor give a label-only region nothing colours."""
    label = (hint.label or "").strip()
    return HintError(
        f"instance {hint.position}: '{label}' has neither color nor text, "
        f"and no folder rule colours '{label}'",
        path=path,
        line=hint.line,
        column=hint.column,
        hint=f"add color: or text:, or a rule for this label in {FOLDER_RULES_NAME}",
    )


def missing_colour_errors(
    hints: Sequence[InstanceHint], path: Path | None, chain: FolderChain
) -> list[HintError]:
    """Every drawn label-only hint of a sidecar that nothing colours."""
    return [
        no_colour_error(h, path) for h in hints if needs_colour(h) and label_colour(h, hints, chain) is None
    ]


def _chain(files: Sequence[FolderFile]) -> FolderChain:
    chain = FolderChain(files=list(files))
    for f in files:  # farthest first, so each nearer file overrides what came before
        for label in f.exclude:
            key = norm_label(label)
            chain.exclude.add(key)
            chain.rules.pop(key, None)
        mine: dict[str, list[Rule]] = {}
        for rule in f.rules:
            mine.setdefault(norm_label(rule.label), []).append(rule)
        for key, rules in mine.items():
            chain.rules[key] = rules
            chain.exclude.discard(key)
        chain.prompt = f.prompt or chain.prompt
        chain.negative_prompt = f.negative_prompt or chain.negative_prompt
    return chain


def folder_chain(image_path: Path, scan_root: Path, max_bytes: int) -> FolderChain:
    """Load and merge the rules files that apply to ``image_path``; raise the first problem.

    A broken rules file fails the scans it covers (each with the file's own line and column), never
    the run: the other scans go on.
    """
    files = [
        load_folder_file(p, scan_root, max_bytes=max_bytes) for p in folder_rule_files(image_path, scan_root)
    ]
    return _chain(files) if files else NO_FOLDER_RULES


# -- validating -------------------------------------------------------------------------------------


def _validate(
    path: Path, relpath: str, data: Any, located: Located, sha256: str
) -> tuple[FolderFile | None, list[HintError]]:
    data, problems = top_mapping(path, data, located, WHAT)
    if data is None:
        return None, problems
    top = {k: v for k, v in data.items() if k != "instances"}
    if "seed" in top:
        del top["seed"]
        problems.append(
            error_at(
                path,
                located.mark_for(("seed",), key=True),
                f"seed is not allowed in a {WHAT}",
                "a seed belongs to one scan: put it in that scan's sidecar",
            )
        )
    header: _Header | None
    try:
        header = _Header.model_validate(top)
    except ValidationError as exc:
        problems.extend(_translate(exc, (), located, path, _Header))
        header = None
    raw = data.get("instances")
    if raw is not None and not isinstance(raw, list):
        problems.append(
            error_at(
                path,
                located.mark_for(("instances",)),
                "'instances' must be a list",
                "start each rule with '- '",
            )
        )
        raw = []
    rules: list[Rule] = []
    seen: dict[tuple[str, int | None], int] = {}
    for i, item in enumerate(raw or []):
        base = ("instances", i)
        if isinstance(item, dict):
            drawn = [k for k in REGION_KEYS if k in item]
            for key in drawn:
                problems.append(
                    error_at(
                        path,
                        located.mark_for((*base, key), key=True),
                        f"instance {i + 1}: {key} is not allowed in a {WHAT}",
                        SCAN_ONLY_HINT,
                    )
                )
            item = {k: v for k, v in item.items() if k not in REGION_KEYS}
            if drawn:
                continue
            if "label" not in item:
                problems.append(
                    error_at(
                        path,
                        located.mark_for(base),
                        f"instance {i + 1} has no label",
                        "a folder rule names what it colours: label: tram (a word the detector uses)",
                    )
                )
                continue
        try:
            _RuleItem.model_validate(item)
        except ValidationError as exc:
            problems.extend(_translate(exc, base, located, path, _RuleItem))
            continue
        hint = InstanceHint.model_validate(item)  # the same fields: the sidecar's own checks apply
        mark = located.mark_for(base)
        line = mark.line + 1 if mark else 0
        hint._line, hint._column, hint._position = line, (mark.column + 1 if mark else 0), i + 1
        found = _check_instance(hint, i, located, path, None)
        problems.extend(found)
        if found or hint.label is None:
            continue
        which = (norm_label(hint.label), hint.index)
        if which in seen:
            problems.append(
                error_at(
                    path,
                    mark,
                    f"instance {i + 1}: '{hint.label}'"
                    + (f" index {hint.index}" if hint.index is not None else "")
                    + f" already has a rule at line {seen[which]}",
                    "keep one rule per label, or give each an index: (1 = leftmost)",
                )
            )
            continue
        seen[which] = line
        rules.append(
            Rule(
                label=hint.label.strip(),
                index=hint.index,
                color=hint.color_hint,
                text=hint.text,
                line=line,
                origin=f"{relpath}:{line}",
            )
        )
    excluded = [] if header is None else list(header.exclude)
    for j, label in enumerate(excluded):
        if not label.strip():
            problems.append(
                error_at(
                    path,
                    located.mark_for(("exclude", j)),
                    "exclude has an empty label",
                    "write exclude: [sky, water]",
                )
            )
        elif any(norm_label(r.label) == norm_label(label) for r in rules):
            problems.append(
                error_at(
                    path,
                    located.mark_for(("exclude", j)),
                    f"'{label}' is both excluded and given a rule in this file",
                    "remove it from exclude: or remove its rule",
                )
            )
    if problems or header is None:
        return None, problems
    return (
        FolderFile(
            path=path,
            relpath=relpath,
            sha256=sha256,
            prompt=header.prompt,
            negative_prompt=header.negative_prompt,
            exclude=tuple(header.exclude),
            rules=tuple(rules),
        ),
        [],
    )


def _sorted(problems: list[HintError]) -> list[HintError]:
    return sorted(problems, key=lambda e: (e.line or 0, e.column or 0))


def parse_folder_text(
    text: str, path: Path, scan_root: Path | None = None
) -> tuple[FolderFile | None, list[HintError]]:
    """(rules file or None, problems) for text not yet on disk, as if it were ``path`` (the editor)."""
    path = Path(path)
    try:
        data, located = parse_marked(path, text, WHAT)
    except HintError as exc:
        return None, [exc]
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    found, problems = _validate(path, rules_relpath(path, scan_root), data, located, sha)
    return found, _sorted(problems)


def check_folder_file(
    path: Path, *, max_bytes: int, scan_root: Path | None = None
) -> tuple[FolderFile | None, list[HintError]]:
    """Every problem of a rules file on disk, in line order (the file itself when there is none)."""
    path = Path(path)
    try:
        data_bytes = read_capped(path, max_bytes, WHAT)
        text = decode_utf8(path, data_bytes, WHAT)
        data, located = parse_marked(path, text, WHAT)
    except HintError as exc:
        return None, [exc]
    sha = hashlib.sha256(data_bytes).hexdigest()
    found, problems = _validate(path, rules_relpath(path, scan_root), data, located, sha)
    return found, _sorted(problems)


def load_folder_file(path: Path, scan_root: Path | None = None, *, max_bytes: int) -> FolderFile:
    """A validated rules file; its first problem raised (with a pointer to ``hints check`` for more)."""
    found, problems = check_folder_file(path, max_bytes=max_bytes, scan_root=scan_root)
    if problems:
        raise first_problem(problems, path)
    assert found is not None
    return found
