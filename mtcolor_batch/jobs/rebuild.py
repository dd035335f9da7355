"""``journal rebuild``: reconstruct a lost or damaged journal from the outputs' ``.color.json`` records.

Why it can be done: every record holds what a journal row's fingerprint is made of (input sha256,
sidecar sha256, profile fingerprint, model manifest hash) and the sha256 of the output it
describes. A record is trusted only when its output file is on disk with that very hash; anything
else is left out, so the next run redoes that file rather than skipping something it cannot
vouch for. Failed rows cannot be recovered (failures write no record): those files are retried.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import UserError, path_text
from mtcolor_batch.core.fs import sha256_file
from mtcolor_batch.jobs.journal import Journal, journal_path
from mtcolor_batch.scan.discover import OUTPUT_FOLDER_MARK, shard_of
from mtcolor_batch.stages.pipeline import fingerprint


@dataclass
class RebuildReport:
    """What ``journal rebuild`` did, printed for the user."""

    target: Path
    rows: int = 0
    kept_aside: Path | None = None
    skipped: list[str] = field(default_factory=list)  # "record: why" for records not trusted


def _records(out_dir: Path) -> list[Path]:
    """Every ``*.json`` record under the output folder (hidden folders and nested outputs excluded)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (here / d / OUTPUT_FOLDER_MARK).is_dir()
        )
        found += [here / n for n in sorted(filenames) if n.endswith(".json") and not n.startswith(".")]
    return found


def _row_of(record_path: Path, out_dir: Path) -> tuple[str, dict[str, Any]] | str:
    """(relpath, row fields) from one record, or the reason it is not trusted."""

    try:
        rec = json.loads(record_path.read_text(encoding="utf-8"))
        relpath = str(rec["input"]["relpath"])
        input_sha = str(rec["input"]["sha256"])
        sidecar_sha = rec["sidecar"]["sha256"]
        masks = rec["sidecar"].get("masks") or {}  # records before masks were fingerprinted: none
        rules = {str(r["path"]): str(r["sha256"]) for r in rec.get("folder_rules") or []}
        profile_fp = str(rec["profile"]["fingerprint"])
        model_fp = str(rec["model"]["manifest_sha256"])
        output_rel = str(rec["output"]["path"])
        output_sha = str(rec["output"]["sha256"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"not an mtcolor-batch record ({type(exc).__name__}: {exc})"
    output = out_dir / output_rel
    if not output.is_file():
        return f"its output {output_rel} is missing"
    if sha256_file(output) != output_sha:
        return f"its output {output_rel} does not match the sha256 in the record"
    record_rel = record_path.relative_to(out_dir).as_posix()
    timings = rec.get("timings") if isinstance(rec.get("timings"), dict) else {}
    return relpath, {
        "fingerprint": fingerprint(input_sha, sidecar_sha, profile_fp, model_fp, masks, rules),
        "outputs": [output_rel, record_rel],
        "timings": timings,
        "input_sha256": input_sha,
        "profile": rec.get("profile", {}).get("values"),
        "created": str(rec.get("created_utc") or ""),
    }


def rebuild_journal(out_dir: Path, shard: tuple[int, int] | None = None) -> RebuildReport:
    """Write a fresh journal for ``out_dir`` (or one shard's) from its records; the old file is kept aside.

    The caller holds the output folder's lock. Input size and mtime are left unknown, so the next
    run rehashes each input once and skips it only if the fingerprint still matches.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError("output folder not found", path=out_dir)
    target = journal_path(out_dir, shard)
    report = RebuildReport(target=target)
    rows: dict[str, dict[str, Any]] = {}
    for record in _records(out_dir):
        got = _row_of(record, out_dir)
        if isinstance(got, str):
            report.skipped.append(f"{path_text(record)}: {got}")
            continue
        relpath, row = got
        if shard is not None and shard_of(relpath, shard[1]) != shard[0]:
            continue
        rows[relpath] = row
    if not rows and not report.skipped:
        raise UserError(
            "no .color.json records here to rebuild the journal from",
            path=out_dir,
            hint="records are written unless output.write_json is off (--no-json)",
        )
    for suffix in ("", "-wal", "-shm"):
        old = target.with_name(target.name + suffix)
        if old.exists():
            aside = old.with_name(f"{old.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(old, aside)
            if not suffix:
                report.kept_aside = aside
    with Journal(target) as journal:
        db = journal.db
        db.execute("BEGIN IMMEDIATE")
        now = time.time()
        for relpath, row in sorted(rows.items()):
            db.execute(
                "INSERT INTO files (relpath, fingerprint, state, attempts, completions, outputs, timings,"
                " input_sha256, updated_at) VALUES (?, ?, 'done', 1, 1, ?, ?, ?, ?)",
                (
                    relpath,
                    row["fingerprint"],
                    json.dumps(row["outputs"]),
                    json.dumps(row["timings"], sort_keys=True),
                    row["input_sha256"],
                    now,
                ),
            )
        newest = max(rows.values(), key=lambda r: r["created"], default=None)
        if newest is not None and newest["profile"] is not None:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('profile', ?)",
                (json.dumps(newest["profile"]),),
            )
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('rebuilt_from_records', ?)",
            (json.dumps({"rows": len(rows), "skipped": len(report.skipped), "at": now}),),
        )
        db.execute("COMMIT")
    report.rows = len(rows)
    return report
