"""Read what a run left behind: provenance records, output images and the journal's failures.

Eval and the report both start from an output directory, so the finding and reading lives here
once. Nothing is ever opened for writing: the journal is opened read-only (``mode=ro``) so a report
can be built while (or after) a run holds its lock.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.jobs.journal import Journal, Row

SKIP_DIRS = frozenset({".mtcolor", "report_files"})  # the journal, the report's folder


@dataclass
class InstanceRecord:
    """One instance as provenance describes it, plus its recorded hint adherence."""

    id: int
    label: str
    text: str
    source: str
    box: tuple[int, int, int, int] | None
    area: int | None
    hint_name: str | None = None
    hint_lab: tuple[float, float, float] | None = None
    delta_e: float | None = None  # CIEDE2000 hint vs result (hints/adherence.py), as the run recorded it
    delta_e_before: float | None = None  # the same before strict enforcement
    result_lab: tuple[float, float, float] | None = None  # mean CIELAB of the instance in the output
    mask_rle: dict[str, Any] | None = None  # COCO RLE (output.mask_rle); records before masks: None


@dataclass
class FileRecord:
    """The parts of one provenance record that evaluation and the report show."""

    json_path: Path
    output_path: Path | None
    relpath: str
    source_path: Path | None
    seed: int | None
    model: dict[str, Any]
    profile: str | None
    prompt: str | None
    negative_prompt: str | None
    instances: list[InstanceRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def hinted(self) -> list[InstanceRecord]:
        return [i for i in self.instances if i.hint_lab is not None]

    @property
    def tiny(self) -> bool:
        return bool(self.model.get("tiny"))


@dataclass
class FailedRow:
    """A journal row that did not produce an output, with the reason the run recorded."""

    relpath: str
    state: str
    error: str
    attempts: int | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _box(value: Any) -> tuple[int, int, int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return int(value[0]), int(value[1]), int(value[2]), int(value[3])
    return None


def _number(stats: dict[str, Any], key: str) -> float | None:
    return float(stats[key]) if _is_number(stats.get(key)) else None


def _lab(value: Any) -> tuple[float, float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) for v in value):
        return float(value[0]), float(value[1]), float(value[2])
    return None


def _instance(data: dict[str, Any]) -> InstanceRecord:
    hint: dict[str, Any] = data["hint_color"] if isinstance(data.get("hint_color"), dict) else {}
    stats: dict[str, Any] = data["adherence"] if isinstance(data.get("adherence"), dict) else {}
    return InstanceRecord(
        id=int(data.get("id", 0)),
        label=str(data.get("label", "")),
        text=str(data.get("text", "")),
        source=str(data.get("source", "")),
        box=_box(data.get("box")),
        area=int(data["area"]) if data.get("area") is not None else None,
        hint_name=str(hint["name"]) if hint.get("name") is not None else None,
        hint_lab=_lab(hint.get("lab")),
        delta_e=_number(stats, "delta_e"),
        delta_e_before=_number(stats, "delta_e_before"),
        result_lab=_lab(stats.get("mean_lab")),
        mask_rle=data["mask_rle"] if isinstance(data.get("mask_rle"), dict) else None,
    )


def _output_image(json_path: Path, out_dir: Path, data: dict[str, Any]) -> Path | None:
    """The image the record describes: ``output.path`` (relative to the output folder)."""
    named = (data.get("output") or {}).get("path")
    if named:
        candidate = out_dir / named
        if candidate.is_file():
            return candidate
        # the folder was moved or copied: the image sits next to its record
        sibling = json_path.parent / Path(named).name
        if sibling.is_file():
            return sibling
    return None


def read_record(json_path: Path, out_dir: Path) -> FileRecord:
    """Parse one provenance record written by ``output.provenance.build_record``."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read provenance record: {exc}", path=json_path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("input"), dict):
        raise UserError("not an mtcolor-batch provenance record (no 'input')", path=json_path)
    try:
        return _record(json_path, out_dir, data)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # a hand-edited record
        raise UserError(
            f"provenance record has a value of the wrong type ({exc}); skipped", path=json_path
        ) from exc


def _record(json_path: Path, out_dir: Path, data: dict[str, Any]) -> FileRecord:
    inp = data["input"]
    relpath = str(inp.get("relpath") or json_path.name)
    source_path = Path(inp["path"]) if inp.get("path") else None
    model: dict[str, Any] = data["model"] if isinstance(data.get("model"), dict) else {}
    prompts = data.get("prompts") or {}
    profile = data.get("profile") or {}
    return FileRecord(
        json_path=json_path,
        output_path=_output_image(json_path, out_dir, data),
        relpath=relpath,
        source_path=source_path,
        seed=int(data["seed"]) if data.get("seed") is not None else None,
        model=model,
        profile=str(profile.get("name")) if profile.get("name") is not None else None,
        prompt=prompts.get("prompt"),
        negative_prompt=prompts.get("negative_prompt"),
        instances=[_instance(i) for i in (data.get("instances") or []) if isinstance(i, dict)],
        warnings=[str(w) for w in (data.get("warnings") or [])],
        timings={str(k): float(v) for k, v in (data.get("timings") or {}).items() if _is_number(v)},
        device=str(data["device"]) if data.get("device") is not None else None,
        raw=data,
    )


def _journal_rows(out_dir: Path) -> list[Row]:
    """Rows of every journal in ``<out>/.mtcolor`` (one per shard), opened read-only."""
    rows: list[Row] = []
    for db in sorted((out_dir / ".mtcolor").glob("journal*.sqlite")):
        try:
            with Journal(db, readonly=True) as journal:
                rows.extend(journal.all())
        except sqlite3.Error as exc:
            raise UserError(f"cannot read journal: {exc}", path=db) from exc
    return rows


def find_records(out_dir: Path) -> list[Path]:
    """Every provenance record under ``out_dir``, in a stable order.

    The journal's done rows name their records (whatever ``output.suffix`` the run used); records
    the journal does not know (a folder copied without ``.mtcolor``) are found as ``*.color.json``.
    """
    found = {
        out_dir / p for row in _journal_rows(out_dir) if row.state == "done" for p in row.outputs
        if p.endswith(".json") and (out_dir / p).is_file()
    }
    for path in out_dir.rglob("*.color.json"):
        if path.relative_to(out_dir).parts[0] not in SKIP_DIRS:
            found.add(path)
    return sorted(found, key=lambda p: p.relative_to(out_dir).as_posix())


def done_rows(out_dir: Path) -> list[Row]:
    """Done rows of the journal(s), by relative path: the outputs ``verify`` checks."""
    return sorted((r for r in _journal_rows(out_dir) if r.state == "done"), key=lambda r: r.relpath)


def read_failures(out_dir: Path) -> list[FailedRow]:
    """Failed rows of the journal(s), with the reason the run recorded."""
    rows = [FailedRow(r.relpath, r.state, r.error or "", r.attempts)
            for r in _journal_rows(out_dir) if r.state == "failed"]
    return sorted(rows, key=lambda r: r.relpath)
