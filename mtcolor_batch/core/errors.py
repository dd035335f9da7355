"""Errors a user can act on, and the process exit codes they end in.

Every failure a user can fix is raised as a :class:`UserError` so that the CLI and the batch
runner can print it as one line naming the file (and line/column for YAML) without a traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
"""Everything asked for was done."""
EXIT_FAILED = 1
"""Some files failed (each is listed with its reason), or what a check command checked is bad."""
EXIT_USAGE = 2
"""A usage or setup error (bad option, missing model, locked output folder): nothing was processed."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C or SIGTERM; the same command resumes."""


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
        self.path = str(path) if path is not None else None
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
