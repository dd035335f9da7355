"""The guarded YAML loader: every YAML file a user hands the tool (sidecars, profiles) is read here.

Why one loader in ``core``: sidecars, profiles and discovery's mask lookup all read files a user (or
an archive) supplies, and each must get the same protections and the same file:line:column errors.

Safety: the file size is capped before it is read; only regular files are opened (a FIFO or device
is refused unopened); YAML is parsed with a SafeLoader subclass (``yaml.safe_load`` semantics: plain
data only, no Python tags); aliases (``*name``) are rejected outright, which makes "billion laughs"
alias bombs impossible rather than merely bounded, and nesting deeper than :data:`MAX_DEPTH` is
rejected. None of these files needs aliases: each is a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.regular import not_regular_reason, open_regular

__all__ = ["MAX_DEPTH", "Located", "decode_utf8", "error_at", "parse_marked", "read_capped", "read_yaml"]

MAX_DEPTH = 16
"""Deepest YAML nesting accepted (a sidecar needs 4: top, instances, item, point)."""

YamlPath = tuple[Any, ...]
"""Where a value sits: the keys and list indexes from the top, e.g. ``("instances", 0, "color")``."""


# -- YAML with marks ------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, mark: Mark, message: str, hint: str) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


class _MarkedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting; composition keeps every node's mark."""

    def __init__(self, stream: str, what: str = "sidecar") -> None:
        super().__init__(stream)
        self._depth = 0
        self._what = what

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
            raise _Rejected(
                event.start_mark,
                f"YAML alias '*{event.anchor}' is not allowed in {self._what}s",
                "write the value out in full; aliases are refused so a small file cannot expand "
                "into a huge one",
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
                raise _Rejected(
                    event.start_mark,
                    f"nesting deeper than {MAX_DEPTH} levels",
                    "a sidecar needs at most 4 levels (instances > item > points > [x, y])"
                    if self._what == "sidecar"
                    else f"a {self._what} needs at most 3 levels",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PLAIN_COLLECTIONS = frozenset({"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"})
"""Tags of untagged lists and blocks; any other tag on a collection is refused, as on a scalar
(before, ``!!set`` or ``!!python/object/apply`` on a list or block was silently dropped)."""


class Located:
    """Python data from the node tree plus the mark of every value and every mapping key."""

    def __init__(self, loader: _MarkedLoader, source_lines: list[str]) -> None:
        self.loader = loader
        self.lines = source_lines
        self.value_marks: dict[YamlPath, Mark] = {}
        self.key_marks: dict[YamlPath, Mark] = {}
        self.null_scalars: set[YamlPath] = set()
        self.problems: list[tuple[Mark, str, str]] = []

    def convert(self, node: yaml.Node, path: YamlPath) -> Any:
        self.value_marks[path] = node.start_mark
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self.loader.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                self.problems.append(
                    (
                        node.start_mark,
                        f"cannot read value: {_problem(exc)}",
                        "YAML tags (!!...) are not allowed: write plain text",
                    )
                )
                return None
            except ValueError:  # int() refuses more than 4300 digits (sys.get_int_max_str_digits)
                self.problems.append(
                    (node.start_mark, f"number too long ({len(node.value)} characters)", "write a number")
                )
                return None
            if value is None:
                self.null_scalars.add(path)
            if isinstance(value, float) and not math.isfinite(value):
                self.problems.append((node.start_mark, "value is not a finite number", "write a number"))
                return None
            return value
        if node.tag not in _PLAIN_COLLECTIONS:  # !!set, !!omap, !!python/object/apply: ...
            self.problems.append(
                (
                    node.start_mark,
                    f"YAML tag '{node.tag}' is not allowed",
                    "YAML tags (!!...) are not allowed: write a plain list or 'key: value' block",
                )
            )
            return None
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(
                        (key_node.start_mark, "a key must be a plain word", "write key: value")
                    )
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(
                        (
                            key_node.start_mark,
                            "YAML merge keys ('<<') are not allowed",
                            "write the keys out in full",
                        )
                    )
                    continue
                try:
                    key = self.loader.construct_object(key_node)
                except yaml.YAMLError as exc:
                    self.problems.append(
                        (key_node.start_mark, f"cannot read key: {_problem(exc)}", "write plain words")
                    )
                    continue
                except ValueError:  # an integer key of over 4300 digits
                    self.problems.append((key_node.start_mark, "key is a number too long", "write a word"))
                    continue
                if not isinstance(key, str):
                    self.problems.append(
                        (
                            key_node.start_mark,
                            f"key {key!r} is not a word",
                            "keys are names like color or box",
                        )
                    )
                    continue
                if key in out:
                    self.problems.append(
                        (
                            key_node.start_mark,
                            f"key '{key}' appears twice in the same block",
                            f"keep one '{key}:' (YAML would silently use only the last one)",
                        )
                    )
                    continue
                where = (*path, key)
                self.key_marks[where] = key_node.start_mark
                out[key] = self.convert(value_node, where)
            return out
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover - composer never makes it

    def mark_for(self, loc: Iterable[Any], *, key: bool = False) -> Mark | None:
        """Mark of the deepest known prefix of ``loc`` (a key's own mark when ``key``)."""
        path = tuple(loc)
        if key and path in self.key_marks:
            return self.key_marks[path]
        while path:
            if path in self.value_marks:
                return self.value_marks[path]
            path = path[:-1]
        return self.value_marks.get(())

    def comment_eaten_hex(self, path: YamlPath) -> bool:
        """True when ``color: #8b0000`` lost its value to YAML's comment rule (unquoted '#')."""
        mark = self.key_marks.get(path)
        if mark is None or path not in self.null_scalars:
            return False
        line = self.lines[mark.line] if mark.line < len(self.lines) else ""
        return "#" in line[mark.column :]


def _problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc)
    return str(problem).strip()


def error_at(path: Path, mark: Mark | None, message: str, hint: str | None) -> HintError:
    if mark is None:
        return HintError(message, path=path, hint=hint)
    return HintError(message, path=path, line=mark.line + 1, column=mark.column + 1, hint=hint)


def _syntax_hint(problem: str) -> str:
    if "\t" in problem or "\\t" in problem or "tab" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "put quotes around text that contains ': ' (a colon followed by a space)"
    return "check the indentation and quotes on this line and the one before"


# -- reading ----------------------------------------------------------------------------------------


def read_capped(path: Path, max_bytes: int, what: str = "sidecar") -> bytes:
    """The file's bytes, refusing anything but a regular file of at most ``max_bytes``.

    The size is checked before a byte is read, and a FIFO/socket/device is never opened.
    """
    try:
        reason = not_regular_reason(path)
        if reason is not None:
            raise HintError(f"{what} {reason}", path=path)
        size = path.stat().st_size
        if size > max_bytes:
            raise HintError(
                f"{what} is {size} bytes, over the {max_bytes}-byte limit",
                path=path,
                hint="sidecars are a few lines; raise hints.max_sidecar_bytes only if this one must be big"
                if what == "sidecar"
                else f"a {what} is a few lines",
            )
        with open_regular(path) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise HintError(f"cannot read {what}: {exc.strerror or exc}", path=path) from exc
    if len(data) > max_bytes:
        raise HintError(f"{what} grew past the {max_bytes}-byte limit while being read", path=path)
    return data


def read_yaml(path: Path, *, max_bytes: int, what: str = "sidecar") -> Any:
    """Plain data of a small YAML file read with the sidecar rules: size cap before reading, regular
    files only, UTF-8, SafeLoader without aliases, tags or deep nesting.

    The one guarded loader for every YAML a user hands the tool (sidecars in discovery, profiles):
    raises :class:`HintError` with file:line:col for the first problem.
    """
    path = Path(path)
    data_bytes = read_capped(path, max_bytes, what)
    text = decode_utf8(path, data_bytes, what)
    data, located = parse_marked(path, text, what)
    if located.problems:
        mark, message, hint = located.problems[0]
        raise error_at(path, mark, message, hint)
    return data


def decode_utf8(path: Path, data: bytes, what: str = "sidecar") -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise HintError(
            f"{what} is not UTF-8 text", path=path, line=line, column=column, hint="save the file as UTF-8"
        ) from exc


def parse_marked(path: Path, text: str, what: str = "sidecar") -> tuple[Any, Located]:
    """YAML text -> (plain data, marks). Syntax problems and refused constructs raise HintError."""
    loader = _MarkedLoader(text, what)
    located = Located(loader, text.splitlines())
    try:
        node = loader.get_single_node()
        data = located.convert(node, ()) if node is not None else None
    except _Rejected as exc:
        raise error_at(path, exc.mark, exc.message, exc.hint) from None
    except yaml.MarkedYAMLError as exc:
        problem = _problem(exc)
        context = exc.context_mark
        moved = context is not None and exc.problem_mark is not None and context.line != exc.problem_mark.line
        if exc.context and moved and context is not None:
            problem += (
                f" {exc.context.strip()} that starts at line {context.line + 1}, column {context.column + 1}"
            )
        raise error_at(
            path, exc.problem_mark, f"YAML syntax error: {problem}", _syntax_hint(problem)
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML parse error is marked
        raise HintError(f"YAML error: {exc}", path=path) from None
    except RecursionError:
        raise HintError(f"nesting deeper than {MAX_DEPTH} levels", path=path) from None
    finally:
        loader.dispose()
    return data, located
