"""The editor's "Folder rules" panel: read, check and save the ``mtcolor-folder.yaml`` nearest a scan.

Why text, not a form: a rules file written by ``hints survey`` is mostly comments (the labels found,
how often); a form would drop them on the first save. The panel edits the text, checks every draft
with the run's own validator (:func:`mtcolor_batch.hints.folder_rules.parse_folder_text`), and adds
a rule as text, colour picked with the same colour search as hints.

Safety is the session's: the only file this writes is ``mtcolor-folder.yaml`` in a folder of the
session's scan tree, atomically, after the same ETag check as a sidecar save (a file changed since
the page loaded it is not overwritten).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.fs import atomic_write_bytes
from mtcolor_batch.core.yaml_guarded import decode_utf8, read_capped
from mtcolor_batch.editor.session import NO_FILE, ConflictError, EditorSession
from mtcolor_batch.hints.folder_rules import parse_folder_text
from mtcolor_batch.scan.folder_files import FOLDER_RULES_NAME, folder_rule_files, is_folder_rules_name

WHAT = "folder rules file"


def add_rule_text(text: str, label: str, color: str = "", rule_text: str = "") -> str:
    """``text`` with one more label rule at the end of its ``instances:`` block (comments kept).

    Values are written JSON-quoted, which YAML reads as the same strings whatever they hold.
    """
    item = [f"  - label: {json.dumps(label.strip())}"]
    if color.strip():
        item.append(f"    color: {json.dumps(color.strip())}")
    if rule_text.strip():
        item.append(f"    text: {json.dumps(rule_text.strip())}")
    lines = text.splitlines()
    start = next(
        (k for k, ln in enumerate(lines) if ln.split("#", 1)[0].rstrip() in ("instances:", "instances: []")),
        None,
    )
    if start is None:
        body = "\n".join(lines).rstrip("\n")
        return (body + "\n" if body else "version: 1\n") + "instances:\n" + "\n".join(item) + "\n"
    lines[start] = "instances:"
    end = start + 1  # the block runs to the next top-level key (a line at column 0 that is not a comment)
    while end < len(lines) and not (lines[end][:1].strip() and not lines[end].startswith("#")):
        end += 1
    return "\n".join([*lines[:end], *item, *lines[end:]]) + "\n"


class FolderPanel:
    """The panel's operations for one editor session (one scan tree)."""

    def __init__(self, session: EditorSession) -> None:
        self.session = session

    def target(self, rel: str) -> Path:
        """The rules file nearest the scan (the one that speaks last for it), or the scan's own
        folder's when none applies yet."""
        scan = self.session.scan_path(rel)
        found = folder_rule_files(scan, self.session.root)
        return found[-1] if found else scan.parent / FOLDER_RULES_NAME

    def _read(self, path: Path) -> tuple[str, str]:
        if not path.exists():
            return "", NO_FILE
        self.session.inside(path)
        data = read_capped(path, self.session.max_sidecar_bytes, WHAT)
        return decode_utf8(path, data, WHAT), hashlib.sha256(data).hexdigest()

    def _verdict(self, path: Path, text: str) -> dict[str, Any]:
        found, problems = parse_folder_text(text, path, self.session.root)
        rules = []
        for rule in found.rules if found is not None else ():
            rules.append(
                {
                    "label": rule.label,
                    "index": rule.index,
                    "color": rule.color.name if rule.color is not None else None,
                    "swatch": self.session.swatch(rule.color.name) if rule.color is not None else None,
                    "text": rule.text,
                    "line": rule.line,
                }
            )
        return {
            "problems": [
                {
                    "line": p.line,
                    "column": p.column,
                    "message": p.message,
                    "fix": p.hint,
                    "text": p.one_line(),
                }
                for p in problems
            ],
            "rules": rules,
        }

    def load(self, rel: str) -> dict[str, Any]:
        """The nearest rules file of a scan: its text, ETag, check, the files above it, what it covers."""
        path = self.target(rel)
        text, etag = self._read(path)
        scan = self.session.scan_path(rel)
        applying = [self.session.relative(p) for p in folder_rule_files(scan, self.session.root)]
        folder = path.parent
        covers = sum(1 for p in self.session.scans.values() if p.is_relative_to(folder))
        return {
            "path": self.session.relative(path),
            "exists": etag != NO_FILE,
            "etag": etag,
            "text": text,
            "applying": applying,
            "covers": covers,
            **self._verdict(path, text),
        }

    def check(self, rel: str, text: str, add: dict[str, Any] | None = None) -> dict[str, Any]:
        """The draft's problems and rules as ``hints check`` sees them; with ``add``, the draft with
        one more rule (``{"label", "color", "text"}``) first."""
        if add is not None:
            label = str(add.get("label") or "").strip()
            if not label:
                raise HintError("a rule needs a label", hint="write the label the detector uses, e.g. tram")
            text = add_rule_text(text, label, str(add.get("color") or ""), str(add.get("text") or ""))
        return {"text": text, **self._verdict(self.target(rel), text)}

    def save(self, rel: str, etag: str, text: str) -> dict[str, Any]:
        """Validate and write the nearest rules file; refuse a stale ETag (:class:`ConflictError`).

        Every cached scan is forgotten: a rule change can recolour any scan below the file.
        """
        path = self.target(rel)
        if not is_folder_rules_name(path.name):  # pragma: no cover - target() only names this file
            raise HintError("refusing to write a file that is not a folder rules file", path=path)
        data = text.encode("utf-8")
        if len(data) > self.session.max_sidecar_bytes:
            raise HintError(
                f"the {WHAT} would be over the {self.session.max_sidecar_bytes}-byte limit", path=path
            )
        with self.session.write_lock:
            _, current = self._read(path)
            if current != etag:
                raise ConflictError(
                    f"the {WHAT} changed since this page loaded it (another tab or program saved it)",
                    path=path,
                    hint="nothing was written; reload to see the other version, then redo your change",
                )
            verdict = self._verdict(path, text)
            if verdict["problems"]:
                return {"saved": False, **verdict}
            self.session.inside(path)
            digest = atomic_write_bytes(path, data)
            self.session.forget()
        return {"saved": True, "etag": digest, "path": self.session.relative(path), **verdict}
