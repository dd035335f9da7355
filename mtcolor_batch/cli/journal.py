"""``mtcolor-batch journal merge``: fold the shard journals of a job array into one journal.

Thin: resolve what to merge and where, hold the output folder's lock while writing its main journal
(so a plain ``run`` cannot write it at the same time), call ``jobs.merge`` and print the counts.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.jobs.journal import STATES, journal_path, lock_path
from mtcolor_batch.jobs.lock import OutputLock, RunLock
from mtcolor_batch.jobs.merge import MergeReport, merge_journals, shard_journals
from mtcolor_batch.jobs.rebuild import rebuild_journal
from mtcolor_batch.scan.discover import parse_shard

journal_app = typer.Typer(help="Inspect and combine job journals.", no_args_is_help=True)


@journal_app.command("merge")
def merge_command(
    sources: list[Path] = typer.Argument(
        ...,
        metavar="SOURCES",
        help="Output folders (their .mtcolor/journal-shard-*.sqlite are merged) or journal files.",
    ),
    into: Path | None = typer.Option(
        None, "--into", help="Merged journal (default: <first folder>/.mtcolor/journal.sqlite)."
    ),
) -> None:
    """Combine shard journals into one; per file the newest finished row wins. Prints the counts."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        journals: list[Path] = []
        folders: list[Path] = []
        for src in sources:
            if src.is_dir():
                found = shard_journals(src)
                if not found:
                    raise UserError(
                        "no shard journals here (.mtcolor/journal-shard-K-of-N.sqlite)",
                        path=src,
                        hint="run with --shard K/N first, or name journal files",
                    )
                journals += found
                folders.append(src)
            elif src.is_file():
                journals.append(src)
            else:
                raise UserError("not found", path=src)
        if into is None:
            if not folders:
                raise UserError("--into is needed when only journal files are given")
            into = journal_path(folders[0], None)
        is_main = into.name == "journal.sqlite" and into.parent.name == ".mtcolor"
        lock = lock_path(into.parent.parent, None) if is_main else None  # a plain run's own journal
        if lock is not None:
            with OutputLock(lock):
                report = merge_journals(journals, into)
        else:
            report = merge_journals(journals, into)
    except UserError as exc:
        raise fail(exc) from None
    print_report(console, report)


@journal_app.command("rebuild")
def rebuild_command(
    out: Path = typer.Argument(
        ..., metavar="OUT", help="The output folder whose journal is lost, empty or damaged."
    ),
    shard: str | None = typer.Option(None, "--shard", help="K/N: rebuild that shard's journal instead."),
) -> None:
    """Rebuild the journal from the outputs' .color.json records (the old journal is kept aside)."""

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        spec = parse_shard(shard)
        if not out.is_dir():
            raise UserError("output folder not found", path=out)
        with RunLock(out, spec):
            report = rebuild_journal(out, spec)
    except UserError as exc:
        raise fail(exc) from None
    for line in report.skipped:
        console.print("[yellow]not trusted:[/yellow] " + escape(line))
    if report.kept_aside is not None:
        console.print(f"old journal kept as {escape(str(report.kept_aside))}")
    console.print(
        f"journal rebuilt: {escape(str(report.target))}: {report.rows} file(s) done, "
        f"{len(report.skipped)} record(s) not trusted (those files are redone by the next run)."
    )


def print_report(console: Console, report: MergeReport) -> None:
    """Per-source counts, then the merged result and how many files were in several journals."""
    table = Table(title=f"journal merge -> {escape(str(report.target))}")
    table.add_column("source")
    table.add_column("rows", justify="right")
    for state in STATES:
        table.add_column(state, justify="right")
    for src in report.sources:
        table.add_row(escape(str(src.path)), str(src.rows), *(str(src.counts.get(s, 0)) for s in STATES))
    table.add_row("[bold]merged[/bold]", str(report.files), *(str(report.counts.get(s, 0)) for s in STATES))
    console.print(table)
    console.print(
        f"{report.files} files from {len(report.sources)} journal(s); {report.conflicts} in more than one "
        f"({report.differing} differing, newest finished row kept)."
    )
