"""``hints survey``: what the detector finds across a whole folder, so a rules file can be written once.

Why resumable: a survey of 5,000 scans runs the detector 5,000 times. Each scan's counts are
appended to a small state file (``.mtcolor-survey.jsonl`` in the folder, hidden so no walk takes it
for a scan) as soon as it is done, keyed by the scan's path, its sha256 and the detector's setup;
an interrupted survey picks up where it stopped, and a changed scan or model is surveyed again.
The detection is the run's own (:func:`mtcolor_batch.stages.instances.find_instances` without
hints), so the counts are what a rule would meet.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import UserError, path_text
from mtcolor_batch.core.fs import sha256_file
from mtcolor_batch.perception.models import Perception
from mtcolor_batch.scan.imageio import load_scan
from mtcolor_batch.stages.instances import NO_SIDECAR, find_instances
from mtcolor_batch.stages.pipeline import model_hash

STATE_NAME = ".mtcolor-survey.jsonl"


@dataclass
class LabelCount:
    """One row of the survey table."""

    label: str
    scans: int = 0
    instances: int = 0


@dataclass
class SurveyResult:
    """The per-label table (most scans first), how many scans it covers, and what failed."""

    labels: list[LabelCount]
    scanned: int
    reused: int
    failed: list[str] = field(default_factory=list)


def detector_key(bundle_dir: Path | None, profile: Profile) -> str:
    """What the counts depend on besides the scan: the bundle's weights and the perception settings."""

    weights = model_hash(bundle_dir) if bundle_dir is not None else "-"
    settings = json.dumps(profile.perception.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{weights}|{settings}".encode()).hexdigest()[:16]


def _read_state(path: Path) -> dict[tuple[str, str, str], dict[str, int]]:
    """Counts already surveyed; a torn last line (the survey was killed mid-write) is ignored."""
    done: dict[tuple[str, str, str], dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return done
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"cannot read the survey state: {exc}", path=path, hint="delete it to start over"
        ) from None
    for line in lines:
        try:
            row = json.loads(line)
            done[(str(row["relpath"]), str(row["sha256"]), str(row["detector"]))] = {
                str(k): int(v) for k, v in row["labels"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return done


def survey(
    files: list[tuple[Path, Path]],
    state_path: Path,
    perception: Perception,
    profile: Profile,
    bundle_dir: Path | None,
    advance: Callable[[str], None] = lambda _: None,
) -> SurveyResult:
    """Detect over every (scan, root) pair and count, per label, the scans and instances.

    ``advance`` is called with each scan's relative path once it is counted (the progress bar).
    A scan that cannot be read is listed in ``failed`` with its one-line reason; the survey goes on.
    """
    key = detector_key(bundle_dir, profile)
    done = _read_state(state_path)
    per_scan: list[dict[str, int]] = []
    failed: list[str] = []
    reused = 0
    try:
        state = open(state_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below, after the loop
    except OSError as exc:
        raise UserError(
            f"cannot write the survey state: {exc.strerror or exc}",
            path=state_path,
            hint="survey a folder you can write to (the state and the template go there)",
        ) from None
    with state:
        for path, root in files:
            rel = path_text(path.relative_to(root).as_posix())
            try:
                sha = sha256_file(path)
                counts = done.get((rel, sha, key))
                if counts is not None:
                    reused += 1
                else:
                    scan = load_scan(path, root, profile.scan)
                    found = find_instances(scan, NO_SIDECAR, perception, profile, root).instances
                    counts = dict(Counter(i.label for i in found))
                    state.write(
                        json.dumps({"relpath": rel, "sha256": sha, "detector": key, "labels": counts}) + "\n"
                    )
                    state.flush()
                    os.fsync(state.fileno())
            except UserError as exc:
                failed.append(exc.one_line())
                advance(rel)
                continue
            except OSError as exc:
                failed.append(f"{path_text(path)}: cannot read: {exc.strerror or exc}")
                advance(rel)
                continue
            per_scan.append(counts)
            advance(rel)
    table: dict[str, LabelCount] = {}
    for counts in per_scan:
        for label, n in counts.items():
            row = table.setdefault(label, LabelCount(label))
            row.scans += 1
            row.instances += n
    rows = sorted(table.values(), key=lambda r: (-r.scans, -r.instances, r.label))
    return SurveyResult(rows, scanned=len(per_scan), reused=reused, failed=failed)
