"""Check the Content Credentials of a run's outputs: what ``mtcolor-batch verify`` and the report show.

An output is valid when its C2PA manifest is present, its signature valid, its data hash matches
the file, the original scan it names as ingredient still has the sha256 the manifest recorded, and
the JSON record beside it (when there is one) is the record the manifest's digest names. Trust is
reported apart: the generated local signer reads as untrusted, which is not a failure unless
``trust_anchors`` (the archive's own CA) were given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import sha256_file
from mtcolor_batch.evaluate.records import done_rows
from mtcolor_batch.output.content_credentials import (
    SIDECAR_SUFFIX,
    CredentialCheck,
    read_credentials,
    record_digest,
)


@dataclass
class Verdict:
    """One output's Content Credentials, checked against its original and record."""

    output: str  # relative to the output folder
    source: str  # the scan's relative path
    check: CredentialCheck
    original: str  # match | changed | missing | -  (- : no manifest to compare with)
    record: str  # match | mismatch | none
    problems: list[str]

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def badge(self) -> str:
        """valid | invalid | absent (the report's Content Credentials badge)."""
        if not self.check.manifest:
            return "absent"
        return "valid" if self.valid else "invalid"

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "source": self.source,
            "valid": self.valid,
            "badge": self.badge,
            "original": self.original,
            "record": self.record,
            "problems": list(self.problems),
            **{f"c2pa_{k}": v for k, v in self.check.as_dict().items()},
        }


def verify_output(
    image: Path,
    record: dict[str, Any] | None,
    original: Path | None,
    *,
    out_dir: Path,
    source: str,
    trust_anchors: bytes | None = None,
) -> Verdict:
    """Check one output (``record``: its parsed JSON record, ``original``: where the scan is now)."""
    rel = image.relative_to(out_dir).as_posix() if image.is_relative_to(out_dir) else str(image)
    if not image.is_file():
        absent = CredentialCheck("absent", manifest=False)
        return Verdict(rel, source, absent, "-", "-", ["output file missing"])
    check = read_credentials(image, trust_anchors)
    problems: list[str] = []
    orig_state = record_state = "-"
    if not check.manifest:
        problems.append("no Content Credentials manifest")
    else:
        if not check.signature:
            problems.append(check.error or "signature invalid")
        if not check.data_hash:
            problems.append("the image bytes do not match the signed data hash")
        if trust_anchors is not None and check.trust != "trusted":
            problems.append("signer not trusted by --trust-anchors")
        others = [c for c in check.failures if c != "signingCredential.untrusted"]
        if check.signature and check.data_hash and others:
            problems.append("validation failed: " + ", ".join(others))
        if original is None or not original.is_file():
            orig_state = "missing"
            problems.append("original scan not found (give --scans)")
        elif check.ingredient_sha256 != sha256_file(original):
            orig_state = "changed"
            problems.append("the original scan changed since it was signed as ingredient")
        else:
            orig_state = "match"
        signed_record = (check.assertion.get("record") or {}).get("sha256")
        if record is None:
            record_state = "none"
        elif signed_record and record_digest(record) == signed_record:
            record_state = "match"
        else:
            record_state = "mismatch"
            problems.append("the JSON record is not the one the manifest names")
    return Verdict(rel, source, check, orig_state, record_state, problems)


def verify_folder(
    out_dir: Path, scans_dir: Path | None = None, trust_anchors: bytes | None = None
) -> list[Verdict]:
    """Every image output the journal(s) of ``out_dir`` list as done, checked."""
    out_dir = Path(out_dir)
    if not (out_dir / ".mtcolor").is_dir():
        raise UserError("no job journal here: not a run's output folder", path=out_dir)
    verdicts = []
    for row in done_rows(out_dir):
        record_rel = next((p for p in row.outputs if p.endswith(".json")), None)
        record = _read_json(out_dir / record_rel) if record_rel else None
        original = _original(row.relpath, record, scans_dir)
        for rel in row.outputs:
            if rel.endswith((".json", SIDECAR_SUFFIX)):
                continue
            verdicts.append(
                verify_output(
                    out_dir / rel,
                    record,
                    original,
                    out_dir=out_dir,
                    source=row.relpath,
                    trust_anchors=trust_anchors,
                )
            )
    return verdicts


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _original(relpath: str, record: dict[str, Any] | None, scans_dir: Path | None) -> Path | None:
    """The scan now: ``scans_dir/relpath`` when given, else the path its record names."""
    if scans_dir is not None:
        return Path(scans_dir) / relpath
    recorded = ((record or {}).get("input") or {}).get("path")
    return Path(recorded) if recorded else None
