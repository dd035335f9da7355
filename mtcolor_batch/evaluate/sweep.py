"""``eval sweep``: the paper's α/β grid, one row per setting, resumable through one sweep journal.

Every setting is the protocol's colorize-and-score step on the same gray inputs, with
``sampling.alpha`` / ``sampling.beta`` overridden, into ``runs/alpha=A,beta=B/``. The sweep journal
(``.mtcolor/sweep.sqlite``, the runner's own journal class) has one row per setting, keyed by the
setting and fingerprinted by the effective profile, the model and the inputs: a re-run skips every
setting already scored with the same fingerprint and, inside an interrupted setting, the runner's
journal skips the images already colorized.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError
from mtcolor_batch.core.fs import sha256_file
from mtcolor_batch.evaluate.evaluation import rows_csv
from mtcolor_batch.evaluate.protocol import (
    INPUTS,
    ProtocolSettings,
    Reference,
    choose_profile,
    colorize,
    instance_notes,
    instance_source,
    model_note,
    prepare_inputs,
    score_run,
    table_csv,
    table_markdown,
    write_text,
)
from mtcolor_batch.jobs.journal import Journal
from mtcolor_batch.jobs.lock import OutputLock
from mtcolor_batch.model.registry import find_bundle
from mtcolor_batch.stages.pipeline import model_hash

SWEEP_JOURNAL = Path(".mtcolor") / "sweep.sqlite"
SUMMARY = "summary.json"


@dataclass
class Setting:
    alpha: float
    beta: float

    @property
    def key(self) -> str:
        return f"alpha={self.alpha:g},beta={self.beta:g}"


@dataclass
class SweepResult:
    rows: list[tuple[Setting, dict[str, float | None]]]
    failed: list[tuple[Setting, str]]
    exit_code: int


def parse_grid(text: str, name: str) -> list[float]:
    """``"0,0.1,0.2"`` -> [0.0, 0.1, 0.2]; each in [0, 1] as the profile requires."""
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--{name}: '{part}' is not a number", hint=f"write --{name} 0,0.1,0.2") from None
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--{name}: {value:g} is outside 0..1")
        if value not in values:
            values.append(value)
    if not values:
        raise UserError(f"--{name} needs at least one value")
    return values


def _inputs_digest(out_dir: Path, refs: list[Reference]) -> str:
    """sha256 over every gray input and sidecar (and its masks) the settings share."""
    digest = hashlib.sha256()
    inputs = out_dir / INPUTS
    for path in sorted(p for p in inputs.rglob("*") if p.is_file() and ".mtcolor" not in p.parts):
        digest.update(path.relative_to(inputs).as_posix().encode())
        digest.update(sha256_file(path).encode())
    digest.update(",".join(sorted(r.relpath for r in refs if r.input_rel)).encode())
    return digest.hexdigest()


def run_sweep(
    refs_dir: Path,
    out_dir: Path,
    settings: ProtocolSettings,
    alphas: list[float],
    betas: list[float],
    console: Console | None = None,
) -> SweepResult:
    """Colorize and score every (α, β); write ``table.md`` / ``table.csv`` with one row per setting."""
    console = console or Console(stderr=True)
    out_dir = out_dir.resolve()
    name, profile_note = choose_profile(settings.profile)
    base = load_profile(name, settings.overrides)
    if settings.profile is not None:
        profile_note = f"profile {base.name}"
    bundle_dir = find_bundle(settings.model)  # before anything is created
    refs = prepare_inputs(refs_dir, out_dir, settings.annotations, base.scan.gray_tolerance)
    for ref in refs:
        if ref.error:
            console.print(f"[red]error:[/red] {escape(ref.error)}", highlight=False)
    inputs_fp = _inputs_digest(out_dir, refs)
    grid = [Setting(a, b) for a in alphas for b in betas]
    done: list[tuple[Setting, dict[str, float | None]]] = []
    failed: list[tuple[Setting, str]] = []
    notes: list[str] = []
    jpath = out_dir / SWEEP_JOURNAL
    jpath.parent.mkdir(parents=True, exist_ok=True)
    interrupted = False
    with OutputLock(jpath.with_suffix(".lock")), Journal(jpath) as journal:
        for setting in grid:
            extra = {"sampling.alpha": setting.alpha, "sampling.beta": setting.beta}
            profile = load_profile(name, {**settings.overrides, **extra})
            fp = hashlib.sha256(
                f"{profile.fingerprint()}|{model_hash(bundle_dir)}|{inputs_fp}".encode()
            ).hexdigest()[:32]
            run_dir = out_dir / "runs" / setting.key
            summary_path = run_dir / SUMMARY
            row = journal.get(setting.key)
            if row and row.state == "done" and row.fingerprint == fp and summary_path.is_file():
                data = json.loads(summary_path.read_text(encoding="utf-8"))
                done.append((setting, data["summary"]))
                console.print(f"{setting.key}: done earlier, skipped", highlight=False)
                continue
            journal.upsert_pending(setting.key, fp, size=None, mtime=None, sha256=None)
            journal.mark_running(setting.key)
            started = time.perf_counter()
            console.print(f"[bold]{setting.key}[/bold]: colorizing", highlight=False)
            code, _ = colorize(out_dir, run_dir, settings, extra, console)
            if code == EXIT_INTERRUPTED:
                journal.mark_pending(setting.key)
                interrupted = True
                break
            rows, summary, messages = score_run(out_dir, run_dir, refs, settings)
            for m in messages:
                if m not in notes:
                    notes.append(m)
            write_text(run_dir / "per_image.csv", rows_csv(rows))
            payload = {"alpha": setting.alpha, "beta": setting.beta, "summary": summary, "messages": messages,
                       "model": model_note(run_dir, rows)}
            write_text(summary_path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
            outputs = [summary_path.relative_to(out_dir).as_posix(), f"runs/{setting.key}/per_image.csv"]
            journal.mark_done(setting.key, outputs, {"total": time.perf_counter() - started})
            done.append((setting, summary))
            if code == EXIT_FAILED or summary.get("images_failed"):
                failed.append((setting, f"{int(summary.get('images_failed') or 0)} image(s) not scored"))
    if interrupted:
        console.print("[yellow]Interrupted: run the same command again to resume.[/yellow]")
        return SweepResult(done, failed, EXIT_INTERRUPTED)
    model = model_note(out_dir / "runs" / grid[0].key, []) if grid else ""
    table_rows = [([f"{s.alpha:g}", f"{s.beta:g}"], summary) for s, summary in done]
    lead = [f"{model}; {profile_note} with sampling.alpha / sampling.beta set per row; "
            f"{len([r for r in refs if r.input_rel])} of {len(refs)} references usable."]
    errors = [r.error for r in refs if r.error is not None]
    source = instance_source(settings)[1]
    instances = instance_notes(out_dir / "runs" / grid[0].key, source) if grid else [source]
    md = table_markdown("α/β sweep", ["α", "β"], table_rows, lead, instances + notes + errors)
    write_text(out_dir / "table.md", md)
    write_text(out_dir / "table.csv", table_csv(["alpha", "beta"], table_rows))
    bad = failed or errors
    return SweepResult(done, failed, EXIT_FAILED if bad else EXIT_OK)
