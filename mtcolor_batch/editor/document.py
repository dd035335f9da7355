"""A sidecar as the editor's JSON document, and back to YAML text with the user's comments kept.

Why round-trip YAML (ruamel.yaml's ``rt`` mode) for writing: a sidecar is an archival record a
person also edits by hand; comments ("# the tram"), key order, quoting and keys the editor has no
field for must survive a save untouched. Parsing for *validation* stays with
:mod:`mtcolor_batch.hints.schema` (the safe loader ``hints check`` and ``run`` use); ruamel only
carries the layout. Existing instance blocks are edited in place (matched by their position in the
file, ``orig``), so an item's comments move with it when hints are reordered.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.yaml_guarded import parse_marked
from mtcolor_batch.hints.schema import InstanceHint, Sidecar

HINT_KEYS: tuple[str, ...] = tuple(InstanceHint.model_fields)
"""Instance keys the editor has a field for (the schema's, in the schema's order)."""
TOP_KEYS = ("prompt", "seed", "exclude")
_LIST_KEYS = {"box", "points", "polygon"}


class DocumentError(HintError):
    """The current file cannot be carried through a round trip (broken YAML syntax, not a mapping)."""


MAX_DOC_DEPTH = 8
"""Nesting a document from the page can have (doc > instances > hint > polygon > point is 5)."""
_SCALAR = (str, int, float, bool, type(None))


def check_document(doc: object, max_uploads: int) -> dict[str, Any]:
    """The page's document if it has the shape :func:`to_document` gives, else one-line DocumentError.

    Why: the request body is the one input a hostile page controls whole; a list where an object
    belongs, a NUL or control character in a name, or a very deep value must be a 400 naming the
    field, never a traceback deep in the YAML writer. Values themselves (is this box valid?) are
    left to the sidecar rules, which report them like ``hints check``.
    """
    if not isinstance(doc, dict):
        raise DocumentError("'doc' must be an object")
    _check_values(doc)
    for key in ("prompt", "seed"):
        if not isinstance(doc.get(key), _SCALAR):
            raise DocumentError(f"'{key}' must be text or a number")
    for key in ("exclude", "extra"):
        _check_names(doc.get(key), f"'{key}'")
    hints = doc.get("instances")
    if hints is None:
        return doc
    if not isinstance(hints, list):
        raise DocumentError("'instances' must be a list of hints")
    for k, hint in enumerate(hints, 1):
        if not isinstance(hint, dict):
            raise DocumentError(f"hint {k} must be an object")
        orig = hint.get("orig")
        if orig is not None and (not isinstance(orig, int) or isinstance(orig, bool)):
            raise DocumentError(f"hint {k}: 'orig' must be a whole number or null")
        if not isinstance(hint.get("upload"), (str, type(None))):
            raise DocumentError(f"hint {k}: 'upload' must name a painted mask")
        _check_names(hint.get("extra"), f"hint {k}: 'extra'")
    uploads = sum(1 for hint in hints if hint.get("upload") is not None)
    if uploads > max_uploads:  # counted per hint: one upload named by many hints writes many files
        raise DocumentError(f"{uploads} hints with a painted mask; at most {max_uploads} per save")
    return doc


def _check_names(value: object, where: str) -> None:
    """A list of names (what the page sends), or the object :func:`to_document` gave (its keys)."""
    if value is not None and not (isinstance(value, (list, dict)) and all(isinstance(v, str) for v in value)):
        raise DocumentError(f"{where} must be a list of names")


def _check_values(doc: dict[str, Any]) -> None:
    """No value deeper than :data:`MAX_DOC_DEPTH`, no control character in any text (walked without
    recursion, so a deep value cannot exhaust the stack here either)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DOC_DEPTH:
            raise DocumentError(f"the document is nested deeper than {MAX_DOC_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth) for k in value)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            shown = value.encode("unicode_escape").decode("ascii")[:60]
            raise DocumentError(f"text '{shown}' holds a control character (NUL, newline...)")


def _yaml() -> YAML:
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout of `hints init` and the README examples
    yaml.width = 4096  # never fold a long prompt onto a second line
    return yaml


def _plain(value: Any) -> Any:
    """ruamel's commented/scalar types -> JSON-ready Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _guard(text: str, path: str) -> None:
    """Parse ``text`` with the guarded loader (:mod:`mtcolor_batch.core.yaml_guarded`) before ruamel
    sees it: an alias bomb ("billion laughs"), deep nesting or a syntax error stops here as one line.

    Why: ruamel's round-trip loader keeps aliases as shared nodes, and turning them into the page's
    JSON expands them; a 600-byte sidecar grew the server past 1.7 GB. ``run``, ``hints check`` and
    the editor thus accept exactly the same files; ruamel only carries the layout of accepted ones.
    """
    try:
        parse_marked(Path(path), text)
    except HintError as exc:
        raise DocumentError(exc.message, path=path, line=exc.line, column=exc.column, hint=exc.hint) from None


def _load_root(text: str, path: str) -> CommentedMap | None:
    _guard(text, path)
    try:
        root = _yaml().load(text) if text.strip() else None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DocumentError(
            "the sidecar has a YAML syntax error the editor cannot carry through a save",
            path=path,
            line=mark.line + 1 if mark is not None else None,
            hint="fix that line in a text editor (`mtcolor-batch hints check` shows it), then reload",
        ) from None
    except ValueError as exc:  # a value ruamel cannot build (an integer of over 4300 digits)
        raise DocumentError(
            f"the sidecar has a value the editor cannot carry through a save ({str(exc)[:80]})",
            path=path,
            hint="fix it in a text editor (`mtcolor-batch hints check` shows the line), then reload",
        ) from None
    if root is not None and not isinstance(root, CommentedMap):
        raise DocumentError(
            "the sidecar is not a block of 'key: value' lines", path=path, hint="start it with version: 1"
        )
    return root


def to_document(text: str, path: str = "sidecar") -> dict[str, Any]:
    """Sidecar text -> the editor's document (no validation: a broken file still opens)."""
    root = _load_root(text, path) or CommentedMap()
    raw_instances = root.get("instances")
    instances = []
    for k, item in enumerate(raw_instances if isinstance(raw_instances, list) else []):
        item = item if isinstance(item, Mapping) else {}
        hint: dict[str, Any] = {key: _plain(item.get(key)) for key in HINT_KEYS}
        hint["orig"] = k
        hint["extra"] = {str(key): _plain(v) for key, v in item.items() if key not in HINT_KEYS}
        instances.append(hint)
    exclude = root.get("exclude")
    return {
        "prompt": _plain(root.get("prompt")),
        "seed": _plain(root.get("seed")),
        "exclude": _plain(exclude) if isinstance(exclude, list) else [],
        "instances": instances,
        "extra": {str(k): _plain(v) for k, v in root.items() if k not in Sidecar.model_fields},
    }


def _styled(key: str, value: Any) -> Any:
    """Coordinates as one-line flow lists (``box: [10, 20, 30, 40]``), like the README writes them."""
    if key in _LIST_KEYS and isinstance(value, list):
        seq = CommentedSeq([CommentedSeq(v) if isinstance(v, list) else v for v in value])
        seq.fa.set_flow_style()
        for child in seq:
            if isinstance(child, CommentedSeq):
                child.fa.set_flow_style()
        return seq
    return value


def _set(mapping: CommentedMap, key: str, value: Any, before: Sequence[str] = ()) -> None:
    """Set, keep (when unchanged, so its quoting and layout stay) or delete (``None``) one key."""
    if value is None or value == [] and key == "exclude":
        if key in mapping:
            del mapping[key]
        return
    if key in mapping:
        if _plain(mapping[key]) != value:
            mapping[key] = _styled(key, value)
        return
    keys = list(mapping)
    for anchor in before:
        if anchor in keys:
            mapping.insert(keys.index(anchor), key, _styled(key, value))
            return
    mapping[key] = _styled(key, value)


def _hint_map(old: Any, hint: Mapping[str, Any]) -> CommentedMap:
    mapping = old if isinstance(old, CommentedMap) else CommentedMap()
    keep_extra = set(hint.get("extra") or ())
    for key in list(mapping):
        if key not in HINT_KEYS and key not in keep_extra:
            del mapping[key]
    for k, key in enumerate(HINT_KEYS):
        _set(mapping, key, hint.get(key), before=HINT_KEYS[k + 1 :])
    return mapping


def apply_document(text: str, doc: Mapping[str, Any], path: str = "sidecar") -> str:
    """The new sidecar text: ``doc``'s values written into ``text``, everything else left as it was.

    Unknown top-level keys stay only if ``doc["extra"]`` still names them (the editor shows them
    and lets the user remove them; their values always come from the file, never from the page).
    """
    root = _load_root(text, path)
    if root is None:
        root = CommentedMap()
    if "version" not in root:
        root.insert(0, "version", 1)
    keep_extra = set(doc.get("extra") or ())
    for key in list(root):
        if key not in Sidecar.model_fields and key not in keep_extra:
            del root[key]
    _set(root, "prompt", doc.get("prompt") or None, before=("seed", "instances", "exclude"))
    _set(root, "seed", doc.get("seed"), before=("instances", "exclude"))
    _set(root, "exclude", list(doc.get("exclude") or []))
    if isinstance(root.get("exclude"), CommentedSeq):
        root["exclude"].fa.set_flow_style()
    old_seq = root.get("instances")
    old_items = list(old_seq) if isinstance(old_seq, list) else []
    new_items: list[CommentedMap] = []
    origins: list[int | None] = []
    for hint in doc.get("instances") or []:
        orig = hint.get("orig")
        old = old_items[orig] if isinstance(orig, int) and 0 <= orig < len(old_items) else None
        new_items.append(_hint_map(old, hint))
        origins.append(orig if old is not None else None)
    if isinstance(old_seq, CommentedSeq):
        # Comments after an item are stored by index: move them with their item.
        old_comments = dict(old_seq.ca.items)
        old_seq.clear()
        old_seq.ca.items.clear()
        old_seq.extend(new_items)
        for new_index, orig in enumerate(origins):
            if orig is not None and orig in old_comments:
                old_seq.ca.items[new_index] = old_comments[orig]
    elif new_items or "instances" in root:
        seq = CommentedSeq(new_items)
        if "instances" in root:
            root["instances"] = seq
        else:
            _set(root, "instances", seq, before=("exclude",))
    buffer = io.StringIO()
    _yaml().dump(root, buffer)
    return buffer.getvalue()


def instance_lines(text: str) -> list[int]:
    """1-based first line of each ``instances`` item in ``text`` (to pin an error to its hint)."""
    try:
        _guard(text, "sidecar")
        root = _yaml().load(text)
    except (YAMLError, DocumentError, ValueError):
        return []
    seq = root.get("instances") if isinstance(root, CommentedMap) else None
    if not isinstance(seq, CommentedSeq):
        return []
    return [seq.lc.item(k)[0] + 1 for k in range(len(seq))]
