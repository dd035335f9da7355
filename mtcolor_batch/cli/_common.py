"""What every command shares: the one way to report a user error and leave with an exit code."""

from __future__ import annotations

import typer

from mtcolor_batch.core.errors import EXIT_USAGE, UserError


def print_error(exc: UserError) -> None:
    """``error: <one line>`` on stderr, never wrapped, so scripts can grep the file name out of it."""
    typer.echo(f"error: {exc.one_line()}", err=True)


def fail(exc: UserError, code: int = EXIT_USAGE) -> typer.Exit:
    """Report ``exc`` and return the Exit to raise: ``raise fail(exc) from None``.

    Usage and setup errors exit 2 (the default); a command whose job is to check something
    (``models verify``) exits 1 when what it checked is bad.
    """
    print_error(exc)
    return typer.Exit(code)
