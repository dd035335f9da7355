"""``mtcolor-batch hints edit SCANS``: point-and-click sidecar editing in the browser.

The command only loads the profile and perception models (the same way ``hints show`` does, so
the overlay is the run's view) and starts the local server; everything else lives in
:mod:`mtcolor_batch.editor`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mtcolor_batch.cli._common import fail
from mtcolor_batch.cli._hints_context import load_hints_context, scan_files
from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.errors import UserError


def edit_command(
    scans: Path = typer.Argument(..., metavar="SCANS", help="A folder of scans (or one scan)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Bundle folder or cached bundle id (detections, SAM preview)."
    ),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (default: any free)."),
    profile: str | None = typer.Option(None, "--profile", help="Profile name or YAML file."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (default: profile)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the address; do not open a browser."),
) -> None:
    """Edit sidecar hints in your browser: draw regions, pick colours, save (127.0.0.1 only)."""
    from mtcolor_batch.editor.server import serve  # deferred: loads torch
    from mtcolor_batch.editor.session import EditorSession  # deferred: loads torch

    try:
        if not scans.exists():
            raise UserError("no such file or folder", path=scans)
        files = scan_files(scans)
        if not files:
            raise UserError("no scans found", path=scans, hint="give a folder with .jpg/.png/.tif scans")
        ctx = load_hints_context(model, profile, device)
        settings = load_profile(profile, {"device": device})  # the preview runs where --device says
        if ctx.bundle_dir is not None and settings.sampling.accelerator != "none":
            from mtcolor_batch.model.accelerators import load_run_profile  # deferred: loads torch

            settings, _ = load_run_profile(profile, {"device": device}, ctx.bundle_dir)  # as `run` samples
        root = scans if scans.is_dir() else scans.parent
        session = EditorSession(
            root, [path for path, _ in files], settings, ctx.perception, bundle_dir=ctx.bundle_dir
        )
    except UserError as exc:
        raise fail(exc) from None

    def announce(url: str) -> None:
        typer.echo(f"Editing {len(session.scans)} scan(s) in {session.root}")
        typer.echo(f"Open {url}  (Ctrl+C to stop)")

    try:
        serve(session, port, open_browser=not no_browser, announce=announce)
    except OSError as exc:
        typer.echo(f"error: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
