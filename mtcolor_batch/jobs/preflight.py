"""Checks a run makes before it creates anything: every setup problem is one line and exit 2.

Why up front: a run that finds out at file 1 (or file 10,000) that its output folder is read-only,
is a file, holds someone's originals, or has lost its journal either crashes with a traceback or,
worse, silently redoes and overwrites finished work. Each check here names the path and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import UserError, path_text
from mtcolor_batch.jobs.journal import journal_state, rebuild_hint
from mtcolor_batch.jobs.merge import shard_journals
from mtcolor_batch.output.writer import output_path
from mtcolor_batch.scan.discover import IMAGE_EXTENSIONS, OUTPUT_FOLDER_MARK, ScanFile

SEED_MAX = 2**63 - 1


def check_seed(seed: int | None) -> None:
    """``--seed`` must fit the generators (and match what sidecars accept): 0 to 2**63-1."""
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed {seed} is out of range", hint="use a whole number from 0 to 2**63-1")


def check_profile_packages(profile: Profile) -> None:
    """An optional package the profile names (``perception.tagger: ram``) must be installed.

    Why here: missing, it would fail every file alike; it is a setup error (one line, exit 2) before
    anything is created or journaled.
    """
    if profile.perception.auto_instances and profile.perception.tagger == "ram":
        from mtcolor_batch.perception.tagger import require_ram  # deferred: loads torch

        require_ram()


def check_out_folder(out_dir: Path) -> None:
    """``--out`` is a folder we may write: new, empty, or an earlier run's output folder.

    Refused: an existing file, and a folder holding images that are not our outputs (originals
    there would be skipped or even overwritten by an output of the same name). The walk stops at
    the first image found, so a large folder costs little.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("--out is an existing file, not a folder", path=out_dir, hint="give a folder")
    if not out_dir.is_dir() or (out_dir / OUTPUT_FOLDER_MARK).is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(out_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found = Path(dirpath) / name
                raise UserError(
                    "--out already holds images that are not mtcolor-batch outputs "
                    f"(e.g. {path_text(found)})",
                    path=out_dir,
                    hint="use a new or empty folder, or the output folder of an earlier run "
                    "(it has .mtcolor/)",
                )


def make_out_folder(out_dir: Path) -> None:
    """Create ``--out``; a read-only filesystem or a missing permission is a setup error."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / OUTPUT_FOLDER_MARK).mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the output folder: {exc.strerror or exc}",
            path=out_dir,
            hint="choose a writable --out",
        ) from exc


def _exists(path: Path) -> bool:
    """``Path.exists`` that says no where the name cannot exist (over 255 bytes: ENAMETOOLONG).

    Such a file fails alone when its output is written; it must not crash the check for all."""
    try:
        return path.exists()
    except OSError:
        return False


def check_journal(
    jpath: Path,
    files: list[ScanFile],
    out_dir: Path,
    suffix: str,
    *,
    shard: tuple[int, int] | None,
    force: bool,
) -> None:
    """Refuse a damaged journal, and a missing or empty one while this run's outputs already exist.

    Without this, a deleted or zero-byte journal makes the next run silently redo (and replace)
    every finished file. ``--force`` asks for exactly that redo, so it passes an empty journal;
    a damaged one never passes (SQLite cannot read it), whatever the options.
    """
    state = journal_state(jpath)  # raises JournalDamagedError
    if state == "ok" or force:
        return
    existing = 0
    for item in files:
        image = output_path(out_dir, item.relpath, suffix, stem=item.stem)
        record = output_path(out_dir, item.relpath, suffix, json_record=True, stem=item.stem)
        if _exists(image) or _exists(record):
            existing += 1
    if not existing:
        return
    what = "missing" if state == "missing" else "empty"
    hint = rebuild_hint(out_dir)
    if shard is None and shard_journals(out_dir):
        hint = f"it was written by --shard runs: `mtcolor-batch journal merge {out_dir}` first; or {hint}"
    raise UserError(
        f"the job journal is {what} but {existing} of this run's outputs already exist "
        "(a run now would redo and replace them)",
        path=jpath,
        hint=f"{hint}; or pass --force to redo everything",
    )
