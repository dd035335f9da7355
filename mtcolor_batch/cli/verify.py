"""``mtcolor-batch verify OUT``: check the Content Credentials of every output a run's journal lists.

Thin: read the trust anchors, call ``evaluate.verify.verify_folder``, print a table (or JSON).
Exit 0 when every output is valid, 1 when any is not, 2 for a usage or setup error.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_OK, UserError
from mtcolor_batch.evaluate.verify import Verdict, verify_folder
from mtcolor_batch.output.credentials import MAX_PEM_BYTES

_MARK = {True: "[green]ok[/green]", False: "[red]FAIL[/red]", None: "-"}


def verify_command(
    out: Path = typer.Argument(..., metavar="OUT", help="A run's output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    trust_anchors: Path | None = typer.Option(
        None, "--trust-anchors", help="PEM of the CA(s) to trust (the archive's own); untrusted then fails."
    ),
    scans: Path | None = typer.Option(
        None, "--scans", help="Where the originals are now \\[default: the path each record names]."
    ),
) -> None:
    """Check each output's C2PA manifest, signature, data hash, original scan and trust.

    Exit codes: 0 all valid, 1 any not valid, 2 usage/setup error.
    """
    try:
        anchors = _read_anchors(trust_anchors) if trust_anchors else None
        verdicts = verify_folder(out, scans, anchors)
    except UserError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        _table(verdicts)
    raise typer.Exit(EXIT_OK if all(v.valid for v in verdicts) else EXIT_FAILED)


def _read_anchors(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_PEM_BYTES:
            raise UserError("too large for a PEM file of CA certificates", path=path)
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the trust anchors: {exc.strerror or exc}", path=path) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UserError("not a PEM file of CA certificates", path=path)
    return data


def _table(verdicts: list[Verdict]) -> None:
    console = Console(highlight=False, width=max(120, Console().width))
    table = Table(title="Content Credentials")
    table.add_column("output", overflow="fold")
    for col in ("manifest", "signature", "data hash", "original", "record", "trust"):
        table.add_column(col, no_wrap=True)
    table.add_column("result", overflow="fold")
    for v in verdicts:
        c = v.check
        original = {"match": "[green]unchanged[/green]", "changed": "[red]CHANGED[/red]"}.get(
            v.original, f"[red]{v.original}[/red]" if v.original == "missing" else v.original
        )
        record = {"match": "[green]ok[/green]", "mismatch": "[red]FAIL[/red]"}.get(v.record, v.record)
        result = "[green]valid[/green]" if v.valid else f"[red]invalid[/red]: {escape('; '.join(v.problems))}"
        table.add_row(
            escape(v.output),
            _MARK[c.manifest],
            _MARK[c.signature],
            _MARK[c.data_hash],
            original,
            record,
            escape(c.trust),
            result,
        )
    console.print(table)
    bad = sum(not v.valid for v in verdicts)
    console.print(f"{len(verdicts) - bad} valid, {bad} not valid")
