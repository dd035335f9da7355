"""The command line: a thin Typer shell over the stages.

Each command group lives in its own module here and only parses options, calls the library and
prints; exit codes: 0 all good, 1 some files failed or checks found problems, 2 usage error.
"""

from __future__ import annotations

import os
import signal
import sys

import typer


def quiet_libraries() -> None:
    """Hide the per-component weight-loading bars and library chatter: our own progress and one-line
    errors are what a user reads. huggingface_hub reads these variables once, when it is first
    imported, and the command modules below import it, so this runs before any of them (bench
    scripts call it too, before they import diffusers)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


quiet_libraries()

from mtcolor_batch import __version__  # noqa: E402
from mtcolor_batch.core.errors import EXIT_INTERRUPTED  # noqa: E402

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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Colorize archives of black-and-white scans with MT-Color."""


# Command groups register themselves here, one module each (keep this list sorted).
from mtcolor_batch.cli.evaluate import register as register_evaluate  # noqa: E402

register_evaluate(app)  # eval, report
from mtcolor_batch.cli.hints import hints_app  # noqa: E402

app.add_typer(hints_app, name="hints")
from mtcolor_batch.cli.journal import journal_app  # noqa: E402

app.add_typer(journal_app, name="journal")
from mtcolor_batch.cli.models import app as models_app  # noqa: E402

app.add_typer(models_app, name="models")
from mtcolor_batch.cli.run import run_command  # noqa: E402

app.command("run")(run_command)
from mtcolor_batch.cli.train import dataset_app, train_command  # noqa: E402

app.add_typer(dataset_app, name="dataset")
app.command("train")(train_command)
from mtcolor_batch.cli.verify import verify_command  # noqa: E402

app.command("verify")(verify_command)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:
            # Interrupted: the journal is settled. Further Ctrl-Cs while the interpreter shuts down
            # (library atexit hooks) must not turn exit 130 into a traceback or a death by SIGINT.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
    except KeyboardInterrupt:  # outside any command's own handling (imports, option parsing)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(EXIT_INTERRUPTED)
