"""Combine per-shard journals (a job array's) into one journal, for reports and later plain runs.

Why a merge and not one shared journal: SQLite WAL must not be written from many hosts over a
network filesystem, so each shard of a job array writes its own ``journal-shard-K-of-N.sqlite``.
Reports (and a later ``run`` without ``--shard``) want one record, so the shard journals are folded
into one with a fixed rule per file: a finished row (done, failed, skipped) beats an unfinished one
(pending, running), and among equals the newest ``updated_at`` wins. Rows are copied whole, never
summed, so merging the same journals again changes nothing; an existing target takes part in the
merge as one more source, so nothing already in it is lost.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import UserError, path_text
from mtcolor_batch.jobs.journal import STATES, Journal
from mtcolor_batch.jobs.owner import JournalOwner, folder_key, same_out_dir

FINISHED = ("done", "failed", "skipped")
_COLUMNS = (
    "relpath",
    "fingerprint",
    "state",
    "attempts",
    "completions",
    "error",
    "outputs",
    "timings",
    "input_size",
    "input_mtime",
    "input_sha256",
    "updated_at",
    "scan_root",
    "output_stats",
)
_MISSING = {"scan_root": "NULL", "output_stats": "'{}'"}  # what older journals, without them, read as
SHARD_GLOB = "journal-shard-*-of-*.sqlite"


@dataclass
class SourceReport:
    """What one source journal held."""

    path: Path
    rows: int
    counts: dict[str, int]


@dataclass
class MergeReport:
    """Counts a user checks after a merge (printed by ``mtcolor-batch journal merge``)."""

    target: Path
    sources: list[SourceReport] = field(default_factory=list)
    files: int = 0  # distinct relative paths in the merged journal
    conflicts: int = 0  # files present in more than one source
    differing: int = 0  # ... whose rows disagreed (state or fingerprint), resolved by the rule
    counts: dict[str, int] = field(default_factory=dict)  # final states


def shard_journals(out_dir: Path) -> list[Path]:
    """The shard journals of one output folder, in a stable order."""
    return sorted((Path(out_dir) / ".mtcolor").glob(SHARD_GLOB))


def _rank(row: dict[str, Any]) -> tuple[bool, float]:
    return (row["state"] in FINISHED, float(row["updated_at"]))


def read_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every row and meta entry of a journal, read-only (a shard still running is not disturbed)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            present = {r[1] for r in db.execute("PRAGMA table_info(files)")}
            picked = [c if c in present else f"{_MISSING[c]} AS {c}" for c in _COLUMNS]
            rows = [
                dict(zip(_COLUMNS, rec, strict=True))
                for rec in db.execute(f"SELECT {', '.join(picked)} FROM files ORDER BY relpath")
            ]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except (sqlite3.Error, KeyError) as exc:
        raise UserError(f"not a readable mtcolor-batch journal ({exc})", path=path) from exc
    return rows, meta


def _check_owners(
    sources: list[tuple[Path, dict[str, str]]], target: Path, target_meta: dict[str, str]
) -> None:
    """Refuse journals written for another output folder, other scans, or with other settings.

    Their rows would vouch for outputs this folder does not hold (or holds from another seed or
    profile), and a later run would skip those files for good.
    """
    out_dir = target.parent.parent if target.parent.name == ".mtcolor" else None
    home = JournalOwner.from_meta(target_meta)
    settings: dict[str, Path] = {}
    for path, meta in sources:
        owner = JournalOwner.from_meta(meta)
        if out_dir is not None and not same_out_dir(path, owner.out_dir, out_dir):
            raise UserError(
                f"this journal belongs to the output folder {owner.out_dir or path.parent.parent}, "
                f"not {folder_key(out_dir)}",
                path=path,
                hint="merge each output folder's shard journals into that folder",
            )
        if home.scan_root and owner.scan_root and owner.scan_root != home.scan_root:
            raise UserError(
                f"this journal is of the scans in {owner.scan_root}, the merged one of {home.scan_root}",
                path=path,
                hint="merge only the journals of one archive",
            )
        if owner.settings:
            settings.setdefault(owner.settings, path)
    if len(settings) > 1:
        first, second = list(settings.values())[:2]
        raise UserError(
            f"journals made with other settings (profile, seed or model) than {path_text(first)}",
            path=second,
            hint="merge only the shards of one job; rerun the odd shard with the same options",
        )


def merge_journals(sources: list[Path], target: Path) -> MergeReport:
    """Fold ``sources`` (and ``target`` itself, if it exists) into ``target`` in one transaction."""
    target = Path(target)
    paths = [Path(p) for p in sources]
    if not paths:
        raise UserError("no journals to merge", hint="give shard journals or an output folder holding them")
    resolved_target = target.resolve()
    if target.exists() and all(p.resolve() != resolved_target for p in paths):
        paths.append(target)
    report = MergeReport(target=target)
    best: dict[str, dict[str, Any]] = {}
    seen: dict[str, list[dict[str, Any]]] = {}
    meta_newest: tuple[float, dict[str, str]] = (-1.0, {})
    read: list[tuple[Path, list[dict[str, Any]], dict[str, str]]] = []
    for path in paths:
        if not path.is_file():
            raise UserError("journal not found", path=path)
        read.append((path, *read_rows(path)))
    target_meta = next((m for p, _, m in read if p.resolve() == resolved_target), {})
    _check_owners([(p, m) for p, _, m in read if p.resolve() != resolved_target], target, target_meta)
    for path, rows, meta in read:
        counts = dict.fromkeys(STATES, 0)
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
            seen.setdefault(row["relpath"], []).append(row)
            current = best.get(row["relpath"])
            if current is None or _rank(row) > _rank(current):
                best[row["relpath"]] = row
        newest = max((float(r["updated_at"]) for r in rows), default=-1.0)
        if meta and newest >= meta_newest[0]:
            meta_newest = (newest, meta)
        report.sources.append(SourceReport(path, len(rows), counts))
    for versions in seen.values():
        if len(versions) > 1:
            report.conflicts += 1
            if len({(v["state"], v["fingerprint"]) for v in versions}) > 1:
                report.differing += 1
    _write(target, best, meta_newest[1], [str(p) for p in paths])
    report.files = len(best)
    report.counts = dict.fromkeys(STATES, 0)
    for row in best.values():
        report.counts[row["state"]] += 1
    return report


def _write(target: Path, rows: dict[str, dict[str, Any]], meta: dict[str, str], sources: list[str]) -> None:
    """Upsert the winners into the target journal (created with the runner's own schema)."""
    with Journal(target) as journal:
        db = journal.db
        db.execute("BEGIN IMMEDIATE")
        try:
            placeholders = ", ".join("?" for _ in _COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
            db.executemany(
                f"INSERT INTO files ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
                f" ON CONFLICT(relpath) DO UPDATE SET {updates}",
                [tuple(row[c] for c in _COLUMNS) for _, row in sorted(rows.items())],
            )
            for key, value in meta.items():
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('merged_from', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (json.dumps({"sources": sources, "at": time.time()}),),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
