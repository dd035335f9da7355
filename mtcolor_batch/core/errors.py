"""Errors a user can act on, and the process exit codes they end in.

Every failure a user can fix is raised as a :class:`UserError` so that the CLI and the batch
runner can print it as one line naming the file (and line/column for YAML) without a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EXIT_OK = 0
"""Everything asked for was done."""
EXIT_FAILED = 1
"""Some files failed (each is listed with its reason), or what a check command checked is bad."""
EXIT_USAGE = 2
"""A usage or setup error (bad option, missing model, locked output folder): nothing was processed."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C or SIGTERM; the same command resumes."""


def path_text(path: str | Path) -> str:
    """A path as valid UTF-8 text: bytes of an old archive's name that are not UTF-8 become ``\\xNN``.

    Why: names from old Windows/Mac archives (Latin-1 ``caf\\xe9.png``) reach Python as lone
    surrogates, which SQLite, JSON records and XMP refuse to encode. Valid names are unchanged, so
    journal keys and output names of ordinary files are the same as before.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]"
)


def visible_text(text: str) -> str:
    """``text`` with control and bidirectional-override characters written as ``\\xNN`` / ``\\uNNNN``.

    Why: a file name may hold them; shown raw, a right-to-left override makes ``gpj.exe`` read as
    ``exe.jpg`` in a report, and control characters make XMP invalid XML or break a one-line
    message. Only for showing and embedding: journal keys and output names keep :func:`path_text`.
    """
    return _INVISIBLE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class UserError(Exception):
    """A problem with the user's input or setup, printed as one actionable line."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = path_text(path) if path is not None else None
        self.line = line
        self.column = column
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.path:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = f"{where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ScanError(UserError):
    """A scan cannot be read: corrupt, truncated, empty, too large or not an image."""


class HintError(UserError):
    """A sidecar hint file is invalid."""


class ModelError(UserError):
    """A model bundle is missing, incomplete, or fails verification."""


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota: the folder's fault, not a file's.

    Why its own question: a full disk fails every later file alike, so the run stops and resumes
    once space is freed, instead of failing each file (and leaving them to ``--retry-failed``).
    """
    import errno

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(current).lower():  # SQLite: "database or disk is full"
            return True
        current = current.__cause__ or current.__context__
    return False
