"""The command line: a thin Typer shell over the stages.

Each command group lives in its own module here and only parses options, calls the library and
prints; exit codes: 0 all good, 1 some files failed or checks found problems, 2 usage error.
"""

from __future__ import annotations

import typer

from mtcolor_batch import __version__

app = typer.Typer(
    name="mtcolor-batch",
    help="Colorize archives of black-and-white scans with MT-Color, resumably, with provenance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtcolor-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Colorize archives of black-and-white scans with MT-Color."""


# Command groups register themselves here, one module each (keep this list sorted).


def main() -> None:
    app()
